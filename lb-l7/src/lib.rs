//! The L7 tier: HTTP and HTTPS listeners with the rules, actions and target groups of an AWS
//! Application Load Balancer, in the same `xlb` process as the XDP tier.
//!
//! - [`L7Config`]: what the tier serves of a config (`lb-config` parses and validates it).
//! - [`rules`]: conditions and their matching (ALB wildcards, priority order).
//! - [`action`]: the answers the load balancer makes itself (redirect, fixed response).
//! - [`balance`]: target group and target choice: health, slow start, stickiness cookies.
//! - [`desync`]: ALB's desync mitigation: each raw HTTP/1 head classified, judged by the mode,
//!   and handed to hyper as it is, rewritten or refused.
//! - [`proxy`]: one request's phases, from the desync check to the access log entry.
//! - [`upstream`]: the clients toward targets (HTTP/1.1 or HTTP/2, clear or TLS).
//! - [`listener`]: sockets, TLS handshakes, connections, idle timeout and draining.
//! - [`stream`]: the user-space proxy of NLB's TLS listeners and of TCP listeners whose group
//!   takes PROXY v2: TLS, a target, the header, then bytes both ways.
//! - [`proxy_protocol`]: the PROXY v2 header.
//! - [`tls`]: rustls setup and certificate choice by SNI.
//! - [`trace`]: `X-Amzn-Trace-Id`, as ALB adds and updates it.
//! - [`log`]: access log and connection log lines in ALB's formats.
//! - [`metrics`]: ALB's CloudWatch metrics, as Prometheus families.
//!
//! [`serve`] runs the listeners until a shutdown future resolves. Config changes arrive on a
//! `tokio::sync::watch` channel: each listener's state sits in an `ArcSwap`, so a reload swaps
//! rules, targets and certificates without closing a connection; listeners that appear or
//! disappear are bound or drained. A reload that fails (a certificate that does not load, a port
//! taken) changes nothing and is reported on stderr.
//!
//! Target groups with a `health_check` are checked by a [`Checker`] (the one L4 groups use), run
//! here: each state change flips the target's flag in [`balance::Counters`] and nothing is
//! rebuilt. A target that leaves (deregistered, or removed by a reload) gets no new request, and
//! its requests in flight may go on for its group's deregistration delay, then are cut.

pub mod action;
pub mod balance;
pub mod desync;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod rules;
pub mod stream;
pub mod tls;
pub mod trace;
pub mod upstream;

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http::HeaderValue;
use thiserror::Error;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};

use lb_config::{
    Config, HttpAction, HttpListener, Listener, ListenerProtocol, Protocol, Refusal, SslPolicy,
    TargetGroup,
};
use lb_health::{
    CheckSpec,
    checker::{Checker, Event, GroupSpec},
};

use self::{
    action::{FixedResponse, Redirect},
    balance::{Groups, WeightedGroups},
    listener::State,
    log::AccessLog,
    metrics::L7Metrics,
    proxy::{Act, HeaderAttributes, Route, Shared},
    rules::RuleSet,
};

/// What the L7 tier serves of a config: its HTTP listeners, the L4 listeners served in user
/// space, and the target groups they forward to (the config's own types, not a second model).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct L7Config {
    pub target_groups: Vec<TargetGroup>,
    pub http_listeners: Vec<HttpListener>,
    /// TLS listeners, and TCP listeners whose group takes PROXY v2 ([`stream`]).
    pub stream_listeners: Vec<Listener>,
}

impl L7Config {
    /// The L7 part of a valid config.
    pub fn of(cfg: &Config) -> L7Config {
        let stream_listeners: Vec<Listener> = cfg
            .listeners
            .iter()
            .filter(|l| cfg.in_user_space(l))
            .cloned()
            .collect();
        let streamed =
            |g: &TargetGroup| stream_listeners.iter().any(|l| l.target_group() == g.name);
        L7Config {
            target_groups: cfg
                .target_groups
                .iter()
                .filter(|g| g.protocol.is_http() || streamed(g))
                .cloned()
                .collect(),
            http_listeners: cfg.http_listeners.clone(),
            stream_listeners,
        }
    }

    /// Whether there is anything to serve.
    pub fn is_empty(&self) -> bool {
        self.http_listeners.is_empty() && self.stream_listeners.is_empty()
    }
}

/// Loads every certificate of the HTTPS and TLS listeners, so that `xlb check` and a reload
/// refuse one that does not load (with [`Config::load_with`], which names its line).
pub fn check_certificates(cfg: &Config) -> Result<(), Refusal> {
    let http = cfg
        .http_listeners
        .iter()
        .map(|l| ("http_listeners", &l.certificates));
    let tls = cfg.listeners.iter().map(|l| ("listeners", &l.certificates));
    for (kind, (i, certificates)) in http
        .enumerate()
        .map(|(i, (k, c))| (k, (i, c)))
        .chain(tls.enumerate().map(|(i, (k, c))| (k, (i, c))))
    {
        for (j, c) in certificates.iter().enumerate() {
            tls::load_certificate(c).map_err(|e| {
                Refusal::new(format!("{kind}[{i}].certificates[{j}]"), e.to_string())
            })?;
        }
    }
    Ok(())
}

/// Why the L7 tier could not (re)configure.
#[derive(Debug, Error)]
pub enum L7Error {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS for the listener on {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: tls::TlsError,
    },
}

/// A running listener, whose state is `S`.
struct Running<S> {
    state: Arc<ArcSwap<S>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The running listeners, by address: HTTP and HTTPS ones, and the user-space proxy's.
#[derive(Default)]
struct Listeners {
    http: HashMap<SocketAddr, Running<State>>,
    stream: HashMap<SocketAddr, Running<stream::StreamState>>,
}

impl Listeners {
    /// Asks every listener to stop, and waits for them to drain.
    async fn stop(self) {
        for r in self.http.values() {
            let _ = r.stop.send(true);
        }
        for r in self.stream.values() {
            let _ = r.stop.send(true);
        }
        let tasks = self.http.into_values().map(|r| r.task);
        for task in tasks.chain(self.stream.into_values().map(|r| r.task)) {
            // A listener task only ends by itself; a panic in it has nothing left to clean up.
            let _ = task.await;
        }
    }
}

/// Serves the listeners of `config` until `shutdown` resolves, applying each config sent on the
/// channel. Access (and connection) log lines go to `access_log`; counts go to `metrics`. `checks` (from
/// [`Checker::new`]) runs the target groups' health checks; keep its [`view`](Checker::view) to
/// see their states. Fails only if the first config cannot be applied; later failures keep the
/// running config and are printed.
pub async fn serve(
    mut config: watch::Receiver<Arc<L7Config>>,
    access_log: AccessLog,
    metrics: Arc<L7Metrics>,
    checks: (Checker, mpsc::UnboundedReceiver<Event>),
    shutdown: impl Future<Output = ()>,
) -> Result<(), L7Error> {
    let (mut checker, mut health) = checks;
    let shared = Arc::new(Shared::new(access_log, metrics));
    let mut running = Listeners::default();
    let first = config.borrow_and_update().clone();
    apply(&first, &shared, &mut running).await?;
    checker.update(&health_checks(&first));
    tokio::pin!(shutdown);
    let mut updates = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(event) = health.recv() => {
                event.log();
                shared.counters.observe(&event, Instant::now());
            }
            changed = config.changed(), if updates => {
                if changed.is_err() {
                    // The sender is gone: no more reloads, keep serving until shutdown.
                    updates = false;
                    continue;
                }
                let next = config.borrow_and_update().clone();
                match apply(&next, &shared, &mut running).await {
                    Ok(()) => checker.update(&health_checks(&next)),
                    Err(e) => eprintln!("xlb: L7 reload refused, keeping the running listeners: {e}"),
                }
            }
        }
    }
    running.stop().await;
    Ok(())
}

/// Compiles `cfg`, then binds new listeners, swaps the state of kept ones and stops removed ones.
/// Nothing changes unless everything compiles and binds. A listener that changes kind (HTTP to
/// TLS) on the same address cannot bind while the old one holds it: the reload is refused.
async fn apply(
    cfg: &L7Config,
    shared: &Arc<Shared>,
    running: &mut Listeners,
) -> Result<(), L7Error> {
    let mut http = Vec::new();
    for l in &cfg.http_listeners {
        let addr = l.addr();
        let tls = match l.protocol {
            ListenerProtocol::Http => None,
            ListenerProtocol::Https => Some(
                tls::server_config(&l.certificates, SslPolicy::default(), tls::HTTPS_ALPN)
                    .map_err(|source| L7Error::Tls { addr, source })?,
            ),
        };
        http.push((l, addr, tls));
    }
    let mut streams = Vec::new();
    for l in &cfg.stream_listeners {
        let addr = l.addr();
        let tls = match l.protocol {
            Protocol::Tls => {
                let policy = l.ssl_policy.unwrap_or_default();
                let alpn = l.alpn_policy.unwrap_or_default().protocols();
                Some(
                    tls::server_config(&l.certificates, policy, alpn)
                        .map_err(|source| L7Error::Tls { addr, source })?,
                )
            }
            _ => None,
        };
        streams.push((l, addr, tls));
    }
    let mut bound = HashMap::new();
    let new_http = http
        .iter()
        .map(|(_, a, _)| (a, running.http.contains_key(a)));
    let new_streams = streams
        .iter()
        .map(|(_, a, _)| (a, running.stream.contains_key(a)));
    for (addr, _) in new_http.chain(new_streams).filter(|(_, up)| !up) {
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|source| L7Error::Bind {
                addr: *addr,
                source,
            })?;
        bound.insert(*addr, socket);
    }
    // Targets that left finish their requests in flight, within their group's deregistration
    // delay (the longest, for a target of several groups).
    let mut origins = HashMap::new();
    for tg in &cfg.target_groups {
        for t in &tg.targets {
            let delay = origins.entry((tg.protocol, tg.addr(t))).or_default();
            *delay = tg.deregistration_delay().max(*delay);
        }
    }
    shared.upstream.retain(origins);
    // Only now that nothing can fail: compiling forgets the state of targets that left.
    let groups = balance::compile(&cfg.target_groups, &shared.counters, Instant::now());
    let http = http.into_iter().map(|(l, addr, tls)| {
        let route = Arc::new(compile_route(l, addr, &groups, &shared.metrics));
        (addr, State { route, tls })
    });
    place(
        &mut running.http,
        http,
        &mut bound,
        |socket, state, stop| tokio::spawn(listener::run(socket, state, shared.clone(), stop)),
    );
    let streams = streams.into_iter().filter_map(|(l, addr, tls)| {
        // The config names only groups it has (validated): both lookups succeed.
        let tg = cfg
            .target_groups
            .iter()
            .find(|g| g.name == l.target_group())?;
        let group = groups.get(&tg.name)?.clone();
        Some((
            addr,
            stream::StreamState::new(l, tg, group, tls, &shared.metrics),
        ))
    });
    place(
        &mut running.stream,
        streams,
        &mut bound,
        |socket, state, stop| tokio::spawn(stream::run(socket, state, shared.clone(), stop)),
    );
    Ok(())
}

/// Swaps `states` into the listeners of `running` that have their address, starts the others on
/// their `bound` sockets with `spawn`, and stops the listeners that have no state any more.
fn place<S>(
    running: &mut HashMap<SocketAddr, Running<S>>,
    states: impl Iterator<Item = (SocketAddr, S)>,
    bound: &mut HashMap<SocketAddr, TcpListener>,
    spawn: impl Fn(TcpListener, Arc<ArcSwap<S>>, watch::Receiver<bool>) -> JoinHandle<()>,
) {
    let mut keep = Vec::new();
    for (addr, state) in states {
        keep.push(addr);
        match (running.get(&addr), bound.remove(&addr)) {
            (Some(r), _) => r.state.store(Arc::new(state)),
            (None, Some(socket)) => {
                let state = Arc::new(ArcSwap::from_pointee(state));
                let (stop, stopped) = watch::channel(false);
                let task = spawn(socket, state.clone(), stopped);
                running.insert(addr, Running { state, stop, task });
            }
            (None, None) => {}
        }
    }
    running.retain(|addr, r| {
        if keep.contains(addr) {
            return true;
        }
        let _ = r.stop.send(true);
        false
    });
}

/// The health checks of `cfg`'s target groups that have one.
fn health_checks(cfg: &L7Config) -> Vec<GroupSpec> {
    cfg.target_groups
        .iter()
        .filter_map(|tg| {
            Some(GroupSpec {
                name: tg.name.clone(),
                check: CheckSpec::new(tg.health_check.as_ref()?),
                targets: tg.targets.iter().map(|t| tg.addr(t)).collect(),
                deregistration_delay: Duration::ZERO,
            })
        })
        .collect()
}

/// A listener's rules and actions, compiled against the config's groups, with their metrics.
fn compile_route(
    l: &HttpListener,
    local: SocketAddr,
    groups: &Groups,
    metrics: &L7Metrics,
) -> Route {
    let idle_timeout = l.idle_timeout();
    let rules = l
        .rules
        .iter()
        .filter_map(|r| {
            let action = r.actions.first()?;
            Some((
                r.priority,
                r.conditions.clone(),
                compile_action(action, groups),
            ))
        })
        .collect::<Vec<_>>();
    let rule_groups = l
        .rules
        .iter()
        .filter_map(|r| Some((r.priority, forwarded_groups(r.actions.first()?))))
        .chain([(0, forwarded_groups(&l.default_action))]);
    Route {
        local,
        protocol: l.protocol,
        rules: RuleSet::new(rules, compile_action(&l.default_action, groups)),
        idle_timeout,
        connection_logs: l.enabled("connection_logs.enabled"),
        desync_mode: l.desync_mitigation_mode(),
        forwarded_port: HeaderValue::from(local.port()),
        headers: HeaderAttributes {
            xff: l.xff_mode(),
            xff_client_port: l.enabled("routing.http.xff_client_port.enabled"),
            preserve_host: l.enabled("routing.http.preserve_host_header.enabled"),
            drop_invalid: l.enabled("routing.http.drop_invalid_header_fields.enabled"),
            tls_headers: l.enabled("routing.http.x_amzn_tls_version_and_cipher_suite.enabled"),
        },
        metrics: metrics.route(&local.to_string(), rule_groups),
    }
}

/// The target groups a forward action names, with their weights (none for other actions).
fn forward_targets(a: &HttpAction) -> Vec<(&str, u32)> {
    match a {
        HttpAction::Forward {
            target_group: Some(one),
            ..
        } => vec![(one.as_str(), 1)],
        HttpAction::Forward { target_groups, .. } => target_groups
            .iter()
            .map(|g| (g.name.as_str(), g.weight))
            .collect(),
        _ => Vec::new(),
    }
}

fn forwarded_groups(a: &HttpAction) -> Vec<&str> {
    forward_targets(a).into_iter().map(|(g, _)| g).collect()
}

fn compile_action(a: &HttpAction, groups: &Groups) -> Act {
    match a {
        HttpAction::Forward { stickiness, .. } => {
            let weighted = forward_targets(a)
                .into_iter()
                .filter_map(|(name, w)| groups.get(name).map(|g| (g.clone(), w)))
                .collect();
            let stickiness = stickiness
                .as_ref()
                .filter(|s| s.enabled)
                .map(|s| Duration::from_secs(u64::from(s.duration_seconds)));
            Act::Forward(WeightedGroups::new(weighted, stickiness))
        }
        HttpAction::Redirect {
            protocol,
            host,
            port,
            path,
            query,
            status_code,
        } => Act::Redirect(Redirect::new(
            protocol,
            host,
            port,
            path,
            query,
            *status_code,
        )),
        HttpAction::FixedResponse {
            status_code,
            content_type,
            message_body,
        } => Act::Fixed(FixedResponse::new(
            *status_code,
            content_type.as_deref(),
            message_body.as_deref(),
        )),
    }
}
