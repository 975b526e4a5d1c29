//! Seed inputs, one function per target, built with the library itself so they are valid
//! inputs of the current code: the fuzzer mutates from there into the deep paths.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use certbroker::shaken::{CsrSpec, Subject, TkValueEncoding, TnAuthList, TnEntry, build_csr};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyUsagePurpose, SanType,
};
use serde_json::json;

use crate::{first_inner_tlv, sign_compact_jws, sign_flattened_jws, test_key_jwk, test_key_rcgen};

/// TNAuthList OID, id-pe 26.
const TN_AUTH_LIST_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 26];

/// The lists of the shaken-acme.md §8 vectors and a few longer ones.
pub fn lists() -> Vec<TnAuthList> {
    let l = |e: Vec<TnEntry>| TnAuthList::new(e).expect("non-empty");
    vec![
        TnAuthList::from_spc("818H").expect("valid"),
        TnAuthList::from_spc("1234").expect("valid"),
        l(vec![TnEntry::one("12155551212").expect("valid")]),
        l(vec![TnEntry::range("12155551000", 100).expect("valid")]),
        l(vec![
            TnEntry::spc("818H").expect("valid"),
            TnEntry::one("12155551212").expect("valid"),
            TnEntry::range("*#0123", 70_000).expect("valid"),
        ]),
    ]
}

/// `tnauthlist`: DER and both string forms.
pub fn tnauthlist() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for list in lists() {
        out.push(list.to_der());
        out.push(list.encode(TkValueEncoding::Base64).into_bytes());
        out.push(list.encode(TkValueEncoding::Base64Url).into_bytes());
    }
    out
}

fn csrs() -> Vec<Vec<u8>> {
    let key = test_key_rcgen();
    let subject = Subject::shaken("Example Telecom", "1234");
    let lists = lists();
    let dns = vec!["sti.example.com".to_owned(), "b.example".to_owned()];
    let specs = [
        CsrSpec {
            subject: &subject,
            tn_auth_list: Some(&lists[0]),
            dns_names: &[],
            ca: false,
        },
        CsrSpec {
            subject: &subject,
            tn_auth_list: Some(&lists[4]),
            dns_names: &dns,
            ca: true,
        },
        CsrSpec {
            subject: &subject,
            tn_auth_list: None,
            dns_names: &dns,
            ca: false,
        },
    ];
    specs
        .iter()
        .map(|spec| build_csr(&key, spec).expect("CSR builds"))
        .collect()
}

/// `csr`: mode byte 0 then a whole CSR; mode byte 1 then its CertificationRequestInfo, which
/// the target signs with the test key.
pub fn csr() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for der in csrs() {
        let info = first_inner_tlv(&der).expect("CSR has an info").to_vec();
        out.push([&[0u8][..], &der].concat());
        out.push([&[1u8][..], &info].concat());
    }
    out
}

/// A CA and a SHAKEN leaf it issued (with TNAuthList, SAN, SKI/AKI), both DER; the leaf key
/// is the test key.
fn chain() -> (Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn(&Subject::shaken("Fuzz CA", "CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_der = ca.self_signed(&ca_key).expect("CA").der().to_vec();

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = dn(&Subject::shaken("Example Telecom", "1234"));
    leaf.subject_alt_names = vec![SanType::DnsName("sti.example.com".try_into().expect("dns"))];
    leaf.use_authority_key_identifier_extension = true;
    leaf.custom_extensions
        .push(CustomExtension::from_oid_content(
            TN_AUTH_LIST_OID,
            lists()[4].to_der(),
        ));
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_der = leaf
        .signed_by(&test_key_rcgen(), &issuer)
        .expect("leaf")
        .der()
        .to_vec();
    (leaf_der, ca_der)
}

/// `C`, `O` and `CN`, as the broker's CSRs name a subject.
fn dn(subject: &Subject) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CountryName, subject.country.as_str());
    dn.push(
        rcgen::DnType::OrganizationName,
        subject.organization.as_str(),
    );
    dn.push(rcgen::DnType::CommonName, subject.common_name.as_str());
    dn
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// `cert`: mode byte 0 then one DER certificate; mode byte 1 then a PEM chain.
pub fn cert() -> Vec<Vec<u8>> {
    let (leaf, ca) = chain();
    let chain_pem = format!("{}{}", pem(&leaf), pem(&ca));
    vec![
        [&[0u8][..], &leaf].concat(),
        [&[0u8][..], &ca].concat(),
        [&[1u8][..], chain_pem.as_bytes()].concat(),
    ]
}

/// `token`: mode byte 0 then an SPC token shaped like the iconectiv staging token
/// (shaken-acme.md §8); mode byte 1 then the claims alone.
pub fn token() -> Vec<Vec<u8>> {
    let header = json!({"alg": "ES256", "typ": "JWT",
        "x5u": "https://sti-pa.test/download/v1/certificate/certificateId_97574.crt"});
    let fp = "SHA256 49:55:78:7F:42:17:81:67:99:48:DC:54:21:DA:F4:79:C7:41:29:06:BF:A5:38:DF:9E:01:97:6A:2C:53:CC:3B";
    let claims = |tkvalue: &str, ca: bool| {
        json!({"exp": 1_900_000_000, "jti": "519175cb-6998-4074-9aea-0da5175a1622",
            "atc": {"tktype": "TNAuthList", "tkvalue": tkvalue, "ca": ca, "fingerprint": fp}})
    };
    let lists = lists();
    let claims = [
        claims(&lists[0].encode(TkValueEncoding::Base64), false),
        claims(&lists[4].encode(TkValueEncoding::Base64Url), true),
        json!({"exp": 0, "jti": "", "atc": {}}),
        // The earliest `exp` there is: `check` once overflowed on it.
        json!({"exp": -377_705_116_800_i64, "jti": "j",
            "atc": {"tktype": "TNAuthList", "tkvalue": "MAigBhYEMjgxSw==", "fingerprint": "f"}}),
    ];
    let mut out = Vec::new();
    for c in &claims {
        out.push([&[0u8][..], sign_compact_jws(&header, c).as_bytes()].concat());
        out.push([&[1u8][..], c.to_string().as_bytes()].concat());
    }
    out
}

/// `acme_response`: a status line, header lines, a blank line and a body, as a CA sends them.
pub fn acme_response() -> Vec<Vec<u8>> {
    let lists = lists();
    let id = lists[0].encode(TkValueEncoding::Base64Url);
    [
        "200\ncontent-type: application/json\n\n{\"newNonce\":\"https://ca.test/acme/new-nonce\",\
         \"newAccount\":\"https://ca.test/acme/new-acct\",\"newOrder\":\"https://ca.test/acme/new-order\",\
         \"revokeCert\":\"https://ca.test/acme/revoke-cert\",\"keyChange\":\"https://ca.test/acme/key-change\",\
         \"renewalInfo\":\"https://ca.test/acme/renewal-info\",\"meta\":{\"termsOfService\":\"https://ca.test/tos\",\
         \"caaIdentities\":[\"ca.test\"],\"externalAccountRequired\":true}}"
            .to_owned(),
        format!(
            "201\nlocation: /acme/order/7\nreplay-nonce: abc\n\n{{\"status\":\"pending\",\
             \"expires\":\"2030-01-02T03:04:05Z\",\"identifiers\":[{{\"type\":\"TNAuthList\",\"value\":\"{id}\"}}],\
             \"authorizations\":[\"https://ca.test/acme/authz/1\"],\"finalize\":\"https://ca.test/acme/order/7/finalize\"}}"
        ),
        format!(
            "200\nlink: <https://ca.test/acme/directory>;rel=\"index\"\n\n{{\"identifier\":{{\"type\":\"TNAuthList\",\
             \"value\":\"{id}\"}},\"status\":\"pending\",\"expires\":\"2030-01-02T03:04:05.123Z\",\"challenges\":[\
             {{\"type\":\"tkauth-01\",\"url\":\"https://ca.test/acme/chall/1\",\"status\":\"pending\",\
             \"tkauth-type\":\"atc\",\"token-authority\":\"https://sti-pa.test\",\"token\":\"DGyRejmCefe7v4NfDGDKfA\"}}]}}"
        ),
        "200\ncontent-type: application/pem-certificate-chain\nlink: </acme/cert/1/1>;rel=\"alternate\", \
         <https://ca.test/a,b>; rel=alternate\nlink: <https://ca.test/dir>;rel=\"index\"\n\n\
         -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            .to_owned(),
        "429\ncontent-type: application/problem+json\nretry-after: 30\n\n{\"type\":\
         \"urn:ietf:params:acme:error:rateLimited\",\"detail\":\"slow down\"}"
            .to_owned(),
        "503\nretry-after: Sun, 06 Nov 2050 08:49:37 GMT\n\n{\"type\":\"urn:ietf:params:acme:error:rejectedIdentifier\",\
         \"detail\":\"no\",\"status\":400,\"subproblems\":[{\"type\":\"urn:ietf:params:acme:error:caa\",\
         \"detail\":\"caa\",\"identifier\":{\"type\":\"dns\",\"value\":\"a.test\"}}]}"
            .to_owned(),
        "400\n\n{\"status\":\"invalid\",\"finalize\":\"f\",\"error\":{\"type\":\"urn:ietf:params:acme:error:badCSR\"}}"
            .to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// `devca_jws`: mode byte 0 then a request body; mode byte 1 or 2 then a 2-byte big-endian
/// header length, the protected header and the payload, which the target signs.
pub fn devca_jws() -> Vec<Vec<u8>> {
    let jwk = test_key_jwk();
    let header = json!({"alg": "ES256", "jwk": jwk, "nonce": "n0", "url": "https://127.0.0.1/acme/new-account"})
        .to_string();
    let payload =
        json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.com"]}).to_string();
    let framed = |mode: u8, header: &str, payload: &str| {
        let mut out = vec![mode];
        out.extend((header.len() as u16).to_be_bytes());
        out.extend(header.as_bytes());
        out.extend(payload.as_bytes());
        out
    };
    let kid_header = json!({"alg": "ES256", "kid": "https://127.0.0.1/acme/acct/1", "nonce": "n1",
        "url": "https://127.0.0.1/acme/new-order"})
    .to_string();
    vec![
        [
            &[0u8][..],
            &sign_flattened_jws(header.as_bytes(), payload.as_bytes()),
        ]
        .concat(),
        [&[0u8][..], &sign_flattened_jws(header.as_bytes(), b"")].concat(),
        framed(1, &header, &payload),
        framed(2, &header, &payload),
        framed(2, &kid_header, ""),
        [
            &[0u8][..],
            format!(
                "{{\"protected\":\"{}\",\"payload\":\"\",\"signature\":\"AAAA\"}}",
                URL_SAFE_NO_PAD.encode(&header)
            )
            .as_bytes(),
        ]
        .concat(),
    ]
}
