#!/usr/bin/env python3
"""Independent checks of every certificate, CRL and CSR the project makes: pkilint (RFC 5280
linters: `lint_pkix_cert`, `lint_crl`) and pyca `cryptography` (a strict DER parser; every
extension is read), plus the SHAKEN profile rules of docs/profile.md checked here with pyca,
not with the project's own parser. Used by tests/it/pki_lint.rs.

usage: lint_pki.py MANIFEST.json

The manifest names the profile ("1.3" or "1.4"), the TLS trust root of the devca's HTTPS
endpoints, and the artefacts: {"kind", "file" (DER), "role", ...}. CRLs are not in the
manifest: they are fetched from the CRL distribution points the certificates name, so the
CRLDP URIs are checked too.

Prints one JSON line per artefact ({"kind", "findings": [...], "errors": [...]}) and exits 1
when any artefact has an error: a pkilint ERROR or FATAL finding, a pyca parse failure, or a
broken profile rule. pkilint NOTICE/WARNING findings (e.g. the TNAuthList extension it does
not know) are reported but allowed.
"""
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID

TN_AUTH_LIST = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")
SERIAL_NUMBER = NameOID.SERIAL_NUMBER
POLICY = {"1.3": "2.16.840.1.114569.1.1.3", "1.4": "2.16.840.1.114569.1.1.4"}
# ATIS-1000080 v005 §6.4.1: no extensions other than these in a SHAKEN certificate.
SHAKEN_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
    TN_AUTH_LIST,
}
ECDSA_SHA256 = "1.2.840.10045.4.3.2"


class Report:
    def __init__(self, kind):
        self.kind = kind
        self.findings = []
        self.errors = []
        self.checks = 0

    def check(self, ok, rule):
        """Counts one profile check; a failed one is an error naming the rule."""
        self.checks += 1
        if not ok:
            self.errors.append(rule)

    def emit(self):
        print(
            json.dumps(
                {
                    "kind": self.kind,
                    "checks": self.checks,
                    "findings": self.findings,
                    "errors": self.errors,
                }
            ),
            flush=True,
        )
        return not self.errors


# Findings allowed by (kind, code, value): deviations of pkilint from the RFCs, each named.
# - pkilint checks dNSName with python-validators' `domain`, which wants a TLD; "localhost"
#   is a valid RFC 1034 preferred-name-syntax name, and the devca's HTTPS certificate names
#   it so that https://localhost:PORT works.
ALLOWED = {("tls server", "pkix.invalid_domain_name_syntax", '"localhost"')}


def pkilint(tool, path, extra, report):
    """Runs a pkilint command-line linter; ERROR and FATAL findings are errors, except the
    ALLOWED ones, which are reported as findings."""
    cmd = [sys.executable, "-m", f"pkilint.bin.{tool}", "lint", *extra]
    cmd += ["-f", "JSON", "-s", "DEBUG", "--document-format", "DER", path]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        results = json.loads(out.stdout)["results"]
    except (ValueError, KeyError):
        report.errors.append(f"{tool} did not run: {out.stdout} {out.stderr}".strip())
        return
    report.checks += 1
    for result in results:
        for f in result.get("finding_descriptions", []):
            line = f"{f['severity']} {f['code']} at {result['node_path']}"
            if f.get("message"):
                line += f": {f['message']}"
            allowed = any(
                report.kind == k and f["code"] == c and v in (f.get("message") or "")
                for k, c, v in ALLOWED
            )
            if f["severity"] in ("ERROR", "FATAL") and not allowed:
                report.errors.append(f"{tool}: {line}")
            elif allowed:
                report.findings.append(f"allowed: {line}")
            elif f["severity"] in ("WARNING", "NOTICE"):
                report.findings.append(line)


def read_every_extension(get_exts, report):
    """pyca decodes every extension when the list is first read (and .value raises on the
    rest): either raises on DER defects such as an encoded DEFAULT."""
    try:
        exts = get_exts()
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        report.errors.append(f"pyca cannot read the extensions: {e}")
        return
    for ext in exts:
        try:
            _ = ext.value
            report.checks += 1
        except Exception as e:  # noqa: BLE001 - any parse failure is the finding
            report.errors.append(f"pyca cannot read extension {ext.oid.dotted_string}: {e}")


def names_are_printable(name, where, report):
    """countryName (X.520, RFC 5280 App. A) and serialNumber are PrintableString."""
    for attr in name:
        if attr.oid in (NameOID.COUNTRY_NAME, SERIAL_NUMBER):
            report.check(
                attr._type == _ASN1Type.PrintableString,
                f"{where} {attr.oid._name} must be a PrintableString, is {attr._type.name}",
            )


def signed_by(cert, issuer, issuer_kind, report):
    """A check that `issuer` (when known) signed `cert`."""
    if issuer is None:
        return
    try:
        cert.verify_directly_issued_by(issuer)
        report.checks += 1
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"not signed by {issuer_kind}: {e}")


def ext(cert, oid):
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def tlv(data, i):
    """One DER TLV at i: (tag, content, next index). Short and long definite lengths."""
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i : i + k], "big")
        i += k
    return tag, data[i : i + n], i + n


def tn_entries(der):
    """TNAuthorizationList (RFC 8226 §9): SEQUENCE OF TNEntry; returns [(tag, content)]."""
    tag, body, end = tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("TNAuthList is not one SEQUENCE")
    out, i = [], 0
    while i < len(body):
        t, c, i = tlv(body, i)
        out.append((t, c))
    return out


def check_certificate(item, manifest, by_kind, report):
    if "tls_endpoint" in item:
        # The devca's HTTPS server certificate, as its TLS handshake presents it.
        host, port = item["tls_endpoint"].rsplit(":", 1)
        pem = ssl.get_server_certificate((host, int(port)), ca_certs=manifest["trust_root"])
        with open(item["file"], "wb") as f:
            f.write(ssl.PEM_cert_to_DER_cert(pem))
    if "url" in item:
        # Fetched over HTTPS, as a verifier fetches the STI-PA certificate (`x5u`).
        ctx = ssl.create_default_context(cafile=manifest["trust_root"])
        req = urllib.request.Request(item["url"], headers={"Accept": "application/pkix-cert"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp, open(item["file"], "wb") as f:
            f.write(resp.read())
    with open(item["file"], "rb") as f:
        der = f.read()
    pkilint("lint_pkix_cert", item["file"], [], report)
    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"pyca cannot parse the certificate: {e}")
        return None
    read_every_extension(lambda: cert.extensions, report)
    if report.errors:
        return cert
    names_are_printable(cert.subject, "subject", report)
    names_are_printable(cert.issuer, "issuer", report)
    role = item["role"]
    if role == "tls":
        return cert
    if role == "sti-pa":
        # The STI-PA token-signing certificate: an end entity under the SHAKEN root.
        bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
        report.check(bc is not None and bc.critical and not bc.value.ca, "STI-PA certificate is an end entity")
        ski = ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        report.check(
            ski is not None
            and ski.value.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest,
            "SKI is the SHA-1 of the subjectPublicKey (RFC 5280 §4.2.1.2 method 1)",
        )
        issuer = by_kind.get(item.get("issuer"))
        signed_by(cert, issuer, item['issuer'], report)
        return cert

    # SHAKEN certificate profile: ATIS-1000080 v005 §6.4.1 and the US SHAKEN CP.
    profile = manifest["profile"]
    report.check(cert.signature_algorithm_oid.dotted_string == ECDSA_SHA256, "ecdsa-with-SHA256")
    key = cert.public_key()
    report.check(
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1",
        "P-256 key",
    )
    report.check(cert.serial_number.bit_length() >= 64, "serial of at least 64 bits")
    for oid in (NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        report.check(len(cert.subject.get_attributes_for_oid(oid)) == 1, f"subject has one {oid._name}")
    for e in cert.extensions:
        report.check(e.oid in SHAKEN_EXTENSIONS, f"no extension outside the profile: {e.oid.dotted_string}")
        if e.oid not in (ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE):
            report.check(not e.critical, f"only BasicConstraints and KeyUsage critical: {e.oid.dotted_string}")
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    report.check(bc is not None and bc.critical, "basicConstraints present and critical")
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    report.check(ku is not None and ku.critical, "keyUsage present and critical")
    ski = ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    report.check(
        ski is not None
        and ski.value.digest == x509.SubjectKeyIdentifier.from_public_key(key).digest,
        "SKI is the SHA-1 of the subjectPublicKey (RFC 5280 §4.2.1.2 method 1)",
    )
    policies = ext(cert, ExtensionOID.CERTIFICATE_POLICIES)
    crldp = ext(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    tn = ext(cert, TN_AUTH_LIST)
    serials = cert.subject.get_attributes_for_oid(SERIAL_NUMBER)
    self_signed = cert.subject == cert.issuer
    if not self_signed:
        aki = ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        issuer = by_kind.get(item.get("issuer"))
        issuer_ski = issuer and ext(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        report.check(
            aki is not None and issuer_ski is not None
            and aki.value.key_identifier == issuer_ski.value.digest,
            "AKI is the issuer's SKI",
        )
        signed_by(cert, issuer, item['issuer'], report)

    if role == "root":
        report.check(self_signed, "root is self-signed")
        report.check(bc is not None and bc.value.ca, "root is a CA")
        report.check(policies is None, "root carries no certificatePolicies")
        report.check(crldp is None, "root carries no CRLDP")
        report.check(tn is None, "root carries no TNAuthList")
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        report.check("ROOT" in cn.upper(), "root CN contains ROOT")
        return cert

    report.check(
        policies is not None
        and [p.policy_identifier.dotted_string for p in policies.value] == [POLICY[profile]],
        f"exactly one policy, the SHAKEN CP {profile} OID {POLICY[profile]}",
    )
    report.check(crldp is not None and len(crldp.value) == 1, "one CRL distribution point")
    if crldp is not None and len(crldp.value) == 1:
        dp = crldp.value[0]
        uris = [n.value for n in dp.full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
        report.check(len(uris) == 1 and uris[0].startswith("https://"), "CRLDP fullName is one HTTPS URI")
        if profile == "1.4":
            report.check(
                dp.crl_issuer is not None
                and [n.value for n in dp.crl_issuer if isinstance(n, x509.DirectoryName)] == [cert.issuer],
                "CP 1.4: the CRLDP carries a cRLIssuer DirName, the issuer of the CRL",
            )
        else:
            report.check(dp.crl_issuer is None, "CP 1.3: the CRLDP has no cRLIssuer")
        if uris:
            crls = manifest.setdefault("_crls", {})
            crls.setdefault(uris[0], (item.get("issuer"), []))[1].append(item["kind"])

    if role == "intermediate":
        report.check(bc is not None and bc.value.ca, "intermediate is a CA")
        report.check(tn is None, "intermediate carries no TNAuthList")
        return cert

    # End entity and SCA: subject serialNumber, TNAuthList.
    if profile == "1.3":
        report.check(len(serials) == 1, "CP 1.3 §3.1: exactly one subject serialNumber")
    else:
        report.check(len(serials) <= 1, "CP 1.4 §3.1: at most one subject serialNumber")
    report.check(tn is not None and not tn.critical, "TNAuthList present and not critical")
    if tn is None:
        return cert
    raw = tn.value.value
    if item.get("tn_auth_list_hex"):
        report.check(raw.hex() == item["tn_auth_list_hex"], "TNAuthList is the one ordered")
    try:
        entries = tn_entries(raw)
    except (ValueError, IndexError) as e:
        report.errors.append(f"TNAuthList does not decode: {e}")
        return cert
    if role == "ee":
        report.check(bc is not None and not bc.value.ca, "end entity is not a CA")
        report.check(
            ku is not None and ku.value.digital_signature and not ku.value.key_cert_sign,
            "end entity keyUsage digitalSignature only",
        )
        if not item.get("tn_list_allowed"):
            one_spc = len(entries) == 1 and entries[0][0] == 0xA0
            report.check(one_spc, "ATIS-1000080 v005: an end-entity TNAuthList holds exactly one SPC")
            if one_spc:
                _, spc, _ = tlv(entries[0][1], 0)
                spc = spc.decode("ascii")
                report.check(spc.isalnum() and spc == spc.upper(), "SPC is digits and uppercase letters")
                cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                report.check(cn == f"SHAKEN {spc}", "end-entity CN is SHAKEN <SPC>")
    elif role == "sca":
        report.check(bc is not None and bc.value.ca, "SCA is a CA")
        report.check(ku is not None and ku.value.key_cert_sign, "SCA keyUsage has keyCertSign")
    return cert


def check_crl(url, issuer_kind, covers, manifest, by_kind):
    report = Report(f"crl {url} (issuer {issuer_kind}, named by {', '.join(sorted(set(covers)))})")
    ctx = ssl.create_default_context(cafile=manifest["trust_root"])
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            der = resp.read()
            ctype = resp.headers.get("Content-Type")
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"cannot fetch the CRL: {e}")
        return report.emit()
    report.check(ctype == "application/pkix-crl", f"Content-Type application/pkix-crl, got {ctype}")
    with tempfile.NamedTemporaryFile(suffix=".crl", delete=False) as f:
        f.write(der)
    try:
        pkilint("lint_crl", f.name, ["-t", "CRL", "-p", "PKIX"], report)
    finally:
        os.unlink(f.name)
    try:
        crl = x509.load_der_x509_crl(der)
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"pyca cannot parse the CRL: {e}")
        return report.emit()
    read_every_extension(lambda: crl.extensions, report)
    for revoked in crl:
        read_every_extension(lambda: revoked.extensions, report)
    issuer = by_kind.get(issuer_kind)
    if issuer is not None:
        report.check(crl.issuer == issuer.subject, "CRL issuer is the certificate issuer")
        report.check(crl.is_signature_valid(issuer.public_key()), "CRL signature verifies")
        aki = ext(crl, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        ski = ext(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        report.check(
            aki is not None and ski is not None and aki.value.key_identifier == ski.value.digest,
            "CRL AKI is the issuer's SKI",
        )
    report.check(ext(crl, ExtensionOID.CRL_NUMBER) is not None, "CRL number present")
    report.check(crl.next_update_utc is not None, "nextUpdate present")
    names_are_printable(crl.issuer, "CRL issuer", report)
    for serial in manifest.get("revoked_serials", {}).get(issuer_kind, []):
        report.check(
            crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None,
            f"revoked serial {serial} listed",
        )
    return report.emit()


def check_csr(item, manifest, report):
    with open(item["file"], "rb") as f:
        der = f.read()
    try:
        csr = x509.load_der_x509_csr(der)
    except Exception as e:  # noqa: BLE001
        report.errors.append(f"pyca cannot parse the CSR: {e}")
        return
    report.check(csr.is_signature_valid, "CSR self-signature verifies")
    read_every_extension(lambda: csr.extensions, report)
    for attr in csr.attributes:
        report.checks += 1
        _ = attr.value
    names_are_printable(csr.subject, "CSR subject", report)
    report.check(len(csr.subject.get_attributes_for_oid(SERIAL_NUMBER)) == 1, "CSR subject has one serialNumber")
    if item.get("serial_number_pattern"):
        got = [a.value for a in csr.subject.get_attributes_for_oid(SERIAL_NUMBER)]
        pattern = item["serial_number_pattern"]
        report.check(
            len(got) == 1 and re.fullmatch(pattern, got[0]) is not None,
            f"serialNumber {got} matches {pattern}",
        )
    tn = ext(csr, TN_AUTH_LIST)
    report.check(tn is not None and not tn.critical, "CSR TNAuthList present and not critical")


def main():
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    ok = True
    by_kind = {}
    for item in manifest["items"]:
        report = Report(item["kind"])
        if item["role"] == "csr":
            check_csr(item, manifest, report)
        else:
            cert = check_certificate(item, manifest, by_kind, report)
            if cert is not None:
                by_kind[item["kind"]] = cert
        ok &= report.emit()
    crls = manifest.get("_crls", {})
    if not crls:
        print(json.dumps({"kind": "crl", "errors": ["no certificate names a CRL"]}))
        ok = False
    for url, (issuer_kind, covers) in sorted(crls.items()):
        ok &= check_crl(url, issuer_kind, covers, manifest, by_kind)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
