//! SPC tokens (RFC 9448 §5): what is asked for and what comes back. The broker decodes a
//! token to check it answers the request; it does not verify the signature, which is the
//! CA's job against the STI-PA certificate.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::TokenError;
use crate::shaken::TnAuthList;

/// What a token must authorize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The identifiers; the STI-PA URL takes its first SPC.
    pub tn_auth_list: TnAuthList,
    /// A CA (delegation) certificate is asked for.
    pub ca: bool,
    /// Fingerprint of the ACME account key, `SHA256 AA:BB:…`.
    pub fingerprint: String,
}

/// An SPC token. The JWT is a bearer secret: `Debug` never shows it.
#[derive(Clone)]
pub struct AuthorityToken {
    jwt: SecretString,
    /// `exp`.
    pub expires_at: OffsetDateTime,
    /// `jti`.
    pub jti: String,
    /// `atc.tktype`.
    pub tktype: String,
    /// `atc.tkvalue`, as the token wrote it.
    pub tkvalue: String,
    /// `atc.ca`, false when absent.
    pub ca: bool,
    /// `atc.fingerprint`.
    pub fingerprint: String,
}

impl fmt::Debug for AuthorityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityToken")
            .field("jwt", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("jti", &self.jti)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl TokenRequest {
    /// The SPC (OCN) for the STI-PA URL: the first SPC entry.
    pub fn spc(&self) -> Result<&str, TokenError> {
        self.tn_auth_list.spcs().next().ok_or(TokenError::NoSpc)
    }
}

impl AuthorityToken {
    /// Decodes a compact JWS and its claims (no signature check). Requires `alg` ES256,
    /// `exp`, `jti` and `atc{tktype,tkvalue,fingerprint}`.
    pub fn parse(jwt: &str) -> Result<Self, TokenError> {
        let jwt = jwt.trim();
        let malformed = |m: &str| TokenError::Malformed(format!("SPC token: {m}"));
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not a compact JWS"));
        };
        let json = |part: &str| -> Result<serde_json::Value, TokenError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| malformed("not base64url"))?;
            serde_json::from_slice(&bytes).map_err(|_| malformed("not JSON"))
        };
        let header = json(header)?;
        if header["alg"] != "ES256" {
            return Err(malformed("alg is not ES256"));
        }
        let claims = json(payload)?;
        let exp = claims["exp"].as_i64().ok_or_else(|| malformed("no exp"))?;
        let jti = claims["jti"].as_str().ok_or_else(|| malformed("no jti"))?;
        let atc = &claims["atc"];
        let text = |name: &str| {
            atc[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| malformed(&format!("no atc.{name}")))
        };
        Ok(Self {
            jwt: SecretString::from(jwt.to_owned()),
            expires_at: OffsetDateTime::from_unix_timestamp(exp)
                .map_err(|_| malformed("exp out of range"))?,
            jti: jti.to_owned(),
            tktype: text("tktype")?,
            tkvalue: text("tkvalue")?,
            ca: atc["ca"].as_bool().unwrap_or(false),
            fingerprint: text("fingerprint")?,
        })
    }

    /// The compact JWS, for the challenge response.
    pub fn jwt(&self) -> &str {
        self.jwt.expose_secret()
    }

    /// Checks that the token answers `req` and is valid for at least `margin` more.
    pub fn check(&self, req: &TokenRequest, margin: std::time::Duration) -> Result<(), TokenError> {
        let mismatch = |field, detail: String| TokenError::Mismatch { field, detail };
        if !self.tktype.eq_ignore_ascii_case("TNAuthList") {
            return Err(mismatch(
                "tktype",
                format!("{:?}, expected TNAuthList", self.tktype),
            ));
        }
        let got =
            TnAuthList::decode(&self.tkvalue).map_err(|e| mismatch("tkvalue", e.to_string()))?;
        if got != req.tn_auth_list {
            return Err(mismatch(
                "tkvalue",
                format!("token is for [{got}], asked for [{}]", req.tn_auth_list),
            ));
        }
        if self.ca != req.ca {
            return Err(mismatch(
                "ca",
                format!("token ca={}, asked ca={}", self.ca, req.ca),
            ));
        }
        if !self.fingerprint.eq_ignore_ascii_case(&req.fingerprint) {
            return Err(mismatch(
                "fingerprint",
                "token is bound to another account key".into(),
            ));
        }
        // `exp` comes from the STI-PA and may be at the very edge of the representable dates:
        // subtracting the margin from it could overflow, the difference of two dates cannot.
        if self.expires_at - OffsetDateTime::now_utc() <= margin {
            return Err(TokenError::Expired(self.expires_at));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use josekit::{
        jws::{ES256, JwsHeader},
        jwt::{self, JwtPayload},
    };

    use super::*;
    use crate::shaken::TkValueEncoding;

    pub(crate) const FP: &str = "SHA256 49:55:78:7F:42:17:81:67:99:48:DC:54:21:DA:F4:79:C7:41:29:06:BF:A5:38:DF:9E:01:97:6A:2C:53:CC:3B";

    /// A token shaped like the real iconectiv staging token (shaken-acme.md §8), signed
    /// with a throwaway key and expiring `ttl_secs` from now.
    pub(crate) fn token_json(tkvalue: &str, ttl_secs: i64) -> String {
        let key = ES256.generate_key_pair().unwrap();
        let signer = ES256.signer_from_der(key.to_der_private_key()).unwrap();
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_x509_url("https://authenticate-api-stg.iconectiv.com/download/v1/certificate/certificateId_97574.crt");
        let mut payload = JwtPayload::new();
        let exp = OffsetDateTime::now_utc().unix_timestamp() + ttl_secs;
        payload.set_claim("exp", Some(exp.into())).unwrap();
        payload
            .set_claim("jti", Some("519175cb-6998-4074-9aea-0da5175a1622".into()))
            .unwrap();
        payload
            .set_claim(
                "atc",
                Some(serde_json::json!({"tktype":"TNAuthList","tkvalue":tkvalue,"ca":false,"fingerprint":FP})),
            )
            .unwrap();
        jwt::encode_with_signer(&payload, &header, &signer).unwrap()
    }

    pub(crate) fn sample_token(ttl_secs: i64) -> AuthorityToken {
        AuthorityToken::parse(&token_json("MAigBhYEMjgxSw==", ttl_secs)).unwrap()
    }

    /// An end-entity token request for `spc`, bound to [`FP`].
    pub(crate) fn req(spc: &str) -> TokenRequest {
        TokenRequest {
            tn_auth_list: TnAuthList::from_spc(spc).unwrap(),
            ca: false,
            fingerprint: FP.into(),
        }
    }

    #[test]
    fn parses_iconectiv_shape() {
        let t = sample_token(3600);
        assert_eq!(t.tktype, "TNAuthList");
        assert_eq!(t.tkvalue, "MAigBhYEMjgxSw==");
        assert_eq!(t.jti, "519175cb-6998-4074-9aea-0da5175a1622");
        assert!(!t.ca);
        t.check(&req("281K"), Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn check_reports_the_mismatching_claim() {
        let t = sample_token(3600);
        let field = |r: &TokenRequest| match t.check(r, Duration::ZERO) {
            Err(TokenError::Mismatch { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&req("1234")), "tkvalue");
        assert_eq!(
            field(&TokenRequest {
                ca: true,
                ..req("281K")
            }),
            "ca"
        );
        assert_eq!(
            field(&TokenRequest {
                fingerprint: "SHA256 00".into(),
                ..req("281K")
            }),
            "fingerprint"
        );
        // base64url of the same DER is the same list.
        let url = TnAuthList::from_spc("281K")
            .unwrap()
            .encode(TkValueEncoding::Base64Url);
        AuthorityToken::parse(&token_json(&url, 3600))
            .unwrap()
            .check(&req("281K"), Duration::ZERO)
            .unwrap();
    }

    #[test]
    fn expiry_honours_the_margin() {
        let t = sample_token(30);
        assert!(t.check(&req("281K"), Duration::ZERO).is_ok());
        assert!(matches!(
            t.check(&req("281K"), Duration::from_secs(60)),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn expiry_at_the_earliest_date_is_expired_not_a_panic() {
        // `exp - margin` overflowed here and panicked the caller.
        // josekit refuses to sign a negative `exp`; `parse` does not check the signature.
        let earliest = time::Date::MIN.midnight().assume_utc().unix_timestamp();
        let claims = serde_json::json!({"exp": earliest, "jti": "j", "atc": {
            "tktype": "TNAuthList", "tkvalue": "MAigBhYEMjgxSw==", "fingerprint": FP}});
        let jwt = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let t = AuthorityToken::parse(&jwt).unwrap();
        assert_eq!(t.expires_at.unix_timestamp(), earliest);
        assert!(matches!(
            t.check(&req("281K"), Duration::from_secs(300)),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn malformed_tokens() {
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(
                matches!(AuthorityToken::parse(bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_hides_the_jwt() {
        let t = sample_token(3600);
        assert!(!format!("{t:?}").contains(t.jwt()));
    }
}
