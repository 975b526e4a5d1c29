//! Every certificate kind the devca issues, its CRLs and the broker's CSRs, checked by
//! implementations no one here wrote: pkilint (`lint_pkix_cert`, `lint_crl`) and pyca
//! `cryptography` (strict DER; every extension read), plus the SHAKEN profile rules of
//! docs/profile.md, checked in tests/python/lint_pki.py with pyca. `./scripts/test` installs
//! both. Each artefact is obtained the way a user gets it: certificates through the broker's
//! gRPC API, CRLs over HTTPS from the distribution points the certificates name, CSRs as the
//! devca received them at finalize.

use crate::support::common;

use std::{path::Path, process::Command};

use certbroker::{
    devca::{DevCa, DevCaSettings, DevProfile},
    pb::{
        self, GetCertificateRequest, RevokeRequest, TnAuthEntry, revoke_request::Target,
        tn_auth_entry::Entry,
    },
    shaken::{CertInfo, TnAuthList, TnEntry},
};
use common::{DevEnv, TestBroker, spc_request};
use serde_json::{Value, json};

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

fn write(dir: &Path, name: &str, der: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, der).unwrap();
    path.display().to_string()
}

/// The devca settings of these tests: this profile, TN lists allowed (so the leaf with TNs
/// and a range can be ordered).
fn settings(profile: DevProfile) -> DevCaSettings {
    DevCaSettings {
        profile,
        allow_tn_lists: true,
        ..DevCaSettings::default()
    }
}

/// Obtains every artefact from a devca with this profile and runs the Python checks over them.
async fn lint_profile(profile: DevProfile, name: &str) {
    lint(DevEnv::start_with(settings(profile)).await, name).await;
}

/// A devca started in the state directory a stopped one (profile `first`) left: on the same
/// port, or on a new one (so the root CRL has moved). Its roots must be the saved ones.
async fn restarted(first: DevProfile, then: DevProfile, same_port: bool) -> DevEnv {
    let DevEnv { ca, dir } = DevEnv::start_with(settings(first)).await;
    let (root, tls_root) = (ca.issuing_root_pem(), ca.trust_root_pem());
    let port = ca.sti_pa_url().port().unwrap();
    ca.shutdown().await;
    let ca = DevCa::start(DevCaSettings {
        state_dir: Some(dir.path().join("devca")),
        port: if same_port { port } else { 0 },
        ..settings(then)
    })
    .await
    .expect("devca restarts in its state directory");
    assert_eq!(ca.issuing_root_pem(), root, "the saved SHAKEN root");
    assert_eq!(ca.trust_root_pem(), tls_root, "the saved TLS root");
    DevEnv { ca, dir }
}

async fn lint(env: DevEnv, name: &str) {
    let broker = TestBroker::start(vec![env.ca_settings("devca")]).await;
    let mut client = broker.client().await;
    let dir = env.dir.path().join("lint");
    std::fs::create_dir_all(&dir).unwrap();

    let leaf = client
        .get_certificate(spc_request("1234"))
        .await
        .expect("leaf issued")
        .into_inner();
    let tn_list = TnAuthList::new(vec![
        TnEntry::spc("818H").unwrap(),
        TnEntry::one("12155551212").unwrap(),
        TnEntry::range("12155551000", 100).unwrap(),
    ])
    .unwrap();
    let tn_leaf = client
        .get_certificate(GetCertificateRequest {
            tn_auth_list: vec![
                TnAuthEntry {
                    entry: Some(Entry::Spc("818H".into())),
                },
                TnAuthEntry {
                    entry: Some(Entry::Tn("12155551212".into())),
                },
                TnAuthEntry {
                    entry: Some(Entry::Range(pb::TelephoneNumberRange {
                        start: "12155551000".into(),
                        count: 100,
                    })),
                },
            ],
            ..Default::default()
        })
        .await
        .expect("leaf with TNs and a range issued (allow_tn_lists)")
        .into_inner();
    let sca = client
        .get_certificate(GetCertificateRequest {
            ca_certificate: true,
            ..spc_request("5678")
        })
        .await
        .expect("SCA issued")
        .into_inner();
    // A revocation, so the CRL has an entry to lint.
    client
        .revoke(RevokeRequest {
            target: Some(Target::SerialHex(leaf.serial_hex.clone())),
            reason: pb::RevocationReason::KeyCompromise as i32,
        })
        .await
        .expect("revoked");
    let revoked_serial = CertInfo::parse(&leaf.certificate_chain_der[0])
        .unwrap()
        .serial_hex;

    let csrs = env.ca.csrs();
    assert_eq!(csrs.len(), 3, "one CSR per issuance reached the devca");
    let base = env.ca.sti_pa_url();
    let item = |kind: &str, der: &[u8], role: &str| json!({"kind": kind, "file": write(&dir, &format!("{}.der", kind.replace(' ', "-")), der), "role": role});
    let mut items = vec![
        item("root", &pem_to_der(&env.ca.issuing_root_pem()), "root"),
        item(
            "intermediate",
            &leaf.certificate_chain_der[1],
            "intermediate",
        ),
        item("leaf", &leaf.certificate_chain_der[0], "ee"),
        item("tn leaf", &tn_leaf.certificate_chain_der[0], "ee"),
        item("sca", &sca.certificate_chain_der[0], "sca"),
        json!({
            "kind": "sti-pa",
            "file": dir.join("sti-pa.der").display().to_string(),
            "role": "sti-pa",
            "issuer": "root",
            "url": base.join("download/v1/certificate/sti-pa.crt").unwrap().as_str(),
        }),
        item("tls root", &pem_to_der(&env.ca.trust_root_pem()), "tls"),
        json!({
            "kind": "tls server",
            "file": dir.join("tls-server.der").display().to_string(),
            "role": "tls",
            "tls_endpoint": format!("{}:{}", base.host_str().unwrap(), base.port().unwrap()),
        }),
    ];
    // Issuers come before what they issued: the script verifies each signature and AKI.
    items[1]["issuer"] = json!("root");
    for i in [2, 3, 4] {
        items[i]["issuer"] = json!("intermediate");
    }
    items[2]["tn_auth_list_hex"] = json!("3008a006160431323334");
    items[3]["tn_auth_list_hex"] = json!(hex::encode(tn_list.to_der()));
    items[3]["tn_list_allowed"] = json!(true);
    // The broker's default serialNumber template is `{spc}-{random}` (64 random bits, hex).
    for (i, (csr, spc)) in csrs.iter().zip(["1234", "818H", "5678"]).enumerate() {
        let mut it = item(&format!("broker csr {i}"), csr, "csr");
        it["serial_number_pattern"] = json!(format!("{spc}-[0-9A-F]{{16}}"));
        items.push(it);
    }
    let kinds: Vec<String> = items
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_owned())
        .collect();
    let manifest = json!({
        "profile": name,
        "trust_root": env.ca.trust_root_path().display().to_string(),
        "revoked_serials": {"intermediate": [revoked_serial]},
        "items": items,
    });
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/lint_pki.py"
        ))
        .arg(&manifest_path)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture: what was checked, and the allowed NOTICE/WARNING findings.
    println!("CP {name}:\n{stdout}");
    assert!(
        out.status.success(),
        "CP {name}: independent checks failed (scripts/test installs pkilint and cryptography):\n\
         {stdout}\n{stderr}"
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON report per line"))
        .collect();
    // Every artefact was really checked: one report each, none empty, two CRLs fetched
    // (the intermediate's for end entities and SCAs, the root's for the intermediate).
    for kind in &kinds {
        let r = reports
            .iter()
            .find(|r| r["kind"] == kind.as_str())
            .unwrap_or_else(|| panic!("no report for {kind}:\n{stdout}"));
        assert!(r["checks"].as_u64().unwrap() > 0, "{kind} unchecked: {r}");
    }
    let crls: Vec<&Value> = reports
        .iter()
        .filter(|r| r["kind"].as_str().unwrap().starts_with("crl "))
        .collect();
    assert_eq!(crls.len(), 2, "{stdout}");
    assert!(
        crls.iter().all(|r| r["checks"].as_u64().unwrap() > 5),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devca_artefacts_and_broker_csrs_pass_pkilint_and_pyca_cp_1_3() {
    lint_profile(DevProfile::UsCp13, "1.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devca_artefacts_and_broker_csrs_pass_pkilint_and_pyca_cp_1_4() {
    lint_profile(DevProfile::UsCp14, "1.4").await;
}

/// The PKI a devca reloads from its state directory (roots, intermediate, STI-PA key) still
/// issues certificates and both CRLs that pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_devca_still_passes_pkilint_and_pyca_cp_1_3() {
    lint(
        restarted(DevProfile::UsCp13, DevProfile::UsCp13, true).await,
        "1.3",
    )
    .await;
}

/// Restarted with another profile and address: the root signs a new intermediate (CP 1.4
/// policy, the new root-CRL URI with its cRLIssuer) and everything passes under CP 1.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devca_restarted_as_cp_1_4_elsewhere_still_passes_pkilint_and_pyca() {
    lint(
        restarted(DevProfile::UsCp13, DevProfile::UsCp14, false).await,
        "1.4",
    )
    .await;
}
