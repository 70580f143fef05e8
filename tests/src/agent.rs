//! Runs the real `xlb` agent inside a lab namespace, and real clients against it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::{Lab, Role, run_dir};

/// The `xlb` binary next to the running executable (`target/release/`), built by
/// `cargo build -p lb-userspace` (xtask test and demo do that first).
pub fn xlb_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("xlb");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no xlb binary near {}: run `cargo build --release -p lb-userspace`",
        exe.display()
    )
}

/// The control socket the labs' configs give the agent (`node.api_socket`).
pub fn api_socket(lab: &Lab) -> PathBuf {
    run_dir(lab.prefix()).join("xlb.sock")
}

/// Writes the lab's config file (`xlb.toml` in its run directory); returns its path.
pub fn write_config(lab: &Lab, text: &str) -> PathBuf {
    let path = run_dir(lab.prefix()).join("xlb.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `xlb --socket S ARGS` against the lab's agent; returns (success, stdout + stderr).
pub fn cli(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(xlb_bin().expect("xlb binary"))
        .arg("--socket")
        .arg(api_socket(lab))
        .args(args)
        .output()
        .expect("run xlb");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// One scrape of the agent's metrics (`node.metrics_address` 127.0.0.1:9100 in the lb namespace).
pub fn scrape(lab: &Lab) -> String {
    let out = lab
        .exec(
            Role::Lb,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:9100/metrics",
            ],
        )
        .expect("curl metrics");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `xlb run` in the lab's lb namespace; stopped (SIGTERM) on drop.
pub struct Agent {
    child: Child,
    /// What it printed (its final counter table comes at exit).
    output: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
    /// Its control socket (`node.api_socket` of its config).
    socket: PathBuf,
}

impl Agent {
    /// Starts `xlb run --config CONFIG` in the lb namespace and waits until it serves.
    pub fn start(lab: &Lab, xlb: &Path, config: &Path) -> Result<Agent> {
        Agent::start_with(&lab.ns(Role::Lb), xlb, config, Stdio::inherit())
    }

    /// Like [`Agent::start`], in the namespace `ns` (of a lab this process did not build).
    pub fn start_in(ns: &str, xlb: &Path, config: &Path) -> Result<Agent> {
        Agent::start_with(ns, xlb, config, Stdio::inherit())
    }

    /// Like [`Agent::start`], with the agent's log (its stderr) written to `log`.
    pub fn start_logged(lab: &Lab, xlb: &Path, config: &Path, log: &Path) -> Result<Agent> {
        let file = std::fs::File::create(log).context("create the agent's log")?;
        Agent::start_with(&lab.ns(Role::Lb), xlb, config, Stdio::from(file))
    }

    fn start_with(ns: &str, xlb: &Path, config: &Path, stderr: Stdio) -> Result<Agent> {
        let socket = lb_config::Config::load(config)?.node.api_socket;
        let mut cmd = crate::lab::netns_command(
            ns,
            &[
                xlb.to_str().context("xlb path")?,
                "run",
                "--config",
                config.to_str().context("config path")?,
            ],
        );
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("start xlb run")?;
        let stdout = child.stdout.take().context("xlb stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("xlb: serving") => {
                    return Ok(Agent {
                        child,
                        output: std::sync::Mutex::new(rx),
                        socket,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    bail!("xlb run did not start within 30 s (exit: {status:?})");
                }
            }
        }
    }

    /// Reloads the config through the control API; returns once the agent has applied it.
    pub fn reload(&self) -> Result<()> {
        match xlb::api::call(&self.socket, &xlb::api::Request::Reload)? {
            xlb::api::Response::Done { .. } => Ok(()),
            other => bail!("reload: {other:?}"),
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the agent and returns what it printed after starting (its counter table).
    pub fn stop(mut self) -> Result<String> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = self.child.wait()?;
        let mut out = String::new();
        let output = self.output.lock().expect("output lock");
        while let Ok(line) = output.recv_timeout(Duration::from_secs(2)) {
            out.push_str(&line);
            out.push('\n');
        }
        if !status.success() {
            bail!("xlb run exited with {status}:\n{out}");
        }
        Ok(out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

/// Sends `n` HTTP requests (one connection each) from the client namespace to `vip` and counts
/// the answers by the backend name in the body. Failed connections count under "error".
pub fn http_spread(lab: &Lab, vip: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    crate::lab::in_netns(&lab.ns(Role::Client), || {
        let mut spread = BTreeMap::new();
        for _ in 0..n {
            let name = http_get(vip).unwrap_or_else(|e| format!("error: {e}"));
            *spread.entry(name).or_insert(0) += 1;
        }
        spread
    })
}

/// One `GET /` with a 2 s timeout; returns the body, trimmed.
pub fn http_get(addr: SocketAddr) -> Result<String> {
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let body = resp.split("\r\n\r\n").nth(1).context("no HTTP body")?;
    Ok(body.trim().to_owned())
}
