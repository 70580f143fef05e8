//! IPv4 VIP fixtures for `xlb_lb`: TCP and UDP, first packet and established flow, IPIP tunnel
//! and L2 DSR, VLAN tags, IPv4 options, IPv4 VIPs with IPv6 targets, all-ports VIPs, source-IP
//! stickiness, flow table behaviour and the drops of the forwarding stage. Each fixture reads
//! "given (setup), when (packet), then (verdict, frame out, counters)". Run as root.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{FlowKey, RING_SIZE_DEFAULT as RING_SIZE, VIP_F_DSR, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{Ipv4Builder, MAC_CLIENT, MAC_LB, Packet, assert_frame_eq},
};

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// A frame from the client to the IPv4 VIP.
fn to_vip() -> Ipv4Builder {
    Packet::eth(MAC_CLIENT, MAC_LB).ipv4(CLIENT_V4, VIP_V4)
}

fn key(sport: u16, dport: u16, proto: Proto) -> FlowKey {
    flow_key(v4(CLIENT_V4), v4(VIP_V4), sport, dport, proto)
}
/// The matrix: TCP/UDP × first packet/established × tunnel/DSR, untagged and VLAN-tagged, with
/// and without IPv4 options and DF. One target per VIP, so the target is known; the tunnel's outer
/// source comes from the 5-tuple hash.
#[test]
fn packets_to_v4_tcp_and_udp_vips_in_tunnel_and_dsr_mode_are_each_forwarded_exactly() {
    let mut f = Fixture::new();
    let tcp_t = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let udp_t = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    let tcp_d = f.listener(VIP_V4, 8080, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V4]);
    let udp_d = f.listener(VIP_V4, 5353, Proto::Udp, VIP_F_DSR, &[BACKEND1_V4]);
    let b1 = BACKEND1_V4;
    let h = |sport, dport, proto| hash5(&key(sport, dport, proto));
    // Options: a record-route option (type 7, 7 bytes, pointer 4), then end of list.
    let rr = [7u8, 7, 4, 0, 0, 0, 0];
    // 40 bytes of options: NOPs, the most IHL allows (15 words).
    let nops = [1u8; 40];
    let cases = vec![
        Case::tunnel(
            "tcp syn, tunnel",
            to_vip().tcp(1000, 80).syn().build(),
            b1,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp ack of that flow, tunnel",
            to_vip()
                .tcp(1000, 80)
                .ack()
                .payload(b"GET / HTTP/1.1\r\n")
                .build(),
            b1,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp syn with DF: outer DF set",
            to_vip().dont_fragment().tcp(1001, 80).syn().build(),
            b1,
            h(1001, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp ack with DF, established",
            to_vip().dont_fragment().tcp(1001, 80).ack().build(),
            b1,
            h(1001, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp fin of the flow",
            to_vip().tcp(1000, 80).fin().ack().build(),
            b1,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp rst of the flow",
            to_vip().tcp(1000, 80).rst().build(),
            b1,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp with tos, ttl 1 and id: inner kept as is",
            to_vip()
                .tos(0xb8)
                .ttl(1)
                .id(0x4242)
                .tcp(1002, 80)
                .syn()
                .build(),
            b1,
            h(1002, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "udp first datagram, tunnel",
            to_vip().udp(2000, 53).payload(b"query").build(),
            b1,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "udp next datagram, tunnel",
            to_vip().udp(2000, 53).payload(b"query 2").build(),
            b1,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "udp with DF",
            to_vip().dont_fragment().udp(2001, 53).build(),
            b1,
            h(2001, 53, Proto::Udp),
        ),
        Case::tunnel(
            "udp empty payload",
            to_vip().udp(2002, 53).build(),
            b1,
            h(2002, 53, Proto::Udp),
        ),
        Case::dsr("tcp syn, dsr", to_vip().tcp(3000, 8080).syn().build()),
        Case::dsr(
            "tcp ack, dsr",
            to_vip().tcp(3000, 8080).ack().payload(b"data").build(),
        ),
        Case::dsr(
            "udp first, dsr",
            to_vip().udp(3001, 5353).payload(b"q").build(),
        ),
        Case::dsr(
            "udp next, dsr",
            to_vip().udp(3001, 5353).payload(b"q2").build(),
        ),
        Case::dsr(
            "dsr keeps DF and ttl",
            to_vip()
                .dont_fragment()
                .ttl(3)
                .tcp(3002, 8080)
                .syn()
                .build(),
        ),
        Case::tunnel(
            "vlan tcp syn: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(100)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(1003, 80)
                .syn()
                .build(),
            b1,
            h(1003, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "vlan tcp ack: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(100)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(1003, 80)
                .ack()
                .build(),
            b1,
            h(1003, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "vlan udp: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(4094)
                .ipv4(CLIENT_V4, VIP_V4)
                .udp(2003, 53)
                .payload(b"x")
                .build(),
            b1,
            h(2003, 53, Proto::Udp),
        ),
        Case::dsr(
            "vlan tcp dsr: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(7)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(3003, 8080)
                .syn()
                .build(),
        ),
        Case::dsr(
            "vlan udp dsr: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(7)
                .ipv4(CLIENT_V4, VIP_V4)
                .udp(3004, 5353)
                .build(),
        ),
        Case::tunnel(
            "ipv4 options (ihl 7) tcp: options forwarded intact",
            to_vip().options(&rr).tcp(1004, 80).syn().build(),
            b1,
            h(1004, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "ipv4 options (ihl 15) udp: options forwarded intact",
            to_vip()
                .options(&nops)
                .udp(2004, 53)
                .payload(b"opt")
                .build(),
            b1,
            h(2004, 53, Proto::Udp),
        ),
        Case::tunnel(
            "ipv4 options with DF and vlan",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(9)
                .ipv4(CLIENT_V4, VIP_V4)
                .dont_fragment()
                .options(&rr)
                .tcp(1005, 80)
                .syn()
                .build(),
            b1,
            h(1005, 80, Proto::Tcp),
        ),
        Case::dsr(
            "ipv4 options, dsr",
            to_vip().options(&rr).tcp(3005, 8080).syn().build(),
        ),
        Case::dsr(
            "ipv4 options, udp dsr",
            to_vip().options(&nops).udp(3006, 5353).build(),
        ),
    ];
    f.run_cases(&cases);
    // Counters: every forwarded packet counted on its VIP and on backend 1; a flow per 5-tuple.
    let sum = |rows: &[&Case]| {
        (
            rows.len() as u64,
            rows.iter().map(|c| c.input.len() as u64).sum::<u64>(),
        )
    };
    let by_port = |port: u16, udp: bool| -> Vec<&Case> {
        cases
            .iter()
            .filter(|c| {
                let ip = xlb_tests::packet::ip_bytes(&c.input);
                let ihl = (ip[0] & 0x0f) as usize * 4;
                (ip[9] == 17) == udp && u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]) == port
            })
            .collect()
    };
    for (vip, port, udp, new_flows) in [
        (tcp_t, 80, false, 6),
        (udp_t, 53, true, 5),
        (tcp_d, 8080, false, 4),
        (udp_d, 5353, true, 3),
    ] {
        let rows = by_port(port, udp);
        let c = f.vip_counters(vip);
        assert_eq!(
            (c.packets, c.bytes),
            sum(&rows),
            "vip {vip} packets and bytes"
        );
        assert_eq!(c.new_flows, new_flows, "vip {vip} new flows");
    }
    let total: u64 = cases.iter().map(|c| c.input.len() as u64).sum();
    let b = f.backend_counters(1);
    assert_eq!((b.packets, b.bytes), (cases.len() as u64, total));
    assert_eq!(f.flows(), 6 + 5 + 4 + 3);
}

/// IPv4 VIPs with IPv6 targets: IPv4-in-IPv6 (next header 4), flow label from the hash.
#[test]
fn packets_to_a_v4_vip_with_a_v6_target_are_sent_in_ipv4_in_ipv6() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    let h = |sport, dport, proto| hash5(&key(sport, dport, proto));
    let cases = vec![
        Case::tunnel(
            "tcp syn to a v6 target",
            to_vip().tcp(1000, 80).syn().build(),
            BACKEND1_V6,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "tcp ack with DF to a v6 target",
            to_vip()
                .dont_fragment()
                .tcp(1000, 80)
                .ack()
                .payload(b"x")
                .build(),
            BACKEND1_V6,
            h(1000, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "udp to a v6 target",
            to_vip().udp(2000, 53).payload(b"q").build(),
            BACKEND1_V6,
            h(2000, 53, Proto::Udp),
        ),
        Case::tunnel(
            "vlan tcp to a v6 target: tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(33)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(1001, 80)
                .syn()
                .build(),
            BACKEND1_V6,
            h(1001, 80, Proto::Tcp),
        ),
        Case::tunnel(
            "ipv4 options to a v6 target",
            to_vip().options(&[1, 1, 1, 1]).tcp(1002, 80).syn().build(),
            BACKEND1_V6,
            h(1002, 80, Proto::Tcp),
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(vip).new_flows, 3);
    assert_eq!(f.backend_counters(1).packets, 5);
}

/// An all-ports VIP (port 0) catches every port of its protocol; an exact listener on the same
/// address wins for its port; the all-ports TCP VIP does not catch UDP.
#[test]
fn an_exact_port_vip_wins_over_an_all_ports_vip_as_ports_vary() {
    let mut f = Fixture::new();
    let exact = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let all = f.listener(VIP_V4, 0, Proto::Tcp, 0, &[BACKEND2_V4]);
    let h = |sport, dport| hash5(&key(sport, dport, Proto::Tcp));
    let cases = vec![
        Case::tunnel(
            "port 80: the exact listener (backend 1)",
            to_vip().tcp(1000, 80).syn().build(),
            BACKEND1_V4,
            h(1000, 80),
        ),
        Case::tunnel(
            "port 81: the all-ports VIP (backend 2)",
            to_vip().tcp(1000, 81).syn().build(),
            BACKEND2_V4,
            h(1000, 81),
        ),
        Case::tunnel(
            "port 1: the all-ports VIP",
            to_vip().tcp(1000, 1).syn().build(),
            BACKEND2_V4,
            h(1000, 1),
        ),
        Case::tunnel(
            "port 65535: the all-ports VIP",
            to_vip().tcp(1000, 65535).ack().build(),
            BACKEND2_V4,
            h(1000, 65535),
        ),
        Case::tunnel(
            "port 443, vlan: the all-ports VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(5)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(1000, 443)
                .syn()
                .build(),
            BACKEND2_V4,
            h(1000, 443),
        ),
        Case::pass(
            "udp to the all-ports tcp address: not a VIP",
            to_vip().udp(1000, 81).build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(exact).packets, 1);
    assert_eq!(f.vip_counters(all).packets, 4);
    assert_eq!(
        (f.backend_counters(1).packets, f.backend_counters(2).packets),
        (1, 4)
    );
}

/// An all-ports UDP VIP in DSR mode.
#[test]
fn datagrams_to_any_port_of_an_all_ports_udp_dsr_vip_go_by_dsr() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 0, Proto::Udp, VIP_F_DSR, &[BACKEND1_V4]);
    let cases = vec![
        Case::dsr("udp port 53", to_vip().udp(1, 53).build()),
        Case::dsr(
            "udp port 4789",
            to_vip().udp(40000, 4789).payload(&[0u8; 64]).build(),
        ),
        Case::pass(
            "tcp to the all-ports udp address",
            to_vip().tcp(1, 53).syn().build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(vip).new_flows, 2);
}

/// An address-only entry (for fragments) is not a listener: it does not catch ports, not even
/// port 0 (an exact-match lookup on port 0 must not find it).
#[test]
fn an_address_entry_alone_is_not_a_vip_for_tcp_on_any_port() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Udp, 0, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Tcp, vip, 0);
    let cases = vec![
        Case::pass(
            "tcp port 80, address entry only",
            to_vip().tcp(1000, 80).syn().build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "tcp port 0, address entry only",
            to_vip().tcp(1000, 0).syn().build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 0);
    assert_eq!(f.vip_counters(vip).packets, 0);
}

/// source_ip stickiness: the hash covers the source address only, so every port of a client
/// goes to one target; the tunnel source comes from that hash.
#[test]
fn a_source_ip_vip_sends_all_ports_of_one_client_to_the_source_hash_target() {
    let mut f = Fixture::new();
    let vip = f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    f.listener(
        VIP_V4,
        53,
        Proto::Udp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    let table = f.table(&[1, 2, 3]);
    let targets = [BACKEND1_V4, BACKEND2_V4, BACKEND3_V4];
    let mut cases = Vec::new();
    for (i, client) in [
        CLIENT_V4,
        Ipv4Addr::new(198, 18, 0, 3),
        Ipv4Addr::new(203, 0, 113, 9),
    ]
    .into_iter()
    .enumerate()
    {
        let hs = hash_src(&flow_key(v4(client), v4(VIP_V4), 1, 80, Proto::Tcp));
        let target = targets[table[(hs % RING_SIZE) as usize] as usize - 1];
        let names = [
            [
                "client 1 tcp port 1000",
                "client 1 tcp port 2000",
                "client 1 udp port 3000",
            ],
            [
                "client 2 tcp port 1000",
                "client 2 tcp port 2000",
                "client 2 udp port 3000",
            ],
            [
                "client 3 tcp port 1000",
                "client 3 tcp port 2000",
                "client 3 udp port 3000",
            ],
        ][i];
        let from = || Packet::eth(MAC_CLIENT, MAC_LB).ipv4(client, VIP_V4);
        cases.push(Case::tunnel(
            names[0],
            from().tcp(1000, 80).syn().build(),
            target,
            hs,
        ));
        cases.push(Case::tunnel(
            names[1],
            from().tcp(2000, 80).syn().build(),
            target,
            hs,
        ));
        cases.push(Case::tunnel(
            names[2],
            from().udp(3000, 53).build(),
            target,
            hs,
        ));
    }
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(vip).new_flows, 6);
    assert_eq!(f.flows(), 9);
}

/// source_ip with DSR: only MACs change.
#[test]
fn a_client_connecting_to_a_source_ip_dsr_vip_goes_by_dsr() {
    let mut f = Fixture::new();
    f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_SOURCE_IP | VIP_F_DSR,
        &[BACKEND1_V4],
    );
    let syn = to_vip().tcp(1000, 80).syn().build();
    let out = f.run(&syn);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxDsr));
    let want = Packet::eth(MAC_LB, BACKEND_MAC)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build();
    assert_frame_eq(&out.frame, &want);
}

/// Many flows over three targets: each lands where the Maglev table says for its 5-tuple hash.
#[test]
fn many_new_tcp_flows_over_three_targets_each_land_on_their_maglev_slot() {
    let mut f = Fixture::new();
    let vip = f.listener(
        VIP_V4,
        443,
        Proto::Tcp,
        0,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    let table = f.table(&[1, 2, 3]);
    let targets = [BACKEND1_V4, BACKEND2_V4, BACKEND3_V4];
    let mut per = [0u64; 4];
    for sport in 5000..5048u16 {
        let syn = to_vip().tcp(sport, 443).syn().build();
        let h = hash5(&key(sport, 443, Proto::Tcp));
        let idx = table[(h % RING_SIZE) as usize];
        per[idx as usize] += 1;
        let out = f.run(&syn);
        assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
        assert_frame_eq(
            &out.frame,
            &expect_tunnel(&syn, targets[idx as usize - 1], h),
        );
    }
    for i in 1..=3 {
        assert_eq!(
            f.backend_counters(i).packets,
            per[i as usize],
            "backend {i}"
        );
    }
    assert_eq!(f.vip_counters(vip).new_flows, 48);
    assert_eq!(f.flows(), 48);
}

/// SYN consults the ring; SYN-ACK and ACK follow the flow table; an ACK without an entry takes
/// the ring and creates one.
#[test]
fn after_a_ring_change_syn_rebalances_an_established_flow_but_syn_ack_and_ack_stay() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let h = hash5(&key(1000, 80, Proto::Tcp));
    let syn = to_vip().tcp(1000, 80).syn().build();
    f.run_cases(&[Case::tunnel(
        "first syn → backend 1",
        syn.clone(),
        BACKEND1_V4,
        h,
    )]);
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    let cases = vec![
        Case::tunnel(
            "syn-ack on the flow → still backend 1",
            to_vip().tcp(1000, 80).syn().ack().build(),
            BACKEND1_V4,
            h,
        ),
        Case::tunnel(
            "ack on the flow → still backend 1",
            to_vip().tcp(1000, 80).ack().build(),
            BACKEND1_V4,
            h,
        ),
        Case::tunnel(
            "fin-ack on the flow → still backend 1",
            to_vip().tcp(1000, 80).fin().ack().build(),
            BACKEND1_V4,
            h,
        ),
        Case::tunnel(
            "new syn on the 5-tuple → backend 2",
            syn.clone(),
            BACKEND2_V4,
            h,
        ),
        Case::tunnel(
            "ack after that syn → backend 2",
            to_vip().tcp(1000, 80).ack().build(),
            BACKEND2_V4,
            h,
        ),
        Case::tunnel(
            "ack of an unknown flow → ring (backend 2)",
            to_vip().tcp(1001, 80).ack().build(),
            BACKEND2_V4,
            hash5(&key(1001, 80, Proto::Tcp)),
        ),
    ];
    f.run_cases(&cases);
    let c = f.vip_counters(vip);
    assert_eq!((c.packets, c.new_flows), (7, 3));
    assert_eq!(
        (
            f.backend_counters(1).packets,
            f.backend_counters(b2).packets
        ),
        (4, 3)
    );
    assert_eq!(f.flows(), 2);
    let entries = f.flow_entries();
    assert!(
        entries.iter().all(|(_, s)| s.backend == b2),
        "both flows now on backend 2: {entries:?}"
    );
}

/// A flow pinned to a target that is gone (live flag cleared) is re-balanced by the ring, for
/// TCP and UDP; the flow entry moves to the new target.
#[test]
fn flows_on_a_gone_target_are_rebalanced_on_their_next_packets() {
    let mut f = Fixture::new();
    let tcp = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let udp = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    let ht = hash5(&key(1000, 80, Proto::Tcp));
    let hu = hash5(&key(2000, 53, Proto::Udp));
    f.run_cases(&[
        Case::tunnel(
            "tcp syn → backend 1",
            to_vip().tcp(1000, 80).syn().build(),
            BACKEND1_V4,
            ht,
        ),
        Case::tunnel(
            "udp → backend 1",
            to_vip().udp(2000, 53).build(),
            BACKEND1_V4,
            hu,
        ),
    ]);
    let b2 = f.backend(BACKEND2_V4);
    f.ring(tcp, &[b2]);
    f.ring(udp, &[b2]);
    f.set_live(1, false);
    let cases = vec![
        Case::tunnel(
            "tcp ack, backend 1 gone → backend 2",
            to_vip().tcp(1000, 80).ack().build(),
            BACKEND2_V4,
            ht,
        ),
        Case::tunnel(
            "udp, backend 1 gone → backend 2",
            to_vip().udp(2000, 53).build(),
            BACKEND2_V4,
            hu,
        ),
    ];
    f.run_cases(&cases);
    // Backend 1 back: the flows stay where they were re-balanced to.
    f.set_live(1, true);
    let cases = vec![
        Case::tunnel(
            "tcp ack, backend 1 back → stays on 2",
            to_vip().tcp(1000, 80).ack().build(),
            BACKEND2_V4,
            ht,
        ),
        Case::tunnel(
            "udp, backend 1 back → stays on 2",
            to_vip().udp(2000, 53).build(),
            BACKEND2_V4,
            hu,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(tcp).new_flows, 2);
    assert_eq!(f.vip_counters(udp).new_flows, 2);
    assert_eq!(f.backend_counters(b2).packets, 4);
}

/// A VIP whose ring is empty, or whose ring points at a target that is gone, drops with
/// `DropNoBackend`; nothing is counted on the VIP and no flow is made.
#[test]
fn packets_with_no_usable_target_are_dropped_as_no_backend() {
    let mut f = Fixture::new();
    let empty = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[]);
    f.listener(VIP_V4, 53, Proto::Udp, 0, &[]);
    let gone = f.listener(VIP_V4, 443, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V4]);
    f.set_live(1, false);
    let cases = vec![
        Case::drop(
            "tcp syn, empty ring",
            to_vip().tcp(1000, 80).syn().build(),
            Reason::DropNoBackend,
        ),
        Case::drop(
            "tcp ack, empty ring",
            to_vip().tcp(1000, 80).ack().build(),
            Reason::DropNoBackend,
        ),
        Case::drop(
            "udp, empty ring",
            to_vip().udp(1000, 53).build(),
            Reason::DropNoBackend,
        ),
        Case::drop(
            "vlan tcp, empty ring",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(3)
                .ipv4(CLIENT_V4, VIP_V4)
                .tcp(1000, 80)
                .syn()
                .build(),
            Reason::DropNoBackend,
        ),
        Case::drop(
            "dsr vip, its only target gone",
            to_vip().tcp(1000, 443).syn().build(),
            Reason::DropNoBackend,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(empty).packets, 0);
    assert_eq!(f.vip_counters(gone).packets, 0);
    assert_eq!(f.flows(), 0);
}

/// With no gateway MAC and no FIB route, a tunnelled packet has no next hop: `DropNoRoute`.
/// DSR needs no next hop and still works.
#[test]
fn a_packet_to_tunnel_without_a_gateway_mac_is_dropped_as_no_route() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V4, 8080, Proto::Tcp, VIP_F_DSR, &[BACKEND1_V4]);
    f.config(|c| c.gateway_mac = [0; 6]);
    let cases = vec![
        Case::drop(
            "tunnel, no next hop",
            to_vip().tcp(1000, 80).syn().build(),
            Reason::DropNoRoute,
        ),
        Case::dsr(
            "dsr, no next hop needed",
            to_vip().tcp(1000, 8080).syn().build(),
        ),
    ];
    f.run_cases(&cases);
}

/// A second VIP has counters of its own.
#[test]
fn each_of_two_vips_counts_only_its_own_traffic() {
    let mut f = Fixture::new();
    let a = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let vip2 = Ipv4Addr::new(198, 18, 100, 2);
    let b = f.listener(vip2, 80, Proto::Tcp, 0, &[BACKEND2_V4]);
    let p1 = to_vip().tcp(1000, 80).syn().build();
    let p2 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, vip2)
        .tcp(1000, 80)
        .syn()
        .payload(&[1; 10])
        .build();
    let h2 = hash5(&flow_key(v4(CLIENT_V4), v4(vip2), 1000, 80, Proto::Tcp));
    f.run_cases(&[
        Case::tunnel(
            "vip 1 → backend 1",
            p1.clone(),
            BACKEND1_V4,
            hash5(&key(1000, 80, Proto::Tcp)),
        ),
        Case::tunnel("vip 2 → backend 2", p2.clone(), BACKEND2_V4, h2),
        Case::tunnel("vip 2 again", p2.clone(), BACKEND2_V4, h2),
    ]);
    let (ca, cb) = (f.vip_counters(a), f.vip_counters(b));
    assert_eq!(
        (ca.packets, ca.bytes, ca.new_flows),
        (1, p1.len() as u64, 1)
    );
    assert_eq!(
        (cb.packets, cb.bytes, cb.new_flows),
        (2, 2 * p2.len() as u64, 2)
    );
}

/// Ethernet padding after a short IP packet: the tunnel carries the IP packet (outer length
/// counts it only) and the padding stays at the end of the frame.
#[test]
fn a_padded_minimum_frame_is_tunnelled_with_the_padding_left_out_of_the_outer_length() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let syn = to_vip().tcp(1000, 80).syn().build();
    assert_eq!(syn.len(), 54);
    let mut padded = syn.clone();
    padded.resize(60, 0);
    let out = f.run(&padded);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
    let mut want = expect_tunnel(&syn, BACKEND1_V4, hash5(&key(1000, 80, Proto::Tcp)));
    want.resize(want.len() + 6, 0);
    assert_frame_eq(&out.frame, &want);
}

/// A listener on another address is not this one; a VIP entry of another family is not either.
#[test]
fn traffic_to_other_addresses_or_ports_than_a_v4_vip_passes_untouched() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let other = Ipv4Addr::new(198, 18, 100, 99);
    let cases = vec![
        Case::pass(
            "other address, same port",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, other)
                .tcp(1000, 80)
                .syn()
                .build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "vip address, other port",
            to_vip().tcp(1000, 8080).syn().build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "from the vip to the client (reply direction)",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(VIP_V4, CLIENT_V4)
                .tcp(80, 1000)
                .syn()
                .ack()
                .build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "vlan, other address",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(12)
                .ipv4(CLIENT_V4, other)
                .udp(1, 2)
                .build(),
            Reason::PassNotVip,
        ),
        Case::pass(
            "broadcast udp",
            Packet::eth(MAC_CLIENT, [0xff; 6])
                .ipv4(CLIENT_V4, Ipv4Addr::BROADCAST)
                .udp(68, 67)
                .build(),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 0);
}

/// A UDP flow's entry records when it was last seen; each datagram refreshes it.
#[test]
fn a_udp_flows_last_seen_time_advances_as_datagrams_follow() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    let dgram = to_vip().udp(2000, 53).build();
    let h = hash5(&key(2000, 53, Proto::Udp));
    f.run_cases(&[Case::tunnel(
        "first datagram",
        dgram.clone(),
        BACKEND1_V4,
        h,
    )]);
    let first = f.flow_entries()[0].1.seen_ns;
    assert_ne!(first, 0, "a UDP flow records the time");
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The ring changes; the flow is recent, so it stays.
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    f.run_cases(&[Case::tunnel(
        "second datagram, recent flow → backend 1",
        dgram,
        BACKEND1_V4,
        h,
    )]);
    let entries = f.flow_entries();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].1.seen_ns >= first + 20_000_000,
        "seen time refreshed: {} then {}",
        first,
        entries[0].1.seen_ns
    );
    assert_eq!(f.vip_counters(vip).new_flows, 1);
}

/// A TCP flow's entry has no time (TCP flows never expire by time).
#[test]
fn a_recorded_tcp_flow_has_no_timestamp() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.run_cases(&[Case::tunnel(
        "syn",
        to_vip().tcp(1000, 80).syn().build(),
        BACKEND1_V4,
        hash5(&key(1000, 80, Proto::Tcp)),
    )]);
    let entries = f.flow_entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, key(1000, 80, Proto::Tcp));
    assert_eq!((entries[0].1.backend, entries[0].1.seen_ns), (1, 0));
}

/// A UDP flow idle for longer than the timeout (30 s) is re-balanced on its next datagram.
/// (Sleeps 31 s: the datapath reads the kernel's monotonic clock.)
#[test]
fn a_udp_flow_idle_past_the_timeout_is_rebalanced_on_its_next_datagram() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    let dgram = to_vip().udp(2001, 53).build();
    let h = hash5(&key(2001, 53, Proto::Udp));
    f.run_cases(&[Case::tunnel(
        "first datagram → backend 1",
        dgram.clone(),
        BACKEND1_V4,
        h,
    )]);
    let b2 = f.backend(BACKEND2_V4);
    f.ring(vip, &[b2]);
    std::thread::sleep(std::time::Duration::from_nanos(
        lb_common::UDP_FLOW_TIMEOUT_NS + 1_000_000_000,
    ));
    f.run_cases(&[Case::tunnel(
        "after 31 s idle → backend 2",
        dgram,
        BACKEND2_V4,
        h,
    )]);
    assert_eq!(f.vip_counters(vip).new_flows, 2);
    assert_eq!(f.flow_entries()[0].1.backend, b2);
}

/// A VIP entry pointing at the second ring of its VIP (`VipMeta::ring_base`) uses that ring.
#[test]
fn a_new_flow_to_a_vip_switched_to_its_standby_ring_uses_the_standby_ring() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let b2 = f.backend(BACKEND2_V4);
    let table = f.table(&[b2]);
    f.dataplane()
        .write_ring(ring_base(vip, 1), &table)
        .expect("write standby ring");
    f.vip_entry(v4(VIP_V4), 80, lb_common::IPPROTO_TCP, vip_meta(vip, 1, 0));
    let h = hash5(&key(1000, 80, Proto::Tcp));
    f.run_cases(&[Case::tunnel(
        "syn after the flip → backend 2",
        to_vip().tcp(1000, 80).syn().build(),
        BACKEND2_V4,
        h,
    )]);
}
