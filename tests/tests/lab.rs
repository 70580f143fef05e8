//! End-to-end checks of the network lab itself (no load balancer): the
//! topology, the backend servers and the teardown. Needs root.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    thread,
    time::Duration,
};

use xlb_tests::lab::{
    self, ECHO_PORT, HTTP_PORT, Lab, LabSpec, Role, UDP_PORT, VIP_V4, VIP_V6, backend_v4,
    backend_v6, in_netns,
};

/// Bound on every connect, read and write.
const TIMEOUT: Duration = Duration::from_secs(5);

fn spec(prefix: &str, backends: usize) -> LabSpec {
    LabSpec {
        prefix: prefix.to_owned(),
        backends,
        server_bin: env!("CARGO_BIN_EXE_xlb-lab").into(),
        xlb: None,
    }
}

/// The lab namespaces that exist for `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn connect(addr: IpAddr, port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((addr, port)), TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr} port {port}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// One HTTP request on its own connection; returns the body.
fn http_get(addr: IpAddr) -> String {
    let mut stream = connect(addr, HTTP_PORT);
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response:?}");
    let (_, body) = response.split_once("\r\n\r\n").expect("no end of head");
    body.to_owned()
}

/// Three requests on one kept-alive connection; returns the bodies.
fn http_keep_alive(addr: IpAddr) -> Vec<String> {
    let stream = connect(addr, HTTP_PORT);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    (0..3)
        .map(|_| {
            write!(writer, "GET / HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
            let mut length = 0;
            for _ in 0..20 {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.strip_prefix("Content-Length: ") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            String::from_utf8(body).unwrap()
        })
        .collect()
}

/// One datagram to the UDP server; returns the answer and who sent it.
fn udp_ask(addr: IpAddr) -> (String, SocketAddr) {
    let local: IpAddr = match addr {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket.send_to(b"who are you?", (addr, UDP_PORT)).unwrap();
    let mut buf = [0; 100];
    let (len, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer from {addr}: {e}"));
    (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
}

fn server_pid(prefix: &str, i: usize) -> u32 {
    let path = lab::run_dir(prefix).join(format!("backend{i}.pid"));
    fs::read_to_string(&path).unwrap().trim().parse().unwrap()
}

/// Gone, or a zombie waiting for a parent that kept its lab.
fn is_dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(") ").next().unwrap().starts_with('Z'),
    }
}

#[test]
fn backends_answer_through_the_router_and_the_lab_goes_away() {
    let prefix = "xlab-a-";
    let lab = Lab::up(spec(prefix, 2)).unwrap();
    assert_eq!(
        namespaces(prefix),
        [
            "xlab-a-backend1",
            "xlab-a-backend2",
            "xlab-a-client",
            "xlab-a-lb",
            "xlab-a-router"
        ]
    );
    let pids = [server_pid(prefix, 1), server_pid(prefix, 2)];

    in_netns(&lab.ns(Role::Client), || {
        for i in 1..=2 {
            let name = format!("backend{i}");
            for addr in [IpAddr::from(backend_v4(i)), backend_v6(i).into()] {
                assert_eq!(http_get(addr), format!("{name}\n"), "HTTP from {addr}");
                assert_eq!(http_keep_alive(addr), vec![format!("{name}\n"); 3]);
                assert_eq!(udp_ask(addr), (name.clone(), (addr, UDP_PORT).into()));
            }
        }

        // A long-lived echo connection keeps answering, always from one backend.
        let stream = connect(backend_v6(2).into(), ECHO_PORT);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for n in 0..5 {
            writeln!(writer, "line {n}").unwrap();
            let mut reply = String::new();
            reader.read_line(&mut reply).unwrap();
            assert_eq!(reply, format!("backend2: line {n}\n"));
            thread::sleep(Duration::from_millis(50));
        }

        // Many sequential, then concurrent, connections.
        for _ in 0..100 {
            assert_eq!(http_get(backend_v4(1).into()), "backend1\n");
        }
        thread::scope(|scope| {
            for _ in 0..8 {
                // Threads spawned here inherit the client namespace.
                scope.spawn(|| {
                    for _ in 0..25 {
                        assert_eq!(http_get(backend_v6(1).into()), "backend1\n");
                    }
                });
            }
        });
    })
    .unwrap();

    // A backend answers on its VIPs, from the VIP.
    in_netns(&lab.ns(Role::Backend(1)), || {
        for vip in [IpAddr::from(VIP_V4), VIP_V6.into()] {
            assert_eq!(
                udp_ask(vip),
                ("backend1".to_owned(), (vip, UDP_PORT).into())
            );
        }
    })
    .unwrap();

    // Transmit checksum offload is off on both ends of the veths.
    for (role, iface) in [(Role::Router, "b1"), (Role::Backend(1), "eth0")] {
        let out = lab.exec(role, &["ethtool", "-k", iface]).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("tx-checksumming: off"), "{iface}: {text}");
    }
    let macs = [
        lab.client_mac(),
        lab.router_mac(),
        lab.lb_mac(),
        lab.backend_mac(1),
        lab.backend_mac(2),
    ];
    for (n, mac) in macs.iter().enumerate() {
        assert_ne!(mac.0, [0; 6]);
        assert!(!macs[..n].contains(mac), "{mac} repeats");
    }
    let neighbours = lab
        .exec(Role::Lb, &["ip", "neigh", "show", "nud", "permanent"])
        .unwrap();
    let neighbours = String::from_utf8(neighbours.stdout).unwrap();
    assert!(neighbours.contains(&format!(
        "{} dev eth0 lladdr {}",
        backend_v6(2),
        lab.backend_mac(2)
    )));
    let status = Lab::status(prefix).unwrap();
    for pid in pids {
        assert!(status.contains(&format!("pid {pid} alive")), "{status}");
    }

    drop(lab);
    assert_eq!(namespaces(prefix), Vec::<String>::new());
    assert!(!lab::run_dir(prefix).exists());
    for pid in pids {
        assert!(is_dead(pid), "server {pid} survived");
    }
}

#[test]
fn vip_traffic_routed_by_the_lb_reaches_a_backend() {
    // Without xlb, let the lb's kernel route the VIPs to backend 1: the
    // router's VIP routes, the VIPs on the backend's lo and the replies
    // straight to the client (source VIP, rp_filter off) all take part.
    let lab = Lab::up(spec("xlab-b-", 1)).unwrap();
    for argv in [
        &[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ][..],
        &[
            "ip",
            "route",
            "add",
            &format!("{VIP_V4}/32"),
            "via",
            &backend_v4(1).to_string(),
        ],
        &[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{VIP_V6}/128"),
            "via",
            &backend_v6(1).to_string(),
        ],
    ] {
        lab.exec(Role::Lb, argv).unwrap();
    }
    in_netns(&lab.ns(Role::Client), || {
        for vip in [IpAddr::from(VIP_V4), VIP_V6.into()] {
            assert_eq!(http_get(vip), "backend1\n");
            assert_eq!(
                udp_ask(vip),
                ("backend1".to_owned(), (vip, UDP_PORT).into())
            );
        }
    })
    .unwrap();
}

#[test]
fn down_is_idempotent_and_up_replaces_a_kept_lab() {
    let prefix = "xlab-c-";
    Lab::down("xlab-none-").unwrap();
    assert!(Lab::status("xlab-none-").unwrap().starts_with("no lab"));

    // A kept lab is what a crashed test or `xlb-lab up` leaves behind.
    Lab::up(spec(prefix, 1)).unwrap().keep();
    assert_eq!(namespaces(prefix).len(), 4);
    let stale_pid = server_pid(prefix, 1);

    let lab = Lab::up(spec(prefix, 1)).unwrap();
    assert!(is_dead(stale_pid), "stale server {stale_pid} survived");
    assert_ne!(server_pid(prefix, 1), stale_pid);
    in_netns(&lab.ns(Role::Client), || {
        assert_eq!(http_get(backend_v4(1).into()), "backend1\n");
    })
    .unwrap();

    drop(lab);
    assert_eq!(namespaces(prefix), Vec::<String>::new());
    Lab::down(prefix).unwrap();
    assert!(!Path::new("/sys/fs/bpf/xlb-lab/xlab-c-lab").exists());
}

#[test]
fn a_failed_up_leaves_nothing_behind() {
    let prefix = "xlab-d-";
    let mut bad = spec(prefix, 2);
    // Exits at once instead of serving.
    bad.server_bin = "/bin/true".into();
    let error = format!("{:#}", Lab::up(bad).unwrap_err());
    assert!(error.contains("exited"), "{error}");
    assert_eq!(namespaces(prefix), Vec::<String>::new());
    assert!(!lab::run_dir(prefix).exists());
}
