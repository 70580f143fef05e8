//! Second chance, both halves, in the real kernel (`BPF_PROG_TEST_RUN`). The balancer: a TCP
//! packet that is not a SYN, of a flow it has no entry for, whose target the VIP's previous
//! table (the standby ring) gives differently, is tunnelled to the live table's target with
//! the previous one named in the outer header; nothing else is. The target (`xlb_decap`): such
//! a packet is taken when this host has a socket for it other than a listener, and otherwise
//! sent on to the named target, from this host, back to the MAC it came from. Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use lb_common::{DecapReason, IPPROTO_TCP, Reason, SECOND_CHANCE_OPTION, SECOND_CHANCE_V6_LEN};
use xlb_tests::{
    fixture::*,
    packet::{MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq, ip_bytes},
};

/// A VIP whose live table gives backend 2 and whose previous one gave backend 1, for every
/// flow (one target per table). Returns the fixture and the VIP's index.
fn moved_vip(vip: IpAddr, before: IpAddr, after: IpAddr) -> (Fixture, u32) {
    let mut f = Fixture::new();
    let index = f.listener(vip, 80, Proto::Tcp, 0, &[before]);
    let b2 = f.backend(after);
    let table = f.table(&[b2]);
    f.dataplane()
        .write_ring(ring_base(index, 1), &table)
        .expect("write standby ring");
    for proto in [IPPROTO_TCP, lb_common::IPPROTO_UDP] {
        f.vip_entry(vip, 80, proto, vip_meta(index, 1, 0));
    }
    (f, index)
}

/// What the balancer sends for `inner` with a second chance: the tunnel of [`expect_tunnel`]
/// with the option naming `prev` (IPv4: in the outer header; IPv6: a Destination Options
/// header after it).
fn expect_second_chance(inner: &[u8], backend: IpAddr, prev: IpAddr, hash: u32) -> Vec<u8> {
    match (backend, prev) {
        (IpAddr::V4(b), IpAddr::V4(p)) => {
            let mut opt = vec![SECOND_CHANCE_OPTION, 8, 0, 0];
            opt.extend_from_slice(&p.octets());
            let outer = Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv4(tunnel_src_v4(hash), b)
                .ttl(64)
                .options(&opt);
            let ip = ip_bytes(inner);
            let outer = if ip[0] >> 4 == 6 || ip[6] & 0x40 != 0 {
                outer.dont_fragment()
            } else {
                outer
            };
            outer.ipip(ip).build()
        }
        (IpAddr::V6(_), IpAddr::V6(p)) => {
            let mut frame = expect_tunnel(inner, backend, hash);
            let l3 = 14;
            let next = frame[l3 + 6];
            let payload = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
            frame[l3 + 4..l3 + 6]
                .copy_from_slice(&(payload + SECOND_CHANCE_V6_LEN as u16).to_be_bytes());
            frame[l3 + 6] = 60;
            let mut ext = vec![next, 2, SECOND_CHANCE_OPTION, 16];
            ext.extend_from_slice(&p.octets());
            ext.extend_from_slice(&[1, 2, 0, 0]);
            frame.splice(l3 + 40..l3 + 40, ext);
            frame
        }
        _ => unreachable!("one family per test"),
    }
}

#[test]
fn the_balancer_names_the_previous_target_only_for_tcp_flows_it_has_not_seen() {
    let (mut f, _) = moved_vip(VIP_V4.into(), BACKEND1_V4, BACKEND2_V4);
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(1000, 80)
        .ack()
        .payload(b"data")
        .build();
    let h = hash5(&flow_key(
        CLIENT_V4.into(),
        VIP_V4.into(),
        1000,
        80,
        Proto::Tcp,
    ));
    f.run_cases(&[
        Case::new(
            "ack of an unseen flow → backend 2, naming backend 1",
            ack.clone(),
            XDP_TX,
            Reason::TxSecondChance,
            expect_second_chance(&ack, BACKEND2_V4, BACKEND1_V4, h),
        ),
        // No entry was made: the next packet gets the same chance.
        Case::new(
            "the same again",
            ack.clone(),
            XDP_TX,
            Reason::TxSecondChance,
            expect_second_chance(&ack, BACKEND2_V4, BACKEND1_V4, h),
        ),
    ]);
    assert_eq!(f.flows(), 0, "a second-chance flow gets no entry");

    let syn = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(2000, 80)
        .syn()
        .build();
    let h2 = hash5(&flow_key(
        CLIENT_V4.into(),
        VIP_V4.into(),
        2000,
        80,
        Proto::Tcp,
    ));
    let ack2 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(2000, 80)
        .ack()
        .build();
    let udp = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .udp(3000, 80)
        .payload(b"dgram")
        .build();
    let h3 = hash5(&flow_key(
        CLIENT_V4.into(),
        VIP_V4.into(),
        3000,
        80,
        Proto::Udp,
    ));
    f.run_cases(&[
        Case::tunnel("a syn: the live table only", syn, BACKEND2_V4, h2),
        Case::tunnel("its ack: the entry the syn made", ack2, BACKEND2_V4, h2),
        Case::tunnel("udp: never", udp, BACKEND2_V4, h3),
    ]);
}

#[test]
fn no_second_chance_when_the_tables_agree_the_previous_target_is_gone_or_it_would_not_fit() {
    let ack = |sport: u16, len: usize| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .dont_fragment()
            .tcp(sport, 80)
            .ack()
            .payload(&vec![0x61; len])
            .build()
    };
    let h = |sport| {
        hash5(&flow_key(
            CLIENT_V4.into(),
            VIP_V4.into(),
            sport,
            80,
            Proto::Tcp,
        ))
    };
    // Both rings give backend 1.
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    let index = 0;
    let b1 = 1;
    let table = f.table(&[b1]);
    f.dataplane()
        .write_ring(ring_base(index, 1), &table)
        .expect("ring");
    f.run_cases(&[Case::tunnel(
        "same target in both tables",
        ack(1000, 10),
        BACKEND1_V4,
        h(1000),
    )]);

    // The previous target is no longer live.
    let (mut f, _) = moved_vip(VIP_V4.into(), BACKEND1_V4, BACKEND2_V4);
    f.set_live(1, false);
    f.run_cases(&[Case::tunnel(
        "previous target gone",
        ack(1001, 10),
        BACKEND2_V4,
        h(1001),
    )]);

    // MTU 1500: an inner packet of 1480 bytes fits the tunnel, not the option as well.
    let (mut f, _) = moved_vip(VIP_V4.into(), BACKEND1_V4, BACKEND2_V4);
    let full = ack(1002, 1480 - 20 - 20);
    f.run_cases(&[Case::tunnel(
        "full-size packet: no room",
        full,
        BACKEND2_V4,
        h(1002),
    )]);
    let fits = ack(1003, 1472 - 20 - 20);
    let expect = expect_second_chance(&fits, BACKEND2_V4, BACKEND1_V4, h(1003));
    f.run_cases(&[Case::new(
        "8 bytes less: room",
        fits,
        XDP_TX,
        Reason::TxSecondChance,
        expect,
    )]);
}

#[test]
fn an_ipv6_flow_gets_its_second_chance_in_a_destination_options_header() {
    let b1: IpAddr = BACKEND1_V6;
    let b2: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12).into();
    let (mut f, _) = moved_vip(VIP_V6.into(), b1, b2);
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(1000, 80)
        .ack()
        .payload(b"data")
        .build();
    let h = hash5(&flow_key(
        CLIENT_V6.into(),
        VIP_V6.into(),
        1000,
        80,
        Proto::Tcp,
    ));
    f.run_cases(&[Case::new(
        "ack of an unseen v6 flow",
        ack.clone(),
        XDP_TX,
        Reason::TxSecondChance,
        expect_second_chance(&ack, b2, b1, h),
    )]);
}

// -------------------------------------------------------------------------------------------------
// The target's half.

/// Brings up `lo` in the fixture's namespace, for real sockets the decap program can find.
fn loopback_up() {
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip")
        .success();
    assert!(ok, "ip link set lo up");
}

/// A second-chance tunnel to `host` naming `prev`, around a TCP segment `client → server`.
fn second_chance_frame(
    host: IpAddr,
    prev: IpAddr,
    client: SocketAddr,
    server: SocketAddr,
    syn: bool,
) -> Vec<u8> {
    let seg = |p: Packet| {
        let ip = match (client.ip(), server.ip()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => p.ipv4(c, s).tcp(client.port(), server.port()),
            (IpAddr::V6(c), IpAddr::V6(s)) => p.ipv6(c, s).tcp(client.port(), server.port()),
            _ => unreachable!(),
        };
        if syn {
            ip.syn().build()
        } else {
            ip.ack().payload(b"data").build()
        }
    };
    let inner = seg(Packet::eth(MAC_CLIENT, MAC_LB));
    let h = 0x1234_5678;
    expect_second_chance(&inner, host, prev, h)
}

/// What `xlb_decap` sends on: the plain tunnel from `host` to `prev`, back to the balancer's MAC.
fn handed_on(frame: &[u8], host: IpAddr, prev: IpAddr) -> Vec<u8> {
    let link = Packet::eth(MAC_GATEWAY, MAC_LB);
    let outer_len = if host.is_ipv4() { 28 } else { 64 };
    let inner = &frame[14 + outer_len..];
    match (host, prev) {
        (IpAddr::V4(h), IpAddr::V4(p)) => {
            let o = link.ipv4(h, p).ttl(64);
            let o = if frame[14 + 6] & 0x40 != 0 {
                o.dont_fragment()
            } else {
                o
            };
            o.ipip(inner).build()
        }
        (IpAddr::V6(h), IpAddr::V6(p)) => link
            .ipv6(h, p)
            .flow_label(u32::from_be_bytes([
                0,
                frame[15] & 0x0f,
                frame[16],
                frame[17],
            ]))
            .hop_limit(64)
            .ip6ip6(inner)
            .build(),
        _ => unreachable!(),
    }
}

/// What the target's stack gets: the client's segment behind the tunnel's Ethernet header.
fn taken(frame: &[u8], host: IpAddr) -> Vec<u8> {
    let outer_len = if host.is_ipv4() { 28 } else { 64 };
    let mut out = frame[..14].to_vec();
    let inner = &frame[14 + outer_len..];
    let t: u16 = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
    out[12..14].copy_from_slice(&t.to_be_bytes());
    out.extend_from_slice(inner);
    out
}

fn target_half(host: IpAddr, prev: IpAddr, lo: IpAddr) {
    let mut f = Fixture::new();
    loopback_up();
    let run = |f: &mut Fixture,
               name: &str,
               frame: Vec<u8>,
               action: u32,
               reason: DecapReason,
               expect: Vec<u8>| {
        println!("case: {name}");
        let (a, out, moved) = f.run_decap_counted(&[host], &frame);
        assert_eq!(a, action, "case {name}: action");
        assert_eq!(moved, vec![(reason, 1)], "case {name}: decap counters");
        assert_frame_eq(&out, &expect);
    };
    // A connection: the server's socket is this host's.
    let listener = TcpListener::bind(SocketAddr::new(lo, 0)).expect("listen");
    let server = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server).expect("connect");
    let (_accepted, _) = listener.accept().expect("accept");
    let from = client.local_addr().expect("client addr");
    let frame = second_chance_frame(host, prev, from, server, false);
    let expect = taken(&frame, host);
    run(
        &mut f,
        "a connection here: taken",
        frame,
        XDP_PASS,
        DecapReason::Decapsulated,
        expect,
    );

    // Only the listener matches another client port: not a connection of this host.
    let stranger = SocketAddr::new(lo, from.port().wrapping_add(1).max(1024));
    let frame = second_chance_frame(host, prev, stranger, server, false);
    let expect = handed_on(&frame, host, prev);
    run(
        &mut f,
        "a listener only: handed on",
        frame,
        XDP_TX,
        DecapReason::TxSecondChance,
        expect,
    );

    // A SYN is the live table's, whoever listens.
    let frame = second_chance_frame(host, prev, stranger, server, true);
    let expect = taken(&frame, host);
    run(
        &mut f,
        "a syn: taken",
        frame,
        XDP_PASS,
        DecapReason::Decapsulated,
        expect,
    );

    // No socket at all.
    drop(listener);
    let frame = second_chance_frame(host, prev, stranger, server, false);
    let handed = handed_on(&frame, host, prev);
    run(
        &mut f,
        "no socket: handed on",
        frame,
        XDP_TX,
        DecapReason::TxSecondChance,
        handed.clone(),
    );

    // The previous target takes what was handed on like any tunnel.
    let (a, out, _) = f.run_decap_counted(&[prev], &handed);
    assert_eq!(a, XDP_PASS, "the previous target takes it");
    let outer = if prev.is_ipv4() { 20 } else { 40 };
    assert_eq!(
        &out[14..],
        &handed[14 + outer..],
        "the client's segment, as sent"
    );
}

#[test]
fn a_target_takes_a_second_chance_packet_only_for_its_own_connection_ipv4() {
    target_half(BACKEND2_V4, BACKEND1_V4, IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn a_target_takes_a_second_chance_packet_only_for_its_own_connection_ipv6() {
    target_half(
        Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12).into(),
        BACKEND1_V6,
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    );
}
