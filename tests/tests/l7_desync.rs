//! ALB's desync mitigation modes (`routing.http.desync_mitigation_mode`) through the real L7
//! tier: raw requests of each classification (Compliant, Acceptable, Ambiguous, Severe) to a
//! listener in each mode, and what the client, the target, the access log and the metrics see.
//! Also ALB's sizes of a request head (400) and its 501 for a `Transfer-Encoding` it cannot frame.

mod l7_support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use l7_support::{Lab, describe, free_port, group, read_head};

/// A target that counts the connections it accepted and the requests it answered. It answers
/// with `seen`, the request as [`describe`] writes it, and the body.
struct Target {
    port: u16,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Target {
    fn start(lab: &Lab) -> Target {
        let socket = lab
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind target");
        let port = socket.local_addr().expect("target address").port();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (conns.clone(), requests.clone());
        lab.spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, r.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Target {
            port,
            conns,
            requests,
        }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    requests: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut text = describe("seen", &req);
    let body = req.into_body().collect().await?.to_bytes();
    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
    requests.fetch_add(1, Ordering::SeqCst);
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// A listener in `mode` (`None`: the attribute unset) forwarding to one counting target.
fn desync_lab(mode: Option<&str>) -> (Lab, SocketAddr, Target) {
    let mut lab = Lab::new();
    let target = Target::start(&lab);
    let port = free_port();
    lab.start(&listeners(&[(port, mode)], target.port));
    (lab, SocketAddr::from(([127, 0, 0, 1], port)), target)
}

/// HTTP listeners on `ports`, each in its mode, forwarding to the target on `target`.
fn listeners(ports: &[(u16, Option<&str>)], target: u16) -> String {
    let mut toml = group("t", &[target], "");
    // No health checks: the target counts the listeners' requests alone.
    toml.push_str("health_check = { enabled = false }\n\n");
    for (port, mode) in ports {
        let attribute = mode
            .map(|m| format!("\"routing.http.desync_mitigation_mode\" = \"{m}\""))
            .unwrap_or_default();
        toml.push_str(&format!(
            "[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\n\
             default_action = {{ type = \"forward\", target_group = \"t\" }}\n\
             attributes = {{ {attribute} }}\n\n"
        ));
    }
    toml
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    s
}

/// One response: its head (lower case) and its body (read to its `content-length`, unless it
/// answers a HEAD).
fn response(s: &mut TcpStream, head_request: bool) -> (String, String) {
    let head = String::from_utf8_lossy(&read_head(s)).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let length = if head_request { 0 } else { length };
    let mut body = vec![0; length];
    s.read_exact(&mut body).expect("response body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `request` on `s` and reads the response.
fn exchange(s: &mut TcpStream, request: &[u8]) -> (String, String) {
    s.write_all(request).expect("send");
    response(s, request.starts_with(b"HEAD "))
}

/// Whether xlb closed `s` (waits up to 2 s for it).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("bytes after the response"),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn status(head: &str) -> &str {
    head.get(9..12).unwrap_or(head)
}

const COMPLIANT: &[u8] = b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n";

const MODES: [Option<&str>; 3] = [Some("monitor"), None, Some("strictest")];

#[test]
fn compliant_requests_are_forwarded_on_open_connections_in_every_mode() {
    let cases: &[&[u8]] = &[
        COMPLIANT,
        // An empty URI: compliant as ALB's classifier reads it, refused by hyper's parser.
        b"GET  HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // Codings with parameters and tabs: compliant, and refused by hyper's parser as it is.
        b"POST /codings HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;p, deflate,\tchunked;param\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for mode in MODES {
        let (_lab, addr, target) = desync_lab(mode);
        let mut s = connect(addr);
        for request in cases {
            let (head, body) = exchange(&mut s, request);
            let text = String::from_utf8_lossy(request);
            assert_eq!(status(&head), "200", "{mode:?} {text:?}: {head}{body}");
            assert!(body.starts_with("seen\n"), "{mode:?} {text:?}: {body}");
        }
        assert!(
            !closed(&mut s),
            "{mode:?}: the client's connection was closed"
        );
        assert_eq!(
            target.conns(),
            1,
            "{mode:?}: the target's connection was not reused"
        );
    }
}

/// Requests ALB classifies as Acceptable: not RFC 7230's, no known risk.
const ACCEPTABLE: &[(&str, &[u8])] = &[
    ("space in the URI", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    (
        "spaces in the URI",
        b"GET /a  b?c d HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("HTTP/1.9", b"GET / HTTP/1.9\r\nHost: a\r\n\r\n"),
    (
        "space after the version",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    ),
    ("no version (HTTP/0.9)", b"GET /\r\nHost: a\r\n\r\n"),
    (
        "space in a header name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n",
    ),
    (
        "space before the colon",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Y : 1\r\n\r\n",
    ),
    (
        "control character in a name",
        b"GET / HTTP/1.1\r\nHost: a\r\n\x01X-Y: 1\r\n\r\n",
    ),
    (
        "control character in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Y: a\x01b\r\n\r\n",
    ),
    (
        "DEL in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Y: a\x7fb\r\n\r\n",
    ),
    (
        "non-ASCII name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: 1\r\n\r\n",
    ),
    (
        "bracket in a name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX[Y]: 1\r\n\r\n",
    ),
    (
        "GET with Content-Length: 0",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "HEAD with Content-Length: 0",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ),
    ("lines ended by LF alone", b"GET / HTTP/1.1\nHost: a\n\n"),
];

#[test]
fn acceptable_requests_are_forwarded_unless_the_mode_is_strictest() {
    for mode in MODES {
        let (mut lab, addr, target) = desync_lab(mode);
        let mut passed = Vec::new();
        for (what, request) in ACCEPTABLE {
            let mut s = connect(addr);
            let (head, body) = exchange(&mut s, request);
            if status(&head) == "200"
                && (body.starts_with("seen\n") || request.starts_with(b"HEAD"))
            {
                passed.push(*what);
            } else {
                assert_eq!(status(&head), "400", "{mode:?} {what}: {head}{body}");
            }
        }
        let forwarded = target.requests();
        match mode {
            Some("strictest") => {
                assert!(passed.is_empty(), "strictest forwarded {passed:?}");
                assert_eq!(forwarded, 0);
            }
            _ => {
                assert_eq!(
                    passed.len(),
                    ACCEPTABLE.len(),
                    "{mode:?} forwarded only {passed:?}"
                );
                assert_eq!(forwarded, ACCEPTABLE.len());
            }
        }
        let log = lab.log_lines(|l| l.len() >= ACCEPTABLE.len());
        for line in &log {
            assert!(line.contains(" \"Acceptable\" \""), "{mode:?}: {line}");
        }
    }
}

/// Requests ALB classifies as Ambiguous, each with a body the target is to get.
const AMBIGUOUS: &[(&str, &[u8])] = &[
    (
        "Content-Length with Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "GET with a body",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "duplicate equal Content-Length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "Transfer_Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "Content_Length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
];

#[test]
fn ambiguous_requests_are_forwarded_then_both_connections_closed_in_defensive_mode() {
    let (_lab, addr, target) = desync_lab(None);
    // A connection to the target, pooled.
    let (head, _) = exchange(&mut connect(addr), COMPLIANT);
    assert_eq!(status(&head), "200");
    for (i, (what, request)) in AMBIGUOUS.iter().enumerate() {
        let mut s = connect(addr);
        let (head, body) = exchange(&mut s, request);
        assert_eq!(status(&head), "200", "{what}: {head}{body}");
        assert!(body.ends_with("body: hello\n"), "{what}: {body}");
        assert!(head.contains("connection: close"), "{what}: {head}");
        assert!(
            closed(&mut s),
            "{what}: the client's connection stayed open"
        );
        // The target's connection went with it: the next request opens a fresh one.
        let (head, _) = exchange(&mut connect(addr), COMPLIANT);
        assert_eq!(status(&head), "200");
        assert_eq!(
            target.conns(),
            i + 2,
            "{what}: the target's connection was reused"
        );
    }
}

#[test]
fn ambiguous_requests_are_refused_in_strictest_mode_and_kept_open_in_monitor_mode() {
    let (_lab, addr, target) = desync_lab(Some("strictest"));
    for (what, request) in AMBIGUOUS {
        let mut s = connect(addr);
        let (head, body) = exchange(&mut s, request);
        assert_eq!(status(&head), "400", "strictest {what}: {head}{body}");
        assert!(closed(&mut s), "strictest {what}: left open");
    }
    assert_eq!(
        target.requests(),
        0,
        "strictest forwarded an ambiguous request"
    );

    let (_lab, addr, target) = desync_lab(Some("monitor"));
    let mut s = connect(addr);
    for (what, request) in AMBIGUOUS {
        let (head, body) = exchange(&mut s, request);
        assert_eq!(status(&head), "200", "monitor {what}: {head}{body}");
        assert!(body.ends_with("body: hello\n"), "monitor {what}: {body}");
    }
    let (head, _) = exchange(&mut s, COMPLIANT);
    assert_eq!(status(&head), "200");
    assert_eq!(target.conns(), 1, "monitor closed the target's connection");
}

/// Requests ALB classifies as Severe, and whether xlb can still forward them in monitor mode.
const SEVERE: &[(&str, &[u8], bool)] = &[
    (
        "Transfer-Encoding: chunked twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    ),
    (
        "chunked,chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    ),
    (
        "NUL in a header",
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Y: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
        true,
    ),
    // Two lengths: no framing to forward it with, in any mode.
    (
        "Content-Length 4 and 5",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
        false,
    ),
    (
        "Content-Length +5",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        false,
    ),
];

#[test]
fn severe_requests_are_blocked_and_forwarded_in_monitor_mode_when_they_can_be_framed() {
    for mode in MODES {
        let (_lab, addr, target) = desync_lab(mode);
        let mut forwarded = 0;
        for (what, request, framed) in SEVERE {
            let mut s = connect(addr);
            let (head, body) = exchange(&mut s, request);
            let want = match mode {
                Some("monitor") if *framed => "200",
                _ => "400",
            };
            assert_eq!(status(&head), want, "{mode:?} {what}: {head}{body}");
            if want == "200" {
                forwarded += 1;
                assert!(body.ends_with("body: hello\n"), "{mode:?} {what}: {body}");
            } else {
                assert!(closed(&mut s), "{mode:?} {what}: left open");
            }
        }
        assert_eq!(target.requests(), forwarded, "{mode:?}");
    }
}

#[test]
fn the_access_log_writes_each_requests_classification_and_reason() {
    let (mut lab, addr, _target) = desync_lab(None);
    let requests: [(&[u8], &str); 4] = [
        (COMPLIANT, "\"-\" \"-\""),
        (ACCEPTABLE[0].1, "\"Acceptable\" \"SpaceInUri\""),
        (AMBIGUOUS[2].1, "\"Ambiguous\" \"DuplicateContentLength\""),
        (
            SEVERE[0].1,
            "\"Severe\" \"MultipleTransferEncodingChunked\"",
        ),
    ];
    for (request, _) in &requests {
        let _ = exchange(&mut connect(addr), request);
    }
    let log = lab.log_lines(|l| l.len() >= requests.len());
    assert_eq!(log.len(), requests.len(), "{log:#?}");
    for (line, (_, fields)) in log.iter().zip(requests) {
        // ALB's last fields: ... "target:port_list" "target_status_code_list" "classification"
        // "classification_reason" conn_trace_id.
        let (before, conn_trace_id) = line.rsplit_once(' ').expect("fields");
        assert!(conn_trace_id.starts_with("TID_"), "{line}");
        assert!(before.ends_with(&format!(" {fields}")), "{line}");
    }
    assert!(log[3].contains(" 400 - "), "{}", log[3]);
}

#[test]
fn non_compliant_requests_are_counted_per_listener_whatever_the_mode_did() {
    let mut lab = Lab::new();
    let target = Target::start(&lab);
    let (monitor, defensive) = (free_port(), free_port());
    lab.start(&listeners(
        &[(monitor, Some("monitor")), (defensive, None)],
        target.port,
    ));
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for request in [COMPLIANT, ACCEPTABLE[0].1, AMBIGUOUS[1].1, SEVERE[0].1] {
        let _ = exchange(&mut connect(at(monitor)), request);
    }
    for request in [COMPLIANT, ACCEPTABLE[2].1] {
        let _ = exchange(&mut connect(at(defensive)), request);
    }
    let metrics = lab.metrics.render().expect("metrics");
    for (port, n) in [(monitor, 3), (defensive, 1)] {
        let want = format!(
            "xlb_desync_mitigation_mode_non_compliant_request_count_total{{listener=\"127.0.0.1:{port}\"}} {n}"
        );
        assert!(metrics.lines().any(|l| l == want), "{want} in\n{metrics}");
    }
}

/// A request whose request line is `line` bytes long, with `headers` header lines of `size`
/// bytes (without their CRLF).
fn sized(line: usize, headers: usize, size: usize) -> Vec<u8> {
    let mut request =
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n", "a".repeat(line - 14)).into_bytes();
    for i in 0..headers {
        let name = format!("X-{i:05}: ");
        let value = "v".repeat(size - name.len());
        request.extend_from_slice(format!("{name}{value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

#[test]
fn heads_over_albs_sizes_get_400_and_never_reach_the_target() {
    let (_lab, addr, target) = desync_lab(None);
    let cases = [
        ("request line of 16 KiB", sized(16 * 1024, 1, 100), "200"),
        (
            "request line over 16 KiB",
            sized(16 * 1024 + 1, 1, 100),
            "400",
        ),
        ("header of 16 KiB", sized(100, 1, 16 * 1024), "200"),
        ("header over 16 KiB", sized(100, 1, 16 * 1024 + 1), "400"),
        ("60 KiB of headers", sized(100, 60, 1024), "200"),
        ("headers over 64 KiB", sized(100, 65, 1024), "400"),
        ("500 KiB of headers", sized(100, 500, 1024), "400"),
    ];
    for (what, request, want) in &cases {
        let before = target.requests();
        let mut s = connect(addr);
        let (head, _) = exchange(&mut s, request);
        assert_eq!(status(&head), *want, "{what}: {head}");
        let reached = target.requests() > before;
        assert_eq!(
            reached,
            *want == "200",
            "{what}: reached the target: {reached}"
        );
    }
}

#[test]
fn a_transfer_encoding_not_ending_in_chunked_gets_501() {
    for mode in MODES {
        let (_lab, addr, target) = desync_lab(mode);
        // Known codings, the last not chunked: compliant as the classifier reads them.
        // An unknown coding is its Severe BadTransferEncoding: 400 unless the mode forwards it.
        let unknown = match mode {
            Some("monitor") => "501",
            _ => "400",
        };
        for (request, want) in [
            (
                &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello"[..],
                "501",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "501",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\nhello",
                unknown,
            ),
        ] {
            let mut s = connect(addr);
            let (head, _) = exchange(&mut s, request);
            let text = String::from_utf8_lossy(request);
            assert_eq!(status(&head), want, "{mode:?} {text:?}: {head}");
            assert!(closed(&mut s), "{mode:?} {text:?}: left open");
        }
        assert_eq!(target.requests(), 0, "{mode:?}");
    }
}
