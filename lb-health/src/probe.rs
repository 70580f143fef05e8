//! One health check against one address: TCP connect, or an HTTP(S) `GET` whose status line is
//! matched. Each probe opens a fresh connection and closes it, as ELB does.
//!
//! HTTP is a minimal hand-rolled HTTP/1.1 client: a check needs one request line and the status
//! code of the answer, nothing of the headers or body, so hyper (and its body and runtime glue
//! crates) would add far more than it saves. The request asks for `Connection: close` and the
//! probe reads at most [`STATUS_LINE_MAX`] bytes.
//!
//! HTTPS accepts any certificate, as ELB does: targets commonly use self-signed certificates,
//! and a check tests the target's health, not its identity.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::{Matcher, ProbeResult, Reason};

/// The longest status line read before giving up on an answer.
pub const STATUS_LINE_MAX: usize = 1024;

/// Sent with every HTTP(S) check, so targets can tell checks from traffic in their logs.
const USER_AGENT: &str = concat!("xlb-HealthChecker/", env!("CARGO_PKG_VERSION"));

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// Success: the TCP handshake completes.
    Tcp,
    /// Success: `GET path` is answered with a status `matcher` accepts.
    Http { path: String, matcher: Matcher },
    /// As `Http`, over TLS with any certificate accepted.
    Https { path: String, matcher: Matcher },
}

/// Why a probe failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {addr}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("exchange with {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The answer did not start with an HTTP/1.x status line.
    #[error("{addr} answered {start:?}, not an HTTP/1.x status line")]
    Malformed { addr: SocketAddr, start: String },
    #[error("status {status} does not match \"{matcher}\"")]
    ResponseCodeMismatch { status: u16, matcher: Matcher },
}

impl ProbeError {
    /// The AWS reason code a target failing this way is unhealthy for.
    pub fn reason(&self) -> Reason {
        match self {
            ProbeError::Timeout { .. } => Reason::Timeout,
            ProbeError::ResponseCodeMismatch { .. } => Reason::ResponseCodeMismatch,
            ProbeError::Connect { .. }
            | ProbeError::Tls { .. }
            | ProbeError::Io { .. }
            | ProbeError::Malformed { .. } => Reason::FailedHealthChecks,
        }
    }
}

/// Runs probes; holds the TLS client config so that it is built once, not per check.
#[derive(Clone)]
pub struct Prober {
    tls: TlsConnector,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Prober {
    /// A prober whose HTTPS checks accept any certificate (see the module doc).
    pub fn new() -> Prober {
        // Name the provider rather than rely on a process default, which is ambiguous when
        // another part of the build enables a second rustls provider.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
            .with_no_client_auth();
        Prober {
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// Checks `addr` once; the whole probe is bounded by `timeout`.
    pub async fn probe(
        &self,
        kind: &ProbeKind,
        addr: SocketAddr,
        timeout: Duration,
    ) -> ProbeResult {
        tokio::time::timeout(timeout, self.run(kind, addr))
            .await
            .unwrap_or(Err(ProbeError::Timeout { timeout }))
    }

    async fn run(&self, kind: &ProbeKind, addr: SocketAddr) -> ProbeResult {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        match kind {
            ProbeKind::Tcp => Ok(()),
            ProbeKind::Http { path, matcher } => http_get(tcp, addr, path, matcher).await,
            ProbeKind::Https { path, matcher } => {
                // ELB sends no SNI to targets; an IP server name makes rustls send none either.
                let tls = self
                    .tls
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await
                    .map_err(|source| ProbeError::Tls { addr, source })?;
                http_get(tls, addr, path, matcher).await
            }
        }
    }
}

/// Sends `GET path` and matches the status code of the answer.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
    matcher: &Matcher,
) -> ProbeResult {
    let io = |source| ProbeError::Io { addr, source };
    // `SocketAddr`'s Display brackets IPv6 addresses, as a Host header needs.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut buf = Vec::with_capacity(128);
    while !buf.contains(&b'\n') && buf.len() < STATUS_LINE_MAX {
        let mut chunk = [0u8; 256];
        let want = chunk.len().min(STATUS_LINE_MAX - buf.len());
        let n = stream.read(&mut chunk[..want]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = status_code(&buf).ok_or_else(|| ProbeError::Malformed {
        addr,
        start: String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned(),
    })?;
    if matcher.matches(status) {
        Ok(())
    } else {
        Err(ProbeError::ResponseCodeMismatch {
            status,
            matcher: matcher.clone(),
        })
    }
}

/// The code of a complete `HTTP/1.x NNN ...` status line at the start of `buf`.
fn status_code(buf: &[u8]) -> Option<u16> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// Accepts every certificate but still checks the handshake signatures, so the session is a
/// working TLS session with whoever holds the presented key.
#[derive(Debug)]
pub struct AnyCertificate(pub WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Test servers on 127.0.0.1, shared with the checker's tests. Each stops when dropped.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        net::SocketAddr,
        sync::{
            Arc, Mutex,
            atomic::{AtomicU16, Ordering},
        },
    };

    use rustls::{
        ServerConfig,
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    };
    use tokio::{
        io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
        net::TcpListener,
        task::{AbortHandle, JoinSet},
    };
    use tokio_rustls::TlsAcceptor;

    /// Answers every request with `status` (0: accepts and never answers). Keeps the request
    /// heads it saw.
    pub(crate) struct HttpServer {
        pub addr: SocketAddr,
        pub status: Arc<AtomicU16>,
        pub requests: Arc<Mutex<Vec<String>>>,
        task: AbortHandle,
    }

    impl Drop for HttpServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl HttpServer {
        pub(crate) async fn start(status: u16, tls: bool) -> HttpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let status = Arc::new(AtomicU16::new(status));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let acceptor = tls.then(self_signed_acceptor);
            let (st, req) = (status.clone(), requests.clone());
            let task = tokio::spawn(async move {
                // Dropping the set (when the server is aborted) aborts the connections too.
                let mut conns = JoinSet::new();
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (st, req, acceptor) = (st.clone(), req.clone(), acceptor.clone());
                    conns.spawn(async move {
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(tcp).await {
                                    answer(tls, &st, &req).await;
                                }
                            }
                            None => answer(tcp, &st, &req).await,
                        }
                    });
                    while conns.try_join_next().is_some() {}
                }
            });
            HttpServer {
                addr,
                status,
                requests,
                task: task.abort_handle(),
            }
        }
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        status: &AtomicU16,
        requests: &Mutex<Vec<String>>,
    ) {
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 512];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
        requests
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf).into_owned());
        let code = status.load(Ordering::Relaxed);
        if code == 0 {
            std::future::pending::<()>().await;
        }
        let reply =
            format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    fn self_signed_acceptor() -> TlsAcceptor {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Instant};

    use tokio::net::TcpListener;

    use super::{testing::HttpServer, *};

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn http(path: &str, matcher: &str) -> ProbeKind {
        ProbeKind::Http {
            path: path.into(),
            matcher: Matcher::parse(matcher).unwrap(),
        }
    }

    fn https(matcher: &str) -> ProbeKind {
        ProbeKind::Https {
            path: "/".into(),
            matcher: Matcher::parse(matcher).unwrap(),
        }
    }

    /// An address nothing listens on: bound, then closed.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn tcp_succeeds_on_a_listener_and_fails_on_a_closed_port() {
        let p = Prober::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        p.probe(&ProbeKind::Tcp, l.local_addr().unwrap(), TIMEOUT)
            .await
            .unwrap();
        drop(l);
        let e = p
            .probe(&ProbeKind::Tcp, closed_port().await, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e:?}");
        assert_eq!(e.reason(), Reason::FailedHealthChecks);
    }

    #[tokio::test]
    async fn http_matches_the_status_code() {
        let p = Prober::new();
        let s = HttpServer::start(200, false).await;
        p.probe(&http("/healthz?x=1", "200"), s.addr, TIMEOUT)
            .await
            .unwrap();
        let head = s.requests.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: {}\r\n", s.addr)),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

        s.status.store(503, Ordering::Relaxed);
        let e = p
            .probe(&http("/", "200-299"), s.addr, TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProbeError::ResponseCodeMismatch { status: 503, .. }),
            "{e:?}"
        );
        assert_eq!(e.reason(), Reason::ResponseCodeMismatch);
        assert_eq!(e.to_string(), "status 503 does not match \"200-299\"");
        p.probe(&http("/", "200,503"), s.addr, TIMEOUT)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn http_without_an_answer_times_out_on_time() {
        let p = Prober::new();
        let s = HttpServer::start(0, false).await;
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let e = p
            .probe(&http("/", "200"), s.addr, timeout)
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, ProbeError::Timeout { .. }), "{e:?}");
        assert_eq!(e.reason(), Reason::Timeout);
        assert!(took >= timeout && took < timeout * 3, "{took:?}");
    }

    /// A server that answers its first connection with `reply` and closes it.
    async fn one_shot(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        });
        (addr, server)
    }

    #[tokio::test]
    async fn http_refuses_what_is_not_http() {
        let p = Prober::new();
        let (addr, server) = one_shot(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let e = p.probe(&http("/", "200"), addr, TIMEOUT).await.unwrap_err();
        server.await.unwrap();
        assert!(matches!(e, ProbeError::Malformed { .. }), "{e:?}");
        assert!(e.to_string().contains("SSH-2.0"), "{e}");
        assert_eq!(e.reason(), Reason::FailedHealthChecks);
    }

    #[test]
    fn only_well_formed_http1_status_lines_give_a_code() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404\n"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None);
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20\r\n"), None);
    }

    #[tokio::test]
    async fn https_accepts_a_self_signed_certificate() {
        let p = Prober::new();
        let s = HttpServer::start(200, true).await;
        p.probe(&https("200"), s.addr, TIMEOUT).await.unwrap();
        s.status.store(404, Ordering::Relaxed);
        let e = p.probe(&https("200"), s.addr, TIMEOUT).await.unwrap_err();
        assert!(
            matches!(e, ProbeError::ResponseCodeMismatch { status: 404, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_fails_the_handshake() {
        let p = Prober::new();
        let (addr, server) = one_shot(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let e = p.probe(&https("200"), addr, TIMEOUT).await.unwrap_err();
        server.await.unwrap();
        assert!(matches!(e, ProbeError::Tls { .. }), "{e:?}");
        assert_eq!(e.reason(), Reason::FailedHealthChecks);
    }
}
