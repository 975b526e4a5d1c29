//! Caller policy: who a caller is (its client certificate) and what it may request.
//!
//! [`Caller::from_extensions`] reads the peer certificate tonic records for each TLS
//! connection; [`decide`] is the pure decision over the `[[policy]]` tables, called before
//! any broker work.

use std::net::SocketAddr;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::{
    cert::Identifiers,
    config::PolicySettings,
    shaken::{TnAuthList, TnEntry},
};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// Names from the client certificate: SAN DNS names, SAN URIs, then the subject CN.
    /// Empty without a client certificate.
    pub names: Vec<String>,
    /// The peer's address, when known.
    pub remote: Option<SocketAddr>,
}

/// What a caller asks to do, as far as policy is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// GetCertificate for these identifiers from this pool.
    Get {
        /// The validated identifiers.
        identifiers: &'a Identifiers,
        /// The pool named (or `default`).
        pool: &'a str,
        /// A CA certificate for a delegate-issuing subordinate CA.
        ca: bool,
    },
    /// Revoke any certificate.
    Revoke,
}

/// How requests are authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// No client authentication (plaintext or server-only TLS): every caller may do
    /// everything. For development only; start-up warns loudly.
    Open,
    /// Mutual TLS: a caller may do what a matching `[[policy]]` allows, nothing else.
    Enforced(Vec<PolicySettings>),
}

/// A request the caller's policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{caller} may not {what}")]
pub struct Denied {
    /// The caller, as [`Caller::label`].
    pub caller: String,
    /// What was refused.
    pub what: String,
}

// === impl Caller ===

impl Caller {
    /// The caller of a request whose extensions tonic filled with its connection info.
    pub fn from_extensions(ext: &http::Extensions) -> Self {
        if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            let names = tls
                .peer_certs()
                .and_then(|certs| certs.first().map(|c| cert_names(c)))
                .unwrap_or_default();
            return Self {
                names,
                remote: tls.get_ref().remote_addr(),
            };
        }
        Self {
            names: vec![],
            remote: ext
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr),
        }
    }

    /// One name for logs and metrics: the first certificate name, or `anonymous@IP`.
    pub fn label(&self) -> String {
        match (self.names.first(), self.remote) {
            (Some(name), _) => name.clone(),
            (None, Some(addr)) => format!("anonymous@{}", addr.ip()),
            (None, None) => "anonymous".to_owned(),
        }
    }

    /// Key of the caller's rate-limit bucket: its identity, or its IP without one.
    pub fn rate_key(&self) -> String {
        match (self.names.first(), self.remote) {
            (Some(name), _) => format!("id:{name}"),
            (None, Some(addr)) => format!("ip:{}", addr.ip()),
            (None, None) => "anonymous".to_owned(),
        }
    }
}

/// SAN DNS names, SAN URIs and the subject CN of a DER certificate; empty if it does not
/// parse (the TLS layer has already verified it, so that does not happen in practice).
fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return vec![];
    };
    let mut names = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_owned());
        }
    }
    names
}

// === impl Policy ===

impl Policy {
    /// Allows `action` or says why not.
    pub fn check(&self, caller: &Caller, action: Action<'_>) -> Result<(), Denied> {
        match self {
            Self::Open => Ok(()),
            Self::Enforced(rules) => decide(rules, caller, action),
        }
    }
}

/// The decision: allowed when at least one policy that matches one of the caller's names
/// allows the whole action.
pub fn decide(rules: &[PolicySettings], caller: &Caller, action: Action<'_>) -> Result<(), Denied> {
    let matching: Vec<&PolicySettings> = rules
        .iter()
        .filter(|r| {
            r.identities
                .iter()
                .any(|pat| caller.names.iter().any(|n| identity_matches(pat, n)))
        })
        .collect();
    let deny = |what: String| Denied {
        caller: caller.label(),
        what,
    };
    if matching.is_empty() {
        return Err(deny("call this service: no [[policy]] names it".into()));
    }
    match action {
        Action::Revoke => {
            if matching.iter().any(|r| r.revoke) {
                Ok(())
            } else {
                Err(deny("revoke certificates".into()))
            }
        }
        Action::Get {
            identifiers,
            pool,
            ca,
        } => {
            let allowed = matching.iter().any(|r| {
                allows_pool(r, pool)
                    && allows_identifiers(r, identifiers)
                    && (!ca || r.ca_certificates)
            });
            if allowed {
                Ok(())
            } else {
                let kind = if ca { "a CA certificate for " } else { "" };
                Err(deny(format!(
                    "request {kind}{} from pool {pool:?}",
                    describe(identifiers)
                )))
            }
        }
    }
}

/// `*.suffix` matches any name under `suffix`; anything else matches exactly (ASCII case
/// insensitive, as DNS names are).
fn identity_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

fn allows_pool(rule: &PolicySettings, pool: &str) -> bool {
    rule.pools.iter().any(|p| p == "*" || p == pool)
}

fn allows_identifiers(rule: &PolicySettings, identifiers: &Identifiers) -> bool {
    match identifiers {
        Identifiers::TnAuthList(list) => allows_tn_auth_list(rule, list),
        Identifiers::Dns(names) => names.iter().all(|n| {
            rule.dns_suffixes.iter().any(|suffix| {
                n.eq_ignore_ascii_case(suffix) || identity_matches(&format!("*.{suffix}"), n)
            })
        }),
    }
}

fn allows_tn_auth_list(rule: &PolicySettings, list: &TnAuthList) -> bool {
    list.entries().iter().all(|e| match e {
        TnEntry::Spc(spc) => rule.spcs.iter().any(|s| s == "*" || s == spc),
        TnEntry::One(_) | TnEntry::Range { .. } => rule.telephone_numbers,
    })
}

/// The identifiers in words, for denials and the audit log (no secrets in them).
pub fn describe(identifiers: &Identifiers) -> String {
    identifiers.describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ids: &[&str]) -> PolicySettings {
        PolicySettings {
            identities: ids.iter().map(|s| (*s).to_owned()).collect(),
            pools: vec!["default".into()],
            ..Default::default()
        }
    }

    fn caller(names: &[&str]) -> Caller {
        Caller {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            remote: None,
        }
    }

    fn spcs(list: &[&str]) -> Identifiers {
        let entries = list
            .iter()
            .map(|s| TnEntry::spc(s).unwrap())
            .collect::<Vec<_>>();
        Identifiers::TnAuthList(TnAuthList::new(entries).unwrap())
    }

    #[test]
    fn identity_patterns() {
        let cases = [
            ("signer.example", "signer.example", true),
            ("signer.example", "SIGNER.example", true),
            ("signer.example", "other.example", false),
            ("*.signers.example", "a.signers.example", true),
            ("*.signers.example", "a.b.signers.example", true),
            ("*.signers.example", "signers.example", false),
            ("*.signers.example", "evilsigners.example", false),
            ("*.signers.example", "a.signers.example.evil", false),
            ("spiffe://carrier/signer", "spiffe://carrier/signer", true),
            ("spiffe://carrier/signer", "spiffe://carrier/signer2", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(identity_matches(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn decision_table() {
        let mut a = rule(&["*.east.carrier.example"]);
        a.spcs = vec!["1234".into(), "5678".into()];
        a.dns_suffixes = vec!["sip.carrier.example".into()];
        let mut b = rule(&["ops.carrier.example"]);
        b.spcs = vec!["*".into()];
        b.pools = vec!["*".into()];
        b.telephone_numbers = true;
        b.revoke = true;
        b.ca_certificates = true;
        let rules = vec![a, b];

        let dns = Identifiers::dns(&["edge1.sip.carrier.example".into()]).unwrap();
        let dns_outside = Identifiers::dns(&["sip.other.example".into()]).unwrap();
        let tn = Identifiers::TnAuthList(
            TnAuthList::new(vec![
                TnEntry::spc("1234").unwrap(),
                TnEntry::one("12025550100").unwrap(),
            ])
            .unwrap(),
        );
        let east = caller(&["s1.east.carrier.example"]);
        let ops = caller(&["ops.carrier.example"]);
        let stranger = caller(&["s1.west.carrier.example"]);
        let anonymous = caller(&[]);
        let get = |identifiers, pool| Action::Get {
            identifiers,
            pool,
            ca: false,
        };
        let get_ca = |identifiers, pool| Action::Get {
            identifiers,
            pool,
            ca: true,
        };
        let (s1234, s1234_5678, s9999, s1234_9999) = (
            spcs(&["1234"]),
            spcs(&["1234", "5678"]),
            spcs(&["9999"]),
            spcs(&["1234", "9999"]),
        );

        let cases: Vec<(&Caller, Action<'_>, bool)> = vec![
            (&east, get(&s1234, "default"), true),
            (&east, get(&s1234_5678, "default"), true),
            (&east, get(&s9999, "default"), false),
            (&east, get(&s1234_9999, "default"), false),
            (&east, get(&s1234, "premium"), false),
            (&east, get(&dns, "default"), true),
            (&east, get(&dns_outside, "default"), false),
            (&east, get(&tn, "default"), false),
            (&east, Action::Revoke, false),
            (&ops, get(&s9999, "premium"), true),
            (&ops, get(&tn, "default"), true),
            (&ops, get(&dns, "default"), false),
            (&ops, Action::Revoke, true),
            // CA (delegate-issuing) certificates need `ca_certificates` on top.
            (&east, get_ca(&s1234, "default"), false),
            (&ops, get_ca(&s9999, "premium"), true),
            (&ops, get_ca(&dns, "default"), false),
            (&stranger, get(&s1234, "default"), false),
            (&anonymous, get(&s1234, "default"), false),
            (&anonymous, Action::Revoke, false),
        ];
        for (i, (who, action, want)) in cases.into_iter().enumerate() {
            let got = decide(&rules, who, action);
            assert_eq!(got.is_ok(), want, "case {i}: {who:?} {action:?}: {got:?}");
        }
    }

    #[test]
    fn several_names_any_may_match() {
        let mut r = rule(&["spiffe://carrier/signer"]);
        r.spcs = vec!["1234".into()];
        let who = caller(&["host.example", "spiffe://carrier/signer", "Signer CN"]);
        assert!(
            decide(
                &[r],
                &who,
                Action::Get {
                    identifiers: &spcs(&["1234"]),
                    pool: "default",
                    ca: false,
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn denial_names_caller_and_request() {
        let mut r = rule(&["a.example"]);
        r.spcs = vec!["1".into()];
        let err = decide(
            &[r],
            &caller(&["a.example"]),
            Action::Get {
                identifiers: &spcs(&["2"]),
                pool: "default",
                ca: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.caller, "a.example");
        assert!(err.what.contains("spc 2"), "{err}");
    }

    #[test]
    fn open_policy_allows_everything() {
        assert!(Policy::Open.check(&caller(&[]), Action::Revoke).is_ok());
        assert!(
            Policy::Enforced(vec![])
                .check(&caller(&["x"]), Action::Revoke)
                .is_err()
        );
    }

    #[test]
    fn caller_labels() {
        let addr: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let c = Caller {
            names: vec![],
            remote: Some(addr),
        };
        assert_eq!(c.label(), "anonymous@10.0.0.7");
        assert_eq!(c.rate_key(), "ip:10.0.0.7");
        let c = caller(&["a.example"]);
        assert_eq!(c.label(), "a.example");
        assert_eq!(c.rate_key(), "id:a.example");
    }
}
