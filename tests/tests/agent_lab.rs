//! The agent and its CLI in the lab: draining, registration through the API (kept across
//! restarts, reported as drift), refused reloads, zones. Run as root.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use xlb_tests::{
    agent::{self, Agent, api_socket, cli, http_spread, write_config, xlb_bin},
    lab::{
        ECHO_PORT, HTTP_PORT, Lab, LabSpec, Role, VIP_V4, backend_v4, in_netns, pin_dir, run_dir,
    },
};

fn lab(prefix: &str) -> Lab {
    Lab::up(LabSpec {
        prefix: prefix.into(),
        backends: 3,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up")
}

/// A config with targets `file_targets` (index, zone) in group "web", listeners on HTTP and echo.
fn config(lab: &Lab, targets: &[(usize, &str)], extra_node: &str, attributes: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|(i, z)| format!("{{ id = \"{}\", zone = \"{z}\" }}", backend_v4(*i)))
        .collect();
    let mut s = format!(
        "[node]\ninterface = \"eth0\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n{extra_node}\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\nattributes = {{ {attributes} }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        api_socket(lab).display(),
        run_dir(lab.prefix()).join("state.json").display(),
        t.join(", ")
    );
    for port in [HTTP_PORT, ECHO_PORT] {
        s += &format!(
            "\n[[listeners]]\naddress = \"{VIP_V4}\"\nport = {port}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n"
        );
    }
    s
}

fn spread(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    http_spread(lab, SocketAddr::from((VIP_V4, HTTP_PORT)), n).expect("client")
}

/// An echo connection from the client to the VIP, held open: it, the backend that answered, and
/// that backend's index.
fn held_echo(lab: &Lab) -> (TcpStream, String, usize) {
    let conn = in_netns(&lab.ns(Role::Client), || {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from((VIP_V4, ECHO_PORT)),
            Duration::from_secs(2),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .unwrap();
    let owner = echo_owner(&conn).expect("echo");
    let index = owner.trim_start_matches("backend").parse().unwrap();
    (conn, owner, index)
}

fn echo_owner(s: &TcpStream) -> std::io::Result<String> {
    let mut w = s.try_clone()?;
    w.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.split(':').next().unwrap_or_default().to_owned())
}

#[test]
fn deregistered_target_drains_then_leaves() {
    let lab = lab("xag-a-");
    let cfg = write_config(
        &lab,
        &config(
            &lab,
            &[(1, "a"), (2, "a"), (3, "a")],
            "",
            "\"deregistration_delay.timeout_seconds\" = \"3\"",
        ),
    );
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    // A long-lived connection, and the target it landed on.
    let (conn, owner, index) = held_echo(&lab);
    let (ok, out) = cli(
        &lab,
        &[
            "targets",
            "deregister",
            "--target-group",
            "web",
            "--id",
            &backend_v4(index).to_string(),
        ],
    );
    assert!(ok, "{out}");
    // New flows avoid it at once; the open connection keeps going; the CLI shows it draining.
    let s = spread(&lab, 90);
    assert!(
        !s.contains_key(&owner) && s.values().sum::<usize>() == 90,
        "{owner} still gets new flows: {s:?}"
    );
    assert_eq!(
        echo_owner(&conn).expect("draining connection still works"),
        owner
    );
    let (ok, list) = cli(&lab, &["targets", "list"]);
    assert!(ok, "{list}");
    let row = list
        .lines()
        .find(|l| l.contains(&backend_v4(index).to_string()))
        .expect("draining target listed");
    assert!(
        row.contains("draining") && row.contains("Target.DeregistrationInProgress"),
        "{list}"
    );
    let flows: u64 = row.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert!(flows >= 1, "flows left on the draining target: {list}");
    // After the delay it is gone.
    std::thread::sleep(Duration::from_secs(4));
    let (_, list) = cli(&lab, &["targets", "list"]);
    assert!(
        !list.contains(&backend_v4(index).to_string()),
        "drain over, target gone: {list}"
    );
    agent.stop().unwrap();
}

#[test]
fn api_registration_survives_restart_and_is_drift() {
    let lab = lab("xag-b-");
    let cfg = write_config(&lab, &config(&lab, &[(1, "a")], "", ""));
    let xlb = xlb_bin().unwrap();
    let agent = Agent::start(&lab, &xlb, &cfg).expect("xlb run");
    assert_eq!(spread(&lab, 30).keys().collect::<Vec<_>>(), ["backend1"]);
    let (ok, out) = cli(
        &lab,
        &[
            "targets",
            "register",
            "--target-group",
            "web",
            "--id",
            &backend_v4(3).to_string(),
        ],
    );
    assert!(ok, "{out}");
    let s = spread(&lab, 90);
    assert!(
        s.contains_key("backend3") && s.contains_key("backend1"),
        "{s:?}"
    );
    let (_, status) = cli(&lab, &["status"]);
    assert!(
        status.contains(&format!("registered {} in web", backend_v4(3))),
        "{status}"
    );
    agent.stop().unwrap();
    let agent = Agent::start(&lab, &xlb, &cfg).expect("restarted xlb run");
    let s = spread(&lab, 90);
    assert!(
        s.contains_key("backend3"),
        "registration kept across the restart: {s:?}"
    );
    let (_, status) = cli(&lab, &["status", "--json"]);
    assert!(
        status.contains("drift") && status.contains(&backend_v4(3).to_string()),
        "{status}"
    );
    agent.stop().unwrap();
}

#[test]
fn bad_reload_is_refused_and_the_running_config_stays() {
    let lab = lab("xag-c-");
    let good = config(&lab, &[(1, "a"), (2, "a")], "", "");
    let cfg = write_config(&lab, &good);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    std::fs::write(
        &cfg,
        good.replace("port = 80\ntargets", "prot = 80\ntargets"),
    )
    .unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(!ok, "a bad config must be refused: {out}");
    assert!(
        out.contains("prot") && out.contains("line"),
        "the error names the key and line: {out}"
    );
    let s = spread(&lab, 60);
    assert_eq!(s.values().sum::<usize>(), 60, "traffic unaffected: {s:?}");
    assert!(s.keys().all(|k| k.starts_with("backend")), "{s:?}");
    let (ok, out) = Command::new(xlb_bin().unwrap())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok && out.contains("prot"), "{out}");
    agent.stop().unwrap();
}

#[test]
fn cross_zone_off_stays_in_zone_and_spills_over() {
    let lab = lab("xag-d-");
    let cfg = write_config(
        &lab,
        &config(
            &lab,
            &[(1, "a"), (2, "b"), (3, "b")],
            "zone = \"a\"",
            "\"deregistration_delay.timeout_seconds\" = \"0\"",
        ),
    );
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    assert_eq!(
        spread(&lab, 60).keys().collect::<Vec<_>>(),
        ["backend1"],
        "zone a only"
    );
    let (ok, out) = cli(
        &lab,
        &[
            "targets",
            "deregister",
            "--target-group",
            "web",
            "--id",
            &backend_v4(1).to_string(),
        ],
    );
    assert!(ok, "{out}");
    let s = spread(&lab, 90);
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["backend2", "backend3"],
        "spilled over to zone b: {s:?}"
    );
    agent.stop().unwrap();
}

/// Kills every process in backend `i`'s namespace: its servers stop answering.
fn kill_backend(lab: &Lab, i: usize) {
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns(Role::Backend(i))])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

fn target_state(lab: &Lab, i: usize) -> String {
    let (_, list) = cli(lab, &["targets", "list"]);
    let addr = backend_v4(i).to_string();
    list.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(addr.as_str()))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn health_checks_fail_over_then_fail_open_and_export_metrics() {
    let lab = lab("xag-e-");
    let check = "\n[target_groups.health_check]\nprotocol = \"HTTP\"\npath = \"/\"\ninterval_seconds = 5\n\
                 timeout_seconds = 2\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let text = config(
        &lab,
        &[(1, "a"), (2, "a"), (3, "a")],
        "metrics_address = \"127.0.0.1:9100\"",
        "",
    );
    // The health check belongs to the group, before the listeners.
    let text = text.replacen("\n\n[[listeners]]", &format!("{check}\n[[listeners]]"), 1);
    let cfg = write_config(&lab, &text);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let wait_for = |i: usize, state: &str, limit: Duration| -> Duration {
        let t0 = std::time::Instant::now();
        while target_state(&lab, i) != state {
            assert!(
                t0.elapsed() < limit,
                "backend{i} not {state} within {limit:?}: {}",
                cli(&lab, &["targets", "list"]).1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        t0.elapsed()
    };
    wait_for(2, "healthy", Duration::from_secs(8));
    kill_backend(&lab, 2);
    // interval 5 s × unhealthy threshold 2: detected within 10 s (plus a probe timeout).
    let took = wait_for(2, "unhealthy", Duration::from_secs(13));
    assert!(
        took >= Duration::from_secs(4),
        "detected after {took:?}: faster than interval × (threshold - 1)"
    );
    let s = spread(&lab, 90);
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["backend1", "backend3"],
        "no new flow to the dead target: {s:?}"
    );
    // Metrics, named after CloudWatch's.
    let m = agent::scrape(&lab);
    assert!(
        m.contains("xlb_healthy_host_count{target_group=\"web\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("xlb_unhealthy_host_count{target_group=\"web\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("xlb_processed_bytes_total{listener=\"198.18.100.1:80/Tcp\"}"),
        "{m}"
    );
    assert!(m.contains("xlb_new_flow_count_total"), "{m}");
    // Every target down: fail open, the datapath still forwards to all of them.
    kill_backend(&lab, 1);
    kill_backend(&lab, 3);
    wait_for(1, "unhealthy", Duration::from_secs(13));
    wait_for(3, "unhealthy", Duration::from_secs(13));
    let (_, before) = cli(&lab, &["stats", "--json"]);
    let _ = spread(&lab, 10);
    let (_, after) = cli(&lab, &["stats", "--json"]);
    let no_backend =
        |s: &str| s.contains("drop_no_backend\",\n      0") || !s.contains("drop_no_backend");
    assert!(
        no_backend(&before) && no_backend(&after),
        "fail-open keeps every target in the table:\n{after}"
    );
    agent.stop().unwrap();
}

/// One HTTP/1.1 request on `stream` (kept alive); returns the status and the body.
fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: xlb\r\n\r\n").expect("send");
    let mut r = BufReader::new(stream.try_clone().expect("clone"));
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut r, &mut body).expect("body");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name` (with its labels) in metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[test]
fn stalled_clients_hold_only_themselves_and_scrapes_are_fresh_on_one_connection() {
    let lab = lab("xag-f-");
    let cfg = write_config(
        &lab,
        &config(
            &lab,
            &[(1, "a"), (2, "a")],
            "metrics_address = \"127.0.0.1:9101\"",
            "",
        ),
    );
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    // API clients that connect and say nothing, and a scrape that never finishes its request:
    // each once held the agent's loop for 5 s.
    let stalled: Vec<std::os::unix::net::UnixStream> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(api_socket(&lab)).expect("connect API"))
        .collect();
    let mut half = in_netns(&lab.ns(Role::Lb), || TcpStream::connect("127.0.0.1:9101"))
        .unwrap()
        .expect("connect metrics");
    half.write_all(b"GET /metr").unwrap();
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let (ok, out) = cli(&lab, &["status"]);
        assert!(ok, "{out}");
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "5 status calls took {took:?}"
    );
    // One kept-alive scrape connection sees the counters move; other paths are not found.
    let mut scrape = in_netns(&lab.ns(Role::Lb), || TcpStream::connect("127.0.0.1:9101"))
        .unwrap()
        .expect("connect metrics");
    scrape
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let name = "xlb_processed_packets_total{listener=\"198.18.100.1:80/Tcp\"}";
    let (code, first) = get(&mut scrape, "/metrics");
    assert_eq!(code, 200, "{first}");
    let before = sample(&first, name).expect("the listener's packets");
    let s = spread(&lab, 20);
    assert_eq!(s.values().sum::<usize>(), 20, "{s:?}");
    let (code, second) = get(&mut scrape, "/metrics");
    assert_eq!(code, 200);
    let after = sample(&second, name).expect("the listener's packets");
    assert!(after > before, "{before} then {after}: the same body twice");
    assert_eq!(get(&mut scrape, "/").0, 404);
    drop((stalled, half));
    agent.stop().unwrap();
}

#[test]
fn accept_errors_and_a_refused_apply_do_not_end_the_agent() {
    let lab = lab("xag-g-");
    let good = config(&lab, &[(1, "a"), (2, "a")], "max_targets = 4", "");
    let cfg = write_config(&lab, &good);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    // Out of descriptors: the agent's limit set just above what it holds, then more API
    // clients than that. Its accepts fail for a while; it must go on.
    let pid = agent.pid().to_string();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's descriptors")
        .count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next())
        .expect("the agent's descriptor limit")
        .to_owned();
    let prlimit = |soft: &str| {
        let status = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .status()
            .expect("prlimit");
        assert!(status.success());
    };
    prlimit(&(fds + 2).to_string());
    let crowd: Vec<std::os::unix::net::UnixStream> = (0..8)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(api_socket(&lab)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(crowd);
    prlimit(&soft);
    let (ok, out) = cli(&lab, &["status"]);
    assert!(ok, "the agent goes on after failed accepts: {out}");
    // More targets than node.max_targets: a file with too many is refused by name; a file
    // within it whose new targets, with the leaving ones draining, would not fit is refused
    // before anything is written. Either way the running targets stay and take traffic.
    let others = |n: u32| -> String {
        let t: Vec<String> = (1..=n)
            .map(|i| format!("{{ id = \"10.0.0.{i}\" }}"))
            .collect();
        t.join(", ")
    };
    for (n, refusal) in [
        (5, "node.max_targets allows 4"),
        (
            3,
            "the targets, draining ones included, would exceed node.max_targets (4)",
        ),
    ] {
        let text = good.replacen(
            &good[good.find("targets = [").unwrap()..good.find("]\nattributes").unwrap() + 1],
            &format!("targets = [{}]", others(n)),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        let (ok, out) = cli(&lab, &["reload"]);
        assert!(!ok && out.contains(refusal), "{n} targets: {out}");
    }
    let (ok, out) = cli(&lab, &["targets", "list"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().count(),
        3,
        "the two running targets stay: {out}"
    );
    let s = spread(&lab, 40);
    assert_eq!(s.values().sum::<usize>(), 40, "traffic unaffected: {s:?}");
    assert!(s.keys().all(|k| k.starts_with("backend")), "{s:?}");
    agent.stop().unwrap();
}

#[test]
fn reloads_that_claim_the_hosts_address_or_repeat_a_listener_are_refused() {
    let lab = lab("xag-h-");
    let good = config(&lab, &[(1, "a"), (2, "a")], "", "");
    let cfg = write_config(&lab, &good);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let extra = |address: &str, port: u16| {
        format!(
            "{good}\n[[listeners]]\naddress = \"{address}\"\nport = {port}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n"
        )
    };
    // The lb's own address as a VIP: its packets are the host's; once silently not served.
    let own = extra(&xlb_tests::lab::LB_V4.to_string(), 8080);
    std::fs::write(&cfg, &own).unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(!ok, "{out}");
    let line = 1 + own
        .lines()
        .position(|l| l == "address = \"198.18.1.2\"")
        .expect("the listener's address");
    assert!(
        out.contains(&format!(
            "line {line}: listeners[2].address: 198.18.1.2 is an address of this host"
        )),
        "{out}"
    );
    // `xlb check` where the agent runs says the same.
    let check = lab
        .command(
            Role::Lb,
            &[
                xlb_bin().unwrap().to_str().unwrap(),
                "check",
                "--config",
                cfg.to_str().unwrap(),
            ],
        )
        .output()
        .expect("xlb check");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && err.contains("is an address of this host"),
        "{err}"
    );
    // A second listener on the VIP's port: a second all-zero row once.
    std::fs::write(&cfg, extra(&VIP_V4.to_string(), HTTP_PORT)).unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(
        !ok && out.contains("listeners[0] already listens on 198.18.100.1 port 80 TCP"),
        "{out}"
    );
    let s = spread(&lab, 40);
    assert_eq!(s.values().sum::<usize>(), 40, "traffic unaffected: {s:?}");
    let (ok, out) = cli(&lab, &["stats"]);
    assert!(
        ok && out.matches("198.18.100.1:80/Tcp").count() == 1,
        "{out}"
    );
    agent.stop().unwrap();
}

#[test]
fn a_target_a_reload_removes_drains_then_its_flows_end() {
    let lab = lab("xag-i-");
    let delay = "\"deregistration_delay.timeout_seconds\" = \"3\"";
    let all = config(&lab, &[(1, "a"), (2, "a"), (3, "a")], "", delay);
    let cfg = write_config(&lab, &all);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let (conn, owner, index) = held_echo(&lab);
    let kept: Vec<(usize, &str)> = (1..=3).filter(|i| *i != index).map(|i| (i, "a")).collect();
    std::fs::write(&cfg, config(&lab, &kept, "", delay)).unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(ok, "{out}");
    // It drains as a deregistered target does: listed as draining, no new flows, its
    // connection goes on.
    let (_, list) = cli(&lab, &["targets", "list"]);
    let row = list
        .lines()
        .find(|l| l.contains(&backend_v4(index).to_string()))
        .unwrap_or_else(|| panic!("the removed target is listed while it drains: {list}"));
    assert!(row.contains("draining") && row.contains(" file"), "{list}");
    let s = spread(&lab, 60);
    assert!(!s.contains_key(&owner), "{s:?}");
    assert_eq!(echo_owner(&conn).expect("draining connection"), owner);
    let (_, status) = cli(&lab, &["status"]);
    assert!(
        status.contains("left web with a reload: draining"),
        "{status}"
    );
    // When the delay is over it leaves, and its flow with it.
    std::thread::sleep(Duration::from_secs(4));
    let (_, list) = cli(&lab, &["targets", "list"]);
    assert!(!list.contains(&backend_v4(index).to_string()), "{list}");
    assert!(
        echo_owner(&conn).map_or(true, |o| o != owner),
        "the flow was not re-balanced after the drain"
    );
    agent.stop().unwrap();
}

#[test]
fn api_registrations_are_checked_as_the_file_is_and_taken_together() {
    let lab = lab("xag-j-");
    let cfg = write_config(&lab, &config(&lab, &[(1, "a")], "", ""));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let register = |extra: &[&str]| {
        let mut args = vec!["targets", "register", "--target-group", "web"];
        args.extend_from_slice(extra);
        cli(&lab, &args)
    };
    let (b2, b3) = (backend_v4(2).to_string(), backend_v4(3).to_string());
    for (args, want) in [
        (
            vec!["--id", &b2, "--weight", "5000"],
            "weight: 5000 is outside 0..=1000",
        ),
        (
            vec!["--id", &b2, "--mac", "zz:00:00:00:00:01"],
            "is not a MAC address",
        ),
    ] {
        let (ok, out) = register(&args);
        assert!(!ok && out.contains(want), "{args:?}: {out}");
    }
    let (ok, out) = cli(
        &lab,
        &["targets", "register", "--target-group", "nope", "--id", &b2],
    );
    assert!(
        !ok && out.contains("no target group named \"nope\""),
        "{out}"
    );
    let (_, status) = cli(&lab, &["status"]);
    assert!(
        !status.contains(&b2),
        "a refused registration is not kept: {status}"
    );
    // Two targets in one call, one change.
    let (ok, out) = register(&["--id", &b2, "--id", &b3]);
    assert!(ok && out.contains(&b2) && out.contains(&b3), "{out}");
    let s = spread(&lab, 90);
    assert_eq!(s.len(), 3, "{s:?}");
    agent.stop().unwrap();
}

#[test]
fn a_state_file_that_no_longer_applies_is_reported_and_the_agent_starts() {
    let lab = lab("xag-k-");
    let cfg = write_config(&lab, &config(&lab, &[(1, "a")], "", ""));
    let state = run_dir(lab.prefix()).join("state.json");
    let gone = format!(
        r#"{{"registered":[{{"target_group":"old","id":"{}","weight":1,"zone":null,"mac":null}}],"deregistered":[]}}"#,
        backend_v4(2)
    );
    std::fs::write(&state, gone).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run starts");
    let s = spread(&lab, 30);
    assert_eq!(s.keys().collect::<Vec<_>>(), ["backend1"], "{s:?}");
    agent.stop().unwrap();
}

#[test]
fn forwarding_off_is_named_with_what_to_set() {
    let lab = lab("xag-l-");
    let off = lab
        .exec(
            Role::Lb,
            &["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=0"],
        )
        .expect("sysctl");
    assert!(off.status.success());
    let cfg = write_config(&lab, &config(&lab, &[(1, "a")], "", ""));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let (ok, status) = cli(&lab, &["status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains("warning     net.ipv4.conf.eth0.forwarding is 0")
            && status.contains("sysctl -w net.ipv4.conf.eth0.forwarding=1")
            && status.contains("node.gateway_mac"),
        "{status}"
    );
    // As it says: nothing reaches the targets until forwarding is on.
    let s = spread(&lab, 3);
    assert!(!s.keys().any(|k| k.starts_with("backend")), "{s:?}");
    lab.exec(
        Role::Lb,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"],
    )
    .expect("sysctl");
    let (_, status) = cli(&lab, &["status"]);
    assert!(!status.contains("warning"), "{status}");
    let s = spread(&lab, 10);
    assert_eq!(s.get("backend1"), Some(&10), "{s:?}");
    agent.stop().unwrap();
}

/// Reads `name` (with its labels) from one scrape of the lab's metrics address.
fn scrape(lab: &Lab, addr: &str, name: &str) -> (Option<f64>, String) {
    let mut s = in_netns(&lab.ns(Role::Lb), || TcpStream::connect(addr))
        .unwrap()
        .expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (code, body) = get(&mut s, "/metrics");
    assert_eq!(code, 200, "{body}");
    (sample(&body, name), body)
}

#[test]
fn listeners_keep_their_counters_when_a_reload_reorders_them_and_closed_connections_leave_the_flow_count()
 {
    let lab = lab("xag-m-");
    let metrics = "127.0.0.1:9102";
    let text = config(
        &lab,
        &[(1, "a"), (2, "a")],
        &format!("metrics_address = \"{metrics}\""),
        "",
    );
    let cfg = write_config(&lab, &text);
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let packets =
        |port: u16| format!("xlb_processed_packets_total{{listener=\"{VIP_V4}:{port}/Tcp\"}}");
    // Both health gauges exist for the group, the unhealthy one at 0.
    let (unhealthy, body) = scrape(
        &lab,
        metrics,
        "xlb_unhealthy_host_count{target_group=\"web\"}",
    );
    assert_eq!(unhealthy, Some(0.0), "{body}");
    // Twenty HTTP connections, each closed by its client; one echo connection held open.
    let s = spread(&lab, 20);
    assert_eq!(s.values().sum::<usize>(), 20, "{s:?}");
    let (conn, owner, index) = held_echo(&lab);
    // Summed over the target's states (it may still be in `initial`).
    let flows = |i: usize| -> f64 {
        let prefix = format!(
            "xlb_target_flows{{target_group=\"web\",target=\"{}\",",
            backend_v4(i)
        );
        let (_, body) = scrape(&lab, metrics, "");
        body.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for i in [1, 2] {
        let want = if i == index { 1.0 } else { 0.0 };
        let (_, body) = scrape(&lab, metrics, "");
        let shown: Vec<&str> = body
            .lines()
            .filter(|l| l.contains("target_flows"))
            .collect();
        assert_eq!(
            flows(i),
            want,
            "backend {i}; the echo connection is on {index}: {shown:?}"
        );
    }
    let http = scrape(&lab, metrics, &packets(HTTP_PORT))
        .0
        .expect("http packets");
    let echo = scrape(&lab, metrics, &packets(ECHO_PORT))
        .0
        .expect("echo packets");
    assert!(http > echo, "{http} {echo}");
    // The listeners change places in the file: each keeps its counters.
    let (head, rest) = text.split_at(text.find("\n[[listeners]]").unwrap());
    let mut listeners: Vec<&str> = rest.split_inclusive('\n').collect();
    let half = listeners.len() / 2;
    listeners.rotate_left(half);
    std::fs::write(&cfg, format!("{head}{}", listeners.concat())).unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(ok, "{out}");
    let (_, stats) = cli(&lab, &["stats"]);
    assert!(
        stats.find(&format!(":{ECHO_PORT}")) < stats.find(&format!(":{HTTP_PORT}")),
        "the reload took the new order: {stats}"
    );
    assert_eq!(scrape(&lab, metrics, &packets(HTTP_PORT)).0, Some(http));
    assert_eq!(scrape(&lab, metrics, &packets(ECHO_PORT)).0, Some(echo));
    assert_eq!(
        echo_owner(&conn).expect("the echo connection goes on"),
        owner
    );
    agent.stop().unwrap();
}

#[test]
fn the_cli_finds_the_agent_by_its_config_and_a_severed_link_is_replaced() {
    let lab = lab("xag-n-");
    let ns = lab.ns(Role::Lb);
    let ip = |args: &str| {
        let argv: Vec<&str> = ["ip", "-n", &ns]
            .into_iter()
            .chain(args.split(' '))
            .collect();
        let out = Command::new(argv[0]).args(&argv[1..]).output().expect("ip");
        assert!(out.status.success(), "{args}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let make = || {
        ip("link add sev0 type veth peer name sev1");
        ip("link set sev0 up");
        ip("link set sev1 up");
    };
    make();
    // The balancer on sev0; the CLI is given only the config.
    let text = config(&lab, &[(1, "a")], "", "").replace("\"eth0\"", "\"sev0\"");
    let cfg = write_config(&lab, &text);
    let xlb = |args: &[&str]| {
        let out = Command::new(xlb_bin().unwrap())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("run xlb");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let (ok, out) = xlb(&["status"]);
    assert!(ok, "status through the config's socket: {out}");
    agent.stop().unwrap();
    assert!(
        ip("link show sev0").contains("xdp"),
        "the link outlives the agent"
    );
    // The interface is deleted and made again: the kernel severs the pinned link.
    ip("link del sev0");
    make();
    assert!(!ip("link show sev0").contains("xdp"));
    let log = run_dir(lab.prefix()).join("agent.log");
    let agent = Agent::start_logged(&lab, &xlb_bin().unwrap(), &cfg, &log).expect("xlb run again");
    assert!(ip("link show sev0").contains("xdp"), "attached anew");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("severed") && text.contains("sev0"),
        "the log says what happened: {text}"
    );
    // `stop --detach` removes the config's pin directory.
    let pins = pin_dir(lab.prefix()).join("agent");
    assert!(pins.join("link").exists());
    let (ok, out) = xlb(&["stop", "--detach"]);
    assert!(ok, "{out}");
    assert!(out.contains(&pins.display().to_string()), "{out}");
    assert!(!pins.exists(), "{out}");
    drop(agent);
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !ip("link show sev0").contains("xdp")
    });
    assert!(gone, "detached");
}

/// The README's lab by hand: `xlb-lab up` with no options, `xlb run` started by hand, traffic;
/// `xlb-lab down` leaves nothing of the lab in bpffs.
#[test]
fn a_lab_brought_up_by_hand_forwards_and_goes_away_whole() {
    let prefix = "xag-o-";
    let xlb_lab = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xlb-lab"))
            .args(args)
            .args(["--prefix", prefix])
            .output()
            .expect("xlb-lab");
        assert!(out.status.success(), "xlb-lab {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    /// Takes the lab down however the test ends.
    struct Down<F: Fn(&[&str]) -> String>(F);
    impl<F: Fn(&[&str]) -> String> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)(&["down"]);
        }
    }
    xlb_lab(&["up", "--backends", "2"]);
    let down = Down(xlb_lab);
    let run = run_dir(prefix);
    let text = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}, {{ id = \"{}\" }}]\n\n\
         [[listeners]]\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        pin_dir(prefix).join("agent").display(),
        run.join("xlb.sock").display(),
        run.join("state.json").display(),
        backend_v4(1),
        backend_v4(2),
    );
    let cfg = run.join("xlb.toml");
    std::fs::write(&cfg, text).unwrap();
    let agent = Agent::start_in(
        &xlb_tests::lab::ns_name(prefix, Role::Lb),
        &xlb_bin().unwrap(),
        &cfg,
    )
    .expect("xlb run");
    let answers = in_netns(&xlb_tests::lab::ns_name(prefix, Role::Client), || {
        (0..10)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP_V4, HTTP_PORT)),
                    Duration::from_secs(2),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(
                    s,
                    "GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
                )?;
                let mut body = String::new();
                std::io::Read::read_to_string(&mut s, &mut body)?;
                Ok(body)
            })
            .collect::<std::io::Result<Vec<String>>>()
    })
    .unwrap()
    .expect("the VIP answers");
    assert!(answers.iter().all(|a| a.contains("backend")), "{answers:?}");
    agent.stop().unwrap();
    drop(down);
    assert!(!pin_dir(prefix).exists(), "the lab's pins are gone");
    // The roots go with the last lab: present only while another lab holds a directory there.
    for root in ["/sys/fs/bpf/xlb-lab", "/run/xlb-lab"] {
        let ok = (0..20).any(|_| {
            let left = std::fs::read_dir(root).map(|d| d.count());
            if matches!(left, Err(_) | Ok(1..)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
            false
        });
        assert!(ok, "{root} is left empty");
    }
}

/// What the operator reads: every reload (taken or refused) and every health change of a burst
/// leaves a log line; a registration of a target the file has is said to be in the file too.
#[test]
fn reloads_and_each_health_change_of_a_burst_are_logged() {
    let lab = lab("xag-p-");
    let check = "\n[target_groups.health_check]\nprotocol = \"TCP\"\ninterval_seconds = 5\n\
                 timeout_seconds = 2\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let text = config(&lab, &[(1, "a"), (2, "a"), (3, "a")], "", "");
    let text = text.replacen("\n\n[[listeners]]", &format!("{check}\n[[listeners]]"), 1);
    let cfg = write_config(&lab, &text);
    let log = run_dir(lab.prefix()).join("agent.log");
    let agent = Agent::start_logged(&lab, &xlb_bin().unwrap(), &cfg, &log).expect("xlb run");
    let logged = |what: &str, n: usize| -> String {
        let t0 = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches(what).count() >= n {
                return text;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{n} × {what:?} not in the log: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(ok, "{out}");
    logged("reloaded", 1);
    std::fs::write(&cfg, text.replace("port = 80\n", "port = 99999\n")).unwrap();
    let (ok, _) = cli(&lab, &["reload"]);
    assert!(!ok);
    logged("reload refused, keeping the running config", 1);
    std::fs::write(&cfg, &text).unwrap();
    // Two targets fail together: one burst of events, a line each.
    logged("to=healthy", 3);
    kill_backend(&lab, 1);
    kill_backend(&lab, 2);
    let text = logged("to=unhealthy", 2);
    for i in [1, 2] {
        assert!(
            text.lines()
                .any(|l| l.contains("to=unhealthy") && l.contains(&backend_v4(i).to_string())),
            "backend{i}: {text}"
        );
    }
    let id = backend_v4(3).to_string();
    let (ok, out) = cli(
        &lab,
        &["targets", "register", "--target-group", "web", "--id", &id],
    );
    assert!(ok, "{out}");
    let (_, status) = cli(&lab, &["status"]);
    assert!(
        status.contains(&format!("registered {id} in web (in the file too")),
        "{status}"
    );
    agent.stop().unwrap();
}

#[test]
fn top_shows_each_listener_and_target_while_traffic_flows_and_copes_with_none() {
    let lab = lab("xag-t-");
    let cfg = write_config(&lab, &config(&lab, &[(1, "a"), (2, "a")], "", ""));
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &cfg).expect("xlb run");
    let top = Command::new(xlb_bin().unwrap())
        .arg("--socket")
        .arg(api_socket(&lab))
        .args(["top", "--interval", "1", "--count", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xlb top");
    // Requests while it watches: bounded in count and time; `top` ends after three refreshes.
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) && sent < 3000 {
        sent += spread(&lab, 20).values().sum::<usize>();
    }
    let out = top.wait_with_output().expect("xlb top ends");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let screens: Vec<&str> = text
        .split("\x1b[2J\x1b[H")
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(screens.len(), 3, "{text}");
    let http = format!("{VIP_V4}:{HTTP_PORT}");
    // Rates: the listener's packets per second, and its targets', above zero while requests run.
    let rate = |line: &str| -> f64 { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    let busy = screens.iter().find(|s| {
        s.lines()
            .find(|l| l.starts_with(&http))
            .is_some_and(|l| rate(l) > 0.0)
    });
    let busy = busy.unwrap_or_else(|| panic!("no screen shows {http} busy: {text}"));
    assert!(busy.lines().next().unwrap().contains("packets/s"), "{busy}");
    // docs/operations.md shows one such screen.
    println!("{busy}");
    for i in [1, 2] {
        let target = busy
            .lines()
            .find(|l| l.trim_start().starts_with(&backend_v4(i).to_string()))
            .unwrap_or_else(|| panic!("target {i} missing: {busy}"));
        assert!(rate(target) > 0.0, "target {i} idle: {busy}");
    }
    // With no listener left, a refresh shows the header alone.
    let mut none = config(&lab, &[(1, "a")], "", "");
    none.truncate(none.find("\n[[listeners]]").unwrap());
    std::fs::write(&cfg, none).unwrap();
    let (ok, out) = cli(&lab, &["reload"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&lab, &["top", "--interval", "1", "--count", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains("packets/s") && !out.contains(&http), "{out}");
    agent.stop().unwrap();
}
