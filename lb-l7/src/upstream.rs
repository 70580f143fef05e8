//! The client side toward targets. A target group's `protocol` says clear (`HTTP`) or TLS
//! (`HTTPS`, any certificate accepted, as ALB: see [`super::tls::client_config`]); its
//! `protocol_version` says HTTP/1.1 (`HTTP1`) or HTTP/2 (`HTTP2`, `GRPC`; h2c with prior knowledge
//! in clear, ALPN `h2` over TLS), whatever the client spoke.
//!
//! HTTP/1.1 keeps idle keep-alive connections per target: a request takes one (the most recently
//! used, or a new one), and [`Lease`] puts it back once the response body has been read to its
//! end. This is a few lines over hyper's connection API rather than hyper-util's pooled client,
//! whose pool keys, checkout futures and lazy connects cost more per request than the proxying.
//! HTTP/2 uses one multiplexed connection per target, kept here and replaced when it closes: it
//! must send the client's host as `:authority` (RFC 9113 §8.3.1), not the target's address.
//! [`Upstream::retain`] lets connections to targets that left finish their requests and close,
//! and cuts those still open when the target's deregistration delay ends, as ALB does (not if the
//! target is back in service by then): the tasks that run connections and WebSocket tunnels are
//! kept per target for that, which costs nothing per request.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::task::AbortHandle;
use tower_service::Service as _;

use lb_config::{Protocol, ProtocolVersion};

use crate::tls;

/// An error from the connector, hyper or the TLS stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a target may take to accept a connection (ALB's target connection timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 connection to a target may stay idle before it is not reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// How often HTTP/2 connections PING their target, idle or not: a target that vanished without
/// closing is found and its connection replaced, instead of taking requests until they time out.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Why a request got no response from its target.
#[derive(Debug)]
pub enum SendError {
    /// No connection (refused, unreachable, TLS or HTTP/2 handshake failed).
    Connect(BoxError),
    /// The client's request body failed (bad chunking, early close).
    ClientBody(BoxError),
    /// The target broke the exchange.
    Target(BoxError),
}

/// A client's request body on its way to a target, its bytes counted for the access log and its
/// last movement kept for the idle timeout.
#[derive(Debug)]
pub struct Upload {
    inner: Incoming,
    /// Only a body that has bytes gets a counter: most requests have none.
    read: Option<Arc<AtomicU64>>,
    progress: Option<Arc<Progress>>,
}

/// When a request body last moved: whether the client or the target is the one keeping a
/// request waiting.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the body's last frame (or its end).
    last_ms: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn moved(&self, done: bool) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
        if done {
            self.done.store(true, Ordering::Relaxed);
        }
    }

    /// When the body last moved, and whether it is all sent.
    pub fn last(&self) -> (Instant, bool) {
        let at = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (at, self.done.load(Ordering::Relaxed))
    }
}

impl Upload {
    /// `body` to send from `now` on.
    pub fn new(body: Incoming, now: Instant) -> Upload {
        let has_bytes = !body.is_end_stream();
        Upload {
            inner: body,
            read: has_bytes.then(Arc::default),
            progress: has_bytes.then(|| {
                Arc::new(Progress {
                    start: now,
                    last_ms: AtomicU64::new(0),
                    done: AtomicBool::new(false),
                })
            }),
        }
    }

    /// The count of its bytes sent so far (none for an empty body).
    pub fn counter(&self) -> Option<Arc<AtomicU64>> {
        self.read.clone()
    }

    /// Its progress (none for an empty body, which is sent with its head).
    pub fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.clone()
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(read)) = (&frame, &self.read)
            && let Some(data) = f.data_ref()
        {
            read.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let (Poll::Ready(_), Some(p)) = (&frame, &self.progress) {
            p.moved(matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream());
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where connections go: a target, in clear or over TLS.
pub type Origin = (Protocol, SocketAddr);

/// The HTTP/1.1 pool: idle connections per origin, the most recently used last, with when each
/// went idle; and the origins in service, with their deregistration delay. One lock for both, so
/// that a connection to a target that left is never put back.
#[derive(Debug, Default)]
struct Pool {
    idle: HashMap<Origin, Vec<(http1::SendRequest<Upload>, Instant)>>,
    live: HashMap<Origin, Duration>,
}

type Idle = Mutex<Pool>;

/// Clients toward targets, shared by every listener across reloads.
#[derive(Debug)]
pub struct Upstream {
    /// Connects HTTP/1.1 targets (ALPN `http/1.1` over TLS).
    h1_connector: HttpsConnector<HttpConnector>,
    h1: Arc<Idle>,
    /// Connects HTTP/2 targets (ALPN `h2` only).
    h2_connector: HttpsConnector<HttpConnector>,
    h2: Mutex<HashMap<Origin, http2::SendRequest<Upload>>>,
    /// The tasks that run each origin's connections and tunnels.
    tasks: Arc<Mutex<Tasks>>,
}

/// The tasks that run connections and tunnels, per origin: those of origins in service, and those
/// of origins that left, cut when the delay of their departure ends unless they come back first.
#[derive(Debug, Default)]
struct Tasks {
    open: HashMap<Origin, Vec<AbortHandle>>,
    /// The latest departure of each origin that left (a count, to tell it from earlier ones).
    leaving: HashMap<Origin, (u64, Vec<AbortHandle>)>,
    departures: u64,
}

/// A connector for `http://` and `https://` URIs, offering `alpn` over TLS.
fn connector(alpn: &[u8]) -> HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    HttpsConnector::from((tcp, tls::client_config(Some(alpn))))
}

/// Opens a connection to `origin`, bounded by [`CONNECT_TIMEOUT`].
async fn connect(
    connector: &HttpsConnector<HttpConnector>,
    (protocol, target): Origin,
) -> Result<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>, BoxError> {
    let uri = Uri::builder()
        .scheme(protocol.scheme())
        .authority(target.to_string())
        .path_and_query("/")
        .build()?;
    tokio::time::timeout(CONNECT_TIMEOUT, connector.clone().call(uri))
        .await
        .map_err(|_| format!("no connection in {CONNECT_TIMEOUT:?}"))?
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            h1_connector: connector(b"http/1.1"),
            h1: Arc::default(),
            h2_connector: connector(b"h2"),
            h2: Mutex::default(),
            tasks: Arc::default(),
        }
    }
}

/// An HTTP/1.1 connection lent to one request; [`Lease::release`] returns it for reuse.
#[derive(Debug)]
pub struct Lease {
    sender: http1::SendRequest<Upload>,
    origin: Origin,
    idle: Arc<Idle>,
}

impl Lease {
    /// Returns the connection once its response has been read to the end. A connection dropped
    /// instead (body cut short, upgrade, timeout, a target that left) is closed by hyper.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut pool = lock(&self.idle);
        if !pool.live.contains_key(&self.origin) {
            return;
        }
        let conns = pool.idle.entry(self.origin).or_default();
        // The oldest come first: forget those idle too long.
        let stale = conns
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= POOL_IDLE_TIMEOUT)
            .count();
        conns.drain(..stale);
        conns.push((self.sender, now));
    }
}

impl Upstream {
    /// Sends `req` to `target`, at `now`. For HTTP/1.1 the URI is in origin form and the response
    /// comes with the [`Lease`] of its connection; for HTTP/2 it is absolute, with the client's
    /// host as authority.
    pub async fn send(
        &self,
        (protocol, version): (Protocol, ProtocolVersion),
        target: SocketAddr,
        req: Request<Upload>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let origin = (protocol, target);
        if version == ProtocolVersion::Http1 {
            return self.send_h1(origin, req, now).await;
        }
        let mut sender = self.h2_sender(origin).await.map_err(SendError::Connect)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| classify(e.into()))?;
        Ok((resp, None))
    }

    async fn send_h1(
        &self,
        origin: Origin,
        mut req: Request<Upload>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        // An idle connection the target closed meanwhile gives the request back: try a new one.
        if let Some(mut sender) = self.idle_h1(origin, now) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(self.lease(sender, origin)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify(e.into_error().into())),
                },
            }
        }
        // Boxed, as the HTTP/2 connect below: the connect and TLS handshake futures are large and
        // rare, and inline they would make every request's future as large, copied at each move.
        let mut sender = Box::pin(self.connect_h1(origin)).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| classify(e.into()))?;
        Ok((resp, Some(self.lease(sender, origin))))
    }

    /// A new HTTP/1.1 connection to `origin`.
    async fn connect_h1(&self, origin: Origin) -> Result<http1::SendRequest<Upload>, SendError> {
        let io = connect(&self.h1_connector, origin)
            .await
            .map_err(SendError::Connect)?;
        // One buffer per message, sent with `send`: a request is small, and `writev` costs more
        // in the kernel (its file layer) than copying the body after the head.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        // Runs until either side closes; a broken connection fails its request, which reports it.
        self.track(origin, tokio::spawn(conn.with_upgrades()).abort_handle());
        Ok(sender)
    }

    /// The most recently used idle connection to `origin` that can take a request now.
    fn idle_h1(&self, origin: Origin, now: Instant) -> Option<http1::SendRequest<Upload>> {
        let mut pool = lock(&self.h1);
        let conns = pool.idle.get_mut(&origin)?;
        while let Some((sender, since)) = conns.pop() {
            // A connection still busy (its request body still going) is let go, not waited for.
            if sender.is_ready() && now.saturating_duration_since(since) < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn lease(&self, sender: http1::SendRequest<Upload>, origin: Origin) -> Lease {
        Lease {
            sender,
            origin,
            idle: self.h1.clone(),
        }
    }

    /// The open HTTP/2 connection to `origin`, or a new one.
    async fn h2_sender(&self, origin: Origin) -> Result<http2::SendRequest<Upload>, BoxError> {
        if let Some(open) = lock(&self.h2).get(&origin).filter(|s| !s.is_closed()) {
            return Ok(open.clone());
        }
        Box::pin(self.connect_h2(origin)).await
    }

    /// A new HTTP/2 connection to `origin`, kept for the requests to come.
    async fn connect_h2(&self, origin: Origin) -> Result<http2::SendRequest<Upload>, BoxError> {
        let io = connect(&self.h2_connector, origin).await?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        // Runs until either side closes; a broken connection fails its streams, which report it.
        self.track(origin, tokio::spawn(conn).abort_handle());
        sender.ready().await?;
        // Two requests may race to connect; the last one stays, the other serves its request.
        lock(&self.h2).insert(origin, sender.clone());
        Ok(sender)
    }

    /// Keeps `task` (a connection or a tunnel to `origin`) to cut when `origin` leaves. One that
    /// started after `origin` left (its request picked the target before) is cut with the rest.
    pub fn track(&self, origin: Origin, task: AbortHandle) {
        let mut tasks = lock(&self.tasks);
        if let Some((_, cut)) = tasks.leaving.get_mut(&origin) {
            cut.push(task);
            return;
        }
        let open = tasks.open.entry(origin).or_default();
        open.retain(|t| !t.is_finished());
        open.push(task);
    }

    /// Takes the origins in service and their deregistration delays. Those that left get no new
    /// requests: their idle HTTP/1.1 connections close, their HTTP/2 ones once their streams are
    /// done; whatever still runs to them when their delay (of the config they left) ends is cut,
    /// unless they are back in service by then.
    pub fn retain(&self, live: HashMap<Origin, Duration>) {
        lock(&self.h2).retain(|o, _| live.contains_key(o));
        let mut pool = lock(&self.h1);
        pool.idle.retain(|o, _| live.contains_key(o));
        let delays = std::mem::replace(&mut pool.live, live);
        let live = &pool.live;
        let mut tasks = lock(&self.tasks);
        let Tasks {
            open,
            leaving,
            departures,
        } = &mut *tasks;
        for (origin, (_, back)) in leaving.extract_if(|o, _| live.contains_key(o)) {
            open.entry(origin).or_default().extend(back);
        }
        // Every origin that left, tasks or not: a connection opened later by a request that picked
        // it before (`track`) is then cut with its departure too.
        let gone: HashSet<Origin> = delays
            .keys()
            .chain(open.keys())
            .filter(|o| !live.contains_key(o))
            .copied()
            .collect();
        for origin in gone {
            let left = open.remove(&origin).unwrap_or_default();
            *departures += 1;
            let departure = *departures;
            let cut = leaving.entry(origin).or_default();
            cut.0 = departure;
            cut.1.extend(left);
            let delay = delays.get(&origin).copied().unwrap_or_default();
            let tasks = self.tasks.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                match lock(&tasks).leaving.entry(origin) {
                    Entry::Occupied(cut) if cut.get().0 == departure => {
                        cut.remove().1.iter().for_each(AbortHandle::abort);
                    }
                    // Back in service, or gone again since: not this departure's to cut.
                    _ => {}
                }
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failed exchange is the client's if its body failed: hyper reports the body stream's error
/// (the client connection's, a `hyper::Error`) as a "user" error caused by it, somewhere in the
/// chain. A connection cut at the end of a deregistration delay is a "user" error too ("dispatch
/// task is gone"), caused by a message.
fn classify(e: BoxError) -> SendError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if c.downcast_ref::<hyper::Error>().is_some_and(|h| {
            h.is_user() && std::error::Error::source(h).is_some_and(|c| c.is::<hyper::Error>())
        }) {
            return SendError::ClientBody(e);
        }
        cause = c.source();
    }
    SendError::Target(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        (Protocol::Http, SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// A task that runs until cut.
    fn connection() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_connection_opened_after_its_target_left_is_cut_with_it() {
        let up = Upstream::default();
        up.retain(HashMap::from([(origin(), Duration::from_millis(50))]));
        // The target had no connection when it left; a request that picked it before opens one.
        up.retain(HashMap::new());
        let late = connection();
        up.track(origin(), late.abort_handle());
        let cut = tokio::time::timeout(Duration::from_secs(5), late).await;
        assert!(
            cut.expect("cut within the delay")
                .unwrap_err()
                .is_cancelled()
        );
    }

    #[tokio::test]
    async fn a_target_back_within_its_delay_keeps_its_connections() {
        let up = Upstream::default();
        let live = HashMap::from([(origin(), Duration::from_millis(50))]);
        up.retain(live.clone());
        let open = connection();
        up.track(origin(), open.abort_handle());
        up.retain(HashMap::new());
        up.retain(live);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!open.is_finished(), "cut although the target came back");
        open.abort();
    }
}
