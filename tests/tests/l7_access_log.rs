//! ALB's access log and connection log, field by field, through the real L7 tier: `time` is when
//! the response went out, -1 for processing times that did not happen, the request field always
//! with `host:port`, OpenSSL cipher and `TLSv1.x` protocol names, the target lists, lines for
//! requests the parser refused and for clients that left first (460), and one connection log
//! line per connection whose `conn_trace_id` its requests' lines carry.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use l7_support::{Lab, curl, free_port, group, raw};

/// An access log line cut into ALB's fields: quoted fields are one field, quotes kept.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            ' ' if !quoted => out.push(String::new()),
            '"' if !escaped => quoted = !quoted,
            _ => {}
        }
        escaped = c == '\\' && !escaped;
        if c != ' ' || quoted {
            out.last_mut().expect("a field").push(c);
        }
    }
    out
}

/// ALB's access log fields by position.
const TIME: usize = 1;
const TARGET: usize = 4;
const REQUEST_PROCESSING: usize = 5;
const ELB_STATUS: usize = 8;
const TARGET_STATUS: usize = 9;
const REQUEST: usize = 12;
const SSL_CIPHER: usize = 14;
const SSL_PROTOCOL: usize = 15;
const REQUEST_CREATION_TIME: usize = 21;
const ERROR_REASON: usize = 24;
const TARGET_LIST: usize = 25;
const TARGET_STATUS_LIST: usize = 26;
const CONN_TRACE_ID: usize = 29;

/// Seconds since midnight of an ISO 8601 time such as ALB's `2026-12-07T11:45:51.123456Z`.
fn seconds_of_day(t: &str) -> f64 {
    let clock = t
        .split_once('T')
        .and_then(|(_, c)| c.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("not an ISO 8601 UTC time: {t}"));
    clock
        .split(':')
        .map(|n| n.parse::<f64>().expect("a number"))
        .fold(0.0, |s, n| s * 60.0 + n)
}

/// Seconds from `request_creation_time` to `time` (across midnight too).
fn answered_after(f: &[String]) -> f64 {
    let d = seconds_of_day(&f[TIME]) - seconds_of_day(&f[REQUEST_CREATION_TIME]);
    if d < -43_200.0 { d + 86_400.0 } else { d }
}

/// The access log line (as fields) whose request field contains `what`.
fn line_for(log: &[String], what: &str) -> Vec<String> {
    log.iter()
        .map(|l| fields(l))
        .find(|f| f.len() > REQUEST && f[REQUEST].contains(what))
        .unwrap_or_else(|| panic!("no line for {what} in {log:#?}"))
}

/// A listener on a free port forwarding to `web` (`/dead` to a closed port, `/empty` to a group
/// without targets); `listener_extra` is added to its TOML.
fn forwarding_lab(protocol: &str, listener_extra: &str) -> (Lab, u16, u16, u16) {
    let mut lab = Lab::new();
    let web = lab.backend("web");
    let dead = free_port();
    let port = free_port();
    let toml = format!(
        r#"{}{}{}
[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "{protocol}"
default_action = {{ type = "forward", target_group = "web" }}
{listener_extra}

[[http_listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/dead"] }}]
actions = [{{ type = "forward", target_group = "dead" }}]

[[http_listeners.rules]]
priority = 2
conditions = [{{ field = "path-pattern", values = ["/empty"] }}]
actions = [{{ type = "forward", target_group = "empty" }}]
"#,
        group("web", &[web], ""),
        group("dead", &[dead], ""),
        group("empty", &[], ""),
    );
    lab.start(&toml);
    (lab, port, web, dead)
}

#[test]
fn time_is_when_the_response_went_out_and_times_that_did_not_happen_are_minus_one() {
    let (mut lab, port, web, dead) = forwarding_lab("HTTP", "");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The backend answers `/slow` after 3 s.
    assert_eq!(curl(&[&format!("http://{addr}/slow")]).status, 200);
    for path in ["/dead", "/empty"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw(addr, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 50"), "{path}: {answer}");
    }
    // HTTP/1.0 without a Host: the listener's address stands for it.
    let answer = raw(addr, b"GET /old HTTP/1.0\r\n\r\n");
    assert!(answer.contains(" 200 OK"), "{answer}");
    let log = lab.log_lines(|l| l.len() >= 4);

    let slow = line_for(&log, "/slow");
    assert!(answered_after(&slow) >= 3.0, "{slow:?}");
    let times: Vec<f64> = slow[REQUEST_PROCESSING..REQUEST_PROCESSING + 3]
        .iter()
        .map(|t| t.parse().expect("seconds"))
        .collect();
    assert!(
        times[0] >= 0.0 && times[1] >= 3.0 && times[2] >= 0.0,
        "{slow:?}"
    );
    let target = format!("127.0.0.1:{web}");
    let listed = format!("\"{target}\"");
    assert_eq!(
        [&slow[TARGET], &slow[TARGET_LIST], &slow[TARGET_STATUS_LIST]].map(String::as_str),
        [target.as_str(), listed.as_str(), "\"200\""]
    );
    assert_eq!(
        slow[REQUEST],
        format!("\"GET http://{addr}/slow HTTP/1.1\"")
    );

    // A target that refuses the connection, and a group without targets: no target answered.
    let refused = line_for(&log, "/dead");
    assert_eq!(
        refused[REQUEST],
        format!("\"GET http://a:{port}/dead HTTP/1.1\"")
    );
    let dead = format!("127.0.0.1:{dead}");
    let want = [
        "-1",
        "-1",
        "-1",
        "502",
        "-",
        "\"TargetConnectionError\"",
        &format!("\"{dead}\""),
        "\"-\"",
    ];
    let got = [
        5,
        6,
        7,
        ELB_STATUS,
        TARGET_STATUS,
        ERROR_REASON,
        TARGET_LIST,
        TARGET_STATUS_LIST,
    ]
    .map(|i| refused[i].as_str());
    assert_eq!(got, want, "{refused:?}");
    let empty = line_for(&log, "/empty");
    let got =
        [5, 6, 7, ELB_STATUS, TARGET, TARGET_LIST, TARGET_STATUS_LIST].map(|i| empty[i].as_str());
    assert_eq!(
        got,
        ["-1", "-1", "-1", "503", "-", "\"-\"", "\"-\""],
        "{empty:?}"
    );

    let old = line_for(&log, "/old");
    assert_eq!(old[REQUEST], format!("\"GET http://{addr}/old HTTP/1.0\""));
}

#[test]
fn a_malformed_request_and_a_client_that_leaves_first_get_lines_too() {
    let (mut lab, port, web, _) = forwarding_lab("HTTP", "");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // A malformed request line: refused with a 400 (the desync classifier's BadVersion).
    let answer = raw(addr, b"NOT A REQUEST LINE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A client that closes before the target (3 s) answers.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    // The same over HTTP/2: curl gives up on its stream.
    let h2 = curl(&[
        "--http2-prior-knowledge",
        "--max-time",
        "0.5",
        &format!("http://{addr}/slow?h2"),
    ]);
    assert_eq!(h2.status, 0, "curl gave up: {}", h2.stderr);
    let log = lab.log_lines(|l| l.iter().filter(|l| l.contains(" 460 ")).count() >= 2);

    let malformed = line_for(&log, "- -\"");
    assert_eq!(malformed[REQUEST], format!("\"- http://{addr}- -\""));
    let got = [
        TARGET,
        5,
        6,
        7,
        ELB_STATUS,
        TARGET_STATUS,
        20,
        22,
        TARGET_LIST,
    ]
    .map(|i| malformed[i].as_str());
    assert_eq!(
        got,
        ["-", "-1", "-1", "-1", "400", "-", "-", "\"-\"", "\"-\""],
        "{malformed:?}"
    );
    assert!(
        malformed[CONN_TRACE_ID].starts_with("TID_"),
        "{malformed:?}"
    );
    assert_eq!(
        malformed[10], "22",
        "the refused request's bytes: {malformed:?}"
    );

    // ALB's 460: dispatched to the target (its request_processing_time), no answer from it.
    let gone = line_for(&log, "/slow HTTP/1.1");
    let target = format!("127.0.0.1:{web}");
    let got = [
        TARGET,
        6,
        7,
        ELB_STATUS,
        TARGET_STATUS,
        TARGET_LIST,
        TARGET_STATUS_LIST,
    ]
    .map(|i| gone[i].as_str());
    assert_eq!(
        got,
        [
            &target,
            "-1",
            "-1",
            "460",
            "-",
            &format!("\"{target}\""),
            "\"-\""
        ],
        "{gone:?}"
    );
    let dispatched: f64 = gone[REQUEST_PROCESSING].parse().expect("seconds");
    assert!((0.0..1.0).contains(&dispatched), "{gone:?}");
    // Written when the client left, before the target's answer.
    assert!(answered_after(&gone) < 2.5, "{gone:?}");
    let gone = line_for(&log, "/slow?h2 HTTP/2.0");
    assert_eq!(gone[ELB_STATUS], "460", "{gone:?}");
}

/// A self-signed certificate for `localhost`, written as PEM files; removed on drop.
struct Certificate(PathBuf);

impl Certificate {
    fn new() -> Certificate {
        let dir = std::env::temp_dir().join(format!("xlb-l7-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed certificate");
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
        Certificate(dir)
    }

    fn toml(&self) -> String {
        let file = |name: &str| self.0.join(name).to_str().expect("utf-8 path").to_owned();
        format!(
            "certificates = [{{ cert = {:?}, key = {:?} }}]",
            file("cert.pem"),
            file("key.pem")
        )
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What curl says it negotiated: `(TLSv1.x, cipher)` from `SSL connection using ... / ...`.
fn negotiated(stderr: &str) -> (String, String) {
    let (protocol, cipher) = stderr
        .lines()
        .find_map(|l| l.split_once("SSL connection using ").map(|(_, s)| s))
        .and_then(|s| s.split_once(" / "))
        .unwrap_or_else(|| panic!("no TLS in {stderr}"));
    (protocol.to_owned(), cipher.trim().to_owned())
}

/// Connects to `addr` as a plain HTTP client; returns its port once the server closed.
fn plain_http_client(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let port = s.local_addr().expect("local address").port();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let _ = s.read_to_end(&mut Vec::new());
    port
}

#[test]
fn tls_lines_have_openssl_names_and_a_connection_shares_its_conn_trace_id() {
    let cert = Certificate::new();
    let extra = format!(
        "{}\nattributes = {{ \"connection_logs.enabled\" = \"true\" }}",
        cert.toml()
    );
    let (mut lab, port, _, _) = forwarding_lab("HTTPS", &extra);
    let base = format!("https://127.0.0.1:{port}");
    // Two requests on one keep-alive connection over TLS 1.3, one over TLS 1.2.
    let tls13 = curl(&[
        "-k",
        "--http1.1",
        &format!("{base}/one"),
        &format!("{base}/two"),
    ]);
    assert_eq!(tls13.status, 200, "{}", tls13.stderr);
    assert!(
        tls13.stderr.contains("Re-using existing connection"),
        "{}",
        tls13.stderr
    );
    let tls12 = curl(&[
        "-k",
        "--http1.1",
        "--tls-max",
        "1.2",
        &format!("{base}/three"),
    ]);
    assert_eq!(tls12.status, 200, "{}", tls12.stderr);
    // A plain HTTP client on the TLS port fails the handshake.
    let plain = plain_http_client(SocketAddr::from(([127, 0, 0, 1], port)));
    let failed = format!(" {plain} {port} ");
    let log = lab.log_lines(|l| {
        l.iter().filter(|l| l.starts_with("https ")).count() >= 3
            && l.iter().any(|l| l.contains(&failed))
    });
    // Connection log lines start with their time, access log lines with their type.
    let (connections, requests): (Vec<&String>, Vec<&String>) = log
        .iter()
        .partition(|l| l.starts_with(|c: char| c.is_ascii_digit()));

    let [one, two, three] = ["/one", "/two", "/three"].map(|p| line_for(&log, p));
    assert_eq!(
        one[CONN_TRACE_ID], two[CONN_TRACE_ID],
        "one connection: {one:?} {two:?}"
    );
    assert_ne!(
        one[CONN_TRACE_ID], three[CONN_TRACE_ID],
        "another: {three:?}"
    );
    for (line, curl_said) in [(&one, &tls13), (&three, &tls12)] {
        let (protocol, cipher) = negotiated(&curl_said.stderr);
        assert_eq!(
            [&line[SSL_PROTOCOL], &line[SSL_CIPHER]],
            [&protocol, &cipher]
        );
        // `time client_ip client_port listener_port tls_protocol tls_cipher latency` and, with
        // no client certificate, three `-`, then `Success` and the id.
        let client_port = line[3].rsplit_once(':').expect("client:port").1;
        let id = &line[CONN_TRACE_ID];
        let conn = connections
            .iter()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.last() == Some(&id.as_str()))
            .unwrap_or_else(|| panic!("no connection line with {id} in {connections:#?}"));
        let listener = port.to_string();
        let want = [
            client_port,
            listener.as_str(),
            protocol.as_str(),
            cipher.as_str(),
        ];
        assert_eq!(conn[1], "127.0.0.1", "{conn:?}");
        assert_eq!(conn[2..6], want, "{conn:?}");
        let latency: f64 = conn[6].parse().expect("handshake seconds");
        assert!((0.0..1.0).contains(&latency), "{conn:?}");
        assert_eq!(conn[7..11], ["-", "-", "-", "Success"], "{conn:?}");
        assert_eq!(conn.len(), 12, "{conn:?}");
    }
    let failed = connections
        .iter()
        .find(|l| l.contains(&failed))
        .expect("the plain client's connection line");
    assert!(
        failed.contains(&format!(
            " {plain} {port} - - - - - - Failed:UnmappedConnectionError TID_"
        )),
        "{failed}"
    );
    assert!(
        requests.iter().all(|l| fields(l).len() == 30),
        "{requests:#?}"
    );
}

#[test]
fn connection_logs_are_off_unless_the_listener_turns_them_on() {
    let (mut lab, port, _, _) = forwarding_lab("HTTP", "");
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/")]).status, 200);
    lab.log_lines(|l| !l.is_empty());
    // Time for a connection line to come, had there been one.
    std::thread::sleep(Duration::from_millis(300));
    let log = lab.log_lines(|_| true);
    assert_eq!(log.len(), 1, "only the access log line: {log:#?}");
    assert!(
        fields(&log[0])[CONN_TRACE_ID].starts_with("TID_"),
        "{log:#?}"
    );

    let (mut lab, port, _, _) = forwarding_lab(
        "HTTP",
        "attributes = { \"connection_logs.enabled\" = \"true\" }",
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/")]).status, 200);
    let log = lab.log_lines(|l| l.iter().any(|l| l.starts_with("http ")));
    let id = fields(
        log.iter()
            .find(|l| l.starts_with("http "))
            .expect("access line"),
    )[CONN_TRACE_ID]
        .clone();
    // On an HTTP listener the TLS fields are `-`, the verify status too.
    assert!(
        log.iter()
            .any(|l| l.ends_with(&format!(" {port} - - - - - - - {id}"))),
        "{log:#?}"
    );
}
