//! The agent: its state on top of the config file, and the tasks around it.
//!
//! - This file: [`Agent`], the state. Registrations and deregistrations made through the
//!   control API, draining deadlines, the health of L4 targets, and the effective config the
//!   [`Balancer`] applies: which targets take new flows, with what weight.
//! - [`overlay`]: the API's changes, persisted across restarts.
//! - [`effective`]: the file plus the overlay, with draining, health and zones applied.
//! - [`host`]: what a config may not ask of the host (its own addresses as VIPs).
//! - [`serve`]: `xlb run`: the agent's tasks (API, metrics, health, L7 tier, signals, drains)
//!   around one loop that owns the state.
//! - [`bgp`]: announcing the VIPs the node can serve through BIRD.

pub mod bgp;
mod effective;
pub mod host;
mod overlay;
pub mod serve;
pub mod snat;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_config::{Config, TargetGroup};
use lb_health::{
    CheckSpec,
    checker::{Checker, GroupSpec, View},
};
use lb_l7::L7Config;

use self::overlay::{Departure, Deregistration, unix_now};
pub use self::{effective::effective, overlay::Overlay};
use crate::{
    api::{Registration, Request, Response, Status, TargetRow},
    balancer::{Balancer, TargetAddr},
    metrics::{FlowTable, Scrape},
    stats::Snapshot,
};

/// Reads and checks the config at `path` as `xlb run`, a reload and `xlb check` do: the file,
/// the certificates it names, and what it asks of this host.
pub fn load_config(path: &std::path::Path) -> Result<Config, lb_config::ConfigError> {
    Config::load_with(path, |cfg| {
        lb_l7::check_certificates(cfg)?;
        // Without the host's addresses there is nothing to check them against.
        match host::addresses() {
            Ok(addrs) => host::check(cfg, &addrs),
            Err(_) => Ok(()),
        }
    })
}

/// The agent: the file, the overlay, draining, and the balancer it drives.
pub struct Agent {
    pub path: PathBuf,
    pub file: Config,
    pub overlay: Overlay,
    /// (group, target) → when its deregistration delay ends.
    draining: BTreeMap<(String, IpAddr), Instant>,
    /// NAT targets a reload gave another port → when the backend on the old port is retired.
    /// Until then it carries the flows it had (it is in no table), as a deregistered target
    /// does while it drains; the target itself is not draining.
    moved: BTreeMap<IpAddr, Instant>,
    /// `xlb node drain`: announce no VIP until `xlb node resume` (or a restart).
    withdrawn: bool,
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
        tokio::sync::mpsc::UnboundedReceiver<lb_health::checker::Event>,
    )> {
        let overlay = overlay::load(&file.node.state_file)?;
        let (checker, events) = Checker::new();
        let mut agent = Agent {
            path,
            file,
            overlay,
            draining: BTreeMap::new(),
            moved: BTreeMap::new(),
            withdrawn: false,
            lb,
            started: Instant::now(),
            checker,
            l7_health: None,
        };
        // A drain that was under way when the last agent stopped goes on until its end.
        let now = unix_now();
        let drains = agent
            .overlay
            .deregistered
            .iter()
            .map(|d| (&d.target_group, d.id, d.drain_until))
            .chain(
                agent
                    .overlay
                    .departed
                    .iter()
                    .map(|d| (&d.target.target_group, d.target.id, d.drain_until)),
            );
        // A departure whose target is back in the file is over.
        let file = agent.file.clone();
        let back = |d: &Departure| {
            file.group(&d.target.target_group)
                .is_some_and(|g| g.targets.iter().any(|t| t.id == d.target.id))
        };
        let drains: Vec<_> = drains
            .filter(|(g, id, _)| {
                !agent
                    .overlay
                    .departed
                    .iter()
                    .any(|d| &d.target.target_group == *g && d.target.id == *id && back(d))
            })
            .map(|(g, id, until)| (g.clone(), id, until))
            .collect();
        agent.overlay.departed.retain(|d| !back(d));
        for (group, id, until) in drains {
            if until > now {
                let left = Duration::from_secs(until - now);
                agent.draining.insert((group, id), Instant::now() + left);
            }
        }
        agent.overlay.departed.retain(|d| d.drain_until > now);
        // A state file that no longer applies (its groups gone, or more targets than the
        // datapath holds) does not keep the agent from starting with what does.
        agent.overlay.registered.retain(|r| {
            let known = agent.file.group(&r.target_group).is_some();
            if !known {
                tracing::warn!(target_group = %r.target_group, target = %r.id, "state file: no such target group any more; registration dropped");
            }
            known
        });
        if let Err(e) = agent.apply() {
            let dropped = std::mem::take(&mut agent.overlay.registered);
            tracing::warn!(
                error = format!("{e:#}"),
                registrations = dropped.len(),
                "state file: its registrations do not apply; starting without them"
            );
            agent.apply()?;
            agent.save()?;
        }
        for w in host::warnings(&agent.file) {
            tracing::warn!("{w}");
        }
        // Targets an earlier agent left in the datapath that this config does not have.
        for id in agent.lb.retire_orphans()? {
            tracing::info!(target = %id, "target in the datapath but not in the config: retired");
        }
        Ok((agent, events))
    }

    fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.file.group(name)
    }

    /// Whether the agent checks `g`'s health: L4 groups, but those only the user-space proxy
    /// forwards to, which the L7 tier checks as it checks HTTP groups.
    fn checks(&self, g: &TargetGroup) -> bool {
        let cfg = &self.file;
        let to_g = |l: &&lb_config::Listener| l.target_group() == g.name;
        let user_space_only = cfg
            .listeners
            .iter()
            .any(|l| to_g(&l) && cfg.in_user_space(l))
            && !cfg.xdp_listeners().any(|l| to_g(&l));
        !g.protocol.is_http() && !user_space_only
    }

    /// The file's config plus the overlay, with ring weights for draining and zones applied.
    pub fn effective(&self) -> Config {
        let routable: BTreeMap<&str, Vec<IpAddr>> = self
            .file
            .target_groups
            .iter()
            .filter(|g| g.health_check.is_some() && self.checks(g))
            .map(|g| {
                let up = lb_health::routable(&self.checker.states(&g.name));
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
    pub fn l7(&self) -> L7Config {
        let mut cfg = self.effective();
        for g in &mut cfg.target_groups {
            g.targets.retain(|t| t.weight > 0);
        }
        L7Config::of(&cfg)
    }

    /// The health checks for the current L4 targets (states of targets that stay are kept);
    /// the L7 tier checks HTTP groups and those only its proxy forwards to.
    fn update_checks(&mut self) {
        let cfg = effective(&self.file, &self.overlay, &|_, _| false);
        let specs: Vec<GroupSpec> = cfg
            .target_groups
            .iter()
            .filter(|g| self.checks(g))
            .filter_map(|g| {
                let hc = g.health_check.as_ref()?;
                let targets = g
                    .targets
                    .iter()
                    .filter(|t| !self.draining.contains_key(&(g.name.clone(), t.id)))
                    .map(|t| g.addr(t));
                Some(GroupSpec {
                    name: g.name.clone(),
                    check: CheckSpec::new(hc),
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

    /// Makes a change to the file, the overlay or the drains and applies it. A change that
    /// does not apply is undone (the datapath keeps what it ran) and never saved; one that
    /// applies is saved to the state file.
    fn change(&mut self, f: impl FnOnce(&mut Agent)) -> Result<()> {
        let before = (
            self.file.clone(),
            self.overlay.clone(),
            self.draining.clone(),
        );
        f(self);
        if let Err(e) = self.apply() {
            (self.file, self.overlay, self.draining) = before;
            if let Err(again) = self.apply() {
                tracing::error!(
                    error = format!("{again:#}"),
                    "re-applying the running config failed"
                );
            }
            return Err(e.context("refused, nothing changed"));
        }
        self.save()
    }

    /// Re-reads the file; a bad file is refused and the running config stays. Targets the new
    /// file no longer has drain for their group's deregistration delay, as deregistered ones do.
    pub fn reload(&mut self) -> Result<()> {
        let new = load_config(&self.path)?;
        if new.node != self.file.node {
            bail!("[node] changed: restart the agent to apply it");
        }
        let departing: Vec<(Departure, Duration)> = self
            .file
            .target_groups
            .iter()
            .filter_map(|old| Some((old, new.group(&old.name)?)))
            .flat_map(|(old, kept)| {
                old.targets
                    .iter()
                    .filter(|t| !kept.targets.iter().any(|k| k.id == t.id))
                    .map(move |t| {
                        let d = Departure {
                            target: Registration {
                                target_group: old.name.clone(),
                                id: t.id,
                                weight: t.weight,
                                zone: t.zone.clone(),
                                mac: t.mac.clone(),
                                port: t.port,
                            },
                            drain_until: unix_now() + old.deregistration_delay().as_secs(),
                        };
                        (d, old.deregistration_delay())
                    })
            })
            .collect();
        // NAT targets whose port changes: a new backend, while the old port's drains.
        let moved: Vec<(IpAddr, Duration)> = self
            .file
            .target_groups
            .iter()
            .filter_map(|old| Some((old, new.group(&old.name)?)))
            .flat_map(|(old, kept)| {
                let (before, after) = (&self.file, &new);
                old.targets.iter().filter_map(move |t| {
                    let k = kept.targets.iter().find(|k| k.id == t.id)?;
                    (TargetAddr::of(before, old, t) != TargetAddr::of(after, kept, k))
                        .then(|| (t.id, old.deregistration_delay()))
                })
            })
            .collect();
        self.change(|a| {
            for (id, delay) in moved {
                tracing::info!(target = %id, delay_seconds = delay.as_secs(), "target moved to another port: its old port drains");
                a.moved.insert(id, Instant::now() + delay);
            }
            // Targets back in the file stop departing.
            a.overlay.departed.retain(|d| {
                let back = new.group(&d.target.target_group).is_some_and(|g| {
                    g.targets.iter().any(|t| t.id == d.target.id)
                });
                if back {
                    a.draining.remove(&(d.target.target_group.clone(), d.target.id));
                }
                !back
            });
            for (d, delay) in departing {
                tracing::info!(target_group = %d.target.target_group, target = %d.target.id, delay_seconds = delay.as_secs(), "target left the file: draining");
                a.draining.insert(
                    (d.target.target_group.clone(), d.target.id),
                    Instant::now() + delay,
                );
                a.overlay.departed.push(d);
            }
            a.file = new;
        })
    }

    /// Adds targets through the API, in one apply. They are checked as the file is, with the
    /// same rules and messages.
    pub fn register(&mut self, targets: Vec<Registration>) -> Result<()> {
        for r in &targets {
            if self.group(&r.target_group).is_none() {
                bail!("no target group named {:?}", r.target_group);
            }
        }
        let mut overlay = self.overlay.clone();
        for r in &targets {
            let key = (r.target_group.as_str(), r.id);
            overlay
                .deregistered
                .retain(|d| (d.target_group.as_str(), d.id) != key);
            overlay
                .registered
                .retain(|x| (x.target_group.as_str(), x.id) != key);
            overlay.registered.push(r.clone());
        }
        let draining = |g: &str, id: IpAddr| self.draining.contains_key(&(g.to_owned(), id));
        effective::merged(&self.file, &overlay, &draining)
            .check()
            .map_err(|r| anyhow::anyhow!("{}: {}", r.key, r.message))?;
        self.change(|a| {
            for r in &targets {
                a.draining.remove(&(r.target_group.clone(), r.id));
            }
            a.overlay = overlay;
        })?;
        for r in &targets {
            tracing::info!(target_group = %r.target_group, target = %r.id, weight = r.weight, "target registered");
        }
        Ok(())
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
        self.change(|a| {
            let key = (group.to_owned(), id);
            a.overlay
                .deregistered
                .retain(|d| (&d.target_group, d.id) != (&key.0, key.1));
            a.overlay.deregistered.push(Deregistration {
                target_group: group.to_owned(),
                id,
                drain_until: unix_now() + delay.as_secs(),
            });
            a.draining.insert(key, Instant::now() + delay);
        })?;
        tracing::info!(target_group = group, target = %id, delay_seconds = delay.as_secs(), "target draining");
        Ok(())
    }

    /// Ends drains whose delay has passed: the targets leave the datapath and their remaining
    /// flows are re-balanced. Returns the (group, target) pairs that finished.
    pub fn expire_drains(&mut self, now: Instant) -> Result<Vec<(String, IpAddr)>> {
        let moved: Vec<IpAddr> = self
            .moved
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in moved {
            self.moved.remove(&id);
            // Only the backends no listener uses: the old port's, not the new one's.
            self.lb.retire(id)?;
        }
        let done: Vec<_> = self
            .draining
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if done.is_empty() {
            return Ok(done);
        }
        for k in &done {
            self.draining.remove(k);
        }
        let over = |d: &Departure| done.contains(&(d.target.target_group.clone(), d.target.id));
        self.overlay.departed.retain(|d| !over(d));
        self.apply()?;
        self.save()?;
        for (_, id) in &done {
            self.lb.retire(*id)?;
        }
        Ok(done)
    }

    /// Time until the next drain ends.
    pub fn next_drain(&self) -> Option<Duration> {
        self.draining
            .values()
            .chain(self.moved.values())
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The VIPs this node can serve, as ELB's node health has it: the addresses of XDP listeners
    /// whose target group has a target in service (a weight, not draining, and healthy when the
    /// group is checked; not merely failed open to). None while the node is drained.
    pub fn servable_vips(&self) -> BTreeSet<IpAddr> {
        if self.withdrawn {
            return BTreeSet::new();
        }
        let cfg = effective(&self.file, &self.overlay, &|g, id| {
            self.draining.contains_key(&(g.to_owned(), id))
        });
        // Each group once, however many listeners forward to it.
        let serving: BTreeSet<&str> = cfg
            .target_groups
            .iter()
            .filter(|g| !g.protocol.is_http())
            .filter(|g| {
                let healthy: Option<Vec<IpAddr>> = g.health_check.is_some().then(|| {
                    self.checker
                        .states(&g.name)
                        .into_iter()
                        .filter(|(_, s)| *s == lb_health::State::Healthy)
                        .map(|(a, _)| a.ip())
                        .collect()
                });
                g.targets
                    .iter()
                    .any(|t| t.weight > 0 && healthy.as_ref().is_none_or(|h| h.contains(&t.id)))
            })
            .map(|g| g.name.as_str())
            .collect();
        cfg.xdp_listeners()
            .filter(|l| serving.contains(l.target_group()))
            .map(|l| l.address)
            .collect()
    }

    /// Every target of every group (or of `group`), with its state and flows.
    pub fn targets(&mut self, group: Option<&str>) -> Result<Vec<TargetRow>> {
        let flows = self.lb.flows()?.per_target;
        Ok(self.rows(group, &flows))
    }

    /// The rows of [`Agent::targets`], with `flows` live flows per target.
    fn rows(&self, group: Option<&str>, flows: &BTreeMap<TargetAddr, u64>) -> Vec<TargetRow> {
        let cfg = self.effective();
        let mut snapshot = self.checker.snapshot();
        snapshot.extend(self.l7_health.iter().flat_map(View::snapshot));
        let mut rows = Vec::new();
        for g in cfg
            .target_groups
            .iter()
            .filter(|g| group.is_none_or(|n| n == g.name))
        {
            // The L7 tier's view of its groups: checked targets it routes to (fail open).
            let states: Vec<(SocketAddr, lb_health::State)> = snapshot
                .iter()
                .filter(|s| !self.checks(g) && s.group == g.name)
                .map(|s| (s.target, s.health.state))
                .collect();
            let l7_up = (!states.is_empty()).then(|| lb_health::routable(&states));
            for t in &g.targets {
                let key = (g.name.clone(), t.id);
                let draining = self.draining.contains_key(&key);
                let in_file = self
                    .file
                    .group(&g.name)
                    .is_some_and(|f| f.targets.iter().any(|x| x.id == t.id));
                let from_api = !in_file
                    && self
                        .overlay
                        .registered
                        .iter()
                        .any(|r| r.target_group == g.name && r.id == t.id);
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
                let port = match g.protocol.is_http() {
                    true => Some(t.port.unwrap_or(g.port)),
                    false => cfg.nat_port(g, t),
                };
                let traffic = g.addr(t);
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
                    flows: flows.get(&TargetAddr::of(&cfg, g, t)).copied().unwrap_or(0),
                    in_service: match &l7_up {
                        Some(up) => up.contains(&traffic),
                        None => t.weight > 0,
                    },
                    source: if from_api { "api" } else { "file" }.into(),
                });
            }
        }
        rows
    }

    fn save(&self) -> Result<()> {
        overlay::save(&self.file.node.state_file, &self.overlay)
    }

    /// Answers one API request; true when it asks the agent to stop.
    pub fn answer(&mut self, req: Request) -> (Response, bool) {
        let done = |r: Result<()>, message: String| match r {
            Ok(()) => Response::Done { message },
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        };
        let error = |e: anyhow::Error| Response::Error {
            message: format!("{e:#}"),
        };
        let resp = match req {
            Request::Status => Response::Status(self.status()),
            Request::Stats => match Snapshot::read(&mut self.lb) {
                Ok(s) => Response::Stats {
                    table: s.table(),
                    reasons: s
                        .reasons
                        .iter()
                        .map(|(r, c)| (r.name().to_owned(), c.packets, c.bytes))
                        .collect(),
                    listeners: s.listener_stats(),
                },
                Err(e) => error(e.into()),
            },
            Request::Targets { target_group } => match self.targets(target_group.as_deref()) {
                Ok(targets) => Response::Targets { targets },
                Err(e) => error(e),
            },
            Request::Register { targets } => {
                let names: Vec<String> = targets
                    .iter()
                    .map(|r| format!("{} in {}", r.id, r.target_group))
                    .collect();
                let msg = format!("registered {}", names.join(", "));
                done(self.register(targets), msg)
            }
            Request::Deregister { target_group, id } => {
                let msg = format!("deregistered {id} from {target_group}: draining");
                done(self.deregister(&target_group, id), msg)
            }
            Request::Reload => {
                let msg = format!("reloaded {}", self.path.display());
                let r = self.reload();
                match &r {
                    Ok(()) => tracing::info!(config = %self.path.display(), "reloaded"),
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "reload refused, keeping the running config"
                    ),
                }
                done(r, msg)
            }
            Request::Announce { announce } => {
                self.withdrawn = !announce;
                let message = match (&self.file.node.bgp, announce) {
                    (None, _) => "no [node.bgp]: nothing is announced".to_owned(),
                    (Some(_), true) => "announcing the VIPs this node can serve".to_owned(),
                    (Some(_), false) => "withdrawing every VIP".to_owned(),
                };
                tracing::info!(announce, "{message}");
                Response::Done { message }
            }
            Request::Stop => {
                return (
                    Response::Done {
                        message: "stopping".into(),
                    },
                    true,
                );
            }
        };
        (resp, false)
    }

    fn status(&self) -> Status {
        let drift = self
            .overlay
            .registered
            .iter()
            .map(|r| {
                let in_file = self
                    .file
                    .group(&r.target_group)
                    .is_some_and(|g| g.targets.iter().any(|t| t.id == r.id));
                let why = if in_file {
                    "in the file too: the file's weight, zone and MAC apply"
                } else {
                    "not in the file"
                };
                format!("registered {} in {} ({why})", r.id, r.target_group)
            })
            .chain(
                self.overlay
                    .deregistered
                    .iter()
                    .map(|d| format!("deregistered {} from {}", d.id, d.target_group)),
            )
            .chain(self.overlay.departed.iter().map(|d| {
                format!(
                    "{} left {} with a reload: draining",
                    d.target.id, d.target.target_group
                )
            }))
            .collect();
        Status {
            config: self.path.display().to_string(),
            interface: self.file.node.interface.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            listeners: self.file.listeners.len(),
            target_groups: self.file.target_groups.len(),
            drift,
            warnings: host::warnings(&self.file),
        }
    }

    /// What a metrics scrape renders: the counters, the targets' states and the flow table's
    /// fill, from one pass over the flow table.
    pub fn scrape(&mut self) -> Result<Scrape> {
        let flows = self.lb.flows()?;
        let snat_ports = self.lb.snat_entries()?.ports.len() as u64;
        Ok(Scrape {
            counters: Snapshot::read(&mut self.lb)?,
            targets: self.rows(None, &flows.per_target),
            flow_table: FlowTable {
                capacity: flows.capacity,
                entries: flows.entries,
                live: flows.live,
            },
            snat_ports,
        })
    }
}
