//! NLB's `proxy_protocol_v2.enabled`, served by the user-space proxy: HAProxy (`accept-proxy`)
//! reads the header and answers with the client address it names, so each client binds an
//! address of its own (127.0.0.7, .8, .9) for the assertion to tell them apart; on TLS
//! listeners the header carries the SNI (`fc_pp_authority`). Also: a half-close passes through,
//! `xlb check` refuses PROXY v2 where it cannot go, in the lab's namespaces the agent leaves
//! a PROXY v2 listener's VIP to the proxy (XDP would tunnel it to a target that has no decap), and
//! the proxy closes a connection idle for its listener's `tcp.idle_timeout.seconds`.

mod l7_support;

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use l7_support::{Haproxy, Lab, Pki, cert_entry, curl, free_port, path};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use xlb_tests::{
    agent::{Agent, xlb_bin},
    lab::{CLIENT_V4, Lab as NetLab, LabSpec, Role, VIP_V4, backend_v4, pin_dir, run_dir},
};

/// HAProxy's answer: the addresses and the authority of the PROXY header it read.
const ANSWER: &str = "http-request return status 200 content-type text/plain lf-string \
                      \"src=%[src] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\\n\"";

/// HAProxy in HTTP mode on 127.0.0.1:`clear` (PROXY header, then HTTP) and on
/// 127.0.0.1:`tls` (PROXY header, then TLS with `pem`).
fn haproxy(clear: u16, tls: u16, pem: &str) -> Haproxy {
    let config = format!(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend clear\n    bind 127.0.0.1:{clear} accept-proxy\n    {ANSWER}\n\
         frontend tls\n    bind 127.0.0.1:{tls} accept-proxy ssl crt {pem} alpn h2,http/1.1\n    {ANSWER}\n"
    );
    Haproxy::start("pp2", &config, &[clear, tls])
}

fn group(name: &str, protocol: &str, port: u16) -> String {
    format!(
        "[[target_groups]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nport = {port}\n\
         targets = [{{ id = \"127.0.0.1\" }}]\nattributes = {{ \"proxy_protocol_v2.enabled\" = \"true\" }}\n\n"
    )
}

fn listener(port: u16, protocol: &str, group: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"{protocol}\"\n{extra}\n\
         default_action = {{ type = \"forward\", target_group = \"{group}\" }}\n\n"
    )
}

#[test]
fn haproxy_reads_the_clients_address_and_the_sni_from_the_proxy_header() {
    let pki = Pki::new("pp2");
    let leaf = pki.leaf("api", &["api.example.com"]);
    let pem = pki.dir.join("haproxy.pem");
    let both =
        std::fs::read_to_string(&leaf.0).unwrap() + &std::fs::read_to_string(&leaf.1).unwrap();
    std::fs::write(&pem, both).expect("write haproxy.pem");
    let (clear, tls) = (free_port(), free_port());
    let _haproxy = haproxy(clear, tls, path(&pem));
    let (tcp_port, tls_port, tls_tls_port) = (free_port(), free_port(), free_port());
    let certs = format!("certificates = [{}]", cert_entry(&leaf));
    let mut lab = Lab::new();
    lab.start(&format!(
        "{}{}{}{}{}",
        group("pp", "TCP", clear),
        group("pp-tls", "TLS", tls),
        listener(tcp_port, "TCP", "pp", ""),
        listener(tls_port, "TLS", "pp", &certs),
        listener(
            tls_tls_port,
            "TLS",
            "pp-tls",
            &format!("{certs}\nalpn_policy = \"HTTP2Preferred\"")
        ),
    ));
    let ca = pki.ca();

    // A TCP listener: the client's address, the listener's address and port, no authority.
    let url = format!("http://127.0.0.1:{tcp_port}/");
    let r = curl(&["--interface", "127.0.0.7", &url]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_eq!(
        r.body.trim(),
        format!("src=127.0.0.7 dst=127.0.0.1:{tcp_port} authority=")
    );
    // TLS listeners: the SNI too, toward a TCP group and (over TLS, h2) toward a TLS group.
    for (client, port, version) in [
        ("127.0.0.8", tls_port, "1.1"),
        ("127.0.0.9", tls_tls_port, "2"),
    ] {
        let resolve = format!("api.example.com:{port}:127.0.0.1");
        let url = format!("https://api.example.com:{port}/");
        let mut args = vec![
            "--interface",
            client,
            "--cacert",
            path(&ca),
            "--resolve",
            &resolve,
        ];
        // HAProxy's clear frontend speaks HTTP/1.1 (no h2c); the TLS one takes h2 by ALPN.
        args.push(if version == "2" {
            "--http2"
        } else {
            "--http1.1"
        });
        args.push(&url);
        let r = curl(&args);
        assert_eq!(
            (r.status, r.version.as_str()),
            (200, version),
            "{}",
            r.stderr
        );
        assert_eq!(
            r.body.trim(),
            format!("src={client} dst=127.0.0.1:{port} authority=api.example.com")
        );
    }
    let metrics = lab.metrics.render().expect("metrics");
    for family in ["new_flow_count_tcp", "new_flow_count_tls"] {
        assert!(
            metrics.contains(&format!("xlb_{family}_total{{listener=")),
            "{metrics}"
        );
    }
}

/// A target that reads a PROXY v2 header and then everything until the end of the stream, then
/// says how many bytes came after the header, and closes.
async fn counting_target(socket: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = socket.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut all = Vec::new();
            if s.read_to_end(&mut all).await.is_err() || all.len() < 16 {
                return;
            }
            // The fixed part is 16 bytes; its last two give the length of the rest.
            let header = 16 + usize::from(u16::from_be_bytes([all[14], all[15]]));
            let reply = format!("got {}\n", all.len().saturating_sub(header));
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}

#[test]
fn a_half_close_passes_through_and_the_other_direction_goes_on() {
    let mut lab = Lab::new();
    let target = lab
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target_port = target.local_addr().unwrap().port();
    lab.spawn(counting_target(target));
    let port = free_port();
    lab.start(&format!(
        "{}{}",
        group("pp", "TCP", target_port),
        listener(port, "TCP", "pp", "")
    ));
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello, target").unwrap();
    // The target answers only once it has read the end of the stream: the client's FIN must
    // reach it while the client still reads.
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .expect("reply after the half-close");
    assert_eq!(reply, "got 13\n");
}

#[test]
fn xlb_check_refuses_proxy_protocol_where_it_cannot_go() {
    let dir = std::env::temp_dir().join(format!("xlb-pp2-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("xlb.toml");
    let check = |text: &str| {
        std::fs::write(&file, format!("[node]\ninterface = \"lo\"\n\n{text}")).unwrap();
        let out = std::process::Command::new(xlb_bin().expect("xlb binary"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("xlb check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let udp_group = group("pp", "UDP", 53);
    let (ok, err) = check(&format!("{udp_group}{}", listener(53, "UDP", "pp", "")));
    assert!(!ok);
    assert!(
        err.contains("xlb.toml: line 9: target_groups[0] (pp).attributes.\"proxy_protocol_v2.enabled\": PROXY protocol v2 is for TCP and TLS groups: UDP cannot carry it"),
        "{err}"
    );
    let tcp_group = group("pp", "TCP", 80);
    let (ok, err) = check(&format!("{tcp_group}{}", listener(80, "TCP_UDP", "pp", "")));
    assert!(!ok);
    assert!(
        err.contains(
            "line 16: listeners[0].default_action.target_group: \"pp\" has \
             proxy_protocol_v2.enabled: UDP datagrams cannot carry the header"
        ),
        "{err}"
    );
    let (ok, err) = check(&format!(
        "{tcp_group}{}",
        listener(80, "TCP", "pp", "forwarding = \"dsr\"")
    ));
    assert!(!ok);
    assert!(
        err.contains("listeners[0].forwarding: dsr: this listener is served in user space"),
        "{err}"
    );
    let (ok, err) = check(&format!("{tcp_group}{}", listener(80, "TCP", "pp", "")));
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_agent_leaves_a_proxy_protocol_vip_to_the_user_space_proxy() {
    let lab = NetLab::up(LabSpec {
        prefix: "xpp2-".into(),
        backends: 1,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    // The proxy binds the VIP: the node holds it, as a listener's own address.
    let vip = VIP_V4.to_string();
    lab.exec(
        Role::Lb,
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )
    .expect("VIP on lo");
    let backend = backend_v4(1).to_string();
    let haproxy_cfg = run_dir(lab.prefix()).join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
             frontend pp\n    bind {backend}:8080 accept-proxy\n    {ANSWER}\n"
        ),
    )
    .unwrap();
    let mut haproxy = lab
        .spawn(
            Role::Backend(1),
            &["haproxy", "-db", "-f", path(&haproxy_cfg)],
        )
        .expect("haproxy in backend1");
    let config = format!(
        "[node]\ninterface = \"eth0\"\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [[target_groups]]\nname = \"pp\"\nprotocol = \"TCP\"\nport = 8080\ntargets = [{{ id = \"{backend}\" }}]\n\
         attributes = {{ \"proxy_protocol_v2.enabled\" = \"true\" }}\n\n\
         [[listeners]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"pp\" }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        run_dir(lab.prefix()).join("xlb.sock").display(),
        run_dir(lab.prefix()).join("state.json").display(),
    );
    let path_toml = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path_toml, config).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path_toml).expect("xlb run");
    // Bounded: the agent and HAProxy are up within a few seconds.
    let url = format!("http://{vip}/");
    let mut body = String::new();
    for _ in 0..50 {
        let out = lab
            .exec(Role::Client, &["curl", "-sS", "--max-time", "2", &url])
            .expect("curl");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !body.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        body.trim(),
        format!("src={CLIENT_V4} dst={vip}:80 authority="),
        "the target should see the client's address through the PROXY header"
    );
    agent.stop().expect("xlb stops");
    let _ = haproxy.kill();
    let _ = haproxy.wait();
}

/// A target that reads a PROXY v2 header, then answers each read with `name` and what it read.
async fn naming_echo(socket: tokio::net::TcpListener, name: &'static str) {
    loop {
        let Ok((mut s, _)) = socket.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut fixed = [0u8; 16];
            if s.read_exact(&mut fixed).await.is_err() {
                return;
            }
            let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
            if s.read_exact(&mut rest).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                let reply = format!("{name} {}", String::from_utf8_lossy(&buf[..n]));
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends `line` on `s` and reads the answer (one read).
fn ask(s: &mut TcpStream, line: &str) -> String {
    s.write_all(line.as_bytes()).expect("send");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_reload_moves_new_connections_and_a_target_that_left_is_cut_after_its_delay() {
    let mut lab = Lab::new();
    let mut ports = Vec::new();
    for name in ["one", "two"] {
        let socket = lab
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        ports.push(socket.local_addr().unwrap().port());
        lab.spawn(naming_echo(socket, name));
    }
    let port = free_port();
    let config = |target: u16| {
        format!(
            "[[target_groups]]\nname = \"pp\"\nprotocol = \"TCP\"\nport = {target}\n\
             targets = [{{ id = \"127.0.0.1\" }}]\n\
             attributes = {{ \"proxy_protocol_v2.enabled\" = \"true\", \
             \"deregistration_delay.timeout_seconds\" = \"1\" }}\n\n{}",
            listener(port, "TCP", "pp", "")
        )
    };
    lab.start(&config(ports[0]));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = TcpStream::connect(addr).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ask(&mut first, "a\n"), "one a\n");
    // The group's target moves: new connections go to the new one, the open one stays on the
    // target that left, for its deregistration delay.
    lab.reload(&config(ports[1]));
    let mut second = TcpStream::connect(addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ask(&mut second, "b\n"), "two b\n");
    assert_eq!(ask(&mut first, "c\n"), "one c\n");
    // Then it is cut: the proxy closes the client's side (bounded by the read timeout).
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = [0u8; 16];
    let cut = first.write_all(b"d\n").and_then(|()| first.read(&mut buf));
    assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    assert_eq!(ask(&mut second, "e\n"), "two e\n");
}

/// `tcp.idle_timeout.seconds` on a TCP listener the proxy serves: a connection where nothing
/// moves is closed after the listener's 60 s (the proxy checks every 3 s: 60 to 63 s after the
/// last byte), while one as idle on a listener without the attribute stays open (NLB's 350 s).
#[test]
fn an_idle_connection_is_closed_after_the_listeners_tcp_idle_timeout() {
    let mut lab = Lab::new();
    let socket = lab
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target = socket.local_addr().unwrap().port();
    lab.spawn(naming_echo(socket, "t"));
    let (short, default) = (free_port(), free_port());
    lab.start(&format!(
        "{}{}{}",
        group("pp", "TCP", target),
        listener(
            short,
            "TCP",
            "pp",
            "attributes = { \"tcp.idle_timeout.seconds\" = \"60\" }"
        ),
        listener(default, "TCP", "pp", "")
    ));
    let open = |port: u16| {
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
        // Bounds the wait for the close.
        s.set_read_timeout(Some(Duration::from_secs(75))).unwrap();
        assert_eq!(ask(&mut s, "a\n"), "t a\n");
        s
    };
    let (mut idle, mut kept) = (open(short), open(default));
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let closed = idle.read(&mut buf);
    let after = t0.elapsed();
    assert!(
        matches!(&closed, Ok(0)),
        "{closed:?} after {after:?}: not closed by the proxy"
    );
    assert!(
        (Duration::from_secs(55)..=Duration::from_secs(70)).contains(&after),
        "closed after {after:?}, not about 60 s"
    );
    assert_eq!(
        ask(&mut kept, "b\n"),
        "t b\n",
        "the default listener's connection"
    );
}

/// A target of a group the proxy serves is reached on its own `port` (as `xlb import aws`
/// writes targets registered on ports other than their group's), the others on the group's.
#[test]
fn the_proxy_connects_to_a_targets_own_port() {
    let mut lab = Lab::new();
    let mut ports = Vec::new();
    for (name, address) in [("own", "127.0.0.1:0"), ("group", "127.0.0.2:0")] {
        let socket = lab
            .block_on(tokio::net::TcpListener::bind(address))
            .unwrap();
        ports.push(socket.local_addr().unwrap().port());
        lab.spawn(naming_echo(socket, name));
    }
    let port = free_port();
    // Round robin alternates between the two targets.
    lab.start(&format!(
        "[[target_groups]]\nname = \"pp\"\nprotocol = \"TCP\"\nport = {}\n\
         targets = [{{ id = \"127.0.0.1\", port = {} }}, {{ id = \"127.0.0.2\" }}]\n\
         attributes = {{ \"proxy_protocol_v2.enabled\" = \"true\" }}\n\n{}",
        ports[1],
        ports[0],
        listener(port, "TCP", "pp", "")
    ));
    let answers: std::collections::BTreeSet<String> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ask(&mut s, "x\n")
        })
        .collect();
    assert_eq!(answers, ["group x\n", "own x\n"].map(String::from).into());
}
