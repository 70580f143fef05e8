//! The control API: JSON lines over a Unix socket (mode 0600: root only). The CLI sends one
//! [`Request`] per connection and reads one [`Response`]. This module holds the protocol, the
//! client ([`call`]) and the server's side of one connection ([`serve_conn`]); the agent answers
//! the requests (`agent::serve`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// How long a client has to send its request, and the agent to take its answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    Targets {
        target_group: Option<String>,
    },
    /// Targets to add, applied together (AWS's `RegisterTargets`).
    Register {
        targets: Vec<Registration>,
    },
    Deregister {
        target_group: String,
        id: IpAddr,
    },
    Reload,
    /// Withdraw every VIP from BGP (`announce: false`, `xlb node drain`) or announce again those
    /// the node can serve (`xlb node resume`).
    Announce {
        announce: bool,
    },
    /// Stop the agent (the datapath stays attached).
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Stats {
        table: String,
        reasons: Vec<(String, u64, u64)>,
        listeners: Vec<ListenerStats>,
    },
    Targets {
        targets: Vec<TargetRow>,
    },
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub config: String,
    pub interface: String,
    pub uptime_seconds: u64,
    pub listeners: usize,
    pub target_groups: usize,
    /// Registrations made through the API that the file does not have.
    pub drift: Vec<String>,
    /// What keeps the config from working on this host (forwarding off, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerStats {
    pub listener: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets to the listener that were dropped.
    #[serde(default)]
    pub dropped: u64,
    /// (target, packets, bytes).
    pub targets: Vec<(String, u64, u64)>,
}

/// A target registered through the API (`xlb targets register`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub target_group: String,
    pub id: IpAddr,
    pub weight: u32,
    pub zone: Option<String>,
    pub mac: Option<String>,
    /// Its own port (HTTP groups, nat listeners); the group's otherwise.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One row of `xlb targets list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetRow {
    pub target_group: String,
    pub id: IpAddr,
    /// The port of a target of an HTTP group or of nat listeners on one port (other L4 targets
    /// get the port the client sent to).
    pub port: Option<u16>,
    pub weight: u32,
    pub zone: Option<String>,
    /// AWS target state: `healthy`, `unhealthy`, `initial`, `draining`, `unavailable`.
    pub state: String,
    /// AWS reason code, when the state has one.
    pub reason: Option<String>,
    /// Live flows on this target: TCP connections its clients have not closed (no FIN or RST
    /// seen), UDP flows within their idle timeout.
    pub flows: u64,
    /// Whether the target takes new flows now.
    pub in_service: bool,
    /// `file` or `api` (registered through the API: drift from the file).
    pub source: String,
}

impl TargetRow {
    /// The target as operators name it: `address:port` in HTTP groups and behind nat listeners,
    /// the address in other L4 ones.
    pub fn target(&self) -> String {
        match self.port {
            Some(port) => SocketAddr::new(self.id, port).to_string(),
            None => self.id.to_string(),
        }
    }
}

/// Binds the socket, replacing a stale one, root-only.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves one connection: a request line in (the client has [`CLIENT_TIMEOUT`] to send it),
/// `answer`'s response line out. Runs in a task of its own, so a slow client only holds itself.
pub async fn serve_conn<F>(
    stream: tokio::net::UnixStream,
    answer: impl FnOnce(Request) -> F,
) -> Result<()>
where
    F: Future<Output = Response>,
{
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(r);
    tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("request timed out")??;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => answer(req).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    tokio::time::timeout(CLIENT_TIMEOUT, w.write_all(&out))
        .await
        .context("response timed out")??;
    Ok(())
}

/// The CLI side: sends `req` to the agent at `socket`.
pub fn call(socket: &Path, req: &Request) -> Result<Response> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connect to the agent at {} (is `xlb run` running?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    if resp.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    Ok(serde_json::from_str(&resp)?)
}
