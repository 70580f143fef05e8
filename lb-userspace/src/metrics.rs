//! Prometheus metrics, named after the CloudWatch metrics of a Network Load Balancer where one
//! exists (`ProcessedBytes` → `xlb_processed_bytes`, `NewFlowCount` → `xlb_new_flow_count`,
//! `HealthyHostCount` → `xlb_healthy_host_count`, ...).
//!
//! The counters live in BPF maps; each scrape reads them and renders a fresh registry, so there
//! is no second copy of the numbers to keep in step.

use std::{convert::Infallible, sync::atomic::AtomicU64};

use anyhow::Result;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::agent::Agent;

type Labels = Vec<(String, String)>;

/// The metrics text for the agent's current state.
pub fn render(agent: &mut Agent) -> Result<String> {
    let mut reg = Registry::with_prefix("xlb");
    let bytes = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let packets = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let new_flows = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let target_bytes = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let target_packets = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let reasons = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let healthy = Family::<Labels, Gauge>::default();
    let unhealthy = Family::<Labels, Gauge>::default();
    let flows = Family::<Labels, Gauge>::default();

    let listeners = agent.lb.listeners.clone();
    for l in &listeners {
        let c = agent.lb.dataplane().vip_counters(l.vip)?;
        let lab = vec![("listener".to_owned(), l.name.clone())];
        bytes.get_or_create(&lab).inc_by(c.bytes);
        packets.get_or_create(&lab).inc_by(c.packets);
        new_flows.get_or_create(&lab).inc_by(c.new_flows);
        for (addr, index, _) in &l.targets {
            let t = agent.lb.dataplane().backend_counters(*index)?;
            let lab = vec![
                ("listener".to_owned(), l.name.clone()),
                ("target".to_owned(), addr.to_string()),
            ];
            target_bytes.get_or_create(&lab).inc_by(t.bytes);
            target_packets.get_or_create(&lab).inc_by(t.packets);
        }
    }
    for (r, c) in agent.lb.dataplane().reasons()? {
        reasons
            .get_or_create(&vec![("reason".to_owned(), r.name().to_owned())])
            .inc_by(c.packets);
    }
    for row in agent.targets(None)? {
        let group = vec![("target_group".to_owned(), row.target_group.clone())];
        // Hosts count as healthy as AWS counts them: in service and not failing checks.
        let fam = if row.state == "unhealthy" {
            &unhealthy
        } else {
            &healthy
        };
        if row.state != "draining" {
            fam.get_or_create(&group).inc();
        }
        let target = row.target();
        let lab = vec![
            ("target_group".to_owned(), row.target_group),
            ("target".to_owned(), target),
            ("state".to_owned(), row.state),
        ];
        flows.get_or_create(&lab).set(row.flows as i64);
    }
    reg.register(
        "processed_bytes",
        "Bytes the datapath processed per listener",
        bytes,
    );
    reg.register(
        "processed_packets",
        "Packets the datapath processed per listener",
        packets,
    );
    reg.register(
        "new_flow_count",
        "Flows that took a target from the Maglev table",
        new_flows,
    );
    reg.register(
        "target_processed_bytes",
        "Bytes sent to each target",
        target_bytes,
    );
    reg.register(
        "target_processed_packets",
        "Packets sent to each target",
        target_packets,
    );
    reg.register(
        "datapath_packets",
        "Packets by the reason of their verdict",
        reasons,
    );
    reg.register(
        "healthy_host_count",
        "Targets in service per target group",
        healthy,
    );
    reg.register(
        "unhealthy_host_count",
        "Targets failing health checks per target group",
        unhealthy,
    );
    reg.register(
        "target_flows",
        "Flow table entries per target (with its state)",
        flows,
    );
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// Answers the HTTP requests of one scrape connection with `body`.
pub async fn serve(stream: tokio::net::TcpStream, body: String) {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    let service = service_fn(move |_req| {
        let body = body.clone();
        async move {
            let resp = Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(body)));
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
}
