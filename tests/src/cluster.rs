//! Several xlb nodes behind one router, as a deployment has them: the lab of
//! [`Lab::up_nodes`] with BIRD on the router and on every node, and `xlb run` on every node.
//!
//! ```text
//!  client ── router (BIRD: a BGP session and BFD per node, ECMP into the kernel)
//!              │ br0
//!              ├── node1 .. nodeN  (BIRD written by xlb's [node.bgp], xlb run, XDP on eth0)
//!              └── backend1 .. backendM  (xlb_decap, the lab's servers)
//! ```
//!
//! - The router (AS [`ROUTER_AS`]) peers with every node (AS [`NODE_AS`]) over IPv4 and IPv6 and
//!   imports the VIPs they announce. Its kernel protocol merges equal routes into one multipath
//!   route (`merge paths yes`), which the kernel spreads by an L4 hash
//!   (`fib_multipath_hash_policy` 1, set by the lab).
//! - BFD on every session: the router requires a packet every [`BFD_INTERVAL_MS`] ms and gives a
//!   node up after [`BFD_MULTIPLIER`] missed ones, so a dead node leaves the route in about a
//!   second. BGP's hold time (3 s) is the fallback.
//! - Every node runs the same L4 config ([`listeners`]): the VIPs [`VIP_V4`] (HTTP and echo) and
//!   [`VIP_V6`] (HTTP), tunnelled to the target groups `web` and `web6` (the backends' IPv4 and
//!   IPv6 addresses). Tables built from one config agree,
//!   so a flow that the router moves to another node keeps its target.
//! - Processes (BIRDs, agents) start in a session of their own with their output in the lab's
//!   run directory; they are killed when the cluster is dropped, or, after [`Cluster::keep`],
//!   by `Lab::down`, which kills everything in the lab's namespaces.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, setsid},
};
use serde_json::Value;

use crate::lab::{
    ECHO_PORT, HTTP_PORT, IFACE, Lab, LabSpec, ROUTER_V4, ROUTER_V6, Role, VIP_V4, VIP_V6,
    backend_v4, backend_v6, netns_command, node_v4, node_v6, pin_dir, run_dir,
};

/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// Every node's AS: one AS, so the router sees equal paths and merges them.
pub const NODE_AS: u32 = 65001;
/// BFD interval the router asks of every node, in milliseconds.
pub const BFD_INTERVAL_MS: u32 = 200;
/// Missed BFD intervals before the router gives a node up.
pub const BFD_MULTIPLIER: u32 = 5;
/// How long a node may take to answer on its control socket, or the router to learn its routes.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The lab's name prefix.
    pub prefix: String,
    /// Balancer nodes.
    pub nodes: usize,
    /// Backends in the lab.
    pub backends: usize,
    /// The backends (1-based) in the target group `web` of every node's config.
    pub targets: Vec<usize>,
    /// Extra keys of the group `web`, one TOML line each (e.g. a `health_check`).
    pub group_extra: String,
    /// The `xlb-lab` binary (the backends' server).
    pub server_bin: PathBuf,
    /// The `xlb` binary.
    pub xlb: PathBuf,
}

/// The running cluster; dropping it stops everything and removes the lab.
pub struct Cluster {
    xlb: PathBuf,
    router_bird: Option<Child>,
    birds: Vec<Option<Child>>,
    agents: Vec<Option<Child>>,
    /// Dropped last, once the processes in it are gone; `None` once kept.
    lab: Option<Lab>,
}

impl Cluster {
    /// Builds the lab and starts BIRD on the router and on each node, then `xlb run` on each
    /// node; returns once the router routes [`VIP_V4`] over every node.
    pub fn up(spec: ClusterSpec) -> Result<Cluster> {
        let lab = Lab::up_nodes(
            LabSpec {
                prefix: spec.prefix.clone(),
                backends: spec.backends,
                server_bin: spec.server_bin.clone(),
                xlb: Some(spec.xlb.clone()),
            },
            spec.nodes,
        )?;
        let mut cluster = Cluster {
            xlb: spec.xlb.clone(),
            router_bird: None,
            birds: (0..spec.nodes).map(|_| None).collect(),
            agents: (0..spec.nodes).map(|_| None).collect(),
            lab: Some(lab),
        };
        let dir = run_dir(&spec.prefix);
        let conf = dir.join("router-bird.conf");
        fs::write(&conf, router_bird_config(spec.nodes)).context("write the router's BIRD")?;
        cluster.router_bird = Some(cluster.bird(Role::Router, &conf, "router")?);
        for i in 1..=spec.nodes {
            let node = cluster.node_paths(i);
            // The node's BIRD starts with nothing to say: xlb writes its file and reloads it.
            fs::write(
                &node.bird_conf,
                format!("router id {};\nprotocol device {{ }}\n", node_v4(i)),
            )?;
            cluster.birds[i - 1] =
                Some(cluster.bird(Role::Node(i), &node.bird_conf, &node.name)?);
            fs::write(&node.config, node_config(&spec, i, &node))?;
        }
        for i in 1..=spec.nodes {
            cluster.start_agent(i)?;
        }
        let all: Vec<usize> = (1..=spec.nodes).collect();
        cluster.wait_route(VIP_V4.into(), &all, START_TIMEOUT)?;
        Ok(cluster)
    }

    /// The lab the cluster runs in.
    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("a kept cluster is gone")
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.lab().nodes()
    }

    /// Leaves everything running after this value is dropped; `Lab::down` removes it.
    pub fn keep(mut self) {
        // The processes run in sessions of their own: forgetting their handles leaves them be.
        for child in self.children().into_iter().flatten() {
            std::mem::forget(child);
        }
        if let Some(lab) = self.lab.take() {
            lab.keep();
        }
    }

    fn children(&mut self) -> Vec<Option<Child>> {
        let mut all = vec![self.router_bird.take()];
        all.extend(self.birds.iter_mut().map(Option::take));
        all.extend(self.agents.iter_mut().map(Option::take));
        all
    }

    /// The files of node `i`.
    pub fn node_paths(&self, i: usize) -> NodePaths {
        let dir = run_dir(self.lab().prefix());
        let name = format!("node{i}");
        NodePaths {
            socket: dir.join(format!("{name}-xlb.sock")),
            config: dir.join(format!("{name}-xlb.toml")),
            state: dir.join(format!("{name}-state.json")),
            log: dir.join(format!("{name}-xlb.log")),
            bird_conf: dir.join(format!("{name}-bird.conf")),
            bird_ctl: dir.join(format!("{name}-bird.ctl")),
            pins: pin_dir(self.lab().prefix()).join(&name),
            name,
        }
    }

    /// The router's BIRD control socket.
    pub fn router_ctl(&self) -> PathBuf {
        run_dir(self.lab().prefix()).join("router-bird.ctl")
    }

    /// Starts BIRD in `role`'s namespace on `config`, its log in the run directory.
    fn bird(&self, role: Role, config: &Path, name: &str) -> Result<Child> {
        let dir = run_dir(self.lab().prefix());
        let ctl = dir.join(format!("{name}-bird.ctl"));
        let log = dir.join(format!("{name}-bird.log"));
        let mut cmd = netns_command(&self.lab().ns(role), &[Path::new("bird"), "-f".as_ref()]);
        cmd.arg("-c").arg(config).arg("-s").arg(&ctl);
        let child = detached(cmd, &log)?;
        // BIRD answers on its socket once it read its config.
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.birdc_ok(role, &ctl) {
            ensure!(
                Instant::now() < deadline,
                "BIRD in {role} did not answer on {} within {START_TIMEOUT:?}: {}",
                ctl.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        Ok(child)
    }

    fn birdc_ok(&self, role: Role, ctl: &Path) -> bool {
        let mut cmd = self.lab().command(role, &["birdc", "-s"]);
        cmd.arg(ctl).arg("show status");
        cmd.stdin(Stdio::null()).stderr(Stdio::null());
        cmd.output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Daemon is up"))
    }

    /// Starts `xlb run` on node `i` (its log in the run directory) and waits until it serves.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = self.node_paths(i);
        let mut cmd = netns_command(
            &self.lab().ns(Role::Node(i)),
            &[self.xlb.as_os_str(), "run".as_ref(), "--config".as_ref()],
        );
        cmd.arg(&node.config);
        let mut child = detached(cmd, &node.log)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = fs::read_to_string(&node.log).unwrap_or_default();
            if log.lines().any(|l| l.starts_with("xlb: serving")) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("xlb run on {} exited ({status}): {log}", node.name);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "xlb run on {} did not serve within {START_TIMEOUT:?}: {log}",
                    node.name
                );
            }
            thread::sleep(POLL);
        }
        self.agents[i - 1] = Some(child);
        Ok(())
    }

    /// Stops node `i`'s agent as `xlb stop` does (SIGTERM: it withdraws, then exits; the
    /// datapath stays).
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        let Some(mut child) = self.agents[i - 1].take() else {
            bail!("node{i} has no agent");
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "xlb run on node{i} exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("xlb run on node{i} did not stop within 10 s");
            }
            thread::sleep(POLL);
        }
    }

    /// Node `i` dies as a host does: its link goes down first (nothing it sends arrives any
    /// more, so the router's BFD must find out), then its BIRD and agent are killed.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        self.lab()
            .exec(Role::Node(i), &["ip", "link", "set", IFACE, "down"])?;
        for child in [self.agents[i - 1].take(), self.birds[i - 1].take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Runs `xlb --socket NODE_SOCKET args` for node `i`: (success, stdout and stderr).
    pub fn cli(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.xlb)
            .arg("--socket")
            .arg(self.node_paths(i).socket)
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            ),
            Err(e) => (false, format!("run xlb: {e}")),
        }
    }

    /// The new flows node `i`'s datapath counted so far, per listener (`VIP:PORT/Tcp`).
    pub fn new_flows(&self, i: usize) -> Result<BTreeMap<String, u64>> {
        match xlb::api::call(&self.node_paths(i).socket, &xlb::api::Request::Stats)? {
            xlb::api::Response::Stats { listeners, .. } => Ok(listeners
                .into_iter()
                .map(|l| (l.listener, l.new_flows))
                .collect()),
            other => bail!("stats of node{i}: {other:?}"),
        }
    }

    /// The nodes (1-based) the router's kernel sends `vip` to: the next hops of its route.
    pub fn route(&self, vip: IpAddr) -> Result<Vec<usize>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self.lab().exec(
            Role::Router,
            &[
                "ip",
                "-j",
                family,
                "route",
                "show",
                "exact",
                &host_prefix(vip),
            ],
        )?;
        let routes: Value = serde_json::from_slice(&out.stdout).context("ip -j route")?;
        let mut nodes = Vec::new();
        for route in routes.as_array().into_iter().flatten() {
            let hops = match route["nexthops"].as_array() {
                Some(hops) => hops.clone(),
                None => vec![route.clone()],
            };
            for hop in hops {
                if let Some(gw) = hop["gateway"].as_str() {
                    nodes.push(node_of(gw.parse()?)?);
                }
            }
        }
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// Waits until the router sends `vip` to exactly `nodes`; returns how long that took.
    pub fn wait_route(&self, vip: IpAddr, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let now = self.route(vip)?;
            if now == nodes {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the router sends {vip} to nodes {now:?}, not {nodes:?}, after {timeout:?}; its BIRD:\n{}",
                    self.router_bird_says(&["show", "protocols"])
                );
            }
            thread::sleep(POLL);
        }
    }

    /// What the router's BIRD answers to `args` (`birdc show ...`).
    pub fn router_bird_says(&self, args: &[&str]) -> String {
        let mut cmd = self.lab().command(Role::Router, &["birdc", "-s"]);
        cmd.arg(self.router_ctl()).args(args).stdin(Stdio::null());
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("birdc: {e}"))
    }

    /// Registers backend `b` in group `web` on node `i`.
    pub fn register(&self, i: usize, b: usize) -> Result<()> {
        let req = xlb::api::Request::Register {
            targets: vec![xlb::api::Registration {
                target_group: "web".into(),
                id: backend_v4(b).into(),
                weight: 1,
                zone: None,
                mac: None,
                port: None,
            }],
        };
        done(xlb::api::call(&self.node_paths(i).socket, &req)?)
    }

    /// Deregisters backend `b` from group `web` on node `i`.
    pub fn deregister(&self, i: usize, b: usize) -> Result<()> {
        let req = xlb::api::Request::Deregister {
            target_group: "web".into(),
            id: backend_v4(b).into(),
        };
        done(xlb::api::call(&self.node_paths(i).socket, &req)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children().into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // The lab goes next (its own drop): namespaces, pins, run directory.
    }
}

/// The files of one node.
#[derive(Clone, Debug)]
pub struct NodePaths {
    /// `node{i}`.
    pub name: String,
    /// The agent's control socket.
    pub socket: PathBuf,
    /// The agent's config.
    pub config: PathBuf,
    state: PathBuf,
    /// The agent's output.
    pub log: PathBuf,
    /// The BIRD config xlb writes.
    pub bird_conf: PathBuf,
    /// The node's BIRD control socket.
    pub bird_ctl: PathBuf,
    pins: PathBuf,
}

/// The L4 listeners every node serves: (VIP, port).
pub fn listeners() -> [SocketAddr; 3] {
    [
        SocketAddr::from((VIP_V4, HTTP_PORT)),
        SocketAddr::from((VIP_V4, ECHO_PORT)),
        SocketAddr::from((VIP_V6, HTTP_PORT)),
    ]
}

/// The router's BIRD: a BGP session and BFD with each node, over IPv4 and IPv6, and the kernel
/// protocol that installs equal routes as one multipath route.
pub fn router_bird_config(nodes: usize) -> String {
    let mut c = format!(
        "router id {ROUTER_V4};\n\
         protocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval {BFD_INTERVAL_MS} ms; \
         min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n\
         protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths yes; }}\n\
         protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths yes; }}\n\
         template bgp xlb_node {{ local as {ROUTER_AS}; hold time 3; keepalive time 1; bfd on; \
         connect retry time 1; error wait time 1, 4; }}\n"
    );
    for i in 1..=nodes {
        c += &format!(
            "protocol bgp node{i} from xlb_node {{ neighbor {} as {NODE_AS}; \
             ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp node{i}v6 from xlb_node {{ neighbor {} as {NODE_AS}; \
             ipv6 {{ import all; export none; }}; }}\n",
            node_v4(i),
            node_v6(i)
        );
    }
    c
}

/// Node `i`'s `xlb run` config: the same L4 part on every node, its own `[node]`.
fn node_config(spec: &ClusterSpec, i: usize, node: &NodePaths) -> String {
    let targets = |addr: fn(usize) -> IpAddr| -> String {
        let t: Vec<String> = spec
            .targets
            .iter()
            .map(|&b| format!("{{ id = \"{}\" }}", addr(b)))
            .collect();
        t.join(", ")
    };
    let mut c = format!(
        "[node]\ninterface = \"{IFACE}\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\n\
         state_file = \"{}\"\n\n\
         [node.bgp]\nlocal_as = {NODE_AS}\nrouter_id = \"{}\"\n\
         peers = [{{ address = \"{ROUTER_V4}\", remote_as = {ROUTER_AS} }}, \
         {{ address = \"{ROUTER_V6}\", remote_as = {ROUTER_AS} }}]\n\
         config_file = \"{}\"\ncontrol_socket = \"{}\"\nhold_time = 3\nbfd = true\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\n\
         attributes = {{ \"deregistration_delay.timeout_seconds\" = \"30\" }}\n{}\n\n\
         [[target_groups]]\nname = \"web6\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\n\
         attributes = {{ \"deregistration_delay.timeout_seconds\" = \"30\" }}\n{}\n",
        node.pins.display(),
        node.socket.display(),
        node.state.display(),
        node_v4(i),
        node.bird_conf.display(),
        node.bird_ctl.display(),
        targets(|b| backend_v4(b).into()),
        spec.group_extra,
        targets(|b| backend_v6(b).into()),
        spec.group_extra,
    );
    for l in listeners() {
        c += &format!(
            "\n[[listeners]]\naddress = \"{}\"\nport = {}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"{}\" }}\n",
            l.ip(),
            l.port(),
            if l.is_ipv4() { "web" } else { "web6" }
        );
    }
    c
}

/// The node whose address on `br0` is `gw`.
fn node_of(gw: IpAddr) -> Result<usize> {
    let last = match gw {
        IpAddr::V4(a) => u16::from(a.octets()[3]),
        IpAddr::V6(a) => a.segments()[7],
    };
    let i = usize::from(last).saturating_sub(1);
    ensure!(
        (1..=crate::lab::MAX_NODES).contains(&i) && (node_v4(i) == gw || node_v6(i) == gw),
        "{gw} is no node's address"
    );
    Ok(i)
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn done(r: xlb::api::Response) -> Result<()> {
    match r {
        xlb::api::Response::Done { .. } => Ok(()),
        other => bail!("{other:?}"),
    }
}

/// Starts `cmd` in a session of its own (out of the terminal's signals, and alive after this
/// process if left), stdin closed, stdout and stderr to `log`.
fn detached(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: the hook only calls setsid(2), which is async-signal-safe and touches no memory
    // of the parent.
    unsafe {
        cmd.pre_exec(|| setsid().map(drop).map_err(io::Error::from));
    }
    cmd.spawn().with_context(|| format!("start {cmd:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_name_their_node() {
        assert_eq!(node_of("198.18.1.2".parse().unwrap()).unwrap(), 1);
        assert_eq!(node_of("2001:db8:2::4".parse().unwrap()).unwrap(), 3);
        assert!(node_of("198.18.1.11".parse().unwrap()).is_err());
        assert!(node_of("198.18.1.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_router_peers_with_each_node_over_both_families() {
        let c = router_bird_config(3);
        for line in [
            "protocol bgp node3 from xlb_node { neighbor 198.18.1.4 as 65001; ipv4 { import all; export none; }; }",
            "protocol bgp node3v6 from xlb_node { neighbor 2001:db8:2::4 as 65001; ipv6 { import all; export none; }; }",
        ] {
            assert!(c.lines().any(|l| l == line), "{line:?} not in\n{c}");
        }
        assert!(c.contains("merge paths yes"), "{c}");
        assert!(!c.contains("node4"), "{c}");
    }
}
