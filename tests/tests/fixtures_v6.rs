//! IPv6 VIP fixtures for `xlb_lb`: TCP and UDP, first packet and established flow, IP6IP6 and
//! L2 DSR, VLAN tags, extension headers (hop-by-hop, destination options, routing) before the L4
//! header, IPv6 VIPs with IPv4 targets, all-ports VIPs, source-IP stickiness and the drops of the
//! forwarding stage. Each fixture reads "given (setup), when (packet), then (verdict, frame out,
//! counters)". Run as root.

use std::net::{IpAddr, Ipv6Addr};

use lb_common::{FlowKey, RING_SIZE_DEFAULT as RING_SIZE, VIP_F_DSR, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{
        ExtHeader, Ipv6Builder, MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq, ip_bytes,
    },
};

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

const BACKEND2_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12));
const BACKEND3_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x13));

/// A frame from the client to the IPv6 VIP.
fn to_vip() -> Ipv6Builder {
    Packet::eth(MAC_CLIENT, MAC_LB).ipv6(CLIENT_V6, VIP_V6)
}

fn tagged(id: u16) -> Ipv6Builder {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(id)
        .ipv6(CLIENT_V6, VIP_V6)
}

fn key(sport: u16, dport: u16, proto: Proto) -> FlowKey {
    flow_key(v6(CLIENT_V6), v6(VIP_V6), sport, dport, proto)
}

fn h(sport: u16, dport: u16, proto: Proto) -> u32 {
    hash5(&key(sport, dport, proto))
}
/// TCP/UDP × first/established × IP6IP6/DSR, untagged and tagged, inner header fields kept.
#[test]
fn packets_to_v6_tcp_and_udp_vips_in_tunnel_and_dsr_mode_are_each_forwarded_exactly() {
    let mut f = Fixture::new();
    let tcp_t = f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let udp_t = f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    let tcp_d = f.listener(VIP_V6, 8080, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V6]);
    f.listener(VIP_V6, 5353, Proto::Udp, VIP_F_DSR, &[BACKEND1_V6]);
    let b = BACKEND1_V6;
    let cases = vec![
        Case::tunnel(
            "tcp syn, ip6ip6",
            to_vip().tcp(1000, 443).syn().build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp ack, established",
            to_vip().tcp(1000, 443).ack().payload(b"hello").build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp fin-ack, established",
            to_vip().tcp(1000, 443).fin().ack().build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp with traffic class, flow label, hop limit 1: inner kept",
            to_vip()
                .traffic_class(0xb8)
                .flow_label(0x12345)
                .hop_limit(1)
                .tcp(1001, 443)
                .syn()
                .build(),
            b,
            h(1001, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "udp first datagram",
            to_vip().udp(2000, 53).payload(b"q").build(),
            b,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "udp next datagram",
            to_vip().udp(2000, 53).payload(b"q2").build(),
            b,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "udp large payload",
            to_vip().udp(2001, 53).payload(&[0xab; 1200]).build(),
            b,
            h(2001, 53, Proto::Udp),
        ),
        Case::dsr("tcp syn, dsr", to_vip().tcp(3000, 8080).syn().build()),
        Case::dsr("tcp ack, dsr", to_vip().tcp(3000, 8080).ack().build()),
        Case::dsr("udp, dsr", to_vip().udp(3001, 5353).payload(b"m").build()),
        Case::dsr(
            "udp next, dsr",
            to_vip().udp(3001, 5353).payload(b"m2").build(),
        ),
        Case::tunnel(
            "vlan tcp syn: tag kept",
            tagged(200).tcp(1002, 443).syn().build(),
            b,
            h(1002, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "vlan udp: tag kept",
            tagged(201).udp(2002, 53).build(),
            b,
            h(2002, 53, Proto::Udp),
        ),
        Case::dsr(
            "vlan tcp dsr: tag kept",
            tagged(202).tcp(3002, 8080).syn().build(),
        ),
        Case::dsr(
            "vlan udp dsr: tag kept",
            tagged(203).udp(3003, 5353).build(),
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(tcp_t).new_flows, 3);
    assert_eq!(f.vip_counters(udp_t).new_flows, 3);
    assert_eq!(f.vip_counters(tcp_d).packets, 3);
    assert_eq!(f.backend_counters(1).packets, cases.len() as u64);
    assert_eq!(f.flows(), 3 + 3 + 2 + 2);
}

/// Extension headers before TCP/UDP are walked to find the ports; the packet is forwarded with
/// them intact. Up to four are walked.
#[test]
fn tcp_and_udp_ports_after_v6_extension_headers_are_found_and_the_headers_kept() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 8080, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V6]);
    let b = BACKEND1_V6;
    use ExtHeader::*;
    let cases = vec![
        Case::tunnel(
            "hop-by-hop then tcp",
            to_vip().ipv6_ext(HopByHop).tcp(1000, 443).syn().build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "destination options then tcp",
            to_vip().ipv6_ext(DestOpts).tcp(1001, 443).syn().build(),
            b,
            h(1001, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "routing then tcp",
            to_vip().ipv6_ext(Routing).tcp(1002, 443).syn().build(),
            b,
            h(1002, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "hop-by-hop then udp",
            to_vip().ipv6_ext(HopByHop).udp(2000, 53).build(),
            b,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "destination options then udp",
            to_vip()
                .ipv6_ext(DestOpts)
                .udp(2001, 53)
                .payload(b"x")
                .build(),
            b,
            h(2001, 53, Proto::Udp),
        ),
        Case::tunnel(
            "routing then udp",
            to_vip().ipv6_ext(Routing).udp(2002, 53).build(),
            b,
            h(2002, 53, Proto::Udp),
        ),
        Case::tunnel(
            "hop-by-hop, dest opts, routing then tcp",
            to_vip()
                .ipv6_ext(HopByHop)
                .ipv6_ext(DestOpts)
                .ipv6_ext(Routing)
                .tcp(1003, 443)
                .ack()
                .build(),
            b,
            h(1003, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "four extension headers then tcp",
            to_vip()
                .ipv6_ext(HopByHop)
                .ipv6_ext(DestOpts)
                .ipv6_ext(Routing)
                .ipv6_ext(DestOpts)
                .tcp(1004, 443)
                .syn()
                .build(),
            b,
            h(1004, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "four extension headers then udp",
            to_vip()
                .ipv6_ext(HopByHop)
                .ipv6_ext(Routing)
                .ipv6_ext(Routing)
                .ipv6_ext(DestOpts)
                .udp(2003, 53)
                .build(),
            b,
            h(2003, 53, Proto::Udp),
        ),
        Case::tunnel(
            "vlan, hop-by-hop then tcp",
            tagged(55).ipv6_ext(HopByHop).tcp(1005, 443).syn().build(),
            b,
            h(1005, 443, Proto::Tcp),
        ),
        Case::dsr(
            "hop-by-hop then tcp, dsr",
            to_vip().ipv6_ext(HopByHop).tcp(3000, 8080).syn().build(),
        ),
        Case::pass(
            "hop-by-hop then tcp to another port",
            to_vip().ipv6_ext(HopByHop).tcp(1000, 444).syn().build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
}

/// A hop-by-hop header with a length field above zero (16 bytes): the walk uses its length.
#[test]
fn a_long_hop_by_hop_header_before_tcp_is_skipped_by_its_full_length() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    // Build with a hop-by-hop header, then widen it by 8 bytes of PadN by hand.
    let base = to_vip()
        .ipv6_ext(ExtHeader::HopByHop)
        .tcp(1000, 443)
        .syn()
        .build();
    let mut frame = base[..14 + 40].to_vec();
    // next header TCP (6), length 1 (16 bytes), PadN covering 14 bytes.
    frame.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&base[14 + 48..]);
    let payload_len = (frame.len() - 54) as u16;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    let out = f.run(&frame);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
    let IpAddr::V6(b) = BACKEND1_V6 else {
        unreachable!()
    };
    let hash = h(1000, 443, Proto::Tcp);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(tunnel_src_v6(hash), b)
        .flow_label(tunnel_flow_label(hash))
        .hop_limit(64)
        .ip6ip6(ip_bytes(&frame))
        .build();
    assert_frame_eq(&out.frame, &want);
}

/// IPv6 VIPs with IPv4 targets: IPv6-in-IPv4 (protocol 41), outer DF set (IPv6 is never
/// fragmented on the way).
#[test]
fn packets_to_a_v6_vip_with_a_v4_target_are_sent_in_ipv6_in_ipv4_with_df() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    let b = BACKEND1_V4;
    let cases = vec![
        Case::tunnel(
            "tcp syn to a v4 target",
            to_vip().tcp(1000, 443).syn().build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp ack to a v4 target",
            to_vip().tcp(1000, 443).ack().build(),
            b,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "udp to a v4 target",
            to_vip().udp(2000, 53).payload(b"q").build(),
            b,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "vlan tcp to a v4 target",
            tagged(77).tcp(1001, 443).syn().build(),
            b,
            h(1001, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "dest opts then tcp to a v4 target",
            to_vip()
                .ipv6_ext(ExtHeader::DestOpts)
                .tcp(1002, 443)
                .syn()
                .build(),
            b,
            h(1002, 443, Proto::Tcp),
        ),
    ];
    f.run_cases(&cases);
    // Spelled out once: outer IPv4 with DF and protocol 41.
    let syn = to_vip().tcp(1000, 443).syn().build();
    let IpAddr::V4(b4) = b else { unreachable!() };
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(tunnel_src_v4(h(1000, 443, Proto::Tcp)), b4)
        .dont_fragment()
        .ttl(64)
        .ipip(ip_bytes(&syn))
        .build();
    assert_eq!(want[14 + 9], 41);
    let out = f.run(&syn);
    assert_frame_eq(&out.frame, &want);
    assert_eq!(f.vip_counters(vip).new_flows, 4);
}

/// All-ports IPv6 VIP with an exact listener on the same address.
#[test]
fn an_exact_port_wins_over_an_all_ports_v6_vip_as_ports_vary() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 0, Proto::Tcp, 0, &[BACKEND2_V6]);
    f.listener(VIP_V6, 0, Proto::Udp, VIP_F_DSR, &[BACKEND3_V6]);
    let cases = vec![
        Case::tunnel(
            "port 443: exact listener",
            to_vip().tcp(1000, 443).syn().build(),
            BACKEND1_V6,
            h(1000, 443, Proto::Tcp),
        ),
        Case::tunnel(
            "port 22: all-ports",
            to_vip().tcp(1000, 22).syn().build(),
            BACKEND2_V6,
            h(1000, 22, Proto::Tcp),
        ),
        Case::tunnel(
            "port 65535 ack: all-ports",
            to_vip().tcp(1000, 65535).ack().build(),
            BACKEND2_V6,
            h(1000, 65535, Proto::Tcp),
        ),
        Case::dsr(
            "udp any port: all-ports udp dsr",
            to_vip().udp(1000, 9999).build(),
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(
        (
            f.backend_counters(1).packets,
            f.backend_counters(2).packets,
            f.backend_counters(3).packets
        ),
        (1, 2, 1)
    );
}

/// source_ip stickiness for IPv6: all ports of one client to the target of its source hash.
#[test]
fn a_source_ip_v6_vip_sends_all_ports_of_one_client_to_one_target() {
    let mut f = Fixture::new();
    f.listener(
        VIP_V6,
        443,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V6, BACKEND2_V6, BACKEND3_V6],
    );
    let table = f.table(&[1, 2, 3]);
    let targets = [BACKEND1_V6, BACKEND2_V6, BACKEND3_V6];
    let hs = hash_src(&key(1, 443, Proto::Tcp));
    let target = targets[table[(hs % RING_SIZE) as usize] as usize - 1];
    let other = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 7);
    let hs2 = hash_src(&flow_key(v6(other), v6(VIP_V6), 1, 443, Proto::Tcp));
    let target2 = targets[table[(hs2 % RING_SIZE) as usize] as usize - 1];
    let cases = vec![
        Case::tunnel(
            "port 1000",
            to_vip().tcp(1000, 443).syn().build(),
            target,
            hs,
        ),
        Case::tunnel(
            "port 2000",
            to_vip().tcp(2000, 443).syn().build(),
            target,
            hs,
        ),
        Case::tunnel(
            "port 3000 ack",
            to_vip().tcp(3000, 443).ack().build(),
            target,
            hs,
        ),
        Case::tunnel(
            "another client",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(other, VIP_V6)
                .tcp(1000, 443)
                .syn()
                .build(),
            target2,
            hs2,
        ),
    ];
    f.run_cases(&cases);
}

/// Many IPv6 flows over three targets land where the Maglev table says.
#[test]
fn many_new_udp_flows_over_three_v6_targets_each_land_on_their_maglev_slot() {
    let mut f = Fixture::new();
    f.listener(
        VIP_V6,
        53,
        Proto::Udp,
        0,
        &[BACKEND1_V6, BACKEND2_V6, BACKEND3_V6],
    );
    let table = f.table(&[1, 2, 3]);
    let targets = [BACKEND1_V6, BACKEND2_V6, BACKEND3_V6];
    let mut seen = [0u32; 4];
    for sport in 7000..7040u16 {
        let pkt = to_vip().udp(sport, 53).payload(b"q").build();
        let hash = h(sport, 53, Proto::Udp);
        let idx = table[(hash % RING_SIZE) as usize];
        seen[idx as usize] += 1;
        let out = f.run(&pkt);
        assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
        assert_frame_eq(
            &out.frame,
            &expect_tunnel(&pkt, targets[idx as usize - 1], hash),
        );
    }
    assert!(seen[1] > 0 && seen[2] > 0 && seen[3] > 0, "{seen:?}");
}

/// Established IPv6 flows stay; SYN re-balances; a gone target re-balances.
#[test]
fn an_established_v6_flow_follows_the_rules_when_the_ring_changes_or_its_target_goes() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let hash = h(1000, 443, Proto::Tcp);
    f.run_cases(&[Case::tunnel(
        "syn → backend 1",
        to_vip().tcp(1000, 443).syn().build(),
        BACKEND1_V6,
        hash,
    )]);
    let b2 = f.backend(BACKEND2_V6);
    f.ring(vip, &[b2]);
    f.run_cases(&[
        Case::tunnel(
            "syn-ack, ring changed → stays on 1",
            to_vip().tcp(1000, 443).syn().ack().build(),
            BACKEND1_V6,
            hash,
        ),
        Case::tunnel(
            "ack, ring changed → stays on 1",
            to_vip().tcp(1000, 443).ack().build(),
            BACKEND1_V6,
            hash,
        ),
    ]);
    f.set_live(1, false);
    f.run_cases(&[Case::tunnel(
        "ack, backend 1 gone → backend 2",
        to_vip().tcp(1000, 443).ack().build(),
        BACKEND2_V6,
        hash,
    )]);
    assert_eq!(f.vip_counters(vip).new_flows, 2);
}

/// Empty ring, no next hop, not a VIP.
#[test]
fn packets_to_v6_vips_without_usable_targets_or_routes_are_dropped_or_passed() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    let cases = vec![
        Case::drop(
            "tcp syn, empty ring",
            to_vip().tcp(1000, 443).syn().build(),
            Reason::DropNoBackend,
        ),
        Case::drop(
            "tcp ack, empty ring, hop-by-hop",
            to_vip()
                .ipv6_ext(ExtHeader::HopByHop)
                .tcp(1000, 443)
                .ack()
                .build(),
            Reason::DropNoBackend,
        ),
        Case::pass(
            "other v6 address",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(
                    CLIENT_V6,
                    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2),
                )
                .tcp(1000, 443)
                .syn()
                .build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "vip, other port",
            to_vip().udp(1000, 54).build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "link-local multicast (neighbour discovery-like udp)",
            Packet::eth(MAC_CLIENT, [0x33, 0x33, 0, 0, 0, 1])
                .ipv6(
                    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                )
                .udp(546, 547)
                .build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    f.config(|c| c.gateway_mac = [0; 6]);
    f.run_cases(&[Case::drop(
        "udp, no next hop",
        to_vip().udp(1000, 53).build(),
        Reason::DropNoRoute,
    )]);
}
