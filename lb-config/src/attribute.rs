//! Target group and listener attributes, by their AWS names, in one table: what each takes, its
//! default, and which groups take it. Values are strings in the file, as in the AWS API.

use std::collections::BTreeMap;

use crate::Refusal;

/// The groups (or listeners) an attribute belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `TCP`, `UDP`, `TCP_UDP` and `TLS` target groups, and L4 listeners (NLB's attributes).
    L4,
    /// `HTTP` and `HTTPS` target groups, and HTTP listeners (ALB's attributes).
    L7,
    /// Both kinds of target groups.
    Both,
}

impl Tier {
    fn takes(self, tier: Tier) -> bool {
        self == Tier::Both || self == tier
    }
}

/// What an attribute takes.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    OneOf(&'static [&'static str]),
    /// A number of seconds in `min..=max`.
    Seconds(u64, u64),
    /// `slow_start.duration_seconds`: 0 (off) or 30..=900.
    SlowStart,
    /// An application's cookie name: a cookie token outside ALB's own names.
    CookieName,
}

/// One attribute.
#[derive(Clone, Copy, Debug)]
pub struct Attribute {
    pub name: &'static str,
    pub tier: Tier,
    pub values: Values,
    /// The value when the file sets none (empty: no default).
    pub default: &'static str,
}

const fn attr(name: &'static str, tier: Tier, values: Values, default: &'static str) -> Attribute {
    Attribute {
        name,
        tier,
        values,
        default,
    }
}

/// Target group attributes. A name may appear once per tier, with what that tier takes.
pub const TARGET_GROUP: &[Attribute] = &[
    attr(
        "deregistration_delay.timeout_seconds",
        Tier::Both,
        Values::Seconds(0, 3600),
        "300",
    ),
    // NLB: 5-tuple hashing unless `source_ip`.
    attr(
        "stickiness.type",
        Tier::L4,
        Values::OneOf(&["source_ip", "none"]),
        "none",
    ),
    attr(
        "load_balancing.cross_zone.enabled",
        Tier::L4,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // NLB's: a PROXY v2 header in front of each connection to a target.
    attr(
        "proxy_protocol_v2.enabled",
        Tier::L4,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    attr(
        "load_balancing.algorithm.type",
        Tier::L7,
        Values::OneOf(&[
            "round_robin",
            "least_outstanding_requests",
            "weighted_random",
        ]),
        "round_robin",
    ),
    // ALB's anomaly mitigation of `weighted_random` is not implemented: only `off` is taken.
    attr(
        "load_balancing.algorithm.anomaly_mitigation",
        Tier::L7,
        Values::OneOf(&["off"]),
        "off",
    ),
    attr(
        "slow_start.duration_seconds",
        Tier::L7,
        Values::SlowStart,
        "0",
    ),
    attr(
        "stickiness.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    attr(
        "stickiness.type",
        Tier::L7,
        Values::OneOf(&["lb_cookie", "app_cookie"]),
        "lb_cookie",
    ),
    attr(
        "stickiness.lb_cookie.duration_seconds",
        Tier::L7,
        Values::Seconds(1, 604_800),
        "86400",
    ),
    attr(
        "stickiness.app_cookie.duration_seconds",
        Tier::L7,
        Values::Seconds(1, 604_800),
        "86400",
    ),
    attr(
        "stickiness.app_cookie.cookie_name",
        Tier::L7,
        Values::CookieName,
        "",
    ),
];

/// HTTP listener attributes (ALB's load balancer attributes, per listener here).
pub const HTTP_LISTENER: &[Attribute] = &[
    attr(
        "idle_timeout.timeout_seconds",
        Tier::L7,
        Values::Seconds(1, 4000),
        "60",
    ),
    // What becomes of `X-Forwarded-For`: the client appended, the client's header kept, or none.
    attr(
        "routing.http.xff_header_processing.mode",
        Tier::L7,
        Values::OneOf(&["append", "preserve", "remove"]),
        "append",
    ),
    // In `append` mode, the client's port too (`ip:port`).
    attr(
        "routing.http.xff_client_port.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // Off: a `Host` without a port gets the listener's, unless that is the scheme's default.
    attr(
        "routing.http.preserve_host_header.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // Headers whose names are not `[A-Za-z0-9-]+` are removed before routing.
    attr(
        "routing.http.drop_invalid_header_fields.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // HTTPS: `X-Amzn-TLS-Version` and `X-Amzn-TLS-Cipher-Suite` to the targets.
    attr(
        "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // ALB's `connection_logs.s3.enabled`, off by default as there; the lines go where the
    // access log goes, not to S3.
    attr(
        "connection_logs.enabled",
        Tier::L7,
        Values::OneOf(&["true", "false"]),
        "false",
    ),
    // What is done with HTTP/1 requests that do not comply with RFC 7230 (see `DesyncMode`).
    attr(
        "routing.http.desync_mitigation_mode",
        Tier::L7,
        Values::OneOf(&["monitor", "defensive", "strictest"]),
        "defensive",
    ),
];

/// L4 listener attributes (NLB's listener attributes).
pub const LISTENER: &[Attribute] = &[
    // Which listeners take it is the listener's to check: TCP ones the proxy serves.
    attr(
        "tcp.idle_timeout.seconds",
        Tier::L4,
        Values::Seconds(60, 6000),
        "350",
    ),
];

/// Cookie names ALB keeps for itself (`AWSALB`, `AWSALBAPP-*`, `AWSALBTG`): one prefix covers all.
pub const RESERVED_COOKIE_PREFIX: &str = "AWSALB";

/// The entry of `table` for `name` in `tier`.
pub fn find(table: &'static [Attribute], tier: Tier, name: &str) -> Option<&'static Attribute> {
    table.iter().find(|a| a.name == name && a.tier.takes(tier))
}

/// `attributes[name]`, or the table's default.
pub fn value<'a>(
    table: &'static [Attribute],
    tier: Tier,
    attributes: &'a BTreeMap<String, String>,
    name: &str,
) -> &'a str {
    match attributes.get(name) {
        Some(v) => v,
        None => find(table, tier, name).map_or("", |a| a.default),
    }
}

/// Checks every attribute of `attributes` (at key `at`) against `table`.
pub(crate) fn check(
    table: &'static [Attribute],
    tier: Tier,
    attributes: &BTreeMap<String, String>,
    at: &str,
) -> Result<(), Refusal> {
    for (k, v) in attributes {
        let key = format!("{at}.attributes.\"{k}\"");
        let Some(a) = find(table, tier, k) else {
            return Err(Refusal::new(key, "unknown attribute"));
        };
        a.check(v).map_err(|m| Refusal::new(key, m))?;
    }
    Ok(())
}

impl Attribute {
    /// Whether `value` is one this attribute takes; the error says what it takes.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self.values {
            Values::OneOf(allowed) if allowed.contains(&value) => Ok(()),
            Values::OneOf(allowed) => Err(format!("{value:?} is not one of {allowed:?}")),
            Values::Seconds(min, max) => seconds(value, min, max).map(|_| ()),
            Values::SlowStart => match value.parse::<u64>() {
                Ok(0 | 30..=900) => Ok(()),
                _ => Err(format!("{value:?} is not 0 (off) or 30..=900 seconds")),
            },
            Values::CookieName => cookie_name(value),
        }
    }
}

/// Parses a number of seconds within `min..=max`.
pub fn seconds(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(s) if (min..=max).contains(&s) => Ok(s),
        _ => Err(format!(
            "{value:?} is not a number of seconds in {min}..={max}"
        )),
    }
}

/// An application cookie name: a cookie token (RFC 6265) outside ALB's own names.
fn cookie_name(name: &str) -> Result<(), String> {
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
