//! Builds the upstream CAs from their `[[ca]]` tables: the account source, where SPC tokens
//! come from (an STI-PA client whose password may come from the environment, shared
//! fleet-wide and cached, or a static token file), and the pool over them.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::{
    ca::{AccountSource, AttemptError, CaPool, Upstream},
    challenge::{
        self, CachingTokenProvider, SharedTokenProvider, StaticTokenProvider, StiPaClient,
        TokenProvider,
    },
    config::{CaSettings, PoolSettings},
    store::SecretStore,
    tls,
};

/// Builds every `[[ca]]` into a pool; fails on the first bad one. `pools` sets the policy
/// of the pools it names; other pools use priority order without hedging. With `tokens`,
/// the CAs share SPC tokens fleet-wide through that store.
pub fn build_pool(
    cas: &[CaSettings],
    pools: &[PoolSettings],
    tokens: Option<Arc<dyn SecretStore>>,
) -> Result<CaPool, AttemptError> {
    let upstreams = cas
        .iter()
        .map(|s| build_upstream(s, tokens.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CaPool::new(upstreams, pools))
}

/// Builds one upstream from its settings, reading trust roots and secrets from files and
/// the environment; sharing SPC tokens fleet-wide through `store` (see
/// [`SharedTokenProvider`]) when one is given and the CA reuses tokens. Fails naming the
/// key that is wrong.
pub fn build_upstream(
    s: &CaSettings,
    store: Option<Arc<dyn SecretStore>>,
) -> Result<Upstream, AttemptError> {
    let source = AccountSource::from_settings(s)?;
    let tokens = token_provider(s, &source, store)?;
    Ok(Upstream::new(s, source, tokens))
}

/// Where the CA's SPC tokens come from: its STI-PA (with the CA's trust roots unless it
/// names its own), else its static token file, else nowhere.
fn token_provider(
    s: &CaSettings,
    source: &AccountSource,
    store: Option<Arc<dyn SecretStore>>,
) -> Result<Option<Arc<dyn TokenProvider>>, AttemptError> {
    let setup = |key: &str, e: &dyn std::fmt::Display| {
        AttemptError::Setup(format!("ca {:?}: {key}: {e}", s.name))
    };
    let trust_roots = source.trust_roots().cloned();
    let tokens: Option<Arc<dyn TokenProvider>> = if let Some(pa) = &s.sti_pa {
        let password = match (&pa.password, &pa.password_env) {
            (_, Some(var)) => SecretString::from(
                std::env::var(var)
                    .map_err(|_| setup("sti_pa.password_env", &format!("{var} is not set")))?,
            ),
            (Some(p), None) => SecretString::from(p.expose_secret().to_owned()),
            (None, None) => return Err(setup("sti_pa.password_env", &"not set")),
        };
        let roots = match &pa.trust_roots {
            Some(path) => Some(tls::read_roots(path).map_err(|e| setup("sti_pa.trust_roots", &e))?),
            None => trust_roots.clone(),
        };
        let client = StiPaClient::new(challenge::StiPaSettings {
            base_url: pa.base_url.clone(),
            user_id: pa.user_id.clone(),
            password,
            trust_roots: roots,
            tkvalue_encoding: s.challenge.tkvalue_encoding,
            timeout: s.request_timeout,
        })
        .map_err(|e| setup("sti_pa", &e))?;
        let client: Arc<dyn TokenProvider> = Arc::new(client);
        Some(if s.challenge.reuse_tokens {
            let margin = s.challenge.refresh_margin;
            let shared: Arc<dyn TokenProvider> = match store {
                Some(store) => Arc::new(SharedTokenProvider::new(client, store, margin)),
                None => client,
            };
            Arc::new(CachingTokenProvider::new(shared, margin))
        } else {
            client
        })
    } else {
        s.token_file
            .as_deref()
            .map(|p| Arc::new(StaticTokenProvider::from_file(p)) as Arc<dyn TokenProvider>)
    };
    Ok(tokens)
}
