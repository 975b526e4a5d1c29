//! certbroker: a gRPC certificate broker for STIR/SHAKEN.
//!
//! Signers (STI-AS) ask for "a valid certificate for SPC 1234"; the broker answers from its
//! cache or obtains one from an upstream STI-CA over ACME (RFC 8555) with the token-based
//! challenge tkauth-01 (RFC 9447/9448), once for the whole fleet.
//!
//! Module map, in request order: [`api`] (gRPC) → [`broker`] (cache, single-flight) →
//! [`store`] (shared store) / [`ca`] (upstream CAs) → [`acme`] (protocol client) →
//! [`challenge`] (tkauth-01 tokens, http-01). [`cert`] is the ground floor they all share
//! (certificate record, selector, identifiers), [`shaken`] holds the SHAKEN data formats,
//! [`devca`] an embedded STI-PA and STI-CA for development and tests.

pub mod acme;
pub mod api;
pub mod app;
pub mod broker;
pub mod ca;
pub mod cert;
pub mod challenge;
pub mod cli;
pub mod config;
pub mod devca;
mod instance;
pub mod publish;
pub mod shaken;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Generated protobuf and gRPC code for `certbroker.v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
    tonic::include_proto!("certbroker.v1");

    pub use client::certificate_broker_service_client;

    /// The client, generated in a second pass over the same messages (see `build.rs`).
    mod client {
        include!(concat!(env!("OUT_DIR"), "/client/certbroker.v1.rs"));
    }

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("certbroker_descriptor");

    /// `From` both ways between two messages with the same fields. Exhaustive on both
    /// sides: a field added to one message and not the other fails to compile.
    macro_rules! same_fields {
        ($a:ident, $b:ident { $($f:ident),* $(,)? }) => {
            impl From<$a> for $b {
                fn from(m: $a) -> Self {
                    let $a { $($f),* } = m;
                    Self { $($f),* }
                }
            }
            impl From<$b> for $a {
                fn from(m: $b) -> Self {
                    let $b { $($f),* } = m;
                    Self { $($f),* }
                }
            }
        };
    }

    // WatchCertificate's messages carry GetCertificate's fields (same numbers: wire
    // compatible), as buf's one-request-type-per-RPC rule wants.
    same_fields!(
        GetCertificateRequest,
        WatchCertificateRequest {
            tn_auth_list,
            dns_names,
            csr_der,
            ca_pool,
            min_remaining_validity,
            force_renew,
            ca_certificate,
        }
    );
    same_fields!(
        GetCertificateResponse,
        WatchCertificateResponse {
            certificate_chain_pem,
            certificate_chain_der,
            private_key_pkcs8_der,
            not_before,
            not_after,
            serial_hex,
            sha256_fingerprint_hex,
            issuer_ca,
            cache_status,
            x5u,
        }
    );
}
