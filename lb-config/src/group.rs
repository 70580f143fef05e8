//! `[[target_groups]]`: one model for the groups of both tiers.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    HealthCheck, Refusal,
    attribute::{self, Tier},
    health::CheckProtocol,
    node::parse_mac,
};

/// A target group: where a listener forwards to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    pub protocol: Protocol,
    /// The targets' port (targets the L7 tier or the proxy connects to, or nat listeners on one
    /// port send to, may name their own).
    pub port: u16,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Attributes by their AWS names (see [`attribute::TARGET_GROUP`]), e.g.
    /// `"stickiness.type" = "source_ip"`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Active health checks; none: every target counts as healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// HTTP and HTTPS groups: ALB's `ProtocolVersion` (`HTTP1`, `HTTP2` or `GRPC`).
    #[serde(default)]
    pub protocol_version: Option<ProtocolVersion>,
}

/// A target.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The target's IP address.
    pub id: IpAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The target's MAC, needed for `dsr` forwarding.
    #[serde(default)]
    pub mac: Option<String>,
    /// The target's availability zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// The target's port, for the L7 tier and the proxy to connect to (HTTP groups, and groups
    /// of TLS or PROXY v2 listeners) and for nat listeners on one port to send to; the group's
    /// `port` otherwise. Refused where XDP keeps the packet's port (tunnel, dsr, nat on every
    /// port).
    #[serde(default)]
    pub port: Option<u16>,
}

const fn default_weight() -> u32 {
    1
}

/// A target group's protocol: toward its targets, and which tier serves it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "TCP_UDP")]
    TcpUdp,
    /// NLB's TLS: a listener that terminates TLS, or a group reached over TLS; both are served
    /// in user space, not by the XDP tier.
    #[serde(rename = "TLS")]
    Tls,
    /// HTTP servers, for `http_listeners`.
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP servers reached over TLS, for `http_listeners`; their certificates are not verified,
    /// as ALB does not.
    #[serde(rename = "HTTPS")]
    Https,
}

impl Protocol {
    /// Whether the group belongs to the L7 tier.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// The scheme of requests toward an HTTP group's targets.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            _ => "http",
        }
    }

    /// The IP protocol numbers an L4 listener of this protocol balances.
    pub fn ip_protocols(self) -> &'static [u8] {
        match self {
            Protocol::Tcp | Protocol::Tls => &[6],
            Protocol::Udp => &[17],
            Protocol::TcpUdp => &[6, 17],
            Protocol::Http | Protocol::Https => &[],
        }
    }

    /// The tier whose attributes the group takes.
    pub fn tier(self) -> Tier {
        if self.is_http() { Tier::L7 } else { Tier::L4 }
    }

    /// The health check protocol when the file names none: NLB's `TCP`, ALB's `HTTP` (for HTTPS
    /// groups too).
    pub(crate) fn default_check(self) -> CheckProtocol {
        if self.is_http() {
            CheckProtocol::Http
        } else {
            CheckProtocol::Tcp
        }
    }
}

/// ALB's target group `ProtocolVersion`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// HTTP/1.1 to the targets, whatever the client spoke.
    #[default]
    #[serde(rename = "HTTP1")]
    Http1,
    /// HTTP/2 to the targets (h2 over TLS, h2c with prior knowledge in clear).
    #[serde(rename = "HTTP2")]
    Http2,
    /// HTTP/2 to the targets, and only gRPC requests are accepted.
    #[serde(rename = "GRPC")]
    Grpc,
}

impl TargetGroup {
    pub(crate) fn validate(&self, at: &str) -> Result<(), Refusal> {
        for (j, t) in self.targets.iter().enumerate() {
            if let Some(mac) = &t.mac {
                parse_mac(mac).map_err(|m| Refusal::new(format!("{at}.targets[{j}].mac"), m))?;
            }
            if t.weight > 1000 {
                return Err(Refusal::new(
                    format!("{at}.targets[{j}].weight"),
                    format!("{} is outside 0..=1000", t.weight),
                ));
            }
        }
        if self.protocol_version.is_some() && !self.protocol.is_http() {
            return Err(Refusal::new(
                format!("{at}.protocol_version"),
                "only HTTP and HTTPS target groups have a protocol version",
            ));
        }
        if let Some(hc) = &self.health_check {
            hc.validate()
                .map_err(|m| Refusal::new(format!("{at}.health_check"), m))?;
            // ALB's matcher stops at 499 (NLB's at 599).
            let highest = hc.matcher.as_ref().map_or(200, |m| m.highest());
            if self.protocol.is_http() && highest > 499 {
                return Err(Refusal::new(
                    format!("{at}.health_check"),
                    format!(
                        "matcher: {highest} is outside 200-499, ALB's range for HTTP and HTTPS groups"
                    ),
                ));
            }
        }
        attribute::check(
            attribute::TARGET_GROUP,
            self.protocol.tier(),
            &self.attributes,
            at,
        )?;
        self.check_combinations(at)
    }

    /// The attributes that depend on each other (ALB's constraints).
    fn check_combinations(&self, at: &str) -> Result<(), Refusal> {
        let key = |k: &str| format!("{at}.attributes.\"{k}\"");
        if self.attribute("slow_start.duration_seconds") != "0"
            && self.attribute("load_balancing.algorithm.type") == "least_outstanding_requests"
        {
            return Err(Refusal::new(
                key("slow_start.duration_seconds"),
                "slow start cannot be used with least_outstanding_requests",
            ));
        }
        // A PROXY header goes in front of a TCP stream; a datagram has no stream to put it in.
        if self.proxy_protocol_v2() && self.protocol.ip_protocols().contains(&17) {
            return Err(Refusal::new(
                key("proxy_protocol_v2.enabled"),
                "PROXY protocol v2 is for TCP and TLS groups: UDP cannot carry it",
            ));
        }
        if self.protocol.is_http()
            && self.attribute("stickiness.enabled") == "true"
            && self.attribute("stickiness.type") == "app_cookie"
            && self
                .attribute("stickiness.app_cookie.cookie_name")
                .is_empty()
        {
            return Err(Refusal::new(
                key("stickiness.app_cookie.cookie_name"),
                "app_cookie stickiness needs the application's cookie name",
            ));
        }
        Ok(())
    }

    /// Attribute `name` as the file sets it, else its default for this group's tier (empty when
    /// the tier does not take it).
    pub fn attribute(&self, name: &str) -> &str {
        attribute::value(
            attribute::TARGET_GROUP,
            self.protocol.tier(),
            &self.attributes,
            name,
        )
    }

    /// `deregistration_delay.timeout_seconds`: how long a target that left may finish what it
    /// has in flight.
    pub fn deregistration_delay(&self) -> Duration {
        Duration::from_secs(
            self.attribute("deregistration_delay.timeout_seconds")
                .parse()
                .unwrap_or(300),
        )
    }

    /// `load_balancing.cross_zone.enabled` (off by default, as for NLB).
    pub fn cross_zone(&self) -> bool {
        self.attribute("load_balancing.cross_zone.enabled") == "true"
    }

    /// `stickiness.type = "source_ip"` on an L4 group: the flow hash takes the source address
    /// only.
    pub fn source_ip_stickiness(&self) -> bool {
        !self.protocol.is_http() && self.attribute("stickiness.type") == "source_ip"
    }

    /// `proxy_protocol_v2.enabled`: each connection to a target starts with a PROXY v2 header
    /// naming the client. Only a proxy in user space can write it, so listeners forwarding to
    /// such a group are served there.
    pub fn proxy_protocol_v2(&self) -> bool {
        self.attribute("proxy_protocol_v2.enabled") == "true"
    }

    /// The HTTP version toward the targets.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.protocol_version.unwrap_or_default()
    }

    /// Where `target` gets traffic: its own port, else the group's.
    pub fn addr(&self, target: &Target) -> SocketAddr {
        SocketAddr::new(target.id, target.port.unwrap_or(self.port))
    }
}
