//! The counters as people read them: per listener, per target, per reason.

use std::fmt::Write as _;

use crate::{balancer::Balancer, dataplane::DataplaneError};

/// A text table of every non-zero counter.
pub fn table(lb: &mut Balancer) -> Result<String, DataplaneError> {
    let mut out = String::new();
    let listeners = lb.listeners.clone();
    let dp = lb.dataplane();
    let _ = writeln!(
        out,
        "{:<40} {:>12} {:>14} {:>10}",
        "listener / target", "packets", "bytes", "new flows"
    );
    for l in &listeners {
        let c = dp.vip_counters(l.vip)?;
        let _ = writeln!(
            out,
            "{:<40} {:>12} {:>14} {:>10}",
            l.name, c.packets, c.bytes, c.new_flows
        );
        for (addr, index, weight) in &l.targets {
            let t = dp.backend_counters(*index)?;
            let _ = writeln!(
                out,
                "  {:<38} {:>12} {:>14}",
                format!("{addr} (weight {weight})"),
                t.packets,
                t.bytes
            );
        }
    }
    let _ = writeln!(out, "{:<40} {:>12} {:>14}", "reason", "packets", "bytes");
    for (r, c) in dp.reasons()? {
        if c.packets > 0 {
            let _ = writeln!(out, "{:<40} {:>12} {:>14}", r.name(), c.packets, c.bytes);
        }
    }
    Ok(out)
}
