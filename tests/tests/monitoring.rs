//! The alarms and the dashboard in `monitoring/`: the alerting rules pass `promtool check rules`
//! and fire as their unit tests say (`promtool test rules`); the dashboard is Grafana JSON whose
//! queries parse; and every metric they name is one a real `xlb run` exports, scraped in a lab,
//! so that no rule or panel can silently watch nothing.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_tests::{
    agent::{self, Agent, xlb_bin},
    lab::{LB_V4, Lab, LabSpec, VIP_V4, backend_v4, pin_dir, run_dir},
};

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// Runs `promtool ARGS` in `monitoring/`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .current_dir(monitoring())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: `cargo xtask setup` installs it (Debian package prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The `expr` of each rule in a rules file: inline, or a `|` block of the lines indented
/// deeper than its key (all the YAML the rules file uses for them).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            exprs.push(rest.to_owned());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        exprs.push(block.join(" ").trim().to_owned());
    }
    exprs
}

/// The metric names a PromQL expression reads: xlb's, so every identifier that starts with
/// `xlb_` outside a string (label values may hold anything).
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quote = None;
    let mut word = String::new();
    for c in promql.chars().chain([' ']) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                word.push(c);
                continue;
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => {}
        }
        if word.starts_with("xlb_") {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring().join("xlb-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("xlb-dashboard.json is JSON")
}

/// Every panel, those inside collapsed rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let top = dash["panels"].as_array().expect("panels");
    top.iter()
        .flat_map(|p| {
            let nested = p["panels"].as_array().into_iter().flatten();
            std::iter::once(p).chain(nested)
        })
        .collect()
}

/// Each query of the dashboard as (panel title, PromQL): its panels' and its variables'.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("each target has an expr");
            queries.push((
                p["title"].as_str().unwrap_or("").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            queries.push((
                format!("${}", v["name"].as_str().unwrap_or("")),
                q.to_owned(),
            ));
        }
    }
    queries
}

/// What the rules and the dashboard read.
fn names_used() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(monitoring().join("xlb-alerts.yml")).unwrap();
    let exprs = rule_exprs(&rules);
    let queries = dashboard_queries(&dashboard());
    exprs
        .iter()
        .chain(queries.iter().map(|(_, q)| q))
        .flat_map(|e| metric_names(e))
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", "xlb-alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_fire_as_their_unit_tests_expect() {
    let out = promtool(&["test", "rules", "xlb-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_rule_has_an_expr_that_names_xlb_metrics() {
    let rules = std::fs::read_to_string(monitoring().join("xlb-alerts.yml")).unwrap();
    let exprs = rule_exprs(&rules);
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), alerts, "{exprs:#?}");
    // UnHealthyHostCount, HealthyHostCount, ELB 5xx, target 5xx, TargetResponseTime,
    // TargetConnectionErrorCount, rejected connections, flow table, two on drop reasons.
    assert!(alerts >= 10, "{alerts} alerts");
    for e in &exprs {
        assert!(!metric_names(e).is_empty(), "{e}");
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_the_panels_of_an_elb_dashboard() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "xlb");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().expect("each panel has a title");
        assert!(ids.insert(p["id"].as_u64().expect("an id")), "{title}: id");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
    }
    // The variables the queries use are defined.
    for (title, q) in dashboard_queries(&dash) {
        for var in ["$instance", "$datasource"] {
            if q.contains(var) {
                assert!(vars.contains(&var[1..]), "{title}: {var} undefined");
            }
        }
    }
    // What a CloudWatch ELB dashboard shows.
    let used: BTreeSet<String> = dashboard_queries(&dash)
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .collect();
    for m in [
        "xlb_request_count_total",
        "xlb_httpcode_elb_5xx_count_total",
        "xlb_httpcode_target_2xx_count_total",
        "xlb_target_response_time_seconds_bucket",
        "xlb_healthy_host_count",
        "xlb_unhealthy_host_count",
        "xlb_active_connection_count",
        "xlb_new_connection_count_total",
        "xlb_processed_bytes_total",
        "xlb_processed_packets_total",
        "xlb_datapath_packets_total",
        "xlb_flow_table_size",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    // promtool has no query parser of its own: each query becomes a recording rule, with
    // Grafana's variables replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, q)) in dashboard_queries(&dashboard()).iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        // A variable's query is Grafana's, not PromQL: its metric is what must parse.
        let q = match q.strip_prefix("label_values(") {
            Some(args) => args.split(',').next().unwrap_or("").trim().to_owned(),
            None => q,
        };
        rules += &format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        );
    }
    let path = std::env::temp_dir().join(format!("xlb-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool: `cargo xtask setup` installs it (Debian package prometheus)");
    std::fs::remove_file(&path).unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metric_names_are_read_outside_strings() {
    let q = r#"sum by (le) (rate(xlb_a_total{reason=~"xlb_not_a_metric"}[5m])) / on() xlb_b"#;
    assert_eq!(
        metric_names(q),
        ["xlb_a_total", "xlb_b"].map(String::from).into()
    );
    let yaml = "      - alert: A\n        expr: xlb_a > 0\n      - alert: B\n        expr: |\n          sum(xlb_b)\n            > 1\n        for: 5m\n";
    assert_eq!(rule_exprs(yaml), ["xlb_a > 0", "sum(xlb_b) > 1"]);
}

/// The sample names of a scrape: `xlb_x_total`, `xlb_y_bucket`, ...
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_a_running_agent() {
    let lab = Lab::up(LabSpec {
        prefix: "xmon-".into(),
        backends: 1,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let run = run_dir(lab.prefix());
    // Both tiers, so that every family has its series: an L4 listener with a checked group,
    // an HTTP listener with a rule.
    let config = format!(
        "[node]\ninterface = \"eth0\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\n\
         state_file = \"{}\"\nmetrics_address = \"127.0.0.1:9100\"\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{b}\" }}]\nhealth_check = {{ protocol = \"TCP\", interval_seconds = 10 }}\n\n\
         [[listeners]]\naddress = \"{VIP_V4}\"\nport = 80\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n\
         [[target_groups]]\nname = \"app\"\nprotocol = \"HTTP\"\nport = 80\ntargets = [{{ id = \"{b}\" }}]\n\n\
         [[http_listeners]]\naddress = \"{LB_V4}\"\nport = 8080\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_groups = [{{ name = \"app\" }}] }}\n\n\
         [[http_listeners.rules]]\npriority = 10\n\
         conditions = [{{ field = \"path-pattern\", values = [\"/old\"] }}]\n\
         actions = [{{ type = \"redirect\", path = \"/new\", status_code = \"HTTP_301\" }}]\n",
        pin_dir(lab.prefix()).join("agent").display(),
        run.join("xlb.sock").display(),
        run.join("state.json").display(),
        b = backend_v4(1),
    );
    let path = run.join("xlb.toml");
    std::fs::write(&path, config).expect("write config");
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    let scrape = || agent::scrape(&lab);
    // The endpoint comes up beside the API; give it a few seconds.
    let t0 = Instant::now();
    let mut text = scrape();
    while !text.contains("xlb_") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        text = scrape();
    }
    agent.stop().expect("xlb stops cleanly");
    let exported = exported(&text);
    let used = names_used();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named by monitoring/ but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The rules and the dashboard read at least 25 of the agent's series names.
    assert!(used.len() >= 25, "{used:?}");
}
