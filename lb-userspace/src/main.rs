//! `xlb`: the agent and its CLI. This file parses the command line and calls into the library.
//!
//! Exit codes: 0 success, 1 error (the message names what failed), 2 bad usage.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use xlb::{
    balancer::Balancer,
    config::Config,
    dataplane::{AttachMode, Dataplane, Program, Sizes},
    stats,
};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "An L4 load balancer in XDP, configured in the AWS ELB vocabulary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it to the node's interface, apply the config and serve until
    /// SIGINT/SIGTERM (SIGHUP reloads the config).
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum HelperProgram {
    Decap,
    Pass,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
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
    }
}

/// The agent: attach, apply, reload on SIGHUP, print counters, detach on exit.
fn serve(path: PathBuf, stats_interval: u64) -> Result<()> {
    let cfg = Config::load(&path)?;
    let sizes = Sizes {
        flows: cfg.node.flow_table_size,
        vips: lb_common::MAX_VIPS,
    };
    let pins = &cfg.node.pin_dir;
    let dp = Dataplane::load_pinned(sizes, Some(&pins.join("maps")))?;
    let mut lb = Balancer::new(dp)?;
    lb.apply(&cfg).context("apply the config")?;
    // Tables first, then the program: a restarted agent swaps its program into the running link.
    let link = pins.join("link");
    lb.dataplane()
        .attach_or_replace(Program::Lb, &cfg.node.interface, cfg.node.xdp_mode, &link)?;
    println!(
        "xlb: serving {} listeners on {}",
        cfg.listeners.len(),
        cfg.node.interface
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let period = Duration::from_secs(if stats_interval == 0 {
            3600
        } else {
            stats_interval
        });
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        let mut running = cfg;
        loop {
            tokio::select! {
                _ = tick.tick(), if stats_interval > 0 => print!("{}", stats::table(&mut lb)?),
                _ = hup.recv() => match Config::load(&path) {
                    // A node change (interface, sizes) needs a restart; listeners and targets apply.
                    Ok(new) if new.node == running.node => {
                        lb.apply(&new).context("apply the reloaded config")?;
                        println!("xlb: reloaded {}", path.display());
                        running = new;
                    }
                    Ok(_) => eprintln!("xlb: reload refused: [node] changed; restart to apply it"),
                    Err(e) => eprintln!("xlb: reload refused, keeping the running config: {e:#}"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        anyhow::Ok(())
    })?;
    print!("{}", stats::table(&mut lb)?);
    Ok(())
}

/// Every address of this host (network namespace), for the decap program.
fn host_addresses() -> Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(std::net::IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(std::net::IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}
