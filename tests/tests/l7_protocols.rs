//! Toward targets in the group's protocol and version: h2c and h2-over-TLS targets (hyper servers
//! started here, TLS with a self-signed certificate), HTTP/1.1 over TLS, a gRPC unary call whose
//! trailers reach the client, ALB's 464 for what a group cannot take, and draining: GOAWAY and
//! `Connection: close` from a stopping listener while slow requests finish, and a deregistered
//! HTTP/2 target that finishes its request.

mod l7_support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{HeaderMap, Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use l7_support::{Lab, curl, describe, free_port, group, raw};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How long a target takes on `/slow`.
const SLOW: Duration = Duration::from_secs(2);

/// A self-signed certificate for `name`, as rustls wants it and as PEM text (cert, key).
fn self_signed(name: &str) -> (rustls::ServerConfig, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    (cfg, ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A target started by [`target`].
struct Target {
    port: u16,
    /// Connections open to it.
    open: Arc<AtomicUsize>,
}

/// Starts a target on 127.0.0.1 that speaks HTTP/1.1 and HTTP/2 (h2c with prior knowledge in
/// clear; over TLS with a self-signed certificate and ALPN when `tls`).
/// It answers with its name, how it was reached (`clear` or `tls alpn=...`), the request line
/// and headers; `/slow` answers after [`SLOW`]; a gRPC request gets its message back with
/// `grpc-status` and `grpc-message` trailers.
fn target(lab: &Lab, name: &'static str, tls: bool) -> Target {
    let acceptor = tls.then(|| {
        let (mut cfg, _, _) = self_signed("target.invalid");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    });
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let port = lab.block_on(async move {
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let port = socket.local_addr().expect("target address").port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = socket.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let open = Open::new(&counter);
                tokio::spawn(async move {
                    let _open = open;
                    let Some(acceptor) = acceptor else {
                        return serve(TokioIo::new(tcp), name, "clear".into()).await;
                    };
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or(b"none");
                    let via = format!("tls alpn={}", String::from_utf8_lossy(alpn));
                    serve(TokioIo::new(tls), name, via).await;
                });
            }
        });
        port
    });
    Target { port, open }
}

/// Counts a connection as open until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve<I>(io: I, name: &'static str, via: String)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let via = Arc::new(via);
    let service = service_fn(move |req| answer(name, via.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type TargetBody = BoxBody<Bytes, Infallible>;

async fn answer(
    name: &'static str,
    via: Arc<String>,
    req: Request<Incoming>,
) -> Result<Response<TargetBody>, hyper::Error> {
    let te = req.headers().get("te").cloned();
    if req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        == Some("application/grpc")
    {
        let message = req.into_body().collect().await?.to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let said = format!("echoed by {name}");
        trailers.insert("grpc-message", said.parse().expect("value"));
        let body = Full::new(message)
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut resp = Response::builder().header("content-type", "application/grpc");
        if let Some(te) = te {
            resp = resp.header("x-te", te);
        }
        return Ok(resp.body(body).expect("gRPC response"));
    }
    if req.uri().path() == "/slow" {
        tokio::time::sleep(SLOW).await;
    }
    let text = describe(&format!("{name}\n{via}"), &req);
    let body = Full::new(Bytes::from(text)).boxed();
    Ok(Response::new(body))
}

/// A target group as TOML, with a protocol and a protocol version.
fn versioned(name: &str, protocol: &str, version: &str, ports: &[u16]) -> String {
    group(name, ports, "").replacen(
        "protocol = \"HTTP\"",
        &format!("protocol = \"{protocol}\"\nprotocol_version = \"{version}\""),
        1,
    )
}

/// An HTTP listener on `port` forwarding to `default`, plus `rules` (TOML).
fn listener(port: u16, default: &str, rules: &str) -> String {
    format!(
        "[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\ndefault_action = {{ type = \"forward\", target_group = \"{default}\" }}\n{rules}\n"
    )
}

/// A rule forwarding `path` to `group`.
fn rule(listener: &str, priority: u32, path: &str, group: &str) -> String {
    format!(
        "[[{listener}.rules]]\npriority = {priority}\nconditions = [{{ field = \"path-pattern\", values = [\"{path}\"] }}]\nactions = [{{ type = \"forward\", target_group = \"{group}\" }}]\n"
    )
}

/// A PEM certificate and key for xlb's HTTPS listener, in a temporary directory.
struct ListenerCert(PathBuf);

impl ListenerCert {
    fn new(test: &str) -> ListenerCert {
        let dir = std::env::temp_dir().join(format!("xlb-l7-proto-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (_, cert, key) = self_signed("www.example.com");
        std::fs::write(dir.join("cert.pem"), cert).expect("write cert");
        std::fs::write(dir.join("key.pem"), key).expect("write key");
        ListenerCert(dir)
    }

    fn toml(&self) -> String {
        let path = |f: &str| self.0.join(f).to_str().expect("utf-8 path").to_owned();
        format!(
            "certificates = [{{ cert = {:?}, key = {:?} }}]",
            path("cert.pem"),
            path("key.pem")
        )
    }
}

impl Drop for ListenerCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn requests_reach_h2c_and_tls_targets_in_the_group_version_whatever_the_client_speaks() {
    let mut lab = Lab::new();
    let clear = target(&lab, "clear-target", false).port;
    let tls = target(&lab, "tls-target", true).port;
    let (http, https) = (free_port(), free_port());
    let cert = ListenerCert::new("versions");
    let rules = |l: &str| {
        [
            rule(l, 1, "/h2c/*", "h2c"),
            rule(l, 2, "/h2tls/*", "h2tls"),
            rule(l, 3, "/h1tls/*", "h1tls"),
        ]
        .concat()
    };
    let https_listener = listener(https, "h1c", &rules("http_listeners")).replacen(
        "\"HTTP\"",
        &format!("\"HTTPS\"\n{}", cert.toml()),
        1,
    );
    let toml = [
        versioned("h2c", "HTTP", "HTTP2", &[clear]),
        versioned("h1c", "HTTP", "HTTP1", &[clear]),
        versioned("h2tls", "HTTPS", "HTTP2", &[tls]),
        versioned("h1tls", "HTTPS", "HTTP1", &[tls]),
        listener(http, "h1c", &rules("http_listeners")),
        https_listener,
    ]
    .concat();
    lab.start(&toml);

    // (client flags, scheme, port, the version the client gets)
    let clients: [(&[&str], &str, u16, &str); 4] = [
        (&["--http2-prior-knowledge"], "http", http, "2"),
        (&["--http1.1"], "http", http, "1.1"),
        (&["-k", "--http2"], "https", https, "2"),
        (&["-k", "--http1.1"], "https", https, "1.1"),
    ];
    // (path, the target, how it was reached, the version it saw)
    let groups = [
        ("/h2c/x", "clear-target", "clear", "HTTP/2.0"),
        ("/h2tls/x", "tls-target", "tls alpn=h2", "HTTP/2.0"),
        ("/h1tls/x", "tls-target", "tls alpn=http/1.1", "HTTP/1.1"),
        ("/plain", "clear-target", "clear", "HTTP/1.1"),
    ];
    for (flags, scheme, port, client_version) in clients {
        for (path, name, via, target_version) in groups {
            let resolve = format!("www.example.com:{port}:127.0.0.1");
            let url = format!("{scheme}://www.example.com:{port}{path}?q=1");
            let mut args = vec!["--resolve", &resolve];
            args.extend_from_slice(flags);
            args.push(&url);
            let r = curl(&args);
            let what = format!("{flags:?} {url}: {}\n{}", r.body, r.stderr);
            assert_eq!(
                (r.status, r.version.as_str()),
                (200, client_version),
                "{what}"
            );
            let lines: Vec<&str> = r.body.lines().collect();
            assert_eq!(lines[..2], [name, via], "{what}");
            assert!(lines[2].ends_with(target_version), "{what}");
            assert!(r.body.contains("x-forwarded-for: 127.0.0.1\n"), "{what}");
            assert!(
                r.body.contains(&format!("x-forwarded-proto: {scheme}\n")),
                "{what}"
            );
            let host = format!("www.example.com:{port}");
            if target_version == "HTTP/2.0" {
                // The client's host is the target's `:authority`, and there is no `Host`.
                let to_target = if via == "clear" { "http" } else { "https" };
                let line = format!("GET {to_target}://{host}{path}?q=1 HTTP/2.0");
                assert_eq!(lines[2], line, "{what}");
                assert!(!r.body.contains("\nhost:"), "{what}");
            } else {
                assert_eq!(lines[2], format!("GET {path}?q=1 HTTP/1.1"), "{what}");
                assert!(r.body.contains(&format!("\nhost: {host}\n")), "{what}");
            }
        }
    }
}

/// `message` as one gRPC length-prefixed message (uncompressed).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("short message"));
    b.put_slice(message);
    b.freeze()
}

/// What a gRPC unary call got back.
#[derive(Debug)]
struct GrpcReply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: HeaderMap,
}

/// An h2c (prior knowledge) client connected to xlb on `port`.
async fn h2_client(port: u16) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to xlb");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Reads a response body to its end, then its trailers.
async fn read_body(mut body: h2::RecvStream) -> (Bytes, HeaderMap) {
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    (data.freeze(), trailers)
}

/// A gRPC unary call to `path` through xlb on `port`: POST, `application/grpc`, `te: trailers`,
/// one message in one DATA frame; 10 s at most.
fn grpc_call(lab: &Lab, port: u16, path: &str, message: &[u8]) -> GrpcReply {
    let url = format!("http://127.0.0.1:{port}{path}");
    let call = async {
        let client = h2_client(port).await;
        let req = Request::post(url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut client = client.ready().await.expect("h2 ready");
        let (resp, mut send) = client.send_request(req, false).expect("send request");
        // A refusal does not wait for the body: when xlb has answered and closed the stream
        // first, the message cannot go out, and the answer is what the caller checks.
        let _ = send.send_data(grpc_frame(message), true);
        let (parts, body) = resp.await.expect("response").into_parts();
        let (body, trailers) = read_body(body).await;
        GrpcReply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            trailers,
        }
    };
    lab.block_on(async { tokio::time::timeout(Duration::from_secs(10), call).await })
        .expect("gRPC call within 10 s")
}

#[test]
fn grpc_trailers_reach_the_client_and_groups_refuse_what_they_cannot_take() {
    let mut lab = Lab::new();
    let grpc_target = target(&lab, "grpc", false).port;
    let web = lab.backend("web");
    let port = free_port();
    let toml = [
        versioned("grpc", "HTTP", "GRPC", &[grpc_target]),
        group("web", &[web], ""),
        listener(
            port,
            "web",
            &rule("http_listeners", 1, "/echo.Echo/*", "grpc"),
        ),
    ]
    .concat();
    lab.start(&toml);

    let r = grpc_call(&lab, port, "/echo.Echo/Say", b"hello");
    assert_eq!(r.status, 200, "{r:?}");
    let value =
        |h: &HeaderMap, name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(
        value(&r.headers, "content-type").as_deref(),
        Some("application/grpc"),
        "{r:?}"
    );
    assert_eq!(r.body, grpc_frame(b"hello"), "{r:?}");
    assert_eq!(
        value(&r.trailers, "grpc-status").as_deref(),
        Some("0"),
        "{r:?}"
    );
    assert_eq!(
        value(&r.trailers, "grpc-message").as_deref(),
        Some("echoed by grpc"),
        "{r:?}"
    );
    // `te: trailers` is the one TE value that crosses into HTTP/2.
    assert_eq!(
        value(&r.headers, "x-te").as_deref(),
        Some("trailers"),
        "{r:?}"
    );

    // ALB's 464: a GRPC group takes only gRPC, an HTTP1 group no gRPC.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for flags in ["--http1.1", "--http2-prior-knowledge"] {
        let r = curl(&[flags, &format!("http://{addr}/echo.Echo/Say")]);
        assert_eq!(r.status, 464, "{flags}: {}", r.body);
        assert!(r.body.contains("464 Incompatible Protocol"), "{}", r.body);
    }
    // HTTP/1.1 carries a reason phrase, and 464 has none of its own.
    let r = curl(&["--http1.1", &format!("http://{addr}/echo.Echo/Say")]);
    assert!(
        r.stderr.contains("< HTTP/1.1 464 Incompatible Protocol"),
        "{}",
        r.stderr
    );
    let r = grpc_call(&lab, port, "/other.Svc/Call", b"hi");
    assert_eq!(r.status, 464, "{r:?}");
    let log = lab.log_lines(|l| l.len() >= 4);
    assert!(
        log.iter()
            .any(|l| l.contains(" -1 -1 -1 464 - ") && l.contains("\"forward\"")),
        "{log:#?}"
    );
}

#[test]
fn a_stopping_listener_sends_goaway_and_connection_close_while_slow_requests_finish() {
    let mut lab = Lab::new();
    let t = target(&lab, "slow-target", false).port;
    let (port, other) = (free_port(), free_port());
    let groups = versioned("h2c", "HTTP", "HTTP2", &[t]);
    lab.start(&[groups.clone(), listener(port, "h2c", "")].concat());

    // In flight: one HTTP/2 and one HTTP/1.1 request, each taking SLOW at the target.
    let h2 = lab.block_on(h2_client(port));
    let get = |path: &str| {
        Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(())
            .expect("request")
    };
    let mut sender = lab.block_on(h2.clone().ready()).expect("h2 ready");
    let (slow_h2, _) = sender.send_request(get("/slow"), true).expect("send /slow");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let slow_h1 = std::thread::spawn(move || {
        let started = Instant::now();
        let got = raw(addr, b"GET /slow HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
        (got, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    // The listener leaves the config: it stops and drains.
    lab.reload(&[groups, listener(other, "h2c", "")].concat());

    let (goaway, resp) = lab.block_on(async {
        let goaway = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let next = h2
                    .clone()
                    .ready()
                    .await
                    .and_then(|mut c| c.send_request(get("/"), true).map(|_| ()));
                match next {
                    Err(e) if e.is_go_away() => break e,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        let resp = tokio::time::timeout(Duration::from_secs(10), async {
            let (parts, body) = slow_h2.await.expect("slow HTTP/2 response").into_parts();
            (parts.status, read_body(body).await.0)
        })
        .await;
        (goaway, resp)
    });
    let goaway = goaway.expect("GOAWAY within 5 s of the stop");
    assert!(goaway.is_remote(), "{goaway:?}");
    let (status, body) = resp.expect("the slow HTTP/2 request finishes");
    assert_eq!(status, 200);
    assert!(body.starts_with(b"slow-target\n"), "{body:?}");
    assert!(stopped.elapsed() < SLOW + Duration::from_secs(2));

    let (got, took) = slow_h1.join().expect("HTTP/1.1 client");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let head = got
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{got}");
    assert!(got.contains("slow-target\n"), "{got}");
    // xlb closed the connection after the response: no wait for the client's read timeout.
    assert!(took < SLOW + Duration::from_secs(2), "{took:?}");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the stopped listener still accepts"
    );
}

#[test]
fn a_deregistered_http2_target_finishes_its_request_and_gets_no_new_one() {
    let mut lab = Lab::new();
    let (a, b) = (target(&lab, "a", false), target(&lab, "b", false).port);
    let port = free_port();
    let cfg = |targets: &[u16]| {
        [
            versioned("h2c", "HTTP", "HTTP2", targets),
            listener(port, "h2c", ""),
        ]
        .concat()
    };
    lab.start(&cfg(&[a.port, b]));
    let url = format!("http://127.0.0.1:{port}");
    let slow_url = format!("{url}/slow");
    // Round robin starts with the first target.
    let slow = std::thread::spawn(move || curl(&["--http2-prior-knowledge", &slow_url]));
    std::thread::sleep(Duration::from_millis(300));
    lab.reload(&cfg(&[b]));
    for _ in 0..4 {
        let r = curl(&["--http2-prior-knowledge", &url]);
        assert_eq!((r.status, r.backend()), (200, "b"), "{}", r.stderr);
    }
    let r = slow.join().expect("curl thread");
    assert_eq!((r.status, r.backend()), (200, "a"), "{}", r.stderr);
    // Its request done, xlb closes its HTTP/2 connection to the deregistered target.
    let closed = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        a.open.load(Ordering::Relaxed) == 0
    });
    assert!(closed, "xlb keeps a connection to the deregistered target");
}
