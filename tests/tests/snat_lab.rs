//! SNAT forwarding end to end: the real `xlb` agent in the lab's lb namespace, clients in the
//! client namespace, and targets that run nothing of xlb: no decap program, no VIP on `lo`, a
//! plain Python server on a port of their own, and no route but their own link's: they cannot
//! reach the client at all, only the node's SNAT address (the lb's own, on that link), which
//! is what they see as their peer. Run as root.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{Agent, api_socket, cli, scrape, write_config, xlb_bin},
    lab::{LB_V4, LB_V6, Lab, Role, VIP_V4, VIP_V6, backend_v4, in_netns, pin_dir, run_dir},
    plain_targets::{
        self, DRAIN_DELAY, Routes, Servers, answered_by, curl, group, reason_packets, v4, v6,
    },
};

fn lab(prefix: &str) -> (Lab, Servers) {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab"));
    plain_targets::lab(prefix, Routes::OwnLinkOnly, server)
}

fn listener(vip: IpAddr, port: u16, protocol: &str, group: &str) -> String {
    plain_targets::listener(vip, port, protocol, group, "snat")
}

/// The node's part of a config for `lab`: the SNAT sources are the lb's own addresses, and
/// UDP flows are over after 2 s without a packet.
fn node(lab: &Lab) -> String {
    format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\
         snat = {{ address_v4 = \"{LB_V4}\", address_v6 = \"{LB_V6}\", udp_timeout_seconds = 2 }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        api_socket(lab).display(),
        run_dir(lab.prefix()).join("state.json").display(),
    )
}

/// `xlb_snat_ports_in_use` in a metrics scrape.
fn ports_in_use(lab: &Lab) -> u64 {
    let metrics = scrape(lab);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("xlb_snat_ports_in_use "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no xlb_snat_ports_in_use in\n{metrics}"))
}

#[test]
fn snat_forwards_tcp_and_udp_v4_and_v6_from_the_nodes_address_and_sweeps_idle_flows() {
    let (lab, _servers) = lab("xsnat-a-");
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

    // curl, v4 and v6: a target answers, on its own port, and saw the node's address.
    for (url, node) in [
        (format!("http://{VIP_V4}/"), IpAddr::V4(LB_V4)),
        (format!("http://[{VIP_V6}]/"), IpAddr::V6(LB_V6)),
    ] {
        let body = curl(&lab, &url);
        let (name, seen) = body.split_once(' ').unwrap_or_default();
        assert!(name.starts_with("backend"), "{url}: {body:?}");
        assert_eq!(seen, node.to_string(), "{url}: the target saw {body:?}");
    }
    // Connections spread over both targets, whose ports differ.
    for vip in [vip4, vip6] {
        let names = answered_by(&lab, SocketAddr::new(vip, 80), 40);
        assert_eq!(
            names,
            BTreeSet::from(["backend1".into(), "backend2".into()])
        );
    }
    // The closed connections keep their ports (60 s after the FIN): 2 curls and 80 GETs.
    // (A client port the kernel reused within the run would make one flow of two.)
    let tcp = ports_in_use(&lab);
    assert!((60..=82).contains(&tcp), "one port per connection: {tcp}");

    // UDP: the answer comes from the VIP and port the client sent to; the target saw the node.
    for (vip, node, bind) in [
        (vip4, IpAddr::V4(LB_V4), "0.0.0.0:0"),
        (vip6, IpAddr::V6(LB_V6), "[::]:0"),
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
                    assert_eq!(words[1..], [&node.to_string(), &format!("q{flow}.{n}")]);
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
    // One port per UDP flow, less those the sweep may have taken already on a slow machine.
    let udp = ports_in_use(&lab) - tcp;
    assert!((20..=40).contains(&udp), "one port per UDP flow: {udp}");
    // The sweep: 2 s after their last datagram the UDP flows' ports are back; the closed TCP
    // connections' stay for their 60 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports_in_use(&lab) != tcp && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(ports_in_use(&lab), tcp, "the UDP flows' ports given back");

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
    for reason in ["tx_snat", "tx_snat_reply"] {
        assert!(reason_packets(&stats, reason) > 0, "{reason}:\n{stats}");
    }
    for reason in ["tx_nat", "tx_nat_reply", "drop_snat_exhausted"] {
        assert_eq!(reason_packets(&stats, reason), 0, "{reason}:\n{stats}");
    }
    let metrics = scrape(&lab);
    for line in [
        "xlb_healthy_host_count{target_group=\"t4\"} 2",
        "target=\"198.18.1.12:8081\"",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
    let (_, status) = cli(&lab, &["status"]);
    assert!(!status.contains("warning"), "{status}");
    agent.stop().expect("xlb stops cleanly");
}

#[test]
fn a_held_connection_survives_a_restart_and_drains_after_deregistration() {
    let (lab, _servers) = lab("xsnat-b-");
    let text = node(&lab)
        + &group("t4", "TCP", v4, DRAIN_DELAY)
        + &listener(VIP_V4.into(), 80, "TCP", "t4");
    plain_targets::held_connection_survives_a_restart_and_drains(&lab, &text, LB_V4.into());
}
