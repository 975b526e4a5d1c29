"""acme2certifier's stock openssl CA handler, plus the one thing it lacks for SHAKEN.

The stock `acme2certifier.cahandlers.openssl_ca_handler` copies only subjectAltName from
the CSR; its extension profile (`openssl_conf` `[extensions]`) knows basicConstraints,
SKI, AKI, keyUsage and extendedKeyUsage and nothing else, and no acme2certifier handler
has a CSR-passthrough option. So a TNAuthList order is validated against the CSR's
TNAuthList and then issued without it. This subclass changes only that: it also copies the
TNAuthList extension (RFC 8226, id-pe-TNAuthList 1.3.6.1.5.5.7.1.26) from the CSR, as
given. Everything else (the ACME server, validation, signing, the chain) is stock.
Loaded with `handler_file:` in `[CAhandler]`.
"""

from cryptography import x509

from acme2certifier.cahandlers import openssl_ca_handler as stock

TN_AUTH_LIST = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")


class CAhandler(stock.CAhandler):
    """openssl_ca_handler that keeps the CSR's TNAuthList."""

    def _cert_extension_apply(self, builder, ca_cert, req):
        builder = super()._cert_extension_apply(builder, ca_cert, req)
        if req is not None:
            for ext in req.extensions:
                if ext.oid == TN_AUTH_LIST:
                    builder = builder.add_extension(ext.value, critical=ext.critical)
        return builder
