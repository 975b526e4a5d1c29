//! The SHAKEN certificate profile of a TNAuthList leaf (ATIS-1000080 v005 §6.4.1, US SHAKEN
//! CP 1.3/1.4): algorithms, subject, extensions and their criticality, key usage, CRL
//! distribution points. The RFC 5280 encoding rules every certificate follows are in
//! [`super`].

use x509_cert::{
    Certificate,
    ext::pkix::{
        AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, CrlDistributionPoints,
        KeyUsage, KeyUsages,
        name::{DistributionPointName, GeneralName},
    },
    name::Name,
};

use super::{
    ANY_POLICY, AT_COMMON_NAME, AT_COUNTRY, AT_ORGANIZATION, AT_SERIAL_NUMBER, AUTHORITY_KEY_ID,
    BASIC_CONSTRAINTS, CERTIFICATE_POLICIES, CRL_DISTRIBUTION_POINTS, ECDSA_WITH_SHA256, Findings,
    KEY_USAGE, Oid, SHAKEN_CP_1_4, SHAKEN_CP_ARC, SUBJECT_KEY_ID, TN_AUTH_LIST, decoded, ext_name,
    extension,
};

/// The SHAKEN profile of an STI end-entity or SCA certificate.
pub(super) fn shaken(cert: &Certificate, f: &mut Findings<'_>) {
    let tbs = &cert.tbs_certificate;
    for (which, alg) in [
        ("signatureAlgorithm", &cert.signature_algorithm),
        ("tbsCertificate.signature", &tbs.signature),
    ] {
        if alg.oid == ECDSA_WITH_SHA256 && alg.parameters.is_some() {
            f.push(
                "signature_algorithm_parameters",
                format!("{which}: ecdsa-with-SHA256 carries parameters"),
            );
        }
    }
    let magnitude = tbs
        .serial_number
        .as_bytes()
        .iter()
        .skip_while(|b| **b == 0)
        .count();
    if magnitude < 8 {
        f.push(
            "serial_number_short",
            format!(
                "serial number has {} significant octets, fewer than 8",
                magnitude
            ),
        );
    }

    let policies: Vec<Oid> = decoded::<CertificatePolicies>(cert, CERTIFICATE_POLICIES)
        .and_then(|(_, p)| p)
        .map(|p| p.0.iter().map(|i| i.policy_identifier).collect())
        .unwrap_or_default();
    let cp_1_4 = policies.contains(&SHAKEN_CP_1_4);

    subject(&tbs.subject, cp_1_4, f);

    let is_ca = match decoded::<BasicConstraints>(cert, BASIC_CONSTRAINTS) {
        None => {
            f.push("basic_constraints_missing", "no basicConstraints extension");
            false
        }
        Some((critical, bc)) => {
            if !critical {
                f.push(
                    "basic_constraints_not_critical",
                    "basicConstraints is not critical",
                );
            }
            let bc = bc.unwrap_or(BasicConstraints {
                ca: false,
                path_len_constraint: None,
            });
            if !bc.ca && bc.path_len_constraint.is_some() {
                f.push(
                    "basic_constraints_path_len",
                    "an end-entity certificate carries a pathLenConstraint",
                );
            }
            bc.ca
        }
    };

    match decoded::<KeyUsage>(cert, KEY_USAGE) {
        None => f.push("key_usage_missing", "no keyUsage extension"),
        Some((critical, ku)) => {
            if !critical {
                f.push("key_usage_not_critical", "keyUsage is not critical");
            }
            if let Some(ku) = ku {
                key_usage(ku, is_ca, f);
            }
        }
    }

    match extension(cert, CERTIFICATE_POLICIES) {
        None => f.push(
            "certificate_policies_missing",
            "no certificatePolicies extension",
        ),
        Some(_) => {
            let shaken_cp = |p: &Oid| p.to_string().starts_with(SHAKEN_CP_ARC);
            let fits = policies.len() == 1
                && (shaken_cp(&policies[0]) || (is_ca && policies[0] == ANY_POLICY));
            if !fits {
                let list: Vec<String> = policies.iter().map(Oid::to_string).collect();
                f.push(
                    "certificate_policies",
                    format!(
                        "policies [{}], not exactly one SHAKEN CP OID",
                        list.join(", ")
                    ),
                );
            }
        }
    }

    match decoded::<CrlDistributionPoints>(cert, CRL_DISTRIBUTION_POINTS) {
        None => f.push(
            "crl_distribution_points_missing",
            "no CRL distribution points extension",
        ),
        Some((_, dps)) => crl_dps(dps.as_ref(), cp_1_4, f),
    }

    if extension(cert, SUBJECT_KEY_ID).is_none() {
        f.push(
            "subject_key_id_missing",
            "no subjectKeyIdentifier extension",
        );
    }
    let key_id = decoded::<AuthorityKeyIdentifier>(cert, AUTHORITY_KEY_ID)
        .and_then(|(_, a)| a)
        .and_then(|a| a.key_identifier);
    if key_id.is_none() {
        f.push(
            "authority_key_id_missing",
            "no authorityKeyIdentifier with a keyIdentifier",
        );
    }

    let allowed = [
        BASIC_CONSTRAINTS,
        KEY_USAGE,
        CERTIFICATE_POLICIES,
        CRL_DISTRIBUTION_POINTS,
        SUBJECT_KEY_ID,
        AUTHORITY_KEY_ID,
        TN_AUTH_LIST,
    ];
    for ext in tbs.extensions.as_deref().unwrap_or_default() {
        let name = ext_name(ext.extn_id);
        if ext.critical && ext.extn_id != BASIC_CONSTRAINTS && ext.extn_id != KEY_USAGE {
            f.push("extension_critical", format!("{name} is critical"));
        }
        if !allowed.contains(&ext.extn_id) {
            f.push(
                "extension_unexpected",
                format!("{name} is not in the SHAKEN certificate profile"),
            );
        }
    }
}

pub(super) fn subject(name: &Name, cp_1_4: bool, f: &mut Findings<'_>) {
    let has = |oid: Oid| {
        name.0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .any(|atv| atv.oid == oid)
    };
    let missing: Vec<&str> = [
        (AT_COUNTRY, "C"),
        (AT_ORGANIZATION, "O"),
        (AT_COMMON_NAME, "CN"),
    ]
    .into_iter()
    .filter(|(oid, _)| !has(*oid))
    .map(|(_, n)| n)
    .collect();
    if !missing.is_empty() {
        f.push(
            "subject_attribute_missing",
            format!("subject has no {}", missing.join(", ")),
        );
    }
    if !cp_1_4 && !has(AT_SERIAL_NUMBER) {
        f.push(
            "subject_serial_number_missing",
            "subject has no serialNumber attribute (US SHAKEN CP 1.3 §3.1: shall)",
        );
    }
}

pub(super) fn key_usage(ku: KeyUsage, is_ca: bool, f: &mut Findings<'_>) {
    let bits = ku.0;
    if is_ca {
        let extra =
            bits & !(KeyUsages::KeyCertSign | KeyUsages::DigitalSignature | KeyUsages::CRLSign);
        if !bits.contains(KeyUsages::KeyCertSign) || !extra.is_empty() {
            f.push(
                "key_usage_bits",
                format!("SCA keyUsage {bits:?}: keyCertSign required, only digitalSignature and cRLSign besides"),
            );
        }
    } else if bits != der::flagset::FlagSet::from(KeyUsages::DigitalSignature) {
        f.push(
            "key_usage_bits",
            format!("end-entity keyUsage {bits:?}, not exactly digitalSignature"),
        );
    }
}

fn crl_dps(dps: Option<&CrlDistributionPoints>, cp_1_4: bool, f: &mut Findings<'_>) {
    let Some(dps) = dps else {
        return; // did not decode: already a der_decode finding
    };
    let [dp] = dps.0.as_slice() else {
        f.push(
            "crl_distribution_points",
            format!("{} distribution points, not one", dps.0.len()),
        );
        return;
    };
    let http = match &dp.distribution_point {
        Some(DistributionPointName::FullName(names)) => names.iter().any(|n| {
            matches!(n, GeneralName::UniformResourceIdentifier(u)
                if u.as_str().starts_with("http://") || u.as_str().starts_with("https://"))
        }),
        _ => false,
    };
    if !http {
        f.push(
            "crl_distribution_points",
            "the distribution point has no HTTP(S) URI fullName",
        );
    }
    match &dp.crl_issuer {
        Some(names)
            if !names
                .iter()
                .all(|n| matches!(n, GeneralName::DirectoryName(_))) =>
        {
            f.push(
                "crl_issuer_not_dirname",
                "cRLIssuer holds a name that is not a directoryName",
            );
        }
        Some(_) => {}
        None if cp_1_4 => f.push(
            "crl_issuer_missing",
            "a CP 1.4 certificate's distribution point has no cRLIssuer",
        ),
        None => {}
    }
}
