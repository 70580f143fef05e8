//! The client side toward targets. A target group's `protocol` says clear (`HTTP`) or TLS
//! (`HTTPS`, any certificate accepted, as ALB: see [`super::tls::client_config`]); its
//! `protocol_version` says HTTP/1.1 (`HTTP1`) or HTTP/2 (`HTTP2`, `GRPC`; h2c with prior knowledge
//! in clear, ALPN `h2` over TLS), whatever the client spoke.
//!
//! HTTP/1.1 goes through hyper-util's pooled keep-alive client. HTTP/2 does not: that client
//! connects to the URI's authority, which HTTP/2 sends as `:authority`, and the target must see
//! the client's host there (RFC 9113 §8.3.1), not its own address. So HTTP/2 uses one
//! multiplexed connection per target, kept here and replaced when it closes; [`Upstream::retain`]
//! lets connections to targets that left finish their streams and close.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use http::{Request, Response, Uri};
use hyper::{body::Incoming, client::conn::http2};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tower_service::Service as _;

use super::{
    config::{ProtocolVersion, TargetProtocol},
    tls,
};

/// An error from the connector, hyper or the TLS stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a target may take to accept a connection (ALB's target connection timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled HTTP/1.1 connection to a target may stay idle.
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

/// Where HTTP/2 connections go: a target, in clear or over TLS.
type Origin = (TargetProtocol, SocketAddr);

/// Clients toward targets, shared by every listener across reloads.
#[derive(Debug)]
pub struct Upstream {
    http1: Client<HttpsConnector<HttpConnector>, Incoming>,
    /// Connects HTTP/2 targets (ALPN `h2` only).
    h2_connector: HttpsConnector<HttpConnector>,
    h2: Mutex<HashMap<Origin, http2::SendRequest<Incoming>>>,
}

/// A connector for `http://` and `https://` URIs, offering `alpn` over TLS.
fn connector(alpn: &[u8]) -> HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    HttpsConnector::from((tcp, tls::client_config(alpn)))
}

impl Default for Upstream {
    fn default() -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector(b"http/1.1"));
        Upstream {
            http1,
            h2_connector: connector(b"h2"),
            h2: Mutex::default(),
        }
    }
}

impl Upstream {
    /// Sends `req` to `target`. The URI is absolute: its scheme is the group's, its authority
    /// the target's address for HTTP/1.1 and the client's host for HTTP/2.
    pub async fn send(
        &self,
        (protocol, version): (TargetProtocol, ProtocolVersion),
        target: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        if version == ProtocolVersion::Http1 {
            return self.http1.request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(e.into())
                } else {
                    classify(e.into())
                }
            });
        }
        let mut sender = self
            .h2_sender((protocol, target))
            .await
            .map_err(SendError::Connect)?;
        sender
            .send_request(req)
            .await
            .map_err(|e| classify(e.into()))
    }

    /// The open HTTP/2 connection to `origin`, or a new one.
    async fn h2_sender(&self, origin: Origin) -> Result<http2::SendRequest<Incoming>, BoxError> {
        if let Some(open) = self.connections().get(&origin).filter(|s| !s.is_closed()) {
            return Ok(open.clone());
        }
        let (protocol, target) = origin;
        let uri = Uri::builder()
            .scheme(protocol.scheme())
            .authority(target.to_string())
            .path_and_query("/")
            .build()?;
        let io = tokio::time::timeout(CONNECT_TIMEOUT, self.h2_connector.clone().call(uri))
            .await
            .map_err(|_| format!("no connection in {CONNECT_TIMEOUT:?}"))??;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        // Runs until either side closes; a broken connection fails its streams, which report it.
        tokio::spawn(conn);
        sender.ready().await?;
        // Two requests may race to connect; the last one stays, the other serves its request.
        self.connections().insert(origin, sender.clone());
        Ok(sender)
    }

    /// Forgets HTTP/2 connections to targets not in `live`: each closes once its streams are
    /// done, so requests in flight to a deregistered target finish.
    pub fn retain(&self, live: &HashSet<Origin>) {
        self.connections().retain(|o, _| live.contains(o));
    }

    fn connections(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Origin, http2::SendRequest<Incoming>>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A failed exchange is the client's if its body failed: hyper reports the body stream's error
/// as a "user" error, somewhere in the chain.
fn classify(e: BoxError) -> SendError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return SendError::ClientBody(e);
        }
        cause = c.source();
    }
    SendError::Target(e)
}
