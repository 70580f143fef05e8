//! NAT forwarding end to end: the real `xlb` agent in the lab's lb namespace, clients in the
//! client namespace, and targets that run nothing of xlb: no decap program, no VIP on `lo`, a
//! plain Python server on a port of their own, and default routes via the lb (their replies
//! come back through it, as LVS-NAT's do). Run as root.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{Agent, api_socket, cli, scrape, write_config, xlb_bin},
    lab::{
        CLIENT_V4, CLIENT_V6, Lab, Role, VIP_V4, VIP_V6, backend_v4, in_netns, pin_dir, run_dir,
    },
    plain_targets::{
        self, DRAIN_DELAY, Routes, Servers, answered_by, curl, group, reason_packets, serve, v4, v6,
    },
};

fn lab(prefix: &str) -> (Lab, Servers) {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab"));
    plain_targets::lab(prefix, Routes::ViaLb, server)
}

fn listener(vip: IpAddr, port: u16, protocol: &str, group: &str) -> String {
    plain_targets::listener(vip, port, protocol, group, "nat")
}

/// The node's part of a config for `lab`.
fn node(lab: &Lab) -> String {
    format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n",
        pin_dir(lab.prefix()).join("agent").display(),
        api_socket(lab).display(),
        run_dir(lab.prefix()).join("state.json").display(),
    )
}

#[test]
fn nat_forwards_tcp_and_udp_v4_and_v6_to_the_targets_ports_with_the_clients_address() {
    let (lab, _servers) = lab("xnat-a-");
    let check = "health_check = { protocol = \"TCP\", interval_seconds = 5, timeout_seconds = 2, \
                 healthy_threshold = 2, unhealthy_threshold = 2 }\n";
    let mut text = node(&lab) + "metrics_address = \"127.0.0.1:9100\"\n";
    text += &group("t4", "TCP", v4, check);
    text += &group("t6", "TCP", v6, "");
    text += &group("u4", "UDP", v4, "");
    text += &group("u6", "UDP", v6, "");
    let (vip4, vip6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
    text += &listener(vip4, 80, "TCP", "t4");
    text += &listener(vip6, 80, "TCP", "t6");
    text += &listener(vip4, 53, "UDP", "u4");
    text += &listener(vip6, 53, "UDP", "u6");
    let cfg = write_config(&lab, &text);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");

    // curl, v4 and v6: a target answers, on its own port, and saw the client's address.
    for (url, client) in [
        (format!("http://{VIP_V4}/"), IpAddr::V4(CLIENT_V4)),
        (format!("http://[{VIP_V6}]/"), IpAddr::V6(CLIENT_V6)),
    ] {
        let body = curl(&lab, &url);
        let (name, seen) = body.split_once(' ').unwrap_or_default();
        assert!(name.starts_with("backend"), "{url}: {body:?}");
        assert_eq!(seen, client.to_string(), "{url}: the target saw {body:?}");
    }
    // Connections spread over both targets, whose ports differ.
    for vip in [vip4, vip6] {
        let names = answered_by(&lab, SocketAddr::new(vip, 80), 40);
        assert_eq!(
            names,
            BTreeSet::from(["backend1".into(), "backend2".into()])
        );
    }
    // UDP: the answer comes from the VIP and port the client sent to, and names the client.
    for (vip, client, bind) in [
        (vip4, IpAddr::V4(CLIENT_V4), "0.0.0.0:0"),
        (vip6, IpAddr::V6(CLIENT_V6), "[::]:0"),
    ] {
        let names = in_netns(&lab.ns(Role::Client), || {
            let mut names = BTreeSet::new();
            for flow in 0..20 {
                let s = UdpSocket::bind(bind).expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut owner = None;
                for n in 0..2 {
                    s.send_to(format!("q{flow}.{n}").as_bytes(), (vip, 53))
                        .expect("send");
                    let mut buf = [0u8; 256];
                    let (len, from) = s
                        .recv_from(&mut buf)
                        .unwrap_or_else(|e| panic!("no UDP answer from {vip}:53: {e}"));
                    assert_eq!(from, SocketAddr::new(vip, 53), "the answer's source");
                    let text = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
                    let words: Vec<&str> = text.split(' ').collect();
                    assert_eq!(words[1..], [&client.to_string(), &format!("q{flow}.{n}")]);
                    let name = words[0].to_owned();
                    assert!(
                        owner.get_or_insert(name.clone()) == &name,
                        "{text}: flow moved"
                    );
                }
                names.extend(owner);
            }
            names
        })
        .unwrap();
        assert_eq!(names.len(), 2, "20 UDP flows to {vip} reach both targets");
    }

    // `traffic-port` is each target's own: backend2 listens on 8081 only, and is healthy.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let (ok, list) = cli(&lab, &["targets", "list", "--target-group", "t4"]);
        assert!(ok, "{list}");
        let healthy = list.lines().filter(|l| l.contains(" healthy ")).count();
        if healthy == 2 || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for target in [
        format!("{}:8080", backend_v4(1)),
        format!("{}:8081", backend_v4(2)),
    ] {
        assert!(
            list.lines()
                .any(|l| l.contains(&target) && l.contains(" healthy ")),
            "{target} healthy:\n{list}"
        );
    }

    let (ok, stats) = cli(&lab, &["stats"]);
    assert!(ok, "{stats}");
    for reason in ["tx_nat", "tx_nat_reply"] {
        assert!(reason_packets(&stats, reason) > 0, "{reason}:\n{stats}");
    }
    assert!(stats.contains("198.18.1.12:8081 (weight 1)"), "{stats}");
    let metrics = scrape(&lab);
    for line in [
        "xlb_healthy_host_count{target_group=\"t4\"} 2",
        "target=\"198.18.1.12:8081\"",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }

    // Forwarding off on the node: `xlb status` says what NAT loses and what to set.
    let sysctl = |v: &str| {
        lab.exec(
            Role::Lb,
            &["sysctl", "-qw", &format!("net.ipv4.ip_forward={v}")],
        )
        .expect("sysctl");
    };
    sysctl("0");
    let (_, status) = cli(&lab, &["status"]);
    sysctl("1");
    assert!(
        status.contains("net.ipv4.ip_forward is 0: NAT packets toward IPv4 targets")
            && status.contains("sysctl -w net.ipv4.ip_forward=1"),
        "{status}"
    );
    let (_, status) = cli(&lab, &["status"]);
    assert!(!status.contains("warning"), "{status}");
    agent.stop().expect("xlb stops cleanly");
}

/// One line through a held connection: the target that answered.
fn ask(s: &TcpStream, tag: &str) -> std::io::Result<String> {
    plain_targets::ask(s, tag, CLIENT_V4.into())
}

#[test]
fn a_held_connection_survives_a_restart_and_drains_after_deregistration() {
    let (lab, _servers) = lab("xnat-b-");
    let text = node(&lab)
        + &group("t4", "TCP", v4, DRAIN_DELAY)
        + &listener(VIP_V4.into(), 80, "TCP", "t4");
    plain_targets::held_connection_survives_a_restart_and_drains(&lab, &text, CLIENT_V4.into());
}

/// A reload that gives a NAT target another port: new connections go to the new port at once, a
/// connection held on the old one carries on for the group's deregistration delay, then ends with
/// the old port's backend.
#[test]
fn a_target_moved_to_another_port_drains_the_old_one() {
    let (lab, mut servers) = lab("xnat-c-");
    servers.0.push(serve(&lab, 2, "moved", 8082));
    let text = node(&lab)
        + &group("t4", "TCP", v4, DRAIN_DELAY)
        + &listener(VIP_V4.into(), 80, "TCP", "t4");
    let cfg = write_config(&lab, &text);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let vip = SocketAddr::from((VIP_V4, 80));
    // Connections spread by flow: a few find backend2, on 8081.
    let conn = in_netns(&lab.ns(Role::Client), || {
        (0..40).find_map(|_| {
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            (ask(&s, "which").ok()? == "backend2").then_some(s)
        })
    })
    .unwrap()
    .expect("a connection to backend2 in 40");

    write_config(&lab, &text.replace("port = 8081", "port = 8082"));
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(ok, "{out}");
    let moved = Instant::now();
    let names = answered_by(&lab, vip, 20);
    assert_eq!(
        names,
        BTreeSet::from(["backend1".into(), "moved".into()]),
        "new connections go to 8082, none to 8081"
    );
    assert_eq!(
        ask(&conn, "draining").expect("echo while the old port drains"),
        "backend2"
    );
    assert!(
        moved.elapsed() < Duration::from_secs(4),
        "checked within the delay"
    );
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(moved.elapsed()) + Duration::from_secs(1),
    );
    let after = ask(&conn, "gone");
    assert!(
        after.is_err(),
        "the held connection ended with the old port's backend: {after:?}"
    );
    agent.stop().expect("xlb stops cleanly");
}
