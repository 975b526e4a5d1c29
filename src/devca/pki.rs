//! The embedded CA's keys and certificates, and issuance with the SHAKEN profile
//! (ATIS-1000080 §6.4.1, as the zlint SHAKEN lints encode it; shaken-acme.md §3).

use std::{net::IpAddr, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};
use url::Url;

use super::DevCaError;
use crate::shaken::{Subject, TN_AUTH_LIST_OID, TnAuthList, generate_key};

/// certificatePolicies with the one SHAKEN CP v1.3 policy OID 2.16.840.1.114569.1.1.3.
pub(crate) const SHAKEN_CP_1_3_DER: &[u8] = &[
    0x30, 0x0e, 0x30, 0x0c, 0x06, 0x0a, 0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01, 0x03,
];
const CERTIFICATE_POLICIES_OID: &[u64] = &[2, 5, 29, 32];

/// Everything the embedded CA signs with.
pub(crate) struct Pki {
    pub(crate) tls_root_pem: String,
    /// PKCS#8 PEM of the TLS root key: kept in the state directory so a restart signs its
    /// server certificate under the same root.
    tls_root_key_pem: String,
    pub(crate) tls_server_der: Vec<u8>,
    pub(crate) tls_server_key_der: Vec<u8>,
    pub(crate) shaken_root_pem: String,
    intermediate: Issuer<'static, KeyPair>,
    pub(crate) intermediate_pem: String,
    /// PKCS#8 DER of the STI-PA token-signing key.
    pub(crate) stipa_key_der: Vec<u8>,
    /// SPKI DER of the STI-PA token-signing key.
    pub(crate) stipa_spki_der: Vec<u8>,
    pub(crate) stipa_cert_pem: String,
    pub(crate) stipa_cert_der: Vec<u8>,
    /// PKCS#8 DER of a key that signs deliberately wrong tokens.
    pub(crate) wrong_key_der: Vec<u8>,
    pub(crate) crl_url: String,
}

/// What a certificate is issued for.
pub(crate) struct IssueRequest {
    pub(crate) spki_der: Vec<u8>,
    pub(crate) subject: Subject,
    pub(crate) tn_auth_list: Option<TnAuthList>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ca: bool,
    pub(crate) not_after: OffsetDateTime,
}

/// An issued certificate.
pub(crate) struct Issued {
    pub(crate) leaf_der: Vec<u8>,
    /// Leaf then intermediate, PEM; the root is not included (RFC 8555 §7.4.2).
    pub(crate) chain_pem: String,
    pub(crate) serial_hex: String,
}

impl Pki {
    pub(crate) fn generate(base: &Url, listen: IpAddr) -> Result<Self, DevCaError> {
        let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
        let key = || generate_key().map_err(|e| DevCaError::Pki(e.to_string()));
        let now = OffsetDateTime::now_utc();
        let crl_url = format!("{}download/v1/crl", base.as_str());

        let tls_root_key = key()?;
        let tls_root_params = ca_params(
            Subject {
                country: "US".into(),
                organization: "certbroker devca".into(),
                common_name: "certbroker devca TLS root".into(),
            },
            now,
            None,
        );
        let tls_root = tls_root_params.self_signed(&tls_root_key).map_err(err)?;
        let tls_issuer = Issuer::from_params(&tls_root_params, &tls_root_key);
        let (tls_server_der, tls_server_key_der) = tls_server(&tls_issuer, listen, now)?;

        let root_key = key()?;
        let root_params = ca_params(
            Subject {
                country: "US".into(),
                organization: "certbroker devca".into(),
                common_name: "SHAKEN devca Root".into(),
            },
            now,
            None,
        );
        let root = root_params.self_signed(&root_key).map_err(err)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let intermediate_key = key()?;
        let intermediate_params = ca_params(
            Subject {
                country: "US".into(),
                organization: "certbroker devca".into(),
                common_name: "SHAKEN devca Intermediate".into(),
            },
            now,
            // One level below: the subordinate CA (SCA) certificates it issues for delegate
            // certificates (RFC 9060) must be able to sign end-entity certificates.
            Some(1),
        );
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .map_err(err)?;

        let stipa_key = key()?;
        let mut stipa_params = leaf_params(now, now + Duration::days(365));
        stipa_params.distinguished_name = Subject {
            country: "US".into(),
            organization: "certbroker devca".into(),
            common_name: "STI-PA devca token signing".into(),
        }
        .to_distinguished_name();
        let stipa = stipa_params
            .signed_by(&stipa_key, &root_issuer)
            .map_err(err)?;

        Ok(Self {
            tls_root_pem: tls_root.pem(),
            tls_root_key_pem: tls_root_key.serialize_pem(),
            tls_server_der,
            tls_server_key_der,
            shaken_root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            intermediate: Issuer::new(intermediate_params, intermediate_key),
            stipa_key_der: stipa_key.serialize_der(),
            stipa_spki_der: rcgen::PublicKeyData::subject_public_key_info(&stipa_key),
            stipa_cert_pem: stipa.pem(),
            stipa_cert_der: stipa.der().to_vec(),
            wrong_key_der: key()?.serialize_der(),
            crl_url,
        })
    }

    /// The PKI kept in `dir` by an earlier run, or a new one saved there. The roots, the
    /// intermediate and the STI-PA signing key persist (so trust anchors and any
    /// configuration naming them stay valid across restarts); the TLS server certificate
    /// is signed anew for this run's address. Keys are written owner-only.
    pub(crate) fn load_or_generate(
        dir: &Path,
        base: &Url,
        listen: IpAddr,
    ) -> Result<Self, DevCaError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let [
            Some(tls_root),
            Some(tls_root_key),
            Some(shaken_root),
            Some(intermediate),
            Some(intermediate_key),
            Some(stipa_cert),
            Some(stipa_key),
        ] = SAVED.map(read)
        {
            return Self::from_saved(
                [
                    &tls_root,
                    &tls_root_key,
                    &shaken_root,
                    &intermediate,
                    &intermediate_key,
                    &stipa_cert,
                    &stipa_key,
                ],
                base,
                listen,
            );
        }
        let pki = Self::generate(base, listen)?;
        let texts = [
            pki.tls_root_pem.clone(),
            pki.tls_root_key_pem.clone(),
            pki.shaken_root_pem.clone(),
            pki.intermediate_pem.clone(),
            pki.intermediate.key().serialize_pem(),
            pki.stipa_cert_pem.clone(),
            KeyPair::try_from(pki.stipa_key_der.as_slice())
                .map_err(|e| DevCaError::Pki(e.to_string()))?
                .serialize_pem(),
        ];
        for (name, text) in SAVED.iter().zip(texts) {
            let path = dir.join(name);
            let written = if name.ends_with("-key.pem") {
                crate::ca::write_private(&path, text.as_bytes())
            } else {
                std::fs::write(&path, text)
            };
            written.map_err(|source| DevCaError::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok(pki)
    }

    fn from_saved(saved: [&str; 7], base: &Url, listen: IpAddr) -> Result<Self, DevCaError> {
        let [
            tls_root,
            tls_root_key,
            shaken_root,
            intermediate,
            intermediate_key,
            stipa_cert,
            stipa_key,
        ] = saved;
        let err = |what: &'static str| {
            move |e: rcgen::Error| DevCaError::Pki(format!("saved {what}: {e}"))
        };
        let now = OffsetDateTime::now_utc();
        let tls_issuer = Issuer::from_ca_cert_pem(
            tls_root,
            KeyPair::from_pem(tls_root_key).map_err(err("TLS root key"))?,
        )
        .map_err(err("TLS root"))?;
        let (tls_server_der, tls_server_key_der) = tls_server(&tls_issuer, listen, now)?;
        let stipa_key = KeyPair::from_pem(stipa_key).map_err(err("STI-PA key"))?;
        let stipa_cert_der = crate::shaken::parse_pem_chain(stipa_cert)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| DevCaError::Pki("saved STI-PA certificate does not parse".into()))?;
        Ok(Self {
            tls_root_pem: tls_root.to_owned(),
            tls_root_key_pem: tls_root_key.to_owned(),
            tls_server_der,
            tls_server_key_der,
            shaken_root_pem: shaken_root.to_owned(),
            intermediate: Issuer::from_ca_cert_pem(
                intermediate,
                KeyPair::from_pem(intermediate_key).map_err(err("intermediate key"))?,
            )
            .map_err(err("intermediate"))?,
            intermediate_pem: intermediate.to_owned(),
            stipa_key_der: stipa_key.serialize_der(),
            stipa_spki_der: rcgen::PublicKeyData::subject_public_key_info(&stipa_key),
            stipa_cert_pem: stipa_cert.to_owned(),
            stipa_cert_der,
            wrong_key_der: generate_key()
                .map_err(|e| DevCaError::Pki(e.to_string()))?
                .serialize_der(),
            crl_url: format!("{}download/v1/crl", base.as_str()),
        })
    }

    /// Issues a SHAKEN certificate from the intermediate: random 128-bit serial, subject
    /// copied from the CSR, BasicConstraints and KeyUsage critical, SKI, AKI, the SHAKEN
    /// CP OID, a CRLDP at the STI-PA CRL and the TNAuthList non-critical.
    pub(crate) fn issue(&self, req: &IssueRequest) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = leaf_params(now, req.not_after);
        params.distinguished_name = req.subject.to_distinguished_name();
        if req.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
        }
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![self.crl_url.clone()],
        }];
        params.subject_alt_names = req
            .dns_names
            .iter()
            .map(|n| n.clone().try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()?;
        if let Some(list) = &req.tn_auth_list {
            let mut ext = CustomExtension::from_oid_content(TN_AUTH_LIST_OID, list.to_der());
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        let spki = SubjectPublicKeyInfo::from_der(&req.spki_der)?;
        let leaf = params.signed_by(&spki, &self.intermediate)?;
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        Ok(Issued {
            leaf_der: leaf.der().to_vec(),
            chain_pem: format!("{}{}", leaf.pem(), self.intermediate_pem),
            serial_hex: serial_hex.trim_start_matches("00").to_owned(),
        })
    }
}

impl Pki {
    /// A DER CRL signed by the intermediate, listing the revoked serials (lowercase hex),
    /// each with its reasonCode entry extension (none for unspecified, RFC 5280 §5.3.1),
    /// valid for a day. The real SHAKEN CRL is the STI-PA's; one issuer keeps the devca
    /// small.
    pub(crate) fn crl(
        &self,
        revoked_serials: &[(String, Option<rcgen::RevocationReason>)],
    ) -> Result<Vec<u8>, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked_serials
            .iter()
            .filter_map(|(s, reason)| Some((hex::decode(s).ok()?, *reason)))
            .map(|(serial, reason)| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: now,
                // rcgen writes no reasonCode for `Unspecified`, as RFC 5280 §5.3.1 asks.
                reason_code: reason,
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.intermediate)?.der().to_vec())
    }
}

/// Files of the state directory that hold the persistent PKI, in [`Pki::from_saved`] order.
const SAVED: [&str; 7] = [
    "tls-root.pem",
    "tls-root-key.pem",
    "shaken-root.pem",
    "intermediate.pem",
    "intermediate-key.pem",
    "sti-pa-signing.pem",
    "sti-pa-signing-key.pem",
];

/// The HTTPS server certificate for `listen` (and localhost), signed by the TLS root:
/// (certificate DER, PKCS#8 key DER).
fn tls_server(
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    listen: IpAddr,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, Vec<u8>), DevCaError> {
    let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
    let key = generate_key().map_err(|e| DevCaError::Pki(e.to_string()))?;
    let mut params = leaf_params(now, now + Duration::days(365));
    params.distinguished_name = Subject {
        country: "US".into(),
        organization: "certbroker devca".into(),
        common_name: "localhost".into(),
    }
    .to_distinguished_name();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(err)?),
        SanType::IpAddress(listen),
    ];
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// A CA certificate: CA:TRUE (critical, optional pathLen), keyCertSign + cRLSign (critical),
/// SKI, AKI, the SHAKEN CP; valid ten years.
fn ca_params(subject: Subject, now: OffsetDateTime, path_len: Option<u8>) -> CertificateParams {
    let mut p = leaf_params(now, now + Duration::days(3650));
    p.distinguished_name = subject.to_distinguished_name();
    p.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// End-entity defaults: CA:FALSE (critical) + SKI, digitalSignature (critical), AKI, the
/// SHAKEN CP, a random positive serial of 128 bits.
fn leaf_params(now: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = now - Duration::minutes(5);
    p.not_after = not_after;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = rand::random();
    // Positive and exactly 16 bytes: clear the sign bit, set the next one.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.custom_extensions.push(CustomExtension::from_oid_content(
        CERTIFICATE_POLICIES_OID,
        SHAKEN_CP_1_3_DER.to_vec(),
    ));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::{CertInfo, Expected, check_issued, parse_pem_chain};

    fn pki() -> Pki {
        Pki::generate(
            &Url::parse("https://127.0.0.1:1/").unwrap(),
            "127.0.0.1".parse().unwrap(),
        )
        .unwrap()
    }

    fn request(ca: bool) -> (IssueRequest, KeyPair) {
        let key = generate_key().unwrap();
        let req = IssueRequest {
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            subject: Subject::shaken("Example Telecom", "1234"),
            tn_auth_list: Some(TnAuthList::from_spc("1234").unwrap()),
            dns_names: vec![],
            ca,
            not_after: OffsetDateTime::now_utc() + Duration::days(1),
        };
        (req, key)
    }

    #[test]
    fn end_entity_has_the_shaken_profile() {
        let pki = pki();
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let chain = parse_pem_chain(&issued.chain_pem).unwrap();
        assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
        let leaf = check_issued(
            &chain,
            &Expected {
                tn_auth_list: req.tn_auth_list.as_ref(),
                dns_names: &[],
                public_key_spki_der: &req.spki_der,
                ca: req.ca,
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(leaf.serial_hex, issued.serial_hex);
        assert!(leaf.serial_hex.len() >= 16, "serial of at least 64 bits");
        assert_eq!(leaf.subject, req.subject);
        assert!(!leaf.is_ca);
        assert_eq!(leaf.policy_oids, vec!["2.16.840.1.114569.1.1.3".to_owned()]);
        assert!(leaf.subject_key_id.is_some() && leaf.authority_key_id.is_some());
        let critical: Vec<&str> = leaf
            .extensions
            .iter()
            .filter(|(_, c)| *c)
            .map(|(o, _)| o.as_str())
            .collect();
        assert_eq!(
            critical.len(),
            2,
            "only BasicConstraints and KeyUsage: {critical:?}"
        );
        assert!(critical.contains(&"2.5.29.19") && critical.contains(&"2.5.29.15"));
        assert!(
            leaf.extensions.iter().any(|(o, _)| o == "2.5.29.31"),
            "CRLDP"
        );
        let intermediate = CertInfo::parse(&chain[1]).unwrap();
        assert!(intermediate.is_ca);
        assert!(intermediate.tn_auth_list.is_none());
        assert_eq!(leaf.authority_key_id, intermediate.subject_key_id);
    }

    #[test]
    fn ca_request_gives_a_ca_certificate() {
        let pki = pki();
        let (req, _key) = request(true);
        let chain = parse_pem_chain(&pki.issue(&req).unwrap().chain_pem).unwrap();
        assert!(CertInfo::parse(&chain[0]).unwrap().is_ca);
    }

    #[test]
    fn crl_lists_revoked_serials() {
        let pki = pki();
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let der = pki.crl(&[(issued.serial_hex.clone(), None)]).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![issued.serial_hex]);
    }

    #[test]
    fn serials_differ() {
        let pki = pki();
        let (req, _key) = request(false);
        let a = pki.issue(&req).unwrap();
        let b = pki.issue(&req).unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
    }
}
