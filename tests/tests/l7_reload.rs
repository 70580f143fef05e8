//! Reloads and shutdown: new rules apply to connections already open, listeners come and go, a
//! reload that cannot bind changes nothing, shutdown lets requests in flight finish, and a target
//! that leaves finishes its requests within its deregistration delay, then is cut.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use l7_support::{Lab, Reply, curl, free_port, group, upgrade};

fn config(groups: &str, listeners: &[(u16, &str)]) -> String {
    let mut out = groups.to_owned();
    for (port, target) in listeners {
        out.push_str(&format!(
            "\n[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\ndefault_action = {{ type = \"forward\", target_group = \"{target}\" }}\n"
        ));
    }
    out
}

/// Sends one keep-alive request on `s` and returns the backend's name.
fn ask(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The backend's body ends with the "body: " line.
    while !String::from_utf8_lossy(&got).contains("body: \n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    body.lines().next().unwrap_or("").to_owned()
}

#[test]
fn reloaded_rules_apply_to_open_connections_and_listeners_come_and_go() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let groups = group("a", &[a], "") + &group("b", &[b], "");
    let (p1, p2) = (free_port(), free_port());
    lab.start(&config(&groups, &[(p1, "a")]));
    let addr = SocketAddr::from(([127, 0, 0, 1], p1));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    assert_eq!(ask(&mut s), "a");

    lab.reload(&config(&groups, &[(p1, "b"), (p2, "a")]));
    assert_eq!(
        ask(&mut s),
        "b",
        "the open connection follows the new rules"
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{p2}/")]).backend(), "a");

    lab.reload(&config(&groups, &[(p2, "b")]));
    assert_eq!(curl(&[&format!("http://127.0.0.1:{p2}/")]).backend(), "b");
    let gone = curl(&[&format!("http://127.0.0.1:{p1}/")]);
    assert_eq!(gone.exit, 7, "p1 still accepts: {gone:?}");
}

#[test]
fn a_reload_that_cannot_bind_changes_nothing() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let groups = group("a", &[a], "") + &group("b", &[b], "");
    let p1 = free_port();
    lab.start(&config(&groups, &[(p1, "a")]));
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let p2 = taken.local_addr().expect("address").port();
    lab.reload(&config(&groups, &[(p1, "b"), (p2, "b")]));
    assert_eq!(curl(&[&format!("http://127.0.0.1:{p1}/")]).backend(), "a");
    drop(taken);
}

#[test]
fn shutdown_lets_requests_in_flight_finish() {
    let mut lab = Lab::new();
    let a = lab.backend("a");
    let p = free_port();
    lab.start(&config(&group("a", &[a], ""), &[(p, "a")]));
    let slow = thread::spawn(move || curl(&[&format!("http://127.0.0.1:{p}/slow")]));
    thread::sleep(Duration::from_millis(500));
    drop(lab);
    let r = slow.join().expect("slow request");
    assert_eq!((r.status, r.backend()), (200, "a"), "{r:?}");
}

/// A request through port `p` to the backends' `/slow`, which answers after 3 s, in a thread.
fn slow(p: u16) -> thread::JoinHandle<Reply> {
    thread::spawn(move || curl(&[&format!("http://127.0.0.1:{p}/slow")]))
}

/// `deregistration_delay.timeout_seconds`, as a group's attribute.
fn delay(seconds: u32) -> String {
    format!("\"deregistration_delay.timeout_seconds\" = \"{seconds}\"")
}

#[test]
fn a_target_that_leaves_finishes_its_requests_within_its_deregistration_delay() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let p = free_port();
    let url = format!("http://127.0.0.1:{p}/");

    // The backend answers /slow after 3 s: within a delay of 10 s, the answer comes.
    lab.start(&config(&group("web", &[a], &delay(10)), &[(p, "web")]));
    let within = slow(p);
    thread::sleep(Duration::from_millis(500));
    lab.reload(&config(&group("web", &[b], &delay(10)), &[(p, "web")]));
    assert_eq!(
        curl(&[&url]).backend(),
        "b",
        "new requests go to the target that stays"
    );
    let r = within.join().expect("slow request");
    assert_eq!((r.status, r.backend()), (200, "a"), "{r:?}");

    // With a delay of 1 s, the request still in flight when it ends is cut: the target's
    // connection closes, and the client gets ALB's 502.
    lab.reload(&config(&group("web", &[a], &delay(1)), &[(p, "web")]));
    let cut = slow(p);
    thread::sleep(Duration::from_millis(500));
    let left = Instant::now();
    lab.reload(&config(&group("web", &[b], &delay(1)), &[(p, "web")]));
    let r = cut.join().expect("slow request");
    assert_eq!(r.status, 502, "{r:?} {:#?}", lab.log_lines(|_| true));
    let after = left.elapsed();
    assert!(
        after < Duration::from_millis(2500),
        "cut {after:?} after the target left"
    );
}

#[test]
fn a_target_back_within_its_deregistration_delay_keeps_its_requests() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let p = free_port();
    lab.start(&config(&group("web", &[a], &delay(2)), &[(p, "web")]));
    let in_flight = slow(p);
    thread::sleep(Duration::from_millis(500));
    lab.reload(&config(&group("web", &[b], &delay(2)), &[(p, "web")]));
    lab.reload(&config(&group("web", &[a, b], &delay(2)), &[(p, "web")]));
    // The answer comes 3 s after the request, past the end of the delay: as the target is back,
    // its connection is not cut.
    let r = in_flight.join().expect("slow request");
    assert_eq!((r.status, r.backend()), (200, "a"), "{r:?}");
}

#[test]
fn a_websocket_to_a_target_that_left_is_cut_when_its_delay_ends() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let p = free_port();
    lab.start(&config(&group("web", &[a], &delay(1)), &[(p, "web")]));
    let (mut s, head) = upgrade(SocketAddr::from(([127, 0, 0, 1], p)));
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let echo = |s: &mut TcpStream| {
        s.write_all(b"ping")?;
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        Ok::<_, std::io::Error>(got)
    };
    assert_eq!(echo(&mut s).expect("echo"), *b"ping");

    let left = Instant::now();
    lab.reload(&config(&group("web", &[b], &delay(1)), &[(p, "web")]));
    assert_eq!(echo(&mut s).expect("echo within the delay"), *b"ping");
    // Cut when the delay ends: the client's side reads the end of the stream.
    let mut rest = [0u8; 16];
    let end = s.read(&mut rest);
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let after = left.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(3000),
        "cut {after:?} after the target left"
    );
}
