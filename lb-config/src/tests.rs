//! Parsing and validation: the vocabulary of both tiers, and refusals that name the file, the
//! line and the key.

use super::*;

fn health_check(text: &str) -> Result<HealthCheck, String> {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        health_check: HealthCheck,
    }
    toml::from_str::<Wrapper>(text)
        .map(|w| w.health_check)
        .map_err(|e| e.to_string())
}

const GOOD: &str = r#"
[node]
interface = "eth0"

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [{ id = "198.18.1.11" }, { id = "198.18.1.12", weight = 2 }]
attributes = { "stickiness.type" = "source_ip" }

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
default_action = { type = "forward", target_group = "web" }
"#;

#[test]
fn parses_the_example_with_defaults() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(c.node.mtu, 1500);
    assert_eq!(c.node.xdp_mode, XdpMode::Native);
    assert_eq!(c.target_groups[0].targets[1].weight, 2);
    assert_eq!(c.listeners[0].forwarding, Forwarding::Tunnel);
}

#[test]
fn unknown_key_names_key_and_line() {
    let bad = GOOD.replace("port = 80\ntargets", "prot = 80\ntargets");
    let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(e.contains("prot") && e.contains("line 8"), "{e}");
}

#[test]
fn bad_address_is_refused() {
    let bad = GOOD.replace("198.18.1.12", "198.18.1.300");
    let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("line 9") && e.contains("invalid IP address"),
        "{e}"
    );
}

#[test]
fn missing_target_group_is_named() {
    let bad = GOOD.replace("target_group = \"web\"", "target_group = \"api\"");
    let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].default_action.target_group") && e.contains("\"api\""),
        "{e}"
    );
}

#[test]
fn out_of_range_values_are_refused() {
    let bad = GOOD.replace("weight = 2", "weight = 5000");
    assert!(
        Config::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("weight")
    );
    let bad = GOOD.replace("source_ip", "cookie");
    assert!(
        Config::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("stickiness.type")
    );
    let bad = GOOD.replace("interface = \"eth0\"", "interface = \"eth0\"\nmtu = 100");
    assert!(
        Config::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("node.mtu")
    );
}

#[test]
fn refused_values_name_their_line() {
    let line = |bad: &str| match Config::parse(bad, "x.toml").unwrap_err() {
        ConfigError::Invalid { line, key, .. } => (line, key),
        e => panic!("{e}"),
    };
    let mtu = GOOD.replace("interface = \"eth0\"", "interface = \"eth0\"\nmtu = 100");
    assert_eq!(line(&mtu), (4, "node.mtu".into()));
    let weight = GOOD.replace("weight = 2", "weight = 5000");
    assert_eq!(line(&weight).0, 9);
    let group = GOOD.replace("target_group = \"web\"", "target_group = \"api\"");
    assert_eq!(line(&group).0, 16);
    // An HTTP group is named by its place in the file, like every group.
    let l7 = format!(
        "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTP\"\nport = 8080\n\
             attributes = {{ \"stickiness.enabled\" = \"maybe\" }}\n"
    );
    let (at, key) = line(&l7);
    assert_eq!(at, 22, "{key}");
    let e = Config::parse(&l7, "x.toml").unwrap_err().to_string();
    assert!(
        e.starts_with("x.toml: line 22: target_groups[1] (api)"),
        "{e}"
    );
}

#[test]
fn dsr_needs_target_macs() {
    let bad = GOOD.replace(
        "protocol = \"TCP\"\ndefault_action",
        "protocol = \"TCP\"\nforwarding = \"dsr\"\ndefault_action",
    );
    let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(e.contains("mac"), "{e}");
}
#[test]
fn https_groups_have_protocol_versions_and_http_checks_by_default() {
    let https = format!(
        "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTPS\"\nprotocol_version = \"GRPC\"\nport = 443\ntargets = [{{ id = \"198.18.1.21\" }}]\n\
             health_check = {{ path = \"/health\" }}\n"
    );
    // Once refused: the L4 parse path defaulted the check to TCP, which takes no path.
    let cfg = Config::parse(&https, "x.toml").unwrap();
    let tg = cfg.group("api").unwrap();
    assert_eq!(
        (tg.protocol, tg.protocol_version()),
        (Protocol::Https, ProtocolVersion::Grpc)
    );
    let hc = tg.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.protocol(), hc.path.as_deref()),
        (CheckProtocol::Http, Some("/health"))
    );
    // L4 groups check over TCP when the file says nothing.
    let tcp = GOOD.replace(
        "port = 80\ntargets",
        "port = 80\nhealth_check = {}\ntargets",
    );
    let cfg = Config::parse(&tcp, "x.toml").unwrap();
    let hc = cfg.group("web").unwrap().health_check.as_ref().unwrap();
    assert_eq!(hc.protocol(), CheckProtocol::Tcp);
    let bad = GOOD.replace(
        "port = 80\ntargets",
        "port = 80\nprotocol_version = \"HTTP2\"\ntargets",
    );
    let e = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(e.contains("target_groups[0] (web).protocol_version"), "{e}");
}

#[test]
fn attributes_belong_to_their_tier_with_defaults_from_one_table() {
    let cfg = Config::parse(GOOD, "x.toml").unwrap();
    let web = cfg.group("web").unwrap();
    assert!(web.source_ip_stickiness());
    assert_eq!(
        web.deregistration_delay(),
        std::time::Duration::from_secs(300)
    );
    assert!(!web.cross_zone());
    // An ALB attribute on an NLB group, and the other way round.
    let e = Config::parse(
        &GOOD.replace(
            "\"stickiness.type\" = \"source_ip\"",
            "\"slow_start.duration_seconds\" = \"30\"",
        ),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("slow_start.duration_seconds\": unknown attribute"),
        "{e}"
    );
    let http = format!(
        "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTP\"\nport = 80\n\
             attributes = {{ \"load_balancing.cross_zone.enabled\" = \"true\" }}\n"
    );
    let e = Config::parse(&http, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("(api).attributes.\"load_balancing.cross_zone.enabled\": unknown attribute"),
        "{e}"
    );
    // The same name takes each tier's values.
    let http = format!(
        "{GOOD}\n[[target_groups]]\nname = \"api\"\nprotocol = \"HTTP\"\nport = 80\n\
             attributes = {{ \"stickiness.type\" = \"source_ip\" }}\n"
    );
    let e = Config::parse(&http, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("\"source_ip\" is not one of [\"lb_cookie\", \"app_cookie\"]"),
        "{e}"
    );
}

#[test]
fn a_second_listener_on_one_vip_port_and_protocol_is_refused() {
    let listener = "\n[[listeners]]\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"TCP_UDP\"\n\
                    default_action = { type = \"forward\", target_group = \"web\" }\n";
    let e = Config::parse(&format!("{GOOD}{listener}"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[1]: listeners[0] already listens on 198.18.100.1 port 80 TCP"),
        "{e}"
    );
    // Another port, or all ports (the exact port is looked up first), is another VIP.
    for other in ["port = 81", "port = 0"] {
        let text = format!("{GOOD}{}", listener.replace("port = 80", other));
        Config::parse(&text, "x.toml").unwrap();
    }
}

#[test]
fn tunnel_sources_must_not_hold_targets_or_vips() {
    let inside = GOOD.replace("198.18.1.12", "172.16.9.9");
    let e = Config::parse(&inside, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("target_groups (web).targets[1].id: 172.16.9.9 is inside the tunnel sources (172.16.0.0/16)"),
        "{e}"
    );
    let vip = GOOD.replace("address = \"198.18.100.1\"", "address = \"172.16.0.1\"");
    let e = Config::parse(&vip, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].address: 172.16.0.1 is inside"),
        "{e}"
    );
    // Another prefix makes them fine.
    let moved = inside.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\ntunnel_source_v4 = \"100.127.0.0\"",
    );
    Config::parse(&moved, "x.toml").unwrap();
    let v6 = GOOD
        .replace("198.18.1.12", "fd00::7")
        .replace("198.18.1.11", "2001:db8:1::11")
        .replace("198.18.100.1", "2001:db8::1");
    let e = Config::parse(&v6, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("fd00::7 is inside the tunnel sources (fd00::/96)"),
        "{e}"
    );
}

#[test]
fn http_listeners_forward_to_http_groups_only() {
    let mixed = format!(
        "{GOOD}\n[[http_listeners]]\naddress = \"127.0.0.1\"\nport = 8080\nprotocol = \"HTTP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n"
    );
    let e = Config::parse(&mixed, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains(
            "http_listeners[0].default_action: \"web\" is not an HTTP or HTTPS target group"
        ),
        "{e}"
    );
}

#[test]
fn the_desync_mitigation_mode_is_defensive_unless_set_to_one_of_albs_modes() {
    let listener = |attributes: &str| {
        format!(
            "{EXAMPLE}\n[[http_listeners]]\naddress = \"127.0.0.1\"\nport = 8001\nprotocol = \"HTTP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n\
             attributes = {{ {attributes} }}\n"
        )
    };
    let mode = |attributes: &str| {
        Config::parse(&listener(attributes), "x.toml")
            .map(|c| c.http_listeners[1].desync_mitigation_mode())
            .map_err(|e| e.to_string())
    };
    assert_eq!(mode(""), Ok(DesyncMode::Defensive));
    for (value, want) in [
        ("monitor", DesyncMode::Monitor),
        ("defensive", DesyncMode::Defensive),
        ("strictest", DesyncMode::Strictest),
    ] {
        let set = format!("\"routing.http.desync_mitigation_mode\" = \"{value}\"");
        assert_eq!(mode(&set), Ok(want), "{value}");
    }
    let e = mode("\"routing.http.desync_mitigation_mode\" = \"off\"").unwrap_err();
    assert!(
        e.contains(
            "http_listeners[1].attributes.\"routing.http.desync_mitigation_mode\": \"off\" is not one of"
        ),
        "{e}"
    );
}

const EXAMPLE: &str = r#"
[node]
interface = "lo"
[[target_groups]]
name = "web"
protocol = "HTTP"
port = 8080
targets = [{ id = "127.0.0.1" }, { id = "127.0.0.1", port = 8081 }]
attributes = { "stickiness.enabled" = "true", "stickiness.type" = "lb_cookie" }

[[target_groups]]
name = "img"
protocol = "HTTPS"
protocol_version = "HTTP2"
port = 9000

[[http_listeners]]
address = "127.0.0.1"
port = 8000
protocol = "HTTP"
default_action = { type = "forward", target_group = "web" }

[[http_listeners.rules]]
priority = 10
conditions = [
  { field = "host-header", values = ["*.example.com"] },
  { field = "path-pattern", values = ["/img/*"] },
  { field = "http-header", name = "User-Agent", values = ["*Chrome*"] },
  { field = "http-request-method", values = ["GET", "HEAD"] },
]
actions = [{ type = "forward", target_groups = [{ name = "img", weight = 1 }, { name = "web", weight = 3 }], stickiness = { enabled = true, duration_seconds = 60 } }]

[[http_listeners.rules]]
priority = 20
conditions = [{ field = "path-pattern", values = ["/old"] }]
actions = [{ type = "redirect", protocol = "HTTPS", port = "443", status_code = "HTTP_301" }]

[[http_listeners.rules]]
priority = 30
conditions = [{ field = "path-pattern", values = ["/health"] }]
actions = [{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "ok" }]

[[http_listeners.rules]]
priority = 40
conditions = [
  { field = "query-string", values = [{ key = "v", value = "1" }, { value = "x*" }] },
  { field = "source-ip", values = ["10.0.0.0/8", "2001:db8::/32"] },
]
actions = [{ type = "forward", target_group = "web" }]
"#;

#[test]
fn parses_every_condition_and_action() {
    let c = Config::parse(EXAMPLE, "x.toml").unwrap();
    let l = &c.http_listeners[0];
    assert_eq!(l.rules.len(), 4);
    assert_eq!(l.rules[0].conditions.len(), 4);
    assert_eq!(l.rules[3].conditions.len(), 2);
    assert_eq!(c.target_groups[0].targets[1].port, Some(8081));
    assert_eq!(
        (
            c.target_groups[0].protocol,
            c.target_groups[0].protocol_version()
        ),
        (Protocol::Http, ProtocolVersion::Http1)
    );
    assert_eq!(
        (
            c.target_groups[1].protocol,
            c.target_groups[1].protocol_version()
        ),
        (Protocol::Https, ProtocolVersion::Http2)
    );
    let HttpAction::Redirect { host, path, .. } = &l.rules[1].actions[0] else {
        panic!("not a redirect: {:?}", l.rules[1].actions[0]);
    };
    assert_eq!((host.as_str(), path.as_str()), ("#{host}", "/#{path}"));
}

fn refused(from: &str, to: &str) -> String {
    let text = EXAMPLE.replacen(from, to, 1);
    assert_ne!(text, EXAMPLE, "{from:?} is not in the example");
    Config::parse(&text, "x.toml").unwrap_err().to_string()
}

#[test]
fn http_groups_check_over_http_and_take_app_cookies() {
    let text = EXAMPLE
            .replacen(
                "port = 9000\n",
                "port = 9000\nhealth_check = { path = \"/health\" }\n",
                1,
            )
            .replacen(
                "\"stickiness.type\" = \"lb_cookie\"",
                "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"SESSION\"",
                1,
            );
    let c = Config::parse(&text, "x.toml").unwrap();
    // ALB's default for HTTP groups, where L4 groups default to TCP.
    let hc = c.target_groups[1].health_check.as_ref().unwrap();
    assert_eq!(hc.protocol(), CheckProtocol::Http);
    let e = refused(
        "port = 9000\n",
        "port = 9000\nhealth_check = { interval_seconds = 1 }\n",
    );
    assert!(
        e.contains("target_groups[1] (img).health_check: interval_seconds"),
        "{e}"
    );
}

#[test]
fn unknown_keys_and_fields_are_refused() {
    assert!(refused("priority = 10", "priority = 10\nweight = 1").contains("weight"));
    let e = refused("field = \"host-header\"", "field = \"host\"");
    assert!(e.contains("host"), "{e}");
    assert!(refused("\"10.0.0.0/8\"", "\"10.0.0.0/33\"").contains("line"));
    let e = refused(
        "protocol_version = \"HTTP2\"",
        "protocol_version = \"HTTP3\"",
    );
    assert!(e.contains("protocol_version") && e.contains("line"), "{e}");
}

#[test]
fn semantic_errors_name_the_key() {
    let cases = [
        ("priority = 20", "priority = 10", "rules[1].priority"),
        ("priority = 30", "priority = 50001", "rules[2].priority"),
        (
            "target_group = \"web\"",
            "target_group = \"api\"",
            "\"api\"",
        ),
        ("protocol = \"HTTPS\", port = \"443\", ", "", "must change"),
        ("status_code = 200", "status_code = 302", "302"),
        ("text/plain", "text/xml", "content_type"),
        ("weight = 3", "weight = 1000", "weight"),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"stickiness.type\" = \"lb_cookie\", \"deregistration_delay.timeout_seconds\" = \"3601\"",
            "deregistration_delay.timeout_seconds\": \"3601\" is not a number of seconds in 0..=3600",
        ),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"stickiness.type\" = \"app_cookie\"",
            "stickiness.app_cookie.cookie_name\": app_cookie stickiness needs",
        ),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"AWSALBAPP-1\"",
            "\"AWSALBAPP-1\" starts with \"AWSALB\"",
        ),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"stickiness.type\" = \"app_cookie\", \"stickiness.app_cookie.cookie_name\" = \"a b\"",
            "not a cookie name",
        ),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"load_balancing.algorithm.type\" = \"least_outstanding_requests\", \"slow_start.duration_seconds\" = \"30\"",
            "(web).attributes.\"slow_start.duration_seconds\": slow start cannot be used with least_outstanding_requests",
        ),
        (
            "\"stickiness.type\" = \"lb_cookie\"",
            "\"slow_start.duration_seconds\" = \"29\"",
            "not 0 (off) or 30..=900",
        ),
        ("port = 8000", "port = 0", "http_listeners[0].port"),
        (
            "protocol = \"HTTP\"\ndefault",
            "protocol = \"HTTPS\"\ndefault",
            "certificate",
        ),
        (
            "[{ field = \"path-pattern\", values = [\"/old\"] }]",
            "[]",
            "needs a condition",
        ),
        (
            "values = [\"/health\"]",
            "values = []",
            "at least one value",
        ),
        (
            "name = \"User-Agent\"",
            "name = \"User Agent\"",
            "not a header name",
        ),
    ];
    for (from, to, expect) in cases {
        let e = refused(from, to);
        assert!(e.contains(expect), "{from:?} → {to:?}: {e}");
    }
}

#[test]
fn health_check_defaults_are_aws() {
    let hc = health_check("[health_check]").unwrap();
    assert_eq!(hc, HealthCheck::default());
    hc.validate().unwrap();
    assert_eq!(
        (
            hc.protocol(),
            hc.port,
            hc.interval_seconds,
            hc.timeout_seconds
        ),
        (CheckProtocol::Tcp, CheckPort::TrafficPort, 30, 5)
    );
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (5, 2));
}

#[test]
fn parses_every_key() {
    let hc = health_check(
        r#"[health_check]
protocol = "HTTPS"
port = 8443
path = "/healthz"
interval_seconds = 10
timeout_seconds = 3
healthy_threshold = 2
unhealthy_threshold = 3
matcher = "200-299,301"
"#,
    )
    .unwrap();
    hc.validate().unwrap();
    assert_eq!(hc.protocol(), CheckProtocol::Https);
    assert_eq!(hc.port, CheckPort::Port(8443));
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!(
        hc.matcher.as_ref().map(ToString::to_string).as_deref(),
        Some("200-299,301")
    );
    assert_eq!(
        (
            hc.interval_seconds,
            hc.timeout_seconds,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (10, 3, 2, 3)
    );
    assert_eq!(
        health_check("[health_check]\nport = \"traffic-port\"")
            .unwrap()
            .port,
        CheckPort::TrafficPort
    );
}

#[test]
fn bad_values_are_refused_at_parse_naming_the_key() {
    for (text, want) in [
        ("prot = \"TCP\"", "prot"),
        ("protocol = \"UDP\"", "protocol"),
        ("port = \"traffic\"", "traffic-port"),
        ("port = 0", "port"),
        ("port = 70000", "port"),
        ("matcher = \"20x\"", "matcher"),
    ] {
        let e = health_check(&format!("[health_check]\n{text}")).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn validate_names_the_key() {
    let http = HealthCheck {
        protocol: Some(CheckProtocol::Http),
        ..HealthCheck::default()
    };
    for (hc, want) in [
        (
            HealthCheck {
                interval_seconds: 4,
                timeout_seconds: 2,
                ..HealthCheck::default()
            },
            "interval_seconds: 4 is outside 5..=300",
        ),
        (
            HealthCheck {
                timeout_seconds: 1,
                ..HealthCheck::default()
            },
            "timeout_seconds: 1",
        ),
        (
            HealthCheck {
                timeout_seconds: 30,
                ..HealthCheck::default()
            },
            "timeout_seconds: 30 must be less than interval_seconds (30)",
        ),
        (
            HealthCheck {
                healthy_threshold: 11,
                ..HealthCheck::default()
            },
            "healthy_threshold: 11",
        ),
        (
            HealthCheck {
                unhealthy_threshold: 1,
                ..HealthCheck::default()
            },
            "unhealthy_threshold: 1",
        ),
        (
            HealthCheck {
                port: CheckPort::Port(0),
                ..HealthCheck::default()
            },
            "port: 0",
        ),
        (
            HealthCheck {
                path: Some("/".into()),
                ..HealthCheck::default()
            },
            "path: TCP",
        ),
        (
            HealthCheck {
                matcher: Some(Matcher::default()),
                ..HealthCheck::default()
            },
            "matcher: TCP",
        ),
        (
            HealthCheck {
                path: Some("health".into()),
                ..http.clone()
            },
            "path: \"health\"",
        ),
        (
            HealthCheck {
                path: Some("/a b".into()),
                ..http.clone()
            },
            "path: \"/a b\" contains ' '",
        ),
        (
            HealthCheck {
                path: Some(format!("/{}", "a".repeat(1024))),
                ..http.clone()
            },
            "path: longer",
        ),
    ] {
        let e = hc.validate().unwrap_err();
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn matchers_take_codes_lists_and_ranges_and_refuse_the_rest() {
    let m = Matcher::parse("200").unwrap();
    assert!(m.matches(200) && !m.matches(201));
    let m = Matcher::parse("200,202").unwrap();
    assert!(m.matches(200) && m.matches(202) && !m.matches(201));
    let m = Matcher::parse("200-299").unwrap();
    assert!(m.matches(200) && m.matches(250) && m.matches(299) && !m.matches(300));
    let m = Matcher::parse("200-204,301,500-599").unwrap();
    assert!(m.matches(204) && m.matches(301) && m.matches(503) && !m.matches(404));
    for (bad, want) in [
        ("", "\"\" in matcher \"\" is not a status code"),
        ("abc", "\"abc\" in matcher"),
        ("200,", "\"\" in matcher \"200,\""),
        ("200-", "\"\" in matcher \"200-\""),
        (
            "299-200",
            "range \"299-200\" in matcher \"299-200\" is empty",
        ),
        ("199", "199 in matcher \"199\" is outside 200-599"),
        ("600", "600 in matcher"),
        ("200-300-400", "\"300-400\" in matcher"),
    ] {
        let e = Matcher::parse(bad).unwrap_err();
        assert!(e.starts_with(want), "{bad}: {e}");
    }
}

#[test]
fn the_nodes_sizes_bound_listeners_and_targets_by_name() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(
        (c.node.max_listeners, c.node.max_targets),
        (lb_common::LISTENERS_DEFAULT, lb_common::TARGETS_DEFAULT)
    );
    let sized = |node: &str| GOOD.replace("interface = \"eth0\"", node);
    // 1,024 listeners and 16,384 targets are within reach.
    let big = sized("interface = \"eth0\"\nmax_listeners = 1024\nmax_targets = 16384");
    Config::parse(&big, "x.toml").unwrap();
    let cases = [
        ("max_listeners = 0", "node.max_listeners"),
        ("max_listeners = 4097", "node.max_listeners"),
        ("max_targets = 0", "node.max_targets"),
        ("flow_table_size = 0", "node.flow_table_size"),
        ("max_targets = 1", "node.max_targets allows 1"),
    ];
    for (line, refusal) in cases {
        let text = sized(&format!("interface = \"eth0\"\n{line}"));
        let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains(refusal) && e.contains("x.toml"), "{line}: {e}");
    }
    let two = format!(
        "{GOOD}\n[[listeners]]\naddress = \"198.18.100.1\"\nport = 81\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n"
    );
    let text = two.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nmax_listeners = 1",
    );
    let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("2 listeners; node.max_listeners allows 1"),
        "{e}"
    );
}

#[test]
fn http_groups_are_checked_with_albs_defaults_unless_turned_off() {
    let c = Config::parse(EXAMPLE, "x.toml").unwrap();
    let http = c
        .target_groups
        .iter()
        .find(|g| g.protocol.is_http())
        .unwrap();
    let hc = http.health_check.as_ref().expect("checked without a block");
    assert_eq!(
        (
            hc.protocol(),
            hc.interval_seconds,
            hc.timeout_seconds,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (CheckProtocol::Http, 30, 5, 5, 2)
    );
    assert!(hc.path.is_none() && hc.matcher.is_none(), "/ and 200");
    // L4 groups stay unchecked without a block, as before.
    let tcp = Config::parse(GOOD, "x.toml").unwrap();
    assert!(tcp.target_groups[0].health_check.is_none());
    // `enabled = false` turns them off, in either tier.
    let name = &http.name;
    let off = EXAMPLE.replacen(
        &format!("name = \"{name}\"\n"),
        &format!("name = \"{name}\"\nhealth_check = {{ enabled = false }}\n"),
        1,
    );
    let c = Config::parse(&off, "x.toml").unwrap();
    assert!(c.group(name).unwrap().health_check.is_none());
    let off = GOOD.replace(
        "port = 80\ntargets",
        "port = 80\nhealth_check = { enabled = false }\ntargets",
    );
    assert!(
        Config::parse(&off, "x.toml").unwrap().target_groups[0]
            .health_check
            .is_none()
    );
    // ALB's matcher stops at 499; an L4 group's HTTP check may match up to 599.
    let wide = EXAMPLE.replacen(
        &format!("name = \"{name}\"\n"),
        &format!("name = \"{name}\"\nhealth_check = {{ matcher = \"200-599\" }}\n"),
        1,
    );
    let e = Config::parse(&wide, "x.toml").unwrap_err().to_string();
    assert!(e.contains("matcher: 599 is outside 200-499"), "{e}");
    let nlb = GOOD.replace(
        "port = 80\ntargets",
        "port = 80\nhealth_check = { protocol = \"HTTP\", matcher = \"200-599\" }\ntargets",
    );
    Config::parse(&nlb, "x.toml").unwrap();
}

#[test]
fn rules_beyond_albs_quotas_of_values_and_wildcards_are_refused() {
    // Five values (1 + 1 + 1 + 2) and four wildcards are within ALB's quotas.
    Config::parse(EXAMPLE, "x.toml").unwrap();
    let e = refused(
        "values = [\"GET\", \"HEAD\"]",
        "values = [\"GET\", \"HEAD\", \"PUT\"]",
    );
    assert!(
        e.contains(
            "http_listeners[0].rules[0].conditions: 6 condition values; ALB takes 5 per rule"
        ),
        "{e}"
    );
    let e = refused("values = [\"/img/*\"]", "values = [\"/?m?/*\"]");
    assert!(
        e.contains("rules[0].conditions: 6 wildcards; ALB takes 5 per rule"),
        "{e}"
    );
    // Wildcards in a query string's key count too.
    let e = refused(
        "{ key = \"v\", value = \"1\" }",
        "{ key = \"v*?*\", value = \"1??\" }",
    );
    assert!(e.contains("rules[3].conditions: 6 wildcards"), "{e}");
}

#[test]
fn weighted_random_is_an_algorithm_without_anomaly_mitigation() {
    let text = EXAMPLE.replacen(
        "\"stickiness.type\" = \"lb_cookie\"",
        "\"stickiness.type\" = \"lb_cookie\", \"load_balancing.algorithm.type\" = \"weighted_random\", \"load_balancing.algorithm.anomaly_mitigation\" = \"off\"",
        1,
    );
    Config::parse(&text, "x.toml").unwrap();
    let e = refused(
        "\"stickiness.type\" = \"lb_cookie\"",
        "\"load_balancing.algorithm.type\" = \"weighted_random\", \"load_balancing.algorithm.anomaly_mitigation\" = \"on\"",
    );
    assert!(
        e.contains("(web).attributes.\"load_balancing.algorithm.anomaly_mitigation\": \"on\" is not one of [\"off\"]"),
        "{e}"
    );
}

#[test]
fn listener_attributes_take_albs_values() {
    let with = |attributes: &str| {
        EXAMPLE.replacen(
            "port = 8000\n",
            &format!("port = 8000\nattributes = {{ {attributes} }}\n"),
            1,
        )
    };
    let c = Config::parse(&with(""), "x.toml").unwrap();
    let l = &c.http_listeners[0];
    assert_eq!(l.xff_mode(), XffMode::Append);
    assert!(!l.enabled("routing.http.preserve_host_header.enabled"));
    let c = Config::parse(
        &with(r#""routing.http.xff_header_processing.mode" = "remove", "routing.http.preserve_host_header.enabled" = "true""#),
        "x.toml",
    )
    .unwrap();
    let l = &c.http_listeners[0];
    assert_eq!(l.xff_mode(), XffMode::Remove);
    assert!(l.enabled("routing.http.preserve_host_header.enabled"));
    for (attribute, bad) in [
        ("routing.http.xff_header_processing.mode", "drop"),
        ("routing.http.xff_client_port.enabled", "yes"),
        ("routing.http.drop_invalid_header_fields.enabled", "1"),
        (
            "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
            "on",
        ),
    ] {
        let e = Config::parse(&with(&format!("\"{attribute}\" = \"{bad}\"")), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "http_listeners[0].attributes.\"{attribute}\": \"{bad}\" is not one of"
            )),
            "{e}"
        );
    }
}

#[test]
fn bgp_settings_are_checked_and_refusals_name_the_key() {
    let with = |bgp: &str| {
        EXAMPLE.replacen(
            "[node]\ninterface = \"lo\"\n",
            &format!("[node]\ninterface = \"lo\"\n{bgp}\n"),
            1,
        )
    };
    let good = "bgp = { local_as = 65001, router_id = \"198.18.1.2\", peers = [{ address = \"198.18.1.1\", remote_as = 65000 }], communities = [\"65001:100\"] }";
    let c = Config::parse(&with(good), "x.toml").unwrap();
    let bgp = c.node.bgp.as_ref().unwrap();
    assert_eq!((bgp.hold_time, bgp.peers.len()), (3, 1));
    assert_eq!(
        bgp.control_socket,
        std::path::PathBuf::from("/run/bird/bird.ctl")
    );
    for (from, to, expect) in [
        (
            "peers = [{ address = \"198.18.1.1\", remote_as = 65000 }]",
            "peers = []",
            "node.bgp.peers: announcing needs at least one peer",
        ),
        (
            "local_as = 65001",
            "local_as = 0",
            "node.bgp.local_as: 0 is not an AS number",
        ),
        (
            "communities = [\"65001:100\"]",
            "communities = [\"65001:100\", \"70000:1\"]",
            "node.bgp.communities[1]: \"70000:1\" is not a community",
        ),
        (
            "communities = [\"65001:100\"]",
            "hold_time = 2",
            "node.bgp.hold_time: 2 is not 0 (never) or 3..=65535",
        ),
        (
            "peers = [{ address = \"198.18.1.1\", remote_as = 65000 }]",
            "peers = [{ address = \"198.18.1.1\", remote_as = 65000 }, { address = \"198.18.1.1\", remote_as = 65002 }]",
            "node.bgp.peers[1].address: 198.18.1.1 is already a peer",
        ),
    ] {
        let e = Config::parse(&with(&good.replacen(from, to, 1)), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{to}: {e}");
    }
    let e = Config::parse(&with(&good.replacen("local_as", "local_asn", 1)), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("local_asn") && e.contains("line"), "{e}");
}

#[test]
fn bgp_next_hops_and_a_vips_own_attributes_are_checked_against_the_listeners() {
    let with = |extra: &str| {
        GOOD.replacen(
            "[node]\ninterface = \"eth0\"\n",
            &format!(
                "[node]\ninterface = \"eth0\"\n\n[node.bgp]\nlocal_as = 65001\n\
                 router_id = \"198.18.1.2\"\npeers = [{{ address = \"198.18.1.1\", remote_as = 65000 }}]\n\
                 next_hop_v4 = \"198.18.1.9\"\n{extra}\n"
            ),
            1,
        )
    };
    let vip =
        "[[node.bgp.vips]]\naddress = \"198.18.100.1\"\ncommunities = [\"65001:200\"]\nmed = 50\n";
    let c = Config::parse(&with(vip), "x.toml").unwrap();
    let bgp = c.node.bgp.as_ref().unwrap();
    assert_eq!(bgp.next_hop_v4, Some("198.18.1.9".parse().unwrap()));
    assert_eq!((bgp.vips.len(), bgp.vips[0].med), (1, Some(50)));
    for (text, expect) in [
        (
            vip.replace("198.18.100.1", "198.18.100.7"),
            "line 11: node.bgp.vips[0].address: 198.18.100.7 is no L4 listener's address",
        ),
        (
            format!("{vip}{vip}"),
            "node.bgp.vips[1].address: 198.18.100.1 already has attributes in node.bgp.vips",
        ),
        (
            vip.replace("65001:200", "65001:x"),
            "node.bgp.vips[0].communities[0]: \"65001:x\" is not a community",
        ),
    ] {
        let e = Config::parse(&with(&text), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{text}: {e}");
    }
}

#[test]
fn certificate_paths_are_relative_to_the_config_files_directory() {
    let dir = std::env::temp_dir().join(format!("xlb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xlb.toml");
    let text = "[node]\ninterface = \"lo\"\n\
        [[http_listeners]]\naddress = \"127.0.0.1\"\nport = 8443\nprotocol = \"HTTPS\"\n\
        certificates = [{ cert = \"certs/site.pem\", key = \"/etc/xlb/site.key\" }]\n\
        default_action = { type = \"fixed-response\", status_code = 200 }\n";
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let files = &loaded.unwrap().http_listeners[0].certificates[0];
    assert_eq!(files.cert, dir.join("certs/site.pem"));
    assert_eq!(files.key, Path::new("/etc/xlb/site.key"));
}

/// A TLS listener, a TCP listener whose group takes PROXY v2, and their groups.
const NLB_USER_SPACE: &str = r#"
[node]
interface = "eth0"

[[target_groups]]
name = "pp2"
protocol = "TCP"
port = 80
targets = [{ id = "198.18.1.11" }]
attributes = { "proxy_protocol_v2.enabled" = "true" }

[[target_groups]]
name = "secure"
protocol = "TLS"
port = 443
targets = [{ id = "198.18.1.12" }]

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
default_action = { type = "forward", target_group = "pp2" }

[[listeners]]
address = "198.18.100.1"
port = 443
protocol = "TLS"
certificates = [{ cert = "a.pem", key = "a.key" }]
ssl_policy = "ELBSecurityPolicy-TLS13-1-3-2021-06"
alpn_policy = "HTTP2Preferred"
default_action = { type = "forward", target_group = "secure" }
"#;

#[test]
fn tls_and_proxy_protocol_listeners_are_served_in_user_space() {
    let c = Config::parse(NLB_USER_SPACE, "x.toml").unwrap();
    assert!(c.group("pp2").unwrap().proxy_protocol_v2());
    assert!(!c.group("secure").unwrap().proxy_protocol_v2());
    assert!(c.listeners.iter().all(|l| c.in_user_space(l)));
    assert_eq!(c.xdp_listeners().count(), 0);
    let tls = &c.listeners[1];
    assert_eq!(tls.ssl_policy, Some(SslPolicy::Tls13Only));
    assert_eq!(tls.alpn_policy, Some(AlpnPolicy::Http2Preferred));
    assert_eq!(
        AlpnPolicy::Http2Preferred.protocols(),
        [&b"h2"[..], b"http/1.1"]
    );
    assert_eq!(AlpnPolicy::default().protocols(), [] as [&[u8]; 0]);
    // Without the attribute, the TCP listener is the XDP tier's again.
    let plain = NLB_USER_SPACE.replace("\"proxy_protocol_v2.enabled\" = \"true\"", "");
    let c = Config::parse(&plain, "x.toml").unwrap();
    let xdp: Vec<u16> = c.xdp_listeners().map(|l| l.port).collect();
    assert_eq!(xdp, [80]);
}

#[test]
fn tls_listeners_and_proxy_protocol_refuse_what_cannot_work() {
    let refused = |from: &str, to: &str| {
        let text = NLB_USER_SPACE.replacen(from, to, 1);
        assert_ne!(text, NLB_USER_SPACE, "{from:?} is not in the config");
        Config::parse(&text, "x.toml").unwrap_err().to_string()
    };
    for (from, to, want) in [
        // UDP cannot carry a PROXY header: on the group, or through a UDP listener.
        (
            "protocol = \"TCP\"\nport = 80",
            "protocol = \"UDP\"\nport = 80",
            "line 10: target_groups[0] (pp2).attributes.\"proxy_protocol_v2.enabled\": PROXY \
             protocol v2 is for TCP and TLS groups: UDP cannot carry it",
        ),
        (
            "port = 80\nprotocol = \"TCP\"",
            "port = 80\nprotocol = \"TCP_UDP\"",
            "line 22: listeners[0].default_action.target_group: \"pp2\" has \
             proxy_protocol_v2.enabled: UDP datagrams cannot carry the header",
        ),
        (
            "protocol = \"TCP\"\ndefault_action",
            "protocol = \"TCP\"\nforwarding = \"dsr\"\ndefault_action",
            "line 22: listeners[0].forwarding: dsr: this listener is served in user space",
        ),
        (
            "port = 80\nprotocol = \"TCP\"",
            "port = 0\nprotocol = \"TCP\"",
            "listeners[0].port: 0 (every port) is for the XDP tier",
        ),
        (
            "certificates = [{ cert = \"a.pem\", key = \"a.key\" }]\n",
            "",
            "line 24: listeners[1].certificates: a TLS listener needs a certificate",
        ),
        (
            "protocol = \"TLS\"\nport = 443",
            "protocol = \"UDP\"\nport = 443",
            "listeners[1].default_action.target_group: \"secure\" is not a TCP or TLS target group",
        ),
        (
            "protocol = \"TLS\"\ncertificates",
            "protocol = \"TCP\"\ncertificates",
            "line 28: listeners[1].certificates: only a TLS listener takes it",
        ),
        (
            "target_group = \"pp2\"",
            "target_group = \"secure\"",
            "listeners[0].default_action.target_group: \"secure\" is a TLS target group: a TLS \
             listener forwards to it",
        ),
        (
            "\"proxy_protocol_v2.enabled\" = \"true\"",
            "\"proxy_protocol_v2.enabled\" = \"true\", \"stickiness.type\" = \"source_ip\"",
            "listeners[0].default_action.target_group: stickiness.type = \"source_ip\": this \
             listener is served in user space",
        ),
        (
            "ELBSecurityPolicy-TLS13-1-3-2021-06",
            "ELBSecurityPolicy-2016-08",
            "unknown variant `ELBSecurityPolicy-2016-08`",
        ),
        ("HTTP2Preferred", "HTTP3", "unknown variant `HTTP3`"),
    ] {
        let e = refused(from, to);
        assert!(e.contains(want), "{to:?}: {e}");
    }
    // A user-space listener and an HTTP listener cannot share an address and port.
    let both = format!(
        "{NLB_USER_SPACE}\n[[target_groups]]\nname = \"app\"\nprotocol = \"HTTP\"\nport = 80\n\n\
         [[http_listeners]]\naddress = \"198.18.100.1\"\nport = 443\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"app\" }}\n"
    );
    let e = Config::parse(&both, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("listeners[1].port: http_listeners[0] already listens on 198.18.100.1:443"),
        "{e}"
    );
}

#[test]
fn tcp_idle_timeout_is_taken_by_tcp_listeners_the_proxy_serves_within_nlbs_range() {
    // `text` with the attribute set on the listener whose lines `at` starts.
    let with = |text: &str, at: &str, value: &str| {
        let set = format!("{at}\nattributes = {{ \"tcp.idle_timeout.seconds\" = \"{value}\" }}");
        let out = text.replacen(at, &set, 1);
        assert_ne!(out, text, "{at:?} is not in the config");
        out
    };
    // The listeners' lines (their groups name the protocol before the port).
    let tcp = "port = 80\nprotocol = \"TCP\"";
    let c = Config::parse(&with(NLB_USER_SPACE, tcp, "60"), "x.toml").unwrap();
    assert_eq!(
        c.listeners[0].idle_timeout(),
        std::time::Duration::from_secs(60)
    );
    // NLB's default, and the fixed value of TLS listeners.
    assert_eq!(
        c.listeners[1].idle_timeout(),
        std::time::Duration::from_secs(350)
    );
    let c = Config::parse(&with(NLB_USER_SPACE, tcp, "6000"), "x.toml").unwrap();
    assert_eq!(
        c.listeners[0].idle_timeout(),
        std::time::Duration::from_secs(6000)
    );
    let key = |i: usize| format!("listeners[{i}].attributes.\"tcp.idle_timeout.seconds\"");
    let udp = GOOD.replace("\"TCP\"", "\"UDP\"");
    for (text, want) in [
        (
            with(NLB_USER_SPACE, tcp, "59"),
            format!(
                "line 22: {}: \"59\" is not a number of seconds in 60..=6000",
                key(0)
            ),
        ),
        (
            with(NLB_USER_SPACE, tcp, "6001"),
            format!(
                "line 22: {}: \"6001\" is not a number of seconds in 60..=6000",
                key(0)
            ),
        ),
        (
            with(NLB_USER_SPACE, "port = 443\nprotocol = \"TLS\"", "600"),
            format!(
                "line 28: {}: NLB keeps a TLS listener's idle timeout at 350 s",
                key(1)
            ),
        ),
        (
            with(GOOD, tcp, "600"),
            format!("line 16: {}: this listener is forwarded in XDP", key(0)),
        ),
        (
            with(&udp, "port = 80\nprotocol = \"UDP\"", "600"),
            format!("line 16: {}: only TCP listeners take it", key(0)),
        ),
    ] {
        let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with(&format!("x.toml: {want}")), "{e}\n{text}");
    }
    let unknown = NLB_USER_SPACE.replacen(
        tcp,
        &format!("{tcp}\nattributes = {{ \"idle_timeout.timeout_seconds\" = \"60\" }}"),
        1,
    );
    let e = Config::parse(&unknown, "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].attributes.\"idle_timeout.timeout_seconds\": unknown attribute"),
        "{e}"
    );
}

#[test]
fn maglev_table_sizes_are_prime_larger_than_their_groups_and_fit_the_node() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    assert_eq!(c.listeners[0].maglev_table_size, 65537);
    assert_eq!(c.node.ring_slots(), 64 * 2 * 65537);
    let sized = |m: &str, node: &str| {
        GOOD.replace(
            "interface = \"eth0\"",
            &format!("interface = \"eth0\"{node}"),
        )
        .replace(
            "protocol = \"TCP\"\ndefault_action",
            &format!("protocol = \"TCP\"\nmaglev_table_size = {m}\ndefault_action"),
        )
    };
    let big = Config::parse(&sized("5000011", "\nmaglev_slots = 10000022"), "x.toml").unwrap();
    assert_eq!(big.listeners[0].maglev_table_size, 5_000_011);
    let refused = |m: &str, node: &str| match Config::parse(&sized(m, node), "x.toml") {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("{m}: {other:?}"),
    };
    // The listener's key is on line 16 of the file (the node's on line 4).
    let (line, key, message) = refused("65536", "");
    assert_eq!((line, key.as_str()), (16, "listeners[0].maglev_table_size"));
    assert_eq!(
        message,
        "65536 is not prime (a Maglev table's size must be, e.g. 65537 or 655373)"
    );
    // The group has two targets: a table of 2 cannot hold them with room to spare.
    let (_, key, message) = refused("2", "");
    assert_eq!(key, "listeners[0].maglev_table_size");
    assert!(
        message.starts_with("2 slots for the 2 targets of \"web\": the table must be larger"),
        "{message}"
    );
    Config::parse(&sized("3", ""), "x.toml").unwrap();
    let (_, key, message) = refused("655373", "\nmaglev_slots = 1000000");
    assert_eq!(key, "listeners[0].maglev_table_size");
    assert_eq!(
        message,
        "the tables of the XDP listeners up to listeners[0] take 1310746 slots (two of \
         maglev_table_size each); node.maglev_slots holds 1000000"
    );
    // The default is room for max_listeners tables of the default size.
    let (_, _, message) = refused("65537", "\nmax_listeners = 1\nmaglev_slots = 131073");
    assert!(
        message.ends_with("node.maglev_slots holds 131073"),
        "{message}"
    );
    let (line, key, _) = refused("65537", "\nmaglev_slots = 0");
    assert_eq!((line, key.as_str()), (4, "node.maglev_slots"));
    let e = Config::parse(&sized("65537", "\nmaglev_slots = 1073741825"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.maglev_slots: 1073741825 is outside 1..=1073741824"),
        "{e}"
    );
}

/// NAT listeners: one on port 80 to targets on their own ports, one on every port.
const NAT: &str = r#"
[node]
interface = "eth0"

[[target_groups]]
name = "web"
protocol = "TCP"
port = 8080
targets = [{ id = "198.18.1.11" }, { id = "198.18.1.12", port = 8081 }]

[[target_groups]]
name = "any"
protocol = "TCP_UDP"
port = 1
targets = [{ id = "2001:db8:2::11" }]

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
forwarding = "nat"
default_action = { type = "forward", target_group = "web" }

[[listeners]]
address = "2001:db8:100::1"
port = 0
protocol = "TCP_UDP"
forwarding = "nat"
default_action = { type = "forward", target_group = "any" }
"#;

#[test]
fn nat_listeners_send_to_the_targets_port_or_keep_the_packets() {
    let c = Config::parse(NAT, "x.toml").unwrap();
    assert_eq!(c.listeners[0].forwarding, Forwarding::Nat);
    let web = c.group("web").unwrap();
    let ports: Vec<_> = web.targets.iter().map(|t| c.nat_port(web, t)).collect();
    assert_eq!(ports, [Some(8080), Some(8081)]);
    // Every port: the packet keeps its own.
    let any = c.group("any").unwrap();
    assert_eq!(c.nat_port(any, &any.targets[0]), None);
    // Tunnel targets keep the packet's port too.
    let g = Config::parse(GOOD, "x.toml").unwrap();
    let web = g.group("web").unwrap();
    assert_eq!(g.nat_port(web, &web.targets[0]), None);
}

#[test]
fn nat_refuses_what_it_cannot_forward() {
    let refused = |text: &str| Config::parse(text, "x.toml").unwrap_err().to_string();
    let cases = [
        // A target's own port where the packet keeps its port: tunnel, and NAT on every port.
        (
            NAT.replacen("forwarding = \"nat\"\n", "", 1),
            "line 9: target_groups (web).targets[1].port: listeners[0] forwards to it by \
             tunnel, which keeps the packet's port",
        ),
        (
            NAT.replace("{ id = \"2001:db8:2::11\" }", "{ id = \"2001:db8:2::11\", port = 53 }"),
            "line 15: target_groups (any).targets[0].port: listeners[1] forwards to it by nat \
             on every port, which keeps the packet's port",
        ),
        // NAT rewrites addresses in place: one family, either way.
        (
            NAT.replace("198.18.1.11", "2001:db8:2::12"),
            "line 9: target_groups (web).targets[0].id: nat: target 2001:db8:2::12 and VIP \
             198.18.100.1 (listeners[0]) are of different IP families",
        ),
        (
            NAT.replace("2001:db8:2::11", "198.18.1.13"),
            "line 15: target_groups (any).targets[0].id: nat: target 198.18.1.13 and VIP \
             2001:db8:100::1 (listeners[1]) are of different IP families",
        ),
        // A group's targets are set up for one way.
        (
            NAT.replace("target_group = \"any\"", "target_group = \"web\"")
                .replace("2001:db8:100::1", "198.18.100.2")
                .replace(", port = 8081 }", " }"),
            "line 28: listeners[1].forwarding: nat on every port: listeners[0] forwards to \
             \"web\" by nat to the targets' ports",
        ),
        // The agent knows a group's targets by address.
        (
            NAT.replace("198.18.1.12", "198.18.1.11"),
            "line 9: target_groups (web).targets[1].id: 198.18.1.11 is targets[0] already",
        ),
        // The proxy's listeners connect to the targets themselves.
        (
            NAT.replace("targets = [{ id = \"198.18.1.11\" }", "attributes = { \"proxy_protocol_v2.enabled\" = \"true\" }\ntargets = [{ id = \"198.18.1.11\" }"),
            "line 22: listeners[0].forwarding: nat: this listener is served in user space",
        ),
    ];
    for (text, want) in cases {
        let e = refused(&text);
        assert!(e.contains(want), "want {want:?}: {e}");
    }
    // TLS, likewise.
    let tls = NLB_USER_SPACE.replace(
        "protocol = \"TLS\"\ncertificates",
        "protocol = \"TLS\"\nforwarding = \"nat\"\ncertificates",
    );
    let e = refused(&tls);
    assert!(
        e.contains("line 28: listeners[1].forwarding: nat: this listener is served in user space"),
        "{e}"
    );
    // NAT needs no MAC, and the two families each with their own are fine.
    let both = format!(
        "{NAT}\n[[listeners]]\naddress = \"198.18.100.1\"\nport = 81\nprotocol = \"TCP\"\n\
         forwarding = \"nat\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n"
    );
    Config::parse(&both, "x.toml").unwrap();
}

#[test]
fn nat_targets_on_other_ports_take_their_own_datapath_slots() {
    // 198.18.1.11 in a second group, on its port 9000: a fourth target.
    let api = |max: u32| {
        format!(
            "{}\n[[target_groups]]\nname = \"api\"\nprotocol = \"TCP\"\nport = 9000\n\
             targets = [{{ id = \"198.18.1.11\" }}]\n\n[[listeners]]\naddress = \"198.18.100.1\"\n\
             port = 81\nprotocol = \"TCP\"\nforwarding = \"nat\"\n\
             default_action = {{ type = \"forward\", target_group = \"api\" }}\n",
            NAT.replace(
                "interface = \"eth0\"",
                &format!("interface = \"eth0\"\nmax_targets = {max}"),
            )
        )
    };
    Config::parse(&api(4), "x.toml").unwrap();
    let e = Config::parse(&api(3), "x.toml").unwrap_err().to_string();
    assert!(
        e.contains("the L4 listeners' groups hold 4 targets; node.max_targets allows 3"),
        "{e}"
    );
}

/// SNAT listeners: NAT's config, with the node's sources.
fn snat() -> String {
    NAT.replace("forwarding = \"nat\"", "forwarding = \"snat\"").replace(
        "interface = \"eth0\"\n",
        "interface = \"eth0\"\n\n[node.snat]\naddress_v4 = \"198.18.1.2\"\naddress_v6 = \"2001:db8:2::2\"\n",
    )
}

#[test]
fn snat_listeners_take_the_nodes_sources_and_a_port_range() {
    let c = Config::parse(&snat(), "x.toml").unwrap();
    assert_eq!(c.listeners[0].forwarding, Forwarding::Snat);
    let web = c.group("web").unwrap();
    let ports: Vec<_> = web.targets.iter().map(|t| c.nat_port(web, t)).collect();
    assert_eq!(ports, [Some(8080), Some(8081)]);
    let s = &c.node.snat;
    assert_eq!(
        (s.ports, s.port_count(), s.udp_timeout_seconds),
        ([10000, 32767], 22768, 120)
    );
    assert_eq!(
        s.address("198.18.1.11".parse().unwrap()),
        Some("198.18.1.2".parse().unwrap())
    );
    // NLB's idle timeout: SNAT tracks TCP connections, so it takes one.
    let idle = snat().replacen(
        "forwarding = \"snat\"\n",
        "forwarding = \"snat\"\nattributes = { \"tcp.idle_timeout.seconds\" = \"60\" }\n",
        1,
    );
    let c = Config::parse(&idle, "x.toml").unwrap();
    assert_eq!(
        c.listeners[0].idle_timeout(),
        std::time::Duration::from_secs(60)
    );
}

#[test]
fn snat_refuses_a_listener_without_a_source_and_bad_ranges() {
    let refused = |text: &str| Config::parse(text, "x.toml").unwrap_err().to_string();
    let cases = [
        (
            snat().replace("address_v6 = \"2001:db8:2::2\"\n", ""),
            "line 18: target_groups (any).targets[0].id: snat: listeners[1] sends to \
             2001:db8:2::11 from the node's address, and node.snat.address_v6 names none",
        ),
        (
            snat().replace("address_v4 = \"198.18.1.2\"\n", ""),
            "target_groups (web).targets[0].id: snat: listeners[0] sends to 198.18.1.11 from \
             the node's address, and node.snat.address_v4 names none",
        ),
        (
            snat().replace("address_v6 = \"2001:db8:2::2\"\n", "address_v6 = \"2001:db8:2::2\"\nports = [2000, 1000]\n"),
            "line 8: node.snat.ports: [2000, 1000] is not a range [first, last] within 1..=65535",
        ),
        (
            snat().replace("address_v6 = \"2001:db8:2::2\"\n", "address_v6 = \"2001:db8:2::2\"\nports = [0, 1000]\n"),
            "node.snat.ports: [0, 1000] is not a range",
        ),
        (
            snat().replace("address_v4 = \"198.18.1.2\"", "address_v4 = \"0.0.0.0\""),
            "line 6: node.snat.address_v4: 0.0.0.0 cannot be a source the targets answer",
        ),
        (
            snat().replace("address_v6 = \"2001:db8:2::2\"\n", "address_v6 = \"2001:db8:2::2\"\nudp_timeout_seconds = 0\n"),
            "node.snat.udp_timeout_seconds: 0 is outside 1..=3600",
        ),
        // One family end to end, one way per group, as NAT.
        (
            snat().replace("198.18.1.11", "2001:db8:2::12"),
            "snat: target 2001:db8:2::12 and VIP 198.18.100.1 (listeners[0]) are of different IP \
             families",
        ),
        (
            snat().replacen("forwarding = \"snat\"", "forwarding = \"nat\"", 1)
                .replace("target_group = \"any\"", "target_group = \"web\"")
                .replace("2001:db8:100::1", "198.18.100.2")
                .replace(", port = 8081 }", " }"),
            "listeners[1].forwarding: snat on every port: listeners[0] forwards to \"web\" by nat",
        ),
        (
            snat().replace("targets = [{ id = \"198.18.1.11\" }", "attributes = { \"proxy_protocol_v2.enabled\" = \"true\" }\ntargets = [{ id = \"198.18.1.11\" }"),
            "listeners[0].forwarding: snat: this listener is served in user space",
        ),
    ];
    for (text, want) in cases {
        let e = refused(&text);
        assert!(e.contains(want), "want {want:?}: {e}");
    }
}
