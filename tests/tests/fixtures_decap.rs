//! `xlb_decap` fixtures: on a target, IPIP / IP6IP6 / IPv4-in-IPv6 / IPv6-in-IPv4 addressed to
//! one of the host's addresses is stripped (Ethernet header and VLAN tag kept, ether type set for
//! the inner packet); tunnels for other hosts and non-tunnel traffic pass untouched; a tunnel for
//! this host with a malformed inner packet is dropped. Each fixture checks the verdict, the frame
//! and the decap reason counted. Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::DecapReason;
use xlb_tests::{
    fixture::*,
    packet::{
        ExtHeader, MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq, ip_bytes,
        set_ipv4_ihl, truncate,
    },
};

const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x99);
const TUN_SRC_V4: Ipv4Addr = Ipv4Addr::new(172, 16, 0x12, 0x34);
const TUN_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x1234, 0x5678);

fn host_addrs() -> [IpAddr; 2] {
    [IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6)]
}

/// One row: this frame in, this verdict and decap reason, this frame out.
struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    reason: DecapReason,
    expect: Vec<u8>,
}

fn run_cases(f: &mut Fixture, cases: &[Case]) {
    for c in cases {
        println!("case: {}", c.name);
        let (action, out, moved) = f.run_decap_counted(&host_addrs(), &c.input);
        assert_eq!(action, c.action, "case {}: action", c.name);
        assert_eq!(
            moved,
            vec![(c.reason, 1)],
            "case {}: decap counters",
            c.name
        );
        assert_frame_eq(&out, &c.expect);
    }
}

fn decapsulated(name: &'static str, input: Vec<u8>, expect: Vec<u8>) -> Case {
    Case {
        name,
        input,
        action: XDP_PASS,
        reason: DecapReason::Decapsulated,
        expect,
    }
}

fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        expect: input.clone(),
        input,
        action: XDP_PASS,
        reason: DecapReason::PassOther,
    }
}

fn malformed(name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        expect: input.clone(),
        input,
        action: XDP_DROP,
        reason: DecapReason::DropMalformed,
    }
}

/// Client packets as the balancer received them (inner packets of the tunnels).
fn inner_v4() -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(40000, 80)
        .syn()
        .payload(b"hi")
        .build()
}

fn inner_v6() -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .udp(40000, 53)
        .payload(b"query")
        .build()
}

/// What reaches the target's stack: the tunnel's Ethernet header (balancer → gateway), then the
/// client's packet.
fn on_target_v4(vlan: Option<u16>) -> Vec<u8> {
    let link = Packet::eth(MAC_LB, MAC_GATEWAY);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv4(CLIENT_V4, VIP_V4)
        .dont_fragment()
        .tcp(40000, 80)
        .syn()
        .payload(b"hi")
        .build()
}

fn on_target_v6(vlan: Option<u16>) -> Vec<u8> {
    let link = Packet::eth(MAC_LB, MAC_GATEWAY);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv6(CLIENT_V6, VIP_V6)
        .udp(40000, 53)
        .payload(b"query")
        .build()
}

fn outer4(dst: Ipv4Addr, vlan: Option<u16>) -> xlb_tests::packet::Ipv4Builder {
    let link = Packet::eth(MAC_LB, MAC_GATEWAY);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv4(TUN_SRC_V4, dst)
}

fn outer6(dst: Ipv6Addr, vlan: Option<u16>) -> xlb_tests::packet::Ipv6Builder {
    let link = Packet::eth(MAC_LB, MAC_GATEWAY);
    let link = match vlan {
        Some(id) => link.vlan(id),
        None => link,
    };
    link.ipv6(TUN_SRC_V6, dst)
}

/// Every tunnel kind the balancer makes, addressed to this host, untagged and tagged.
#[test]
fn tunnels_addressed_to_this_host_have_their_outer_header_removed() {
    let mut f = Fixture::new();
    let (i4, i6) = (inner_v4(), inner_v6());
    let (i4, i6) = (ip_bytes(&i4), ip_bytes(&i6));
    let cases = vec![
        decapsulated(
            "ipip",
            outer4(HOST_V4, None).ipip(i4).build(),
            on_target_v4(None),
        ),
        decapsulated(
            "ipip with DF and ttl 64 outer",
            outer4(HOST_V4, None)
                .dont_fragment()
                .ttl(64)
                .ipip(i4)
                .build(),
            on_target_v4(None),
        ),
        decapsulated(
            "ipip, vlan: tag kept",
            outer4(HOST_V4, Some(100)).ipip(i4).build(),
            on_target_v4(Some(100)),
        ),
        decapsulated(
            "ip6ip6",
            outer6(HOST_V6, None).ip6ip6(i6).build(),
            on_target_v6(None),
        ),
        decapsulated(
            "ip6ip6 with flow label",
            outer6(HOST_V6, None).flow_label(0x5678).ip6ip6(i6).build(),
            on_target_v6(None),
        ),
        decapsulated(
            "ip6ip6, vlan: tag kept",
            outer6(HOST_V6, Some(200)).ip6ip6(i6).build(),
            on_target_v6(Some(200)),
        ),
        decapsulated(
            "ipv4 in ipv6",
            outer6(HOST_V6, None).ip6ip6(i4).build(),
            on_target_v4(None),
        ),
        decapsulated(
            "ipv4 in ipv6, vlan",
            outer6(HOST_V6, Some(7)).ip6ip6(i4).build(),
            on_target_v4(Some(7)),
        ),
        decapsulated(
            "ipv6 in ipv4",
            outer4(HOST_V4, None).ipip(i6).build(),
            on_target_v6(None),
        ),
        decapsulated(
            "ipv6 in ipv4, vlan",
            outer4(HOST_V4, Some(4094)).ipip(i6).build(),
            on_target_v6(Some(4094)),
        ),
        decapsulated(
            "ipip with outer ip options (ihl 6)",
            outer4(HOST_V4, None)
                .options(&[1, 1, 1, 1])
                .ipip(i4)
                .build(),
            on_target_v4(None),
        ),
    ];
    run_cases(&mut f, &cases);
}

/// The balancer's own output, fed to the target's decap, gives back the client's packet.
#[test]
fn the_balancers_output_decapsulated_by_the_target_gives_back_the_clients_packet() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    for (name, client, want) in [
        ("v4 syn through IPIP", inner_v4(), on_target_v4(None)),
        ("v6 datagram through IP6IP6", inner_v6(), on_target_v6(None)),
    ] {
        println!("case: {name}");
        let out = f.run(&client);
        assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
        let (action, inner, moved) = f.run_decap_counted(&[BACKEND1_V4, BACKEND1_V6], &out.frame);
        assert_eq!(
            (action, moved),
            (XDP_PASS, vec![(DecapReason::Decapsulated, 1)])
        );
        assert_frame_eq(&inner, &want);
    }
}

/// Tunnels to other hosts, traffic that is not a tunnel, and non-IP frames: passed untouched.
#[test]
fn traffic_that_is_not_a_tunnel_for_this_host_passes_untouched() {
    let mut f = Fixture::new();
    let (i4, i6) = (inner_v4(), inner_v6());
    let (i4, i6) = (ip_bytes(&i4), ip_bytes(&i6));
    let cases = vec![
        untouched(
            "ipip for another host",
            outer4(OTHER_V4, None).ipip(i4).build(),
        ),
        untouched(
            "ip6ip6 for another host",
            outer6(OTHER_V6, None).ip6ip6(i6).build(),
        ),
        untouched(
            "ipv4 in ipv6 for another host, vlan",
            outer6(OTHER_V6, Some(3)).ip6ip6(i4).build(),
        ),
        untouched(
            "tcp to this host",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT_V4, HOST_V4)
                .tcp(1, 22)
                .syn()
                .build(),
        ),
        untouched(
            "udp to this host over v6",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, HOST_V6)
                .udp(1, 53)
                .build(),
        ),
        untouched(
            "gre to this host",
            outer4(HOST_V4, None).raw(47).payload(&[0; 8]).build(),
        ),
        untouched(
            "arp",
            Packet::eth(MAC_CLIENT, [0xff; 6]).ether_payload(0x0806, &[0; 28]),
        ),
        untouched(
            "ipv4 header cut short",
            truncate(outer4(HOST_V4, None).ipip(i4).build(), 14 + 12),
        ),
        untouched(
            "ipv6 header cut short",
            truncate(outer6(HOST_V6, None).ip6ip6(i6).build(), 14 + 30),
        ),
        untouched(
            "vlan tag cut short",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0x8100, &[0, 1]),
        ),
        untouched("client packet to the VIP itself (no tunnel)", inner_v4()),
    ];
    run_cases(&mut f, &cases);
}

/// A tunnel for this host whose inner packet is missing or of the wrong version, or whose outer
/// header length is below 20: dropped as malformed.
#[test]
fn tunnels_for_this_host_with_malformed_headers_are_dropped() {
    let mut f = Fixture::new();
    let (i4, i6) = (inner_v4(), inner_v6());
    let (i4, i6) = (ip_bytes(&i4), ip_bytes(&i6));
    // Protocol 4 announced but an IPv6 packet inside, and the reverse (checksums right).
    let v6_as_ipip = outer4(HOST_V4, None).raw(4).payload(i6).build();
    let v4_as_ip6ip6 = outer6(HOST_V6, None).raw(41).payload(i4).build();
    let v6_as_v4_in_v6 = outer6(HOST_V6, None).raw(4).payload(i6).build();
    let mut ihl4 = outer4(HOST_V4, None).ipip(i4).build();
    set_ipv4_ihl(&mut ihl4, 4);
    let cases = vec![
        malformed("ipip with an ipv6 packet inside", v6_as_ipip),
        malformed("ip6ip6 with an ipv4 packet inside", v4_as_ip6ip6),
        malformed("ipv4-in-ipv6 with an ipv6 packet inside", v6_as_v4_in_v6),
        malformed(
            "ipip with nothing inside",
            outer4(HOST_V4, None).raw(4).build(),
        ),
        malformed(
            "ip6ip6 with 3 bytes inside",
            truncate(outer6(HOST_V6, None).ip6ip6(i6).build(), 14 + 40 + 3),
        ),
        malformed(
            "ipip, vlan, 2 bytes inside",
            truncate(outer4(HOST_V4, Some(9)).ipip(i4).build(), 18 + 20 + 2),
        ),
        malformed("outer ihl 4", ihl4),
    ];
    run_cases(&mut f, &cases);
}

/// A tunnel packet fragmented on the way (outer DF clear, a link with a smaller MTU) cannot be
/// stripped one fragment at a time: the first fragment holds only part of the inner packet and
/// the others none of its header. Fragments of the outer packet are left to the kernel, which
/// reassembles them: passed untouched.
#[test]
fn fragments_of_a_tunnel_packet_for_this_host_pass_untouched() {
    let mut f = Fixture::new();
    let inner = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(40000, 80)
        .ack()
        .payload(&[0x42; 1000])
        .build();
    let i4 = ip_bytes(&inner);
    // The outer packet split at 512 bytes of payload: IPIP's protocol (4) is in every fragment.
    let cases = vec![
        untouched(
            "first fragment of an ipip packet",
            outer4(HOST_V4, None)
                .id(7)
                .fragment(0, true)
                .raw(4)
                .payload(&i4[..512])
                .build(),
        ),
        untouched(
            "last fragment of an ipip packet",
            outer4(HOST_V4, None)
                .id(7)
                .fragment(512, false)
                .raw(4)
                .payload(&i4[512..])
                .build(),
        ),
        untouched(
            "a later fragment that happens to start like an ipv4 header",
            outer4(HOST_V4, Some(5))
                .id(8)
                .fragment(1024, false)
                .raw(4)
                .payload(&i4[..100])
                .build(),
        ),
        untouched(
            "first fragment of an ip6ip6 packet (fragment header before the inner packet)",
            outer6(HOST_V6, None)
                .ipv6_ext(ExtHeader::Fragment {
                    offset: 0,
                    more: true,
                    id: 9,
                })
                .raw(41)
                .payload(&ip_bytes(&inner_v6())[..40])
                .build(),
        ),
    ];
    run_cases(&mut f, &cases);
}
