//! Test PKI for the mTLS listener: a server CA, client CAs and client certificates made
//! with rcgen, written as PEM files, and a tonic client that presents one of them.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use certbroker::{
    config::ServerTlsSettings,
    pb::certificate_broker_service_client::CertificateBrokerServiceClient,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA that can sign server and client certificates.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// A server certificate for `localhost` / 127.0.0.1.
    pub fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A certificate for `localhost` / 127.0.0.1 good for both TLS roles, as Redis Cluster
    /// nodes need (they present it on the cluster bus as clients).
    pub fn server_and_client(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate with these SAN DNS names (and `cn` as subject CN).
    pub fn client(&self, cn: &str, dns: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Server and client-CA files for `[server.tls]`.
pub struct ServerFiles {
    pub dir: tempfile::TempDir,
    pub server_ca: TestCa,
    pub client_ca: TestCa,
}

impl ServerFiles {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Self {
            dir,
            server_ca: TestCa::new("test server CA"),
            client_ca: TestCa::new("test client CA"),
        };
        files.write_server(&files.server_ca.server());
        std::fs::write(files.path("client-ca.pem"), &files.client_ca.pem).expect("write");
        files
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the server certificate files (what a rotation does).
    pub fn write_server(&self, leaf: &Leaf) {
        std::fs::write(self.path("server.pem"), &leaf.cert_pem).expect("write");
        std::fs::write(self.path("server.key"), &leaf.key_pem).expect("write");
    }

    pub fn settings(&self, reload_interval_secs: u64) -> ServerTlsSettings {
        ServerTlsSettings {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: Some(self.path("client-ca.pem")),
            reload_interval: Duration::from_secs(reload_interval_secs),
        }
    }
}

/// Connects over TLS trusting `server_ca_pem`, presenting `identity` if given.
pub async fn connect(
    addr: SocketAddr,
    server_ca_pem: &str,
    identity: Option<&Leaf>,
) -> Result<CertificateBrokerServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca_pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CertificateBrokerServiceClient::new(channel))
}
