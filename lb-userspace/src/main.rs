//! `xlb`: the agent and its CLI. This file parses the command line and calls into the library.
//!
//! Exit codes: 0 success, 1 error (the message names what failed), 2 bad usage.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use lb_config::Paths;
use xlb::{agent, cli, dataplane::AttachMode};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "An L4 load balancer in XDP, configured in the AWS ELB vocabulary"
)]
struct Cli {
    /// The config file [default: /etc/xlb/xlb.toml]. `run` and `check` read it; the other
    /// commands take the agent's socket and pin directory from its `[node]`, when it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The agent's control socket [default: `node.api_socket` of the config].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// On errors, say more: the kernel verifier's whole log when it refuses a program.
    #[arg(long, global = true)]
    verbose: bool,
    /// How commands that report print: a table for people, or JSON (the API's data) for tools.
    #[arg(long, global = true, value_enum, default_value_t = cli::Output::Table)]
    output: cli::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load (or re-open) the pinned datapath, attach it, apply the config and serve the control
    /// API until stopped. SIGHUP reloads the config. The datapath stays attached when the agent
    /// exits: a restart drops no packet and moves no flow.
    Run {
        /// Print the counters every this many seconds (0: only at exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
    },
    /// Validate a config file without touching the system; report the datapath's memory.
    Check,
    /// Show the running agent: config, uptime, drift from the file.
    Status {
        /// Same as `--output json`.
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
        /// Same as `--output json`.
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
    /// Take this node out of its routers' ECMP set and back ([node.bgp]).
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Stop the agent. With `--detach`, also remove the datapath (unpin maps and link).
    Stop {
        #[arg(long)]
        detach: bool,
        /// Where the datapath is pinned [default: `node.pin_dir` of the config].
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Attach a helper program to an interface and pin its link (it stays after exit; remove the
    /// pin to detach). `decap` goes on targets of tunnel listeners; `pass` on veth peers.
    Attach {
        #[arg(long, value_enum)]
        program: cli::Helper,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: PathBuf,
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
    },
    /// Write an xlb config from an existing load balancer setup.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Print the completion script of a shell for xlb (e.g. `xlb completions bash >
    /// /usr/share/bash-completion/completions/xlb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of xlb and of each of its commands (`xlb.1`, `xlb-run.1`, ...) into a
    /// directory.
    Man {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TargetsAction {
    /// Every target with its state, weight, zone and flows.
    List {
        #[arg(long)]
        target_group: Option<String>,
        /// Same as `--output json`.
        #[arg(long)]
        json: bool,
    },
    /// Targets' health as `aws elbv2 describe-target-health` shows it.
    Health {
        #[arg(long)]
        target_group: Option<String>,
    },
    /// Add a target to a group (kept across agent restarts).
    Register(cli::RegisterArgs),
    /// Take a target out of a group: no new flows at once, existing ones until the group's
    /// deregistration delay.
    Deregister {
        #[arg(long)]
        target_group: String,
        #[arg(long)]
        id: IpAddr,
    },
}

#[derive(Subcommand)]
enum ImportFrom {
    /// From the JSON `aws elbv2` prints: describe-load-balancers, -listeners, -rules,
    /// -target-groups, -target-group-attributes, -load-balancer-attributes and
    /// -target-health. What does not map is reported and left as TODO comments in the config.
    Aws(cli::ImportAwsArgs),
}

#[derive(Subcommand)]
enum NodeAction {
    /// Withdraw every VIP, then wait for the flows through this node to end (or the timeout) and
    /// say how many are left. The node stays withdrawn until `resume` or a restart.
    Drain {
        /// Seconds to wait for the flows.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Announce again the VIPs this node can serve.
    Resume,
}

// The L7 tier allocates and frees small buffers per request; mimalloc's per-thread free lists
// serve them faster than glibc's malloc (see the L7 benchmark in docs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command piped into `head` ends quietly when its reader goes, as Unix tools do. The agent
    // keeps Rust's default (SIGPIPE ignored): a closed stdout must never end it.
    if !matches!(cli.command, Command::Run { .. }) {
        // SAFETY: restores a signal's default action before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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

/// Where `--config` points when it is not given.
const DEFAULT_CONFIG: &str = "/etc/xlb/xlb.toml";

fn run(cli: Cli) -> Result<()> {
    cli::set_output(cli.output);
    let json = |flag: bool| flag || cli.output == cli::Output::Json;
    let config = cli.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
    // The agent's socket and pins, as its config names them: the given file, else the default
    // one when it exists, else the defaults.
    let paths = || -> Result<Paths> {
        if cli.config.is_none() && !config.exists() {
            return Ok(Paths::default());
        }
        Paths::read(&config).with_context(|| {
            format!(
                "find the agent's socket and pins in {} (or give --socket)",
                config.display()
            )
        })
    };
    let socket = || -> Result<PathBuf> {
        match &cli.socket {
            Some(s) => Ok(s.clone()),
            None => Ok(paths()?.api_socket),
        }
    };
    match cli.command {
        Command::Run { stats_interval } => agent::serve::run(
            config,
            (stats_interval > 0).then(|| Duration::from_secs(stats_interval)),
        ),
        Command::Check => cli::check(&config),
        Command::Status { json: flag } => cli::status(&socket()?, json(flag)),
        Command::Stats { json: flag } => cli::stats(&socket()?, json(flag)),
        Command::Top { interval, count } => {
            cli::top(&socket()?, Duration::from_secs(interval.max(1)), count)
        }
        Command::Reload => cli::reload(&socket()?),
        Command::Node { action } => match action {
            NodeAction::Drain { timeout } => {
                cli::drain(&socket()?, Duration::from_secs(timeout), json(false))
            }
            NodeAction::Resume => cli::resume(&socket()?),
        },
        Command::Stop { detach, pin_dir } => {
            let pin_dir = match pin_dir {
                Some(p) => p,
                None => paths()?.pin_dir,
            };
            cli::stop(&socket()?, detach, &pin_dir)
        }
        Command::Import {
            from: ImportFrom::Aws(args),
        } => cli::import_aws(args),
        Command::Attach {
            program,
            iface,
            pin,
            xdp_mode,
        } => cli::attach(program, &iface, &pin, xdp_mode),
        // Both from the command-line definitions above, so they cannot drift from them.
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .with_context(|| format!("write the man pages into {}", dir.display())),
        Command::Targets { action } => match action {
            TargetsAction::List {
                target_group,
                json: flag,
            } => cli::targets(&socket()?, target_group, json(flag)),
            TargetsAction::Health { target_group } => {
                cli::health(&socket()?, target_group, json(false))
            }
            TargetsAction::Register(args) => cli::register(&socket()?, args),
            TargetsAction::Deregister { target_group, id } => {
                cli::deregister(&socket()?, target_group, id)
            }
        },
    }
}
