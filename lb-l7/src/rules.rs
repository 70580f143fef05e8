//! Listener rules with ALB's semantics: rules run from the lowest priority up, every condition of
//! a rule must match (AND), and any value of a condition may (OR). Wildcards are ALB's globs (`*`
//! any run of characters, `?` exactly one), not path templates or regexes, so a hand-written
//! matcher gives exactly AWS's behaviour. Rules are compiled once per config; matching borrows the
//! request and allocates only to percent-decode the query.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;

use lb_config::{Condition, QueryValue};

/// An ALB wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    pattern: Vec<char>,
    case_sensitive: bool,
}

impl Wildcard {
    /// `pattern` with `*` and `?`.
    pub fn new(pattern: &str, case_sensitive: bool) -> Wildcard {
        Wildcard {
            pattern: pattern.chars().collect(),
            case_sensitive,
        }
    }

    /// Whether the whole of `text` matches. Greedy with one backtrack point (the last `*`), which
    /// is exact for globs and linear in practice.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let eq = |p: char, t: char| {
            p == '?'
                || if self.case_sensitive {
                    p == t
                } else {
                    p.to_lowercase().eq(t.to_lowercase())
                }
        };
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if eq(c, text[t]) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.pattern[p..].iter().all(|&c| c == '*')
    }
}

/// What rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host header or `:authority`, port included if the client sent one.
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
}

/// A compiled condition.
#[derive(Debug)]
enum Matcher {
    Host(Vec<Wildcard>),
    Path(Vec<Wildcard>),
    /// `None`: a name that is not a header name, which matches nothing.
    Header(Option<HeaderName>, Vec<Wildcard>),
    Method(Vec<String>),
    Query(Vec<(Option<Wildcard>, Wildcard)>),
    SourceIp(Vec<IpNet>),
}

impl Matcher {
    fn compile(c: &Condition) -> Matcher {
        let globs =
            |vs: &[String], cs: bool| vs.iter().map(|v| Wildcard::new(v, cs)).collect::<Vec<_>>();
        match c {
            Condition::HostHeader { values } => Matcher::Host(globs(values, false)),
            Condition::PathPattern { values } => Matcher::Path(globs(values, true)),
            Condition::HttpHeader { name, values } => {
                // The config refuses names that do not parse; no request could carry one.
                let name = HeaderName::from_bytes(name.as_bytes()).ok();
                Matcher::Header(name, globs(values, false))
            }
            Condition::HttpRequestMethod { values } => Matcher::Method(values.clone()),
            Condition::QueryString { values } => Matcher::Query(
                values
                    .iter()
                    .map(|QueryValue { key, value }| {
                        (
                            key.as_deref().map(|k| Wildcard::new(k, false)),
                            Wildcard::new(value, false),
                        )
                    })
                    .collect(),
            ),
            Condition::SourceIp { values } => Matcher::SourceIp(values.clone()),
        }
    }

    fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Matcher::Host(globs) => {
                let Some(host) = r.host.map(strip_port) else {
                    return false;
                };
                globs.iter().any(|g| g.matches(host))
            }
            Matcher::Path(globs) => globs.iter().any(|g| g.matches(r.path)),
            Matcher::Header(None, _) => false,
            Matcher::Header(Some(name), globs) => r
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| globs.iter().any(|g| g.matches(v))),
            Matcher::Method(methods) => methods.iter().any(|m| m == r.method.as_str()),
            Matcher::Query(pairs) => {
                let params = query_pairs(r.query.unwrap_or(""));
                pairs.iter().any(|(key, value)| {
                    params.iter().any(|(k, v)| {
                        let key_ok = match (key, k) {
                            (None, _) => true,
                            (Some(kp), Some(k)) => kp.matches(k),
                            (Some(_), None) => false,
                        };
                        key_ok && value.matches(v)
                    })
                })
            }
            Matcher::SourceIp(nets) => {
                let client = canonical(r.client);
                nets.iter().any(|n| n.contains(&client))
            }
        }
    }
}

/// IPv4-mapped IPv6 clients (dual-stack sockets) are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// Percent-decoded `key=value` pairs; a parameter without `=` has no key.
fn query_pairs(query: &str) -> Vec<(Option<String>, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (Some(percent_decode(k)), percent_decode(v)),
            None => (None, percent_decode(p)),
        })
        .collect()
}

/// Decodes `%XX` and `+` (as a space); malformed escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A compiled rule whose action is `A`.
#[derive(Debug)]
pub struct Rule<A> {
    pub priority: u32,
    matchers: Vec<Matcher>,
    pub action: A,
}

/// A listener's rules in priority order, and its default action.
#[derive(Debug)]
pub struct RuleSet<A> {
    rules: Vec<Rule<A>>,
    default: A,
}

impl<A> RuleSet<A> {
    /// Compiles `(priority, conditions, action)` triples; the order given does not matter.
    pub fn new(rules: impl IntoIterator<Item = (u32, Vec<Condition>, A)>, default: A) -> Self {
        let mut rules: Vec<Rule<A>> = rules
            .into_iter()
            .map(|(priority, conditions, action)| Rule {
                priority,
                matchers: conditions.iter().map(Matcher::compile).collect(),
                action,
            })
            .collect();
        rules.sort_by_key(|r| r.priority);
        RuleSet { rules, default }
    }

    /// The first matching rule's priority and action, or `(0, default)` as ALB logs it.
    pub fn route(&self, r: &RequestView<'_>) -> (u32, &A) {
        self.rules
            .iter()
            .find(|rule| rule.matchers.iter().all(|m| m.matches(r)))
            .map_or((0, &self.default), |rule| (rule.priority, &rule.action))
    }
}

#[cfg(test)]
mod tests {
    use lb_config::Config;

    use super::*;

    #[test]
    fn wildcards_follow_alb() {
        let cases = [
            ("*.example.com", "www.example.com", false, true),
            ("*.example.com", "WWW.Example.COM", false, true),
            ("*.example.com", "example.com", false, false),
            ("*.example.com", "a.b.example.com", false, true),
            ("www.example.?om", "www.example.com", false, true),
            ("www.example.?om", "www.example.om", false, false),
            ("/img/*", "/img/a.png", true, true),
            ("/img/*", "/img/", true, true),
            ("/img/*", "/img", true, false),
            ("/img/*", "/IMG/a.png", true, false),
            ("/api/*/orders", "/api/v1/orders", true, true),
            ("/api/*/orders", "/api/v1/orders/1", true, false),
            ("*a*b*", "xxaxxbxx", true, true),
            ("*a*b", "abab", true, true),
            ("a*?", "a", true, false),
            ("*", "", true, true),
            ("", "", true, true),
            ("", "a", true, false),
        ];
        for (p, t, cs, want) in cases {
            assert_eq!(Wildcard::new(p, cs).matches(t), want, "{p:?} on {t:?}");
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            query_pairs("a=1&b&c=x%20y+z&&d=%zz"),
            vec![
                (Some("a".into()), "1".into()),
                (None, "b".into()),
                (Some("c".into()), "x y z".into()),
                (Some("d".into()), "%zz".into()),
            ]
        );
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
    }

    fn rules() -> RuleSet<&'static str> {
        let text = r#"
[[target_groups]]
name = "t"
protocol = "HTTP"
port = 80

[[http_listeners]]
address = "127.0.0.1"
port = 80
protocol = "HTTP"
default_action = { type = "forward", target_group = "t" }

[[http_listeners.rules]]
priority = 5
conditions = [
  { field = "host-header", values = ["*.example.com"] },
  { field = "path-pattern", values = ["/img/*", "/pics/*"] },
]
actions = [{ type = "forward", target_group = "t" }]

[[http_listeners.rules]]
priority = 1
conditions = [{ field = "http-header", name = "x-env", values = ["Beta*"] }]
actions = [{ type = "forward", target_group = "t" }]

[[http_listeners.rules]]
priority = 7
conditions = [{ field = "query-string", values = [{ key = "ver*", value = "2" }, { value = "preview" }] }]
actions = [{ type = "forward", target_group = "t" }]

[[http_listeners.rules]]
priority = 8
conditions = [{ field = "source-ip", values = ["192.0.2.0/24", "2001:db8::/32"] }]
actions = [{ type = "forward", target_group = "t" }]

[[http_listeners.rules]]
priority = 9
conditions = [{ field = "http-request-method", values = ["POST"] }]
actions = [{ type = "forward", target_group = "t" }]
"#;
        let cfg =
            Config::parse(&format!("[node]\ninterface = \"lo\"\n{text}"), "rules.toml").unwrap();
        let l = &cfg.http_listeners[0];
        let names = ["a", "b", "c", "d", "e"];
        RuleSet::new(
            l.rules
                .iter()
                .zip(names)
                .map(|(r, n)| (r.priority, r.conditions.clone(), n)),
            "default",
        )
    }

    struct Req {
        method: Method,
        host: Option<&'static str>,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
        client: IpAddr,
    }

    fn req() -> Req {
        Req {
            method: Method::GET,
            host: Some("example.org"),
            path: "/",
            query: None,
            headers: HeaderMap::new(),
            client: "198.51.100.1".parse().unwrap(),
        }
    }

    fn route(r: &Req) -> (u32, &'static str) {
        let set = rules();
        let (p, a) = set.route(&RequestView {
            method: &r.method,
            host: r.host,
            path: r.path,
            query: r.query,
            headers: &r.headers,
            client: r.client,
        });
        (p, *a)
    }

    #[test]
    fn rules_run_by_priority_with_and_of_conditions_and_or_of_values() {
        assert_eq!(route(&req()), (0, "default"));
        let img = Req {
            host: Some("Www.Example.com:8080"),
            path: "/pics/cat.png",
            ..req()
        };
        assert_eq!(route(&img), (5, "a"));
        let wrong_host = Req {
            host: Some("www.example.org"),
            path: "/img/cat.png",
            ..req()
        };
        assert_eq!(route(&wrong_host), (0, "default"));
        let case = Req {
            host: Some("www.example.com"),
            path: "/IMG/cat.png",
            ..req()
        };
        assert_eq!(route(&case), (0, "default"));
        let mut beta = Req {
            path: "/img/x",
            host: Some("a.example.com"),
            ..req()
        };
        beta.headers.insert("X-Env", "beta-7".parse().unwrap());
        assert_eq!(route(&beta), (1, "b"), "priority 1 beats priority 5");
    }

    #[test]
    fn each_condition_type_matches() {
        for (q, want) in [
            ("version=2", 7),
            ("VER=2&x=1", 7),
            ("a=preview", 7),
            ("version=3", 0),
            ("preview", 7),
        ] {
            let r = Req {
                query: Some(q),
                ..req()
            };
            assert_eq!(route(&r).0, want, "query {q:?}");
        }
        for (ip, want) in [
            ("192.0.2.77", 8),
            ("2001:db8::1", 8),
            ("::ffff:192.0.2.1", 8),
            ("192.0.3.1", 0),
        ] {
            let r = Req {
                client: ip.parse().unwrap(),
                ..req()
            };
            assert_eq!(route(&r).0, want, "client {ip}");
        }
        let post = Req {
            method: Method::POST,
            ..req()
        };
        assert_eq!(route(&post).0, 9);
        let lower = Req {
            method: Method::from_bytes(b"post").unwrap(),
            ..req()
        };
        assert_eq!(route(&lower).0, 0, "methods are case-sensitive");
    }
}
