//! `[node.bgp]`: announcing this node's VIPs to its routers through an existing BGP daemon (BIRD
//! 2), so that several nodes can share a VIP behind ECMP and a node that cannot serve leaves it.
//! xlb writes the daemon's config file and asks it to reload; it never speaks BGP itself.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::Deserialize;

use crate::Refusal;

/// How this node announces its VIPs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// This node's AS number.
    pub local_as: u32,
    /// BGP router id (an IPv4 address, as BGP has it).
    pub router_id: Ipv4Addr,
    /// The routers this node peers with.
    pub peers: Vec<Peer>,
    /// The file BIRD reads: xlb writes it whole, so give BIRD a file of its own.
    #[serde(default = "default_config_file")]
    pub config_file: PathBuf,
    /// BIRD's control socket (`birdc -s`).
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Seconds without a message before a peer is down (0: never; else 3..=65535). Routers see a
    /// dead node leave within this time; BFD (`bfd = true`) does it in about a second.
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Run BFD with every peer (the routers must run it too).
    #[serde(default)]
    pub bfd: bool,
    /// Communities on every announced VIP, `"ASN:VALUE"`.
    #[serde(default)]
    pub communities: Vec<String>,
    /// MULTI_EXIT_DISC on every announced VIP.
    #[serde(default)]
    pub med: Option<u32>,
    /// The next hop announced to IPv4 peers; unset, the address of this node's session.
    #[serde(default)]
    pub next_hop_v4: Option<Ipv4Addr>,
    /// The next hop announced to IPv6 peers; unset, the address of this node's session.
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Attributes of some VIPs, over the ones above: by VIP address, since BGP announces
    /// addresses (every listener on one address shares its route).
    #[serde(default)]
    pub vips: Vec<VipAttributes>,
}

/// `[[node.bgp.vips]]`: one VIP address's own attributes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipAttributes {
    /// A listener's address.
    pub address: IpAddr,
    /// Communities added to the node's, `"ASN:VALUE"`.
    #[serde(default)]
    pub communities: Vec<String>,
    /// MULTI_EXIT_DISC instead of the node's: a higher one makes routers prefer other nodes
    /// for this VIP.
    #[serde(default)]
    pub med: Option<u32>,
}

/// A router this node peers with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The router's address, on a network this node is on.
    pub address: IpAddr,
    pub remote_as: u32,
}

fn default_config_file() -> PathBuf {
    "/etc/bird/bird.conf".into()
}
fn default_control_socket() -> PathBuf {
    "/run/bird/bird.ctl".into()
}
fn default_hold_time() -> u16 {
    3
}

impl Bgp {
    pub(crate) fn validate(&self) -> Result<(), Refusal> {
        if self.local_as == 0 {
            return Err(Refusal::new("node.bgp.local_as", "0 is not an AS number"));
        }
        if self.peers.is_empty() {
            return Err(Refusal::new(
                "node.bgp.peers",
                "announcing needs at least one peer",
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.remote_as == 0 {
                return Err(Refusal::new(
                    format!("node.bgp.peers[{i}].remote_as"),
                    "0 is not an AS number",
                ));
            }
            if self.peers[..i].iter().any(|q| q.address == p.address) {
                return Err(Refusal::new(
                    format!("node.bgp.peers[{i}].address"),
                    format!("{} is already a peer", p.address),
                ));
            }
        }
        if (1..3).contains(&self.hold_time) {
            return Err(Refusal::new(
                "node.bgp.hold_time",
                format!("{} is not 0 (never) or 3..=65535 seconds", self.hold_time),
            ));
        }
        for (i, c) in self.communities.iter().enumerate() {
            community(c).map_err(|m| Refusal::new(format!("node.bgp.communities[{i}]"), m))?;
        }
        for (i, v) in self.vips.iter().enumerate() {
            if self.vips[..i].iter().any(|w| w.address == v.address) {
                return Err(Refusal::new(
                    format!("node.bgp.vips[{i}].address"),
                    format!("{} already has attributes in node.bgp.vips", v.address),
                ));
            }
            for (j, c) in v.communities.iter().enumerate() {
                community(c)
                    .map_err(|m| Refusal::new(format!("node.bgp.vips[{i}].communities[{j}]"), m))?;
            }
        }
        Ok(())
    }

    /// Refuses attributes for an address no listener announced over BGP has (`announced`: the
    /// XDP listeners' addresses).
    pub(crate) fn check_vips(&self, announced: &[IpAddr]) -> Result<(), Refusal> {
        match self
            .vips
            .iter()
            .position(|v| !announced.contains(&v.address))
        {
            Some(i) => Err(Refusal::new(
                format!("node.bgp.vips[{i}].address"),
                format!(
                    "{} is no L4 listener's address: only those are announced",
                    self.vips[i].address
                ),
            )),
            None => Ok(()),
        }
    }
}

/// A standard community, `"ASN:VALUE"` with both parts 0..=65535.
pub fn community(text: &str) -> Result<(u16, u16), String> {
    let parse = |s: &str| s.trim().parse::<u16>().ok();
    match text.split_once(':') {
        Some((a, v)) if parse(a).is_some() && parse(v).is_some() => {
            Ok((parse(a).unwrap_or_default(), parse(v).unwrap_or_default()))
        }
        _ => Err(format!(
            "{text:?} is not a community \"ASN:VALUE\" (each 0..=65535)"
        )),
    }
}
