//! The Debian package's unit (`lb-userspace/debian/xlb.service`) gives the agent the
//! capabilities it needs and no more. As that unit runs it (root, its `CapabilityBoundingSet`;
//! here through `setpriv`), the real `xlb run` attaches, applies its config and balances real
//! HTTP through the lab; without any one of CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN the kernel
//! refuses it. (CAP_NET_BIND_SERVICE is for HTTP listeners below port 1024.) Run as root.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use xlb_tests::{
    agent::{http_spread, xlb_bin},
    lab::{HTTP_PORT, Lab, LabSpec, Role, VIP_V4, backend_v4, netns_command, pin_dir, run_dir},
};

/// The unit's capabilities, as `setpriv` names them (`CAP_NET_ADMIN` → `net_admin`).
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/debian/xlb.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("a CAP_ name")
                .to_ascii_lowercase()
        })
        .collect()
}

/// `xlb run` in the lb namespace, as root with only `caps` in its bounding set (so in its
/// permitted and effective sets, as for the unit), none inheritable.
fn run_with(lab: &Lab, config: &Path, caps: &[String]) -> Child {
    let xlb = xlb_bin().expect("the xlb binary");
    let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let argv = [
        "setpriv".to_owned(),
        format!("--bounding-set=-all{bounding}"),
        "--inh-caps=-all".to_owned(),
        "--".to_owned(),
        xlb.display().to_string(),
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    netns_command(&lab.ns(Role::Lb), &argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start setpriv xlb run")
}

/// Waits for the agent to say it serves (true) or to exit (false); what it printed.
fn serves(child: &mut Child) -> (bool, String) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        out += &line;
        out.push('\n');
        if line.starts_with("xlb: serving") {
            return (true, out);
        }
    }
    (false, out)
}

fn stop(child: Child) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("wait for xlb run");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_units_capabilities_are_what_xlb_run_needs_and_no_more() {
    let prefix = "xt-caps-";
    let lab = Lab::up(LabSpec {
        prefix: prefix.into(),
        backends: 2,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let pins = pin_dir(prefix).join("agent");
    let config = run_dir(prefix).join("xlb.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ninterface = \"eth0\"\nmtu = 1600\nflow_table_size = 4096\nmax_listeners = 4\n\
             max_targets = 64\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
             [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\n\
             targets = [{{ id = \"{}\" }}, {{ id = \"{}\" }}]\n\n\
             [[listeners]]\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"web\" }}\n",
            pins.display(),
            run_dir(prefix).join("xlb.sock").display(),
            run_dir(prefix).join("state.json").display(),
            backend_v4(1),
            backend_v4(2),
        ),
    )
    .expect("write the config");
    let caps = unit_capabilities();
    for needed in ["bpf", "perfmon", "net_admin"] {
        assert!(
            caps.iter().any(|c| c == needed),
            "the unit lacks CAP_{needed}: {caps:?}"
        );
    }

    // Without any one of them: refused, and nothing serves.
    for missing in ["bpf", "perfmon", "net_admin"] {
        let _ = std::fs::remove_dir_all(&pins);
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut child = run_with(&lab, &config, &fewer);
        let (served, out) = serves(&mut child);
        let err = stop(child);
        assert!(
            !served,
            "xlb run served without CAP_{}:\n{out}{err}",
            missing.to_uppercase()
        );
        assert!(
            err.contains("xlb: "),
            "without CAP_{}, xlb run said no error:\n{out}{err}",
            missing.to_uppercase()
        );
    }

    // With exactly the unit's: it serves, and balances real requests to both targets.
    let _ = std::fs::remove_dir_all(&pins);
    let mut child = run_with(&lab, &config, &caps);
    let (served, out) = serves(&mut child);
    if !served {
        panic!(
            "xlb run with the unit's capabilities {caps:?} did not serve:\n{out}{}",
            stop(child)
        );
    }
    let spread = http_spread(&lab, SocketAddr::from((VIP_V4, HTTP_PORT)), 60).expect("client");
    let err = stop(child);
    assert_eq!(
        spread.values().sum::<usize>(),
        60,
        "answers: {spread:?}\n{err}"
    );
    assert_eq!(spread.len(), 2, "both targets answer: {spread:?}\n{err}");
    assert!(
        !spread.keys().any(|k| k.starts_with("error")),
        "{spread:?}\n{err}"
    );
}
