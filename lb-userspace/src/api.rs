//! The control API: JSON lines over a Unix socket (mode 0600: root only). The CLI sends one
//! [`Request`] per connection and reads one [`Response`].

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Registration, TargetRow};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    Targets {
        target_group: Option<String>,
    },
    Register(Registration),
    Deregister {
        target_group: String,
        id: std::net::IpAddr,
    },
    Reload,
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
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerStats {
    pub listener: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// (target, packets, bytes).
    pub targets: Vec<(String, u64, u64)>,
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

/// Answers one request.
pub fn handle(agent: &mut Agent, req: Request) -> Response {
    let done = |r: Result<()>, message: String| match r {
        Ok(()) => Response::Done { message },
        Err(e) => Response::Error {
            message: format!("{e:#}"),
        },
    };
    match req {
        Request::Status => Response::Status(status(agent)),
        Request::Stats => match stats(agent) {
            Ok(r) => r,
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        },
        Request::Targets { target_group } => match agent.targets(target_group.as_deref()) {
            Ok(targets) => Response::Targets { targets },
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        },
        Request::Register(r) => {
            let msg = format!("registered {} in {}", r.id, r.target_group);
            done(agent.register(r), msg)
        }
        Request::Deregister { target_group, id } => {
            let msg = format!("deregistered {id} from {target_group}: draining");
            done(agent.deregister(&target_group, id), msg)
        }
        Request::Reload => done(agent.reload(), format!("reloaded {}", agent.path.display())),
        Request::Stop => Response::Done {
            message: "stopping".into(),
        },
    }
}

fn status(agent: &Agent) -> Status {
    let drift = agent
        .overlay
        .registered
        .iter()
        .map(|r| {
            format!(
                "registered {} in {} (not in the file)",
                r.id, r.target_group
            )
        })
        .chain(
            agent
                .overlay
                .deregistered
                .iter()
                .map(|d| format!("deregistered {} from {}", d.id, d.target_group)),
        )
        .collect();
    Status {
        config: agent.path.display().to_string(),
        interface: agent.file.node.interface.clone(),
        uptime_seconds: agent.started.elapsed().as_secs(),
        listeners: agent.file.listeners.len(),
        target_groups: agent.file.target_groups.len(),
        drift,
    }
}

fn stats(agent: &mut Agent) -> Result<Response> {
    let table = crate::stats::table(&mut agent.lb)?;
    let listeners = agent.lb.listeners.clone();
    let dp = agent.lb.dataplane();
    let reasons = dp
        .reasons()?
        .into_iter()
        .map(|(r, c)| (r.name().to_owned(), c.packets, c.bytes))
        .collect();
    let mut ls = Vec::new();
    for l in listeners {
        let c = dp.vip_counters(l.vip)?;
        let mut targets = Vec::new();
        for (addr, index, _) in &l.targets {
            let t = dp.backend_counters(*index)?;
            targets.push((addr.to_string(), t.packets, t.bytes));
        }
        ls.push(ListenerStats {
            listener: l.name,
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            targets,
        });
    }
    Ok(Response::Stats {
        table,
        reasons,
        listeners: ls,
    })
}

/// Serves one connection: a request line in, a response line out (bounded by a timeout).
/// Returns true when the request was [`Request::Stop`].
pub async fn serve_conn(agent: &mut Agent, stream: tokio::net::UnixStream) -> Result<bool> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(r);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .context("request timed out")??;
    let (resp, stop) = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let stop = matches!(req, Request::Stop);
            (handle(agent, req), stop)
        }
        Err(e) => (
            Response::Error {
                message: format!("bad request: {e}"),
            },
            false,
        ),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(stop)
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
