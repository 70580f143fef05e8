//! `xlb run`: the agent's tasks around one loop that owns its state.
//!
//! - The **state loop** ([`run`]'s `select!`) owns the [`Agent`]: it takes commands, health
//!   events, signals, the end of drains and the stats ticks, one at a time. Each is quick (map
//!   updates, no client I/O), so none waits long for another.
//! - The **API server** and the **metrics server** accept connections and serve each in a task of
//!   its own; they reach the state through [`Command`]s with a reply channel. A slow or stuck
//!   client holds only its own task. An accept that fails is logged and retried.
//! - The **L7 tier** runs in its own task, with or without listeners, and gets each new config
//!   on a `watch` channel; the **BGP announcer** ([`bgp`]) gets the VIPs the node can serve the same way.
//! - The **access log** has a thread of its own, so a stdout that blocks never holds a runtime
//!   worker.
//!
//! Nothing a client sends, and no failed apply, ends the agent: a change that does not apply is
//! refused and logged, and the datapath keeps what it runs.
//!
//! Under systemd (`Type=notify`, the Debian package's unit) the agent tells its state through the
//! sd-notify protocol ([`notify`]): `READY=1` once the datapath is attached, the config applied and
//! the API bound; `RELOADING=1` then `READY=1` around each reload; `STOPPING=1` when it stops.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use lb_l7::{log::AccessLog, metrics::L7Metrics};
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use super::{Agent, bgp};
use crate::{
    api::{self, Request, Response},
    balancer::Balancer,
    dataplane::{Attached, Dataplane, Program, Sizes},
    metrics,
    stats::Snapshot,
};

/// How long the access log writer gathers lines after the first: under load, one wake-up and one
/// write per this many milliseconds rather than per request.
const ACCESS_LOG_BATCH: Duration = Duration::from_millis(5);
/// Bytes of lines the access log holds before the L7 tier drops them: a batch at a few 100k
/// requests/s.
const ACCESS_LOG_BYTES: usize = 4 << 20;
/// How long a stop waits for BIRD to take the withdrawal of the VIPs.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands waiting for the state loop; API and metrics clients wait their turn beyond it.
const COMMANDS: usize = 64;

/// What a task asks of the state loop.
enum Command {
    Api(Request, oneshot::Sender<Response>),
    /// A metrics scrape: the text, or nothing if the counters cannot be read.
    Scrape(oneshot::Sender<Option<metrics::Scrape>>),
}

/// `xlb run`: loads (or re-opens) the pinned datapath, attaches it, applies the config at `path`
/// and serves until SIGTERM, SIGINT or `xlb stop`. The datapath stays attached when it returns.
pub fn run(path: PathBuf, stats_interval: Option<Duration>) -> Result<()> {
    // Structured logs of every state change, on stderr; stdout keeps the human reports.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cfg = super::load_config(&path)?;
    let node = cfg.node.clone();
    let dp = Dataplane::load_pinned(Sizes::of(&node), Some(&node.pin_dir.join("maps")))?;
    let lb = Balancer::new(dp)?;
    // Multi-threaded: the L7 tier's connections use every core.
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    // A task woken by another runs after those already queued, not next: the writes of many
    // connections then leave together, and the clients and targets on other cores wake once
    // for several rather than once per request (4 times fewer context switches of wrk and of
    // the backend in `cargo xtask bench l7`; requests/s +5 % on h1 and tls, +17 % on h2).
    #[cfg(tokio_unstable)]
    rt.disable_lifo_slot();
    let rt = rt.build()?;
    // The health checks are tasks of this runtime.
    let _runtime = rt.enter();
    let (mut agent, health) = Agent::start(path, cfg, lb)?;
    // Tables first, then the program: a restarted agent swaps its program into the running link.
    let link = node.pin_dir.join("link");
    let attached = agent.lb.dataplane().attach_or_replace(
        Program::Lb,
        &node.interface,
        node.xdp_mode.into(),
        &link,
    )?;
    if let Attached::Moved { from } = attached {
        let was = match from {
            Some(index) => format!("interface index {index}"),
            None => "no interface (the kernel severed it: its interface was deleted)".to_owned(),
        };
        tracing::warn!(
            link = %link.display(),
            interface = %node.interface,
            "the pinned XDP link held {was}; a new link attaches the balancer to {}",
            node.interface
        );
    }
    rt.block_on(serve(&mut agent, health, stats_interval))?;
    match Snapshot::read(&mut agent.lb) {
        Ok(s) => print!("{}", s.table()),
        Err(e) => tracing::warn!(error = %e, "read the counters"),
    }
    println!("xlb: stopped; the datapath stays attached (`xlb stop --detach` removes it)");
    Ok(())
}

/// The tasks and the state loop, until a stop.
async fn serve(
    agent: &mut Agent,
    mut health: mpsc::UnboundedReceiver<lb_health::checker::Event>,
    stats_interval: Option<Duration>,
) -> Result<()> {
    let node = agent.file.node.clone();
    let (commands, mut rx) = mpsc::channel::<Command>(COMMANDS);
    let api = api::bind(&node.api_socket)?;
    let api_task = tokio::spawn(serve_api(api, commands.clone()));
    let (log, lines) = AccessLog::new(ACCESS_LOG_BYTES);
    let access_log = std::thread::spawn({
        let lines = lines.clone();
        move || write_access_log(&lines)
    });
    let l7_metrics = Arc::new(L7Metrics::default());
    let metrics_task = match node.metrics_address {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind metrics on {addr}"))?;
            let (commands, l7) = (commands.clone(), l7_metrics.clone());
            Some(tokio::spawn(metrics::serve(listener, move || {
                scrape(commands.clone(), l7.clone())
            })))
        }
        None => None,
    };
    // The L7 tier: HTTP listeners and listeners served in user space (TLS, PROXY v2). It runs
    // even with none, idle, so that a reload that brings the first binds it; reloads reach it
    // through `l7_config`.
    let (l7_config, l7_rx) = watch::channel(Arc::new(agent.l7()));
    let (l7_stop, l7_stopped) = oneshot::channel::<()>();
    let checks = lb_health::checker::Checker::new();
    // `xlb targets list` shows the L7 tier's health checks with the agent's.
    agent.l7_health = Some(checks.0.view());
    let l7 = tokio::spawn(lb_l7::serve(l7_rx, log, l7_metrics, checks, async {
        let _ = l7_stopped.await;
    }));
    // The VIPs this node can serve, announced through BIRD while it can; only with [node.bgp],
    // so that a node without it does not work them out on every turn of the loop.
    let mut bgp = node.bgp.clone().map(|bgp| {
        let (vips, announced) = watch::channel(agent.servable_vips());
        (vips, tokio::spawn(bgp::announcer(bgp, announced)))
    });
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(stats_interval.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    println!(
        "xlb: serving {} listeners on {}; API on {}",
        agent.file.listeners.len(),
        node.interface,
        node.api_socket.display()
    );
    // Attached, applied, and the API answers: `systemctl start` returns now.
    notify(&[NotifyState::Ready]);
    // SNAT listeners' ports are given back by a sweep, at a deadline kept across the loop's
    // turns (a sleep made anew on every turn would never end while scrapes come faster).
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        let drain_wait = agent.next_drain().unwrap_or(Duration::from_secs(3600));
        // A reload may bring the first SNAT listener, or take the last.
        let sweep_every = super::snat::interval(&agent.file);
        tokio::select! {
            Some(cmd) = rx.recv() => match cmd {
                Command::Api(req, reply) => {
                    let (resp, stop) = match req {
                        Request::Reload => (reload(agent), false),
                        req => agent.answer(req),
                    };
                    let _ = reply.send(resp);
                    if stop {
                        break;
                    }
                }
                Command::Scrape(reply) => {
                    let scrape = agent.scrape().inspect_err(|e| {
                        tracing::warn!(error = format!("{e:#}"), "metrics: read the counters");
                    });
                    let _ = reply.send(scrape.ok());
                }
            },
            Some(event) = health.recv() => {
                event.log();
                // One rebuild for a burst of changes.
                while let Ok(event) = health.try_recv() {
                    event.log();
                }
                if let Err(e) = agent.apply() {
                    tracing::error!(error = format!("{e:#}"), "apply after a health change failed; the datapath keeps what it runs");
                }
            }
            _ = tokio::time::sleep(drain_wait) => match agent.expire_drains(std::time::Instant::now()) {
                Ok(done) => {
                    for (g, id) in done {
                        tracing::info!(target_group = %g, target = %id, "target finished draining");
                    }
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "end of a drain: apply failed; the datapath keeps what it runs"),
            },
            _ = hup.recv() => {
                let _ = reload(agent);
            }
            _ = tokio::time::sleep_until(next_sweep), if sweep_every.is_some() => {
                next_sweep = tokio::time::Instant::now() + sweep_every.unwrap_or_default();
                if let Err(e) = super::snat::sweep(&mut agent.lb, &agent.file, super::snat::now_ns()) {
                    tracing::warn!(error = format!("{e:#}"), "SNAT sweep");
                }
            }
            _ = tick.tick(), if stats_interval.is_some() => match Snapshot::read(&mut agent.lb) {
                Ok(s) => print!("{}", s.table()),
                Err(e) => tracing::warn!(error = %e, "read the counters"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // A reload, a registration or a drain (SIGHUP, the API, a drain's end) may have
        // changed the HTTP listeners or their targets: swap them in.
        l7_config.send_if_modified(|running| {
            let new = agent.l7();
            let changed = **running != new;
            if changed {
                *running = Arc::new(new);
            }
            changed
        });
        // Any of those, or a health change, may have changed what this node can serve.
        if let Some((vips, _)) = &bgp {
            vips.send_if_modified(|announced| {
                let now = agent.servable_vips();
                let changed = *announced != now;
                if changed {
                    *announced = now;
                }
                changed
            });
        }
    }
    notify(&[NotifyState::Stopping]);
    // A stopped agent no longer follows its targets' health: withdraw every VIP first (the
    // datapath stays attached for the flows the routers still send).
    if let Some((vips, task)) = bgp.take() {
        vips.send_replace(Default::default());
        drop(vips);
        if tokio::time::timeout(WITHDRAW_TIMEOUT, task).await.is_err() {
            tracing::warn!("BIRD did not take the withdrawal in time; its routes may stay");
        }
    }
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&node.api_socket);
    let _ = l7_stop.send(());
    l7.await??;
    // The L7 tier is gone: the writer ends with the last line.
    lines.close();
    if access_log.join().is_err() {
        tracing::warn!("the access log writer panicked");
    }
    Ok(())
}

/// A reload (SIGHUP or the API's), told to systemd: `RELOADING=1` with the time it starts, as
/// `Type=notify-reload` wants it, then `READY=1` with the outcome as the unit's status line.
fn reload(agent: &mut Agent) -> Response {
    let mut reloading = vec![NotifyState::Reloading];
    reloading.extend(NotifyState::monotonic_usec_now().ok());
    notify(&reloading);
    let (resp, _) = agent.answer(Request::Reload);
    let status = match &resp {
        Response::Error { message } => {
            format!("reload refused, the running config stays: {message}")
        }
        _ => format!("reloaded {}", agent.path.display()),
    };
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    resp
}

/// Tells systemd the agent's state when it runs the agent (`NOTIFY_SOCKET` is set), and does
/// nothing otherwise. A failed send is logged, not fatal: the datapath does not depend on it.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify: tell systemd the agent's state");
    }
}

/// Accepts API connections, each served in a task of its own.
async fn serve_api(api: tokio::net::UnixListener, commands: mpsc::Sender<Command>) {
    loop {
        let stream = match api.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "API: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let served = api::serve_conn(stream, |req| async move {
                let (reply, answer) = oneshot::channel();
                if commands.send(Command::Api(req, reply)).await.is_err() {
                    return Response::Error {
                        message: "the agent is stopping".into(),
                    };
                }
                answer.await.unwrap_or_else(|_| Response::Error {
                    message: "the agent is stopping".into(),
                })
            });
            if let Err(e) = served.await {
                tracing::warn!(error = format!("{e:#}"), "API connection");
            }
        });
    }
}

/// One scrape's text: the state loop reads the counters, this task renders them.
async fn scrape(commands: mpsc::Sender<Command>, l7: Arc<L7Metrics>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    commands.send(Command::Scrape(reply)).await.ok()?;
    let scrape = answer.await.ok()??;
    metrics::render(&scrape, &l7).ok()
}

/// Writes access (and connection) log lines to stdout, in batches, until the log closes. A thread of its own, so
/// requests never wake the agent's loop and a stdout that blocks never holds up a runtime
/// worker: the buffer fills, and the L7 tier then drops lines rather than wait (best effort, as
/// ALB's log).
fn write_access_log(lines: &lb_l7::log::Lines) {
    use std::io::Write as _;
    let mut batch = String::new();
    while lines.next_batch(&mut batch, ACCESS_LOG_BATCH) {
        if std::io::stdout()
            .lock()
            .write_all(batch.as_bytes())
            .is_err()
        {
            return;
        }
    }
}
