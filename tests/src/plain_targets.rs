//! Targets that run nothing of xlb's, for the NAT and SNAT labs: the lab's backends with their
//! xlb-lab server stopped, their decap program detached and the VIPs off `lo`, each running a
//! plain Python server on a port of its own; and the config pieces those labs share.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, cli, http_get, write_config, xlb_bin},
    lab::{
        CLIENT_V4, CLIENT_V6, LB_V4, LB_V6, Lab, LabSpec, Role, VIP_V4, VIP_V6, backend_v4,
        backend_v6, in_netns, pin_dir, run_dir,
    },
};

/// The targets' server: per TCP connection, an HTTP answer to a `GET` or each line echoed;
/// each UDP datagram echoed. Every answer starts with the target's name and the peer address
/// it saw (`backend1 198.18.0.2 ...`).
pub const SERVER: &str = r#"
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
def peer(a):
    return a[0].removeprefix('::ffff:')
def bound(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port))
    return s
def udp(u):
    while True:
        data, a = u.recvfrom(2048)
        u.sendto(f'{name} {peer(a)} {data.decode().strip()}\n'.encode(), a)
def conn(c, a):
    with c, c.makefile('rwb', buffering=0) as f:
        for line in f:
            text = line.decode().strip()
            if text.startswith('GET '):
                while f.readline().strip():
                    pass
                body = f'{name} {peer(a)}\n'.encode()
                f.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
                return
            f.write(f'{name} {peer(a)} {text}\n'.encode())
threading.Thread(target=udp, args=(bound(socket.SOCK_DGRAM),), daemon=True).start()
t = bound(socket.SOCK_STREAM)
t.listen(128)
while True:
    c, a = t.accept()
    threading.Thread(target=conn, args=(c, a), daemon=True).start()
"#;

/// The port target `i` listens on: backend1 the groups' 8080, backend2 its own 8081.
pub fn target_port(i: usize) -> u16 {
    8079 + i as u16
}

/// The targets' servers, killed and reaped on drop (the lab's teardown kills them too).
pub struct Servers(pub Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How the targets reach the clients.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Default routes via the lb: replies come back through it (NAT, as LVS-NAT's do).
    ViaLb,
    /// No route but their own link's: they reach only the lb's address there (SNAT).
    OwnLinkOnly,
}

/// A lab of two backends made plain targets with `routes`, the Python server on
/// [`target_port`]. `server_bin`: the lab's `xlb-lab` (`CARGO_BIN_EXE_xlb-lab`).
pub fn lab(prefix: &str, routes: Routes, server_bin: PathBuf) -> (Lab, Servers) {
    let lab = Lab::up(LabSpec {
        prefix: prefix.into(),
        backends: 2,
        server_bin,
        // The router's ports get the pass program, without which XDP_TX out of the lb's veth
        // delivers nothing.
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let mut servers = Servers(Vec::new());
    for i in 1..=2 {
        let role = Role::Backend(i);
        let pid = std::fs::read_to_string(run_dir(lab.prefix()).join(format!("backend{i}.pid")))
            .expect("the lab server's pid");
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("stop xlb-lab");
        std::fs::remove_file(pin_dir(lab.prefix()).join(format!("backend{i}-eth0")))
            .expect("detach decap");
        for vip in [format!("{VIP_V4}/32"), format!("{VIP_V6}/128")] {
            lab.exec(role, &["ip", "addr", "del", &vip, "dev", "lo"])
                .expect("take the VIP off lo");
        }
        match routes {
            Routes::ViaLb => {
                let lb = lab.lb_mac().to_string();
                for (family, gw) in [("-4", LB_V4.to_string()), ("-6", LB_V6.to_string())] {
                    lab.exec(
                        role,
                        &["ip", family, "route", "replace", "default", "via", &gw],
                    )
                    .expect("route via the lb");
                    lab.exec(
                        role,
                        &["ip", "neigh", "replace", &gw, "lladdr", &lb, "dev", "eth0"],
                    )
                    .expect("the lb's MAC");
                }
            }
            Routes::OwnLinkOnly => {
                for family in ["-4", "-6"] {
                    lab.exec(role, &["ip", family, "route", "flush", "default"])
                        .expect("no default route");
                }
                for client in [CLIENT_V4.to_string(), CLIENT_V6.to_string()] {
                    let out = lab.exec(role, &["ip", "route", "get", &client]);
                    assert!(
                        out.as_ref().map_or(true, |o| !o.status.success()),
                        "backend{i} has a route to {client}"
                    );
                }
            }
        }
        // The link goes with its last holder: the pin, and the killed server, which may take a
        // moment to exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        let link = loop {
            let out = lab
                .exec(role, &["ip", "-j", "link", "show", "eth0"])
                .unwrap();
            let link = String::from_utf8_lossy(&out.stdout).into_owned();
            if !link.contains("xdp") || Instant::now() > deadline {
                break link;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            !link.contains("xdp"),
            "no XDP program on the target: {link}"
        );
        servers
            .0
            .push(serve(&lab, i, &format!("backend{i}"), target_port(i)));
    }
    (lab, servers)
}

/// Starts the Python server on backend `i`, answering as `name` on `port`, and waits until it
/// listens.
pub fn serve(lab: &Lab, i: usize, name: &str, port: u16) -> Child {
    let role = Role::Backend(i);
    let child = lab
        .spawn(role, &["python3", "-c", SERVER, name, &port.to_string()])
        .expect("start the target's server");
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let up = in_netns(&lab.ns(role), || {
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .unwrap();
    assert!(up, "{name}'s server listens on {port} within 10 s");
    child
}

/// A `protocol` group `name` of both targets at `addr` ([`v4`] or [`v6`]): backend1 on the
/// group's port 8080, backend2 on its own 8081.
pub fn group(name: &str, protocol: &str, addr: fn(usize) -> IpAddr, extra: &str) -> String {
    format!(
        "\n[[target_groups]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nport = 8080\n\
         targets = [{{ id = \"{}\" }}, {{ id = \"{}\", port = 8081 }}]\n{extra}",
        addr(1),
        addr(2)
    )
}

pub fn v4(i: usize) -> IpAddr {
    backend_v4(i).into()
}

pub fn v6(i: usize) -> IpAddr {
    backend_v6(i).into()
}

/// A listener on `vip`:`port` forwarding (`"nat"`, `"snat"`) to `group`.
pub fn listener(vip: IpAddr, port: u16, protocol: &str, group: &str, forwarding: &str) -> String {
    format!(
        "\n[[listeners]]\naddress = \"{vip}\"\nport = {port}\nprotocol = \"{protocol}\"\n\
         forwarding = \"{forwarding}\"\ndefault_action = {{ type = \"forward\", target_group = \"{group}\" }}\n"
    )
}

/// The packets `xlb stats` counts for `reason`.
pub fn reason_packets(stats: &str, reason: &str) -> u64 {
    stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reason))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// `curl` from the client: the body.
pub fn curl(lab: &Lab, url: &str) -> String {
    let out = lab
        .exec(Role::Client, &["curl", "-sS", "--max-time", "5", url])
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One line through a held connection: the target that answered, which must have seen `peer`.
pub fn ask(s: &TcpStream, tag: &str, peer: IpAddr) -> std::io::Result<String> {
    let mut w = s.try_clone()?;
    w.write_all(format!("{tag}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [name, seen, echoed] if echoed == tag && seen == peer.to_string() => Ok(name.to_owned()),
        _ => Err(std::io::Error::other(format!("answered {line:?}"))),
    }
}

/// Which targets answered `n` HTTP GETs from the client to `vip`, each on a new connection.
pub fn answered_by(lab: &Lab, vip: SocketAddr, n: usize) -> BTreeSet<String> {
    in_netns(&lab.ns(Role::Client), || {
        (0..n)
            .map(|_| {
                let body = http_get(vip).unwrap_or_else(|e| panic!("GET {vip}: {e:#}"));
                body.split(' ').next().unwrap_or_default().to_owned()
            })
            .collect()
    })
    .unwrap()
}

/// The deregistration delay [`held_connection_survives_a_restart_and_drains`] gives group `t4`.
pub const DRAIN_DELAY: &str = "attributes = { \"deregistration_delay.timeout_seconds\" = \"4\" }\n";

/// With `text` (a TCP listener on the IPv4 VIP's port 80 to group `t4` of both targets, with
/// [`DRAIN_DELAY`]) running: a held connection keeps its target through `kill -9` of the agent
/// and a restart; deregistered, its target takes no new connections and keeps the held one for
/// the delay, then the connection ends with it. The targets see `peer` as the connection's.
pub fn held_connection_survives_a_restart_and_drains(lab: &Lab, text: &str, peer: IpAddr) {
    let ask = |s: &TcpStream, tag: &str| ask(s, tag, peer);
    let cfg = write_config(lab, text);
    let xlb = xlb_bin().unwrap();
    let agent = Agent::start(lab, &xlb, &cfg).expect("xlb run");
    let vip = SocketAddr::from((VIP_V4, 80));
    let conn = in_netns(&lab.ns(Role::Client), || {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .unwrap();
    let owner = ask(&conn, "before").expect("echo before");

    // kill -9 and a new agent: the connection keeps its target throughout.
    agent.kill9();
    assert_eq!(ask(&conn, "during").expect("echo without an agent"), owner);
    let agent = Agent::start(lab, &xlb, &cfg).expect("restarted xlb run");
    assert_eq!(ask(&conn, "after").expect("echo after the restart"), owner);

    // Deregistered: new connections go to the other target, the held one stays until the delay.
    let i: usize = owner.trim_start_matches("backend").parse().unwrap();
    let id = backend_v4(i).to_string();
    let (ok, out) = cli(
        lab,
        &["targets", "deregister", "--target-group", "t4", "--id", &id],
    );
    assert!(ok, "{out}");
    let deregistered = Instant::now();
    let other = format!("backend{}", 3 - i);
    let names = answered_by(lab, vip, 20);
    assert_eq!(
        names,
        BTreeSet::from([other]),
        "new connections avoid {owner}"
    );
    assert_eq!(ask(&conn, "draining").expect("echo while draining"), owner);
    assert!(
        deregistered.elapsed() < Duration::from_secs(4),
        "checked within the delay"
    );
    // After the delay the target is gone, and its held connection with it.
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(deregistered.elapsed()) + Duration::from_secs(1),
    );
    let (_, list) = cli(lab, &["targets", "list"]);
    assert!(!list.contains(&id), "drain over, target gone: {list}");
    let after = ask(&conn, "gone");
    assert!(
        after.is_err(),
        "the held connection ended with the drain: {after:?}"
    );
    agent.stop().expect("xlb stops cleanly");
}
