//! `xlb-lab`: builds, inspects and tears down the network lab described in
//! `xlb_tests::lab`, and is also the server that runs in every backend.

use std::{
    future::Future,
    io::{self, IoSlice, IoSliceMut},
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use nix::{
    libc,
    sys::socket::{
        AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
        SockaddrIn6, bind, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
    },
};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
};
use xlb_tests::{
    agent::{self, Agent},
    cluster::{Cluster, ClusterSpec},
    lab::{DEFAULT_BACKENDS, ECHO_PORT, HTTP_PORT, Lab, LabSpec, Role, UDP_PORT, VIP_V4, VIP_V6},
};

/// Longest request, header or echo line the server reads at once.
const MAX_LINE: u64 = 8192;
/// Most header lines the HTTP server accepts in one request.
const MAX_HEADERS: usize = 100;

#[derive(Parser)]
#[command(
    name = "xlb-lab",
    about = "Network namespaces for testing and demonstrating xlb"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab (replacing a stale one with the same prefix) and leave it up.
    Up {
        /// Prefix of the namespace names.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Number of backends.
        #[arg(long, default_value_t = DEFAULT_BACKENDS)]
        backends: usize,
        /// The xlb binary that attaches the lab's helper XDP programs (pass on the router's
        /// port to the balancer, decap on the backends) [default: the one next to xlb-lab].
        #[arg(long)]
        xlb: Option<PathBuf>,
        /// Attach no helper program: the balancer's tunnels and XDP_TX then go nowhere.
        #[arg(long, conflicts_with = "xlb")]
        no_helpers: bool,
        /// Several balancer nodes behind ECMP instead of one `lb`: BIRD on the router and on
        /// each node, `xlb run` on each node, every backend a target (1..=8).
        #[arg(long, conflicts_with = "no_helpers")]
        nodes: Option<usize>,
    },
    /// Tear down a lab: servers, namespaces, pinned programs.
    Down {
        /// Prefix of the namespace names.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show a lab's namespaces, interfaces and servers.
    Status {
        /// Prefix of the namespace names.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The demo: a lab, the xlb agent with config/demo.toml in it, real HTTP requests from the
    /// client to the VIPs, the spread over backends and the datapath's counters; then clean up.
    Demo {
        /// Requests per VIP.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Several nodes behind ECMP instead: the spread over the nodes, then a node's death.
        #[arg(long)]
        nodes: Option<usize>,
    },
    /// Run a backend server (started by `up` inside each backend namespace).
    #[command(hide = true)]
    Serve {
        /// The name the server answers with, e.g. backend1.
        #[arg(long)]
        name: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Up {
            prefix,
            backends,
            xlb,
            no_helpers,
            nodes,
        } => {
            let server_bin = std::env::current_exe().context("locating the xlb-lab binary")?;
            let xlb = match (xlb, no_helpers) {
                (_, true) => None,
                (Some(xlb), false) => Some(xlb),
                (None, false) => Some(agent::xlb_bin()?),
            };
            if let (Some(nodes), Some(xlb)) = (nodes, &xlb) {
                return up_nodes(&prefix, nodes, backends, server_bin, xlb.clone());
            }
            let lab = Lab::up(LabSpec {
                prefix: prefix.clone(),
                backends,
                server_bin,
                xlb,
            })?;
            lab.keep();
            print!("{}", Lab::status(&prefix)?);
        }
        Command::Down { prefix } => Lab::down(&prefix)?,
        Command::Demo {
            requests,
            nodes: Some(nodes),
        } => demo_nodes(nodes, requests)?,
        Command::Demo { requests, .. } => demo(requests)?,
        Command::Status { prefix } => print!("{}", Lab::status(&prefix)?),
        Command::Serve { name } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(serve(name.into()))?,
    }
    Ok(())
}

/// `up --nodes N`: the cluster of `xlb_tests::cluster`, left running.
fn up_nodes(
    prefix: &str,
    nodes: usize,
    backends: usize,
    server_bin: PathBuf,
    xlb: PathBuf,
) -> Result<()> {
    let cluster = Cluster::up(ClusterSpec {
        prefix: prefix.to_owned(),
        nodes,
        backends,
        targets: (1..=backends).collect(),
        group_extra: String::new(),
        server_bin,
        xlb,
    })?;
    print!("{}", Lab::status(prefix)?);
    println!(
        "router: VIP {VIP_V4} over nodes {:?}; birdc -s {} show route",
        cluster.route(VIP_V4.into())?,
        cluster.router_ctl().display()
    );
    for i in 1..=nodes {
        let node = cluster.node_paths(i);
        println!(
            "{}: xlb --socket {} stats; log {}",
            node.name,
            node.socket.display(),
            node.log.display()
        );
    }
    cluster.keep();
    Ok(())
}

/// `demo --nodes N`: requests spread over the nodes and the targets, node 2 dies, and the
/// requests go on over the others.
fn demo_nodes(nodes: usize, requests: usize) -> Result<()> {
    anyhow::ensure!(
        nodes >= 2,
        "a node's death needs 2 nodes or more, not {nodes}"
    );
    println!("demo: a router running BIRD, {nodes} nodes running xlb and BIRD, 3 backends");
    let cluster = Cluster::up(ClusterSpec {
        prefix: String::new(),
        nodes,
        backends: DEFAULT_BACKENDS,
        targets: (1..=DEFAULT_BACKENDS).collect(),
        group_extra: String::new(),
        server_bin: std::env::current_exe().context("locating the xlb-lab binary")?,
        xlb: agent::xlb_bin()?,
    })?;
    let vip = SocketAddr::from((VIP_V4, HTTP_PORT));
    let mut cluster = cluster;
    let round = |cluster: &Cluster, title: &str| -> Result<()> {
        let flows = |c: &Cluster| -> Vec<u64> {
            (1..=nodes)
                .map(|i| c.new_flows(i).map_or(0, |f| f.values().sum()))
                .collect()
        };
        let before = flows(cluster);
        let spread = agent::http_spread(cluster.lab(), vip, requests)?;
        let after = flows(cluster);
        println!(
            "demo: {title}: router's next hops for {VIP_V4}: nodes {:?}; {requests} HTTP requests:",
            cluster.route(VIP_V4.into())?
        );
        for i in 1..=nodes {
            let n = (after[i - 1] - before[i - 1]) as usize;
            let bar = "#".repeat(n * 40 / requests.max(1));
            println!("  node{i:<8} {n:>5}  {bar}");
        }
        for (backend, n) in &spread {
            let bar = "#".repeat(n * 40 / requests.max(1));
            println!("  {backend:<12} {n:>5}  {bar}");
        }
        Ok(())
    };
    round(&cluster, "every node up")?;
    println!("\ndemo: node2 dies: its link goes down, its BIRD and agent are killed");
    cluster.kill_node(2)?;
    let left: Vec<usize> = (1..=nodes).filter(|&i| i != 2).collect();
    let gone = cluster.wait_route(VIP_V4.into(), &left, Duration::from_secs(10))?;
    println!(
        "demo: the router's BFD dropped node2 after {:.2} s",
        gone.as_secs_f64()
    );
    round(&cluster, "node2 dead")?;
    drop(cluster);
    println!("demo: lab removed");
    Ok(())
}

fn demo(requests: usize) -> Result<()> {
    let xlb = agent::xlb_bin()?;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml");
    println!("demo: bringing up the lab (client, router, lb, 3 backends)");
    let lab = Lab::up(LabSpec {
        prefix: String::new(),
        backends: DEFAULT_BACKENDS,
        server_bin: std::env::current_exe().context("locating the xlb-lab binary")?,
        xlb: Some(xlb.clone()),
    })?;
    let run = xlb_tests::lab::run_dir("");
    println!(
        "demo: starting `xlb run --config {}` in the lb namespace",
        config.display()
    );
    let agent = Agent::start(&lab, &xlb, &config)?;
    let spread = |title: &str, vip: SocketAddr| -> Result<()> {
        let spread = agent::http_spread(&lab, vip, requests)?;
        println!("demo: {title}: {requests} HTTP requests from the client to {vip}:");
        for (backend, n) in &spread {
            println!(
                "  {backend:<12} {n:>5}  {}",
                "#".repeat(n * 40 / requests.max(1))
            );
        }
        Ok(())
    };
    let cli = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new(&xlb)
            .arg("--socket")
            .arg(run.join("xlb.sock"))
            .args(args)
            .output()?;
        println!("$ xlb {}", args.join(" "));
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    spread("balancing", SocketAddr::from((VIP_V4, HTTP_PORT)))?;
    spread("balancing", SocketAddr::from((VIP_V6, HTTP_PORT)))?;

    println!("\ndemo: drain: deregister backend1; it takes no new flow, its flows go on for 30 s");
    cli(&[
        "targets",
        "deregister",
        "--target-group",
        "web",
        "--id",
        "198.18.1.11",
    ])?;
    spread("after the drain", SocketAddr::from((VIP_V4, HTTP_PORT)))?;

    println!(
        "\ndemo: failover: backend2's server dies; the HTTP health check (5 s x 2) takes it out"
    );
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &lab.ns(Role::Backend(2))])
        .output()?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let out = std::process::Command::new(&xlb)
            .arg("--socket")
            .arg(run.join("xlb.sock"))
            .args(["targets", "list"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("198.18.1.12") && l.contains(" unhealthy "))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "demo: backend2 found unhealthy after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    cli(&["targets", "list", "--target-group", "web"])?;
    spread("after the failover", SocketAddr::from((VIP_V4, HTTP_PORT)))?;

    println!("\ndemo: the L7 tier on https://198.18.1.2 (host/path rules) and http:// (redirect):");
    for args in [
        vec![
            "-sk",
            "--resolve",
            "api.example.com:443:198.18.1.2",
            "https://api.example.com/v1/users",
        ],
        vec![
            "-sk",
            "--resolve",
            "demo.example.com:443:198.18.1.2",
            "https://demo.example.com/",
        ],
        vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} -> %{redirect_url}",
            "http://198.18.1.2/page?x=1",
        ],
    ] {
        let mut argv = vec!["curl", "--max-time", "5"];
        argv.extend(args.iter().copied());
        let out = lab.exec(Role::Client, &argv)?;
        println!(
            "$ curl {}\n  {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }

    println!("\ndemo: the datapath's counters and the access log (xlb's exit report):");
    print!("{}", agent.stop()?);
    drop(lab);
    println!("demo: lab removed");
    Ok(())
}

/// Serves HTTP, the TCP echo and the UDP name reply until killed.
async fn serve(name: Arc<str>) -> Result<()> {
    let udp = dual_stack_socket(SockType::Datagram, UDP_PORT)?;
    // Learn each datagram's destination, to answer from it: under DSR that
    // is the VIP on `lo`, which the routing table would not pick as source.
    setsockopt(&udp, sockopt::Ipv6RecvPacketInfo, &true).context("setting IPV6_RECVPKTINFO")?;
    let udp = UdpSocket::from_std(udp.into()).context("registering the UDP socket")?;
    let echo = tcp_listener(ECHO_PORT)?;
    let http = tcp_listener(HTTP_PORT)?;
    eprintln!("{name}: HTTP on TCP {HTTP_PORT}, echo on TCP {ECHO_PORT}, name on UDP {UDP_PORT}");
    // None of these loops ends: the server runs until `down` kills it.
    tokio::join!(
        answer_udp(udp, name.clone()),
        accept_loop(echo, name.clone(), echo_conn),
        accept_loop(http, name, http_conn),
    );
    Ok(())
}

/// A non-blocking socket bound to port `port` of every local IPv4 and IPv6
/// address (IPv4 peers show up as `::ffff:a.b.c.d`).
fn dual_stack_socket(ty: SockType, port: u16) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet6,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a socket")?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false).context("clearing IPV6_V6ONLY")?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).context("setting SO_REUSEADDR")?;
    let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
    bind(fd.as_raw_fd(), &SockaddrIn6::from(addr)).with_context(|| format!("binding {addr}"))?;
    Ok(fd)
}

fn tcp_listener(port: u16) -> Result<TcpListener> {
    let fd = dual_stack_socket(SockType::Stream, port)?;
    listen(&fd, Backlog::new(1024)?).with_context(|| format!("listening on TCP {port}"))?;
    TcpListener::from_std(fd.into()).context("registering a TCP listener")
}

/// Answers each datagram with the name, from the address it was sent to.
async fn answer_udp(sock: UdpSocket, name: Arc<str>) {
    let mut buf = [0u8; 2048];
    loop {
        if let Err(e) = answer_datagram(&sock, &name, &mut buf).await {
            eprintln!("{name}: UDP: {e}");
        }
    }
}

async fn answer_datagram(sock: &UdpSocket, name: &str, buf: &mut [u8]) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let (peer, local) = sock
        .async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
            let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
            let peer = msg
                .address
                .ok_or(io::Error::other("datagram without source"))?;
            let local = msg
                .cmsgs()?
                .find_map(|cmsg| match cmsg {
                    ControlMessageOwned::Ipv6PacketInfo(info) => Some(info.ipi6_addr),
                    _ => None,
                })
                .ok_or(io::Error::other("datagram without IPV6_PKTINFO"))?;
            Ok((peer, local))
        })
        .await?;
    // Interface 0: let routing choose the way out.
    let info = libc::in6_pktinfo {
        ipi6_addr: local,
        ipi6_ifindex: 0,
    };
    sock.async_io(tokio::io::Interest::WRITABLE, || {
        let iov = [IoSlice::new(name.as_bytes())];
        let cmsgs = [ControlMessage::Ipv6PacketInfo(&info)];
        Ok(sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&peer))?)
    })
    .await
    .map(drop)
}

/// Accepts connections forever, each handled by its own task.
async fn accept_loop<F, Fut>(listener: TcpListener, name: Arc<str>, handle: F)
where
    F: Fn(TcpStream, Arc<str>) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Replies are small: send them at once, not after Nagle's delay.
                if let Err(e) = stream.set_nodelay(true) {
                    eprintln!("{name}: TCP_NODELAY for {peer}: {e}");
                }
                let conn = handle(stream, name.clone());
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        eprintln!("{name}: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("{name}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Echoes everything back with `{name}: ` before each line, until the
/// client closes. Long lines are passed through in bounded pieces.
async fn echo_conn(stream: TcpStream, name: Arc<str>) -> io::Result<()> {
    let prefix = format!("{name}: ");
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut piece = Vec::new();
    let mut at_line_start = true;
    loop {
        piece.clear();
        if (&mut rd)
            .take(MAX_LINE)
            .read_until(b'\n', &mut piece)
            .await?
            == 0
        {
            return Ok(());
        }
        if at_line_start {
            wr.write_all(prefix.as_bytes()).await?;
        }
        wr.write_all(&piece).await?;
        at_line_start = piece.ends_with(b"\n");
    }
}

/// Answers every HTTP/1.x request with 200 and body `{name}\n` (and, for `GET /headers`, the
/// request's header lines after it, as received, so tests see what a load balancer forwarded),
/// keeping the connection alive unless the client asks otherwise.
async fn http_conn(stream: TcpStream, name: Arc<str>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    while let Some(request) = read_request_head(&mut rd).await? {
        // Discard a request body.
        tokio::io::copy(
            &mut (&mut rd).take(request.content_length),
            &mut tokio::io::sink(),
        )
        .await?;
        let mut body = format!("{name}\n");
        if request.headers_asked {
            body.push_str(&request.lines.concat());
        }
        let connection = if request.close { "close" } else { "keep-alive" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n\r\n{body}",
            body.len()
        );
        wr.write_all(response.as_bytes()).await?;
        if request.close {
            return wr.shutdown().await;
        }
    }
    Ok(())
}

/// What the server needs from a request head.
struct RequestHead {
    close: bool,
    content_length: u64,
    /// `GET /headers`: answer with the header lines.
    headers_asked: bool,
    /// The header lines as received, CRLF and all.
    lines: Vec<String>,
}

/// Reads a request line and headers; None if the client closed first.
async fn read_request_head<R>(rd: &mut R) -> io::Result<Option<RequestHead>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    // Skip blank lines some clients send between requests.
    while line.trim_ascii().is_empty() {
        line.clear();
        if rd.take(MAX_LINE).read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
    }
    let mut head = RequestHead {
        // HTTP/1.0 closes by default, HTTP/1.1 keeps alive.
        close: line.trim_ascii_end().ends_with(b"HTTP/1.0"),
        content_length: 0,
        headers_asked: line.starts_with(b"GET /headers "),
        lines: Vec::new(),
    };
    for _ in 0..MAX_HEADERS {
        line.clear();
        if rd.take(MAX_LINE).read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let header = String::from_utf8_lossy(line.trim_ascii()).to_ascii_lowercase();
        if header.is_empty() {
            return Ok(Some(head));
        }
        head.lines.push(String::from_utf8_lossy(&line).into_owned());
        let Some((key, value)) = header.split_once(':') else {
            continue;
        };
        match key.trim() {
            "connection" if value.contains("close") => head.close = true,
            "connection" if value.contains("keep-alive") => head.close = false,
            "content-length" => {
                head.content_length = value.trim().parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
            }
            _ => {}
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("more than {MAX_HEADERS} header lines"),
    ))
}
