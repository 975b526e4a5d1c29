//! SPC tokens obtained out of band and dropped in a file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{AuthorityToken, TokenError, TokenProvider, TokenRequest};

/// Reads the token from a file on every request, so operators can rotate it in place.
#[derive(Debug, Clone)]
pub struct StaticTokenProvider {
    path: PathBuf,
}

impl StaticTokenProvider {
    /// A provider reading `path`.
    pub fn from_file(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl TokenProvider for StaticTokenProvider {
    async fn token(&self, req: &TokenRequest) -> Result<AuthorityToken, TokenError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| TokenError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        let token = AuthorityToken::parse(&text)?;
        token.check(req, Duration::ZERO)?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::token::tests::{req, token_json};

    #[tokio::test]
    async fn reads_checks_and_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let provider = StaticTokenProvider::from_file(&path);
        assert!(matches!(
            provider.token(&req("281K")).await,
            Err(TokenError::Io { .. })
        ));

        std::fs::write(&path, token_json("MAigBhYEMjgxSw==", 3600)).unwrap();
        provider.token(&req("281K")).await.unwrap();
        assert!(matches!(
            provider.token(&req("1234")).await,
            Err(TokenError::Mismatch {
                field: "tkvalue",
                ..
            })
        ));

        std::fs::write(&path, token_json("MAigBhYEMjgxSw==", -10)).unwrap();
        assert!(matches!(
            provider.token(&req("281K")).await,
            Err(TokenError::Expired(_))
        ));
    }
}
