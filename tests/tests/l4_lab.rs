//! End to end through the lab: the real `xlb` agent in the lb namespace, real TCP clients in
//! the client namespace, real servers on the backends. Run as root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, http_spread, xlb_bin},
    lab::{
        ECHO_PORT, HTTP_PORT, Lab, LabSpec, Role, VIP_V4, VIP_V6, backend_v4, backend_v6, in_netns,
    },
};

fn lab(prefix: &str, backends: usize) -> Lab {
    Lab::up(LabSpec {
        prefix: prefix.into(),
        backends,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up")
}

/// A config for the lab: listeners on both VIPs (HTTP and echo) forwarding to `targets`.
fn config(lab: &Lab, targets: &[usize], dsr: bool) -> String {
    let mac = |i: usize| {
        if dsr {
            format!(", mac = \"{}\"", lab.backend_mac(i))
        } else {
            String::new()
        }
    };
    let v4: Vec<String> = targets
        .iter()
        .map(|&i| format!("{{ id = \"{}\"{} }}", backend_v4(i), mac(i)))
        .collect();
    let v6: Vec<String> = targets
        .iter()
        .map(|&i| format!("{{ id = \"{}\"{} }}", backend_v6(i), mac(i)))
        .collect();
    let fwd = if dsr { "dsr" } else { "tunnel" };
    let pins = xlb_tests::lab::pin_dir(lab.prefix()).join("agent");
    let run = xlb_tests::lab::run_dir(lab.prefix());
    let mut s = format!(
        "[node]\ninterface = \"eth0\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"v4\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\n\n\
         [[target_groups]]\nname = \"v6\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\n",
        pins.display(),
        run.join("xlb.sock").display(),
        run.join("state.json").display(),
        v4.join(", "),
        v6.join(", ")
    );
    for (vip, tg) in [(IpAddr::V4(VIP_V4), "v4"), (IpAddr::V6(VIP_V6), "v6")] {
        for port in [HTTP_PORT, ECHO_PORT] {
            s += &format!(
                "\n[[listeners]]\naddress = \"{vip}\"\nport = {port}\nprotocol = \"TCP\"\nforwarding = \"{fwd}\"\n\
                 default_action = {{ type = \"forward\", target_group = \"{tg}\" }}\n"
            );
        }
    }
    s
}

fn write_config(lab: &Lab, text: &str) -> PathBuf {
    let path = xlb_tests::lab::run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every target gets a share of `n` requests near 1/N, and none fails.
fn assert_balanced(spread: &BTreeMap<String, usize>, n: usize, backends: usize) {
    assert!(
        spread.keys().all(|k| k.starts_with("backend")),
        "failed requests: {spread:?}"
    );
    assert_eq!(spread.len(), backends, "every target answers: {spread:?}");
    let fair = n as f64 / backends as f64;
    for (b, c) in spread {
        assert!(
            (*c as f64) > fair * 0.5 && (*c as f64) < fair * 1.5,
            "{b} got {c} of {n}: {spread:?}"
        );
    }
}

fn spread_test(prefix: &str, dsr: bool) {
    let lab = lab(prefix, 3);
    let cfg = write_config(&lab, &config(&lab, &[1, 2, 3], dsr));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    for vip in [
        SocketAddr::from((VIP_V4, HTTP_PORT)),
        SocketAddr::from((VIP_V6, HTTP_PORT)),
    ] {
        let n = 600;
        let spread = http_spread(&lab, vip, n).expect("client");
        assert_balanced(&spread, n, 3);
    }
    let report = agent.stop().expect("xlb stops cleanly");
    let reason = if dsr { "tx_dsr" } else { "tx_tunnel" };
    assert!(report.contains(reason), "counters show {reason}:\n{report}");
}

#[test]
fn tunnel_spreads_1200_connections_over_all_targets_v4_and_v6() {
    spread_test("xl4a-", false);
}

#[test]
fn dsr_spreads_1200_connections_over_all_targets_v4_and_v6() {
    spread_test("xl4b-", true);
}

/// Long-lived connections stay on their target while targets are added and removed.
#[test]
fn open_connections_survive_adding_and_removing_targets() {
    let lab = lab("xl4c-", 3);
    let xlb = xlb_bin().unwrap();
    let cfg = write_config(&lab, &config(&lab, &[1, 2], false));
    let agent = Agent::start(&lab, &xlb, &cfg).expect("xlb run");
    let ns = lab.ns(Role::Client);
    in_netns(&ns, || {
        let t = Duration::from_secs(2);
        let mut conns = Vec::new();
        for i in 0..40 {
            let vip = if i % 2 == 0 {
                SocketAddr::from((VIP_V4, ECHO_PORT))
            } else {
                SocketAddr::from((VIP_V6, ECHO_PORT))
            };
            let s = TcpStream::connect_timeout(&vip, t).expect("connect");
            s.set_read_timeout(Some(t)).unwrap();
            conns.push((BufReader::new(s.try_clone().unwrap()), s, None::<String>));
        }
        let round = |conns: &mut Vec<(BufReader<TcpStream>, TcpStream, Option<String>)>,
                     tag: &str| {
            for (r, w, owner) in conns.iter_mut() {
                w.write_all(format!("{tag}\n").as_bytes()).expect("send");
                let mut line = String::new();
                r.read_line(&mut line).expect("echo reply");
                let name = line.split(':').next().unwrap().to_owned();
                assert!(line.contains(tag), "echoed: {line:?}");
                match owner {
                    None => *owner = Some(name),
                    Some(o) => assert_eq!(o, &name, "a connection moved between targets"),
                }
            }
        };
        round(&mut conns, "before");
        let owners: BTreeSet<_> = conns.iter().map(|c| c.2.clone().unwrap()).collect();
        assert_eq!(
            owners.len(),
            2,
            "40 connections reach both targets: {owners:?}"
        );
        // Add target 3, then remove target 1: every open connection keeps working where it was.
        std::fs::write(&cfg, config(&lab, &[1, 2, 3], false)).unwrap();
        agent.reload().unwrap();
        round(&mut conns, "added");
        std::fs::write(&cfg, config(&lab, &[2, 3], false)).unwrap();
        agent.reload().unwrap();
        round(&mut conns, "removed");
    })
    .expect("client namespace");
    // New connections now go to targets 2 and 3 only.
    let spread = http_spread(&lab, SocketAddr::from((VIP_V4, HTTP_PORT)), 200).expect("client");
    assert!(
        spread.keys().all(|k| k == "backend2" || k == "backend3"),
        "{spread:?}"
    );
    agent.stop().expect("xlb stops cleanly");
}

/// kill -9 and restart of the agent: the datapath keeps running from its pinned link and maps,
/// open connections keep their targets, and requests sent meanwhile all succeed.
#[test]
fn agent_restart_with_kill_9_drops_nothing() {
    let lab = lab("xl4d-", 3);
    let xlb = xlb_bin().unwrap();
    let cfg = write_config(&lab, &config(&lab, &[1, 2, 3], false));
    let agent = Agent::start(&lab, &xlb, &cfg).expect("xlb run");
    let ns = lab.ns(Role::Client);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (failures, requests) = std::thread::scope(|scope| {
        // Traffic that keeps flowing through the restart.
        let load = scope.spawn(|| {
            let mut failures = Vec::new();
            let mut n = 0;
            in_netns(&ns, || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < deadline
                {
                    n += 1;
                    if let Err(e) =
                        xlb_tests::agent::http_get(SocketAddr::from((VIP_V4, HTTP_PORT)))
                    {
                        failures.push(e.to_string());
                    }
                }
            })
            .expect("client namespace");
            (failures, n)
        });
        let conns = in_netns(&ns, || {
            (0..12)
                .map(|_| {
                    let s = TcpStream::connect_timeout(
                        &SocketAddr::from((VIP_V4, ECHO_PORT)),
                        Duration::from_secs(2),
                    )
                    .expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
        let ask = |s: &TcpStream, tag: &str| -> String {
            let mut w = s.try_clone().unwrap();
            w.write_all(format!("{tag}\n").as_bytes()).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).expect("echo reply");
            line.split(':').next().unwrap().to_owned()
        };
        let before: Vec<String> = conns.iter().map(|s| ask(s, "before")).collect();
        agent.kill9();
        std::thread::sleep(Duration::from_millis(300));
        let during: Vec<String> = conns.iter().map(|s| ask(s, "during")).collect();
        assert_eq!(
            before, during,
            "connections kept their targets while no agent ran"
        );
        let agent = Agent::start(&lab, &xlb, &cfg).expect("restarted xlb run");
        std::thread::sleep(Duration::from_millis(300));
        let after: Vec<String> = conns.iter().map(|s| ask(s, "after")).collect();
        assert_eq!(
            before, after,
            "connections kept their targets across the restart"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = load.join().unwrap();
        agent.stop().expect("xlb stops cleanly");
        r
    });
    assert!(requests > 20, "the load ran ({requests} requests)");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// 1000 UDP flows per VIP reach targets weighted 1:2:3 in proportion, v4 and v6, in both modes;
/// every flow's datagrams stay on one target.
fn weighted_udp(prefix: &str, dsr: bool) {
    let lab = lab(prefix, 3);
    let weights = [1u32, 2, 3];
    let mac = |i: usize| {
        if dsr {
            format!(", mac = \"{}\"", lab.backend_mac(i))
        } else {
            String::new()
        }
    };
    let targets = |addr: &dyn Fn(usize) -> String| -> String {
        (1..=3)
            .map(|i| {
                format!(
                    "{{ id = \"{}\", weight = {}{} }}",
                    addr(i),
                    weights[i - 1],
                    mac(i)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fwd = if dsr { "dsr" } else { "tunnel" };
    let mut text = format!(
        "[node]\ninterface = \"eth0\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"u4\"\nprotocol = \"UDP\"\nport = 53\ntargets = [{}]\n\n\
         [[target_groups]]\nname = \"u6\"\nprotocol = \"UDP\"\nport = 53\ntargets = [{}]\n",
        xlb_tests::lab::pin_dir(lab.prefix())
            .join("agent")
            .display(),
        xlb_tests::lab::run_dir(lab.prefix())
            .join("xlb.sock")
            .display(),
        xlb_tests::lab::run_dir(lab.prefix())
            .join("state.json")
            .display(),
        targets(&|i| backend_v4(i).to_string()),
        targets(&|i| backend_v6(i).to_string()),
    );
    for (vip, tg) in [(IpAddr::V4(VIP_V4), "u4"), (IpAddr::V6(VIP_V6), "u6")] {
        text += &format!(
            "\n[[listeners]]\naddress = \"{vip}\"\nport = 53\nprotocol = \"UDP\"\nforwarding = \"{fwd}\"\n\
             default_action = {{ type = \"forward\", target_group = \"{tg}\" }}\n"
        );
    }
    let cfg = write_config(&lab, &text);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    for vip in [
        SocketAddr::from((VIP_V4, 53)),
        SocketAddr::from((VIP_V6, 53)),
    ] {
        let counts = in_netns(&lab.ns(Role::Client), || {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..1000 {
                let bind: SocketAddr = if vip.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                let s = std::net::UdpSocket::bind(bind).expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut names = BTreeSet::new();
                for _ in 0..2 {
                    s.send_to(b"q", vip).expect("send");
                    let mut buf = [0u8; 64];
                    let n = s
                        .recv(&mut buf)
                        .map_err(|e| format!("no UDP answer from {vip}: {e}"))
                        .unwrap();
                    names.insert(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
                }
                assert_eq!(names.len(), 1, "a flow's datagrams went to {names:?}");
                *counts.entry(names.pop_first().unwrap()).or_insert(0) += 1;
            }
            counts
        })
        .expect("client namespace");
        for (i, w) in weights.iter().enumerate() {
            let got = counts
                .get(&format!("backend{}", i + 1))
                .copied()
                .unwrap_or(0) as f64;
            let want = 1000.0 * *w as f64 / 6.0;
            assert!(
                (got - want).abs() < want * 0.25,
                "backend{} got {got} of 1000, want about {want:.0}: {counts:?}",
                i + 1
            );
        }
    }
    agent.stop().expect("xlb stops cleanly");
}

#[test]
fn udp_flows_follow_weights_tunnel() {
    weighted_udp("xl4e-", false);
}

#[test]
fn udp_flows_follow_weights_dsr() {
    weighted_udp("xl4f-", true);
}

/// The datapath caches each target's next hop (the FIB's answer) for a second: a changed
/// neighbour entry is followed within that time, both ways.
#[test]
fn cached_next_hops_follow_neighbour_changes() {
    let lab = lab("xl4g-", 1);
    let cfg = write_config(&lab, &config(&lab, &[1], false));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let vip = SocketAddr::from((VIP_V4, HTTP_PORT));
    let get = || in_netns(&lab.ns(Role::Client), || xlb_tests::agent::http_get(vip)).unwrap();
    let neighbour = |mac: &str| {
        let target = backend_v4(1).to_string();
        let argv = [
            "ip", "neigh", "replace", &target, "lladdr", mac, "dev", "eth0",
        ];
        let out = lab.exec(Role::Lb, &[&argv[..], &["nud", "permanent"]].concat());
        assert!(out.expect("ip neigh").status.success(), "ip neigh replace");
    };
    // Polls until a request's outcome is `ok`; each failed one has waited out its 2 s timeout.
    let settles = |ok: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < deadline {
            if get().is_ok() == ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    assert_eq!(get().expect("request before the change"), "backend1");

    // A MAC nobody has: the target's kernel drops frames not addressed to it.
    neighbour("02:00:5e:00:53:99");
    assert!(
        settles(false),
        "the new (wrong) neighbour is used within the cache time"
    );
    neighbour(&lab.backend_mac(1).to_string());
    assert!(
        settles(true),
        "the restored neighbour is used within the cache time"
    );
    assert_eq!(get().expect("request after the change"), "backend1");
    agent.stop().expect("xlb stops cleanly");
}

/// Without a neighbour entry for a target (a cold ARP cache, a target just moved), the first
/// packets go through the kernel, which resolves it: nothing is lost, v4 or v6.
#[test]
fn targets_without_neighbour_entries_are_reached_through_the_kernel() {
    let lab = lab("xl4h-", 1);
    for target in [backend_v4(1).to_string(), backend_v6(1).to_string()] {
        let out = lab
            .exec(Role::Lb, &["ip", "neigh", "del", &target, "dev", "eth0"])
            .expect("ip neigh del");
        assert!(out.status.success(), "ip neigh del {target}");
    }
    let cfg = write_config(&lab, &config(&lab, &[1], false));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let got = in_netns(&lab.ns(Role::Client), || {
            xlb_tests::agent::http_get(SocketAddr::new(vip, HTTP_PORT))
        })
        .unwrap();
        assert_eq!(got.expect("the first request"), "backend1", "{vip}");
    }
    let stats = agent.stop().expect("xlb stops cleanly");
    let passed = stats
        .lines()
        .find(|l| l.starts_with("pass_no_neighbour"))
        .unwrap_or_else(|| panic!("no packet went through the kernel:\n{stats}"));
    assert!(passed.split_whitespace().nth(1).unwrap() != "0", "{passed}");
}
