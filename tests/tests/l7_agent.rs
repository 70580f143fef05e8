//! The L7 tier inside the real agent: `xlb run` in the lab's lb namespace serves an HTTP
//! listener with ALB rules; a client in the client namespace talks to it with curl. Targets
//! registered and deregistered through the control API reach the L7 tier too, and a group without
//! a `health_check` block is checked with ALB's defaults. An agent started without L7 listeners
//! serves those a reload brings (HTTP, and NLB's TLS), and closes them when a reload takes them
//! away.

mod l7_support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use l7_support::{Pki, cert_entry, path as utf8};
use xlb_tests::{
    agent::{Agent, cli, http_spread, scrape, xlb_bin},
    lab::{CLIENT_V4, HTTP_PORT, LB_V4, Lab, LabSpec, Role, VIP_V4, backend_v4, pin_dir, run_dir},
};

#[test]
fn agent_serves_http_listener_with_rules_and_reloads_them() {
    let lab = Lab::up(LabSpec {
        prefix: "xl7a-".into(),
        backends: 3,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    // Backend 3 joins later, through the API.
    let targets: Vec<String> = (1..=2)
        .map(|i| format!("{{ id = \"{}\" }}", backend_v4(i)))
        .collect();
    let config = |body: &str| {
        format!(
            "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\
             metrics_address = \"127.0.0.1:9100\"\n\n\
             [[target_groups]]\nname = \"web\"\nprotocol = \"HTTP\"\nport = 80\ntargets = [{}]\n\n\
             [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
             default_action = {{ type = \"forward\", target_groups = [{{ name = \"web\" }}] }}\n\n\
             [[http_listeners.rules]]\npriority = 10\n\
             conditions = [{{ field = \"path-pattern\", values = [\"/maintenance*\"] }}]\n\
             actions = [{{ type = \"fixed-response\", status_code = 503, content_type = \"text/plain\", message_body = \"{body}\" }}]\n\n\
             [[http_listeners.rules]]\npriority = 20\n\
             conditions = [{{ field = \"host-header\", values = [\"old.example.com\"] }}]\n\
             actions = [{{ type = \"redirect\", host = \"new.example.com\", status_code = \"HTTP_301\" }}]\n",
            pin_dir(lab.prefix()).join("agent").display(),
            run_dir(lab.prefix()).join("xlb.sock").display(),
            run_dir(lab.prefix()).join("state.json").display(),
            targets.join(", ")
        )
    };
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, config("back soon")).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let url = format!("http://{LB_V4}:8080");
    let curl = |args: &[&str]| -> String {
        let mut argv = vec!["curl", "-sS", "--max-time", "5"];
        argv.extend_from_slice(args);
        let out = lab.exec(Role::Client, &argv).expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Forward: round robin over the targets; `forwards` counts requests for the metrics below.
    let mut forwards = 0;
    let mut answers = |n: usize| {
        forwards += n;
        (0..n)
            .map(|_| curl(&[&format!("{url}/")]).trim().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        answers(6),
        ["backend1", "backend2"].map(String::from).into()
    );
    // The API's registration and deregistration reach the L7 tier: backend 3 serves, and
    // backend 1, draining, gets no new requests.
    let xlb_cli = |args: &[&str]| {
        let (ok, out) = cli(&lab, args);
        assert!(ok, "xlb {args:?}: {out}");
    };
    let target_args = |verb: &'static str, i: usize| {
        let id = backend_v4(i).to_string();
        move || xlb_cli(&["targets", verb, "--target-group", "web", "--id", &id])
    };
    // A group without a health_check block is checked with ALB's defaults: its targets are
    // `initial` until their first check (staggered over the 30 s interval) passes, not
    // `unavailable` as unchecked targets are.
    let (_, listed) = cli(&lab, &["targets", "list"]);
    for i in 1..=2 {
        let row = listed
            .lines()
            .find(|l| l.contains(&backend_v4(i).to_string()))
            .unwrap_or_else(|| panic!("backend {i} not listed:\n{listed}"));
        let state = row.split_whitespace().nth(4);
        assert!(
            matches!(state, Some("initial" | "healthy")) && !row.contains("HealthCheckDisabled"),
            "{listed}"
        );
    }
    // The same as `aws elbv2 describe-target-health` shows it.
    let described = std::process::Command::new(xlb_bin().unwrap())
        .arg("--socket")
        .arg(run_dir(lab.prefix()).join("xlb.sock"))
        .args([
            "--output",
            "json",
            "targets",
            "health",
            "--target-group",
            "web",
        ])
        .output()
        .expect("xlb targets health");
    let described: serde_json::Value =
        serde_json::from_slice(&described.stdout).expect("JSON from xlb targets health");
    let descriptions = described["TargetHealthDescriptions"]
        .as_array()
        .expect("TargetHealthDescriptions");
    assert_eq!(descriptions.len(), 2, "{described}");
    for d in descriptions {
        let state = d["TargetHealth"]["State"].as_str().unwrap_or_default();
        assert!(matches!(state, "initial" | "healthy"), "{d}");
        assert_eq!(d["Target"]["Port"], 80, "{d}");
        if state == "initial" {
            assert_eq!(
                d["TargetHealth"]["Reason"], "Elb.InitialHealthChecking",
                "{d}"
            );
            assert_eq!(
                d["TargetHealth"]["Description"], "Initial health checks in progress.",
                "{d}"
            );
        }
    }
    target_args("register", 3)();
    assert_eq!(
        answers(9),
        ["backend1", "backend2", "backend3"]
            .map(String::from)
            .into()
    );
    target_args("deregister", 1)();
    assert_eq!(
        answers(6),
        ["backend2", "backend3"].map(String::from).into()
    );
    // Fixed response and redirect rules.
    let fixed = curl(&["-w", " %{http_code}", &format!("{url}/maintenance/x")]);
    assert_eq!(fixed, "back soon 503");
    let redirect = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: old.example.com",
        &format!("{url}/a?b=1"),
    ]);
    assert_eq!(redirect, "301 http://new.example.com:8080/a?b=1");
    // Reload swaps the rules in the running agent.
    std::fs::write(&path, config("still down")).unwrap();
    agent.reload().unwrap();
    let t0 = Instant::now();
    loop {
        let body = curl(&[&format!("{url}/maintenance")]);
        if body == "still down" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "reload not applied: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ALB's metrics on the agent's endpoint: every forward answered by a target.
    let metrics = scrape(&lab);
    let forwarded =
        format!("{{listener=\"{LB_V4}:8080\",rule=\"default\",target_group=\"web\"}} {forwards}");
    for name in [
        "xlb_request_count_total",
        "xlb_httpcode_target_2xx_count_total",
    ] {
        assert!(
            metrics.contains(&format!("{name}{forwarded}")),
            "{name}{forwarded} in\n{metrics}"
        );
    }
    let log = agent.stop().expect("xlb stops cleanly");
    assert!(
        log.lines()
            .any(|l| l.starts_with("http ") && l.contains("503")),
        "access log lines:\n{log}"
    );
}

/// ALB's request handling through the real agent, seen from the client and from the target:
/// `X-Amzn-Trace-Id`, `X-Forwarded-For` and `Host` as ALB forwards them, TRACE and over-long
/// `X-Forwarded-For` refused, `AWSALBCORS` beside `AWSALB`, and the access log on the agent's
/// stdout with the trace id and ALB's status codes.
#[test]
fn the_agent_forwards_and_refuses_requests_as_alb_does() {
    let lab = Lab::up(LabSpec {
        prefix: "xl7b-".into(),
        backends: 1,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let config = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"HTTP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\
         attributes = {{ \"stickiness.enabled\" = \"true\", \"stickiness.type\" = \"lb_cookie\" }}\n\n\
         [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        run_dir(lab.prefix()).join("xlb.sock").display(),
        run_dir(lab.prefix()).join("state.json").display(),
        backend_v4(1),
    );
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, config).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let url = format!("http://{LB_V4}:8080");
    // `curl -i`: the status line and headers, then the body.
    let curl = |args: &[&str]| -> String {
        let mut argv = vec!["curl", "-sS", "-i", "--max-time", "5"];
        argv.extend_from_slice(args);
        let out = lab.exec(Role::Client, &argv).expect("curl");
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let seen = curl(&[
        "-H",
        "Host: shop.example",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        &format!("{url}/headers"),
    ]);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let header = |name: &str| {
        seen.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no {name} in\n{seen}"))
            .to_owned()
    };
    let trace = header("x-amzn-trace-id");
    assert!(trace.starts_with("Root=1-") && trace.len() == 40, "{trace}");
    assert_eq!(
        header("x-forwarded-for"),
        format!("203.0.113.9, {CLIENT_V4}")
    );
    // Not port 80: ALB adds the listener's port to a Host without one.
    assert_eq!(header("host"), "shop.example:8080");
    let cookies: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("AWSALB="))
            && cookies
                .iter()
                .any(|c| c.starts_with("AWSALBCORS=") && c.ends_with("SameSite=None; Secure")),
        "{cookies:?}"
    );
    let trace_refused = curl(&["-X", "TRACE", &format!("{url}/")]);
    assert!(trace_refused.starts_with("HTTP/1.1 405"), "{trace_refused}");
    let chain: Vec<String> = (0..31).map(|i| format!("192.0.2.{i}")).collect();
    let long = curl(&[
        "-H",
        &format!("X-Forwarded-For: {}", chain.join(", ")),
        &format!("{url}/"),
    ]);
    assert!(long.starts_with("HTTP/1.1 463"), "{long}");
    let log = agent.stop().expect("xlb stops cleanly");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("http ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 200 200 ") && l.contains(&format!("\"{trace}\""))),
        "the trace id the target got is logged:\n{log}"
    );
    for status in [" 405 - ", " 463 - "] {
        assert!(
            lines.iter().any(|l| l.contains(status)),
            "{status} in\n{log}"
        );
    }
}

/// The L7 tier follows reloads in an agent that started without it: a reload that brings the
/// first HTTP listener, then a TLS listener (NLB's, served by the proxy), binds them, and
/// `xlb targets list` shows the L7 tier's checks; a reload that takes them away closes their
/// sockets. The L4 listener serves throughout.
#[test]
fn a_reload_brings_the_first_l7_listeners_and_takes_them_away() {
    let lab = Lab::up(LabSpec {
        prefix: "xl7r-".into(),
        backends: 2,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let pki = Pki::new("agent-reload");
    let leaf = pki.leaf("lb", &["lb.example"]);
    let l4 = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"vip\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\n\
         [[listeners]]\naddress = \"{VIP_V4}\"\nport = 80\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"vip\" }}\n\n",
        pin_dir(lab.prefix()).join("agent").display(),
        run_dir(lab.prefix()).join("xlb.sock").display(),
        run_dir(lab.prefix()).join("state.json").display(),
        backend_v4(1),
    );
    let http = format!(
        "[[target_groups]]\nname = \"web\"\nprotocol = \"HTTP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\n\
         [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n",
        backend_v4(1),
    );
    let tls = format!(
        "[[target_groups]]\nname = \"clear\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\n\
         [[listeners]]\naddress = \"{LB_V4}\"\nport = 8443\nprotocol = \"TLS\"\n\
         certificates = [{}]\n\
         default_action = {{ type = \"forward\", target_group = \"clear\" }}\n\n",
        backend_v4(2),
        cert_entry(&leaf),
    );
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, &l4).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let vip = SocketAddr::from((VIP_V4, HTTP_PORT));
    let l4_serves = || {
        let spread = http_spread(&lab, vip, 3).expect("client");
        assert_eq!(spread.get("backend1"), Some(&3), "{spread:?}");
    };
    l4_serves();
    let http_url = format!("http://{LB_V4}:8080/");
    let tls_url = "https://lb.example:8443/";
    let resolve = format!("lb.example:8443:{LB_V4}");
    // curl's exit code and body: 0 with the backend's name, 7 when the port refuses.
    let curl = |args: &[&str]| -> (Option<i32>, String) {
        let mut argv = vec!["curl", "-sS", "--max-time", "5"];
        argv.extend_from_slice(args);
        let out = lab.command(Role::Client, &argv).output().expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.code(), body)
    };
    let get_http = || curl(&[&http_url]);
    let get_tls = || curl(&["--cacert", utf8(&pki.ca()), "--resolve", &resolve, tls_url]);
    // A reload returns once the agent has it; the L7 tier binds just after.
    let soon = |what: &str, get: &dyn Fn() -> (Option<i32>, String), want: (Option<i32>, &str)| {
        let t0 = Instant::now();
        loop {
            let (code, body) = get();
            if (code, body.as_str()) == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{what}: curl exited {code:?} with {body:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let refused = (Some(7), "");
    assert_eq!(get_http(), (Some(7), String::new()), "nothing on 8080 yet");

    std::fs::write(&path, format!("{l4}{http}")).unwrap();
    agent.reload().expect("reload");
    soon("the first HTTP listener", &get_http, (Some(0), "backend1"));
    // `xlb targets list` shows the L7 tier's check of the new group's target.
    let listed = std::process::Command::new(xlb_bin().unwrap())
        .arg("--socket")
        .arg(run_dir(lab.prefix()).join("xlb.sock"))
        .args(["targets", "list", "--target-group", "web"])
        .output()
        .expect("xlb targets list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let row = listed
        .lines()
        .find(|l| l.contains(&backend_v4(1).to_string()))
        .unwrap_or_else(|| panic!("backend 1 not listed:\n{listed}"));
    assert!(
        matches!(row.split_whitespace().nth(4), Some("initial" | "healthy"))
            && !row.contains("HealthCheckDisabled"),
        "{listed}"
    );

    std::fs::write(&path, format!("{l4}{http}{tls}")).unwrap();
    agent.reload().expect("reload");
    soon("a TLS listener", &get_tls, (Some(0), "backend2"));
    assert_eq!(get_http(), (Some(0), "backend1".to_owned()));

    std::fs::write(&path, &l4).unwrap();
    agent.reload().expect("reload");
    soon("the HTTP listener removed", &get_http, refused);
    soon("the TLS listener removed", &get_tls, refused);
    l4_serves();
    agent.stop().expect("xlb stops cleanly");
}
