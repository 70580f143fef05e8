//! SNAT forwarding (`VIP_F_NAT | VIP_F_SNAT`) in `xlb_lb`: toward the target, the destination
//! becomes the target's address and port and the source the node's SNAT address and a port
//! allocated for the flow; the target's reply, sent to that address and port, comes from the
//! listener and goes to the client. TTL (hop limit) one less both ways. The expected frames are
//! built whole by the packet builder, so every checksum the datapath updated in place is checked
//! against one computed afresh. Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    CONFIG_F_SNAT, FlowKey, SNAT_F_CLOSING, SnatConfig, SnatEntry, SnatFlow, VIP_F_NAT, VIP_F_SNAT,
    VIP_F_SOURCE_IP,
};
use xlb_tests::{
    fixture::*,
    packet::{MAC_BACKEND, MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq},
};

const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const B4_OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);
/// The node's SNAT sources.
const SNAT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SNAT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
const FIRST: u16 = 10000;
const SNAT: u32 = VIP_F_NAT | VIP_F_SNAT;

/// A fixture with SNAT on in the node config (ports `FIRST..FIRST + ports`), and one SNAT
/// listener per (address, port, proto, target) given, each target on port 8080.
fn snat(listeners: &[(IpAddr, u16, Proto, IpAddr)], ports: u16) -> Fixture {
    let mut f = Fixture::new();
    f.config(|c| c.flags |= CONFIG_F_SNAT);
    f.dataplane()
        .set_snat_config(&SnatConfig {
            addr_v4: addr_bytes(SNAT_V4.into()).1,
            addr_v6: addr_bytes(SNAT_V6.into()).1,
            port_first: FIRST,
            port_count: ports,
            _pad: 0,
        })
        .expect("SNAT_CONFIG");
    for (vip, port, proto, target) in listeners {
        f.listener(*vip, *port, *proto, SNAT, &[*target]);
        let i = f.backend(*target);
        f.backend_port(i, 8080);
    }
    f
}

fn ports(f: &mut Fixture) -> Vec<(FlowKey, SnatEntry)> {
    f.dataplane().snat_ports().expect("SNAT_PORTS")
}

fn flows(f: &mut Fixture) -> Vec<(FlowKey, SnatFlow)> {
    f.dataplane().snat_flows().expect("SNAT_FLOWS")
}

/// The port flow `key` was given (its `SNAT_FLOWS` entry), checked against its `SNAT_PORTS`
/// entry.
#[track_caller]
fn port_of(f: &mut Fixture, key: &FlowKey) -> u16 {
    let flows = flows(f);
    let (_, flow) = flows
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no SNAT_FLOWS entry for {key:?}: {flows:?}"));
    let port = u16::from_be(flow.port_be);
    assert!(
        (FIRST..FIRST + 8).contains(&port),
        "port {port} outside the range"
    );
    let snat = if key.family == lb_common::AF_INET {
        IpAddr::from(SNAT_V4)
    } else {
        IpAddr::from(SNAT_V6)
    };
    let reply = FlowKey {
        src: flow.target,
        dst: addr_bytes(snat).1,
        sport_be: flow.target_port_be,
        dport_be: flow.port_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let ports = ports(f);
    let (_, e) = ports
        .iter()
        .find(|(k, _)| *k == reply)
        .unwrap_or_else(|| panic!("no SNAT_PORTS entry {reply:?}: {ports:?}"));
    assert_eq!(
        (e.client, e.client_port_be, e.vip, e.vport_be),
        (key.src, key.sport_be, key.dst, key.dport_be),
        "the port's entry names the flow"
    );
    port
}

#[track_caller]
fn assert_sent(out: &Outcome, expected: &[u8], reason: Reason) {
    assert_eq!(out.action, XDP_TX, "verdict");
    assert_eq!(out.reason(), reason);
    assert_frame_eq(&out.frame, expected);
}

#[test]
fn v4_tcp_leaves_from_the_node_and_its_reply_comes_back_from_the_vip() {
    let mut f = snat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], 8);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .syn()
        .build();
    let out = f.run(&syn);
    let key = flow_key(CLIENT_V4.into(), VIP_V4.into(), 40000, 80, Proto::Tcp);
    let port = port_of(&mut f, &key);
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(SNAT_V4, B4)
        .ttl(63)
        .tcp(port, 8080)
        .syn()
        .build();
    assert_sent(&out, &want, Reason::TxSnat);

    let syn_ack = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv4(B4, SNAT_V4)
        .tcp(8080, port)
        .syn()
        .ack()
        .payload(b"hello")
        .build();
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv4(VIP_V4, CLIENT_V4)
        .ttl(63)
        .tcp(80, 40000)
        .syn()
        .ack()
        .payload(b"hello")
        .build();
    assert_sent(&f.run(&syn_ack), &want, Reason::TxSnatReply);

    // Later packets keep the port; no other entry is made.
    for _ in 0..3 {
        let ack = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(40000, 80)
            .ack()
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        let want = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv4(SNAT_V4, B4)
            .ttl(63)
            .tcp(port, 8080)
            .ack()
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        assert_sent(&f.run(&ack), &want, Reason::TxSnat);
    }
    assert_eq!((ports(&mut f).len(), flows(&mut f).len()), (1, 1));
    assert_eq!(
        f.backend_counters(1).packets,
        4,
        "sent to the target, counted"
    );
    assert_eq!(f.vip_counters(0).new_flows, 1);
}

#[test]
fn v6_tcp_and_udp_are_translated_both_ways() {
    let mut f = snat(
        &[
            (VIP_V6.into(), 443, Proto::Tcp, B6.into()),
            (VIP_V6.into(), 53, Proto::Udp, B6.into()),
        ],
        8,
    );
    let to = |b: Packet| b.ipv6(CLIENT_V6, VIP_V6);
    let tcp = to(Packet::eth(MAC_CLIENT, MAC_LB))
        .tcp(5555, 443)
        .syn()
        .build();
    let out = f.run(&tcp);
    let port = port_of(
        &mut f,
        &flow_key(CLIENT_V6.into(), VIP_V6.into(), 5555, 443, Proto::Tcp),
    );
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(SNAT_V6, B6)
        .hop_limit(63)
        .tcp(port, 8080)
        .syn()
        .build();
    assert_sent(&out, &want, Reason::TxSnat);
    let reply = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv6(B6, SNAT_V6)
        .tcp(8080, port)
        .syn()
        .ack()
        .build();
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(VIP_V6, CLIENT_V6)
        .hop_limit(63)
        .tcp(443, 5555)
        .syn()
        .ack()
        .build();
    assert_sent(&f.run(&reply), &want, Reason::TxSnatReply);

    let udp = to(Packet::eth(MAC_CLIENT, MAC_LB))
        .udp(5353, 53)
        .payload(b"query")
        .build();
    let out = f.run(&udp);
    let port = port_of(
        &mut f,
        &flow_key(CLIENT_V6.into(), VIP_V6.into(), 5353, 53, Proto::Udp),
    );
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(SNAT_V6, B6)
        .hop_limit(63)
        .udp(port, 8080)
        .payload(b"query")
        .build();
    assert_sent(&out, &want, Reason::TxSnat);
    let reply = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv6(B6, SNAT_V6)
        .udp(8080, port)
        .payload(b"answer")
        .build();
    let want = Packet::eth(MAC_LB, MAC_GATEWAY)
        .ipv6(VIP_V6, CLIENT_V6)
        .hop_limit(63)
        .udp(53, 5353)
        .payload(b"answer")
        .build();
    assert_sent(&f.run(&reply), &want, Reason::TxSnatReply);
}

/// UDP over IPv4 may carry no checksum (0): it stays 0 both ways; with one, it is updated.
#[test]
fn v4_udp_keeps_a_missing_checksum_and_updates_one_it_has() {
    let mut f = snat(&[(VIP_V4.into(), 53, Proto::Udp, B4.into())], 8);
    let udp_csum = 14 + 20 + 6;
    let zero = |mut frame: Vec<u8>| {
        frame[udp_csum..udp_csum + 2].copy_from_slice(&[0, 0]);
        frame
    };
    let request = |sport: u16| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .udp(sport, 53)
            .payload(b"q1")
            .build()
    };
    for (sport, without) in [(7000, true), (7001, false)] {
        let frame = request(sport);
        let frame = if without { zero(frame) } else { frame };
        let out = f.run(&frame);
        let port = port_of(
            &mut f,
            &flow_key(CLIENT_V4.into(), VIP_V4.into(), sport, 53, Proto::Udp),
        );
        let want = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv4(SNAT_V4, B4)
            .ttl(63)
            .udp(port, 8080)
            .payload(b"q1")
            .build();
        let want = if without { zero(want) } else { want };
        assert_sent(&out, &want, Reason::TxSnat);

        let reply = Packet::eth(MAC_BACKEND, MAC_LB)
            .ipv4(B4, SNAT_V4)
            .udp(8080, port)
            .payload(b"a1")
            .build();
        let reply = if without { zero(reply) } else { reply };
        let want = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv4(VIP_V4, CLIENT_V4)
            .ttl(63)
            .udp(53, sport)
            .payload(b"a1")
            .build();
        let want = if without { zero(want) } else { want };
        assert_sent(&f.run(&reply), &want, Reason::TxSnatReply);
    }
}

/// Flows to one target never share a port: two clients on the same source port, and one
/// client on many ports (source-IP stickiness hashes them alike; the ports still differ).
#[test]
fn flows_to_one_target_get_ports_of_their_own() {
    let mut f = snat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], 8);
    let other_client = Ipv4Addr::new(198, 18, 0, 3);
    let mut seen = Vec::new();
    for (client, sport) in [
        (CLIENT_V4, 40000),
        (other_client, 40000),
        (CLIENT_V4, 40001),
    ] {
        let syn = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(client, VIP_V4)
            .tcp(sport, 80)
            .syn()
            .build();
        assert_eq!(f.run(&syn).reason(), Reason::TxSnat);
        let port = port_of(
            &mut f,
            &flow_key(client.into(), VIP_V4.into(), sport, 80, Proto::Tcp),
        );
        assert!(!seen.contains(&port), "port {port} given twice: {seen:?}");
        seen.push(port);
    }

    let mut f = Fixture::new();
    f.config(|c| c.flags |= CONFIG_F_SNAT);
    f.dataplane()
        .set_snat_config(&SnatConfig {
            addr_v4: addr_bytes(SNAT_V4.into()).1,
            addr_v6: [0; 16],
            port_first: FIRST,
            port_count: 1000,
            _pad: 0,
        })
        .expect("SNAT_CONFIG");
    f.listener(VIP_V4, 80, Proto::Tcp, SNAT | VIP_F_SOURCE_IP, &[B4.into()]);
    for sport in 41000..41020 {
        let syn = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(sport, 80)
            .syn()
            .build();
        assert_eq!(f.run(&syn).reason(), Reason::TxSnat, "client port {sport}");
    }
    let ports = ports(&mut f);
    let mut given: Vec<_> = ports.iter().map(|(k, _)| k.dport_be).collect();
    given.sort_unstable();
    given.dedup();
    assert_eq!(given.len(), 20, "one port each: {ports:?}");
}

/// A range of one port: a second flow to the same target is refused and counted, the first goes
/// on, and a flow to another target takes the same port toward it.
#[test]
fn an_exhausted_range_refuses_new_flows_to_that_target_only() {
    let mut f = snat(
        &[
            (VIP_V4.into(), 80, Proto::Tcp, B4.into()),
            (VIP_V4.into(), 81, Proto::Tcp, B4_OTHER.into()),
        ],
        1,
    );
    let syn = |sport: u16, port: u16| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(sport, port)
            .syn()
            .build()
    };
    let out = f.run(&syn(40000, 80));
    assert_eq!(out.reason(), Reason::TxSnat);
    assert_eq!(
        port_of(
            &mut f,
            &flow_key(CLIENT_V4.into(), VIP_V4.into(), 40000, 80, Proto::Tcp)
        ),
        FIRST
    );

    let frame = syn(40001, 80);
    let out = f.run(&frame);
    assert_eq!(
        (out.action, out.reason()),
        (XDP_DROP, Reason::DropSnatExhausted)
    );
    assert_eq!(
        f.vip_counters(0).dropped,
        1,
        "the listener's dropped counter"
    );
    assert_eq!(ports(&mut f).len(), 1, "nothing else written");
    assert_eq!(flows(&mut f).len(), 1, "nothing else written");

    // The first flow goes on; another target's flow gets the port toward that target.
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .ack()
        .build();
    assert_eq!(f.run(&ack).reason(), Reason::TxSnat);
    let out = f.run(&syn(40002, 81));
    assert_eq!(out.reason(), Reason::TxSnat);
    assert_eq!(
        port_of(
            &mut f,
            &flow_key(CLIENT_V4.into(), VIP_V4.into(), 40002, 81, Proto::Tcp)
        ),
        FIRST
    );
    assert_eq!(f.vip_counters(1).dropped, 0);
}

/// Only what `SNAT_PORTS` holds is translated, and only while the node config says a listener
/// forwards by SNAT: everything else to no VIP passes untouched.
#[test]
fn packets_to_no_vip_pass_unless_they_are_a_known_snat_reply() {
    let mut f = snat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], 8);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40002, 80)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxSnat);
    let port = port_of(
        &mut f,
        &flow_key(CLIENT_V4.into(), VIP_V4.into(), 40002, 80, Proto::Tcp),
    );
    let reply = |sport: u16, dport: u16| {
        Packet::eth(MAC_BACKEND, MAC_LB)
            .ipv4(B4, SNAT_V4)
            .tcp(sport, dport)
            .ack()
            .build()
    };
    let unused = if port == FIRST { FIRST + 1 } else { FIRST };
    for (name, frame) in [
        ("another node port", reply(8080, unused)),
        ("another target port", reply(8081, port)),
        (
            "UDP on the same ports",
            Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv4(B4, SNAT_V4)
                .udp(8080, port)
                .build(),
        ),
        (
            "from another target",
            Packet::eth(MAC_BACKEND, MAC_LB)
                .ipv4(B4_OTHER, SNAT_V4)
                .tcp(8080, port)
                .ack()
                .build(),
        ),
    ] {
        let out = f.run(&frame);
        assert_eq!(out.action, XDP_PASS, "{name}");
        assert_eq!(out.reason(), Reason::PassNotVip, "{name}");
        assert_frame_eq(&out.frame, &frame);
    }
    assert_eq!(f.run(&reply(8080, port)).reason(), Reason::TxSnatReply);
    f.config(|c| c.flags &= !CONFIG_F_SNAT);
    let frame = reply(8080, port);
    let out = f.run(&frame);
    assert_eq!((out.action, out.reason()), (XDP_PASS, Reason::PassNotVip));
    assert_frame_eq(&out.frame, &frame);
}

/// A FIN or RST marks the direction's entry closing, for the agent's sweep; a new SYN on the same
/// ports opens it again and keeps the port.
#[test]
fn fin_and_rst_mark_the_entries_closing() {
    let mut f = snat(&[(VIP_V4.into(), 80, Proto::Tcp, B4.into())], 8);
    let key = flow_key(CLIENT_V4.into(), VIP_V4.into(), 40000, 80, Proto::Tcp);
    let client = |b: fn(xlb_tests::packet::TcpBuilder) -> xlb_tests::packet::TcpBuilder| {
        b(Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .tcp(40000, 80))
        .build()
    };
    assert_eq!(f.run(&client(|t| t.syn())).reason(), Reason::TxSnat);
    let port = port_of(&mut f, &key);
    let closing = |f: &mut Fixture| {
        (
            flows(f)[0].1.flags & SNAT_F_CLOSING != 0,
            ports(f)[0].1.flags & SNAT_F_CLOSING != 0,
        )
    };
    assert_eq!(closing(&mut f), (false, false));
    assert_eq!(f.run(&client(|t| t.fin().ack())).reason(), Reason::TxSnat);
    assert_eq!(closing(&mut f), (true, false), "the client's FIN");
    let rst = Packet::eth(MAC_BACKEND, MAC_LB)
        .ipv4(B4, SNAT_V4)
        .tcp(8080, port)
        .rst()
        .build();
    assert_eq!(f.run(&rst).reason(), Reason::TxSnatReply);
    assert_eq!(closing(&mut f), (true, true), "the target's RST");
    assert_eq!(f.run(&client(|t| t.syn())).reason(), Reason::TxSnat);
    assert!(!closing(&mut f).0, "a new SYN opens it again");
    assert_eq!(port_of(&mut f, &key), port, "on the same port");
}

/// A flow whose target is gone goes to another one: its port toward the old one is given back,
/// and it gets one toward the new.
#[test]
fn a_flow_moved_to_another_target_gives_its_old_port_back() {
    let mut f = snat(&[], 8);
    f.listener(VIP_V4, 80, Proto::Tcp, SNAT, &[B4.into(), B4_OTHER.into()]);
    let key = flow_key(CLIENT_V4.into(), VIP_V4.into(), 40000, 80, Proto::Tcp);
    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .syn()
        .build();
    assert_eq!(f.run(&syn).reason(), Reason::TxSnat);
    let first = flows(&mut f)[0].1;
    let index = f.backend(IpAddr::V4(Ipv4Addr::from(
        <[u8; 4]>::try_from(&first.target[..4]).unwrap(),
    )));
    let other = 3 - index;
    f.set_live(index, false);
    f.ring(0, &[other]);
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .ack()
        .build();
    assert_eq!(f.run(&ack).reason(), Reason::TxSnat);
    let now = flows(&mut f);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].1.backend, other);
    let ports = ports(&mut f);
    assert_eq!(ports.len(), 1, "the old port is given back: {ports:?}");
    assert_ne!(ports[0].0.src, first.target);
    port_of(&mut f, &key);
}

/// Fragments carry no ports after the first, so an SNAT listener drops them even with source-IP
/// stickiness; ICMP errors about its flows go to the kernel (not translated).
#[test]
fn fragments_are_dropped_and_icmp_errors_passed_for_snat_listeners() {
    let mut f = snat(&[], 8);
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, SNAT | VIP_F_SOURCE_IP, &[B4.into()]);
    f.address_entry(VIP_V4, Proto::Tcp, vip, SNAT | VIP_F_SOURCE_IP);
    f.assert_fragments_dropped_and_icmp_errors_passed();
}
