//! `xlb-bench`: xlb's benchmarks. Prints a table; `--json FILE` also writes
//! `{"results": {"NAME": number, ...}}`. Run as root (`cargo xtask bench`).
//!
//! - `testrun.*`: ns per packet of one `BPF_PROG_TEST_RUN` call with repeat 1 (the kernel's own
//!   timing, median over many calls), for a plain `XDP_PASS` program and for `xlb_lb` on
//!   established, SYN and non-VIP packets. Repeat 1 because the balancer changes the frame it
//!   runs on (tunnel headers), so the kernel's repeat would measure something else.
//! - `insns.*`: eBPF instructions one packet of each test-run case executes (and `*.stack`, those
//!   that load or store on the stack), counted by running the object's bytecode on a copy of the
//!   case's maps (`xlb_tests::ebpf_count`; this host has no PMU to count them). Each count is
//!   checked against one kernel run of the same frame: same verdict, same frame out.
//! - `veth.*`: packets per second through a veth pair joining two namespaces made for the bench.
//!   In one, `xlb_bench_gen` runs with `BPF_PROG_RUN` in live-frames mode and sends every frame
//!   (`XDP_TX`) into the veth; in the other the program under test receives it: the MAC-swap
//!   reflector (the baseline), or `xlb_lb` with a VIP and eight targets (tunnel mode; the FIB
//!   lookup finds the targets on the same link, so it answers with `XDP_TX`). Frames coming back
//!   are dropped by `xlb_bench_sink`. Throughput is counted on the program under test's side over
//!   a fixed interval. The machine is small and noisy, so reflector and balancer run in the same
//!   rounds, alternately (the reflector first in each round and once more at the end), and each
//!   balancer run is reported as a ratio to the reflector runs around it (`*.ratio`). The
//!   generator is pinned to one CPU (`--cpu`) at real-time priority (`SCHED_FIFO` 1, if allowed),
//!   so other work on that CPU does not take turns with it; veth delivery and the program under
//!   test run on that CPU too. After each throughput interval, a shorter one with the kernel's
//!   run-time statistics on (`BPF_ENABLE_STATS`, off again at once since they slow every program)
//!   gives the program under test's own cost (`*.prog_ns`). `--no-fib` configures the balancer
//!   to skip the kernel FIB lookup (gateway MAC), to show what the lookup costs.
//!   The generator, reflector and sink are this tool's own XDP object (`lb-ebpf-bench`, built
//!   by `tests/build.rs`); `xlb_lb` is xlb's, loaded by its `Dataplane` as the agent loads it.
//! - `maglev.*`: table build time, balance (max slots over mean) and disruption when one of N
//!   targets leaves, for the weighted builder and the paper's (`maglev.vanilla.*`); and for
//!   table sizes M (`maglev.mM.*`, a listener's `maglev_table_size`), memory per listener, build
//!   time and disruption over the ideal 1/N for N = 10, 100, 1000 and 5000.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use clap::Parser;
use lb_common::{
    AF_INET, AF_INET6, BACKEND_F_LIVE, Backend, CONFIG_F_NO_FIB, Config, IPPROTO_TCP,
    RING_SIZE_DEFAULT as RING_SIZE, Reason, VipKey,
    bench::{self, GEN_FRAME_MAX, GenConfig, STAT_REFLECT, STATS_LEN},
};
use xlb::{
    dataplane::{AttachMode, Dataplane, Program, RunOptions, Sizes},
    maglev::{self, MaglevTarget},
};
use xlb_tests::{
    ebpf_count::Machine,
    fixture::{self, Fixture},
    lab::{in_netns, netns_command},
    packet::Packet,
    testrun::{self, Frames, Hop, prepare},
};

#[derive(Parser)]
#[command(name = "xlb-bench", about = "xlb's benchmarks (run as root)")]
struct Args {
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Short runs, to check that the tool works.
    #[arg(long)]
    quick: bool,
    /// CPU the live-frames generator is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Skip the veth (live-frames) benchmarks.
    #[arg(long)]
    no_veth: bool,
    /// Configure the balancer with `CONFIG_F_NO_FIB` (gateway MAC, no kernel FIB lookup), to see
    /// what the lookup costs.
    #[arg(long)]
    no_fib: bool,
    /// Another build's XDP object (`cargo xtask bench --baseline-rev REV` builds one): its
    /// `xlb_lb` runs the same test-run cases, interleaved with this build's, as `baseline.*`.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

fn stopped() -> Result<()> {
    ensure!(!xlb_tests::stop::requested(), "interrupted");
    Ok(())
}

/// Sleeps `d` in short steps, failing early when interrupted.
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        stopped()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Run lengths.
struct Plan {
    /// Short runs (`--quick`): fewer Maglev table sizes too.
    quick: bool,
    testrun_calls: usize,
    maglev_builds: usize,
    rounds: usize,
    warmup: Duration,
    interval: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                testrun_calls: 20_000,
                maglev_builds: 3,
                rounds: 1,
                warmup: Duration::from_millis(200),
                interval: Duration::from_millis(500),
            }
        } else {
            Plan {
                quick,
                testrun_calls: 200_000,
                maglev_builds: 15,
                rounds: 7,
                warmup: Duration::from_millis(300),
                interval: Duration::from_secs(1),
            }
        }
    }
}

/// Results in the order measured.
#[derive(Default)]
struct Results(Vec<(String, f64, String)>);

impl Results {
    fn add(&mut self, name: &str, value: f64, note: impl Into<String>) {
        let note = note.into();
        println!("{name:<56} {:>12} {note}", fmt_value(value));
        self.0.push((name.to_owned(), value, note));
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| metric | value | notes |\n|---|---:|---|");
        for (name, value, note) in &self.0 {
            let _ = writeln!(out, "| `{name}` | {} | {note} |", fmt_value(*value));
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(n, v, _)| (n.clone(), serde_json::json!(v)))
            .collect();
        serde_json::json!({ "results": map })
    }
}

fn fmt_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.6}")
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let plan = Plan::new(args.quick);
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "xlb-bench needs root (BPF, network namespaces)"
    );
    xlb_tests::stop::install()?;

    let mut results = Results::default();
    println!("{:<56} {:>12} notes", "metric", "value");
    maglev_bench(&plan, &mut results);
    flow_memory_bench(&mut results)?;
    // The fixture unshares its thread's network namespace: give it a thread of its own.
    let baseline = match &args.baseline {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    thread::scope(|s| {
        s.spawn(|| testrun_bench(&plan, baseline.as_deref(), &mut results))
            .join()
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    if !args.no_veth {
        let cpu = args
            .cpu
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()) - 1);
        veth_bench(&plan, cpu, args.no_fib, &mut results)?;
    }

    println!("\n{}", results.table());
    if let Some((_, r, _)) = results
        .0
        .iter()
        .find(|(n, _, _)| n == "veth.lb.v4.established.ratio")
    {
        let verdict = if *r >= 0.6 { "meets" } else { "below" };
        println!(
            "veth.lb.v4.established.mpps / veth.reflector.mpps = {r:.3} ({verdict} the 0.6 goal)"
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Flow table memory

/// Kernel memory per flow-table entry: the `memlock` the kernel reports for the flow table (an LRU
/// hash, all entries allocated up front) at two sizes, so fixed costs cancel out.
fn flow_memory_bench(results: &mut Results) -> Result<()> {
    let (small, large) = (1u32 << 12, 1u32 << 20);
    let memlock = |flows: u32| -> Result<u64> {
        let _dp = Dataplane::load(Sizes {
            flows,
            listeners: 1,
            ring_slots: 1,
            targets: 16,
        })?;
        flow_table_memlock(flows)
    };
    let per_flow = (memlock(large)? - memlock(small)?) as f64 / f64::from(large - small);
    results.add(
        "flow_table.bytes_per_flow",
        per_flow,
        "kernel memory per flow table entry (map memlock)",
    );
    Ok(())
}

/// The `memlock` of this process's LRU hash map (type 9) with `max_entries` entries.
fn flow_table_memlock(max_entries: u32) -> Result<u64> {
    for fd in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(info) = std::fs::read_to_string(fd?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        if field("map_type:") == Some(9) && field("max_entries:") == Some(max_entries.into()) {
            return field("memlock:").context("no memlock in fdinfo");
        }
    }
    bail!("no flow table with {max_entries} entries among this process's maps")
}

// ---------------------------------------------------------------------------------------------
// Maglev

/// Keys of `n` targets (address and port, as the agent makes them): 10.x.y.z:80.
fn target_keys(n: usize) -> Vec<[u8; 6]> {
    (0..n)
        .map(|i| {
            let [_, a, b, c] = (i as u32).to_be_bytes();
            [10, a, b, c, 0, 80]
        })
        .collect()
}

/// Maglev targets over `keys`, indices from 1, weights from `weight(i)`.
fn maglev_targets(keys: &[[u8; 6]], weight: impl Fn(usize) -> u32) -> Vec<MaglevTarget<'_>> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| MaglevTarget {
            key: k,
            index: i as u32 + 1,
            weight: weight(i),
        })
        .collect()
}

fn maglev_bench(plan: &Plan, results: &mut Results) {
    for n in [10usize, 100, 1000] {
        let keys = target_keys(n);
        let targets = maglev_targets(&keys, |_| 1);
        // One target leaves (the middle one: its position in the list does not matter).
        let mut fewer = targets.clone();
        fewer.remove(n / 2);
        type Builder = fn(&[MaglevTarget<'_>], u32) -> Result<Vec<u32>, maglev::MaglevError>;
        for (prefix, build) in [
            ("maglev", maglev::build as Builder),
            ("maglev.vanilla", maglev::build_vanilla as Builder),
        ] {
            let mut times = Vec::new();
            let mut table = Vec::new();
            for _ in 0..plan.maglev_builds {
                let t = Instant::now();
                table = build(&targets, RING_SIZE).expect("maglev build");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let after = build(&fewer, RING_SIZE).expect("maglev build");
            results.add(
                &format!("{prefix}.build.ms.n{n}"),
                median(&mut times),
                format!("M={RING_SIZE}, median of {}", plan.maglev_builds),
            );
            results.add(
                &format!("{prefix}.balance.max_over_mean.n{n}"),
                maglev::balance(&table, &targets),
                "1.0 is perfect",
            );
            results.add(
                &format!("{prefix}.disruption.remove1.n{n}"),
                maglev::disruption(&table, &after),
                "share of slots changed",
            );
            results.add(
                &format!("{prefix}.disruption.ideal.n{n}"),
                1.0 / n as f64,
                "1/N",
            );
        }
    }
    // Table sizes (a listener's `maglev_table_size`) against target counts: the paper's M ≥ 100·N
    // is not enough for a leaving target to move about its own share 1/N; at N = 1000 it takes
    // M ≈ 5000·N to come within twice that. Each size is prime: 2^16 + 1 (the default), then
    // about 10, 20 and 76 times it. The quick plan keeps the two that build in milliseconds.
    let sizes: &[u32] = if plan.quick {
        &[65_537, 655_373]
    } else {
        &[65_537, 655_373, 1_310_719, 5_000_011]
    };
    for &m in sizes {
        results.add(
            &format!("maglev.m{m}.mib_per_listener"),
            f64::from(m) * 2.0 * 8.0 / f64::from(1 << 20),
            "two tables of 8-byte slots (RINGS)",
        );
        for n in [10usize, 100, 1000, 5000] {
            let keys = target_keys(n);
            let targets = maglev_targets(&keys, |_| 1);
            let mut fewer = targets.clone();
            fewer.remove(n / 2);
            let mut times = Vec::new();
            let mut table = Vec::new();
            for _ in 0..plan.maglev_builds.min(3) {
                let t = Instant::now();
                table = maglev::build(&targets, m).expect("maglev build");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let after = maglev::build(&fewer, m).expect("maglev build");
            results.add(
                &format!("maglev.m{m}.n{n}.build.ms"),
                median(&mut times),
                "median",
            );
            results.add(
                &format!("maglev.m{m}.n{n}.disruption_over_ideal"),
                maglev::disruption(&table, &after) * n as f64,
                "slots moved when one target leaves, over 1/N",
            );
        }
    }
    // Weighted: weights 1..=4 in turn; balance is measured against the weights.
    let n = 1000usize;
    let keys = target_keys(n);
    let targets = maglev_targets(&keys, |i| (i % 4) as u32 + 1);
    let mut times = Vec::new();
    let mut table = Vec::new();
    for _ in 0..plan.maglev_builds {
        let t = Instant::now();
        table = maglev::build(&targets, RING_SIZE).expect("maglev build");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    results.add(
        "maglev.weighted.build.ms.n1000",
        median(&mut times),
        "weights 1..4",
    );
    results.add(
        "maglev.weighted.balance.max_over_mean.n1000",
        maglev::balance(&table, &targets),
        "slots / weighted share",
    );
}

/// The mean of the fastest 90% of `v` (sorted in place).
fn trimmed_mean(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let kept = &v[..v.len() - v.len() / 10];
    kept.iter().sum::<f64>() / kept.len().max(1) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// BPF_PROG_TEST_RUN

/// Test-run timings of each case, for this build and, given its object, a baseline build: the
/// two take turns in ten slices of each case's calls, so a change in the machine's speed during
/// the run touches both alike. Then each case's executed instructions (`insns.*`), counted by
/// running the program's bytecode on a copy of the same maps (`xlb_tests::ebpf_count`).
fn testrun_bench(plan: &Plan, baseline: Option<&[u8]>, results: &mut Results) -> Result<()> {
    let frames = Frames::new();
    // Same listeners and flows for each build: the flows exist before their ACKs are timed.
    // Each fixture unshares this thread's namespace: the last one's holds the links, and every
    // test run looks its ingress interface up there.
    let mut builds = vec![(
        "",
        prepare(Fixture::new(), &frames)?,
        xlb::dataplane::OBJECT,
    )];
    if let Some(object) = baseline {
        builds.push((
            "baseline.",
            prepare(Fixture::with_object(object), &frames)?,
            object,
        ));
    }
    // Each build's counter, on a copy of its maps as prepared.
    let mut counters = Vec::new();
    for (_, f, object) in &mut builds {
        let mut m = Machine::new(object)?;
        m.copy_maps(f.dataplane())?;
        counters.push(m);
    }
    let slices = if builds.len() > 1 { 10 } else { 1 };
    let n = plan.testrun_calls;
    // SNAT's cases only when every build has SNAT (a baseline from before it has not).
    let snat = builds.iter_mut().all(|(_, f, _)| testrun::has_snat(f));
    let cases: Vec<_> = testrun::cases(&frames)
        .into_iter()
        .filter(|c| snat || !c.snat)
        .collect();
    let mut counted = Vec::new();
    let mut empty = vec![f64::NAN; builds.len()];
    let mut empty_mean = vec![0.0; builds.len()];
    let mut links = None;
    for case in &cases {
        let name = format!("testrun.{}.ns", case.path);
        let (prog, frame, want) = (case.program, case.frame, case.action);
        let ingress_ifindex = match (case.hop, links) {
            (Hop::Fib, Some(i)) => i,
            (Hop::Fib, None) => *links.insert(testrun::links()?),
            (Hop::Gateway | Hop::FibMiss, _) => 0,
        };
        let mut ns = vec![Vec::with_capacity(n); builds.len()];
        let mut before = Vec::new();
        for (_, f, _) in &mut builds {
            f.config(|c| c.flags |= case.config_flags());
            before.push(total_reasons(f.dataplane())?);
        }
        for slice in 0..slices {
            // Each build goes first in every other slice: neither always runs on the caches
            // the other left.
            let mut turn: Vec<_> = builds.iter_mut().zip(&mut ns).collect();
            if slice % 2 == 1 {
                turn.reverse();
            }
            for ((_, f, _), ns) in turn {
                let dp = f.dataplane();
                for i in 0..n / slices {
                    if i % 4096 == 0 {
                        stopped()?;
                    }
                    let r = dp.test_run_with(
                        prog,
                        frame,
                        RunOptions {
                            repeat: 1,
                            ingress_ifindex,
                        },
                    )?;
                    ensure!(r.action == want, "{name}: action {} want {want}", r.action);
                    ns.push(r.duration.as_nanos() as f64);
                }
            }
        }
        let mut trimmed = Vec::new();
        for (b, ((prefix, f, _), ns)) in builds.iter_mut().zip(&mut ns).enumerate() {
            let runs = ns.len();
            if prog == Program::Lb {
                let moved = total_reasons(f.dataplane())? - before[b];
                ensure!(
                    moved == runs as u64,
                    "{prefix}{name}: {moved} packets counted for {runs} runs"
                );
            }
            let mean = ns.iter().sum::<f64>() / runs as f64;
            let med = median(ns);
            if prog == Program::Pass {
                empty[b] = med;
            }
            let extra = if prog == Program::Lb {
                format!(", {:.0} over empty", med - empty[b])
            } else {
                String::new()
            };
            results.add(
                &format!("{prefix}{name}"),
                med,
                format!("{}; median of {runs} (mean {mean:.1}){extra}", case.note),
            );
            // Durations come in steps of the clock's resolution (10 ns here), which a median
            // keeps: the comparison takes means, without the slowest tenth (interrupts).
            let fastest = trimmed_mean(ns);
            if prog == Program::Pass {
                empty_mean[b] = fastest;
            }
            trimmed.push(fastest - empty_mean[b]);
        }
        if let [this, base] = trimmed[..]
            && prog == Program::Lb
        {
            results.add(
                &format!("{name}.over_baseline"),
                this / base,
                "this build's time over the baseline's (means of the fastest 90%), the empty program's taken off both",
            );
        }
        // The count, on the config this case set; the counter's FIB answers as the links do.
        for ((_, f, _), m) in builds.iter_mut().zip(&mut counters) {
            m.routes = links.map(testrun::routes).unwrap_or_default();
            m.copy_map(f.dataplane(), lb_common::names::CONFIG)?;
            counted.push(testrun::count(m, f.dataplane(), case, ingress_ifindex)?);
        }
    }
    // Rows per path, this build's then the baseline's.
    for (case, runs) in cases.iter().zip(counted.chunks(builds.len())) {
        let path = if case.program == Program::Pass {
            "pass"
        } else {
            case.path
        };
        for ((prefix, _, _), run) in builds.iter().zip(runs) {
            results.add(
                &format!("{prefix}insns.{path}"),
                run.insns as f64,
                format!(
                    "{}; eBPF instructions executed (object bytecode, a helper call is one)",
                    case.note
                ),
            );
            results.add(
                &format!("{prefix}insns.{path}.stack"),
                run.stack as f64,
                "of those, loads and stores on the stack",
            );
        }
    }
    Ok(())
}

fn total_reasons(dp: &mut Dataplane) -> Result<u64> {
    Ok(dp.reasons()?.iter().map(|(_, c)| c.packets).sum())
}

// ---------------------------------------------------------------------------------------------
// veth, live frames

const NS_GEN: &str = "xlb-bench-gen";
const NS_DUT: &str = "xlb-bench-dut";
const IF_GEN: &str = "xbgen0";
const IF_DUT: &str = "xbdut0";
const MAC_GEN: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xbe, 0x01];
const MAC_DUT: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xbe, 0x02];
const DUT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const DUT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const TARGETS: usize = 8;
/// Frames per live-frames batch (the kernel's maximum is 256).
const BATCH: u32 = 64;
/// Generator runs per `BPF_PROG_RUN` call: a few tens of ms, so a stop is seen quickly.
const GEN_REPEAT: u32 = 50_000;
/// Upper bound on generator calls per measurement (a bounded loop even if the clock stalls).
const GEN_MAX_CALLS: usize = 100_000;
/// Flows the generator cycles through (source ports).
const FLOWS_ESTABLISHED: u32 = 1 << 14;
const FLOWS_SYN: u32 = 1 << 15;

/// The two namespaces; removed (with the veth pair) when dropped, on every way out.
struct BenchNet {
    /// Held while the namespaces exist, so two benches never share (or remove) them.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The lock file of the bench namespaces.
const LOCK: &str = "/run/xlb-bench.lock";

impl BenchNet {
    fn up() -> Result<BenchNet> {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .with_context(|| format!("opening {LOCK}"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .with_context(|| format!("another xlb-bench holds {LOCK}"))?;
        // Left over by a bench that was killed outright: nobody uses them (we hold the lock).
        BenchNet::remove();
        for ns in [NS_GEN, NS_DUT] {
            cmd(Command::new("ip").args(["netns", "add", ns]))?;
        }
        // From here on `Drop` cleans up.
        let net = BenchNet { _lock: lock };
        let (mg, md) = (mac_str(MAC_GEN), mac_str(MAC_DUT));
        // Created inside the generator's namespace, peer placed straight into the other one:
        // nothing touches the host's namespace.
        ip(
            NS_GEN,
            &[
                "link", "add", IF_GEN, "address", &mg, "type", "veth", "peer", "name", IF_DUT,
                "address", &md, "netns", NS_DUT,
            ],
        )?;
        for (ns, dev) in [(NS_GEN, IF_GEN), (NS_DUT, IF_DUT)] {
            ip(ns, &["link", "set", "lo", "up"])?;
            cmd(&mut netns_command(ns, &["ethtool", "-K", dev, "tx", "off"]))?;
            ip(ns, &["link", "set", dev, "up"])?;
        }
        // The balancer's side: an address on the target segment, forwarding on (the XDP FIB
        // lookup requires it), and permanent neighbours for the targets, reached through the
        // veth (their MAC is the generator's end, where the sink drops what comes back).
        ip(
            NS_DUT,
            &["addr", "add", &format!("{DUT_V4}/24"), "dev", IF_DUT],
        )?;
        ip(
            NS_DUT,
            &[
                "addr",
                "add",
                &format!("{DUT_V6}/64"),
                "dev",
                IF_DUT,
                "nodad",
            ],
        )?;
        in_netns(NS_DUT, || -> Result<()> {
            for key in [
                "net/ipv4/conf/all/forwarding",
                "net/ipv6/conf/all/forwarding",
            ] {
                std::fs::write(format!("/proc/sys/{key}"), "1")
                    .with_context(|| format!("sysctl {key}"))?;
            }
            Ok(())
        })??;
        for i in 1..=TARGETS {
            for addr in [IpAddr::V4(target_v4(i)), IpAddr::V6(target_v6(i))] {
                ip(
                    NS_DUT,
                    &[
                        "neigh",
                        "replace",
                        &addr.to_string(),
                        "lladdr",
                        &mg,
                        "dev",
                        IF_DUT,
                        "nud",
                        "permanent",
                    ],
                )?;
            }
        }
        Ok(net)
    }

    fn remove() {
        for ns in [NS_GEN, NS_DUT] {
            if std::path::Path::new("/run/netns").join(ns).exists() {
                let _ = cmd(Command::new("ip").args(["netns", "del", ns]));
            }
        }
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        BenchNet::remove();
    }
}

fn target_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + i as u8)
}

fn target_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10 + i as u16)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    cmd(Command::new("ip").args(["-n", ns]).args(args))
}

fn cmd(c: &mut Command) -> Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `xlb-bench`'s own XDP object (`lb-ebpf-bench`, built by `build.rs`), apart from xlb's.
static GEAR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench"));

/// The bench's programs around the one under test, loaded: the generator, the reflector (the
/// baseline) and the sink, with their maps.
struct Gear {
    ebpf: Ebpf,
}

impl Gear {
    fn load() -> Result<Gear> {
        let ebpf = Ebpf::load(GEAR).context("loading the bench's XDP object")?;
        let mut gear = Gear { ebpf };
        for name in [bench::PROG_GEN, bench::PROG_REFLECT, bench::PROG_SINK] {
            gear.xdp_mut(name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        Ok(gear)
    }

    fn xdp(&self, name: &str) -> Result<&Xdp> {
        let missing = || format!("{name} is not in the bench's object");
        Ok(self.ebpf.program(name).with_context(missing)?.try_into()?)
    }

    fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        let missing = || format!("{name} is not in the bench's object");
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(missing)?
            .try_into()?)
    }

    /// Attaches program `name` to `iface` in native mode, as the balancer is.
    fn attach(&mut self, name: &str, iface: &str) -> Result<XdpLinkId> {
        self.xdp_mut(name)?
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface}"))
    }

    fn detach(&mut self, name: &str, link: XdpLinkId) -> Result<()> {
        Ok(self.xdp_mut(name)?.detach(link)?)
    }

    /// Sets what the generator sends.
    fn set_traffic(&mut self, traffic: &Traffic) -> Result<()> {
        let map = self.ebpf.map_mut(bench::BENCH_GEN);
        let mut map = Array::<_, GenConfig>::try_from(map.context("no BENCH_GEN map")?)?;
        map.set(0, traffic.config()?, 0)?;
        Ok(())
    }

    /// Packets each program counted, by `BENCH_STATS` slot, summed over CPUs.
    fn packets(&self) -> Result<[u64; STATS_LEN as usize]> {
        let map = self.ebpf.map(bench::BENCH_STATS);
        let map = PerCpuArray::<_, u64>::try_from(map.context("no BENCH_STATS map")?)?;
        let mut out = [0; STATS_LEN as usize];
        for (slot, n) in (0..).zip(&mut out) {
            *n = map.get(&slot, 0)?.iter().sum();
        }
        Ok(out)
    }

    /// The kernel's run time and run count of program `name`, as `Dataplane::run_stats` gives
    /// them for the balancer.
    fn run_stats(&self, name: &str) -> Result<(Duration, u64)> {
        let info = self.xdp(name)?.info()?;
        Ok((info.run_time(), info.run_count()))
    }

    /// One `BPF_PROG_RUN` call of the generator in live-frames mode: `GEN_REPEAT` frames out of
    /// interface `ifindex` (of the calling thread's namespace).
    fn generate(&self, frame: &[u8], ifindex: u32) -> Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; live frames go out of the ingress interface.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        // Live frames report no return value: the counters tell what happened.
        self.xdp(bench::PROG_GEN)?.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(bytemuck::bytes_of(&md)),
            repeat: GEN_REPEAT,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })?;
        Ok(())
    }
}

/// What the generator sends in one measurement.
struct Traffic {
    frame: Vec<u8>,
    sport_off: u32,
    csum_off: u32,
    flows: u32,
}

impl Traffic {
    fn tcp_v4(syn: bool, flows: u32) -> Traffic {
        let t = Packet::eth(MAC_GEN, MAC_DUT)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(10000, 80);
        let t = if syn { t.syn() } else { t.ack() };
        // 64-byte frames.
        Traffic {
            frame: t.payload(&[0; 10]).build(),
            sport_off: 34,
            csum_off: 34 + 16,
            flows,
        }
    }

    fn tcp_v6(flows: u32) -> Traffic {
        let t = Packet::eth(MAC_GEN, MAC_DUT)
            .ipv6(CLIENT_V6, VIP_V6)
            .tcp(10000, 80)
            .ack();
        // 80-byte frames (the smallest multiple of 8 that holds the headers).
        Traffic {
            frame: t.payload(&[0; 6]).build(),
            sport_off: 54,
            csum_off: 54 + 16,
            flows,
        }
    }

    /// The generator's configuration (`BENCH_GEN[0]`).
    fn config(&self) -> Result<GenConfig> {
        ensure!(
            self.frame.len().is_multiple_of(8) && self.frame.len() <= GEN_FRAME_MAX,
            "generator frame of {} bytes",
            self.frame.len()
        );
        ensure!(
            self.flows.is_power_of_two(),
            "flow count {} is not a power of two",
            self.flows
        );
        let mut frame = [0u64; GEN_FRAME_MAX / 8];
        bytemuck::cast_slice_mut::<u64, u8>(&mut frame)[..self.frame.len()]
            .copy_from_slice(&self.frame);
        Ok(GenConfig {
            sport_off: self.sport_off,
            csum_off: self.csum_off,
            flow_mask: self.flows - 1,
            _pad: 0,
            frame,
        })
    }
}

/// The program under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dut {
    /// The bench's own `xlb_bench_refl`.
    Reflector,
    /// xlb's `xlb_lb`, in its `Dataplane`.
    Lb,
}

impl Dut {
    /// Attaches the program to the veth's end in `NS_DUT`.
    fn attach(self, gear: &mut Gear, dut: &mut Dataplane) -> Result<XdpLinkId> {
        in_netns(NS_DUT, || match self {
            Dut::Reflector => gear.attach(bench::PROG_REFLECT, IF_DUT),
            Dut::Lb => Ok(dut.attach(Program::Lb, IF_DUT, AttachMode::Native)?),
        })?
    }

    fn detach(self, gear: &mut Gear, dut: &mut Dataplane, link: XdpLinkId) -> Result<()> {
        match self {
            Dut::Reflector => gear.detach(bench::PROG_REFLECT, link),
            Dut::Lb => Ok(dut.detach(Program::Lb, link)?),
        }
    }
}

struct Case {
    name: &'static str,
    dut: Dut,
    /// The VIP index the traffic is for (balancer cases).
    vip: u32,
    traffic: Traffic,
    note: &'static str,
}

struct Measured {
    mpps: f64,
    /// Share of the program under test's packets that got the expected verdict.
    good: f64,
    /// Share of its packets that took a backend from the ring (new or re-balanced flows).
    new_flow_share: f64,
    /// Its mean run time per packet from the kernel's statistics (NaN when they are off).
    prog_ns: f64,
}

fn veth_bench(plan: &Plan, cpu: usize, no_fib: bool, results: &mut Results) -> Result<()> {
    let _net = BenchNet::up().context("setting up the bench namespaces")?;

    let mut gear = Gear::load()?;
    let mut dut = Dataplane::load(Sizes {
        flows: 1 << 18,
        listeners: 2,
        ring_slots: 2 * 2 * RING_SIZE,
        targets: 64,
    })?;
    configure_lb(&mut dut, no_fib)?;

    let gen_ifindex = in_netns(NS_GEN, || nix::net::if_::if_nametoindex(IF_GEN))?
        .context("ifindex of the generator's veth")?;
    let sink = in_netns(NS_GEN, || gear.attach(bench::PROG_SINK, IF_GEN))??;

    let cases = [
        Case {
            name: "veth.reflector.mpps",
            dut: Dut::Reflector,
            vip: 0,
            traffic: Traffic::tcp_v4(false, FLOWS_ESTABLISHED),
            note: "MAC swap + XDP_TX: the baseline",
        },
        Case {
            name: "veth.lb.v4.established.mpps",
            dut: Dut::Lb,
            vip: 0,
            traffic: Traffic::tcp_v4(false, FLOWS_ESTABLISHED),
            note: "64B TCP ACKs over 16384 flows, IPIP",
        },
        Case {
            name: "veth.lb.v4.syn.mpps",
            dut: Dut::Lb,
            vip: 0,
            traffic: Traffic::tcp_v4(true, FLOWS_SYN),
            note: "64B TCP SYNs over 32768 flows, IPIP",
        },
        Case {
            name: "veth.lb.v6.established.mpps",
            dut: Dut::Lb,
            vip: 1,
            traffic: Traffic::tcp_v6(FLOWS_ESTABLISHED),
            note: "80B TCP ACKs over 16384 flows, IP6IP6",
        },
    ];
    let mut mpps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut good = vec![1.0f64; cases.len()];
    let mut new_flows: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut prog_ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    // The reflector runs first in every round and once more at the end: each balancer run is
    // compared with the reflector runs just before and after it (their geometric mean), which
    // cancels slow drifts in what else the machine is doing.
    let mut reflector: Vec<f64> = Vec::new();
    for round in 0..=plan.rounds {
        for (i, case) in cases.iter().enumerate() {
            if round == plan.rounds && case.dut != Dut::Reflector {
                continue;
            }
            let m = measure(plan, cpu, gen_ifindex, &mut gear, &mut dut, case)?;
            eprintln!(
                "  round {}: {:<32} {:.3} Mpps",
                round + 1,
                case.name,
                m.mpps
            );
            if case.dut == Dut::Reflector {
                reflector.push(m.mpps);
            }
            mpps[i].push(m.mpps);
            good[i] = good[i].min(m.good);
            new_flows[i].push(m.new_flow_share);
            prog_ns[i].push(m.prog_ns);
        }
    }
    for (i, case) in cases.iter().enumerate() {
        if case.dut == Dut::Lb {
            ratios[i] = mpps[i]
                .iter()
                .zip(reflector.windows(2))
                .map(|(m, r)| m / (r[0] * r[1]).sqrt())
                .collect();
        }
    }
    gear.detach(bench::PROG_SINK, sink)?;
    let [generated, _, sunk] = gear.packets()?;

    for (i, case) in cases.iter().enumerate() {
        let mut checked = if good[i] < 0.999 {
            format!("; only {:.1}% tunnelled!", good[i] * 100.0)
        } else {
            String::new()
        };
        if case.dut == Dut::Lb {
            let _ = write!(
                checked,
                "; {:.1}% from the ring",
                median(&mut new_flows[i]) * 100.0
            );
        }
        results.add(
            case.name,
            median(&mut mpps[i]),
            format!("{}; median of {} runs{checked}", case.note, mpps[i].len()),
        );
    }
    for (i, case) in cases.iter().enumerate() {
        let name = case.name.trim_end_matches(".mpps");
        results.add(
            &format!("{name}.prog_ns"),
            median(&mut prog_ns[i]),
            "the program under test's own ns per packet (kernel run-time stats)",
        );
    }
    for (i, case) in cases.iter().enumerate() {
        if case.dut == Dut::Lb {
            let name = case.name.trim_end_matches(".mpps");
            results.add(
                &format!("{name}.ratio"),
                median(&mut ratios[i]),
                "over veth.reflector.mpps (the runs before and after), median of rounds",
            );
        }
    }
    results.add(
        "veth.returned_share",
        sunk as f64 / generated.max(1) as f64,
        "frames back at the generator / frames generated",
    );
    Ok(())
}

/// One VIP per family (TCP port 80) over `TARGETS` targets of the same family.
fn configure_lb(dp: &mut Dataplane, no_fib: bool) -> Result<()> {
    let cfg = Config {
        tunnel_src_v4: [172, 16, 0, 0],
        tunnel_src_v6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        gateway_mac: MAC_GEN,
        flags: if no_fib { CONFIG_F_NO_FIB } else { 0 },
        mtu: 1500,
        _pad: [0; 6],
    };
    dp.set_config(&cfg)?;
    let mut index = 1;
    for (vip, family) in [
        (IpAddr::V4(VIP_V4), AF_INET),
        (IpAddr::V6(VIP_V6), AF_INET6),
    ] {
        let vip_index = u32::from(family == AF_INET6);
        let mut keys = Vec::new();
        let mut indices = Vec::new();
        for i in 1..=TARGETS {
            let addr = if family == AF_INET {
                IpAddr::V4(target_v4(i))
            } else {
                IpAddr::V6(target_v6(i))
            };
            let (fam, a) = fixture::addr_bytes(addr);
            dp.set_backend(
                index,
                &Backend {
                    addr: a,
                    family: fam,
                    flags: BACKEND_F_LIVE,
                    mac: MAC_GEN,
                    port_be: 0,
                    _pad: [0; 6],
                },
            )?;
            keys.push(a);
            indices.push(index);
            index += 1;
        }
        let targets: Vec<MaglevTarget<'_>> = keys
            .iter()
            .zip(&indices)
            .map(|(k, i)| MaglevTarget {
                key: k,
                index: *i,
                weight: 1,
            })
            .collect();
        dp.write_ring(
            fixture::ring_base(vip_index, 0),
            &maglev::build(&targets, RING_SIZE)?,
        )?;
        let (fam, a) = fixture::addr_bytes(vip);
        dp.set_vip(
            &VipKey {
                addr: a,
                port_be: 80u16.to_be(),
                proto: IPPROTO_TCP,
                family: fam,
            },
            &fixture::vip_meta(vip_index, 0, 0),
        )?;
    }
    Ok(())
}

/// Packets the program under test has seen, and those with the expected verdict.
/// The program under test's counters at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    /// Packets it saw.
    packets: u64,
    /// Packets with the expected verdict (tunnelled; every packet for the reflector).
    good: u64,
    /// Flows the balancer (re)created from the ring.
    new_flows: u64,
    /// Kernel run-time statistics of the program (zero when they are off).
    run_ns: u64,
    runs: u64,
}

fn snapshot(dut: &mut Dataplane, gear: &Gear, case: &Case) -> Result<Snapshot> {
    let ((run, runs), packets, good, new_flows) = match case.dut {
        Dut::Reflector => {
            let n = gear.packets()?[STAT_REFLECT as usize];
            (gear.run_stats(bench::PROG_REFLECT)?, n, n, 0)
        }
        Dut::Lb => {
            let r = dut.reasons()?;
            let all = r.iter().map(|(_, c)| c.packets).sum();
            let tx = r
                .iter()
                .filter(|(r, _)| *r == Reason::TxTunnel)
                .map(|(_, c)| c.packets)
                .sum();
            let new_flows = dut.vip_counters(case.vip)?.new_flows;
            (dut.run_stats(Program::Lb)?, all, tx, new_flows)
        }
    };
    Ok(Snapshot {
        at: Instant::now(),
        packets,
        good,
        new_flows,
        run_ns: run.as_nanos() as u64,
        runs,
    })
}

fn measure(
    plan: &Plan,
    cpu: usize,
    ifindex: u32,
    gear: &mut Gear,
    dut: &mut Dataplane,
    case: &Case,
) -> Result<Measured> {
    gear.set_traffic(&case.traffic)?;
    let link = case.dut.attach(gear, dut)?;
    let stop = AtomicBool::new(false);
    let frame = &case.traffic.frame;
    let result = thread::scope(|s| {
        let generator = s.spawn(|| {
            in_netns(NS_GEN, || -> Result<()> {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .context("pinning the generator")?;
                // Real-time priority keeps other work on this CPU (builds, say) from taking
                // turns with the generator; the kernel's RT throttling still leaves them 5%.
                // Without it (no permission) the numbers are just noisier.
                let param = libc::sched_param { sched_priority: 1 };
                // SAFETY: plain call on this thread (0) with a valid parameter.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
                for _ in 0..GEN_MAX_CALLS {
                    if stop.load(Ordering::Relaxed) || xlb_tests::stop::requested() {
                        return Ok(());
                    }
                    gear.generate(frame, ifindex)?;
                }
                Ok(())
            })?
        });
        let counted = (|| -> Result<[Snapshot; 4]> {
            sleep(plan.warmup)?;
            let a = snapshot(dut, gear, case)?;
            sleep(plan.interval)?;
            let b = snapshot(dut, gear, case)?;
            // Then the program's own cost, from the kernel's run-time statistics. They are on
            // only for this shorter second interval: they slow every program down a little.
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| e.io_error)
                .inspect_err(|e| eprintln!("xlb-bench: no BPF run-time statistics: {e}"))
                .ok();
            let c = snapshot(dut, gear, case)?;
            sleep(plan.interval / 2)?;
            let d = snapshot(dut, gear, case)?;
            drop(stats);
            Ok([a, b, c, d])
        })();
        stop.store(true, Ordering::Relaxed);
        let generated = generator
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        generated?;
        counted
    });
    // Detach before looking at the result, so a failed measurement leaves nothing attached.
    case.dut.detach(gear, dut, link)?;
    let [a, b, c, d] = result?;
    let n = b.packets - a.packets;
    ensure!(
        n > 0,
        "{}: the program under test saw no packets",
        case.name
    );
    let runs = d.runs - c.runs;
    Ok(Measured {
        mpps: n as f64 / (b.at - a.at).as_secs_f64() / 1e6,
        good: (b.good - a.good) as f64 / n as f64,
        new_flow_share: (b.new_flows - a.new_flows) as f64 / n as f64,
        prog_ns: if runs == 0 {
            f64::NAN
        } else {
            (d.run_ns - c.run_ns) as f64 / runs as f64
        },
    })
}
