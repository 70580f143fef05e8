//! HTTPS listeners: certificates generated at test time with rcgen; curl checks the chain against
//! the test CA, so a handshake only succeeds when SNI picked the right certificate. Also ALPN h2,
//! the default certificate without SNI, HTTP→HTTPS redirects, and certificates swapped by reload.

mod l7_support;

use std::path::PathBuf;

use l7_support::{Lab, Pki, cert_entry, curl, free_port, group, path};

/// An HTTPS listener with certificates (default first) and an HTTP listener redirecting to it.
fn tls_toml(backend: u16, https: u16, http: u16, certs: &[(PathBuf, PathBuf)]) -> String {
    let certs: Vec<String> = certs.iter().map(cert_entry).collect();
    format!(
        r#"{}
[[http_listeners]]
address = "127.0.0.1"
port = {https}
protocol = "HTTPS"
certificates = [{}]
default_action = {{ type = "forward", target_group = "web" }}

[[http_listeners]]
address = "127.0.0.1"
port = {http}
protocol = "HTTP"
default_action = {{ type = "redirect", protocol = "HTTPS", port = "{https}", status_code = "HTTP_301" }}
"#,
        group("web", &[backend], ""),
        certs.join(", ")
    )
}

/// curl to `https://{name}:{port}{path}` resolved to 127.0.0.1, trusting only the test CA.
fn https(pki: &Pki, name: &str, port: u16, extra: &[&str]) -> l7_support::Reply {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}/hello");
    let ca = pki.ca();
    let mut args = vec!["--cacert", path(&ca), "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

#[test]
fn sni_picks_the_certificate_and_alpn_negotiates_h2() {
    let pki = Pki::new("sni");
    let certs = [
        pki.leaf("default", &["default.example.com"]),
        pki.leaf("api", &["api.example.com"]),
        pki.leaf("wild", &["*.shop.example.com"]),
    ];
    let mut lab = Lab::new();
    let backend = lab.backend("web");
    let (tls_port, http_port) = (free_port(), free_port());
    lab.start(&tls_toml(backend, tls_port, http_port, &certs));

    for (name, cn) in [
        ("api.example.com", "api.example.com"),
        ("eu.shop.example.com", "*.shop.example.com"),
        ("default.example.com", "default.example.com"),
    ] {
        let r = https(&pki, name, tls_port, &["--http1.1"]);
        assert_eq!((r.exit, r.status), (0, 200), "{name}: {}", r.stderr);
        assert!(
            r.subject().contains(&format!("CN={cn}")),
            "{name}: {}",
            r.subject()
        );
        assert_eq!(r.version, "1.1");
        assert!(r.body.contains("x-forwarded-proto: https"), "{}", r.body);
        assert!(!r.body.contains("x-amzn-tls"), "off by default: {}", r.body);
        assert!(
            r.body.contains(&format!("x-forwarded-port: {tls_port}")),
            "{}",
            r.body
        );
    }
    // No certificate covers this name: the default is served, and curl refuses it.
    let r = https(&pki, "other.example.org", tls_port, &[]);
    assert_eq!(r.exit, 60, "{}", r.stderr);
    assert!(
        r.subject().contains("CN=default.example.com"),
        "{}",
        r.stderr
    );
    // Without SNI (an IP address), the default certificate.
    let url = format!("https://127.0.0.1:{tls_port}/");
    let r = curl(&["-k", &url]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(
        r.subject().contains("CN=default.example.com"),
        "{}",
        r.stderr
    );

    let r = https(&pki, "api.example.com", tls_port, &["--http2"]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.stderr);
    assert!(
        r.stderr.contains("ALPN: server accepted h2"),
        "{}",
        r.stderr
    );
    assert!(r.body.contains("GET /hello HTTP/1.1"), "{}", r.body);
    let r = https(
        &pki,
        "api.example.com",
        tls_port,
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.stderr.contains("TLSv1.2"), "{}", r.stderr);

    let log = lab.log_lines(|l| l.iter().any(|l| l.starts_with("h2 ")));
    assert!(
        log.iter()
            .any(|l| l.starts_with("h2 ") && l.contains("\"api.example.com\"")),
        "{log:#?}"
    );
}

#[test]
fn http_redirects_to_https_and_the_redirect_is_followed() {
    let pki = Pki::new("redirect");
    let certs = [pki.leaf("default", &["www.example.com"])];
    let mut lab = Lab::new();
    let backend = lab.backend("web");
    let (tls_port, http_port) = (free_port(), free_port());
    lab.start(&tls_toml(backend, tls_port, http_port, &certs));
    let plain = format!("http://www.example.com:{http_port}/a/b?c=d");
    let r = curl(&[
        "--resolve",
        &format!("www.example.com:{http_port}:127.0.0.1"),
        &plain,
    ]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://www.example.com:{tls_port}/a/b?c=d").as_str())
    );
    let ca = pki.ca();
    let r = curl(&[
        "-L",
        "--cacert",
        path(&ca),
        "--resolve",
        &format!("www.example.com:{http_port}:127.0.0.1"),
        "--resolve",
        &format!("www.example.com:{tls_port}:127.0.0.1"),
        &plain,
    ]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.body.contains("GET /a/b?c=d HTTP/1.1"), "{}", r.body);
}

#[test]
fn reload_swaps_certificates_without_a_restart() {
    let pki = Pki::new("reload");
    let old = [pki.leaf("old", &["old.example.com"])];
    let new = [
        pki.leaf("new", &["new.example.com"]),
        pki.leaf("more", &["more.example.com"]),
    ];
    let mut lab = Lab::new();
    let backend = lab.backend("web");
    let (tls_port, http_port) = (free_port(), free_port());
    lab.start(&tls_toml(backend, tls_port, http_port, &old));
    assert_eq!(https(&pki, "old.example.com", tls_port, &[]).status, 200);
    assert_eq!(https(&pki, "new.example.com", tls_port, &[]).exit, 60);
    lab.reload(&tls_toml(backend, tls_port, http_port, &new));
    assert_eq!(https(&pki, "new.example.com", tls_port, &[]).status, 200);
    assert_eq!(https(&pki, "more.example.com", tls_port, &[]).status, 200);
    assert_eq!(https(&pki, "old.example.com", tls_port, &[]).exit, 60);
}

#[test]
fn targets_get_the_tls_version_and_cipher_suite_when_the_listener_says_so() {
    let pki = Pki::new("tls-headers");
    let certs = [pki.leaf("default", &["default.example.com"])];
    let mut lab = Lab::new();
    let backend = lab.backend("web");
    let (tls_port, http_port) = (free_port(), free_port());
    let toml = tls_toml(backend, tls_port, http_port, &certs).replacen(
        "protocol = \"HTTPS\"\n",
        "protocol = \"HTTPS\"\nattributes = { \"routing.http.x_amzn_tls_version_and_cipher_suite.enabled\" = \"true\" }\n",
        1,
    );
    lab.start(&toml);
    let mut seen = Vec::new();
    for max in ["1.2", "1.3"] {
        let r = https(&pki, "default.example.com", tls_port, &["--tls-max", max]);
        assert_eq!(r.status, 200, "{}", r.stderr);
        let header = |name: &str| {
            r.body
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("no {name} in {}", r.body))
                .to_owned()
        };
        let (version, cipher) = (
            header("x-amzn-tls-version"),
            header("x-amzn-tls-cipher-suite"),
        );
        // ALB's names: `TLSv1.2`, and OpenSSL's for the suite (`ECDHE-...`, `TLS_AES_...`).
        assert_eq!(version, format!("TLSv{max}"));
        assert!(
            cipher.starts_with("ECDHE-") || cipher.starts_with("TLS_"),
            "{cipher}"
        );
        assert!(!cipher.contains("WITH"), "{cipher}");
        seen.push(format!(" {cipher} {version} "));
    }
    // The same names as the access log's ssl_cipher and ssl_protocol.
    let log = lab.log_lines(|l| l.len() >= 2);
    for s in &seen {
        assert!(
            log.iter().any(|l| l.contains(s.as_str())),
            "{s:?} in {log:#?}"
        );
    }
}
