//! `[[http_listeners]]`: the L7 tier's HTTP and HTTPS listeners, their rules and actions, in
//! the vocabulary of an AWS Application Load Balancer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    Config, Refusal,
    attribute::{self, Tier},
};

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
    pub default_action: HttpAction,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// ALB attributes by their AWS names (`attribute::HTTP_LISTENER`).
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

impl HttpListener {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// An attribute's value, or its default.
    fn attribute(&self, name: &str) -> &str {
        attribute::value(attribute::HTTP_LISTENER, Tier::L7, &self.attributes, name)
    }

    /// `idle_timeout.timeout_seconds`: how long a connection may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        let v = self.attribute("idle_timeout.timeout_seconds");
        Duration::from_secs(v.parse().unwrap_or(60))
    }

    /// `routing.http.xff_header_processing.mode`.
    pub fn xff_mode(&self) -> XffMode {
        match self.attribute("routing.http.xff_header_processing.mode") {
            "preserve" => XffMode::Preserve,
            "remove" => XffMode::Remove,
            _ => XffMode::Append,
        }
    }

    /// Whether boolean attribute `name` is `true`.
    pub fn enabled(&self, name: &str) -> bool {
        self.attribute(name) == "true"
    }

    /// `routing.http.desync_mitigation_mode`: what is done with requests that do not comply
    /// with RFC 7230.
    pub fn desync_mitigation_mode(&self) -> DesyncMode {
        match self.attribute("routing.http.desync_mitigation_mode") {
            "monitor" => DesyncMode::Monitor,
            "strictest" => DesyncMode::Strictest,
            _ => DesyncMode::Defensive,
        }
    }
}

/// ALB's desync mitigation modes: which classifications of a request are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DesyncMode {
    /// Forwards every request.
    Monitor,
    /// Forwards Compliant and Acceptable requests; Ambiguous ones too, then closes both
    /// connections; blocks Severe ones.
    #[default]
    Defensive,
    /// Forwards Compliant requests only.
    Strictest,
}

/// ALB's `routing.http.xff_header_processing.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XffMode {
    /// The client's address after those the request carried (the default).
    Append,
    /// The request's header as it came, none if it had none.
    Preserve,
    /// No `X-Forwarded-For`.
    Remove,
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
    pub actions: Vec<HttpAction>,
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

impl Condition {
    /// Its field's name and how many values it has.
    fn field_and_count(&self) -> (&'static str, usize) {
        match self {
            Condition::HostHeader { values } => ("host-header", values.len()),
            Condition::PathPattern { values } => ("path-pattern", values.len()),
            Condition::HttpHeader { values, .. } => ("http-header", values.len()),
            Condition::HttpRequestMethod { values } => ("http-request-method", values.len()),
            Condition::QueryString { values } => ("query-string", values.len()),
            Condition::SourceIp { values } => ("source-ip", values.len()),
        }
    }

    /// The texts its wildcards can be in: patterns, and a query-string value's key and value.
    fn texts(&self) -> Vec<&str> {
        match self {
            Condition::HostHeader { values }
            | Condition::PathPattern { values }
            | Condition::HttpHeader { values, .. } => values.iter().map(String::as_str).collect(),
            Condition::QueryString { values } => values
                .iter()
                .flat_map(|q| [q.key.as_deref().unwrap_or(""), q.value.as_str()])
                .collect(),
            Condition::HttpRequestMethod { .. } | Condition::SourceIp { .. } => Vec::new(),
        }
    }
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
pub enum HttpAction {
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
/// Most condition values in one rule, and most wildcards (`*`, `?`) in them (ALB's quotas).
const MAX_RULE_VALUES: usize = 5;
const MAX_RULE_WILDCARDS: usize = 5;

/// Checks the HTTP listeners: ports, certificates named, attributes, rules and the groups their
/// actions name. Whether the certificates load is the L7 tier's to check.
pub(crate) fn validate(cfg: &Config) -> Result<(), Refusal> {
    let mut bound = std::collections::BTreeSet::new();
    for (i, l) in cfg.http_listeners.iter().enumerate() {
        let at = format!("http_listeners[{i}]");
        if l.port == 0 {
            return Err(Refusal::new(format!("{at}.port"), "0 is outside 1..=65535"));
        }
        if !bound.insert((l.address, l.port)) {
            return Err(Refusal::new(
                format!("{at}.port"),
                format!("another listener has {}:{}", l.address, l.port),
            ));
        }
        match (l.protocol, l.certificates.is_empty()) {
            (ListenerProtocol::Https, true) => {
                return Err(Refusal::new(
                    format!("{at}.certificates"),
                    "an HTTPS listener needs a certificate",
                ));
            }
            (ListenerProtocol::Http, false) => {
                return Err(Refusal::new(
                    format!("{at}.certificates"),
                    "an HTTP listener takes no certificate",
                ));
            }
            _ => {}
        }
        attribute::check(attribute::HTTP_LISTENER, Tier::L7, &l.attributes, &at)?;
        check_action(cfg, &l.default_action, l, &format!("{at}.default_action"))?;
        let mut priorities = std::collections::BTreeSet::new();
        for (j, r) in l.rules.iter().enumerate() {
            let rat = format!("{at}.rules[{j}]");
            if !(1..=50_000).contains(&r.priority) {
                return Err(Refusal::new(
                    format!("{rat}.priority"),
                    format!("{} is outside 1..=50000", r.priority),
                ));
            }
            if !priorities.insert(r.priority) {
                return Err(Refusal::new(
                    format!("{rat}.priority"),
                    format!("another rule has priority {}", r.priority),
                ));
            }
            check_conditions(&r.conditions, &rat)?;
            let [action] = r.actions.as_slice() else {
                return Err(Refusal::new(
                    format!("{rat}.actions"),
                    format!("{} actions; a rule takes exactly one", r.actions.len()),
                ));
            };
            check_action(cfg, action, l, &format!("{rat}.actions[0]"))?;
        }
    }
    Ok(())
}

fn check_action(cfg: &Config, a: &HttpAction, l: &HttpListener, at: &str) -> Result<(), Refusal> {
    match a {
        HttpAction::Forward {
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
                    return Err(Refusal::new(
                        at,
                        "a forward names either target_group or target_groups",
                    ));
                }
            };
            if groups.len() > MAX_FORWARD_GROUPS {
                return Err(Refusal::new(
                    format!("{at}.target_groups"),
                    format!("at most {MAX_FORWARD_GROUPS} target groups"),
                ));
            }
            for (name, weight) in &groups {
                match cfg.group(name) {
                    None => {
                        return Err(Refusal::new(at, format!("no target group named {name:?}")));
                    }
                    Some(tg) if !tg.protocol.is_http() => {
                        return Err(Refusal::new(
                            at,
                            format!("{name:?} is not an HTTP or HTTPS target group"),
                        ));
                    }
                    Some(_) => {}
                }
                if *weight > 999 {
                    return Err(Refusal::new(
                        format!("{at}.target_groups ({name}).weight"),
                        format!("{weight} is outside 0..=999"),
                    ));
                }
            }
            if groups.iter().all(|(_, w)| *w == 0) {
                return Err(Refusal::new(
                    format!("{at}.target_groups"),
                    "every weight is 0",
                ));
            }
            if let Some(s) = stickiness
                && !(1..=604_800).contains(&s.duration_seconds)
            {
                return Err(Refusal::new(
                    format!("{at}.stickiness.duration_seconds"),
                    format!("{} is outside 1..=604800", s.duration_seconds),
                ));
            }
        }
        HttpAction::Redirect {
            protocol,
            host,
            port,
            path,
            status_code: _,
            query: _,
        } => {
            let p = protocol.to_ascii_uppercase();
            if !["#{PROTOCOL}", "HTTP", "HTTPS"].contains(&p.as_str()) {
                return Err(Refusal::new(
                    format!("{at}.protocol"),
                    format!("{protocol:?} is not HTTP, HTTPS or #{{protocol}}"),
                ));
            }
            if l.protocol == ListenerProtocol::Https && p == "HTTP" {
                return Err(Refusal::new(
                    format!("{at}.protocol"),
                    "an HTTPS listener cannot redirect to HTTP",
                ));
            }
            if *protocol == keep_protocol()
                && *host == keep_host()
                && *port == keep_port()
                && *path == keep_path()
            {
                return Err(Refusal::new(
                    at,
                    "a redirect must change the protocol, host, port or path (else it loops)",
                ));
            }
            if host.len() > MAX_PATTERN_LEN || path.len() > MAX_PATTERN_LEN {
                return Err(Refusal::new(
                    at,
                    format!("host and path are at most {MAX_PATTERN_LEN} characters"),
                ));
            }
            if !path.starts_with('/') {
                return Err(Refusal::new(
                    format!("{at}.path"),
                    format!("{path:?} must start with /"),
                ));
            }
            if *port != keep_port() && port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(Refusal::new(
                    format!("{at}.port"),
                    format!("{port:?} is not a port or #{{port}}"),
                ));
            }
        }
        HttpAction::FixedResponse {
            status_code,
            content_type,
            message_body,
        } => {
            if !matches!(status_code / 100, 2 | 4 | 5) || *status_code > 599 {
                return Err(Refusal::new(
                    format!("{at}.status_code"),
                    format!("{status_code} is not 2XX, 4XX or 5XX"),
                ));
            }
            if let Some(ct) = content_type
                && !CONTENT_TYPES.contains(&ct.as_str())
            {
                return Err(Refusal::new(
                    format!("{at}.content_type"),
                    format!("{ct:?} is not one of {CONTENT_TYPES:?}"),
                ));
            }
            if message_body
                .as_ref()
                .is_some_and(|b| b.len() > MAX_BODY_LEN)
            {
                return Err(Refusal::new(
                    format!("{at}.message_body"),
                    format!("longer than {MAX_BODY_LEN} bytes"),
                ));
            }
        }
    }
    Ok(())
}

fn check_conditions(conditions: &[Condition], at: &str) -> Result<(), Refusal> {
    if conditions.is_empty() {
        return Err(Refusal::new(
            format!("{at}.conditions"),
            "a rule needs a condition (the default action has none)",
        ));
    }
    let values: usize = conditions.iter().map(|c| c.field_and_count().1).sum();
    if values > MAX_RULE_VALUES {
        return Err(Refusal::new(
            format!("{at}.conditions"),
            format!("{values} condition values; ALB takes {MAX_RULE_VALUES} per rule"),
        ));
    }
    let wildcards: usize = conditions
        .iter()
        .flat_map(Condition::texts)
        .map(|v| v.matches(['*', '?']).count())
        .sum();
    if wildcards > MAX_RULE_WILDCARDS {
        return Err(Refusal::new(
            format!("{at}.conditions"),
            format!("{wildcards} wildcards; ALB takes {MAX_RULE_WILDCARDS} per rule"),
        ));
    }
    let mut once = std::collections::BTreeSet::new();
    for (i, c) in conditions.iter().enumerate() {
        let cat = format!("{at}.conditions[{i}]");
        let (field, count) = c.field_and_count();
        if count == 0 {
            return Err(Refusal::new(
                format!("{cat}.values"),
                "needs at least one value",
            ));
        }
        let repeatable = matches!(
            c,
            Condition::HttpHeader { .. } | Condition::QueryString { .. }
        );
        if !repeatable && !once.insert(field) {
            return Err(Refusal::new(
                cat,
                format!("a rule takes one {field} condition"),
            ));
        }
        let patterns: &[String] = match c {
            Condition::HostHeader { values } | Condition::PathPattern { values } => values,
            _ => &[],
        };
        if let Some(p) = patterns
            .iter()
            .find(|p| p.len() > MAX_PATTERN_LEN || p.is_empty())
        {
            return Err(Refusal::new(
                format!("{cat}.values"),
                format!("{p:?} is not 1..={MAX_PATTERN_LEN} characters"),
            ));
        }
        if let Condition::HttpHeader { name, .. } = c
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(Refusal::new(
                format!("{cat}.name"),
                format!("{name:?} is not a header name"),
            ));
        }
    }
    Ok(())
}
