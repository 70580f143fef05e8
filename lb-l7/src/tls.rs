//! All of xlb's rustls setup. A listener gets a [`ServerConfig`] whose certificate resolver picks
//! by SNI: the first certificate in config order whose names cover the server name (exact or
//! wildcard, as webpki checks them for clients), else the first certificate (the default, as
//! ALB). The protocol versions are the listener's security policy's (HTTPS listeners: TLS 1.2
//! and 1.3), ALPN is `h2` then `http/1.1` on HTTPS listeners and NLB's ALPN policy on TLS
//! listeners, and the provider is aws-lc-rs (which brings ALB's post-quantum hybrid key
//! exchange). Certificates swap on reload by building a new
//! `ServerConfig`; connections already up keep the one they started with.
//!
//! Toward HTTPS targets, [`client_config`] accepts any certificate, as ALB does: targets commonly
//! run self-signed certificates, and what they are is set by the target group, not by names.

use std::{fmt, path::PathBuf, sync::Arc};

use rustls::{
    CipherSuite, ClientConfig, ProtocolVersion, ServerConfig,
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use thiserror::Error;

use lb_config::{CertificateFiles, SslPolicy};
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

/// What an HTTPS listener offers: hyper serves both.
pub const HTTPS_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A listener's TLS config from its certificates (the first is the default), the protocol
/// versions of `policy`, and `alpn` in the listener's order of preference (rustls picks the
/// first the client offers too; none offered: no ALPN).
pub fn server_config(
    certificates: &[CertificateFiles],
    policy: SslPolicy,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certificates = certificates
        .iter()
        .map(load_certificate)
        .collect::<Result<Vec<_>, _>>()?;
    let versions: &[&rustls::SupportedProtocolVersion] = match policy.tls12() {
        true => &[&rustls::version::TLS13, &rustls::version::TLS12],
        false => &[&rustls::version::TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certificates }));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A cipher suite by its OpenSSL name, as ALB's logs write it (`-` for one rustls does not offer
/// here). Each of aws-lc-rs's suites, by hand: rustls knows only the IANA names.
pub fn openssl_cipher(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "-",
    }
}

/// A protocol version as ALB's logs write it: `TLSv1.2`, `TLSv1.3`.
pub fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "-",
    }
}

/// The TLS config toward HTTPS and TLS targets: TLS 1.2 and 1.3, ALPN `alpn` (HTTPS groups:
/// `h2` or `http/1.1`, per the group's protocol version; TLS groups: what the client agreed, or
/// none), and any certificate accepted, as ALB (the health checks' verifier: handshake
/// signatures are still checked). SNI comes from the target's id, so an IP address sends none.
pub fn client_config(alpn: Option<&[u8]>) -> Arc<ClientConfig> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_a_listener_offers_has_an_openssl_name() {
        for suite in aws_lc_rs::ALL_CIPHER_SUITES {
            let name = openssl_cipher(suite.suite());
            assert_ne!(name, "-", "{:?}", suite.suite());
            assert!(!name.contains("WITH"), "{name}");
        }
        assert_eq!(
            openssl_cipher(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "ECDHE-RSA-AES128-GCM-SHA256"
        );
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
    }
}
