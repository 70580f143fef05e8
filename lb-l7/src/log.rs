//! Access log lines in the field order of ALB's access logs, so tools that read ALB logs read
//! xlb's. Requests append their lines to one bounded buffer that a writer takes in batches
//! ([`Lines`]); like ALB's log this is best effort: a full buffer drops the line rather than slow
//! requests down. A request's entry waits as a [`Pending`] until the request is over, so that its
//! line has all its bytes.
//!
//! ALB's connection log ([`Connection`]) shares the buffer: its lines start with their time, an
//! access log line with its type, so the two are told apart by their first character.
//!
//! A line is pushed field by field straight into that buffer, numbers through `itoa`: formatting
//! it with `core::fmt` cost more than parsing the request it describes. When each line was a
//! `String` of its own sent over a channel, the log took 11 to 15 % of a request's CPU in
//! `cargo xtask bench l7`.

use std::{
    fmt::Write as _,
    mem,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderValue, Method, Version, uri::PathAndQuery};

use crate::desync::{ClassificationReason, RequestSafetyTier};

/// Where access log lines go: off, or the buffer of a [`Lines`].
#[derive(Debug, Clone, Default)]
pub struct AccessLog(Option<Arc<Shared>>);

/// The reading end of an [`AccessLog`]: takes the lines written so far, in order. Its clones
/// share it (one to read, one to close).
#[derive(Debug, Clone)]
pub struct Lines(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the buffer gets its first line, or is closed.
    ready: Condvar,
    /// Bytes from which the buffer drops lines.
    capacity: usize,
}

#[derive(Debug, Default)]
struct Buffer {
    text: String,
    closed: bool,
}

impl AccessLog {
    /// A log whose lines wait for `Lines` to take them; it drops new ones while it holds
    /// `capacity` bytes or more.
    pub fn new(capacity: usize) -> (AccessLog, Lines) {
        let shared = Arc::new(Shared {
            buffer: Mutex::default(),
            ready: Condvar::new(),
            capacity,
        });
        (AccessLog(Some(shared.clone())), Lines(shared))
    }

    /// Appends one entry unless the log is off or full.
    pub fn write(&self, entry: &Entry) {
        let Some(shared) = &self.0 else { return };
        let mut buffer = shared.lock();
        // Best effort, as ALB: a slow reader loses lines, requests do not wait.
        if buffer.closed || buffer.text.len() >= shared.capacity {
            return;
        }
        let first = buffer.text.is_empty();
        // Written in place, under the lock: a line takes a few hundred ns, and a copy of each line
        // is what this buffer replaced.
        entry.write_to(&mut buffer.text);
        buffer.text.push('\n');
        drop(buffer);
        // Only the first line wakes the reader: it gathers the rest in one batch.
        if first {
            shared.ready.notify_one();
        }
    }

    /// Appends one connection log line unless the log is off or full.
    pub fn connection(&self, c: &Connection) {
        let Some(shared) = &self.0 else { return };
        let mut buffer = shared.lock();
        if buffer.closed || buffer.text.len() >= shared.capacity {
            return;
        }
        let first = buffer.text.is_empty();
        c.write_to(&mut buffer.text);
        buffer.text.push('\n');
        drop(buffer);
        if first {
            shared.ready.notify_one();
        }
    }

    /// `entry`, to be written when its request is over (however it ends).
    pub fn pending(&self, entry: Entry) -> Pending {
        Pending {
            entry,
            log: self.clone(),
            uploaded: None,
        }
    }
}

/// The entry of a request not over yet: its bodies (or its WebSocket) may still be going. It is
/// written when dropped, however the request ended (its last byte sent, the client gone, the
/// tunnel closed), as ALB logs a request once it is over, with all its bytes.
#[derive(Debug)]
pub struct Pending {
    pub entry: Entry,
    log: AccessLog,
    /// The request body's bytes, counted as they go to the target.
    uploaded: Option<Arc<AtomicU64>>,
}

impl Pending {
    /// Counts `uploaded`, the request body's bytes as they go to the target, into the line.
    pub fn count_upload(&mut self, uploaded: Option<Arc<AtomicU64>>) {
        self.uploaded = uploaded;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(n) = &self.uploaded {
            self.entry.received_bytes += n.load(Ordering::Relaxed);
        }
        self.log.write(&self.entry);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while appending leaves at worst a cut line; keep logging.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lines {
    /// Waits for lines, lets more gather for `gather`, then swaps them into `batch` (whose old
    /// text is dropped, its memory kept for the next swap). `false` once closed and all taken.
    pub fn next_batch(&self, batch: &mut String, gather: Duration) -> bool {
        let mut buffer = self.0.lock();
        while buffer.text.is_empty() && !buffer.closed {
            buffer = self
                .0
                .ready
                .wait(buffer)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if buffer.text.is_empty() {
            return false;
        }
        if !buffer.closed {
            drop(buffer);
            std::thread::sleep(gather);
            buffer = self.0.lock();
        }
        batch.clear();
        mem::swap(&mut buffer.text, batch);
        true
    }

    /// The lines written since the last take, without waiting.
    pub fn take(&self) -> String {
        mem::take(&mut self.0.lock().text)
    }

    /// Ends the log: later entries are dropped, and `next_batch` returns the rest, then `false`.
    pub fn close(&self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// What ALB's `request` field says: `METHOD scheme://host:port/path?query HTTP/x`. Kept as parts
/// (each shares the request's buffers) and written out only into the log line.
#[derive(Debug, Clone)]
pub struct RequestLine {
    pub method: Method,
    pub scheme: &'static str,
    pub host: Host,
    pub path: Option<PathAndQuery>,
    pub version: Version,
}

/// The host a request named, or the listener's address when it named none.
#[derive(Debug, Clone)]
pub enum Host {
    Header(HeaderValue),
    Authority(http::uri::Authority),
    Listener(SocketAddr),
}

/// One request, as ALB logs it. `None` prints `-` (or -1 for times, as ALB).
#[derive(Debug, Clone)]
pub struct Entry {
    /// `http`, `https`, `h2` or `ws`/`wss`.
    pub kind: &'static str,
    /// ALB's `request_creation_time`.
    pub received: SystemTime,
    /// ALB's `time`: when the response went out. `None`: when the line is written (a WebSocket
    /// closed, a client gone before its answer).
    pub responded: Option<SystemTime>,
    /// The listener, standing for ALB's `elb` name.
    pub elb: SocketAddr,
    pub client: SocketAddr,
    pub target: Option<SocketAddr>,
    pub request_processing: Option<Duration>,
    pub target_processing: Option<Duration>,
    pub response_processing: Option<Duration>,
    pub elb_status: u16,
    pub target_status: Option<u16>,
    /// The request's size from the client and the response's to it, heads included; for a
    /// WebSocket, everything each way until it closed.
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// `None`: a request the HTTP parser refused.
    pub request: Option<RequestLine>,
    /// Kept as received: a header value shares the read buffer, a `String` would be a copy.
    pub user_agent: Option<HeaderValue>,
    pub ssl_cipher: Option<&'static str>,
    pub ssl_protocol: Option<&'static str>,
    pub target_group: Option<Arc<str>>,
    pub trace_id: Option<HeaderValue>,
    pub domain_name: Option<Arc<str>>,
    /// 0: the default action; `None`: no rule ran.
    pub matched_rule_priority: Option<u32>,
    /// `forward`, `redirect` or `fixed-response`.
    pub action: Option<&'static str>,
    pub redirect_url: Option<String>,
    /// One of ALB's error reason codes.
    pub error_reason: Option<&'static str>,
    pub conn_trace_id: ConnTraceId,
    /// ALB's `classification` and `classification_reason`: for requests that do not comply
    /// with RFC 7230 (`-` for those that do).
    pub classification: Option<(RequestSafetyTier, ClassificationReason)>,
}

/// ALB's `conn_trace_id`: an opaque id for a client connection, on its connection log line and on
/// the access log line of each of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTraceId(u128);

impl ConnTraceId {
    /// A fresh, random id.
    pub fn new() -> ConnTraceId {
        ConnTraceId(fastrand::u128(..))
    }
}

impl Default for ConnTraceId {
    fn default() -> ConnTraceId {
        ConnTraceId::new()
    }
}

/// One client connection, as ALB's connection log has it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// When the connection was set up, or failed to be (its handshake's end).
    pub at: SystemTime,
    pub client: SocketAddr,
    pub listener_port: u16,
    /// `None` on HTTP listeners.
    pub tls: Option<Handshake>,
    pub trace_id: ConnTraceId,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    Done {
        protocol: &'static str,
        cipher: &'static str,
        latency: Duration,
    },
    Failed,
}

/// A line being written, at the end of a text.
struct Line<'a>(&'a mut String);

impl Line<'_> {
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    fn sep(&mut self) -> &mut Self {
        self.0.push(' ');
        self
    }

    fn num(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.str(itoa::Buffer::new().format(n))
    }

    /// `n` in `width` digits, zeros first.
    fn padded(&mut self, n: u64, width: usize) -> &mut Self {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(n);
        for _ in digits.len()..width {
            self.0.push('0');
        }
        self.str(digits)
    }

    fn opt(&mut self, s: Option<&str>) -> &mut Self {
        self.str(s.unwrap_or("-"))
    }

    fn ip(&mut self, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                self.num(a).str(".").num(b).str(".").num(c).str(".").num(d)
            }
            // Rare enough for `core::fmt`.
            IpAddr::V6(v6) => {
                let _ = write!(self.0, "{v6}");
                self
            }
        }
    }

    fn addr(&mut self, a: SocketAddr) -> &mut Self {
        match a {
            SocketAddr::V4(_) => self.ip(a.ip()),
            SocketAddr::V6(_) => self.str("[").ip(a.ip()).str("]"),
        };
        self.str(":").num(a.port())
    }

    /// Seconds with millisecond precision, rounded; `-1` for none.
    fn secs(&mut self, d: Option<Duration>) -> &mut Self {
        let Some(d) = d else { return self.str("-1") };
        // In u64: `as_millis` is a u128, whose division is a call.
        let ms = d.as_secs() * 1000 + u64::from((d.subsec_micros() + 500) / 1000);
        self.num(ms / 1000).str(".").padded(ms % 1000, 3)
    }

    /// ISO 8601 in UTC with microseconds, as ALB's `time`.
    fn time(&mut self, t: SystemTime) -> &mut Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (days, rem) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
        let (year, month, day) = civil(days);
        self.padded(year, 4).str("-").two(month).str("-").two(day);
        self.str("T").two(rem / 3600).str(":").two(rem % 3600 / 60);
        self.str(":").two(rem % 60).str(".");
        self.padded(u64::from(since.subsec_micros()), 6).str("Z")
    }

    /// `n` (below 100) in two digits: pushed, not copied from a formatted number.
    fn two(&mut self, n: u64) -> &mut Self {
        for digit in [n / 10 % 10, n % 10] {
            self.0.push(char::from(b'0' + digit as u8));
        }
        self
    }

    /// `TID_` and 32 hex digits, as ALB writes it; pushed digit by digit, not through
    /// `core::fmt` (see the module doc).
    fn trace_id(&mut self, id: ConnTraceId) -> &mut Self {
        self.0.push_str("TID_");
        for shift in (0..32).rev() {
            let nibble = (id.0 >> (shift * 4)) as u8 & 0xf;
            self.0
                .push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
        }
        self
    }

    /// `s` in double quotes, `"` and `\` escaped, control characters as `\xNN`.
    fn quoted(&mut self, s: Option<&str>) -> &mut Self {
        let Some(s) = s else { return self.str("\"-\"") };
        self.0.push('"');
        self.escaped(s);
        self.str("\"")
    }

    fn escaped(&mut self, mut rest: &str) {
        // Plain runs go out whole; only the characters that need escaping one by one. Found by
        // byte, not decoded: each starts with an ASCII byte, or with 0xC2 (U+0080 to U+009F, the
        // C1 controls, which share it with U+00A0 to U+00BF).
        while let Some(i) = rest.bytes().position(|b| ESCAPE_STARTS[usize::from(b)]) {
            self.0.push_str(&rest[..i]);
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '"' | '\\' => {
                    self.0.push('\\');
                    self.0.push(c);
                }
                c if c.is_control() => {
                    let _ = write!(self.0, "\\x{:02x}", u32::from(c));
                }
                c => self.0.push(c),
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.push_str(rest);
    }

    /// ALB's `request`: the host always with a port, the listener's when it names none.
    fn request(&mut self, r: &RequestLine, port: u16) -> &mut Self {
        self.0.push('"');
        self.escaped(r.method.as_str());
        self.str(" ").str(r.scheme).str("://");
        let host = match &r.host {
            Host::Header(h) => h.to_str().unwrap_or("-"),
            Host::Authority(a) => a.as_str(),
            Host::Listener(a) => {
                self.addr(*a);
                ""
            }
        };
        self.escaped(host);
        if !host.is_empty() && !has_port(host) {
            self.str(":").num(port);
        }
        self.escaped(r.path.as_ref().map_or("/", PathAndQuery::as_str));
        let version = match r.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        self.str(" ").str(version).str("\"")
    }
}

/// Whether a host (`name`, `v4`, `[v6]`, each maybe with `:port`) names a port.
fn has_port(host: &str) -> bool {
    match host.rsplit_once(']') {
        Some((_, rest)) => rest.starts_with(':'),
        None => host.contains(':'),
    }
}

/// The bytes at which `Line::escaped` stops: one load per byte, where a match of five
/// patterns cost five comparisons.
const ESCAPE_STARTS: [bool; 256] = {
    let mut starts = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        starts[b] = true;
        b += 1;
    }
    starts[b'"' as usize] = true;
    starts[b'\\' as usize] = true;
    starts[0x7f] = true;
    starts[0xc2] = true;
    starts
};

/// Year, month and day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year.max(0) as u64, month as u64, day as u64)
}

/// A header value as text, if it is (visible ASCII).
fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

impl Entry {
    /// Appends the entry to `out` as one line of ALB's access log (without the newline).
    fn write_to(&self, out: &mut String) {
        let mut l = Line(out);
        l.str(self.kind).sep();
        l.time(self.responded.unwrap_or_else(SystemTime::now));
        l.sep().addr(self.elb).sep().addr(self.client).sep();
        match self.target {
            Some(t) => l.addr(t),
            None => l.str("-"),
        };
        l.sep().secs(self.request_processing);
        l.sep().secs(self.target_processing);
        l.sep().secs(self.response_processing);
        l.sep().num(self.elb_status).sep();
        match self.target_status {
            Some(s) => l.num(s),
            None => l.str("-"),
        };
        l.sep()
            .num(self.received_bytes)
            .sep()
            .num(self.sent_bytes)
            .sep();
        match &self.request {
            Some(r) => l.request(r, self.elb.port()),
            // As ALB writes a request it could not parse: no method, no path, no version. The
            // parser refuses only HTTP/1, whose kind is its scheme.
            None => l
                .str("\"- ")
                .str(self.kind)
                .str("://")
                .addr(self.elb)
                .str("- -\""),
        };
        l.sep().quoted(text(&self.user_agent));
        l.sep().opt(self.ssl_cipher).sep().opt(self.ssl_protocol);
        l.sep().opt(self.target_group.as_deref());
        l.sep().quoted(text(&self.trace_id));
        l.sep().quoted(self.domain_name.as_deref());
        l.str(" \"-\" ");
        match self.matched_rule_priority {
            Some(p) => l.num(p),
            None => l.str("-"),
        };
        l.sep().time(self.received);
        l.sep().quoted(self.action);
        l.sep().quoted(self.redirect_url.as_deref());
        l.sep().quoted(self.error_reason);
        // `target:port_list` and `target_status_code_list`: one target per request, as ALB.
        match self.target {
            Some(t) => l.str(" \"").addr(t).str("\""),
            None => l.str(" \"-\""),
        };
        match self.target_status {
            Some(s) => l.str(" \"").num(s).str("\""),
            None => l.str(" \"-\""),
        };
        match self.classification {
            // Rare: `core::fmt` will do. The names print as ALB's.
            Some((tier, reason)) => {
                let _ = write!(l.0, " \"{tier:?}\" \"{reason:?}\"");
            }
            None => {
                l.str(" \"-\" \"-\"");
            }
        }
        l.sep().trace_id(self.conn_trace_id);
    }
}

impl Connection {
    /// Appends the connection to `out` as one line of ALB's connection log (without the newline):
    /// its first 12 fields, up to `conn_trace_id`. No client certificates (xlb has no mutual
    /// TLS): their three fields are `-`.
    fn write_to(&self, out: &mut String) {
        let mut l = Line(out);
        l.time(self.at).sep().ip(self.client.ip());
        l.sep()
            .num(self.client.port())
            .sep()
            .num(self.listener_port)
            .sep();
        match self.tls {
            Some(Handshake::Done {
                protocol,
                cipher,
                latency,
            }) => l.str(protocol).sep().str(cipher).sep().secs(Some(latency)),
            _ => l.str("- - -"),
        };
        l.str(" - - - ");
        match self.tls {
            Some(Handshake::Done { .. }) => l.str("Success"),
            // Not a client certificate's fault: ALB's code for every other failure.
            Some(Handshake::Failed) => l.str("Failed:UnmappedConnectionError"),
            None => l.str("-"),
        };
        l.sep().trace_id(self.trace_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(f: impl for<'a, 'b> FnOnce(&'b mut Line<'a>) -> &'b mut Line<'a>) -> String {
        let mut text = String::new();
        f(&mut Line(&mut text));
        text
    }

    #[test]
    fn dates_are_utc_iso8601() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(line(|l| l.time(t)), "2023-11-14T22:13:20.123456Z");
        assert_eq!(line(|l| l.time(UNIX_EPOCH)), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(line(|l| l.time(leap)).starts_with("2000-02-29T"));
    }

    #[test]
    fn quoted_fields_escape_quotes_backslashes_and_controls() {
        // U+0085 is a (C1) control, U+00A0 (the same first byte) is not.
        let q = line(|l| l.quoted(Some("a\"b\\c\x01é d\u{85}\u{a0}")));
        assert_eq!(q, "\"a\\\"b\\\\c\\x01é d\\x85\u{a0}\"");
        assert_eq!(line(|l| l.quoted(None)), "\"-\"");
    }

    #[test]
    fn addresses_and_durations_are_written_as_alb_writes_them() {
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(line(|l| l.addr(v6)), "[2001:db8::1]:443");
        assert_eq!(
            line(|l| l.secs(Some(Duration::from_micros(12_345_678)))),
            "12.346"
        );
        assert_eq!(line(|l| l.secs(Some(Duration::from_micros(400)))), "0.000");
    }

    fn sample() -> Entry {
        Entry {
            kind: "http",
            received: UNIX_EPOCH,
            responded: Some(UNIX_EPOCH + Duration::from_millis(21)),
            elb: "127.0.0.1:80".parse().unwrap(),
            client: "192.0.2.1:5000".parse().unwrap(),
            target: Some("10.0.0.1:8080".parse().unwrap()),
            request_processing: Some(Duration::from_millis(1)),
            target_processing: Some(Duration::from_micros(19_600)),
            response_processing: None,
            elb_status: 200,
            target_status: Some(200),
            received_bytes: 78,
            sent_bytes: 1234,
            request: Some(RequestLine {
                method: Method::GET,
                scheme: "http",
                host: Host::Header(HeaderValue::from_static("a:80")),
                path: Some(PathAndQuery::from_static("/")),
                version: Version::HTTP_11,
            }),
            user_agent: Some(HeaderValue::from_static("cu\"rl")),
            ssl_cipher: None,
            ssl_protocol: None,
            target_group: Some(Arc::from("web")),
            trace_id: None,
            domain_name: None,
            matched_rule_priority: Some(0),
            action: Some("forward"),
            redirect_url: None,
            error_reason: None,
            conn_trace_id: ConnTraceId(0xab),
            classification: None,
        }
    }

    fn written(e: &Entry) -> String {
        let mut text = String::new();
        e.write_to(&mut text);
        text
    }

    #[test]
    fn fields_come_in_alb_order() {
        let e = sample();
        let (log, lines) = AccessLog::new(1 << 10);
        log.write(&e);
        let line = lines.take();
        assert!(
            line.starts_with(
                "http 1970-01-01T00:00:00.021000Z 127.0.0.1:80 192.0.2.1:5000 10.0.0.1:8080 \
                 0.001 0.020 -1 200 200 78 1234 \"GET http://a:80/ HTTP/1.1\" \"cu\\\"rl\" - - web \"-\" \"-\" \"-\" 0 "
            ),
            "{line}"
        );
        assert!(
            line.ends_with(
                " 0 1970-01-01T00:00:00.000000Z \"forward\" \"-\" \"-\" \"10.0.0.1:8080\" \"200\" \
                 \"-\" \"-\" TID_000000000000000000000000000000ab\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn the_request_field_always_names_a_port() {
        let with_host = |host| {
            let mut e = sample();
            if let Some(r) = &mut e.request {
                r.host = host;
            }
            written(&e)
        };
        let header = |h| Host::Header(HeaderValue::from_static(h));
        for (host, want) in [
            (header("a"), "\"GET http://a:80/ HTTP/1.1\""),
            (header("a:8080"), "\"GET http://a:8080/ HTTP/1.1\""),
            (
                header("[2001:db8::1]"),
                "\"GET http://[2001:db8::1]:80/ HTTP/1.1\"",
            ),
            (
                header("[2001:db8::1]:81"),
                "\"GET http://[2001:db8::1]:81/ HTTP/1.1\"",
            ),
            (
                Host::Authority("b".parse().unwrap()),
                "\"GET http://b:80/ HTTP/1.1\"",
            ),
            (
                Host::Listener("127.0.0.1:80".parse().unwrap()),
                "\"GET http://127.0.0.1:80/ HTTP/1.1\"",
            ),
        ] {
            let line = with_host(host);
            assert!(line.contains(want), "{want} in {line}");
        }
    }

    #[test]
    fn a_refused_request_is_written_as_alb_writes_a_malformed_one() {
        let mut e = sample();
        e.request = None;
        (e.target, e.target_status, e.matched_rule_priority, e.action) = (None, None, None, None);
        let line = written(&e);
        assert!(
            line.contains(" 200 - 78 1234 \"- http://127.0.0.1:80- -\" "),
            "{line}"
        );
        assert!(
            line.contains(" \"-\" - 1970-01-01T00:00:00.000000Z \"-\" \"-\" \"-\" \"-\" \"-\" "),
            "{line}"
        );
    }

    #[test]
    fn connection_lines_have_albs_fields_up_to_conn_trace_id() {
        let line = |tls| {
            let mut text = String::new();
            Connection {
                at: UNIX_EPOCH,
                client: "192.0.2.1:5000".parse().unwrap(),
                listener_port: 443,
                tls,
                trace_id: ConnTraceId(1),
            }
            .write_to(&mut text);
            text
        };
        let done = Handshake::Done {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            latency: Duration::from_micros(4_036_400),
        };
        let tid = "TID_00000000000000000000000000000001";
        assert_eq!(
            line(Some(done)),
            format!(
                "1970-01-01T00:00:00.000000Z 192.0.2.1 5000 443 TLSv1.3 TLS_AES_128_GCM_SHA256 \
                 4.036 - - - Success {tid}"
            )
        );
        assert_eq!(
            line(Some(Handshake::Failed)),
            format!(
                "1970-01-01T00:00:00.000000Z 192.0.2.1 5000 443 - - - - - - \
                 Failed:UnmappedConnectionError {tid}"
            )
        );
        assert_eq!(
            line(None),
            format!("1970-01-01T00:00:00.000000Z 192.0.2.1 5000 443 - - - - - - - {tid}")
        );
    }

    #[test]
    fn classification_fields_come_before_the_conn_trace_id() {
        let mut e = sample();
        e.classification = Some((
            RequestSafetyTier::Ambiguous,
            ClassificationReason::DuplicateContentLength,
        ));
        let line = written(&e);
        assert!(
            line.ends_with(
                " \"10.0.0.1:8080\" \"200\" \"Ambiguous\" \"DuplicateContentLength\" \
                 TID_000000000000000000000000000000ab"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_full_log_drops_lines_and_a_closed_one_ends() {
        let e = sample();
        let (log, lines) = AccessLog::new(1 << 10);
        log.write(&e);
        let one = lines.take().len();
        // Room for two lines: the third is dropped, the two kept are whole.
        let (log, lines) = AccessLog::new(one + 1);
        for _ in 0..3 {
            log.write(&e);
        }
        let mut batch = String::new();
        assert!(lines.next_batch(&mut batch, Duration::ZERO));
        assert_eq!(batch.len(), 2 * one);
        assert!(batch.ends_with('\n'));
        // Taken, there is room again; closed, no more.
        log.write(&e);
        lines.close();
        log.write(&e);
        assert!(lines.next_batch(&mut batch, Duration::ZERO));
        assert_eq!(batch.len(), one);
        assert!(!lines.next_batch(&mut batch, Duration::ZERO));
    }

    #[test]
    fn the_first_line_wakes_a_waiting_reader() {
        let (log, lines) = AccessLog::new(1 << 10);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            log.write(&sample());
        });
        let mut batch = String::new();
        assert!(lines.next_batch(&mut batch, Duration::from_millis(1)));
        assert!(batch.starts_with("http 1970-01-01T"), "{batch}");
        writer.join().unwrap();
    }
}
