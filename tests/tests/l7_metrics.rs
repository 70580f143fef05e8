//! The L7 tier's metrics, named after ALB's CloudWatch metrics: real requests (curl and raw TCP)
//! through xlb, then a scrape of the metrics endpoint over HTTP, asserting what each counter
//! says per listener, rule and target group; and the byte counts of the access log.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use l7_support::{Lab, curl, free_port, group, raw, read_head};

/// The value of the series `name{labels}` in a scrape, if present.
fn value(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Serves `lab`'s metrics on a free port (as the agent's endpoint does) and returns its URL.
fn metrics_endpoint(lab: &Lab) -> String {
    let socket = lab
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind metrics");
    let url = format!(
        "http://{}/metrics",
        socket.local_addr().expect("metrics address")
    );
    let metrics = lab.metrics.clone();
    lab.spawn(xlb::metrics::serve(socket, move || {
        let metrics = metrics.clone();
        async move { metrics.render().ok() }
    }));
    url
}

#[test]
fn requests_connections_and_refusals_are_counted_per_listener_rule_and_group() {
    let mut lab = Lab::new();
    let web = lab.backend("web");
    let (http, https) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("xlb-l7-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let self_signed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, self_signed.cert.pem()).expect("write cert");
    std::fs::write(&key, self_signed.signing_key.serialize_pem()).expect("write key");
    lab.start(&format!(
        "{}[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {http}\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n\
         [[http_listeners.rules]]\npriority = 10\n\
         conditions = [{{ field = \"path-pattern\", values = [\"/fixed\"] }}]\n\
         actions = [{{ type = \"fixed-response\", status_code = 404 }}]\n\n\
         [[http_listeners.rules]]\npriority = 20\n\
         conditions = [{{ field = \"path-pattern\", values = [\"/moved\"] }}]\n\
         actions = [{{ type = \"redirect\", host = \"x.example.com\", status_code = \"HTTP_302\" }}]\n\n\
         [[http_listeners]]\naddress = \"127.0.0.1\"\nport = {https}\nprotocol = \"HTTPS\"\n\
         certificates = [{{ cert = {cert:?}, key = {key:?} }}]\n\
         default_action = {{ type = \"fixed-response\", status_code = 200 }}\n",
        group("web", &[web], "")
    ));
    let url = format!("http://127.0.0.1:{http}");
    for _ in 0..3 {
        assert_eq!(curl(&[&format!("{url}/")]).status, 200);
    }
    assert_eq!(curl(&[&format!("{url}/fixed")]).status, 404);
    assert_eq!(curl(&[&format!("{url}/moved")]).status, 302);
    let addr = format!("127.0.0.1:{http}").parse().expect("address");
    let smuggled = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    );
    assert!(smuggled.starts_with("HTTP/1.1 400"), "{smuggled}");
    // Plain text to the HTTPS listener: a failed handshake.
    let tls_addr = format!("127.0.0.1:{https}").parse().expect("address");
    let _ = raw(tls_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");

    let endpoint = metrics_endpoint(&lab);
    let listener = format!("listener=\"127.0.0.1:{http}\"");
    let series =
        |rule: &str, group: &str| format!("{listener},rule=\"{rule}\",target_group=\"{group}\"");
    // Connections close a moment after their last answer: wait for the gauge to settle.
    let deadline = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let reply = curl(&[&endpoint]);
        assert_eq!(reply.status, 200, "{}", reply.stderr);
        let active = value(&reply.body, "xlb_active_connection_count", &listener);
        if active == Some(0.0) || Instant::now() > deadline {
            break reply.body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let expect = [
        ("xlb_request_count_total", series("default", "web"), 3.0),
        (
            "xlb_httpcode_target_2xx_count_total",
            series("default", "web"),
            3.0,
        ),
        (
            "xlb_target_response_time_seconds_count",
            series("default", "web"),
            3.0,
        ),
        ("xlb_request_count_total", series("10", ""), 1.0),
        ("xlb_httpcode_elb_4xx_count_total", series("10", ""), 1.0),
        ("xlb_httpcode_target_4xx_count_total", series("10", ""), 0.0),
        ("xlb_request_count_total", series("20", ""), 1.0),
        ("xlb_httpcode_elb_3xx_count_total", series("20", ""), 1.0),
        ("xlb_http_fixed_response_count_total", series("10", ""), 1.0),
        ("xlb_http_redirect_count_total", series("20", ""), 1.0),
        // The refused request matched no rule: the default one, no group.
        (
            "xlb_httpcode_elb_4xx_count_total",
            series("default", ""),
            1.0,
        ),
        (
            "xlb_desync_mitigation_mode_non_compliant_request_count_total",
            listener.clone(),
            1.0,
        ),
        ("xlb_active_connection_count", listener.clone(), 0.0),
        (
            "xlb_client_tls_negotiation_error_count_total",
            format!("listener=\"127.0.0.1:{https}\""),
            1.0,
        ),
    ];
    for (name, labels, want) in expect {
        assert_eq!(
            value(&scrape, name, &labels),
            Some(want),
            "{name}{{{labels}}} in\n{scrape}"
        );
    }
    // Six clients, and the lab's probe that the listener is up.
    let new = value(&scrape, "xlb_new_connection_count_total", &listener).unwrap_or(0.0);
    assert!(new >= 6.0, "new connections {new} in\n{scrape}");
    let bytes = value(&scrape, "xlb_processed_bytes_total", &listener).unwrap_or(0.0);
    assert!(bytes > 600.0, "processed bytes {bytes} in\n{scrape}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `request` on `s` and reads one whole response (its head, then `content-length` bytes).
fn exchange(s: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    s.write_all(request).expect("send");
    let mut response = read_head(s);
    let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("read body");
    response.extend(body);
    response
}

#[test]
fn the_access_log_counts_each_requests_bytes_heads_included() {
    let mut lab = Lab::new();
    let web = lab.backend("web");
    let port = free_port();
    lab.start(&format!(
        "{}[[http_listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"HTTP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n\
         [[http_listeners.rules]]\npriority = 10\n\
         conditions = [{{ field = \"path-pattern\", values = [\"/fixed\"] }}]\n\
         actions = [{{ type = \"fixed-response\", status_code = 200, content_type = \"text/plain\", \
         message_body = \"made by xlb\" }}]\n",
        group("web", &[web], "")
    ));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // A body to the target and its answer back; then a response xlb makes (hyper adds its
    // `date` and `content-length`).
    let requests: [&[u8]; 2] = [
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nX-Note: counted\r\n\r\nhello world",
        b"GET /fixed?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    let sizes: Vec<[usize; 2]> = requests
        .iter()
        .map(|r| [r.len(), exchange(&mut s, r).len()])
        .collect();
    drop(s);
    let log = lab.log_lines(|l| l.len() >= 2);
    let logged: Vec<[usize; 2]> = log
        .iter()
        .map(|l| {
            let mut n = l.split(' ').skip(10).map(|n| n.parse().expect("bytes"));
            [n.next().expect("received"), n.next().expect("sent")]
        })
        .collect();
    assert_eq!(logged, sizes, "{log:#?}");
}
