//! Prometheus metrics, named after the CloudWatch metrics of a Network Load Balancer where one
//! exists (`ProcessedBytes` → `xlb_processed_bytes`, `NewFlowCount` → `xlb_new_flow_count`,
//! `HealthyHostCount` → `xlb_healthy_host_count`, ...), and the L7 tier's (`lb_l7::metrics`).
//!
//! The L4 counters live in BPF maps; each scrape renders a fresh registry from a [`Snapshot`] of
//! them, so there is no second copy of the numbers to keep in step. [`serve`] answers each HTTP
//! request on its own: a kept-alive scrape connection gets fresh numbers every time.

use std::{convert::Infallible, future::Future, sync::atomic::AtomicU64, time::Duration};

use lb_l7::metrics::{L7Metrics, Labels};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{api::TargetRow, stats::Snapshot};

/// What one scrape reads from the agent.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub counters: Snapshot,
    pub targets: Vec<TargetRow>,
    pub flow_table: FlowTable,
    /// SNAT ports in use (one per SNAT flow), over every target.
    pub snat_ports: u64,
}

/// How full the flow table is: what the "flow table nearly full" alarm watches, since past its
/// capacity the LRU evicts live flows, which then move to whatever target the table picks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTable {
    /// `node.flow_table_size`.
    pub capacity: u64,
    /// Entries held, closed and idle flows the LRU keeps included.
    pub entries: u64,
    /// Live flows (NLB's ActiveFlowCount for the whole node).
    pub live: u64,
}

/// The metrics text of `scrape` and of the L7 tier's counts.
pub fn render(scrape: &Scrape, l7: &L7Metrics) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("xlb");
    let counter = Family::<Labels, Counter<u64, AtomicU64>>::default;
    let gauge = Family::<Labels, Gauge>::default;
    let (bytes, packets, new_flows, dropped) = (counter(), counter(), counter(), counter());
    let (target_bytes, target_packets, reasons) = (counter(), counter(), counter());
    let (healthy, unhealthy, flows) = (gauge(), gauge(), gauge());
    for l in &scrape.counters.listeners {
        let lab = vec![("listener".to_owned(), l.name.clone())];
        bytes.get_or_create(&lab).inc_by(l.bytes);
        packets.get_or_create(&lab).inc_by(l.packets);
        new_flows.get_or_create(&lab).inc_by(l.new_flows);
        dropped.get_or_create(&lab).inc_by(l.dropped);
        for t in &l.targets {
            let lab = vec![
                ("listener".to_owned(), l.name.clone()),
                ("target".to_owned(), t.addr.to_string()),
            ];
            target_bytes.get_or_create(&lab).inc_by(t.bytes);
            target_packets.get_or_create(&lab).inc_by(t.packets);
        }
    }
    // ALB's ProcessedBytes and NLB's share a name: one family, L4 and L7 listeners in it.
    l7.add_processed_bytes(&bytes);
    for (r, c) in &scrape.counters.reasons {
        reasons
            .get_or_create(&vec![("reason".to_owned(), r.name().to_owned())])
            .inc_by(c.packets);
    }
    for row in &scrape.targets {
        let group = vec![("target_group".to_owned(), row.target_group.clone())];
        // Both gauges for every group, at 0 when none counts (groups without checks too).
        let _ = healthy.get_or_create(&group);
        let _ = unhealthy.get_or_create(&group);
        // Hosts count as healthy as AWS counts them: in service and not failing checks.
        let fam = if row.state == "unhealthy" {
            &unhealthy
        } else {
            &healthy
        };
        if row.state != "draining" {
            fam.get_or_create(&group).inc();
        }
        let lab = vec![
            ("target_group".to_owned(), row.target_group.clone()),
            ("target".to_owned(), row.target()),
            ("state".to_owned(), row.state.clone()),
        ];
        flows.get_or_create(&lab).set(row.flows as i64);
    }
    let counters = [
        (
            "processed_bytes",
            "Bytes the datapath processed per listener",
            bytes,
        ),
        (
            "processed_packets",
            "Packets the datapath processed per listener",
            packets,
        ),
        (
            "new_flow_count",
            "Flows that took a target from the Maglev table",
            new_flows,
        ),
        (
            "dropped_packets",
            "Packets to each listener that the datapath dropped",
            dropped,
        ),
        (
            "target_processed_bytes",
            "Bytes sent to each target",
            target_bytes,
        ),
        (
            "target_processed_packets",
            "Packets sent to each target",
            target_packets,
        ),
        (
            "datapath_packets",
            "Packets by the reason of their verdict",
            reasons,
        ),
    ];
    for (name, help, family) in counters {
        reg.register(name, help, family);
    }
    let gauges = [
        (
            "healthy_host_count",
            "Targets in service per target group",
            healthy,
        ),
        (
            "unhealthy_host_count",
            "Targets failing health checks per target group",
            unhealthy,
        ),
        (
            "target_flows",
            "Live flows per target: TCP connections their clients have not closed, UDP flows not idle",
            flows,
        ),
    ];
    for (name, help, family) in gauges {
        reg.register(name, help, family);
    }
    let table = [
        (
            "flow_table_size",
            "Entries the flow table holds at most (node.flow_table_size)",
            scrape.flow_table.capacity,
        ),
        (
            "flow_table_entries",
            "Entries in the flow table, closed and idle flows not yet evicted included",
            scrape.flow_table.entries,
        ),
        (
            "snat_ports_in_use",
            "SNAT source ports held by flows of snat listeners (given back by the agent's sweep)",
            scrape.snat_ports,
        ),
        (
            "active_flow_count",
            "Live flows of every listener (ActiveFlowCount)",
            scrape.flow_table.live,
        ),
    ];
    for (name, help, value) in table {
        let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        reg.register(name, help, g);
    }
    l7.register(&mut reg);
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// Serves `GET /metrics` on `listener` until the task is dropped: each connection in a task of
/// its own, each request rendered by `scrape` when it comes (other paths get a 404). An accept
/// that fails (out of descriptors) is logged and retried.
pub async fn serve<F, S>(listener: tokio::net::TcpListener, scrape: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<String>> + Send,
{
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, service::service_fn};
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let scrape = scrape.clone();
                async move {
                    let found = req.uri().path() == "/metrics";
                    let body = if found { scrape().await } else { None };
                    let resp = match body {
                        Some(text) => Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(text))),
                        None => Response::builder()
                            .status(if found {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::NOT_FOUND
                            })
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_table_fill_is_exported_as_three_gauges() {
        let scrape = Scrape {
            flow_table: FlowTable {
                capacity: 1024,
                entries: 900,
                live: 700,
            },
            ..Scrape::default()
        };
        let text = render(&scrape, &L7Metrics::default()).unwrap();
        for line in [
            "xlb_flow_table_size 1024",
            "xlb_flow_table_entries 900",
            "xlb_active_flow_count 700",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
