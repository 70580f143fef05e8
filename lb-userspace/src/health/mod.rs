//! Active health checks with the semantics of AWS ELB target groups, independent of BPF: the
//! agent feeds the results into which targets go into the Maglev rings, and the L7 tier into
//! which targets of an HTTP target group take requests (each runs its own [`checker`]).
//!
//! - This file: the `health_check` config block ([`HealthCheck`], keys and defaults as AWS), the
//!   target states and reason codes with their AWS spellings ([`State`], [`Reason`]), the pure
//!   per-target state machine ([`Health::observe`]) and the fail-open rule ([`routable`]).
//! - [`probe`]: one TCP, HTTP or HTTPS check against one address, bounded by the timeout.
//! - [`checker`]: runs the probes on their intervals (one tokio task per target), keeps the
//!   states across reloads and reports every state change as an [`Event`](checker::Event).
//!
//! Design decisions:
//! - **Thresholds count consecutive results.** A healthy target goes unhealthy after
//!   `unhealthy_threshold` failures in a row, an unhealthy one healthy after `healthy_threshold`
//!   successes in a row; any other result resets the count. A change is therefore detected
//!   between `(threshold − 1) × interval` and `threshold × interval` after it happens (the first
//!   probe to see it comes within one interval), plus the probe's own time (up to the timeout).
//! - **A new target needs one success.** AWS: "a new target must pass 1 check" (ELB reference,
//!   target states). From `initial`, one success makes a target `healthy`, while it takes
//!   `unhealthy_threshold` consecutive failures to make it `unhealthy`, as for a healthy one.
//! - **`initial` is routable.** The agent keeps `initial` and `healthy` targets in the ring, so
//!   registering a target does not wait for a check; [`routable`] fails open when no target is.
//! - **The state machine is pure.** It sees results, not time, so it is tested without servers;
//!   timing lives in [`checker`] only.

pub mod checker;
pub mod probe;

use std::{fmt, ops::RangeInclusive, time::Duration};

use serde::{Deserialize, Deserializer, de};

use crate::health::probe::{ProbeError, ProbeKind};

/// A target group's `health_check` block, in the ELB vocabulary (`HealthCheckProtocol`,
/// `HealthCheckPort`, ...). Defaults are AWS's; [`HealthCheck::validate`] checks AWS's ranges.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Unset: `TCP`, NLB's default, for TCP/UDP groups; HTTP groups get ALB's default, `HTTP`,
    /// through [`HealthCheck::default_protocol`].
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

/// What the checker needs to run a group's checks; built from a validated [`HealthCheck`] by
/// [`HealthCheck::spec`], or directly (tests use sub-second intervals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: ProbeKind,
    /// The port probed on each target: its traffic port, or one for all.
    pub port: CheckPort,
    pub interval: Duration,
    /// Bounds the whole probe: connect, TLS handshake, request and status line.
    pub timeout: Duration,
    pub thresholds: Thresholds,
}

/// Consecutive results needed to change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes that make an unhealthy target healthy.
    pub healthy: u32,
    /// Failures that make a target unhealthy.
    pub unhealthy: u32,
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

    /// Sets the protocol if the file did not: HTTP target groups check over HTTP, as ALB's.
    pub fn default_protocol(&mut self, protocol: CheckProtocol) {
        self.protocol.get_or_insert(protocol);
    }

    /// The protocol checks use.
    pub fn protocol(&self) -> CheckProtocol {
        self.protocol.unwrap_or_default()
    }

    /// What the checker runs.
    pub fn spec(&self) -> CheckSpec {
        let path = self.path.clone().unwrap_or_else(|| "/".to_owned());
        let matcher = self.matcher.clone().unwrap_or_default();
        CheckSpec {
            kind: match self.protocol() {
                CheckProtocol::Tcp => ProbeKind::Tcp,
                CheckProtocol::Http => ProbeKind::Http { path, matcher },
                CheckProtocol::Https => ProbeKind::Https { path, matcher },
            },
            port: self.port,
            interval: Duration::from_secs(self.interval_seconds.into()),
            timeout: Duration::from_secs(self.timeout_seconds.into()),
            thresholds: Thresholds {
                healthy: self.healthy_threshold,
                unhealthy: self.unhealthy_threshold,
            },
        }
    }
}

/// A target's state (`TargetHealth.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Registered, not yet decided: gets traffic until proven unhealthy.
    Initial,
    Healthy,
    Unhealthy,
    /// Deregistered: no new flows, established ones finish until the deregistration delay.
    Draining,
    /// Not registered (before registration, and after draining ends).
    Unused,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initial => "initial",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
            State::Unused => "unused",
        })
    }
}

/// Why a target is in its state (`TargetHealth.Reason`); healthy targets have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// `Elb.InitialHealthChecking`: registered, checks not yet conclusive.
    InitialHealthChecking,
    /// `Target.ResponseCodeMismatch`: the HTTP status is not one the matcher accepts.
    ResponseCodeMismatch,
    /// `Target.Timeout`: no answer within the timeout.
    Timeout,
    /// `Target.FailedHealthChecks`: refused, reset, TLS failure or a malformed answer.
    FailedHealthChecks,
    /// `Target.DeregistrationInProgress`: draining.
    DeregistrationInProgress,
    /// `Target.NotRegistered`.
    NotRegistered,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::InitialHealthChecking => "Elb.InitialHealthChecking",
            Reason::ResponseCodeMismatch => "Target.ResponseCodeMismatch",
            Reason::Timeout => "Target.Timeout",
            Reason::FailedHealthChecks => "Target.FailedHealthChecks",
            Reason::DeregistrationInProgress => "Target.DeregistrationInProgress",
            Reason::NotRegistered => "Target.NotRegistered",
        })
    }
}

/// One probe's outcome.
pub type ProbeResult = Result<(), ProbeError>;

/// A state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// The reason for `to` (none for `healthy`).
    pub reason: Option<Reason>,
}

/// One target's health: its state and the run of consecutive results that leads out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: State,
    pub reason: Option<Reason>,
    /// The last failure, for operators (`TargetHealth.Description`); cleared by a success.
    pub description: Option<String>,
    successes: u32,
    failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A newly registered target: `initial`, `Elb.InitialHealthChecking`.
    pub fn new() -> Health {
        Health {
            state: State::Initial,
            reason: Some(Reason::InitialHealthChecking),
            description: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Counts `result` and returns the state change it causes, if any. Draining and unused
    /// targets are not checked, so results for them change nothing.
    pub fn observe(&mut self, result: &ProbeResult, t: Thresholds) -> Option<Transition> {
        if matches!(self.state, State::Draining | State::Unused) {
            return None;
        }
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                self.description = None;
                let needed = match self.state {
                    // AWS: a new target must pass one check.
                    State::Initial => 1,
                    _ => t.healthy,
                };
                (self.state != State::Healthy && self.successes >= needed)
                    .then(|| self.go(State::Healthy, None))
            }
            Err(e) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.description = Some(e.to_string());
                if self.state == State::Unhealthy {
                    // Keep the reason current without reporting a change.
                    self.reason = Some(e.reason());
                    return None;
                }
                (self.failures >= t.unhealthy).then(|| self.go(State::Unhealthy, Some(e.reason())))
            }
        }
    }

    /// Moves to `to` outside the check results (registration, deregistration); resets the counts.
    pub fn go(&mut self, to: State, reason: Option<Reason>) -> Transition {
        let from = self.state;
        self.state = to;
        self.reason = reason;
        self.successes = 0;
        self.failures = 0;
        Transition { from, to, reason }
    }
}

/// The targets that get new flows, given every registered target's state: `healthy` and
/// `initial` ones; when there are none, fail open as ELB does, to every `unhealthy` one.
/// `draining` and `unused` targets never get new flows.
pub fn routable<T: Clone>(states: &[(T, State)]) -> Vec<T> {
    let pick = |want: &[State]| -> Vec<T> {
        states
            .iter()
            .filter(|(_, s)| want.contains(s))
            .map(|(t, _)| t.clone())
            .collect()
    };
    let up = pick(&[State::Healthy, State::Initial]);
    if up.is_empty() {
        pick(&[State::Unhealthy])
    } else {
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        health_check: HealthCheck,
    }

    fn parse(text: &str) -> Result<HealthCheck, String> {
        toml::from_str::<Wrapper>(text)
            .map(|w| w.health_check)
            .map_err(|e| e.to_string())
    }

    const T: Thresholds = Thresholds {
        healthy: 3,
        unhealthy: 2,
    };

    fn timeout() -> ProbeResult {
        Err(ProbeError::Timeout {
            timeout: Duration::from_secs(5),
        })
    }

    fn mismatch() -> ProbeResult {
        Err(ProbeError::ResponseCodeMismatch {
            status: 503,
            matcher: Matcher::default(),
        })
    }

    #[test]
    fn defaults_are_aws() {
        let hc = parse("[health_check]").unwrap();
        assert_eq!(hc, HealthCheck::default());
        hc.validate().unwrap();
        let spec = hc.spec();
        assert_eq!(spec.kind, ProbeKind::Tcp);
        assert_eq!(spec.port, CheckPort::TrafficPort);
        assert_eq!(spec.interval, Duration::from_secs(30));
        assert_eq!(spec.timeout, Duration::from_secs(5));
        assert_eq!(
            spec.thresholds,
            Thresholds {
                healthy: 5,
                unhealthy: 2
            }
        );
        let http = parse("[health_check]\nprotocol = \"HTTP\"").unwrap().spec();
        assert_eq!(
            http.kind,
            ProbeKind::Http {
                path: "/".into(),
                matcher: Matcher::default()
            }
        );
    }

    #[test]
    fn parses_every_key() {
        let hc = parse(
            r#"[health_check]
protocol = "HTTPS"
port = 8443
path = "/healthz"
interval_seconds = 10
timeout_seconds = 3
healthy_threshold = 2
unhealthy_threshold = 3
matcher = "200-299,301"
"#,
        )
        .unwrap();
        hc.validate().unwrap();
        let spec = hc.spec();
        assert_eq!(spec.port, CheckPort::Port(8443));
        let ProbeKind::Https { path, matcher } = spec.kind else {
            panic!("{:?}", spec.kind)
        };
        assert_eq!(path, "/healthz");
        assert_eq!(matcher.to_string(), "200-299,301");
        assert_eq!(
            parse("[health_check]\nport = \"traffic-port\"")
                .unwrap()
                .port,
            CheckPort::TrafficPort
        );
    }

    #[test]
    fn bad_values_are_refused_at_parse_naming_the_key() {
        for (text, want) in [
            ("prot = \"TCP\"", "prot"),
            ("protocol = \"UDP\"", "protocol"),
            ("port = \"traffic\"", "traffic-port"),
            ("port = 0", "port"),
            ("port = 70000", "port"),
            ("matcher = \"20x\"", "matcher"),
        ] {
            let e = parse(&format!("[health_check]\n{text}")).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn validate_names_the_key() {
        let http = HealthCheck {
            protocol: Some(CheckProtocol::Http),
            ..HealthCheck::default()
        };
        for (hc, want) in [
            (
                HealthCheck {
                    interval_seconds: 4,
                    timeout_seconds: 2,
                    ..HealthCheck::default()
                },
                "interval_seconds: 4 is outside 5..=300",
            ),
            (
                HealthCheck {
                    timeout_seconds: 1,
                    ..HealthCheck::default()
                },
                "timeout_seconds: 1",
            ),
            (
                HealthCheck {
                    timeout_seconds: 30,
                    ..HealthCheck::default()
                },
                "timeout_seconds: 30 must be less than interval_seconds (30)",
            ),
            (
                HealthCheck {
                    healthy_threshold: 11,
                    ..HealthCheck::default()
                },
                "healthy_threshold: 11",
            ),
            (
                HealthCheck {
                    unhealthy_threshold: 1,
                    ..HealthCheck::default()
                },
                "unhealthy_threshold: 1",
            ),
            (
                HealthCheck {
                    port: CheckPort::Port(0),
                    ..HealthCheck::default()
                },
                "port: 0",
            ),
            (
                HealthCheck {
                    path: Some("/".into()),
                    ..HealthCheck::default()
                },
                "path: TCP",
            ),
            (
                HealthCheck {
                    matcher: Some(Matcher::default()),
                    ..HealthCheck::default()
                },
                "matcher: TCP",
            ),
            (
                HealthCheck {
                    path: Some("health".into()),
                    ..http.clone()
                },
                "path: \"health\"",
            ),
            (
                HealthCheck {
                    path: Some("/a b".into()),
                    ..http.clone()
                },
                "path: \"/a b\" contains ' '",
            ),
            (
                HealthCheck {
                    path: Some(format!("/{}", "a".repeat(1024))),
                    ..http.clone()
                },
                "path: longer",
            ),
        ] {
            let e = hc.validate().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn matcher_syntax() {
        let m = Matcher::parse("200").unwrap();
        assert!(m.matches(200) && !m.matches(201));
        let m = Matcher::parse("200,202").unwrap();
        assert!(m.matches(200) && m.matches(202) && !m.matches(201));
        let m = Matcher::parse("200-299").unwrap();
        assert!(m.matches(200) && m.matches(250) && m.matches(299) && !m.matches(300));
        let m = Matcher::parse("200-204,301,500-599").unwrap();
        assert!(m.matches(204) && m.matches(301) && m.matches(503) && !m.matches(404));
        for (bad, want) in [
            ("", "\"\" in matcher \"\" is not a status code"),
            ("abc", "\"abc\" in matcher"),
            ("200,", "\"\" in matcher \"200,\""),
            ("200-", "\"\" in matcher \"200-\""),
            (
                "299-200",
                "range \"299-200\" in matcher \"299-200\" is empty",
            ),
            ("199", "199 in matcher \"199\" is outside 200-599"),
            ("600", "600 in matcher"),
            ("200-300-400", "\"300-400\" in matcher"),
        ] {
            let e = Matcher::parse(bad).unwrap_err();
            assert!(e.starts_with(want), "{bad}: {e}");
        }
    }

    #[test]
    fn spellings_are_aws() {
        let states = [
            (State::Initial, "initial"),
            (State::Healthy, "healthy"),
            (State::Unhealthy, "unhealthy"),
            (State::Draining, "draining"),
            (State::Unused, "unused"),
        ];
        for (s, text) in states {
            assert_eq!(s.to_string(), text);
        }
        let reasons = [
            (Reason::InitialHealthChecking, "Elb.InitialHealthChecking"),
            (Reason::ResponseCodeMismatch, "Target.ResponseCodeMismatch"),
            (Reason::Timeout, "Target.Timeout"),
            (Reason::FailedHealthChecks, "Target.FailedHealthChecks"),
            (
                Reason::DeregistrationInProgress,
                "Target.DeregistrationInProgress",
            ),
            (Reason::NotRegistered, "Target.NotRegistered"),
        ];
        for (r, text) in reasons {
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn new_target_is_healthy_after_one_success() {
        let mut h = Health::new();
        assert_eq!(
            (h.state, h.reason),
            (State::Initial, Some(Reason::InitialHealthChecking))
        );
        assert_eq!(
            h.observe(&Ok(()), T),
            Some(Transition {
                from: State::Initial,
                to: State::Healthy,
                reason: None
            })
        );
        assert_eq!(h.observe(&Ok(()), T), None);
    }

    #[test]
    fn new_target_is_unhealthy_after_unhealthy_threshold_failures() {
        let mut h = Health::new();
        assert_eq!(h.observe(&timeout(), T), None);
        assert_eq!(h.state, State::Initial);
        assert_eq!(
            h.observe(&timeout(), T),
            Some(Transition {
                from: State::Initial,
                to: State::Unhealthy,
                reason: Some(Reason::Timeout)
            })
        );
    }

    #[test]
    fn healthy_goes_unhealthy_after_consecutive_failures_only() {
        let mut h = Health::new();
        h.observe(&Ok(()), T);
        // Failures interrupted by a success do not add up.
        for _ in 0..5 {
            assert_eq!(h.observe(&mismatch(), T), None);
            assert_eq!(h.observe(&Ok(()), T), None);
        }
        assert_eq!(h.observe(&mismatch(), T), None);
        assert_eq!(h.state, State::Healthy);
        let t = h.observe(&mismatch(), T).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                State::Healthy,
                State::Unhealthy,
                Some(Reason::ResponseCodeMismatch)
            )
        );
        assert_eq!(
            h.description.as_deref(),
            Some("status 503 does not match \"200\"")
        );
        // Still failing: no new transition, but the reason follows the latest failure.
        assert_eq!(h.observe(&timeout(), T), None);
        assert_eq!(h.reason, Some(Reason::Timeout));
    }

    #[test]
    fn unhealthy_goes_healthy_after_consecutive_successes_only() {
        let mut h = Health::new();
        h.observe(&timeout(), T);
        h.observe(&timeout(), T);
        assert_eq!(h.state, State::Unhealthy);
        for _ in 0..5 {
            assert_eq!(h.observe(&Ok(()), T), None);
            assert_eq!(h.observe(&Ok(()), T), None);
            assert_eq!(h.observe(&timeout(), T), None);
        }
        assert_eq!(h.observe(&Ok(()), T), None);
        assert_eq!(h.observe(&Ok(()), T), None);
        assert_eq!(
            h.observe(&Ok(()), T),
            Some(Transition {
                from: State::Unhealthy,
                to: State::Healthy,
                reason: None
            })
        );
        assert_eq!(h.description, None);
    }

    #[test]
    fn draining_targets_ignore_results() {
        let mut h = Health::new();
        let t = h.go(State::Draining, Some(Reason::DeregistrationInProgress));
        assert_eq!((t.from, t.to), (State::Initial, State::Draining));
        for _ in 0..3 {
            assert_eq!(h.observe(&timeout(), T), None);
            assert_eq!(h.observe(&Ok(()), T), None);
        }
        assert_eq!(h.state, State::Draining);
    }

    /// A config target, parsed so that new optional fields need no change here.
    fn target(last: u8) -> Target {
        toml::from_str(&format!("id = \"198.18.1.{last}\"")).unwrap()
    }

    #[test]
    fn routable_prefers_healthy_and_initial() {
        let states = [
            (target(1), State::Healthy),
            (target(2), State::Unhealthy),
            (target(3), State::Initial),
            (target(4), State::Draining),
            (target(5), State::Unused),
        ];
        assert_eq!(routable(&states), vec![target(1), target(3)]);
    }

    #[test]
    fn routable_fails_open_to_unhealthy_targets() {
        let states = [
            (target(1), State::Unhealthy),
            (target(2), State::Draining),
            (target(3), State::Unhealthy),
        ];
        assert_eq!(routable(&states), vec![target(1), target(3)]);
        assert_eq!(
            routable(&[(target(1), State::Draining)]),
            Vec::<Target>::new()
        );
        assert_eq!(routable::<Target>(&[]), Vec::<Target>::new());
    }
}
