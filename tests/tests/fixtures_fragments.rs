//! Fragment policy fixtures for `xlb_lb`: fragments of datagrams to a 5-tuple VIP are dropped
//! (only the first fragment has ports, so they cannot all reach one target); to a source-IP VIP
//! (whose hash ignores ports) with an address entry they are forwarded by the ring; to other
//! addresses they pass. Each fixture reads "given (setup), when (packet), then (verdict, frame
//! out, counters)". Run as root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{RING_SIZE_DEFAULT as RING_SIZE, VIP_F_DSR, VIP_F_SOURCE_IP};
use xlb_tests::{
    fixture::*,
    packet::{ExtHeader, Ipv4Builder, Ipv6Builder, MAC_CLIENT, MAC_LB, Packet, ip_bytes},
};

const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 77);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x77);
const BACKEND2_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12));

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}
fn c4(dst: Ipv4Addr) -> Ipv4Builder {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, dst)
        .id(0x1234)
}

fn c6(dst: Ipv6Addr) -> Ipv6Builder {
    Packet::eth(MAC_CLIENT, MAC_LB).ipv6(CLIENT_V6, dst)
}

/// First fragment (MF, offset 0) with the TCP header, a middle one, the last one.
fn v4_tcp_fragments(dst: Ipv4Addr) -> [Vec<u8>; 3] {
    [
        c4(dst)
            .fragment(0, true)
            .tcp(1000, 80)
            .syn()
            .payload(&[1; 1000])
            .build(),
        c4(dst)
            .fragment(1016, true)
            .raw(6)
            .payload(&[2; 1000])
            .build(),
        c4(dst)
            .fragment(2016, false)
            .raw(6)
            .payload(&[3; 100])
            .build(),
    ]
}

fn v6_frag(offset: u16, more: bool) -> ExtHeader {
    ExtHeader::Fragment {
        offset,
        more,
        id: 0xabcd,
    }
}

fn v6_tcp_fragments(dst: Ipv6Addr) -> [Vec<u8>; 2] {
    [
        c6(dst)
            .ipv6_ext(v6_frag(0, true))
            .tcp(1000, 443)
            .syn()
            .payload(&[1; 1000])
            .build(),
        c6(dst)
            .ipv6_ext(v6_frag(1016, false))
            .raw(6)
            .payload(&[2; 200])
            .build(),
    ]
}

/// Fragments to a 5-tuple VIP (its address entry has no source-IP flag) are dropped.
#[test]
fn fragments_to_five_tuple_vips_with_address_entries_are_dropped() {
    let mut f = Fixture::new();
    let tcp = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Tcp, tcp, 0);
    let udp = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Udp, udp, 0);
    let tcp6 = f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    f.address_entry(VIP_V6, Proto::Tcp, tcp6, 0);
    let [first, middle, last] = v4_tcp_fragments(VIP_V4);
    let [first6, last6] = v6_tcp_fragments(VIP_V6);
    let cases = vec![
        Case::unchanged(
            "v4 first fragment with tcp header",
            first,
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged("v4 middle fragment", middle, XDP_DROP, Reason::DropFragment),
        Case::unchanged("v4 last fragment", last, XDP_DROP, Reason::DropFragment),
        Case::unchanged(
            "v4 udp first fragment",
            c4(VIP_V4)
                .fragment(0, true)
                .udp(2000, 53)
                .payload(&[0; 64])
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged(
            "v4 udp later fragment",
            c4(VIP_V4)
                .fragment(72, false)
                .raw(17)
                .payload(&[0; 64])
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged(
            "v4 fragment, vlan",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(8)
                .ipv4(CLIENT_V4, VIP_V4)
                .fragment(8, false)
                .raw(6)
                .payload(&[0; 8])
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged(
            "v4 fragmented echo request (icmp address entry)",
            c4(VIP_V4)
                .fragment(0, true)
                .icmpv4_echo_request(1, 1)
                .payload(&[0; 64])
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged("v6 first fragment", first6, XDP_DROP, Reason::DropFragment),
        Case::unchanged("v6 last fragment", last6, XDP_DROP, Reason::DropFragment),
        Case::unchanged(
            "v6 fragment header after hop-by-hop",
            c6(VIP_V6)
                .ipv6_ext(ExtHeader::HopByHop)
                .ipv6_ext(v6_frag(0, true))
                .tcp(1000, 443)
                .payload(&[0; 16])
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::unchanged(
            "v6 atomic fragment (offset 0, no more)",
            c6(VIP_V6)
                .ipv6_ext(v6_frag(0, false))
                .tcp(1000, 443)
                .syn()
                .build(),
            XDP_DROP,
            Reason::DropFragment,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.vip_counters(tcp).packets, 0);
    assert_eq!(f.flows(), 0);
}

/// Fragments to a VIP address without an entry for their protocol are not ours.
#[test]
fn fragments_with_no_address_entry_for_their_protocol_pass() {
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
    f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6]);
    let [first, _, last] = v4_tcp_fragments(VIP_V4);
    let [first6, _] = v6_tcp_fragments(VIP_V6);
    let cases = vec![
        Case::unchanged(
            "v4 tcp first fragment, listener but no address entry",
            first,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v4 tcp last fragment, no address entry",
            last,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v6 tcp first fragment, no address entry",
            first6,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v4 gre fragment to the VIP address",
            c4(VIP_V4)
                .fragment(8, false)
                .raw(47)
                .payload(&[0; 8])
                .build(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
}

/// Fragments to addresses that are not VIPs pass untouched.
#[test]
fn fragments_to_addresses_other_than_a_vip_pass_untouched() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Tcp, vip, VIP_F_SOURCE_IP);
    let [first, middle, last] = v4_tcp_fragments(OTHER_V4);
    let [first6, last6] = v6_tcp_fragments(OTHER_V6);
    let cases = vec![
        Case::unchanged(
            "v4 first fragment to a non-VIP",
            first,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v4 middle fragment to a non-VIP",
            middle,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v4 last fragment to a non-VIP",
            last,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v6 first fragment to a non-VIP",
            first6,
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Case::unchanged(
            "v6 last fragment to a non-VIP",
            last6,
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    f.run_cases(&cases);
}

/// Fragments to a source-IP VIP with an address entry are forwarded by the ring with the source
/// hash: all fragments, and the unfragmented packets of the same client, reach the same target.
/// They are not flows: nothing is recorded, no new flow counted.
#[test]
fn fragments_to_a_source_ip_vip_with_an_address_entry_all_go_to_the_clients_target() {
    let mut f = Fixture::new();
    let vip = f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    f.address_entry(VIP_V4, Proto::Tcp, vip, VIP_F_SOURCE_IP);
    let udp = f.listener(
        VIP_V4,
        53,
        Proto::Udp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V4, BACKEND2_V4, BACKEND3_V4],
    );
    f.address_entry(VIP_V4, Proto::Udp, udp, VIP_F_SOURCE_IP);
    let table = f.table(&[1, 2, 3]);
    let targets = [BACKEND1_V4, BACKEND2_V4, BACKEND3_V4];
    let hs = hash_src(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 0, 0, Proto::Tcp));
    let target = targets[table[(hs % RING_SIZE) as usize] as usize - 1];
    let [first, middle, last] = v4_tcp_fragments(VIP_V4);
    let cases = vec![
        Case::tunnel("first fragment → the client's target", first, target, hs),
        Case::tunnel("middle fragment → same target", middle, target, hs),
        Case::tunnel("last fragment → same target", last, target, hs),
        Case::tunnel(
            "udp first fragment → same target",
            c4(VIP_V4)
                .fragment(0, true)
                .udp(2000, 53)
                .payload(&[9; 64])
                .build(),
            target,
            hs,
        ),
        Case::tunnel(
            "udp last fragment → same target",
            c4(VIP_V4)
                .fragment(72, false)
                .raw(17)
                .payload(&[9; 8])
                .build(),
            target,
            hs,
        ),
        Case::tunnel(
            "vlan fragment → same target, tag kept",
            Packet::eth(MAC_CLIENT, MAC_LB)
                .vlan(300)
                .ipv4(CLIENT_V4, VIP_V4)
                .fragment(8, false)
                .raw(6)
                .payload(&[1; 8])
                .build(),
            target,
            hs,
        ),
        Case::tunnel(
            "unfragmented syn of the client → same target",
            c4(VIP_V4).tcp(5555, 80).syn().build(),
            target,
            hs,
        ),
    ];
    f.run_cases(&cases);
    let c = f.vip_counters(vip);
    assert_eq!(
        (c.packets, c.new_flows),
        (5, 1),
        "fragments count as packets, not flows"
    );
    assert_eq!(f.flows(), 1, "only the unfragmented syn made a flow");
}

/// A source-IP VIP for another client: another target possibly, but the same for all its
/// fragments; IPv6 fragments likewise.
#[test]
fn fragments_to_a_source_ip_v6_vip_with_an_address_entry_are_tunnelled_by_source() {
    let mut f = Fixture::new();
    let vip = f.listener(
        VIP_V6,
        443,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V6, BACKEND2_V6],
    );
    f.address_entry(VIP_V6, Proto::Tcp, vip, VIP_F_SOURCE_IP);
    let table = f.table(&[1, 2]);
    let targets = [BACKEND1_V6, BACKEND2_V6];
    let pick = |client: Ipv6Addr| {
        let hs = hash_src(&flow_key(v6(client), v6(VIP_V6), 0, 0, Proto::Tcp));
        (targets[table[(hs % RING_SIZE) as usize] as usize - 1], hs)
    };
    let (t1, h1) = pick(CLIENT_V6);
    let client2 = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 9);
    let (t2, h2) = pick(client2);
    let [first6, last6] = v6_tcp_fragments(VIP_V6);
    let from2 = |e: ExtHeader| {
        Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(client2, VIP_V6)
            .ipv6_ext(e)
    };
    let cases = vec![
        Case::tunnel("v6 first fragment → client's target", first6, t1, h1),
        Case::tunnel("v6 last fragment → client's target", last6, t1, h1),
        Case::tunnel(
            "v6 fragment after dest opts → client's target",
            c6(VIP_V6)
                .ipv6_ext(ExtHeader::DestOpts)
                .ipv6_ext(v6_frag(64, false))
                .raw(6)
                .payload(&[0; 24])
                .build(),
            t1,
            h1,
        ),
        Case::tunnel(
            "another client's first fragment → its target",
            from2(v6_frag(0, true))
                .tcp(1, 443)
                .payload(&[0; 100])
                .build(),
            t2,
            h2,
        ),
        Case::tunnel(
            "another client's last fragment → its target",
            from2(v6_frag(120, false)).raw(6).payload(&[0; 100]).build(),
            t2,
            h2,
        ),
    ];
    f.run_cases(&cases);
    assert_eq!(f.flows(), 0);
}

/// Source-IP VIP in DSR mode: fragments go by DSR. With an empty ring: dropped as no backend.
/// With a target that is gone: dropped as no backend too (fragments have no flow to fall back on).
#[test]
fn fragments_to_source_ip_dsr_vips_go_by_dsr_and_without_targets_drop_as_no_backend() {
    let mut f = Fixture::new();
    let dsr = f.listener(
        VIP_V4,
        80,
        Proto::Tcp,
        VIP_F_SOURCE_IP | VIP_F_DSR,
        &[BACKEND1_V4],
    );
    f.address_entry(VIP_V4, Proto::Tcp, dsr, VIP_F_SOURCE_IP | VIP_F_DSR);
    let empty = f.listener(VIP_V4, 53, Proto::Udp, VIP_F_SOURCE_IP, &[]);
    f.address_entry(VIP_V4, Proto::Udp, empty, VIP_F_SOURCE_IP);
    let gone = f.listener(VIP_V6, 443, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND1_V6]);
    f.address_entry(VIP_V6, Proto::Tcp, gone, VIP_F_SOURCE_IP);
    let b6 = f.backend(BACKEND1_V6);
    f.set_live(b6, false);
    let [first, _, last] = v4_tcp_fragments(VIP_V4);
    let [first6, _] = v6_tcp_fragments(VIP_V6);
    let cases = vec![
        Case {
            name: "first fragment, dsr",
            expect: expect_dsr(&first),
            input: first,
            action: XDP_TX,
            reason: Reason::TxDsr,
        },
        Case {
            name: "last fragment, dsr",
            expect: expect_dsr(&last),
            input: last,
            action: XDP_TX,
            reason: Reason::TxDsr,
        },
        Case::unchanged(
            "udp fragment, empty ring",
            c4(VIP_V4)
                .fragment(8, false)
                .raw(17)
                .payload(&[0; 8])
                .build(),
            XDP_DROP,
            Reason::DropNoBackend,
        ),
        Case::unchanged(
            "v6 fragment, only target gone",
            first6,
            XDP_DROP,
            Reason::DropNoBackend,
        ),
    ];
    f.run_cases(&cases);
}

/// A forwarded fragment is subject to the tunnel MTU like any packet: an IPv6 fragment too big
/// for the tunnel gets "packet too big"; an IPv4 fragment (DF clear) is dropped.
#[test]
fn a_too_big_fragment_to_a_source_ip_vip_gets_ptb_in_v6_and_is_dropped_in_v4() {
    let mut f = Fixture::new();
    let vip = f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Tcp, vip, VIP_F_SOURCE_IP);
    let vip6 = f.listener(VIP_V6, 443, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND1_V6]);
    f.address_entry(VIP_V6, Proto::Tcp, vip6, VIP_F_SOURCE_IP);
    let big4 = c4(VIP_V4)
        .fragment(0, true)
        .raw(6)
        .payload(&[0; 1480])
        .build();
    let big6 = c6(VIP_V6)
        .ipv6_ext(v6_frag(0, true))
        .raw(6)
        .payload(&[0; 1440])
        .build();
    let ptb = Packet::eth(MAC_LB, MAC_CLIENT)
        .ipv6(VIP_V6, CLIENT_V6)
        .hop_limit(64)
        .icmpv6_packet_too_big(1460, &ip_bytes(&big6)[..128])
        .build();
    let cases = vec![
        Case::unchanged(
            "v4 fragment of 1500 bytes (no DF): dropped",
            big4,
            XDP_DROP,
            Reason::DropTooBig,
        ),
        Case {
            name: "v6 fragment of 1488 bytes: packet too big, mtu 1460",
            input: big6,
            action: XDP_TX,
            reason: Reason::TxTooBig,
            expect: ptb,
        },
    ];
    f.run_cases(&cases);
}

/// The address entry's own flags decide: a source-IP listener whose address entry lacks the
/// flag drops fragments; a 5-tuple listener whose address entry has it forwards them.
#[test]
fn an_address_entry_whose_flags_differ_from_the_listener_decides_for_fragments() {
    let mut f = Fixture::new();
    let tcp = f.listener(VIP_V4, 80, Proto::Tcp, VIP_F_SOURCE_IP, &[BACKEND1_V4]);
    f.address_entry(VIP_V4, Proto::Tcp, tcp, 0);
    let udp = f.listener(VIP_V4, 53, Proto::Udp, 0, &[BACKEND2_V4]);
    f.address_entry(VIP_V4, Proto::Udp, udp, VIP_F_SOURCE_IP);
    let hs = hash_src(&flow_key(v4(CLIENT_V4), v4(VIP_V4), 0, 0, Proto::Udp));
    let [first, _, _] = v4_tcp_fragments(VIP_V4);
    let cases = vec![
        Case::unchanged(
            "tcp fragment, entry without source-ip",
            first,
            XDP_DROP,
            Reason::DropFragment,
        ),
        Case::tunnel(
            "udp fragment, entry with source-ip",
            c4(VIP_V4)
                .fragment(8, false)
                .raw(17)
                .payload(&[0; 8])
                .build(),
            BACKEND2_V4,
            hs,
        ),
    ];
    f.run_cases(&cases);
}
