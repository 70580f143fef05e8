//! `xlb import aws`, run as an operator runs it: the real binary on the JSON `aws elbv2
//! describe-*` prints (fixtures under `tests/fixtures/aws/estate/`, written from AWS's
//! documented output shapes), then the real `xlb check` on what it wrote.
//!
//! The estate: an ALB (HTTP → HTTPS redirect; HTTPS with an ACM certificate, host, path, header,
//! method, query-string and source-ip rules, a weighted forward with stickiness, a fixed
//! response, an OIDC rule, a rule to a Lambda group, a regex rule; an HTTP listener behind
//! Cognito) and an NLB (TCP and UDP, and TLS to a group with source-IP stickiness, which the
//! proxy cannot keep), seven target groups (one of Lambda functions, one with an instance target)
//! with their attributes and targets. A second estate, `tests/fixtures/aws/nlb-tls/`: NLB TLS
//! listeners, PROXY v2 groups and listener attributes.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_config::{
    CheckPort, CheckProtocol, Condition, Config, HttpAction, ListenerProtocol, Protocol,
    ProtocolVersion, RedirectCode,
};
use xlb_tests::agent::xlb_bin;

fn estate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/aws/estate")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `xlb ARGS`, run from `/` (the config's relative paths must not depend on the working
/// directory).
fn xlb(args: &[&str]) -> Output {
    Command::new(xlb_bin().expect("xlb binary"))
        .current_dir("/")
        .args(args)
        .output()
        .expect("run xlb")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Imports the estate into `dir/xlb.toml` with a JSON report in `dir/report.json`.
fn import(dir: &Path) -> (String, serde_json::Value) {
    let config = dir.join("xlb.toml");
    let report = dir.join("report.json");
    let out = xlb(&[
        "--output",
        "json",
        "import",
        "aws",
        estate().to_str().unwrap(),
        "--out",
        config.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = std::fs::read_to_string(report).unwrap();
    (
        std::fs::read_to_string(config).unwrap(),
        serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}")),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_estate_imports_into_the_config_its_json_describes() {
    let dir = scratch("contents");
    let (written, _) = import(&dir);
    let cfg = Config::parse(&written, "xlb.toml").unwrap_or_else(|e| panic!("{e}\n{written}"));

    // The node: a placeholder interface, and tunnel sources clear of game-udp's 172.16.5.20.
    assert_eq!(cfg.node.interface, "eth0");
    assert_eq!(cfg.node.tunnel_source_v4.to_string(), "100.127.0.0");

    // Target groups: every one but the Lambda group, in AWS's order.
    let names: Vec<&str> = cfg.target_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        ["www", "api", "api-canary", "legacy", "game-tcp", "game-udp"]
    );
    let group = |n: &str| cfg.group(n).unwrap();
    let targets = |n: &str| -> Vec<(IpAddr, Option<u16>, Option<&str>)> {
        group(n)
            .targets
            .iter()
            .map(|t| (t.id, t.port, t.zone.as_deref()))
            .collect()
    };
    let attributes = |n: &str| -> Vec<(&str, &str)> {
        group(n)
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    };

    // www: the draining target is left out; AWS's defaults and empty values are not written.
    let www = group("www");
    assert_eq!((www.protocol, www.port), (Protocol::Http, 80));
    assert_eq!(
        targets("www"),
        [
            (ip("10.0.3.11"), None, Some("us-east-1a")),
            (ip("10.0.3.12"), None, Some("us-east-1b")),
        ]
    );
    assert_eq!(
        attributes("www"),
        [
            ("deregistration_delay.timeout_seconds", "30"),
            ("slow_start.duration_seconds", "60"),
            ("stickiness.enabled", "true"),
            ("stickiness.lb_cookie.duration_seconds", "3600"),
        ]
    );
    let hc = www.health_check.as_ref().unwrap();
    assert_eq!(hc.protocol, Some(CheckProtocol::Http));
    assert_eq!(hc.port, CheckPort::TrafficPort);
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!(
        (
            hc.interval_seconds,
            hc.timeout_seconds,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (10, 5, 3, 2)
    );
    assert_eq!(hc.matcher.as_ref().unwrap().to_string(), "200-299");

    // api (attributes wrapped with the group's ARN): HTTPS, HTTP/2, a target on its own port,
    // app-cookie stickiness, a health check port of its own.
    let api = group("api");
    assert_eq!(
        (api.protocol, api.port, api.protocol_version()),
        (Protocol::Https, 8443, ProtocolVersion::Http2)
    );
    assert_eq!(
        targets("api"),
        [
            (ip("10.0.3.21"), None, Some("us-east-1a")),
            (ip("10.0.3.22"), Some(9443), Some("us-east-1b")),
        ]
    );
    assert_eq!(
        attributes("api"),
        [
            (
                "load_balancing.algorithm.type",
                "least_outstanding_requests"
            ),
            ("stickiness.app_cookie.cookie_name", "SESSION"),
            ("stickiness.app_cookie.duration_seconds", "7200"),
            ("stickiness.enabled", "true"),
            ("stickiness.type", "app_cookie"),
        ]
    );
    let hc = api.health_check.as_ref().unwrap();
    assert_eq!(
        (
            hc.protocol,
            hc.port,
            hc.path.as_deref(),
            hc.unhealthy_threshold
        ),
        (
            Some(CheckProtocol::Https),
            CheckPort::Port(8444),
            Some("/v1/health"),
            3
        )
    );
    // A target outside the VPC (zone "all") has no zone.
    assert_eq!(targets("api-canary"), [(ip("192.168.50.31"), None, None)]);
    // The instance target is left for the operator; the address one comes in.
    assert_eq!(
        targets("legacy"),
        [(ip("10.0.5.40"), None, Some("us-east-1a"))]
    );

    // The NLB's groups: source-IP stickiness, cross-zone from the load balancer's attribute
    // (its file wrapped with the load balancer's ARN), NLB's TCP check timeout.
    let tcp = group("game-tcp");
    assert_eq!((tcp.protocol, tcp.port), (Protocol::Tcp, 7777));
    assert_eq!(
        attributes("game-tcp"),
        [
            ("deregistration_delay.timeout_seconds", "120"),
            ("load_balancing.cross_zone.enabled", "true"),
            ("stickiness.type", "source_ip"),
        ]
    );
    assert!(tcp.source_ip_stickiness() && tcp.cross_zone());
    let hc = tcp.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.protocol, hc.interval_seconds, hc.timeout_seconds),
        (Some(CheckProtocol::Tcp), 30, 10)
    );
    let udp = group("game-udp");
    assert_eq!(udp.protocol, Protocol::Udp);
    assert_eq!(
        targets("game-udp"),
        [
            (ip("172.16.5.20"), None, Some("us-east-1a")),
            (ip("10.0.4.22"), None, Some("us-east-1b")),
        ]
    );
    let hc = udp.health_check.as_ref().unwrap();
    assert_eq!(
        (
            hc.protocol,
            hc.port,
            hc.path.as_deref(),
            hc.matcher.as_ref().map(ToString::to_string)
        ),
        (
            Some(CheckProtocol::Http),
            CheckPort::Port(7778),
            Some("/ready"),
            Some("200-399".to_owned())
        )
    );

    // L4 listeners: the NLB's TCP and UDP on its first address; its TLS listener is not (its
    // group's stickiness).
    let l4: Vec<(IpAddr, u16, Protocol, &str)> = cfg
        .listeners
        .iter()
        .map(|l| (l.address, l.port, l.protocol, l.target_group()))
        .collect();
    assert_eq!(
        l4,
        [
            (ip("203.0.113.10"), 7777, Protocol::Tcp, "game-tcp"),
            (ip("203.0.113.10"), 7777, Protocol::Udp, "game-udp"),
        ]
    );
    assert!(
        cfg.listeners
            .iter()
            .all(|l| l.forwarding == lb_config::Forwarding::Tunnel)
    );

    // HTTP listeners: the ALB's three, each with the ALB's attributes.
    let ports: Vec<(u16, ListenerProtocol)> = cfg
        .http_listeners
        .iter()
        .map(|l| (l.port, l.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (80, ListenerProtocol::Http),
            (443, ListenerProtocol::Https),
            (8080, ListenerProtocol::Http)
        ]
    );
    for l in &cfg.http_listeners {
        assert_eq!(l.address, ip("0.0.0.0"));
        let attrs: Vec<(&str, &str)> = l
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            attrs,
            [
                ("connection_logs.enabled", "true"),
                ("idle_timeout.timeout_seconds", "120"),
                ("routing.http.desync_mitigation_mode", "strictest"),
                ("routing.http.drop_invalid_header_fields.enabled", "true"),
                (
                    "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
                    "true"
                ),
                ("routing.http.xff_header_processing.mode", "preserve"),
            ]
        );
    }
    let [http, https, cognito] = cfg.http_listeners.as_slice() else {
        unreachable!()
    };
    // HTTP → HTTPS, keeping host, path and query.
    assert_eq!(
        http.default_action,
        HttpAction::Redirect {
            protocol: "HTTPS".into(),
            host: "#{host}".into(),
            port: "443".into(),
            path: "/#{path}".into(),
            query: "#{query}".into(),
            status_code: RedirectCode::Http301,
        }
    );
    // The ACM certificate becomes files the operator provides.
    let certs: Vec<(String, String)> = https
        .certificates
        .iter()
        .map(|c| (c.cert.display().to_string(), c.key.display().to_string()))
        .collect();
    assert_eq!(
        certs,
        [(
            "certs/3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d.pem".to_owned(),
            "certs/3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d.key".to_owned()
        )]
    );
    let forward = |groups: &[(&str, u32)], stickiness: Option<u32>| HttpAction::Forward {
        target_group: None,
        target_groups: groups
            .iter()
            .map(|(name, weight)| lb_config::WeightedTargetGroup {
                name: (*name).to_owned(),
                weight: *weight,
            })
            .collect(),
        stickiness: stickiness.map(|duration_seconds| lb_config::GroupStickiness {
            enabled: true,
            duration_seconds,
        }),
    };
    assert_eq!(https.default_action, forward(&[("www", 1)], None));
    // The rules by priority; the default rule is the listener's default action, and the regex
    // rule is left out (it would match more without its condition).
    let priorities: Vec<u32> = https.rules.iter().map(|r| r.priority).collect();
    assert_eq!(priorities, [10, 20, 30, 40, 50]);
    let rule = |p: u32| https.rules.iter().find(|r| r.priority == p).unwrap();
    assert_eq!(
        rule(10).conditions,
        [
            Condition::HostHeader {
                values: vec!["api.example.com".into()]
            },
            Condition::PathPattern {
                values: vec!["/v1/*".into()]
            },
        ]
    );
    assert_eq!(
        rule(10).actions,
        [forward(&[("api", 9), ("api-canary", 1)], Some(3600))]
    );
    assert_eq!(
        rule(20).conditions,
        [
            Condition::HttpHeader {
                name: "X-Maintenance".into(),
                values: vec!["on".into()]
            },
            Condition::HttpRequestMethod {
                values: vec!["GET".into(), "HEAD".into()]
            },
        ]
    );
    assert_eq!(
        rule(20).actions,
        [HttpAction::FixedResponse {
            status_code: 503,
            content_type: Some("application/json".into()),
            message_body: Some(r#"{"status": "maintenance"}"#.into()),
        }]
    );
    let [
        Condition::QueryString { values: query },
        Condition::SourceIp { values: sources },
    ] = rule(30).conditions.as_slice()
    else {
        panic!("rule 30: {:?}", rule(30).conditions)
    };
    let query: Vec<(Option<&str>, &str)> = query
        .iter()
        .map(|q| (q.key.as_deref(), q.value.as_str()))
        .collect();
    assert_eq!(query, [(Some("version"), "v2"), (None, "beta")]);
    let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
    assert_eq!(sources, ["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(
        rule(30).actions,
        [HttpAction::Redirect {
            protocol: "#{protocol}".into(),
            host: "v2.example.com".into(),
            port: "#{port}".into(),
            path: "/v2/#{path}".into(),
            query: "#{query}".into(),
            status_code: RedirectCode::Http302,
        }]
    );
    // What xlb cannot do fails closed: the OIDC rule, the rule to the Lambda group and the
    // Cognito listener answer 503 instead of forwarding unauthenticated requests.
    let closed = |a: &HttpAction, why: &str| match a {
        HttpAction::FixedResponse {
            status_code: 503,
            message_body: Some(body),
            ..
        } => assert!(body.contains(why), "{body}"),
        other => panic!("not failed closed: {other:?}"),
    };
    closed(&rule(40).actions[0], "OIDC");
    assert_eq!(
        rule(40).conditions,
        [Condition::PathPattern {
            values: vec!["/admin/*".into()]
        }]
    );
    closed(&rule(50).actions[0], "thumbnails");
    closed(&cognito.default_action, "Cognito");
    assert!(cognito.rules.is_empty());
}

#[test]
fn what_does_not_map_is_reported_and_left_as_comments_in_the_config() {
    let dir = scratch("report");
    let (written, report) = import(&dir);
    assert_eq!(
        report["summary"],
        serde_json::json!({
            "load_balancers": 2,
            "listeners": 2,
            "http_listeners": 3,
            "rules": 5,
            "target_groups": 6,
            "targets": 10,
        })
    );
    let findings = report["findings"].as_array().unwrap();
    let has = |level: &str, resource: &str, says: &str| {
        assert!(
            findings.iter().any(|f| f["level"] == level
                && f["resource"] == resource
                && f["message"].as_str().unwrap().contains(says)),
            "no {level} for {resource} saying {says:?} in:\n{report:#}"
        );
    };
    // Lambda targets, authentication, ACM, stickiness on TLS, regex conditions, instance IDs.
    has("todo", "target group \"thumbnails\"", "Lambda");
    has(
        "todo",
        "listener web-alb HTTP:8080, default action",
        "Cognito (arn:aws:cognito-idp:",
    );
    has(
        "todo",
        "listener web-alb HTTPS:443, rule 40",
        "OIDC (https://idp.example.com)",
    );
    has("todo", "listener web-alb HTTPS:443, rule 50", "thumbnails");
    has(
        "todo",
        "listener web-alb HTTPS:443, rule 60",
        "regular expressions",
    );
    has(
        "todo",
        "listener web-alb HTTPS:443",
        "arn:aws:acm:us-east-1:123456789012:certificate/3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    );
    // Its group's source-IP stickiness stays for the XDP listener; the proxy cannot keep it.
    has(
        "todo",
        "listener game-nlb TLS:443",
        "forwards to \"game-tcp\", whose stickiness.type = \"source_ip\"",
    );
    has("todo", "target group \"legacy\"", "i-0f76fade435676abd:80");
    has("todo", "node", "interface");
    // What differs: attributes xlb lacks, tunnels, addresses, ports, draining targets.
    has(
        "note",
        "load balancer web-alb",
        "access_logs.s3.enabled = \"true\"",
    );
    has(
        "note",
        "target group \"game-tcp\"",
        "target_health_state.unhealthy.connection_termination.enabled",
    );
    has("note", "load balancer game-nlb", "forwarding = \"tunnel\"");
    has("note", "load balancer game-nlb", "203.0.113.20");
    has("note", "target group \"game-udp\"", "17777");
    has("note", "target group \"www\"", "10.0.3.13 is draining");
    has(
        "note",
        "listener web-alb HTTPS:443",
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
    );
    has("note", "node", "tunnel_source_v4");
    // Attributes that are what xlb does anyway are not findings.
    let all = serde_json::to_string(findings).unwrap();
    for quiet in [
        "deletion_protection",
        "routing.http2.enabled",
        "preserve_client_ip",
        "stickiness.app_cookie.cookie_name = \\\"\\\"",
    ] {
        assert!(!all.contains(quiet), "{quiet} reported:\n{report:#}");
    }
    // Every finding is a comment in the config, at its place or in the "Not imported" part.
    assert!(findings.len() >= 20, "{report:#}");
    for f in findings {
        let tag = if f["level"] == "todo" {
            "TODO(import)"
        } else {
            "NOTE(import)"
        };
        let line = format!("# {tag}: {}:", f["resource"].as_str().unwrap());
        assert!(written.contains(&line), "{line:?} not in:\n{written}");
    }
    let todos = findings.iter().filter(|f| f["level"] == "todo").count();
    assert_eq!(
        written.matches("# TODO(import): ").count(),
        todos,
        "{written}"
    );
    // What is left out whole is in the last part, with its ARN.
    let (_, left_out) = written.split_once("\n# Not imported:\n").expect(&written);
    for whole in [
        "target group \"thumbnails\"",
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/thumbnails/",
        "rule 60",
        "TLS:443",
    ] {
        assert!(left_out.contains(whole), "{whole} not in:\n{left_out}");
    }
    assert!(left_out.lines().all(|l| l.starts_with('#')), "{left_out}");
}

#[test]
fn xlb_check_accepts_the_config_once_its_certificate_files_are_in_place() {
    let dir = scratch("check");
    import(&dir);
    let config = dir.join("xlb.toml");
    let check = || xlb(&["check", "--config", config.to_str().unwrap()]);
    // As written, the ACM certificate's files are the operator's TODO: named with their line.
    let out = check();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("http_listeners[1].certificates[0]")
            && said.contains("certs/3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d.pem"),
        "{said}"
    );
    // Put there (the examples' test certificate stands for the exported one), it passes.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let shipped = repo().join("config/examples/certs");
    for (from, to) in [("example.com.pem", "pem"), ("example.com.key", "key")] {
        std::fs::copy(
            shipped.join(from),
            certs.join(format!("3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d.{to}")),
        )
        .unwrap();
    }
    let out = check();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(": ok (2 listeners, 3 http listeners, 6 target groups)"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_files_named_the_config_goes_to_stdout_and_the_report_to_stderr() {
    let out = xlb(&["import", "aws", estate().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let config = String::from_utf8(out.stdout.clone()).unwrap();
    let report = String::from_utf8(out.stderr.clone()).unwrap();
    let cfg = Config::parse(&config, "stdout").unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(cfg.target_groups.len(), 6);
    assert!(
        report.starts_with(
            "imported 2 load balancers into the config: 2 listeners, 3 http listeners, 5 rules, \
             6 target groups, 10 targets; "
        ),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("TODO  target group \"thumbnails\": ")),
        "{report}"
    );
}

#[test]
fn an_input_that_is_no_describe_output_is_refused_by_its_name() {
    let dir = scratch("unknown");
    let odd = dir.join("instances.json");
    std::fs::write(&odd, r#"{"Reservations": []}"#).unwrap();
    let out = xlb(&["import", "aws", dir.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{}: no LoadBalancers", odd.display())),
        "{said}"
    );
    // A target-health output that names no target group is refused with the convention.
    std::fs::write(&odd, r#"{"TargetHealthDescriptions": []}"#).unwrap();
    let groups = estate().join("describe-target-groups.json");
    let out = xlb(&[
        "import",
        "aws",
        groups.to_str().unwrap(),
        odd.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("describe-target-health.web.json") && said.contains("TargetGroupArn"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The second estate: an NLB with TLS listeners (to a `TLS` group with PROXY v2, and to a `TCP`
/// group only TLS listeners use), a TCP listener to a PROXY v2 group with
/// `tcp.idle_timeout.seconds`, and a TCP listener forwarded in XDP whose idle timeout cannot come.
fn nlb_tls() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/aws/nlb-tls")
}

#[test]
fn nlb_tls_listeners_and_proxy_protocol_groups_import_and_pass_xlb_check() {
    let dir = scratch("nlb-tls");
    let config = dir.join("xlb.toml");
    let report = dir.join("report.json");
    let out = xlb(&[
        "--output",
        "json",
        "import",
        "aws",
        nlb_tls().to_str().unwrap(),
        "--out",
        config.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&config).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let cfg = Config::parse(&written, "xlb.toml").unwrap_or_else(|e| panic!("{e}\n{written}"));
    let group = |n: &str| cfg.group(n).unwrap();
    // Groups the proxy serves keep their targets' own ports; the XDP group's cannot.
    let targets = |n: &str| -> Vec<(IpAddr, Option<u16>)> {
        group(n).targets.iter().map(|t| (t.id, t.port)).collect()
    };
    assert_eq!(
        (group("secure").protocol, group("secure").port),
        (Protocol::Tls, 8443)
    );
    assert_eq!(
        targets("secure"),
        [(ip("10.1.0.11"), None), (ip("10.1.0.12"), Some(9443))]
    );
    assert_eq!(
        targets("clear"),
        [(ip("10.1.0.21"), None), (ip("10.1.0.22"), Some(8081))]
    );
    assert_eq!(
        targets("ssh"),
        [(ip("10.1.0.41"), None), (ip("10.1.0.42"), None)]
    );
    assert!(group("secure").proxy_protocol_v2() && group("pp").proxy_protocol_v2());
    assert!(!group("clear").proxy_protocol_v2());
    // The proxy picks round robin: pp's source-IP stickiness is left out (with a note).
    assert!(!group("pp").source_ip_stickiness());
    let listener = |port: u16| cfg.listeners.iter().find(|l| l.port == port).unwrap();
    let served: Vec<(u16, Protocol, &str, bool)> = cfg
        .listeners
        .iter()
        .map(|l| (l.port, l.protocol, l.target_group(), cfg.in_user_space(l)))
        .collect();
    assert_eq!(
        served,
        [
            (22, Protocol::Tcp, "ssh", false),
            (80, Protocol::Tcp, "pp", true),
            (443, Protocol::Tls, "secure", true),
            (8443, Protocol::Tls, "clear", true),
        ]
    );
    assert!(
        cfg.listeners
            .iter()
            .all(|l| l.address == ip("198.51.100.10"))
    );
    // The TLS listeners: ACM certificates as files to provide, the policies as xlb names them.
    let tls = listener(443);
    let certs: Vec<String> = tls
        .certificates
        .iter()
        .map(|c| c.cert.display().to_string())
        .collect();
    assert_eq!(certs, ["certs/5c1a7e2b-3d4f-4a6b-8c9d-1e2f3a4b5c6d.pem"]);
    assert_eq!(tls.ssl_policy, Some(lb_config::SslPolicy::Tls13Only));
    assert_eq!(tls.alpn_policy, Some(lb_config::AlpnPolicy::Http2Preferred));
    let other = listener(8443);
    assert_eq!((other.ssl_policy, other.alpn_policy), (None, None));
    // The idle timeout comes where the proxy keeps it: the PROXY v2 listener's, not the XDP
    // listener's; the TLS listener's is NLB's fixed 350 s, the default, not written.
    assert_eq!(
        listener(80).idle_timeout(),
        std::time::Duration::from_secs(600)
    );
    for port in [22, 443, 8443] {
        assert!(listener(port).attributes.is_empty(), "{port}: {written}");
    }
    let findings = report["findings"].as_array().unwrap();
    let has = |level: &str, resource: &str, says: &str| {
        assert!(
            findings.iter().any(|f| f["level"] == level
                && f["resource"] == resource
                && f["message"].as_str().unwrap().contains(says)),
            "no {level} for {resource} saying {says:?} in:\n{report:#}"
        );
    };
    has(
        "note",
        "listener edge-nlb TCP:22",
        "tcp.idle_timeout.seconds = \"1200\" (forwarded in XDP",
    );
    has(
        "note",
        "target group \"pp\"",
        "stickiness.type = \"source_ip\" not imported",
    );
    has("note", "target group \"ssh\"", "ports 2222");
    has(
        "note",
        "target group \"clear\"",
        "preserve_client_ip.enabled = \"true\": xlb's proxy",
    );
    has(
        "note",
        "listener edge-nlb TLS:8443",
        "ELBSecurityPolicy-TLS13-1-2-Res-2021-06: imported as xlb's default",
    );
    has(
        "note",
        "listener edge-nlb TLS:443",
        "whose socket binds 198.51.100.10:443",
    );
    has(
        "todo",
        "listener edge-nlb TLS:443",
        "arn:aws:acm:eu-west-1:123456789012:certificate/5c1a7e2b-3d4f-4a6b-8c9d-1e2f3a4b5c6d",
    );
    has(
        "todo",
        "load balancer edge-nlb",
        "forwards TCP:22 in XDP, whose VIP must not be an address of the node, and serves \
         TCP:80, TLS:443, TLS:8443 with its proxy",
    );
    // What the proxy does anyway is no finding (XDP keeps the client's address: ssh's is).
    let says_false = |resource: &str| {
        findings.iter().any(|f| {
            f["resource"] == resource
                && f["message"]
                    .as_str()
                    .unwrap()
                    .contains("preserve_client_ip.enabled = \"false\"")
        })
    };
    assert!(
        !says_false("target group \"secure\"")
            && !says_false("target group \"pp\"")
            && says_false("target group \"ssh\""),
        "{report:#}"
    );
    // With the certificates in place, `xlb check` takes it.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let shipped = repo().join("config/examples/certs");
    for id in [
        "5c1a7e2b-3d4f-4a6b-8c9d-1e2f3a4b5c6d",
        "7d2b8f3c-4e5a-4b7c-9d0e-2f3a4b5c6d7e",
    ] {
        for (from, to) in [("example.com.pem", "pem"), ("example.com.key", "key")] {
            std::fs::copy(shipped.join(from), certs.join(format!("{id}.{to}"))).unwrap();
        }
    }
    let out = xlb(&["check", "--config", config.to_str().unwrap()]);
    let said = text(&out);
    assert!(
        out.status.success()
            && said.contains(": ok (4 listeners, 0 http listeners, 4 target groups)"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
