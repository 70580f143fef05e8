//! `xlb-bench-l7`: xlb's L7 tier against HAProxy and nginx (`cargo xtask bench l7`, as root).
//! Prints a table; `--json FILE` also writes `{"results": {"l7.xlb.h1.rps": number, ...}}`.
//!
//! Everything runs in a network namespace made for the run, on its loopback: one nginx serving a
//! small fixed body is the backend of all three proxies, and each proxy listens for plain HTTP
//! and HTTPS (ALPN `h2` and `http/1.1`), forwards over keep-alive HTTP/1.1, adds the
//! `X-Forwarded-*` headers and writes an access log line per request (to /dev/null). xlb is the
//! real agent (`xlb run`, its XDP program on a veth that carries no traffic).
//!
//! Three loads, each in the same way for every proxy: `h1` (wrk, HTTP/1.1 keep-alive), `tls`
//! (wrk over HTTPS) and `h2` (h2load, HTTP/2 over TLS). Two more, on request, measure the TCP
//! proxy of NLB's PROXY v2 listeners against HAProxy in TCP mode (`send-proxy-v2`; nginx sits
//! them out): `tcp` (wrk's keep-alive requests, bytes through the proxy) and `tcp-conn` (a new
//! connection per request: what a connection costs). The proxies get the same CPUs and the same
//! number of workers (`--workers`: tokio worker threads, HAProxy's `nbthread`, nginx's
//! `worker_processes`); the load generator and the backend get the other CPUs. This machine is
//! small and shared, so runs interleave (xlb, HAProxy, nginx, repeated) and each figure is the
//! median over the rounds. `l7.direct.h1.*` is wrk against the backend itself: the ceiling the
//! load generator and the backend allow.
//!
//! Each run also counts the CPUs' time (`/proc/stat`): the proxy CPUs' time per request (what a
//! request costs the proxy, however the run went), how idle the load CPUs were (not the limit if
//! above zero), and the time the hypervisor gave other guests (steal). A run with more than 5 %
//! steal is run again, up to three times, and the quietest counts.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpStream},
    ops::Range,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use xlb_tests::{
    agent::xlb_bin,
    lab::{in_netns, netns_command},
};

#[derive(Parser)]
#[command(
    name = "xlb-bench-l7",
    about = "xlb's L7 tier against HAProxy and nginx (run as root)"
)]
struct Args {
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// One short round, to check that the tool works.
    #[arg(long)]
    quick: bool,
    /// Each load once through xlb alone, and no table: the profile run of the profile-guided
    /// build (`cargo xtask build --pgo`).
    #[arg(long)]
    train: bool,
    /// Workers of each proxy, each on a CPU of its own (the first ones); the load generator and
    /// the backend share the rest.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The loads to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "h1,tls,h2")]
    load: Vec<Load>,
    /// Rounds of (xlb, HAProxy, nginx) per load.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Concurrent connections of wrk (h1, tls).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// h2load: connections, and concurrent streams on each.
    #[arg(long, default_value_t = 8)]
    h2_connections: usize,
    #[arg(long, default_value_t = 8)]
    h2_streams: usize,
    /// The xlb binary to measure (`cargo xtask bench l7` passes its profile-guided build); by
    /// default the one next to this tool.
    #[arg(long)]
    xlb: Option<PathBuf>,
    /// Another xlb binary (e.g. built from main), measured alongside as `xlb_baseline`: a
    /// before/after comparison in one interleaved run.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

const BACKEND_PORT: u16 = 8000;
/// What the backend answers.
const BODY: &str = "hello from the backend\n";

/// The backend's port behind a PROXY v2 header (nginx's `proxy_protocol`).
const BACKEND_PP2_PORT: u16 = 8001;

/// A proxy under test and its plain and TLS ports, and its TCP port if it is measured as a TCP
/// proxy.
#[derive(Clone, Copy)]
struct Proxy {
    name: &'static str,
    http: u16,
    https: u16,
    tcp: Option<u16>,
}

/// Where the `--baseline` build listens.
const BASELINE: Proxy = Proxy {
    name: "xlb_baseline",
    http: 8084,
    https: 8444,
    tcp: None,
};

const PROXIES: [Proxy; 3] = [
    Proxy {
        name: "xlb",
        http: 8081,
        https: 8441,
        tcp: Some(8091),
    },
    Proxy {
        name: "haproxy",
        http: 8082,
        https: 8442,
        tcp: Some(8092),
    },
    Proxy {
        name: "nginx",
        http: 8083,
        https: 8443,
        tcp: None,
    },
];

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Load {
    H1,
    Tls,
    H2,
    Tcp,
    TcpConn,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::H1 => "h1",
            Load::Tls => "tls",
            Load::H2 => "h2",
            Load::Tcp => "tcp",
            Load::TcpConn => "tcp-conn",
        }
    }

    /// Whether `p` runs this load: the TCP loads need a TCP port.
    fn runs_on(self, p: &Proxy) -> bool {
        !matches!(self, Load::Tcp | Load::TcpConn) || p.tcp.is_some()
    }
}

/// One run's outcome.
#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of the proxy's CPUs per request, in microseconds: what the proxy spends on a
    /// request, whatever the load generator and the host's other guests do meanwhile.
    cpu_us: f64,
    /// How idle the load generator's and the backend's CPUs were, in percent: above zero, they
    /// were not what limited the run.
    load_idle: f64,
    /// The share of all CPUs' time the hypervisor gave to other guests, in percent.
    steal: f64,
}

/// A run during which the hypervisor took more than this share of the CPUs (percent) is
/// repeated: on a shared host, other guests otherwise decide who wins.
const MAX_STEAL: f64 = 5.0;
/// Runs of one proxy and load at most; the one with the least steal counts.
const ATTEMPTS: usize = 3;

/// Time of some CPUs since boot, in `/proc/stat`'s ticks.
#[derive(Clone, Copy, Default)]
struct Ticks {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl Ticks {
    /// The sum over `cpus`.
    fn now(cpus: &Range<usize>) -> Result<Ticks> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let mut t = Ticks::default();
        for cpu in cpus.clone() {
            let name = format!("cpu{cpu}");
            let v: Vec<u64> = stat
                .lines()
                .map(str::split_whitespace)
                .find_map(|mut f| (f.next() == Some(name.as_str())).then(|| f.collect::<Vec<_>>()))
                .with_context(|| format!("no {name} in /proc/stat"))?
                .iter()
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            ensure!(v.len() >= 8, "{name} in /proc/stat: {v:?}");
            // user nice system idle iowait irq softirq steal
            t.busy += v[0] + v[1] + v[2] + v[5] + v[6];
            t.idle += v[3] + v[4];
            t.steal += v[7];
        }
        Ok(t)
    }

    fn since(self, before: Ticks) -> Ticks {
        Ticks {
            busy: self.busy - before.busy,
            idle: self.idle - before.idle,
            steal: self.steal - before.steal,
        }
    }

    /// At least 1, for the divisions.
    fn total(self) -> f64 {
        (self.busy + self.idle + self.steal).max(1) as f64
    }
}

/// The namespace, the temporary directory and the processes of one bench; all removed on drop,
/// whatever happened.
struct Bench {
    ns: String,
    dir: PathBuf,
    pins: PathBuf,
    children: Vec<(&'static str, Child)>,
    proxy_cpus: Range<usize>,
    load_cpus: Range<usize>,
}

/// `cpus` as `taskset -c` takes them.
fn cpu_list(cpus: &Range<usize>) -> String {
    format!("{}-{}", cpus.start, cpus.end - 1)
}

impl Bench {
    fn new(workers: usize) -> Result<Bench> {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        ensure!(
            workers >= 1 && workers < cpus,
            "--workers {workers}: needs at least one more CPU for the load generator ({cpus} CPUs)"
        );
        let id = std::process::id();
        let bench = Bench {
            ns: format!("xlb-bench-l7-{id}"),
            dir: std::env::temp_dir().join(format!("xlb-bench-l7-{id}")),
            pins: PathBuf::from(format!("/sys/fs/bpf/xlb-bench-l7-{id}")),
            children: Vec::new(),
            proxy_cpus: 0..workers,
            load_cpus: workers..cpus,
        };
        std::fs::create_dir_all(&bench.dir).context("temp dir")?;
        run(Command::new("ip").args(["netns", "add", &bench.ns]))?;
        run(&mut bench.exec(&["ip", "link", "set", "lo", "up"]))?;
        run(&mut bench.exec(&[
            "ip", "link", "add", "xlb0", "type", "veth", "peer", "name", "xlb1",
        ]))?;
        run(&mut bench.exec(&["ip", "link", "set", "xlb0", "up"]))?;
        Ok(bench)
    }

    /// `argv` in the namespace.
    fn exec(&self, argv: &[&str]) -> Command {
        netns_command(&self.ns, argv)
    }

    /// `argv` in the namespace on `cpus`.
    fn pinned(&self, cpus: &Range<usize>, argv: &[&str]) -> Command {
        let cpus = cpu_list(cpus);
        let mut full = vec!["taskset", "-c", &cpus];
        full.extend_from_slice(argv);
        self.exec(&full)
    }

    /// Starts a server on `cpus`; its output goes to a log file in the temporary directory.
    fn spawn(
        &mut self,
        name: &'static str,
        cpus: &Range<usize>,
        argv: &[&str],
        env: &[(&str, String)],
    ) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = self.pinned(cpus, argv);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Waits (10 s at most) until `port` accepts connections in the namespace.
    fn wait_port(&mut self, name: &str, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while Instant::now() < deadline {
            let up = in_netns(&self.ns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            for (n, c) in &mut self.children {
                if let Some(st) = c.try_wait()? {
                    let log = std::fs::read_to_string(self.dir.join(format!("{n}.log")));
                    bail!("{n} exited ({st}):\n{}", log.unwrap_or_default());
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("{name} does not listen on port {port}")
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// Runs `run`, counting what the CPUs did meanwhile. A run during which the hypervisor took
    /// more than [`MAX_STEAL`] is run again, [`ATTEMPTS`] times at most, and the quietest kept.
    fn measured(&self, mut run: impl FnMut() -> Result<Sample>) -> Result<Sample> {
        let mut quietest: Option<Sample> = None;
        for attempt in 1..=ATTEMPTS {
            let before = (Ticks::now(&self.proxy_cpus)?, Ticks::now(&self.load_cpus)?);
            let mut s = run()?;
            let proxy = Ticks::now(&self.proxy_cpus)?.since(before.0);
            let load = Ticks::now(&self.load_cpus)?.since(before.1);
            // Busy share times the CPUs: CPU seconds per second, then per request.
            let cpu_seconds = proxy.busy as f64 / proxy.total() * self.proxy_cpus.len() as f64;
            s.cpu_us = cpu_seconds / s.rps.max(1.0) * 1e6;
            s.load_idle = load.idle as f64 / load.total() * 100.0;
            s.steal = (proxy.steal + load.steal) as f64 / (proxy.total() + load.total()) * 100.0;
            if quietest.is_none_or(|q| s.steal < q.steal) {
                quietest = Some(s);
            }
            if s.steal <= MAX_STEAL || attempt == ATTEMPTS {
                break;
            }
            println!(
                "    (the hypervisor took {:.0} % of the CPUs: again)",
                s.steal
            );
        }
        quietest.context("no run")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers, xlb drains.
        for (_, c) in &self.children {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "xlb-bench-l7 needs root (namespaces, XDP)"
    );
    for tool in ["haproxy", "nginx", "wrk", "h2load", "openssl", "taskset"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    xlb_tests::stop::install()?;
    let (rounds, seconds) = match (args.quick, args.train) {
        (true, _) => (1, 1),
        (false, true) => (1, args.seconds),
        (false, false) => (args.rounds, args.seconds),
    };

    let mut bench = Bench::new(args.workers)?;
    let proxies = start_servers(&mut bench, &args)?;
    for &p in &proxies {
        check_answers(&bench, p)?;
    }
    if args.train {
        for &load in args.load.iter().filter(|l| l.runs_on(&PROXIES[0])) {
            measure(&bench, PROXIES[0], load, &args, seconds)?;
        }
        return Ok(());
    }

    let mut results = Results::default();
    let direct = bench.measured(|| {
        wrk(
            &bench,
            &format!("http://127.0.0.1:{BACKEND_PORT}/"),
            &args,
            seconds,
            &[],
        )
    })?;
    results.add(
        "l7.direct.h1",
        &[direct],
        "wrk against the backend itself: the ceiling",
    );
    for &load in &args.load {
        let proxies: Vec<Proxy> = proxies
            .iter()
            .filter(|p| load.runs_on(p))
            .copied()
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); proxies.len()];
        for _ in 0..rounds {
            for (i, p) in proxies.iter().enumerate() {
                samples[i].push(measure(&bench, *p, load, &args, seconds)?);
            }
        }
        for (p, s) in proxies.iter().zip(&samples) {
            results.add(
                &format!("l7.{}.{}", p.name, load.name()),
                s,
                &format!("median of {rounds}"),
            );
        }
        // The first is xlb.
        for (p, s) in proxies.iter().zip(&samples).skip(1) {
            results.pair(load, p.name, &samples[0], s);
        }
    }
    println!(
        "\n{} worker(s) per proxy on CPU {}, load generator and backend on CPU {}\n",
        args.workers,
        cpu_list(&bench.proxy_cpus),
        cpu_list(&bench.load_cpus)
    );
    println!("{}", results.table());
    println!("{}", results.pairs_table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One run of `load` through `p`, printed as it ends.
fn measure(bench: &Bench, p: Proxy, load: Load, args: &Args, seconds: u64) -> Result<Sample> {
    ensure!(!xlb_tests::stop::requested(), "interrupted");
    let s = bench.measured(|| match load {
        Load::H1 => wrk(
            bench,
            &format!("http://127.0.0.1:{}/", p.http),
            args,
            seconds,
            &[],
        ),
        Load::Tls => wrk(
            bench,
            &format!("https://127.0.0.1:{}/", p.https),
            args,
            seconds,
            &[],
        ),
        Load::H2 => h2load(bench, p.https, args, seconds),
        Load::Tcp | Load::TcpConn => {
            let url = format!("http://127.0.0.1:{}/", p.tcp.unwrap_or_default());
            let close: &[&str] = match load {
                Load::TcpConn => &["-H", "Connection: close"],
                _ => &[],
            };
            wrk(bench, &url, args, seconds, close)
        }
    })?;
    println!(
        "  {:<8} {:<4} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  \
         CPU {:>5.1} us/req  load CPUs idle {:>3.0} %  steal {:>2.0} %",
        p.name,
        load.name(),
        s.rps,
        s.p50_ms,
        s.p99_ms,
        s.cpu_us,
        s.load_idle,
        s.steal
    );
    Ok(s)
}

/// Writes the certificate and the configs, and starts the backend and the proxies: xlb alone
/// when training, else xlb, the baseline if any, HAProxy and nginx. Returns them, xlb first.
fn start_servers(bench: &mut Bench, args: &Args) -> Result<Vec<Proxy>> {
    let workers = args.workers;
    let (cert, key, both) = (
        bench.path("cert.pem"),
        bench.path("key.pem"),
        bench.path("both.pem"),
    );
    xlb_tests::lab::self_signed_cert(Path::new(&cert), Path::new(&key), &["localhost"])?;
    // HAProxy wants the chain and the key in one file.
    std::fs::write(
        &both,
        std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?,
    )?;

    let backend = bench.path("backend.conf");
    std::fs::write(&backend, nginx_backend(&bench.dir))?;
    let load = bench.load_cpus.clone();
    start_nginx(bench, "backend", &load, &backend)?;
    bench.wait_port("backend", BACKEND_PORT)?;

    let cpus = bench.proxy_cpus.clone();
    // Each agent attaches its XDP program to an interface of its own: the baseline to the peer.
    let xlb = match &args.xlb {
        Some(path) => path.clone(),
        None => xlb_bin()?,
    };
    start_xlb(bench, PROXIES[0], "xlb0", &xlb, &cert, &key, workers)?;
    let mut proxies = vec![PROXIES[0]];
    if !args.train {
        if let Some(baseline) = &args.baseline {
            start_xlb(bench, BASELINE, "xlb1", baseline, &cert, &key, workers)?;
            proxies.push(BASELINE);
        }
        let haproxy = bench.path("haproxy.cfg");
        std::fs::write(&haproxy, haproxy_config(workers, &both))?;
        bench.spawn("haproxy", &cpus, &["haproxy", "-db", "-f", &haproxy], &[])?;
        let nginx = bench.path("nginx.conf");
        std::fs::write(&nginx, nginx_proxy(&bench.dir, workers, &cert, &key))?;
        start_nginx(bench, "nginx", &cpus, &nginx)?;
        proxies.extend_from_slice(&PROXIES[1..]);
    }
    for p in &proxies {
        bench.wait_port(p.name, p.http)?;
        bench.wait_port(p.name, p.https)?;
        if let Some(tcp) = p.tcp {
            bench.wait_port(p.name, tcp)?;
        }
    }
    Ok(proxies)
}

/// Starts nginx as `name` with `config`, its prefix and error log in the temporary directory.
fn start_nginx(
    bench: &mut Bench,
    name: &'static str,
    cpus: &Range<usize>,
    config: &str,
) -> Result<()> {
    let (prefix, errors) = (bench.path(""), bench.path(&format!("{name}-error.log")));
    bench.spawn(
        name,
        cpus,
        &["nginx", "-p", &prefix, "-e", &errors, "-c", config],
        &[],
    )
}

/// Starts `xlb run` as `p`, its XDP program on `iface`.
fn start_xlb(
    bench: &mut Bench,
    p: Proxy,
    iface: &str,
    bin: &Path,
    cert: &str,
    key: &str,
    workers: usize,
) -> Result<()> {
    let listener = |port: u16, tls: &str| {
        format!(
            "[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\n{tls}\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n"
        )
    };
    // The TCP proxy: a TCP listener whose group takes PROXY v2, served in user space.
    let tcp = p.tcp.map_or(String::new(), |port| {
        format!(
            "[[target_groups]]\nname = \"pp2\"\nprotocol = \"TCP\"\nport = {BACKEND_PP2_PORT}\n\
             targets = [{{ id = \"127.0.0.1\" }}]\n\
             attributes = {{ \"proxy_protocol_v2.enabled\" = \"true\" }}\n\n\
             [[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"pp2\" }}\n\n"
        )
    });
    let config = format!(
        "[node]\ninterface = \"{iface}\"\nxdp_mode = \"generic\"\npin_dir = {:?}\n\
         api_socket = {:?}\nstate_file = {:?}\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"HTTP\"\nport = {BACKEND_PORT}\n\
         targets = [{{ id = \"127.0.0.1\" }}]\n\n{tcp}{}{}",
        bench.pins.join(p.name).display().to_string(),
        bench.path(&format!("{}.sock", p.name)),
        bench.path(&format!("{}-state.json", p.name)),
        listener(p.http, "protocol = \"HTTP\"\n"),
        listener(
            p.https,
            &format!(
                "protocol = \"HTTPS\"\ncertificates = [{{ cert = {cert:?}, key = {key:?} }}]\n"
            )
        ),
    );
    let path = bench.path(&format!("{}.toml", p.name));
    std::fs::write(&path, config)?;
    let cpus = bench.proxy_cpus.clone();
    bench.spawn(
        p.name,
        &cpus,
        &[bin.to_str().context("xlb path")?, "run", "--config", &path],
        &[("TOKIO_WORKER_THREADS", workers.to_string())],
    )
}

fn haproxy_config(workers: usize, pem: &str) -> String {
    let p = PROXIES[1];
    format!(
        "global\n  nbthread {workers}\n  maxconn 4096\n  log stdout format raw local0\n\n\
         defaults\n  mode http\n  log global\n  option httplog\n  option forwardfor\n\
         \x20 timeout connect 10s\n  timeout client 60s\n  timeout server 60s\n\n\
         frontend web\n  bind 127.0.0.1:{}\n  bind 127.0.0.1:{} ssl crt {pem} alpn h2,http/1.1\n\
         \x20 http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n\
         \x20 http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n\
         \x20 http-request set-header X-Forwarded-Port %[dst_port]\n\
         \x20 default_backend web\n\n\
         backend web\n  server backend 127.0.0.1:{BACKEND_PORT}\n\n\
         frontend tcp\n  mode tcp\n  option tcplog\n  bind 127.0.0.1:{}\n  default_backend tcp\n\n\
         backend tcp\n  mode tcp\n  server backend 127.0.0.1:{BACKEND_PP2_PORT} send-proxy-v2\n",
        p.http,
        p.https,
        p.tcp.unwrap_or_default()
    )
}

/// nginx's common part: foreground, its pid file in the temporary directory.
fn nginx_main(dir: &Path, name: &str, workers: usize) -> String {
    format!(
        "daemon off;\nworker_processes {workers};\npid {};\nevents {{ worker_connections 4096; }}\n",
        dir.join(format!("{name}.pid")).display()
    )
}

fn nginx_backend(dir: &Path) -> String {
    format!(
        "{}http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
         \x20 server {{\n    listen 127.0.0.1:{BACKEND_PORT};\n\
         \x20   listen 127.0.0.1:{BACKEND_PP2_PORT} proxy_protocol;\n\
         \x20   location / {{ default_type text/plain; return 200 {BODY:?}; }}\n  }}\n}}\n",
        nginx_main(dir, "backend", 1)
    )
}

fn nginx_proxy(dir: &Path, workers: usize, cert: &str, key: &str) -> String {
    let p = PROXIES[2];
    format!(
        "{}http {{\n  access_log /dev/null;\n  keepalive_requests 100000000;\n\
         \x20 upstream web {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 256; }}\n\
         \x20 server {{\n    listen 127.0.0.1:{};\n    listen 127.0.0.1:{} ssl http2;\n\
         \x20   ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
         \x20   location / {{\n      proxy_pass http://web;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20     proxy_set_header X-Forwarded-Port $server_port;\n    }}\n  }}\n}}\n",
        nginx_main(dir, "nginx", workers),
        p.http,
        p.https
    )
}

/// Checks that `p` answers with the backend's body, over HTTP/1.1, HTTPS and h2, and through
/// its TCP port.
fn check_answers(bench: &Bench, p: Proxy) -> Result<()> {
    let tcp = p
        .tcp
        .map(|port| (format!("http://127.0.0.1:{port}/"), "--http1.1"));
    for (url, version) in [
        (format!("http://127.0.0.1:{}/", p.http), "--http1.1"),
        (format!("https://127.0.0.1:{}/", p.https), "--http1.1"),
        (format!("https://127.0.0.1:{}/", p.https), "--http2"),
    ]
    .into_iter()
    .chain(tcp)
    {
        let body = run(&mut bench.exec(&["curl", "-sSk", "--max-time", "5", version, &url]))?;
        ensure!(body == BODY, "{} {url} {version} answered {body:?}", p.name);
    }
    Ok(())
}

/// wrk on the load CPUs: one thread, keep-alive unless `extra` (more flags) says otherwise.
fn wrk(bench: &Bench, url: &str, args: &Args, seconds: u64, extra: &[&str]) -> Result<Sample> {
    let (connections, duration) = (format!("-c{}", args.connections), format!("-d{seconds}s"));
    let mut argv = vec!["wrk", "-t1", &connections, &duration, "--latency"];
    argv.extend_from_slice(extra);
    argv.push(url);
    let out = run(&mut bench.pinned(&bench.load_cpus, &argv))?;
    ensure!(!out.contains("Non-2xx"), "{url}: errors\n{out}");
    ensure!(
        !out.contains("Socket errors"),
        "{url}: socket errors\n{out}"
    );
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let pct = |p: &str| {
        out.lines()
            .map(str::split_whitespace)
            .find_map(|mut w| (w.next() == Some(p)).then(|| w.next()).flatten())
            .and_then(wrk_ms)
            .with_context(|| format!("no {p} latency in wrk's output:\n{out}"))
    };
    Ok(Sample {
        rps,
        p50_ms: pct("50%")?,
        p99_ms: pct("99%")?,
        ..Sample::default()
    })
}

/// A wrk duration (`245.00us`, `1.23ms`, `1.01s`) in milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// h2load on the load CPUs: HTTP/2 over TLS; latencies from its per-request log.
fn h2load(bench: &Bench, port: u16, args: &Args, seconds: u64) -> Result<Sample> {
    let log = bench.path(&format!("h2load-{port}.log"));
    let out = run(&mut bench.pinned(
        &bench.load_cpus,
        &[
            "h2load",
            "-t1",
            &format!("-c{}", args.h2_connections),
            &format!("-m{}", args.h2_streams),
            &format!("-D{seconds}"),
            "--warm-up-time=1",
            &format!("--log-file={log}"),
            &format!("https://127.0.0.1:{port}/"),
        ],
    ))?;
    ensure!(
        out.contains("Application protocol: h2"),
        "no h2 on port {port}:\n{out}"
    );
    let done = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("h2load's output:\n{out}"))?;
    ensure!(done.contains(" 0 failed, 0 errored"), "port {port}: {done}");
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{out}"))?;
    let mut micros: Vec<f64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    let _ = std::fs::remove_file(&log);
    ensure!(!micros.is_empty(), "h2load logged no request");
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize] / 1e3;
    Ok(Sample {
        rps,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        ..Sample::default()
    })
}

/// Results in the order measured, and xlb against each other proxy.
#[derive(Default)]
struct Results {
    medians: Vec<(String, Sample, String)>,
    pairs: Vec<Paired>,
}

/// xlb's figures over another proxy's, round by round: both ran in the same round, a few
/// seconds apart, so the drift of the host between rounds cancels out of each ratio.
struct Paired {
    load: Load,
    other: &'static str,
    /// xlb's req/s over the other's, one per round.
    rps: Vec<f64>,
    /// xlb's CPU time per request over the other's, one per round.
    cpu: Vec<f64>,
    /// xlb's p99 latency over the other's, one per round.
    p99: Vec<f64>,
}

impl Paired {
    /// The median ratios of req/s, of CPU time per request and of p99 latency.
    fn medians(&self) -> (f64, f64, f64) {
        (
            median(self.rps.clone()),
            median(self.cpu.clone()),
            median(self.p99.clone()),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Results {
    /// xlb's `ours` against `theirs` of `other`, round by round.
    fn pair(&mut self, load: Load, other: &'static str, ours: &[Sample], theirs: &[Sample]) {
        let ratios =
            |f: fn(&Sample) -> f64| ours.iter().zip(theirs).map(|(a, b)| f(a) / f(b)).collect();
        self.pairs.push(Paired {
            load,
            other,
            rps: ratios(|s| s.rps),
            cpu: ratios(|s| s.cpu_us),
            p99: ratios(|s| s.p99_ms),
        });
    }

    fn pairs_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| xlb against | load | req/s ratio: median (min–max) | CPU µs/req ratio: median | rounds xlb served more \
             | p99 ratio: median | rounds xlb's p99 was lower |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for p in &self.pairs {
            let (lo, hi) = p
                .rps
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            let won = p.rps.iter().filter(|&&r| r > 1.0).count();
            let quicker = p.p99.iter().filter(|&&r| r < 1.0).count();
            let (rps, cpu, p99) = p.medians();
            let rounds = p.rps.len();
            let _ = writeln!(
                out,
                "| {} | {} | {rps:.2} ({lo:.2}–{hi:.2}) | {cpu:.2} | {won} of {rounds} | {p99:.2} \
                 | {quicker} of {rounds} |",
                p.other,
                p.load.name(),
            );
        }
        out
    }

    /// The medians of `samples` under `name`.
    fn add(&mut self, name: &str, samples: &[Sample], note: &str) {
        let median = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let s = Sample {
            rps: median(|s| s.rps),
            p50_ms: median(|s| s.p50_ms),
            p99_ms: median(|s| s.p99_ms),
            cpu_us: median(|s| s.cpu_us),
            load_idle: median(|s| s.load_idle),
            steal: median(|s| s.steal),
        };
        self.medians.push((name.to_owned(), s, note.to_owned()));
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| run | req/s | p50 ms | p99 ms | CPU µs/req | load CPUs idle | steal | notes |\n\
             |---|---:|---:|---:|---:|---:|---:|---|"
        );
        for (name, s, note) in &self.medians {
            let _ = writeln!(
                out,
                "| `{name}` | {:.0} | {:.3} | {:.3} | {:.1} | {:.0} % | {:.0} % | {note} |",
                s.rps, s.p50_ms, s.p99_ms, s.cpu_us, s.load_idle, s.steal
            );
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, s, _) in &self.medians {
            map.insert(format!("{name}.rps"), serde_json::json!(s.rps));
            map.insert(format!("{name}.p50_ms"), serde_json::json!(s.p50_ms));
            map.insert(format!("{name}.p99_ms"), serde_json::json!(s.p99_ms));
            map.insert(format!("{name}.cpu_us"), serde_json::json!(s.cpu_us));
            map.insert(format!("{name}.load_idle"), serde_json::json!(s.load_idle));
        }
        for p in &self.pairs {
            let key = format!("l7.xlb.{}.vs_{}", p.load.name(), p.other);
            let (rps, cpu, p99) = p.medians();
            map.insert(format!("{key}.rps_ratio"), serde_json::json!(rps));
            map.insert(format!("{key}.cpu_ratio"), serde_json::json!(cpu));
            map.insert(format!("{key}.p99_ratio"), serde_json::json!(p99));
        }
        serde_json::json!({ "results": map })
    }
}
