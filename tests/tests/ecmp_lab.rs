//! Several xlb nodes behind ECMP (`xlb_tests::cluster`): a router running BIRD learns the VIPs
//! from the BIRD that each node's `xlb run` drives, and spreads flows over the nodes by an L4
//! hash. Real BGP, real BFD, real routes in the router's kernel, real TCP from the client.
//!
//! - New connections spread over the nodes and over the targets.
//! - A node dies (link down, BIRD and agent killed) under 500 held connections: the router drops
//!   it within BFD's second, and every connection goes on with its target, those that went
//!   through the dead node included, because every node's tables agree.
//! - The same while a target is added, or removed: every connection goes on too. The surviving
//!   nodes have no entry for the dead node's flows and their tables changed, so they tunnel
//!   those to the new table's target naming the previous one (second chance); a target with no
//!   socket for such a packet sends it on to the target named.
//! - A rolling upgrade (drain, stop, start, node by node) under load fails no request.
//! - A node that cannot reach its targets finds them unhealthy and withdraws; traffic moves to
//!   the others.
//!
//! Run as root with BIRD 2 installed (`cargo xtask setup`). The tests take turns: each one
//! measures timings (BFD's second) that two clusters at once on a small machine would blur.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{http_get, http_spread, xlb_bin},
    cluster::{Cluster, ClusterSpec},
    lab::{ECHO_PORT, HTTP_PORT, Role, VIP_V4, VIP_V6, in_netns, node_v4, node_v6},
};

/// One cluster at a time (see the crate doc).
static TURN: Mutex<()> = Mutex::new(());

/// The echo listener the held connections use.
const ECHO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(VIP_V4), ECHO_PORT);
const HTTP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(VIP_V4), HTTP_PORT);

fn cluster(prefix: &str, nodes: usize, backends: usize, targets: &[usize], extra: &str) -> Cluster {
    Cluster::up(ClusterSpec {
        prefix: prefix.into(),
        nodes,
        backends,
        targets: targets.to_vec(),
        group_extra: extra.into(),
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: xlb_bin().expect("xlb binary"),
    })
    .expect("cluster up")
}

/// New flows each node's datapath counted, all listeners together (index 0 is node 1).
fn flows_per_node(c: &Cluster) -> Vec<u64> {
    (1..=c.nodes())
        .map(|i| {
            c.new_flows(i)
                .unwrap_or_else(|e| panic!("stats of node{i}: {e:#}"))
                .values()
                .sum()
        })
        .collect()
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Asserts that each count is within 20 % of an even share of their sum.
fn assert_even(what: &str, counts: &[u64]) {
    let total: u64 = counts.iter().sum();
    let share = total as f64 / counts.len() as f64;
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            (n as f64 - share).abs() <= 0.2 * share,
            "{what} {}: {n} of {total}, not within 20 % of {share:.0}: {counts:?}",
            i + 1
        );
    }
}

/// A connection to the echo listener held open.
struct Held {
    stream: TcpStream,
    /// The backend that answered its first line.
    backend: String,
}

/// New flows of the echo listener on each node (index 0 is node 1; 0 for a dead node).
fn echo_flows(c: &Cluster) -> Vec<u64> {
    let listener = format!("{ECHO}/Tcp");
    (1..=c.nodes())
        .map(|i| {
            c.new_flows(i)
                .map_or(0, |f| f.get(&listener).copied().unwrap_or(0))
        })
        .collect()
}

/// Opens `n` echo connections from the client, one at a time, each answered once; returns them
/// with the node (1-based) each took: the one whose datapath counted its new flow.
fn hold(c: &Cluster, n: usize) -> (Vec<Held>, Vec<usize>) {
    in_netns(&c.lab().ns(Role::Client), || {
        let mut last = echo_flows(c);
        (0..n)
            .map(|k| {
                let stream = TcpStream::connect_timeout(&ECHO, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {k}: {e}"));
                let mut held = Held {
                    stream,
                    backend: String::new(),
                };
                held.backend = exchange(&mut held, Instant::now() + Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {k}: {e}"));
                let now = echo_flows(c);
                let took: Vec<usize> = (0..now.len()).filter(|&i| now[i] != last[i]).collect();
                assert!(
                    took.len() == 1 && now[took[0]] == last[took[0]] + 1,
                    "connection {k}: new flows went from {last:?} to {now:?}"
                );
                last = now;
                (held, took[0] + 1)
            })
            .unzip()
    })
    .expect("client namespace")
}

/// Sends a line and reads the echo by `deadline`; returns the backend's name.
fn exchange(h: &mut Held, deadline: Instant) -> Result<String, String> {
    h.stream.write_all(b"ping\n").map_err(|e| e.to_string())?;
    read_echo(h, deadline)
}

fn read_echo(h: &mut Held, deadline: Instant) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        // Past the deadline, one more short read: connections read after a slow one may
        // have had their echo for a while.
        let left = deadline.saturating_duration_since(Instant::now());
        h.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match h.stream.read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if left.is_zero() {
                    return Err(format!("no echo by the deadline ({got:?} so far)"));
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&got);
    match line.trim_end().split_once(": ") {
        Some((name, "ping")) => Ok(name.to_owned()),
        _ => Err(format!("unexpected echo {line:?}")),
    }
}

/// Sends a line on every connection at once, then reads every echo within `wait`: whether each
/// connection goes on with the backend it had.
fn survivors(held: &mut [Held], wait: Duration) -> Vec<Result<(), String>> {
    let sent: Vec<Result<(), String>> = held
        .iter_mut()
        .map(|h| h.stream.write_all(b"ping\n").map_err(|e| e.to_string()))
        .collect();
    let deadline = Instant::now() + wait;
    held.iter_mut()
        .zip(sent)
        .map(|(h, sent)| {
            sent?;
            let now = read_echo(h, deadline)?;
            if now == h.backend {
                Ok(())
            } else {
                Err(format!("moved from {} to {now}", h.backend))
            }
        })
        .collect()
}

fn count_by<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for item in items {
        *m.entry(item).or_insert(0) += 1;
    }
    m
}

#[test]
fn new_connections_spread_over_the_nodes_and_the_targets() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster("xec1-", 3, 3, &[1, 2, 3], "");
    c.wait_route(VIP_V6.into(), &[1, 2, 3], Duration::from_secs(10))
        .expect("the IPv6 VIP over every node");
    let before = flows_per_node(&c);
    let n = 1200;
    let spread = http_spread(c.lab(), HTTP, n).expect("client");
    let per_node = delta(&flows_per_node(&c), &before);
    println!("{n} connections: per node {per_node:?}, per target {spread:?}");
    assert_eq!(
        spread.keys().filter(|k| k.starts_with("error")).count(),
        0,
        "{spread:?}"
    );
    assert_eq!(per_node.iter().sum::<u64>(), n as u64, "{per_node:?}");
    assert_even("node", &per_node);
    let per_target: Vec<u64> = (1..=3)
        .map(|b| spread.get(&format!("backend{b}")).copied().unwrap_or(0) as u64)
        .collect();
    assert_even("backend", &per_target);
    // IPv6 takes the same way: its own sessions, its own multipath route.
    let before = flows_per_node(&c);
    let spread6 = http_spread(c.lab(), SocketAddr::from((VIP_V6, HTTP_PORT)), 300).unwrap();
    let per_node6 = delta(&flows_per_node(&c), &before);
    println!("300 IPv6 connections: per node {per_node6:?}, per target {spread6:?}");
    assert_eq!(spread6.values().sum::<usize>(), 300);
    assert!(
        spread6.keys().all(|k| k.starts_with("backend")),
        "{spread6:?}"
    );
    assert!(per_node6.iter().all(|&k| k > 0), "{per_node6:?}");
}

/// What happens to the target set when the node dies.
#[derive(Clone, Copy, Debug)]
enum Change {
    None,
    /// Backend 4 is registered on the surviving nodes.
    Add,
    /// Backend 3 is deregistered on the surviving nodes.
    Remove,
}

/// Kills node 2 under 500 held connections (with `change` on the others at the same moment) and
/// returns, per connection, whether it went through the dead node and whether it survived; and
/// the packets the surviving nodes sent with a second chance.
///
/// Node 2 is the middle one of the router's three next hops: the kernel's ECMP (hash-threshold)
/// then gives its share of the hash to nodes 1 and 3 and moves no other flow, so the connections
/// through nodes 1 and 3 stay where they are.
fn kill_under_held_connections(prefix: &str, change: Change) -> (Vec<(bool, bool)>, u64) {
    let mut c = cluster(prefix, 3, 4, &[1, 2, 3], "");
    let (mut held, was) = hold(&c, 500);
    let per_node = count_by(was.iter().copied());
    assert_eq!(
        per_node.len(),
        3,
        "every node took connections: {per_node:?}"
    );
    let dead = 2;
    match change {
        Change::None => {}
        Change::Add => [1, 3]
            .iter()
            .for_each(|&i| c.register(i, 4).expect("register")),
        Change::Remove => [1, 3]
            .iter()
            .for_each(|&i| c.deregister(i, 3).expect("deregister")),
    }
    c.kill_node(dead).expect("kill node 2");
    let t0 = Instant::now();
    // Traffic goes on at once: what is sent to the dead node before the router knows is lost
    // and retransmitted.
    let results = {
        let ns = c.lab().ns(Role::Client);
        let held = &mut held;
        std::thread::scope(|s| {
            let client = s.spawn(|| {
                in_netns(&ns, || survivors(held, Duration::from_secs(15))).expect("client")
            });
            let gone = c
                .wait_route(VIP_V4.into(), &[1, 3], Duration::from_secs(10))
                .expect("the router drops the dead node");
            println!(
                "{change:?}: node{dead} died; the router dropped it after {:.2} s (BFD)",
                gone.as_secs_f64()
            );
            client.join().unwrap()
        })
    };
    let answered = t0.elapsed();
    let rows: Vec<(bool, bool)> = (0..held.len())
        .map(|k| (was[k] == dead, results[k].is_ok()))
        .collect();
    let errors = count_by(results.iter().filter_map(|r| r.as_ref().err().cloned()));
    let through_dead = rows.iter().filter(|r| r.0).count();
    let dead_ok = rows.iter().filter(|r| r.0 && r.1).count();
    let others_ok = rows.iter().filter(|r| !r.0 && r.1).count();
    let ok = rows.iter().filter(|r| r.1).count();
    let second = [1, 3].iter().map(|&i| second_chances(&c, i)).sum::<u64>();
    println!(
        "{change:?}: 500 held connections, per node {per_node:?}, all answered within {:.2} s: \
         through the dead node {dead_ok}/{through_dead} survived, through the others \
         {others_ok}/{}; {ok}/500 survived ({:.1} % broken); errors {errors:?}; \
         {second} packets sent with a second chance",
        answered.as_secs_f64(),
        500 - through_dead,
        100.0 * (500 - ok) as f64 / 500.0
    );
    // New connections go on too, over the two nodes left.
    let spread = http_spread(c.lab(), HTTP, 100).unwrap();
    assert!(
        spread.keys().all(|k| k.starts_with("backend")),
        "{spread:?}"
    );
    // The connections through the surviving nodes keep their flow entries, whatever the
    // tables do.
    for (k, r) in rows.iter().enumerate() {
        assert!(
            r.0 || r.1,
            "connection {k} through node {} broke: {:?}",
            was[k],
            results[k]
        );
    }
    (rows, second)
}

/// Packets node `i` tunnelled with a second chance (its `tx_second_chance` counter).
fn second_chances(c: &Cluster, i: usize) -> u64 {
    match xlb::api::call(&c.node_paths(i).socket, &xlb::api::Request::Stats) {
        Ok(xlb::api::Response::Stats { reasons, .. }) => reasons
            .iter()
            .find(|r| r.0 == "tx_second_chance")
            .map_or(0, |r| r.1),
        other => panic!("stats of node{i}: {other:?}"),
    }
}

#[test]
fn a_dead_node_s_connections_go_on_through_the_others() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (rows, second) = kill_under_held_connections("xec2-", Change::None);
    // The tables agree: every connection survives, without a second chance.
    let broken = rows.iter().filter(|r| !r.1).count();
    assert_eq!(broken, 0, "{broken} of 500 broke");
    assert_eq!(second, 0, "second chances with unchanged tables");
}

#[test]
fn a_dead_node_while_a_target_is_added_breaks_no_connection() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (rows, second) = kill_under_held_connections("xec3-", Change::Add);
    let broken = rows.iter().filter(|r| !r.1).count();
    assert_eq!(broken, 0, "{broken} of 500 broke");
    // The dead node's connections whose target changed went by their second chance.
    assert!(second > 0, "no second chance was taken");
}

#[test]
fn a_dead_node_while_a_target_is_removed_breaks_no_connection() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (rows, second) = kill_under_held_connections("xec4-", Change::Remove);
    let broken = rows.iter().filter(|r| !r.1).count();
    assert_eq!(broken, 0, "{broken} of 500 broke");
    // The dead node's connections whose target changed went by their second chance.
    assert!(second > 0, "no second chance was taken");
}

#[test]
fn a_rolling_upgrade_under_load_fails_no_request() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = cluster("xec5-", 3, 3, &[1, 2, 3], "");
    let (mut held, _) = hold(&c, 100);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (ns, stop) = (c.lab().ns(Role::Client), stop.clone());
        std::thread::spawn(move || {
            in_netns(&ns, || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                // Bounded: stopped by the flag, or after 200,000 requests or 120 s.
                let deadline = Instant::now() + Duration::from_secs(120);
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match http_get(HTTP) {
                        Ok(body) if body.starts_with("backend") => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
            .expect("client")
        })
    };
    let started = Instant::now();
    for i in 1..=3 {
        let t = Instant::now();
        let (drained, said) = c.cli(i, &["node", "drain", "--timeout", "3"]);
        let others: Vec<usize> = (1..=3).filter(|&k| k != i).collect();
        c.wait_route(VIP_V4.into(), &others, Duration::from_secs(5))
            .expect("drained: withdrawn");
        c.stop_agent(i).expect("stop");
        c.start_agent(i).expect("start");
        let back = c
            .wait_route(VIP_V4.into(), &[1, 2, 3], Duration::from_secs(10))
            .expect("announced again after the start");
        let results = in_netns(&c.lab().ns(Role::Client), || {
            survivors(&mut held, Duration::from_secs(5))
        })
        .unwrap();
        let broken = results.iter().filter(|r| r.is_err()).count();
        println!(
            "node{i}: drain {} ({}), stop, start, announced again {:.2} s after the start; \
             {:.1} s in all; held connections broken: {broken}",
            if drained { "done" } else { "timed out" },
            said.trim().replace('\n', "; "),
            back.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        assert_eq!(broken, 0, "{:?}", results.iter().find(|r| r.is_err()));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    println!(
        "rolling upgrade of 3 nodes in {:.1} s: {ok} requests answered, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok >= 100, "only {ok} requests during the upgrade");
}

#[test]
fn a_node_that_cannot_reach_its_targets_withdraws() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster(
        "xec6-",
        3,
        3,
        &[1, 2, 3],
        "health_check = { protocol = \"TCP\", interval_seconds = 5, timeout_seconds = 2, \
         healthy_threshold = 2, unhealthy_threshold = 2 }",
    );
    // Node 3 loses its way to the targets: their answers to its checks vanish (the other nodes
    // and the clients still reach them).
    let t0 = Instant::now();
    for b in 1..=3 {
        for (family, addr) in [
            ("-4", format!("{}/32", node_v4(3))),
            ("-6", format!("{}/128", node_v6(3))),
        ] {
            c.lab()
                .exec(
                    Role::Backend(b),
                    &["ip", family, "route", "add", "blackhole", &addr],
                )
                .expect("blackhole");
        }
    }
    c.wait_route(VIP_V4.into(), &[1, 2], Duration::from_secs(30))
        .expect("node 3 withdraws");
    c.wait_route(VIP_V6.into(), &[1, 2], Duration::from_secs(10))
        .expect("node 3 withdraws the IPv6 VIP");
    println!(
        "node3's targets unhealthy: withdrawn {:.1} s after it lost them",
        t0.elapsed().as_secs_f64()
    );
    let (_, targets) = c.cli(3, &["targets", "list", "--target-group", "web"]);
    assert!(targets.contains("unhealthy"), "{targets}");
    let before = flows_per_node(&c);
    let spread = http_spread(c.lab(), HTTP, 600).unwrap();
    let per_node = delta(&flows_per_node(&c), &before);
    println!("600 connections after the withdrawal: per node {per_node:?}, per target {spread:?}");
    assert!(
        spread.keys().all(|k| k.starts_with("backend")),
        "{spread:?}"
    );
    assert_eq!(per_node[2], 0, "{per_node:?}");
    assert_even("node", &per_node[..2]);
}
