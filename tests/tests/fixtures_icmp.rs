//! ICMP fixtures for `xlb_lb`: echo requests to VIPs answered in place (v4 and v6), echo to
//! non-VIPs and other ICMP passed; ICMP errors quoting a VIP → client packet forwarded to that
//! flow's target; "fragmentation needed" / "packet too big" generated when a packet does not fit
//! the tunnel. Each fixture reads "given (setup), when (packet), then (verdict, frame out,
//! counters)". Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{VIP_F_DSR, VIP_F_NO_ECHO, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{ExtHeader, MAC_CLIENT, MAC_LB, Packet, ip_bytes},
};

/// A router on the path between the balancer's targets and the client, sending errors.
const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 77);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x77);

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}
// ---- Echo ----------------------------------------------------------------------------------

/// Echo requests to VIP addresses are answered in place: MACs and addresses swapped, TTL 64,
/// type changed, checksums right; the rest of the header (tos, id, DF, options) and the payload
/// stay; a VLAN tag stays.
#[test]
fn echo_requests_to_vips_are_answered_in_place() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let big = [0x5au8; 1000];
    let opts = [1u8, 1, 1, 1];
    let cases = vec![
        Case::new(
            "v4 echo",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_echo_request(1, 1)
                .payload(b"abc")
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .icmpv4_echo_reply(1, 1)
                .payload(b"abc")
                .build(),
        ),
        Case::new(
            "v4 echo with ttl 3: reply ttl 64",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .ttl(3)
                .icmpv4_echo_request(2, 9)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .ttl(64)
                .icmpv4_echo_reply(2, 9)
                .build(),
        ),
        Case::new(
            "v4 echo with DF, tos and id: kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .dont_fragment()
                .tos(0x28)
                .id(777)
                .ttl(255)
                .icmpv4_echo_request(3, 1)
                .payload(b"x")
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .dont_fragment()
                .tos(0x28)
                .id(777)
                .icmpv4_echo_reply(3, 1)
                .payload(b"x")
                .build(),
        ),
        Case::new(
            "v4 echo, vlan: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(42)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_echo_request(4, 1)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .vlan(42)
                .ipv4(VIP_V4, CLIENT_V4)
                .icmpv4_echo_reply(4, 1)
                .build(),
        ),
        Case::new(
            "v4 echo with ip options: options kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .options(&opts)
                .icmpv4_echo_request(5, 1)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .options(&opts)
                .icmpv4_echo_reply(5, 1)
                .build(),
        ),
        Case::new(
            "v4 echo with 1000 bytes of payload",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_echo_request(6, 65535)
                .payload(&big)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .icmpv4_echo_reply(6, 65535)
                .payload(&big)
                .build(),
        ),
        Case::new(
            "v4 echo with id and seq 0xffff (checksum edge)",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_echo_request(0xffff, 0xffff)
                .payload(&[0xff; 8])
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv4(VIP_V4, CLIENT_V4)
                .icmpv4_echo_reply(0xffff, 0xffff)
                .payload(&[0xff; 8])
                .build(),
        ),
        Case::new(
            "v6 echo",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .icmpv6_echo_request(1, 1)
                .payload(b"abc")
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv6(VIP_V6, CLIENT_V6)
                .icmpv6_echo_reply(1, 1)
                .payload(b"abc")
                .build(),
        ),
        Case::new(
            "v6 echo with hop limit 1: reply hop limit 64, traffic class kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .hop_limit(1)
                .traffic_class(0x20)
                .icmpv6_echo_request(2, 2)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv6(VIP_V6, CLIENT_V6)
                .hop_limit(64)
                .traffic_class(0x20)
                .icmpv6_echo_reply(2, 2)
                .build(),
        ),
        Case::new(
            "v6 echo, vlan: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(3000)
                .ipv6(CLIENT_V6, VIP_V6)
                .icmpv6_echo_request(3, 3)
                .payload(&big)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .vlan(3000)
                .ipv6(VIP_V6, CLIENT_V6)
                .icmpv6_echo_reply(3, 3)
                .payload(&big)
                .build(),
        ),
        Case::new(
            "v6 echo after a hop-by-hop header: header kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .ipv6_ext(ExtHeader::HopByHop)
                .icmpv6_echo_request(4, 4)
                .build(),
            XDP_TX,
            Reason::TxEchoReply,
            Packet::eth(MAC_LB, MAC_CLIENT)
                .ipv6(VIP_V6, CLIENT_V6)
                .ipv6_ext(ExtHeader::HopByHop)
                .icmpv6_echo_reply(4, 4)
                .build(),
        ),
    ];
    f.run_cases(&cases);
    // Echo is not balanced: no VIP packets, no flows.
    assert_eq!(f.vip_counters(vip).packets, 0);
    assert_eq!(f.flows(), 0);
}

/// `VIP_F_NO_ECHO` leaves echo requests to the stack; echo to a non-VIP is not ours; other ICMP
/// to a VIP (echo replies, timestamps, neighbour discovery) is passed too.
#[test]
fn echo_to_no_echo_vips_or_non_vips_and_other_icmp_pass_untouched() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_NO_ECHO, &[BACKEND1_V4]);
    f.listener(VIP_V6, 80, Proto::Tcp, VIP_F_NO_ECHO, &[BACKEND1_V6]);
    let vip2 = Ipv4Addr::new(198, 18, 100, 2);
    f.listener(vip2, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    // ICMP timestamp request (type 13): 20 bytes, checksum left zero (nobody checks it here).
    let mut timestamp = [0u8; 20];
    timestamp[0] = 13;
    // ICMPv6 neighbour solicitation (type 135) for the VIP.
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&VIP_V6.octets());
    let cases = vec![
        Case::unchanged(
            "v4 echo to a no-echo VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_echo_request(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v6 echo to a no-echo VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .icmpv6_echo_request(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v4 echo to a non-VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, OTHER_V4)
                .icmpv4_echo_request(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v6 echo to a non-VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, OTHER_V6)
                .icmpv6_echo_request(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v4 echo reply to a VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, vip2)
                .icmpv4_echo_reply(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v6 echo reply to a VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .icmpv6_echo_reply(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v4 timestamp request to a VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, vip2)
                .raw(1)
                .payload(&timestamp)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v6 neighbour solicitation to a VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .hop_limit(255)
                .raw(58)
                .payload(&ns)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v4 echo from the VIP to the client (reply direction)",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(VIP_V4, CLIENT_V4)
                .icmpv4_echo_request(1, 1)
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
}

// ---- ICMP errors about VIP flows -------------------------------------------------------------

/// The packet the target sent back to the client (VIP → client), as an ICMP error quotes it:
/// its IP header and the first 8 bytes after it.
fn quote4(vip_port: u16, client_port: u16, udp: bool) -> Vec<u8> {
    let ip = Packet::eth(MAC_LB, MAC_CLIENT)
        .ipv4(VIP_V4, CLIENT_V4)
        .dont_fragment();
    let frame = if udp {
        ip.udp(vip_port, client_port).payload(&[0; 100]).build()
    } else {
        ip.tcp(vip_port, client_port)
            .syn()
            .ack()
            .payload(&[0; 100])
            .build()
    };
    ip_bytes(&frame)[..28].to_vec()
}

/// The same for IPv6: the quote is as much of the packet as fits (here the whole of a short one).
fn quote6(vip_port: u16, client_port: u16, udp: bool) -> Vec<u8> {
    let ip = Packet::eth(MAC_LB, MAC_CLIENT).ipv6(VIP_V6, CLIENT_V6);
    let frame = if udp {
        ip.udp(vip_port, client_port).payload(&[7; 32]).build()
    } else {
        ip.tcp(vip_port, client_port)
            .ack()
            .payload(&[7; 32])
            .build()
    };
    ip_bytes(&frame).to_vec()
}

fn from_router4() -> xlb_tests::packet::Ipv4Builder {
    Packet::eth(MAC_CLIENT, MAC_LB).ipv4(ROUTER_V4, VIP_V4)
}

fn from_router6() -> xlb_tests::packet::Ipv6Builder {
    Packet::eth(MAC_CLIENT, MAC_LB).ipv6(ROUTER_V6, VIP_V6)
}

/// ICMPv4 errors (unreachable, fragmentation needed, time exceeded) quoting a VIP → client packet
/// go, whole, in the tunnel to the target of the client's flow (the quote's reverse), with the
/// tunnel source from that flow's hash. Errors about other packets are passed.
#[test]
fn icmp_errors_about_established_v4_flows_go_to_the_flows_target() {
    let mut f = Fixture::new();
    let tcp = f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        0,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    f.listener(
        VIP_V4,
        53,
        Proto::Udp,
        0,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    let targets = [BACKEND1_V4, BACKEND2_V4, BACKEND3_V4];
    // Establish the two flows and note their targets.
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build();
    let dgram = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .udp(2000, 53)
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxTunnel);
    assert_eq!(f.run(&dgram).reason(), Reason::TxTunnel);
    let flows = f.flow_entries();
    let target_of = |k: &lb_common::FlowKey| {
        targets[flows
            .iter()
            .find(|(fk, _)| fk == k)
            .expect("flow")
            .1
            .backend as usize
            - 1]
    };
    let kt = flow_key(v4(CLIENT_V4), v4(VIP_V4), 1000, 80, Proto::Tcp);
    let ku = flow_key(v4(CLIENT_V4), v4(VIP_V4), 2000, 53, Proto::Udp);
    let (tt, tu) = (target_of(&kt), target_of(&ku));
    let (ht, hu) = (hash5(&kt), hash5(&ku));
    let tunnel = |name, input: Vec<u8>, target, hash| {
        let expect = expect_tunnel(&input, target, hash);
        Case::new(name, input, XDP_TX, Reason::TxTunnel, expect)
    };
    let qt = quote4(80, 1000, false);
    let qu = quote4(53, 2000, true);
    let cases = vec![
        tunnel(
            "host unreachable about the tcp flow",
            from_router4().icmpv4_dest_unreachable(1, &qt).build(),
            tt,
            ht,
        ),
        tunnel(
            "fragmentation needed about the tcp flow",
            from_router4().icmpv4_frag_needed(1400, &qt).build(),
            tt,
            ht,
        ),
        tunnel(
            "time exceeded about the tcp flow",
            from_router4().icmpv4_time_exceeded(&qt).build(),
            tt,
            ht,
        ),
        tunnel(
            "port unreachable about the udp flow",
            from_router4().icmpv4_dest_unreachable(3, &qu).build(),
            tu,
            hu,
        ),
        tunnel(
            "fragmentation needed about the udp flow",
            from_router4().icmpv4_frag_needed(1280, &qu).build(),
            tu,
            hu,
        ),
        tunnel(
            "time exceeded about the udp flow",
            from_router4().icmpv4_time_exceeded(&qu).build(),
            tu,
            hu,
        ),
        tunnel(
            "net unreachable, longer quote",
            from_router4()
                .icmpv4_dest_unreachable(0, &quote4(80, 1000, false))
                .payload(&[0; 40])
                .build(),
            tt,
            ht,
        ),
        tunnel(
            "vlan-tagged error: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(9)
                .ipv4(ROUTER_V4, VIP_V4)
                .icmpv4_frag_needed(1400, &qt)
                .build(),
            tt,
            ht,
        ),
        tunnel(
            "error sent by the client itself",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, VIP_V4)
                .icmpv4_dest_unreachable(3, &qu)
                .build(),
            tu,
            hu,
        ),
    ];
    f.run_cases(&cases);
    // Errors do not create flows or count as new ones.
    assert_eq!(f.flows(), 2);
    assert_eq!(f.vip_counters(tcp).new_flows, 1);
}

/// ICMPv4 errors whose quote is not about a VIP flow go to the stack (PassIcmp); errors to
/// a non-VIP address are not ours (PassNotVip).
#[test]
fn icmp_errors_to_v4_vips_quoting_other_packets_pass_untouched() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let q = |src: Ipv4Addr, sport: u16| {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(src, CLIENT_V4)
            .tcp(sport, 1000)
            .ack()
            .build();
        ip_bytes(&frame)[..28].to_vec()
    };
    let icmp_quote = {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(VIP_V4, CLIENT_V4)
            .icmpv4_echo_reply(1, 1)
            .build();
        ip_bytes(&frame)[..28].to_vec()
    };
    let with_options = {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(VIP_V4, CLIENT_V4)
            .options(&[1, 1, 1, 1])
            .tcp(80, 1000)
            .ack()
            .build();
        ip_bytes(&frame)[..32].to_vec()
    };
    let udp_quote = {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(VIP_V4, CLIENT_V4)
            .udp(80, 1000)
            .build();
        ip_bytes(&frame)[..28].to_vec()
    };
    let cases = vec![
        Case::unchanged(
            "quote from a non-VIP source",
            from_router4()
                .icmpv4_dest_unreachable(1, &q(OTHER_V4, 80))
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote from the VIP, another port",
            from_router4()
                .icmpv4_dest_unreachable(1, &q(VIP_V4, 81))
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote of udp where the VIP is tcp",
            from_router4()
                .icmpv4_dest_unreachable(3, &udp_quote)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote of an ICMP packet",
            from_router4().icmpv4_time_exceeded(&icmp_quote).build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote with IP options (left to the kernel)",
            from_router4()
                .icmpv4_dest_unreachable(1, &with_options)
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote cut before the ports",
            from_router4()
                .icmpv4_dest_unreachable(1, &q(VIP_V4, 80)[..22])
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "error with no quote at all",
            from_router4().icmpv4_dest_unreachable(1, &[]).build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "error to a non-VIP address",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(ROUTER_V4, OTHER_V4)
                .icmpv4_dest_unreachable(1, &q(VIP_V4, 80))
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
}

/// An error about a flow goes to the flow's target even after the ring moved on; an error about
/// a flow the table does not know goes where the ring says, without creating a flow.
#[test]
fn after_a_ring_change_icmp_errors_follow_known_flows_and_the_ring_for_unknown_ones() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxTunnel);
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    let known = from_router4()
        .icmpv4_frag_needed(1400, &quote4(80, 1000, false))
        .build();
    let unknown = from_router4()
        .icmpv4_frag_needed(1400, &quote4(80, 1001, false))
        .build();
    let hk = hash5(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 1000, 80, Proto::Tcp));
    let hu = hash5(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 1001, 80, Proto::Tcp));
    let cases = vec![
        Case::new(
            "error about the known flow → backend 1",
            known.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&known, BACKEND1_V4, hk),
        ),
        Case::new(
            "error about an unknown flow → ring (backend 2)",
            unknown.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&unknown, BACKEND2_V4, hu),
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 1);
    // Backend 1 gone: the known flow's error follows the ring too.
    f.set_live(1, false);
    f.run_cases(&[Case::new(
        "error about the known flow, backend 1 gone → backend 2",
        known.clone(),
        XDP_TX,
        Reason::TxTunnel,
        expect_tunnel(&known, BACKEND2_V4, hk),
    )]);
    let c = f.vip_counters(vip);
    assert_eq!((c.packets, c.new_flows), (4, 1));
}

/// Errors about flows of a DSR VIP go by DSR; about a source-IP VIP, with the source hash; to a
/// VIP without targets, dropped as no backend.
#[test]
fn icmp_errors_to_dsr_source_ip_and_empty_vips_follow_each_vips_mode() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 8080, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V4]);
    f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND2_V4]);
    f.listener(VIP_V4, 9090, Proto::Tcp, 0, &[]);
    let dsr = from_router4()
        .icmpv4_frag_needed(1400, &quote4(8080, 1000, false))
        .build();
    let sticky = from_router4()
        .icmpv4_frag_needed(1400, &quote4(80, 1000, false))
        .build();
    let empty = from_router4()
        .icmpv4_dest_unreachable(1, &quote4(9090, 1000, false))
        .build();
    let hs = hash_src(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 1000, 80, Proto::Tcp));
    let cases = vec![
        Case::new(
            "error about a dsr flow → dsr",
            dsr.clone(),
            XDP_TX,
            Reason::TxDsr,
            expect_dsr(&dsr),
        ),
        Case::new(
            "error about a source-ip flow → tunnel with the source hash",
            sticky.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&sticky, BACKEND2_V4, hs),
        ),
        Case::unchanged(
            "error about a VIP with no targets",
            empty,
            XDP_DROP,
            Reason::DropNoBackend,
        ),
    ];
    f.run_cases(&cases);
}

/// ICMPv6 errors (packet too big, unreachable, time exceeded) about VIP flows go to the flow's
/// target in IP6IP6; about other packets they pass.
#[test]
fn icmpv6_errors_go_to_the_established_v6_flows_target_or_pass() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    let kt = flow_key(v6(CLIENT_V6), v6(VIP_V6), 1000, 443, Proto::Tcp);
    let ku = flow_key(v6(CLIENT_V6), v6(VIP_V6), 2000, 53, Proto::Udp);
    let (ht, hu) = (hash5(&kt), hash5(&ku));
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(1000, 443)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxTunnel);
    let qt = quote6(443, 1000, false);
    let qu = quote6(53, 2000, true);
    let tunnel = |name, input: Vec<u8>, hash| {
        let expect = expect_tunnel(&input, BACKEND1_V6, hash);
        Case::new(name, input, XDP_TX, Reason::TxTunnel, expect)
    };
    let other = {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv6(OTHER_V6, CLIENT_V6)
            .tcp(443, 1000)
            .ack()
            .build();
        ip_bytes(&frame).to_vec()
    };
    let echo_quote = {
        let frame = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv6(VIP_V6, CLIENT_V6)
            .icmpv6_echo_reply(1, 1)
            .build();
        ip_bytes(&frame).to_vec()
    };
    let cases = vec![
        tunnel(
            "packet too big about the tcp flow",
            from_router6().icmpv6_packet_too_big(1280, &qt).build(),
            ht,
        ),
        tunnel(
            "port unreachable about the udp flow",
            from_router6().icmpv6_dest_unreachable(4, &qu).build(),
            hu,
        ),
        tunnel(
            "address unreachable about the tcp flow",
            from_router6().icmpv6_dest_unreachable(3, &qt).build(),
            ht,
        ),
        tunnel(
            "hop limit exceeded about the tcp flow",
            from_router6().icmpv6_time_exceeded(&qt).build(),
            ht,
        ),
        tunnel(
            "packet too big, vlan: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(6)
                .ipv6(ROUTER_V6, VIP_V6)
                .icmpv6_packet_too_big(1400, &qt)
                .build(),
            ht,
        ),
        Case::unchanged(
            "packet too big quoting a non-VIP packet",
            from_router6().icmpv6_packet_too_big(1280, &other).build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "unreachable quoting the VIP on another port",
            from_router6()
                .icmpv6_dest_unreachable(4, &quote6(444, 1000, false))
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "time exceeded quoting an ICMPv6 packet",
            from_router6().icmpv6_time_exceeded(&echo_quote).build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "quote cut before the ports",
            from_router6()
                .icmpv6_packet_too_big(1280, &qt[..42])
                .build(),
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "error to a non-VIP address",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(ROUTER_V6, OTHER_V6)
                .icmpv6_packet_too_big(1280, &qt)
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 1);
}

/// The quote ends where the error's IP length says: ports past it (in Ethernet padding or a
/// trailer) are not read, and the error goes to the stack.
#[test]
fn an_icmp_error_whose_ip_length_cuts_the_quote_before_the_ports_passes() {
    use xlb_tests::packet::{set_ipv4_total_len, set_ipv6_payload_len};
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let mut e4 = from_router4()
        .icmpv4_dest_unreachable(1, &quote4(80, 1000, false))
        .build();
    // IP header 20 + ICMP 8 + quoted IP header 20 + 2 bytes: the ports are cut in half.
    set_ipv4_total_len(&mut e4, 20 + 8 + 20 + 2);
    let mut e6 = from_router6()
        .icmpv6_packet_too_big(1280, &quote6(443, 1000, false))
        .build();
    set_ipv6_payload_len(&mut e6, 8 + 40 + 3);
    let cases = vec![
        Case::unchanged(
            "v4 error, ports past the ip length",
            e4,
            XDP_PASS,
            Reason::PassIcmp,
        ),
        Case::unchanged(
            "v6 error, ports past the payload length",
            e6,
            XDP_PASS,
            Reason::PassIcmp,
        ),
    ];
    f.run_cases(&cases);
}

// ---- Generated "fragmentation needed" / "packet too big" ---------------------------------------

fn big4(len: usize, df: bool) -> Vec<u8> {
    // IP header 20 + TCP 20 + payload = len.
    let ip = Packet::eth(MAC_CLIENT, MAC_LB).ipv4(CLIENT_V4, VIP_V4);
    let ip = if df { ip.dont_fragment() } else { ip };
    ip.tcp(40000, 80)
        .ack()
        .payload(&vec![0x55; len - 40])
        .build()
}

fn big6(len: usize) -> Vec<u8> {
    // IPv6 header 40 + TCP 20 + payload = len.
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(40000, 443)
        .ack()
        .payload(&vec![0x66; len - 60])
        .build()
}

/// The LB's "fragmentation needed" for `frame`: from the VIP to the client, TOS 0xc0, TTL 64,
/// next-hop MTU `mtu`, quoting the first 68 bytes of the offending IP packet.
fn frag_needed(frame: &[u8], mtu: u16, vlan: Option<u16>) -> Vec<u8> {
    let link = Packet::eth(MAC_LB, MAC_CLIENT);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv4(VIP_V4, CLIENT_V4)
        .tos(0xc0)
        .ttl(64)
        .icmpv4_frag_needed(mtu, &ip_bytes(frame)[..68])
        .build()
}

/// The LB's "packet too big": from the VIP to the client, hop limit 64, quoting 128 bytes.
fn packet_too_big(frame: &[u8], mtu: u32, vlan: Option<u16>) -> Vec<u8> {
    let link = Packet::eth(MAC_LB, MAC_CLIENT);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv6(VIP_V6, CLIENT_V6)
        .hop_limit(64)
        .icmpv6_packet_too_big(mtu, &ip_bytes(frame)[..128])
        .build()
}

/// At a configured MTU of 1400, an IPv4 packet of 1380 bytes fits in IPIP (1400) and is
/// tunnelled; one of 1381 gets "fragmentation needed" with MTU 1380 if DF is set, is dropped if
/// not (no fragmentation here), and is dropped when PTB generation is off.
#[test]
fn at_an_mtu_of_1400_v4_packets_that_fit_are_tunnelled_and_others_get_frag_needed() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.config(|c| c.mtu = 1400);
    let h = hash5(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 40000, 80, Proto::Tcp));
    let fits = big4(1380, true);
    let over = big4(1381, true);
    // 1440 bytes of IP: too big at 1400.
    let over_tagged = Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(10)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(40000, 80)
        .ack()
        .payload(&[0x55; 1400])
        .build();
    let opts = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .options(&[7, 7, 4, 0, 0, 0, 0])
        .udp(40000, 80)
        .payload(&[1; 1400])
        .build();
    f.listener(VIP_V4, 80, Proto::Udp, 0, &[BACKEND1_V4]);
    let cases = vec![
        Case::new(
            "1380 bytes with DF: fits, tunnelled",
            fits.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&fits, BACKEND1_V4, h),
        ),
        Case::new(
            "1381 bytes with DF: frag needed, mtu 1380",
            over.clone(),
            XDP_TX,
            Reason::TxTooBig,
            frag_needed(&over, 1380, None),
        ),
        Case::new(
            "vlan, too big: frag needed with the tag",
            over_tagged.clone(),
            XDP_TX,
            Reason::TxTooBig,
            frag_needed(&over_tagged, 1380, Some(10)),
        ),
        Case::new(
            "udp with ip options, too big: the quote starts with the options",
            opts.clone(),
            XDP_TX,
            Reason::TxTooBig,
            frag_needed(&opts, 1380, None),
        ),
        Case::unchanged(
            "1381 bytes without DF: dropped",
            big4(1381, false),
            XDP_DROP,
            Reason::DropTooBig,
        ),
        Case::new(
            "1380 bytes without DF: fits",
            big4(1380, false),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&big4(1380, false), BACKEND1_V4, h),
        ),
    ];
    f.run_cases(&cases);
    f.config(|c| {
        c.mtu = 1400;
        c.flags |= lb_common::CONFIG_F_NO_PTB;
    });
    f.run_cases(&[Case::unchanged(
        "1381 bytes with DF, PTB off: dropped",
        over,
        XDP_DROP,
        Reason::DropTooBig,
    )]);
}

/// The MTU advertised subtracts the tunnel actually used: 20 for IPIP, 40 for IPv4-in-IPv6.
#[test]
fn the_mtu_advertised_for_a_v4_vip_with_a_v6_target_leaves_room_for_ipv6() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V6]);
    let h = hash5(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 40000, 80, Proto::Tcp));
    let fits = big4(1460, true);
    let over = big4(1461, true);
    let cases = vec![
        Case::new(
            "1460 bytes: fits in 1500 with 40 of IPv6",
            fits.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&fits, BACKEND1_V6, h),
        ),
        Case::new(
            "1461 bytes: frag needed, mtu 1460",
            over.clone(),
            XDP_TX,
            Reason::TxTooBig,
            frag_needed(&over, 1460, None),
        ),
    ];
    f.run_cases(&cases);
}

/// IPv6: at MTU 1500 an IPv6 packet of 1460 bytes fits in IP6IP6; 1461 gets "packet too big"
/// with MTU 1460 quoting 128 bytes; towards an IPv4 target, the tunnel takes 20 (MTU 1480).
#[test]
fn at_the_default_mtu_v6_packets_that_fit_are_tunnelled_and_others_get_packet_too_big() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 8443, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 9443, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V6]);
    let h = hash5(&flow_key(v6(CLIENT_V6), v6(VIP_V6), 40000, 443, Proto::Tcp));
    let fits = big6(1460);
    let over = big6(1461);
    let tagged = Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(20)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(40000, 443)
        .ack()
        .payload(&[0x66; 1450])
        .build();
    let to_v4 = |len: usize| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT_V6, VIP_V6)
            .tcp(40000, 8443)
            .ack()
            .payload(&vec![0x44; len - 60])
            .build()
    };
    let h4 = hash5(&flow_key(
        v6(CLIENT_V6),
        v6(VIP_V6),
        40000,
        8443,
        Proto::Tcp,
    ));
    let dsr_big = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(40000, 9443)
        .ack()
        .payload(&[0x11; 1480])
        .build();
    let cases = vec![
        Case::new(
            "1460 bytes: fits",
            fits.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&fits, BACKEND1_V6, h),
        ),
        Case::new(
            "1461 bytes: packet too big, mtu 1460",
            over.clone(),
            XDP_TX,
            Reason::TxTooBig,
            packet_too_big(&over, 1460, None),
        ),
        Case::new(
            "vlan, too big: packet too big with the tag",
            tagged.clone(),
            XDP_TX,
            Reason::TxTooBig,
            packet_too_big(&tagged, 1460, Some(20)),
        ),
        Case::new(
            "1480 bytes to a v4 target: fits",
            to_v4(1480),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&to_v4(1480), BACKEND1_V4, h4),
        ),
        Case::new(
            "1481 bytes to a v4 target: packet too big, mtu 1480",
            to_v4(1481),
            XDP_TX,
            Reason::TxTooBig,
            packet_too_big(&to_v4(1481), 1480, None),
        ),
        Case::new(
            "too big for a tunnel but dsr: no tunnel, forwarded",
            dsr_big.clone(),
            XDP_TX,
            Reason::TxDsr,
            expect_dsr(&dsr_big),
        ),
    ];
    f.run_cases(&cases);
    f.no_ptb();
    f.run_cases(&[Case::unchanged(
        "1461 bytes, PTB off: dropped",
        over,
        XDP_DROP,
        Reason::DropTooBig,
    )]);
}

/// A smaller configured MTU for IPv6 (1280), and an MTU of 0 meaning "no limit".
#[test]
fn the_limit_follows_the_config_for_other_mtus() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.config(|c| c.mtu = 1280);
    let over = big6(1241);
    f.run_cases(&[Case::new(
        "1241 bytes at mtu 1280: packet too big, mtu 1240",
        over.clone(),
        XDP_TX,
        Reason::TxTooBig,
        packet_too_big(&over, 1240, None),
    )]);
    f.config(|c| c.mtu = 0);
    let h6 = hash5(&flow_key(v6(CLIENT_V6), v6(VIP_V6), 40000, 443, Proto::Tcp));
    let h4 = hash5(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 40000, 80, Proto::Tcp));
    let jumbo6 = big6(3000);
    let jumbo4 = big4(3000, true);
    f.run_cases(&[
        Case::new(
            "mtu 0: a 3000-byte v6 packet is tunnelled",
            jumbo6.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&jumbo6, BACKEND1_V6, h6),
        ),
        Case::new(
            "mtu 0: a 3000-byte v4 packet is tunnelled",
            jumbo4.clone(),
            XDP_TX,
            Reason::TxTunnel,
            expect_tunnel(&jumbo4, BACKEND1_V4, h4),
        ),
    ]);
}

/// When the MTU is so small that the packet is shorter than the quote an error would carry,
/// no error is built: dropped as too big.
#[test]
fn a_too_big_packet_shorter_than_the_quote_under_a_tiny_mtu_is_dropped() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.config(|c| c.mtu = 60);
    let small = big4(60, true);
    f.run_cases(&[Case::unchanged(
        "60-byte packet at mtu 60 (needs 80): dropped",
        small,
        XDP_DROP,
        Reason::DropTooBig,
    )]);
}

/// The generated error, spelled out byte by byte once, to check the builder's view against the
/// protocol: type 3 code 4, MTU in bytes 6..8.
#[test]
fn frag_needed_for_a_too_big_v4_packet_says_type_3_code_4_and_the_mtu() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let over = big4(1481, true);
    let out = f.run(&over);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTooBig));
    assert_eq!(out.frame.len(), 14 + 20 + 8 + 68);
    assert_eq!(&out.frame[..12], &[MAC_CLIENT, MAC_LB].concat()[..]);
    let icmp = &out.frame[34..42];
    assert_eq!(
        (icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])),
        (3, 4, 1480)
    );
    assert_eq!(&out.frame[42..], &ip_bytes(&over)[..68]);
}
