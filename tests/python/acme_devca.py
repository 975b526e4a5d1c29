#!/usr/bin/env python3
"""Drives the devca with certbot's `acme` library (an ACME client no one here wrote).

Protocol with the Rust harness (tests/it/acme_python.rs):
1. this script binds its http-01 responder on 127.0.0.1, port 0, and prints
   `HTTP01_PORT <port>`;
2. the harness starts the devca with that port and writes one JSON line to stdin:
   {"directory", "trust_root", "sti_pa", "user", "password"} (the password never goes on
   the command line);
3. the script prints one line per check, `PASS name` or `FAIL name: why`, then
   `summary: N passed, M failed`, and exits non-zero when any check failed.

Where the library cannot send a malformed request, the JWS is built by hand with
josepy/cryptography and sent with `requests`. tkauth-01 (RFC 9447) is unknown to the
library: it parses as an UnrecognizedChallenge and is answered with {"atc": token}.
"""

import base64
import datetime
import email.utils
import hashlib
import hmac
import http.server
import json
import sys
import threading
import time
import traceback

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

RESULTS = []


class JsonBody(jose.JSONDeSerializable):
    """A JSON body the library has no message class for (STAR, newAuthz), sent as is."""

    def __init__(self, jobj):
        self.jobj = jobj

    def to_partial_json(self):
        return self.jobj

    @classmethod
    def from_json(cls, jobj):
        return cls(jobj)


def check(name, ok, why=""):
    RESULTS.append(bool(ok))
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)
    return bool(ok)


def no_account(acme_client, name, if_found):
    """Check `name`: newAccount with onlyReturnExisting for `acme_client`'s key is refused with
    accountDoesNotExist (RFC 8555 §7.3.1); `if_found` is the failure reason otherwise."""
    try:
        acme_client.new_account(messages.NewRegistration(only_return_existing=True))
        check(name, False, if_found)
    except messages.Error as e:
        check(name, e.code == "accountDoesNotExist", str(e))


def section(name, fn, *args):
    """Runs a group of checks; an exception is one failed check, not the end of the run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        check(f"{name} (no exception)", False, f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return None


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def deadline(secs=30):
    return datetime.datetime.now() + datetime.timedelta(seconds=secs)


# === DER by hand (RFC 8226) ===


def der(tag, body):
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + body


def tn_auth_list_spc(spc):
    """TNAuthList ::= SEQUENCE OF TNEntry; TNEntry ::= CHOICE { spc [0] EXPLICIT
    ServiceProviderCode (IA5String), ... }."""
    return der(0x30, der(0xA0, der(0x16, spc.encode("ascii"))))


TN_AUTH_LIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")
# The extension as it appears in a certificate: extnID, then extnValue wrapping the DER.
TN_AUTH_OID_DER = der(0x06, bytes.fromhex("2b0601050507011a"))

TNAUTHLIST = messages.IdentifierType("TNAuthList")


# === http-01 responder ===


class Responder:
    """Serves /.well-known/acme-challenge/<token> from a dict; logs every request."""

    def __init__(self):
        self.tokens = {}
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.seen.append((self.path, self.headers.get("Host", "")))
                prefix = "/.well-known/acme-challenge/"
                body = outer.tokens.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# === hand-built requests ===


class Raw:
    """Hand-built JWS requests over `requests`, for what the library will not send."""

    def __init__(self, cfg, directory):
        self.verify = cfg["trust_root"]
        self.dir = directory

    def nonce(self):
        r = requests.head(self.dir["newNonce"], verify=self.verify, timeout=10)
        return r.headers["Replay-Nonce"]

    def post(self, url, protected, payload, key, content_type="application/jose+json",
             signature=None, extra=None):
        """`payload` None is POST-as-GET; `key` a josepy JWKEC signing with ES256 unless
        `signature` is given."""
        prot = b64u(json.dumps(protected).encode())
        pay = "" if payload is None else b64u(json.dumps(payload).encode())
        if signature is None:
            signature = es256(key, f"{prot}.{pay}".encode())
        body = {"protected": prot, "payload": pay, "signature": b64u(signature)}
        body.update(extra or {})
        return requests.post(url, data=json.dumps(body), verify=self.verify, timeout=10,
                             headers={"Content-Type": content_type})


def es256(jwk, message):
    r, s = decode_dss_signature(jwk.key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def new_key():
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def public_jwk(key):
    return key.public_key().to_partial_json()


def problem(resp):
    try:
        return resp.json()
    except ValueError:
        return {}


def error_type(e):
    return getattr(e, "typ", "") or ""


# === the run ===


class Run:
    def __init__(self, cfg, responder):
        self.cfg = cfg
        self.responder = responder
        self.verify = cfg["trust_root"]

    def client(self, key):
        net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=self.verify,
                                   user_agent="certbroker-suite acme-python")
        directory = client.ClientV2.get_directory(self.cfg["directory"], net)
        return client.ClientV2(directory, net)

    def register(self, key):
        acme = self.client(key)
        regr = acme.new_account(messages.NewRegistration.from_data(
            email="ops@example.test", terms_of_service_agreed=True))
        return acme, regr

    # --- directory and headers ---

    def directory(self):
        r = requests.get(self.cfg["directory"], verify=self.verify, timeout=10)
        d = r.json()
        check("directory lists the RFC 8555 §7.1.1 resources",
              all(k in d for k in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange")),
              json.dumps(d))
        self.raw = Raw(self.cfg, d)
        h = requests.head(d["newNonce"], verify=self.verify, timeout=10)
        g = requests.get(d["newNonce"], verify=self.verify, timeout=10)
        check("newNonce: HEAD 200, GET 204, both with Replay-Nonce and no-store (§7.2)",
              h.status_code == 200 and g.status_code == 204
              and "Replay-Nonce" in h.headers and "Replay-Nonce" in g.headers
              and "no-store" in h.headers.get("Cache-Control", ""),
              f"HEAD {h.status_code} {dict(h.headers)}, GET {g.status_code}")
        check("Link rel=\"index\" to the directory on newNonce (§7.1)",
              d["newNonce"] and self.cfg["directory"] in h.headers.get("Link", "")
              and 'rel="index"' in h.headers.get("Link", ""), h.headers.get("Link"))
        return d

    # --- accounts ---

    def accounts(self):
        key = new_key()
        acme = self.client(key)
        resp = acme._post(acme.directory["newAccount"], messages.NewRegistration.from_data(
            email="ops@example.test", terms_of_service_agreed=True))
        body = resp.json()
        check("newAccount: 201 with Location and a valid account (§7.3)",
              resp.status_code == 201 and resp.headers.get("Location", "").startswith("https://")
              and body.get("status") == "valid", f"{resp.status_code} {body}")
        check("account has an `orders` URL (§7.1.2)", isinstance(body.get("orders"), str), body)
        acct_url = resp.headers["Location"]
        acme.net.account = messages.RegistrationResource(body=messages.Registration.from_json(body),
                                                         uri=acct_url)
        regr = acme.net.account
        acme.net.account = None  # newAccount is signed with jwk, not kid
        try:
            acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            check("newAccount again with the same key: 200 with the existing Location", False,
                  "no ConflictError")
        except errors.ConflictError as e:
            check("newAccount again with the same key: 200 with the existing Location",
                  e.location == acct_url, f"{e.location} != {acct_url}")
        acme.net.account = regr
        queried = acme.query_registration(regr)
        check("onlyReturnExisting with a known key returns that account (§7.3.1)",
              queried.uri == acct_url, queried.uri)
        stranger = self.client(new_key())
        no_account(stranger, "onlyReturnExisting with an unknown key: accountDoesNotExist",
                   "accepted")
        updated = acme.update_registration(regr, regr.body.update(
            contact=("mailto:noc@example.test",)))
        check("account update replaces the contact (§7.3.2)",
              tuple(updated.body.contact) == ("mailto:noc@example.test",), updated.body.contact)
        return key, acme, queried

    # --- TNAuthList order over tkauth-01 ---

    def spc_token(self, key, tkvalue, spc):
        base = self.cfg["sti_pa"].rstrip("/")
        login = requests.post(f"{base}/api/v1/auth/login", verify=self.verify, timeout=10,
                              json={"userId": self.cfg["user"], "password": self.cfg["password"]})
        access = login.json()["accessToken"]
        thumb = key.public_key().thumbprint(hash_function=hashes.SHA256)
        fingerprint = "SHA256 " + ":".join(f"{b:02X}" for b in thumb)
        resp = requests.post(
            f"{base}/api/v1/account/{spc}/token/", verify=self.verify, timeout=10,
            headers={"Authorization": access},
            json={"atc": {"tktype": "TNAuthList", "tkvalue": tkvalue, "ca": False,
                          "fingerprint": fingerprint}})
        body = resp.json()
        check("STI-PA issues an SPC token for the account's fingerprint",
              body.get("status") == "success" and body.get("token"), body)
        return body["token"]

    def tn_order(self, key, acme):
        spc_der = tn_auth_list_spc("1234")
        tkvalue = base64.b64encode(spc_der).decode()
        resp = acme._post(acme.directory["newOrder"], messages.NewOrder(
            identifiers=[messages.Identifier(typ=TNAUTHLIST, value=tkvalue)]))
        order = messages.Order.from_json(resp.json())
        order_url = resp.headers.get("Location")
        check("newOrder TNAuthList: 201, Location, status pending (§7.4)",
              resp.status_code == 201 and order_url and order.status == messages.STATUS_PENDING,
              f"{resp.status_code} {resp.json()}")
        authz_url = order.authorizations[0]
        authzr = acme._authzr_from_response(acme._post_as_get(authz_url), uri=authz_url)
        chall = [c for c in authzr.body.challenges
                 if isinstance(c.chall, challenges.UnrecognizedChallenge)
                 and c.chall.jobj.get("type") == "tkauth-01"]
        check("authorization offers tkauth-01 (an UnrecognizedChallenge to the library)",
              authzr.body.status == messages.STATUS_PENDING and len(chall) == 1
              and chall[0].chall.jobj.get("tkauth-type") == "atc",
              authzr.body.to_json())
        challb = chall[0]
        token = self.spc_token(key, tkvalue, "1234")

        class Atc(jose.JSONObjectWithFields):
            atc: str = jose.field("atc")

        resp = acme._post(challb.uri, Atc(atc=token))
        check("challenge response carries Link rel=\"up\" to its authorization (§7.5.1)",
              resp.links.get("up", {}).get("url") == authz_url, resp.headers.get("Link"))
        authzr = self.poll_authz(acme, authzr)
        check("tkauth-01 with {\"atc\": token}: authorization valid",
              authzr.body.status == messages.STATUS_VALID, authzr.body.to_json())

        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Python Test Carrier"),
                   x509.NameAttribute(NameOID.COMMON_NAME, "SHAKEN 1234")]))
               .add_extension(x509.UnrecognizedExtension(TN_AUTH_LIST_OID, spc_der), critical=False)
               .sign(cert_key, hashes.SHA256()))
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        orderr = messages.OrderResource(body=order, uri=order_url, csr_pem=csr_pem,
                                        authorizations=[authzr])
        orderr = acme.finalize_order(orderr, deadline())
        pem = orderr.fullchain_pem
        chain = x509.load_pem_x509_certificates(pem.encode())
        leaf = chain[0]
        spki = lambda k: k.public_bytes(serialization.Encoding.DER,  # noqa: E731
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        check("finalize + download: a chain whose leaf holds the CSR key",
              len(chain) >= 2 and spki(leaf.public_key()) == spki(cert_key.public_key()),
              f"{len(chain)} certificates")
        # Byte-level, so that this check does not depend on pyca parsing every extension.
        leaf_der = leaf.public_bytes(serialization.Encoding.DER)
        check("leaf carries the ordered TNAuthList extension, not critical",
              TN_AUTH_OID_DER + der(0x04, spc_der) in leaf_der, leaf_der.hex())
        cert_url = orderr.body.certificate
        got = acme._post_as_get(cert_url)
        check("certificate POST-as-GET: application/pem-certificate-chain (§7.4.2)",
              got.headers.get("Content-Type", "").startswith("application/pem-certificate-chain")
              and got.text == pem, got.headers.get("Content-Type"))
        acme.revoke(leaf, 1)
        check("revokeCert by the issuing account: 200 (§7.6)", True)
        try:
            acme.revoke(leaf, 1)
            check("second revokeCert: alreadyRevoked", False, "accepted")
        except messages.Error as e:
            check("second revokeCert: alreadyRevoked", e.code == "alreadyRevoked", str(e))
        return order_url, cert_url

    def poll_authz(self, acme, authzr, secs=30):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            authzr, _ = acme.poll(authzr)
            if authzr.body.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                return authzr
            time.sleep(0.2)
        return authzr

    def deactivate_authz(self, acme):
        """§7.5.2: a client may deactivate an authorization; its order becomes invalid."""
        tkvalue = base64.b64encode(tn_auth_list_spc("5678")).decode()
        resp = acme._post(acme.directory["newOrder"], messages.NewOrder(
            identifiers=[messages.Identifier(typ=TNAUTHLIST, value=tkvalue)]))
        order_url = resp.headers["Location"]
        url = resp.json()["authorizations"][0]
        authzr = acme._authzr_from_response(acme._post_as_get(url), uri=url)
        done = acme.deactivate_authorization(authzr)
        check("authorization deactivation: status deactivated (§7.5.2)",
              done.body.status == messages.STATUS_DEACTIVATED, done.body.to_json())
        order = acme._post_as_get(order_url).json()
        check("an order with a deactivated authorization is invalid (§7.1.6)",
              order.get("status") == "invalid", order)

    # --- dns over real http-01 ---

    def dns_order(self, key, acme, name, serve_right=True):
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(cert_key, hashes.SHA256()))
        orderr = acme.new_order(csr.public_bytes(serialization.Encoding.PEM))
        authzr = orderr.authorizations[0]
        check(f"dns order {name}: authorization pending before any challenge (§7.1.4)",
              authzr.body.status == messages.STATUS_PENDING
              and orderr.body.status == messages.STATUS_PENDING,
              f"authz {authzr.body.status}, order {orderr.body.status}")
        http01 = [c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)]
        if not check(f"dns order {name}: http-01 offered with a token", len(http01) == 1,
                     authzr.body.to_json()):
            return None
        challb = http01[0]
        again = acme._authzr_from_response(acme._post_as_get(authzr.uri), uri=authzr.uri)
        check(f"dns order {name}: the http-01 token is stable across reads",
              [c.chall.token for c in again.body.challenges] == [challb.chall.token],
              f"{challb.chall.token} vs {[c.chall.token for c in again.body.challenges]}")
        response, validation = challb.response_and_validation(key)
        token = challb.chall.encode("token")
        self.responder.tokens[token] = validation if serve_right else validation + "x"
        seen_before = len(self.responder.seen)
        acme.answer_challenge(challb, response)
        authzr = self.poll_authz(acme, authzr)
        fetched = self.responder.seen[seen_before:]
        check(f"dns order {name}: the devca fetched /.well-known/acme-challenge/<token> "
              "with Host = the name (§8.3)",
              (f"/.well-known/acme-challenge/{token}", name) in
              [(p, h.split(":")[0]) for p, h in fetched], fetched)
        if not serve_right:
            err = authzr.body.challenges[0].error
            check(f"dns order {name}: a wrong key authorization makes it invalid with a problem",
                  authzr.body.status == messages.STATUS_INVALID and err is not None
                  and err.code in ("incorrectResponse", "unauthorized"),
                  authzr.body.to_json())
            return None
        check(f"dns order {name}: authorization valid after real http-01 validation",
              authzr.body.status == messages.STATUS_VALID, authzr.body.to_json())
        orderr = acme.finalize_order(orderr.update(authorizations=[authzr]), deadline())
        leaf = x509.load_pem_x509_certificates(orderr.fullchain_pem.encode())[0]
        # Byte-level: reading every extension with pyca is the certificate linters' test.
        check(f"dns order {name}: certificate issued and downloaded",
              name.encode() in leaf.public_bytes(serialization.Encoding.DER), "name not in leaf")
        return orderr

    # --- protocol errors, built by hand ---

    def errors(self, key, acme, other_order_url):
        raw, d = self.raw, self.raw.dir
        kid = acme.net.account.uri
        acct_url = kid

        # badNonce, with a fresh nonce in the answer (§6.5).
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": "bm90LWEtbm9uY2U",
                                "url": acct_url}, None, key)
        check("unknown nonce: 400 badNonce with a fresh Replay-Nonce (§6.5)",
              r.status_code == 400
              and problem(r).get("type") == "urn:ietf:params:acme:error:badNonce"
              and r.headers.get("Replay-Nonce"), f"{r.status_code} {r.text}")
        used = raw.nonce()
        raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": used, "url": acct_url}, None, key)
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": used, "url": acct_url},
                     None, key)
        check("replayed nonce: badNonce", problem(r).get("type", "").endswith(":badNonce"), r.text)
        # The library retries a badNonce once with the nonce the error carried.
        acme.net._nonces.clear()
        acme.net._nonces.add(jose.decode_b64jose(used))
        retried = acme._post_as_get(acct_url)
        check("the acme library recovers from badNonce with the error's Replay-Nonce",
              retried.status_code == 200, retried.status_code)

        # Wrong url in the protected header (§6.4).
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": raw.nonce(),
                                "url": d["newOrder"]}, None, key)
        check("url header not the request URL: unauthorized (§6.4)",
              problem(r).get("type", "").endswith(":unauthorized"), f"{r.status_code} {r.text}")

        # jwk and kid together (§6.2).
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "jwk": public_jwk(key),
                                "nonce": raw.nonce(), "url": acct_url}, None, key)
        check("jwk and kid together: malformed (§6.2)",
              r.status_code == 400 and problem(r).get("type", "").endswith(":malformed"), r.text)

        # newAccount signed with kid instead of jwk.
        r = raw.post(d["newAccount"], {"alg": "ES256", "kid": kid, "nonce": raw.nonce(),
                                       "url": d["newAccount"]}, {"termsOfServiceAgreed": True}, key)
        check("newAccount with kid: malformed (§6.2)",
              problem(r).get("type", "").endswith(":malformed"), r.text)

        # A MAC algorithm (§6.2: MUST NOT be accepted; badSignatureAlgorithm lists `algorithms`).
        prot = {"alg": "HS256", "kid": kid, "nonce": raw.nonce(), "url": acct_url}
        mac = hmac.new(b"k" * 32, f"{b64u(json.dumps(prot).encode())}.".encode(),
                       hashlib.sha256).digest()
        r = raw.post(acct_url, prot, None, key, signature=mac)
        p = problem(r)
        check("HS256: badSignatureAlgorithm",
              r.status_code == 400 and p.get("type", "").endswith(":badSignatureAlgorithm"), r.text)
        check("badSignatureAlgorithm carries `algorithms` with ES256 (§6.2)",
              isinstance(p.get("algorithms"), list) and "ES256" in p["algorithms"], r.text)
        r = raw.post(acct_url, {"alg": "none", "kid": kid, "nonce": raw.nonce(), "url": acct_url},
                     None, key, signature=b"")
        check("alg none: badSignatureAlgorithm",
              problem(r).get("type", "").endswith(":badSignatureAlgorithm"), r.text)

        # An unprotected header (§6.2: MUST NOT be used).
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": raw.nonce(), "url": acct_url},
                     None, key, extra={"header": {"foo": "bar"}})
        check("JWS with an unprotected header: malformed (§6.2)",
              problem(r).get("type", "").endswith(":malformed"), f"{r.status_code} {r.text}")

        # Wrong Content-Type (§6.2: 415).
        r = raw.post(acct_url, {"alg": "ES256", "kid": kid, "nonce": raw.nonce(), "url": acct_url},
                     None, key, content_type="application/json")
        check("Content-Type application/json: 415 with a problem document (§6.2)",
              r.status_code == 415
              and r.headers.get("Content-Type", "").startswith("application/problem+json")
              and problem(r).get("type", "").startswith("urn:ietf:params:acme:error:"),
              f"{r.status_code} {r.headers.get('Content-Type')} {r.text}")
        check("the 415 answer still carries Replay-Nonce (§6.5)",
              bool(r.headers.get("Replay-Nonce")), dict(r.headers))

        # GET on a POST-as-GET resource (§6.3: 405).
        r = requests.get(other_order_url, verify=self.verify, timeout=10)
        check("GET on an order: 405 (§6.3)", r.status_code == 405, f"{r.status_code} {r.text}")

        # Another account's order (§7.4 / §6.2): unauthorized.
        other = self.client(new_key())
        other.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        try:
            other._post_as_get(other_order_url)
            check("another account's order: unauthorized", False, "readable")
        except messages.Error as e:
            check("another account's order: unauthorized", e.code == "unauthorized", str(e))

    def order_limits(self, acme):
        """§7.4: a server that cannot honour the request MUST refuse the order."""
        tkvalue = base64.b64encode(tn_auth_list_spc("1234")).decode()
        ident = {"type": "TNAuthList", "value": tkvalue}
        far = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3650))
        cases = [
            ("notAfter past the CA's maximum lifetime",
             {"identifiers": [ident], "notAfter": far.strftime("%Y-%m-%dT%H:%M:%SZ")},
             "malformed"),
            ("notBefore, which the CA cannot honour",
             {"identifiers": [ident], "notBefore": "2000-01-01T00:00:00Z"}, "malformed"),
            ("a wildcard dns name (http-01 cannot validate it, §8.3)",
             {"identifiers": [{"type": "dns", "value": "*.python.example"}]},
             "rejectedIdentifier"),
            ("an unknown identifier type",
             {"identifiers": [{"type": "email", "value": "a@b.example"}]},
             "unsupportedIdentifier"),
        ]

        for what, body, want in cases:
            try:
                acme._post(acme.directory["newOrder"], JsonBody(body))
                check(f"newOrder with {what}: {want}", False, "accepted")
            except messages.Error as e:
                check(f"newOrder with {what}: {want}", e.code == want, str(e))

    # --- STAR (RFC 8739) and pre-authorization (newAuthz, RFC 8555 §7.4.1), as raw JSON ---

    def star_and_preauth(self, key, acme):
        directory = requests.get(self.cfg["directory"], verify=self.verify, timeout=10).json()
        meta = directory.get("meta", {})
        ar_meta = meta.get("auto-renewal", {})
        check("directory: newAuthz, meta.caaIdentities and meta.auto-renewal "
              "{min-lifetime, max-duration, allow-certificate-get} (RFC 8739 §3.1.1)",
              isinstance(directory.get("newAuthz"), str) and bool(meta.get("caaIdentities"))
              and all(k in ar_meta for k in ("min-lifetime", "max-duration",
                                             "allow-certificate-get")), directory)
        stats_url = self.cfg["sti_pa"].rstrip("/") + "/devca/stats"

        def stats():
            return requests.get(stats_url, verify=self.verify, timeout=10).json()

        def error_of(fn):
            try:
                fn()
                return "accepted"
            except messages.Error as e:
                return str(e.typ).rsplit(":", 1)[-1]

        spc_der = tn_auth_list_spc("5678")
        tkvalue = base64.b64encode(spc_der).decode()
        ident = {"type": "TNAuthList", "value": tkvalue}

        resp = acme._post(directory["newAuthz"], JsonBody({"identifier": ident}))
        authz_url = resp.headers.get("Location")
        body = resp.json()
        tk = [c for c in body.get("challenges", []) if c.get("type") == "tkauth-01"]
        check("newAuthz: 201, Location, a pending authorization with tkauth-01 (§7.4.1)",
              resp.status_code == 201 and bool(authz_url) and body.get("status") == "pending"
              and len(tk) == 1, f"{resp.status_code} {body}")
        token = self.spc_token(key, tkvalue, "5678")
        acme._post(tk[0]["url"], JsonBody({"atc": token}))
        end = time.monotonic() + 30
        while time.monotonic() < end:
            body = acme._post_as_get(authz_url).json()
            if body.get("status") != "pending":
                break
            time.sleep(0.2)
        check("the pre-authorization becomes valid", body.get("status") == "valid", body)
        validated = stats()["challenges_validated"]

        resp = acme._post(directory["newOrder"], JsonBody({"identifiers": [ident]}))
        order = resp.json()
        check("newOrder after newAuthz: ready at once, reusing the pre-authorization",
              order.get("status") == "ready" and order.get("authorizations") == [authz_url],
              order)

        got = error_of(lambda: acme._post(directory["newOrder"], JsonBody({
            "identifiers": [ident], "notAfter": "2099-01-01T00:00:00Z",
            "auto-renewal": {"end-date": "2099-01-01T00:00:00Z", "lifetime": 3}})))
        check("STAR newOrder with notAfter: malformed (RFC 8739 §3.1.1)", got == "malformed", got)

        lifetime = 3
        end_date = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
        resp = acme._post(directory["newOrder"], JsonBody({"identifiers": [ident], "auto-renewal": {
            "end-date": end_date.strftime("%Y-%m-%dT%H:%M:%SZ"), "lifetime": lifetime,
            "allow-certificate-get": True}}))
        order_url = resp.headers.get("Location")
        order = resp.json()
        check("STAR newOrder: 201, ready (pre-authorized), auto-renewal echoed",
              resp.status_code == 201 and order.get("status") == "ready"
              and order.get("auto-renewal", {}).get("lifetime") == lifetime, order)
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Python Test Carrier"),
                   x509.NameAttribute(NameOID.COMMON_NAME, "SHAKEN 5678")]))
               .add_extension(x509.UnrecognizedExtension(TN_AUTH_LIST_OID, spc_der), critical=False)
               .sign(cert_key, hashes.SHA256()))
        acme._post(order["finalize"],
                   JsonBody({"csr": b64u(csr.public_bytes(serialization.Encoding.DER))}))
        end = time.monotonic() + 30
        while time.monotonic() < end:
            order = acme._post_as_get(order_url).json()
            if order.get("status") not in ("pending", "ready", "processing"):
                break
            time.sleep(0.2)
        star_url = order.get("star-certificate")
        check("finalized STAR order: valid, with star-certificate and no certificate (§3.1.1)",
              order.get("status") == "valid" and bool(star_url) and "certificate" not in order,
              order)

        def fetch():
            r = acme._post_as_get(star_url)
            leaf = x509.load_pem_x509_certificates(r.content)[0]
            return r, leaf

        r, first = fetch()
        hdr = lambda name: email.utils.parsedate_to_datetime(r.headers[name])  # noqa: E731
        check("star-certificate by POST-as-GET: a chain with Cert-Not-Before/After equal to "
              "the leaf's validity (§3.3)",
              r.headers.get("Content-Type", "").startswith("application/pem-certificate-chain")
              and hdr("Cert-Not-Before") == first.not_valid_before_utc
              and hdr("Cert-Not-After") == first.not_valid_after_utc, dict(r.headers))
        check(f"the short-term certificate is valid for the lifetime ({lifetime} s)",
              (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
              == lifetime, f"{first.not_valid_before_utc} .. {first.not_valid_after_utc}")
        plain = requests.get(star_url, verify=self.verify, timeout=10)
        check("allow-certificate-get: unauthenticated GET works, with public cache directives "
              "(§4.3)", plain.status_code == 200 and plain.text == r.text
              and plain.headers.get("Cache-Control", "").startswith("public, max-age="),
              f"{plain.status_code} {plain.headers.get('Cache-Control')}")
        end = time.monotonic() + 20
        nxt = first
        while time.monotonic() < end and nxt.serial_number == first.serial_number:
            time.sleep(0.2)
            _, nxt = fetch()
        now = datetime.datetime.now(datetime.timezone.utc)
        check("the next certificate appears before the current one expires (§3.2)",
              nxt.serial_number != first.serial_number and now < first.not_valid_after_utc,
              f"{nxt.serial_number} at {now}, current until {first.not_valid_after_utc}")

        got = error_of(lambda: acme.revoke(nxt, 0))
        check("revokeCert of a STAR certificate: autoRenewalRevocationNotSupported (§3.1.2)",
              got == "autoRenewalRevocationNotSupported", got)
        resp = acme._post(order_url, JsonBody({"status": "canceled"}))
        check("cancel: {\"status\": \"canceled\"} to the order URL gives status canceled "
              "(§3.1.2)", resp.json().get("status") == "canceled", resp.text)
        got = error_of(lambda: acme._post_as_get(star_url))
        check("star-certificate after cancel: autoRenewalCanceled", got == "autoRenewalCanceled",
              got)
        got = error_of(lambda: acme._post(order_url, JsonBody({"status": "canceled"})))
        check("cancel again: autoRenewalCancellationInvalid",
              got == "autoRenewalCancellationInvalid", got)
        check("no challenge was validated for the orders after pre-authorization",
              stats()["challenges_validated"] == validated, stats())

    def orders_list(self, acme, order_url):
        acct = acme._post_as_get(acme.net.account.uri).json()
        r = acme._post_as_get(acct["orders"])
        check("the account's orders URL lists its orders (§7.1.2.1)",
              order_url in r.json().get("orders", []), r.text)

    # --- key rollover and deactivation ---

    def key_change(self, old_key, acme):
        regr = acme.net.account
        url = acme.directory["keyChange"]
        key2 = new_key()
        payload = json.dumps({"account": regr.uri, "oldKey": public_jwk(old_key)}).encode()
        inner = acme_jws.JWS.sign(payload, key=key2, alg=jose.ES256, nonce=None, url=url)
        resp = acme._post(url, inner)
        check("keyChange: 200 (§7.3.5)", resp.status_code == 200, resp.text)
        fresh = self.client(key2)
        fresh.net.account = regr
        found = fresh.query_registration(regr)
        check("after keyChange the new key finds the account", found.uri == regr.uri, found.uri)
        stale = self.client(old_key)
        no_account(stale, "after keyChange the old key has no account", "old key still known")
        # Rolling over to a key already in use: 409 with the other account's Location.
        key3 = new_key()
        _, third = self.register(key3)
        inner = acme_jws.JWS.sign(
            json.dumps({"account": regr.uri, "oldKey": public_jwk(key2)}).encode(),
            key=key3, alg=jose.ES256, nonce=None, url=url)
        try:
            fresh._post(url, inner)
            check("keyChange to a key in use: 409 conflict", False, "accepted")
        except errors.ConflictError as e:
            check("keyChange to a key in use: 409 with the other account's Location (§7.3.5)",
                  e.location == third.uri, f"{e.location} != {third.uri}")
        except messages.Error as e:
            check("keyChange to a key in use: 409 with the other account's Location (§7.3.5)",
                  False, str(e))
        return key2, fresh

    def deactivate(self, key, acme):
        regr = acme.deactivate_registration(acme.net.account)
        check("account deactivation: status deactivated (§7.3.6)",
              getattr(regr.body.status, "name", regr.body.status) == "deactivated",
              regr.body.to_json())
        try:
            acme._post(acme.directory["newOrder"], messages.NewOrder(
                identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="x.test")]))
            check("a deactivated account cannot order: unauthorized", False, "accepted")
        except messages.Error as e:
            check("a deactivated account cannot order: unauthorized",
                  e.code == "unauthorized", str(e))
        again = self.client(key)
        try:
            again.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            check("newAccount with a deactivated key: unauthorized", False, "accepted")
        except errors.ConflictError as e:
            check("newAccount with a deactivated key: unauthorized", False, f"200 {e}")
        except messages.Error as e:
            check("newAccount with a deactivated key: unauthorized",
                  e.code == "unauthorized", str(e))


def main():
    responder = Responder()
    print(f"HTTP01_PORT {responder.port}", flush=True)
    cfg = json.loads(sys.stdin.readline())
    run = Run(cfg, responder)
    section("directory", run.directory)
    got = section("accounts", run.accounts)
    if got is None:
        check("the rest needs an account", False, "account checks failed")
    else:
        key, acme, _ = got
        urls = section("TNAuthList order", run.tn_order, key, acme)
        section("authorization deactivation", run.deactivate_authz, acme)
        section("order limits", run.order_limits, acme)
        section("STAR and newAuthz", run.star_and_preauth, key, acme)
        section("dns order over http-01", run.dns_order, key, acme, "sip.python.example")
        section("dns order with a wrong key authorization", run.dns_order, key, acme,
                "bad.python.example", False)
        if urls:
            section("orders list", run.orders_list, acme, urls[0])
            section("protocol errors", run.errors, key, acme, urls[0])
        else:
            check("error checks need a TNAuthList order", False, "order failed")
        rolled = section("keyChange", run.key_change, key, acme)
        if rolled:
            section("deactivation", run.deactivate, *rolled)
    passed = sum(RESULTS)
    failed = len(RESULTS) - passed
    print(f"summary: {passed} passed, {failed} failed", flush=True)
    responder.server.shutdown()
    sys.exit(1 if failed or not RESULTS else 0)


if __name__ == "__main__":
    main()
