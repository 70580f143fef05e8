//! The actions a load balancer answers by itself: `redirect` and `fixed-response`. Both are
//! compiled from the config once and turned into a response without touching a target. A redirect
//! substitutes ALB's placeholders in one pass, so request text that looks like a placeholder is
//! never expanded, and like ALB it always writes the port into `Location`.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use lb_config::RedirectCode;

/// The request facts a redirect may use.
#[derive(Debug, Clone, Copy)]
pub struct RedirectInput<'a> {
    /// `http` or `https`: the listener's protocol.
    pub protocol: &'a str,
    /// The host the client asked for, without its port.
    pub host: &'a str,
    /// The listener's port.
    pub port: u16,
    /// The path, with its leading `/`.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
}

/// A compiled redirect action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub protocol: String,
    pub host: String,
    pub port: String,
    pub path: String,
    pub query: String,
    pub status: StatusCode,
}

impl Redirect {
    /// From the config's parts, each possibly with placeholders.
    pub fn new(
        protocol: &str,
        host: &str,
        port: &str,
        path: &str,
        query: &str,
        code: RedirectCode,
    ) -> Redirect {
        Redirect {
            protocol: protocol.into(),
            host: host.into(),
            port: port.into(),
            path: path.into(),
            query: query.into(),
            status: match code {
                RedirectCode::Http301 => StatusCode::MOVED_PERMANENTLY,
                RedirectCode::Http302 => StatusCode::FOUND,
            },
        }
    }

    /// The `Location` for a request.
    pub fn location(&self, r: &RedirectInput<'_>) -> String {
        let port = r.port.to_string();
        let path = r.path.strip_prefix('/').unwrap_or(r.path);
        let query = r.query.unwrap_or("");
        let expand = |s: &str| {
            expand(
                s,
                &[
                    ("protocol", r.protocol),
                    ("host", r.host),
                    ("port", &port),
                    ("path", path),
                    ("query", query),
                ],
            )
        };
        let protocol = expand(&self.protocol).to_ascii_lowercase();
        let mut out = format!(
            "{protocol}://{}:{}{}",
            expand(&self.host),
            expand(&self.port),
            expand(&self.path)
        );
        let query = expand(&self.query);
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query);
        }
        out
    }
}

/// Replaces `#{name}` (name case-insensitive) with its value; unknown placeholders stay.
fn expand(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let known = after.find('}').and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| (*v, end))
        });
        match known {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("#{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A compiled fixed-response action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl FixedResponse {
    /// From the config; `status` was validated as 2XX, 4XX or 5XX.
    pub fn new(status: u16, content_type: Option<&str>, body: Option<&str>) -> FixedResponse {
        FixedResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            content_type: content_type.and_then(|c| HeaderValue::from_str(c).ok()),
            body: Bytes::from(body.unwrap_or("").to_owned()),
        }
    }

    /// The headers the response carries besides its length.
    pub fn content_type_header(&self) -> Option<(header::HeaderName, HeaderValue)> {
        self.content_type.clone().map(|v| (header::CONTENT_TYPE, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(protocol: &'a str, path: &'a str, query: Option<&'a str>) -> RedirectInput<'a> {
        RedirectInput {
            protocol,
            host: "www.example.com",
            port: 80,
            path,
            query,
        }
    }

    #[test]
    fn http_to_https_keeps_host_path_and_query() {
        // The AWS docs' example: Protocol HTTPS, Port 443, everything else from the request.
        let r = Redirect::new(
            "HTTPS",
            "#{host}",
            "443",
            "/#{path}",
            "#{query}",
            RedirectCode::Http301,
        );
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            r.location(&input("http", "/a/b", Some("x=1&y=2"))),
            "https://www.example.com:443/a/b?x=1&y=2"
        );
        assert_eq!(
            r.location(&input("http", "/", None)),
            "https://www.example.com:443/"
        );
    }

    #[test]
    fn placeholders_compose_and_are_not_reexpanded() {
        let r = Redirect::new(
            "#{protocol}",
            "m.#{host}",
            "#{port}",
            "/mobile/#{path}/x",
            "from=#{host}&#{query}",
            RedirectCode::Http302,
        );
        assert_eq!(
            r.location(&input("http", "/#{host}", Some("q=1"))),
            "http://m.www.example.com:80/mobile/#{host}/x?from=www.example.com&q=1"
        );
        assert_eq!(expand("#{nope} #{", &[]), "#{nope} #{");
        assert_eq!(expand("#{HOST}", &[("host", "h")]), "h");
    }
}
