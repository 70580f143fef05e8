//! Reloads and shutdown: new rules apply to connections already open, listeners come and go, a
//! reload that cannot bind changes nothing, and shutdown lets requests in flight finish.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use l7_support::{Lab, curl, free_port, group};

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
    let slow = std::thread::spawn(move || curl(&[&format!("http://127.0.0.1:{p}/slow")]));
    std::thread::sleep(Duration::from_millis(500));
    drop(lab);
    let r = slow.join().expect("slow request");
    assert_eq!((r.status, r.backend()), (200, "a"), "{r:?}");
}
