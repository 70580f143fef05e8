//! `xlb`: the agent and its CLI. This file parses the command line and calls into the library.
//!
//! Exit codes: 0 success, 1 error (the message names what failed), 2 bad usage.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use xlb::{
    agent::{Agent, Registration},
    api::{self, Request, Response},
    balancer::Balancer,
    config::Config,
    dataplane::{AttachMode, Dataplane, Program, Sizes},
};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "An L4 load balancer in XDP, configured in the AWS ELB vocabulary"
)]
struct Cli {
    /// The agent's control socket (`node.api_socket` in its config).
    #[arg(long, global = true, default_value = "/run/xlb/xlb.sock")]
    socket: PathBuf,
    /// On errors, say more: the kernel verifier's whole log when it refuses a program.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load (or re-open) the pinned datapath, attach it, apply the config and serve the control
    /// API until stopped. SIGHUP reloads the config. The datapath stays attached when the agent
    /// exits: a restart drops no packet and moves no flow.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Print the counters every this many seconds (0: only at exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
    },
    /// Validate a config file without touching the system.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the running agent: config, uptime, drift from the file.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List, register or deregister targets of a target group.
    Targets {
        #[command(subcommand)]
        action: TargetsAction,
    },
    /// The datapath's counters: per listener, per target, per reason.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// A live view of traffic per listener and target (packets and bits per second).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Re-read the config file (same as SIGHUP); a bad file is refused and the running config stays.
    Reload,
    /// Stop the agent. With `--detach`, also remove the datapath (unpin maps and link).
    Stop {
        #[arg(long)]
        detach: bool,
        /// Where the datapath is pinned (`node.pin_dir`).
        #[arg(long, default_value = "/sys/fs/bpf/xlb")]
        pin_dir: PathBuf,
    },
    /// Attach a helper program to an interface and pin its link (it stays after exit; remove the
    /// pin to detach). `decap` goes on targets of tunnel listeners; `pass` on veth peers.
    Attach {
        #[arg(long, value_enum)]
        program: HelperProgram,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: PathBuf,
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
    },
}

#[derive(Subcommand)]
enum TargetsAction {
    /// Every target with its state, weight, zone and flows.
    List {
        #[arg(long)]
        target_group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Add a target to a group (kept across agent restarts).
    Register {
        #[arg(long)]
        target_group: String,
        #[arg(long)]
        id: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        mac: Option<String>,
    },
    /// Take a target out of a group: no new flows at once, existing ones until the group's
    /// deregistration delay.
    Deregister {
        #[arg(long)]
        target_group: String,
        #[arg(long)]
        id: IpAddr,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HelperProgram {
    Decap,
    Pass,
}

// The L7 tier allocates and frees small buffers per request; mimalloc's per-thread free lists
// serve them faster than glibc's malloc (see the README's L7 benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            match xlb::dataplane::verifier_log(&e) {
                Some(log) if verbose => eprintln!("xlb: the verifier's log:\n{log}"),
                Some(_) => eprintln!("xlb: run with --verbose for the verifier's log"),
                None => {}
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket;
    match cli.command {
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            println!(
                "{}: ok ({} listeners, {} target groups)",
                config.display(),
                cfg.listeners.len(),
                cfg.target_groups.len()
            );
            Ok(())
        }
        Command::Attach {
            program,
            iface,
            pin,
            xdp_mode,
        } => {
            let mut dp = Dataplane::load(Sizes::MINIMAL)?;
            let p = match program {
                HelperProgram::Decap => {
                    for addr in host_addresses()? {
                        dp.add_decap_addr(&xlb::balancer::addr_bytes(addr).1)?;
                    }
                    Program::Decap
                }
                HelperProgram::Pass => Program::Pass,
            };
            dp.attach_pinned(p, &iface, xdp_mode, &pin)?;
            Ok(())
        }
        Command::Run {
            config,
            stats_interval,
        } => serve(config, stats_interval),
        Command::Status { json } => match api::call(&socket, &Request::Status)? {
            Response::Status(s) if json => print_json(&s),
            Response::Status(s) => {
                println!("config      {}", s.config);
                println!("interface   {}", s.interface);
                println!("uptime      {} s", s.uptime_seconds);
                println!("listeners   {}", s.listeners);
                println!("groups      {}", s.target_groups);
                if s.drift.is_empty() {
                    println!("drift       none: the datapath runs the file's targets");
                }
                for d in s.drift {
                    println!("drift       {d}");
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Stats { json } => match api::call(&socket, &Request::Stats)? {
            Response::Stats {
                reasons, listeners, ..
            } if json => {
                print_json(&serde_json::json!({ "listeners": listeners, "reasons": reasons }))
            }
            Response::Stats { table, .. } => {
                print!("{table}");
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Reload => done(api::call(&socket, &Request::Reload)?),
        Command::Top { interval, count } => {
            top(&socket, Duration::from_secs(interval.max(1)), count)
        }
        Command::Stop { detach, pin_dir } => {
            match api::call(&socket, &Request::Stop) {
                Ok(r) => done(r)?,
                Err(e) if detach => eprintln!("xlb: no agent to stop ({e:#})"),
                Err(e) => return Err(e),
            }
            if detach {
                detach_pins(&pin_dir)?;
                println!("detached: removed {}", pin_dir.display());
            }
            Ok(())
        }
        Command::Targets { action } => match action {
            TargetsAction::List { target_group, json } => {
                match api::call(&socket, &Request::Targets { target_group })? {
                    Response::Targets { targets } if json => print_json(&targets),
                    Response::Targets { targets } => {
                        println!(
                            "{:<12} {:<28} {:>6} {:<8} {:<12} {:<32} {:>8} {:<6}",
                            "group",
                            "target",
                            "weight",
                            "zone",
                            "state",
                            "reason",
                            "flows",
                            "source"
                        );
                        for t in targets {
                            println!(
                                "{:<12} {:<28} {:>6} {:<8} {:<12} {:<32} {:>8} {:<6}",
                                t.target_group,
                                t.target(),
                                t.weight,
                                t.zone.unwrap_or_else(|| "-".into()),
                                t.state,
                                t.reason.unwrap_or_else(|| "-".into()),
                                t.flows,
                                t.source
                            );
                        }
                        Ok(())
                    }
                    other => unexpected(other),
                }
            }
            TargetsAction::Register {
                target_group,
                id,
                weight,
                zone,
                mac,
            } => {
                let r = Registration {
                    target_group,
                    id,
                    weight,
                    zone,
                    mac,
                };
                done(api::call(&socket, &Request::Register(r))?)
            }
            TargetsAction::Deregister { target_group, id } => done(api::call(
                &socket,
                &Request::Deregister { target_group, id },
            )?),
        },
    }
}

fn done(r: Response) -> Result<()> {
    match r {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        other => unexpected(other),
    }
}

fn unexpected(r: Response) -> Result<()> {
    match r {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `xlb top`: polls the agent's counters and prints rates, redrawing the terminal.
fn top(socket: &Path, every: Duration, count: Option<u64>) -> Result<()> {
    let read = || -> Result<Vec<api::ListenerStats>> {
        match api::call(socket, &Request::Stats)? {
            Response::Stats { listeners, .. } => Ok(listeners),
            other => unexpected(other).map(|()| Vec::new()),
        }
    };
    let mut before = read()?;
    let mut last = Instant::now();
    for _ in 0..count.unwrap_or(u64::MAX) {
        std::thread::sleep(every);
        let now = read()?;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        // Clear the screen and home the cursor (ANSI), then one line per listener and target.
        print!("\x1b[2J\x1b[H");
        println!(
            "xlb top: every {}s  {:<34} {:>12} {:>14} {:>12}",
            every.as_secs(),
            "listener / target",
            "packets/s",
            "bits/s",
            "new flows/s"
        );
        for (l, b) in now
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&now[0])))
        {
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            println!(
                "{:<50} {:>12.0} {:>14.0} {:>12.0}",
                l.listener,
                rate(l.packets, b.packets),
                rate(l.bytes, b.bytes) * 8.0,
                rate(l.new_flows, b.new_flows)
            );
            for (t, bt) in l.targets.iter().zip(b.targets.iter()) {
                println!(
                    "  {:<48} {:>12.0} {:>14.0}",
                    t.0,
                    rate(t.1, bt.1),
                    rate(t.2, bt.2) * 8.0
                );
            }
        }
        before = now;
    }
    Ok(())
}

/// Removes the pinned maps and link: the XDP program detaches once no process holds it.
fn detach_pins(pin_dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", pin_dir.display())),
    }
}

/// The agent: attach, apply, serve the API, reload on SIGHUP, end drains, print counters.
fn serve(path: PathBuf, stats_interval: u64) -> Result<()> {
    // Structured logs of every state change, on stderr; stdout keeps the human reports.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cfg = Config::load(&path)?;
    let sizes = Sizes {
        flows: cfg.node.flow_table_size,
        vips: lb_common::MAX_VIPS,
    };
    let pins = cfg.node.pin_dir.clone();
    let dp = Dataplane::load_pinned(sizes, Some(&pins.join("maps")))?;
    let lb = Balancer::new(dp)?;
    let metrics_address = cfg.node.metrics_address;
    let (iface, mode, socket) = (
        cfg.node.interface.clone(),
        cfg.node.xdp_mode,
        cfg.node.api_socket.clone(),
    );
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
    let (mut agent, mut health) = Agent::start(path, cfg, lb)?;
    // Tables first, then the program: a restarted agent swaps its program into the running link.
    agent
        .lb
        .dataplane()
        .attach_or_replace(Program::Lb, &iface, mode, &pins.join("link"))?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let api = api::bind(&socket)?;
        // The L7 tier, when the config has HTTP listeners; reloads reach it through `l7_config`.
        let (l7_config, l7_rx) = tokio::sync::watch::channel(std::sync::Arc::new(agent.l7()));
        let (l7_stop, l7_stopped) = tokio::sync::oneshot::channel::<()>();
        let (log, lines) = xlb::l7::log::AccessLog::new(ACCESS_LOG_BYTES);
        let access_log = std::thread::spawn({
            let lines = lines.clone();
            move || write_access_log(&lines)
        });
        let l7_metrics = std::sync::Arc::new(xlb::metrics::L7Metrics::default());
        let l7 = (!agent.file.http_listeners.is_empty()).then(|| {
            let checks = xlb::health::checker::Checker::new();
            // `xlb targets list` shows the L7 tier's health checks with the agent's.
            agent.l7_health = Some(checks.0.view());
            tokio::spawn(xlb::l7::serve(l7_rx, log, l7_metrics.clone(), checks, async {
                let _ = l7_stopped.await;
            }))
        });
        let metrics = match metrics_address {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind metrics on {addr}"))?),
            None => None,
        };
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let period = Duration::from_secs(if stats_interval == 0 { 3600 } else { stats_interval });
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        println!("xlb: serving {} listeners on {iface}; API on {}", agent.file.listeners.len(), socket.display());
        loop {
            let drain_wait = agent.next_drain().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tick.tick(), if stats_interval > 0 => print!("{}", xlb::stats::table(&mut agent.lb)?),
                conn = api.accept() => {
                    let (stream, _) = conn?;
                    match api::serve_conn(&mut agent, stream).await {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "API connection"),
                    }
                }
                conn = async { metrics.as_ref().expect("guarded").accept().await }, if metrics.is_some() => {
                    let (stream, _) = conn?;
                    let body = xlb::metrics::render(&mut agent, &l7_metrics)?;
                    tokio::spawn(xlb::metrics::serve(stream, body));
                }
                Some(event) = health.recv() => {
                    event.log();
                    // One rebuild for a burst of changes.
                    while health.try_recv().is_ok() {}
                    agent.apply()?;
                }
                _ = tokio::time::sleep(drain_wait) => {
                    for (g, id) in agent.expire_drains(Instant::now())? {
                        tracing::info!(target_group = %g, target = %id, "target finished draining");
                    }
                }
                _ = hup.recv() => match agent.reload() {
                    Ok(()) => tracing::info!(config = %agent.path.display(), "reloaded"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "reload refused, keeping the running config"),
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
                    *running = std::sync::Arc::new(new);
                }
                changed
            });
        }
        let _ = std::fs::remove_file(&socket);
        if let Some(task) = l7 {
            let _ = l7_stop.send(());
            task.await??;
        }
        // The L7 tier is gone: the writer ends with the last line.
        lines.close();
        if access_log.join().is_err() {
            tracing::warn!("the access log writer panicked");
        }
        anyhow::Ok(())
    })?;
    print!("{}", xlb::stats::table(&mut agent.lb)?);
    println!("xlb: stopped; the datapath stays attached (`xlb stop --detach` removes it)");
    Ok(())
}

/// How long the access log writer gathers lines after the first: under load, one wake-up and one
/// write per this many milliseconds rather than per request.
const ACCESS_LOG_BATCH: Duration = Duration::from_millis(5);
/// Bytes of lines the access log holds before the L7 tier drops them: a batch at a few 100k
/// requests/s.
const ACCESS_LOG_BYTES: usize = 4 << 20;

/// Writes access log lines to stdout, in batches, until the log closes. A thread of its own, so
/// requests never wake the agent's loop and a stdout that blocks never holds up a runtime
/// worker: the buffer fills, and the L7 tier then drops lines rather than wait (best effort, as
/// ALB's log).
fn write_access_log(lines: &xlb::l7::log::Lines) {
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

/// Every address of this host (network namespace), for the decap program.
fn host_addresses() -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}
