//! xlb's configuration: one TOML file in the AWS Elastic Load Balancing vocabulary, for both tiers.
//!
//! - [`Node`] (`node.rs`): this load balancer node: its interface, datapath settings, sockets.
//! - [`bgp`]: `[node.bgp]`, how the node announces its VIPs through BIRD.
//! - [`TargetGroup`] (`group.rs`): one model for every target group, L4 (`TCP`, `UDP`,
//!   `TCP_UDP`) and L7 (`HTTP`, `HTTPS`), with its targets.
//! - [`attribute`]: the one table of target group and listener attributes (name, values,
//!   default, which groups take it).
//! - [`HealthCheck`] (`health.rs`): a group's `health_check` block.
//! - [`Listener`] (`listener.rs`): an L4 listener (NLB's): a VIP of the XDP tier, or a TLS or
//!   PROXY v2 listener served in user space.
//! - [`SslPolicy`], [`AlpnPolicy`] (`tls.rs`): what a TLS listener negotiates.
//! - [`HttpListener`] (`http.rs`): an HTTP/HTTPS listener of the L7 tier, with ALB's rules.
//! - [`import`]: `xlb import aws`, a config from what `aws elbv2 describe-*` prints.
//!
//! [`Config::parse`] refuses unknown keys and wrong types (toml's message names the line), then
//! checks what types cannot say (references, ranges, families, ALB's constraints). A refusal is
//! one [`ConfigError`] that names the file, the line and the key. Nothing here touches the system
//! but the file [`Config::load`] reads: certificates and sockets are the tiers' to check, through
//! [`Config::load_with`].

pub mod attribute;
pub mod bgp;
mod group;
mod health;
mod http;
pub mod import;
mod listener;
mod locate;
mod node;
mod tls;

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use serde::Deserialize;
use thiserror::Error;

pub use crate::{
    group::{Protocol, ProtocolVersion, Target, TargetGroup},
    health::{CheckPort, CheckProtocol, HealthCheck, Matcher},
    http::{
        CertificateFiles, Condition, DesyncMode, GroupStickiness, HttpAction, HttpListener,
        ListenerProtocol, QueryValue, RedirectCode, Rule, WeightedTargetGroup, XffMode,
    },
    listener::{Action, Forwarding, Listener},
    node::{Node, Paths, XdpMode, parse_mac},
    tls::{AlpnPolicy, SslPolicy},
};

/// Why a config is refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, unknown keys and wrong types; toml's message names the line, column and key. Not
    /// a `source`: the message says it all, and a chain would print it twice.
    #[error("{path}: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },
    /// A value types cannot refuse; `line` is where the key is in the file.
    #[error("{path}: line {line}: {key}: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// A refused value before its line is known: the key, as errors name it
/// (`target_groups[1] (web).targets[0].weight`), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub message: String,
}

impl Refusal {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub target_groups: Vec<TargetGroup>,
    /// L4 listeners: VIPs balanced in the kernel.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// HTTP/HTTPS listeners with ALB rules (the L7 tier).
    #[serde(default)]
    pub http_listeners: Vec<HttpListener>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, |_| Ok(()))
    }

    /// Like [`Config::load`], with `check` run on the valid config: what only a tier can check
    /// (certificates that load) is refused with the file, line and key like the rest. Relative
    /// certificate paths are made relative to the file's directory first.
    pub fn load_with(
        path: &Path,
        check: impl FnOnce(&Config) -> Result<(), Refusal>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let name = path.display().to_string();
        let mut cfg = Config::parse(&text, &name)?;
        // A service's working directory is rarely its config's: a file's relative paths name
        // files beside it, wherever xlb was started.
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        check(&cfg).map_err(|r| locate::error(&text, &name, r))?;
        Ok(cfg)
    }

    /// Makes the relative certificate and key paths relative to `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        let http = self.http_listeners.iter_mut().map(|l| &mut l.certificates);
        let tls = self.listeners.iter_mut().map(|l| &mut l.certificates);
        for c in http.chain(tls).flatten() {
            c.cert = dir.join(&c.cert);
            c.key = dir.join(&c.key);
        }
    }

    /// Parses and validates `text` (named `path` in errors).
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error,
        })?;
        // ALB checks HTTP and HTTPS groups whether or not the file says how (with its defaults);
        // `enabled = false` turns any group's checks off. One default protocol for every group:
        // NLB's (TCP) for L4 groups, ALB's (HTTP) for L7 ones.
        for tg in &mut cfg.target_groups {
            if tg.protocol.is_http() {
                tg.health_check.get_or_insert_with(HealthCheck::default);
            }
            if tg.health_check.as_ref().is_some_and(|hc| !hc.enabled) {
                tg.health_check = None;
            }
            let default = tg.protocol.default_check();
            if let Some(hc) = tg.health_check.as_mut() {
                hc.protocol.get_or_insert(default);
            }
        }
        cfg.check().map_err(|r| locate::error(text, path, r))?;
        Ok(cfg)
    }

    /// Checks what types cannot say: what [`Config::parse`] runs after parsing, and what the
    /// agent runs on the file with its registrations (the same checks, the same messages).
    pub fn check(&self) -> Result<(), Refusal> {
        self.node.validate()?;
        let mut names = BTreeSet::new();
        for (i, tg) in self.target_groups.iter().enumerate() {
            let at = format!("target_groups[{i}] ({})", tg.name);
            if !names.insert(tg.name.as_str()) {
                return Err(Refusal::new(
                    format!("{at}.name"),
                    "duplicate target group name",
                ));
            }
            tg.validate(&at)?;
        }
        listener::validate(self)?;
        if let Some(bgp) = &self.node.bgp {
            let announced: Vec<IpAddr> = self.xdp_listeners().map(|l| l.address).collect();
            bgp.check_vips(&announced)?;
        }
        http::validate(self)
    }

    /// The target group named `name`.
    pub fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }
}

#[cfg(test)]
mod tests;
