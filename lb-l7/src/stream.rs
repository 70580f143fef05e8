//! The user-space proxy of NLB's listeners that the XDP tier cannot serve
//! ([`lb_config::Config::in_user_space`]): TLS listeners, which terminate TLS with the
//! listener's certificates, SNI and ALPN policy, and TCP or TLS listeners whose target group
//! takes a PROXY v2 header. XDP forwards packets: it can neither end TLS nor put bytes in front
//! of a TCP stream.
//!
//! A connection, in order:
//! 1. a target is picked from the group as the L7 tier picks ([`Group::pick`]: round robin over
//!    the healthy targets, all of them when none is);
//! 2. on a TLS listener, the TLS handshake ([`HANDSHAKE_TIMEOUT`]);
//! 3. a TCP connection to the target ([`CONNECT_TIMEOUT`]), then the PROXY v2 header if the
//!    group takes it (with the SNI), then, to a TLS group, TLS with ALPN the protocol agreed
//!    with the client (none if none), any certificate accepted as the L7 tier accepts them;
//! 4. bytes both ways with `tokio::io::copy_bidirectional` until both directions are done or
//!    nothing has moved for the listener's `tcp.idle_timeout.seconds` (NLB's 350 s by default,
//!    and always on TLS listeners). An end of stream from one side shuts the other side's write
//!    (TLS: `close_notify`) and the other direction goes on: half-closes pass through. Clear
//!    to clear, `splice(2)` could move the bytes without copying them through user space; TLS
//!    on either side needs the copy.
//!
//! Each connection is a task of its own, so a slow or stuck peer holds only its own. The task is
//! tracked with its target ([`Upstream::track`]): a target that leaves its group is cut at the
//! end of its deregistration delay, as the L7 tier's connections to it are.
//!
//! [`Upstream::track`]: crate::upstream::Upstream::track

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use rustls::{ClientConfig, ServerConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use lb_config::{AlpnPolicy, Listener, Protocol, TargetGroup};

use crate::{
    balance::{Group, InFlight},
    listener::{Open, drain, stopped},
    metrics::{L7Metrics, StreamMetrics},
    proxy::Shared,
    proxy_protocol, tls,
};

/// How long a client or a target may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a target may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many quiet checks make an idle timeout (as the L7 tier's): a close at most 5% late.
const IDLE_CHECKS: u32 = 20;

/// A listener's swappable state: its group and TLS settings, compiled with a config.
#[derive(Debug)]
pub struct StreamState {
    /// The listener's address.
    pub local: SocketAddr,
    pub group: Arc<Group>,
    /// TLS listeners: certificates, security policy, ALPN policy.
    pub tls: Option<Arc<ServerConfig>>,
    /// TLS groups: how to reach the targets.
    pub target_tls: Option<TargetTls>,
    /// The group's `proxy_protocol_v2.enabled`.
    pub proxy_protocol: bool,
    /// The listener's `tcp.idle_timeout.seconds`.
    pub idle_timeout: Duration,
    pub metrics: StreamMetrics,
}

impl StreamState {
    /// Listener `l` forwarding to `group` (a TCP or TLS group whose config is `tg`), with `tls`,
    /// its server config if it is a TLS listener.
    pub fn new(
        l: &Listener,
        tg: &TargetGroup,
        group: Arc<Group>,
        tls: Option<Arc<ServerConfig>>,
        metrics: &L7Metrics,
    ) -> StreamState {
        let local = l.addr();
        StreamState {
            local,
            metrics: metrics.stream(&local.to_string(), tls.is_some(), &tg.name),
            group,
            tls,
            target_tls: (tg.protocol == Protocol::Tls)
                .then(|| TargetTls::new(l.alpn_policy.unwrap_or_default())),
            proxy_protocol: tg.proxy_protocol_v2(),
            idle_timeout: l.idle_timeout(),
        }
    }
}

/// The client configs toward a TLS group: one per protocol the client may have agreed (none
/// included), so that the target is offered exactly what the client speaks.
#[derive(Debug)]
pub struct TargetTls(Vec<(Option<&'static [u8]>, Arc<ClientConfig>)>);

impl TargetTls {
    /// For a listener with ALPN policy `policy`.
    pub fn new(policy: AlpnPolicy) -> TargetTls {
        let offers = std::iter::once(None).chain(policy.protocols().iter().copied().map(Some));
        TargetTls(offers.map(|p| (p, tls::client_config(p))).collect())
    }

    /// The config that offers `alpn` (the first, without ALPN, for anything else).
    fn config(&self, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        self.0
            .iter()
            .find(|(p, _)| *p == alpn)
            .or(self.0.first())
            .map(|(_, c)| c.clone())
            .expect("TargetTls::new makes the config without ALPN")
    }
}

/// Accepts until `stop` turns true, then drains like the HTTP listeners.
pub async fn run(
    socket: TcpListener,
    state: Arc<ArcSwap<StreamState>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, client)) => accept(stream, client, state.load_full(), &shared, &mut conns),
                // Out of descriptors and the like: wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(socket);
    drain(conns).await;
}

/// Picks the target of a new connection and starts its task. With no target to pick, the
/// connection is closed at once.
fn accept(
    stream: TcpStream,
    client: SocketAddr,
    state: Arc<StreamState>,
    shared: &Shared,
    conns: &mut JoinSet<()>,
) {
    state.metrics.new_flows.inc();
    let Some(pick) = state.group.pick(None, Instant::now()) else {
        return;
    };
    let target = pick.target.addr;
    let origin = (state.group.protocol.0, target);
    let task = conns.spawn(connection(stream, client, target, pick.in_flight, state));
    shared.upstream.track(origin, task);
}

/// A byte stream either way: TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One client connection, from its handshake to its end.
async fn connection(
    stream: TcpStream,
    client: SocketAddr,
    target: SocketAddr,
    in_flight: InFlight,
    state: Arc<StreamState>,
) {
    let m = &state.metrics;
    let _open = Open::new(&m.active_flows);
    let _ = stream.set_nodelay(true);
    // What the client connected to, for the PROXY header: the listener's own address unless
    // it listens on every address.
    let local = stream.local_addr().unwrap_or(state.local);
    let (client_io, sni, alpn): (Box<dyn Io>, _, _) = match &state.tls {
        None => (Box::new(stream), None, None),
        Some(cfg) => {
            let handshake = TlsAcceptor::from(cfg.clone()).accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(s)) => {
                    let session = s.get_ref().1;
                    let sni = session.server_name().map(str::to_owned);
                    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                    (Box::new(s), sni, alpn)
                }
                failed => {
                    // A client that leaves before saying anything (a port probe) started no TLS.
                    if !matches!(&failed, Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof) {
                        m.client_tls_errors.inc();
                    }
                    return;
                }
            }
        }
    };
    let ends = Ends {
        client,
        local,
        target,
    };
    let target_io = match open_target(&state, &ends, sni.as_deref(), alpn.as_deref()).await {
        Ok(io) => io,
        Err(e) => {
            match e {
                TargetError::Connect => m.target_connection_errors.inc(),
                TargetError::Tls => m.target_tls_errors.inc(),
            };
            return;
        }
    };
    splice(client_io, target_io, &state).await;
    drop(in_flight);
}

/// The addresses of one connection.
struct Ends {
    client: SocketAddr,
    /// Where the client connected.
    local: SocketAddr,
    target: SocketAddr,
}

/// Why no stream to the target.
enum TargetError {
    /// Refused, unreachable, too slow, or broken before the header was written.
    Connect,
    /// Its TLS handshake failed.
    Tls,
}

/// Connects to the target: TCP, the PROXY header, TLS.
async fn open_target(
    state: &StreamState,
    ends: &Ends,
    sni: Option<&str>,
    alpn: Option<&[u8]>,
) -> Result<Box<dyn Io>, TargetError> {
    let connect = TcpStream::connect(ends.target);
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        _ => return Err(TargetError::Connect),
    };
    let _ = tcp.set_nodelay(true);
    if state.proxy_protocol {
        let header = proxy_protocol::header(ends.client, ends.local, sni)
            .map_err(|_| TargetError::Connect)?;
        tcp.write_all(&header)
            .await
            .map_err(|_| TargetError::Connect)?;
    }
    let Some(target_tls) = &state.target_tls else {
        return Ok(Box::new(tcp));
    };
    // As toward HTTPS groups: the target's id is an address, so no SNI.
    let name = ServerName::IpAddress(ends.target.ip().into());
    let handshake = TlsConnector::from(target_tls.config(alpn)).connect(name, tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        _ => Err(TargetError::Tls),
    }
}

/// Moves bytes both ways until both directions end, one side breaks, or the idle timeout.
async fn splice(client: Box<dyn Io>, target: Box<dyn Io>, state: &StreamState) {
    let m = &state.metrics;
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted::new(client, &moved, Some(m.processed_bytes.clone()));
    let mut target = Counted::new(target, &moved, None);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
        () = idle(&moved, state.idle_timeout) => {}
    }
    if client.reset {
        m.client_resets.inc();
    }
    if target.reset {
        m.target_resets.inc();
    }
}

/// Resolves once nothing has moved for `timeout`: [`IDLE_CHECKS`] checks in a row that saw the
/// same count.
async fn idle(moved: &AtomicU64, timeout: Duration) {
    let mut seen = moved.load(Ordering::Relaxed);
    let mut quiet = 0;
    while quiet < IDLE_CHECKS {
        tokio::time::sleep(timeout / IDLE_CHECKS).await;
        let now = moved.load(Ordering::Relaxed);
        (seen, quiet) = if now == seen {
            (seen, quiet + 1)
        } else {
            (now, 0)
        };
    }
}

/// One side of a connection: every read and write counts as activity (and, on the client's
/// side, as processed bytes), and a reset is remembered for the metrics.
struct Counted {
    inner: Box<dyn Io>,
    moved: Arc<AtomicU64>,
    bytes: Option<Counter>,
    reset: bool,
}

impl Counted {
    fn new(inner: Box<dyn Io>, moved: &Arc<AtomicU64>, bytes: Option<Counter>) -> Counted {
        Counted {
            inner,
            moved: moved.clone(),
            bytes,
            reset: false,
        }
    }

    /// Takes note of an I/O's outcome: `n` bytes moved, or a reset.
    fn note<T>(&mut self, r: &Poll<io::Result<T>>, n: usize) {
        match r {
            Poll::Ready(Ok(_)) if n > 0 => {
                self.moved.fetch_add(1, Ordering::Relaxed);
                if let Some(b) = &self.bytes {
                    b.inc_by(n as u64);
                }
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.reset = true;
            }
            _ => {}
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(&r, buf.filled().len() - before);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        let n = match &r {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.note(&r, n);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
