//! `[[listeners]]`: the L4 listeners (NLB's). TCP, UDP and TCP_UDP listeners are VIPs balanced
//! by the XDP tier; TLS listeners, and TCP listeners whose group wants a PROXY v2 header, are
//! served by a proxy in user space ([`Config::in_user_space`]): XDP forwards packets, and cannot
//! terminate TLS or put bytes in front of a TCP stream.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    AlpnPolicy, CertificateFiles, Config, Protocol, Refusal, SslPolicy, TargetGroup,
    attribute::{self, Tier},
};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The VIP.
    pub address: IpAddr,
    /// 0 listens on every port.
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub forwarding: Forwarding,
    pub default_action: Action,
    /// TLS only: the first is the default certificate, the others are picked by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// TLS only: the protocol versions taken, by ELB's policy name.
    #[serde(default)]
    pub ssl_policy: Option<SslPolicy>,
    /// TLS only: NLB's ALPN policy.
    #[serde(default)]
    pub alpn_policy: Option<AlpnPolicy>,
    /// Slots of each of the listener's two Maglev tables (a prime M, more than the group's
    /// targets). The larger M is against the targets N, the closer a leaving target's disruption
    /// comes to its share 1/N, at 16·M bytes of kernel memory and a build time that grows with M.
    #[serde(default = "default_table_size")]
    pub maglev_table_size: u32,
    /// NLB's listener attributes by their AWS names (`attribute::LISTENER`).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

const fn default_table_size() -> u32 {
    lb_common::RING_SIZE_DEFAULT
}

/// How the XDP tier sends a listener's packets to its targets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPIP / IP6IP6 to the target, which decapsulates (`xlb attach --program decap`).
    #[default]
    Tunnel,
    /// L2 direct server return: the target shares the L2 segment and has the VIP on `lo`.
    Dsr,
    /// Destination NAT to the target's address and port (LVS-NAT): the target runs a plain
    /// server and routes its replies back through this node, which gives them the VIP back.
    Nat,
    /// Destination and source NAT (NLB without client IP preservation): the target sees the
    /// node's `[node.snat]` address and a port of its range, and answers the node.
    Snat,
}

impl Forwarding {
    /// NAT or SNAT: the destination becomes the target's address and port.
    pub fn translates(self) -> bool {
        matches!(self, Forwarding::Nat | Forwarding::Snat)
    }
}

/// An L4 listener's action.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Action {
    Forward { target_group: String },
}

impl Listener {
    /// The target group this listener forwards to.
    pub fn target_group(&self) -> &str {
        let Action::Forward { target_group } = &self.default_action;
        target_group
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.address, self.port)
    }

    /// `tcp.idle_timeout.seconds`: how long the proxy, or the SNAT tracking of an `snat`
    /// listener, keeps a connection where nothing moves.
    pub fn idle_timeout(&self) -> Duration {
        let v = attribute::value(
            attribute::LISTENER,
            Tier::L4,
            &self.attributes,
            IDLE_TIMEOUT_KEY,
        );
        Duration::from_secs(v.parse().unwrap_or(350))
    }
}

/// NLB's listener attribute of the proxy's idle timeout.
const IDLE_TIMEOUT_KEY: &str = "tcp.idle_timeout.seconds";

impl Config {
    /// Whether listener `l` is served by the user-space proxy rather than the XDP tier: TLS
    /// listeners, and listeners whose group takes a PROXY v2 header.
    pub fn in_user_space(&self, l: &Listener) -> bool {
        l.protocol == Protocol::Tls
            || self
                .group(l.target_group())
                .is_some_and(TargetGroup::proxy_protocol_v2)
    }

    /// The listeners the XDP tier balances.
    pub fn xdp_listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter().filter(|l| !self.in_user_space(l))
    }

    /// The port the XDP tier sends target `t` of `g` to: its own, else the group's, when NAT
    /// listeners on one port forward to `g`; none when packets keep their port (tunnel, dsr,
    /// NAT on every port). Validation keeps one way per group.
    pub fn nat_port(&self, g: &TargetGroup, t: &crate::Target) -> Option<u16> {
        self.xdp_listeners()
            .any(|l| l.target_group() == g.name && sends_to_target_port(l))
            .then(|| t.port.unwrap_or(g.port))
    }
}

/// Whether `l` rewrites the destination port to its targets' (NAT on one port).
fn sends_to_target_port(l: &Listener) -> bool {
    l.forwarding.translates() && l.port != 0
}

/// How an XDP listener sends to its group's targets, as refusals name it: a group's targets
/// are set up for one way.
fn way(l: &Listener) -> &'static str {
    match l.forwarding {
        Forwarding::Tunnel => "tunnel",
        Forwarding::Dsr => "dsr",
        Forwarding::Nat if l.port == 0 => "nat on every port",
        Forwarding::Nat => "nat to the targets' ports",
        Forwarding::Snat if l.port == 0 => "snat on every port",
        Forwarding::Snat => "snat to the targets' ports",
    }
}

/// The config's name of a forwarding.
pub fn forwarding_name(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Tunnel => "tunnel",
        Forwarding::Dsr => "dsr",
        Forwarding::Nat => "nat",
        Forwarding::Snat => "snat",
    }
}

/// Checks the L4 listeners against the groups they name.
pub(crate) fn validate(cfg: &Config) -> Result<(), Refusal> {
    let max = cfg.node.max_listeners;
    if cfg.listeners.len() > max as usize {
        return Err(Refusal::new(
            "listeners",
            format!(
                "{} listeners; node.max_listeners allows {max}",
                cfg.listeners.len()
            ),
        ));
    }
    // Each target of the groups XDP listeners forward to takes a datapath slot: one per address,
    // and per port for NAT targets.
    let targets: BTreeSet<(IpAddr, Option<u16>)> = cfg
        .xdp_listeners()
        .filter_map(|l| cfg.group(l.target_group()))
        .flat_map(|g| g.targets.iter().map(|t| (t.id, cfg.nat_port(g, t))))
        .collect();
    let max = cfg.node.max_targets;
    if targets.len() > max as usize {
        return Err(Refusal::new(
            "target_groups",
            format!(
                "the L4 listeners' groups hold {} targets; node.max_targets allows {max}",
                targets.len()
            ),
        ));
    }
    // Two tables per XDP listener, all in the node's ring space.
    let slots = cfg.node.ring_slots();
    let mut taken = 0u64;
    let xdp = cfg.listeners.iter().enumerate();
    for (i, l) in xdp.filter(|(_, l)| !cfg.in_user_space(l)) {
        let key = format!("listeners[{i}].maglev_table_size");
        let m = l.maglev_table_size;
        if !lb_common::is_prime(m) {
            return Err(Refusal::new(
                key,
                format!("{m} is not prime (a Maglev table's size must be, e.g. 65537 or 655373)"),
            ));
        }
        if let Some(tg) = cfg.group(l.target_group())
            && tg.targets.len() >= m as usize
        {
            return Err(Refusal::new(
                key,
                format!(
                    "{m} slots for the {} targets of {:?}: the table must be larger than its \
                     targets (100 times or more keeps disruption low)",
                    tg.targets.len(),
                    tg.name
                ),
            ));
        }
        taken += 2 * u64::from(m);
        if taken > u64::from(slots) {
            return Err(Refusal::new(
                key,
                format!(
                    "the tables of the XDP listeners up to listeners[{i}] take {taken} slots (two of \
                     maglev_table_size each); node.maglev_slots holds {slots}"
                ),
            ));
        }
    }
    // What the datapath looks a packet up by: two listeners on one (address, port, protocol)
    // would be one VIP, the second never served.
    let mut seen: BTreeMap<(IpAddr, u16, u8), usize> = BTreeMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        for p in l.protocol.ip_protocols() {
            if let Some(first) = seen.insert((l.address, l.port, *p), i) {
                return Err(Refusal::new(
                    format!("listeners[{i}]"),
                    format!(
                        "listeners[{first}] already listens on {} port {} {}",
                        l.address,
                        l.port,
                        if *p == 6 { "TCP" } else { "UDP" }
                    ),
                ));
            }
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let key = format!("listeners[{i}].default_action.target_group");
        let name = l.target_group();
        let Some(tg) = cfg.group(name) else {
            return Err(Refusal::new(key, format!("no target group named {name:?}")));
        };
        if tg.protocol.is_http() || l.protocol.is_http() {
            return Err(Refusal::new(
                key,
                "HTTP belongs to http_listeners, not to L4 listeners",
            ));
        }
        check_tls(i, l, tg)?;
        check_attributes(cfg, i, l)?;
        if cfg.in_user_space(l) {
            check_user_space(cfg, i, l)?;
            continue;
        }
        if l.forwarding == Forwarding::Tunnel && cfg.node.in_tunnel_sources(l.address) {
            return Err(Refusal::new(
                format!("listeners[{i}].address"),
                format!(
                    "{} is inside the tunnel sources ({}): replies would look like tunnel traffic",
                    l.address,
                    cfg.node.tunnel_prefix(l.address)
                ),
            ));
        }
        for (j, t) in tg.targets.iter().enumerate() {
            if l.forwarding == Forwarding::Tunnel && cfg.node.in_tunnel_sources(t.id) {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].id", tg.name),
                    format!(
                        "{} is inside the tunnel sources ({}): the path would drop its tunnels as \
                         martians; set node.tunnel_source_v4/v6 to a prefix no host uses",
                        t.id,
                        cfg.node.tunnel_prefix(t.id)
                    ),
                ));
            }
            if l.address.is_ipv6() && t.id.is_ipv4() && l.forwarding == Forwarding::Tunnel {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].id", tg.name),
                    format!(
                        "IPv4 target {} cannot receive the IPv6 VIP {} through a tunnel",
                        t.id, l.address
                    ),
                ));
            }
            // NAT rewrites the addresses in place: one family end to end.
            if l.forwarding.translates() && l.address.is_ipv4() != t.id.is_ipv4() {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].id", tg.name),
                    format!(
                        "{}: target {} and VIP {} (listeners[{i}]) are of different IP \
                         families; NAT rewrites addresses in place",
                        forwarding_name(l.forwarding),
                        t.id,
                        l.address
                    ),
                ));
            }
            // SNAT's source is the node's own address of the target's family.
            if l.forwarding == Forwarding::Snat && cfg.node.snat.address(t.id).is_none() {
                let key = if t.id.is_ipv4() {
                    "address_v4"
                } else {
                    "address_v6"
                };
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].id", tg.name),
                    format!(
                        "snat: listeners[{i}] sends to {} from the node's address, and \
                         node.snat.{key} names none",
                        t.id
                    ),
                ));
            }
            // One address on two ports would be one target to the agent, which drains and
            // reports targets by address.
            if let Some(k) = tg.targets[..j].iter().position(|o| o.id == t.id)
                && l.forwarding.translates()
            {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].id", tg.name),
                    format!(
                        "{} is targets[{k}] already: a {} group has each address once (give \
                         another port a group of its own)",
                        t.id,
                        forwarding_name(l.forwarding)
                    ),
                ));
            }
            if t.port.is_some() && !sends_to_target_port(l) {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].port", tg.name),
                    format!(
                        "listeners[{i}] forwards to it by {}, which keeps the packet's port: a \
                         target's own port is for nat listeners on one port (and HTTP groups \
                         and the proxy's listeners)",
                        way(l)
                    ),
                ));
            }
            if l.forwarding == Forwarding::Dsr && t.mac.is_none() {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].mac", tg.name),
                    "dsr forwarding needs each target's MAC",
                ));
            }
        }
    }
    // A target is one datapath backend, with one port: the listeners of a group send one way.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if cfg.in_user_space(l) {
            continue;
        }
        let f = *first.entry(l.target_group()).or_insert(i);
        if way(&cfg.listeners[f]) != way(l) {
            return Err(Refusal::new(
                format!("listeners[{i}].forwarding"),
                format!(
                    "{}: listeners[{f}] forwards to {:?} by {}; a group's targets are set up for \
                     one way",
                    way(l),
                    l.target_group(),
                    way(&cfg.listeners[f])
                ),
            ));
        }
    }
    Ok(())
}

/// What a listener's protocol says of its group and its TLS keys: a TLS listener has
/// certificates and forwards to a TCP or TLS group, as NLB's; other listeners take no TLS keys
/// and no TLS group (a TCP listener passes TLS through, to a TCP group); PROXY v2 needs TCP.
fn check_tls(i: usize, l: &Listener, tg: &TargetGroup) -> Result<(), Refusal> {
    let at = format!("listeners[{i}]");
    let group_key = format!("{at}.default_action.target_group");
    if l.protocol == Protocol::Tls {
        if l.certificates.is_empty() {
            return Err(Refusal::new(
                format!("{at}.certificates"),
                "a TLS listener needs a certificate",
            ));
        }
        if !matches!(tg.protocol, Protocol::Tcp | Protocol::Tls) {
            return Err(Refusal::new(
                group_key,
                format!("{:?} is not a TCP or TLS target group", tg.name),
            ));
        }
        return Ok(());
    }
    let tls_key = [
        ("certificates", !l.certificates.is_empty()),
        ("ssl_policy", l.ssl_policy.is_some()),
        ("alpn_policy", l.alpn_policy.is_some()),
    ]
    .into_iter()
    .find_map(|(k, set)| set.then_some(k));
    if let Some(k) = tls_key {
        return Err(Refusal::new(
            format!("{at}.{k}"),
            "only a TLS listener takes it",
        ));
    }
    if tg.protocol == Protocol::Tls {
        return Err(Refusal::new(
            group_key,
            format!(
                "{:?} is a TLS target group: a TLS listener forwards to it",
                tg.name
            ),
        ));
    }
    if tg.proxy_protocol_v2() && l.protocol.ip_protocols().contains(&17) {
        return Err(Refusal::new(
            group_key,
            format!(
                "{:?} has proxy_protocol_v2.enabled: UDP datagrams cannot carry the header (TCP \
                 and TLS listeners can)",
                tg.name
            ),
        ));
    }
    Ok(())
}

/// Checks a listener's attributes: values in range, and an idle timeout only where one is kept.
/// As on NLB, TCP listeners take `tcp.idle_timeout.seconds`, TLS listeners keep 350 s and UDP
/// flows 120 s; and here only the proxy tracks a connection's idle time: XDP forwards packets,
/// and the target's TCP stack owns the connection.
fn check_attributes(cfg: &Config, i: usize, l: &Listener) -> Result<(), Refusal> {
    let at = format!("listeners[{i}]");
    attribute::check(attribute::LISTENER, Tier::L4, &l.attributes, &at)?;
    if !l.attributes.contains_key(IDLE_TIMEOUT_KEY) {
        return Ok(());
    }
    let refused = match l.protocol {
        Protocol::Tcp if cfg.in_user_space(l) => return Ok(()),
        // SNAT tracks its connections: an idle one gives its port back after this long (a
        // TCP_UDP listener's TCP ones).
        Protocol::Tcp | Protocol::TcpUdp if l.forwarding == Forwarding::Snat => return Ok(()),
        Protocol::Tcp => {
            "this listener is forwarded in XDP, where the target's TCP stack owns the \
             connection and xlb tracks no idle time; a TCP listener the proxy serves (its group \
             has proxy_protocol_v2.enabled), or an snat one, takes it"
        }
        Protocol::Tls => "NLB keeps a TLS listener's idle timeout at 350 s: it cannot be set",
        _ => "only TCP listeners take it (NLB's UDP flows time out after a fixed 120 s)",
    };
    Err(Refusal::new(
        format!("{at}.attributes.\"{IDLE_TIMEOUT_KEY}\""),
        refused,
    ))
}

/// What a listener served in user space needs: a socket of its own on a port of the node's, and
/// the proxy's own connections to the targets (not a tunnel, not DSR).
fn check_user_space(cfg: &Config, i: usize, l: &Listener) -> Result<(), Refusal> {
    let at = format!("listeners[{i}]");
    if l.port == 0 {
        return Err(Refusal::new(
            format!("{at}.port"),
            "0 (every port) is for the XDP tier; this listener is served in user space (TLS, or \
             PROXY v2) and binds one port",
        ));
    }
    if l.forwarding != Forwarding::Tunnel {
        return Err(Refusal::new(
            format!("{at}.forwarding"),
            format!(
                "{}: this listener is served in user space (TLS, or PROXY v2), which connects \
                 to the targets itself; XDP cannot put a header in a TCP stream",
                forwarding_name(l.forwarding)
            ),
        ));
    }
    if cfg
        .group(l.target_group())
        .is_some_and(TargetGroup::source_ip_stickiness)
    {
        return Err(Refusal::new(
            format!("{at}.default_action.target_group"),
            "stickiness.type = \"source_ip\": this listener is served in user space (TLS, or \
             PROXY v2), whose proxy picks targets round robin",
        ));
    }
    if let Some(j) = cfg.http_listeners.iter().position(|h| h.addr() == l.addr()) {
        return Err(Refusal::new(
            format!("{at}.port"),
            format!("http_listeners[{j}] already listens on {}", l.addr()),
        ));
    }
    Ok(())
}
