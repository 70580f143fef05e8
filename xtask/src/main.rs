//! `cargo xtask`: the developer tasks cargo cannot express on its own.
//!
//! `setup` installs what the build and the tests need (idempotent); every other task runs it first.
//! Lab, demo and bench work lives in the `xlb-tests` crate (binaries `xlb-lab`, `xlb-bench`): xtask
//! builds and runs them, so that xtask itself compiles before the BPF toolchain exists.

mod baseline;
mod dist;
mod paths;
mod pgo;
mod setup;
mod toolchain;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces, Debian packages and bpffs that xlb needs (idempotent).
    Setup,
    /// Build the eBPF object and the `xlb` binary that embeds it, optimized to deploy
    /// (`target/dist/xlb`: the `dist` profile, with link-time optimization).
    Build {
        /// Profile-guided (`target/pgo/use/dist/xlb`, as root): trained on the L7 bench's loads.
        #[arg(long)]
        pgo: bool,
    },
    /// Build the Debian package (`target/debian/xlb_*.deb`, with cargo-deb): the `xlb` binary of
    /// `build`, its systemd unit, `/etc/xlb/xlb.toml`, completions and man pages.
    Dist {
        /// The profile-guided binary of `build --pgo` (as root, about 10 minutes) instead of the
        /// plain `dist` build.
        #[arg(long)]
        pgo: bool,
    },
    /// Run every test: unit tests, packet fixtures and network-namespace lab tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring up the lab, run xlb in it, send real traffic and show what the datapath did
    /// (`--nodes 3`: several nodes behind ECMP, and one's death).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Manage the network-namespace lab (client, router, lb, backends).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks and print a table (and JSON with `--json FILE`); `--baseline-rev REV`
    /// runs that commit's `xlb_lb` beside this one's; `bench l7` compares the L7 tier with HAProxy
    /// and nginx, `bench pktgen` drives the kernel's pktgen in the VM.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run `cargo fmt --check` and clippy on the host crates and on the eBPF crates.
    Lint,
    /// Build a Debian VM (debootstrap + Debian's kernel, cached), boot it with QEMU and run the
    /// end-to-end suite inside; `--shell` gives its console. See vagrant/README.md.
    Vm(vm::VmArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { pgo } => {
            setup::run()?;
            let xlb = if pgo {
                pgo::build()?
            } else {
                build_xlb("dist")?
            };
            println!("built {}", xlb.display());
            Ok(())
        }
        Task::Dist { pgo } => {
            let deb = dist::build(pgo)?;
            println!("built {}", deb.display());
            Ok(())
        }
        Task::Test { args } => {
            setup::run()?;
            // The lab tests run the real `xlb` binary, which `cargo test` does not build.
            build_xlb("release")?;
            let mut cmd = vec!["test", "--release"];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo(&cmd)
        }
        Task::Demo { args } => {
            setup::run()?;
            build_xlb("release")?;
            let mut demo = vec!["demo".to_owned()];
            demo.extend(args);
            tool("xlb-lab", &demo)
        }
        Task::Lab { args } => {
            setup::run()?;
            build_xlb("release")?;
            tool("xlb-lab", &args)
        }
        Task::Bench { args } => {
            // pktgen drives the kernel's generator in the VM (or out of a real NIC with --dev).
            if args.first().map(String::as_str) == Some("pktgen") {
                return vm::pktgen(&args[1..]);
            }
            // The L7 tier against HAProxy and nginx, with the real agent.
            // It measures the build users deploy: `build --pgo`, not the tests' `release`.
            if args.first().map(String::as_str) == Some("l7") {
                setup::run()?;
                // `--xlb PATH` measures that binary; without it, a fresh `build --pgo`.
                let mut bench = Vec::new();
                if !args.iter().any(|a| a == "--xlb" || a.starts_with("--xlb=")) {
                    let xlb = pgo::build()?;
                    bench = vec!["--xlb".to_owned(), xlb.display().to_string()];
                }
                bench.extend_from_slice(&args[1..]);
                return tool("xlb-bench-l7", &bench);
            }
            setup::run()?;
            // `--baseline-rev REV`: that commit's object, built here, as `--baseline OBJECT`.
            let mut args = args;
            if let Some(i) = args.iter().position(|a| a == "--baseline-rev") {
                let Some(rev) = args.get(i + 1).cloned() else {
                    bail!("--baseline-rev needs a commit");
                };
                let object = baseline::object(&rev)?;
                args.splice(
                    i..i + 2,
                    ["--baseline".to_owned(), object.display().to_string()],
                );
            }
            tool("xlb-bench", &args)
        }
        Task::Lint => {
            setup::run()?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            let mut ebpf = Command::new("cargo");
            ebpf.env("RUSTC_BOOTSTRAP", "1").args([
                "clippy",
                "--package",
                "lb-ebpf",
                "--package",
                "lb-ebpf-bench",
                "--release",
                "-Z",
                "build-std=core",
                "--target",
                toolchain::BPF_TARGET,
                "--",
                "-D",
                "warnings",
            ]);
            status(&mut ebpf)
        }
        Task::Vm(args) => vm::run(args),
    }
}

/// Builds the eBPF object and the `xlb` binary that embeds it with cargo profile `profile`, and
/// returns the binary's path. The tests use `release`; `dist` (link-time optimization, one codegen
/// unit) is slower to build and is what users deploy and the L7 bench measures.
fn build_xlb(profile: &str) -> Result<PathBuf> {
    cargo(&[
        "build",
        "--profile",
        profile,
        "--package",
        "lb-userspace",
        "--bin",
        "xlb",
    ])?;
    Ok(paths::target_dir()?.join(profile).join("xlb"))
}

/// Runs a binary of the `xlb-tests` crate (release build) with `args`.
fn tool(bin: &str, args: &[String]) -> Result<()> {
    status(&mut tool_command(bin, args))
}

/// The command that runs a binary of the `xlb-tests` crate.
fn tool_command(bin: &str, args: &[String]) -> Command {
    let mut cmd = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "xlb-tests",
        "--bin",
        bin,
        "--",
    ];
    cmd.extend(args.iter().map(String::as_str));
    let mut run = Command::new(env!("CARGO"));
    run.args(cmd);
    run
}

fn cargo(args: &[&str]) -> Result<()> {
    status(Command::new(env!("CARGO")).args(args))
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}
