//! Test harness: the real `pebble` ACME test server, started by the certbroker-pebble crate
//! (the one launcher, shared with certbroker-bench) and always `-strict` here. This wrapper
//! keeps the tests' API: `start` panics with the reason instead of returning it, and adds
//! certbroker client settings and management-interface helpers.
//!
//! A missing binary fails the test with instructions; it never skips.

#![allow(dead_code)]

use std::{sync::Once, time::Duration};

use certbroker::acme::ClientSettings;

pub(crate) use certbroker_pebble::serial_hex;

/// What to vary per test.
#[derive(Clone, Debug, Default)]
pub(crate) struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces rejected as `badNonce`.
    pub(crate) nonce_reject_percent: u8,
    /// `PEBBLE_ALTERNATE_ROOTS`: number of alternate chains.
    pub(crate) alternate_roots: u8,
    /// `externalAccountMACKeys` (key id → base64url MAC key); non-empty turns on
    /// `externalAccountBindingRequired`.
    pub(crate) eab_keys: Vec<(String, String)>,
    /// Really validate challenges instead of `PEBBLE_VA_ALWAYS_VALID=1`.
    pub(crate) real_validation: bool,
}

/// A running pebble (killed on drop). Derefs to the shared launcher's handle for
/// `directory_url`, `management_url`, `tls_root` and `log()`.
pub(crate) struct Pebble {
    inner: certbroker_pebble::Pebble,
}

impl std::ops::Deref for Pebble {
    type Target = certbroker_pebble::Pebble;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Pebble {
    /// Starts pebble (`-strict`) and waits until its directory answers.
    pub(crate) async fn start(opts: PebbleOptions) -> Self {
        init_tracing();
        let PebbleOptions {
            nonce_reject_percent,
            alternate_roots,
            eab_keys,
            real_validation,
        } = opts;
        let inner = certbroker_pebble::Pebble::start(certbroker_pebble::PebbleOptions {
            nonce_reject_percent,
            alternate_roots,
            eab_keys,
            real_validation,
            strict: true,
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        Self { inner }
    }

    /// Client settings that trust this pebble, with fast test timeouts.
    pub(crate) fn settings(&self) -> ClientSettings {
        let mut settings = ClientSettings::new(self.directory_url.clone());
        settings.trust_roots = Some(vec![self.tls_root.clone()]);
        settings.request_timeout = Duration::from_secs(10);
        settings
    }

    /// GET on the management interface; returns status and body.
    pub(crate) async fn management(&self, path: &str) -> (u16, String) {
        let resp = self
            .http()
            .get(format!("{}{path}", self.management_url))
            .send()
            .await
            .expect("management request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("management body"))
    }

    /// `/cert-status-by-serial/<hex>` as JSON.
    pub(crate) async fn cert_status(&self, serial_hex: &str) -> serde_json::Value {
        let (status, body) = self
            .management(&format!("/cert-status-by-serial/{serial_hex}"))
            .await;
        assert_eq!(status, 200, "cert-status for {serial_hex}: {body}");
        serde_json::from_str(&body).expect("cert-status JSON")
    }
}

/// Tracing to the test output when `TEST_LOG` is set.
fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("certbroker=debug")
                .with_test_writer()
                .try_init();
        }
    });
}
