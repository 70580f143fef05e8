//! Choosing where a forwarded request goes: the target group of a weighted forward, then a target
//! in the group by the group's algorithm (`round_robin` or `least_outstanding_requests`), unless a
//! stickiness cookie names one. Outstanding-request counters live in [`Counters`], which outlives
//! config reloads, so a target that stays in a group keeps its count (pingora#269's lesson).
//!
//! Stickiness cookies (`AWSALB` for targets, `AWSALBTG` for groups) hold a keyed hash of the
//! group and target, not the address: clients cannot read or forge a destination, and the key is
//! random per process, as ALB rotates its key.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::config::{HttpTargetGroup, ProtocolVersion, TargetProtocol, seconds};

/// `AWSALB`: which target of a group a client sticks to.
pub const TARGET_COOKIE: &str = "AWSALB";
/// `AWSALBTG`: which group of a weighted forward a client sticks to.
pub const GROUP_COOKIE: &str = "AWSALBTG";

/// What survives reloads: outstanding requests per target, and the cookie key.
#[derive(Debug, Default)]
pub struct Counters {
    outstanding: Mutex<HashMap<(String, SocketAddr), Arc<AtomicUsize>>>,
    key: RandomState,
}

impl Counters {
    fn counter(&self, group: &str, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut map = self
            .outstanding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((group.to_owned(), addr)).or_default().clone()
    }

    /// Forgets counters of targets no config uses any more.
    fn retain(&self, live: &[(String, SocketAddr)]) {
        let mut map = self
            .outstanding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|k, _| live.contains(k));
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
}

/// A target and its count of requests in flight.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    outstanding: Arc<AtomicUsize>,
    /// The `AWSALB` value that names this target.
    cookie: String,
}

/// Counts a request against its target until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target group, compiled.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    /// How xlb talks to the targets: clear or TLS, HTTP/1.1 or HTTP/2.
    pub protocol: (TargetProtocol, ProtocolVersion),
    targets: Vec<Target>,
    algorithm: Algorithm,
    next: AtomicUsize,
    /// `lb_cookie` stickiness and its duration.
    pub stickiness: Option<Duration>,
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
    /// The `AWSALB` cookie value for this target.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }
}

impl Group {
    /// Compiles a validated group, reusing `counters`.
    pub fn new(tg: &HttpTargetGroup, counters: &Counters) -> Group {
        let attr = |k: &str| tg.attributes.get(k).map(String::as_str);
        let algorithm = match attr("load_balancing.algorithm.type") {
            Some("least_outstanding_requests") => Algorithm::LeastOutstandingRequests,
            _ => Algorithm::RoundRobin,
        };
        let stickiness = (attr("stickiness.enabled") == Some("true")).then(|| {
            let s = attr("stickiness.lb_cookie.duration_seconds")
                .and_then(|v| seconds(v, 1, 604_800).ok())
                .unwrap_or(86_400);
            Duration::from_secs(s)
        });
        let targets = tg
            .targets
            .iter()
            .map(|t| {
                let addr = SocketAddr::new(t.id, t.port.unwrap_or(tg.port));
                Target {
                    addr,
                    outstanding: counters.counter(&tg.name, addr),
                    cookie: counters.cookie_value(&format!("{}/{addr}", tg.name)),
                }
            })
            .collect();
        Group {
            name: tg.name.clone(),
            protocol: (tg.protocol, tg.protocol_version),
            targets,
            algorithm,
            next: AtomicUsize::new(0),
            stickiness,
            cookie: counters.cookie_value(&tg.name),
        }
    }

    /// Picks a target: the one `sticky` names if stickiness is on and it is still here, else by
    /// the algorithm. `None` when the group has no target.
    pub fn pick(&self, sticky: Option<&str>) -> Option<Pick<'_>> {
        let from_cookie = self
            .stickiness
            .and(sticky)
            .and_then(|c| self.targets.iter().find(|t| t.cookie == c));
        let (target, sticky) = match from_cookie {
            Some(t) => (t, true),
            None => (self.balance()?, false),
        };
        target.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            target,
            sticky,
            in_flight: InFlight(target.outstanding.clone()),
        })
    }

    fn balance(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        let ring = self.targets[start..].iter().chain(&self.targets[..start]);
        match self.algorithm {
            Algorithm::RoundRobin => self.targets.get(start),
            // Ties go round robin: the scan starts where round robin would pick.
            Algorithm::LeastOutstandingRequests => {
                ring.min_by_key(|t| t.outstanding.load(Ordering::Relaxed))
            }
        }
    }
}

/// Every group of a config, by name.
pub type Groups = HashMap<String, Arc<Group>>;

/// Compiles every group, and drops counters of targets that left.
pub fn compile(groups: &[HttpTargetGroup], counters: &Counters) -> Groups {
    let out: Groups = groups
        .iter()
        .map(|tg| (tg.name.clone(), Arc::new(Group::new(tg, counters))))
        .collect();
    let live: Vec<(String, SocketAddr)> = out
        .values()
        .flat_map(|g| g.targets.iter().map(|t| (g.name.clone(), t.addr)))
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
    use super::*;
    use crate::l7::config::{HttpTarget, TargetProtocol};

    fn group(name: &str, ports: &[u16], attrs: &[(&str, &str)]) -> HttpTargetGroup {
        HttpTargetGroup {
            name: name.into(),
            protocol: TargetProtocol::Http,
            protocol_version: ProtocolVersion::Http1,
            port: 80,
            targets: ports
                .iter()
                .map(|p| HttpTarget {
                    id: "127.0.0.1".parse().unwrap(),
                    port: Some(*p),
                })
                .collect(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn round_robin_cycles() {
        let c = Counters::default();
        let g = Group::new(&group("g", &[1, 2, 3], &[]), &c);
        let ports: Vec<u16> = (0..6)
            .map(|_| g.pick(None).unwrap().target.addr.port())
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        assert!(Group::new(&group("e", &[], &[]), &c).pick(None).is_none());
    }

    #[test]
    fn least_outstanding_avoids_busy_targets() {
        let c = Counters::default();
        let tg = group(
            "g",
            &[1, 2],
            &[(
                "load_balancing.algorithm.type",
                "least_outstanding_requests",
            )],
        );
        let g = Group::new(&tg, &c);
        let busy = g.pick(None).unwrap();
        assert_eq!(busy.target.addr.port(), 1);
        for _ in 0..4 {
            assert_eq!(g.pick(None).unwrap().target.addr.port(), 2);
        }
        // A reload keeps the count of a target that stays.
        let again = Group::new(&tg, &c);
        assert_eq!(again.pick(None).unwrap().target.addr.port(), 2);
        drop(busy);
        assert_eq!(again.targets[0].outstanding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stickiness_follows_the_cookie_only_when_enabled() {
        let c = Counters::default();
        let on = Group::new(
            &group("g", &[1, 2, 3], &[("stickiness.enabled", "true")]),
            &c,
        );
        assert_eq!(on.stickiness, Some(Duration::from_secs(86_400)));
        let third = on.targets[2].cookie().to_owned();
        for _ in 0..3 {
            let p = on.pick(Some(&third)).unwrap();
            assert!(p.sticky);
            assert_eq!(p.target.addr.port(), 3);
        }
        assert!(!on.pick(Some("bogus")).unwrap().sticky);
        let off = Group::new(&group("g", &[1, 2, 3], &[]), &c);
        assert!(!off.pick(Some(&third)).unwrap().sticky);
    }

    #[test]
    fn weighted_groups_split_by_weight() {
        let c = Counters::default();
        let a = Arc::new(Group::new(&group("a", &[1], &[]), &c));
        let b = Arc::new(Group::new(&group("b", &[2], &[]), &c));
        let z = Arc::new(Group::new(&group("z", &[3], &[]), &c));
        let w = WeightedGroups::new(vec![(a, 1), (b, 3), (z, 0)], None);
        let names: Vec<&str> = (0..8)
            .map(|_| w.pick(None).unwrap().name.as_str())
            .collect();
        assert_eq!(names.iter().filter(|n| **n == "a").count(), 2);
        assert_eq!(names.iter().filter(|n| **n == "b").count(), 6);
        let sticky = WeightedGroups::new(
            w.groups.iter().map(|(g, _)| (g.clone(), 1)).collect(),
            Some(Duration::from_secs(1)),
        );
        let b_cookie = sticky.groups[1].0.cookie.clone();
        for _ in 0..4 {
            assert_eq!(sticky.pick(Some(&b_cookie)).unwrap().name, "b");
        }
    }
}
