//! The datapath's counters at one moment ([`Snapshot`]), and as people read them: per listener,
//! per target, per reason.

use std::fmt::Write as _;

use lb_common::{Counters, Reason};

use crate::{
    api::ListenerStats,
    balancer::{Balancer, TargetAddr},
    dataplane::DataplaneError,
};

/// Every counter the datapath keeps, read once (the metrics, `xlb stats` and `xlb top` render
/// from it, not from the maps).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listeners: Vec<ListenerCounters>,
    pub reasons: Vec<(Reason, Counters)>,
}

/// One listener's counters and its targets'.
#[derive(Debug, Clone)]
pub struct ListenerCounters {
    /// `VIP:port/Protocol`.
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Its packets that were dropped.
    pub dropped: u64,
    pub targets: Vec<TargetCounters>,
}

#[derive(Debug, Clone)]
pub struct TargetCounters {
    pub addr: TargetAddr,
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
}

impl Snapshot {
    /// Reads the counters of what `lb` applied.
    pub fn read(lb: &mut Balancer) -> Result<Snapshot, DataplaneError> {
        let applied = lb.listeners.clone();
        let dp = lb.dataplane();
        let mut listeners = Vec::with_capacity(applied.len());
        for l in applied {
            let c = dp.vip_counters(l.vip)?;
            let mut targets = Vec::with_capacity(l.targets.len());
            for (addr, index, weight) in l.targets {
                let t = dp.backend_counters(index)?;
                targets.push(TargetCounters {
                    addr,
                    weight,
                    packets: t.packets,
                    bytes: t.bytes,
                });
            }
            listeners.push(ListenerCounters {
                name: l.name,
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                dropped: c.dropped,
                targets,
            });
        }
        Ok(Snapshot {
            listeners,
            reasons: dp.reasons()?,
        })
    }

    /// A text table of every listener and target, and every reason that counted a packet.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<40} {:>12} {:>14} {:>10} {:>10}",
            "listener / target", "packets", "bytes", "new flows", "dropped"
        );
        for l in &self.listeners {
            let _ = writeln!(
                out,
                "{:<40} {:>12} {:>14} {:>10} {:>10}",
                l.name, l.packets, l.bytes, l.new_flows, l.dropped
            );
            for t in &l.targets {
                let _ = writeln!(
                    out,
                    "  {:<38} {:>12} {:>14}",
                    format!("{} (weight {})", t.addr, t.weight),
                    t.packets,
                    t.bytes
                );
            }
        }
        let _ = writeln!(out, "{:<40} {:>12} {:>14}", "reason", "packets", "bytes");
        for (r, c) in self.reasons.iter().filter(|(_, c)| c.packets > 0) {
            let _ = writeln!(out, "{:<40} {:>12} {:>14}", r.name(), c.packets, c.bytes);
        }
        out
    }

    /// The listeners as the API reports them.
    pub fn listener_stats(&self) -> Vec<ListenerStats> {
        self.listeners
            .iter()
            .map(|l| ListenerStats {
                listener: l.name.clone(),
                packets: l.packets,
                bytes: l.bytes,
                new_flows: l.new_flows,
                dropped: l.dropped,
                targets: l
                    .targets
                    .iter()
                    .map(|t| (t.addr.to_string(), t.packets, t.bytes))
                    .collect(),
            })
            .collect()
    }
}
