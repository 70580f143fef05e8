//! A listening socket and its connections. Each accepted connection does its TLS handshake (on
//! HTTPS, with the listener's TLS config at that moment) and is served by hyper-util's auto
//! builder, which speaks HTTP/1.1 and HTTP/2 (h2c with prior knowledge on HTTP, ALPN on HTTPS).
//! Every request reads the listener's current [`Route`] from an `ArcSwap`, so a reload applies
//! to keep-alive connections already open.
//!
//! The idle timeout is ALB's: a connection that has sent and received nothing for that long, with
//! no request in flight, is closed. A stop (reload removing the listener, or shutdown) stops
//! accepting, asks open connections to finish (HTTP/2 GOAWAY; on HTTP/1, hyper puts
//! `Connection: close` on the responses still to come, then closes) and waits for them at most
//! [`DRAIN_TIMEOUT`].
//!
//! Logs made here rather than per request: a listener with `connection_logs.enabled` writes ALB's
//! connection log line once a connection is set up (after its TLS handshake) or has failed to
//! be; and a request that hyper's HTTP/1 parser refuses (it answers 400 itself, before any
//! request reaches xlb) gets its access log line when its connection ends.

use std::{
    error::Error,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

use http::{StatusCode, Version};

use super::{
    desync::{self, Framing, Verdict},
    log::{ConnTraceId, Connection, Entry, Handshake},
    proxy::{self, Conn, Route, Shared, TlsInfo},
    tls,
};

/// How long a stopping listener waits for its connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's swappable state: routing and, on HTTPS, certificates.
#[derive(Debug)]
pub struct State {
    pub route: Arc<Route>,
    pub tls: Option<Arc<ServerConfig>>,
}

/// Accepts until `stop` turns true, then drains.
pub async fn run(
    socket: TcpListener,
    state: Arc<ArcSwap<State>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let for_conns = stop.clone();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, client)) => {
                    let conn = connection(stream, client, state.clone(), shared.clone(), for_conns.clone());
                    conns.spawn(conn);
                }
                // Out of descriptors and the like: wait a little rather than spin.
                Err(_) => {
                    state.load().route.metrics.listener.rejected_connections.inc();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(socket);
    drain(conns).await;
}

/// Waits for `conns` to finish, [`DRAIN_TIMEOUT`] at most, then cuts those left.
pub(crate) async fn drain(mut conns: JoinSet<()>) {
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Activity on one connection, for the idle timeout and the log of a request hyper refused.
#[derive(Debug, Default)]
struct Activity {
    /// Bumped by every read, write and finished request: a counter, not a clock read per I/O.
    moved: AtomicU64,
    in_flight: AtomicUsize,
    /// Bytes read from and written to the client, in all.
    read: AtomicU64,
    written: AtomicU64,
    /// `read` and `written` when the last request was answered: what came after is a refused
    /// request's.
    answered: [AtomicU64; 2],
}

impl Activity {
    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read and written since the last request was answered.
    fn since_answered(&self) -> (u64, u64) {
        let [read, written] = &self.answered;
        let since = |total: &AtomicU64, mark: &AtomicU64| {
            total
                .load(Ordering::Relaxed)
                .saturating_sub(mark.load(Ordering::Relaxed))
        };
        (since(&self.read, read), since(&self.written, written))
    }

    /// Resolves once the connection has been idle for `idle` with nothing in flight: nothing
    /// moved over [`IDLE_CHECKS`] checks `idle / IDLE_CHECKS` apart, so it closes between `idle`
    /// and `idle * 21 / 20` after its last byte (60 to 63 s by default).
    async fn expired(&self, idle: Duration) {
        let mut seen = self.moved.load(Ordering::Relaxed);
        let mut quiet = 0;
        while quiet < IDLE_CHECKS {
            tokio::time::sleep(idle / IDLE_CHECKS).await;
            let now = self.moved.load(Ordering::Relaxed);
            if now != seen || self.in_flight.load(Ordering::Relaxed) > 0 {
                (seen, quiet) = (now, 0);
            } else {
                quiet += 1;
            }
        }
    }
}

/// How many quiet checks make an idle timeout: a wake-up every 3 s of a 60 s timeout, for a
/// close at most 5% late.
const IDLE_CHECKS: u32 = 20;

/// Counts a connection as open (`active_connection_count`, `active_flow_count_*`) until
/// dropped.
pub(crate) struct Open(Gauge);

impl Open {
    pub(crate) fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts a request as in flight on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.touch();
        let [read, written] = &a.answered;
        read.store(a.read.load(Ordering::Relaxed), Ordering::Relaxed);
        written.store(a.written.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// How long a connection whose request was refused keeps reading (and dropping) what the
/// client still sends once the refusal is written: closed with unread bytes, the socket would
/// send a reset that can destroy the refusal before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// A client stream (after TLS) that records when bytes last moved and how many, and reads
/// through the connection's [`Framing`], which decides what hyper reads.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    framing: desync::Shared,
    bytes: Counter,
    /// Once shutting down after a refusal: the end of the linger.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: &Arc<Activity>, framing: &desync::Shared, bytes: &Counter) -> Self {
        Watched {
            inner,
            activity: activity.clone(),
            framing: framing.clone(),
            bytes: bytes.clone(),
            linger: None,
        }
    }

    fn moved(&self, n: usize, total: &AtomicU64) {
        self.activity.touch();
        self.bytes.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if Framing::drain_shared(&this.framing, buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        // Bounded: each turn reads bytes, and a read of none is the end.
        loop {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            this.moved(read, &this.activity.read);
            Framing::filter(&this.framing, buf, before);
            // Nothing for hyper yet (a head not whole, or dropped bytes): read on, as an empty
            // read would say the client is gone.
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    /// After a refusal: the write side shut, what the client still sends is read and dropped
    /// until it closes or [`LINGER`] passes.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_none() {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let linger = self.linger.as_mut().map(|l| l.as_mut().poll(cx));
                    return match linger {
                        Some(Poll::Pending) => Poll::Pending,
                        _ => Poll::Ready(Ok(())),
                    };
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.moved(n, &self.activity.written);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.moved(n, &self.activity.written);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if Framing::discarding(&self.framing) {
            return self.poll_linger(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One client connection: TLS if the listener has it, then HTTP until idle, closed or stopped.
async fn connection(
    stream: TcpStream,
    client: SocketAddr,
    state: Arc<ArcSwap<State>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    // Keep-alive data is small and latency-bound.
    let _ = stream.set_nodelay(true);
    let now = state.load_full();
    let idle = now.route.idle_timeout;
    let metrics = now.route.metrics.listener.clone();
    metrics.new_connections.inc();
    let _open = Open::new(&metrics.active_connections);
    let activity = Arc::new(Activity::default());
    // The mode when the connection opened holds for all its requests.
    let framing = Framing::shared(now.route.desync_mode);
    let Some(tls) = &now.tls else {
        let conn = Arc::new(Conn::new(client, None));
        log_connection(&now.route, &shared, client, None, conn.trace_id);
        let stream = Watched::new(stream, &activity, &framing, &metrics.processed_bytes);
        serve(stream, conn, state, shared, (activity, framing), stop, idle).await;
        return;
    };
    let started = Instant::now();
    let handshake = TlsAcceptor::from(tls.clone()).accept(stream);
    // A client that never finishes its handshake is idle too.
    let stream = match tokio::time::timeout(idle, handshake).await {
        Ok(Ok(stream)) => stream,
        failed => {
            // A client that leaves before saying anything (a port probe) started no TLS.
            if let Ok(Err(e)) = &failed
                && e.kind() != io::ErrorKind::UnexpectedEof
            {
                metrics.tls_errors.inc();
            }
            let failed = Some(Handshake::Failed);
            log_connection(&now.route, &shared, client, failed, ConnTraceId::new());
            return;
        }
    };
    let session = stream.get_ref().1;
    let info = TlsInfo {
        server_name: session.server_name().map(Arc::from),
        cipher: session
            .negotiated_cipher_suite()
            .map_or("-", |s| tls::openssl_cipher(s.suite())),
        protocol: session.protocol_version().map_or("-", tls::protocol_name),
    };
    let done = Handshake::Done {
        protocol: info.protocol,
        cipher: info.cipher,
        latency: started.elapsed(),
    };
    let conn = Arc::new(Conn::new(client, Some(info)));
    log_connection(&now.route, &shared, client, Some(done), conn.trace_id);
    let stream = Watched::new(stream, &activity, &framing, &metrics.processed_bytes);
    serve(stream, conn, state, shared, (activity, framing), stop, idle).await;
}

/// Serves HTTP on an established (maybe TLS) stream.
async fn serve<S>(
    stream: S,
    conn: Arc<Conn>,
    state: Arc<ArcSwap<State>>,
    shared: Arc<Shared>,
    (activity, framing): (Arc<Activity>, desync::Shared),
    mut stop: watch::Receiver<bool>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let busy_on = activity.clone();
    let refused = (conn.clone(), state.clone(), shared.clone());
    let service = service_fn(move |req| {
        let busy = Busy::new(&busy_on);
        let verdict = match req.version() {
            Version::HTTP_2 => Verdict::COMPLIANT,
            _ => Framing::next_request(&framing),
        };
        let route = state.load().route.clone();
        let (conn, shared, framing) = (conn.clone(), shared.clone(), framing.clone());
        // Boxed: a request's future is kilobytes, and hyper moves it (into its dispatcher on
        // HTTP/1, into a task per stream on HTTP/2) where a pointer would do.
        Box::pin(async move {
            let resp = proxy::handle(req, verdict, route, conn, shared).await;
            if matches!(&resp, Ok(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS) {
                Framing::switched(&framing);
            }
            drop(busy);
            resp
        })
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // As the target side (`Upstream::connect_h1`): a response's head and body in one `send`.
    builder.http1().writev(false);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(served);
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        _ = activity.expired(idle) => return,
        () = stopped(&mut stop) => {
            served.as_mut().graceful_shutdown();
            // Stopping: let the connection finish what it has; the listener bounds the wait.
            served.await
        }
    };
    if let Err(e) = ended
        && let Some(status) = refused_status(&*e)
    {
        let (conn, state, shared) = refused;
        let bytes = activity.since_answered();
        shared
            .log
            .write(&refused_entry(&conn, &state.load().route, status, bytes));
    }
}

/// The status hyper's HTTP/1 parser answered a request it refused with, if it did.
fn refused_status(e: &(dyn Error + 'static)) -> Option<u16> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    // hyper answers a head over its buffer with 431, a URI over 64 KiB with 414 (told apart by
    // its message only), anything else it cannot parse with 400.
    Some(match e.is_parse_too_large() {
        true if e.to_string().contains("URI") => 414,
        true => 431,
        false => 400,
    })
}

/// The access log entry of a request the parser refused, with the bytes the connection moved
/// since its last answered request: as ALB logs a malformed request, without method, path,
/// version, rule or target.
fn refused_entry(conn: &Conn, route: &Route, status: u16, (read, written): (u64, u64)) -> Entry {
    let tls = conn.tls.as_ref();
    Entry {
        kind: if tls.is_some() { "https" } else { "http" },
        received: SystemTime::now(),
        responded: None,
        elb: route.local,
        client: conn.client,
        target: None,
        request_processing: None,
        target_processing: None,
        response_processing: None,
        elb_status: status,
        target_status: None,
        received_bytes: read,
        sent_bytes: written,
        request: None,
        user_agent: None,
        ssl_cipher: tls.map(|t| t.cipher),
        ssl_protocol: tls.map(|t| t.protocol),
        target_group: None,
        trace_id: None,
        domain_name: tls.and_then(|t| t.server_name.clone()),
        matched_rule_priority: None,
        action: None,
        redirect_url: None,
        error_reason: None,
        conn_trace_id: conn.trace_id,
        classification: None,
    }
}

/// Writes a connection's line to ALB's connection log, if its listener keeps one.
fn log_connection(
    route: &Route,
    shared: &Shared,
    client: SocketAddr,
    tls: Option<Handshake>,
    trace_id: ConnTraceId,
) {
    if route.connection_logs {
        shared.log.connection(&Connection {
            at: SystemTime::now(),
            client,
            listener_port: route.local.port(),
            tls,
            trace_id,
        });
    }
}
