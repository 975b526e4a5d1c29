//! Checks that need more than one key, or more than a value's type, run once after loading
//! so a bad configuration stops start-up naming the key. Durations (`*_secs`, with their
//! minimums) and counts that must not be zero are checked by their types while parsing
//! (`secs::at_least`, `NonZero*`), reported the same way.

use std::collections::BTreeSet;

use super::{ConfigError, Settings, StoreBackend, ca::check_serial_number_template};

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        match self.store.backend {
            StoreBackend::Redis if self.store.url.is_none() && self.store.sentinel.is_none() => {
                return Err(invalid(
                    "store.url".into(),
                    "required when store.backend = \"redis\" (or store.sentinel)",
                ));
            }
            StoreBackend::Redis if self.store.url.is_some() && self.store.sentinel.is_some() => {
                return Err(invalid(
                    "store.sentinel".into(),
                    "excludes store.url: the sentinels name the master",
                ));
            }
            StoreBackend::RedisCluster if self.store.cluster_nodes.is_empty() => {
                return Err(invalid(
                    "store.cluster_nodes".into(),
                    "required when store.backend = \"redis-cluster\"",
                ));
            }
            StoreBackend::Redis | StoreBackend::RedisCluster if self.store.keyring.is_none() => {
                return Err(invalid(
                    "store.keyring".into(),
                    "required with Redis: private keys at rest are always encrypted",
                ));
            }
            _ => {}
        }
        if let Some(keyring) = &self.store.keyring {
            keyring.decode_keys().map_err(|e| {
                invalid("store.keyring".into(), &format!("store configuration: {e}"))
            })?;
        }
        if !(0.0..1.0).contains(&self.renewal.renew_fraction) || self.renewal.renew_fraction == 0.0
        {
            return Err(invalid(
                "renewal.renew_fraction".into(),
                "must be between 0 and 1",
            ));
        }
        if self.publish.base_url.is_some() != self.publish.listen.is_some() {
            return Err(invalid(
                "publish.listen".into(),
                "set both publish.base_url and publish.listen, or neither",
            ));
        }
        if let Some(base) = &self.publish.base_url {
            if !base.path().ends_with('/') || base.query().is_some() || base.fragment().is_some() {
                return Err(invalid(
                    "publish.base_url".into(),
                    "must end with '/' and have no query or fragment (STI-CR URL rules)",
                ));
            }
        }
        self.validate_server()?;
        let mut names = BTreeSet::new();
        for (i, ca) in self.ca.iter().enumerate() {
            let key = |k: &str| format!("ca[{i}].{k}");
            if ca.name.is_empty() || !names.insert(ca.name.as_str()) {
                return Err(invalid(key("name"), "must be non-empty and unique"));
            }
            if !matches!(ca.directory.scheme(), "https" | "http") {
                return Err(invalid(key("directory"), "must be an https URL"));
            }
            if ca.pools.is_empty() || ca.pools.iter().any(String::is_empty) {
                return Err(invalid(
                    key("pools"),
                    "must list at least one non-empty pool name",
                ));
            }
            if ca.sti_pa.is_some() && ca.token_file.is_some() {
                return Err(invalid(
                    key("token_file"),
                    "set either sti_pa or token_file, not both",
                ));
            }
            if let Some(pa) = &ca.sti_pa {
                if pa.password.is_none() && pa.password_env.is_none() {
                    return Err(invalid(
                        key("sti_pa.password_env"),
                        "set password_env (or password)",
                    ));
                }
            }
            if let Some(star) = &ca.star
                && star.duration < star.lifetime
            {
                return Err(invalid(
                    key("star.duration_secs"),
                    "must be at least star.lifetime_secs (one certificate)",
                ));
            }
            if !ca.csr.common_name_template.contains("{spc}") {
                return Err(invalid(
                    key("csr.common_name_template"),
                    "must contain {spc}",
                ));
            }
            if let Err(e) = ca.preauthorization.check() {
                return Err(invalid(key("preauthorization.spcs"), &e));
            }
            if !ca.preauthorization.spcs.is_empty()
                && ca.sti_pa.is_none()
                && ca.token_file.is_none()
            {
                return Err(invalid(
                    key("preauthorization.spcs"),
                    "needs SPC tokens: set sti_pa or token_file",
                ));
            }
            if let Err(e) = check_serial_number_template(&ca.csr.serial_number_template) {
                return Err(invalid(key("csr.serial_number_template"), &e));
            }
            if ca.csr.country.len() != 2 || !ca.csr.country.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(invalid(
                    key("csr.country"),
                    "must be two uppercase letters (ISO 3166), e.g. US",
                ));
            }
        }
        let mut pools = BTreeSet::new();
        for (i, pool) in self.pool.iter().enumerate() {
            let key = format!("pool[{i}].name");
            if !pools.insert(pool.name.as_str()) {
                return Err(invalid(key, "must be unique"));
            }
            if !self.ca.iter().any(|c| c.pools.contains(&pool.name)) {
                return Err(invalid(key, "no [[ca]] lists this pool in its `pools`"));
            }
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        let s = &self.server;
        if s.rate_limit_per_sec > 0 && s.rate_limit_burst == 0 {
            return Err(invalid(
                "server.rate_limit_burst".into(),
                "must be at least 1 when rate_limit_per_sec is set",
            ));
        }
        if s.max_request_bytes < 1024 {
            return Err(invalid(
                "server.max_request_bytes".into(),
                "must be at least 1024",
            ));
        }
        let mutual = s.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !self.policy.is_empty() && !mutual {
            return Err(invalid(
                "policy".into(),
                "[[policy]] needs client certificates: set server.tls.client_ca",
            ));
        }
        for (i, p) in self.policy.iter().enumerate() {
            let key = |k: &str| format!("policy[{i}].{k}");
            if p.identities.is_empty() {
                return Err(invalid(
                    key("identities"),
                    "must name at least one identity",
                ));
            }
            for id in &p.identities {
                let rest = id.strip_prefix("*.").unwrap_or(id);
                if rest.is_empty() || rest.contains('*') {
                    return Err(invalid(
                        key("identities"),
                        "each is an exact name or `*.suffix`",
                    ));
                }
            }
            if p.dns_suffixes
                .iter()
                .any(|d| d.is_empty() || d.contains('*'))
            {
                return Err(invalid(
                    key("dns_suffixes"),
                    "each is a DNS name, without wildcards",
                ));
            }
        }
        Ok(())
    }
}
