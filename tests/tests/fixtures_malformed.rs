//! Malformed and unusual input for `xlb_lb`: broken IPv4/IPv6 headers, truncated L4 headers,
//! too many IPv6 extension headers, link layers that are not IP, and IP protocols xlb does not
//! balance. Each malformed frame is dropped with the reason that names what is wrong and leaves
//! unchanged; everything else passes untouched. Run as root.

use std::net::{Ipv4Addr, Ipv6Addr};

use xlb_tests::{
    fixture::*,
    packet::{
        ExtHeader, MAC_CLIENT, MAC_LB, Packet, assert_frame_eq, set_ip_version, set_ipv4_ihl,
        set_ipv4_total_len, set_ipv6_payload_len, set_tcp_data_offset, truncate,
    },
};

const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 77);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x77);
fn vip_fixture() -> Fixture {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 80, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.listener(VIP_V6, 53, Proto::Udp, 0, &[BACKEND1_V6]);
    f
}

fn syn4() -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build()
}

fn syn6() -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .tcp(1000, 80)
        .syn()
        .build()
}

fn with(mut frame: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut frame);
    frame
}

/// Cuts an IPv4 frame to `len` bytes and makes its total length agree, so that only the L4
/// header is short.
fn cut4(frame: Vec<u8>, len: usize) -> Vec<u8> {
    let mut f = truncate(frame, len);
    let ip_len = (len - 14) as u16;
    set_ipv4_total_len(&mut f, ip_len);
    f
}

/// The same for IPv6 (payload length after the 40-byte header).
fn cut6(frame: Vec<u8>, len: usize) -> Vec<u8> {
    let mut f = truncate(frame, len);
    set_ipv6_payload_len(&mut f, (len - 54) as u16);
    f
}

/// Broken IPv4 headers: `DropBadIpv4`, to a VIP or not (the header is checked first).
#[test]
fn broken_ipv4_headers_are_dropped_as_bad_ipv4() {
    let mut f = vip_fixture();
    let other = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, OTHER_V4)
        .udp(1, 2)
        .payload(b"hello")
        .build();
    let cases = vec![
        Case::drop(
            "ihl 4",
            with(syn4(), |p| set_ipv4_ihl(p, 4)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "ihl 0",
            with(syn4(), |p| set_ipv4_ihl(p, 0)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "ihl 4, not to a VIP",
            with(other.clone(), |p| set_ipv4_ihl(p, 4)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "ihl 15 beyond the total length (40)",
            with(syn4(), |p| set_ipv4_ihl(p, 15)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "version 5 under ether type IPv4",
            with(syn4(), |p| set_ip_version(p, 5)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "version 6 under ether type IPv4",
            with(syn4(), |p| set_ip_version(p, 6)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "version 0 under ether type IPv4",
            with(other.clone(), |p| set_ip_version(p, 0)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "total length one beyond the frame",
            with(syn4(), |p| set_ipv4_total_len(p, 41)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "total length 65535",
            with(other.clone(), |p| set_ipv4_total_len(p, 65535)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "total length 19, below the header",
            with(syn4(), |p| set_ipv4_total_len(p, 19)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "total length 0",
            with(syn4(), |p| set_ipv4_total_len(p, 0)),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "header cut at 19 bytes",
            truncate(syn4(), 14 + 19),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "nothing after the ethernet header",
            truncate(syn4(), 14),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "vlan tag, then a header cut short",
            truncate(
                Packet::eth(MAC_CLIENT, MAC_LB)
                    .vlan(5)
                    .ipv4(CLIENT_V4, VIP_V4)
                    .tcp(1, 80)
                    .syn()
                    .build(),
                18 + 10,
            ),
            Reason::DropBadIpv4,
        ),
        Case::drop(
            "options cut by the frame (ihl 6, frame ends at 20)",
            with(truncate(syn4(), 14 + 20), |p| {
                set_ipv4_total_len(p, 20);
                set_ipv4_ihl(p, 6)
            }),
            Reason::DropBadIpv4,
        ),
    ];
    f.run_cases(&cases);
}

/// Broken IPv6 headers: `DropBadIpv6`.
#[test]
fn broken_ipv6_headers_are_dropped_as_bad_ipv6() {
    let mut f = vip_fixture();
    use ExtHeader::*;
    let five = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .ipv6_ext(HopByHop)
        .ipv6_ext(DestOpts)
        .ipv6_ext(Routing)
        .ipv6_ext(Routing)
        .ipv6_ext(DestOpts)
        .tcp(1000, 80)
        .syn()
        .build();
    let four_then_frag = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .ipv6_ext(HopByHop)
        .ipv6_ext(DestOpts)
        .ipv6_ext(Routing)
        .ipv6_ext(DestOpts)
        .ipv6_ext(Fragment {
            offset: 0,
            more: true,
            id: 1,
        })
        .tcp(1000, 80)
        .build();
    let six_to_other = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, OTHER_V6)
        .ipv6_ext(HopByHop)
        .ipv6_ext(DestOpts)
        .ipv6_ext(Routing)
        .ipv6_ext(Routing)
        .ipv6_ext(Routing)
        .ipv6_ext(DestOpts)
        .udp(1, 2)
        .build();
    let cases = vec![
        Case::drop(
            "version 4 under ether type IPv6",
            with(syn6(), |p| set_ip_version(p, 4)),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "version 7 under ether type IPv6",
            with(syn6(), |p| set_ip_version(p, 7)),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "payload length one beyond the frame",
            with(syn6(), |p| set_ipv6_payload_len(p, 21)),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "payload length 65535",
            with(syn6(), |p| set_ipv6_payload_len(p, 65535)),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "header cut at 39 bytes",
            truncate(syn6(), 14 + 39),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "five extension headers before tcp",
            five,
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "four extension headers, then a fragment header",
            four_then_frag,
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "six extension headers to a non-VIP",
            six_to_other,
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "hop-by-hop announced, frame ends after the header",
            cut6(
                Packet::eth(MAC_CLIENT, MAC_LB)
                    .ipv6(CLIENT_V6, VIP_V6)
                    .ipv6_ext(HopByHop)
                    .tcp(1, 80)
                    .build(),
                54,
            ),
            Reason::DropBadIpv6,
        ),
        Case::drop(
            "hop-by-hop length runs past the frame",
            with(
                Packet::eth(MAC_CLIENT, MAC_LB)
                    .ipv6(CLIENT_V6, VIP_V6)
                    .ipv6_ext(HopByHop)
                    .ipv6_ext(DestOpts)
                    .udp(1, 53)
                    .build(),
                |p| p[55] = 200,
            ),
            Reason::DropBadIpv6,
        ),
    ];
    f.run_cases(&cases);
}

/// Truncated or broken L4 headers: `DropBadL4`, whether or not to a VIP (ports are read before
/// the VIP lookup).
#[test]
fn truncated_or_broken_l4_headers_are_dropped_as_bad_l4() {
    let mut f = vip_fixture();
    let udp4 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .udp(1000, 53)
        .build();
    let udp6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .udp(1000, 53)
        .build();
    let ping4 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .icmpv4_echo_request(1, 1)
        .build();
    let ping6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .icmpv6_echo_request(1, 1)
        .build();
    let other_tcp = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, OTHER_V4)
        .tcp(1, 2)
        .syn()
        .build();
    let opts_tcp = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .options(&[1; 8])
        .tcp(1000, 80)
        .syn()
        .build();
    let ext_udp = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .ipv6_ext(ExtHeader::DestOpts)
        .udp(1000, 53)
        .build();
    let cases = vec![
        Case::drop(
            "tcp data offset 4",
            with(syn4(), |p| set_tcp_data_offset(p, 4)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp data offset 0",
            with(syn4(), |p| set_tcp_data_offset(p, 0)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp data offset 4, v6",
            with(syn6(), |p| set_tcp_data_offset(p, 4)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp data offset 1, not to a VIP",
            with(other_tcp.clone(), |p| set_tcp_data_offset(p, 1)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp header cut at 19 bytes",
            cut4(syn4(), 14 + 20 + 19),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp header cut at 4 bytes (ports only)",
            cut4(syn4(), 14 + 20 + 4),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp header absent",
            cut4(syn4(), 14 + 20),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp header cut, after ip options",
            cut4(opts_tcp, 14 + 28 + 12),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp header cut, not to a VIP",
            cut4(other_tcp, 14 + 20 + 10),
            Reason::DropBadL4,
        ),
        Case::drop(
            "v6 tcp header cut at 19 bytes",
            cut6(syn6(), 54 + 19),
            Reason::DropBadL4,
        ),
        Case::drop(
            "udp header cut at 7 bytes",
            cut4(udp4, 14 + 20 + 7),
            Reason::DropBadL4,
        ),
        Case::drop(
            "v6 udp header cut at 6 bytes",
            cut6(udp6, 54 + 6),
            Reason::DropBadL4,
        ),
        Case::drop(
            "v6 udp header cut after dest opts",
            cut6(ext_udp, 54 + 8 + 4),
            Reason::DropBadL4,
        ),
        Case::drop(
            "icmp header cut at 3 bytes",
            cut4(ping4, 14 + 20 + 3),
            Reason::DropBadL4,
        ),
        Case::drop(
            "icmpv6 header cut at 2 bytes",
            cut6(ping6, 54 + 2),
            Reason::DropBadL4,
        ),
    ];
    f.run_cases(&cases);
}

/// Frames that are not IPv4/IPv6: `PassNotIp`; shorter than a VLAN header: `DropShortEth`.
#[test]
fn non_ip_link_layers_pass_as_not_ip() {
    let mut f = vip_fixture();
    let cases = vec![
        Case::pass(
            "arp",
            Packet::eth(MAC_CLIENT, [0xff; 6]).ether_payload(0x0806, &[0; 28]),
            Reason::PassNotIp,
        ),
        Case::pass(
            "lldp",
            Packet::eth(MAC_CLIENT, [0x01, 0x80, 0xc2, 0, 0, 0x0e]).ether_payload(0x88cc, &[0; 40]),
            Reason::PassNotIp,
        ),
        Case::pass(
            "mpls unicast",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0x8847, &[0; 40]),
            Reason::PassNotIp,
        ),
        Case::pass(
            "vlan-tagged arp",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(10)
                .ether_payload(0x0806, &[0; 28]),
            Reason::PassNotIp,
        ),
        Case::pass(
            "an ethernet header only, ether type 0",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0, &[]),
            Reason::PassNotIp,
        ),
        Case::pass(
            "802.3 length field instead of an ether type",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(46, &[0xaa; 46]),
            Reason::PassNotIp,
        ),
        Case::drop(
            "vlan ether type, frame ends after the ethernet header",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0x8100, &[]),
            Reason::DropShortEth,
        ),
        Case::drop(
            "q-in-q ether type, 3 bytes of tag",
            Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0x88a8, &[0, 1, 8]),
            Reason::DropShortEth,
        ),
    ];
    f.run_cases(&cases);
}

/// Double-tagged (802.1ad then 802.1Q) frames: only one tag is parsed, so the inner tag's ether
/// type is not IP: passed.
#[test]
fn a_double_tagged_frame_passes_as_not_ip() {
    let mut f = vip_fixture();
    let inner = Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(20)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build();
    // Insert an 802.1ad tag (ether type 0x88a8, id 30) in front of the 802.1Q one.
    let mut frame = inner[..12].to_vec();
    frame.extend_from_slice(&[0x88, 0xa8, 0x00, 30]);
    frame.extend_from_slice(&inner[12..]);
    f.run_cases(&[Case::pass(
        "802.1ad + 802.1Q tags",
        frame,
        Reason::PassNotIp,
    )]);
}

/// A single 802.1ad (service) tag is a tag like 802.1Q: parsed, and kept on the tunnelled frame.
#[test]
fn a_syn_to_a_vip_under_a_single_802_1ad_tag_is_tunnelled_with_the_tag_kept() {
    let mut f = vip_fixture();
    let mut frame = Packet::eth(MAC_CLIENT, MAC_LB)
        .vlan(20)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(1000, 80)
        .syn()
        .build();
    let mut want = expect_tunnel(
        &frame,
        BACKEND1_V4,
        hash5(&flow_key(
            CLIENT_V4.into(),
            VIP_V4.into(),
            1000,
            80,
            Proto::Tcp,
        )),
    );
    frame[12..14].copy_from_slice(&[0x88, 0xa8]);
    want[12..14].copy_from_slice(&[0x88, 0xa8]);
    let out = f.run(&frame);
    assert_eq!((out.action, out.reason()), (XDP_TX, Reason::TxTunnel));
    assert_frame_eq(&out.frame, &want);
}

/// IP protocols xlb does not balance (GRE, SCTP, ESP, IPIP, no next header): to a VIP address,
/// `PassOtherProto`; to any other address, `PassNotVip`. Untouched either way.
#[test]
fn other_ip_protocols_count_as_other_proto_to_vip_addresses_and_not_vip_elsewhere() {
    let mut f = vip_fixture();
    let to4 = |dst: Ipv4Addr, proto: u8| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, dst)
            .raw(proto)
            .payload(&[0; 24])
            .build()
    };
    let to6 = |dst: Ipv6Addr, proto: u8| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT_V6, dst)
            .raw(proto)
            .payload(&[0; 24])
            .build()
    };
    let cases = vec![
        Case::pass("gre to a v4 VIP", to4(VIP_V4, 47), Reason::PassOtherProto),
        Case::pass("sctp to a v4 VIP", to4(VIP_V4, 132), Reason::PassOtherProto),
        Case::pass("esp to a v4 VIP", to4(VIP_V4, 50), Reason::PassOtherProto),
        Case::pass("ipip to a v4 VIP", to4(VIP_V4, 4), Reason::PassOtherProto),
        Case::pass("gre to a v6 VIP", to6(VIP_V6, 47), Reason::PassOtherProto),
        Case::pass("sctp to a v6 VIP", to6(VIP_V6, 132), Reason::PassOtherProto),
        Case::pass(
            "no next header (59) to a v6 VIP",
            to6(VIP_V6, 59),
            Reason::PassOtherProto,
        ),
        Case::pass(
            "sctp after hop-by-hop to a v6 VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT_V6, VIP_V6)
                .ipv6_ext(ExtHeader::HopByHop)
                .raw(132)
                .payload(&[0; 12])
                .build(),
            Reason::PassOtherProto,
        ),
        Case::pass(
            "vlan, gre to a v4 VIP",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(4)
                .ipv4(CLIENT_V4, VIP_V4)
                .raw(47)
                .payload(&[0; 4])
                .build(),
            Reason::PassOtherProto,
        ),
        Case::pass(
            "icmpv6 inside ipv4 to a v4 VIP",
            to4(VIP_V4, 58),
            Reason::PassOtherProto,
        ),
        Case::pass(
            "icmp (v4) inside ipv6 to a v6 VIP",
            to6(VIP_V6, 1),
            Reason::PassOtherProto,
        ),
        Case::pass(
            "icmpv6 inside ipv4 to another address",
            to4(OTHER_V4, 58),
            Reason::PassNotVip,
        ),
        Case::pass(
            "gre to another v4 address",
            to4(OTHER_V4, 47),
            Reason::PassNotVip,
        ),
        Case::pass(
            "sctp to another v4 address",
            to4(OTHER_V4, 132),
            Reason::PassNotVip,
        ),
        Case::pass(
            "gre to another v6 address",
            to6(OTHER_V6, 47),
            Reason::PassNotVip,
        ),
        Case::pass(
            "sctp to another v6 address",
            to6(OTHER_V6, 132),
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 0);
}

/// The counters' byte totals follow frame sizes: a dropped frame counts its own length.
#[test]
fn a_dropped_malformed_frame_counts_its_bytes_under_its_reason() {
    let mut f = vip_fixture();
    let frame = with(syn4(), |p| set_ipv4_ihl(p, 3));
    let before = f.dataplane().reasons().expect("reasons");
    assert_eq!(f.run(&frame).reason(), Reason::DropBadIpv4);
    let after = f.dataplane().reasons().expect("reasons");
    let i = Reason::DropBadIpv4 as usize;
    assert_eq!(after[i].1.bytes - before[i].1.bytes, frame.len() as u64);
}

/// An L4 header cut short by the IP length is truncated even when the frame goes on (Ethernet
/// padding, trailing bytes): the IP packet ends where its length field says.
#[test]
fn l4_headers_cut_by_the_ip_length_but_not_the_frame_are_dropped_as_bad_l4() {
    let mut f = vip_fixture();
    let udp4 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .udp(1000, 53)
        .build();
    let udp6 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv6(CLIENT_V6, VIP_V6)
        .udp(1000, 53)
        .build();
    let ping4 = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .icmpv4_echo_request(1, 1)
        .build();
    let cases = vec![
        Case::drop(
            "tcp: total length 39, frame holds 20 bytes of tcp",
            with(syn4(), |p| set_ipv4_total_len(p, 20 + 19)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "tcp: total length 20, the tcp header in the padding",
            with(syn4(), |p| set_ipv4_total_len(p, 20)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "udp: total length 27",
            with(udp4, |p| set_ipv4_total_len(p, 27)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "icmp: total length 22",
            with(ping4, |p| set_ipv4_total_len(p, 22)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "v6 tcp: payload length 19",
            with(syn6(), |p| set_ipv6_payload_len(p, 19)),
            Reason::DropBadL4,
        ),
        Case::drop(
            "v6 udp: payload length 0",
            with(udp6, |p| set_ipv6_payload_len(p, 0)),
            Reason::DropBadL4,
        ),
    ];
    f.run_cases(&cases);
}
