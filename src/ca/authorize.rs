//! Answering one CA's authorizations
//! ([RFC 8555 §7.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.5)): tkauth-01 with an
//! SPC token for a TNAuthList identifier (RFC 9447), http-01 for a DNS name.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::OnceCell;
use tracing::{Instrument, info};

use super::{AttemptError, CertKind};
use crate::{
    acme::{self, Account, RetryPolicy},
    challenge::{self, Http01Responder, TkAuthSettings, TokenProvider, TokenRequest},
    shaken::TnAuthList,
};

/// What answers one CA's challenges: its token source for tkauth-01 and, when
/// `http01_listen` is configured, an http-01 responder bound on first use.
#[derive(Debug)]
pub(super) struct Solvers {
    ca: String,
    tkauth: TkAuthSettings,
    tokens: Option<Arc<dyn TokenProvider>>,
    http01_listen: Option<SocketAddr>,
    http01: OnceCell<Http01Responder>,
}

impl Solvers {
    /// Solvers for CA `ca` (its name, for logs and errors).
    pub(super) fn new(
        ca: String,
        tkauth: TkAuthSettings,
        tokens: Option<Arc<dyn TokenProvider>>,
        http01_listen: Option<SocketAddr>,
    ) -> Self {
        Self {
            ca,
            tkauth,
            tokens,
            http01_listen,
            http01: OnceCell::new(),
        }
    }

    /// Where the CA's SPC tokens come from, if anywhere.
    pub(super) fn tokens(&self) -> Option<&Arc<dyn TokenProvider>> {
        self.tokens.as_ref()
    }

    /// The CA's tkauth-01 dialect.
    pub(super) fn tkauth(&self) -> &TkAuthSettings {
        &self.tkauth
    }

    /// The token source a tkauth-01 answer needs, or the set-up error that says what to
    /// configure.
    pub(super) fn token_source(&self) -> Result<&Arc<dyn TokenProvider>, AttemptError> {
        self.tokens.as_ref().ok_or_else(|| {
            AttemptError::Setup(format!(
                "ca {:?} needs an SPC token: configure sti_pa or token_file",
                self.ca
            ))
        })
    }

    /// What to ask the token source for to answer a challenge on `list` with `account`:
    /// the token is bound to the account key's fingerprint in this CA's dialect.
    pub(super) fn token_request(
        &self,
        account: &Account,
        list: TnAuthList,
        kind: CertKind,
    ) -> Result<TokenRequest, AttemptError> {
        Ok(TokenRequest {
            tn_auth_list: list,
            ca: kind.is_ca(),
            fingerprint: challenge::fingerprint(
                self.tkauth.fingerprint,
                &account.key().public_jwk(),
            )?,
        })
    }

    /// Answers one authorization's challenge and waits for it to become valid; an
    /// authorization already valid (an earlier order's, or a pre-authorization) is left
    /// as it is.
    pub(super) async fn authorize(
        &self,
        account: &Account,
        authz_url: &str,
        policy: &RetryPolicy,
        kind: CertKind,
    ) -> Result<(), AttemptError> {
        let authz = account.authorization(authz_url).await?;
        let id_type = authz.identifier.r#type.as_str();
        info!(
            ca = %self.ca,
            authorization = %authz_url,
            identifier = %format!("{}:{}", id_type, authz.identifier.value),
            status = ?authz.status,
            "acme: authorization"
        );
        if authz.status == acme::AuthorizationStatus::Valid {
            return Ok(());
        }
        if id_type.eq_ignore_ascii_case("TNAuthList") {
            return self
                .answer_tkauth(account, &authz, authz_url, policy, kind)
                .await;
        }
        self.answer_http01(account, &authz, authz_url, policy).await
    }

    /// tkauth-01: an SPC token for the identifier, sent as the challenge response.
    async fn answer_tkauth(
        &self,
        account: &Account,
        authz: &acme::Authorization,
        authz_url: &str,
        policy: &RetryPolicy,
        kind: CertKind,
    ) -> Result<(), AttemptError> {
        let challenge = find_challenge(authz, "tkauth-01")?;
        let tokens = self.token_source()?;
        let list = TnAuthList::decode(&authz.identifier.value)?;
        let req = self.token_request(account, list, kind)?;
        let token = tokens
            .token(&req)
            .instrument(tracing::info_span!("challenge.token", ca = %self.ca))
            .await?;
        let payload = challenge::response_payload(self.tkauth.response_field, &token);
        info!(ca = %self.ca, challenge = %challenge.url, "acme: answering tkauth-01 challenge");
        account.respond_challenge(&challenge.url, &payload).await?;
        let verdict = account.poll_authorization(authz_url, policy).await;
        if verdict.is_ok() {
            info!(ca = %self.ca, authorization = %authz_url, "acme: authorization valid");
        }
        if let Err(e) = &verdict
            && e.problem().is_some()
            && !e.is_retryable()
        {
            // The CA refused the challenge, most likely the token: never offer it again.
            tokens.discard(&req).await;
        }
        verdict?;
        Ok(())
    }

    /// http-01: served by the responder when one is configured, else by whoever serves
    /// the name (the challenge is only triggered).
    async fn answer_http01(
        &self,
        account: &Account,
        authz: &acme::Authorization,
        authz_url: &str,
        policy: &RetryPolicy,
    ) -> Result<(), AttemptError> {
        let challenge = find_challenge(authz, "http-01")?;
        let empty = serde_json::json!({});
        if let (Some(responder), Some(token)) = (self.http01().await?, &challenge.token) {
            let key_auth = challenge::key_authorization(token, &account.key().thumbprint_b64());
            responder.insert(token, key_auth);
            let result = self
                .answer(account, &challenge.url, &empty, authz_url, policy)
                .await;
            responder.remove(token);
            return result;
        }
        self.answer(account, &challenge.url, &empty, authz_url, policy)
            .await
    }

    async fn answer(
        &self,
        account: &Account,
        challenge_url: &str,
        payload: &serde_json::Value,
        authz_url: &str,
        policy: &RetryPolicy,
    ) -> Result<(), AttemptError> {
        info!(ca = %self.ca, challenge = %challenge_url, "acme: answering http-01 challenge");
        account.respond_challenge(challenge_url, payload).await?;
        account.poll_authorization(authz_url, policy).await?;
        info!(ca = %self.ca, authorization = %authz_url, "acme: authorization valid");
        Ok(())
    }

    /// The http-01 responder, bound on first use when `http01_listen` is configured.
    async fn http01(&self) -> Result<Option<&Http01Responder>, AttemptError> {
        let Some(addr) = self.http01_listen else {
            return Ok(None);
        };
        let responder = self
            .http01
            .get_or_try_init(|| async {
                Http01Responder::bind(addr).await.map_err(|e| {
                    AttemptError::Setup(format!("ca {:?}: http01_listen {addr}: {e}", self.ca))
                })
            })
            .await?;
        Ok(Some(responder))
    }
}

fn find_challenge<'a>(
    authz: &'a acme::Authorization,
    kind: &str,
) -> Result<&'a acme::Challenge, AttemptError> {
    authz
        .challenges
        .iter()
        .find(|c| c.r#type == kind)
        .ok_or_else(|| {
            let offered: Vec<&str> = authz.challenges.iter().map(|c| c.r#type.as_str()).collect();
            AttemptError::Unsupported(format!(
                "authorization for {} offers no {kind} challenge (offered: {offered:?})",
                authz.identifier.value
            ))
        })
}
