//! xlb's agent as a library; the `xlb` binary (`main.rs`) only parses the command line and calls
//! in here.
//!
//! - [`agent`]: the agent's state over the file: API registrations, draining, zones.
//! - [`api`]: the control API (JSON lines on a Unix socket) and its client.
//! - [`config`]: the TOML config in the AWS ELB vocabulary, parsed and validated.
//! - [`balancer`]: turns a config into datapath state (backends, Maglev rings, VIPs).
//! - [`l7`]: the HTTP/HTTPS tier (ALB listener rules, actions, TLS with SNI).
//! - [`maglev`]: builds the weighted Maglev tables the datapath looks backends up in.
//! - [`dataplane`]: the only code that touches BPF programs and maps.
//! - [`health`]: active health checks (ELB states and reasons), fail-open routing.
//! - [`metrics`]: Prometheus metrics named after the CloudWatch ones.
//! - [`stats`]: the counters as a table.

pub mod agent;
pub mod api;
pub mod balancer;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod l7;
pub mod maglev;
pub mod metrics;
pub mod stats;
