//! One request's way through a listener, as phases in the order they run (after pingora's
//! `ProxyHttp`): [`request_filter`] applies the desync mitigation mode, [`route`] runs the listener rules,
//! then the action: a redirect or fixed response is answered here; a forward goes through
//! [`upstream_peer`] (group, then target), [`protocol_filter`] (what the group's protocol version
//! takes), [`upstream_request_filter`] (ALB's `X-Forwarded-*` headers, the request in the group's
//! HTTP version), the [`Upstream`] clients, and [`response_filter`] (stickiness cookies,
//! hop-by-hop headers). [`handle`] ties them together and makes the access log entry, which the
//! response body (or a WebSocket's tunnel) writes once the request is over, with its bytes.
//!
//! Errors carry who is at fault and map to ALB's status codes: a request the desync mitigation
//! mode blocks, or over ALB's sizes, is the client's (400), and so is one with a
//! `Transfer-Encoding` xlb cannot frame (501) or that the group's protocol version cannot take
//! (ALB's 464); an
//! empty group is ours (503), a target that refuses or breaks the connection the target's (502),
//! and one that does not answer within the idle timeout also the target's (504).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery},
};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, combinators::BoxBody};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use thiserror::Error;

use lb_config::{ListenerProtocol, ProtocolVersion, XffMode};

use crate::{
    action::{FixedResponse, Redirect, RedirectInput},
    balance::{self, Counters, Group, InFlight, Pick, Stickiness, WeightedGroups},
    desync::{Action, ClassificationReason, DesyncMode, RequestSafetyTier, Verdict},
    log::{AccessLog, ConnTraceId, Entry, Host, Pending, RequestLine},
    metrics::{L7Metrics, RouteMetrics},
    rules::{RequestView, RuleSet, strip_port},
    trace,
    upstream::{BoxError, Lease, Origin, Progress, SendError, Upload, Upstream},
};

/// The body of every response xlb sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// ALB's status for a request the target group's protocol version cannot take.
const INCOMPATIBLE_PROTOCOL: u16 = 464;
/// ALB's status for an `X-Forwarded-For` of more than [`MAX_FORWARDED_FOR`] addresses.
const TOO_MANY_FORWARDED_FOR: u16 = 463;
/// The most addresses ALB takes in `X-Forwarded-For`.
const MAX_FORWARDED_FOR: usize = 30;

/// ALB's status, in the access log only, for a request whose client closed the connection
/// before the load balancer could answer.
const CLIENT_CLOSED: u16 = 460;

/// Who caused a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Target,
    LoadBalancer,
}

/// Why a request got an error from the load balancer.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("ambiguous request: {reason}")]
    Ambiguous { reason: &'static str },
    #[error("TRACE is not allowed")]
    Trace,
    #[error("X-Forwarded-For has {count} addresses, more than {MAX_FORWARDED_FOR}")]
    TooManyForwardedFor { count: usize },
    #[error("the client sent none of its body for {timeout:?}")]
    ClientTimeout { timeout: Duration },
    #[error("blocked by the desync mitigation mode: {tier:?} ({reason:?})")]
    Desync {
        tier: RequestSafetyTier,
        reason: ClassificationReason,
    },
    #[error("request line, a header or the headers over ALB's sizes (16 KiB, 16 KiB, 64 KiB)")]
    HeadTooLarge,
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    #[error("request after one whose framing xlb did not follow")]
    Unframed,
    #[error("target group {group} has no target")]
    NoTarget { group: String },
    #[error("target group {group} takes {wants}")]
    Incompatible { group: String, wants: &'static str },
    #[error("connect to {target}: {source}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("request body toward {target}: {source}")]
    ClientBody {
        target: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("target {target}: {source}")]
    Target {
        target: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("target {target} sent no response in {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
    #[error("cannot build the request to {target}: {reason}")]
    Forward { target: SocketAddr, reason: String },
}

impl ProxyError {
    /// The status the client gets, as ALB's.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Ambiguous { .. }
            | ProxyError::Desync { .. }
            | ProxyError::HeadTooLarge
            | ProxyError::Unframed
            | ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Trace => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyForwardedFor { .. } => {
                StatusCode::from_u16(TOO_MANY_FORWARDED_FOR).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Incompatible { .. } => {
                StatusCode::from_u16(INCOMPATIBLE_PROTOCOL).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Target { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forward { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// ALB's code for the access log's `error_reason`, where it has one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::Connect { .. } => Some("TargetConnectionError"),
            ProxyError::Target { .. } => Some("TargetResponseError"),
            ProxyError::Timeout { .. } => Some("TargetTimeout"),
            ProxyError::ClientBody { .. } => Some("IncompleteRequest"),
            // Told by the status alone (405, 463, 408, 503, 464, 500, 501), or by the desync
            // classification (400).
            ProxyError::Desync { .. }
            | ProxyError::HeadTooLarge
            | ProxyError::UnsupportedTransferEncoding
            | ProxyError::Unframed
            | ProxyError::Trace
            | ProxyError::TooManyForwardedFor { .. }
            | ProxyError::ClientTimeout { .. }
            | ProxyError::NoTarget { .. }
            | ProxyError::Incompatible { .. }
            | ProxyError::Forward { .. }
            | ProxyError::Ambiguous { .. } => None,
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Ambiguous { .. }
            | ProxyError::Trace
            | ProxyError::TooManyForwardedFor { .. }
            | ProxyError::ClientTimeout { .. }
            | ProxyError::Desync { .. }
            | ProxyError::HeadTooLarge
            | ProxyError::UnsupportedTransferEncoding
            | ProxyError::Unframed
            | ProxyError::ClientBody { .. }
            | ProxyError::Incompatible { .. } => Fault::Client,
            ProxyError::Connect { .. } | ProxyError::Target { .. } | ProxyError::Timeout { .. } => {
                Fault::Target
            }
            ProxyError::NoTarget { .. } | ProxyError::Forward { .. } => Fault::LoadBalancer,
        }
    }
}

/// A compiled action.
#[derive(Debug)]
pub enum Act {
    Forward(WeightedGroups),
    Redirect(Redirect),
    Fixed(FixedResponse),
}

impl Act {
    fn name(&self) -> &'static str {
        match self {
            Act::Forward(_) => "forward",
            Act::Redirect(_) => "redirect",
            Act::Fixed(_) => "fixed-response",
        }
    }
}

/// A listener's config, compiled; swapped whole on reload.
#[derive(Debug)]
pub struct Route {
    pub local: SocketAddr,
    pub protocol: ListenerProtocol,
    pub rules: RuleSet<Act>,
    /// ALB's `idle_timeout.timeout_seconds`: for idle connections and for targets' answers.
    pub idle_timeout: Duration,
    /// `connection_logs.enabled`: a connection log line per connection.
    pub connection_logs: bool,
    /// ALB's `routing.http.desync_mitigation_mode`, for the connections opened from now on.
    pub desync_mode: DesyncMode,
    /// `X-Forwarded-Port`, made once rather than per request.
    pub forwarded_port: HeaderValue,
    /// ALB's attributes for the headers targets get.
    pub headers: HeaderAttributes,
    /// Metric handles of the listener and of each rule, resolved once per config.
    pub metrics: RouteMetrics,
}

/// ALB's listener attributes (`routing.http.*`) that change the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderAttributes {
    pub xff: XffMode,
    /// `xff_client_port.enabled`: `ip:port` rather than `ip` when appending.
    pub xff_client_port: bool,
    /// `preserve_host_header.enabled`: off, a `Host` without a port gets the listener's.
    pub preserve_host: bool,
    /// `drop_invalid_header_fields.enabled`.
    pub drop_invalid: bool,
    /// `x_amzn_tls_version_and_cipher_suite.enabled`.
    pub tls_headers: bool,
}

/// What every listener shares, across reloads.
#[derive(Debug)]
pub struct Shared {
    pub upstream: Upstream,
    pub counters: Counters,
    pub log: AccessLog,
    /// The metric families the routes resolve their handles from.
    pub metrics: Arc<L7Metrics>,
}

impl Shared {
    /// Shared by every listener; the upstream clients are made per target on first use.
    pub fn new(log: AccessLog, metrics: Arc<L7Metrics>) -> Shared {
        Shared {
            upstream: Upstream::default(),
            counters: Counters::default(),
            log,
            metrics,
        }
    }
}

/// The connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub client: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it.
    client_ip: HeaderValue,
    /// SNI, cipher suite and protocol version on HTTPS.
    pub tls: Option<TlsInfo>,
    /// ALB's `conn_trace_id`, on the connection's log lines.
    pub trace_id: ConnTraceId,
}

impl Conn {
    pub fn new(client: SocketAddr, tls: Option<TlsInfo>) -> Conn {
        let ip = client.ip().to_string();
        Conn {
            client,
            // An address's text is always a valid header value.
            client_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("-")),
            tls,
            trace_id: ConnTraceId::new(),
        }
    }
}

/// What the access log says about a TLS connection; shared, not copied, by its requests' entries.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub server_name: Option<Arc<str>>,
    pub cipher: &'static str,
    pub protocol: &'static str,
}

/// Phase 1: refuses what the desync mitigation mode blocks (request smuggling): `verdict` is
/// what [`super::desync`] made of the raw HTTP/1 head. HTTP/2 requests, out of the classifier's
/// scope, are refused when their lengths are ambiguous.
pub fn request_filter(headers: &HeaderMap, verdict: Verdict) -> Result<(), ProxyError> {
    match verdict.action {
        Action::Forward | Action::ForwardThenClose => {}
        Action::Block => {
            return Err(ProxyError::Desync {
                tier: verdict.tier,
                reason: verdict.reason,
            });
        }
        Action::TooLarge => return Err(ProxyError::HeadTooLarge),
        Action::UnsupportedTransferEncoding => return Err(ProxyError::UnsupportedTransferEncoding),
        Action::Unframed => return Err(ProxyError::Unframed),
    }
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::Ambiguous {
            reason: "both Content-Length and Transfer-Encoding",
        });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next()
        && lengths.any(|other| other != first)
    {
        return Err(ProxyError::Ambiguous {
            reason: "conflicting Content-Length",
        });
    }
    Ok(())
}

/// Phase 1 too: what ALB refuses or drops whatever the rules say: TRACE (405), an
/// `X-Forwarded-For` of more than 30 addresses (463), and with `drop_invalid_header_fields`,
/// headers whose names are not letters, digits and hyphens (removed before the rules see them).
pub fn header_filter<B>(
    req: &mut Request<B>,
    attributes: HeaderAttributes,
) -> Result<(), ProxyError> {
    if req.method() == Method::TRACE {
        return Err(ProxyError::Trace);
    }
    let count = list(req.headers(), HeaderName::from_static("x-forwarded-for")).count();
    if count > MAX_FORWARDED_FOR {
        return Err(ProxyError::TooManyForwardedFor { count });
    }
    if attributes.drop_invalid {
        let valid = |k: &HeaderName| {
            k.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let invalid: Vec<HeaderName> = req
            .headers()
            .keys()
            .filter(|k| !valid(k))
            .cloned()
            .collect();
        for k in invalid {
            req.headers_mut().remove(k);
        }
    }
    Ok(())
}

/// The host a request is for: `Host`, else HTTP/2's `:authority`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(Authority::as_str))
}

/// Phase 2: the first matching rule's priority and action (priority 0: the default action).
pub fn route<'a, B>(r: &'a Route, conn: &Conn, req: &Request<B>) -> (u32, &'a Act) {
    r.rules.route(&RequestView {
        method: req.method(),
        host: request_host(req),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        client: conn.client.ip(),
    })
}

/// The CORS twin ALB sets beside a stickiness cookie (`SameSite=None; Secure`, so browsers send it
/// on cross-origin requests), and takes when the client sends only it.
fn cors_twin(name: &str) -> Option<&'static str> {
    match name {
        balance::TARGET_COOKIE => Some("AWSALBCORS"),
        balance::GROUP_COOKIE => Some("AWSALBTGCORS"),
        _ => None,
    }
}

/// The value of stickiness cookie `name`, or of its CORS twin.
fn sticky_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie(headers, name).or_else(|| cookie(headers, cors_twin(name)?))
}

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Phase 3 (forward): the group, then the target, honouring stickiness cookies (as of `now`).
pub fn upstream_peer<'a>(
    groups: &'a WeightedGroups,
    headers: &HeaderMap,
    now: Instant,
) -> Result<(&'a Arc<Group>, Pick<'a>), ProxyError> {
    let group = groups
        .pick(sticky_cookie(headers, balance::GROUP_COOKIE))
        .ok_or_else(|| ProxyError::NoTarget {
            group: "(weighted forward)".into(),
        })?;
    let sticky = group.stickiness.as_ref().and_then(|s| match s {
        // As ALB: the client sends the application's cookie with ours, or sticks no more.
        Stickiness::AppCookie { cookie_name, .. } if cookie(headers, cookie_name).is_none() => None,
        _ => sticky_cookie(headers, s.cookie()),
    });
    let pick = group
        .pick(sticky, now)
        .ok_or_else(|| ProxyError::NoTarget {
            group: group.name.to_string(),
        })?;
    Ok((group, pick))
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). As text: a header's
/// name is compared with these, which needs no `HeaderName` built.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The elements of a comma-separated header list (RFC 9110 §5.6.1), trimmed.
fn list(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers, and those `Connection` names; keeps an upgrade if asked to.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests have none; most responses only `Connection: keep-alive`. One pass over the
    // (few) headers finds those to remove, rather than a lookup, a hash each, per name that
    // could be there.
    let hop = |k: &HeaderName| HOP_BY_HOP.contains(&k.as_str());
    if headers.keys().any(hop) {
        let named: Vec<&str> = list(headers, header::CONNECTION).collect();
        let gone: Vec<HeaderName> = headers
            .keys()
            .filter(|k| hop(k) || named.iter().any(|n| n.eq_ignore_ascii_case(k.as_str())))
            .filter(|k| !(keep_upgrade && (*k == header::UPGRADE || *k == header::CONNECTION)))
            .cloned()
            .collect();
        for k in gone {
            headers.remove(k);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks to switch protocols (WebSocket).
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && list(req.headers(), header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Whether the request is gRPC (`application/grpc`, or with a `+format` or parameters).
fn is_grpc<B>(req: &Request<B>) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    req.headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|ct| {
            ct.get(..GRPC.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(GRPC))
                && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';'))
        })
}

/// Phase 4 (forward): refuses, as ALB does with a 464, what the group's protocol version cannot
/// take: a `GRPC` group takes only gRPC requests (POST), an `HTTP1` group no gRPC request (its
/// trailers would be lost). An `HTTP2` group takes any request, HTTP/1.1 ones too (ALB refuses
/// those).
pub fn protocol_filter<B>(req: &Request<B>, group: &Group) -> Result<(), ProxyError> {
    let grpc = is_grpc(req);
    let wants = match group.protocol.1 {
        ProtocolVersion::Grpc if !grpc || req.method() != Method::POST => {
            "only gRPC requests (POST, content-type application/grpc)"
        }
        ProtocolVersion::Http1 if grpc => "no gRPC request (its protocol version is HTTP1)",
        _ => return Ok(()),
    };
    Err(ProxyError::Incompatible {
        group: group.name.to_string(),
        wants,
    })
}

/// Whether the client's `TE` accepts trailers, which gRPC needs the target to know.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    list(headers, header::TE).any(|t| t.eq_ignore_ascii_case("trailers"))
}

/// Phase 5 (forward): the request as the target gets it, in the group's HTTP version. HTTP/1.1
/// keeps `Host` and sends the path alone (origin form); HTTP/2 carries the client's host as
/// `:authority` and no `Host` (RFC 9113 §8.3.1), and keeps `te: trailers`, the one `TE` value
/// HTTP/2 allows (§8.2.2). Hop-by-hop headers go; ALB's `X-Forwarded-For` (appended),
/// `X-Forwarded-Proto` and `X-Forwarded-Port` come.
pub fn upstream_request_filter<B>(
    req: &mut Request<B>,
    route: &Route,
    conn: &Conn,
    group: &Group,
    target: SocketAddr,
) -> Result<(), ProxyError> {
    let forward_error = |reason: String| ProxyError::Forward { target, reason };
    let (protocol, version) = group.protocol;
    let h2 = version != ProtocolVersion::Http1;
    // HTTP/2 moves the client's host into `:authority`.
    let host = h2
        .then(|| {
            request_host(req).map(|h| with_listener_port(h, route).unwrap_or_else(|| h.to_owned()))
        })
        .flatten();
    if !h2
        && let Some(ported) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| with_listener_port(h, route))
    {
        let value = HeaderValue::from_str(&ported)
            .map_err(|e| forward_error(format!("host {ported}: {e}")))?;
        req.headers_mut().insert(header::HOST, value);
    }
    if !h2 && !req.headers().contains_key(header::HOST) {
        // HTTP/2's `:authority`, else (an HTTP/1.0 client) the target's address.
        let authority = req
            .uri()
            .authority()
            .map_or_else(|| target.to_string(), |a| a.as_str().to_owned());
        let host = HeaderValue::from_str(&authority)
            .map_err(|e| forward_error(format!("host {authority}: {e}")))?;
        req.headers_mut().insert(header::HOST, host);
    }
    let trailers = h2 && accepts_trailers(req.headers());
    let upgrade = !h2 && wants_upgrade(req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let path = std::mem::take(req.uri_mut())
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = |authority: &str| {
        Uri::builder()
            .scheme(protocol.scheme())
            .authority(authority)
            .path_and_query(path.clone())
            .build()
    };
    let to_target = || uri(&target.to_string()).map_err(|e| forward_error(e.to_string()));
    *req.uri_mut() = match host {
        // A host that is no authority (a stray character) leaves the target's address.
        Some(host) => uri(&host).or_else(|_| to_target())?,
        None if h2 => to_target()?,
        // HTTP/1.1 sends the origin form: the connection says which target.
        None => Uri::from(path),
    };
    if h2 {
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.version_mut() = Version::HTTP_11;
    }
    if trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let headers = req.headers_mut();
    let xff = HeaderName::from_static("x-forwarded-for");
    match route.headers.xff {
        XffMode::Append => {
            let value = forwarded_for(headers, conn, route.headers.xff_client_port)
                .map_err(|e| forward_error(e.to_string()))?;
            headers.insert(xff, value);
        }
        XffMode::Preserve => {}
        XffMode::Remove => {
            headers.remove(xff);
        }
    }
    if route.headers.tls_headers
        && let Some(tls) = &conn.tls
    {
        headers.insert(
            HeaderName::from_static("x-amzn-tls-version"),
            HeaderValue::from_static(tls.protocol),
        );
        headers.insert(
            HeaderName::from_static("x-amzn-tls-cipher-suite"),
            HeaderValue::from_static(tls.cipher),
        );
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(route.protocol.scheme()),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-port"),
        route.forwarded_port.clone(),
    );
    Ok(())
}

/// `host` with the listener's port, when ALB would send it on so: unless
/// `preserve_host_header`, a host without a port gets the listener's, if that is not the
/// scheme's default. `None`: the host goes on as it came.
fn with_listener_port(host: &str, route: &Route) -> Option<String> {
    let default = match route.protocol {
        ListenerProtocol::Http => 80,
        ListenerProtocol::Https => 443,
    };
    let port = route.local.port();
    (!route.headers.preserve_host && port != default && strip_port(host) == host)
        .then(|| format!("{host}:{port}"))
}

/// ALB's `append` mode: every earlier hop, in order, then the client (`ip:port` with
/// `xff_client_port`).
fn forwarded_for(
    headers: &HeaderMap,
    conn: &Conn,
    client_port: bool,
) -> Result<HeaderValue, header::InvalidHeaderValue> {
    let xff = HeaderName::from_static("x-forwarded-for");
    if !client_port && !headers.contains_key(&xff) {
        // Most requests come straight from their client: its address, made once per connection.
        return Ok(conn.client_ip.clone());
    }
    let mut chain = String::new();
    for hop in headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()) {
        chain.push_str(hop);
        chain.push_str(", ");
    }
    if client_port {
        chain.push_str(&conn.client.to_string());
    } else {
        chain.push_str(conn.client_ip.to_str().unwrap_or_default());
    }
    // The header takes the string's buffer rather than a copy of it.
    HeaderValue::from_maybe_shared(Bytes::from(chain))
}

/// Appends `name=value; Expires=...; Path=/` for a stickiness cookie, and its CORS twin.
fn set_cookie(headers: &mut HeaderMap, name: &str, value: &str, duration: Duration) {
    let expires = httpdate::fmt_http_date(SystemTime::now() + duration);
    let cookie = format!("{name}={value}; Expires={expires}; Path=/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
    if let Some(twin) = cors_twin(name)
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{twin}={value}; Expires={expires}; Path=/; SameSite=None; Secure"
        ))
    {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Whether `headers` set cookie `name`.
fn sets_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once('='))
        .any(|(k, _)| k.trim() == name)
}

/// Phase 6 (forward): the target's response as the client gets it: hop-by-hop headers gone
/// (unless switching protocols), stickiness cookies issued as ALB does: `AWSALB` and `AWSALBTG`
/// with their CORS twins on every response, `AWSALBAPP-0` when the target sets the application
/// cookie.
pub fn response_filter(
    resp: &mut Response<Incoming>,
    groups: &WeightedGroups,
    group: &Group,
    target: &balance::Target,
) {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), switching);
    let headers = resp.headers_mut();
    let issue = match &group.stickiness {
        Some(Stickiness::AppCookie { cookie_name, .. }) => sets_cookie(headers, cookie_name),
        Some(Stickiness::LbCookie { .. }) => true,
        None => false,
    };
    if issue && let Some(s) = group.sticky_cookie(target, Instant::now()) {
        set_cookie(headers, s.name, &s.value, s.expires);
    }
    if groups.is_weighted()
        && let Some(d) = groups.stickiness
    {
        set_cookie(headers, balance::GROUP_COOKIE, &group.cookie, d);
    }
}

/// A response body on its way to the client: made here (fixed responses, redirects, errors) or
/// the target's. It counts its bytes into the request's log line, and writes the line when
/// dropped: sent to the end, or the client gone (a WebSocket's line goes with its tunnel
/// instead). A target's body also counts as outstanding until then, and returns its HTTP/1.1
/// connection for reuse once read to the end.
struct Sent {
    body: Reply,
    line: Option<Pending>,
    _in_flight: Option<InFlight>,
    lease: Option<Lease>,
}

/// A response's body as the action made it: here, or the target's.
type Reply = Either<Full<Bytes>, Incoming>;

fn local(body: Bytes) -> Reply {
    Either::Left(Full::new(body))
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            // The server may not poll again once it sees the end: release here, not on drop.
            if let Some(lease) = this.lease.take() {
                lease.release();
            }
        }
        if let (Poll::Ready(Some(Ok(f))), Some(line)) = (&frame, &mut this.line)
            && let Some(data) = f.data_ref()
        {
            line.entry.sent_bytes += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sent {
    /// An empty body (HEAD, 204, 304) may never be polled.
    fn drop(&mut self) {
        if self.body.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

fn full(status: StatusCode, headers: &[(HeaderName, HeaderValue)], body: Bytes) -> Response<Reply> {
    let mut resp = Response::new(local(body));
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers.iter().cloned());
    resp
}

/// The reason phrase of a status, ALB's own included.
fn reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        INCOMPATIBLE_PROTOCOL => "Incompatible Protocol",
        _ => status.canonical_reason().unwrap_or(""),
    }
}

/// An error page, as ALB's (HTML with the status line); the connection closes after it.
fn error_response(e: &ProxyError) -> Response<Reply> {
    let status = e.status();
    let line = format!("{} {}", status.as_str(), reason(status));
    let page = format!(
        "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n</body>\r\n</html>\r\n"
    );
    let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))];
    if e.fault() == Fault::Client {
        headers.push((header::CONNECTION, HeaderValue::from_static("close")));
    }
    let mut resp = full(status, &headers, Bytes::from(page));
    if status.canonical_reason().is_none() {
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                reason(status).as_bytes(),
            ));
    }
    resp
}

/// What the forward phases found, for the log (the target, its group and the time to send to it
/// go into the entry at once: a 460's line has them).
#[derive(Default)]
struct Outcome {
    target_status: Option<u16>,
    /// From the request's sending to the target to the target's answer.
    target_time: Option<Duration>,
    redirect_url: Option<String>,
    /// The request body's bytes sent to the target, counted as they go.
    uploaded: Option<Arc<AtomicU64>>,
    /// A WebSocket to run once the client has its response.
    tunnel: Option<Tunnel>,
    /// The target's response counts as outstanding until sent; its HTTP/1.1 connection.
    in_flight: Option<InFlight>,
    lease: Option<Lease>,
    /// Set before the action runs: after this request, neither the client's connection nor the
    /// target's is used again.
    close: bool,
}

/// Both sides of a switch of protocols, and the target's connection tasks it counts among.
struct Tunnel {
    client: OnUpgrade,
    target: OnUpgrade,
    origin: Origin,
    in_flight: InFlight,
}

/// Runs the phases for one request; its log line goes with the response's body.
pub async fn handle(
    mut req: Request<Incoming>,
    verdict: Verdict,
    route: Arc<Route>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let trace_id = trace::next(req.headers().get(trace::HEADER));
    // Written when its request is over, however that comes: made here, the line is also written
    // if hyper drops this future because the client left before its answer (ALB's 460).
    let mut line = shared.log.pending(Entry {
        kind: kind(&conn, &req),
        received: SystemTime::now(),
        responded: None,
        elb: route.local,
        client: conn.client,
        target: None,
        request_processing: None,
        target_processing: None,
        response_processing: None,
        elb_status: CLIENT_CLOSED,
        target_status: None,
        // A malformed request line, not kept by the stand-in hyper read: as ALB logs those.
        request: verdict
            .stand_in
            .is_none_or(|s| s.request_line)
            .then(|| RequestLine {
                method: req.method().clone(),
                scheme: route.protocol.scheme(),
                // As `request_host`: a `Host` that is text, else `:authority`, else the listener.
                host: match (req.headers().get(header::HOST), req.uri().authority()) {
                    (Some(h), _) if h.to_str().is_ok() => Host::Header(h.clone()),
                    (_, Some(a)) => Host::Authority(a.clone()),
                    (_, None) => Host::Listener(route.local),
                },
                path: req.uri().path_and_query().cloned(),
                version: req.version(),
            }),
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
        ssl_cipher: conn.tls.as_ref().map(|t| t.cipher),
        ssl_protocol: conn.tls.as_ref().map(|t| t.protocol),
        target_group: None,
        received_bytes: verdict
            .stand_in
            .map_or_else(|| request_head_len(&req), |s| s.head_len),
        sent_bytes: 0,
        trace_id: Some(trace_id.clone()),
        domain_name: conn.tls.as_ref().and_then(|t| t.server_name.clone()),
        matched_rule_priority: None,
        action: None,
        redirect_url: None,
        error_reason: None,
        conn_trace_id: conn.trace_id,
        classification: verdict
            .non_compliant()
            .then_some((verdict.tier, verdict.reason)),
    });
    let entry = &mut line.entry;
    if verdict.non_compliant() {
        route.metrics.listener.desync.inc();
    }
    // After the entry took the head's size as the client sent it.
    req.headers_mut()
        .insert(HeaderName::from_static(trace::HEADER), trace_id);
    let mut outcome = Outcome {
        close: verdict.action == Action::ForwardThenClose,
        ..Outcome::default()
    };
    let result = async {
        request_filter(req.headers(), verdict)?;
        header_filter(&mut req, route.headers)?;
        let (priority, act) = self::route(&route, &conn, &req);
        entry.matched_rule_priority = Some(priority);
        entry.action = Some(act.name());
        let phases = Phases {
            route: &route,
            conn: &conn,
            shared: &shared,
        };
        run(act, req, started, phases, &mut *entry, &mut outcome).await
    }
    .await;
    let (mut connect_failed, mut failed) = (false, false);
    let mut resp = result.unwrap_or_else(|e| {
        connect_failed = matches!(e, ProxyError::Connect { .. });
        failed = true;
        entry.error_reason = e.reason();
        error_response(&e)
    });
    if outcome.close {
        // ALB's defensive mode: the client's connection is not used again after an Ambiguous
        // request (the target's is not either, see `run`).
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    entry.target_status = outcome.target_status;
    entry.redirect_url = outcome.redirect_url;
    entry.elb_status = resp.status().as_u16();
    let priority = entry.matched_rule_priority.unwrap_or(0);
    if let Some(m) = route
        .metrics
        .request(priority, entry.target_group.as_deref())
    {
        m.record(
            entry.elb_status,
            entry.target_status.zip(outcome.target_time),
        );
        match entry.action {
            _ if connect_failed => m.target_connection_error(),
            Some("redirect") if !failed => m.redirected(),
            Some("fixed-response") if !failed => m.fixed_response(),
            _ => {}
        }
    }
    // As ALB: the three times when a target answered, else -1 for all (not dispatched, or no
    // answer: the target refused, closed or timed out; a redirect or fixed response).
    match (entry.target_status, outcome.target_time) {
        (Some(_), Some(t)) => {
            entry.target_processing = Some(t);
            entry.response_processing = Some(Duration::ZERO);
        }
        _ => entry.request_processing = None,
    }
    entry.sent_bytes = response_head_len(&resp);
    // A WebSocket's `time` is when it closes.
    if outcome.tunnel.is_none() {
        entry.responded = Some(SystemTime::now());
    }
    line.count_upload(outcome.uploaded);
    let line = match outcome.tunnel {
        Some(t) => {
            let task = tokio::spawn(tunnel(t.client, t.target, t.in_flight, line));
            // Cut, like the target's connections, when the target's deregistration delay ends.
            shared.upstream.track(t.origin, task.abort_handle());
            None
        }
        None => Some(line),
    };
    // The body, with the line (over 500 bytes), is put together once, where it stays.
    Ok(resp.map(|body| {
        BodyExt::boxed(Sent {
            body,
            line,
            _in_flight: outcome.in_flight,
            lease: outcome.lease,
        })
    }))
}

/// A request head's size as HTTP/1.1 text: its line, a `name: value` line per header, each with
/// its CRLF, and the empty line. What the client sent, for HTTP/1.1 (hyper keeps no raw head).
fn request_head_len<B>(req: &Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    // `METHOD target HTTP/1.1`
    let line = req.method().as_str().len() + 1 + target + 1 + 8;
    head_len(line, req.headers())
}

/// A response head's size as HTTP/1.1 text, with the `date` and `content-length` hyper adds
/// when they are missing.
fn response_head_len(resp: &Response<Reply>) -> u64 {
    const DATE: usize = "date: Thu, 01 Jan 1970 00:00:00 GMT\r\n".len();
    let status = resp.status();
    // `HTTP/1.1 200 OK`
    let line = 8 + 1 + 3 + 1 + status.canonical_reason().map_or(0, str::len);
    let mut len = head_len(line, resp.headers());
    let headers = resp.headers();
    if !headers.contains_key(header::DATE) {
        len += DATE as u64;
    }
    if !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && status != StatusCode::SWITCHING_PROTOCOLS
        && let Some(n) = resp.body().size_hint().exact()
    {
        let digits = itoa::Buffer::new().format(n).len();
        len += ("content-length: \r\n".len() + digits) as u64;
    }
    len
}

/// A head of a `line`-byte first line and `headers`, as HTTP/1.1 text.
fn head_len(line: usize, headers: &HeaderMap) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum();
    (line + 2 + fields + 2) as u64
}

fn kind<B>(conn: &Conn, req: &Request<B>) -> &'static str {
    match (
        conn.tls.is_some(),
        req.version() == Version::HTTP_2,
        wants_upgrade(req),
    ) {
        (false, _, true) => "ws",
        (true, _, true) => "wss",
        (true, true, false) if is_grpc(req) => "grpcs",
        (true, true, false) => "h2",
        (true, false, false) => "https",
        (false, _, false) => "http",
    }
}

/// What a request's phases read: its listener, its connection, what all listeners share.
struct Phases<'a> {
    route: &'a Route,
    conn: &'a Conn,
    shared: &'a Shared,
}

/// Runs an action for a request received at `started`.
async fn run(
    act: &Act,
    mut req: Request<Incoming>,
    started: Instant,
    Phases {
        route,
        conn,
        shared,
    }: Phases<'_>,
    entry: &mut Entry,
    outcome: &mut Outcome,
) -> Result<Response<Reply>, ProxyError> {
    match act {
        Act::Fixed(f) => {
            let headers: Vec<_> = f.content_type_header().into_iter().collect();
            Ok(full(f.status, &headers, f.body.clone()))
        }
        Act::Redirect(r) => {
            let local = route.local.ip().to_string();
            let host = request_host(&req).map_or(local.as_str(), strip_port);
            let location = r.location(&RedirectInput {
                protocol: route.protocol.scheme(),
                host,
                port: route.local.port(),
                path: req.uri().path(),
                query: req.uri().query(),
            });
            outcome.redirect_url = Some(location.clone());
            let value = HeaderValue::from_str(&location).map_err(|e| ProxyError::Forward {
                target: route.local,
                reason: format!("Location {location:?}: {e}"),
            })?;
            Ok(full(r.status, &[(header::LOCATION, value)], Bytes::new()))
        }
        Act::Forward(groups) => {
            let (group, pick) = upstream_peer(groups, req.headers(), started)?;
            let target = pick.target.addr;
            entry.target_group = Some(group.name.clone());
            protocol_filter(&req, group)?;
            entry.target = Some(target);
            upstream_request_filter(&mut req, route, conn, group, target)?;
            let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
            if outcome.close
                && client_upgrade.is_none()
                && group.protocol.1 == ProtocolVersion::Http1
            {
                req.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let (head, body) = req.into_parts();
            let sent = Instant::now();
            let body = Upload::new(body, sent);
            outcome.uploaded = body.counter();
            let progress = body.progress();
            let req = Request::from_parts(head, body);
            entry.request_processing = Some(sent - started);
            // Boxed: the exchange's future is the largest part of a request's, and unboxed it
            // would be copied at each level that awaits it. The deadline and the pool's idle
            // check reuse `sent` rather than read the clock again.
            let exchange = Box::pin(shared.upstream.send(group.protocol, target, req, sent));
            let answer = answer(exchange, sent, progress, route.idle_timeout, target).await;
            outcome.target_time = Some(sent.elapsed());
            let (mut resp, lease) = match answer? {
                Err(SendError::Connect(source)) => {
                    return Err(ProxyError::Connect { target, source });
                }
                Err(SendError::ClientBody(source)) => {
                    return Err(ProxyError::ClientBody { target, source });
                }
                Err(SendError::Target(source)) => {
                    return Err(ProxyError::Target { target, source });
                }
                Ok(answer) => answer,
            };
            outcome.target_status = Some(resp.status().as_u16());
            response_filter(&mut resp, groups, group, pick.target);
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                outcome.tunnel = Some(Tunnel {
                    client: client_upgrade,
                    target: hyper::upgrade::on(&mut resp),
                    origin: (group.protocol.0, target),
                    in_flight: pick.in_flight,
                });
                return Ok(resp.map(|_| local(Bytes::new())));
            }
            outcome.in_flight = Some(pick.in_flight);
            // Dropped rather than returned to the pool: the connection then closes.
            outcome.lease = lease.filter(|_| !outcome.close);
            Ok(resp.map(Either::Right))
        }
    }
}

/// Waits for the target's answer to a request sent at `sent`, as ALB's idle timeout: the wait
/// ends when nothing has moved for `idle`, counted from the last byte of the request's body
/// while it is still coming. A client that stops sending its body gets a 408, a target that
/// does not answer the whole request a 504.
async fn answer<F: Future>(
    mut exchange: Pin<Box<F>>,
    sent: Instant,
    progress: Option<Arc<Progress>>,
    idle: Duration,
    target: SocketAddr,
) -> Result<F::Output, ProxyError> {
    let mut deadline = sent + idle;
    loop {
        if let Ok(out) = tokio::time::timeout_at(deadline.into(), exchange.as_mut()).await {
            return Ok(out);
        }
        let (last, done) = progress.as_ref().map_or((sent, true), |p| p.last());
        match (last + idle > Instant::now(), done) {
            (true, _) => deadline = last + idle,
            (false, false) => return Err(ProxyError::ClientTimeout { timeout: idle }),
            (false, true) => {
                return Err(ProxyError::Timeout {
                    target,
                    timeout: idle,
                });
            }
        }
    }
}

/// Copies bytes both ways once client and target have switched protocols (WebSocket); the
/// request's log line counts them when the tunnel closes.
async fn tunnel(client: OnUpgrade, target: OnUpgrade, _in_flight: InFlight, mut line: Pending) {
    let (Ok(client), Ok(target)) = tokio::join!(client, target) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut target = TokioIo::new(target);
    // Either side closing ends the tunnel. An error says only which side: nobody to tell, and
    // the bytes copied before it are not known (the line then counts the heads alone).
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut target).await {
        line.entry.received_bytes += up;
        line.entry.sent_bytes += down;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_requests_with_ambiguous_lengths_are_refused() {
        let ok = Verdict::COMPLIANT;
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(request_filter(&h, ok).is_ok());
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(request_filter(&h, ok).is_ok());
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(request_filter(&h, ok).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let e = request_filter(&h, ok).unwrap_err();
        assert_eq!(
            (e.status(), e.fault()),
            (StatusCode::BAD_REQUEST, Fault::Client)
        );
    }

    #[test]
    fn each_refusal_of_the_raw_head_gets_albs_status() {
        let verdict = |action| Verdict {
            tier: RequestSafetyTier::Severe,
            reason: ClassificationReason::MultipleTransferEncodingChunked,
            action,
            stand_in: None,
        };
        let status = |action| {
            request_filter(&HeaderMap::new(), verdict(action))
                .map_err(|e| (e.status().as_u16(), e.fault()))
        };
        assert_eq!(status(Action::Forward), Ok(()));
        assert_eq!(status(Action::ForwardThenClose), Ok(()));
        assert_eq!(status(Action::Block), Err((400, Fault::Client)));
        assert_eq!(status(Action::TooLarge), Err((400, Fault::Client)));
        assert_eq!(status(Action::Unframed), Err((400, Fault::Client)));
        assert_eq!(
            status(Action::UnsupportedTransferEncoding),
            Err((501, Fault::Client))
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(!up.contains_key("x-secret"));
    }

    #[test]
    fn grpc_requests_only_reach_groups_that_take_them() {
        use lb_config::{Protocol, TargetGroup};
        let req = |method: &str, content_type: &str| {
            Request::builder()
                .method(method)
                .header(header::CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        let grpc = req("POST", "application/grpc");
        assert!(is_grpc(&grpc));
        assert!(is_grpc(&req("POST", "Application/gRPC+proto")));
        assert!(!is_grpc(&req("POST", "application/grpc-web")));
        assert!(!is_grpc(&req("POST", "application/json")));
        let group = |version| {
            let tg = TargetGroup {
                name: "g".into(),
                protocol: Protocol::Http,
                protocol_version: Some(version),
                port: 80,
                targets: Vec::new(),
                attributes: Default::default(),
                health_check: None,
            };
            Group::new(&tg, &Counters::default(), Instant::now())
        };
        let (h1, h2, g) = (
            group(ProtocolVersion::Http1),
            group(ProtocolVersion::Http2),
            group(ProtocolVersion::Grpc),
        );
        let json = req("POST", "application/json");
        let get = req("GET", "application/grpc");
        for (r, on, ok) in [
            (&grpc, &g, true),
            (&grpc, &h2, true),
            (&grpc, &h1, false),
            (&json, &g, false),
            (&get, &g, false),
            (&json, &h1, true),
            (&json, &h2, true),
        ] {
            let got = protocol_filter(r, on);
            assert_eq!(got.is_ok(), ok, "{r:?} to {:?}: {got:?}", on.protocol);
            if let Err(e) = got {
                assert_eq!((e.status().as_u16(), e.fault()), (464, Fault::Client));
            }
        }
    }

    #[test]
    fn grpc_over_tls_is_logged_as_grpcs() {
        let conn = |tls: bool| {
            let info = TlsInfo {
                server_name: None,
                cipher: "-",
                protocol: "-",
            };
            Conn::new(SocketAddr::from(([127, 0, 0, 1], 1)), tls.then_some(info))
        };
        let req = |content_type: &str| {
            Request::builder()
                .version(Version::HTTP_2)
                .header(header::CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        assert_eq!(kind(&conn(true), &req("application/grpc")), "grpcs");
        assert_eq!(kind(&conn(true), &req("text/plain")), "h2");
        assert_eq!(kind(&conn(false), &req("application/grpc")), "http");
    }

    #[test]
    fn te_trailers_is_found_among_values() {
        let mut h = HeaderMap::new();
        assert!(!accepts_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        assert!(accepts_trailers(&h));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; AWSALB=xyz"));
        h.append(header::COOKIE, HeaderValue::from_static("AWSALBTG=tg"));
        assert_eq!(cookie(&h, "AWSALB"), Some("xyz"));
        assert_eq!(cookie(&h, "AWSALBTG"), Some("tg"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn set_cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("SESSION=1; Path=/"),
        );
        assert!(sets_cookie(&h, "SESSION"));
        assert!(!sets_cookie(&h, "SESS"));
        assert!(!sets_cookie(&HeaderMap::new(), "SESSION"));
    }
}
