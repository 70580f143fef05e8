//! Desync mitigation as ALB does it: every HTTP/1 request head is classified by AWS's own
//! classifier (`http_desync_guardian`, the library ALB uses) as Compliant, Acceptable, Ambiguous
//! or Severe, and the listener's `routing.http.desync_mitigation_mode` says what becomes of it
//! ([`DesyncMode`], [`Action`]).
//!
//! [`Framing`] sits between the client's stream and hyper: it reads the stream as hyper would
//! (a head, then a body of `Content-Length` bytes or chunks, then the next head) and hands hyper
//! each head only once it is whole and judged. A head that hyper's strict parser takes as it is
//! goes through untouched (most do, without a copy). One that the mode lets through but hyper
//! would refuse with an empty 400 (a space in the URI, a header name that is no token, a version
//! such as `HTTP/1.2`, a `Transfer-Encoding` with parameters) is handed over rewritten: its
//! fields normalised, invalid header fields dropped, and the framing xlb decided written as one
//! `Content-Length` or `Transfer-Encoding`. So hyper, the target and xlb all see the request
//! boundaries [`Framing`] found. A head that is refused is replaced by a stand-in that hyper
//! parses (so that the refusal is answered, logged and counted like any request) and the rest
//! of the connection is dropped.
//!
//! It also enforces ALB's sizes: a request line or a header line over 16 KiB, or headers over
//! 64 KiB, get a 400 before any of it reaches hyper.

use std::{
    borrow::Cow,
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use http_desync_guardian::request_analyzer::HttpRequestData;
pub use http_desync_guardian::{ClassificationReason, RequestSafetyTier};
pub use lb_config::DesyncMode;
use tokio::io::ReadBuf;

/// Longest request line, and longest header line (ALB's limits).
pub const MAX_LINE: usize = 16 * 1024;
/// Most bytes of headers in one request (ALB's limit).
pub const MAX_HEADERS_SIZE: usize = 64 * 1024;
/// Most header lines in one head: hyper's own limit, refused here with a 400 instead of its 431.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size or trailer line followed; hyper refuses chunk extensions beyond 16 KiB.
const MAX_CHUNK_LINE: usize = 17 * 1024;
/// How an HTTP/2 connection with prior knowledge starts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What becomes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// Forwarded, then the client's connection and the target's are closed (ALB's defensive
    /// mode with an Ambiguous request).
    ForwardThenClose,
    /// Blocked by the mode (ALB answers 400).
    Block,
    /// A request line, header or headers over ALB's sizes (400).
    TooLarge,
    /// A `Transfer-Encoding` xlb cannot frame: not ending in `chunked` (ALB answers 501).
    UnsupportedTransferEncoding,
    /// A request [`Framing`] did not read: after an upgrade the target refused, or chunks it
    /// could not follow. Refused (400), as its boundaries are unknown.
    Unframed,
}

/// What [`Framing`] made of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub tier: RequestSafetyTier,
    pub reason: ClassificationReason,
    pub action: Action,
    /// Set when hyper read a stand-in for the request.
    pub stand_in: Option<StandIn>,
}

/// What the access log needs of a refused request that hyper read a stand-in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandIn {
    /// The bytes of the head the client sent (as far as it was read).
    pub head_len: u64,
    /// Whether the stand-in has the request's own method, URI and version. If not, the request
    /// is malformed, and logged as ALB logs those (`- http://listener- -`).
    pub request_line: bool,
}

impl Verdict {
    /// Requests that are not HTTP/1 (HTTP/2 is out of the classifier's scope, as ALB's).
    pub const COMPLIANT: Verdict = Verdict {
        tier: RequestSafetyTier::Compliant,
        reason: ClassificationReason::Compliant,
        action: Action::Forward,
        stand_in: None,
    };

    const UNFRAMED: Verdict = Verdict {
        action: Action::Unframed,
        ..Verdict::COMPLIANT
    };

    /// Whether ALB counts the request in `DesyncMitigationMode_NonCompliant_Request_Count` and
    /// writes its classification to the access log.
    pub fn non_compliant(&self) -> bool {
        self.tier != RequestSafetyTier::Compliant
    }
}

/// ALB's action table: what `mode` does with a request of `tier`.
pub fn action(mode: DesyncMode, tier: RequestSafetyTier) -> Action {
    use {DesyncMode::*, RequestSafetyTier::*};
    match (mode, tier) {
        (_, Compliant) | (Monitor, _) | (Defensive, Acceptable) => Action::Forward,
        (Defensive, Ambiguous) => Action::ForwardThenClose,
        (Defensive, Severe) | (Strictest, _) => Action::Block,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// Passes bytes through unread: HTTP/2, a protocol switched to, or chunks not followed.
    Off,
    /// Drops what the client sends after a refused request.
    Discard,
}

/// The framing of one connection's requests, as far as it has been read.
#[derive(Debug)]
pub struct Framing {
    mode: DesyncMode,
    state: State,
    /// The head (or chunk line) being read.
    buf: Vec<u8>,
    /// Bytes for hyper that differ from those read, and how many of them it has taken.
    out: Vec<u8>,
    taken: usize,
    /// The verdicts of the heads handed to hyper and not yet served.
    verdicts: VecDeque<Verdict>,
}

/// A connection's framing, shared by its stream (writer) and its service (reader).
pub type Shared = Arc<Mutex<Framing>>;

impl Framing {
    fn new(mode: DesyncMode) -> Framing {
        Framing {
            mode,
            state: State::Head,
            buf: Vec::new(),
            out: Vec::new(),
            taken: 0,
            verdicts: VecDeque::new(),
        }
    }

    /// A framing shared between a stream and its service.
    pub fn shared(mode: DesyncMode) -> Shared {
        Arc::new(Mutex::new(Framing::new(mode)))
    }

    fn lock(this: &Shared) -> std::sync::MutexGuard<'_, Framing> {
        this.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called once per HTTP/1 request hyper parsed, in order: what to do with it.
    pub fn next_request(this: &Shared) -> Verdict {
        Framing::lock(this)
            .verdicts
            .pop_front()
            .unwrap_or(Verdict::UNFRAMED)
    }

    /// After a switch of protocols (101): the bytes that follow are no longer HTTP/1.
    pub fn switched(this: &Shared) {
        Framing::lock(this).state = State::Off;
    }

    /// Whether a request was refused: what the client still sends is dropped.
    pub fn discarding(this: &Shared) -> bool {
        Framing::lock(this).state == State::Discard
    }

    /// Reads what was just read into `buf` from position `from`, and leaves there what hyper is
    /// to read instead (possibly nothing yet: a head not yet whole, or dropped bytes).
    pub fn filter(this: &Shared, buf: &mut ReadBuf<'_>, from: usize) {
        let mut f = Framing::lock(this);
        if f.feed(&buf.filled()[from..]) {
            buf.set_filled(from);
            f.drain(buf);
        }
    }

    /// Moves bytes waiting for hyper into `buf`; whether there were any.
    pub fn drain_shared(this: &Shared, buf: &mut ReadBuf<'_>) -> bool {
        Framing::lock(this).drain(buf)
    }

    fn drain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let waiting = &self.out[self.taken..];
        if waiting.is_empty() {
            return false;
        }
        let n = waiting.len().min(buf.remaining());
        buf.put_slice(&waiting[..n]);
        self.taken += n;
        if self.taken == self.out.len() {
            self.out.clear();
            self.taken = 0;
        }
        true
    }

    /// Reads `input`. Returns `false` if hyper is to read `input` as it is, `true` if it is to
    /// read `out` instead: bytes are copied out only once something differs.
    fn feed(&mut self, input: &[u8]) -> bool {
        let mut output = Output {
            input,
            changed: false,
        };
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.state {
                State::Off => {
                    output.pass(&mut self.out, rest);
                    break;
                }
                State::Discard => {
                    output.diverge(&mut self.out, at);
                    break;
                }
                // Empty lines before a request line are skipped by hyper too.
                State::Head if self.buf.is_empty() && matches!(rest[0], b'\r' | b'\n') => {
                    output.pass(&mut self.out, &rest[..1]);
                    at += 1;
                }
                // Most heads arrive whole in one read: judged where they are, not copied first.
                State::Head if self.buf.is_empty() => match head_end(rest, 0) {
                    Some(end) => {
                        self.head(&rest[..end], Some(at), &mut output);
                        at += end;
                    }
                    None => {
                        output.diverge(&mut self.out, at);
                        self.buf.extend_from_slice(rest);
                        self.partial_head();
                        break;
                    }
                },
                State::Head => {
                    output.diverge(&mut self.out, at);
                    let old = self.buf.len();
                    self.buf.extend_from_slice(rest);
                    match head_end(&self.buf, old.saturating_sub(3)) {
                        Some(end) => {
                            let head = std::mem::take(&mut self.buf);
                            self.head(&head[..end], None, &mut output);
                            self.buf = head;
                            self.buf.clear();
                            at += end - old;
                        }
                        None => {
                            self.partial_head();
                            break;
                        }
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let len = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
                    output.pass(&mut self.out, &rest[..len]);
                    at += len;
                    let left = n - len as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, _) => State::ChunkData(left),
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                        output.pass(&mut self.out, rest);
                        self.buf.extend_from_slice(rest);
                        if self.buf.len() > MAX_CHUNK_LINE {
                            self.state = State::Off;
                        }
                        break;
                    };
                    output.pass(&mut self.out, &rest[..=end]);
                    at += end + 1;
                    self.buf.extend_from_slice(&rest[..end]);
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line);
                    self.buf = line;
                    self.buf.clear();
                }
            }
        }
        output.changed
    }

    /// After a chunk-size, chunk-end or trailer line (without its `\n`).
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.state = match self.state {
            State::ChunkSize => {
                let size = line.split(|b| *b == b';').next().unwrap_or(b"");
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    // hyper refuses it too, and closes the connection.
                    None => State::Off,
                }
            }
            State::ChunkEnd if line.is_empty() => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Off,
        };
    }

    /// A head not whole yet: refused once it cannot fit ALB's sizes any more.
    fn partial_head(&mut self) {
        let line_over = !self.buf[..self.buf.len().min(MAX_LINE + 2)].contains(&b'\n')
            && self.buf.len() > MAX_LINE + 1;
        if self.buf.starts_with(H2_PREFACE) {
            // Held back so far, handed over now: hyper's HTTP/2 takes it from here.
            self.state = State::Off;
            self.out.extend_from_slice(&self.buf);
            self.buf.clear();
        } else if line_over || self.buf.len() > MAX_LINE + MAX_HEADERS_SIZE + 4 {
            let head = std::mem::take(&mut self.buf);
            self.refuse(&head, Verdict::COMPLIANT, Action::TooLarge);
        }
    }

    /// A whole head (its empty line included): at `in_place` in the input if read in one
    /// piece, else buffered (and held back from hyper so far).
    fn head(&mut self, head: &[u8], in_place: Option<usize>, output: &mut Output<'_>) {
        if head.starts_with(H2_PREFACE) {
            self.state = State::Off;
            output.keep(&mut self.out, head, in_place);
            return;
        }
        let judged = judge(head, self.mode);
        match judged.next {
            Next::Refuse => {
                output.replace(&mut self.out, in_place);
                self.refuse(head, judged.verdict, judged.verdict.action);
                return;
            }
            Next::Pass(None) => output.keep(&mut self.out, head, in_place),
            Next::Pass(Some(canonical)) => {
                output.replace(&mut self.out, in_place);
                self.out.extend_from_slice(&canonical);
            }
        }
        self.state = judged.body;
        self.verdicts.push_back(judged.verdict);
    }

    /// Hands hyper a stand-in for a refused head and drops the rest of the connection.
    fn refuse(&mut self, head: &[u8], verdict: Verdict, action: Action) {
        let request_line = stand_in(head, &mut self.out);
        self.verdicts.push_back(Verdict {
            action,
            stand_in: Some(StandIn {
                head_len: head.len() as u64,
                request_line,
            }),
            ..verdict
        });
        self.state = State::Discard;
    }
}

/// Bytes read, copied to `out` only from the first one that hyper is not to read as it is.
struct Output<'a> {
    input: &'a [u8],
    changed: bool,
}

impl Output<'_> {
    /// From `at` on, what hyper reads differs from the input: the input before it is copied.
    fn diverge(&mut self, out: &mut Vec<u8>, at: usize) {
        if !self.changed {
            out.extend_from_slice(&self.input[..at]);
            self.changed = true;
        }
    }

    /// Bytes of the input that hyper reads as they are.
    fn pass(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.changed {
            out.extend_from_slice(bytes);
        }
    }

    /// A head hyper reads as it is: from the input if it lies there (at `in_place`), else from
    /// the buffer it was held back in.
    fn keep(&mut self, out: &mut Vec<u8>, head: &[u8], in_place: Option<usize>) {
        match in_place {
            Some(_) => self.pass(out, head),
            None => out.extend_from_slice(head),
        }
    }

    /// A head hyper reads something else in place of. One held back in a buffer made the output
    /// diverge already.
    fn replace(&mut self, out: &mut Vec<u8>, in_place: Option<usize>) {
        if let Some(at) = in_place {
            self.diverge(out, at);
        }
    }
}

/// Where the head at the start of `buf` ends (after its empty line), looking from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(nl) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let at = i + nl + 1;
        // The classifier, like hyper, takes a bare `\n` as a line's end.
        match (buf.get(at), buf.get(at + 1)) {
            (Some(b'\n'), _) => return Some(at + 1),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// What a whole head comes to.
struct Judged {
    verdict: Verdict,
    next: Next,
    /// What follows the head.
    body: State,
}

enum Next {
    /// Handed to hyper: as it is, or rewritten.
    Pass(Option<Vec<u8>>),
    Refuse,
}

/// One header field as read; a folded value is joined.
struct Field<'a> {
    name: &'a [u8],
    value: Cow<'a, [u8]>,
}

/// A head split as the classifier splits it: the method up to the first space, the version
/// after the last, the URI between; header names up to the first colon.
struct Parts<'a> {
    method: &'a [u8],
    uri: &'a [u8],
    version: &'a [u8],
    fields: Vec<Field<'a>>,
}

fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn parts(head: &[u8]) -> Parts<'_> {
    let mut lines = lines(head);
    let line = lines.next().unwrap_or_default().trim_ascii();
    let (method, rest) = match line.iter().position(|b| *b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &b""[..]),
    };
    let (uri, version) = match rest.iter().rposition(|b| *b == b' ') {
        Some(sp) => (&rest[..sp], &rest[sp + 1..]),
        // No URI, as the classifier reads it (MissingUri).
        None if rest.starts_with(b"HTTP/1.") => (&b""[..], rest),
        // HTTP/0.9: no version.
        None => (rest, &b""[..]),
    };
    let mut fields: Vec<Field<'_>> = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if matches!(line[0], b' ' | b'\t') {
            // obs-fold: part of the previous value, joined with a space (RFC 9112 §5.2).
            if let Some(last) = fields.last_mut() {
                let value = last.value.to_mut();
                value.push(b' ');
                value.extend_from_slice(line.trim_ascii());
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            // No colon: no field, dropped (MissingHeaderColon).
            continue;
        };
        fields.push(Field {
            name: &line[..colon],
            value: Cow::Borrowed(line[colon + 1..].trim_ascii()),
        });
    }
    Parts {
        method,
        uri: uri.trim_ascii(),
        version: version.trim_ascii(),
        fields,
    }
}

/// RFC 9110's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_tchar(*b))
}

/// A field value hyper takes: visible characters, spaces, tabs and obs-text.
fn is_field_value(v: &[u8]) -> bool {
    v.iter()
        .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80)
}

/// Transfer codings the classifier knows (RFC 9112 §7).
const CODINGS: [&[u8]; 5] = [b"chunked", b"compress", b"deflate", b"gzip", b"identity"];

/// A header field's name and value.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The transfer codings `fields` name, in order, without parameters.
fn codings<'a>(fields: impl Iterator<Item = Pair<'a>>) -> impl Iterator<Item = &'a [u8]> {
    fields
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding"))
        .flat_map(|(_, value)| value.split(|b| *b == b','))
        .map(|c| {
            c.split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
        .filter(|c| !c.is_empty())
}

/// The body a head announces, as read from its fields, or why it cannot be framed.
fn body<'a>(fields: impl Iterator<Item = Pair<'a>> + Clone) -> Result<Body, Action> {
    let (mut any, mut known, mut chunked_last) = (false, true, false);
    for c in codings(fields.clone()) {
        any = true;
        known &= CODINGS.iter().any(|k| c.eq_ignore_ascii_case(k));
        chunked_last = c.eq_ignore_ascii_case(b"chunked");
    }
    if any {
        return match known && chunked_last {
            true => Ok(Body::Chunked),
            false => Err(Action::UnsupportedTransferEncoding),
        };
    }
    let lengths = fields
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"content-length"))
        .flat_map(|(_, value)| value.split(|b| *b == b','));
    let mut length = None;
    for v in lengths {
        let v = v.trim_ascii();
        let n = match std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(n) if v.iter().all(u8::is_ascii_digit) => n,
            _ => return Err(Action::Block),
        };
        if length.is_some_and(|l| l != n) {
            return Err(Action::Block);
        }
        length = Some(n);
    }
    Ok(Body::Length(length.unwrap_or(0)))
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Length(u64),
    Chunked,
}

impl Body {
    /// What [`Framing`] reads after the head.
    fn state(self) -> State {
        match self {
            Body::Chunked => State::ChunkSize,
            Body::Length(0) => State::Head,
            Body::Length(n) => State::Body(n),
        }
    }
}

/// The body of a head that hyper's parser takes as it is, read from what that parser found;
/// `None` if the head is to be rewritten for hyper.
fn as_hyper_reads(head: &[u8]) -> Option<Result<Body, Action>> {
    // Left uninitialised: the parser writes the headers it finds (4 KiB not cleared per head).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let fields = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    // hyper reads the last coding as written, parameters included.
    let plain_codings = fields
        .clone()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding"))
        .all(|(_, value)| !value.contains(&b';'));
    plain_codings.then(|| body(fields))
}

/// Classifies a whole head and decides what hyper reads of it.
fn judge(head: &[u8], mode: DesyncMode) -> Judged {
    let refuse = |verdict: Verdict| Judged {
        verdict,
        next: Next::Refuse,
        body: State::Discard,
    };
    let header_lines = lines(head).skip(1).take_while(|l| !l.is_empty());
    let (mut count, mut size, mut longest) = (0, 0, 0);
    for l in header_lines {
        count += 1;
        size += l.len() + 2;
        longest = longest.max(l.len());
    }
    let request_line = lines(head).next().unwrap_or_default().len();
    if request_line > MAX_LINE || longest > MAX_LINE || size > MAX_HEADERS_SIZE {
        return refuse(Verdict {
            action: Action::TooLarge,
            ..Verdict::COMPLIANT
        });
    }
    let analysis = HttpRequestData::analyze_raw_request(head);
    let mut verdict = Verdict {
        tier: analysis.tier,
        reason: analysis.reason,
        action: action(mode, analysis.tier),
        stand_in: None,
    };
    if count > MAX_HEADERS {
        verdict.action = Action::TooLarge;
    }
    if verdict.action == Action::Block || verdict.action == Action::TooLarge {
        return refuse(verdict);
    }
    // Most requests: compliant, and taken by hyper as they are.
    if !verdict.non_compliant()
        && let Some(body) = as_hyper_reads(head)
    {
        return match body {
            Ok(body) => Judged {
                verdict,
                next: Next::Pass(None),
                body: body.state(),
            },
            Err(action) => refuse(Verdict { action, ..verdict }),
        };
    }
    let p = parts(head);
    let body = match body(p.fields.iter().map(|f| (f.name, &*f.value))) {
        Ok(body) => body,
        Err(action) => return refuse(Verdict { action, ..verdict }),
    };
    // What the mode lets through but xlb cannot put into a request: refused (monitor mode).
    let version: &[u8] = match p.version {
        // Chunked is HTTP/1.1's (hyper refuses it in HTTP/1.0).
        b"HTTP/1.0" if matches!(body, Body::Chunked) => b"HTTP/1.1",
        b"HTTP/1.0" | b"HTTP/1.1" => p.version,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => b"HTTP/1.1",
        // HTTP/0.9 has no head to answer with: asked again as HTTP/1.0.
        b"" => b"HTTP/1.0",
        _ => {
            return refuse(Verdict {
                action: Action::Block,
                ..verdict
            });
        }
    };
    if !is_token(p.method) || p.uri.iter().any(|b| matches!(b, 0 | b'\r')) {
        return refuse(Verdict {
            action: Action::Block,
            ..verdict
        });
    }
    Judged {
        verdict,
        next: Next::Pass(Some(canonical(&p, version, body))),
        body: body.state(),
    }
}

/// The head as hyper is to read it: one space between method, URI and version; spaces and
/// control characters in the URI percent-encoded; only fields with a token name and a valid
/// value kept; the framing as one `Transfer-Encoding` or `Content-Length`.
fn canonical(p: &Parts<'_>, version: &[u8], body: Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(p.method);
    out.push(b' ');
    if p.uri.is_empty() {
        out.push(b'/');
    }
    for b in p.uri {
        match b {
            b'!'..=b'~' | 0x80.. => out.push(*b),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
    }
    out.push(b' ');
    out.extend_from_slice(version);
    out.extend_from_slice(b"\r\n");
    let framing = |name: &[u8]| {
        name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"content-length")
    };
    for f in &p.fields {
        if is_token(f.name) && is_field_value(&f.value) && !framing(f.name) {
            out.extend_from_slice(f.name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&f.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    match body {
        Body::Chunked => {
            // Chunked once, last (a second `chunked` is the classifier's Severe case).
            out.extend_from_slice(b"transfer-encoding: ");
            let fields = p.fields.iter().map(|f| (f.name, &*f.value));
            for c in codings(fields).filter(|c| !c.eq_ignore_ascii_case(b"chunked")) {
                out.extend_from_slice(c);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n");
        }
        Body::Length(0) => {}
        Body::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends to `out` a head hyper parses in place of a refused one, for the refusal to be
/// answered and logged: its request line and `Host` if they are clean (else `GET /`), no body.
/// Returns whether it kept the request line.
fn stand_in(head: &[u8], out: &mut Vec<u8>) -> bool {
    let p = parts(head);
    let clean =
        |s: &[u8]| !s.is_empty() && s.len() <= 2048 && s.iter().all(|b| (b'!'..=b'~').contains(b));
    let kept = is_token(p.method)
        && p.method.len() <= 32
        && clean(p.uri)
        && p.uri.starts_with(b"/")
        && matches!(p.version, b"HTTP/1.0" | b"HTTP/1.1");
    let (method, uri, version): (&[u8], &[u8], &[u8]) = match kept {
        true => (p.method, p.uri, p.version),
        false => (b"GET", b"/", b"HTTP/1.1"),
    };
    for part in [method, b" ", uri, b" ", version, b"\r\n"] {
        out.extend_from_slice(part);
    }
    if let Some(host) = p
        .fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"host") && clean(&f.value))
    {
        for part in [&b"host: "[..], &host.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"\r\n");
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`; returns what hyper reads and the verdicts.
    fn through(mode: DesyncMode, bytes: &[u8], step: usize) -> (Vec<u8>, Vec<Verdict>) {
        let mut f = Framing::new(mode);
        let mut read = Vec::new();
        for piece in bytes.chunks(step) {
            match f.feed(piece) {
                false => read.extend_from_slice(piece),
                true => {
                    read.extend_from_slice(&f.out);
                    f.out.clear();
                }
            }
        }
        (read, f.verdicts.into_iter().collect())
    }

    const KEEP_ALIVE: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn compliant_requests_reach_hyper_untouched_in_any_pieces() {
        let compliant = &KEEP_ALIVE[..KEEP_ALIVE.len() - 81];
        for step in [1, 2, 7, 64, compliant.len()] {
            let (read, verdicts) = through(DesyncMode::Defensive, compliant, step);
            assert_eq!(read, compliant, "pieces of {step}");
            assert_eq!(verdicts, [Verdict::COMPLIANT; 3], "pieces of {step}");
        }
    }

    #[test]
    fn framing_is_followed_through_bodies_and_chunks_to_the_ambiguous_request() {
        for step in [1, 3, KEEP_ALIVE.len()] {
            let (read, verdicts) = through(DesyncMode::Defensive, KEEP_ALIVE, step);
            let last = verdicts[3];
            assert_eq!(
                (last.tier, last.reason, last.action),
                (
                    RequestSafetyTier::Ambiguous,
                    ClassificationReason::BothTeClPresent,
                    Action::ForwardThenClose
                ),
                "pieces of {step}"
            );
            // The requests before it are read as they came, then the length goes: hyper and
            // the target see the chunks alone.
            assert!(
                read.starts_with(&KEEP_ALIVE[..KEEP_ALIVE.len() - 81]),
                "pieces of {step}"
            );
            let tail = String::from_utf8_lossy(&read[read.len() - 70..]).into_owned();
            assert!(
                tail.ends_with(
                    "POST /d HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
                "{tail:?}"
            );
        }
    }

    #[test]
    fn each_mode_acts_on_each_tier_as_albs_table_says() {
        use {Action::*, DesyncMode::*, RequestSafetyTier::*};
        let table = [
            (Compliant, [Forward, Forward, Forward]),
            (Acceptable, [Forward, Forward, Block]),
            (Ambiguous, [Forward, ForwardThenClose, Block]),
            (Severe, [Forward, Block, Block]),
        ];
        for (tier, actions) in table {
            for (mode, want) in [Monitor, Defensive, Strictest].into_iter().zip(actions) {
                assert_eq!(action(mode, tier), want, "{tier:?} in {mode:?}");
            }
        }
    }

    #[test]
    fn requests_are_classified_with_albs_reasons() {
        use ClassificationReason::*;
        let cases: &[(&[u8], RequestSafetyTier, ClassificationReason)] = &[
            (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", RequestSafetyTier::Acceptable, SpaceInUri),
            (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", RequestSafetyTier::Acceptable, NonCompliantVersion),
            (b"GET / HTTP/1.1\r\nX-A\x01: 1\r\n\r\n", RequestSafetyTier::Acceptable, NonCompliantHeader),
            (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", RequestSafetyTier::Acceptable, GetHeadZeroContentLength),
            (b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", RequestSafetyTier::Ambiguous, UndefinedContentLengthSemantics),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", RequestSafetyTier::Ambiguous, DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n", RequestSafetyTier::Ambiguous, SuspiciousHeader),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", RequestSafetyTier::Severe, MultipleContentLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", RequestSafetyTier::Severe, MultipleTransferEncodingChunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", RequestSafetyTier::Severe, MultipleTransferEncodingChunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: foo\r\n\r\n", RequestSafetyTier::Severe, BadTransferEncoding),
        ];
        for (request, tier, reason) in cases {
            let (_, verdicts) = through(DesyncMode::Monitor, request, request.len());
            let text = String::from_utf8_lossy(request);
            assert_eq!(
                (verdicts[0].tier, verdicts[0].reason),
                (*tier, *reason),
                "{text:?}"
            );
        }
    }

    #[test]
    fn heads_hyper_would_refuse_are_rewritten_for_it() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n"),
            (b"GET  /  HTTP/1.2\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            (b"GET  HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            (b"GET HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            (b"GET /\nHost: x\n\n", b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
            (b"GET / HTTP/1.1\r\nX A: 1\r\nB: \x01\r\nC: 2\r\n\r\n", b"GET / HTTP/1.1\r\nC: 2\r\n\r\n"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip;p, deflate,\tchunked;param\r\n\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, deflate, chunked\r\n\r\n0\r\n\r\n",
            ),
        ];
        for (request, want) in cases {
            let (read, verdicts) = through(DesyncMode::Defensive, request, request.len());
            assert_eq!(
                String::from_utf8_lossy(&read),
                String::from_utf8_lossy(want),
                "{:?}",
                verdicts[0]
            );
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let parsed = httparse::Request::new(&mut headers).parse(&read);
            assert!(
                matches!(parsed, Ok(httparse::Status::Complete(_))),
                "{parsed:?}"
            );
        }
    }

    #[test]
    fn refused_requests_become_a_stand_in_and_the_rest_is_dropped() {
        let request = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        let (read, verdicts) = through(DesyncMode::Defensive, request, 5);
        assert_eq!(read, b"POST /x HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].action, Action::Block);
        let head_len = request.len() as u64 - 31;
        let stand_in = Some(StandIn {
            head_len,
            request_line: true,
        });
        assert_eq!(verdicts[0].stand_in, stand_in);
        // A request line that cannot be kept: the access log writes it as malformed.
        let request = b"NOT A REQUEST LINE\r\n\r\n";
        let (read, verdicts) = through(DesyncMode::Monitor, request, 4);
        assert_eq!(read, b"GET / HTTP/1.1\r\n\r\n");
        let stand_in = Some(StandIn {
            head_len: 22,
            request_line: false,
        });
        assert_eq!(verdicts[0].stand_in, stand_in);
        let request = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        let (_, verdicts) = through(DesyncMode::Monitor, request, request.len());
        assert_eq!(verdicts[0].action, Action::UnsupportedTransferEncoding);
    }

    #[test]
    fn heads_over_albs_sizes_are_refused_before_hyper_reads_them() {
        let with = |line: usize, header: usize, headers: usize| {
            let mut head = format!("GET /{} HTTP/1.1\r\n", "a".repeat(line)).into_bytes();
            for i in 0..headers {
                head.extend_from_slice(format!("X-{i}: {}\r\n", "b".repeat(header)).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        for (what, head, refused) in [
            ("line of 16 KiB", with(16 * 1024 - 16, 10, 1), false),
            ("line over 16 KiB", with(16 * 1024, 10, 1), true),
            ("header over 16 KiB", with(10, 16 * 1024, 1), true),
            ("headers of 60 KiB", with(10, 6 * 1024, 10), false),
            ("headers over 64 KiB", with(10, 8 * 1024, 9), true),
            ("500 KiB of headers", with(10, 8 * 1024, 62), true),
        ] {
            let (read, verdicts) = through(DesyncMode::Defensive, &head, 4096);
            let too_large = verdicts[0].action == Action::TooLarge;
            assert_eq!(too_large, refused, "{what}");
            assert_eq!(read.len() < 100, refused, "{what}");
        }
    }

    #[test]
    fn http2_and_switched_protocols_are_passed_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        let (read, verdicts) = through(DesyncMode::Strictest, preface, 3);
        assert_eq!((read.as_slice(), verdicts.len()), (&preface[..], 0));
        let shared = Framing::shared(DesyncMode::Strictest);
        let upgrade = b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        assert!(!Framing::lock(&shared).feed(upgrade));
        assert_eq!(Framing::next_request(&shared), Verdict::COMPLIANT);
        Framing::switched(&shared);
        assert!(!Framing::lock(&shared).feed(b"GET  /not-http HTTP/9\r\n\r\n"));
        assert_eq!(Framing::next_request(&shared).action, Action::Unframed);
    }
}
