//! What the L7 tests share: a [`Lab`] that owns a tokio runtime, HTTP backends that answer with
//! their name, and xlb's L7 tier started from a TOML string; plus `curl` and raw-TCP clients.
//! Everything listens on 127.0.0.1 only, every client call has a timeout, and dropping the lab
//! stops xlb and the backends.

#![allow(dead_code, reason = "each test binary uses part of the support module")]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener as StdListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_config::Config;
use lb_health::checker::{Checker, TargetStatus, View};
use lb_l7::{
    L7Config,
    log::{AccessLog, Lines},
    metrics::L7Metrics,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{oneshot, watch},
};

/// The L7 part of `toml`, a config without its `[node]`: parsed and validated as `xlb` does,
/// certificates loaded.
pub fn l7_config(toml: &str) -> L7Config {
    let text = format!("[node]\ninterface = \"lo\"\n{toml}");
    let cfg = Config::parse(&text, "l7.toml").unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    lb_l7::check_certificates(&cfg).unwrap_or_else(|e| panic!("config: {e:?}\n{toml}"));
    L7Config::of(&cfg)
}

/// A free port on 127.0.0.1 (bound, then released for the server under test), never one given
/// before in this process: the tests of a file run in parallel, and the kernel may hand a released
/// port out again before its first taker binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if given.insert(port) {
            return port;
        }
    }
    panic!("no port not given before in 100 tries");
}

/// A runtime with backends and, once started, xlb's L7 tier.
pub struct Lab {
    rt: tokio::runtime::Runtime,
    stops: Vec<oneshot::Sender<()>>,
    config: Option<watch::Sender<Arc<L7Config>>>,
    lb: Option<tokio::task::JoinHandle<Result<(), lb_l7::L7Error>>>,
    log: Option<Lines>,
    /// The lines taken from `log` so far.
    logged: Vec<String>,
    /// The L7 tier's health checks.
    health: Option<View>,
    /// What xlb counts, for the metrics tests.
    pub metrics: Arc<L7Metrics>,
}

impl Lab {
    pub fn new() -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Lab {
            rt,
            stops: Vec::new(),
            config: None,
            lb: None,
            log: None,
            logged: Vec::new(),
            health: None,
            metrics: Arc::default(),
        }
    }

    /// Starts a backend named `name` on a free port and returns the port. It answers every
    /// request with its name on the first line, then the request line and headers; `/slow`
    /// answers after 3 s; a WebSocket-style upgrade switches to echoing bytes.
    pub fn backend(&mut self, name: &'static str) -> u16 {
        let (stop, stopped) = oneshot::channel();
        self.stops.push(stop);
        let socket = self
            .rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind backend");
        let port = socket.local_addr().expect("backend address").port();
        self.rt.spawn(async move {
            let accept = async {
                loop {
                    let Ok((stream, _)) = socket.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(name, req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            };
            tokio::select! {
                () = accept => {}
                _ = stopped => {}
            }
        });
        port
    }

    /// Starts xlb's L7 tier on `toml`; panics if the config or the start fails.
    pub fn start(&mut self, toml: &str) {
        self.start_config(l7_config(toml));
    }

    /// Starts xlb's L7 tier on `cfg` as it is, so tests may set values the file refuses
    /// (health checks every second); panics if the start fails.
    pub fn start_config(&mut self, cfg: L7Config) {
        let listeners = cfg.clone();
        let (tx, rx) = watch::channel(Arc::new(cfg));
        let (log, lines) = AccessLog::new(1 << 20);
        let (stop, stopped) = oneshot::channel::<()>();
        self.stops.push(stop);
        let checks = Checker::new();
        self.health = Some(checks.0.view());
        let lb = self
            .rt
            .spawn(lb_l7::serve(rx, log, self.metrics.clone(), checks, async {
                let _ = stopped.await;
            }));
        self.config = Some(tx);
        self.lb = Some(lb);
        self.log = Some(lines);
        wait_listening(&listeners);
    }

    /// The health of every checked target.
    pub fn health(&self) -> Vec<TargetStatus> {
        self.health.as_ref().map(View::snapshot).unwrap_or_default()
    }

    /// Applies a new config to the running tier.
    pub fn reload(&mut self, toml: &str) {
        let cfg = l7_config(toml);
        self.config
            .as_ref()
            .expect("started")
            .send(Arc::new(cfg.clone()))
            .expect("xlb is running");
        // New listeners can be seen accepting; swapped rules cannot, so give them a moment.
        wait_listening(&cfg);
        std::thread::sleep(Duration::from_millis(200));
    }

    /// The access log's lines so far, once `done` holds for them (5 s at most, then as they
    /// are): a request's line is written when it is over, which can be just after its client
    /// has the whole response.
    pub fn log_lines(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.log.as_ref().map(Lines::take).unwrap_or_default();
            self.logged.extend(text.lines().map(String::from));
            if done(&self.logged) || Instant::now() > deadline {
                return self.logged.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `task` on the lab's runtime until the lab is dropped.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(task);
    }

    /// Runs a future on the lab's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        if let Some(lb) = self.lb.take() {
            let stopped = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(15), lb).await });
            if !std::thread::panicking() {
                let result = stopped.expect("xlb stops within 15 s").expect("xlb task");
                result.expect("xlb serve");
            }
        }
    }
}

/// Waits (5 s at most) until every listener of `cfg` accepts connections.
fn wait_listening(cfg: &L7Config) {
    let http = cfg.http_listeners.iter().map(|l| l.addr());
    for addr in http.chain(cfg.stream_listeners.iter().map(|l| l.addr())) {
        let up = (0..100).any(|_| {
            let ok = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(up, "xlb does not listen on {addr}");
    }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .expect("101 response"));
    }
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut text = describe(name, &req);
    let body = req.into_body().collect().await?.to_bytes();
    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
    Ok(Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(text)))
        .expect("response"))
}

/// How a backend describes a request: `name` on the first line(s), then the request line and
/// the headers, one per line.
pub fn describe<B>(name: &str, req: &Request<B>) -> String {
    let mut text = format!(
        "{name}\n{} {} {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    text
}

/// What curl got.
#[derive(Debug)]
pub struct Reply {
    /// 0 if there was no HTTP answer.
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's own messages (`-v`).
    pub stderr: String,
    pub exit: i32,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The backend that answered (first body line).
    pub fn backend(&self) -> &str {
        self.body.lines().next().unwrap_or("")
    }

    /// The subject of the server certificate, from curl's `-v` output.
    pub fn subject(&self) -> &str {
        self.stderr
            .lines()
            .find_map(|l| l.split_once(" subject: ").map(|(_, s)| s))
            .unwrap_or("")
    }
}

/// Runs curl with `args` (10 s at most) and parses the last response's head and body.
pub fn curl(args: &[&str]) -> Reply {
    let dir = std::env::temp_dir().join(format!(
        "xlb-l7-curl-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = dir.join("head");
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--noproxy", "*"])
        .args(["-D", head.to_str().expect("utf-8 path")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut parts = trailer.split(' ');
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = parts.next().unwrap_or("").to_owned();
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    // With redirects or 100-continue there are several heads; keep the last.
    let last = head_text
        .split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        version,
        headers,
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Sends raw bytes and returns what came back until the server closed or 5 s passed.
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request that switches a connection to the backends' echo protocol.
pub const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";

/// Opens a connection to `addr` and switches it to the backends' echo protocol (a WebSocket-style
/// upgrade); returns it with the response head, in lower case.
pub fn upgrade(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.write_all(UPGRADE).expect("send");
    let head = read_head(&mut s);
    (s, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Reads a response head (4 KiB at most) byte by byte, so that nothing after it is taken.
pub fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        assert_eq!(s.read(&mut byte).expect("read head"), 1, "closed early");
        head.push(byte[0]);
    }
    head
}

/// A target group of backends on 127.0.0.1, as TOML.
pub fn group(name: &str, ports: &[u16], attributes: &str) -> String {
    let targets: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ id = \"127.0.0.1\", port = {p} }}"))
        .collect();
    format!(
        "[[target_groups]]\nname = \"{name}\"\nprotocol = \"HTTP\"\nport = 1\ntargets = [{}]\nattributes = {{ {attributes} }}\n\n",
        targets.join(", ")
    )
}

/// A CA and leaf certificates it signed, written as PEM files in a temporary directory.
pub struct Pki {
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("xlb-l7-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "xlb test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write CA");
        Pki {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `{file}.pem` and `{file}.key` for `names`; the first name is the common name.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `{ cert = ..., key = ... }` for a config.
pub fn cert_entry((cert, key): &(PathBuf, PathBuf)) -> String {
    format!("{{ cert = {:?}, key = {:?} }}", path(cert), path(key))
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// HAProxy (Debian's `/usr/sbin/haproxy`) in the foreground with `config`, killed when dropped.
pub struct Haproxy {
    child: Child,
    file: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with `config` and waits (5 s at most) until it accepts on `ports`.
    pub fn start(name: &str, config: &str, ports: &[u16]) -> Haproxy {
        let file =
            std::env::temp_dir().join(format!("xlb-haproxy-{name}-{}.cfg", std::process::id()));
        std::fs::write(&file, config).expect("write haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .expect("run haproxy");
        let haproxy = Haproxy { child, file };
        for port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            let up = (0..100).any(|_| {
                let ok = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            });
            assert!(up, "haproxy does not listen on {addr}:\n{config}");
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
