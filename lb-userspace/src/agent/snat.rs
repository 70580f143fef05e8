//! The SNAT sweep: the datapath allocates an SNAT port per flow and never frees it; the agent
//! removes a flow's entries (`SNAT_FLOWS`, then `SNAT_PORTS`) once the flow is over, which
//! gives the port back. Over means quiet for:
//!
//! - a TCP connection that saw a FIN or RST (either way): [`CLOSED_TCP`], a TIME_WAIT-like wait
//!   for the last segments and retransmissions;
//! - another TCP connection: its listener's `tcp.idle_timeout.seconds` (NLB's 350 s default);
//! - a UDP flow: `node.snat.udp_timeout_seconds` (NLB's 120 s).
//!
//! "Quiet" counts from the later of the two directions' last packets, which the datapath writes
//! with the coarse monotonic clock at most once a second.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::Result;
use lb_common::{FlowKey, IPPROTO_TCP, SNAT_F_CLOSING, SnatFlow};
use lb_config::{Config, Forwarding};

use crate::balancer::{Balancer, SnatEntries};

/// How long a closed TCP connection keeps its port.
pub const CLOSED_TCP: Duration = Duration::from_secs(60);

/// How often the agent sweeps: a fraction of the shortest timeout, within 1 to 10 seconds.
pub fn interval(cfg: &Config) -> Option<Duration> {
    let snat = cfg
        .xdp_listeners()
        .filter(|l| l.forwarding == Forwarding::Snat);
    let shortest = snat
        .map(|l| match l.protocol {
            lb_config::Protocol::Udp => udp_timeout(cfg),
            _ => l.idle_timeout().min(udp_timeout(cfg)).min(CLOSED_TCP),
        })
        .min()?;
    Some((shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(10)))
}

fn udp_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.node.snat.udp_timeout_seconds.into())
}

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub flows: Vec<FlowKey>,
    pub ports: Vec<FlowKey>,
}

/// Reads the SNAT maps and removes the flows that are over at `now_ns` (the coarse monotonic
/// clock); returns how many ports stay in use.
pub fn sweep(lb: &mut Balancer, cfg: &Config, now_ns: u64) -> Result<usize> {
    let entries = lb.snat_entries()?;
    let swept = over(&entries, cfg, now_ns);
    lb.remove_snat(&swept.flows, &swept.ports)?;
    Ok(entries.ports.len() - swept.ports.len())
}

/// The coarse monotonic clock, as the datapath reads it (`bpf_ktime_get_coarse_ns`).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The entries of flows that are over.
pub fn over(entries: &SnatEntries, cfg: &Config, now_ns: u64) -> Swept {
    // TCP idle timeouts by listener (address, port); a listener on every port is port 0.
    let idle: BTreeMap<(IpAddr, u16), Duration> = cfg
        .xdp_listeners()
        .filter(|l| l.forwarding == Forwarding::Snat)
        .map(|l| ((l.address, l.port), l.idle_timeout()))
        .collect();
    let timeout = |key: &FlowKey, closing: bool| {
        if key.proto != IPPROTO_TCP {
            return udp_timeout(cfg);
        }
        if closing {
            return CLOSED_TCP;
        }
        let vip = addr_of(key.family, &key.dst);
        let port = u16::from_be(key.dport_be);
        idle.get(&(vip, port))
            .or_else(|| idle.get(&(vip, 0)))
            .copied()
            .unwrap_or(Duration::from_secs(350))
    };
    let quiet = |seen: u64| Duration::from_nanos(now_ns.saturating_sub(seen));
    let flows: HashMap<FlowKey, SnatFlow> = entries.flows.iter().copied().collect();
    let mut out = Swept::default();
    let mut owned = HashSet::new();
    for (reply, e) in &entries.ports {
        let client = FlowKey {
            src: e.client,
            dst: e.vip,
            sport_be: e.client_port_be,
            dport_be: e.vport_be,
            proto: reply.proto,
            family: reply.family,
            _pad: [0; 2],
        };
        // The flow's entry, when it still names this port (a flow moved to another target
        // holds another).
        let flow = flows.get(&client).filter(|f| {
            f.port_be == reply.dport_be
                && f.target == reply.src
                && f.target_port_be == reply.sport_be
        });
        let (seen, flags) = match flow {
            Some(f) => (e.seen_ns.max(f.seen_ns), e.flags | f.flags),
            None => (e.seen_ns, e.flags),
        };
        if flow.is_some() {
            owned.insert(client);
        }
        if quiet(seen) > timeout(&client, flags & SNAT_F_CLOSING != 0) {
            if flow.is_some() {
                out.flows.push(client);
            }
            out.ports.push(*reply);
        }
    }
    // A flow whose port entry is gone (a race with the datapath): by its own time.
    for (client, f) in &entries.flows {
        if !owned.contains(client)
            && quiet(f.seen_ns) > timeout(client, f.flags & SNAT_F_CLOSING != 0)
        {
            out.flows.push(*client);
        }
    }
    out
}

fn addr_of(family: u8, a: &lb_common::Addr) -> IpAddr {
    if family == lb_common::AF_INET {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{IPPROTO_UDP, SnatEntry};

    const CFG: &str = r#"
[node]
interface = "eth0"
snat = { address_v4 = "198.18.1.2", udp_timeout_seconds = 5 }

[[target_groups]]
name = "web"
protocol = "TCP_UDP"
port = 8080
targets = [{ id = "198.18.1.11" }]

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP_UDP"
forwarding = "snat"
attributes = { "tcp.idle_timeout.seconds" = "100" }
default_action = { type = "forward", target_group = "web" }
"#;

    fn entry(proto: u8, sport: u16, seen_s: u64, closing: bool) -> SnatEntries {
        let a = |s: &str| crate::balancer::addr_bytes(s.parse().unwrap()).1;
        let reply = FlowKey {
            src: a("198.18.1.11"),
            dst: a("198.18.1.2"),
            sport_be: 8080u16.to_be(),
            dport_be: 10000u16.to_be(),
            proto,
            family: 4,
            _pad: [0; 2],
        };
        let e = SnatEntry {
            client: a("198.18.0.2"),
            vip: a("198.18.100.1"),
            client_port_be: sport.to_be(),
            vport_be: 80u16.to_be(),
            flags: 0,
            seen_ns: seen_s * 1_000_000_000,
        };
        let client = FlowKey {
            src: e.client,
            dst: e.vip,
            sport_be: e.client_port_be,
            dport_be: e.vport_be,
            proto,
            family: 4,
            _pad: [0; 2],
        };
        let f = SnatFlow {
            target: reply.src,
            seen_ns: e.seen_ns,
            backend: 1,
            port_be: reply.dport_be,
            target_port_be: reply.sport_be,
            flags: if closing { SNAT_F_CLOSING } else { 0 },
            _pad: 0,
        };
        SnatEntries {
            ports: vec![(reply, e)],
            flows: vec![(client, f)],
        }
    }

    #[test]
    fn each_kind_of_flow_is_over_after_its_own_quiet_time() {
        let cfg = Config::parse(CFG, "x.toml").unwrap();
        let s = 1_000_000_000u64;
        // (what, entries, seconds later, over)
        let cases = [
            (
                "open TCP, within the idle timeout",
                entry(IPPROTO_TCP, 1, 0, false),
                99,
                false,
            ),
            (
                "open TCP, past it",
                entry(IPPROTO_TCP, 1, 0, false),
                101,
                true,
            ),
            (
                "closed TCP, within 60 s",
                entry(IPPROTO_TCP, 1, 0, true),
                59,
                false,
            ),
            (
                "closed TCP, past 60 s",
                entry(IPPROTO_TCP, 1, 0, true),
                61,
                true,
            ),
            (
                "UDP, within its timeout",
                entry(IPPROTO_UDP, 1, 0, false),
                4,
                false,
            ),
            ("UDP, past it", entry(IPPROTO_UDP, 1, 0, false), 6, true),
        ];
        for (what, entries, later, gone) in cases {
            let swept = over(&entries, &cfg, later * s);
            assert_eq!(swept.ports.len(), usize::from(gone), "{what}: ports");
            assert_eq!(swept.flows.len(), usize::from(gone), "{what}: flows");
        }
        // The later direction counts: a reply a second ago keeps the flow.
        let mut entries = entry(IPPROTO_UDP, 1, 0, false);
        entries.ports[0].1.seen_ns = 9 * s;
        assert_eq!(over(&entries, &cfg, 10 * s), Swept::default());
        // A quarter of the shortest timeout (UDP's 5 s).
        assert_eq!(interval(&cfg), Some(Duration::from_millis(1250)));
    }
}
