//! Runs the health checks: one tokio task per (target group, target) probes on the group's
//! interval and feeds the results into that target's [`Health`]; every state change is sent as
//! an [`Event`] on the channel [`Checker::new`] returns, and [`Checker::snapshot`] lists them all.
//!
//! - **Schedule.** Probes run every `interval` from a fixed start (no jitter, no drift). The
//!   targets of a group start staggered, target `i` of `n` at `interval × i / n`, so a group's
//!   checks spread over the interval instead of arriving together.
//! - **Reload.** [`Checker::update`] takes the whole new target set. A target that stays keeps
//!   its state and counts (its task restarts only if its check changed); a new one is
//!   registered (`unused` → `initial`); a removed one drains (→ `draining`, unchecked) and
//!   becomes `unused` after its group's deregistration delay, when it is forgotten. Adding it
//!   back while it drains registers it anew.
//! - **Stale results.** Each task carries the generation of the registration it serves; a
//!   result from an aborted task that races a reload is dropped rather than applied.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::mpsc, task::AbortHandle, time::Instant};

use crate::{CheckPort, CheckSpec, Health, ProbeResult, Reason, State, Transition, probe::Prober};

/// A target group's checks, as the checker runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub check: CheckSpec,
    /// The registered targets by the address they get traffic on (duplicates are checked once).
    pub targets: Vec<SocketAddr>,
    /// How long a removed target stays `draining` (`deregistration_delay.timeout_seconds`).
    pub deregistration_delay: Duration,
}

/// A target's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub group: String,
    pub target: SocketAddr,
    pub from: State,
    pub to: State,
    /// The reason for `to` (none for `healthy`).
    pub reason: Option<Reason>,
}

impl Event {
    /// Logs the change, for operators.
    pub fn log(&self) {
        tracing::info!(
            target_group = %self.group, target = %self.target,
            from = %self.from, to = %self.to,
            reason = self.reason.map(|r| r.to_string()).unwrap_or_default(),
            "target health changed"
        );
    }
}

/// One target in [`Checker::snapshot`] (ELB's `TargetHealthDescription`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub group: String,
    /// Where the target gets traffic.
    pub target: SocketAddr,
    /// The port checked.
    pub port: u16,
    pub health: Health,
}

/// (target group, target traffic address): the same address may serve several ports.
type Key = (String, SocketAddr);

/// What the tasks share with the [`Checker`].
struct Shared {
    targets: Mutex<BTreeMap<Key, Entry>>,
    events: mpsc::UnboundedSender<Event>,
}

struct Entry {
    health: Health,
    /// The port checked.
    port: u16,
    /// Which registration the running task serves; results from other tasks are stale.
    generation: u64,
    deregistration_delay: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Entry>> {
        // The map is consistent after every statement that changes it, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `t` for `key`; a closed channel means nobody listens, which is not an error here.
    fn send(&self, key: &Key, t: Transition) {
        let _ = self.events.send(Event {
            group: key.0.clone(),
            target: key.1,
            from: t.from,
            to: t.to,
            reason: t.reason,
        });
    }

    /// Applies a probe result; false when `generation` is no longer registered (stop probing).
    fn observe(&self, key: &Key, generation: u64, result: &ProbeResult, check: &CheckSpec) -> bool {
        let mut targets = self.lock();
        let Some(entry) = targets.get_mut(key).filter(|e| e.generation == generation) else {
            return false;
        };
        if let Some(t) = entry.health.observe(result, check.thresholds) {
            self.send(key, t);
        }
        true
    }

    /// Ends draining: the target becomes `unused` and is forgotten.
    fn forget(&self, key: &Key, generation: u64) {
        let mut targets = self.lock();
        if targets.get(key).is_some_and(|e| e.generation == generation)
            && let Some(mut entry) = targets.remove(key)
        {
            let t = entry.health.go(State::Unused, Some(Reason::NotRegistered));
            self.send(key, t);
        }
    }
}

/// The health checker. Create it inside a tokio runtime; dropping it stops every check.
pub struct Checker {
    prober: Prober,
    shared: Arc<Shared>,
    /// The check each registered target runs.
    checks: BTreeMap<Key, CheckSpec>,
    /// Probe loops of registered targets and drain timers of draining ones.
    tasks: BTreeMap<Key, AbortHandle>,
    next_generation: u64,
}

impl Drop for Checker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

impl Checker {
    /// A checker with no targets, and the receiving end of its events. Events queue without
    /// bound, but there are at most a few per target per interval.
    pub fn new() -> (Checker, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let checker = Checker {
            prober: Prober::new(),
            shared: Arc::new(Shared {
                targets: Mutex::new(BTreeMap::new()),
                events,
            }),
            checks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_generation: 0,
        };
        (checker, rx)
    }

    /// Makes `groups` the checked set: registers new targets, drains removed ones and keeps
    /// the state of those that stay (see the module doc). Intervals must be non-zero.
    pub fn update(&mut self, groups: &[GroupSpec]) {
        let mut wanted: BTreeMap<Key, (&GroupSpec, Duration)> = BTreeMap::new();
        for g in groups {
            let mut addrs = g.targets.clone();
            addrs.sort();
            addrs.dedup();
            let n = addrs.len() as u32;
            for (i, addr) in (0u32..).zip(addrs) {
                let first = g.check.interval * i / n;
                wanted.insert((g.name.clone(), addr), (g, first));
            }
        }
        let shared = self.shared.clone();
        let mut targets = shared.lock();
        for (key, entry) in targets.iter_mut() {
            if wanted.contains_key(key) || entry.health.state == State::Draining {
                continue;
            }
            let t = entry
                .health
                .go(State::Draining, Some(Reason::DeregistrationInProgress));
            self.shared.send(key, t);
            entry.generation = self.generation();
            self.checks.remove(key);
            let timer = tokio::spawn(drain(
                self.shared.clone(),
                key.clone(),
                entry.generation,
                entry.deregistration_delay,
            ));
            self.replace_task(key, timer.abort_handle());
        }
        for (key, (group, first)) in wanted {
            let generation = self.generation();
            let port = probed(&group.check, key.1).port();
            let entry = targets.entry(key.clone()).or_insert_with(|| Entry {
                health: Health::new(),
                port,
                generation,
                deregistration_delay: group.deregistration_delay,
            });
            entry.deregistration_delay = group.deregistration_delay;
            if entry.generation == generation {
                // New: unused → initial.
                self.shared.send(
                    &key,
                    Transition {
                        from: State::Unused,
                        to: State::Initial,
                        reason: Some(Reason::InitialHealthChecking),
                    },
                );
            } else if entry.health.state == State::Draining {
                let t = entry
                    .health
                    .go(State::Initial, Some(Reason::InitialHealthChecking));
                self.shared.send(&key, t);
            } else if self.checks.get(&key) == Some(&group.check) {
                // Unchanged: the running task goes on.
                continue;
            }
            entry.generation = generation;
            entry.port = port;
            let task = tokio::spawn(probe_loop(
                self.shared.clone(),
                self.prober.clone(),
                key.clone(),
                group.check.clone(),
                generation,
                first,
            ));
            self.replace_task(&key, task.abort_handle());
            self.checks.insert(key, group.check.clone());
        }
        // Drain timers that fired have forgotten their targets.
        self.tasks.retain(|key, _| targets.contains_key(key));
    }

    /// Every registered and draining target, ordered by group and address.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        self.view().snapshot()
    }

    /// A read-only view of the targets' states, for another task (the control API).
    pub fn view(&self) -> View {
        View(self.shared.clone())
    }

    /// The states of `group`'s targets, as [`routable`](crate::routable) takes them.
    pub fn states(&self, group: &str) -> Vec<(SocketAddr, State)> {
        self.shared
            .lock()
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, addr), e)| (*addr, e.health.state))
            .collect()
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn replace_task(&mut self, key: &Key, task: AbortHandle) {
        if let Some(old) = self.tasks.insert(key.clone(), task) {
            old.abort();
        }
    }
}

/// What a checker's targets look like now; cheap to clone, and stays valid as the checker runs.
#[derive(Clone)]
pub struct View(Arc<Shared>);

impl View {
    /// Every registered and draining target, ordered by group and address.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        self.0
            .lock()
            .iter()
            .map(|((group, target), e)| TargetStatus {
                group: group.clone(),
                target: *target,
                port: e.port,
                health: e.health.clone(),
            })
            .collect()
    }
}

/// The address a check of `target` goes to: its traffic port, or the check's own port.
fn probed(check: &CheckSpec, target: SocketAddr) -> SocketAddr {
    match check.port {
        CheckPort::TrafficPort => target,
        CheckPort::Port(p) => SocketAddr::new(target.ip(), p),
    }
}

/// Probes `key` every `check.interval`, the first time after `first`, until its registration
/// (`generation`) ends.
async fn probe_loop(
    shared: Arc<Shared>,
    prober: Prober,
    key: Key,
    check: CheckSpec,
    generation: u64,
    first: Duration,
) {
    let addr = probed(&check, key.1);
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let result = prober.probe(&check.kind, addr, check.timeout).await;
        if !shared.observe(&key, generation, &result, &check) {
            return;
        }
        // A probe outlasting the interval (timeout ≥ interval) delays the next, never bunches.
        next = (next + check.interval).max(Instant::now());
    }
}

/// Ends `key`'s draining after `delay`, unless it was registered again meanwhile.
async fn drain(shared: Arc<Shared>, key: Key, generation: u64, delay: Duration) {
    tokio::time::sleep(delay).await;
    shared.forget(&key, generation);
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::atomic::Ordering, time::Instant as StdInstant};

    use tokio::net::TcpListener;

    use super::*;
    use crate::{
        Matcher, Thresholds,
        probe::{ProbeKind, testing::HttpServer},
    };

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    /// Another loopback address, so two targets of one group can share a port.
    const LOCAL2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const LOCAL3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
    /// Bounds every wait for an event.
    const WAIT: Duration = Duration::from_secs(3);

    fn spec(
        kind: ProbeKind,
        port: u16,
        interval_ms: u64,
        healthy: u32,
        unhealthy: u32,
    ) -> CheckSpec {
        CheckSpec {
            kind,
            port: CheckPort::Port(port),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms / 2),
            thresholds: Thresholds { healthy, unhealthy },
        }
    }

    fn group(check: CheckSpec, targets: &[IpAddr]) -> GroupSpec {
        GroupSpec {
            name: "web".into(),
            check,
            targets: targets.iter().map(|ip| traffic(*ip)).collect(),
            deregistration_delay: Duration::from_millis(300),
        }
    }

    /// A target's traffic address; the checks here name their own port.
    fn traffic(ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, 1)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an event within the wait")
            .expect("the checker is alive")
    }

    fn ev(target: IpAddr, from: State, to: State, reason: Option<Reason>) -> Event {
        Event {
            group: "web".into(),
            target: traffic(target),
            from,
            to,
            reason,
        }
    }

    fn state_of(c: &Checker, target: IpAddr) -> Option<State> {
        c.states("web")
            .into_iter()
            .find(|(addr, _)| addr.ip() == target)
            .map(|(_, s)| s)
    }

    #[tokio::test]
    async fn registers_then_reports_healthy() {
        let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(spec(ProbeKind::Tcp, port, 100, 2, 2), &[LOCAL])]);
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Unused,
                State::Initial,
                Some(Reason::InitialHealthChecking)
            )
        );
        assert_eq!(
            next(&mut rx).await,
            ev(LOCAL, State::Initial, State::Healthy, None)
        );
        let snap = c.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (
                snap[0].group.as_str(),
                snap[0].target,
                snap[0].port,
                snap[0].health.state
            ),
            ("web", traffic(LOCAL), port, State::Healthy)
        );
    }

    /// Detection time is interval × threshold: with 200 ms and 2, a target that dies is
    /// unhealthy 200–400 ms later (the first failing probe comes 0–200 ms after the death).
    #[tokio::test]
    async fn detects_death_and_recovery_within_interval_times_threshold() {
        let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(spec(ProbeKind::Tcp, port, 200, 2, 2), &[LOCAL])]);
        next(&mut rx).await;
        assert_eq!(next(&mut rx).await.to, State::Healthy);

        drop(l);
        let died = StdInstant::now();
        let e = next(&mut rx).await;
        let took = died.elapsed();
        assert_eq!(
            e,
            ev(
                LOCAL,
                State::Healthy,
                State::Unhealthy,
                Some(Reason::FailedHealthChecks)
            )
        );
        assert!(
            took >= Duration::from_millis(200) && took <= Duration::from_millis(600),
            "detected after {took:?}"
        );
        let h = &c.snapshot()[0].health;
        assert!(
            h.description
                .as_deref()
                .unwrap_or("")
                .starts_with("connect to 127.0.0.1:"),
            "{h:?}"
        );

        let _l = TcpListener::bind((LOCAL, port)).await.unwrap();
        let back = StdInstant::now();
        assert_eq!(
            next(&mut rx).await,
            ev(LOCAL, State::Unhealthy, State::Healthy, None)
        );
        let took = back.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took <= Duration::from_millis(600),
            "recovered after {took:?}"
        );
    }

    #[tokio::test]
    async fn http_checks_report_the_reason() {
        let s = HttpServer::start(200, false).await;
        let kind = ProbeKind::Http {
            path: "/".into(),
            matcher: Matcher::default(),
        };
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(spec(kind, s.addr.port(), 100, 2, 2), &[LOCAL])]);
        next(&mut rx).await;
        assert_eq!(next(&mut rx).await.to, State::Healthy);
        s.status.store(500, Ordering::Relaxed);
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Healthy,
                State::Unhealthy,
                Some(Reason::ResponseCodeMismatch)
            )
        );
        s.status.store(0, Ordering::Relaxed);
        // Still unhealthy, so no event; the reason follows the latest failure.
        let deadline = StdInstant::now() + WAIT;
        while c.snapshot()[0].health.reason != Some(Reason::Timeout) {
            assert!(StdInstant::now() < deadline, "{:?}", c.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn reload_keeps_states_and_drains_removed_targets() {
        let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        // LOCAL listens; LOCAL2 and LOCAL3 refuse.
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(
            spec(ProbeKind::Tcp, port, 100, 2, 2),
            &[LOCAL, LOCAL2],
        )]);
        let mut settled = 0;
        while settled < 2 {
            let e = next(&mut rx).await;
            settled += usize::from(matches!(e.to, State::Healthy | State::Unhealthy));
        }
        assert_eq!(state_of(&c, LOCAL), Some(State::Healthy));
        assert_eq!(state_of(&c, LOCAL2), Some(State::Unhealthy));

        // A new target and a changed interval: only the new target moves.
        c.update(&[group(
            spec(ProbeKind::Tcp, port, 150, 2, 2),
            &[LOCAL, LOCAL2, LOCAL3],
        )]);
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL3,
                State::Unused,
                State::Initial,
                Some(Reason::InitialHealthChecking)
            )
        );
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL3,
                State::Initial,
                State::Unhealthy,
                Some(Reason::FailedHealthChecks)
            )
        );
        assert_eq!(state_of(&c, LOCAL), Some(State::Healthy));
        assert_eq!(state_of(&c, LOCAL2), Some(State::Unhealthy));
        assert!(rx.try_recv().is_err());

        // Removing LOCAL: it drains, then is forgotten after the deregistration delay.
        let check = spec(ProbeKind::Tcp, port, 150, 2, 2);
        c.update(&[group(check.clone(), &[LOCAL2, LOCAL3])]);
        let removed = StdInstant::now();
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Healthy,
                State::Draining,
                Some(Reason::DeregistrationInProgress)
            )
        );
        assert_eq!(state_of(&c, LOCAL), Some(State::Draining));
        // All that remain are unhealthy: fail open to them, never to the draining one.
        assert_eq!(
            crate::routable(&c.states("web")),
            vec![traffic(LOCAL2), traffic(LOCAL3)]
        );
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Draining,
                State::Unused,
                Some(Reason::NotRegistered)
            )
        );
        assert!(removed.elapsed() >= Duration::from_millis(300));
        assert_eq!(state_of(&c, LOCAL), None);

        // Registered again: a new target, checked from scratch.
        c.update(&[group(check, &[LOCAL, LOCAL2, LOCAL3])]);
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Unused,
                State::Initial,
                Some(Reason::InitialHealthChecking)
            )
        );
        assert_eq!(
            next(&mut rx).await,
            ev(LOCAL, State::Initial, State::Healthy, None)
        );
    }

    #[tokio::test]
    async fn a_draining_target_added_back_is_registered_anew() {
        let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let check = spec(ProbeKind::Tcp, port, 100, 2, 2);
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(check.clone(), &[LOCAL])]);
        next(&mut rx).await;
        next(&mut rx).await;
        c.update(&[]);
        assert_eq!(next(&mut rx).await.to, State::Draining);
        c.update(&[group(check, &[LOCAL])]);
        assert_eq!(
            next(&mut rx).await,
            ev(
                LOCAL,
                State::Draining,
                State::Initial,
                Some(Reason::InitialHealthChecking)
            )
        );
        assert_eq!(
            next(&mut rx).await,
            ev(LOCAL, State::Initial, State::Healthy, None)
        );
        // The old drain timer was cancelled: no `unused` after the delay.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(state_of(&c, LOCAL), Some(State::Healthy));
    }

    #[tokio::test]
    async fn targets_of_a_group_start_staggered() {
        let l1 = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l1.local_addr().unwrap().port();
        let _l2 = TcpListener::bind((LOCAL2, port)).await.unwrap();
        let (mut c, mut rx) = Checker::new();
        let start = StdInstant::now();
        c.update(&[group(
            spec(ProbeKind::Tcp, port, 400, 2, 2),
            &[LOCAL2, LOCAL],
        )]);
        let mut healthy = Vec::new();
        while healthy.len() < 2 {
            let e = next(&mut rx).await;
            if e.to == State::Healthy {
                healthy.push((e.target.ip(), start.elapsed()));
            }
        }
        // Sorted by address: LOCAL first, at once; LOCAL2 half an interval later.
        assert_eq!(healthy[0].0, LOCAL);
        assert!(healthy[0].1 < Duration::from_millis(150), "{healthy:?}");
        assert_eq!(healthy[1].0, LOCAL2);
        assert!(healthy[1].1 >= Duration::from_millis(200), "{healthy:?}");
        assert!(healthy[1].1 < Duration::from_millis(350), "{healthy:?}");
    }

    #[tokio::test]
    async fn dropping_the_checker_stops_the_checks() {
        let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (mut c, mut rx) = Checker::new();
        c.update(&[group(spec(ProbeKind::Tcp, port, 50, 2, 2), &[LOCAL])]);
        next(&mut rx).await;
        drop(c);
        // Every sender is gone once the aborted task is dropped.
        let rest = tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} }).await;
        assert!(rest.is_ok(), "the channel stayed open");
    }
}
