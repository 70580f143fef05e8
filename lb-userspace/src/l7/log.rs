//! Access log lines in the field order of ALB's access logs, so tools that read ALB logs read
//! xlb's. Lines go to a bounded channel the caller drains (e.g. to stdout); like ALB's log this is
//! best effort: a full channel drops the line rather than slow requests down.

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::HeaderValue;
use tokio::sync::mpsc;

/// Bytes reserved for a line.
const LINE_CAPACITY: usize = 512;

/// Where access log lines go.
#[derive(Debug, Clone, Default)]
pub struct AccessLog(Option<mpsc::Sender<String>>);

impl AccessLog {
    /// Lines go to `tx`; `None` turns the log off.
    pub fn new(tx: Option<mpsc::Sender<String>>) -> AccessLog {
        AccessLog(tx)
    }

    /// Sends one entry unless the log is off or full.
    pub fn write(&self, entry: &Entry) {
        if let Some(tx) = &self.0 {
            // Room for a typical line up front: no reallocation while it is written.
            let mut line = String::with_capacity(LINE_CAPACITY);
            let _ = write!(line, "{entry}");
            // Best effort, as ALB: a slow reader loses lines, requests do not wait.
            let _ = tx.try_send(line);
        }
    }
}

/// One request, as ALB logs it. `None` prints `-` (or -1 for times, as ALB).
#[derive(Debug, Clone)]
pub struct Entry {
    /// `http`, `https`, `h2` or `ws`/`wss`.
    pub kind: &'static str,
    pub received: SystemTime,
    /// The listener, standing for ALB's `elb` name.
    pub elb: SocketAddr,
    pub client: SocketAddr,
    pub target: Option<SocketAddr>,
    pub request_processing: Option<Duration>,
    pub target_processing: Option<Duration>,
    pub response_processing: Option<Duration>,
    pub elb_status: u16,
    pub target_status: Option<u16>,
    /// `METHOD scheme://host:port/path?query HTTP/x`.
    pub request: String,
    /// Kept as received: a header value shares the read buffer, a `String` would be a copy.
    pub user_agent: Option<HeaderValue>,
    pub ssl_cipher: Option<&'static str>,
    pub ssl_protocol: Option<&'static str>,
    pub target_group: Option<String>,
    pub trace_id: Option<HeaderValue>,
    pub domain_name: Option<Arc<str>>,
    /// 0: the default action.
    pub matched_rule_priority: u32,
    /// `forward`, `redirect` or `fixed-response`.
    pub action: Option<&'static str>,
    pub redirect_url: Option<String>,
    pub error_reason: Option<String>,
}

struct Opt<'a, T>(&'a Option<T>);

impl<T: fmt::Display> fmt::Display for Opt<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

struct Secs(Option<Duration>);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // Milliseconds rounded, in integers: `{:.3}` of a float costs several times as much.
            Some(d) => {
                let ms = (d.as_micros() + 500) / 1000;
                write!(f, "{}.{:03}", ms / 1000, ms % 1000)
            }
            None => f.write_str("-1"),
        }
    }
}

/// A quoted field; `"` and `\` inside are escaped.
struct Quoted<'a>(Option<&'a str>);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.unwrap_or("-");
        f.write_str("\"")?;
        // Plain runs go out whole; only the characters that need escaping one by one.
        while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                c => write!(f, "\\x{:02x}", u32::from(c))?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)?;
        f.write_str("\"")
    }
}

/// A header value as text, if it is (visible ASCII).
fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// ISO 8601 in UTC with microseconds, as ALB's `time`.
pub struct Iso8601(pub SystemTime);

impl fmt::Display for Iso8601 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_micros()
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both `time` and `request_creation_time` are the time received: format it once.
        let received = Iso8601(self.received).to_string();
        write!(
            f,
            "{} {} {} {} {} {} {} {} {} {} - - {} {} {} {} {} {} {} \"-\" {} {} {} {} {} \"-\" \"-\" \"-\" \"-\" -",
            self.kind,
            received,
            self.elb,
            self.client,
            Opt(&self.target),
            Secs(self.request_processing),
            Secs(self.target_processing),
            Secs(self.response_processing),
            self.elb_status,
            Opt(&self.target_status),
            Quoted(Some(&self.request)),
            Quoted(text(&self.user_agent)),
            Opt(&self.ssl_cipher),
            Opt(&self.ssl_protocol),
            Opt(&self.target_group),
            Quoted(text(&self.trace_id)),
            Quoted(self.domain_name.as_deref()),
            self.matched_rule_priority,
            received,
            Quoted(self.action),
            Quoted(self.redirect_url.as_deref()),
            Quoted(self.error_reason.as_deref()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso8601() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(Iso8601(t).to_string(), "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            Iso8601(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(Iso8601(leap).to_string().starts_with("2000-02-29T"));
    }

    #[test]
    fn quoted_fields_escape_quotes_backslashes_and_controls() {
        let q = Quoted(Some("a\"b\\c\x01é d")).to_string();
        assert_eq!(q, "\"a\\\"b\\\\c\\x01é d\"");
        assert_eq!(Quoted(None).to_string(), "\"-\"");
    }

    #[test]
    fn fields_come_in_alb_order() {
        let e = Entry {
            kind: "http",
            received: UNIX_EPOCH,
            elb: "127.0.0.1:80".parse().unwrap(),
            client: "192.0.2.1:5000".parse().unwrap(),
            target: Some("10.0.0.1:8080".parse().unwrap()),
            request_processing: Some(Duration::from_millis(1)),
            target_processing: Some(Duration::from_micros(19_600)),
            response_processing: None,
            elb_status: 200,
            target_status: Some(200),
            request: "GET http://a:80/ HTTP/1.1".into(),
            user_agent: Some(HeaderValue::from_static("cu\"rl")),
            ssl_cipher: None,
            ssl_protocol: None,
            target_group: Some("web".into()),
            trace_id: None,
            domain_name: None,
            matched_rule_priority: 0,
            action: Some("forward"),
            redirect_url: None,
            error_reason: None,
        };
        let line = e.to_string();
        assert!(
            line.starts_with(
                "http 1970-01-01T00:00:00.000000Z 127.0.0.1:80 192.0.2.1:5000 10.0.0.1:8080 \
                 0.001 0.020 -1 200 200 - - \"GET http://a:80/ HTTP/1.1\" \"cu\\\"rl\" - - web \"-\" \"-\" \"-\" 0 "
            ),
            "{line}"
        );
        assert!(line.contains(" \"forward\" \"-\" \"-\" "), "{line}");
    }
}
