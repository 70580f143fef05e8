//! The L7 tier's metrics, named after an Application Load Balancer's CloudWatch metrics
//! (`RequestCount` → `xlb_request_count`, `HTTPCode_Target_2XX_Count` →
//! `xlb_httpcode_target_2xx_count`, ...), living as long as the process. Requests record through
//! handles resolved when a config is compiled ([`RouteMetrics`]), so the request path does atomic
//! adds only: no label lookup, no allocation.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Label pairs of a family.
pub type Labels = Vec<(String, String)>;

/// The L7 tier's metrics families, shared by every listener across reloads.
#[derive(Debug)]
pub struct L7Metrics {
    requests: Family<Labels, Counter>,
    target_response_time: Family<Labels, Histogram, fn() -> Histogram>,
    /// `HTTPCode_ELB_{3,4,5}XX_Count`: answers the load balancer made itself.
    elb_codes: [Family<Labels, Counter>; 3],
    /// `HTTPCode_Target_{2,3,4,5}XX_Count`: answers of targets.
    target_codes: [Family<Labels, Counter>; 4],
    /// `HTTPCode_ELB_{500,502,503,504}_Count`: the errors xlb answered, by code.
    elb_errors: [Family<Labels, Counter>; 4],
    redirects: Family<Labels, Counter>,
    fixed_responses: Family<Labels, Counter>,
    target_connection_errors: Family<Labels, Counter>,
    active_connections: Family<Labels, Gauge>,
    new_connections: Family<Labels, Counter>,
    rejected_connections: Family<Labels, Counter>,
    tls_errors: Family<Labels, Counter>,
    desync: Family<Labels, Counter>,
    /// NLB's, for the listeners of the user-space proxy: `NewFlowCount_TCP`/`_TLS` and
    /// `ActiveFlowCount_TCP`/`_TLS` (by the listener's protocol), `TCP_Client_Reset_Count`,
    /// `TCP_Target_Reset_Count`, `TargetTLSNegotiationErrorCount`.
    new_flows: [Family<Labels, Counter>; 2],
    active_flows: [Family<Labels, Gauge>; 2],
    client_resets: Family<Labels, Counter>,
    target_resets: Family<Labels, Counter>,
    target_tls_errors: Family<Labels, Counter>,
    /// Per listener; rendered into the one `processed_bytes` family with the L4 listeners.
    processed_bytes: Mutex<BTreeMap<String, Counter>>,
}

/// Buckets of `target_response_time`: 100 µs to about 52 s, doubling.
fn response_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for L7Metrics {
    fn default() -> Self {
        L7Metrics {
            requests: Family::default(),
            target_response_time: Family::new_with_constructor(response_time_histogram),
            elb_codes: Default::default(),
            target_codes: Default::default(),
            elb_errors: Default::default(),
            redirects: Family::default(),
            fixed_responses: Family::default(),
            target_connection_errors: Family::default(),
            active_connections: Family::default(),
            new_connections: Family::default(),
            rejected_connections: Family::default(),
            tls_errors: Family::default(),
            desync: Family::default(),
            new_flows: Default::default(),
            active_flows: Default::default(),
            client_resets: Family::default(),
            target_resets: Family::default(),
            target_tls_errors: Family::default(),
            processed_bytes: Mutex::default(),
        }
    }
}

impl L7Metrics {
    /// The processed-bytes counter of `listener`, which its HTTP and proxy connections share.
    fn processed_bytes(&self, listener: &str) -> Counter {
        self.processed_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(listener.to_owned())
            .or_default()
            .clone()
    }

    /// The handles of one listener (`listener` is its address), for its connections.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let lab = vec![("listener".to_owned(), listener.to_owned())];
        let processed_bytes = self.processed_bytes(listener);
        ListenerMetrics {
            active_connections: self.active_connections.get_or_create_owned(&lab),
            new_connections: self.new_connections.get_or_create_owned(&lab),
            rejected_connections: self.rejected_connections.get_or_create_owned(&lab),
            tls_errors: self.tls_errors.get_or_create_owned(&lab),
            desync: self.desync.get_or_create_owned(&lab),
            processed_bytes,
        }
    }

    /// The handles of one listener of the user-space proxy (`listener` is its address), TLS or
    /// not, forwarding to `group`.
    pub fn stream(&self, listener: &str, tls: bool, group: &str) -> StreamMetrics {
        let lab = vec![("listener".to_owned(), listener.to_owned())];
        let processed_bytes = self.processed_bytes(listener);
        let mut with_group = lab.clone();
        with_group.extend([
            ("rule".to_owned(), "default".to_owned()),
            ("target_group".to_owned(), group.to_owned()),
        ]);
        let kind = usize::from(tls);
        StreamMetrics {
            new_flows: self.new_flows[kind].get_or_create_owned(&lab),
            active_flows: self.active_flows[kind].get_or_create_owned(&lab),
            client_resets: self.client_resets.get_or_create_owned(&lab),
            target_resets: self.target_resets.get_or_create_owned(&lab),
            client_tls_errors: self.tls_errors.get_or_create_owned(&lab),
            target_tls_errors: self.target_tls_errors.get_or_create_owned(&lab),
            target_connection_errors: self
                .target_connection_errors
                .get_or_create_owned(&with_group),
            processed_bytes,
        }
    }

    /// The handles of one listener and its rules: each rule's priority (0: the default rule)
    /// with the target groups its action forwards to.
    pub fn route<'a>(
        &self,
        listener: &str,
        rules: impl IntoIterator<Item = (u32, Vec<&'a str>)>,
    ) -> RouteMetrics {
        let mut rules: Vec<(u32, RuleMetrics)> = rules
            .into_iter()
            .map(|(priority, groups)| {
                let rule = match priority {
                    0 => "default".to_owned(),
                    p => p.to_string(),
                };
                let request = |group: &str| self.request(listener, &rule, group);
                let groups = groups.iter().map(|g| (g.to_string(), request(g))).collect();
                let metrics = RuleMetrics {
                    no_group: request(""),
                    groups,
                };
                (priority, metrics)
            })
            .collect();
        rules.sort_by_key(|(p, _)| *p);
        RouteMetrics {
            listener: self.listener(listener),
            rules,
        }
    }

    fn request(&self, listener: &str, rule: &str, group: &str) -> RequestMetrics {
        let lab = vec![
            ("listener".to_owned(), listener.to_owned()),
            ("rule".to_owned(), rule.to_owned()),
            ("target_group".to_owned(), group.to_owned()),
        ];
        RequestMetrics {
            requests: self.requests.get_or_create_owned(&lab),
            target_response_time: self.target_response_time.get_or_create_owned(&lab),
            elb_codes: self
                .elb_codes
                .each_ref()
                .map(|f| f.get_or_create_owned(&lab)),
            target_codes: self
                .target_codes
                .each_ref()
                .map(|f| f.get_or_create_owned(&lab)),
            elb_errors: self
                .elb_errors
                .each_ref()
                .map(|f| f.get_or_create_owned(&lab)),
            redirects: self.redirects.get_or_create_owned(&lab),
            fixed_responses: self.fixed_responses.get_or_create_owned(&lab),
            target_connection_errors: self.target_connection_errors.get_or_create_owned(&lab),
        }
    }

    /// Adds the bytes of each HTTP listener to `family`: ALB's `ProcessedBytes` and NLB's share
    /// a name, so the agent renders one family with L4 and L7 listeners in it.
    pub fn add_processed_bytes(&self, family: &Family<Labels, Counter>) {
        let listeners = self
            .processed_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (listener, c) in listeners.iter() {
            family
                .get_or_create(&vec![("listener".to_owned(), listener.clone())])
                .inc_by(c.get());
        }
    }

    /// Adds the families (shared, not copied) to `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "request_count",
            "Requests answered, per listener, rule and target group (RequestCount)",
            self.requests.clone(),
        );
        reg.register_with_unit(
            "target_response_time",
            "From the request leaving xlb to the target's response head (TargetResponseTime)",
            Unit::Seconds,
            self.target_response_time.clone(),
        );
        for (class, family) in ["3xx", "4xx", "5xx"].iter().zip(&self.elb_codes) {
            reg.register(
                format!("httpcode_elb_{class}_count"),
                format!("{class} answers made by xlb itself (HTTPCode_ELB_{class}_Count)"),
                family.clone(),
            );
        }
        for (class, family) in ["2xx", "3xx", "4xx", "5xx"].iter().zip(&self.target_codes) {
            reg.register(
                format!("httpcode_target_{class}_count"),
                format!("{class} answers of targets (HTTPCode_Target_{class}_Count)"),
                family.clone(),
            );
        }
        for (code, family) in ELB_ERRORS.iter().zip(&self.elb_errors) {
            reg.register(
                format!("httpcode_elb_{code}_count"),
                format!("{code} answers made by xlb itself (HTTPCode_ELB_{code}_Count)"),
                family.clone(),
            );
        }
        reg.register(
            "active_connection_count",
            "Open client connections per HTTP listener (ActiveConnectionCount)",
            self.active_connections.clone(),
        );
        let counters = [
            (
                "http_redirect_count",
                "Redirect actions answered (HTTP_Redirect_Count)",
                &self.redirects,
            ),
            (
                "http_fixed_response_count",
                "Fixed-response actions answered (HTTP_Fixed_Response_Count)",
                &self.fixed_responses,
            ),
            (
                "target_connection_error_count",
                "Connections to targets that failed (TargetConnectionErrorCount)",
                &self.target_connection_errors,
            ),
            (
                "new_connection_count",
                "Client connections accepted per HTTP listener (NewConnectionCount)",
                &self.new_connections,
            ),
            (
                "rejected_connection_count",
                "Connections an HTTP listener failed to accept (RejectedConnectionCount)",
                &self.rejected_connections,
            ),
            (
                "client_tls_negotiation_error_count",
                "TLS handshakes that failed (ClientTLSNegotiationErrorCount)",
                &self.tls_errors,
            ),
            (
                "desync_mitigation_mode_non_compliant_request_count",
                "HTTP/1 requests that do not comply with RFC 7230, per listener (DesyncMitigationMode_NonCompliant_Request_Count)",
                &self.desync,
            ),
            (
                "tcp_client_reset_count",
                "Connections of the user-space proxy that their client reset (TCP_Client_Reset_Count)",
                &self.client_resets,
            ),
            (
                "tcp_target_reset_count",
                "Connections of the user-space proxy that their target reset (TCP_Target_Reset_Count)",
                &self.target_resets,
            ),
            (
                "target_tls_negotiation_error_count",
                "TLS handshakes with targets that failed (TargetTLSNegotiationErrorCount)",
                &self.target_tls_errors,
            ),
        ];
        for (name, help, family) in counters {
            reg.register(name, help, family.clone());
        }
        for (suffix, (new, active)) in ["tcp", "tls"]
            .iter()
            .zip(self.new_flows.iter().zip(&self.active_flows))
        {
            let upper = suffix.to_ascii_uppercase();
            reg.register(
                format!("new_flow_count_{suffix}"),
                format!("Connections accepted per {upper} listener of the user-space proxy (NewFlowCount_{upper})"),
                new.clone(),
            );
            reg.register(
                format!("active_flow_count_{suffix}"),
                format!("Open connections per {upper} listener of the user-space proxy (ActiveFlowCount_{upper})"),
                active.clone(),
            );
        }
    }

    /// The L7 families alone, as metrics text (for processes without the L4 agent).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut reg = Registry::with_prefix("xlb");
        let bytes = Family::<Labels, Counter>::default();
        self.add_processed_bytes(&bytes);
        reg.register("processed_bytes", "Bytes processed per listener", bytes);
        self.register(&mut reg);
        let mut out = String::new();
        encode(&mut out, &reg)?;
        Ok(out)
    }
}

/// One HTTP listener's connection-level handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub active_connections: Gauge,
    pub new_connections: Counter,
    pub rejected_connections: Counter,
    pub tls_errors: Counter,
    pub desync: Counter,
    /// Request and response bytes (headers and bodies, after TLS), both ways.
    pub processed_bytes: Counter,
}

/// One listener of the user-space proxy's handles.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub new_flows: Counter,
    pub active_flows: Gauge,
    pub client_resets: Counter,
    pub target_resets: Counter,
    pub client_tls_errors: Counter,
    pub target_tls_errors: Counter,
    pub target_connection_errors: Counter,
    /// Bytes from and to the client (after TLS), both ways.
    pub processed_bytes: Counter,
}

/// One listener's handles, rules included; compiled with its config.
#[derive(Debug)]
pub struct RouteMetrics {
    pub listener: ListenerMetrics,
    /// By priority, sorted.
    rules: Vec<(u32, RuleMetrics)>,
}

#[derive(Debug)]
struct RuleMetrics {
    /// Requests that reached no target group (redirects, fixed responses, refusals).
    no_group: RequestMetrics,
    groups: Vec<(String, RequestMetrics)>,
}

impl RouteMetrics {
    /// The handles for a request that matched rule `priority` and went to `group`, if any.
    pub fn request(&self, priority: u32, group: Option<&str>) -> Option<&RequestMetrics> {
        let i = self
            .rules
            .binary_search_by_key(&priority, |(p, _)| *p)
            .ok()?;
        let rule = &self.rules[i].1;
        Some(match group {
            None => &rule.no_group,
            Some(g) => rule
                .groups
                .iter()
                .find(|(name, _)| name == g)
                .map_or(&rule.no_group, |(_, m)| m),
        })
    }
}

/// The handles of one (listener, rule, target group).
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Counter,
    target_response_time: Histogram,
    elb_codes: [Counter; 3],
    target_codes: [Counter; 4],
    elb_errors: [Counter; 4],
    redirects: Counter,
    fixed_responses: Counter,
    target_connection_errors: Counter,
}

/// The error codes ALB counts one by one (`HTTPCode_ELB_502_Count`, ...).
const ELB_ERRORS: [u16; 4] = [500, 502, 503, 504];

impl RequestMetrics {
    /// Counts one answered request: `elb_status` is what the client got; `target` the target's
    /// status and response time, if a target answered. As ALB, an answer counts under
    /// `httpcode_target_*` if the target made it, else under `httpcode_elb_*`.
    pub fn record(&self, elb_status: u16, target: Option<(u16, Duration)>) {
        self.requests.inc();
        let (codes, status, first): (&[Counter], u16, u16) = match target {
            Some((status, time)) => {
                self.target_response_time.observe(time.as_secs_f64());
                (&self.target_codes, status, 200)
            }
            None => {
                if let Some(i) = ELB_ERRORS.iter().position(|&c| c == elb_status) {
                    self.elb_errors[i].inc();
                }
                (&self.elb_codes, elb_status, 300)
            }
        };
        if let Some(c) = status
            .checked_sub(first)
            .and_then(|d| codes.get(usize::from(d / 100)))
        {
            c.inc();
        }
    }

    /// A redirect action answered (`HTTP_Redirect_Count`).
    pub fn redirected(&self) {
        self.redirects.inc();
    }

    /// A fixed-response action answered (`HTTP_Fixed_Response_Count`).
    pub fn fixed_response(&self) {
        self.fixed_responses.inc();
    }

    /// A connection to a target that failed (`TargetConnectionErrorCount`).
    pub fn target_connection_error(&self) {
        self.target_connection_errors.inc();
    }
}
