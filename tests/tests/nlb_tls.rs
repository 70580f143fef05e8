//! NLB's TLS listeners, served by the user-space proxy: the certificate picked by SNI (curl checks
//! the chain against the test CA), ALPN as each policy says (openssl s_client offers, the
//! listener picks), the security policies' protocol versions, and the bytes forwarded to a TCP
//! group (xlb's HTTP test backend) and to a TLS group (HAProxy terminating TLS, which reports
//! the ALPN xlb offered it).

mod l7_support;

use std::process::{Command, Stdio};

use l7_support::{Haproxy, Lab, Pki, cert_entry, curl, free_port, path};

/// A TLS listener on 127.0.0.1:`port` with `certs`, forwarding to `group`, with extra keys.
fn tls_listener(port: u16, certs: &str, group: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"TLS\"\n\
         certificates = [{certs}]\n{extra}\n\
         default_action = {{ type = \"forward\", target_group = \"{group}\" }}\n\n"
    )
}

/// A group of one target on 127.0.0.1:`port`.
fn stream_group(name: &str, protocol: &str, port: u16, attributes: &str) -> String {
    format!(
        "[[target_groups]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nport = {port}\n\
         targets = [{{ id = \"127.0.0.1\" }}]\nattributes = {{ {attributes} }}\n\n"
    )
}

/// What `openssl s_client` agreed with the listener on `port`, offering `alpn` (none if
/// empty) with `extra` flags: its whole output, handshake failures included.
fn s_client(port: u16, alpn: &str, extra: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "api.example.com",
    ];
    if !alpn.is_empty() {
        args.extend(["-alpn", alpn]);
    }
    args.extend_from_slice(extra);
    let out = Command::new("timeout")
        .arg("10")
        .arg("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The ALPN line of an s_client output, or that there was no handshake.
fn alpn_of(out: &str) -> &str {
    if out.contains("no peer certificate available") {
        return "handshake failed";
    }
    out.lines()
        .find(|l| l.starts_with("ALPN protocol: ") || l.starts_with("No ALPN negotiated"))
        .unwrap_or("no ALPN line")
}

#[test]
fn tls_listener_picks_the_certificate_by_sni_and_the_protocol_by_its_alpn_policy() {
    let pki = Pki::new("nlb-sni");
    let certs = [
        pki.leaf("default", &["default.example.com"]),
        pki.leaf("api", &["api.example.com"]),
    ];
    let certs: Vec<String> = certs.iter().map(cert_entry).collect();
    let certs = certs.join(", ");
    let mut lab = Lab::new();
    let backend = lab.backend("web");
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let policies = [
        "alpn_policy = \"HTTP2Preferred\"",
        "alpn_policy = \"HTTP2Optional\"",
        "alpn_policy = \"HTTP1Only\"",
        "alpn_policy = \"HTTP2Only\"",
        "",
        "ssl_policy = \"ELBSecurityPolicy-TLS13-1-3-2021-06\"",
    ];
    let mut toml = stream_group("web", "TCP", backend, "");
    for (port, extra) in ports.iter().zip(policies) {
        toml += &tls_listener(*port, &certs, "web", extra);
    }
    lab.start(&toml);

    // SNI: each name gets its certificate (curl verifies it), and the bytes reach the TCP group.
    let ca = pki.ca();
    for (name, cn) in [
        ("api.example.com", "api.example.com"),
        ("default.example.com", "default.example.com"),
    ] {
        let resolve = format!("{name}:{}:127.0.0.1", ports[4]);
        let url = format!("https://{name}:{}/hello", ports[4]);
        let r = curl(&["--cacert", path(&ca), "--resolve", &resolve, &url]);
        assert_eq!((r.exit, r.status), (0, 200), "{name}: {}", r.stderr);
        assert!(r.subject().contains(&format!("CN={cn}")), "{}", r.stderr);
        assert_eq!(r.backend(), "web", "{}", r.body);
        assert!(r.body.contains("GET /hello HTTP/1.1"), "{}", r.body);
    }
    // No SNI: the default certificate.
    let url = format!("https://127.0.0.1:{}/", ports[4]);
    let r = curl(&["-k", &url]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(
        r.subject().contains("CN=default.example.com"),
        "{}",
        r.stderr
    );

    // ALPN: the listener's order decides among what the client offers.
    for (port, offer, want) in [
        (ports[0], "http/1.1,h2", "ALPN protocol: h2"),
        (ports[1], "h2,http/1.1", "ALPN protocol: http/1.1"),
        (ports[2], "h2,http/1.1", "ALPN protocol: http/1.1"),
        (ports[2], "h2", "handshake failed"),
        (ports[3], "h2,http/1.1", "ALPN protocol: h2"),
        (ports[3], "http/1.1", "handshake failed"),
        (ports[4], "h2,http/1.1", "No ALPN negotiated"),
        // A client that offers nothing gets nothing, whatever the policy.
        (ports[3], "", "No ALPN negotiated"),
    ] {
        let out = s_client(port, offer, &[]);
        assert_eq!(alpn_of(&out), want, "offering {offer:?}:\n{out}");
        if want == "handshake failed" {
            assert!(out.contains("no application protocol"), "{out}");
        }
    }

    // Security policies: the default takes TLS 1.2 and 1.3; TLS13-1-3 refuses 1.2.
    let out = s_client(ports[0], "", &["-tls1_2"]);
    assert!(out.contains("New, TLSv1.2"), "{out}");
    let out = s_client(ports[5], "", &["-tls1_2"]);
    assert!(!out.contains("New, TLSv1.2"), "{out}");
    assert!(out.contains("protocol version"), "{out}");
    let out = s_client(ports[5], "", &[]);
    assert!(out.contains("New, TLSv1.3"), "{out}");

    // The handshakes that failed count (each listener's: the TLS 1.2 one here); the flows are
    // the three curls, the s_client and the lab's readiness probe.
    let metrics = lab.metrics.render().expect("metrics");
    let errors = format!(
        "xlb_client_tls_negotiation_error_count_total{{listener=\"127.0.0.1:{}\"}} 1",
        ports[5]
    );
    assert!(metrics.contains(&errors), "{metrics}");
    let flows = format!(
        "xlb_new_flow_count_tls_total{{listener=\"127.0.0.1:{}\"}} 5",
        ports[4]
    );
    assert!(metrics.contains(&flows), "{metrics}");
}

#[test]
fn tls_listener_forwards_to_a_tls_group_offering_the_protocol_the_client_agreed() {
    let pki = Pki::new("nlb-tls-group");
    let leaf = pki.leaf("api", &["api.example.com"]);
    // HAProxy wants the chain and the key in one file.
    let combined = pki.dir.join("haproxy.pem");
    let pem =
        std::fs::read_to_string(&leaf.0).unwrap() + &std::fs::read_to_string(&leaf.1).unwrap();
    std::fs::write(&combined, pem).expect("write haproxy.pem");
    let target = free_port();
    let _haproxy = Haproxy::start(
        "tls-group",
        &format!(
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
             frontend tls\n    bind 127.0.0.1:{target} ssl crt {} alpn h2,http/1.1\n    \
             http-request return status 200 content-type text/plain lf-string \"alpn=%[ssl_fc_alpn] version=%[ssl_fc_protocol]\\n\"\n",
            path(&combined)
        ),
        &[target],
    );
    let mut lab = Lab::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cert = cert_entry(&leaf);
    let mut toml = stream_group("secure", "TLS", target, "");
    for (port, policy) in ports.iter().zip(["HTTP2Preferred", "HTTP1Only", "None"]) {
        toml += &tls_listener(
            *port,
            &cert,
            "secure",
            &format!("alpn_policy = \"{policy}\""),
        );
    }
    lab.start(&toml);
    let ca = pki.ca();
    for (port, version, alpn) in [
        (ports[0], "2", "alpn=h2"),
        (ports[1], "1.1", "alpn=http/1.1"),
        (ports[2], "1.1", "alpn= "),
    ] {
        let resolve = format!("api.example.com:{port}:127.0.0.1");
        let url = format!("https://api.example.com:{port}/");
        // The client speaks TLS 1.2 to xlb; HAProxy sees xlb's own session, in TLS 1.3.
        let r = curl(&[
            "--http2",
            "--tls-max",
            "1.2",
            "--cacert",
            path(&ca),
            "--resolve",
            &resolve,
            &url,
        ]);
        assert_eq!((r.exit, r.status), (0, 200), "{port}: {}", r.stderr);
        assert!(r.stderr.contains("TLSv1.2"), "{}", r.stderr);
        assert_eq!(r.version, version, "{}", r.stderr);
        assert!(r.body.contains(alpn), "{}", r.body);
        assert!(r.body.contains("version=TLSv1.3"), "{}", r.body);
    }
}
