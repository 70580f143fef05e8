//! The agent's state on top of the config file: registrations and deregistrations made through
//! the control API (persisted, and reported as drift from the file), draining deadlines, and
//! the effective config the [`Balancer`] applies: which targets take new flows, with what
//! weight, given draining, health and zones.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::Balancer,
    config::{Config, Protocol, Target, TargetGroup},
    health::{
        self,
        checker::{Checker, GroupSpec, View},
    },
};

/// Changes made through the API, kept in `node.state_file` across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Overlay {
    /// Targets added to a group.
    pub registered: Vec<Registration>,
    /// Targets taken out of a group (of the file or of `registered`).
    pub deregistered: Vec<Deregistration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deregistration {
    pub target_group: String,
    pub id: IpAddr,
    /// When its drain ends (seconds since the Unix epoch): a restarted agent resumes the drain.
    pub drain_until: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub target_group: String,
    pub id: IpAddr,
    pub weight: u32,
    pub zone: Option<String>,
    pub mac: Option<String>,
}

/// One row of `xlb targets list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetRow {
    pub target_group: String,
    pub id: IpAddr,
    /// The port of a target of an HTTP group (L4 targets get every port of their listener).
    pub port: Option<u16>,
    pub weight: u32,
    pub zone: Option<String>,
    /// AWS target state: `healthy`, `unhealthy`, `initial`, `draining`, `unavailable`.
    pub state: String,
    /// AWS reason code, when the state has one.
    pub reason: Option<String>,
    /// Entries in the flow table that point at this target.
    pub flows: u64,
    /// Whether the target takes new flows now.
    pub in_service: bool,
    /// `file` or `api` (registered through the API: drift from the file).
    pub source: String,
}

impl TargetRow {
    /// The target as operators name it: `address:port` in HTTP groups, the address in L4 ones.
    pub fn target(&self) -> String {
        match self.port {
            Some(port) => SocketAddr::new(self.id, port).to_string(),
            None => self.id.to_string(),
        }
    }
}

/// The agent: the file, the overlay, draining, and the balancer it drives.
pub struct Agent {
    pub path: PathBuf,
    pub file: Config,
    pub overlay: Overlay,
    /// (group, target) → when its deregistration delay ends.
    draining: BTreeMap<(String, IpAddr), Instant>,
    pub lb: Balancer,
    pub started: Instant,
    /// Runs the L4 target groups' health checks; its events go to the serve loop.
    checker: Checker,
    /// The L7 tier's checks of HTTP target groups, which it runs itself.
    pub l7_health: Option<View>,
}

impl Agent {
    /// Takes over `lb` with the file at `path`, reads the persisted overlay, starts the health
    /// checks, applies. Must run inside a tokio runtime (the checks are tasks); health events
    /// come out of the returned receiver, and [`Agent::apply`] takes them into account.
    pub fn start(
        path: PathBuf,
        file: Config,
        lb: Balancer,
    ) -> Result<(
        Agent,
        tokio::sync::mpsc::UnboundedReceiver<health::checker::Event>,
    )> {
        let overlay = load_overlay(&file.node.state_file)?;
        let (checker, events) = Checker::new();
        let mut agent = Agent {
            path,
            file,
            overlay,
            draining: BTreeMap::new(),
            lb,
            started: Instant::now(),
            checker,
            l7_health: None,
        };
        // A drain that was under way when the last agent stopped goes on until its end.
        let now = unix_now();
        for d in agent.overlay.deregistered.clone() {
            if d.drain_until > now {
                let left = Duration::from_secs(d.drain_until - now);
                agent
                    .draining
                    .insert((d.target_group, d.id), Instant::now() + left);
            }
        }
        agent.apply()?;
        Ok((agent, events))
    }

    fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.file.target_groups.iter().find(|g| g.name == name)
    }

    /// The file's config plus the overlay, with ring weights for draining and zones applied.
    pub fn effective(&self) -> Config {
        let routable: BTreeMap<&str, Vec<IpAddr>> = self
            .file
            .target_groups
            .iter()
            .filter(|g| g.health_check.is_some() && g.protocol != Protocol::Http)
            .map(|g| {
                let up = health::routable(&self.checker.states(&g.name));
                (g.name.as_str(), up.iter().map(SocketAddr::ip).collect())
            })
            .collect();
        let out_of_service = |g: &str, id: IpAddr| {
            self.draining.contains_key(&(g.to_owned(), id))
                || routable.get(g).is_some_and(|r| !r.contains(&id))
        };
        effective(&self.file, &self.overlay, &out_of_service)
    }

    /// What the L7 tier serves: the file with the API's registrations, without targets that
    /// drain or carry no weight (they finish their requests but get no new ones).
    pub fn l7(&self) -> crate::l7::L7Config {
        let mut cfg = self.effective();
        for g in &mut cfg.target_groups {
            g.targets.retain(|t| t.weight > 0);
        }
        cfg.l7()
    }

    /// The health checks for the current L4 targets (states of targets that stay are kept);
    /// the L7 tier checks HTTP groups.
    fn update_checks(&mut self) {
        let cfg = effective(&self.file, &self.overlay, &|_, _| false);
        let specs: Vec<GroupSpec> = cfg
            .target_groups
            .iter()
            .filter(|g| g.protocol != Protocol::Http)
            .filter_map(|g| {
                let hc = g.health_check.as_ref()?;
                let targets = g
                    .targets
                    .iter()
                    .filter(|t| !self.draining.contains_key(&(g.name.clone(), t.id)))
                    .map(|t| SocketAddr::new(t.id, g.port));
                Some(GroupSpec {
                    name: g.name.clone(),
                    check: hc.spec(),
                    targets: targets.collect(),
                    deregistration_delay: g.deregistration_delay(),
                })
            })
            .collect();
        self.checker.update(&specs);
    }

    /// Applies the effective config to the datapath.
    pub fn apply(&mut self) -> Result<()> {
        self.update_checks();
        let cfg = self.effective();
        self.lb.apply(&cfg).context("apply to the datapath")
    }

    /// Re-reads the file; a bad file is refused and the running config stays.
    pub fn reload(&mut self) -> Result<()> {
        let new = Config::load(&self.path)?;
        if new.node != self.file.node {
            bail!("[node] changed: restart the agent to apply it");
        }
        self.file = new;
        self.apply()
    }

    pub fn register(&mut self, r: Registration) -> Result<()> {
        if self.group(&r.target_group).is_none() {
            bail!("no target group named {:?}", r.target_group);
        }
        let key = (r.target_group.clone(), r.id);
        self.overlay
            .deregistered
            .retain(|d| (&d.target_group, d.id) != (&key.0, key.1));
        self.draining.remove(&key);
        self.overlay
            .registered
            .retain(|x| (x.target_group.as_str(), x.id) != (key.0.as_str(), key.1));
        tracing::info!(target_group = %r.target_group, target = %r.id, weight = r.weight, "target registered");
        self.overlay.registered.push(r);
        self.save()?;
        self.apply()
    }

    /// Takes a target out for new flows at once; its flows go on until the group's
    /// deregistration delay passes.
    pub fn deregister(&mut self, group: &str, id: IpAddr) -> Result<()> {
        let g = self
            .group(group)
            .with_context(|| format!("no target group named {group:?}"))?;
        let delay = g.deregistration_delay();
        let known = g.targets.iter().any(|t| t.id == id)
            || self
                .overlay
                .registered
                .iter()
                .any(|r| r.target_group == group && r.id == id);
        if !known {
            bail!("{id} is not registered in {group:?}");
        }
        let key = (group.to_owned(), id);
        self.overlay
            .deregistered
            .retain(|d| (&d.target_group, d.id) != (&key.0, key.1));
        self.overlay.deregistered.push(Deregistration {
            target_group: group.to_owned(),
            id,
            drain_until: unix_now() + delay.as_secs(),
        });
        tracing::info!(target_group = group, target = %id, delay_seconds = delay.as_secs(), "target draining");
        self.draining.insert(key, Instant::now() + delay);
        self.save()?;
        self.apply()
    }

    /// Ends drains whose delay has passed: the targets leave the datapath and their remaining
    /// flows are re-balanced. Returns the (group, target) pairs that finished.
    pub fn expire_drains(&mut self, now: Instant) -> Result<Vec<(String, IpAddr)>> {
        let done: Vec<_> = self
            .draining
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &done {
            self.draining.remove(k);
        }
        if !done.is_empty() {
            self.apply()?;
            for (_, id) in &done {
                self.lb.retire(*id)?;
            }
        }
        Ok(done)
    }

    /// Time until the next drain ends.
    pub fn next_drain(&self) -> Option<Duration> {
        self.draining
            .values()
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Every target of every group (or of `group`), with its state and flows.
    pub fn targets(&mut self, group: Option<&str>) -> Result<Vec<TargetRow>> {
        let flows = self.lb.flows_per_target()?;
        let cfg = self.effective();
        let mut snapshot = self.checker.snapshot();
        snapshot.extend(self.l7_health.iter().flat_map(View::snapshot));
        let mut rows = Vec::new();
        for g in cfg
            .target_groups
            .iter()
            .filter(|g| group.is_none_or(|n| n == g.name))
        {
            // The L7 tier's view of an HTTP group: checked targets it routes to (fail open).
            let states: Vec<(SocketAddr, health::State)> = snapshot
                .iter()
                .filter(|s| g.protocol == Protocol::Http && s.group == g.name)
                .map(|s| (s.target, s.health.state))
                .collect();
            let l7_up = (!states.is_empty()).then(|| health::routable(&states));
            for t in &g.targets {
                let key = (g.name.clone(), t.id);
                let draining = self.draining.contains_key(&key);
                let from_api = !self
                    .file
                    .target_groups
                    .iter()
                    .any(|f| f.name == g.name && f.targets.iter().any(|x| x.id == t.id));
                let configured = self
                    .file
                    .target_groups
                    .iter()
                    .find(|f| f.name == g.name)
                    .and_then(|f| f.targets.iter().find(|x| x.id == t.id))
                    .map(|x| x.weight);
                let registered = self
                    .overlay
                    .registered
                    .iter()
                    .find(|r| r.target_group == g.name && r.id == t.id)
                    .map(|r| r.weight);
                let weight = configured.or(registered).unwrap_or(0);
                let port = (g.protocol == Protocol::Http).then(|| t.port.unwrap_or(g.port));
                let traffic = SocketAddr::new(t.id, port.unwrap_or(g.port));
                let checked = snapshot
                    .iter()
                    .find(|s| s.group == g.name && s.target == traffic);
                let (state, reason) = match (draining, checked) {
                    (true, _) => (
                        "draining".to_owned(),
                        Some("Target.DeregistrationInProgress".to_owned()),
                    ),
                    (false, Some(s)) => (
                        s.health.state.to_string(),
                        s.health.reason.map(|r| r.to_string()),
                    ),
                    (false, None) => (
                        "unavailable".to_owned(),
                        Some("Target.HealthCheckDisabled".to_owned()),
                    ),
                };
                rows.push(TargetRow {
                    target_group: g.name.clone(),
                    id: t.id,
                    port,
                    weight,
                    zone: t.zone.clone(),
                    state,
                    reason,
                    flows: flows.get(&t.id).copied().unwrap_or(0),
                    in_service: match &l7_up {
                        Some(up) => up.contains(&traffic),
                        None => t.weight > 0,
                    },
                    source: if from_api { "api" } else { "file" }.into(),
                });
            }
        }
        Ok(rows)
    }

    fn save(&self) -> Result<()> {
        save_overlay(&self.file.node.state_file, &self.overlay)
    }
}

/// The effective config: `file` plus `overlay`; targets that are draining, or outside the node's
/// zone while the zone has a target in service and cross-zone is off, get ring weight 0 (they
/// keep their flows but take no new ones). With cross-zone on, weights are multiplied by the
/// zone's weight.
pub fn effective(
    file: &Config,
    overlay: &Overlay,
    draining: &dyn Fn(&str, IpAddr) -> bool,
) -> Config {
    let mut cfg = file.clone();
    let node_zone = cfg.node.zone.clone();
    for g in &mut cfg.target_groups {
        for r in overlay
            .registered
            .iter()
            .filter(|r| r.target_group == g.name)
        {
            if !g.targets.iter().any(|t| t.id == r.id) {
                g.targets.push(Target {
                    id: r.id,
                    weight: r.weight,
                    mac: r.mac.clone(),
                    zone: r.zone.clone(),
                    port: None,
                });
            }
        }
        let name = g.name.clone();
        // Deregistered targets stay only while they drain.
        let dereg = |id: IpAddr| {
            overlay
                .deregistered
                .iter()
                .any(|d| d.target_group == name && d.id == id)
        };
        g.targets.retain(|t| !dereg(t.id) || draining(&name, t.id));
        let cross = g.cross_zone();
        let serving: Vec<bool> = g
            .targets
            .iter()
            .map(|t| t.weight > 0 && !draining(&name, t.id))
            .collect();
        let local = |t: &Target| node_zone.is_some() && t.zone == node_zone;
        let local_serving = g.targets.iter().zip(&serving).any(|(t, s)| *s && local(t));
        for (t, s) in g.targets.iter_mut().zip(serving) {
            // Cross-zone off: stay in the node's zone while it has a target; spill over when not.
            let zone_ok = cross || !local_serving || local(t);
            let zone_weight = t
                .zone
                .as_ref()
                .and_then(|z| cfg.node.zone_weights.get(z))
                .copied()
                .unwrap_or(1);
            t.weight = match (s && zone_ok, cross) {
                (false, _) => 0,
                (true, true) => t.weight * zone_weight,
                (true, false) => t.weight,
            };
        }
    }
    cfg
}

fn load_overlay(path: &Path) -> Result<Overlay> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parse the state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
        Err(e) => Err(e).with_context(|| format!("read the state file {}", path.display())),
    }
}

/// Writes the overlay atomically: a temporary file beside it, then a rename.
fn save_overlay(path: &Path, overlay: &Overlay) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(overlay)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cross_zone: bool) -> Config {
        let text = format!(
            r#"
[node]
interface = "eth0"
zone = "a"
zone_weights = {{ a = 1, b = 3 }}

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [
  {{ id = "198.18.1.11", zone = "a" }},
  {{ id = "198.18.1.12", zone = "b" }},
  {{ id = "198.18.1.13", zone = "b", weight = 2 }},
]
attributes = {{ "load_balancing.cross_zone.enabled" = "{cross_zone}" }}
"#
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    fn weights(c: &Config) -> Vec<(String, u32)> {
        c.target_groups[0]
            .targets
            .iter()
            .map(|t| (t.id.to_string(), t.weight))
            .collect()
    }

    const NONE: &dyn Fn(&str, IpAddr) -> bool = &|_, _| false;

    #[test]
    fn cross_zone_off_keeps_traffic_in_the_node_zone() {
        let e = effective(&cfg(false), &Overlay::default(), NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 1),
                ("198.18.1.12".into(), 0),
                ("198.18.1.13".into(), 0)
            ]
        );
    }

    #[test]
    fn cross_zone_off_spills_over_when_the_zone_has_no_target() {
        let a: IpAddr = "198.18.1.11".parse().unwrap();
        let draining = move |_: &str, id: IpAddr| id == a;
        let mut o = Overlay::default();
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: a,
            drain_until: 0,
        });
        let e = effective(&cfg(false), &o, &draining);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 0),
                ("198.18.1.12".into(), 1),
                ("198.18.1.13".into(), 2)
            ]
        );
    }

    #[test]
    fn cross_zone_on_multiplies_by_zone_weights() {
        let e = effective(&cfg(true), &Overlay::default(), NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 1),
                ("198.18.1.12".into(), 3),
                ("198.18.1.13".into(), 6)
            ]
        );
    }

    #[test]
    fn registered_targets_join_and_drained_ones_leave() {
        let mut o = Overlay::default();
        o.registered.push(Registration {
            target_group: "web".into(),
            id: "198.18.1.14".parse().unwrap(),
            weight: 1,
            zone: Some("a".into()),
            mac: None,
        });
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: "198.18.1.11".parse().unwrap(),
            drain_until: 0,
        });
        // The drain is over (not draining any more): the target is gone.
        let e = effective(&cfg(false), &o, NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.12".into(), 0),
                ("198.18.1.13".into(), 0),
                ("198.18.1.14".into(), 1)
            ]
        );
    }

    #[test]
    fn overlay_round_trips_through_the_state_file() {
        let dir = std::env::temp_dir().join(format!("xlb-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut o = Overlay::default();
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: "198.18.1.11".parse().unwrap(),
            drain_until: 0,
        });
        save_overlay(&path, &o).unwrap();
        assert_eq!(load_overlay(&path).unwrap(), o);
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(load_overlay(&path).unwrap(), Overlay::default());
    }
}
