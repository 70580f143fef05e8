//! How the L7 tier fails, with ALB's status codes: requests the desync mitigation mode blocks
//! get 400 (request smuggling defence; the modes themselves are in `l7_desync.rs`), TRACE 405, a
//! client that stops sending its body 408, an `X-Forwarded-For` of over 30 addresses 463, a dead
//! target 502, an empty target group 503, a target slower than the idle timeout 504; and an idle
//! client connection is closed when its idle timeout ends.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use l7_support::{Lab, curl, free_port, group, raw};

/// A listener with an idle timeout of 1 s: `/` forwards to a live backend, `/dead` to a port
/// nobody listens on, `/empty` to a group without targets.
fn errors_lab() -> (Lab, SocketAddr) {
    let mut lab = Lab::new();
    let live = lab.backend("live");
    let dead = free_port();
    let port = free_port();
    let toml = format!(
        r#"{}{}{}
[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "HTTP"
default_action = {{ type = "forward", target_group = "live" }}
attributes = {{ "idle_timeout.timeout_seconds" = "1" }}

[[http_listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/dead"] }}]
actions = [{{ type = "forward", target_group = "dead" }}]

[[http_listeners.rules]]
priority = 2
conditions = [{{ field = "path-pattern", values = ["/empty"] }}]
actions = [{{ type = "forward", target_group = "empty" }}]
"#,
        group("live", &[live], ""),
        group("dead", &[dead], ""),
        group("empty", &[], ""),
    );
    lab.start(&toml);
    (lab, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[test]
fn severe_requests_are_refused_with_400() {
    let (_lab, addr) = errors_lab();
    let cases: &[(&str, &[u8])] = &[
        (
            "Transfer-Encoding: chunked twice",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "Content-Length list with different values",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde",
        ),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let response = raw(addr, request);
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400"),
            "{what}: {response:?}"
        );
        assert!(
            !response.contains("live"),
            "{what} reached the target: {response}"
        );
    }
    // The same listener still serves well-formed requests.
    let response = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    );
    assert!(
        status_line(&response).starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("body: abcd"), "{response}");
}

#[test]
fn target_failures_map_to_502_503_504() {
    let (mut lab, addr) = errors_lab();
    let base = format!("http://{addr}");
    let r = curl(&[&format!("{base}/dead")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("502 Bad Gateway"), "{}", r.body);
    let r = curl(&[&format!("{base}/empty")]);
    assert_eq!(r.status, 503, "{r:?}");
    let started = Instant::now();
    let r = curl(&[&format!("{base}/slow")]);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "504 after the idle timeout (1 s), not the target's 3 s"
    );
    assert_eq!(curl(&[&base]).status, 200);
    let log = lab.log_lines(|l| l.len() >= 4);
    let statuses: Vec<&str> = log.iter().filter_map(|l| l.split(' ').nth(8)).collect();
    assert_eq!(statuses, ["502", "503", "504", "200"], "{log:#?}");
    // No target answered: ALB writes -1 for the three processing times, and its error reason.
    for (line, reason) in
        log[..3]
            .iter()
            .zip(["\"TargetConnectionError\"", "\"-\"", "\"TargetTimeout\""])
    {
        let times: Vec<&str> = line.split(' ').skip(5).take(3).collect();
        assert_eq!(times, ["-1", "-1", "-1"], "{line}");
        assert!(line.contains(&format!(" {reason} ")), "{reason} in {line}");
    }
    assert!(log[0].contains("\"forward\""), "{}", log[0]);
    // ALB's counts of each error code, and of connections the dead target refused.
    let metrics = lab.metrics.render().expect("metrics");
    let series = |name: &str, rule: &str, group: &str, n: u32| {
        format!(
            "xlb_{name}_total{{listener=\"{addr}\",rule=\"{rule}\",target_group=\"{group}\"}} {n}"
        )
    };
    for want in [
        series("httpcode_elb_502_count", "1", "dead", 1),
        series("target_connection_error_count", "1", "dead", 1),
        series("httpcode_elb_503_count", "2", "", 1),
        series("httpcode_elb_504_count", "default", "live", 1),
        series("httpcode_elb_500_count", "default", "live", 0),
    ] {
        assert!(metrics.lines().any(|l| l == want), "{want} in\n{metrics}");
    }
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let (_lab, addr) = errors_lab();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let quiet = Instant::now();
    // Keep-alive: the connection stays up, then closes after 1 s of silence.
    let mut closed = false;
    while quiet.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(closed, "the connection stayed open");
    let waited = quiet.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1150)).contains(&waited),
        "closed after {waited:?}"
    );
}

#[test]
fn trace_and_long_forwarded_for_chains_are_refused_as_alb_refuses_them() {
    let (mut lab, addr) = errors_lab();
    let response = raw(addr, b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        status_line(&response).starts_with("HTTP/1.1 405"),
        "{response}"
    );
    assert!(!response.contains("live"), "TRACE reached the target");
    let chain = |n: usize| {
        (0..n)
            .map(|i| format!("192.0.2.{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // 30 addresses pass, split over two headers as well as in one.
    let r = curl(&[
        "-H",
        &format!("X-Forwarded-For: {}", chain(30)),
        &format!("http://{addr}/"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "-H",
        &format!("X-Forwarded-For: {}", chain(16)),
        "-H",
        &format!("X-Forwarded-For: {}", chain(15)),
        &format!("http://{addr}/"),
    ]);
    assert_eq!(r.status, 463, "{r:?}");
    assert!(!r.body.contains("live"), "{}", r.body);
    let log = lab.log_lines(|l| l.len() >= 3);
    let statuses: Vec<&str> = log.iter().filter_map(|l| l.split(' ').nth(8)).collect();
    assert_eq!(statuses, ["405", "200", "463"], "{log:#?}");
}

/// Sends a POST of `len` body bytes, `parts` of it `every` apart, and returns the response.
fn upload(addr: SocketAddr, len: usize, parts: &[&[u8]], every: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("read timeout");
    s.write_all(format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").as_bytes())
        .expect("send head");
    let started = Instant::now();
    for part in parts {
        s.write_all(part).expect("send body");
        std::thread::sleep(every);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&out).contains("live")
        {
            break;
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_client_that_stops_sending_its_body_gets_408_and_a_slow_one_is_waited_for() {
    let (mut lab, addr) = errors_lab();
    // Half a body, then nothing: ALB's 408 after the idle timeout (1 s), not a 504 on the target.
    let (response, waited) = upload(addr, 10, &[b"hello"], Duration::ZERO);
    assert!(
        status_line(&response).starts_with("HTTP/1.1 408"),
        "{response}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&waited),
        "408 after {waited:?}"
    );
    // A body that keeps coming, a byte every 0.4 s for 2.4 s: longer than the idle timeout in
    // all, but never idle that long.
    let parts: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f"];
    let (response, _) = upload(addr, 6, &parts, Duration::from_millis(400));
    assert!(
        status_line(&response).starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("body: abcdef"), "{response}");
    let log = lab.log_lines(|l| l.len() >= 2);
    let statuses: Vec<&str> = log.iter().filter_map(|l| l.split(' ').nth(8)).collect();
    assert_eq!(statuses, ["408", "200"], "{log:#?}");
}
