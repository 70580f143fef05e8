//! What spans requests: `lb_cookie` stickiness (`AWSALB`, `AWSALBCORS`), target group stickiness of
//! weighted forwards (`AWSALBTG`, `AWSALBTGCORS`), `least_outstanding_requests` steering around a
//! busy target, and WebSocket-style upgrades tunnelled to the target.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use l7_support::{Lab, UPGRADE, curl, free_port, group, upgrade};

fn listener(port: u16, default_action: &str, rules: &str) -> String {
    format!(
        r#"
[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "HTTP"
default_action = {default_action}
{rules}
"#
    )
}

/// `NAME=value` from a `Set-Cookie` header, and checks it has an expiry.
fn cookie<'a>(r: &'a l7_support::Reply, name: &str) -> &'a str {
    let set = r
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", r.headers));
    assert!(set.contains("; Expires="), "{set}");
    set.split(';').next().unwrap_or("")
}

#[test]
fn lb_cookie_keeps_a_client_on_its_target() {
    let mut lab = Lab::new();
    let ports = [lab.backend("a"), lab.backend("b"), lab.backend("c")];
    let port = free_port();
    let toml = group(
        "web",
        &ports,
        r#""stickiness.enabled" = "true", "stickiness.type" = "lb_cookie", "stickiness.lb_cookie.duration_seconds" = "120""#,
    ) + &listener(port, r#"{ type = "forward", target_group = "web" }"#, "");
    lab.start(&toml);
    let url = format!("http://127.0.0.1:{port}/");
    let first = curl(&[&url]);
    let pinned = first.backend().to_owned();
    let awsalb = cookie(&first, "AWSALB").to_owned();
    for _ in 0..5 {
        let r = curl(&["-b", &awsalb, &url]);
        assert_eq!(r.backend(), pinned);
        assert_eq!(cookie(&r, "AWSALB"), awsalb, "re-issued on every response");
    }
    let unpinned: Vec<String> = (0..3).map(|_| curl(&[&url]).backend().to_owned()).collect();
    assert!(unpinned.iter().any(|b| *b != pinned), "{unpinned:?}");
    // A cookie naming no target is ignored.
    assert_eq!(curl(&["-b", "AWSALB=0123", &url]).status, 200);
    // `AWSALBCORS` comes with it, for cross-origin requests, and is taken alone.
    let cors = cookie(&first, "AWSALBCORS");
    assert_eq!(cors["AWSALBCORS".len()..], awsalb["AWSALB".len()..]);
    let set = first.all("set-cookie").join("\n");
    assert!(
        set.lines()
            .any(|c| c.starts_with("AWSALBCORS=") && c.ends_with("; Path=/; SameSite=None; Secure")),
        "{set}"
    );
    for _ in 0..3 {
        assert_eq!(curl(&["-b", cors, &url]).backend(), pinned);
    }
}

#[test]
fn group_stickiness_keeps_a_client_on_its_target_group() {
    let mut lab = Lab::new();
    let (blue, green) = (lab.backend("blue"), lab.backend("green"));
    let port = free_port();
    let toml = group("blue", &[blue], "")
        + &group("green", &[green], "")
        + &listener(
            port,
            r#"{ type = "forward", target_groups = [{ name = "blue", weight = 1 }, { name = "green", weight = 1 }], stickiness = { enabled = true, duration_seconds = 300 } }"#,
            "",
        );
    lab.start(&toml);
    let url = format!("http://127.0.0.1:{port}/");
    let first = curl(&[&url]);
    let tg = cookie(&first, "AWSALBTG").to_owned();
    let tg_cors = cookie(&first, "AWSALBTGCORS");
    assert_eq!(tg_cors["AWSALBTGCORS".len()..], tg["AWSALBTG".len()..]);
    for _ in 0..4 {
        assert_eq!(curl(&["-b", &tg, &url]).backend(), first.backend());
        assert_eq!(curl(&["-b", tg_cors, &url]).backend(), first.backend());
    }
    let spread: Vec<String> = (0..4).map(|_| curl(&[&url]).backend().to_owned()).collect();
    assert!(spread.contains(&"blue".to_owned()) && spread.contains(&"green".to_owned()));
}

#[test]
fn least_outstanding_requests_avoids_the_busy_target() {
    let mut lab = Lab::new();
    let (a, b) = (lab.backend("a"), lab.backend("b"));
    let port = free_port();
    let toml = group(
        "web",
        &[a, b],
        r#""load_balancing.algorithm.type" = "least_outstanding_requests""#,
    ) + &listener(port, r#"{ type = "forward", target_group = "web" }"#, "");
    lab.start(&toml);
    let url = format!("http://127.0.0.1:{port}");
    let slow_url = format!("{url}/slow");
    let slow = std::thread::spawn(move || curl(&[&slow_url]).backend().to_owned());
    std::thread::sleep(Duration::from_millis(500));
    let quick: Vec<String> = (0..4).map(|_| curl(&[&url]).backend().to_owned()).collect();
    let busy = slow.join().expect("slow request");
    assert!(
        quick.iter().all(|q| *q != busy && !q.is_empty()),
        "busy {busy}, quick {quick:?}"
    );
}

#[test]
fn upgrades_are_tunnelled_to_the_target() {
    let mut lab = Lab::new();
    let echo = lab.backend("echo");
    let port = free_port();
    lab.start(
        &(group("echo", &[echo], "")
            + &listener(port, r#"{ type = "forward", target_group = "echo" }"#, "")),
    );
    let (mut s, head) = upgrade(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).expect("send through the tunnel");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("echo through the tunnel");
        assert_eq!(got, msg);
    }
    drop(s);
    // Its line is written when the tunnel closes, with every byte each way: the heads, then
    // the two messages.
    let log = lab.log_lines(|l| l.iter().any(|l| l.starts_with("ws ")));
    let ws = log
        .iter()
        .find(|l| l.starts_with("ws "))
        .expect("a ws line");
    let bytes: Vec<usize> = ws
        .split(' ')
        .skip(10)
        .take(2)
        .map(|n| n.parse().expect("bytes"))
        .collect();
    let messages = b"ping".len() + b"second message".len();
    assert_eq!(
        bytes,
        [UPGRADE.len() + messages, head.len() + messages],
        "{ws}"
    );
}
