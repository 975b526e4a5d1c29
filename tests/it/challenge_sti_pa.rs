//! `StiPaClient` against a fake STI-PA: a real axum server on 127.0.0.1:0 speaking the
//! iconectiv wire shape (shaken-acme.md §4) over plain HTTP.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use certbroker::{
    challenge::{StiPaClient, StiPaSettings, TokenError, TokenProvider, TokenRequest},
    shaken::{TkValueEncoding, TnAuthList, TnEntry},
};
use josekit::{
    jws::{ES256, JwsHeader},
    jwt::{self, JwtPayload},
};
use serde_json::{Value, json};

const FP: &str = "SHA256 7B:BE:B3:C4:1B:1F:5D:05:5D:29:5B:30:A3:EF:A8:B6:EA:1B:A5:07:F3:AF:15:A5:25:8B:43:1D:FB:32:C1:38";

/// What the fake STI-PA does with the next token requests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Issue,
    /// HTTP 200 with `"status":"failure"`.
    Failure,
    /// HTTP 503.
    Unavailable,
    /// Always 401, even right after a login.
    AlwaysUnauthorized,
    /// Issue a token whose claim differs from the request.
    Tamper(&'static str),
}

/// One token request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    ocn: String,
    authorization: String,
    content_type: String,
    accept: String,
    body: Value,
}

struct Fake {
    mode: Mutex<Mode>,
    /// The access token the fake currently accepts.
    valid_access: Mutex<Option<String>>,
    logins: AtomicUsize,
    logouts: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    signing_key: Vec<u8>,
}

impl Fake {
    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Simulates the access token timing out on the STI-PA side.
    fn expire_access(&self) {
        *self.valid_access.lock().unwrap() = None;
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
        let valid = self.valid_access.lock().unwrap();
        presented.is_some() && presented == valid.as_deref()
    }
}

async fn login(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    if body != json!({"userId": "user", "password": "s3cret"}) {
        let body = json!({"status": "failure", "message": "Invalid user id or password"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let n = fake.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let access = format!("access-{n}");
    *fake.valid_access.lock().unwrap() = Some(access.clone());
    Json(json!({"status": "success", "accessToken": access, "refreshToken": "r", "message": null}))
        .into_response()
}

async fn logout(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    if !fake.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.logouts.fetch_add(1, Ordering::SeqCst);
    fake.expire_access();
    Json(json!({"status": "success"})).into_response()
}

async fn token(
    State(fake): State<Arc<Fake>>,
    Path(ocn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    fake.seen.lock().unwrap().push(Seen {
        ocn: ocn.clone(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        accept: header("accept"),
        body: body.clone(),
    });
    let mode = *fake.mode.lock().unwrap();
    if mode == Mode::AlwaysUnauthorized || !fake.authorized(&headers) {
        let body = json!({"status": "failure", "message": "Access token expired"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let mut atc = body["atc"].clone();
    let mut exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    match mode {
        Mode::Failure => {
            let msg = format!("SPC {ocn} is not authorized for this account");
            return Json(json!({"status": "failure", "message": msg})).into_response();
        }
        Mode::Unavailable => {
            return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
        }
        Mode::Tamper("fingerprint") => atc["fingerprint"] = json!("SHA256 00:01"),
        Mode::Tamper("ca") => atc["ca"] = json!(!atc["ca"].as_bool().unwrap()),
        Mode::Tamper("tkvalue") => atc["tkvalue"] = json!("MAigBhYEODE4SA=="),
        Mode::Tamper("exp") => exp -= 1200,
        _ => {}
    }
    let n = fake.seen.lock().unwrap().len();
    let claims = json!({"exp": exp, "jti": format!("jti-{n}"), "atc": atc});
    let signer = ES256.signer_from_der(&fake.signing_key).unwrap();
    let mut header = JwsHeader::new();
    header.set_token_type("JWT");
    header.set_x509_url("https://sti-pa.test/cert.crt");
    let payload = JwtPayload::from_map(claims.as_object().unwrap().clone()).unwrap();
    let jwt = jwt::encode_with_signer(&payload, &header, &signer).unwrap();
    let msg = format!("SPC token for spc: {ocn} is created successfully");
    Json(json!({"status": "success", "message": msg, "token": jwt, "crl": "https://sti-pa.test/crl"}))
        .into_response()
}

/// Starts the fake; its routes are also mounted under `/prefix`.
async fn spawn_fake() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake {
        mode: Mutex::new(Mode::Issue),
        valid_access: Mutex::new(None),
        logins: AtomicUsize::new(0),
        logouts: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
        signing_key: ES256.generate_key_pair().unwrap().to_der_private_key(),
    });
    let api = Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/account/{ocn}/token/", post(token))
        .with_state(fake.clone());
    let app = Router::new().merge(api.clone()).nest("/prefix", api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, addr)
}

fn settings(addr: SocketAddr, password: &str) -> StiPaSettings {
    StiPaSettings {
        base_url: format!("http://{addr}").parse().unwrap(),
        user_id: "user".into(),
        password: password.into(),
        trust_roots: None,
        tkvalue_encoding: TkValueEncoding::Base64,
        timeout: Duration::from_secs(5),
    }
}

fn request(spc: &str, ca: bool) -> TokenRequest {
    TokenRequest {
        tn_auth_list: TnAuthList::from_spc(spc).unwrap(),
        ca,
        fingerprint: FP.into(),
    }
}

#[tokio::test]
async fn issues_a_checked_token_and_keeps_the_session() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "s3cret")).unwrap();

    let token = client.token(&request("281K", false)).await.unwrap();
    assert_eq!(token.tkvalue, "MAigBhYEMjgxSw==");
    assert_eq!(token.fingerprint, FP);
    assert!(!token.ca);
    assert_eq!(token.jti, "jti-1");
    let token = client.token(&request("281K", true)).await.unwrap();
    assert!(token.ca);
    assert_eq!(
        fake.logins.load(Ordering::SeqCst),
        1,
        "the session is reused"
    );

    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.ocn, "281K");
    assert_eq!(
        seen.authorization, "access-1",
        "raw access token, no Bearer"
    );
    assert_eq!(seen.content_type, "application/json");
    assert_eq!(seen.accept, "application/json");
    assert_eq!(
        seen.body,
        json!({"atc": {"tktype": "TNAuthList", "tkvalue": "MAigBhYEMjgxSw==", "ca": false, "fingerprint": FP}})
    );
}

#[tokio::test]
async fn ocn_is_the_first_spc_and_encoding_is_configurable() {
    let (fake, addr) = spawn_fake().await;
    let mut s = settings(addr, "s3cret");
    s.tkvalue_encoding = TkValueEncoding::Base64Url;
    s.base_url = format!("http://{addr}/prefix/").parse().unwrap();
    let client = StiPaClient::new(s).unwrap();
    let list = TnAuthList::new(vec![
        TnEntry::one("12155551212").unwrap(),
        TnEntry::spc("818H").unwrap(),
    ])
    .unwrap();
    let req = TokenRequest {
        tn_auth_list: list.clone(),
        ca: false,
        fingerprint: FP.into(),
    };
    client.token(&req).await.unwrap();
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.ocn, "818H");
    assert_eq!(
        seen.body["atc"]["tkvalue"],
        list.encode(TkValueEncoding::Base64Url)
    );

    let tn_only = TokenRequest {
        tn_auth_list: TnAuthList::new(vec![TnEntry::one("12155551212").unwrap()]).unwrap(),
        ..req
    };
    assert!(matches!(
        client.token(&tn_only).await,
        Err(TokenError::NoSpc)
    ));
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        1,
        "no request without an SPC"
    );
}

#[tokio::test]
async fn logs_in_again_once_on_401() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "s3cret")).unwrap();
    client.token(&request("281K", false)).await.unwrap();

    fake.expire_access();
    client.token(&request("281K", false)).await.unwrap();
    assert_eq!(fake.logins.load(Ordering::SeqCst), 2);
    let seen = fake.seen.lock().unwrap().clone();
    let auths: Vec<_> = seen.iter().map(|s| s.authorization.as_str()).collect();
    assert_eq!(auths, ["access-1", "access-1", "access-2"]);

    fake.set_mode(Mode::AlwaysUnauthorized);
    let err = client.token(&request("281K", false)).await.unwrap_err();
    assert!(
        matches!(err, TokenError::Request { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(fake.logins.load(Ordering::SeqCst), 3, "only one re-login");
    assert_eq!(fake.seen.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn failure_status_and_server_errors() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "s3cret")).unwrap();

    fake.set_mode(Mode::Failure);
    let err = client.token(&request("281K", false)).await.unwrap_err();
    match &err {
        TokenError::Request {
            status: 200,
            detail,
        } => {
            assert_eq!(detail, "SPC 281K is not authorized for this account");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());

    fake.set_mode(Mode::Unavailable);
    let err = client.token(&request("281K", false)).await.unwrap_err();
    match &err {
        TokenError::Request {
            status: 503,
            detail,
        } => assert_eq!(detail, "maintenance"),
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
}

#[tokio::test]
async fn bad_credentials_are_a_login_error() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "wrong")).unwrap();
    let err = client.token(&request("281K", false)).await.unwrap_err();
    match &err {
        TokenError::Login {
            status: 401,
            detail,
        } => {
            assert_eq!(detail, "Invalid user id or password");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong"), "no password in errors");
    assert!(fake.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn returned_tokens_are_checked_against_the_request() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "s3cret")).unwrap();
    for field in ["fingerprint", "ca", "tkvalue"] {
        fake.set_mode(Mode::Tamper(field));
        match client.token(&request("281K", false)).await {
            Err(TokenError::Mismatch { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    fake.set_mode(Mode::Tamper("exp"));
    assert!(matches!(
        client.token(&request("281K", false)).await,
        Err(TokenError::Expired(_))
    ));
}

#[tokio::test]
async fn logout_ends_the_session() {
    let (fake, addr) = spawn_fake().await;
    let client = StiPaClient::new(settings(addr, "s3cret")).unwrap();
    client.logout().await.unwrap();
    assert_eq!(
        fake.logouts.load(Ordering::SeqCst),
        0,
        "no session, no call"
    );

    client.token(&request("281K", false)).await.unwrap();
    client.logout().await.unwrap();
    assert_eq!(fake.logouts.load(Ordering::SeqCst), 1);

    client.token(&request("281K", false)).await.unwrap();
    assert_eq!(
        fake.logins.load(Ordering::SeqCst),
        2,
        "a new session after logout"
    );
}

#[test]
fn debug_output_redacts_the_password() {
    let s = settings("127.0.0.1:1".parse().unwrap(), "hunter2-password");
    let debug = format!("{s:?}");
    assert!(!debug.contains("hunter2-password"), "{debug}");
    let client = StiPaClient::new(s).unwrap();
    assert!(!format!("{client:?}").contains("hunter2-password"));
}
