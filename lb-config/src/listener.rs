//! `[[listeners]]`: the L4 listeners, VIPs balanced by the XDP tier.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Deserialize;

use crate::{Config, Protocol, Refusal};

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
    // Each target address of the groups L4 listeners forward to takes a datapath slot.
    let targets: BTreeSet<IpAddr> = cfg
        .listeners
        .iter()
        .filter_map(|l| cfg.group(l.target_group()))
        .flat_map(|g| g.targets.iter().map(|t| t.id))
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
            if l.forwarding == Forwarding::Dsr && t.mac.is_none() {
                return Err(Refusal::new(
                    format!("target_groups ({}).targets[{j}].mac", tg.name),
                    "dsr forwarding needs each target's MAC",
                ));
            }
        }
    }
    Ok(())
}
