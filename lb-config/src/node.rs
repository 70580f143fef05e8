//! `[node]`: this load balancer node.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

use crate::{Refusal, bgp::Bgp};

/// This load balancer node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The interface the balancer's XDP program is attached to.
    pub interface: String,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// IPv4 prefix (first two bytes used) for tunnel outer sources.
    #[serde(default = "default_tunnel_v4")]
    pub tunnel_source_v4: Ipv4Addr,
    /// IPv6 prefix (first 12 bytes used) for tunnel outer sources.
    #[serde(default = "default_tunnel_v6")]
    pub tunnel_source_v6: Ipv6Addr,
    /// Largest IP packet toward targets; bigger ones after encapsulation get ICMP "too big".
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Next hop MAC when the kernel FIB has none (e.g. "02:00:00:00:00:01").
    #[serde(default)]
    pub gateway_mac: Option<String>,
    /// Flow table size (entries).
    #[serde(default = "default_flows")]
    pub flow_table_size: u32,
    /// Most L4 listeners at once. Each holds two Maglev tables of its `maglev_table_size`;
    /// `xlb check` reports the datapath's memory.
    #[serde(default = "default_max_listeners")]
    pub max_listeners: u32,
    /// Maglev table slots over all L4 listeners (8 bytes each): a listener takes two tables of
    /// its `maglev_table_size`. Default: room for `max_listeners` at 65537
    /// ([`Node::ring_slots`]).
    #[serde(default)]
    pub maglev_slots: Option<u32>,
    /// Most L4 targets at once, draining ones included.
    #[serde(default = "default_max_targets")]
    pub max_targets: u32,
    /// Where the datapath's maps and XDP link are pinned; they outlive the agent, so a restart
    /// or an upgrade drops no packet and moves no flow.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// This node's availability zone (targets in it are preferred when cross-zone is off).
    #[serde(default)]
    pub zone: Option<String>,
    /// Weight of each zone's targets when traffic crosses zones (default 1 each).
    #[serde(default)]
    pub zone_weights: BTreeMap<String, u32>,
    /// The control API's Unix socket (root only, mode 0600), used by the CLI.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Where Prometheus metrics are served (`http://ADDRESS/metrics`); off when absent.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// Where registrations made through the CLI are kept across restarts.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// Announce the VIPs this node can serve with BGP, through BIRD.
    #[serde(default)]
    pub bgp: Option<Bgp>,
    /// The source of `snat` listeners' packets toward their targets.
    #[serde(default)]
    pub snat: Snat,
}

/// `[node.snat]`: the address and ports `snat` listeners' packets leave from. The targets answer
/// them, so the address must be this node's and routed to it from the targets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Snat {
    /// The source toward IPv4 targets.
    #[serde(default)]
    pub address_v4: Option<Ipv4Addr>,
    /// The source toward IPv6 targets.
    #[serde(default)]
    pub address_v6: Option<Ipv6Addr>,
    /// The source ports, `[first, last]`: one flow each per target address and port. Outside
    /// the kernel's ephemeral range (Linux's default is 32768–60999), whose ports the node's own
    /// connections take.
    #[serde(default = "default_snat_ports")]
    pub ports: [u16; 2],
    /// Seconds a UDP flow is kept without a packet (NLB's 120).
    #[serde(default = "default_snat_udp_timeout")]
    pub udp_timeout_seconds: u32,
}

impl Default for Snat {
    fn default() -> Snat {
        Snat {
            address_v4: None,
            address_v6: None,
            ports: default_snat_ports(),
            udp_timeout_seconds: default_snat_udp_timeout(),
        }
    }
}

fn default_snat_ports() -> [u16; 2] {
    [10000, 32767]
}
fn default_snat_udp_timeout() -> u32 {
    120
}

impl Snat {
    /// Its source address toward targets of `target`'s family.
    pub fn address(&self, target: IpAddr) -> Option<IpAddr> {
        match target {
            IpAddr::V4(_) => self.address_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.address_v6.map(IpAddr::V6),
        }
    }

    /// Ports in the range.
    pub fn port_count(&self) -> u32 {
        u32::from(self.ports[1]) + 1 - u32::from(self.ports[0])
    }

    fn validate(&self) -> Result<(), Refusal> {
        let [first, last] = self.ports;
        if first == 0 || first > last {
            return Err(Refusal::new(
                "node.snat.ports",
                format!("[{first}, {last}] is not a range [first, last] within 1..=65535"),
            ));
        }
        if !(1..=3600).contains(&self.udp_timeout_seconds) {
            return Err(Refusal::new(
                "node.snat.udp_timeout_seconds",
                format!("{} is outside 1..=3600", self.udp_timeout_seconds),
            ));
        }
        for (key, a) in [
            ("address_v4", self.address_v4.map(IpAddr::V4)),
            ("address_v6", self.address_v6.map(IpAddr::V6)),
        ] {
            if let Some(a) = a
                && (a.is_unspecified() || a.is_multicast() || a.is_loopback())
            {
                return Err(Refusal::new(
                    format!("node.snat.{key}"),
                    format!("{a} cannot be a source the targets answer"),
                ));
            }
        }
        Ok(())
    }
}

/// Where the agent of a config file listens and pins: what the CLI needs to reach it. Read
/// without validating the rest, so that a file being edited still names its agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Paths {
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            api_socket: default_api_socket(),
            pin_dir: default_pin_dir(),
        }
    }
}

impl Paths {
    /// The paths `[node]` of the file at `path` sets (defaults for those it leaves out).
    pub fn read(path: &std::path::Path) -> Result<Paths, crate::ConfigError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            node: Paths,
        }
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| crate::ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let file: File = toml::from_str(&text)
            .map_err(|error| crate::ConfigError::Parse { path: name, error })?;
        Ok(file.node)
    }
}

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (fast; veth, most NICs).
    #[default]
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
}

fn default_tunnel_v4() -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, 0)
}
fn default_tunnel_v6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)
}
const fn default_mtu() -> u16 {
    1500
}
const fn default_flows() -> u32 {
    lb_common::FLOWS_DEFAULT
}
const fn default_max_listeners() -> u32 {
    lb_common::LISTENERS_DEFAULT
}
const fn default_max_targets() -> u32 {
    lb_common::TARGETS_DEFAULT
}
/// The largest `max_listeners` (4 GiB of Maglev tables at the default size).
pub const MAX_LISTENERS: u32 = 4096;
/// The largest `maglev_slots` (8 GiB of Maglev tables).
pub const MAX_MAGLEV_SLOTS: u32 = 1 << 30;
/// The largest `max_targets`: 2^20 backend slots (a Maglev table of 65537 still takes them).
pub const MAX_TARGETS: u32 = 1 << 20;
fn default_api_socket() -> PathBuf {
    "/run/xlb/xlb.sock".into()
}
fn default_state_file() -> PathBuf {
    "/var/lib/xlb/state.json".into()
}
fn default_pin_dir() -> PathBuf {
    "/sys/fs/bpf/xlb".into()
}

impl Node {
    pub(crate) fn validate(&self) -> Result<(), Refusal> {
        if !(576..=9000).contains(&self.mtu) {
            return Err(Refusal::new(
                "node.mtu",
                format!("{} is outside 576..=9000", self.mtu),
            ));
        }
        if let Some(mac) = &self.gateway_mac {
            parse_mac(mac).map_err(|m| Refusal::new("node.gateway_mac", m))?;
        }
        if !(1..=MAX_LISTENERS).contains(&self.max_listeners) {
            return Err(Refusal::new(
                "node.max_listeners",
                format!("{} is outside 1..={MAX_LISTENERS}", self.max_listeners),
            ));
        }
        if !(1..=MAX_TARGETS).contains(&self.max_targets) {
            return Err(Refusal::new(
                "node.max_targets",
                format!("{} is outside 1..={MAX_TARGETS}", self.max_targets),
            ));
        }
        if let Some(n) = self.maglev_slots
            && !(1..=MAX_MAGLEV_SLOTS).contains(&n)
        {
            return Err(Refusal::new(
                "node.maglev_slots",
                format!("{n} is outside 1..={MAX_MAGLEV_SLOTS}"),
            ));
        }
        if self.flow_table_size == 0 {
            return Err(Refusal::new("node.flow_table_size", "must be at least 1"));
        }
        if let Some(bgp) = &self.bgp {
            bgp.validate()?;
        }
        self.snat.validate()?;
        // A target's ring weight is its weight (at most 1000) times its zone's.
        if let Some((zone, w)) = self.zone_weights.iter().find(|(_, w)| **w > 1000) {
            return Err(Refusal::new(
                format!("node.zone_weights.{zone}"),
                format!("{w} is outside 0..=1000"),
            ));
        }
        Ok(())
    }

    /// The Maglev table slots the datapath holds (`RINGS`): `maglev_slots`, else two tables of
    /// the default size per listener.
    pub fn ring_slots(&self) -> u32 {
        self.maglev_slots
            .unwrap_or(self.max_listeners * 2 * lb_common::RING_SIZE_DEFAULT)
    }

    /// Whether `addr` is inside the prefix tunnels take their outer source from: the /16 of
    /// `tunnel_source_v4`, the /96 of `tunnel_source_v6` (the rest comes from the flow hash).
    pub fn in_tunnel_sources(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a.octets()[..2] == self.tunnel_source_v4.octets()[..2],
            IpAddr::V6(a) => a.octets()[..12] == self.tunnel_source_v6.octets()[..12],
        }
    }

    /// The tunnel source prefix of `addr`'s family, as a CIDR.
    pub fn tunnel_prefix(&self, addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(_) => {
                let [a, b, ..] = self.tunnel_source_v4.octets();
                format!("{a}.{b}.0.0/16")
            }
            IpAddr::V6(_) => {
                let mut o = self.tunnel_source_v6.octets();
                o[12..].fill(0);
                format!("{}/96", Ipv6Addr::from(o))
            }
        }
    }

    /// `gateway_mac` as bytes (validated at parse).
    pub fn gateway_mac(&self) -> Option<[u8; 6]> {
        self.gateway_mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}
