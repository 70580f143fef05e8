//! `xlb import aws`: an xlb config from what `aws elbv2 describe-*` prints.
//!
//! The input is the JSON of `describe-load-balancers`, `describe-listeners`, `describe-rules`,
//! `describe-target-groups`, `describe-target-group-attributes`,
//! `describe-load-balancer-attributes`, `describe-listener-attributes` and
//! `describe-target-health`, in any number of files; each file's kind is read from its top-level
//! key (`LoadBalancers`, `Listeners`, ...). Listeners name their load balancer and rules their
//! listener (in the rule's ARN), but the attribute and target-health outputs describe one
//! resource each without naming it, so such a file says which, either inside, by an ARN key
//! beside AWS's (`"TargetGroupArn"`, `"LoadBalancerArn"` or `"ListenerArn"`), or in its name:
//! `describe-target-health.NAME.json`, `describe-target-group-attributes.NAME.json`,
//! `describe-load-balancer-attributes.NAME.json` or `describe-listener-attributes.LB.ID.json`
//! (a listener's load balancer name and the last part of its ARN; AWS names have no dots).
//!
//! The output is a config's text, written with `toml_edit` so that it carries comments, and
//! a list of [`Finding`]s. Nothing that does not map is dropped silently:
//! - what the operator must act on (a placeholder, an entity left out, an action replaced) is a
//!   [`Level::Todo`], written as a `TODO(import)` comment at its place in the config;
//! - what is imported differently or left out because xlb has no such thing is a
//!   [`Level::Note`], a `NOTE(import)` comment.
//!
//! Attributes whose value is what xlb does anyway (`deletion_protection.enabled = false`,
//! `routing.http2.enabled = true`, ...) are left out without a word: see [`SAME_AS_XLB`].
//! Where AWS's behaviour cannot be kept, the import fails closed: a rule or default action
//! that authenticates (Cognito, OIDC, JWT) or rewrites answers 503 until the operator decides,
//! rather than forwarding unauthenticated requests.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use crate::attribute::{self, Attribute, Tier};

/// One input file: its name (which may name the resource it describes) and its text.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub text: String,
}

impl Input {
    /// The files of `paths`: files as given, and every `.json` file of a directory, by name.
    pub fn read(paths: &[PathBuf]) -> Result<Vec<Input>, ImportError> {
        let read_err = |p: &Path| {
            let path = p.display().to_string();
            move |source| ImportError::Read { path, source }
        };
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(read_err(p))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "json"))
                    .collect();
                in_dir.sort();
                files.extend(in_dir);
            } else {
                files.push(p.clone());
            }
        }
        files
            .iter()
            .map(|f| {
                Ok(Input {
                    name: f.display().to_string(),
                    text: std::fs::read_to_string(f).map_err(read_err(f))?,
                })
            })
            .collect()
    }
}

/// Why the input cannot be imported at all.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not the JSON `aws elbv2` prints")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{file}: no LoadBalancers, Listeners, Rules, TargetGroups, Attributes or \
         TargetHealthDescriptions: not the output of a describe command xlb imports"
    )]
    Unknown { file: String },
    /// An attributes or target-health file whose resource is not found.
    #[error("{file}: {message}")]
    Resource { file: String, message: String },
    #[error("no input files")]
    Empty,
}

/// How much a finding asks of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The config needs the operator before it does what AWS did: a placeholder to fill, an
    /// entity left out, an action replaced by a 503.
    Todo,
    /// Imported differently, or left out because xlb has no such thing.
    Note,
}

/// Something that did not map as it is, in the report and as a comment in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The AWS resource, e.g. `target group "web"` or `listener my-alb HTTPS:443`.
    pub resource: String,
    pub message: String,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub load_balancers: usize,
    /// L4 `[[listeners]]`.
    pub listeners: usize,
    pub http_listeners: usize,
    pub rules: usize,
    pub target_groups: usize,
    pub targets: usize,
}

/// An imported config and what did not map.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The config's text.
    pub config: String,
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

/// Imports `inputs`; see the module's documentation.
pub fn aws(inputs: &[Input]) -> Result<Imported, ImportError> {
    if inputs.is_empty() {
        return Err(ImportError::Empty);
    }
    let aws = Aws::parse(inputs)?;
    let files: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    Ok(Writer::default().write(&aws, &files))
}

// ---------------------------------------------------------------------------------------------
// AWS's shapes: only the fields xlb maps or reports; serde skips the others.

/// One file: whichever describe output it holds, plus the importer's own ARN keys.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Describe {
    load_balancers: Option<Vec<LoadBalancer>>,
    listeners: Option<Vec<Listener>>,
    rules: Option<Vec<Rule>>,
    target_groups: Option<Vec<TargetGroup>>,
    attributes: Option<Vec<KeyValue>>,
    target_health_descriptions: Option<Vec<TargetHealthDescription>>,
    /// Not AWS's: which target group an attributes or target-health file describes.
    target_group_arn: Option<String>,
    /// Not AWS's: which load balancer an attributes file describes.
    load_balancer_arn: Option<String>,
    /// Not AWS's: which listener an attributes file describes.
    listener_arn: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct LoadBalancer {
    load_balancer_arn: String,
    load_balancer_name: String,
    /// `application`, `network` or `gateway`.
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "DNSName")]
    dns_name: String,
    availability_zones: Vec<AvailabilityZone>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct AvailabilityZone {
    load_balancer_addresses: Vec<LoadBalancerAddress>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct LoadBalancerAddress {
    #[serde(rename = "IpAddress")]
    ip_address: Option<IpAddr>,
    #[serde(rename = "PrivateIPv4Address")]
    private_ipv4_address: Option<IpAddr>,
    #[serde(rename = "IPv6Address")]
    ipv6_address: Option<IpAddr>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct Listener {
    listener_arn: String,
    load_balancer_arn: String,
    port: u16,
    protocol: String,
    certificates: Vec<Certificate>,
    ssl_policy: Option<String>,
    /// NLB's TLS listeners: one policy name, in a list.
    alpn_policy: Vec<String>,
    default_actions: Vec<Action>,
    mutual_authentication: Option<MutualAuthentication>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct Certificate {
    certificate_arn: String,
    is_default: Option<bool>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct MutualAuthentication {
    mode: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct Action {
    #[serde(rename = "Type")]
    kind: String,
    target_group_arn: Option<String>,
    order: Option<u32>,
    redirect_config: Option<RedirectConfig>,
    fixed_response_config: Option<FixedResponseConfig>,
    forward_config: Option<ForwardConfig>,
    authenticate_oidc_config: Option<serde_json::Value>,
    authenticate_cognito_config: Option<serde_json::Value>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct RedirectConfig {
    protocol: Option<String>,
    port: Option<String>,
    host: Option<String>,
    path: Option<String>,
    query: Option<String>,
    status_code: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct FixedResponseConfig {
    message_body: Option<String>,
    status_code: String,
    content_type: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct ForwardConfig {
    target_groups: Vec<TargetGroupTuple>,
    target_group_stickiness_config: Option<StickinessConfig>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct TargetGroupTuple {
    target_group_arn: String,
    weight: Option<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct StickinessConfig {
    enabled: bool,
    duration_seconds: Option<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct Rule {
    rule_arn: String,
    /// A number, or `default` for the listener's default rule.
    priority: String,
    conditions: Vec<RuleCondition>,
    actions: Vec<Action>,
    is_default: bool,
    transforms: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct RuleCondition {
    field: String,
    /// The old form of host-header and path-pattern values.
    values: Vec<String>,
    host_header_config: Option<ValuesConfig>,
    path_pattern_config: Option<ValuesConfig>,
    http_header_config: Option<HttpHeaderConfig>,
    query_string_config: Option<QueryStringConfig>,
    http_request_method_config: Option<ValuesConfig>,
    source_ip_config: Option<ValuesConfig>,
    regex_values: Vec<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct ValuesConfig {
    values: Vec<String>,
    regex_values: Vec<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct HttpHeaderConfig {
    http_header_name: String,
    values: Vec<String>,
    regex_values: Vec<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct QueryStringConfig {
    values: Vec<QueryStringKeyValue>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct QueryStringKeyValue {
    key: Option<String>,
    value: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct TargetGroup {
    target_group_arn: String,
    target_group_name: String,
    protocol: Option<String>,
    protocol_version: Option<String>,
    port: Option<u16>,
    health_check_protocol: Option<String>,
    health_check_port: Option<String>,
    health_check_enabled: Option<bool>,
    health_check_interval_seconds: Option<u32>,
    health_check_timeout_seconds: Option<u32>,
    healthy_threshold_count: Option<u32>,
    unhealthy_threshold_count: Option<u32>,
    health_check_path: Option<String>,
    matcher: Option<Matcher>,
    load_balancer_arns: Vec<String>,
    /// `instance`, `ip`, `lambda` or `alb`.
    target_type: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct Matcher {
    http_code: Option<String>,
    grpc_code: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct TargetHealthDescription {
    target: TargetDescription,
    target_health: TargetHealth,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct TargetDescription {
    id: String,
    port: Option<u16>,
    availability_zone: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct TargetHealth {
    state: String,
}

/// Every input, joined and indexed by ARN.
#[derive(Default)]
struct Aws {
    load_balancers: Vec<LoadBalancer>,
    listeners: Vec<Listener>,
    /// Listener ARN → its rules.
    rules: BTreeMap<String, Vec<Rule>>,
    target_groups: Vec<TargetGroup>,
    /// Target group ARN → attributes.
    group_attributes: BTreeMap<String, Vec<KeyValue>>,
    /// Load balancer ARN → attributes.
    lb_attributes: BTreeMap<String, Vec<KeyValue>>,
    /// Listener ARN → attributes.
    listener_attributes: BTreeMap<String, Vec<KeyValue>>,
    /// Target group ARN → its targets.
    health: BTreeMap<String, Vec<TargetHealthDescription>>,
}

/// The command names a file of one resource may start with (`COMMAND.NAME.json`).
const HEALTH_FILE: &str = "describe-target-health";
const GROUP_ATTRIBUTES_FILE: &str = "describe-target-group-attributes";
const LB_ATTRIBUTES_FILE: &str = "describe-load-balancer-attributes";
const LISTENER_ATTRIBUTES_FILE: &str = "describe-listener-attributes";

impl Aws {
    fn parse(inputs: &[Input]) -> Result<Aws, ImportError> {
        let mut aws = Aws::default();
        // Files of one resource are placed once every resource is known.
        let mut per_resource = Vec::new();
        for input in inputs {
            let d: Describe =
                serde_json::from_str(&input.text).map_err(|source| ImportError::Json {
                    file: input.name.clone(),
                    source,
                })?;
            let mut known = false;
            if let Some(v) = &d.load_balancers {
                aws.load_balancers.extend(v.iter().cloned());
                known = true;
            }
            if let Some(v) = &d.listeners {
                aws.listeners.extend(v.iter().cloned());
                known = true;
            }
            if let Some(v) = &d.rules {
                for r in v {
                    aws.rules
                        .entry(listener_of_rule(&r.rule_arn))
                        .or_default()
                        .push(r.clone());
                }
                known = true;
            }
            if let Some(v) = &d.target_groups {
                aws.target_groups.extend(v.iter().cloned());
                known = true;
            }
            if d.attributes.is_some() || d.target_health_descriptions.is_some() {
                per_resource.push((input, d));
                known = true;
            }
            if !known {
                return Err(ImportError::Unknown {
                    file: input.name.clone(),
                });
            }
        }
        for (input, d) in per_resource {
            aws.place(&input.name, d)?;
        }
        Ok(aws)
    }

    /// Files the attributes or targets of `d` under the resource it describes.
    fn place(&mut self, file: &str, d: Describe) -> Result<(), ImportError> {
        let err = |message: String| ImportError::Resource {
            file: file.to_owned(),
            message,
        };
        // `COMMAND.NAME.json`, if the file is named so.
        let stem = Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or_default();
        let (command, name) = stem.split_once('.').unwrap_or((stem, ""));
        let group_arn = |aws: &Aws| -> Result<String, ImportError> {
            if let Some(arn) = &d.target_group_arn {
                return match aws.target_groups.iter().any(|g| &g.target_group_arn == arn) {
                    true => Ok(arn.clone()),
                    false => Err(err(format!(
                        "target group {arn} is in no describe-target-groups output"
                    ))),
                };
            }
            aws.target_groups
                .iter()
                .find(|g| g.target_group_name == name)
                .map(|g| g.target_group_arn.clone())
                .ok_or_else(|| {
                    err(format!(
                        "no target group named {name:?} in the describe-target-groups output"
                    ))
                })
        };
        let naming = "say which resource it describes: add \"TargetGroupArn\", \
                      \"LoadBalancerArn\" or \"ListenerArn\" to its JSON, or name it \
                      COMMAND.NAME.json (describe-target-health.web.json)";
        if let Some(targets) = d.target_health_descriptions.clone() {
            if d.target_group_arn.is_none() && command != HEALTH_FILE {
                return Err(err(naming.to_owned()));
            }
            let arn = group_arn(self)?;
            self.health.entry(arn).or_default().extend(targets);
        }
        if let Some(attributes) = d.attributes.clone() {
            let by_name = d.load_balancer_arn.is_none() && d.listener_arn.is_none();
            let group =
                d.target_group_arn.is_some() || (by_name && command == GROUP_ATTRIBUTES_FILE);
            let listener =
                d.listener_arn.is_some() || (by_name && command == LISTENER_ATTRIBUTES_FILE);
            if group {
                let arn = group_arn(self)?;
                self.group_attributes
                    .entry(arn)
                    .or_default()
                    .extend(attributes);
            } else if listener {
                // `LB.ID`: the load balancer's name and the listener ARN's last part.
                let (lb, id) = name.split_once('.').unwrap_or((name, ""));
                let arn = self
                    .listeners
                    .iter()
                    .find(|l| match &d.listener_arn {
                        Some(arn) => &l.listener_arn == arn,
                        None => {
                            l.listener_arn.split('/').nth(2) == Some(lb)
                                && arn_id(&l.listener_arn) == id
                        }
                    })
                    .map(|l| l.listener_arn.clone())
                    .ok_or_else(|| {
                        err(format!(
                            "no listener {} in the describe-listeners output",
                            d.listener_arn.as_deref().unwrap_or(name)
                        ))
                    })?;
                self.listener_attributes
                    .entry(arn)
                    .or_default()
                    .extend(attributes);
            } else if d.load_balancer_arn.is_some() || command == LB_ATTRIBUTES_FILE {
                let arn = self
                    .load_balancers
                    .iter()
                    .find(|lb| match &d.load_balancer_arn {
                        Some(arn) => &lb.load_balancer_arn == arn,
                        None => lb.load_balancer_name == name,
                    })
                    .map(|lb| lb.load_balancer_arn.clone())
                    .ok_or_else(|| {
                        err(format!(
                            "no load balancer {} in the describe-load-balancers output",
                            d.load_balancer_arn.as_deref().unwrap_or(name)
                        ))
                    })?;
                self.lb_attributes
                    .entry(arn)
                    .or_default()
                    .extend(attributes);
            } else {
                return Err(err(naming.to_owned()));
            }
        }
        Ok(())
    }

    fn load_balancer(&self, arn: &str) -> Option<&LoadBalancer> {
        self.load_balancers
            .iter()
            .find(|lb| lb.load_balancer_arn == arn)
    }
}

/// A rule's listener: `...:listener-rule/app/lb/ID/LISTENER/RULE` → `...:listener/app/lb/ID/LISTENER`.
fn listener_of_rule(rule_arn: &str) -> String {
    let arn = rule_arn.replacen(":listener-rule/", ":listener/", 1);
    match arn.rsplit_once('/') {
        Some((listener, _)) => listener.to_owned(),
        None => arn,
    }
}

/// The last part of an ARN: a certificate's ID, a name.
fn arn_id(arn: &str) -> &str {
    arn.rsplit(['/', ':']).next().unwrap_or(arn)
}

// ---------------------------------------------------------------------------------------------
// Attributes.

/// AWS attributes whose value is what xlb does anyway: left out without a finding.
pub const SAME_AS_XLB: &[(&str, &str)] = &[
    ("deletion_protection.enabled", "false"),
    ("access_logs.s3.enabled", "false"),
    ("connection_logs.s3.enabled", "false"),
    ("health_check_logs.s3.enabled", "false"),
    ("routing.http2.enabled", "true"),
    ("waf.fail_open.enabled", "false"),
    ("zonal_shift.config.enabled", "false"),
    // xlb has no DNS name to route.
    ("dns_record.client_routing_policy", "any_availability_zone"),
    (
        "deregistration_delay.connection_termination.enabled",
        "false",
    ),
    // Tunnels and DSR keep the client's address.
    ("preserve_client_ip.enabled", "true"),
    ("proxy_protocol_v2.enabled", "false"),
    // xlb keeps an unhealthy target's established flows.
    (
        "target_health_state.unhealthy.connection_termination.enabled",
        "false",
    ),
    (
        "target_health_state.unhealthy.draining_interval_seconds",
        "0",
    ),
    // xlb fails open when no target is healthy, as one healthy target minimum does.
    (
        "target_group_health.dns_failover.minimum_healthy_targets.count",
        "1",
    ),
    (
        "target_group_health.dns_failover.minimum_healthy_targets.percentage",
        "off",
    ),
    (
        "target_group_health.unhealthy_state_routing.minimum_healthy_targets.count",
        "1",
    ),
    (
        "target_group_health.unhealthy_state_routing.minimum_healthy_targets.percentage",
        "off",
    ),
    ("lambda.multi_value_headers.enabled", "false"),
];

/// Whether AWS's `key = value` is what xlb does without it.
fn same_as_xlb(key: &str, value: &str) -> bool {
    value.is_empty() || SAME_AS_XLB.contains(&(key, value))
}

/// The attributes of `aws` that `table` takes in `tier`, as the file writes them (only those
/// that differ from xlb's default); the others, described, in `left`.
fn map_attributes<'a>(
    aws: impl IntoIterator<Item = (&'a str, &'a str)>,
    table: &'static [Attribute],
    tier: Tier,
    left: &mut Vec<String>,
) -> InlineTable {
    let mut out = InlineTable::new();
    for (key, value) in aws {
        if value.is_empty() {
            continue;
        }
        match attribute::find(table, tier, key) {
            Some(a) => match a.check(value) {
                Ok(()) if value == a.default => {}
                Ok(()) => {
                    out.insert(key, value.into());
                }
                Err(why) => left.push(format!("{key} = {value:?} ({why})")),
            },
            None if same_as_xlb(key, value) => {}
            None => left.push(format!("{key} = {value:?}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// A target group as written, for the actions and listeners that name it.
struct Written {
    name: String,
    l7: bool,
    protocol: String,
    /// `proxy_protocol_v2.enabled`: its TCP listeners are served by xlb's proxy.
    proxy_protocol: bool,
    /// `stickiness.type = "source_ip"`, which only listeners forwarded in XDP keep.
    source_ip: bool,
}

#[derive(Default)]
struct Writer {
    findings: Vec<Finding>,
    summary: Summary,
    /// Target group ARN → the group written, or why none was.
    groups: BTreeMap<String, Result<Written, String>>,
    /// Comments for what was left out whole, at the end of the file.
    left_out: String,
    /// VIPs of NLBs whose addresses the input does not give: 192.0.2.1, .2, ...
    placeholders: u8,
}

/// The HTTP listeners' address: every address of the node, as an ALB's listener takes every
/// request to the load balancer.
const HTTP_ADDRESS: &str = "0.0.0.0";
/// What a rule or default action that cannot be imported as it is answers.
const FAIL_CLOSED_STATUS: i64 = 503;
/// Candidate IPv4 tunnel source prefixes (/16), the default first.
const TUNNEL_SOURCES: &[Ipv4Addr] = &[
    Ipv4Addr::new(172, 16, 0, 0),
    Ipv4Addr::new(100, 127, 0, 0),
    Ipv4Addr::new(10, 255, 0, 0),
    Ipv4Addr::new(198, 19, 0, 0),
];

impl Writer {
    /// Records a finding and returns its comment lines for the config.
    fn find(&mut self, level: Level, resource: &str, message: impl Into<String>) -> String {
        let f = Finding {
            level,
            resource: resource.to_owned(),
            message: message.into(),
        };
        let text = comment(&f);
        self.findings.push(f);
        text
    }

    /// Records a finding for something left out whole: its comment goes to the end of the file.
    fn leave_out(&mut self, level: Level, resource: &str, message: impl Into<String>) {
        let c = self.find(level, resource, message);
        self.left_out += &c;
    }

    fn write(mut self, aws: &Aws, files: &[&str]) -> Imported {
        let mut doc = DocumentMut::new();
        let groups = self.target_groups(aws);
        let mut l4 = ArrayOfTables::new();
        let mut l7 = ArrayOfTables::new();
        let mut bound = BTreeSet::new();
        let mut lbs: Vec<&LoadBalancer> = aws.load_balancers.iter().collect();
        // Listeners whose load balancer is not in the input still come in, last.
        let orphan = LoadBalancer::default();
        if aws
            .listeners
            .iter()
            .any(|l| aws.load_balancer(&l.load_balancer_arn).is_none())
        {
            lbs.push(&orphan);
        }
        for lb in lbs {
            self.load_balancer(aws, lb, &mut l4, &mut l7, &mut bound);
        }
        let node = self.node(&groups, &l4);
        doc.insert("node", Item::Table(node));
        self.summary.target_groups = groups.len();
        self.summary.listeners = l4.len();
        self.summary.http_listeners = l7.len();
        if !groups.is_empty() {
            doc.insert("target_groups", Item::ArrayOfTables(groups));
        }
        if !l4.is_empty() {
            doc.insert("listeners", Item::ArrayOfTables(l4));
        }
        if !l7.is_empty() {
            doc.insert("http_listeners", Item::ArrayOfTables(l7));
        }
        let mut header = format!(
            "# Imported by `xlb import aws` from {}.\n\
             # TODO(import) marks what needs you before this config does what the AWS setup did;\n\
             # NOTE(import) what differs. Then: xlb check --config THIS_FILE\n\n",
            files.join(", ")
        );
        header = wrap_comment_lines(&header);
        doc.decor_mut().set_prefix(header);
        if !self.left_out.is_empty() {
            doc.set_trailing(format!("\n# Not imported:\n{}", self.left_out));
        }
        let mut config = doc.to_string();
        if !config.ends_with('\n') {
            config.push('\n');
        }
        Imported {
            config,
            findings: self.findings,
            summary: self.summary,
        }
    }

    /// `[node]`: the interface is the operator's to name; the tunnel sources stay clear of
    /// every L4 address.
    fn node(&mut self, groups: &ArrayOfTables, l4: &ArrayOfTables) -> Table {
        let mut node = Table::new();
        let mut prefix = self.find(
            Level::Todo,
            "node",
            "interface = \"eth0\" is a placeholder: name the NIC the XDP program attaches to",
        );
        node.insert("interface", "eth0".into());
        // Every IPv4 address an L4 listener or its targets has.
        let l4_groups: BTreeSet<&str> = l4
            .iter()
            .filter_map(|l| l.get("default_action")?.get("target_group")?.as_str())
            .collect();
        let mut addresses: Vec<Ipv4Addr> = l4
            .iter()
            .filter_map(|l| l.get("address")?.as_str()?.parse().ok())
            .collect();
        let mut zones = BTreeSet::new();
        for g in groups.iter() {
            let Some(targets) = g.get("targets").and_then(|t| t.as_array()) else {
                continue;
            };
            for t in targets.iter().filter_map(|t| t.as_inline_table()) {
                if let Some(z) = t.get("zone").and_then(|z| z.as_str()) {
                    zones.insert(z.to_owned());
                }
                let in_l4 = g
                    .get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| l4_groups.contains(n));
                if let Some(a) = t.get("id").and_then(|a| a.as_str()?.parse().ok())
                    && in_l4
                {
                    addresses.push(a);
                }
            }
        }
        let clear = |p: &Ipv4Addr| !addresses.iter().any(|a| a.octets()[..2] == p.octets()[..2]);
        match TUNNEL_SOURCES.iter().find(|p| clear(p)) {
            Some(p) if *p == TUNNEL_SOURCES[0] => {}
            Some(p) => {
                prefix += &self.find(
                    Level::Note,
                    "node",
                    format!(
                        "tunnel_source_v4 = \"{p}\": the default 172.16.0.0/16 holds addresses \
                         of the imported listeners or targets; pick a /16 no host on the path uses"
                    ),
                );
                node.insert("tunnel_source_v4", p.to_string().into());
            }
            None => {
                prefix += &self.find(
                    Level::Todo,
                    "node",
                    "tunnel_source_v4: every candidate /16 holds an imported address; set one \
                     no host on the path uses",
                );
            }
        }
        if !zones.is_empty() {
            prefix += &self.find(
                Level::Note,
                "node",
                format!(
                    "targets are in zones {}: set node.zone to this node's, so that groups \
                     without cross-zone load balancing prefer its targets",
                    zones.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        node.decor_mut().set_prefix(prefix);
        node
    }

    // --- target groups -----------------------------------------------------------------------

    fn target_groups(&mut self, aws: &Aws) -> ArrayOfTables {
        let mut out = ArrayOfTables::new();
        for g in &aws.target_groups {
            let resource = format!("target group {:?}", g.target_group_name);
            match self.target_group(aws, g, &resource) {
                Ok(t) => out.push(t),
                Err(why) => {
                    self.leave_out(Level::Todo, &resource, format!("{why}; not imported"));
                    self.left_out += &format!("#   {}\n", g.target_group_arn);
                    self.groups.insert(g.target_group_arn.clone(), Err(why));
                }
            }
        }
        out
    }

    fn target_group(
        &mut self,
        aws: &Aws,
        g: &TargetGroup,
        resource: &str,
    ) -> Result<Table, String> {
        match g.target_type.as_deref() {
            Some("lambda") => {
                return Err(
                    "its targets are Lambda functions: xlb forwards to addresses only".into(),
                );
            }
            Some("alb") => {
                return Err(
                    "its target is an Application Load Balancer: import that ALB's \
                            listeners as this node's http_listeners instead"
                        .into(),
                );
            }
            _ => {}
        }
        let protocol = g.protocol.as_deref().unwrap_or("");
        let l7 = match protocol {
            "HTTP" | "HTTPS" => true,
            "TCP" | "UDP" | "TCP_UDP" | "TLS" => false,
            other => {
                return Err(format!(
                    "protocol {other}: xlb's target groups are TCP, UDP, TCP_UDP, TLS, HTTP or \
                     HTTPS"
                ));
            }
        };
        let Some(port) = g.port else {
            return Err("no port".into());
        };
        let mut attrs: Vec<(&str, &str)> = aws
            .group_attributes
            .get(&g.target_group_arn)
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        let proxied = !l7 && served_by_proxy(aws, g, &attrs);
        if proxied {
            // What the proxy does: it connects from the node's address.
            attrs.retain(|a| *a != ("preserve_client_ip.enabled", "false"));
        }
        let mut prefix = String::new();
        let mut t = Table::new();
        t.insert("name", g.target_group_name.as_str().into());
        t.insert("protocol", protocol.into());
        t.insert("port", i64::from(port).into());
        if let Some(v) = g
            .protocol_version
            .as_deref()
            .filter(|v| *v != "HTTP1" && l7)
        {
            t.insert("protocol_version", v.into());
        }
        // Targets.
        let mut targets = Array::new();
        let mut pending = String::new();
        let mut other_ports = BTreeSet::new();
        let descriptions = aws.health.get(&g.target_group_arn);
        if descriptions.is_none() {
            prefix += &self.find(
                Level::Todo,
                resource,
                format!(
                    "no {HEALTH_FILE} output for it: written without targets; register them or \
                     add the file"
                ),
            );
        }
        for d in descriptions.into_iter().flatten() {
            let id = &d.target.id;
            if d.target_health.state == "draining" {
                pending += &self.find(
                    Level::Note,
                    resource,
                    format!("target {id} is draining (being deregistered): not imported"),
                );
                continue;
            }
            let Ok(addr) = id.parse::<IpAddr>() else {
                let port = d.target.port.map(|p| format!(":{p}")).unwrap_or_default();
                pending += &self.find(
                    Level::Todo,
                    resource,
                    format!(
                        "target {id}{port} is an instance ID: xlb's targets are addresses; add \
                         the instance's as {{ id = \"ADDRESS\" }}"
                    ),
                );
                continue;
            };
            let mut target = InlineTable::new();
            target.insert("id", addr.to_string().into());
            if let Some(p) = d.target.port.filter(|p| *p != port) {
                // The L7 tier and the proxy connect to each target's own port.
                if l7 || proxied {
                    target.insert("port", i64::from(p).into());
                } else {
                    other_ports.insert(p);
                }
            }
            if let Some(z) = d
                .target
                .availability_zone
                .as_deref()
                .filter(|z| *z != "all")
            {
                target.insert("zone", z.into());
            }
            let mut v = Value::InlineTable(target);
            v.decor_mut()
                .set_prefix(format!("\n{}  ", indent_comments(&pending)));
            pending.clear();
            targets.push_formatted(v);
            self.summary.targets += 1;
        }
        if !other_ports.is_empty() {
            prefix += &self.find(
                Level::Note,
                resource,
                format!(
                    "targets registered on ports {}: xlb's L4 tier forwards packets as they \
                     came, to the listener's port; make the targets listen there",
                    join(other_ports.iter())
                ),
            );
        }
        if !targets.is_empty() || !pending.is_empty() {
            targets.set_trailing_comma(true);
            targets.set_trailing(format!("\n{}", indent_comments(&pending)));
        }
        t.insert("targets", targets.into());
        // Attributes.
        let mut left = Vec::new();
        let mut table = if l7 {
            let (special, rest): (Vec<_>, Vec<_>) = attrs
                .iter()
                .copied()
                .partition(|(k, _)| *k == "load_balancing.cross_zone.enabled");
            for (_, v) in special {
                if v == "false" {
                    left.push(format!(
                        "load_balancing.cross_zone.enabled = {v:?} (xlb's L7 tier has no zones)"
                    ));
                }
            }
            map_attributes(rest, attribute::TARGET_GROUP, Tier::L7, &mut left)
        } else {
            self.l4_attributes(aws, g, &attrs, &mut left)
        };
        if proxied {
            prefix += &self.proxied_group(resource, &attrs, &mut table);
        }
        let has = |k: &str, v: &str| table.get(k).and_then(|x| x.as_str()) == Some(v);
        let written = Written {
            name: g.target_group_name.clone(),
            l7,
            protocol: protocol.to_owned(),
            proxy_protocol: has("proxy_protocol_v2.enabled", "true"),
            source_ip: has("stickiness.type", "source_ip"),
        };
        if !left.is_empty() {
            prefix += &self.find(
                Level::Note,
                resource,
                format!("attributes xlb lacks, not imported: {}", left.join(", ")),
            );
        }
        if !table.is_empty() {
            table.sort_values();
            t.insert("attributes", table.into());
        }
        // Health check.
        let hc = self.health_check(g, l7, resource, &mut prefix);
        t.insert("health_check", hc.into());
        t.decor_mut().set_prefix(format!("\n{prefix}"));
        self.groups.insert(g.target_group_arn.clone(), Ok(written));
        Ok(t)
    }

    /// What differs for a group only xlb's proxy serves: it picks targets round robin, so
    /// source-IP stickiness is dropped from `table`, and it connects from the node's address.
    /// Returns the findings' comments.
    fn proxied_group(
        &mut self,
        resource: &str,
        attrs: &[(&str, &str)],
        table: &mut InlineTable,
    ) -> String {
        let mut prefix = String::new();
        if table.remove("stickiness.type").is_some() {
            prefix += &self.find(
                Level::Note,
                resource,
                "stickiness.type = \"source_ip\" not imported: xlb's proxy, which serves this \
                 group's listeners (TLS, or PROXY v2), picks targets round robin",
            );
        }
        if attrs.contains(&("preserve_client_ip.enabled", "true")) {
            let header = match attrs.contains(&("proxy_protocol_v2.enabled", "true")) {
                true => "the PROXY v2 header carries the client's",
                false => "proxy_protocol_v2.enabled = \"true\" would pass the client's",
            };
            prefix += &self.find(
                Level::Note,
                resource,
                format!(
                    "preserve_client_ip.enabled = \"true\": xlb's proxy, which serves this \
                     group's listeners (TLS, or PROXY v2), connects to the targets from the \
                     node's address; {header}"
                ),
            );
        }
        prefix
    }

    /// An NLB target group's attributes: stickiness and cross-zone as xlb names them.
    fn l4_attributes(
        &mut self,
        aws: &Aws,
        g: &TargetGroup,
        attrs: &[(&str, &str)],
        left: &mut Vec<String>,
    ) -> InlineTable {
        let get = |k: &str| attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let mut rest = Vec::new();
        let mut out = InlineTable::new();
        for &(k, v) in attrs {
            match k {
                "stickiness.enabled" | "stickiness.type" => {}
                "load_balancing.cross_zone.enabled" => {
                    // The load balancer's attribute, which NLB groups inherit by default.
                    let v = if v == "use_load_balancer_configuration" {
                        g.load_balancer_arns
                            .iter()
                            .filter_map(|arn| aws.lb_attributes.get(arn))
                            .flatten()
                            .find(|kv| kv.key == k)
                            .map_or("false", |kv| kv.value.as_str())
                    } else {
                        v
                    };
                    rest.push((k, v));
                }
                _ => rest.push((k, v)),
            }
        }
        if get("stickiness.enabled") == Some("true") {
            match get("stickiness.type").unwrap_or("source_ip") {
                "source_ip" => {
                    out.insert("stickiness.type", "source_ip".into());
                }
                other => left.push(format!("stickiness.type = {other:?}")),
            }
        }
        let mapped = map_attributes(rest, attribute::TARGET_GROUP, Tier::L4, left);
        for (k, v) in mapped.iter() {
            out.insert(k, v.clone());
        }
        out
    }

    fn health_check(
        &mut self,
        g: &TargetGroup,
        l7: bool,
        resource: &str,
        prefix: &mut String,
    ) -> InlineTable {
        let mut hc = InlineTable::new();
        if g.health_check_enabled == Some(false) {
            hc.insert("enabled", false.into());
            return hc;
        }
        let protocol = match g.health_check_protocol.as_deref() {
            Some(p @ ("TCP" | "HTTP" | "HTTPS")) => p,
            Some(other) => {
                let default = if l7 { "HTTP" } else { "TCP" };
                *prefix += &self.find(
                    Level::Note,
                    resource,
                    format!(
                        "health check protocol {other}: xlb checks with TCP, HTTP or HTTPS; \
                         {default} is used"
                    ),
                );
                default
            }
            None if l7 => "HTTP",
            None => "TCP",
        };
        hc.insert("protocol", protocol.into());
        if let Some(port) = g
            .health_check_port
            .as_deref()
            .and_then(|p| p.parse::<u16>().ok())
        {
            hc.insert("port", i64::from(port).into());
        }
        if protocol != "TCP"
            && let Some(path) = g.health_check_path.as_deref().filter(|p| *p != "/")
        {
            hc.insert("path", path.into());
        }
        let numbers = [
            ("interval_seconds", g.health_check_interval_seconds, 30),
            ("timeout_seconds", g.health_check_timeout_seconds, 5),
            ("healthy_threshold", g.healthy_threshold_count, 5),
            ("unhealthy_threshold", g.unhealthy_threshold_count, 2),
        ];
        for (key, value, default) in numbers {
            if let Some(v) = value.filter(|v| *v != default) {
                hc.insert(key, i64::from(v).into());
            }
        }
        if let Some(m) = &g.matcher {
            if let Some(code) = m.http_code.as_deref().filter(|c| *c != "200")
                && protocol != "TCP"
            {
                hc.insert("matcher", code.into());
            }
            if let Some(code) = &m.grpc_code {
                *prefix += &self.find(
                    Level::Note,
                    resource,
                    format!(
                        "health check matcher GrpcCode {code:?}: xlb matches HTTP status codes; \
                         checks expect 200"
                    ),
                );
            }
        }
        hc
    }

    // --- load balancers and listeners --------------------------------------------------------

    fn load_balancer(
        &mut self,
        aws: &Aws,
        lb: &LoadBalancer,
        l4: &mut ArrayOfTables,
        l7: &mut ArrayOfTables,
        bound: &mut BTreeSet<u16>,
    ) {
        let mut listeners: Vec<&Listener> = aws
            .listeners
            .iter()
            .filter(|l| match lb.load_balancer_arn.is_empty() {
                // The listeners of no load balancer of the input.
                true => aws.load_balancer(&l.load_balancer_arn).is_none(),
                false => l.load_balancer_arn == lb.load_balancer_arn,
            })
            .collect();
        listeners.sort_by_key(|l| l.port);
        let name = match lb.load_balancer_name.as_str() {
            "" => "(not in the input)",
            n => n,
        };
        let lb_resource = format!("load balancer {name}");
        self.summary.load_balancers += usize::from(!lb.load_balancer_arn.is_empty());
        if lb.kind == "gateway" {
            self.leave_out(
                Level::Todo,
                &lb_resource,
                "a Gateway Load Balancer (GENEVE): xlb has none; not imported, nor its listeners",
            );
            return;
        }
        let attrs: Vec<(&str, &str)> = aws
            .lb_attributes
            .get(&lb.load_balancer_arn)
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        // ALB attributes become each HTTP listener's; NLB's cross-zone went to its groups.
        let mut left = Vec::new();
        let mut http_attributes = InlineTable::new();
        let alb = lb.kind == "application"
            || (lb.kind.is_empty() && listeners.iter().any(|l| l.protocol.starts_with("HTTP")));
        if alb {
            let renamed = attrs.iter().filter_map(|&(k, v)| match k {
                "connection_logs.s3.enabled" => Some(("connection_logs.enabled", v)),
                "load_balancing.cross_zone.enabled" if v == "true" => None,
                _ => Some((k, v)),
            });
            http_attributes =
                map_attributes(renamed, attribute::HTTP_LISTENER, Tier::L7, &mut left);
            http_attributes.sort_values();
        } else {
            for &(k, v) in &attrs {
                if k != "load_balancing.cross_zone.enabled" && !same_as_xlb(k, v) {
                    left.push(format!("{k} = {v:?}"));
                }
            }
        }
        let mut lb_prefix = String::new();
        if !left.is_empty() {
            lb_prefix += &self.find(
                Level::Note,
                &lb_resource,
                format!("attributes xlb lacks, not imported: {}", left.join(", ")),
            );
        }
        // One address for both kinds: an XDP VIP must not be the node's, a proxy's socket must.
        let (proxied, xdp): (Vec<&Listener>, Vec<&Listener>) = listeners
            .iter()
            .filter(|l| matches!(l.protocol.as_str(), "TCP" | "UDP" | "TCP_UDP" | "TLS"))
            .partition(|l| self.proxied(l));
        if !proxied.is_empty() && !xdp.is_empty() {
            let ports =
                |ls: &[&Listener]| join(ls.iter().map(|l| format!("{}:{}", l.protocol, l.port)));
            lb_prefix += &self.find(
                Level::Todo,
                &lb_resource,
                format!(
                    "its listeners share one address, but xlb forwards {} in XDP, whose VIP must \
                     not be an address of the node, and serves {} with its proxy, whose socket \
                     binds an address of the node: give one kind another address",
                    ports(&xdp),
                    ports(&proxied)
                ),
            );
        }
        // The load balancer's findings go with its first listener.
        let mut lb_prefix = Some(lb_prefix);
        let mut vip = None;
        let mut tunnel_noted = false;
        for l in listeners {
            let resource = format!("listener {name} {}:{}", l.protocol, l.port);
            let mut prefix = lb_prefix.take().unwrap_or_default();
            match l.protocol.as_str() {
                "HTTP" | "HTTPS" => {
                    if !bound.insert(l.port) {
                        self.leave_out(
                            Level::Todo,
                            &resource,
                            format!(
                                "another load balancer's listener already has {HTTP_ADDRESS}:{}: \
                                 not imported; give one of them an address of its own",
                                l.port
                            ),
                        );
                        continue;
                    }
                    let t = self.http_listener(aws, l, &resource, &http_attributes, prefix);
                    l7.push(t);
                }
                "TCP" | "UDP" | "TCP_UDP" | "TLS" => {
                    let vip = *vip.get_or_insert_with(|| self.vip(lb, &mut prefix));
                    match self.l4_listener(aws, l, vip, &resource, &mut prefix) {
                        Ok((mut t, proxied)) => {
                            if !tunnel_noted && !proxied {
                                tunnel_noted = true;
                                prefix += &self.find(
                                    Level::Note,
                                    &lb_resource,
                                    "its XDP listeners forward with xlb's default, forwarding \
                                     = \"tunnel\": targets decapsulate (`xlb attach --program \
                                     decap`) and answer clients directly; \"dsr\" needs each \
                                     target's MAC on one L2 segment",
                                );
                            }
                            t.decor_mut().set_prefix(format!("\n{prefix}"));
                            l4.push(t);
                        }
                        Err(why) => {
                            self.left_out += &prefix;
                            self.leave_out(Level::Todo, &resource, why);
                        }
                    }
                }
                other => {
                    self.left_out += &prefix;
                    self.leave_out(
                        Level::Todo,
                        &resource,
                        format!(
                            "protocol {other}: xlb's listeners are TCP, UDP, TCP_UDP, TLS (L4) \
                             or HTTP, HTTPS (L7); not imported"
                        ),
                    );
                }
            }
        }
    }

    /// Whether xlb's proxy serves `l` once imported: a TLS listener (unless its group's
    /// stickiness keeps it out), or a TCP one to a PROXY v2 group.
    fn proxied(&self, l: &Listener) -> bool {
        let group = forward_groups(&l.default_actions)
            .first()
            .and_then(|(arn, _)| self.groups.get(arn)?.as_ref().ok());
        match l.protocol.as_str() {
            "TLS" => group.is_some_and(|g| !g.source_ip),
            "TCP" => group.is_some_and(|g| g.proxy_protocol),
            _ => false,
        }
    }

    /// An NLB's VIP: its first address in the input, else a placeholder.
    fn vip(&mut self, lb: &LoadBalancer, prefix: &mut String) -> IpAddr {
        let resource = format!("load balancer {}", lb.load_balancer_name);
        let addresses: Vec<IpAddr> = lb
            .availability_zones
            .iter()
            .flat_map(|z| &z.load_balancer_addresses)
            .flat_map(|a| [a.ip_address.or(a.private_ipv4_address), a.ipv6_address])
            .flatten()
            .collect();
        if let Some(first) = addresses.first() {
            if addresses.len() > 1 {
                *prefix += &self.find(
                    Level::Note,
                    &resource,
                    format!(
                        "AWS gives it one address per zone ({}); its listeners take {first}: \
                         add listeners for the others if clients use them",
                        join(addresses.iter())
                    ),
                );
            }
            return *first;
        }
        self.placeholders += 1;
        let vip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, self.placeholders));
        *prefix += &self.find(
            Level::Todo,
            &resource,
            format!(
                "the input gives none of its addresses (AWS serves it as {}): {vip} is a \
                 placeholder; write the VIP this node serves",
                if lb.dns_name.is_empty() {
                    "a DNS name"
                } else {
                    &lb.dns_name
                }
            ),
        );
        vip
    }

    /// An NLB listener: TCP, UDP and TCP_UDP ones forwarded in XDP, TLS ones and TCP ones to a
    /// PROXY v2 group served by xlb's proxy (the `bool`). Findings go to `prefix`, once nothing
    /// can fail.
    fn l4_listener(
        &mut self,
        aws: &Aws,
        l: &Listener,
        vip: IpAddr,
        resource: &str,
        prefix: &mut String,
    ) -> Result<(Table, bool), String> {
        let arns = forward_groups(&l.default_actions);
        let [(arn, _)] = arns.as_slice() else {
            return Err(format!(
                "default action {}: xlb's L4 listeners forward to one target group; not imported",
                kinds(&l.default_actions)
            ));
        };
        let group = match self.groups.get(arn.as_str()) {
            Some(Ok(g)) if !g.l7 => g,
            Some(Ok(g)) => {
                return Err(format!("forwards to HTTP group {:?}; not imported", g.name));
            }
            Some(Err(why)) => {
                return Err(format!(
                    "forwards to target group {}, which is not imported ({why}); not imported",
                    arn_id_name(arn)
                ));
            }
            None => {
                return Err(format!(
                    "forwards to target group {arn}, which no describe-target-groups output \
                     describes; not imported"
                ));
            }
        };
        let tls = l.protocol == "TLS";
        if tls && !matches!(group.protocol.as_str(), "TCP" | "TLS") {
            return Err(format!(
                "forwards to {} group {:?}: a TLS listener forwards to a TCP or TLS group; not \
                 imported",
                group.protocol, group.name
            ));
        }
        if tls && group.source_ip {
            return Err(format!(
                "forwards to {:?}, whose stickiness.type = \"source_ip\" its listeners forwarded \
                 in XDP keep, while xlb's proxy, which serves TLS listeners, picks targets round \
                 robin; not imported: give it a group of its own without stickiness",
                group.name
            ));
        }
        let (name, proxy_protocol) = (group.name.clone(), group.proxy_protocol);
        let proxied = tls || proxy_protocol;
        let mut t = Table::new();
        t.insert("address", vip.to_string().into());
        t.insert("port", i64::from(l.port).into());
        t.insert("protocol", l.protocol.as_str().into());
        if proxied {
            *prefix += &self.find(
                Level::Note,
                resource,
                format!(
                    "served by xlb's proxy (TLS, or PROXY v2 toward its group), whose socket \
                     binds {}: that address must be the node's own (on lo or its interface), \
                     unlike an XDP VIP",
                    SocketAddr::new(vip, l.port)
                ),
            );
        }
        if tls {
            let certs = self.certificates(l, resource, prefix);
            t.insert("certificates", certs.into());
            let (policy, differs) = l.ssl_policy.as_deref().map(ssl_policy).unwrap_or_default();
            if let Some(p) = policy {
                t.insert("ssl_policy", p.into());
            }
            if let Some(why) = differs {
                *prefix += &self.find(Level::Note, resource, why);
            }
            match l.alpn_policy.first().map(String::as_str) {
                None | Some("None") => {}
                Some(p @ ("HTTP1Only" | "HTTP2Only" | "HTTP2Optional" | "HTTP2Preferred")) => {
                    t.insert("alpn_policy", p.into());
                }
                Some(other) => {
                    *prefix += &self.find(
                        Level::Note,
                        resource,
                        format!("ALPN policy {other}: xlb has no such policy; none is offered"),
                    );
                }
            }
        }
        // Listener attributes: the idle timeout is the proxy's, on TCP listeners only.
        let mut left = Vec::new();
        let attrs = aws
            .listener_attributes
            .get(&l.listener_arn)
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()));
        let mut attributes = map_attributes(attrs, attribute::LISTENER, Tier::L4, &mut left);
        if !(l.protocol == "TCP" && proxy_protocol) {
            let why = match l.protocol.as_str() {
                "TCP" => {
                    "forwarded in XDP, where the target's TCP stack owns the connection and xlb \
                     closes no idle one"
                }
                "TLS" => "NLB keeps TLS listeners at 350 s",
                _ => "only TCP listeners take it",
            };
            for (k, v) in attributes.iter() {
                left.push(format!("{k} = {v} ({why})"));
            }
            attributes = InlineTable::new();
        }
        if !left.is_empty() {
            *prefix += &self.find(
                Level::Note,
                resource,
                format!("attributes xlb lacks, not imported: {}", left.join(", ")),
            );
        }
        if !attributes.is_empty() {
            t.insert("attributes", attributes.into());
        }
        let mut action = InlineTable::new();
        action.insert("type", "forward".into());
        action.insert("target_group", name.into());
        t.insert("default_action", action.into());
        Ok((t, proxied))
    }

    /// A TLS or HTTPS listener's certificates: files to provide for its ACM ones. Findings go
    /// to `prefix`.
    fn certificates(&mut self, l: &Listener, resource: &str, prefix: &mut String) -> Array {
        let mut certs = Array::new();
        let mut ordered: Vec<&Certificate> = l.certificates.iter().collect();
        ordered.sort_by_key(|c| c.is_default != Some(true));
        for c in ordered {
            let id = arn_id(&c.certificate_arn);
            let (cert, key) = (format!("certs/{id}.pem"), format!("certs/{id}.key"));
            *prefix += &self.find(
                Level::Todo,
                resource,
                format!(
                    "certificate {}: xlb reads PEM files; put its chain in {cert} and its key in \
                     {key} (beside this file), or name your own",
                    c.certificate_arn
                ),
            );
            let mut files = InlineTable::new();
            files.insert("cert", cert.into());
            files.insert("key", key.into());
            certs.push(files);
        }
        if certs.is_empty() {
            *prefix += &self.find(
                Level::Todo,
                resource,
                "no certificate in the input: write certificates = [{ cert, key }]",
            );
        }
        *prefix += &self.find(
            Level::Note,
            resource,
            "describe-listeners prints only the default certificate: add the others \
             (describe-listener-certificates) for SNI",
        );
        certs
    }

    fn http_listener(
        &mut self,
        aws: &Aws,
        l: &Listener,
        resource: &str,
        attributes: &InlineTable,
        mut prefix: String,
    ) -> Table {
        let mut t = Table::new();
        t.insert("address", HTTP_ADDRESS.into());
        t.insert("port", i64::from(l.port).into());
        t.insert("protocol", l.protocol.as_str().into());
        if l.protocol == "HTTPS" {
            let certs = self.certificates(l, resource, &mut prefix);
            t.insert("certificates", certs.into());
            if let Some(policy) = &l.ssl_policy {
                prefix += &self.find(
                    Level::Note,
                    resource,
                    format!(
                        "security policy {policy}: xlb's TLS is rustls's (TLS 1.2 and 1.3, its \
                         safe cipher suites)"
                    ),
                );
            }
            if let Some(m) = l.mutual_authentication.as_ref().filter(|m| m.mode != "off") {
                prefix += &self.find(
                    Level::Todo,
                    resource,
                    format!(
                        "mutual TLS ({}): xlb does not ask clients for certificates",
                        m.mode
                    ),
                );
            }
        }
        if !attributes.is_empty() {
            t.insert("attributes", attributes.clone().into());
        }
        let lacks: Vec<String> = aws
            .listener_attributes
            .get(&l.listener_arn)
            .into_iter()
            .flatten()
            .filter(|kv| !same_as_xlb(&kv.key, &kv.value))
            .map(|kv| format!("{} = {:?}", kv.key, kv.value))
            .collect();
        if !lacks.is_empty() {
            prefix += &self.find(
                Level::Note,
                resource,
                format!(
                    "listener attributes xlb lacks, not imported: {}",
                    lacks.join(", ")
                ),
            );
        }
        let what = format!("{resource}, default action");
        let action = match self.action(&l.default_actions) {
            Ok(a) => a,
            Err((why, _)) => {
                prefix += &self.find(
                    Level::Todo,
                    &what,
                    format!("{why}: it answers {FAIL_CLOSED_STATUS} until you replace it"),
                );
                fail_closed(&why)
            }
        };
        t.insert("default_action", action.into());
        let mut rules = ArrayOfTables::new();
        let mut listed: Vec<&Rule> = aws
            .rules
            .get(&l.listener_arn)
            .into_iter()
            .flatten()
            .filter(|r| !r.is_default)
            .collect();
        listed.sort_by_key(|r| r.priority.parse::<u32>().unwrap_or(u32::MAX));
        for r in listed {
            if let Some(rule) = self.rule(r, resource) {
                rules.push(rule);
                self.summary.rules += 1;
            }
        }
        if !rules.is_empty() {
            t.insert("rules", Item::ArrayOfTables(rules));
        }
        t.decor_mut().set_prefix(format!("\n{prefix}"));
        t
    }

    fn rule(&mut self, r: &Rule, listener: &str) -> Option<Table> {
        let resource = format!("{listener}, rule {}", r.priority);
        let Ok(priority) = r.priority.parse::<u32>() else {
            self.leave_out(
                Level::Todo,
                &resource,
                format!("priority {:?} is not a number; not imported", r.priority),
            );
            return None;
        };
        let mut conditions = Array::new();
        for c in &r.conditions {
            match condition(c) {
                Ok(v) => conditions.push(v),
                Err(why) => {
                    self.leave_out(
                        Level::Todo,
                        &resource,
                        format!(
                            "{why}: without it the rule would match more requests; not imported"
                        ),
                    );
                    self.left_out += &format!("#   {}\n", r.rule_arn);
                    return None;
                }
            }
        }
        let mut prefix = String::new();
        let action = match self.action(&r.actions) {
            Ok(a) if r.transforms.is_empty() => a,
            result => {
                let (why, terminal) = match result {
                    Err(e) => e,
                    Ok(a) => (
                        "it rewrites the request (Transforms), xlb does not".into(),
                        Some(a.to_string()),
                    ),
                };
                let mut message =
                    format!("{why}: it answers {FAIL_CLOSED_STATUS} until you replace its action");
                if let Some(a) = terminal {
                    message += &format!("; AWS's last action, as xlb writes it: {a}");
                }
                prefix += &self.find(Level::Todo, &resource, message);
                fail_closed(&why)
            }
        };
        let mut t = Table::new();
        t.insert("priority", i64::from(priority).into());
        t.insert("conditions", conditions.into());
        let mut actions = Array::new();
        actions.push(action);
        t.insert("actions", actions.into());
        t.decor_mut().set_prefix(format!("\n{prefix}"));
        Some(t)
    }

    /// A listener's or rule's actions as xlb's one action; else why not, and the terminal
    /// action as xlb would write it when that one maps.
    fn action(&self, actions: &[Action]) -> Result<InlineTable, (String, Option<String>)> {
        let mut ordered: Vec<&Action> = actions.iter().collect();
        ordered.sort_by_key(|a| a.order.unwrap_or(u32::MAX));
        let Some((last, before)) = ordered.split_last() else {
            return Err(("no action".into(), None));
        };
        let terminal = self.terminal(last);
        if let Some(a) = before.first() {
            let what = match a.kind.as_str() {
                "authenticate-oidc" => {
                    let issuer = a
                        .authenticate_oidc_config
                        .as_ref()
                        .and_then(|c| c.get("Issuer")?.as_str().map(str::to_owned));
                    format!(
                        "it authenticates with OIDC{} before acting, xlb does not",
                        issuer.map(|i| format!(" ({i})")).unwrap_or_default()
                    )
                }
                "authenticate-cognito" => {
                    let pool = a
                        .authenticate_cognito_config
                        .as_ref()
                        .and_then(|c| c.get("UserPoolArn")?.as_str().map(str::to_owned));
                    format!(
                        "it authenticates with Cognito{} before acting, xlb does not",
                        pool.map(|p| format!(" ({p})")).unwrap_or_default()
                    )
                }
                other => format!("its action {other} runs first, xlb has none"),
            };
            return Err((what, terminal.ok().map(|t| t.to_string())));
        }
        terminal.map_err(|why| (why, None))
    }

    /// The terminal action (forward, redirect or fixed-response) as xlb writes it.
    fn terminal(&self, a: &Action) -> Result<InlineTable, String> {
        let mut out = InlineTable::new();
        out.insert("type", a.kind.as_str().into());
        match a.kind.as_str() {
            "forward" => {
                let groups = forward_groups(std::slice::from_ref(a));
                let mut written = Array::new();
                for (arn, weight) in &groups {
                    let name = match self.groups.get(arn.as_str()) {
                        Some(Ok(g)) if g.l7 => g.name.clone(),
                        Some(Ok(g)) => {
                            return Err(format!("it forwards to {:?}, not an HTTP group", g.name));
                        }
                        Some(Err(why)) => {
                            return Err(format!(
                                "it forwards to target group {}, which is not imported ({why})",
                                arn_id_name(arn)
                            ));
                        }
                        None => {
                            return Err(format!(
                                "it forwards to target group {arn}, which no \
                                 describe-target-groups output describes"
                            ));
                        }
                    };
                    let mut g = InlineTable::new();
                    g.insert("name", name.into());
                    if groups.len() > 1 || *weight != 1 {
                        g.insert("weight", i64::from(*weight).into());
                    }
                    written.push(g);
                }
                if written.is_empty() {
                    return Err("a forward to no target group".into());
                }
                out.insert("target_groups", written.into());
                let stickiness = a
                    .forward_config
                    .as_ref()
                    .and_then(|f| f.target_group_stickiness_config.as_ref())
                    .filter(|s| s.enabled);
                if let Some(s) = stickiness {
                    let mut st = InlineTable::new();
                    st.insert("enabled", true.into());
                    if let Some(d) = s.duration_seconds {
                        st.insert("duration_seconds", i64::from(d).into());
                    }
                    out.insert("stickiness", st.into());
                }
            }
            "redirect" => {
                let Some(r) = &a.redirect_config else {
                    return Err("a redirect without RedirectConfig".into());
                };
                let parts = [
                    ("protocol", &r.protocol, "#{protocol}"),
                    ("host", &r.host, "#{host}"),
                    ("port", &r.port, "#{port}"),
                    ("path", &r.path, "/#{path}"),
                    ("query", &r.query, "#{query}"),
                ];
                for (key, value, keep) in parts {
                    if let Some(v) = value.as_deref().filter(|v| *v != keep) {
                        out.insert(key, v.into());
                    }
                }
                out.insert("status_code", r.status_code.as_str().into());
            }
            "fixed-response" => {
                let Some(f) = &a.fixed_response_config else {
                    return Err("a fixed response without FixedResponseConfig".into());
                };
                let status: u16 = f
                    .status_code
                    .parse()
                    .map_err(|_| format!("fixed-response status {:?}", f.status_code))?;
                out.insert("status_code", i64::from(status).into());
                if let Some(ct) = &f.content_type {
                    out.insert("content_type", ct.as_str().into());
                }
                if let Some(body) = &f.message_body {
                    out.insert("message_body", body.as_str().into());
                }
            }
            other => return Err(format!("action {other}: xlb has none")),
        }
        Ok(out)
    }
}

/// Whether xlb's proxy serves every listener of NLB group `g`: a TLS group, one with PROXY v2
/// (`attrs`), or one only TLS listeners forward to.
fn served_by_proxy(aws: &Aws, g: &TargetGroup, attrs: &[(&str, &str)]) -> bool {
    if g.protocol.as_deref() == Some("TLS")
        || attrs.contains(&("proxy_protocol_v2.enabled", "true"))
    {
        return true;
    }
    let mut protocols = aws
        .listeners
        .iter()
        .filter(|l| {
            forward_groups(&l.default_actions)
                .iter()
                .any(|(arn, _)| *arn == g.target_group_arn)
        })
        .map(|l| l.protocol.as_str())
        .peekable();
    protocols.peek().is_some() && protocols.all(|p| p == "TLS")
}

/// An NLB security policy as xlb's `ssl_policy`: the name to write (none for xlb's default),
/// and what differs, if anything.
fn ssl_policy(policy: &str) -> (Option<&'static str>, Option<String>) {
    const TLS12: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";
    const TLS13: &str = "ELBSecurityPolicy-TLS13-1-3-2021-06";
    match policy {
        TLS12 => (None, None),
        TLS13 => (Some(TLS13), None),
        p if p.starts_with("ELBSecurityPolicy-TLS13-1-3-") => (
            Some(TLS13),
            Some(format!(
                "security policy {p}: imported as {TLS13}, TLS 1.3 with rustls's cipher suites"
            )),
        ),
        p => (
            None,
            Some(format!(
                "security policy {p}: imported as xlb's default, {TLS12}: TLS 1.2 and 1.3 with \
                 rustls's cipher suites (AEAD, ECDHE); clients that need an older version or \
                 another suite fail their handshake"
            )),
        ),
    }
}

/// The (target group ARN, weight) pairs of the forward among `actions`.
fn forward_groups(actions: &[Action]) -> Vec<(String, u32)> {
    let Some(a) = actions.iter().find(|a| a.kind == "forward") else {
        return Vec::new();
    };
    match &a.forward_config {
        Some(f) if !f.target_groups.is_empty() => f
            .target_groups
            .iter()
            .map(|g| (g.target_group_arn.clone(), g.weight.unwrap_or(1)))
            .collect(),
        _ => a
            .target_group_arn
            .iter()
            .map(|arn| (arn.clone(), 1))
            .collect(),
    }
}

/// The kinds of `actions`, for messages: `forward`, `authenticate-oidc, forward`.
fn kinds(actions: &[Action]) -> String {
    let k: Vec<&str> = actions.iter().map(|a| a.kind.as_str()).collect();
    k.join(", ")
}

/// A target group's name from its ARN (`targetgroup/NAME/ID`).
fn arn_id_name(arn: &str) -> String {
    arn.split('/').nth(1).unwrap_or(arn).to_owned()
}

/// A rule condition as xlb writes it, or why it cannot be.
fn condition(c: &RuleCondition) -> Result<InlineTable, String> {
    let mut out = InlineTable::new();
    let field = c.field.as_str();
    out.insert("field", field.into());
    let regex = |r: &[String]| -> Result<(), String> {
        match r.is_empty() {
            true => Ok(()),
            false => Err(format!("{field} condition with regular expressions {r:?}")),
        }
    };
    regex(&c.regex_values)?;
    let plain = |config: &Option<ValuesConfig>| -> Result<Vec<String>, String> {
        match config {
            Some(v) => {
                regex(&v.regex_values)?;
                Ok(v.values.clone())
            }
            None => Ok(c.values.clone()),
        }
    };
    let strings = |v: Vec<String>| Value::Array(v.into_iter().collect());
    match field {
        "host-header" => out.insert("values", strings(plain(&c.host_header_config)?)),
        "path-pattern" => out.insert("values", strings(plain(&c.path_pattern_config)?)),
        "http-request-method" => {
            out.insert("values", strings(plain(&c.http_request_method_config)?))
        }
        "source-ip" => out.insert("values", strings(plain(&c.source_ip_config)?)),
        "http-header" => {
            let Some(h) = &c.http_header_config else {
                return Err("http-header condition without HttpHeaderConfig".into());
            };
            regex(&h.regex_values)?;
            out.insert("name", h.http_header_name.as_str().into());
            out.insert("values", strings(h.values.clone()))
        }
        "query-string" => {
            let Some(q) = &c.query_string_config else {
                return Err("query-string condition without QueryStringConfig".into());
            };
            let mut values = Array::new();
            for kv in &q.values {
                let mut v = InlineTable::new();
                if let Some(k) = &kv.key {
                    v.insert("key", k.as_str().into());
                }
                v.insert("value", kv.value.as_str().into());
                values.push(v);
            }
            out.insert("values", values.into())
        }
        other => return Err(format!("condition field {other:?}, which xlb has not")),
    };
    Ok(out)
}

/// What a rule or default action that cannot be imported answers instead.
fn fail_closed(why: &str) -> InlineTable {
    let mut a = InlineTable::new();
    a.insert("type", "fixed-response".into());
    a.insert("status_code", FAIL_CLOSED_STATUS.into());
    a.insert("content_type", "text/plain".into());
    let mut body = format!("not imported from AWS: {why}");
    body.truncate(1000);
    a.insert("message_body", body.into());
    a
}

/// `a, b, c`.
fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// A finding as comment lines of the config, wrapped at 100 columns.
fn comment(f: &Finding) -> String {
    let tag = match f.level {
        Level::Todo => "TODO(import)",
        Level::Note => "NOTE(import)",
    };
    wrap_comment_lines(&format!("# {tag}: {}: {}\n", f.resource, f.message))
}

/// Wraps each `# ` line of `text` at 100 columns, continuing with `#   `.
fn wrap_comment_lines(text: &str) -> String {
    const WIDTH: usize = 100;
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        if body.len() <= WIDTH || !body.starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut current = String::new();
        for word in body.split(' ') {
            if !current.is_empty() && current.len() + 1 + word.len() > WIDTH {
                out.push_str(&current);
                out.push('\n');
                current = "#  ".to_owned();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out
}

/// Indents comment lines by two spaces, for inside an array.
fn indent_comments(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| match l.starts_with('#') {
            true => format!("  {l}"),
            false => l.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_listener_is_read_from_its_arn() {
        assert_eq!(
            listener_of_rule(
                "arn:aws:elasticloadbalancing:us-west-2:123456789012:listener-rule/app/my-lb/\
                 50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee"
            ),
            "arn:aws:elasticloadbalancing:us-west-2:123456789012:listener/app/my-lb/\
             50dc6c495c0c9188/f2f7dc8efc522ab2"
        );
        assert_eq!(
            arn_id("arn:aws:acm:us-east-1:123456789012:certificate/1234-abcd"),
            "1234-abcd"
        );
    }

    #[test]
    fn long_comments_wrap_and_keep_their_marks() {
        let long = format!("# TODO(import): {}\n", "word ".repeat(40).trim_end());
        let wrapped = wrap_comment_lines(&long);
        assert!(wrapped.lines().count() > 1, "{wrapped}");
        assert!(
            wrapped
                .lines()
                .all(|l| l.starts_with('#') && l.len() <= 100),
            "{wrapped}"
        );
    }

    #[test]
    fn an_attributes_file_that_names_no_resource_is_refused_with_the_convention() {
        let inputs = [
            Input {
                name: "groups.json".into(),
                text: r#"{"TargetGroups": [{"TargetGroupArn": "arn:tg/web/1", "TargetGroupName": "web", "Protocol": "HTTP", "Port": 80}]}"#.into(),
            },
            Input {
                name: "attrs.json".into(),
                text: r#"{"Attributes": [{"Key": "stickiness.enabled", "Value": "true"}]}"#.into(),
            },
        ];
        let e = aws(&inputs).unwrap_err().to_string();
        assert!(
            e.starts_with("attrs.json: ") && e.contains("TargetGroupArn"),
            "{e}"
        );
        let named = [
            inputs[0].clone(),
            Input {
                name: "dir/describe-target-group-attributes.nope.json".into(),
                text: inputs[1].text.clone(),
            },
        ];
        let e = aws(&named).unwrap_err().to_string();
        assert!(e.contains("no target group named \"nope\""), "{e}");
    }

    #[test]
    fn a_listeners_attributes_are_found_by_load_balancer_name_and_listener_id() {
        let arn = "arn:aws:elasticloadbalancing:eu-west-1:1:listener/net/edge/6d0e/b2c3";
        let inputs = |file: &str| {
            [
                Input {
                    name: "listeners.json".into(),
                    text: format!(
                        r#"{{"Listeners": [{{"ListenerArn": "{arn}", "Port": 80, "Protocol": "TCP"}}]}}"#
                    ),
                },
                Input {
                    name: file.into(),
                    text:
                        r#"{"Attributes": [{"Key": "tcp.idle_timeout.seconds", "Value": "600"}]}"#
                            .into(),
                },
            ]
        };
        let found = Aws::parse(&inputs("describe-listener-attributes.edge.b2c3.json")).unwrap();
        assert_eq!(found.listener_attributes[arn][0].value, "600");
        let e = aws(&inputs("describe-listener-attributes.edge.ffff.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no listener edge.ffff"), "{e}");
    }
}
