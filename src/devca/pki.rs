//! The embedded CA's keys and certificates, and issuance with the SHAKEN profile
//! (ATIS-1000080 v005 §6.4.1 and US SHAKEN CP 1.3/1.4, as the zlint SHAKEN lints encode
//! them; shaken-acme.md §3; each rule and the test that checks it: docs/profile.md).
//!
//! Encoding rules every artefact here follows, because independent parsers reject the
//! alternatives (pyca `cryptography`, pkilint):
//! - An end entity's basicConstraints is the empty SEQUENCE `30 00`: DER forbids encoding
//!   the DEFAULT `cA FALSE` (X.690 §11.5), which rcgen's `IsCa::ExplicitNoCa` writes.
//! - countryName and serialNumber are PrintableString ([`Subject::to_distinguished_name`]).
//! - The SKI is the 160-bit SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 §4.2.1.2
//!   method 1), and every AKI is its issuer's SKI.
//! - Roots carry neither certificatePolicies nor a CRLDP; intermediates, SCAs and end
//!   entities carry the one SHAKEN CP OID and one CRLDP (with a cRLIssuer under CP 1.4).
//! - CRLs are v2 with AKI and CRL number (RFC 5280 §5.2), reason codes only when not
//!   `unspecified` (§5.3.1).
//!
//! With a state directory the PKI persists ([`Pki::load_or_generate`]): both roots, the
//! intermediate, the STI-PA certificate and their keys are saved (keys mode 0600) and
//! reloaded as [`Issuer`]s, whose SKI-derived AKIs and Names are read back from the saved
//! certificates, so a restarted devca signs certificates and both CRLs as the first run did.
//!
//! A little over 500 lines (tests aside): each certificate's profile is one builder next to
//! the others so the profile reads as a whole (shared parameters are in `pki/params.rs`).

use std::{net::IpAddr, path::Path};

use rcgen::{
    CustomExtension, DistinguishedName, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};
use url::Url;

mod params;

use params::*;

use super::{DevCaError, DevProfile};
use crate::shaken::{Subject, TN_AUTH_LIST_OID, TnAuthList, generate_key};

/// Path of the CRL the intermediate signs: end-entity and SCA certificates.
pub(crate) const CRL_PATH: &str = "/download/v1/crl";
/// Path of the CRL the SHAKEN root signs: the intermediate.
pub(crate) const ROOT_CRL_PATH: &str = "/download/v1/root-crl";

/// Everything the embedded CA signs with.
pub(crate) struct Pki {
    profile: DevProfile,
    pub(crate) tls_root_pem: String,
    /// PKCS#8 PEM of the TLS root key: kept in the state directory so a restart signs its
    /// server certificate under the same root.
    tls_root_key_pem: String,
    pub(crate) tls_server_der: Vec<u8>,
    pub(crate) tls_server_key_der: Vec<u8>,
    pub(crate) shaken_root_pem: String,
    /// The SHAKEN root: signs the intermediate, the STI-PA certificate and the root CRL.
    root: Issuer<'static, KeyPair>,
    /// The intermediate: signs end-entity and SCA certificates and their CRL.
    intermediate: Issuer<'static, KeyPair>,
    intermediate_name_der: Vec<u8>,
    pub(crate) intermediate_pem: String,
    /// PKCS#8 DER of the STI-PA token-signing key.
    pub(crate) stipa_key_der: Vec<u8>,
    /// SPKI DER of the STI-PA token-signing key.
    pub(crate) stipa_spki_der: Vec<u8>,
    pub(crate) stipa_cert_pem: String,
    pub(crate) stipa_cert_der: Vec<u8>,
    /// PKCS#8 DER of a key that signs deliberately wrong tokens.
    pub(crate) wrong_key_der: Vec<u8>,
    /// The CRL of end-entity and SCA certificates (the STI-PA token API's `crl`).
    pub(crate) crl_url: String,
}

/// What a certificate is issued for.
pub(crate) struct IssueRequest {
    pub(crate) spki_der: Vec<u8>,
    pub(crate) subject: Subject,
    pub(crate) tn_auth_list: Option<TnAuthList>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ca: bool,
    /// `None`: five minutes before issuance (the usual backdating); STAR certificates give
    /// theirs (issuance minus `lifetime-adjust`, RFC 8739 §3.1.1).
    pub(crate) not_before: Option<OffsetDateTime>,
    pub(crate) not_after: OffsetDateTime,
}

/// An issued certificate.
pub(crate) struct Issued {
    pub(crate) leaf_der: Vec<u8>,
    /// Leaf then intermediate, PEM; the root is not included (RFC 8555 §7.4.2).
    pub(crate) chain_pem: String,
    pub(crate) serial_hex: String,
}

/// A revoked certificate as a CRL lists it.
pub(crate) struct RevokedEntry {
    /// Lowercase hex, no leading zero byte.
    pub(crate) serial_hex: String,
    /// RFC 5280 CRLReason; 0 (unspecified) is left out of the entry (§5.3.1).
    pub(crate) reason: u8,
    pub(crate) revoked_at: OffsetDateTime,
}

impl Pki {
    pub(crate) fn generate(
        base: &Url,
        listen: IpAddr,
        profile: DevProfile,
    ) -> Result<Self, DevCaError> {
        let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
        let key = || generate_key().map_err(|e| DevCaError::Pki(e.to_string()));
        let now = OffsetDateTime::now_utc();

        // The TLS PKI of the HTTPS endpoints: not SHAKEN, so no policies and no CRLDP.
        let tls_root_key = key()?;
        let mut tls_root_params = ca_params(&tls_root_key, now, None);
        tls_root_params.distinguished_name = dn("certbroker devca TLS root")?;
        let tls_root = tls_root_params.self_signed(&tls_root_key).map_err(err)?;
        let tls_issuer = Issuer::from_params(&tls_root_params, &tls_root_key);
        let (tls_server_der, tls_server_key_der) = tls_server(&tls_issuer, listen, now)?;

        // The SHAKEN root: CN with "ROOT", no certificatePolicies, no CRLDP.
        let root_key = key()?;
        let mut root_params = ca_params(&root_key, now, None);
        root_params.distinguished_name = dn("SHAKEN devca ROOT")?;
        let root = root_params.self_signed(&root_key).map_err(err)?;
        let root = Root {
            name_der: subject_der(root.der())?,
            issuer: Issuer::new(root_params, root_key),
            pem: root.pem(),
        };
        let (intermediate_pem, intermediate) =
            sign_intermediate(&root, key()?, base, profile, now)?;

        let stipa_key = key()?;
        let mut stipa_params = ee_params(&stipa_key, now, now + Duration::days(365));
        stipa_params.distinguished_name = dn("STI-PA devca token signing")?;
        let stipa = stipa_params
            .signed_by(&stipa_key, &root.issuer)
            .map_err(err)?;

        Ok(Self {
            profile,
            tls_root_pem: tls_root.pem(),
            tls_root_key_pem: tls_root_key.serialize_pem(),
            tls_server_der,
            tls_server_key_der,
            shaken_root_pem: root.pem,
            root: root.issuer,
            intermediate_name_der: subject_der(&pem_der(&intermediate_pem)?)?,
            intermediate_pem,
            intermediate,
            stipa_key_der: stipa_key.serialize_der(),
            stipa_spki_der: rcgen::PublicKeyData::subject_public_key_info(&stipa_key),
            stipa_cert_pem: stipa.pem(),
            stipa_cert_der: stipa.der().to_vec(),
            wrong_key_der: key()?.serialize_der(),
            crl_url: format!("{}{}", base.as_str(), &CRL_PATH[1..]),
        })
    }

    /// The PKI kept in `dir` by an earlier run, or a new one saved there. The roots, the
    /// intermediate and the STI-PA signing key persist (so trust anchors and any
    /// configuration naming them stay valid across restarts); the TLS server certificate
    /// is signed anew for this run's address. When the saved intermediate does not carry
    /// this run's certificatePolicies (another `profile`) or root-CRL distribution point
    /// (another address), the root signs a new one for the same key and Name, saved in its
    /// place: certificates issued before still chain to it. Keys are written owner-only.
    pub(crate) fn load_or_generate(
        dir: &Path,
        base: &Url,
        listen: IpAddr,
        profile: DevProfile,
    ) -> Result<Self, DevCaError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let [
            Some(tls_root),
            Some(tls_root_key),
            Some(shaken_root),
            Some(shaken_root_key),
            Some(intermediate),
            Some(intermediate_key),
            Some(stipa_cert),
            Some(stipa_key),
        ] = SAVED.map(read)
        {
            let (pki, resigned) = Self::from_saved(
                [
                    &tls_root,
                    &tls_root_key,
                    &shaken_root,
                    &shaken_root_key,
                    &intermediate,
                    &intermediate_key,
                    &stipa_cert,
                    &stipa_key,
                ],
                base,
                listen,
                profile,
            )?;
            if resigned {
                save(dir, "intermediate.pem", &pki.intermediate_pem)?;
            }
            return Ok(pki);
        }
        let pki = Self::generate(base, listen, profile)?;
        let texts = [
            pki.tls_root_pem.clone(),
            pki.tls_root_key_pem.clone(),
            pki.shaken_root_pem.clone(),
            pki.root.key().serialize_pem(),
            pki.intermediate_pem.clone(),
            pki.intermediate.key().serialize_pem(),
            pki.stipa_cert_pem.clone(),
            KeyPair::try_from(pki.stipa_key_der.as_slice())
                .map_err(|e| DevCaError::Pki(e.to_string()))?
                .serialize_pem(),
        ];
        for (name, text) in SAVED.iter().zip(texts) {
            save(dir, name, &text)?;
        }
        Ok(pki)
    }

    /// The PKI from the texts of [`SAVED`], and whether the intermediate was signed anew.
    fn from_saved(
        saved: [&str; 8],
        base: &Url,
        listen: IpAddr,
        profile: DevProfile,
    ) -> Result<(Self, bool), DevCaError> {
        let [
            tls_root,
            tls_root_key,
            shaken_root,
            shaken_root_key,
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
        // Issuers read back from the certificates: Name as encoded, AKI = the saved SKI.
        let root = Root {
            issuer: Issuer::from_ca_cert_pem(
                shaken_root,
                KeyPair::from_pem(shaken_root_key).map_err(err("SHAKEN root key"))?,
            )
            .map_err(err("SHAKEN root"))?,
            name_der: subject_der(&pem_der(shaken_root)?)?,
            pem: shaken_root.to_owned(),
        };
        let intermediate_key =
            KeyPair::from_pem(intermediate_key).map_err(err("intermediate key"))?;
        let intermediate_der = pem_der(intermediate)?;
        let wanted = intermediate_extensions(&root, base, profile);
        let current = wanted
            .iter()
            .all(|ext| contains(&intermediate_der, ext.content()));
        let (intermediate_pem, intermediate) = if current {
            let issuer = Issuer::from_ca_cert_pem(intermediate, intermediate_key)
                .map_err(err("intermediate"))?;
            (intermediate.to_owned(), issuer)
        } else {
            sign_intermediate(&root, intermediate_key, base, profile, now)?
        };
        let stipa_key = KeyPair::from_pem(stipa_key).map_err(err("STI-PA key"))?;
        let stipa_cert_der = crate::shaken::parse_pem_chain(stipa_cert)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| DevCaError::Pki("saved STI-PA certificate does not parse".into()))?;
        let pki = Self {
            profile,
            tls_root_pem: tls_root.to_owned(),
            tls_root_key_pem: tls_root_key.to_owned(),
            tls_server_der,
            tls_server_key_der,
            shaken_root_pem: root.pem,
            root: root.issuer,
            intermediate_name_der: subject_der(&pem_der(&intermediate_pem)?)?,
            intermediate_pem,
            intermediate,
            stipa_key_der: stipa_key.serialize_der(),
            stipa_spki_der: rcgen::PublicKeyData::subject_public_key_info(&stipa_key),
            stipa_cert_pem: stipa_cert.to_owned(),
            stipa_cert_der,
            wrong_key_der: generate_key()
                .map_err(|e| DevCaError::Pki(e.to_string()))?
                .serialize_der(),
            crl_url: format!("{}{}", base.as_str(), &CRL_PATH[1..]),
        };
        Ok((pki, !current))
    }

    /// Issues a SHAKEN certificate from the intermediate: random 128-bit serial; subject C,
    /// O, CN (and serialNumber) from the CSR, re-encoded; under CP 1.3 a serialNumber the
    /// CSR lacks becomes the certificate serial in uppercase hex (CP 1.3 §3.1: "shall");
    /// basicConstraints and keyUsage critical; SKI, AKI, the profile's CP OID, a CRLDP at
    /// the intermediate's CRL and the TNAuthList non-critical.
    pub(crate) fn issue(&self, req: &IssueRequest) -> Result<Issued, DevCaError> {
        let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
        let now = OffsetDateTime::now_utc();
        let spki = SubjectPublicKeyInfo::from_der(&req.spki_der).map_err(err)?;
        let mut params = if req.ca {
            let mut p = ca_params(&spki, now, Some(0));
            p.not_after = req.not_after;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            p
        } else {
            ee_params(&spki, now, req.not_after)
        };
        if let Some(nb) = req.not_before {
            params.not_before = nb;
        }
        let mut subject = req.subject.clone();
        if subject.serial_number.is_none() && self.profile == DevProfile::UsCp13 {
            subject.serial_number = Some(serial_hex(&params).to_ascii_uppercase());
        }
        params.distinguished_name = subject
            .to_distinguished_name()
            .map_err(|e| DevCaError::Pki(e.to_string()))?;
        params
            .custom_extensions
            .push(certificate_policies(self.profile));
        params.custom_extensions.push(crl_distribution_point(
            &self.crl_url,
            (self.profile == DevProfile::UsCp14).then_some(self.intermediate_name_der.as_slice()),
        ));
        params.subject_alt_names = req
            .dns_names
            .iter()
            .map(|n| n.clone().try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        if let Some(list) = &req.tn_auth_list {
            let mut ext = CustomExtension::from_oid_content(TN_AUTH_LIST_OID, list.to_der());
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        let leaf = params.signed_by(&spki, &self.intermediate).map_err(err)?;
        Ok(Issued {
            leaf_der: leaf.der().to_vec(),
            chain_pem: format!("{}{}", leaf.pem(), self.intermediate_pem),
            serial_hex: serial_hex(&params),
        })
    }

    /// The DER CRL of the certificates the intermediate issued, listing `revoked`, valid for
    /// a day. The real SHAKEN CRL is the STI-PA's; one issuer per CRL keeps the devca small.
    pub(crate) fn crl(&self, revoked: &[RevokedEntry]) -> Result<Vec<u8>, DevCaError> {
        sign_crl(&self.intermediate, revoked)
    }

    /// The DER CRL of the CA certificates the root issued (the intermediate, never revoked).
    pub(crate) fn root_crl(&self) -> Result<Vec<u8>, DevCaError> {
        sign_crl(&self.root, &[])
    }

    /// Signs `tbs` (a DER tbsCertificate) with the intermediate's key, ecdsa-with-SHA256, for
    /// the certificates [`super::defect`] changes after issuance.
    pub(crate) fn sign_as_intermediate(&self, tbs: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(self.intermediate.key(), tbs)
    }
}

/// Files of the state directory that hold the persistent PKI, in [`Pki::from_saved`] order.
/// A directory missing any of them (e.g. one written before the root key was kept) gets a
/// new PKI.
const SAVED: [&str; 8] = [
    "tls-root.pem",
    "tls-root-key.pem",
    "shaken-root.pem",
    "shaken-root-key.pem",
    "intermediate.pem",
    "intermediate-key.pem",
    "sti-pa-signing.pem",
    "sti-pa-signing-key.pem",
];

/// Writes one [`SAVED`] file; keys owner-only.
fn save(dir: &Path, name: &str, text: &str) -> Result<(), DevCaError> {
    let path = dir.join(name);
    let written = if name.ends_with("-key.pem") {
        crate::ca::write_private(&path, text.as_bytes())
    } else {
        std::fs::write(&path, text)
    };
    written.map_err(|source| DevCaError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// The SHAKEN root as the intermediate's issuer.
struct Root {
    issuer: Issuer<'static, KeyPair>,
    /// DER of its subject Name: the cRLIssuer of the intermediate's CRLDP under CP 1.4.
    name_der: Vec<u8>,
    pem: String,
}

/// The intermediate's profile extensions: the profile's CP OID and a CRLDP at the root CRL
/// (with the root as cRLIssuer under CP 1.4).
fn intermediate_extensions(root: &Root, base: &Url, profile: DevProfile) -> [CustomExtension; 2] {
    let root_crl_url = format!("{}{}", base.as_str(), &ROOT_CRL_PATH[1..]);
    [
        certificate_policies(profile),
        crl_distribution_point(
            &root_crl_url,
            (profile == DevProfile::UsCp14).then_some(root.name_der.as_slice()),
        ),
    ]
}

/// The intermediate for `key`, signed by `root`: (PEM, issuer). One level below it: the
/// subordinate CA (SCA) certificates it issues for delegate certificates (RFC 9060) must be
/// able to sign end-entity certificates.
fn sign_intermediate(
    root: &Root,
    key: KeyPair,
    base: &Url,
    profile: DevProfile,
    now: OffsetDateTime,
) -> Result<(String, Issuer<'static, KeyPair>), DevCaError> {
    let mut params = ca_params(&key, now, Some(1));
    params.distinguished_name = dn("SHAKEN devca Intermediate")?;
    params
        .custom_extensions
        .extend(intermediate_extensions(root, base, profile));
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(|e| DevCaError::Pki(e.to_string()))?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// The HTTPS server certificate for `listen` (and localhost), signed by the TLS root:
/// (certificate DER, PKCS#8 key DER). An end entity with the same encodings as the SHAKEN
/// ones, but not SHAKEN: no policies, no CRLDP.
fn tls_server(
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    listen: IpAddr,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, Vec<u8>), DevCaError> {
    let err = |e: rcgen::Error| DevCaError::Pki(e.to_string());
    let key = generate_key().map_err(|e| DevCaError::Pki(e.to_string()))?;
    let mut params = ee_params(&key, now, now + Duration::days(365));
    params.distinguished_name = dn("localhost")?;
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(err)?),
        SanType::IpAddress(listen),
    ];
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// `C=US, O=certbroker devca, CN=cn`, country as PrintableString.
fn dn(cn: &str) -> Result<DistinguishedName, DevCaError> {
    Subject {
        country: "US".into(),
        organization: "certbroker devca".into(),
        common_name: cn.into(),
        serial_number: None,
    }
    .to_distinguished_name()
    .map_err(|e| DevCaError::Pki(e.to_string()))
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Result<Vec<u8>, DevCaError> {
    crate::shaken::parse_pem_chain(pem)
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| DevCaError::Pki("a saved certificate does not parse".into()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn sign_crl(issuer: &Issuer<'_, KeyPair>, revoked: &[RevokedEntry]) -> Result<Vec<u8>, DevCaError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .filter_map(|r| Some((hex::decode(&r.serial_hex).ok()?, r)))
        .map(|(serial, r)| rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: r.revoked_at,
            reason_code: revocation_reason(r.reason),
            invalidity_date: None,
        })
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(1),
        // Increases with time, as RFC 5280 §5.2.3 wants, without state.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The AKI is the issuer's SKI: the SHA-1 method-1 identifier of its key, as every
        // certificate here has (also those reloaded from a state directory).
        key_identifier_method: KeyIdMethod::PreSpecified(key_id(issuer.key())),
    };
    Ok(crl
        .signed_by(issuer)
        .map_err(|e| DevCaError::Pki(e.to_string()))?
        .der()
        .to_vec())
}

/// RFC 5280 §5.3.1: the reasonCode entry extension is left out for `unspecified` (0) and
/// for values rcgen cannot name.
fn revocation_reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::{CertInfo, Expected, check_issued, parse_pem_chain};

    fn pki_with(profile: DevProfile) -> Pki {
        Pki::generate(
            &Url::parse("https://127.0.0.1:1/").unwrap(),
            "127.0.0.1".parse().unwrap(),
            profile,
        )
        .unwrap()
    }

    fn pki() -> Pki {
        pki_with(DevProfile::UsCp13)
    }

    fn request(ca: bool) -> (IssueRequest, KeyPair) {
        let key = generate_key().unwrap();
        let req = IssueRequest {
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            subject: Subject::shaken("Example Telecom", "1234"),
            tn_auth_list: Some(TnAuthList::from_spc("1234").unwrap()),
            dns_names: vec![],
            ca,
            not_before: None,
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
        // CP 1.3 §3.1: a CSR without serialNumber gets the certificate serial.
        assert_eq!(
            leaf.subject,
            req.subject
                .clone()
                .with_serial_number(issued.serial_hex.to_ascii_uppercase())
        );
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
        let der = pki
            .crl(&[RevokedEntry {
                serial_hex: issued.serial_hex.clone(),
                reason: 1,
                revoked_at: OffsetDateTime::now_utc(),
            }])
            .unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![issued.serial_hex]);
    }

    #[test]
    fn end_entity_basic_constraints_is_the_empty_sequence_and_ski_is_sha1() {
        let pki = pki();
        let (req, key) = request(false);
        let der = pki.issue(&req).unwrap().leaf_der;
        // Extension { 2.5.29.19, critical TRUE, OCTET STRING { SEQUENCE {} } }: no cA FALSE.
        let needle = hex::decode("0603551d130101ff04023000").unwrap();
        assert!(der.windows(needle.len()).any(|w| w == needle.as_slice()));
        let info = CertInfo::parse(&der).unwrap();
        let sha1 = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            rcgen::PublicKeyData::der_bytes(&key),
        );
        assert_eq!(info.subject_key_id.as_deref(), Some(sha1.as_ref()));
    }

    #[test]
    fn cp_1_4_has_its_policy_a_crl_issuer_and_adds_no_serial_number() {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let pki = pki_with(DevProfile::UsCp14);
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let info = CertInfo::parse(&issued.leaf_der).unwrap();
        assert_eq!(info.policy_oids, vec!["2.16.840.1.114569.1.1.4".to_owned()]);
        assert_eq!(
            info.subject, req.subject,
            "serialNumber only when the CSR has one"
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
        let crl_issuer = x509
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(p) => p.points[0].crl_issuer.clone(),
                _ => None,
            })
            .expect("cRLIssuer");
        match &crl_issuer[..] {
            [GeneralName::DirectoryName(name)] => assert_eq!(name, x509.issuer()),
            other => panic!("cRLIssuer {other:?}"),
        }
    }

    fn load(dir: &Path, port: u16, profile: DevProfile) -> Pki {
        Pki::load_or_generate(
            dir,
            &Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap(),
            "127.0.0.1".parse().unwrap(),
            profile,
        )
        .unwrap()
    }

    /// What [`end_entity_has_the_shaken_profile`] checks, for any PKI: the chain checks out,
    /// the leaf's AKI is the intermediate's SKI, and the CRL's AKI the intermediate's too.
    fn issues_and_signs_crls(pki: &Pki) -> CertInfo {
        let (req, _key) = request(false);
        let issued = pki.issue(&req).unwrap();
        let chain = parse_pem_chain(&issued.chain_pem).unwrap();
        let leaf = check_issued(
            &chain,
            &Expected {
                tn_auth_list: req.tn_auth_list.as_ref(),
                dns_names: &[],
                public_key_spki_der: &req.spki_der,
                ca: false,
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let intermediate = CertInfo::parse(&chain[1]).unwrap();
        assert_eq!(leaf.authority_key_id, intermediate.subject_key_id);
        let root_der = pem_der(&pki.shaken_root_pem).unwrap();
        let root = CertInfo::parse(&root_der).unwrap();
        assert_eq!(intermediate.authority_key_id, root.subject_key_id);
        let crls = [
            (
                pki.crl(&[]).unwrap(),
                &intermediate,
                subject_der(&chain[1]).unwrap(),
            ),
            (
                pki.root_crl().unwrap(),
                &root,
                subject_der(&root_der).unwrap(),
            ),
        ];
        for (der, issuer, issuer_name) in crls {
            let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
            let aki = crl
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            assert_eq!(aki, issuer.subject_key_id, "CRL AKI is its issuer's SKI");
            assert_eq!(crl.issuer().as_raw(), issuer_name.as_slice());
        }
        leaf
    }

    #[test]
    fn a_reloaded_pki_keeps_its_roots_and_signs_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(dir.path(), 1, DevProfile::UsCp13);
        issues_and_signs_crls(&first);
        #[cfg(unix)]
        for key in [
            "tls-root-key.pem",
            "shaken-root-key.pem",
            "intermediate-key.pem",
        ] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let again = load(dir.path(), 1, DevProfile::UsCp13);
        assert_eq!(again.shaken_root_pem, first.shaken_root_pem);
        assert_eq!(again.tls_root_pem, first.tls_root_pem);
        assert_eq!(
            again.intermediate_pem, first.intermediate_pem,
            "kept as it was"
        );
        issues_and_signs_crls(&again);
    }

    #[test]
    fn a_reload_with_another_profile_or_address_signs_a_new_intermediate_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(dir.path(), 1, DevProfile::UsCp13);
        let first_inter =
            CertInfo::parse(&parse_pem_chain(&first.intermediate_pem).unwrap()[0]).unwrap();
        let moved = load(dir.path(), 2, DevProfile::UsCp14);
        assert_eq!(moved.shaken_root_pem, first.shaken_root_pem);
        assert_ne!(moved.intermediate_pem, first.intermediate_pem);
        let der = &parse_pem_chain(&moved.intermediate_pem).unwrap()[0];
        let inter = CertInfo::parse(der).unwrap();
        assert_eq!(
            inter.policy_oids,
            vec!["2.16.840.1.114569.1.1.4".to_owned()]
        );
        assert_eq!(inter.subject_key_id, first_inter.subject_key_id, "same key");
        assert_eq!(inter.subject, first_inter.subject, "same Name");
        assert!(contains(der, b"https://127.0.0.1:2/download/v1/root-crl"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("intermediate.pem")).unwrap(),
            moved.intermediate_pem,
            "saved in place"
        );
        let leaf = issues_and_signs_crls(&moved);
        assert_eq!(leaf.policy_oids, inter.policy_oids);
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
