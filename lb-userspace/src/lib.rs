//! xlb's agent as a library; the `xlb` binary (`main.rs`) only parses the command line and calls
//! in here. The other tiers and the config are crates of their own, which build without the BPF
//! toolchain: `lb-config` (the file), `lb-health` (health checks), `lb-l7` (the L7 tier).
//!
//! - [`agent`]: the agent's state (the file, API registrations, draining, zones) and `xlb run`,
//!   its tasks around one loop that owns that state.
//! - [`api`]: the control API (JSON lines on a Unix socket): the protocol, client and server.
//! - [`cli`]: the CLI's commands that talk to a running agent or attach a helper program.
//! - [`balancer`]: turns a config into datapath state (backends, Maglev rings, VIPs).
//! - [`maglev`]: builds the weighted Maglev tables the datapath looks backends up in.
//! - [`rings`]: where each listener's tables lie in the datapath's ring space.
//! - [`dataplane`]: the only code that touches BPF programs and maps.
//! - [`metrics`]: Prometheus metrics named after the CloudWatch ones, and their HTTP server.
//! - [`stats`]: the datapath's counters, read once, and as a table.

pub mod agent;
pub mod api;
pub mod balancer;
pub mod cli;
pub mod dataplane;
pub mod maglev;
pub mod metrics;
pub mod rings;
pub mod stats;
