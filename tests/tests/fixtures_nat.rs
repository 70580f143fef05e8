//! NAT forwarding (`VIP_F_NAT`) in `xlb_lb`: toward the target, the destination becomes the
//! target's address and its own port; the target's reply, routed back through the node, gets
//! the listener's address and port as its source. TTL (hop limit) one less both ways. The
//! expected frames are built whole by the packet builder, so every checksum the datapath updated
//! in place is checked against one computed afresh. Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{CONFIG_F_NAT, VIP_F_NAT, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{MAC_BACKEND, MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq},
};

const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);

/// A fixture with NAT on in the node config, and one NAT listener per (address, port, proto)
/// given, each to one target on port 8080 (`own_port`) or on the client's destination port.
fn nat(listeners: &[(IpAddr, u16, Proto, IpAddr)], own_port: bool) -> Fixture {
    let mut f = Fixture::new();
    f.config(|c| c.flags |= CONFIG_F_NAT);
    for (vip, port, proto, target) in listeners {
        f.listener(*vip, *port, *proto, VIP_F_NAT, &[*target]);
        if own_port {
            let i = f.backend(*target);
            f.backend_port(i, 8080);
        }
    }
    f
}

#[track_caller]
fn assert_sent(out: &Outcome, expected: &[u8], reason: Reason) {
    assert_eq!(out.action, XDP_TX, "verdict");
    assert_eq!(out.reason(), reason);
    assert_frame_eq(&out.frame, expected);
}

#[test]
fn v4_tcp_goes_to_the_targets_own_port_and_its_reply_comes_back_from_the_vip() {
    let mut f = nat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], true);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .syn()
        .build();
    let out = f.run(&syn);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(CLIENT_V4, B4)
        .ttl(63)
        .tcp(40000, 8080)
        .syn()
        .build();
    assert_sent(&out, &want, Reason::TxNat);

    // The reply entry names the flow as the target answers it.
    let replies = f.dataplane().nat_replies().expect("NAT_REPLIES");
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (key, r) = replies[0];
    assert_eq!(
        key,
        flow_key(B4.into(), CLIENT_V4.into(), 8080, 40000, Proto::Tcp)
    );
    assert_eq!(
        (r.vip, u16::from_be(r.vport_be)),
        (addr_bytes(VIP_V4.into()).1, 80)
    );

    let syn_ack = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv4(B4, CLIENT_V4)
        .tcp(8080, 40000)
        .syn()
        .ack()
        .payload(b"hello")
        .build();
    let out = f.run(&syn_ack);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(VIP_V4, CLIENT_V4)
        .ttl(63)
        .tcp(80, 40000)
        .syn()
        .ack()
        .payload(b"hello")
        .build();
    assert_sent(&out, &want, Reason::TxNatReply);

    // The next packet of the flow takes its entry: same target, no new reply entry.
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .ack()
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    let out = f.run(&ack);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(CLIENT_V4, B4)
        .ttl(63)
        .tcp(40000, 8080)
        .ack()
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    assert_sent(&out, &want, Reason::TxNat);
    assert_eq!(f.dataplane().nat_replies().expect("NAT_REPLIES").len(), 1);
    assert_eq!(
        f.backend_counters(1).packets,
        2,
        "sent to the target, counted"
    );
}

#[test]
fn v6_tcp_and_udp_are_translated_both_ways() {
    let mut f = nat(
        &[
            (VIP_V6.into(), 443, Proto::Tcp, B6.into()),
            (VIP_V6.into(), 53, Proto::Udp, B6.into()),
        ],
        true,
    );
    let to = |b: Packet| b.ipv6(CLIENT_V6, VIP_V6);
    // (request, as forwarded, the target's reply, as the client gets it)
    let cases = [
        (
            to(Packet::eth(MAC_CLIENT, MAC_LB))
                .tcp(5555, 443)
                .syn()
                .build(),
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv6(CLIENT_V6, B6)
                .hop_limit(63)
                .tcp(5555, 8080)
                .syn()
                .build(),
            Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv6(B6, CLIENT_V6)
                .tcp(8080, 5555)
                .syn()
                .ack()
                .build(),
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv6(VIP_V6, CLIENT_V6)
                .hop_limit(63)
                .tcp(443, 5555)
                .syn()
                .ack()
                .build(),
        ),
        (
            to(Packet::eth(MAC_CLIENT, MAC_LB))
                .udp(5353, 53)
                .payload(b"query")
                .build(),
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv6(CLIENT_V6, B6)
                .hop_limit(63)
                .udp(5353, 8080)
                .payload(b"query")
                .build(),
            Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv6(B6, CLIENT_V6)
                .udp(8080, 5353)
                .payload(b"answer")
                .build(),
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv6(VIP_V6, CLIENT_V6)
                .hop_limit(63)
                .udp(53, 5353)
                .payload(b"answer")
                .build(),
        ),
    ];
    for (request, forwarded, reply, replied) in cases {
        assert_sent(&f.run(&request), &forwarded, Reason::TxNat);
        assert_sent(&f.run(&reply), &replied, Reason::TxNatReply);
    }
}

/// UDP over IPv4 may carry no checksum (0): it stays 0 both ways. With one, it is updated; and
/// a target without a port of its own gets the client's destination port.
#[test]
fn v4_udp_keeps_a_missing_checksum_and_the_port_when_the_target_has_none() {
    let mut f = nat(&[(VIP_V4.into(), 53, Proto::Udp, B4.into())], false);
    let request = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .udp(7000, 53)
        .payload(b"q1")
        .build();
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(CLIENT_V4, B4)
        .ttl(63)
        .udp(7000, 53)
        .payload(b"q1")
        .build();
    assert_sent(&f.run(&request), &want, Reason::TxNat);

    let udp_csum = 14 + 20 + 6;
    let mut reply = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv4(B4, CLIENT_V4)
        .udp(53, 7000)
        .payload(b"a1")
        .build();
    reply[udp_csum..udp_csum + 2].copy_from_slice(&[0, 0]);
    let mut want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(VIP_V4, CLIENT_V4)
        .ttl(63)
        .udp(53, 7000)
        .payload(b"a1")
        .build();
    want[udp_csum..udp_csum + 2].copy_from_slice(&[0, 0]);
    assert_sent(&f.run(&reply), &want, Reason::TxNatReply);
}

#[test]
fn a_packet_whose_ttl_would_end_is_dropped_and_counted() {
    let mut f = nat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], true);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .ttl(1)
        .tcp(40001, 80)
        .syn()
        .build();
    let out = f.run(&syn);
    assert_eq!((out.action, out.reason()), (XDP_DROP, Reason::DropTtl));
    assert_eq!(f.vip_counters(0).dropped, 1);
}

/// Only what `NAT_REPLIES` holds is translated, and only while the node config says a listener
/// forwards by NAT: everything else to no VIP passes untouched.
#[test]
fn packets_to_no_vip_pass_unless_they_are_a_known_nat_reply() {
    let mut f = nat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], true);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40002, 80)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxNat);
    let reply = |sport: u16, dport: u16| {
        Packet::eth(MAC_BACKEND, MAC_LB)
            .ipv4(B4, CLIENT_V4)
            .tcp(sport, dport)
            .ack()
            .build()
    };
    for (name, frame) in [
        ("another client port", reply(8080, 40003)),
        ("another target port", reply(8081, 40002)),
        (
            "UDP on the same ports",
            Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv4(B4, CLIENT_V4)
                .udp(8080, 40002)
                .build(),
        ),
    ] {
        let out = f.run(&frame);
        assert_eq!(out.action, XDP_PASS, "{name}");
        assert_eq!(out.reason(), Reason::PassNotVip, "{name}");
        assert_frame_eq(&out.frame, &frame);
    }
    assert_eq!(f.run(&reply(8080, 40002)).reason(), Reason::TxNatReply);
    f.config(|c| c.flags &= !CONFIG_F_NAT);
    let frame = reply(8080, 40002);
    let out = f.run(&frame);
    assert_eq!((out.action, out.reason()), (XDP_PASS, Reason::PassNotVip));
    assert_frame_eq(&out.frame, &frame);
}

/// Fragments carry no ports after the first, so a NAT listener drops them even with source-IP
/// stickiness; ICMP errors about its flows go to the kernel (not translated).
#[test]
fn fragments_are_dropped_and_icmp_errors_passed_for_nat_listeners() {
    let mut f = Fixture::new();
    f.config(|c| c.flags |= CONFIG_F_NAT);
    let vip = f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_NAT | VIP_F_SOURCE_IP,
        &[B4.into()],
    );
    f.address_entry(VIP_V4, Proto::Tcp, vip, VIP_F_NAT | VIP_F_SOURCE_IP);
    f.assert_fragments_dropped_and_icmp_errors_passed();
}
