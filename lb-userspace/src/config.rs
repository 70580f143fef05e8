//! The config file: TOML in the AWS Elastic Load Balancing vocabulary (listeners, target groups,
//! targets). Parsing refuses unknown keys; [`Config::parse`] then validates what types cannot
//! say (references, ranges, families) and names the key at fault and its line.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde::Deserialize;
use thiserror::Error;
use toml_edit::{ImDocument, Item, TableLike};

use crate::{dataplane::AttachMode, l7::config::ConfigError as L7Error};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, unknown keys and wrong types; toml's message names the line, column and key. Not
    /// a `source`: the message says it all, and a chain would print it twice.
    #[error("{path}: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },
    /// A value types cannot refuse; `line` is where the key is in the file.
    #[error("{path}: line {line}: {key}: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub target_groups: Vec<TargetGroup>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// HTTP/HTTPS listeners with ALB rules (the L7 tier).
    #[serde(default)]
    pub http_listeners: Vec<crate::l7::config::HttpListener>,
}

/// This load balancer node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The interface the balancer's XDP program is attached to.
    pub interface: String,
    #[serde(default = "default_mode")]
    pub xdp_mode: AttachMode,
    /// IPv4 prefix (first two bytes used) for tunnel outer sources.
    #[serde(default = "default_tunnel_v4")]
    pub tunnel_source_v4: std::net::Ipv4Addr,
    /// IPv6 prefix (first 12 bytes used) for tunnel outer sources.
    #[serde(default = "default_tunnel_v6")]
    pub tunnel_source_v6: std::net::Ipv6Addr,
    /// Largest IP packet toward targets; bigger ones after encapsulation get ICMP "too big".
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Next hop MAC when the kernel FIB has none (e.g. "02:00:00:00:00:01").
    #[serde(default)]
    pub gateway_mac: Option<String>,
    /// Flow table size (entries).
    #[serde(default = "default_flows")]
    pub flow_table_size: u32,
    /// Where the datapath's maps and XDP link are pinned; they outlive the agent, so a restart
    /// or an upgrade drops no packet and moves no flow.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: std::path::PathBuf,
    /// This node's availability zone (targets in it are preferred when cross-zone is off).
    #[serde(default)]
    pub zone: Option<String>,
    /// Weight of each zone's targets when traffic crosses zones (default 1 each).
    #[serde(default)]
    pub zone_weights: BTreeMap<String, u32>,
    /// The control API's Unix socket (root only, mode 0600), used by the CLI.
    #[serde(default = "default_api_socket")]
    pub api_socket: std::path::PathBuf,
    /// Where Prometheus metrics are served (`http://ADDRESS/metrics`); off when absent.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where registrations made through the CLI are kept across restarts.
    #[serde(default = "default_state_file")]
    pub state_file: std::path::PathBuf,
}

/// A target group: where a listener forwards to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// NLB attributes by their AWS names, e.g. `"stickiness.type" = "source_ip"`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Active health checks; none: every target counts as healthy.
    #[serde(default)]
    pub health_check: Option<crate::health::HealthCheck>,
    /// HTTP and HTTPS groups: ALB's `ProtocolVersion` (`HTTP1`, `HTTP2` or `GRPC`).
    #[serde(default)]
    pub protocol_version: Option<crate::l7::config::ProtocolVersion>,
}

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
    /// The target's port (HTTP target groups; the group's `port` otherwise).
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    #[serde(rename = "TCP_UDP")]
    TcpUdp,
    /// A target group of HTTP servers, for `http_listeners`.
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP servers reached over TLS, for `http_listeners`.
    #[serde(rename = "HTTPS")]
    Https,
}

impl Protocol {
    /// Whether the group belongs to the L7 tier.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPIP / IP6IP6 to the target, which decapsulates (`xlb attach --program decap`).
    #[default]
    Tunnel,
    /// L2 direct server return: the target shares the L2 segment and has the VIP on `lo`.
    Dsr,
}

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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Action {
    Forward { target_group: String },
}

fn default_mode() -> AttachMode {
    AttachMode::Native
}
fn default_tunnel_v4() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(172, 16, 0, 0)
}
fn default_tunnel_v6() -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)
}
const fn default_mtu() -> u16 {
    1500
}
const fn default_flows() -> u32 {
    lb_common::FLOWS_DEFAULT
}
fn default_api_socket() -> std::path::PathBuf {
    "/run/xlb/xlb.sock".into()
}
fn default_state_file() -> std::path::PathBuf {
    "/var/lib/xlb/state.json".into()
}
fn default_pin_dir() -> std::path::PathBuf {
    "/sys/fs/bpf/xlb".into()
}
const fn default_weight() -> u32 {
    1
}

/// Target group attributes xlb knows, with their allowed values.
/// Values: a list of allowed strings, or `["0..=3600"]` for an integer range.
const ATTRIBUTES: &[(&str, &[&str])] = &[
    ("stickiness.type", &["source_ip", "none"]),
    ("deregistration_delay.timeout_seconds", &["0..=3600"]),
    ("load_balancing.cross_zone.enabled", &["true", "false"]),
];

/// `deregistration_delay.timeout_seconds` in a group's `attributes`, else ELB's default (300 s):
/// how long a target that left may finish what it has in flight, for L4 and HTTP groups alike.
pub(crate) fn deregistration_delay(attributes: &BTreeMap<String, String>) -> std::time::Duration {
    let s = attributes.get("deregistration_delay.timeout_seconds");
    std::time::Duration::from_secs(s.and_then(|v| v.parse().ok()).unwrap_or(300))
}

/// The attributes with their values or the NLB defaults.
impl TargetGroup {
    /// `deregistration_delay.timeout_seconds` (default 300).
    pub fn deregistration_delay(&self) -> std::time::Duration {
        deregistration_delay(&self.attributes)
    }

    /// `load_balancing.cross_zone.enabled` (default false, as for NLB).
    pub fn cross_zone(&self) -> bool {
        self.attributes
            .get("load_balancing.cross_zone.enabled")
            .map(String::as_str)
            == Some("true")
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text` (named `path` in errors).
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error,
        })?;
        for tg in cfg.target_groups.iter_mut() {
            if let Some(hc) = tg
                .health_check
                .as_mut()
                .filter(|_| tg.protocol == Protocol::Http)
            {
                hc.default_protocol(crate::health::CheckProtocol::Http);
            }
        }
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, &key),
            key,
            message,
        };
        if !(576..=9000).contains(&cfg.node.mtu) {
            return Err(invalid(
                "node.mtu".into(),
                format!("{} is outside 576..=9000", cfg.node.mtu),
            ));
        }
        if let Some(mac) = &cfg.node.gateway_mac {
            parse_mac(mac).map_err(|m| invalid("node.gateway_mac".into(), m))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, tg) in cfg.target_groups.iter().enumerate() {
            let at = format!("target_groups[{i}] ({})", tg.name);
            if !names.insert(tg.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    "duplicate target group name".into(),
                ));
            }
            for (j, t) in tg.targets.iter().enumerate() {
                if let Some(mac) = &t.mac {
                    parse_mac(mac).map_err(|m| invalid(format!("{at}.targets[{j}].mac"), m))?;
                }
                if t.weight > 1000 {
                    return Err(invalid(
                        format!("{at}.targets[{j}].weight"),
                        format!("{} is outside 0..=1000", t.weight),
                    ));
                }
            }
            if tg.protocol_version.is_some() && !tg.protocol.is_http() {
                return Err(invalid(
                    format!("{at}.protocol_version"),
                    "only HTTP and HTTPS target groups have a protocol version".into(),
                ));
            }
            if let Some(hc) = &tg.health_check {
                hc.validate()
                    .map_err(|m| invalid(format!("{at}.health_check"), m))?;
            }
            // HTTP groups have ALB attributes, checked with the L7 config below.
            for (k, v) in tg.attributes.iter().filter(|_| !tg.protocol.is_http()) {
                let Some((_, allowed)) = ATTRIBUTES.iter().find(|(name, _)| name == k) else {
                    return Err(invalid(
                        format!("{at}.attributes.\"{k}\""),
                        "unknown attribute".into(),
                    ));
                };
                let in_range = allowed
                    .first()
                    .and_then(|r| r.split_once("..="))
                    .is_some_and(|(lo, hi)| {
                        let (lo, hi): (u64, u64) =
                            (lo.parse().unwrap_or(0), hi.parse().unwrap_or(0));
                        v.parse::<u64>().is_ok_and(|n| (lo..=hi).contains(&n))
                    });
                if !in_range && !allowed.contains(&v.as_str()) {
                    return Err(invalid(
                        format!("{at}.attributes.\"{k}\""),
                        format!("{v:?} is not one of {allowed:?}"),
                    ));
                }
            }
        }
        if cfg.listeners.len() > lb_common::MAX_VIPS as usize {
            return Err(invalid(
                "listeners".into(),
                format!("at most {} listeners", lb_common::MAX_VIPS),
            ));
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let Action::Forward { target_group } = &l.default_action;
            let key = format!("listeners[{i}].default_action.target_group");
            let Some(tg) = cfg.target_groups.iter().find(|tg| &tg.name == target_group) else {
                return Err(invalid(
                    key,
                    format!("no target group named {target_group:?}"),
                ));
            };
            if tg.protocol.is_http() || l.protocol.is_http() {
                return Err(invalid(
                    key,
                    "HTTP belongs to http_listeners, not to L4 listeners".into(),
                ));
            }
            for (j, t) in tg.targets.iter().enumerate() {
                if l.address.is_ipv6() && t.id.is_ipv4() && l.forwarding == Forwarding::Tunnel {
                    return Err(invalid(
                        format!("target_groups ({}).targets[{j}].id", tg.name),
                        format!(
                            "IPv4 target {} cannot receive the IPv6 VIP {} through a tunnel",
                            t.id, l.address
                        ),
                    ));
                }
                if l.forwarding == Forwarding::Dsr && t.mac.is_none() {
                    return Err(invalid(
                        format!("target_groups ({}).targets[{j}].mac", tg.name),
                        "dsr forwarding needs each target's MAC".into(),
                    ));
                }
            }
        }
        cfg.l7().validate().map_err(|e| match e {
            L7Error::Invalid { key, message } => invalid(key, message),
            L7Error::Certificate { key, source } => invalid(key, source.to_string()),
            L7Error::Parse(e) => invalid("http_listeners".into(), e.to_string()),
        })?;
        Ok(cfg)
    }

    /// The L7 tier's part: HTTP listeners and the HTTP target groups.
    pub fn l7(&self) -> crate::l7::L7Config {
        use crate::l7::config::{HttpTarget, HttpTargetGroup, TargetProtocol};
        let groups = self.target_groups.iter().filter(|tg| tg.protocol.is_http());
        crate::l7::L7Config {
            target_groups: groups
                .map(|tg| HttpTargetGroup {
                    name: tg.name.clone(),
                    protocol: match tg.protocol {
                        Protocol::Https => TargetProtocol::Https,
                        _ => TargetProtocol::Http,
                    },
                    protocol_version: tg.protocol_version.unwrap_or_default(),
                    port: tg.port,
                    targets: tg
                        .targets
                        .iter()
                        .map(|t| HttpTarget {
                            id: t.id,
                            port: t.port,
                        })
                        .collect(),
                    attributes: tg.attributes.clone(),
                    health_check: tg.health_check.clone(),
                })
                .collect(),
            http_listeners: self.http_listeners.clone(),
        }
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address like 02:00:00:00:00:01"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
    }
    Ok(mac)
}

/// The line of `text` that holds `key`, a path as the errors name it: `node.mtu`,
/// `target_groups[2] (web).targets[0].weight`, `http_listeners[0].attributes."a.b"`. An element
/// named in parentheses is found by its `name` (the L7 tier counts only HTTP groups), else by
/// index. A key that is not in the file (a default) gets the line of the nearest one above it.
fn line_of(text: &str, key: &str) -> usize {
    let Ok(doc) = ImDocument::parse(text) else {
        return 1;
    };
    let mut table: &dyn TableLike = doc.as_table();
    let mut at = 0;
    for seg in segments(key) {
        let Some(item) = table.get(seg.name) else {
            break;
        };
        let span = table.key(seg.name).and_then(|k| k.span()).or(item.span());
        at = span.map_or(at, |s| s.start);
        // Tables in the item: those of an array of tables or of an array of inline tables.
        let elements: Vec<(&dyn TableLike, Option<usize>)> = match item {
            Item::ArrayOfTables(a) => a
                .iter()
                .map(|t| (t as &dyn TableLike, t.span().map(|s| s.start)))
                .collect(),
            Item::Value(toml_edit::Value::Array(a)) => a
                .iter()
                .filter_map(|v| {
                    Some((
                        v.as_inline_table()? as &dyn TableLike,
                        v.span().map(|s| s.start),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        let named = |t: &&(&dyn TableLike, Option<usize>)| {
            seg.label.is_some() && t.0.get("name").and_then(Item::as_str) == seg.label
        };
        let element = elements
            .iter()
            .find(named)
            .or_else(|| seg.index.and_then(|i| elements.get(i)));
        match (element, item.as_table_like()) {
            (Some(&(t, start)), _) => {
                table = t;
                at = start.unwrap_or(at);
            }
            (None, Some(t)) if seg.index.is_none() && seg.label.is_none() => table = t,
            _ => break,
        }
    }
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// One step of a key path: a name, maybe an index, maybe a `(label)`.
struct Segment<'a> {
    name: &'a str,
    index: Option<usize>,
    label: Option<&'a str>,
}

/// The steps of a key path, split at the dots outside quotes.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        let (name, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_at(rest.find(['.', '[', ' ']).unwrap_or(rest.len())),
        };
        let mut after = after;
        let mut index = None;
        if let Some((i, r)) = after.strip_prefix('[').and_then(|a| a.split_once(']')) {
            index = i.parse().ok();
            after = r;
        }
        let mut label = None;
        if let Some((l, r)) = after.strip_prefix(" (").and_then(|a| a.split_once(')')) {
            label = Some(l);
            after = r;
        }
        out.push(Segment { name, index, label });
        rest = after
            .strip_prefix('.')
            .unwrap_or(after.get(1..).unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
interface = "eth0"

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [{ id = "198.18.1.11" }, { id = "198.18.1.12", weight = 2 }]
attributes = { "stickiness.type" = "source_ip" }

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
default_action = { type = "forward", target_group = "web" }
"#;

    #[test]
    fn parses_the_example_with_defaults() {
        let c = Config::parse(GOOD, "x.toml").unwrap();
        assert_eq!(c.node.mtu, 1500);
        assert_eq!(c.node.xdp_mode, AttachMode::Native);
        assert_eq!(c.target_groups[0].targets[1].weight, 2);
        assert_eq!(c.listeners[0].forwarding, Forwarding::Tunnel);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = GOOD.replace("port = 80\ntargets", "prot = 80\ntargets");
        let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("prot") && e.contains("line 8"), "{e}");
    }

    #[test]
    fn bad_address_is_refused() {
        let bad = GOOD.replace("198.18.1.12", "198.18.1.300");
        let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("line 9") && e.contains("invalid IP address"),
            "{e}"
        );
    }

    #[test]
    fn missing_target_group_is_named() {
        let bad = GOOD.replace("target_group = \"web\"", "target_group = \"api\"");
        let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("listeners[0].default_action.target_group") && e.contains("\"api\""),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let bad = GOOD.replace("weight = 2", "weight = 5000");
        assert!(
            Config::parse(&bad, "x.toml")
                .unwrap_err()
                .to_string()
                .contains("weight")
        );
        let bad = GOOD.replace("source_ip", "cookie");
        assert!(
            Config::parse(&bad, "x.toml")
                .unwrap_err()
                .to_string()
                .contains("stickiness.type")
        );
        let bad = GOOD.replace("interface = \"eth0\"", "interface = \"eth0\"\nmtu = 100");
        assert!(
            Config::parse(&bad, "x.toml")
                .unwrap_err()
                .to_string()
                .contains("node.mtu")
        );
    }

    #[test]
    fn refused_values_name_their_line() {
        let line = |bad: &str| match Config::parse(bad, "x.toml").unwrap_err() {
            ConfigError::Invalid { line, key, .. } => (line, key),
            e => panic!("{e}"),
        };
        let mtu = GOOD.replace("interface = \"eth0\"", "interface = \"eth0\"\nmtu = 100");
        assert_eq!(line(&mtu), (4, "node.mtu".into()));
        let weight = GOOD.replace("weight = 2", "weight = 5000");
        assert_eq!(line(&weight).0, 9);
        let group = GOOD.replace("target_group = \"web\"", "target_group = \"api\"");
        assert_eq!(line(&group).0, 16);
        // The L7 tier counts HTTP groups only: `api` is its first, the file's second.
        let l7 = format!(
            "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTP\"\nport = 8080\n\
             attributes = {{ \"stickiness.enabled\" = \"maybe\" }}\n"
        );
        let (at, key) = line(&l7);
        assert_eq!(at, 22, "{key}");
        let e = Config::parse(&l7, "x.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.toml: line 22: target_groups[0] (api)"),
            "{e}"
        );
    }

    #[test]
    fn dsr_needs_target_macs() {
        let bad = GOOD.replace(
            "protocol = \"TCP\"\ndefault_action",
            "protocol = \"TCP\"\nforwarding = \"dsr\"\ndefault_action",
        );
        let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("mac"), "{e}");
    }
    #[test]
    fn https_groups_and_protocol_versions_reach_the_l7_tier() {
        let https = format!(
            "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTPS\"\nprotocol_version = \"GRPC\"\nport = 443\ntargets = [{{ id = \"198.18.1.21\" }}]\n"
        );
        let l7 = Config::parse(&https, "x.toml").unwrap().l7();
        let tg = &l7.target_groups[0];
        assert_eq!(
            (tg.name.as_str(), tg.protocol, tg.protocol_version),
            (
                "api",
                crate::l7::config::TargetProtocol::Https,
                crate::l7::config::ProtocolVersion::Grpc
            )
        );
        let bad = GOOD.replace(
            "port = 80\ntargets",
            "port = 80\nprotocol_version = \"HTTP2\"\ntargets",
        );
        let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("target_groups[0] (web).protocol_version"), "{e}");
    }
}
