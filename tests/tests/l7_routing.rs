//! L7 listener rules and actions through real sockets: each condition type routes a real curl
//! request to the backend its rule names; fixed responses, redirects, weighted forwards and
//! ALB's `X-Forwarded-*` headers are checked on the wire, over HTTP/1.1 and h2c.

mod l7_support;

use l7_support::{Lab, curl, free_port, group};

/// Backends `default`, `host`, `path`, `header`, `method`, `query`, `source`, `never`, and a
/// listener with one rule per condition type.
fn routing_lab() -> (Lab, String) {
    let mut lab = Lab::new();
    let mut groups = String::new();
    for name in [
        "default", "host", "path", "header", "method", "query", "source", "never",
    ] {
        let port = lab.backend(name);
        groups.push_str(&group(name, &[port], ""));
    }
    let port = free_port();
    let toml = format!(
        r#"{groups}
[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "HTTP"
default_action = {{ type = "forward", target_group = "default" }}

[[http_listeners.rules]]
priority = 10
conditions = [{{ field = "host-header", values = ["*.example.com", "api.example.org"] }}]
actions = [{{ type = "forward", target_group = "host" }}]

[[http_listeners.rules]]
priority = 20
conditions = [{{ field = "path-pattern", values = ["/img/*", "/v?/pics"] }}]
actions = [{{ type = "forward", target_group = "path" }}]

[[http_listeners.rules]]
priority = 30
conditions = [{{ field = "http-header", name = "X-Env", values = ["beta*"] }}]
actions = [{{ type = "forward", target_group = "header" }}]

[[http_listeners.rules]]
priority = 40
conditions = [{{ field = "http-request-method", values = ["DELETE", "PUT"] }}]
actions = [{{ type = "forward", target_group = "method" }}]

[[http_listeners.rules]]
priority = 50
conditions = [{{ field = "query-string", values = [{{ key = "version", value = "v*" }}] }}]
actions = [{{ type = "forward", target_group = "query" }}]

[[http_listeners.rules]]
priority = 60
conditions = [
  {{ field = "source-ip", values = ["127.0.0.0/8"] }},
  {{ field = "path-pattern", values = ["/local"] }},
]
actions = [{{ type = "forward", target_group = "source" }}]

[[http_listeners.rules]]
priority = 70
conditions = [
  {{ field = "source-ip", values = ["192.0.2.0/24"] }},
  {{ field = "path-pattern", values = ["/remote"] }},
]
actions = [{{ type = "forward", target_group = "never" }}]

[[http_listeners.rules]]
priority = 5
conditions = [{{ field = "path-pattern", values = ["/img/secret"] }}]
actions = [{{ type = "fixed-response", status_code = 403, content_type = "application/json", message_body = "{{\"denied\":true}}" }}]

[[http_listeners.rules]]
priority = 80
conditions = [{{ field = "path-pattern", values = ["/old/*"] }}]
actions = [{{ type = "redirect", protocol = "HTTPS", port = "443", status_code = "HTTP_301" }}]

[[http_listeners.rules]]
priority = 90
conditions = [{{ field = "path-pattern", values = ["/moved"] }}]
actions = [{{ type = "redirect", host = "new.#{{host}}", path = "/v2/#{{path}}", query = "from=old&#{{query}}", status_code = "HTTP_302" }}]
"#
    );
    lab.start(&toml);
    (lab, format!("http://127.0.0.1:{port}"))
}

#[test]
fn each_condition_type_routes_to_its_target_group() {
    let (_lab, base) = routing_lab();
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "/", "default"),
        (&["-H", "Host: WWW.Example.COM"], "/", "host"),
        (&["-H", "Host: api.example.org:8080"], "/", "host"),
        (&["-H", "Host: example.com"], "/", "default"),
        (&[], "/img/cat.png", "path"),
        (&[], "/v2/pics", "path"),
        (&[], "/IMG/cat.png", "default"),
        (&["-H", "x-env: Beta-7"], "/", "header"),
        (&["-H", "x-env: prod"], "/", "default"),
        (&["-X", "DELETE"], "/", "method"),
        (&["-X", "PATCH"], "/", "default"),
        (&[], "/?a=1&version=V3", "query"),
        (&[], "/?version=3", "default"),
        (&[], "/local", "source"),
        (&[], "/remote", "default"),
        // Priority 10 (host) beats priority 20 (path).
        (&["-H", "Host: a.example.com"], "/img/x", "host"),
    ];
    for (args, path, want) in cases {
        let url = format!("{base}{path}");
        let mut all: Vec<&str> = args.to_vec();
        all.push(&url);
        let r = curl(&all);
        assert_eq!(r.status, 200, "{args:?} {path}: {r:?}");
        assert_eq!(r.backend(), *want, "{args:?} {path}: {}", r.body);
    }
}

#[test]
fn fixed_response_and_redirects_are_answered_by_the_load_balancer() {
    let (_lab, base) = routing_lab();
    let r = curl(&[&format!("{base}/img/secret")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, "{\"denied\":true}");

    // ALB's HTTP→HTTPS example: protocol and port change, host, path and query stay.
    let r = curl(&[
        "-H",
        "Host: shop.example.net",
        &format!("{base}/old/a/b?x=1&y=2"),
    ]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.net:443/old/a/b?x=1&y=2")
    );

    let port = base.rsplit(':').next().expect("port");
    let r = curl(&["-H", "Host: shop.example.net", &format!("{base}/moved?q=7")]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("http://new.shop.example.net:{port}/v2/moved?from=old&q=7").as_str())
    );
}

#[test]
fn forwarded_requests_carry_alb_headers_and_bodies() {
    let (_lab, base) = routing_lab();
    let port = base.rsplit(':').next().expect("port");
    let r = curl(&[
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-For: 198.51.100.2",
        "-H",
        "Host: svc.internal",
        "--data-binary",
        "hello",
        &format!("{base}/submit?x=1"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("default"));
    for line in [
        "POST /submit?x=1 HTTP/1.1",
        "host: svc.internal",
        "x-forwarded-for: 203.0.113.9, 198.51.100.2, 127.0.0.1",
        "x-forwarded-proto: http",
        &format!("x-forwarded-port: {port}"),
        "body: hello",
    ] {
        assert!(r.body.contains(line), "{line:?} not in\n{}", r.body);
    }
}

#[test]
fn h2c_requests_are_forwarded_as_http1() {
    let (_lab, base) = routing_lab();
    let r = curl(&["--http2-prior-knowledge", &format!("{base}/img/a")]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(r.backend(), "path");
    assert!(r.body.contains("GET /img/a HTTP/1.1"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("host: {}", &base["http://".len()..])),
        "{}",
        r.body
    );
}

#[test]
fn round_robin_and_weighted_target_groups_spread_requests() {
    let mut lab = Lab::new();
    let (a, b, c) = (lab.backend("a"), lab.backend("b"), lab.backend("c"));
    let port = free_port();
    let toml = format!(
        r#"{}{}
[[http_listeners]]
address = "127.0.0.1"
port = {port}
protocol = "HTTP"
default_action = {{ type = "forward", target_group = "ab" }}

[[http_listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/weighted"] }}]
actions = [{{ type = "forward", target_groups = [{{ name = "ab", weight = 1 }}, {{ name = "c", weight = 3 }}] }}]
"#,
        group("ab", &[a, b], ""),
        group("c", &[c], "")
    );
    lab.start(&toml);
    let url = format!("http://127.0.0.1:{port}/");
    let seen: Vec<String> = (0..4).map(|_| curl(&[&url]).backend().to_owned()).collect();
    assert_eq!(seen, ["a", "b", "a", "b"]);
    let url = format!("http://127.0.0.1:{port}/weighted");
    let seen: Vec<String> = (0..8).map(|_| curl(&[&url]).backend().to_owned()).collect();
    assert_eq!(seen.iter().filter(|s| *s == "c").count(), 6, "{seen:?}");
    assert_eq!(seen.len(), 8);
}

/// The value of field `name` (`Root`, `Self`) of an `X-Amzn-Trace-Id`, checked for ALB's form
/// `1-<8 hex>-<24 hex>`.
fn trace_field<'a>(header: &'a str, name: &str) -> &'a str {
    let value = header
        .split(';')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {header:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        parts.len() == 3 && parts[0] == "1" && hex(parts[1], 8) && hex(parts[2], 24),
        "{value:?} is not ALB's trace id form"
    );
    value
}

#[test]
fn requests_get_albs_trace_id_and_the_access_log_has_it() {
    let mut lab = Lab::new();
    let web = lab.backend("web");
    let port = free_port();
    lab.start(&format!(
        "{}[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        group("web", &[web], "")
    ));
    let base = format!("http://127.0.0.1:{port}");
    // None sent: a Root.
    let r = curl(&[&format!("{base}/a")]);
    let fresh = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-amzn-trace-id: "))
        .unwrap_or_else(|| panic!("no trace id forwarded:\n{}", r.body))
        .to_owned();
    let root = trace_field(&fresh, "Root").to_owned();
    assert!(!fresh.contains("Self="), "{fresh}");
    // A Root sent: kept, with a Self in front; the client's Self is replaced, other fields kept.
    let sent = "Root=1-67891233-abcdef012345678912345678;Self=1-00000000-000000000000000000000000;Sampled=1";
    let r = curl(&[
        "-H",
        &format!("X-Amzn-Trace-Id: {sent}"),
        &format!("{base}/b"),
    ]);
    let forwarded = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-amzn-trace-id: "))
        .unwrap_or_else(|| panic!("no trace id forwarded:\n{}", r.body))
        .to_owned();
    assert!(forwarded.starts_with("Self=1-"), "{forwarded}");
    assert_ne!(
        trace_field(&forwarded, "Self"),
        "1-00000000-000000000000000000000000"
    );
    assert!(
        forwarded.ends_with(";Root=1-67891233-abcdef012345678912345678;Sampled=1"),
        "{forwarded}"
    );
    // Fields without a Root: one is put in front.
    let r = curl(&["-H", "X-Amzn-Trace-Id: Sampled=0", &format!("{base}/c")]);
    let own = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-amzn-trace-id: "))
        .expect("trace id")
        .to_owned();
    assert!(
        own.starts_with("Root=1-") && own.ends_with(";Sampled=0"),
        "{own}"
    );
    // The access log's trace_id is what the target got.
    let log = lab.log_lines(|l| l.len() >= 3);
    for id in [&fresh, &forwarded, &own] {
        assert!(
            log.iter().any(|l| l.contains(&format!("\"{id}\""))),
            "{id} not logged in {log:#?}"
        );
    }
    assert!(log.iter().any(|l| l.contains(&root)));
}

/// The value of header `name` as the backend got it (none if it got none).
fn forwarded<'a>(r: &'a l7_support::Reply, name: &str) -> Option<&'a str> {
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn listener_attributes_shape_the_forwarded_headers_as_albs_do() {
    let mut lab = Lab::new();
    let web = lab.backend("web");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let listener = |port: u16, attributes: &str| {
        format!(
            "[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n\
             attributes = {{ {attributes} }}\n\n"
        )
    };
    lab.start(&format!(
        "{}{}{}{}{}",
        group("web", &[web], ""),
        listener(ports[0], ""),
        listener(
            ports[1],
            r#""routing.http.xff_header_processing.mode" = "preserve", "routing.http.preserve_host_header.enabled" = "true", "routing.http.drop_invalid_header_fields.enabled" = "true""#
        ),
        listener(
            ports[2],
            r#""routing.http.xff_header_processing.mode" = "remove""#
        ),
        listener(
            ports[3],
            r#""routing.http.xff_client_port.enabled" = "true""#
        ),
    ));
    let get = |port: u16, headers: &[&str]| {
        let mut args: Vec<&str> = headers.iter().flat_map(|h| ["-H", *h]).collect();
        let url = format!("http://127.0.0.1:{port}/");
        args.push(&url);
        curl(&args)
    };
    let sent = [
        "Host: svc.internal",
        "X-Forwarded-For: 203.0.113.9",
        "X_Bad: 1",
        "X-Good: 1",
    ];
    // ALB's defaults: the listener's port after a host without one; the client appended; any
    // header name passes.
    let r = get(ports[0], &sent);
    let host = format!("svc.internal:{}", ports[0]);
    assert_eq!(forwarded(&r, "host"), Some(host.as_str()), "{}", r.body);
    assert_eq!(
        forwarded(&r, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(forwarded(&r, "x_bad"), Some("1"), "{}", r.body);
    let r = get(ports[0], &["Host: svc.internal:8080"]);
    assert_eq!(forwarded(&r, "host"), Some("svc.internal:8080"));
    // preserve: Host and X-Forwarded-For as sent (none if none), invalid names dropped.
    let r = get(ports[1], &sent);
    assert_eq!(forwarded(&r, "host"), Some("svc.internal"), "{}", r.body);
    assert_eq!(forwarded(&r, "x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(forwarded(&r, "x_bad"), None, "{}", r.body);
    assert_eq!(forwarded(&r, "x-good"), Some("1"));
    let r = get(ports[1], &[]);
    assert_eq!(forwarded(&r, "x-forwarded-for"), None, "{}", r.body);
    // remove: none at all.
    let r = get(ports[2], &sent);
    assert_eq!(forwarded(&r, "x-forwarded-for"), None, "{}", r.body);
    // The client's port too.
    let r = get(ports[3], &sent);
    let xff = forwarded(&r, "x-forwarded-for").expect("x-forwarded-for");
    let port = xff
        .strip_prefix("203.0.113.9, 127.0.0.1:")
        .unwrap_or_else(|| panic!("{xff}"));
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{xff}");
}
