//! All of xlb's rustls setup. A listener gets a [`ServerConfig`] whose certificate resolver picks
//! by SNI: the first certificate in config order whose names cover the server name (exact or
//! wildcard, as webpki checks them for clients), else the first certificate (the default, as
//! ALB). TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, and the aws-lc-rs provider (which brings
//! ALB's post-quantum hybrid key exchange). Certificates swap on reload by building a new
//! `ServerConfig`; connections already up keep the one they started with.
//!
//! Toward HTTPS targets, [`client_config`] accepts any certificate, as ALB does: targets commonly
//! run self-signed certificates, and what they are is set by the target group, not by names.

use std::{fmt, path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, ServerConfig,
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use thiserror::Error;

use lb_config::CertificateFiles;
use lb_health::probe::AnyCertificate;

/// A certificate that cannot be used, naming its file.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("read certificate chain {path}: {source}")]
    Chain {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    EmptyChain { path: PathBuf },
    #[error("read private key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("private key {path}: {source}")]
    Unusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("build TLS config: {0}")]
    Config(#[source] rustls::Error),
}

/// Loads a PEM chain and key, and checks that the key is usable and belongs to the chain.
pub fn load_certificate(files: &CertificateFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Chain {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let unusable = |source| TlsError::Unusable {
        path: files.key.clone(),
        source,
    };
    let certified =
        CertifiedKey::from_der(chain, key, &aws_lc_rs::default_provider()).map_err(unusable)?;
    Ok(Arc::new(certified))
}

/// Picks a certificate by SNI; see the module doc.
pub struct SniResolver {
    /// Config order; the first is the default.
    certificates: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.certificates.len())
    }
}

impl SniResolver {
    /// The certificate for `server_name` (none: the default).
    fn pick(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = server_name
            .and_then(|n| ServerName::try_from(n).ok())
            .and_then(|name| {
                self.certificates.iter().find(|ck| {
                    ck.end_entity_cert()
                        .ok()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            });
        by_name.or(self.certificates.first())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

/// A listener's TLS config from its certificates (the first is the default).
pub fn server_config(certificates: &[CertificateFiles]) -> Result<Arc<ServerConfig>, TlsError> {
    let certificates = certificates
        .iter()
        .map(load_certificate)
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certificates }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS config toward HTTPS targets: TLS 1.2 and 1.3, ALPN `alpn` only (`h2` or
/// `http/1.1`, per the group's protocol version), and any certificate accepted, as ALB (the
/// health checks' verifier: handshake signatures are still checked). SNI comes from the target's
/// id, so an IP address sends none.
pub fn client_config(alpn: &[u8]) -> Arc<ClientConfig> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}
