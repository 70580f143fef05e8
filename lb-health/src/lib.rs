//! Active health checks with the semantics of AWS ELB target groups, independent of BPF: the
//! agent feeds the results into which targets go into the Maglev rings, and the L7 tier into
//! which targets of an HTTP target group take requests (each runs its own [`checker`]).
//!
//! - This file: the target states and reason codes with their AWS spellings ([`State`],
//!   [`Reason`]), what a check runs ([`CheckSpec`], from the config's [`HealthCheck`]), the pure
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

use std::{fmt, time::Duration};

pub use lb_config::{CheckPort, CheckProtocol, HealthCheck, Matcher};

use crate::probe::{ProbeError, ProbeKind};

/// What the checker needs to run a group's checks; built from a validated [`HealthCheck`] by
/// [`CheckSpec::new`], or directly (tests use sub-second intervals).
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

impl CheckSpec {
    /// What the checker runs for a validated `health_check` block.
    pub fn new(hc: &HealthCheck) -> CheckSpec {
        let path = hc.path.clone().unwrap_or_else(|| "/".to_owned());
        let matcher = hc.matcher.clone().unwrap_or_default();
        CheckSpec {
            kind: match hc.protocol() {
                CheckProtocol::Tcp => ProbeKind::Tcp,
                CheckProtocol::Http => ProbeKind::Http { path, matcher },
                CheckProtocol::Https => ProbeKind::Https { path, matcher },
            },
            port: hc.port,
            interval: Duration::from_secs(hc.interval_seconds.into()),
            timeout: Duration::from_secs(hc.timeout_seconds.into()),
            thresholds: Thresholds {
                healthy: hc.healthy_threshold,
                unhealthy: hc.unhealthy_threshold,
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
    use std::net::SocketAddr;

    use super::*;

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
    fn specs_follow_the_check() {
        let spec = CheckSpec::new(&HealthCheck::default());
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
        let http = CheckSpec::new(&HealthCheck {
            protocol: Some(CheckProtocol::Http),
            ..HealthCheck::default()
        });
        assert_eq!(
            http.kind,
            ProbeKind::Http {
                path: "/".into(),
                matcher: Matcher::default()
            }
        );
        let https = CheckSpec::new(&HealthCheck {
            protocol: Some(CheckProtocol::Https),
            path: Some("/healthz".into()),
            port: CheckPort::Port(8443),
            matcher: Some(Matcher::parse("200-299,301").unwrap()),
            ..HealthCheck::default()
        });
        assert_eq!(https.port, CheckPort::Port(8443));
        let ProbeKind::Https { path, matcher } = https.kind else {
            panic!("{:?}", https.kind)
        };
        assert_eq!(
            (path.as_str(), matcher.to_string()),
            ("/healthz", "200-299,301".into())
        );
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

    /// A target's address.
    fn target(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 1, last], 80))
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
            Vec::<SocketAddr>::new()
        );
        assert_eq!(routable::<SocketAddr>(&[]), Vec::<SocketAddr>::new());
    }
}
