//! The L7 config: HTTP/HTTPS listeners, their rules and HTTP target groups, in the vocabulary of an
//! AWS Application Load Balancer. The types mirror the file (`serde`, unknown keys refused);
//! [`L7Config::validate`] checks what types cannot say (references, ranges, ALB's constraints) and
//! names the key at fault. Nothing here runs: [`super::serve`] compiles a validated config.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;

use crate::health::CheckProtocol;
use serde::Deserialize;
use thiserror::Error;

/// A value the config refuses, with the key that holds it.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Syntax, unknown keys and wrong types; toml's message names the line and key.
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: {source}")]
    Certificate {
        key: String,
        #[source]
        source: super::tls::TlsError,
    },
}

/// What the L7 tier reads from the config file: the `[[http_listeners]]` and the HTTP
/// `[[target_groups]]` they forward to.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct L7Config {
    #[serde(default)]
    pub target_groups: Vec<HttpTargetGroup>,
    #[serde(default)]
    pub http_listeners: Vec<HttpListener>,
}

/// A target group of HTTP servers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTargetGroup {
    pub name: String,
    /// `HTTP` (in clear) or `HTTPS` (TLS) toward the targets.
    pub protocol: TargetProtocol,
    /// ALB's `ProtocolVersion`: the HTTP version xlb speaks to the targets.
    #[serde(default)]
    pub protocol_version: ProtocolVersion,
    /// The port of targets that name none.
    pub port: u16,
    #[serde(default)]
    pub targets: Vec<HttpTarget>,
    /// ALB attributes by their AWS names: `load_balancing.algorithm.type`
    /// (`round_robin` | `least_outstanding_requests`), `slow_start.duration_seconds` (0 or
    /// 30..=900, round robin only), `stickiness.enabled`, `stickiness.type` (`lb_cookie` |
    /// `app_cookie`), `stickiness.lb_cookie.duration_seconds` and
    /// `stickiness.app_cookie.duration_seconds` (1..=604800, default 86400),
    /// `stickiness.app_cookie.cookie_name`, `deregistration_delay.timeout_seconds` (0..=3600,
    /// default 300).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Active health checks, with the keys of the L4 groups; none: every target is in service.
    #[serde(default)]
    pub health_check: Option<crate::health::HealthCheck>,
}

impl HttpTargetGroup {
    /// Where `target` gets requests.
    pub fn addr(&self, target: &HttpTarget) -> SocketAddr {
        SocketAddr::new(target.id, target.port.unwrap_or(self.port))
    }

    /// `deregistration_delay.timeout_seconds`: how long the requests in flight to a target that
    /// left may go on (ALB's default 300 s).
    pub fn deregistration_delay(&self) -> Duration {
        crate::config::deregistration_delay(&self.attributes)
    }
}

/// The protocol xlb uses toward a target group's targets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum TargetProtocol {
    #[serde(rename = "HTTP")]
    Http,
    /// TLS; the targets' certificates are not verified, as ALB does not.
    #[serde(rename = "HTTPS")]
    Https,
}

impl TargetProtocol {
    /// The scheme of requests toward the targets.
    pub fn scheme(self) -> &'static str {
        match self {
            TargetProtocol::Http => "http",
            TargetProtocol::Https => "https",
        }
    }
}

/// ALB's target group `ProtocolVersion`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
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

/// One HTTP server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// The target's IP address.
    pub id: IpAddr,
    /// Overrides the group's port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// An HTTP or HTTPS listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// HTTPS only: the first is the default certificate, the others are picked by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// What requests that match no rule get.
    pub default_action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// ALB attributes by their AWS names: `idle_timeout.timeout_seconds` (1..=4000, default 60).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The protocol clients speak to a listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ListenerProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

impl ListenerProtocol {
    /// The scheme, as in `X-Forwarded-Proto` and `#{protocol}`.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        }
    }
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A listener rule: when every condition matches, its action runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// 1..=50000; lower runs first; unique within a listener.
    pub priority: u32,
    pub conditions: Vec<Condition>,
    /// Exactly one action (`forward`, `redirect` or `fixed-response`).
    pub actions: Vec<Action>,
}

/// A rule condition; its values are alternatives (any one matches).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "field", rename_all = "kebab-case")]
pub enum Condition {
    /// Host header (or HTTP/2 `:authority`) without the port; case-insensitive; `*` and `?`.
    HostHeader { values: Vec<String> },
    /// The path, without the query; case-sensitive; `*` and `?`.
    PathPattern { values: Vec<String> },
    /// A header by name (case-insensitive); values case-insensitive with `*` and `?`.
    HttpHeader { name: String, values: Vec<String> },
    /// The method, exactly (case-sensitive).
    HttpRequestMethod { values: Vec<String> },
    /// Query parameters, percent-decoded; case-insensitive with `*` and `?`.
    QueryString { values: Vec<QueryValue> },
    /// The client's address (not `X-Forwarded-For`).
    SourceIp { values: Vec<IpNet> },
}

/// A query-string condition value; without `key` it matches any parameter's value.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryValue {
    #[serde(default)]
    pub key: Option<String>,
    pub value: String,
}

/// What a rule does.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "kebab-case")]
pub enum Action {
    /// To one target group (`target_group`) or several by weight (`target_groups`).
    Forward {
        #[serde(default)]
        target_group: Option<String>,
        #[serde(default)]
        target_groups: Vec<WeightedTargetGroup>,
        /// Keeps a client on the group it first got (cookie `AWSALBTG`).
        #[serde(default)]
        stickiness: Option<GroupStickiness>,
    },
    /// An HTTP redirect; each part may use `#{protocol}`, `#{host}`, `#{port}`, `#{path}` (without
    /// its leading `/`) and `#{query}`.
    Redirect {
        #[serde(default = "keep_protocol")]
        protocol: String,
        #[serde(default = "keep_host")]
        host: String,
        #[serde(default = "keep_port")]
        port: String,
        #[serde(default = "keep_path")]
        path: String,
        #[serde(default = "keep_query")]
        query: String,
        status_code: RedirectCode,
    },
    /// A response made by the load balancer.
    FixedResponse {
        /// 2XX, 4XX or 5XX.
        status_code: u16,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        message_body: Option<String>,
    },
}

/// One group of a weighted forward.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetGroup {
    pub name: String,
    /// 0..=999; 0 gets no requests.
    #[serde(default = "default_group_weight")]
    pub weight: u32,
}

/// Target group stickiness of a weighted forward.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupStickiness {
    pub enabled: bool,
    /// 1..=604800.
    #[serde(default = "default_stickiness_seconds")]
    pub duration_seconds: u32,
}

/// The status of a redirect.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum RedirectCode {
    #[serde(rename = "HTTP_301")]
    Http301,
    #[serde(rename = "HTTP_302")]
    Http302,
}

fn keep_protocol() -> String {
    "#{protocol}".into()
}
fn keep_host() -> String {
    "#{host}".into()
}
fn keep_port() -> String {
    "#{port}".into()
}
fn keep_path() -> String {
    "/#{path}".into()
}
fn keep_query() -> String {
    "#{query}".into()
}
const fn default_group_weight() -> u32 {
    1
}
const fn default_stickiness_seconds() -> u32 {
    86_400
}

/// What a target group attribute takes.
enum Value {
    OneOf(&'static [&'static str]),
    /// A stickiness duration: 1..=604800 seconds.
    Duration,
    /// `slow_start.duration_seconds`: 0 (off) or 30..=900.
    SlowStart,
    /// `deregistration_delay.timeout_seconds`: 0..=3600.
    Delay,
    /// The application's cookie, for `app_cookie` stickiness.
    CookieName,
}

/// Target group attributes, with what they take.
const GROUP_ATTRIBUTES: &[(&str, Value)] = &[
    (
        "load_balancing.algorithm.type",
        Value::OneOf(&["round_robin", "least_outstanding_requests"]),
    ),
    ("slow_start.duration_seconds", Value::SlowStart),
    ("stickiness.enabled", Value::OneOf(&["true", "false"])),
    (
        "stickiness.type",
        Value::OneOf(&["lb_cookie", "app_cookie"]),
    ),
    ("stickiness.lb_cookie.duration_seconds", Value::Duration),
    ("stickiness.app_cookie.duration_seconds", Value::Duration),
    ("stickiness.app_cookie.cookie_name", Value::CookieName),
    ("deregistration_delay.timeout_seconds", Value::Delay),
];
/// Cookie names ALB keeps for itself (`AWSALB`, `AWSALBAPP-*`, `AWSALBTG`): one prefix covers all.
const RESERVED_COOKIE_PREFIX: &str = "AWSALB";
/// Listener attributes, checked by [`listener_attribute`].
const LISTENER_ATTRIBUTES: &[&str] = &["idle_timeout.timeout_seconds"];
/// Content types ALB allows in a fixed response.
const CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
];
/// Longest host-header or path-pattern value, and longest redirect host or path (ALB's limit).
const MAX_PATTERN_LEN: usize = 128;
/// Longest fixed-response body (ALB's limit).
const MAX_BODY_LEN: usize = 1024;
/// Most target groups in one forward (ALB's limit).
const MAX_FORWARD_GROUPS: usize = 5;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl L7Config {
    /// Parses and validates a file that holds only the L7 keys (tests, or a file of its own).
    pub fn parse(text: &str) -> Result<L7Config, ConfigError> {
        let mut cfg: L7Config = toml::from_str(text)?;
        for hc in cfg
            .target_groups
            .iter_mut()
            .filter_map(|tg| tg.health_check.as_mut())
        {
            hc.default_protocol(CheckProtocol::Http);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks references, ranges and ALB's constraints, and loads every certificate once so that
    /// `xlb check` reports a bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, tg) in self.target_groups.iter().enumerate() {
            let at = format!("target_groups[{i}] ({})", tg.name);
            if !names.insert(tg.name.as_str()) {
                return Err(invalid(format!("{at}.name"), "duplicate target group name"));
            }
            for (k, v) in &tg.attributes {
                group_attribute(k, v)
                    .map_err(|m| invalid(format!("{at}.attributes.\"{k}\""), m))?;
            }
            check_group_combinations(tg, &at)?;
            if let Some(hc) = &tg.health_check {
                hc.validate()
                    .map_err(|m| invalid(format!("{at}.health_check"), m))?;
            }
        }
        let mut bound = std::collections::BTreeSet::new();
        for (i, l) in self.http_listeners.iter().enumerate() {
            let at = format!("http_listeners[{i}]");
            if l.port == 0 {
                return Err(invalid(format!("{at}.port"), "0 is outside 1..=65535"));
            }
            if !bound.insert((l.address, l.port)) {
                return Err(invalid(
                    format!("{at}.port"),
                    format!("another listener has {}:{}", l.address, l.port),
                ));
            }
            match (l.protocol, l.certificates.is_empty()) {
                (ListenerProtocol::Https, true) => {
                    return Err(invalid(
                        format!("{at}.certificates"),
                        "an HTTPS listener needs a certificate",
                    ));
                }
                (ListenerProtocol::Http, false) => {
                    return Err(invalid(
                        format!("{at}.certificates"),
                        "an HTTP listener takes no certificate",
                    ));
                }
                _ => {}
            }
            for (j, c) in l.certificates.iter().enumerate() {
                super::tls::load_certificate(c).map_err(|source| ConfigError::Certificate {
                    key: format!("{at}.certificates[{j}]"),
                    source,
                })?;
            }
            for (k, v) in &l.attributes {
                listener_attribute(k, v)
                    .map_err(|m| invalid(format!("{at}.attributes.\"{k}\""), m))?;
            }
            self.check_action(&l.default_action, l, &format!("{at}.default_action"))?;
            let mut priorities = std::collections::BTreeSet::new();
            for (j, r) in l.rules.iter().enumerate() {
                let rat = format!("{at}.rules[{j}]");
                if !(1..=50_000).contains(&r.priority) {
                    return Err(invalid(
                        format!("{rat}.priority"),
                        format!("{} is outside 1..=50000", r.priority),
                    ));
                }
                if !priorities.insert(r.priority) {
                    return Err(invalid(
                        format!("{rat}.priority"),
                        format!("another rule has priority {}", r.priority),
                    ));
                }
                check_conditions(&r.conditions, &rat)?;
                let [action] = r.actions.as_slice() else {
                    return Err(invalid(
                        format!("{rat}.actions"),
                        format!("{} actions; a rule takes exactly one", r.actions.len()),
                    ));
                };
                self.check_action(action, l, &format!("{rat}.actions[0]"))?;
            }
        }
        Ok(())
    }

    fn check_action(&self, a: &Action, l: &HttpListener, at: &str) -> Result<(), ConfigError> {
        match a {
            Action::Forward {
                target_group,
                target_groups,
                stickiness,
            } => {
                let groups: Vec<(&str, u32)> = match (target_group, target_groups.as_slice()) {
                    (Some(one), []) => vec![(one.as_str(), 1)],
                    (None, many) if !many.is_empty() => {
                        many.iter().map(|g| (g.name.as_str(), g.weight)).collect()
                    }
                    _ => {
                        return Err(invalid(
                            at,
                            "a forward names either target_group or target_groups",
                        ));
                    }
                };
                if groups.len() > MAX_FORWARD_GROUPS {
                    return Err(invalid(
                        format!("{at}.target_groups"),
                        format!("at most {MAX_FORWARD_GROUPS} target groups"),
                    ));
                }
                for (name, weight) in &groups {
                    if !self.target_groups.iter().any(|tg| tg.name == *name) {
                        return Err(invalid(at, format!("no target group named {name:?}")));
                    }
                    if *weight > 999 {
                        return Err(invalid(
                            format!("{at}.target_groups ({name}).weight"),
                            format!("{weight} is outside 0..=999"),
                        ));
                    }
                }
                if groups.iter().all(|(_, w)| *w == 0) {
                    return Err(invalid(format!("{at}.target_groups"), "every weight is 0"));
                }
                if let Some(s) = stickiness
                    && !(1..=604_800).contains(&s.duration_seconds)
                {
                    return Err(invalid(
                        format!("{at}.stickiness.duration_seconds"),
                        format!("{} is outside 1..=604800", s.duration_seconds),
                    ));
                }
            }
            Action::Redirect {
                protocol,
                host,
                port,
                path,
                status_code: _,
                query: _,
            } => {
                let p = protocol.to_ascii_uppercase();
                if !["#{PROTOCOL}", "HTTP", "HTTPS"].contains(&p.as_str()) {
                    return Err(invalid(
                        format!("{at}.protocol"),
                        format!("{protocol:?} is not HTTP, HTTPS or #{{protocol}}"),
                    ));
                }
                if l.protocol == ListenerProtocol::Https && p == "HTTP" {
                    return Err(invalid(
                        format!("{at}.protocol"),
                        "an HTTPS listener cannot redirect to HTTP",
                    ));
                }
                if *protocol == keep_protocol()
                    && *host == keep_host()
                    && *port == keep_port()
                    && *path == keep_path()
                {
                    return Err(invalid(
                        at,
                        "a redirect must change the protocol, host, port or path (else it loops)",
                    ));
                }
                if host.len() > MAX_PATTERN_LEN || path.len() > MAX_PATTERN_LEN {
                    return Err(invalid(
                        at,
                        format!("host and path are at most {MAX_PATTERN_LEN} characters"),
                    ));
                }
                if !path.starts_with('/') {
                    return Err(invalid(
                        format!("{at}.path"),
                        format!("{path:?} must start with /"),
                    ));
                }
                if *port != keep_port() && port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(invalid(
                        format!("{at}.port"),
                        format!("{port:?} is not a port or #{{port}}"),
                    ));
                }
            }
            Action::FixedResponse {
                status_code,
                content_type,
                message_body,
            } => {
                if !matches!(status_code / 100, 2 | 4 | 5) || *status_code > 599 {
                    return Err(invalid(
                        format!("{at}.status_code"),
                        format!("{status_code} is not 2XX, 4XX or 5XX"),
                    ));
                }
                if let Some(ct) = content_type
                    && !CONTENT_TYPES.contains(&ct.as_str())
                {
                    return Err(invalid(
                        format!("{at}.content_type"),
                        format!("{ct:?} is not one of {CONTENT_TYPES:?}"),
                    ));
                }
                if message_body
                    .as_ref()
                    .is_some_and(|b| b.len() > MAX_BODY_LEN)
                {
                    return Err(invalid(
                        format!("{at}.message_body"),
                        format!("longer than {MAX_BODY_LEN} bytes"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_conditions(conditions: &[Condition], at: &str) -> Result<(), ConfigError> {
    if conditions.is_empty() {
        return Err(invalid(
            format!("{at}.conditions"),
            "a rule needs a condition (the default action has none)",
        ));
    }
    let mut once = std::collections::BTreeSet::new();
    for (i, c) in conditions.iter().enumerate() {
        let cat = format!("{at}.conditions[{i}]");
        let (field, count) = match c {
            Condition::HostHeader { values } => ("host-header", values.len()),
            Condition::PathPattern { values } => ("path-pattern", values.len()),
            Condition::HttpHeader { values, .. } => ("http-header", values.len()),
            Condition::HttpRequestMethod { values } => ("http-request-method", values.len()),
            Condition::QueryString { values } => ("query-string", values.len()),
            Condition::SourceIp { values } => ("source-ip", values.len()),
        };
        if count == 0 {
            return Err(invalid(format!("{cat}.values"), "needs at least one value"));
        }
        let repeatable = matches!(
            c,
            Condition::HttpHeader { .. } | Condition::QueryString { .. }
        );
        if !repeatable && !once.insert(field) {
            return Err(invalid(cat, format!("a rule takes one {field} condition")));
        }
        let patterns: &[String] = match c {
            Condition::HostHeader { values } | Condition::PathPattern { values } => values,
            _ => &[],
        };
        if let Some(p) = patterns
            .iter()
            .find(|p| p.len() > MAX_PATTERN_LEN || p.is_empty())
        {
            return Err(invalid(
                format!("{cat}.values"),
                format!("{p:?} is not 1..={MAX_PATTERN_LEN} characters"),
            ));
        }
        if let Condition::HttpHeader { name, .. } = c
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(invalid(
                format!("{cat}.name"),
                format!("{name:?} is not a header name"),
            ));
        }
    }
    Ok(())
}

/// Checks the attributes that depend on each other (ALB's constraints).
fn check_group_combinations(tg: &HttpTargetGroup, at: &str) -> Result<(), ConfigError> {
    let attr = |k: &str| tg.attributes.get(k).map(String::as_str);
    let key = |k: &str| format!("{at}.attributes.\"{k}\"");
    if attr("slow_start.duration_seconds").is_some_and(|v| v != "0")
        && attr("load_balancing.algorithm.type") == Some("least_outstanding_requests")
    {
        return Err(invalid(
            key("slow_start.duration_seconds"),
            "slow start cannot be used with least_outstanding_requests",
        ));
    }
    if attr("stickiness.enabled") == Some("true")
        && attr("stickiness.type") == Some("app_cookie")
        && attr("stickiness.app_cookie.cookie_name").is_none()
    {
        return Err(invalid(
            key("stickiness.app_cookie.cookie_name"),
            "app_cookie stickiness needs the application's cookie name",
        ));
    }
    Ok(())
}

/// Checks one target group attribute.
fn group_attribute(key: &str, value: &str) -> Result<(), String> {
    let Some((_, takes)) = GROUP_ATTRIBUTES.iter().find(|(k, _)| *k == key) else {
        return Err("unknown attribute".into());
    };
    match takes {
        Value::OneOf(allowed) if !allowed.contains(&value) => {
            Err(format!("{value:?} is not one of {allowed:?}"))
        }
        Value::OneOf(_) => Ok(()),
        Value::Duration => seconds(value, 1, 604_800).map(|_| ()),
        Value::SlowStart => match value.parse::<u64>() {
            Ok(0 | 30..=900) => Ok(()),
            _ => Err(format!("{value:?} is not 0 (off) or 30..=900 seconds")),
        },
        Value::Delay => seconds(value, 0, 3600).map(|_| ()),
        Value::CookieName => app_cookie_name(value),
    }
}

/// An application cookie name: a cookie token (RFC 6265) outside ALB's own names.
fn app_cookie_name(name: &str) -> Result<(), String> {
    if name.starts_with(RESERVED_COOKIE_PREFIX) {
        return Err(format!(
            "{name:?} starts with {RESERVED_COOKIE_PREFIX:?}, which ALB keeps for its own cookies"
        ));
    }
    let separator = |c: char| "()<>@,;:\\\"/[]?={}".contains(c);
    if name.is_empty() || name.chars().any(|c| !c.is_ascii_graphic() || separator(c)) {
        return Err(format!("{name:?} is not a cookie name"));
    }
    Ok(())
}

/// Checks one listener attribute.
fn listener_attribute(key: &str, value: &str) -> Result<(), String> {
    if !LISTENER_ATTRIBUTES.contains(&key) {
        return Err("unknown attribute".into());
    }
    seconds(value, 1, 4000).map(|_| ())
}

/// Parses a number of seconds within `min..=max`.
pub(crate) fn seconds(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(s) if (min..=max).contains(&s) => Ok(s),
        _ => Err(format!(
            "{value:?} is not a number of seconds in {min}..={max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[[target_groups]]
name = "web"
protocol = "HTTP"
port = 8080
targets = [{ id = "127.0.0.1" }, { id = "127.0.0.1", port = 8081 }]
attributes = { "stickiness.enabled" = "true", "stickiness.type" = "lb_cookie" }

[[target_groups]]
name = "img"
protocol = "HTTPS"
protocol_version = "HTTP2"
port = 9000

[[http_listeners]]
address = "127.0.0.1"
port = 8000
protocol = "HTTP"
default_action = { type = "forward", target_group = "web" }

[[http_listeners.rules]]
priority = 10
conditions = [
  { field = "host-header", values = ["*.example.com"] },
  { field = "path-pattern", values = ["/img/*"] },
  { field = "http-header", name = "User-Agent", values = ["*Chrome*"] },
  { field = "query-string", values = [{ key = "v", value = "1" }, { value = "x*" }] },
  { field = "source-ip", values = ["10.0.0.0/8", "2001:db8::/32"] },
  { field = "http-request-method", values = ["GET", "HEAD"] },
]
actions = [{ type = "forward", target_groups = [{ name = "img", weight = 1 }, { name = "web", weight = 3 }], stickiness = { enabled = true, duration_seconds = 60 } }]

[[http_listeners.rules]]
priority = 20
conditions = [{ field = "path-pattern", values = ["/old"] }]
actions = [{ type = "redirect", protocol = "HTTPS", port = "443", status_code = "HTTP_301" }]

[[http_listeners.rules]]
priority = 30
conditions = [{ field = "path-pattern", values = ["/health"] }]
actions = [{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "ok" }]
"#;

    #[test]
    fn parses_every_condition_and_action() {
        let c = L7Config::parse(EXAMPLE).unwrap();
        let l = &c.http_listeners[0];
        assert_eq!(l.rules.len(), 3);
        assert_eq!(l.rules[0].conditions.len(), 6);
        assert_eq!(c.target_groups[0].targets[1].port, Some(8081));
        assert_eq!(
            (
                c.target_groups[0].protocol,
                c.target_groups[0].protocol_version
            ),
            (TargetProtocol::Http, ProtocolVersion::Http1)
        );
        assert_eq!(
            (
                c.target_groups[1].protocol,
                c.target_groups[1].protocol_version
            ),
            (TargetProtocol::Https, ProtocolVersion::Http2)
        );
        let Action::Redirect { host, path, .. } = &l.rules[1].actions[0] else {
            panic!("not a redirect: {:?}", l.rules[1].actions[0]);
        };
        assert_eq!((host.as_str(), path.as_str()), ("#{host}", "/#{path}"));
    }

    fn refused(from: &str, to: &str) -> String {
        let text = EXAMPLE.replacen(from, to, 1);
        assert_ne!(text, EXAMPLE, "{from:?} is not in the example");
        L7Config::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn health_checks_and_app_cookies() {
        let text = EXAMPLE
            .replacen(
                "port = 9000\n",
                "port = 9000\nhealth_check = { path = \"/health\" }\n",
                1,
            )
            .replacen(
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"SESSION\"",
                1,
            );
        let c = L7Config::parse(&text).unwrap();
        // ALB's default for HTTP groups, where L4 groups default to TCP.
        let hc = c.target_groups[1].health_check.as_ref().unwrap();
        assert_eq!(hc.protocol(), CheckProtocol::Http);
        let e = refused(
            "port = 9000\n",
            "port = 9000\nhealth_check = { interval_seconds = 1 }\n",
        );
        assert!(
            e.starts_with("target_groups[1] (img).health_check: interval_seconds"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_fields_are_refused() {
        assert!(refused("priority = 10", "priority = 10\nweight = 1").contains("weight"));
        let e = refused("field = \"host-header\"", "field = \"host\"");
        assert!(e.contains("host"), "{e}");
        assert!(refused("\"10.0.0.0/8\"", "\"10.0.0.0/33\"").contains("line"));
        let e = refused(
            "protocol_version = \"HTTP2\"",
            "protocol_version = \"HTTP3\"",
        );
        assert!(e.contains("protocol_version") && e.contains("line"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("priority = 20", "priority = 10", "rules[1].priority"),
            ("priority = 30", "priority = 50001", "rules[2].priority"),
            (
                "target_group = \"web\"",
                "target_group = \"api\"",
                "\"api\"",
            ),
            ("protocol = \"HTTPS\", port = \"443\", ", "", "must change"),
            ("status_code = 200", "status_code = 302", "302"),
            ("text/plain", "text/xml", "content_type"),
            ("weight = 3", "weight = 1000", "weight"),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"lb_cookie\", \"deregistration_delay.timeout_seconds\" = \"3601\"",
                "deregistration_delay.timeout_seconds\": \"3601\" is not a number of seconds in 0..=3600",
            ),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"app_cookie\"",
                "stickiness.app_cookie.cookie_name\": app_cookie stickiness needs",
            ),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"AWSALBAPP-1\"",
                "\"AWSALBAPP-1\" starts with \"AWSALB\"",
            ),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"a b\"",
                "not a cookie name",
            ),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"load_balancing.algorithm.type\" = \"least_outstanding_requests\", \"slow_start.duration_seconds\" = \"30\"",
                "(web).attributes.\"slow_start.duration_seconds\": slow start cannot be used with least_outstanding_requests",
            ),
            (
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"slow_start.duration_seconds\" = \"29\"",
                "not 0 (off) or 30..=900",
            ),
            ("port = 8000", "port = 0", "http_listeners[0].port"),
            (
                "protocol = \"HTTP\"\ndefault",
                "protocol = \"HTTPS\"\ndefault",
                "certificate",
            ),
            (
                "[{ field = \"path-pattern\", values = [\"/old\"] }]",
                "[]",
                "needs a condition",
            ),
            (
                "values = [\"/health\"]",
                "values = []",
                "at least one value",
            ),
            (
                "name = \"User-Agent\"",
                "name = \"User Agent\"",
                "not a header name",
            ),
        ];
        for (from, to, expect) in cases {
            let e = refused(from, to);
            assert!(e.contains(expect), "{from:?} → {to:?}: {e}");
        }
    }
}
