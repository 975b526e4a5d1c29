#!/usr/bin/env python3
"""Runs acme2certifier (PyPI `acme2certifier`) for tests/it/acme2certifier.rs.

acme2certifier ships a WSGI application (`acme2certifier.share.acme2certifier_wsgi`); this
serves it over HTTPS with the standard library's wsgiref (threaded), so no web server
package is needed. With --dns it also answers DNS A queries on 127.0.0.1:53 for the given
names, because acme2certifier resolves an http-01 identifier through the DNS servers of
its `[Challenge] dns_server_list` (never /etc/hosts) and then fetches from port 80 of the
answer (RFC 8555 §8.3). The test runs all of this in a network namespace of its own, where
127.0.0.1:53 and :80 are free.

Usage: acme2certifier_server.py --config acme_srv.cfg --cert tls.pem --key tls-key.pem
           [--dns NAME=IPV4 ...]
Prints `listening on https://127.0.0.1:PORT` once the socket is bound (port chosen by the
kernel). The harness still polls /directory before using it. Exits when stdin closes.
"""

import argparse
import os
import socketserver
import ssl
import sys
import threading
from wsgiref.simple_server import WSGIServer, make_server


def dns_stub(names):
    """Answers A queries for `names` (lower-case, no trailing dot) on 127.0.0.1:53/udp."""
    import socket

    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))

    def serve():
        while True:
            wire, peer = sock.recvfrom(4096)
            try:
                query = dns.message.from_wire(wire)
            except Exception:  # not DNS: ignore
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name not in names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text(question.name, 5, "IN", "A", names[name])
                )
            # Other types for a known name: NOERROR, no answer (NODATA).
            sock.sendto(response.to_wire(), peer)

    threading.Thread(target=serve, daemon=True).start()


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dns", action="append", default=[])
    args = parser.parse_args()

    # The harness holds our stdin open; EOF means it is gone, however it died.
    def exit_with_parent():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()

    if args.dns:
        names = {}
        for entry in args.dns:
            name, ip = entry.split("=", 1)
            names[name.lower().rstrip(".")] = ip
        dns_stub(names)

    # acme2certifier reads its configuration at import time.
    os.environ["ACME_SRV_CONFIGFILE"] = os.path.abspath(args.config)
    from acme2certifier.share import acme2certifier_wsgi as a2c

    class HttpsHandler(a2c.get_handler_cls()):
        def get_environ(self):
            env = super().get_environ()
            env["HTTPS"] = "on"  # wsgi.url_scheme, hence the URLs acme2certifier builds
            return env

    server = make_server(
        "127.0.0.1",
        0,
        a2c.application,
        server_class=ThreadingWSGIServer,
        handler_class=HttpsHandler,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.socket.getsockname()[1]
    print(f"listening on https://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
