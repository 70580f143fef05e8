//! The bench's test-run cases (`xlb-bench`'s `testrun.*` and `insns.*` rows): frames, the
//! listeners and flows they find, and where their next hop comes from. Shared with
//! `tests/tests/ebpf_count.rs`, which checks the instruction counter against the kernel on them.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, bail, ensure};
use lb_common::{CONFIG_F_NAT, CONFIG_F_NO_FIB, CONFIG_F_SNAT, SnatConfig, VIP_F_NAT, VIP_F_SNAT};
use xlb::dataplane::{Dataplane, Program, RunOptions};

use crate::{
    ebpf_count::{Machine, Route, Run},
    fixture::{self, Fixture, Proto, Reason, XDP_PASS, XDP_TX},
    packet::{MAC_BACKEND, MAC_CLIENT, MAC_LB, Packet},
};

/// The NAT listener's port, and its target's own.
const NAT_PORT: u16 = 8080;
const NAT_TARGET_PORT: u16 = 8081;
/// The SNAT listener's port, its target's own, the node's SNAT address and the one port of its
/// range (so that the reply's destination is known before the flow is made).
const SNAT_PORT: u16 = 8082;
const SNAT_TARGET_PORT: u16 = 8083;
const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SNAT_SOURCE_PORT: u16 = 20000;

/// The frames of the cases.
pub struct Frames {
    pub syn: Vec<u8>,
    pub ack: Vec<u8>,
    /// To an address that is no VIP.
    pub other: Vec<u8>,
    pub v6_syn: Vec<u8>,
    pub v6_ack: Vec<u8>,
    /// To the NAT listener, and its target's reply.
    pub nat_syn: Vec<u8>,
    pub nat_ack: Vec<u8>,
    pub nat_reply: Vec<u8>,
    /// To the SNAT listener, and its target's reply (to the node's SNAT address and port).
    pub snat_syn: Vec<u8>,
    pub snat_ack: Vec<u8>,
    pub snat_reply: Vec<u8>,
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl Frames {
    pub fn new() -> Frames {
        let pad = [0u8; 10];
        let v4 = |syn: bool, dst: Ipv4Addr| {
            let t = Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(fixture::CLIENT_V4, dst)
                .tcp(40000, 80);
            let t = if syn { t.syn() } else { t.ack() };
            t.payload(&pad).build()
        };
        let v6 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(fixture::CLIENT_V6, fixture::VIP_V6)
            .tcp(40000, 80);
        let nat = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(fixture::CLIENT_V4, fixture::VIP_V4)
            .tcp(40000, NAT_PORT);
        let std::net::IpAddr::V4(nat_target) = fixture::BACKEND3_V4 else {
            unreachable!("the fixture's third target is IPv4")
        };
        let snat = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(fixture::CLIENT_V4, fixture::VIP_V4)
            .tcp(40000, SNAT_PORT);
        let std::net::IpAddr::V4(snat_target) = fixture::BACKEND2_V4 else {
            unreachable!("the fixture's second target is IPv4")
        };
        Frames {
            syn: v4(true, fixture::VIP_V4),
            ack: v4(false, fixture::VIP_V4),
            other: v4(false, Ipv4Addr::new(198, 18, 200, 1)),
            v6_syn: v6.clone().syn().build(),
            v6_ack: v6.ack().build(),
            nat_syn: nat.clone().syn().payload(&pad).build(),
            nat_ack: nat.ack().payload(&pad).build(),
            nat_reply: Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv4(nat_target, fixture::CLIENT_V4)
                .tcp(NAT_TARGET_PORT, 40000)
                .ack()
                .payload(&pad)
                .build(),
            snat_syn: snat.clone().syn().payload(&pad).build(),
            snat_ack: snat.ack().payload(&pad).build(),
            snat_reply: Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv4(snat_target, SNAT_ADDR)
                .tcp(SNAT_TARGET_PORT, SNAT_SOURCE_PORT)
                .ack()
                .payload(&pad)
                .build(),
        }
    }
}

/// The listeners (one per family, TCP port 80) and the flows of the established cases: their
/// SYNs have gone through once.
pub fn prepare(mut f: Fixture, frames: &Frames) -> Result<Fixture> {
    let v4_targets = [
        fixture::BACKEND1_V4,
        fixture::BACKEND2_V4,
        fixture::BACKEND3_V4,
    ];
    f.listener(fixture::VIP_V4, 80, Proto::Tcp, 0, &v4_targets);
    f.listener(fixture::VIP_V6, 80, Proto::Tcp, 0, &[fixture::BACKEND1_V6]);
    // The NAT listener's target is the tunnel's third: tunnels ignore its port.
    f.listener(
        fixture::VIP_V4,
        NAT_PORT,
        Proto::Tcp,
        VIP_F_NAT,
        &[fixture::BACKEND3_V4],
    );
    let nat_target = f.backend(fixture::BACKEND3_V4);
    f.backend_port(nat_target, NAT_TARGET_PORT);
    // The SNAT listener's target is the tunnel's second, likewise.
    f.listener(
        fixture::VIP_V4,
        SNAT_PORT,
        Proto::Tcp,
        VIP_F_NAT | VIP_F_SNAT,
        &[fixture::BACKEND2_V4],
    );
    let snat_target = f.backend(fixture::BACKEND2_V4);
    f.backend_port(snat_target, SNAT_TARGET_PORT);
    // A baseline object from before SNAT has no SNAT maps: its SNAT cases are left out.
    let snat = has_snat(&mut f);
    if snat {
        f.dataplane().set_snat_config(&SnatConfig {
            addr_v4: fixture::addr_bytes(SNAT_ADDR.into()).1,
            addr_v6: [0; 16],
            port_first: SNAT_SOURCE_PORT,
            port_count: 1,
            _pad: 0,
        })?;
    }
    f.config(|c| c.flags |= CONFIG_F_NAT | CONFIG_F_SNAT);
    let setup = [
        (&frames.syn, Reason::TxTunnel),
        (&frames.v6_syn, Reason::TxTunnel),
        (&frames.nat_syn, Reason::TxNat),
        (&frames.snat_syn, Reason::TxSnat),
        (&frames.other, Reason::PassNotVip),
    ];
    for (frame, want) in setup
        .into_iter()
        .filter(|(_, r)| snat || *r != Reason::TxSnat)
    {
        let out = f.run(frame);
        ensure!(
            out.reason() == want,
            "setup packet gave {:?}, want {want:?}",
            out.reasons
        );
    }
    Ok(f)
}

/// Whether the fixture's object has the SNAT maps (objects built before SNAT do not).
pub fn has_snat(f: &mut Fixture) -> bool {
    f.dataplane()
        .maps()
        .any(|(name, _)| name == lb_common::names::SNAT_CONFIG)
}

/// Where a test-run packet's next hop comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// The FIB, from an ingress interface that resolves every target ([`links`]), its answer
    /// cached per CPU: the default deployment.
    Fib,
    /// The configured gateway MAC (`CONFIG_F_NO_FIB`).
    Gateway,
    /// A FIB lookup that fails on every packet (no ingress interface), then the gateway.
    FibMiss,
}

/// One case: a frame through a program, with its next hop.
pub struct Case<'a> {
    /// The path, as the rows name it (`lb.v4.established`; `empty` for `xlb_pass`).
    pub path: &'static str,
    pub program: Program,
    pub hop: Hop,
    pub frame: &'a [u8],
    /// The verdict it must get.
    pub action: u32,
    pub note: &'static str,
    /// Runs with a NAT listener configured (`CONFIG_F_NAT`).
    pub nat: bool,
    /// Runs with an SNAT listener configured (`CONFIG_F_SNAT`).
    pub snat: bool,
}

impl Case<'_> {
    /// The node config flags the case runs with.
    pub fn config_flags(&self) -> u16 {
        let mut flags = 0;
        if self.hop == Hop::Gateway {
            flags |= CONFIG_F_NO_FIB;
        }
        if self.nat {
            flags |= CONFIG_F_NAT;
        }
        if self.snat {
            flags |= CONFIG_F_SNAT;
        }
        flags
    }
}

/// The cases, in the bench's order: those without an ingress interface first (they run before
/// [`links`] makes one, so their FIB lookups fail).
pub fn cases(f: &Frames) -> Vec<Case<'_>> {
    let case = |path: &'static str, program, hop, frame, action, note| Case {
        path,
        program,
        hop,
        frame,
        action,
        note,
        nat: path.contains(".nat."),
        snat: path.contains(".snat."),
    };
    let (lb, fib, gateway, miss) = (Program::Lb, Hop::Fib, Hop::Gateway, Hop::FibMiss);
    vec![
        case(
            "empty",
            Program::Pass,
            miss,
            &f.ack,
            XDP_PASS,
            "xlb_pass (XDP_PASS): the floor",
        ),
        case(
            "lb.v4.established.fib_miss",
            lb,
            miss,
            &f.ack,
            XDP_TX,
            "as established, no route in the FIB: the gateway, cached",
        ),
        case(
            "lb.non_vip.fib_miss",
            lb,
            miss,
            &f.other,
            XDP_PASS,
            "not a VIP, no ingress interface",
        ),
        case(
            "lb.v4.established",
            lb,
            fib,
            &f.ack,
            XDP_TX,
            "TCP ACK, flow in table, IPIP; FIB answer cached",
        ),
        case(
            "lb.v4.syn",
            lb,
            fib,
            &f.syn,
            XDP_TX,
            "TCP SYN: ring + flow insert, IPIP; FIB answer cached",
        ),
        case(
            "lb.v6.established",
            lb,
            fib,
            &f.v6_ack,
            XDP_TX,
            "TCP ACK, flow in table, IP6IP6; FIB answer cached",
        ),
        case(
            "lb.v4.established.gateway",
            lb,
            gateway,
            &f.ack,
            XDP_TX,
            "as established, gateway_mac (no FIB lookup)",
        ),
        case(
            "lb.v4.syn.gateway",
            lb,
            gateway,
            &f.syn,
            XDP_TX,
            "as SYN, gateway_mac (no FIB lookup)",
        ),
        case(
            "lb.non_vip",
            lb,
            fib,
            &f.other,
            XDP_PASS,
            "not a VIP: passed",
        ),
        case(
            "lb.v4.nat.established",
            lb,
            fib,
            &f.nat_ack,
            XDP_TX,
            "TCP ACK, flow in table, NAT to the target's port; FIB answer cached",
        ),
        case(
            "lb.v4.nat.reply",
            lb,
            fib,
            &f.nat_reply,
            XDP_TX,
            "the NAT target's TCP ACK back to the client; FIB asked",
        ),
        case(
            "lb.non_vip.nat",
            lb,
            fib,
            &f.other,
            XDP_PASS,
            "not a VIP, on a node with a NAT listener: looked up as a reply, passed",
        ),
        case(
            "lb.v4.snat.established",
            lb,
            fib,
            &f.snat_ack,
            XDP_TX,
            "TCP ACK, flow in table, SNAT (its port found) to the target's port; FIB answer cached",
        ),
        case(
            "lb.v4.snat.reply",
            lb,
            fib,
            &f.snat_reply,
            XDP_TX,
            "the SNAT target's TCP ACK back to the client; FIB asked",
        ),
    ]
}

/// The MAC of [`links`]' interface (set, so that the emulated FIB can give it).
pub const LINK_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x7e, 0x01];

/// A veth pair in this thread's namespace (a fixture unshared it), forwarding, with the
/// fixture's targets and IPv4 client on its link and their neighbours resolved; returns its
/// index.
pub fn links() -> Result<u32> {
    let mac = mac_str(LINK_MAC);
    run(&[
        "ip", "link", "add", "tr0", "address", &mac, "type", "veth", "peer", "name", "tr1",
    ])?;
    for dev in ["tr0", "tr1"] {
        run(&["ip", "link", "set", dev, "up"])?;
    }
    // The FIB answers only for an ingress interface that forwards (this namespace's sysctls).
    run(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
    run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    run(&["ip", "addr", "add", "198.18.1.1/24", "dev", "tr0"])?;
    // The client too, for NAT replies.
    run(&["ip", "addr", "add", "198.18.0.1/24", "dev", "tr0"])?;
    run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:2::1/64",
        "dev",
        "tr0",
        "nodad",
    ])?;
    let backend = mac_str(fixture::BACKEND_MAC);
    for target in TARGETS {
        let addr = target.to_string();
        run(&[
            "ip",
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &backend,
            "dev",
            "tr0",
            "nud",
            "permanent",
        ])?;
    }
    run(&[
        "ip",
        "neigh",
        "replace",
        &fixture::CLIENT_V4.to_string(),
        "lladdr",
        &mac_str(MAC_CLIENT),
        "dev",
        "tr0",
        "nud",
        "permanent",
    ])?;
    Ok(nix::net::if_::if_nametoindex("tr0")?)
}

const TARGETS: [std::net::IpAddr; 4] = [
    fixture::BACKEND1_V4,
    fixture::BACKEND2_V4,
    fixture::BACKEND3_V4,
    fixture::BACKEND1_V6,
];

/// What the kernel's FIB answers for the targets (and the IPv4 client) from [`links`]' interface
/// `ifindex`: the same interface, its MAC, theirs.
pub fn routes(ifindex: u32) -> Vec<Route> {
    let mut routes: Vec<Route> = TARGETS
        .iter()
        .map(|dst| Route {
            ingress: ifindex,
            dst: *dst,
            ifindex,
            smac: LINK_MAC,
            dmac: fixture::BACKEND_MAC,
        })
        .collect();
    routes.push(Route {
        ingress: ifindex,
        dst: fixture::CLIENT_V4.into(),
        ifindex,
        smac: LINK_MAC,
        dmac: MAC_CLIENT,
    });
    routes
}

/// The instructions `case` executes in the steady state, on `machine` (which holds `dp`'s maps):
/// run there twice, the first to fill what a stream of such packets finds filled (the next-hop
/// cache), and checked against one run of `dp`'s program in the kernel (same verdict, same
/// frame) so that a count cannot come from a path the kernel does not take.
pub fn count(
    machine: &mut Machine,
    dp: &mut Dataplane,
    case: &Case,
    ingress_ifindex: u32,
) -> Result<Run> {
    let name = case.program.name();
    let opts = RunOptions {
        repeat: 1,
        ingress_ifindex,
    };
    let kernel = dp.test_run_with(case.program, case.frame, opts)?;
    machine.run(name, case.frame, ingress_ifindex)?;
    let run = machine.run(name, case.frame, ingress_ifindex)?;
    ensure!(
        run.action == kernel.action && run.action == case.action,
        "{}: verdict {} counted, {} in the kernel, {} wanted",
        case.path,
        run.action,
        kernel.action,
        case.action
    );
    ensure!(
        run.frame == kernel.frame,
        "{}: the counted run's frame differs from the kernel's",
        case.path
    );
    Ok(run)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
