//! Black-box tests of the embedded STI-PA and STI-CA over real HTTPS, with hand-built JWS
//! requests (the ACME client is tested against the devca elsewhere).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use certbroker::{
    devca::{DevCa, DevCaHandle, DevCaSettings, TokenFault},
    shaken::{
        CsrSpec, Expected, Subject, TkValueEncoding, TnAuthList, build_csr, check_issued,
        generate_key, parse_pem_chain,
    },
    tls,
};
use josekit::jws::{ES256, JwsSigner, JwsVerifier};
use rcgen::KeyPair;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Client {
    http: reqwest::Client,
    dir: Value,
    key: KeyPair,
    kid: Option<String>,
    nonce: Option<String>,
}

impl Client {
    async fn new(ca: &DevCaHandle) -> Self {
        let roots = tls::read_roots(ca.trust_root_path()).unwrap();
        let http = tls::http_client(Some(&roots), std::time::Duration::from_secs(10)).unwrap();
        let dir = http
            .get(ca.directory_url())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            http,
            dir,
            key: generate_key().unwrap(),
            kid: None,
            nonce: None,
        }
    }

    fn jwk(&self) -> Value {
        let raw = self.key.public_key_raw();
        json!({"crv": "P-256", "kty": "EC",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])})
    }

    fn fingerprint(&self) -> String {
        let j = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        let hex: Vec<String> = Sha256::digest(canonical)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        format!("SHA256 {}", hex.join(":"))
    }

    async fn fresh_nonce(&mut self) -> String {
        if let Some(n) = self.nonce.take() {
            return n;
        }
        let r = self
            .http
            .head(self.dir["newNonce"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        r.headers()["replay-nonce"].to_str().unwrap().to_owned()
    }

    /// Signs and posts; `payload` None is POST-as-GET. Returns status, headers, body.
    async fn post_with_nonce(
        &mut self,
        url: &str,
        payload: Option<&Value>,
        nonce: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut header = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => header["kid"] = json!(kid),
            None => header["jwk"] = self.jwk(),
        }
        let protected = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = payload.map_or(String::new(), |p| URL_SAFE_NO_PAD.encode(p.to_string()));
        let signer = ES256.signer_from_der(self.key.serialize_der()).unwrap();
        let sig = signer
            .sign(format!("{protected}.{payload}").as_bytes())
            .unwrap();
        let body = json!({"protected": protected, "payload": payload,
            "signature": URL_SAFE_NO_PAD.encode(sig)});
        let r = self
            .http
            .post(url)
            .header("content-type", "application/jose+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        self.nonce = headers
            .get("replay-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, headers, r.text().await.unwrap())
    }

    async fn post(&mut self, url: &str, payload: Option<&Value>) -> (u16, Value, String) {
        let nonce = self.fresh_nonce().await;
        let (status, headers, body) = self.post_with_nonce(url, payload, &nonce).await;
        let location = headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, json, location)
    }

    async fn register(&mut self) {
        let url = self.dir["newAccount"].as_str().unwrap().to_owned();
        let (status, _, location) = self
            .post(&url, Some(&json!({"termsOfServiceAgreed": true})))
            .await;
        assert_eq!(status, 201);
        self.kid = Some(location);
    }

    async fn poll(&mut self, url: &str, until: &[&str]) -> Value {
        for _ in 0..50 {
            let (_, v, _) = self.post(url, None).await;
            if until.contains(&v["status"].as_str().unwrap_or_default()) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{url} never reached {until:?}");
    }
}

async fn start() -> DevCaHandle {
    let dir = tempfile::tempdir().unwrap().keep();
    DevCa::start(DevCaSettings {
        state_dir: Some(dir),
        one_time_jti: true,
        ..DevCaSettings::default()
    })
    .await
    .unwrap()
}

async fn spc_token(ca: &DevCaHandle, c: &Client, list: &TnAuthList, spc: &str) -> String {
    let base = ca.sti_pa_url();
    let (user, password) = ca.sti_pa_credentials();
    let bad = c
        .http
        .post(base.join("/api/v1/auth/login").unwrap())
        .json(&json!({"userId": user, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let login: Value = c
        .http
        .post(base.join("/api/v1/auth/login").unwrap())
        .json(&json!({"userId": user, "password": password.expose_secret()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["status"], "success");
    let resp: Value = c
        .http
        .post(base.join(&format!("/api/v1/account/{spc}/token/")).unwrap())
        .header("authorization", login["accessToken"].as_str().unwrap())
        .json(&json!({"atc": {"tktype": "TNAuthList", "ca": false,
            "tkvalue": list.encode(TkValueEncoding::Base64), "fingerprint": c.fingerprint()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["status"], "success", "{resp}");
    assert!(resp["crl"].as_str().unwrap().ends_with("/download/v1/crl"));
    resp["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sti_pa_token_verifies_against_x5u_certificate() {
    let ca = start().await;
    let c = Client::new(&ca).await;
    assert!(
        c.dir["newOrder"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    let list = TnAuthList::from_spc("1234").unwrap();
    let token = spc_token(&ca, &c, &list, "1234").await;
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let pem = c
        .http
        .get(header["x5u"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cert = certbroker::shaken::CertInfo::parse(&parse_pem_chain(&pem).unwrap()[0]).unwrap();
    let verifier = ES256.verifier_from_der(&cert.public_key_spki_der).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    verifier
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["atc"]["fingerprint"], c.fingerprint().as_str());
    assert_eq!(ca.stats().tokens_issued, 1);
    ca.shutdown().await;
}

#[tokio::test]
async fn reused_nonce_is_bad_nonce_with_a_fresh_one() {
    let ca = start().await;
    let mut c = Client::new(&ca).await;
    let url = c.dir["newAccount"].as_str().unwrap().to_owned();
    let nonce = c.fresh_nonce().await;
    let payload = json!({"termsOfServiceAgreed": true});
    let (status, _, _) = c.post_with_nonce(&url, Some(&payload), &nonce).await;
    assert_eq!(status, 201);
    let (status, headers, body) = c.post_with_nonce(&url, Some(&payload), &nonce).await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        body.contains("urn:ietf:params:acme:error:badNonce"),
        "{body}"
    );
    assert!(headers.contains_key("replay-nonce"));
    ca.shutdown().await;
}

#[tokio::test]
async fn full_tkauth_flow_issues_a_checked_chain_and_revokes() {
    let ca = start().await;
    let mut c = Client::new(&ca).await;
    c.register().await;
    let list = TnAuthList::from_spc("1234").unwrap();
    let new_order = c.dir["newOrder"].as_str().unwrap().to_owned();
    let ident = json!({"identifiers": [{"type": "TNAuthList",
        "value": list.encode(TkValueEncoding::Base64Url)}]});
    let (status, order, order_url) = c.post(&new_order, Some(&ident)).await;
    assert_eq!(status, 201, "{order}");
    let (_, authz, _) = c
        .post(order["authorizations"][0].as_str().unwrap(), None)
        .await;
    let chall = &authz["challenges"][0];
    assert_eq!(chall["type"], "tkauth-01");
    assert_eq!(chall["tkauth-type"], "atc");
    let chall_url = chall["url"].as_str().unwrap().to_owned();

    let token = spc_token(&ca, &c, &list, "1234").await;
    c.post(&chall_url, Some(&json!({"atc": token}))).await;
    let done = c.poll(&chall_url, &["valid", "invalid"]).await;
    assert_eq!(done["status"], "valid", "{done}");

    // The same token again (new order): one-time jti.
    let (_, order2, _) = c.post(&new_order, Some(&ident)).await;
    let (_, authz2, _) = c
        .post(order2["authorizations"][0].as_str().unwrap(), None)
        .await;
    let chall2 = authz2["challenges"][0]["url"].as_str().unwrap().to_owned();
    c.post(&chall2, Some(&json!({"tkauth": token}))).await;
    let replay = c.poll(&chall2, &["valid", "invalid"]).await;
    assert!(
        replay["error"]["detail"].as_str().unwrap().contains("jti"),
        "{replay}"
    );

    // Finalize with the account key: refused.
    let finalize = order["finalize"].as_str().unwrap().to_owned();
    let subject = Subject::shaken("Example Telecom", "1234");
    let spec = CsrSpec {
        subject: &subject,
        tn_auth_list: Some(&list),
        dns_names: &[],
        ca: false,
    };
    let bad = build_csr(&c.key, &spec).unwrap();
    let (status, p, _) = c
        .post(
            &finalize,
            Some(&json!({"csr": URL_SAFE_NO_PAD.encode(bad)})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(p["type"], "urn:ietf:params:acme:error:badCSR");

    let cert_key = generate_key().unwrap();
    let csr = build_csr(&cert_key, &spec).unwrap();
    let (status, _, _) = c
        .post(
            &finalize,
            Some(&json!({"csr": URL_SAFE_NO_PAD.encode(csr)})),
        )
        .await;
    assert_eq!(status, 200);
    let valid = c.poll(&order_url, &["valid", "invalid"]).await;
    let (status, pem, _) = c.post(valid["certificate"].as_str().unwrap(), None).await;
    assert_eq!(status, 200);
    let chain = parse_pem_chain(pem.as_str().unwrap()).unwrap();
    assert_eq!(chain.len(), 2);
    let spki = rcgen::PublicKeyData::subject_public_key_info(&cert_key);
    let leaf = check_issued(
        &chain,
        &Expected {
            tn_auth_list: Some(&list),
            dns_names: &[],
            public_key_spki_der: &spki,
            ca: false,
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();

    let revoke = c.dir["revokeCert"].as_str().unwrap().to_owned();
    let req = json!({"certificate": URL_SAFE_NO_PAD.encode(&chain[0]), "reason": 4});
    assert_eq!(c.post(&revoke, Some(&req)).await.0, 200);
    assert!(ca.revoked(&leaf.serial_hex));
    let crl = c
        .http
        .get(ca.sti_pa_url().join("/download/v1/crl").unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl).unwrap();
    assert!(
        crl.iter_revoked_certificates()
            .any(|r| hex::encode(r.raw_serial()) == leaf.serial_hex)
    );
    let (status, p, _) = c.post(&revoke, Some(&req)).await;
    assert_eq!(status, 400);
    assert_eq!(p["type"], "urn:ietf:params:acme:error:alreadyRevoked");
    let stats = ca.stats();
    assert_eq!((stats.certificates_issued, stats.revocations), (1, 1));
    ca.shutdown().await;
}

#[tokio::test]
async fn faulty_tokens_make_the_challenge_invalid_with_a_precise_detail() {
    let ca = start().await;
    let list = TnAuthList::from_spc("1234").unwrap();
    for (fault, detail) in [
        (TokenFault::WrongKey, "token signature invalid"),
        (TokenFault::Expired, "token expired"),
        (TokenFault::WrongFingerprint, "fingerprint mismatch"),
        (
            TokenFault::WrongTkValue,
            "does not match the order's TNAuthList",
        ),
    ] {
        let mut c = Client::new(&ca).await;
        c.register().await;
        let new_order = c.dir["newOrder"].as_str().unwrap().to_owned();
        let ident = json!({"identifiers": [{"type": "TNAuthList",
            "value": list.encode(TkValueEncoding::Base64)}]});
        let (_, order, order_url) = c.post(&new_order, Some(&ident)).await;
        let (_, authz, _) = c
            .post(order["authorizations"][0].as_str().unwrap(), None)
            .await;
        let chall = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
        ca.behaviour().set_token_fault(Some(fault));
        let token = spc_token(&ca, &c, &list, "1234").await;
        ca.behaviour().set_token_fault(None);
        c.post(&chall, Some(&json!({"atc": token}))).await;
        let done = c.poll(&chall, &["valid", "invalid"]).await;
        assert_eq!(done["status"], "invalid", "{fault:?}");
        assert!(
            done["error"]["detail"].as_str().unwrap().contains(detail),
            "{fault:?}: {done}"
        );
        assert_eq!(c.poll(&order_url, &["invalid"]).await["status"], "invalid");
    }
    ca.shutdown().await;
}

#[tokio::test]
async fn knobs_rate_limit_and_unavailable() {
    let ca = start().await;
    let mut c = Client::new(&ca).await;
    c.register().await;
    let new_order = c.dir["newOrder"].as_str().unwrap().to_owned();
    let ident = json!({"identifiers": [{"type": "TNAuthList", "value": "MAigBhYEMTIzNA=="}]});
    ca.behaviour()
        .set_rate_limit(Some(std::time::Duration::from_secs(7)));
    let nonce = c.fresh_nonce().await;
    let (status, headers, body) = c.post_with_nonce(&new_order, Some(&ident), &nonce).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
    assert!(body.contains("rateLimited"));
    ca.behaviour().set_rate_limit(None);
    ca.behaviour().set_unavailable_for(1);
    let (status, p, _) = c.post(&new_order, Some(&ident)).await;
    assert_eq!(status, 503);
    assert_eq!(p["type"], "urn:ietf:params:acme:error:serverInternal");
    let (status, _, _) = c.post(&new_order, Some(&ident)).await;
    assert_eq!(status, 201);
    let bad = json!({"identifiers": [{"type": "TNAuthList", "value": "MAigxxYEODE4SA=="}]});
    let (status, p, _) = c.post(&new_order, Some(&bad)).await;
    assert_eq!(status, 400);
    assert_eq!(p["type"], "urn:ietf:params:acme:error:rejectedIdentifier");
    ca.shutdown().await;
}
