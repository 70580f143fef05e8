//! A target group's `health_check` block, in the ELB vocabulary (`HealthCheckProtocol`,
//! `HealthCheckPort`, ...), with AWS's defaults and ranges. The checks themselves run in
//! `lb-health`.

use std::{fmt, ops::RangeInclusive};

use serde::{Deserialize, Deserializer, de};

/// A target group's `health_check` block, in the ELB vocabulary (`HealthCheckProtocol`,
/// `HealthCheckPort`, ...). Defaults are AWS's; [`HealthCheck::validate`] checks AWS's ranges.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `HealthCheckEnabled`: `false` turns the group's checks off (its targets are
    /// `unavailable` and take traffic). HTTP and HTTPS groups are checked unless it says so.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Unset in the file: `TCP` (NLB's default) for TCP/UDP groups, `HTTP` (ALB's) for HTTP and
    /// HTTPS groups; [`Config::parse`](crate::Config::parse) fills it in.
    #[serde(default)]
    pub protocol: Option<CheckProtocol>,
    /// A port number or `"traffic-port"` (the target group's port, the default).
    #[serde(default)]
    pub port: CheckPort,
    /// The HTTP(S) path; `/` when unset. Refused for TCP checks, as AWS does.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// Must be less than `interval_seconds`.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Consecutive successes that make an unhealthy target healthy.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a target unhealthy.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// The HTTP(S) status codes that count as success; `200` when unset. Refused for TCP checks.
    #[serde(default)]
    pub matcher: Option<Matcher>,
}

const fn default_enabled() -> bool {
    true
}
const fn default_interval() -> u32 {
    30
}
const fn default_timeout() -> u32 {
    5
}
const fn default_healthy() -> u32 {
    5
}
const fn default_unhealthy() -> u32 {
    2
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            enabled: true,
            protocol: None,
            port: CheckPort::default(),
            path: None,
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            healthy_threshold: default_healthy(),
            unhealthy_threshold: default_unhealthy(),
            matcher: None,
        }
    }
}

/// `HealthCheckProtocol`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckProtocol {
    /// Success is a completed TCP handshake.
    #[default]
    Tcp,
    /// Success is a `GET path` answered with a status the matcher accepts.
    Http,
    /// As `Http`, over TLS; any certificate is accepted, as ELB does.
    Https,
}

/// `HealthCheckPort`: a number or `"traffic-port"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckPort {
    /// The port the target group forwards to.
    #[default]
    TrafficPort,
    Port(u16),
}

impl<'de> Deserialize<'de> for CheckPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = CheckPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port 1-65535 or \"traffic-port\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CheckPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(CheckPort::Port(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CheckPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(CheckPort::Port(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckPort, E> {
                if v == "traffic-port" {
                    Ok(CheckPort::TrafficPort)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `Matcher.HttpCode`: codes and ranges separated by commas (`"200"`, `"200,202"`,
/// `"200-299"`), each within 200–599 (NLB's range; ALB's stops at 499).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    text: String,
    ranges: Vec<RangeInclusive<u16>>,
}

/// The codes a matcher may name.
const MATCHER_CODES: RangeInclusive<u16> = 200..=599;

impl Matcher {
    /// Parses the ALB syntax; the error names the part at fault.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let code = |s: &str| -> Result<u16, String> {
            let c: u16 = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} in matcher {text:?} is not a status code"))?;
            if !MATCHER_CODES.contains(&c) {
                return Err(format!(
                    "{c} in matcher {text:?} is outside {}-{}",
                    MATCHER_CODES.start(),
                    MATCHER_CODES.end()
                ));
            }
            Ok(c)
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (code(lo)?, code(hi)?);
                    if lo > hi {
                        return Err(format!("range {part:?} in matcher {text:?} is empty"));
                    }
                    lo..=hi
                }
                None => {
                    let c = code(part)?;
                    c..=c
                }
            };
            ranges.push(range);
        }
        Ok(Matcher {
            text: text.to_owned(),
            ranges,
        })
    }

    /// The highest code it accepts.
    pub fn highest(&self) -> u16 {
        self.ranges.iter().map(|r| *r.end()).max().unwrap_or(200)
    }

    /// Whether `status` counts as success.
    pub fn matches(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            text: "200".to_owned(),
            ranges: vec![200..=200],
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Matcher::parse(&text).map_err(de::Error::custom)
    }
}

/// AWS's allowed ranges.
const INTERVAL_SECONDS: RangeInclusive<u32> = 5..=300;
const TIMEOUT_SECONDS: RangeInclusive<u32> = 2..=120;
const THRESHOLD: RangeInclusive<u32> = 2..=10;
const PATH_MAX_LEN: usize = 1024;

impl HealthCheck {
    /// Checks AWS's ranges and combinations; the error starts with the key at fault, e.g.
    /// `timeout_seconds: 30 must be less than interval_seconds (30)`.
    pub fn validate(&self) -> Result<(), String> {
        let range = |key: &str, v: u32, r: RangeInclusive<u32>| {
            if r.contains(&v) {
                Ok(())
            } else {
                Err(format!("{key}: {v} is outside {}..={}", r.start(), r.end()))
            }
        };
        range("interval_seconds", self.interval_seconds, INTERVAL_SECONDS)?;
        range("timeout_seconds", self.timeout_seconds, TIMEOUT_SECONDS)?;
        if self.timeout_seconds >= self.interval_seconds {
            return Err(format!(
                "timeout_seconds: {} must be less than interval_seconds ({})",
                self.timeout_seconds, self.interval_seconds
            ));
        }
        range("healthy_threshold", self.healthy_threshold, THRESHOLD)?;
        range("unhealthy_threshold", self.unhealthy_threshold, THRESHOLD)?;
        if self.port == CheckPort::Port(0) {
            return Err("port: 0 is outside 1..=65535".into());
        }
        if self.protocol() == CheckProtocol::Tcp {
            if self.path.is_some() {
                return Err("path: TCP health checks take no path".into());
            }
            if self.matcher.is_some() {
                return Err("matcher: TCP health checks take no matcher".into());
            }
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                return Err(format!("path: {path:?} does not start with \"/\""));
            }
            if path.len() > PATH_MAX_LEN {
                return Err(format!("path: longer than {PATH_MAX_LEN} characters"));
            }
            // The path goes verbatim into the request line: no spaces or control characters.
            if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(format!("path: {path:?} contains {c:?}"));
            }
        }
        Ok(())
    }

    /// The protocol checks use.
    pub fn protocol(&self) -> CheckProtocol {
        self.protocol.unwrap_or_default()
    }
}
