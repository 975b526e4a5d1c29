//! http-01 (RFC 8555 §8.3): serves `/.well-known/acme-challenge/{token}` with the key
//! authorization while a challenge is pending.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

type Tokens = Arc<RwLock<HashMap<String, String>>>;

/// The key authorization for a challenge token (RFC 8555 §8.1).
pub fn key_authorization(token: &str, account_thumbprint_b64: &str) -> String {
    format!("{token}.{account_thumbprint_b64}")
}

/// A small HTTP server answering http-01 challenges. Stops when dropped.
#[derive(Debug)]
pub struct Http01Responder {
    addr: SocketAddr,
    tokens: Tokens,
    task: tokio::task::JoinHandle<()>,
}

impl Http01Responder {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tokens = Tokens::default();
        let app = Router::new()
            .route("/.well-known/acme-challenge/{token}", get(serve))
            .with_state(tokens.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "http-01 responder stopped");
            }
        });
        Ok(Self { addr, tokens, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts answering `token`.
    pub fn insert(&self, token: &str, key_authorization: String) {
        self.write().insert(token.to_owned(), key_authorization);
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        self.write().remove(token);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, String>> {
        // Single-operation critical sections: a poisoned map is still consistent.
        self.tokens.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(tokens): State<Tokens>, Path(token): Path<String>) -> impl IntoResponse {
    let found = tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&token)
        .cloned();
    match found {
        Some(key_auth) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            key_auth,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_inserted_tokens_only() {
        let r = Http01Responder::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        r.insert("tok", key_authorization("tok", "thumb"));
        let base = format!("http://{}/.well-known/acme-challenge", r.local_addr());
        let http = crate::tls::http_client(None, std::time::Duration::from_secs(5)).unwrap();
        let ok = http.get(format!("{base}/tok")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "tok.thumb");
        assert_eq!(
            http.get(format!("{base}/other"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        r.remove("tok");
        assert_eq!(
            http.get(format!("{base}/tok"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
}
