//! Choosing where a forwarded request goes: the target group of a weighted forward, then a target
//! in the group by the group's algorithm (`round_robin`, `least_outstanding_requests` or
//! `weighted_random`, without ALB's anomaly mitigation), unless a
//! stickiness cookie names one. What is known of a target lives in [`Counters`], which outlives
//! config reloads, so a target that stays in a group keeps its count (pingora#269's lesson), its
//! health and its slow start.
//!
//! - **Health.** The L7 tier's health checker reports state changes through [`Counters::observe`],
//!   which flips one atomic per target: routes are never rebuilt for a change of health. Targets
//!   that are unhealthy get no new requests, sticky ones included; when no target of a group is
//!   healthy, the group fails open to all of them, as ALB does.
//! - **Slow start** (`slow_start.duration_seconds`, round robin only): a target that enters
//!   service (added to a group that already existed, or healthy again after being unhealthy)
//!   takes a share of requests that grows linearly with time, by a weight that ramps from 0 to
//!   full. Targets of a new group start at full weight, as ALB's first registration does.
//! - **Stickiness cookies** (`AWSALB` for targets, `AWSALBAPP-0` for `app_cookie` stickiness,
//!   `AWSALBTG` for groups) hold a keyed hash of the group and target, not the address: clients
//!   cannot read or forge a destination, and the key is random per process, as ALB rotates its
//!   key. `AWSALBAPP-0` also holds when its stickiness ends, signed with the same key, since the
//!   cookie itself lives ALB's fixed 7 days.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_config::{Protocol, ProtocolVersion, TargetGroup, attribute::seconds};
use lb_health::{State, checker::Event};

/// `AWSALB`: which target of a group a client sticks to (`lb_cookie` stickiness).
pub const TARGET_COOKIE: &str = "AWSALB";
/// `AWSALBAPP-0`: which target a client sticks to (`app_cookie` stickiness), and until when.
/// ALB splits long values over `AWSALBAPP-0..3`; ours always fit in the first.
pub const APP_COOKIE: &str = "AWSALBAPP-0";
/// ALB's fixed expiry of `AWSALBAPP` cookies: the stickiness duration is kept in the value.
const APP_COOKIE_EXPIRY: Duration = Duration::from_secs(7 * 86_400);
/// `AWSALBTG`: which group of a weighted forward a client sticks to.
pub const GROUP_COOKIE: &str = "AWSALBTG";

/// A target in full service has this weight; one in slow start ramps up to it.
const FULL_WEIGHT: u64 = 1000;
/// 2^64 / φ: the step of the Weyl sequence that spreads weighted picks (see [`Group::weighted`]).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// What is known of one target of one group, across reloads.
#[derive(Debug, Default)]
pub struct TargetState {
    outstanding: AtomicUsize,
    /// Set by health checks: unhealthy targets get no new requests (unless the group fails open).
    unhealthy: AtomicBool,
    /// When the target last entered service, as milliseconds since [`Counters`]' epoch plus
    /// one; 0: in full service.
    entered_ms: AtomicU64,
}

/// What survives reloads: every target's [`TargetState`], and the cookie key.
#[derive(Debug)]
pub struct Counters {
    targets: Mutex<HashMap<(String, SocketAddr), Arc<TargetState>>>,
    key: RandomState,
    /// The origin of [`TargetState::entered_ms`].
    epoch: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            targets: Mutex::default(),
            key: RandomState::new(),
            epoch: Instant::now(),
        }
    }
}

impl Counters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, SocketAddr), Arc<TargetState>>> {
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether some target of `group` is known, i.e. the group existed before this config.
    fn knows(&self, group: &str) -> bool {
        self.lock().keys().any(|(g, _)| g == group)
    }

    /// The state of `addr` in `group`; a target seen for the first time enters service at
    /// `now` if `entering`.
    fn target(
        &self,
        group: &str,
        addr: SocketAddr,
        entering: bool,
        now: Instant,
    ) -> Arc<TargetState> {
        self.lock()
            .entry((group.to_owned(), addr))
            .or_insert_with(|| {
                let state = TargetState::default();
                if entering {
                    state.entered_ms.store(self.millis(now), Ordering::Relaxed);
                }
                Arc::new(state)
            })
            .clone()
    }

    /// Forgets targets no config uses any more.
    fn retain(&self, live: &[(String, SocketAddr)]) {
        self.lock().retain(|k, _| live.contains(k));
    }

    /// Milliseconds from the epoch to `t`, plus one (0 means "not entered").
    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// Takes a health change into account at `now`: an unhealthy target stops taking requests;
    /// one that is healthy again enters service (and slow start). Targets no group has are
    /// ignored (they left with a reload and drain in the checker).
    pub fn observe(&self, event: &Event, now: Instant) {
        let Some(t) = self
            .lock()
            .get(&(event.group.clone(), event.target))
            .cloned()
        else {
            return;
        };
        t.unhealthy
            .store(event.to == State::Unhealthy, Ordering::Relaxed);
        if event.from == State::Unhealthy && event.to == State::Healthy {
            t.entered_ms.store(self.millis(now), Ordering::Relaxed);
        }
    }

    /// The cookie value that names `what`.
    pub fn cookie_value(&self, what: &str) -> String {
        format!("{:016x}", self.key.hash_one(what))
    }
}

/// How a group picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastOutstandingRequests,
    /// Each request to a target drawn at random, by weight (slow start's, else equal).
    WeightedRandom,
}

/// How a group keeps a client on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// `lb_cookie`: the load balancer's `AWSALB` cookie, issued on every response.
    LbCookie { duration: Duration },
    /// `app_cookie`: `AWSALBAPP-0`, issued when the target's response sets `cookie_name`.
    AppCookie {
        cookie_name: String,
        duration: Duration,
    },
}

impl Stickiness {
    /// The load balancer's cookie that names the target.
    pub fn cookie(&self) -> &'static str {
        match self {
            Stickiness::LbCookie { .. } => TARGET_COOKIE,
            Stickiness::AppCookie { .. } => APP_COOKIE,
        }
    }
}

/// A stickiness cookie to set on a response.
#[derive(Debug, PartialEq, Eq)]
pub struct SetCookie {
    pub name: &'static str,
    pub value: String,
    /// When the client drops it.
    pub expires: Duration,
}

/// A target and what is known of it.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    state: Arc<TargetState>,
    /// The stickiness cookie value that names this target.
    cookie: String,
}

/// Counts a request against its target until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target group, compiled.
#[derive(Debug)]
pub struct Group {
    pub name: Arc<str>,
    /// How xlb talks to the targets: clear or TLS, HTTP/1.1 or HTTP/2.
    pub protocol: (Protocol, ProtocolVersion),
    targets: Vec<Target>,
    algorithm: Algorithm,
    next: AtomicUsize,
    pub stickiness: Option<Stickiness>,
    /// `slow_start.duration_seconds`, when on.
    slow_start: Option<Duration>,
    /// [`Counters`]' epoch, to read [`TargetState::entered_ms`] and `AWSALBAPP` expiries.
    epoch: Instant,
    /// [`Counters`]' key, to sign `AWSALBAPP` values.
    key: RandomState,
    /// The `AWSALBTG` value that names this group.
    pub cookie: String,
}

/// The target a request goes to.
#[derive(Debug)]
pub struct Pick<'a> {
    pub target: &'a Target,
    /// Whether it came from the client's cookie.
    pub sticky: bool,
    pub in_flight: InFlight,
}

impl Target {
    /// The stickiness cookie value for this target.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    fn healthy(&self) -> bool {
        !self.state.unhealthy.load(Ordering::Relaxed)
    }

    /// The slow start weight at `now`: from near 0 when the target entered service up to
    /// [`FULL_WEIGHT`] after `ramp`, linearly.
    fn weight(&self, now: Instant, epoch: Instant, ramp: Duration) -> u64 {
        let entered = self.state.entered_ms.load(Ordering::Relaxed);
        if entered == 0 {
            return FULL_WEIGHT;
        }
        let entered = epoch + Duration::from_millis(entered - 1);
        let since = now.saturating_duration_since(entered);
        if since >= ramp {
            return FULL_WEIGHT;
        }
        let share = FULL_WEIGHT as u128 * since.as_millis() / ramp.as_millis().max(1);
        // Never 0, so that a lone target in slow start still gets every request.
        u64::try_from(share).unwrap_or(FULL_WEIGHT).max(1)
    }
}

impl Group {
    /// Compiles a validated group at `now`, reusing `counters`.
    pub fn new(tg: &TargetGroup, counters: &Counters, now: Instant) -> Group {
        let attr = |k: &str| tg.attributes.get(k).map(String::as_str);
        let algorithm = match attr("load_balancing.algorithm.type") {
            Some("least_outstanding_requests") => Algorithm::LeastOutstandingRequests,
            Some("weighted_random") => Algorithm::WeightedRandom,
            _ => Algorithm::RoundRobin,
        };
        let duration = |key: &str| {
            let s = attr(key)
                .and_then(|v| seconds(v, 1, 604_800).ok())
                .unwrap_or(86_400);
            Duration::from_secs(s)
        };
        let stickiness = (attr("stickiness.enabled") == Some("true")).then(|| {
            match (
                attr("stickiness.type"),
                attr("stickiness.app_cookie.cookie_name"),
            ) {
                (Some("app_cookie"), Some(name)) => Stickiness::AppCookie {
                    cookie_name: name.to_owned(),
                    duration: duration("stickiness.app_cookie.duration_seconds"),
                },
                _ => Stickiness::LbCookie {
                    duration: duration("stickiness.lb_cookie.duration_seconds"),
                },
            }
        });
        // The range (30..=900) is the config's to check; tests ramp faster.
        let slow_start = attr("slow_start.duration_seconds")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        // Targets of a group seen before enter service when they appear; a new group's don't.
        let existed = counters.knows(&tg.name);
        let targets = tg
            .targets
            .iter()
            .map(|t| {
                let addr = tg.addr(t);
                Target {
                    addr,
                    state: counters.target(&tg.name, addr, existed, now),
                    cookie: counters.cookie_value(&format!("{}/{addr}", tg.name)),
                }
            })
            .collect();
        Group {
            name: tg.name.as_str().into(),
            protocol: (tg.protocol, tg.protocol_version()),
            targets,
            algorithm,
            next: AtomicUsize::new(0),
            stickiness,
            slow_start,
            epoch: counters.epoch,
            key: counters.key.clone(),
            cookie: counters.cookie_value(&tg.name),
        }
    }

    /// Picks a target at `now`: the one `sticky` names if stickiness is on and it is still here
    /// and healthy, else by the algorithm. `None` when the group has no target.
    pub fn pick(&self, sticky: Option<&str>, now: Instant) -> Option<Pick<'_>> {
        let healthy = self.targets.iter().filter(|t| t.healthy()).count();
        // Fail open, as ALB: when no target is healthy, every target takes requests.
        let all = healthy == 0 || healthy == self.targets.len();
        let serving = |t: &&Target| all || t.healthy();
        let n = if all { self.targets.len() } else { healthy };
        let from_cookie = sticky
            .and_then(|c| self.sticky_target(c, now))
            .filter(serving);
        let (target, sticky) = match from_cookie {
            Some(t) => (t, true),
            None => (self.balance(serving, n, now)?, false),
        };
        target.state.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            target,
            sticky,
            in_flight: InFlight(target.state.clone()),
        })
    }

    /// The stickiness cookie that keeps a client on `target`, issued at `now`: `AWSALB` names
    /// the target; `AWSALBAPP-0` also holds when the stickiness ends, signed with the key.
    pub fn sticky_cookie(&self, target: &Target, now: Instant) -> Option<SetCookie> {
        Some(match self.stickiness.as_ref()? {
            Stickiness::LbCookie { duration } => SetCookie {
                name: TARGET_COOKIE,
                value: target.cookie.clone(),
                expires: *duration,
            },
            Stickiness::AppCookie { duration, .. } => {
                let until = (now + *duration).duration_since(self.epoch).as_secs();
                SetCookie {
                    name: APP_COOKIE,
                    value: format!(
                        "{}.{until:x}.{}",
                        target.cookie,
                        self.sign(&target.cookie, until)
                    ),
                    expires: APP_COOKIE_EXPIRY,
                }
            }
        })
    }

    fn sign(&self, target: &str, until: u64) -> String {
        format!("{:016x}", self.key.hash_one((target, until)))
    }

    /// The target a stickiness cookie's value names, if the value is genuine and, for
    /// `AWSALBAPP-0`, its stickiness has not ended at `now`.
    fn sticky_target(&self, value: &str, now: Instant) -> Option<&Target> {
        let named = match self.stickiness.as_ref()? {
            Stickiness::LbCookie { .. } => value,
            Stickiness::AppCookie { .. } => {
                let mut parts = value.split('.');
                let (named, until, signature) = (parts.next()?, parts.next()?, parts.next()?);
                let until = u64::from_str_radix(until, 16).ok()?;
                let live = now.saturating_duration_since(self.epoch).as_secs() < until;
                (live && self.sign(named, until) == signature).then_some(named)?
            }
        };
        self.targets.iter().find(|t| t.cookie == named)
    }

    /// Picks one of the `n` targets that are `serving` by the group's algorithm.
    fn balance(
        &self,
        serving: impl Fn(&&Target) -> bool,
        n: usize,
        now: Instant,
    ) -> Option<&Target> {
        let up = || self.targets.iter().filter(&serving);
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let start = turn % n;
        match (self.algorithm, self.slow_start) {
            (Algorithm::RoundRobin | Algorithm::WeightedRandom, Some(ramp))
                if up().any(|t| t.weight(now, self.epoch, ramp) < FULL_WEIGHT) =>
            {
                let weights = up().map(|t| (t, t.weight(now, self.epoch, ramp)));
                let point = match self.algorithm {
                    Algorithm::WeightedRandom => fastrand::u64(..),
                    _ => (turn as u64).wrapping_mul(GOLDEN),
                };
                Self::weighted(weights, point)
            }
            (Algorithm::RoundRobin, _) => up().nth(start),
            (Algorithm::WeightedRandom, _) => up().nth(fastrand::usize(..n)),
            // Ties go round robin: the scan starts where round robin would pick.
            (Algorithm::LeastOutstandingRequests, _) => up()
                .skip(start)
                .chain(up().take(start))
                .min_by_key(|t| t.state.outstanding.load(Ordering::Relaxed)),
        }
    }

    /// The target whose stretch of the total weight holds `fraction` (of 2^64). Round robin's
    /// points `turn × φ mod 1` (a Weyl sequence) fall evenly over any run of turns, so each
    /// target's share follows its weight within a few dozen requests, with one atomic counter and
    /// no lock; weighted random's are random.
    fn weighted<'a>(
        weights: impl Iterator<Item = (&'a Target, u64)> + Clone,
        fraction: u64,
    ) -> Option<&'a Target> {
        let total: u64 = weights.clone().map(|(_, w)| w).sum();
        let point = u64::try_from((u128::from(fraction) * u128::from(total)) >> 64).ok()?;
        let mut upto = 0;
        weights
            .map(|(t, w)| {
                upto += w;
                (t, upto)
            })
            .find(|(_, upto)| point < *upto)
            .map(|(t, _)| t)
    }
}

/// Every group of a config, by name.
pub type Groups = HashMap<String, Arc<Group>>;

/// Compiles every group at `now`, and drops the state of targets that left.
pub fn compile(groups: &[TargetGroup], counters: &Counters, now: Instant) -> Groups {
    let out: Groups = groups
        .iter()
        .map(|tg| (tg.name.clone(), Arc::new(Group::new(tg, counters, now))))
        .collect();
    let live: Vec<(String, SocketAddr)> = out
        .values()
        .flat_map(|g| g.targets.iter().map(|t| (g.name.to_string(), t.addr)))
        .collect();
    counters.retain(&live);
    out
}

/// A weighted choice among groups (weighted round robin, so tests and small weights are exact).
#[derive(Debug)]
pub struct WeightedGroups {
    /// Each group with the running total of weights up to and including it.
    groups: Vec<(Arc<Group>, u32)>,
    total: u32,
    next: AtomicUsize,
    /// Group stickiness (`AWSALBTG`) and its duration.
    pub stickiness: Option<Duration>,
}

impl WeightedGroups {
    /// Groups with weights; those with weight 0 get nothing.
    pub fn new(groups: Vec<(Arc<Group>, u32)>, stickiness: Option<Duration>) -> WeightedGroups {
        let mut total = 0;
        let groups = groups
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(g, w)| {
                total += w;
                (g, total)
            })
            .collect();
        WeightedGroups {
            groups,
            total,
            next: AtomicUsize::new(0),
            stickiness,
        }
    }

    /// Whether there is more than one group to choose from.
    pub fn is_weighted(&self) -> bool {
        self.groups.len() > 1
    }

    /// The group `sticky` names if group stickiness is on, else the next by weight.
    pub fn pick(&self, sticky: Option<&str>) -> Option<&Arc<Group>> {
        if let Some(c) = self.stickiness.and(sticky)
            && let Some((g, _)) = self.groups.iter().find(|(g, _)| g.cookie == c)
        {
            return Some(g);
        }
        let total = usize::try_from(self.total).ok().filter(|t| *t > 0)?;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % total;
        self.groups
            .iter()
            .find(|(_, upto)| slot < *upto as usize)
            .map(|(g, _)| g)
    }
}

#[cfg(test)]
mod tests {
    use lb_config::Target;

    use super::*;

    fn group(name: &str, ports: &[u16], attrs: &[(&str, &str)]) -> TargetGroup {
        TargetGroup {
            name: name.into(),
            protocol: Protocol::Http,
            protocol_version: None,
            port: 80,
            targets: ports
                .iter()
                .map(|p| Target {
                    id: "127.0.0.1".parse().unwrap(),
                    weight: 1,
                    mac: None,
                    zone: None,
                    port: Some(*p),
                })
                .collect(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            health_check: None,
        }
    }

    #[test]
    fn round_robin_cycles() {
        let now = Instant::now();
        let c = Counters::default();
        let g = Group::new(&group("g", &[1, 2, 3], &[]), &c, now);
        let ports: Vec<u16> = (0..6)
            .map(|_| g.pick(None, now).unwrap().target.addr.port())
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        assert!(
            Group::new(&group("e", &[], &[]), &c, now)
                .pick(None, now)
                .is_none()
        );
    }

    #[test]
    fn weighted_random_draws_each_target_by_chance() {
        let now = Instant::now();
        let c = Counters::default();
        let tg = group(
            "g",
            &[1, 2, 3],
            &[("load_balancing.algorithm.type", "weighted_random")],
        );
        let g = Group::new(&tg, &c, now);
        let ports: Vec<u16> = (0..3000)
            .map(|_| g.pick(None, now).unwrap().target.addr.port())
            .collect();
        // About a third each (1000 ± 150 is over 5 standard deviations wide) ...
        for p in [1, 2, 3] {
            let n = ports.iter().filter(|&&q| q == p).count();
            assert!((850..1150).contains(&n), "target {p}: {n} of 3000");
        }
        // ... and not in turn: round robin would never pick one target twice in a row.
        assert!(ports.windows(2).any(|w| w[0] == w[1]));
    }

    #[test]
    fn least_outstanding_avoids_busy_targets() {
        let now = Instant::now();
        let c = Counters::default();
        let tg = group(
            "g",
            &[1, 2],
            &[(
                "load_balancing.algorithm.type",
                "least_outstanding_requests",
            )],
        );
        let g = Group::new(&tg, &c, now);
        let busy = g.pick(None, now).unwrap();
        assert_eq!(busy.target.addr.port(), 1);
        for _ in 0..4 {
            assert_eq!(g.pick(None, now).unwrap().target.addr.port(), 2);
        }
        // A reload keeps the count of a target that stays.
        let again = Group::new(&tg, &c, now);
        assert_eq!(again.pick(None, now).unwrap().target.addr.port(), 2);
        drop(busy);
        assert_eq!(
            again.targets[0].state.outstanding.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn stickiness_follows_the_cookie_only_when_enabled() {
        let now = Instant::now();
        let c = Counters::default();
        let on = Group::new(
            &group("g", &[1, 2, 3], &[("stickiness.enabled", "true")]),
            &c,
            now,
        );
        assert_eq!(
            on.stickiness,
            Some(Stickiness::LbCookie {
                duration: Duration::from_secs(86_400)
            })
        );
        let third = on.targets[2].cookie().to_owned();
        for _ in 0..3 {
            let p = on.pick(Some(&third), now).unwrap();
            assert!(p.sticky);
            assert_eq!(p.target.addr.port(), 3);
        }
        assert!(!on.pick(Some("bogus"), now).unwrap().sticky);
        let off = Group::new(&group("g", &[1, 2, 3], &[]), &c, now);
        assert!(!off.pick(Some(&third), now).unwrap().sticky);
    }

    #[test]
    fn weighted_groups_split_by_weight() {
        let c = Counters::default();
        let a = Arc::new(Group::new(&group("a", &[1], &[]), &c, Instant::now()));
        let b = Arc::new(Group::new(&group("b", &[2], &[]), &c, Instant::now()));
        let z = Arc::new(Group::new(&group("z", &[3], &[]), &c, Instant::now()));
        let w = WeightedGroups::new(vec![(a, 1), (b, 3), (z, 0)], None);
        let names: Vec<&str> = (0..8)
            .map(|_| w.pick(None).unwrap().name.as_ref())
            .collect();
        assert_eq!(names.iter().filter(|n| **n == "a").count(), 2);
        assert_eq!(names.iter().filter(|n| **n == "b").count(), 6);
        let sticky = WeightedGroups::new(
            w.groups.iter().map(|(g, _)| (g.clone(), 1)).collect(),
            Some(Duration::from_secs(1)),
        );
        let b_cookie = sticky.groups[1].0.cookie.clone();
        for _ in 0..4 {
            assert_eq!(sticky.pick(Some(&b_cookie)).unwrap().name.as_ref(), "b");
        }
    }

    fn event(group: &str, port: u16, from: State, to: State) -> Event {
        Event {
            group: group.into(),
            target: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
            from,
            to,
            reason: None,
        }
    }

    /// How many of `n` picks at `now` go to each port.
    fn shares(g: &Group, n: usize, now: Instant) -> HashMap<u16, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let p = g.pick(None, now).unwrap();
            *out.entry(p.target.addr.port()).or_default() += 1;
        }
        out
    }

    #[test]
    fn unhealthy_targets_get_nothing_until_all_are_unhealthy() {
        let c = Counters::default();
        let g = Group::new(&group("g", &[1, 2, 3], &[]), &c, Instant::now());
        let now = Instant::now();
        c.observe(&event("g", 2, State::Healthy, State::Unhealthy), now);
        assert_eq!(shares(&g, 6, now), HashMap::from([(1, 3), (3, 3)]));
        // Unknown targets (gone with a reload) change nothing.
        c.observe(&event("g", 9, State::Healthy, State::Unhealthy), now);
        c.observe(&event("other", 1, State::Healthy, State::Unhealthy), now);
        assert_eq!(shares(&g, 4, now), HashMap::from([(1, 2), (3, 2)]));
        // Every target unhealthy: fail open to all of them.
        c.observe(&event("g", 1, State::Healthy, State::Unhealthy), now);
        c.observe(&event("g", 3, State::Initial, State::Unhealthy), now);
        assert_eq!(shares(&g, 6, now), HashMap::from([(1, 2), (2, 2), (3, 2)]));
        // Back to healthy: only that one.
        c.observe(&event("g", 3, State::Unhealthy, State::Healthy), now);
        assert_eq!(shares(&g, 3, now), HashMap::from([(3, 3)]));
    }

    #[test]
    fn sticky_clients_leave_an_unhealthy_target() {
        let c = Counters::default();
        let g = Group::new(
            &group("g", &[1, 2], &[("stickiness.enabled", "true")]),
            &c,
            Instant::now(),
        );
        let second = g.targets[1].cookie().to_owned();
        let now = Instant::now();
        assert!(g.pick(Some(&second), now).unwrap().sticky);
        c.observe(&event("g", 2, State::Healthy, State::Unhealthy), now);
        let p = g.pick(Some(&second), now).unwrap();
        assert_eq!((p.sticky, p.target.addr.port()), (false, 1));
        // Failing open, the cookie holds again.
        c.observe(&event("g", 1, State::Healthy, State::Unhealthy), now);
        assert!(g.pick(Some(&second), now).unwrap().sticky);
    }

    #[test]
    fn slow_start_ramps_a_recovered_target_linearly() {
        let c = Counters::default();
        let tg = group("g", &[1, 2], &[("slow_start.duration_seconds", "100")]);
        let t0 = Instant::now();
        let g = Group::new(&tg, &c, t0);
        // The first targets of a new group start at full weight: plain round robin.
        assert_eq!(shares(&g, 10, t0), HashMap::from([(1, 5), (2, 5)]));
        c.observe(&event("g", 2, State::Healthy, State::Unhealthy), t0);
        c.observe(&event("g", 2, State::Unhealthy, State::Healthy), t0);
        // Port 2's weight is elapsed/100 of port 1's: its share is w / (1 + w).
        for (secs, low, high) in [(0, 0, 5), (25, 150, 250), (50, 290, 380), (100, 480, 520)] {
            let got = shares(&g, 1000, t0 + Duration::from_secs(secs));
            let second = got.get(&2).copied().unwrap_or(0);
            assert!(
                (low..=high).contains(&second),
                "at {secs}s: {second} of 1000 (want {low}..={high})"
            );
        }
    }

    #[test]
    fn slow_start_applies_to_targets_added_to_an_existing_group() {
        let c = Counters::default();
        let t0 = Instant::now();
        let attrs = [("slow_start.duration_seconds", "60")];
        compile(&[group("g", &[1], &attrs)], &c, t0);
        let t1 = t0 + Duration::from_secs(10);
        let groups = compile(&[group("g", &[1, 2], &attrs)], &c, t1);
        let g = &groups["g"];
        let early = shares(g, 600, t1 + Duration::from_secs(6));
        assert!(early[&2] < 100, "{early:?}");
        let late = shares(g, 600, t1 + Duration::from_secs(60));
        assert_eq!(late, HashMap::from([(1, 300), (2, 300)]));
        // Without slow start the newcomer takes its full share at once.
        let plain = compile(&[group("g", &[1, 2, 3], &[])], &c, t1);
        assert_eq!(
            shares(&plain["g"], 9, t1),
            HashMap::from([(1, 3), (2, 3), (3, 3)])
        );
    }

    #[test]
    fn app_cookie_stickiness_is_signed_and_ends_after_its_duration() {
        let c = Counters::default();
        let attrs = [
            ("stickiness.enabled", "true"),
            ("stickiness.type", "app_cookie"),
            ("stickiness.app_cookie.cookie_name", "SESSION"),
            ("stickiness.app_cookie.duration_seconds", "60"),
        ];
        let t0 = Instant::now();
        let g = Group::new(&group("g", &[1, 2], &attrs), &c, t0);
        let set = g.sticky_cookie(&g.targets[1], t0).unwrap();
        assert_eq!(
            (set.name, set.expires),
            (APP_COOKIE, Duration::from_secs(7 * 86_400))
        );
        for _ in 0..3 {
            let p = g
                .pick(Some(&set.value), t0 + Duration::from_secs(30))
                .unwrap();
            assert_eq!((p.sticky, p.target.addr.port()), (true, 2));
        }
        // Past the duration, or tampered with, the cookie names nobody.
        let late = t0 + Duration::from_secs(61);
        assert!(!g.pick(Some(&set.value), late).unwrap().sticky);
        let longer = set.value.replacen(".3c.", ".ffff.", 1);
        assert_ne!(longer, set.value);
        assert!(!g.pick(Some(&longer), t0).unwrap().sticky);
        // The plain target cookie (AWSALB's value) is not enough.
        assert!(!g.pick(Some(g.targets[1].cookie()), t0).unwrap().sticky);
    }
}
