//! Request smuggling defence: a second reader of each HTTP/1 connection's bytes that finds the
//! request heads hyper accepts but a target could frame differently. hyper resolves a request
//! with both `Content-Length` and `Transfer-Encoding` by dropping the length (and closing the
//! connection after it), which leaves nothing in the request to show it; ALB's defensive modes
//! refuse such requests instead, so xlb reads the raw heads itself.
//!
//! [`Framing`] follows the stream as hyper does: a head, then a body of `Content-Length` bytes or
//! chunks, then the next head. It only has to stay in step for requests hyper keeps the
//! connection open after; at the first ambiguous head, anything it cannot parse (hyper answers
//! 400 to those itself), HTTP/2, or a head over ALB's 64 KiB, it stops reading.

use std::sync::{Arc, Mutex, PoisonError};

/// Longest request head read (ALB's limit for all request headers).
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Most headers in one head.
const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Off,
}

/// The framing of one connection's requests, as far as it has been read.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// The head or line being read.
    buf: Vec<u8>,
    /// Heads read so far.
    heads: u64,
    /// Requests handed out by [`Framing::next_request`].
    served: u64,
    /// The number of the ambiguous head, and why.
    ambiguous: Option<(u64, &'static str)>,
}

/// A connection's framing, shared by its stream (writer) and its service (reader).
pub type Shared = Arc<Mutex<Framing>>;

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            buf: Vec::new(),
            heads: 0,
            served: 0,
            ambiguous: None,
        }
    }
}

impl Framing {
    /// A framing shared between a stream and its service.
    pub fn shared() -> Shared {
        Arc::new(Mutex::new(Framing::default()))
    }

    /// Called once per request, in order: why that request is ambiguous, if it is.
    pub fn next_request(this: &Shared) -> Option<&'static str> {
        let mut f = this.lock().unwrap_or_else(PoisonError::into_inner);
        f.served += 1;
        f.ambiguous
            .filter(|(head, _)| *head == f.served)
            .map(|(_, why)| why)
    }

    /// Feeds bytes read from the client.
    pub fn feed_shared(this: &Shared, bytes: &[u8]) {
        this.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .feed(bytes);
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                // Most heads arrive whole in one read: parsed where they are, not copied first.
                State::Head if self.buf.is_empty() => match self.head(bytes) {
                    Some(used) => bytes = &bytes[used..],
                    None if self.state == State::Head && bytes.len() <= MAX_HEAD => {
                        self.buf.extend_from_slice(bytes);
                        return;
                    }
                    None => {
                        self.state = State::Off;
                        return;
                    }
                },
                State::Head => {
                    let take = bytes.len().min(MAX_HEAD + 1 - self.buf.len());
                    self.buf.extend_from_slice(&bytes[..take]);
                    let head = std::mem::take(&mut self.buf);
                    let parsed = self.head(&head);
                    self.buf = head;
                    match parsed {
                        Some(used) => {
                            // Bytes past the head were counted in `take`; give them back.
                            let extra = self.buf.len() - used;
                            bytes = &bytes[take - extra..];
                            self.buf.clear();
                        }
                        None if self.buf.len() > MAX_HEAD => self.state = State::Off,
                        None => bytes = &bytes[take..],
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let skip = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    let left = n - skip as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, _) => State::ChunkData(left),
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
                        self.buf.extend_from_slice(bytes);
                        if self.buf.len() > MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line);
                }
            }
        }
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
                    None => State::Off,
                }
            }
            State::ChunkEnd if line.is_empty() => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Off,
        };
    }

    /// Parses the head at the start of `buf`; returns its length once complete.
    fn head(&mut self, buf: &[u8]) -> Option<usize> {
        // Left uninitialised: the parser writes the headers it finds (4 KiB not cleared per head).
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let used = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.state = State::Off;
                return None;
            }
        };
        self.heads += 1;
        let mut lengths = Vec::new();
        let mut chunked = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths.extend(
                    h.value
                        .split(|b| *b == b',')
                        .map(|v| v.trim_ascii().to_vec()),
                );
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.split(|b| *b == b',').next_back().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        let why = match (&chunked, lengths.as_slice()) {
            (Some(_), [_, ..]) => Some("both Content-Length and Transfer-Encoding"),
            (None, [first, rest @ ..]) if rest.iter().any(|l| l != first) => {
                Some("conflicting Content-Length")
            }
            _ => None,
        };
        if let Some(why) = why {
            self.ambiguous = Some((self.heads, why));
            self.state = State::Off;
            return Some(used);
        }
        self.state = match (chunked, lengths.first()) {
            (Some(true), _) => State::ChunkSize,
            // hyper refuses a request whose last coding is not chunked.
            (Some(false), _) => State::Off,
            (None, Some(len)) => match std::str::from_utf8(len).ok().and_then(|l| l.parse().ok()) {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            },
            (None, None) => State::Head,
        };
        Some(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` and returns the verdict of each of `requests`.
    fn verdicts(bytes: &[u8], step: usize, requests: usize) -> Vec<Option<&'static str>> {
        let f = Framing::shared();
        for piece in bytes.chunks(step) {
            Framing::feed_shared(&f, piece);
        }
        (0..requests).map(|_| Framing::next_request(&f)).collect()
    }

    const KEEP_ALIVE: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn follows_keep_alive_framing_to_the_ambiguous_request() {
        let want = vec![
            None,
            None,
            None,
            Some("both Content-Length and Transfer-Encoding"),
        ];
        for step in [1, 2, 7, 64, KEEP_ALIVE.len()] {
            assert_eq!(verdicts(KEEP_ALIVE, step, 4), want, "pieces of {step}");
        }
    }

    #[test]
    fn finds_each_kind_of_ambiguity() {
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert!(verdicts(te_first, 5, 1)[0].is_some());
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(verdicts(two, 5, 1), [Some("conflicting Content-Length")]);
        let list = b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n";
        assert_eq!(verdicts(list, 5, 1), [Some("conflicting Content-Length")]);
        let same = b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(verdicts(same, 5, 1), [None]);
    }

    #[test]
    fn stops_reading_http2_and_oversized_heads() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(preface, 9, 2), [None, None]);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        let f = Framing::shared();
        Framing::feed_shared(&f, &huge);
        assert_eq!(f.lock().unwrap().state, State::Off);
    }
}
