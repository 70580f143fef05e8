//! The CLI's commands: they talk to a running agent over the control API, check a config, or
//! attach a helper program. Each prints what an operator reads; `--json` prints the API's data.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    api::{self, ListenerStats, Registration, Request, Response, TargetRow},
    dataplane::{AttachMode, Dataplane, Program, Sizes},
};

/// How reports print (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The process's `--output`, for what every command prints the same way (confirmations).
static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// Sets `--output` for this process (once, at start).
pub fn set_output(o: Output) {
    let _ = OUTPUT.set(o);
}

fn json_output() -> bool {
    OUTPUT.get() == Some(&Output::Json)
}

/// `xlb check`: validates a config without touching the system (certificates are loaded).
pub fn check(config: &Path) -> Result<()> {
    let cfg = crate::agent::load_config(config)?;
    // What the datapath's maps will take: most of it is decided by [node]'s sizes.
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("read the possible CPUs")?;
    let maps = Sizes::of(&cfg.node).memory(cpus)?;
    if json_output() {
        let bytes: serde_json::Map<String, serde_json::Value> = maps
            .iter()
            .map(|(name, b)| (name.clone(), (*b).into()))
            .collect();
        return print_json(&serde_json::json!({
            "config": config.display().to_string(),
            "listeners": cfg.listeners.len(),
            "http_listeners": cfg.http_listeners.len(),
            "target_groups": cfg.target_groups.len(),
            "cpus": cpus,
            "map_bytes": bytes,
        }));
    }
    println!(
        "{}: ok ({} listeners, {} http listeners, {} target groups)",
        config.display(),
        cfg.listeners.len(),
        cfg.http_listeners.len(),
        cfg.target_groups.len()
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let total: u64 = maps.iter().map(|(_, b)| b).sum();
    let n = &cfg.node;
    println!(
        "datapath memory: {:.1} MiB for {} flows, {} listeners, {} targets on {cpus} CPUs",
        mib(total),
        n.flow_table_size,
        n.max_listeners,
        n.max_targets
    );
    for (name, bytes) in maps.iter().take(4) {
        println!("  {name:<14} {:>9.1} MiB", mib(*bytes));
    }
    Ok(())
}

/// The programs `xlb attach` puts on an interface.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Helper {
    /// Removes xlb's tunnels on targets.
    Decap,
    /// Passes every packet: for veth peers of interfaces that send with `XDP_TX`.
    Pass,
}

/// `xlb attach`: loads only the `helper` program, attaches it to `iface` and pins its link at
/// `pin`, so it stays after this process.
pub fn attach(helper: Helper, iface: &str, pin: &Path, mode: AttachMode) -> Result<()> {
    let mut dp = Dataplane::load(Sizes::MINIMAL)?;
    let program = match helper {
        Helper::Decap => {
            for (_, addr) in crate::agent::host::addresses()? {
                dp.add_decap_addr(&crate::balancer::addr_bytes(addr).1)?;
            }
            Program::Decap
        }
        Helper::Pass => Program::Pass,
    };
    dp.attach_pinned(program, iface, mode, pin)?;
    Ok(())
}

/// `xlb status`.
pub fn status(socket: &Path, json: bool) -> Result<()> {
    match api::call(socket, &Request::Status)? {
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
            for w in s.warnings {
                println!("warning     {w}");
            }
            Ok(())
        }
        other => unexpected(other),
    }
}

/// `xlb stats`.
pub fn stats(socket: &Path, json: bool) -> Result<()> {
    match api::call(socket, &Request::Stats)? {
        Response::Stats {
            reasons, listeners, ..
        } if json => print_json(&serde_json::json!({ "listeners": listeners, "reasons": reasons })),
        Response::Stats { table, .. } => {
            print!("{table}");
            Ok(())
        }
        other => unexpected(other),
    }
}

/// `xlb targets list`.
pub fn targets(socket: &Path, target_group: Option<String>, json: bool) -> Result<()> {
    let targets = match api::call(socket, &Request::Targets { target_group })? {
        Response::Targets { targets } => targets,
        other => return unexpected(other),
    };
    if json {
        return print_json(&targets);
    }
    let row = |c: [&str; 8]| {
        println!(
            "{:<12} {:<28} {:>6} {:<8} {:<12} {:<32} {:>8} {:<6}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        );
    };
    row([
        "group", "target", "weight", "zone", "state", "reason", "flows", "source",
    ]);
    for t in targets {
        row([
            &t.target_group,
            &t.target(),
            &t.weight.to_string(),
            t.zone.as_deref().unwrap_or("-"),
            &t.state,
            t.reason.as_deref().unwrap_or("-"),
            &t.flows.to_string(),
            &t.source,
        ]);
    }
    Ok(())
}

/// `xlb targets health`: each target's health in the shape of `aws elbv2 describe-target-health`
/// (`TargetHealthDescriptions`), or a table of the same.
pub fn health(socket: &Path, target_group: Option<String>, json: bool) -> Result<()> {
    let targets = match api::call(socket, &Request::Targets { target_group })? {
        Response::Targets { targets } => targets,
        other => return unexpected(other),
    };
    if json {
        let described: Vec<serde_json::Value> = targets.iter().map(describe_health).collect();
        return print_json(&serde_json::json!({ "TargetHealthDescriptions": described }));
    }
    println!(
        "{:<12} {:<28} {:<12} {:<32} description",
        "group", "target", "state", "reason"
    );
    for t in &targets {
        println!(
            "{:<12} {:<28} {:<12} {:<32} {}",
            t.target_group,
            t.target(),
            t.state,
            t.reason.as_deref().unwrap_or("-"),
            health_description(t.reason.as_deref()).unwrap_or("-")
        );
    }
    Ok(())
}

/// One `TargetHealthDescription`, with xlb's group name beside AWS's fields.
fn describe_health(t: &TargetRow) -> serde_json::Value {
    let mut target = serde_json::json!({ "Id": t.id.to_string() });
    if let Some(port) = t.port {
        target["Port"] = port.into();
    }
    let mut health = serde_json::json!({ "State": t.state });
    if let Some(reason) = &t.reason {
        health["Reason"] = reason.as_str().into();
    }
    if let Some(d) = health_description(t.reason.as_deref()) {
        health["Description"] = d.into();
    }
    serde_json::json!({
        "TargetGroupName": t.target_group,
        "Target": target,
        "TargetHealth": health,
    })
}

/// AWS's description of a target health reason.
fn health_description(reason: Option<&str>) -> Option<&'static str> {
    Some(match reason? {
        "Elb.InitialHealthChecking" => "Initial health checks in progress.",
        "Target.ResponseCodeMismatch" => {
            "Health checks failed with a code the matcher does not take."
        }
        "Target.Timeout" => "Request timed out.",
        "Target.FailedHealthChecks" => "Health checks failed.",
        "Target.DeregistrationInProgress" => "Target deregistration is in progress.",
        "Target.NotRegistered" => "Target is not registered to the target group.",
        "Target.HealthCheckDisabled" => "Health checks are disabled.",
        _ => return None,
    })
}

/// `xlb targets register`: one or more targets, applied together.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    #[arg(long)]
    target_group: String,
    /// A target's address; several `--id` register several targets in one change.
    #[arg(long = "id", required = true)]
    ids: Vec<IpAddr>,
    #[arg(long, default_value_t = 1)]
    weight: u32,
    #[arg(long)]
    zone: Option<String>,
    /// The targets' MAC (for `dsr` listeners; one target at a time).
    #[arg(long)]
    mac: Option<String>,
    /// The targets' port, in HTTP groups and behind nat listeners (the group's by default).
    #[arg(long)]
    port: Option<u16>,
}

/// `xlb targets register`.
pub fn register(socket: &Path, args: RegisterArgs) -> Result<()> {
    let targets = args
        .ids
        .iter()
        .map(|&id| Registration {
            target_group: args.target_group.clone(),
            id,
            weight: args.weight,
            zone: args.zone.clone(),
            mac: args.mac.clone(),
            port: args.port,
        })
        .collect();
    done(api::call(socket, &Request::Register { targets })?)
}

/// `xlb targets deregister`.
pub fn deregister(socket: &Path, target_group: String, id: IpAddr) -> Result<()> {
    done(api::call(
        socket,
        &Request::Deregister { target_group, id },
    )?)
}

/// `xlb import aws`.
#[derive(Debug, clap::Args)]
pub struct ImportAwsArgs {
    /// JSON files, or directories of them (every `.json` file). A target-health or attributes
    /// output names its resource in its file name (`describe-target-health.NAME.json`,
    /// `describe-target-group-attributes.NAME.json`,
    /// `describe-load-balancer-attributes.NAME.json`) or by a `"TargetGroupArn"` or
    /// `"LoadBalancerArn"` key added to its JSON.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Write the config to this file [default: stdout].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the report of what did not map to this file [default: stderr].
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `xlb import aws`: writes the config and the report, then checks the config as `xlb check`
/// parses it (certificates aside: the importer names files the operator provides).
pub fn import_aws(args: ImportAwsArgs) -> Result<()> {
    use lb_config::import::{self, Level};
    let inputs = import::Input::read(&args.paths)?;
    let imported = import::aws(&inputs)?;
    let name = match &args.out {
        Some(path) => {
            std::fs::write(path, &imported.config)
                .with_context(|| format!("write {}", path.display()))?;
            path.display().to_string()
        }
        None => {
            print!("{}", imported.config);
            "the config".to_owned()
        }
    };
    let s = &imported.summary;
    let report = if json_output() {
        let v = serde_json::json!({ "summary": s, "findings": imported.findings });
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        let todo = imported
            .findings
            .iter()
            .filter(|f| f.level == Level::Todo)
            .count();
        let mut text = format!(
            "imported {} load balancers into {name}: {} listeners, {} http listeners, {} rules, \
             {} target groups, {} targets; {todo} TODO(import) for you, {} NOTE(import)\n",
            s.load_balancers,
            s.listeners,
            s.http_listeners,
            s.rules,
            s.target_groups,
            s.targets,
            imported.findings.len() - todo,
        );
        for f in &imported.findings {
            let level = match f.level {
                Level::Todo => "TODO",
                Level::Note => "NOTE",
            };
            text += &format!("{level}  {}: {}\n", f.resource, f.message);
        }
        text
    };
    match &args.report {
        Some(path) => {
            std::fs::write(path, report).with_context(|| format!("write {}", path.display()))?
        }
        None => eprint!("{report}"),
    }
    lb_config::Config::parse(&imported.config, &name)
        .context("the imported config is refused: a bug of `xlb import aws`, please report it")?;
    Ok(())
}

/// `xlb node drain`: withdraws every VIP, then waits (at most `timeout`) for the flows through
/// this node to end, and says how many are left. Routers move new flows to other nodes at once;
/// flows they still send here are served until they end.
pub fn drain(socket: &Path, timeout: Duration, json: bool) -> Result<()> {
    match api::call(socket, &Request::Announce { announce: false })? {
        Response::Done { message } if !json => println!("{message}"),
        Response::Done { .. } => {}
        other => return unexpected(other),
    }
    let started = Instant::now();
    loop {
        let flows: u64 = match api::call(socket, &Request::Targets { target_group: None })? {
            Response::Targets { targets } => targets.iter().map(|t| t.flows).sum(),
            other => return unexpected(other),
        };
        let waited = started.elapsed().as_secs_f64();
        let over = flows == 0 || started.elapsed() >= timeout;
        if over && json {
            print_json(&serde_json::json!({ "flows_left": flows, "seconds": waited }))?;
        }
        if flows == 0 {
            if !json {
                println!("drained: no flow left after {waited:.1} s");
            }
            return Ok(());
        }
        if over {
            bail!("{flows} flows still go through this node after {waited:.0} s");
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// How often `xlb node drain` counts the flows left.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// `xlb node resume`: announces again the VIPs the node can serve.
pub fn resume(socket: &Path) -> Result<()> {
    done(api::call(socket, &Request::Announce { announce: true })?)
}

/// `xlb reload`.
pub fn reload(socket: &Path) -> Result<()> {
    done(api::call(socket, &Request::Reload)?)
}

/// `xlb stop`: stops the agent; with `detach`, also removes the datapath pinned at `pin_dir`.
pub fn stop(socket: &Path, detach: bool, pin_dir: &Path) -> Result<()> {
    match api::call(socket, &Request::Stop) {
        Ok(r) => done(r)?,
        Err(e) if detach => eprintln!("xlb: no agent to stop ({e:#})"),
        Err(e) => return Err(e),
    }
    if detach {
        match std::fs::remove_dir_all(pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", pin_dir.display())),
        }
        // Without its pins the XDP program detaches once no process holds it.
        println!("detached: removed {}", pin_dir.display());
    }
    Ok(())
}

/// `xlb top`: polls the agent's counters and prints rates, redrawing the terminal.
pub fn top(socket: &Path, every: Duration, count: Option<u64>) -> Result<()> {
    let read = || -> Result<Vec<ListenerStats>> {
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
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        for l in &now {
            // Paired by name: a listener or target that came or went since the last refresh
            // counts from zero.
            let b = before.iter().find(|b| b.listener == l.listener);
            let (packets, bytes, new_flows) =
                b.map_or((0, 0, 0), |b| (b.packets, b.bytes, b.new_flows));
            println!(
                "{:<50} {:>12.0} {:>14.0} {:>12.0}",
                l.listener,
                rate(l.packets, packets),
                rate(l.bytes, bytes) * 8.0,
                rate(l.new_flows, new_flows)
            );
            for t in &l.targets {
                let (p, by) = b
                    .and_then(|b| b.targets.iter().find(|bt| bt.0 == t.0))
                    .map_or((0, 0), |bt| (bt.1, bt.2));
                println!(
                    "  {:<48} {:>12.0} {:>14.0}",
                    t.0,
                    rate(t.1, p),
                    rate(t.2, by) * 8.0
                );
            }
        }
        before = now;
    }
    Ok(())
}

fn done(r: Response) -> Result<()> {
    match r {
        Response::Done { message } if json_output() => {
            print_json(&serde_json::json!({ "message": message }))
        }
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
