//! Delegate certificates (RFC 9060, ATIS-1000092): a service provider asks the broker for a
//! CA certificate for its SPC, then signs its own short-lived delegate certificates with it.
//! End to end against the devca: STI-PA token with `"ca": true`, CSR with CA:TRUE, and a
//! chain that `openssl verify` accepts down to a delegate certificate signed by the result.

use crate::support::common;

use certbroker::{
    pb::{CacheStatus, GetCertificateRequest},
    shaken::{CertInfo, TN_AUTH_LIST_OID, TnAuthList, TnEntry},
};
use common::{DevEnv, TestBroker, openssl_verify, spc_request};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::Code;
use tonic_types::StatusExt;

fn ca_request(spc: &str) -> GetCertificateRequest {
    GetCertificateRequest {
        ca_certificate: true,
        ..spc_request(spc)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_certificate_signs_a_delegate_that_verifies_to_the_root() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;

    let sca = client
        .get_certificate(ca_request("1234"))
        .await
        .expect("CA certificate issued")
        .into_inner();
    assert_eq!(sca.cache_status(), CacheStatus::Issued);
    let leaf = CertInfo::parse(&sca.certificate_chain_der[0]).unwrap();
    assert!(leaf.is_ca, "basicConstraints CA:TRUE");
    assert_eq!(
        leaf.tn_auth_list,
        Some(TnAuthList::from_spc("1234").unwrap())
    );
    openssl_verify(&sca.certificate_chain_pem, &env.ca.issuing_root_pem())
        .expect("the CA certificate verifies");

    // The end-entity certificate for the same SPC is a different certificate (another
    // cache key), and the CA certificate is served from cache on the next ask.
    let ee = client
        .get_certificate(spc_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ee.cache_status(), CacheStatus::Issued);
    assert_ne!(ee.serial_hex, sca.serial_hex);
    assert!(!CertInfo::parse(&ee.certificate_chain_der[0]).unwrap().is_ca);
    let again = client
        .get_certificate(ca_request("1234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.cache_status(), CacheStatus::HitLocal);
    assert_eq!(again.serial_hex, sca.serial_hex);
    assert_eq!(env.ca.stats().new_orders, 2);

    // The service provider signs a delegate certificate for one of its numbers.
    let sca_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(sca.private_key_pkcs8_der.clone()),
        &PKCS_ECDSA_P256_SHA256,
    )
    .expect("the returned key is P-256 PKCS#8");
    let issuer = Issuer::from_ca_cert_der(
        &CertificateDer::from(sca.certificate_chain_der[0].clone()),
        sca_key,
    )
    .expect("issuer from the CA certificate");
    let delegate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "SHAKEN delegate 12025550100");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let numbers = TnAuthList::new(vec![TnEntry::one("12025550100").unwrap()]).unwrap();
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            TN_AUTH_LIST_OID,
            numbers.to_der(),
        ));
    let delegate = params.signed_by(&delegate_key, &issuer).unwrap();
    let chain = format!("{}{}", delegate.pem(), sca.certificate_chain_pem);
    let out = openssl_verify(&chain, &env.ca.issuing_root_pem())
        .expect("delegate -> SCA -> intermediate -> root verifies");
    assert!(out.contains("OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_certificate_requests_are_validated() {
    let env = DevEnv::start().await;
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;

    // dns names cannot be a delegate-issuing CA.
    let dns = GetCertificateRequest {
        dns_names: vec!["sip.example.net".into()],
        ca_certificate: true,
        ..Default::default()
    };
    let err = client.get_certificate(dns).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let field = err
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
    assert_eq!(field.as_deref(), Some("ca_certificate"), "{err:?}");

    // A caller CSR must agree with the flag: an end-entity CSR for a CA certificate fails.
    let key = certbroker::shaken::generate_key().unwrap();
    let list = TnAuthList::from_spc("1234").unwrap();
    let csr = certbroker::shaken::build_csr(
        &key,
        &certbroker::shaken::CsrSpec {
            subject: &certbroker::shaken::Subject {
                country: "US".into(),
                organization: "Example".into(),
                common_name: "SHAKEN 1234".into(),
                serial_number: None,
            },
            tn_auth_list: Some(&list),
            dns_names: &[],
            ca: false,
        },
    )
    .unwrap();
    let mismatched = GetCertificateRequest {
        csr_der: csr,
        ..ca_request("1234")
    };
    let err = client.get_certificate(mismatched).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("basicConstraints"), "{err:?}");
    assert_eq!(env.ca.stats().new_orders, 0, "bad requests reach no CA");
}
