//! Packet fixtures for `xlb_lb` and `xlb_decap`: given a VIP and its targets, this frame in →
//! this verdict, this frame out, these counters. Run as root (BPF_PROG_TEST_RUN).

use std::net::IpAddr;

use lb_common::{VIP_F_DSR, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq, ip_bytes, truncate},
};

fn v4(a: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// The tunnel packet the datapath should send for `inner` (a client frame) of flow `key`.
fn ipip(inner: &[u8], backend: IpAddr, hash: u32, df: bool) -> Vec<u8> {
    let IpAddr::V4(b) = backend else {
        panic!("v4 backend")
    };
    let outer = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(tunnel_src_v4(hash), b)
        .ttl(64);
    let outer = if df { outer.dont_fragment() } else { outer };
    outer.ipip(ip_bytes(inner)).build()
}

#[test]
fn tcp_syn_to_v4_vip_is_tunnelled_to_its_only_target() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(40000, 80)
        .syn()
        .build();
    let out = f.run(&syn);
    assert_eq!(out.action, XDP_TX);
    assert_eq!(out.reason(), Reason::TxTunnel);
    let key = flow_key(v4(CLIENT_V4), v4(VIP_V4), 40000, 80, Proto::Tcp);
    assert_frame_eq(&out.frame, &ipip(&syn, BACKEND1_V4, hash5(&key), true));
    let c = f.vip_counters(vip);
    assert_eq!((c.packets, c.bytes, c.new_flows), (1, syn.len() as u64, 1));
    assert_eq!(f.backend_counters(1).packets, 1);
    assert_eq!(f.flows(), 1);
}

#[test]
fn established_flow_keeps_its_target_when_the_ring_changes() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40001, 80)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxTunnel);
    // The ring now points at another target only; the flow stays on backend 1.
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40001, 80)
        .ack()
        .payload(b"GET /")
        .build();
    let out = f.run(&ack);
    let key = flow_key(v4(CLIENT_V4), v4(VIP_V4), 40001, 80, Proto::Tcp);
    assert_frame_eq(&out.frame, &ipip(&ack, BACKEND1_V4, hash5(&key), false));
    assert_eq!(f.vip_counters(vip).new_flows, 1);
    // A new connection (SYN) on the same 5-tuple consults the ring again.
    let out = f.run(&syn);
    assert_frame_eq(&out.frame, &ipip(&syn, BACKEND2_V4, hash5(&key), false));
    assert_eq!(f.vip_counters(vip).new_flows, 2);
}

#[test]
fn flow_to_a_gone_target_is_rebalanced() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40002, 80)
        .ack()
        .build();
    f.run(&ack);
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    f.set_live(1, false);
    let out = f.run(&ack);
    let key = flow_key(v4(CLIENT_V4), v4(VIP_V4), 40002, 80, Proto::Tcp);
    assert_frame_eq(&out.frame, &ipip(&ack, BACKEND2_V4, hash5(&key), false));
}

#[test]
fn udp_to_v4_vip_picks_the_maglev_target() {
    let mut f = Fixture::new();
    f.listener(
        VIP_V4,
        53,
        Proto::Udp,
        0,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    let table = f.table(&[1, 2, 3]);
    let mut seen = [0u32; 4];
    for sport in 1000..1064u16 {
        let pkt = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .udp(sport, 53)
            .payload(b"q")
            .build();
        let out = f.run(&pkt);
        let key = flow_key(v4(CLIENT_V4), v4(VIP_V4), sport, 53, Proto::Udp);
        let h = hash5(&key);
        let want = table[(h % lb_common::RING_SIZE_DEFAULT) as usize];
        let backend = [BACKEND1_V4, BACKEND2_V4, BACKEND3_V4][want as usize - 1];
        assert_frame_eq(&out.frame, &ipip(&pkt, backend, h, false));
        seen[want as usize] += 1;
    }
    assert!(
        seen[1] > 0 && seen[2] > 0 && seen[3] > 0,
        "64 flows reach all three targets: {seen:?}"
    );
}

#[test]
fn source_ip_stickiness_ignores_ports() {
    let mut f = Fixture::new();
    f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    let mut outer_dst = std::collections::BTreeSet::new();
    for sport in 2000..2020u16 {
        let syn = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(sport, 80)
            .syn()
            .build();
        let out = f.run(&syn);
        assert_eq!(out.reason(), Reason::TxTunnel);
        outer_dst.insert(out.frame[30..34].to_vec());
    }
    assert_eq!(
        outer_dst.len(),
        1,
        "every port of one client goes to one target"
    );
}

#[test]
fn dsr_rewrites_only_the_destination_mac() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V4]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40003, 80)
        .syn()
        .build();
    let out = f.run(&syn);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxDsr));
    let want = Packet::eth(MAC_LB, BACKEND_MAC)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40003, 80)
        .syn()
        .build();
    assert_frame_eq(&out.frame, &want);
}

#[test]
fn ipv6_vip_is_tunnelled_in_ip6ip6() {
    let mut f = Fixture::new();
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(50000, 443)
        .syn()
        .build();
    let out = f.run(&syn);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
    let key = flow_key(
        IpAddr::V6(CLIENT_V6),
        IpAddr::V6(VIP_V6),
        50000,
        443,
        Proto::Tcp,
    );
    let h = hash5(&key);
    let IpAddr::V6(b) = BACKEND1_V6 else {
        unreachable!()
    };
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(tunnel_src_v6(h), b)
        .flow_label(tunnel_flow_label(h))
        .hop_limit(64)
        .ip6ip6(ip_bytes(&syn))
        .build();
    assert_frame_eq(&out.frame, &want);
}

#[test]
fn non_vip_traffic_passes_untouched() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    for pkt in [
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(40004, 81)
            .syn()
            .build(),
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .udp(40004, 80)
            .build(),
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT_V6, VIP_V6)
            .tcp(40004, 80)
            .syn()
            .build(),
    ] {
        let out = f.run(&pkt);
        assert_eq!((out.action, out.reason()), (XDP_PASS, Reason::PassNotVip));
        assert_frame_eq(&out.frame, &pkt);
    }
    let arp = Packet::eth(MAC_CLIENT, [0xff; 6]).ether_payload(0x0806, &[0u8; 28]);
    let out = f.run(&arp);
    assert_eq!((out.action, out.reason()), (XDP_PASS, Reason::PassNotIp));
    assert_frame_eq(&out.frame, &arp);
}

#[test]
fn truncated_headers_are_dropped_and_counted() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40005, 80)
        .syn()
        .build();
    // The kernel refuses test frames shorter than an Ethernet header; a VLAN tag cut short is
    // the shortest frame the program sees.
    let tagged = Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(7)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40005, 80)
        .syn()
        .build();
    let out = f.run(&truncate(tagged, 16));
    assert_eq!((out.action, out.reason()), (XDP_DROP, Reason::DropShortEth));
    for len in [30, 40, 50] {
        let out = f.run(&truncate(syn.clone(), len));
        assert_eq!(
            (out.action, out.reason()),
            (XDP_DROP, Reason::DropBadIpv4),
            "cut to {len} bytes"
        );
    }
    let syn6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(40005, 80)
        .syn()
        .build();
    let out = f.run(&truncate(syn6, 50));
    assert_eq!((out.action, out.reason()), (XDP_DROP, Reason::DropBadIpv6));
}

#[test]
fn echo_request_to_a_vip_is_answered() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let ping = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .icmpv4_echo_request(7, 1)
        .payload(b"ping")
        .build();
    let out = f.run(&ping);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxEchoReply));
    let want = Packet::eth(MAC_LB, MAC_CLIENT)
        .ipv4(VIP_V4, CLIENT_V4)
        .ttl(64)
        .icmpv4_echo_reply(7, 1)
        .payload(b"ping")
        .build();
    assert_frame_eq(&out.frame, &want);
}

#[test]
fn too_big_for_the_tunnel_gets_fragmentation_needed() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let big = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(40006, 80)
        .ack()
        .payload(&[0x55; 1460])
        .build();
    let out = f.run(&big);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTooBig));
    let quote = &ip_bytes(&big)[..68];
    let want = Packet::eth(MAC_LB, MAC_CLIENT)
        .ipv4(VIP_V4, CLIENT_V4)
        .tos(0xc0)
        .ttl(64)
        .icmpv4_frag_needed(MTU - 20, quote)
        .build();
    assert_frame_eq(&out.frame, &want);
}

#[test]
fn decap_strips_ipip_addressed_to_the_host() {
    let mut f = Fixture::new();
    let inner = Packet::eth(MAC_GATEWAY, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40007, 80)
        .syn()
        .build();
    let tunnelled = ipip(&inner, BACKEND1_V4, 0x1234, false);
    let (action, out) = f.run_decap(&[BACKEND1_V4], &tunnelled);
    assert_eq!(action, XDP_PASS);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40007, 80)
        .syn()
        .build();
    assert_frame_eq(&out, &want);
    // Not for this host: untouched.
    let (action, out) = f.run_decap(&[], &ipip(&inner, BACKEND2_V4, 0x1234, false));
    assert_eq!(action, XDP_PASS);
    assert_eq!(out.len(), tunnelled.len());
}

/// A listener's drops are counted on that listener; another listener's counters do not move.
#[test]
fn packets_a_listener_drops_are_counted_on_that_listener() {
    let mut f = Fixture::new();
    let empty = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[]);
    let served = f.listener(VIP_V4, 81, Proto::Tcp, 0, &[BACKEND1_V4]);
    for port in [40000, 40001, 40002] {
        let syn = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(port, 80)
            .syn()
            .build();
        let out = f.run(&syn);
        assert_eq!(
            (out.action, out.reason()),
            (XDP_DROP, Reason::DropNoBackend)
        );
    }
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40003, 81)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxTunnel);
    assert_eq!(f.vip_counters(empty).dropped, 3);
    let c = f.vip_counters(served);
    assert_eq!((c.packets, c.dropped), (1, 0));
}

/// The client's FIN marks its flow as closing (the agent then stops counting it as a live
/// connection); packets after it still reach the flow's target.
#[test]
fn a_client_fin_marks_its_flow_closing_and_the_flow_keeps_its_target() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let tcp = |port| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(port, 80)
    };
    assert_eq!(f.run(&tcp(40000).syn().build()).reason(), Reason::TxTunnel);
    assert_eq!(f.run(&tcp(40001).syn().build()).reason(), Reason::TxTunnel);
    assert_eq!(f.run(&tcp(40000).ack().build()).reason(), Reason::TxTunnel);
    let open = |f: &mut Fixture| {
        let mut ports: Vec<(u16, bool)> = f
            .flow_entries()
            .iter()
            .map(|(k, s)| (u16::from_be(k.sport_be), s.seen_ns == 0))
            .collect();
        ports.sort_unstable();
        ports
    };
    assert_eq!(open(&mut f), vec![(40000, true), (40001, true)]);
    let fin = tcp(40000).fin().ack().build();
    let key = flow_key(v4(CLIENT_V4), v4(VIP_V4), 40000, 80, Proto::Tcp);
    let out = f.run(&fin);
    assert_frame_eq(&out.frame, &ipip(&fin, BACKEND1_V4, hash5(&key), false));
    assert_eq!(open(&mut f), vec![(40000, false), (40001, true)]);
    let rst = tcp(40001).rst().build();
    assert_eq!(f.run(&rst).reason(), Reason::TxTunnel);
    assert_eq!(open(&mut f), vec![(40000, false), (40001, false)]);
    // The last ACK after the FIN still goes to the flow's target.
    let last = tcp(40000).ack().build();
    let out = f.run(&last);
    assert_frame_eq(&out.frame, &ipip(&last, BACKEND1_V4, hash5(&key), false));
}
