//! VIPs announced with BGP through a real BIRD: the lab's router runs BIRD and peers with the
//! BIRD next to `xlb run` on the lb node. The router learns a VIP while the node can serve it,
//! and forgets it when the node's targets leave, when the node is drained (until resumed) and when
//! the agent stops; not when the agent is killed, since the datapath goes on serving. Run as root, with
//! BIRD 2 installed (`cargo xtask setup`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use xlb_tests::{
    agent::{Agent, http_spread, xlb_bin},
    lab::{HTTP_PORT, LB_V4, Lab, LabSpec, ROUTER_V4, Role, VIP_V4, backend_v4, pin_dir, run_dir},
};

/// A BIRD in one of the lab's namespaces, stopped when dropped.
struct Bird(std::process::Child);

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts BIRD in `role`'s namespace on `config`, in the foreground.
fn bird(lab: &Lab, role: Role, config: &Path, socket: &Path) -> Bird {
    let (c, s) = (config.to_str().unwrap(), socket.to_str().unwrap());
    Bird(
        lab.spawn(role, &["bird", "-f", "-c", c, "-s", s])
            .expect("start bird"),
    )
}

/// The router's routes as its BIRD shows them.
fn router_routes(lab: &Lab, socket: &Path) -> String {
    let out = lab
        .command(
            Role::Router,
            &["birdc", "-s", socket.to_str().unwrap(), "show", "route"],
        )
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the router has a route to `vip` through the lb node.
fn has_route(lab: &Lab, socket: &Path, vip: Ipv4Addr) -> bool {
    let routes = router_routes(lab, socket);
    let vip = format!("{vip}/32");
    // `198.18.100.1/32  unicast [xlb ...] * (100) [AS65001i]`, then `via 198.18.1.2 on br0`.
    let lines: Vec<&str> = routes.lines().collect();
    lines.windows(2).any(|w| {
        w[0].starts_with(&vip) && w[0].contains("AS65001") && w[1].contains(&format!("via {LB_V4}"))
    })
}

/// Waits (30 s at most) until the router has (or has not) a route to the VIP through the lb node.
fn wait_route(lab: &Lab, socket: &Path, present: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if has_route(lab, socket, VIP_V4) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the router's routes:\n{}",
            router_routes(lab, socket)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A VIP whose group's targets are all unhealthy.
const UNSERVED: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);

#[test]
fn the_router_learns_a_vip_while_the_node_can_serve_it() {
    let lab = Lab::up(LabSpec {
        prefix: "xbgp-".into(),
        backends: 1,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab")),
        xlb: Some(xlb_bin().expect("xlb binary")),
    })
    .expect("lab up");
    let dir = run_dir(lab.prefix());
    let (router_conf, router_ctl) = (dir.join("bird-router.conf"), dir.join("bird-router.ctl"));
    std::fs::write(
        &router_conf,
        format!(
            "router id {ROUTER_V4};\nprotocol device {{ }}\n\
             protocol bgp xlb {{ local as 65000; neighbor {LB_V4} as 65001; passive; \
             hold time 3; keepalive time 1; ipv4 {{ import all; export none; }}; }}\n"
        ),
    )
    .unwrap();
    let _router = bird(&lab, Role::Router, &router_conf, &router_ctl);
    // The node's BIRD starts with nothing to say; xlb writes its file and has it reloaded.
    let (lb_conf, lb_ctl) = (dir.join("bird-lb.conf"), dir.join("bird-lb.ctl"));
    std::fs::write(
        &lb_conf,
        format!("router id {LB_V4};\nprotocol device {{ }}\n"),
    )
    .unwrap();
    let _node = bird(&lab, Role::Lb, &lb_conf, &lb_ctl);
    let socket = dir.join("xlb.sock");
    let config = format!(
        "[node]\ninterface = \"eth0\"\nmtu = 1600\npin_dir = \"{}\"\napi_socket = \"{}\"\nstate_file = \"{}\"\n\n\
         [node.bgp]\nlocal_as = 65001\nrouter_id = \"{LB_V4}\"\n\
         peers = [{{ address = \"{ROUTER_V4}\", remote_as = 65000 }}]\n\
         config_file = \"{}\"\ncontrol_socket = \"{}\"\nmed = 10\n\n\
         [[node.bgp.vips]]\naddress = \"{VIP_V4}\"\ncommunities = [\"65001:200\"]\nmed = 50\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\
         attributes = {{ \"deregistration_delay.timeout_seconds\" = \"2\" }}\n\n\
         [[listeners]]\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"web\" }}\n\n\
         [[target_groups]]\nname = \"unhealthy\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{{ id = \"{}\" }}]\n\
         health_check = {{ port = 81, interval_seconds = 5, timeout_seconds = 2, unhealthy_threshold = 2 }}\n\n\
         [[listeners]]\naddress = \"{UNSERVED}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
         default_action = {{ type = \"forward\", target_group = \"unhealthy\" }}\n",
        pin_dir(lab.prefix()).join("agent").display(),
        socket.display(),
        dir.join("state.json").display(),
        lb_conf.display(),
        lb_ctl.display(),
        backend_v4(1),
        backend_v4(1),
    );
    let path = dir.join("xlb.toml");
    std::fs::write(&path, config).unwrap();
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run");
    wait_route(&lab, &router_ctl, true, "announced once the agent serves");
    // With the VIP's own attributes: its MED over the node's, its community.
    let all = lab
        .command(
            Role::Router,
            &[
                "birdc",
                "-s",
                router_ctl.to_str().unwrap(),
                "show",
                "route",
                "all",
                "for",
                &format!("{VIP_V4}/32"),
            ],
        )
        .output()
        .expect("birdc");
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.contains("BGP.med: 50") && all.contains("(65001,200)"),
        "{all}"
    );
    // A VIP whose only target fails its checks (nobody on port 81) is never announced: the
    // datapath fails open to it, but the node does not offer it to the routers.
    assert!(
        !has_route(&lab, &router_ctl, UNSERVED),
        "{}",
        router_routes(&lab, &router_ctl)
    );
    // The group's one target leaves: nothing to serve, the VIP is withdrawn; it comes back with
    // the target.
    let targets = |verb: &str| {
        let out = Command::new(xlb_bin().unwrap())
            .arg("--socket")
            .arg(&socket)
            .args(["targets", verb, "--target-group", "web", "--id"])
            .arg(backend_v4(1).to_string())
            .output()
            .expect("run xlb");
        assert!(out.status.success(), "xlb targets {verb}: {out:?}");
    };
    targets("deregister");
    wait_route(
        &lab,
        &router_ctl,
        false,
        "withdrawn when no target is in service",
    );
    targets("register");
    wait_route(&lab, &router_ctl, true, "announced again with a target");
    // `xlb node drain`: withdrawn at once, then it waits for the flows through the node: a client
    // holds a connection for 3 s.
    let mut held = lab
        .spawn(
            Role::Client,
            &[
                "python3",
                "-c",
                &format!(
                    "import socket, time; s = socket.create_connection(('{VIP_V4}', {HTTP_PORT}), 5); time.sleep(3)"
                ),
            ],
        )
        .expect("a held connection");
    std::thread::sleep(Duration::from_millis(800));
    let xlb = |args: &[&str]| {
        Command::new(xlb_bin().unwrap())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run xlb")
    };
    let started = Instant::now();
    let drain = xlb(&["node", "drain", "--timeout", "20"]);
    let waited = started.elapsed();
    let said = String::from_utf8_lossy(&drain.stdout);
    assert!(drain.status.success(), "{drain:?}");
    assert!(said.contains("drained: no flow left"), "{said}");
    assert!(
        waited >= Duration::from_millis(1500),
        "drained after {waited:?}: {said}"
    );
    assert!(
        held.wait().expect("client").success(),
        "the held connection"
    );
    wait_route(&lab, &router_ctl, false, "withdrawn by xlb node drain");
    // A drained node stays out until resumed.
    assert!(xlb(&["node", "resume"]).status.success());
    wait_route(
        &lab,
        &router_ctl,
        true,
        "announced again by xlb node resume",
    );
    // `kill -9`: nothing withdraws. BIRD keeps its session and the VIP, and the datapath keeps
    // forwarding without an agent, so the node goes on serving; a restarted agent takes over the
    // pinned datapath and the announcement.
    agent.kill9();
    let vip = SocketAddr::from((VIP_V4, HTTP_PORT));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            has_route(&lab, &router_ctl, VIP_V4),
            "withdrawn after kill -9:\n{}",
            router_routes(&lab, &router_ctl)
        );
        let served = http_spread(&lab, vip, 5).expect("client");
        assert_eq!(served.get("backend1"), Some(&5), "{served:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let agent = Agent::start(&lab, &xlb_bin().unwrap(), &path).expect("xlb run again");
    let served = http_spread(&lab, vip, 5).expect("client");
    assert_eq!(served.get("backend1"), Some(&5), "{served:?}");
    assert!(has_route(&lab, &router_ctl, VIP_V4));
    // A stopped agent withdraws before it goes.
    agent.stop().expect("xlb stops cleanly");
    wait_route(&lab, &router_ctl, false, "withdrawn when the agent stops");
}
