//! The network lab: network namespaces joined by veth pairs, used by the
//! end-to-end tests, the demo and the benchmarks.
//!
//! One lab is identified by a name prefix `{p}` (tests use e.g. `xt3-`, the
//! demo the empty prefix), so labs with different prefixes never collide:
//!
//! ```text
//!  {p}client                 {p}router (forwards v4 and v6)
//!  eth0 198.18.0.2/24        +----------------------------------------+
//!       2001:db8:1::2/64 ----+ client 198.18.0.1/24  2001:db8:1::1/64  |
//!  default via router        |                                        |
//!                            | br0    198.18.1.1/24  2001:db8:2::1/64  |
//!                            |  ports: lb   b1   ..   bN              |
//!                            +---------|----|---------|---------------+
//!   {p}lb                              |    |         |
//!   eth0 198.18.1.2/24, 2001:db8:2::2 -+    |         |
//!   {p}backend1                             |         |
//!   eth0 198.18.1.11/24, 2001:db8:2::11 ----+         |
//!   {p}backendN                                       |
//!   eth0 198.18.1.(10+N), 2001:db8:2::(10+N) ---------+
//! ```
//!
//! - The router routes the VIP ranges 198.18.100.0/24 and 2001:db8:100::/64
//!   to the lb. Every backend holds the VIPs [`VIP_V4`] and [`VIP_V6`] on
//!   `lo`, so it accepts traffic to the VIP that arrives by L2 DSR or after
//!   tunnel decapsulation; `arp_ignore`/`arp_announce` keep it from
//!   answering ARP for them.
//! - Every backend runs `xlb-lab serve --name backend{i}`: HTTP on
//!   [`HTTP_PORT`], a line echo on TCP [`ECHO_PORT`] and a name reply on UDP
//!   [`UDP_PORT`], all answering with the backend's name.
//! - The client segment has MTU 1500; the lb segment (lb, bridge, backends)
//!   has [`LB_SEGMENT_MTU`] so a full-size packet still fits once the
//!   balancer wraps it in an IPIP or IP6IP6 tunnel.
//! - Every namespace has `lo` up, `rp_filter` off (replies leave backends
//!   with the VIP as source and reach the router on a port other than the
//!   VIP route's) and IPv6 DAD off, so addresses are usable at once.
//! - Every lab veth has transmit checksum offload off at both ends, and the
//!   client, router, lb and backends have permanent neighbour entries for
//!   each other, so the first packet of a test needs no ARP or ND.
//! - With an `xlb` binary in the [`LabSpec`], the router's `lb` and backend ports get the
//!   "pass" XDP program and each backend's `eth0` the "decap" program, pinned
//!   under [`pin_dir`]; logs and pid files of the servers live in [`run_dir`].
//! - [`Lab::up_nodes`] builds several balancers, `node1..N` at 198.18.1.(1+i) and
//!   2001:db8:2::(1+i) on router ports `n1..nN`, instead of `lb`, and leaves the VIP route to
//!   BGP: the router spreads the VIPs over the nodes that announce them, by an L4 hash
//!   (the cluster module runs BIRD and an agent on each node).
//! - Commands run in a namespace through [`netns_command`] (`nsenter --net`),
//!   which keeps the host's /sys/fs/bpf visible; [`in_netns`] runs a closure
//!   there, so tests open client sockets in-process.
//!
//! Nothing is ever created in the host namespace: veth pairs are created
//! from inside the router namespace with their peer placed directly in the
//! target namespace. Addresses come only from 198.18.0.0/15 and 2001:db8::/32.

use std::{
    ffi::OsStr,
    fmt::{self, Write as _},
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::{Pid, setsid},
};
use serde_json::Value;

/// The client's address (on its `eth0`).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's IPv6 address (on its `eth0`).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The router's address on the client segment: the client's default gateway.
pub const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The router's IPv6 address on the client segment.
pub const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The router's address on `br0`: the gateway of the lb and the backends.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The router's IPv6 address on `br0`.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The load balancer's address (on its `eth0`); next hop of the VIP routes.
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The load balancer's IPv6 address (on its `eth0`).
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The IPv4 VIP that every backend holds on `lo`.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The IPv6 VIP that every backend holds on `lo`.
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// The IPv4 range the router sends to the lb (address, prefix length).
pub const VIP_NET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 100, 0), 24);
/// The IPv6 range the router sends to the lb (address, prefix length).
pub const VIP_NET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 64);

/// TCP port of the backends' HTTP server (body `backend{i}\n`).
pub const HTTP_PORT: u16 = 80;
/// TCP port of the backends' line echo (each line comes back as `backend{i}: line`).
pub const ECHO_PORT: u16 = 7;
/// UDP port where backends answer every datagram with `backend{i}`.
pub const UDP_PORT: u16 = 53;

/// Interface name of the client, the lb and the backends (their only veth).
pub const IFACE: &str = "eth0";
/// The router's bridge joining the lb and the backends.
pub const BRIDGE: &str = "br0";
/// MTU of the lb segment (lb, bridge ports, backends): 1500 plus room for
/// the 40 bytes of an IP6IP6 header, so encapsulated full-size packets fit.
pub const LB_SEGMENT_MTU: u32 = 1600;
/// MTU of the client segment.
pub const CLIENT_MTU: u32 = 1500;
/// Number of backends `xlb-lab up` builds unless told otherwise.
pub const DEFAULT_BACKENDS: usize = 3;
/// Largest number of backends a lab can have.
pub const MAX_BACKENDS: usize = 64;
/// Largest number of balancer nodes a lab can have ([`Lab::up_nodes`]): their addresses end
/// below the backends'.
pub const MAX_NODES: usize = 8;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Parent of every lab's run directory (server logs and pid files).
const RUN_ROOT: &str = "/run/xlb-lab";
/// Parent of every lab's bpffs directory (pinned XDP links).
const PIN_ROOT: &str = "/sys/fs/bpf/xlb-lab";
/// How long a backend server may take to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long addresses may stay tentative, or killed processes linger.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The IPv4 address of backend `i` (1-based): 198.18.1.(10+i).
///
/// Panics unless `1 <= i <= MAX_BACKENDS`.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + backend_index(i) as u8)
}

/// The IPv6 address of backend `i` (1-based): `2001:db8:2::` followed by the
/// decimal digits of 10+i read as hex, so it looks like the IPv4 one
/// (backend 1 is 198.18.1.11 and 2001:db8:2::11).
///
/// Panics unless `1 <= i <= MAX_BACKENDS`.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    let last = u16::from_str_radix(&(10 + backend_index(i)).to_string(), 16)
        .expect("decimal digits are valid hex digits");
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, last)
}

/// The IPv4 address of balancer node `i` (1-based, [`Lab::up_nodes`]): 198.18.1.(1+i), so node 1
/// has the one-`lb` lab's [`LB_V4`].
///
/// Panics unless `1 <= i <= MAX_NODES`.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + node_index(i) as u8)
}

/// The IPv6 address of balancer node `i`: `2001:db8:2::` and 1+i (node 1 has [`LB_V6`]).
///
/// Panics unless `1 <= i <= MAX_NODES`.
pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1 + node_index(i) as u16)
}

fn node_index(i: usize) -> usize {
    assert!(
        (1..=MAX_NODES).contains(&i),
        "node index {i} is outside 1..={MAX_NODES}"
    );
    i
}

fn backend_index(i: usize) -> usize {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} is outside 1..={MAX_BACKENDS}"
    );
    i
}

/// The name of a role's namespace in the lab with prefix `prefix`.
pub fn ns_name(prefix: &str, role: Role) -> String {
    format!("{prefix}{role}")
}

/// The directory holding the servers' logs and pid files of a lab
/// (`/run/xlb-lab/{p}lab`, so the empty prefix gets its own directory too).
pub fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("{prefix}lab"))
}

/// The bpffs directory where a lab pins its XDP links
/// (`/sys/fs/bpf/xlb-lab/{p}lab`); [`Lab::down`] removes it, which detaches
/// whatever is pinned there.
pub fn pin_dir(prefix: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("{prefix}lab"))
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Sends traffic to the VIPs; reaches everything through the router.
    Client,
    /// Routes between the client segment and the bridge `br0`.
    Router,
    /// Runs the load balancer on its `eth0`.
    Lb,
    /// Balancer node `i`, counted from 1, in a lab of several ([`Lab::up_nodes`]), which has
    /// them instead of `Lb`.
    Node(usize),
    /// Backend `i`, counted from 1.
    Backend(usize),
}

impl Role {
    /// Parses the part of a namespace name after the prefix.
    fn from_suffix(suffix: &str) -> Option<Role> {
        match suffix {
            "client" => Some(Role::Client),
            "router" => Some(Role::Router),
            "lb" => Some(Role::Lb),
            _ if suffix.starts_with("node") => {
                let digits = &suffix["node".len()..];
                let i: usize = digits.parse().ok()?;
                ((1..=MAX_NODES).contains(&i) && i.to_string() == digits).then_some(Role::Node(i))
            }
            _ => {
                let digits = suffix.strip_prefix("backend")?;
                let i: usize = digits.parse().ok()?;
                // Only the canonical spelling, so `backend01` is not ours.
                ((1..=MAX_BACKENDS).contains(&i) && i.to_string() == digits)
                    .then_some(Role::Backend(i))
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Client => f.write_str("client"),
            Role::Router => f.write_str("router"),
            Role::Lb => f.write_str("lb"),
            Role::Node(i) => write!(f, "node{i}"),
            Role::Backend(i) => write!(f, "backend{i}"),
        }
    }
}

/// An Ethernet address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Mac> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .with_context(|| format!("MAC {s:?} is too short"))?;
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {s:?}"))?;
        }
        ensure!(parts.next().is_none(), "MAC {s:?} is too long");
        Ok(Mac(mac))
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Prepended to every namespace name; letters, digits, `-`, `_`, `.`,
    /// at most 32 characters. Empty for the demo.
    pub prefix: String,
    /// Number of backends, 1..=[`MAX_BACKENDS`].
    pub backends: usize,
    /// The `xlb-lab` binary, run as `xlb-lab serve --name backend{i}` in each
    /// backend.
    pub server_bin: PathBuf,
    /// The `xlb` binary that attaches the "pass" and "decap" XDP programs;
    /// `None` attaches no XDP program.
    pub xlb: Option<PathBuf>,
}

/// MACs of the lab's interfaces, read once the lab is built.
#[derive(Clone, Debug, Default)]
struct Macs {
    client: Mac,
    router_client: Mac,
    router: Mac,
    /// The balancers' `eth0`, in [`Lab::balancers`] order.
    balancers: Vec<Mac>,
    backends: Vec<Mac>,
}

/// A balancer of the lab: the one `lb`, or node `i` of several.
#[derive(Clone, Debug)]
struct Balancer {
    role: Role,
    /// Its peer port on the router's bridge.
    port: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// A running lab. Dropping it tears it down (best effort) unless
/// [`Lab::keep`] was called.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    backends: usize,
    /// Balancer nodes `node1..=N`; 0 for the one `lb` with a static VIP route.
    nodes: usize,
    macs: Macs,
    /// The backend servers, reaped on drop so they leave no zombies.
    servers: Vec<Child>,
    keep: bool,
}

impl Lab {
    /// Builds the lab, first tearing down a stale one with the same prefix.
    /// On error, whatever was built is torn down again.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        Lab::build_up(spec, 0)
    }

    /// Like [`Lab::up`], with `nodes` balancer namespaces `node1..=nodes` (at [`node_v4`] and
    /// [`node_v6`], router ports `n1..`) instead of `lb`, and no static VIP route: the router
    /// learns the VIPs by BGP from the nodes (the cluster module runs BIRD on both sides) and
    /// spreads them over the nodes with ECMP, by a hash of the L4 header
    /// (`fib_multipath_hash_policy` 1 for IPv4 and IPv6).
    pub fn up_nodes(spec: LabSpec, nodes: usize) -> Result<Lab> {
        ensure!(
            (1..=MAX_NODES).contains(&nodes),
            "a lab needs 1..={MAX_NODES} nodes, not {nodes}"
        );
        Lab::build_up(spec, nodes)
    }

    fn build_up(spec: LabSpec, nodes: usize) -> Result<Lab> {
        check_prefix(&spec.prefix)?;
        ensure!(
            (1..=MAX_BACKENDS).contains(&spec.backends),
            "a lab needs 1..={MAX_BACKENDS} backends, not {}",
            spec.backends
        );
        ensure!(
            spec.server_bin.is_file(),
            "server binary {} does not exist",
            spec.server_bin.display()
        );
        Lab::down(&spec.prefix).context("tearing down the stale lab")?;
        // Dropping `lab` on error tears down the half-built lab.
        let mut lab = Lab {
            prefix: spec.prefix.clone(),
            backends: spec.backends,
            nodes,
            macs: Macs::default(),
            servers: Vec::new(),
            keep: false,
        };
        lab.build(&spec)
            .with_context(|| format!("building lab {:?}", spec.prefix))?;
        Ok(lab)
    }

    /// Leaves the lab up after this value is dropped and the process exits;
    /// [`Lab::down`] with the same prefix removes it later.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Tears down the lab with this prefix: kills its servers and every
    /// process left in its namespaces, removes its pinned XDP links, its
    /// namespaces and its run directory. Finds everything by name, so it
    /// works after a crash; Ok if there is nothing to remove.
    pub fn down(prefix: &str) -> Result<()> {
        check_prefix(prefix)?;
        let namespaces: Vec<String> = existing_roles(prefix)?
            .into_iter()
            .map(|role| ns_name(prefix, role))
            .collect();
        let mut errors = Vec::new();
        let run_dir = run_dir(prefix);
        if let Err(e) = kill_recorded_servers(&run_dir) {
            errors.push(e);
        }
        for ns in &namespaces {
            if let Err(e) = kill_all_in(ns) {
                errors.push(e);
            }
        }
        if let Err(e) = wait_until_empty(&namespaces) {
            errors.push(e);
        }
        if let Err(e) = remove_dir_if_present(&pin_dir(prefix)) {
            errors.push(e);
        }
        for ns in &namespaces {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                errors.push(e);
            }
        }
        if let Err(e) = remove_dir_if_present(&run_dir) {
            errors.push(e);
        }
        // The roots go with the last lab (another lab's directory keeps them).
        for root in [PIN_ROOT, RUN_ROOT] {
            let _ = fs::remove_dir(root);
        }
        match errors.as_slice() {
            [] => Ok(()),
            _ => {
                let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
                Err(anyhow!("tearing down lab {prefix:?}: {}", all.join("; ")))
            }
        }
    }

    /// A human-readable report of the lab with this prefix: its namespaces,
    /// their interfaces (state, MAC, addresses, XDP program) and whether each
    /// backend server is alive.
    pub fn status(prefix: &str) -> Result<String> {
        check_prefix(prefix)?;
        let roles = existing_roles(prefix)?;
        let mut out = String::new();
        if roles.is_empty() {
            writeln!(out, "no lab with prefix {prefix:?}")?;
            return Ok(out);
        }
        writeln!(
            out,
            "lab {prefix:?}: {} namespaces, run dir {}, pins {}",
            roles.len(),
            run_dir(prefix).display(),
            pin_dir(prefix).display()
        )?;
        for role in roles {
            let ns = ns_name(prefix, role);
            writeln!(out, "{ns}")?;
            let links: Value = serde_json::from_str(&ip(&ns, &["-j", "addr", "show"])?)
                .with_context(|| format!("parsing `ip -n {ns} -j addr show`"))?;
            for link in links.as_array().into_iter().flatten() {
                writeln!(out, "  {}", describe_link(link))?;
            }
            if let Role::Backend(_) = role {
                writeln!(out, "  server: {}", server_state(prefix, role))?;
            }
        }
        Ok(out)
    }

    /// The prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number of backends.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// The name of a role's namespace.
    pub fn ns(&self, role: Role) -> String {
        ns_name(&self.prefix, role)
    }

    /// A command running `argv` in a role's network namespace, for callers
    /// that want to set up its stdio or environment. Only the network
    /// namespace changes (see [`netns_command`]).
    pub fn command(&self, role: Role, argv: &[&str]) -> Command {
        netns_command(&self.ns(role), argv)
    }

    /// Runs `argv` in a role's namespace to completion. Fails if it exits
    /// non-zero, with an error naming the command and carrying its stderr.
    pub fn exec(&self, role: Role, argv: &[&str]) -> Result<Output> {
        run(&mut self.command(role, argv))
    }

    /// Starts `argv` in a role's namespace with stdin closed, stdout and
    /// stderr inherited. Anything still running in the lab's namespaces is
    /// killed when the lab goes down.
    pub fn spawn(&self, role: Role, argv: &[&str]) -> Result<Child> {
        let mut cmd = self.command(role, argv);
        cmd.stdin(Stdio::null());
        cmd.spawn()
            .with_context(|| format!("cannot start `{}`", command_line(&cmd)))
    }

    /// The MAC of the client's `eth0`.
    pub fn client_mac(&self) -> Mac {
        self.macs.client
    }

    /// The MAC of the router's `client` port (the client's gateway).
    pub fn router_client_mac(&self) -> Mac {
        self.macs.router_client
    }

    /// The MAC of the router's `br0` (the gateway of the lb and backends).
    pub fn router_mac(&self) -> Mac {
        self.macs.router
    }

    /// The MAC of the lb's `eth0` (node 1's in a lab of several).
    pub fn lb_mac(&self) -> Mac {
        self.macs.balancers[0]
    }

    /// The number of balancer nodes of a lab built by [`Lab::up_nodes`]; 0 for the one `lb`.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The one `lb`, or the nodes.
    fn balancers(&self) -> Vec<Balancer> {
        if self.nodes == 0 {
            return vec![Balancer {
                role: Role::Lb,
                port: "lb".into(),
                v4: LB_V4,
                v6: LB_V6,
            }];
        }
        (1..=self.nodes)
            .map(|i| Balancer {
                role: Role::Node(i),
                port: format!("n{i}"),
                v4: node_v4(i),
                v6: node_v6(i),
            })
            .collect()
    }

    /// The MAC of backend `i`'s `eth0` (1-based). Panics if there is no such
    /// backend.
    pub fn backend_mac(&self, i: usize) -> Mac {
        assert!(
            (1..=self.backends).contains(&i),
            "the lab has backends 1..={}, not {i}",
            self.backends
        );
        self.macs.backends[i - 1]
    }

    /// Builds everything, in dependency order.
    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        let run_dir = run_dir(&self.prefix);
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        self.create_namespaces()?;
        self.create_links()?;
        self.add_addresses_and_routes()?;
        self.wait_addresses_usable()?;
        self.read_macs()?;
        self.add_neighbours()?;
        if let Some(xlb) = &spec.xlb {
            self.attach_xdp(xlb)?;
        }
        self.start_servers(&spec.server_bin)
    }

    fn roles(&self) -> impl Iterator<Item = Role> + use<> {
        let balancers: Vec<Role> = self.balancers().into_iter().map(|b| b.role).collect();
        [Role::Client, Role::Router]
            .into_iter()
            .chain(balancers)
            .chain((1..=self.backends).map(Role::Backend))
    }

    fn create_namespaces(&self) -> Result<()> {
        {
            // The first `ip netns add` on a boot turns /run/netns into a
            // shared mount; two doing it at once can hide each other's
            // namespaces, so labs built in parallel take turns here.
            let _lock = lock_file(&Path::new(RUN_ROOT).join("netns-add.lock"))?;
            for role in self.roles() {
                run(Command::new("ip").args(["netns", "add", &self.ns(role)]))?;
            }
        }
        for role in self.roles() {
            let ns = self.ns(role);
            // Set before any interface exists so that new ones inherit it:
            // replies from backends carry the VIP as source and reach the
            // router on a port other than the VIP route's, and IPv6
            // addresses must be usable at once, without DAD.
            let mut settings = vec![
                ("net.ipv4.conf.all.rp_filter".to_owned(), "0"),
                ("net.ipv4.conf.default.rp_filter".to_owned(), "0"),
                ("net.ipv6.conf.all.accept_dad".to_owned(), "0"),
                ("net.ipv6.conf.default.accept_dad".to_owned(), "0"),
            ];
            // The lb forwards too: the datapath's FIB lookup for next hops answers only on an
            // interface with forwarding on.
            if matches!(role, Role::Router | Role::Lb | Role::Node(_)) {
                settings.push(("net.ipv4.ip_forward".to_owned(), "1"));
                settings.push(("net.ipv6.conf.all.forwarding".to_owned(), "1"));
            }
            // ECMP over the nodes by the L4 header, as a ToR router spreads flows, not by
            // addresses alone (every client connection would take one node).
            if role == Role::Router && self.nodes > 0 {
                settings.push(("net.ipv4.fib_multipath_hash_policy".to_owned(), "1"));
                settings.push(("net.ipv6.fib_multipath_hash_policy".to_owned(), "1"));
            }
            sysctls(&ns, &settings)?;
            ip(&ns, &["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Creates the veth pairs from inside the router namespace, so no
    /// interface ever exists in the host namespace, and the bridge.
    fn create_links(&self) -> Result<()> {
        let router = self.ns(Role::Router);
        ip(&router, &["link", "add", BRIDGE, "type", "bridge"])?;
        // (router port, role whose `eth0` is its peer, MTU)
        let balancers: Vec<(String, Role, u32)> = self
            .balancers()
            .into_iter()
            .map(|b| (b.port, b.role, LB_SEGMENT_MTU))
            .collect();
        let pairs = [("client".to_owned(), Role::Client, CLIENT_MTU)]
            .into_iter()
            .chain(balancers)
            .chain(
                (1..=self.backends).map(|i| (format!("b{i}"), Role::Backend(i), LB_SEGMENT_MTU)),
            );
        for (port, peer, mtu) in pairs {
            let peer_ns = self.ns(peer);
            let veth = ["link", "add", &port, "type", "veth", "peer", "name", IFACE];
            ip(&router, &[&veth[..], &["netns", &peer_ns]].concat())?;
            let mut peer_settings = iface_sysctls(IFACE);
            if let Role::Backend(_) = peer {
                // Answer ARP only for addresses on eth0 itself and source ARP
                // from them, so a backend never claims the VIP on `lo`.
                peer_settings.push((format!("net.ipv4.conf.{IFACE}.arp_ignore"), "1"));
                peer_settings.push((format!("net.ipv4.conf.{IFACE}.arp_announce"), "2"));
            }
            setup_veth_end(&router, &port, mtu, &iface_sysctls(&port))?;
            setup_veth_end(&peer_ns, IFACE, mtu, &peer_settings)?;
            if peer != Role::Client {
                ip(&router, &["link", "set", &port, "master", BRIDGE])?;
            }
        }
        sysctls(&router, &iface_sysctls(BRIDGE))?;
        let mtu = LB_SEGMENT_MTU.to_string();
        ip(&router, &["link", "set", BRIDGE, "mtu", &mtu, "up"]).map(drop)
    }

    fn add_addresses_and_routes(&self) -> Result<()> {
        let client = self.ns(Role::Client);
        add_addr(&client, IFACE, CLIENT_V4.into(), 24)?;
        add_addr(&client, IFACE, CLIENT_V6.into(), 64)?;
        add_route(&client, "default", ROUTER_CLIENT_V4.into())?;
        add_route(&client, "default", ROUTER_CLIENT_V6.into())?;

        let router = self.ns(Role::Router);
        add_addr(&router, "client", ROUTER_CLIENT_V4.into(), 24)?;
        add_addr(&router, "client", ROUTER_CLIENT_V6.into(), 64)?;
        add_addr(&router, BRIDGE, ROUTER_V4.into(), 24)?;
        add_addr(&router, BRIDGE, ROUTER_V6.into(), 64)?;
        if self.nodes == 0 {
            let (net4, len4) = VIP_NET_V4;
            let (net6, len6) = VIP_NET_V6;
            add_route(&router, &format!("{net4}/{len4}"), LB_V4.into())?;
            add_route(&router, &format!("{net6}/{len6}"), LB_V6.into())?;
        }

        for b in self.balancers() {
            let lb = self.ns(b.role);
            add_addr(&lb, IFACE, b.v4.into(), 24)?;
            add_addr(&lb, IFACE, b.v6.into(), 64)?;
            add_route(&lb, "default", ROUTER_V4.into())?;
            add_route(&lb, "default", ROUTER_V6.into())?;
        }

        for i in 1..=self.backends {
            let backend = self.ns(Role::Backend(i));
            add_addr(&backend, IFACE, backend_v4(i).into(), 24)?;
            add_addr(&backend, IFACE, backend_v6(i).into(), 64)?;
            add_addr(&backend, "lo", VIP_V4.into(), 32)?;
            add_addr(&backend, "lo", VIP_V6.into(), 128)?;
            add_route(&backend, "default", ROUTER_V4.into())?;
            add_route(&backend, "default", ROUTER_V6.into())?;
        }
        Ok(())
    }

    /// Waits until no IPv6 address is tentative in any namespace; with DAD
    /// off this is immediate, but it makes the guarantee explicit.
    fn wait_addresses_usable(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        for role in self.roles() {
            let ns = self.ns(role);
            loop {
                let links: Value =
                    serde_json::from_str(&ip(&ns, &["-j", "-6", "addr", "show", "tentative"])?)
                        .with_context(|| {
                            format!("parsing `ip -n {ns} -j -6 addr show tentative`")
                        })?;
                let tentative = links
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
                    .count();
                if tentative == 0 {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{tentative} IPv6 addresses in {ns} still tentative after {SETTLE_TIMEOUT:?}"
                );
                thread::sleep(POLL_INTERVAL);
            }
        }
        Ok(())
    }

    fn read_macs(&mut self) -> Result<()> {
        let router = self.ns(Role::Router);
        self.macs = Macs {
            client: read_mac(&self.ns(Role::Client), IFACE)?,
            router_client: read_mac(&router, "client")?,
            // Read after the ports joined: a bridge takes its MAC from them.
            router: read_mac(&router, BRIDGE)?,
            balancers: self
                .balancers()
                .iter()
                .map(|b| read_mac(&self.ns(b.role), IFACE))
                .collect::<Result<_>>()?,
            backends: (1..=self.backends)
                .map(|i| read_mac(&self.ns(Role::Backend(i)), IFACE))
                .collect::<Result<_>>()?,
        };
        Ok(())
    }

    /// Permanent neighbour entries on every link the datapath uses, so the
    /// first packets of a test don't wait for ARP or neighbour discovery.
    fn add_neighbours(&self) -> Result<()> {
        let macs = &self.macs;
        let client = self.ns(Role::Client);
        let router = self.ns(Role::Router);
        let balancers = self.balancers();
        add_neigh(&client, IFACE, ROUTER_CLIENT_V4.into(), macs.router_client)?;
        add_neigh(&client, IFACE, ROUTER_CLIENT_V6.into(), macs.router_client)?;
        add_neigh(&router, "client", CLIENT_V4.into(), macs.client)?;
        add_neigh(&router, "client", CLIENT_V6.into(), macs.client)?;
        for (b, &mac) in balancers.iter().zip(&macs.balancers) {
            let lb = self.ns(b.role);
            add_neigh(&router, BRIDGE, b.v4.into(), mac)?;
            add_neigh(&router, BRIDGE, b.v6.into(), mac)?;
            add_neigh(&lb, IFACE, ROUTER_V4.into(), macs.router)?;
            add_neigh(&lb, IFACE, ROUTER_V6.into(), macs.router)?;
        }
        for (i, &mac) in (1..).zip(&macs.backends) {
            let backend = self.ns(Role::Backend(i));
            for addr in [IpAddr::from(backend_v4(i)), backend_v6(i).into()] {
                for b in &balancers {
                    add_neigh(&self.ns(b.role), IFACE, addr, mac)?;
                }
                add_neigh(&router, BRIDGE, addr, mac)?;
            }
            add_neigh(&backend, IFACE, ROUTER_V4.into(), macs.router)?;
            add_neigh(&backend, IFACE, ROUTER_V6.into(), macs.router)?;
        }
        Ok(())
    }

    /// XDP_TX out of a veth only delivers if the peer runs an XDP program,
    /// else frames vanish: the router's `lb` port (peer of the lb's eth0) gets
    /// "pass", and each backend's eth0 gets "decap", which strips the tunnels
    /// the balancer adds and passes everything else; the backends' router ports get "pass"
    /// too, for what "decap" sends back out (second chance).
    fn attach_xdp(&self, xlb: &Path) -> Result<()> {
        let pins = pin_dir(&self.prefix);
        fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
        let mut targets: Vec<(Role, String, &str, PathBuf)> = self
            .balancers()
            .into_iter()
            .map(|b| {
                let pin = pins.join(format!("router-{}", b.port));
                (Role::Router, b.port, "pass", pin)
            })
            .chain((1..=self.backends).map(|i| {
                let port = format!("b{i}");
                let pin = pins.join(format!("router-{port}"));
                (Role::Router, port, "pass", pin)
            }))
            .collect();
        targets.extend((1..=self.backends).map(|i| {
            (
                Role::Backend(i),
                IFACE.to_owned(),
                "decap",
                pins.join(format!("backend{i}-{IFACE}")),
            )
        }));
        for (role, iface, program, pin) in targets {
            let mut cmd = netns_command(&self.ns(role), &[xlb.as_os_str()]);
            cmd.args(["attach", "--program", program, "--iface", &iface, "--pin"])
                .arg(&pin);
            run(&mut cmd)?;
        }
        Ok(())
    }

    fn start_servers(&mut self, server_bin: &Path) -> Result<()> {
        let run_dir = run_dir(&self.prefix);
        for i in 1..=self.backends {
            let name = Role::Backend(i).to_string();
            let log_path = run_dir.join(format!("{name}.log"));
            let log = File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = netns_command(
                &self.ns(Role::Backend(i)),
                &[
                    server_bin.as_os_str(),
                    "serve".as_ref(),
                    "--name".as_ref(),
                    name.as_ref(),
                ],
            );
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log file")?)
                .stderr(log);
            // SAFETY: the hook only calls setsid(2), which is
            // async-signal-safe and touches no memory of the parent. A new
            // session keeps the server out of the terminal's signals.
            unsafe {
                cmd.pre_exec(|| setsid().map(drop).map_err(io::Error::from));
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start `{}`", command_line(&cmd)))?;
            // nsenter execs the server, so this is the server's pid.
            let pid_path = run_dir.join(format!("{name}.pid"));
            fs::write(&pid_path, child.id().to_string())
                .with_context(|| format!("writing {}", pid_path.display()))?;
            self.servers.push(child);
        }
        for i in 1..=self.backends {
            let ns = self.ns(Role::Backend(i));
            let log_path = run_dir.join(format!("backend{i}.log"));
            let server = &mut self.servers[i - 1];
            // The log goes with the lab on error: quote it in the error.
            in_netns(&ns, || wait_listening(server))?.with_context(|| {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let tail = &log[log.floor_char_boundary(log.len().saturating_sub(2000))..];
                format!("server in {ns}, log: {}", tail.trim())
            })?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = Lab::down(&self.prefix) {
            eprintln!("xlb-lab: {e:#}");
        }
        for server in &mut self.servers {
            // Already killed by `down`; kill again in case it was missed,
            // then reap. SIGKILL cannot be ignored, so `wait` returns.
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`;
/// sockets it creates belong to that namespace (and stay there when
/// returned), and threads or processes it starts begin there too. A panic in
/// `f` is propagated to the caller.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(scope, move || {
                // Only this thread moves: network namespaces are per thread.
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {ns}"))?;
                Ok(f())
            })
            .context("spawning a thread")?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Polls until the server (running in this thread's namespace) accepts
/// HTTP connections; it binds UDP and echo before HTTP.
fn wait_listening(server: &mut Child) -> Result<()> {
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HTTP_PORT));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = server.try_wait().context("polling the server")? {
            bail!("exited ({status}) before listening");
        }
        ensure!(
            Instant::now() < deadline,
            "not listening on port {HTTP_PORT} after {SERVER_START_TIMEOUT:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    ensure!(
        prefix.len() <= 32
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "lab prefix {prefix:?} must be at most 32 letters, digits, '-', '_' or '.'"
    );
    Ok(())
}

/// The roles whose namespaces exist for this prefix, in order.
fn existing_roles(prefix: &str) -> Result<Vec<Role>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.with_context(|| format!("listing {NETNS_DIR}"))?,
    };
    let mut roles = Vec::new();
    for entry in entries {
        let name = entry
            .with_context(|| format!("listing {NETNS_DIR}"))?
            .file_name();
        if let Some(role) = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(Role::from_suffix)
        {
            roles.push(role);
        }
    }
    roles.sort();
    Ok(roles)
}

/// Kills the servers named by the pid files in `run_dir`, if they still run.
fn kill_recorded_servers(run_dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(run_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        entries => entries.with_context(|| format!("listing {}", run_dir.display()))?,
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", run_dir.display()))?
            .path();
        if path.extension() != Some(OsStr::new("pid")) {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .with_context(|| format!("bad pid in {}", path.display()))?;
        // The pid may have been reused since: only kill our server.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|arg| arg == b"serve") {
            kill_pid(pid)?;
        }
    }
    Ok(())
}

/// Kills every process in namespace `ns` except this one.
fn kill_all_in(ns: &str) -> Result<()> {
    for pid in netns_pids(ns)? {
        if pid != std::process::id() as i32 {
            kill_pid(pid)?;
        }
    }
    Ok(())
}

fn kill_pid(pid: i32) -> Result<()> {
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("killing pid {pid}")),
    }
}

/// The processes in namespace `ns` (exited ones awaiting reaping excluded).
fn netns_pids(ns: &str) -> Result<Vec<i32>> {
    let out = run(Command::new("ip").args(["netns", "pids", ns]))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|pid| {
            pid.parse()
                .with_context(|| format!("bad pid {pid:?} from `ip netns pids {ns}`"))
        })
        .collect()
}

/// Waits until the killed processes are gone from all namespaces.
fn wait_until_empty(namespaces: &[String]) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for ns in namespaces {
        loop {
            let pids = netns_pids(ns)?;
            if pids.iter().all(|&pid| pid == std::process::id() as i32) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "processes {pids:?} still in {ns} after {SETTLE_TIMEOUT:?}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.with_context(|| format!("removing {}", dir.display())),
    }
}

/// Takes an exclusive lock on `path` (created if needed) until dropped.
fn lock_file(path: &Path) -> Result<Flock<File>> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}

/// Applies `settings`, turns off tx offload, sets the MTU and brings up one
/// end of a veth pair.
fn setup_veth_end(ns: &str, iface: &str, mtu: u32, settings: &[(String, &str)]) -> Result<()> {
    sysctls(ns, settings)?;
    // Packets sent from a namespace carry partial checksums that the veth
    // leaves for the receiver to complete; once XDP_TX or a redirect forwards
    // such a frame, the receiver drops it as corrupt. Without tx offload the
    // sending stack completes every checksum.
    run(&mut netns_command(
        ns,
        &["ethtool", "-K", iface, "tx", "off"],
    ))?;
    ip(ns, &["link", "set", iface, "mtu", &mtu.to_string(), "up"]).map(drop)
}

/// Per-interface settings every lab interface gets (see `create_namespaces`).
fn iface_sysctls(iface: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("net.ipv4.conf.{iface}.rp_filter"), "0"),
        (format!("net.ipv6.conf.{iface}.accept_dad"), "0"),
    ]
}

/// Writes sysctls of namespace `ns` through /proc/sys, which shows the
/// namespace of the thread that opens it.
fn sysctls(ns: &str, settings: &[(String, &str)]) -> Result<()> {
    in_netns(ns, || {
        settings.iter().try_for_each(|(key, value)| {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).with_context(|| format!("sysctl {key}={value} in {ns}"))
        })
    })?
}

fn add_addr(ns: &str, dev: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
    let cidr = format!("{addr}/{prefix_len}");
    let mut args = vec!["addr", "add", &cidr, "dev", dev];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ip(ns, &args).map(drop)
}

fn add_route(ns: &str, dst: &str, via: IpAddr) -> Result<()> {
    let family = if via.is_ipv6() { "-6" } else { "-4" };
    ip(ns, &[family, "route", "add", dst, "via", &via.to_string()]).map(drop)
}

fn add_neigh(ns: &str, dev: &str, addr: IpAddr, mac: Mac) -> Result<()> {
    let (addr, mac) = (addr.to_string(), mac.to_string());
    ip(
        ns,
        &[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )
    .map(drop)
}

fn read_mac(ns: &str, dev: &str) -> Result<Mac> {
    let links: Value = serde_json::from_str(&ip(ns, &["-j", "link", "show", "dev", dev])?)
        .with_context(|| format!("parsing `ip -n {ns} -j link show dev {dev}`"))?;
    links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {dev} in {ns}"))?
        .parse()
}

/// One line of `status` for an interface from `ip -j addr show`.
fn describe_link(link: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let addrs: Vec<String> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", text(&a["local"]), a["prefixlen"]))
        .collect();
    let xdp = match &link["xdp"] {
        Value::Null => String::new(),
        xdp => match &xdp["prog"]["id"] {
            Value::Null => " xdp".to_owned(),
            id => format!(" xdp prog {id}"),
        },
    };
    format!(
        "{:<8} {:<8} {:<17} {}{xdp}",
        text(&link["ifname"]),
        text(&link["operstate"]),
        link["address"].as_str().unwrap_or("-"),
        addrs.join(" ")
    )
}

/// Whether the server of a backend is alive, from its pid file.
fn server_state(prefix: &str, role: Role) -> String {
    let pid_path = run_dir(prefix).join(format!("{role}.pid"));
    let Ok(text) = fs::read_to_string(&pid_path) else {
        return format!("no pid file {}", pid_path.display());
    };
    let pid = text.trim();
    // A zombie is not alive, though its /proc entry remains.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) if !stat.rsplit(") ").next().unwrap_or("").starts_with('Z') => {
            format!("pid {pid} alive")
        }
        _ => format!("pid {pid} dead"),
    }
}

/// A command running `argv` in network namespace `ns`: `nsenter --net`.
///
/// Unlike `ip netns exec`, this keeps the host's mount namespace: `ip netns
/// exec` mounts a fresh sysfs over /sys, which hides the bpffs at
/// /sys/fs/bpf where xlb pins its programs. The price is that /sys/class/net
/// shows the host's interfaces; tools that look interfaces up by netlink or
/// ioctl (ip, ethtool, if_nametoindex) are unaffected.
pub fn netns_command<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={NETNS_DIR}/{ns}"))
        .arg("--")
        .args(argv);
    cmd
}

/// Runs `ip -n ns args...` and returns its stdout.
fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").args(["-n", ns]).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion; fails, naming the command and quoting its
/// stderr, unless it exits with status 0.
/// Writes a self-signed P-256 certificate for `names` (the first is the subject) and its key,
/// valid for a day: for the demo's and the L7 bench's HTTPS listeners.
pub fn self_signed_cert(cert: &Path, key: &Path, names: &[&str]) -> Result<()> {
    let subject = format!(
        "/CN={}",
        names.first().context("a certificate needs a name")?
    );
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let san = format!("subjectAltName={}", san.join(","));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
    .args(["-nodes", "-days", "1", "-subj", &subject, "-addext", &san])
    .arg("-keyout")
    .arg(key)
    .arg("-out")
    .arg(cert);
    run(&mut cmd).map(drop)
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", command_line(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let (colon, stderr) = if stderr.is_empty() {
            ("", "")
        } else {
            (": ", stderr)
        };
        bail!(
            "`{}` failed ({}){colon}{stderr}",
            command_line(cmd),
            out.status
        );
    }
    Ok(out)
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
