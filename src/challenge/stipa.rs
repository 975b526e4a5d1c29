//! Client of the STI-PA token API, in the shape iconectiv's deployed API has
//! (shaken-acme.md §4): `POST /api/v1/auth/login`, `POST /api/v1/account/{OCN}/token/`,
//! `POST /api/v1/auth/logout`.

use std::{fmt, time::Duration};

use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{debug, info};
use url::Url;

use super::{AuthorityToken, TokenError, TokenProvider, TokenRequest};
use crate::{shaken::TkValueEncoding, tls};

/// Where and how to log in.
#[derive(Clone)]
pub struct StiPaSettings {
    /// API base, e.g. `https://authenticate-api.iconectiv.com`.
    pub base_url: Url,
    /// Login user id.
    pub user_id: String,
    /// Login password.
    pub password: SecretString,
    /// Trust roots for the STI-PA's HTTPS; `None`: the system's.
    pub trust_roots: Option<Vec<CertificateDer<'static>>>,
    /// TNAuthList string form in `atc.tkvalue`.
    pub tkvalue_encoding: TkValueEncoding,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for StiPaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StiPaSettings")
            .field("base_url", &self.base_url.as_str())
            .field("user_id", &self.user_id)
            .field("password", &"[REDACTED]")
            .field("tkvalue_encoding", &self.tkvalue_encoding)
            .finish_non_exhaustive()
    }
}

/// Logs in once, keeps the access token, and logs in again when it is refused.
pub struct StiPaClient {
    settings: StiPaSettings,
    http: reqwest::Client,
    access_token: Mutex<Option<SecretString>>,
}

impl fmt::Debug for StiPaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StiPaClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StiPaClient {
    /// A client; nothing is sent until the first token request.
    pub fn new(settings: StiPaSettings) -> Result<Self, TokenError> {
        let http = tls::http_client(settings.trust_roots.as_deref(), settings.timeout)
            .map_err(|e| TokenError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            access_token: Mutex::new(None),
        })
    }

    /// Ends the session, if there is one.
    pub async fn logout(&self) -> Result<(), TokenError> {
        let Some(access) = self.access_token.lock().await.take() else {
            return Ok(());
        };
        let resp = self
            .http
            .post(self.url("api/v1/auth/logout"))
            .header("Authorization", access.expose_secret())
            .send()
            .await?;
        debug!(status = %resp.status(), "STI-PA logout");
        Ok(())
    }

    async fn login(&self) -> Result<SecretString, TokenError> {
        let resp = self
            .http
            .post(self.url("api/v1/auth/login"))
            .json(&json!({
                "userId": self.settings.user_id,
                "password": self.settings.password.expose_secret(),
            }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let (body, text) = read_body(resp).await;
        if status != 200 || body["status"] != "success" {
            return Err(TokenError::Login {
                status,
                detail: message(&body, &text),
            });
        }
        let token = body["accessToken"]
            .as_str()
            .ok_or_else(|| TokenError::Malformed("login response has no accessToken".into()))?;
        info!(user = %self.settings.user_id, "logged in to the STI-PA");
        Ok(SecretString::from(token.to_owned()))
    }

    async fn access(&self, fresh: bool) -> Result<SecretString, TokenError> {
        let mut slot = self.access_token.lock().await;
        if fresh || slot.is_none() {
            *slot = Some(self.login().await?);
        }
        // The slot was filled just above when empty.
        slot.clone()
            .ok_or_else(|| TokenError::Setup("no access token".into()))
    }

    /// One token request; `Ok(None)` when the access token was refused (401).
    async fn request(
        &self,
        access: &SecretString,
        req: &TokenRequest,
    ) -> Result<Option<AuthorityToken>, TokenError> {
        let spc = req.spc()?;
        let body = json!({ "atc": {
            "tktype": "TNAuthList",
            "tkvalue": req.tn_auth_list.encode(self.settings.tkvalue_encoding),
            "ca": req.ca,
            "fingerprint": req.fingerprint,
        }});
        let resp = self
            .http
            .post(self.url(&format!("api/v1/account/{spc}/token/")))
            .header("Authorization", access.expose_secret())
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status == 401 {
            return Ok(None);
        }
        let (body, text) = read_body(resp).await;
        if status != 200 || body["status"] != "success" {
            return Err(TokenError::Request {
                status,
                detail: message(&body, &text),
            });
        }
        let jwt = body["token"]
            .as_str()
            .ok_or_else(|| TokenError::Malformed("token response has no token".into()))?;
        debug!(spc, "SPC token issued");
        Ok(Some(AuthorityToken::parse(jwt)?))
    }

    fn url(&self, path: &str) -> Url {
        let mut base = self.settings.base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        // `path` is a fixed relative path plus an SPC validated as printable ASCII.
        base.join(path).unwrap_or(base)
    }
}

#[async_trait::async_trait]
impl TokenProvider for StiPaClient {
    async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
        req.spc()?;
        let access = self.access(false).await?;
        let token = match self.request(&access, req).await? {
            Some(t) => t,
            None => {
                // The session expired: log in again, once.
                let access = self.access(true).await?;
                self.request(&access, req)
                    .await?
                    .ok_or(TokenError::Request {
                        status: 401,
                        detail: "access token refused right after login".into(),
                    })?
            }
        };
        token.check(req, Duration::ZERO)?;
        Ok(token)
    }
}

/// The body as JSON (Null when it is not) and as text.
async fn read_body(resp: reqwest::Response) -> (Value, String) {
    let text = resp.text().await.unwrap_or_default();
    (serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

/// The STI-PA's own words: `message` or `error` of a JSON body, else the body text.
fn message(body: &Value, text: &str) -> String {
    body["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect::<String>().trim().to_owned())
}
