//! Target health in the L7 tier: health checks take a stopped or failing target out of its group
//! within the check's detection time, a group whose targets all fail opens to all of them, a
//! target that recovers ramps up under slow start, and `app_cookie` stickiness keeps a client on
//! the target that set the application cookie while that target is healthy.
//!
//! Targets are hyper servers on 127.0.0.1 that the tests stop, restart, or make fail their
//! health check (`/health` answers 503) while still serving traffic. Checks run every second,
//! below AWS's 5 s minimum that only the config file refuses, to keep the tests short. The last
//! test runs the real agent in a lab of network namespaces and reads `xlb targets list`.

mod l7_support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use l7_support::{Lab, free_port, l7_config};
use lb_health::State;
use lb_l7::L7Config;
use tokio::{net::TcpListener, task::JoinSet};

/// The application cookie of the `app_cookie` test.
const APP_COOKIE: &str = "SESSION";
/// Health checks every `INTERVAL_SECONDS`, `THRESHOLD` results in a row to change state.
const INTERVAL_SECONDS: u32 = 1;
const THRESHOLD: u32 = 2;
/// The longest a change may take to be seen: `THRESHOLD` intervals, one more for the first
/// probe to come, and slack for a loaded machine.
const DETECTION: Duration = Duration::from_secs(5);

/// A target the test controls: it answers with its name in `x-backend`, `/login` also sets the
/// application cookie, and `/health` answers 503 while `failing` is set.
struct Backend {
    name: &'static str,
    port: u16,
    failing: Arc<AtomicBool>,
    /// The accept loop; aborting it closes the listener and every connection.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    fn start(lab: &Lab, name: &'static str) -> Backend {
        let mut b = Backend {
            name,
            port: 0,
            failing: Arc::default(),
            task: None,
        };
        b.restart(lab);
        b
    }

    /// Listens again, on the same port once it has one.
    fn restart(&mut self, lab: &Lab) {
        let (name, failing, port) = (self.name, self.failing.clone(), self.port);
        let (port, task) = lab.block_on(async move {
            let socket = TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind backend");
            let port = socket.local_addr().expect("backend address").port();
            let task = tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = socket.accept().await else {
                        continue;
                    };
                    let failing = failing.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| answer(name, failing.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            });
            (port, task)
        });
        self.port = port;
        self.task = Some(task);
    }

    /// Closes the listener and every open connection: the port refuses connections.
    fn stop(&mut self, lab: &Lab) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = lab.block_on(task);
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

async fn answer(
    name: &'static str,
    failing: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut resp = Response::builder().header("x-backend", name);
    if req.uri().path() == "/health" && failing.load(Ordering::Relaxed) {
        resp = resp.status(503);
    }
    if req.uri().path() == "/login" {
        resp = resp.header("set-cookie", format!("{APP_COOKIE}={name}-session; Path=/"));
    }
    Ok(resp.body(Full::new(Bytes::from(name))).expect("response"))
}

/// What one request got.
#[derive(Debug)]
struct Reply {
    /// 0 when there was no HTTP answer.
    status: u16,
    backend: String,
    set_cookies: Vec<String>,
}

/// One `GET path` on a new connection (2 s at most), with `cookie` if given.
fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Reply {
    let exchange = || -> std::io::Result<String> {
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: xlb\r\n{cookie}Connection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let text = exchange().unwrap_or_default();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut backend = String::new();
    let mut set_cookies = Vec::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        match k.trim().to_ascii_lowercase().as_str() {
            "x-backend" => backend = v.trim().to_owned(),
            "set-cookie" => set_cookies.push(v.trim().to_owned()),
            _ => {}
        }
    }
    Reply {
        status,
        backend,
        set_cookies,
    }
}

/// `n` requests to `/`: how many each backend answered; failures count under their status.
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = get(addr, "/", None);
        let key = if r.status == 200 {
            r.backend
        } else {
            format!("status {}", r.status)
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Sends a request every 50 ms until `done` holds for `in_a_row` answers in a row; returns
/// how long that took from `since`. Panics after `DETECTION`.
fn until(
    addr: SocketAddr,
    since: Instant,
    in_a_row: usize,
    done: impl Fn(&Reply) -> bool,
) -> Duration {
    let mut run = 0;
    while run < in_a_row {
        assert!(since.elapsed() < DETECTION, "not seen within {DETECTION:?}");
        let r = get(addr, "/", None);
        run = if done(&r) { run + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50));
    }
    since.elapsed()
}

/// Waits (`DETECTION` at most) until the health checker reports `backend` in `state`.
fn wait_state(lab: &Lab, backend: &Backend, state: State) -> Duration {
    let since = Instant::now();
    loop {
        let now = lab
            .health()
            .into_iter()
            .find(|s| s.target == backend.addr())
            .map(|s| s.health.state);
        if now == Some(state) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < DETECTION,
            "{} is {now:?}, not {state} after {DETECTION:?}",
            backend.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A group of `backends` with HTTP health checks on `/health` every second, and an HTTP
/// listener forwarding to it; returns the config and the listener's address.
fn config(backends: &[&Backend], attributes: &str) -> (L7Config, SocketAddr) {
    let port = free_port();
    let targets: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ id = \"127.0.0.1\", port = {} }}", b.port))
        .collect();
    let toml = format!(
        r#"
[[target_groups]]
name = "web"
protocol = "HTTP"
port = 1
targets = [{}]
attributes = {{ {attributes} }}
health_check = {{ protocol = "HTTP", path = "/health", healthy_threshold = {THRESHOLD}, unhealthy_threshold = {THRESHOLD} }}

[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "HTTP"
default_action = {{ type = "forward", target_group = "web" }}
"#,
        targets.join(", ")
    );
    let mut cfg = l7_config(&toml);
    let hc = cfg.target_groups[0]
        .health_check
        .as_mut()
        .expect("a health check");
    hc.interval_seconds = INTERVAL_SECONDS;
    hc.timeout_seconds = INTERVAL_SECONDS;
    (cfg, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn a_stopped_target_is_taken_out_and_requests_keep_succeeding() {
    let mut lab = Lab::new();
    let a = Backend::start(&lab, "a");
    let mut b = Backend::start(&lab, "b");
    let (cfg, lb) = config(&[&a, &b], "");
    lab.start_config(cfg);
    wait_state(&lab, &b, State::Healthy);
    let both = spread(lb, 10);
    assert_eq!(both, BTreeMap::from([("a".into(), 5), ("b".into(), 5)]));

    b.stop(&lab);
    let stopped = Instant::now();
    // Requests that reach b before the checks notice get a 502; then only a answers.
    let took = until(lb, stopped, 10, |r| r.status == 200 && r.backend == "a");
    println!("stopped target out of service after {took:?}");
    let unhealthy = wait_state(&lab, &b, State::Unhealthy);
    println!("checker reported unhealthy {unhealthy:?} later");
    assert_eq!(spread(lb, 20), BTreeMap::from([("a".into(), 20)]));
    let status = lab
        .health()
        .into_iter()
        .find(|s| s.target == b.addr())
        .expect("b is checked");
    assert_eq!(
        status.health.reason.map(|r| r.to_string()).as_deref(),
        Some("Target.FailedHealthChecks")
    );

    // Back on its port: healthy after `THRESHOLD` checks, and in service again.
    b.restart(&lab);
    wait_state(&lab, &b, State::Healthy);
    assert_eq!(
        spread(lb, 10),
        BTreeMap::from([("a".into(), 5), ("b".into(), 5)])
    );
}

#[test]
fn a_group_whose_targets_all_fail_opens_to_all() {
    let mut lab = Lab::new();
    let a = Backend::start(&lab, "a");
    let b = Backend::start(&lab, "b");
    let (cfg, lb) = config(&[&a, &b], "");
    lab.start_config(cfg);
    wait_state(&lab, &a, State::Healthy);
    wait_state(&lab, &b, State::Healthy);

    a.failing.store(true, Ordering::Relaxed);
    wait_state(&lab, &a, State::Unhealthy);
    assert_eq!(spread(lb, 10), BTreeMap::from([("b".into(), 10)]));

    // Both fail their checks but still serve: ALB routes to all of them.
    b.failing.store(true, Ordering::Relaxed);
    wait_state(&lab, &b, State::Unhealthy);
    assert_eq!(
        spread(lb, 10),
        BTreeMap::from([("a".into(), 5), ("b".into(), 5)])
    );
}

#[test]
fn a_recovered_target_ramps_up_under_slow_start() {
    let mut lab = Lab::new();
    let a = Backend::start(&lab, "a");
    let b = Backend::start(&lab, "b");
    let (mut cfg, lb) = config(&[&a, &b], r#""slow_start.duration_seconds" = "30""#);
    // A 6 s ramp, below the 30 s minimum the file allows, keeps the test short.
    let ramp = Duration::from_secs(6);
    cfg.target_groups[0].attributes.insert(
        "slow_start.duration_seconds".into(),
        ramp.as_secs().to_string(),
    );
    lab.start_config(cfg);
    // The group's first targets take full shares at once.
    wait_state(&lab, &b, State::Healthy);
    assert_eq!(
        spread(lb, 10),
        BTreeMap::from([("a".into(), 5), ("b".into(), 5)])
    );

    b.failing.store(true, Ordering::Relaxed);
    wait_state(&lab, &b, State::Unhealthy);
    b.failing.store(false, Ordering::Relaxed);
    wait_state(&lab, &b, State::Healthy);
    let recovered = Instant::now();
    // Three windows along the ramp: b's share grows from near nothing to half.
    let mut shares = Vec::new();
    for at in [Duration::ZERO, ramp / 2, ramp + Duration::from_millis(500)] {
        std::thread::sleep(at.saturating_sub(recovered.elapsed()));
        let started = recovered.elapsed();
        let got = spread(lb, 100);
        let b_share = got.get("b").copied().unwrap_or(0);
        assert_eq!(got.values().sum::<usize>(), 100, "{got:?}");
        assert_eq!(b_share + got.get("a").copied().unwrap_or(0), 100, "{got:?}");
        println!(
            "slow start: {b_share}% to b in {started:?}..{:?} after it recovered",
            recovered.elapsed()
        );
        shares.push(b_share);
    }
    assert!(shares[0] < 25, "b took {}% at once", shares[0]);
    assert!(
        shares[0] < shares[1] && shares[1] < shares[2],
        "no ramp: {shares:?}"
    );
    assert!(
        (45..=55).contains(&shares[2]),
        "not a full share: {shares:?}"
    );
}

#[test]
fn app_cookie_keeps_a_client_on_its_target_while_it_is_healthy() {
    let mut lab = Lab::new();
    let a = Backend::start(&lab, "a");
    let b = Backend::start(&lab, "b");
    let attributes = format!(
        r#""stickiness.enabled" = "true", "stickiness.type" = "app_cookie", "stickiness.app_cookie.cookie_name" = "{APP_COOKIE}", "stickiness.app_cookie.duration_seconds" = "120""#
    );
    let (cfg, lb) = config(&[&a, &b], &attributes);
    lab.start_config(cfg);

    // No application cookie, no AWSALBAPP cookie.
    let plain = get(lb, "/", None);
    assert_eq!(plain.status, 200);
    assert!(plain.set_cookies.is_empty(), "{plain:?}");

    let login = get(lb, "/login", None);
    let pinned = login.backend.clone();
    let app = login
        .set_cookies
        .iter()
        .find(|c| c.starts_with("AWSALBAPP-0="))
        .unwrap_or_else(|| panic!("no AWSALBAPP-0 cookie: {login:?}"));
    assert!(app.contains("; Expires="), "{app}");
    assert!(
        login.set_cookies.iter().any(|c| c.starts_with(APP_COOKIE)),
        "the target's own cookie is passed on: {login:?}"
    );
    let expires = app
        .split("Expires=")
        .nth(1)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("");
    let expires = httpdate::parse_http_date(expires).expect("an HTTP date");
    let week = Duration::from_secs(7 * 86_400);
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > week - Duration::from_secs(60) && left <= week,
        "AWSALBAPP expires in {left:?}, not ALB's 7 days"
    );
    // The client sends both cookies back, as with ALB.
    let both = format!("{APP_COOKIE}=x; {}", app.split(';').next().unwrap_or(""));
    for _ in 0..6 {
        let r = get(lb, "/", Some(&both));
        assert_eq!((r.status, r.backend.as_str()), (200, pinned.as_str()));
    }
    // Without the application's cookie, or without ours, round robin.
    let mut seen = std::collections::BTreeSet::new();
    for cookie in [None, Some(app.split(';').next().unwrap_or(""))] {
        for _ in 0..2 {
            seen.insert(get(lb, "/", cookie).backend);
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The pinned target fails its checks: the cookie no longer holds.
    let (pinned_backend, other) = if pinned == "a" { (&a, "b") } else { (&b, "a") };
    pinned_backend.failing.store(true, Ordering::Relaxed);
    wait_state(&lab, pinned_backend, State::Unhealthy);
    for _ in 0..4 {
        let r = get(lb, "/", Some(&both));
        assert_eq!((r.status, r.backend.as_str()), (200, other));
    }
}

/// The real agent (`xlb run` in a lab's lb namespace) checks its HTTP target group and lists
/// the targets' health with `xlb targets list`; a target that refuses connections is taken out
/// and every request still succeeds. Run as root.
#[test]
fn agent_lists_l7_target_health() {
    use xlb_tests::{
        agent::{Agent, xlb_bin},
        lab::{LB_V4, Lab as NetLab, LabSpec, Role, backend_v4, pin_dir, run_dir},
    };
    let lab = NetLab::up(LabSpec {
        prefix: "xl7h-".into(),
        backends: 2,
        server_bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    // backend1 and backend2 serve HTTP on port 80; nothing listens on backend1's port 81.
    let dead = SocketAddr::from((backend_v4(1), 81));
    let socket = run_dir(lab.prefix()).join("xlb.sock");
    let config = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"HTTP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}, {{ id = \"{}\" }}, {{ id = \"{}\", port = {} }}]\n\
         health_check = {{ interval_seconds = 5, timeout_seconds = 2, unhealthy_threshold = 2 }}\n\n\
         [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        socket.display(),
        run_dir(lab.prefix()).join("state.json").display(),
        backend_v4(1),
        backend_v4(2),
        dead.ip(),
        dead.port(),
    );
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, config).expect("write config");
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let list = || -> Vec<serde_json::Value> {
        let out = std::process::Command::new(xlb_bin().unwrap())
            .arg("--socket")
            .arg(&socket)
            .args(["targets", "list", "--json"])
            .output()
            .expect("run xlb targets list");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        })
    };
    let state_of = |rows: &[serde_json::Value], addr: SocketAddr| -> (String, String, bool) {
        let row = rows
            .iter()
            .find(|r| r["id"] == addr.ip().to_string() && r["port"] == addr.port())
            .unwrap_or_else(|| panic!("{addr} not listed: {rows:?}"));
        (
            row["state"].as_str().unwrap_or("").to_owned(),
            row["reason"].as_str().unwrap_or("-").to_owned(),
            row["in_service"].as_bool().unwrap_or(false),
        )
    };
    // Interval 5 s × unhealthy threshold 2, plus a probe: 13 s at most.
    let started = Instant::now();
    let rows = loop {
        let rows = list();
        if state_of(&rows, dead).0 == "unhealthy" {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(13),
            "{dead} not unhealthy: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("agent: {dead} unhealthy after {:?}", started.elapsed());
    assert_eq!(
        state_of(&rows, dead),
        (
            "unhealthy".into(),
            "Target.FailedHealthChecks".into(),
            false
        )
    );
    for i in [1, 2] {
        let (state, _, in_service) = state_of(&rows, SocketAddr::from((backend_v4(i), 80)));
        assert!(
            state == "healthy" || state == "initial",
            "backend{i}: {state}"
        );
        assert!(in_service);
    }
    let url = format!("http://{LB_V4}:8080/");
    let mut answers = BTreeMap::new();
    for _ in 0..8 {
        let out = lab
            .exec(
                Role::Client,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    "-w",
                    " %{http_code}",
                    &url,
                ],
            )
            .expect("curl");
        *answers
            .entry(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 2, "both live targets answer: {answers:?}");
    assert!(answers.keys().all(|a| a.ends_with(" 200")), "{answers:?}");
    agent.stop().expect("xlb stops cleanly");
}

/// An HTTPS target group is checked by the L7 tier only, on each target's own port: the L4
/// checker once checked it too, on the group's port, and took its targets out. Run as root.
#[test]
fn an_https_group_is_checked_by_the_l7_tier_alone() {
    use xlb_tests::{
        agent::{Agent, xlb_bin},
        lab::{LB_V4, Lab as NetLab, LabSpec, backend_v4, pin_dir, run_dir},
    };
    let lab = NetLab::up(LabSpec {
        prefix: "xl7s-".into(),
        backends: 1,
        server_bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    // The target's own port (80) answers the HTTP check; the group's port (443) counts who
    // connects to it.
    let group_port = xlb_tests::lab::in_netns(&lab.ns(xlb_tests::lab::Role::Backend(1)), || {
        let l = std::net::TcpListener::bind(("0.0.0.0", 443)).expect("bind 443");
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
    .expect("in the backend's namespace");
    let socket = run_dir(lab.prefix()).join("xlb.sock");
    let config = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"api\"\nprotocol = \"HTTPS\"\nport = 443\n\
         targets = [{{ id = \"{}\", port = 80 }}]\n\
         health_check = {{ protocol = \"HTTP\", interval_seconds = 5, timeout_seconds = 2, \
         healthy_threshold = 2, unhealthy_threshold = 2 }}\n\n\
         [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"api\" }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        socket.display(),
        run_dir(lab.prefix()).join("state.json").display(),
        backend_v4(1),
    );
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, config).expect("write config");
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let states = || -> Vec<String> {
        let out = std::process::Command::new(xlb_bin().unwrap())
            .arg("--socket")
            .arg(&socket)
            .args(["targets", "list", "--json"])
            .output()
            .expect("run xlb targets list");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        rows.iter()
            .map(|r| r["state"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // Checks come every 5 s: in 12 s, two or three, all on port 80.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        let s = states();
        assert_eq!(s.len(), 1, "one row for the one target: {s:?}");
        assert_ne!(s[0], "unhealthy", "after {:?}", started.elapsed());
        if let Ok((_, from)) = group_port.accept() {
            panic!("a check on the group's port 443, from {from}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(states(), vec!["healthy".to_owned()]);
    agent.stop().expect("xlb stops cleanly");
}
