//! Next hops from the kernel FIB, through `BPF_PROG_TEST_RUN` with an ingress interface: the
//! fixture's namespace gets two veth pairs, routes and neighbours, so the FIB answers. Targets
//! behind the other interface are redirected there, targets on the ingress link go back out
//! with `XDP_TX`, and each CPU's cached answer is used for a second, then asked again.

use lb_common::{CONFIG_F_NO_FIB, CONFIG_F_NO_PTB};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use xlb_tests::{
    fixture::{
        CLIENT_V4, CLIENT_V6, Fixture, Outcome, Proto, Reason, TUNNEL_SRC_V4, VIP_V4, VIP_V6,
        XDP_REDIRECT, XDP_TX,
    },
    packet::{MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet},
};

const MAC_IN: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x01];
const MAC_OUT: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0x01];
const MAC_FAR: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x11];
const MAC_FAR_NEW: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x22];
const MAC_NEAR: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x33];
/// Behind `out0`.
const FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const FAR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);
/// On the ingress link (`in0`).
const NEAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 33);

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the namespace's links (the calling thread's: `Fixture::new` unshared it) and returns
/// the ingress interface's index.
fn links() -> u32 {
    for (a, b, m) in [("in0", "in1", MAC_IN), ("out0", "out1", MAC_OUT)] {
        run(&[
            "ip",
            "link",
            "add",
            a,
            "address",
            &mac(m),
            "type",
            "veth",
            "peer",
            "name",
            b,
        ]);
        run(&["ip", "link", "set", a, "up"]);
        run(&["ip", "link", "set", b, "up"]);
    }
    // The FIB answers only for an ingress interface that forwards.
    run(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    run(&["ip", "addr", "add", "198.18.0.1/24", "dev", "in0"]);
    run(&["ip", "addr", "add", "198.18.1.1/24", "dev", "out0"]);
    run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "in0",
        "nodad",
    ]);
    run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:2::1/64",
        "dev",
        "out0",
        "nodad",
    ]);
    neighbour(FAR_V4.into(), MAC_FAR, "out0");
    neighbour(FAR_V6.into(), MAC_FAR, "out0");
    neighbour(NEAR_V4.into(), MAC_NEAR, "in0");
    nix::net::if_::if_nametoindex("in0").expect("ifindex of in0")
}

fn neighbour(addr: IpAddr, m: [u8; 6], dev: &str) {
    let (addr, m) = (addr.to_string(), mac(m));
    run(&[
        "ip",
        "neigh",
        "replace",
        &addr,
        "lladdr",
        &m,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// Pins the test thread to one CPU: the cache is per CPU.
fn pin_cpu() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to cpu 0");
}

fn syn_v4(sport: u16) -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(sport, 80)
        .syn()
        .build()
}

/// The Ethernet addresses of a tunnelled frame, and its outer destination.
fn sent_to(out: &Outcome) -> ([u8; 6], [u8; 6], IpAddr) {
    assert_eq!(out.reason(), Reason::TxTunnel);
    let f = &out.frame;
    let dst: [u8; 6] = f[..6].try_into().unwrap();
    let src: [u8; 6] = f[6..12].try_into().unwrap();
    let outer = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()),
        0x86dd => IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
        t => panic!("outer ether type {t:#x}"),
    };
    (dst, src, outer)
}

#[test]
fn targets_behind_another_interface_are_redirected_there() {
    let mut f = Fixture::new();
    let ingress = links();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[FAR_V4.into()]);
    f.listener(VIP_V6, 80, Proto::Tcp, 0, &[FAR_V6.into()]);

    let out = f.run_on(ingress, &syn_v4(1000));
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(sent_to(&out), (MAC_FAR, MAC_OUT, FAR_V4.into()));

    let syn_v6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(1000, 80)
        .syn()
        .build();
    let out = f.run_on(ingress, &syn_v6);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(sent_to(&out), (MAC_FAR, MAC_OUT, FAR_V6.into()));
}

#[test]
fn targets_on_the_ingress_link_go_back_out_with_xdp_tx() {
    let mut f = Fixture::new();
    let ingress = links();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[NEAR_V4.into()]);
    let out = f.run_on(ingress, &syn_v4(1000));
    assert_eq!(out.action, XDP_TX);
    assert_eq!(sent_to(&out), (MAC_NEAR, MAC_IN, NEAR_V4.into()));
}

#[test]
fn a_cached_next_hop_is_used_for_a_second_then_the_fib_is_asked_again() {
    pin_cpu();
    let mut f = Fixture::new();
    let ingress = links();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[FAR_V4.into()]);
    assert_eq!(sent_to(&f.run_on(ingress, &syn_v4(1000))).0, MAC_FAR);

    neighbour(FAR_V4.into(), MAC_FAR_NEW, "out0");
    // Another flow to the same target: the next hop comes from the cache, not the FIB.
    assert_eq!(
        sent_to(&f.run_on(ingress, &syn_v4(1001))).0,
        MAC_FAR,
        "cached"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        sent_to(&f.run_on(ingress, &syn_v4(1002))).0,
        MAC_FAR_NEW,
        "asked again after a second"
    );
}

/// A target the FIB has no route for goes to the configured gateway, and that answer is cached
/// as the FIB's is: a route added later is used after a second.
#[test]
fn a_target_without_a_route_goes_to_the_gateway_until_the_fib_is_asked_again() {
    pin_cpu();
    let mut f = Fixture::new();
    let ingress = links();
    let routed_later = Ipv4Addr::new(198, 18, 2, 11);
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[routed_later.into()]);
    let out = f.run_on(ingress, &syn_v4(1000));
    assert_eq!(out.action, XDP_TX);
    assert_eq!(sent_to(&out), (MAC_GATEWAY, MAC_LB, routed_later.into()));

    // Through FAR_V4, a router behind out0.
    run(&["ip", "route", "add", "198.18.2.0/24", "via", "198.18.1.11"]);
    assert_eq!(
        sent_to(&f.run_on(ingress, &syn_v4(1001))).0,
        MAC_GATEWAY,
        "cached"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let out = f.run_on(ingress, &syn_v4(1002));
    assert_eq!(out.action, XDP_REDIRECT, "asked again after a second");
    assert_eq!(sent_to(&out), (MAC_FAR, MAC_OUT, routed_later.into()));
}

/// The node settings the tunnel keeps with a cached next hop (source prefix, MTU, gateway) apply
/// from the next packet once the agent writes new ones: writing them clears the cache.
#[test]
fn new_node_settings_apply_to_a_target_whose_next_hop_is_cached() {
    pin_cpu();
    let mut f = Fixture::new();
    let ingress = links();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[FAR_V4.into()]);
    let outer_src = |out: &Outcome| <[u8; 2]>::try_from(&out.frame[26..28]).unwrap();
    let out = f.run_on(ingress, &syn_v4(1000));
    assert_eq!(outer_src(&out), TUNNEL_SRC_V4);

    f.config(|c| c.tunnel_src_v4 = [10, 99, 0, 0]);
    let out = f.run_on(ingress, &syn_v4(1001));
    assert_eq!(sent_to(&out).0, MAC_FAR);
    assert_eq!(
        outer_src(&out),
        [10, 99],
        "the new prefix, not the cached one"
    );

    f.config(|c| {
        c.mtu = 1280;
        c.flags |= CONFIG_F_NO_PTB;
    });
    let big = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(1001, 80)
        .payload(&[0; 1250])
        .build();
    let out = f.run_on(ingress, &big);
    assert_eq!(out.reasons, [(Reason::DropTooBig, 1)], "the new MTU");

    // With the FIB off the gateway's answer does not expire; a new gateway applies at once.
    let other_gateway = [0x02, 0, 0, 0, 0x0a, 0x02];
    f.config(|c| c.flags |= CONFIG_F_NO_FIB);
    assert_eq!(sent_to(&f.run_on(ingress, &syn_v4(1002))).0, MAC_GATEWAY);
    f.config(|c| {
        c.flags |= CONFIG_F_NO_FIB;
        c.gateway_mac = other_gateway;
    });
    assert_eq!(
        sent_to(&f.run_on(ingress, &syn_v4(1003))).0,
        other_gateway,
        "the new gateway"
    );
}

#[test]
fn a_target_whose_neighbour_is_not_resolved_yet_goes_through_the_kernel() {
    pin_cpu();
    let mut f = Fixture::new();
    let ingress = links();
    // On out0's subnet, with no neighbour entry: the FIB has a route and no MAC.
    let unresolved_v4 = Ipv4Addr::new(198, 18, 1, 44);
    let unresolved_v6 = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x44);
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[unresolved_v4.into()]);
    f.listener(VIP_V6, 80, Proto::Tcp, 0, &[unresolved_v6.into()]);
    let syn_v6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(1000, 80)
        .syn()
        .build();
    for (frame, target) in [
        (syn_v4(1000), IpAddr::from(unresolved_v4)),
        (syn_v6, unresolved_v6.into()),
    ] {
        let out = f.run_on(ingress, &frame);
        // Tunnelled and passed up, its Ethernet addresses as they came, for the kernel to
        // forward once it has resolved the neighbour.
        assert_eq!(out.action, xlb_tests::fixture::XDP_PASS);
        assert_eq!(out.reasons, [(Reason::PassNoNeighbour, 1)]);
        let fr = &out.frame;
        assert_eq!((&fr[..6], &fr[6..12]), (&MAC_LB[..], &MAC_CLIENT[..]));
        let outer = match u16::from_be_bytes([fr[12], fr[13]]) {
            0x0800 => IpAddr::from(<[u8; 4]>::try_from(&fr[30..34]).unwrap()),
            0x86dd => IpAddr::from(<[u8; 16]>::try_from(&fr[38..54]).unwrap()),
            t => panic!("outer ether type {t:#x}"),
        };
        assert_eq!(outer, target);
    }
    // Once the kernel knows the neighbour, the datapath sends by itself (nothing was cached).
    neighbour(unresolved_v4.into(), MAC_FAR_NEW, "out0");
    let out = f.run_on(ingress, &syn_v4(1001));
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(sent_to(&out), (MAC_FAR_NEW, MAC_OUT, unresolved_v4.into()));
}
