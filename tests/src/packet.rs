//! Ethernet frames for the datapath fixtures: a builder that gets lengths and checksums right, a
//! decoder that makes mismatches readable, and a few mutators for malformed input.
//!
//! Header types, serialization and checksums come from `etherparse`; this module chains them
//! (VLAN ether types, IPv6 next headers, lengths) and adds what a load balancer's fixtures need on
//! top: tunnels, ICMP errors quoting a packet, and deliberately broken headers.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use xlb_tests::packet::{MAC_CLIENT, MAC_GATEWAY, MAC_LB, Packet, assert_frame_eq, ip_bytes};
//!
//! let client = Ipv4Addr::new(198, 51, 100, 7);
//! let vip = Ipv4Addr::new(192, 0, 2, 10);
//! let syn = Packet::eth(MAC_CLIENT, MAC_LB)
//!     .vlan(10)
//!     .ipv4(client, vip)
//!     .ttl(64)
//!     .dont_fragment()
//!     .tcp(40000, 80)
//!     .syn()
//!     .payload(b"hello")
//!     .build();
//! // What the balancer sends on: the client's IP packet inside IPIP, towards the gateway.
//! let expected = Packet::eth(MAC_LB, MAC_GATEWAY)
//!     .ipv4(Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(10, 1, 0, 5))
//!     .ipip(ip_bytes(&syn))
//!     .build();
//! assert_frame_eq(&expected, &expected);
//! ```
//!
//! Steps: [`Packet`] (Ethernet, VLAN) → [`Ipv4Builder`] / [`Ipv6Builder`] (header knobs, IPv6
//! extension headers) → [`TcpBuilder`] (flags) or [`PayloadBuilder`] → `build()`. Defaults: IPv4
//! TTL 64, TOS 0, id 0, DF clear, no options; IPv6 hop limit 64, traffic class 0, flow label 0;
//! TCP seq 0, ack 0, no flags, window 65535. Checksums cover the bytes of this packet only (so a
//! first fragment's L4 checksum covers just that fragment), and the IPv6 ones use the header's
//! destination (the routing header built here has no segments left).
//!
//! Byte offsets for hand edits: the IP header starts at [`ETH_LEN`], or at `ETH_LEN + VLAN_LEN`
//! when tagged ([`ip_bytes`] finds it). IPv4: version/IHL at +0, total length +2, id +4, flags
//! and fragment offset +6, TTL +8, protocol +9, checksum +10. IPv6: payload length +4, next
//! header +6, hop limit +7. TCP: data offset at +12 (upper nibble), checksum +16. The `set_*`
//! mutators change one field and keep the IPv4 header (or TCP) checksum right for the new bytes,
//! so the named field is the only thing wrong.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type,
    Icmpv6Header, Icmpv6Slice, Icmpv6Type, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header,
    Ipv4Options, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader,
    TcpHeader, TcpSlice, UdpHeader, VlanId, VlanPcp, icmpv4, icmpv6,
};

/// The client-side next hop: source MAC of what reaches the balancer.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The balancer's own interface.
pub const MAC_LB: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The next hop towards the targets (`Config::gateway_mac` in fixtures).
pub const MAC_GATEWAY: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x03];
/// A target's own MAC, for L2 DSR.
pub const MAC_BACKEND: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x04];

/// Bytes of an Ethernet II header: where the IP header starts in an untagged frame.
pub const ETH_LEN: usize = 14;
/// Bytes of one 802.1Q tag, between the Ethernet header and the IP header.
pub const VLAN_LEN: usize = 4;

const DEFAULT_TTL: u8 = 64;
const DEFAULT_TCP_WINDOW: u16 = 65535;

/// The link layer of a frame being built; start here with [`Packet::eth`].
#[derive(Clone, Debug)]
pub struct Packet {
    src: [u8; 6],
    dst: [u8; 6],
    vlan: Option<VlanId>,
}

impl Packet {
    /// Starts an Ethernet II frame from `src` to `dst`.
    pub fn eth(src: [u8; 6], dst: [u8; 6]) -> Packet {
        Packet {
            src,
            dst,
            vlan: None,
        }
    }

    /// Adds one 802.1Q tag with VLAN id `id` (12 bits), priority 0.
    pub fn vlan(mut self, id: u16) -> Packet {
        self.vlan = Some(VlanId::try_new(id).expect("a VLAN id has 12 bits"));
        self
    }

    /// Continues with an IPv4 header (TTL 64, TOS 0, id 0, DF clear, no options).
    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4Builder {
        let header = Ipv4Header {
            time_to_live: DEFAULT_TTL,
            // etherparse's default sets DF; fixtures start with every flag clear.
            dont_fragment: false,
            source: src.octets(),
            destination: dst.octets(),
            ..Default::default()
        };
        Ipv4Builder { link: self, header }
    }

    /// Continues with an IPv6 header (hop limit 64, traffic class 0, flow label 0).
    pub fn ipv6(self, src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6Builder {
        let header = Ipv6Header {
            hop_limit: DEFAULT_TTL,
            source: src.octets(),
            destination: dst.octets(),
            ..Default::default()
        };
        Ipv6Builder {
            link: self,
            header,
            exts: Vec::new(),
        }
    }

    /// Finishes a frame that does not carry IP (ARP, LLDP, ...): `payload` follows `ether_type`.
    pub fn ether_payload(self, ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = self.header_bytes(EtherType(ether_type));
        frame.extend_from_slice(payload);
        frame
    }

    /// The Ethernet header and VLAN tag, announcing `inner` for what follows them.
    fn header_bytes(&self, inner: EtherType) -> Vec<u8> {
        let mut eth = Ethernet2Header {
            source: self.src,
            destination: self.dst,
            ether_type: inner,
        };
        let Some(vlan_id) = self.vlan else {
            return eth.to_bytes().to_vec();
        };
        eth.ether_type = EtherType::VLAN_TAGGED_FRAME;
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id,
            ether_type: inner,
        };
        [&eth.to_bytes()[..], &tag.to_bytes()].concat()
    }
}

/// An IPv4 header being built: set its fields, then choose what it carries.
#[derive(Clone, Debug)]
pub struct Ipv4Builder {
    link: Packet,
    header: Ipv4Header,
}

impl Ipv4Builder {
    /// Sets the time to live (default 64).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.header.time_to_live = ttl;
        self
    }

    /// Sets the don't-fragment flag (default clear).
    pub fn dont_fragment(mut self) -> Self {
        self.header.dont_fragment = true;
        self
    }

    /// Sets the identification field (default 0).
    pub fn id(mut self, id: u16) -> Self {
        self.header.identification = id;
        self
    }

    /// Sets the TOS byte: DSCP in the upper six bits, ECN in the lower two (default 0).
    pub fn tos(mut self, tos: u8) -> Self {
        self.header.dscp = IpDscp::try_new(tos >> 2).expect("six bits");
        self.header.ecn = IpEcn::try_new(tos & 0b11).expect("two bits");
        self
    }

    /// Adds IPv4 options (at most 40 bytes), zero padded (end of list) to a multiple of 4 bytes.
    pub fn options(mut self, options: &[u8]) -> Self {
        let mut padded = options.to_vec();
        padded.resize(options.len().next_multiple_of(4), 0);
        self.header.options =
            Ipv4Options::try_from(&padded[..]).expect("IPv4 options are at most 40 bytes");
        self
    }

    /// Makes this a fragment at `offset_bytes` (a multiple of 8), with the more-fragments flag.
    pub fn fragment(mut self, offset_bytes: u16, more_fragments: bool) -> Self {
        self.header.fragment_offset = frag_offset(offset_bytes);
        self.header.more_fragments = more_fragments;
        self
    }

    /// Carries TCP from `sport` to `dport`; set flags on the result.
    pub fn tcp(self, sport: u16, dport: u16) -> TcpBuilder {
        TcpBuilder::new(self.link, Net::V4(self.header), sport, dport)
    }

    /// Carries UDP from `sport` to `dport`.
    pub fn udp(self, sport: u16, dport: u16) -> PayloadBuilder {
        self.carry(L4::Udp { sport, dport })
    }

    /// Carries an ICMP echo request with identifier `id` and sequence number `seq`.
    pub fn icmpv4_echo_request(self, id: u16, seq: u16) -> PayloadBuilder {
        self.carry(L4::Icmpv4(Icmpv4Type::EchoRequest(IcmpEchoHeader {
            id,
            seq,
        })))
    }

    /// Carries an ICMP echo reply with identifier `id` and sequence number `seq`.
    pub fn icmpv4_echo_reply(self, id: u16, seq: u16) -> PayloadBuilder {
        self.carry(L4::Icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader {
            id,
            seq,
        })))
    }

    /// Carries ICMP destination unreachable with `code` (0..=15), quoting `quoted` as given.
    pub fn icmpv4_dest_unreachable(self, code: u8, quoted: &[u8]) -> PayloadBuilder {
        let header = icmpv4::DestUnreachableHeader::from_values(code, 0)
            .expect("ICMP destination unreachable codes are 0..=15");
        self.carry(L4::Icmpv4(Icmpv4Type::DestinationUnreachable(header)))
            .payload(quoted)
    }

    /// Carries ICMP fragmentation needed (type 3, code 4) with next-hop `mtu`, quoting `quoted`.
    pub fn icmpv4_frag_needed(self, mtu: u16, quoted: &[u8]) -> PayloadBuilder {
        let header = icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu };
        self.carry(L4::Icmpv4(Icmpv4Type::DestinationUnreachable(header)))
            .payload(quoted)
    }

    /// Carries ICMP time exceeded in transit (type 11, code 0), quoting `quoted`.
    pub fn icmpv4_time_exceeded(self, quoted: &[u8]) -> PayloadBuilder {
        let code = icmpv4::TimeExceededCode::TtlExceededInTransit;
        self.carry(L4::Icmpv4(Icmpv4Type::TimeExceeded(code)))
            .payload(quoted)
    }

    /// Tunnels `inner` (an IP packet, header on): protocol 4 for IPv4 inside, 41 for IPv6.
    pub fn ipip(self, inner: &[u8]) -> PayloadBuilder {
        self.carry(L4::Raw(tunnel_protocol(inner))).payload(inner)
    }

    /// Carries only the bytes given to `payload`, under IP protocol `protocol` (for fragments).
    pub fn raw(self, protocol: u8) -> PayloadBuilder {
        self.carry(L4::Raw(IpNumber(protocol)))
    }

    fn carry(self, l4: L4) -> PayloadBuilder {
        PayloadBuilder::new(self.link, Net::V4(self.header), l4)
    }
}

/// An IPv6 extension header for [`Ipv6Builder::ipv6_ext`]; they chain in the order added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options holding only padding (8 bytes).
    HopByHop,
    /// Destination options holding only padding (8 bytes).
    DestOpts,
    /// A routing header with no segments left, which nodes skip (8 bytes).
    Routing,
    /// A fragment header: `offset` in bytes (a multiple of 8), more-fragments flag, id (8 bytes).
    Fragment { offset: u16, more: bool, id: u32 },
}

impl ExtHeader {
    /// The next-header value that announces this extension header.
    fn ip_number(self) -> IpNumber {
        match self {
            ExtHeader::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            ExtHeader::DestOpts => IpNumber::IPV6_DESTINATION_OPTIONS,
            ExtHeader::Routing => IpNumber::IPV6_ROUTE_HEADER,
            ExtHeader::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
        }
    }

    fn to_bytes(self, next: IpNumber) -> Vec<u8> {
        // One PadN option covering the six bytes after next header and length (RFC 8200 4.2).
        const PAD_N: [u8; 6] = [1, 4, 0, 0, 0, 0];
        // Routing type 253 is for experiments (RFC 4727); with no segments left a node ignores
        // the header and carries on with the next one (RFC 8200 4.4).
        const ROUTING: [u8; 6] = [253, 0, 0, 0, 0, 0];
        let raw = |data: &[u8]| {
            let header = Ipv6RawExtHeader::new_raw(next, data).expect("8-byte extension header");
            header.to_bytes().to_vec()
        };
        match self {
            ExtHeader::HopByHop | ExtHeader::DestOpts => raw(&PAD_N),
            ExtHeader::Routing => raw(&ROUTING),
            ExtHeader::Fragment { offset, more, id } => {
                Ipv6FragmentHeader::new(next, frag_offset(offset), more, id)
                    .to_bytes()
                    .to_vec()
            }
        }
    }
}

/// An IPv6 header being built: set its fields and extension headers, then choose what it carries.
#[derive(Clone, Debug)]
pub struct Ipv6Builder {
    link: Packet,
    header: Ipv6Header,
    exts: Vec<ExtHeader>,
}

impl Ipv6Builder {
    /// Sets the hop limit (default 64).
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.header.hop_limit = hop_limit;
        self
    }

    /// Sets the traffic class: DSCP in the upper six bits, ECN in the lower two (default 0).
    pub fn traffic_class(mut self, traffic_class: u8) -> Self {
        self.header.traffic_class = traffic_class;
        self
    }

    /// Sets the flow label (20 bits, default 0).
    pub fn flow_label(mut self, label: u32) -> Self {
        self.header.flow_label = Ipv6FlowLabel::try_new(label).expect("a flow label has 20 bits");
        self
    }

    /// Appends an extension header after the fixed header and any added before it.
    pub fn ipv6_ext(mut self, ext: ExtHeader) -> Self {
        self.exts.push(ext);
        self
    }

    /// Carries TCP from `sport` to `dport`; set flags on the result.
    pub fn tcp(self, sport: u16, dport: u16) -> TcpBuilder {
        TcpBuilder::new(self.link, Net::V6(self.header, self.exts), sport, dport)
    }

    /// Carries UDP from `sport` to `dport`.
    pub fn udp(self, sport: u16, dport: u16) -> PayloadBuilder {
        self.carry(L4::Udp { sport, dport })
    }

    /// Carries an ICMPv6 echo request with identifier `id` and sequence number `seq`.
    pub fn icmpv6_echo_request(self, id: u16, seq: u16) -> PayloadBuilder {
        self.carry(L4::Icmpv6(Icmpv6Type::EchoRequest(IcmpEchoHeader {
            id,
            seq,
        })))
    }

    /// Carries an ICMPv6 echo reply with identifier `id` and sequence number `seq`.
    pub fn icmpv6_echo_reply(self, id: u16, seq: u16) -> PayloadBuilder {
        self.carry(L4::Icmpv6(Icmpv6Type::EchoReply(IcmpEchoHeader {
            id,
            seq,
        })))
    }

    /// Carries ICMPv6 packet too big advertising `mtu`, quoting `quoted` as given.
    pub fn icmpv6_packet_too_big(self, mtu: u32, quoted: &[u8]) -> PayloadBuilder {
        self.carry(L4::Icmpv6(Icmpv6Type::PacketTooBig { mtu }))
            .payload(quoted)
    }

    /// Carries ICMPv6 destination unreachable with `code` (0..=6), quoting `quoted` as given.
    pub fn icmpv6_dest_unreachable(self, code: u8, quoted: &[u8]) -> PayloadBuilder {
        let code = icmpv6::DestUnreachableCode::from_u8(code)
            .expect("ICMPv6 destination unreachable codes are 0..=6");
        self.carry(L4::Icmpv6(Icmpv6Type::DestinationUnreachable(code)))
            .payload(quoted)
    }

    /// Carries ICMPv6 hop limit exceeded in transit (type 3, code 0), quoting `quoted`.
    pub fn icmpv6_time_exceeded(self, quoted: &[u8]) -> PayloadBuilder {
        let code = icmpv6::TimeExceededCode::HopLimitExceeded;
        self.carry(L4::Icmpv6(Icmpv6Type::TimeExceeded(code)))
            .payload(quoted)
    }

    /// Tunnels `inner` (an IP packet, header on): next header 41 for IPv6 inside, 4 for IPv4.
    pub fn ip6ip6(self, inner: &[u8]) -> PayloadBuilder {
        self.carry(L4::Raw(tunnel_protocol(inner))).payload(inner)
    }

    /// Carries only the bytes given to `payload`, under next header `protocol` (for fragments).
    pub fn raw(self, protocol: u8) -> PayloadBuilder {
        self.carry(L4::Raw(IpNumber(protocol)))
    }

    fn carry(self, l4: L4) -> PayloadBuilder {
        PayloadBuilder::new(self.link, Net::V6(self.header, self.exts), l4)
    }
}

/// A TCP header being built: set flags, then add a payload or build.
#[derive(Clone, Debug)]
pub struct TcpBuilder {
    link: Packet,
    net: Net,
    header: TcpHeader,
}

impl TcpBuilder {
    fn new(link: Packet, net: Net, sport: u16, dport: u16) -> TcpBuilder {
        let header = TcpHeader::new(sport, dport, 0, DEFAULT_TCP_WINDOW);
        TcpBuilder { link, net, header }
    }

    /// Sets the SYN flag.
    pub fn syn(mut self) -> Self {
        self.header.syn = true;
        self
    }

    /// Sets the ACK flag.
    pub fn ack(mut self) -> Self {
        self.header.ack = true;
        self
    }

    /// Sets the FIN flag.
    pub fn fin(mut self) -> Self {
        self.header.fin = true;
        self
    }

    /// Sets the RST flag.
    pub fn rst(mut self) -> Self {
        self.header.rst = true;
        self
    }

    /// Sets the sequence number (default 0).
    pub fn seq(mut self, seq: u32) -> Self {
        self.header.sequence_number = seq;
        self
    }

    /// Appends `data` after the TCP header.
    pub fn payload(self, data: &[u8]) -> PayloadBuilder {
        PayloadBuilder::new(self.link, self.net, L4::Tcp(self.header)).payload(data)
    }

    /// Serializes the frame with no TCP payload.
    pub fn build(self) -> Vec<u8> {
        self.payload(&[]).build()
    }
}

/// A packet whose headers are all chosen: append payload bytes, then build.
#[derive(Clone, Debug)]
pub struct PayloadBuilder {
    link: Packet,
    net: Net,
    l4: L4,
    payload: Vec<u8>,
}

impl PayloadBuilder {
    fn new(link: Packet, net: Net, l4: L4) -> PayloadBuilder {
        PayloadBuilder {
            link,
            net,
            l4,
            payload: Vec::new(),
        }
    }

    /// Appends `data` after the L4 header (after the inner or quoted packet, if any).
    pub fn payload(mut self, data: &[u8]) -> Self {
        self.payload.extend_from_slice(data);
        self
    }

    /// Serializes the frame, filling in lengths, next headers and checksums.
    pub fn build(self) -> Vec<u8> {
        let (protocol, transport) = transport_bytes(&self.l4, &self.net, &self.payload);
        let (ether_type, ip) = match self.net {
            Net::V4(mut header) => {
                header.protocol = protocol;
                header
                    .set_payload_len(transport.len())
                    .expect("IPv4 packet fits in 64 KiB");
                header.header_checksum = header.calc_header_checksum();
                (
                    EtherType::IPV4,
                    [&header.to_bytes()[..], &transport].concat(),
                )
            }
            Net::V6(mut header, exts) => {
                // Chain from the transport back: each header names the one that follows it.
                let mut next = protocol;
                let mut rest = transport;
                for ext in exts.iter().rev() {
                    rest = [ext.to_bytes(next), rest].concat();
                    next = ext.ip_number();
                }
                header.next_header = next;
                header
                    .set_payload_length(rest.len())
                    .expect("IPv6 payload fits in 64 KiB");
                (EtherType::IPV6, [&header.to_bytes()[..], &rest].concat())
            }
        };
        [self.link.header_bytes(ether_type), ip].concat()
    }
}

/// The network header of a packet being built; lengths and next headers are set by `build`.
#[derive(Clone, Debug)]
enum Net {
    V4(Ipv4Header),
    V6(Ipv6Header, Vec<ExtHeader>),
}

/// What the IP header carries; checksums are computed by `build`.
#[derive(Clone, Debug)]
enum L4 {
    Tcp(TcpHeader),
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmpv4(Icmpv4Type),
    Icmpv6(Icmpv6Type),
    /// No header of ours: the payload is all there is (a tunnelled packet, a fragment).
    Raw(IpNumber),
}

/// The IP protocol and the bytes after the IP header (and its extension headers).
fn transport_bytes(l4: &L4, net: &Net, payload: &[u8]) -> (IpNumber, Vec<u8>) {
    const FITS: &str = "L4 segment fits in 64 KiB";
    let (protocol, header) = match l4 {
        L4::Tcp(tcp) => {
            let mut tcp = tcp.clone();
            tcp.checksum = match net {
                Net::V4(ip) => tcp.calc_checksum_ipv4(ip, payload),
                Net::V6(ip, _) => tcp.calc_checksum_ipv6(ip, payload),
            }
            .expect(FITS);
            (IpNumber::TCP, tcp.to_bytes().to_vec())
        }
        L4::Udp { sport, dport } => {
            let udp = match net {
                Net::V4(ip) => UdpHeader::with_ipv4_checksum(*sport, *dport, ip, payload),
                Net::V6(ip, _) => UdpHeader::with_ipv6_checksum(*sport, *dport, ip, payload),
            }
            .expect(FITS);
            (IpNumber::UDP, udp.to_bytes().to_vec())
        }
        L4::Icmpv4(icmp_type) => {
            let icmp = Icmpv4Header::with_checksum(icmp_type.clone(), payload);
            (IpNumber::ICMP, icmp.to_bytes().to_vec())
        }
        L4::Icmpv6(icmp_type) => {
            let Net::V6(ip, _) = net else {
                unreachable!("only Ipv6Builder carries ICMPv6");
            };
            let icmp = Icmpv6Header::with_checksum(*icmp_type, ip.source, ip.destination, payload)
                .expect(FITS);
            (IpNumber::IPV6_ICMP, icmp.to_bytes().to_vec())
        }
        L4::Raw(protocol) => (*protocol, Vec::new()),
    };
    (protocol, [header, payload.to_vec()].concat())
}

/// The tunnel protocol for an inner packet, from its version nibble.
fn tunnel_protocol(inner: &[u8]) -> IpNumber {
    match inner.first().map(|b| b >> 4) {
        Some(4) => IpNumber::IPV4,
        Some(6) => IpNumber::IPV6,
        _ => panic!("inner packet is not IP: {}", dump(inner)),
    }
}

fn frag_offset(offset_bytes: u16) -> IpFragOffset {
    assert!(
        offset_bytes.is_multiple_of(8),
        "fragment offset {offset_bytes} is not a multiple of 8"
    );
    IpFragOffset::try_new(offset_bytes / 8).expect("13-bit fragment offset")
}

/// The IP packet in `frame` (from the IP header on), past Ethernet and an optional VLAN tag.
pub fn ip_bytes(frame: &[u8]) -> &[u8] {
    &frame[ip_offset(frame)..]
}

/// Cuts `frame` to its first `len` bytes, for truncated-packet fixtures.
pub fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(
        len <= frame.len(),
        "cannot truncate a {}-byte frame to {len} bytes",
        frame.len()
    );
    frame.truncate(len);
    frame
}

/// Sets the IP version nibble (an IPv4 header keeps a valid checksum).
pub fn set_ip_version(frame: &mut [u8], version: u8) {
    assert!(version < 16, "the version field has 4 bits");
    let ip = ip_offset(frame);
    let checksum = (frame[ip] >> 4 == 4).then_some(ip + 10);
    let word = read_word(frame, ip);
    patch_word(
        frame,
        ip,
        (word & 0x0fff) | u16::from(version) << 12,
        checksum,
    );
}

/// Sets the IPv4 header length field (in 4-byte words), keeping the header checksum valid.
pub fn set_ipv4_ihl(frame: &mut [u8], ihl: u8) {
    assert!(ihl < 16, "the IHL field has 4 bits");
    let ip = ipv4_offset(frame);
    let word = read_word(frame, ip);
    patch_word(
        frame,
        ip,
        (word & 0xf0ff) | u16::from(ihl) << 8,
        Some(ip + 10),
    );
}

/// Sets the IPv4 total length field, keeping the header checksum valid.
pub fn set_ipv4_total_len(frame: &mut [u8], len: u16) {
    let ip = ipv4_offset(frame);
    patch_word(frame, ip + 2, len, Some(ip + 10));
}

/// Sets the IPv6 payload length field.
pub fn set_ipv6_payload_len(frame: &mut [u8], len: u16) {
    let ip = ip_offset(frame);
    assert_eq!(frame[ip] >> 4, 6, "not an IPv6 frame:\n{}", describe(frame));
    patch_word(frame, ip + 4, len, None);
}

/// Sets the TCP data offset (in 4-byte words), keeping the TCP checksum valid.
pub fn set_tcp_data_offset(frame: &mut [u8], data_offset: u8) {
    assert!(data_offset < 16, "the data offset field has 4 bits");
    let tcp = tcp_offset(frame);
    let word = read_word(frame, tcp + 12);
    let word = (word & 0x0fff) | u16::from(data_offset) << 12;
    patch_word(frame, tcp + 12, word, Some(tcp + 16));
}

fn ip_offset(frame: &[u8]) -> usize {
    let ether_type = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let offset = match ether_type(12) {
        Some(t) if t == EtherType::VLAN_TAGGED_FRAME.0 => ETH_LEN + VLAN_LEN,
        _ => ETH_LEN,
    };
    match ether_type(offset - 2).map(EtherType) {
        Some(EtherType::IPV4 | EtherType::IPV6) => offset,
        _ => panic!("not an IP frame:\n{}", describe(frame)),
    }
}

fn ipv4_offset(frame: &[u8]) -> usize {
    let ip = ip_offset(frame);
    assert_eq!(frame[ip] >> 4, 4, "not an IPv4 frame:\n{}", describe(frame));
    ip
}

/// Where the TCP header starts, past IPv4 options or IPv6 extension headers.
fn tcp_offset(frame: &[u8]) -> usize {
    let ip = ip_offset(frame);
    let (protocol, offset) = match frame[ip] >> 4 {
        4 => (
            IpNumber(frame[ip + 9]),
            ip + usize::from(frame[ip] & 0x0f) * 4,
        ),
        6 => {
            let exts = &frame[ip + Ipv6Header::LEN..];
            let (next, rest) =
                Ipv6Header::skip_all_header_extensions_in_slice(exts, IpNumber(frame[ip + 6]))
                    .expect("extension headers fit in the frame");
            (next, frame.len() - rest.len())
        }
        version => panic!("IP version {version}:\n{}", describe(frame)),
    };
    assert_eq!(protocol, IpNumber::TCP, "not TCP:\n{}", describe(frame));
    offset
}

fn read_word(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Writes a 16-bit word and updates the checksum at `checksum_at` incrementally (RFC 1624,
/// eqn. 3). Done by hand because etherparse only checksums headers it can represent, and these
/// headers are the broken ones.
fn patch_word(frame: &mut [u8], at: usize, new: u16, checksum_at: Option<usize>) {
    let old = read_word(frame, at);
    frame[at..at + 2].copy_from_slice(&new.to_be_bytes());
    if let Some(c) = checksum_at {
        let mut sum = u32::from(!read_word(frame, c)) + u32::from(!old) + u32::from(new);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[c..c + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
}

/// Panics unless `actual == expected`, printing both frames decoded and the first differing byte.
#[track_caller]
pub fn assert_frame_eq(actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let (a, e) = (describe(actual), describe(expected));
    panic!(
        "frames differ at byte {at} (actual {} bytes, expected {}); lines marked ! differ\n\
         actual   from byte {at}: {}\n\
         expected from byte {at}: {}\n\
         --- actual\n{}--- expected\n{}",
        actual.len(),
        expected.len(),
        dump(actual.get(at..).unwrap_or_default()),
        dump(expected.get(at..).unwrap_or_default()),
        mark_differences(&a, &e),
        mark_differences(&e, &a),
    );
}

/// `text` with each line that differs from the same line of `other` marked `!`.
fn mark_differences(text: &str, other: &str) -> String {
    let mut other = other.lines();
    let mut out = String::new();
    for line in text.lines() {
        let mark = if other.next() == Some(line) { ' ' } else { '!' };
        let _ = writeln!(out, "{mark} {line}");
    }
    out
}

/// Decodes `frame` one line per layer (tunnelled and quoted packets indented), checking checksums.
pub fn describe(frame: &[u8]) -> String {
    let mut out = Lines::default();
    let Ok((eth, mut rest)) = Ethernet2Header::from_slice(frame) else {
        out.push(0, format!("short frame, {}", dump(frame)));
        return out.text;
    };
    out.push(
        0,
        format!(
            "eth {} > {} type {:#06x}",
            mac(eth.source),
            mac(eth.destination),
            eth.ether_type.0
        ),
    );
    let mut ether_type = eth.ether_type;
    // Every tag gets a line, so that a double-tagged frame reads as one.
    while matches!(
        ether_type,
        EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING
    ) {
        let Ok((tag, after)) = SingleVlanHeader::from_slice(rest) else {
            out.push(0, format!("vlan truncated, {}", dump(rest)));
            return out.text;
        };
        out.push(
            0,
            format!(
                "vlan {} pcp {} type {:#06x}",
                tag.vlan_id.value(),
                tag.pcp.value(),
                tag.ether_type.0
            ),
        );
        ether_type = tag.ether_type;
        rest = after;
    }
    match ether_type {
        EtherType::IPV4 | EtherType::IPV6 => describe_ip(rest, 0, &mut out),
        _ => out.payload(0, rest),
    }
    out.text
}

/// The text `describe` builds, one indented line at a time.
#[derive(Default)]
struct Lines {
    text: String,
}

impl Lines {
    fn push(&mut self, depth: usize, line: String) {
        let _ = writeln!(self.text, "{:width$}{line}", "", width = depth * 2);
    }

    fn payload(&mut self, depth: usize, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.push(depth, format!("payload {}", dump(bytes)));
        }
    }
}

/// Source and destination, for the pseudo header of TCP, UDP and ICMPv6 checksums. `describe`
/// sums raw bytes instead of calling etherparse's per-header checksum functions because it also
/// has to judge segments those cannot represent (cut short, odd data offsets).
enum Addrs {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Addrs {
    fn pseudo_header(&self, protocol: IpNumber, len: usize) -> Sum16BitWords {
        match self {
            Addrs::V4(src, dst) => Sum16BitWords::new()
                .add_4bytes(*src)
                .add_4bytes(*dst)
                .add_2bytes([0, protocol.0])
                .add_2bytes((len as u16).to_be_bytes()),
            Addrs::V6(src, dst) => Sum16BitWords::new()
                .add_16bytes(*src)
                .add_16bytes(*dst)
                .add_4bytes((len as u32).to_be_bytes())
                .add_2bytes([0, protocol.0]),
        }
    }
}

/// What an IP layer hands to the layer it carries.
struct Carried<'a> {
    protocol: IpNumber,
    addrs: Addrs,
    bytes: &'a [u8],
    /// The whole segment is here: not truncated and not a fragment, so checksums can be checked.
    whole: bool,
}

fn describe_ip(ip: &[u8], depth: usize, out: &mut Lines) {
    match ip.first().map(|b| b >> 4) {
        Some(4) => describe_ipv4(ip, depth, out),
        Some(6) => describe_ipv6(ip, depth, out),
        _ => out.push(depth, format!("not IP, {}", dump(ip))),
    }
}

fn describe_ipv4(ip: &[u8], depth: usize, out: &mut Lines) {
    let header = match Ipv4Header::from_slice(ip) {
        Ok((header, _)) => header,
        Err(e) => return out.push(depth, format!("ipv4 unparsable ({e}), {}", dump(ip))),
    };
    let header_len = header.header_len();
    let total = usize::from(header.total_len);
    let end = total.clamp(header_len, ip.len());
    let mut line = format!(
        "ipv4 {} > {} proto {} ttl {} tos {:#04x} id {}",
        Ipv4Addr::from(header.source),
        Ipv4Addr::from(header.destination),
        protocol_name(header.protocol),
        header.time_to_live,
        header.dscp.value() << 2 | header.ecn.value(),
        header.identification,
    );
    if header.dont_fragment {
        line += " DF";
    }
    if header.more_fragments {
        line += " MF";
    }
    let offset = header.fragment_offset.byte_offset();
    if offset > 0 {
        line += &format!(" frag-offset {offset}");
    }
    line += &format!(" len {total}");
    if total > ip.len() {
        line += &format!(" (only {} here)", ip.len());
    }
    if !header.options.is_empty() {
        line += &format!(" options {}", hex(header.options.as_slice()));
    }
    line += &format!(
        " ihl {} {}",
        header.ihl(),
        checksum(Sum16BitWords::new(), &ip[..header_len], 10)
    );
    out.push(depth, line);

    let carried = Carried {
        protocol: header.protocol,
        addrs: Addrs::V4(header.source, header.destination),
        bytes: &ip[header_len..end],
        whole: total <= ip.len() && !header.more_fragments,
    };
    if offset > 0 {
        out.push(depth, format!("fragment data, {}", dump(carried.bytes)));
    } else {
        describe_l4(&carried, depth, out);
    }
    if end < ip.len() {
        out.push(depth, format!("trailing {}", dump(&ip[end..])));
    }
}

fn describe_ipv6(ip: &[u8], depth: usize, out: &mut Lines) {
    let header = match Ipv6Header::from_slice(ip) {
        Ok((header, _)) => header,
        Err(e) => return out.push(depth, format!("ipv6 unparsable ({e}), {}", dump(ip))),
    };
    let total = Ipv6Header::LEN + usize::from(header.payload_length);
    let end = total.min(ip.len());
    let mut line = format!(
        "ipv6 {} > {} next {} hop-limit {} tc {:#04x} flow {:#x} payload-len {}",
        header.source_addr(),
        header.destination_addr(),
        protocol_name(header.next_header),
        header.hop_limit,
        header.traffic_class,
        header.flow_label.value(),
        header.payload_length,
    );
    if total > ip.len() {
        line += &format!(" (only {} here)", ip.len() - Ipv6Header::LEN);
    }
    out.push(depth, line);

    let mut next = header.next_header;
    let mut rest = &ip[Ipv6Header::LEN..end];
    let mut fragment = (0, false);
    loop {
        let parsed = match next {
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS => {
                Ipv6RawExtHeader::from_slice(rest).map(|(ext, after)| {
                    let line = match next {
                        IpNumber::IPV6_HEADER_HOP_BY_HOP => {
                            format!("hop-by-hop len {}", ext.header_len())
                        }
                        IpNumber::IPV6_DESTINATION_OPTIONS => {
                            format!("dest-opts len {}", ext.header_len())
                        }
                        _ => format!(
                            "routing type {} segments-left {} len {}",
                            ext.payload()[0],
                            ext.payload()[1],
                            ext.header_len()
                        ),
                    };
                    (ext.next_header, line, after)
                })
            }
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                Ipv6FragmentHeader::from_slice(rest).map(|(ext, after)| {
                    fragment = (ext.fragment_offset.byte_offset(), ext.more_fragments);
                    let line = format!(
                        "fragment offset {} more {} id {:#x}",
                        fragment.0, fragment.1, ext.identification
                    );
                    (ext.next_header, line, after)
                })
            }
            _ => break,
        };
        match parsed {
            Ok((after_next, line, after)) => {
                out.push(
                    depth,
                    format!("ext {line} next {}", protocol_name(after_next)),
                );
                next = after_next;
                rest = after;
            }
            Err(e) => return out.push(depth, format!("ext unparsable ({e}), {}", dump(rest))),
        }
    }

    let carried = Carried {
        protocol: next,
        addrs: Addrs::V6(header.source, header.destination),
        bytes: rest,
        whole: total <= ip.len() && !fragment.1,
    };
    if fragment.0 > 0 {
        out.push(depth, format!("fragment data, {}", dump(carried.bytes)));
    } else {
        describe_l4(&carried, depth, out);
    }
    if end < ip.len() {
        out.push(depth, format!("trailing {}", dump(&ip[end..])));
    }
}

fn describe_l4(carried: &Carried, depth: usize, out: &mut Lines) {
    let seg = carried.bytes;
    let pseudo = || carried.addrs.pseudo_header(carried.protocol, seg.len());
    let checked = |sum: Sum16BitWords, at: usize| {
        if carried.whole {
            checksum(sum, seg, at)
        } else {
            format!("csum {:#06x} unchecked (partial)", read_word(seg, at))
        }
    };
    match carried.protocol {
        IpNumber::TCP => match TcpSlice::from_slice(seg) {
            Ok(tcp) => {
                out.push(
                    depth,
                    format!(
                        "tcp {} > {} [{}] seq {} ack {} win {} doff {} {}",
                        tcp.source_port(),
                        tcp.destination_port(),
                        tcp_flags(&tcp),
                        tcp.sequence_number(),
                        tcp.acknowledgment_number(),
                        tcp.window_size(),
                        tcp.data_offset(),
                        checked(pseudo(), 16),
                    ),
                );
                out.payload(depth, tcp.payload());
            }
            Err(e) => out.push(
                depth,
                format!("tcp unparsable ({e}){}, {}", ports(seg), dump(seg)),
            ),
        },
        IpNumber::UDP => match UdpHeader::from_slice(seg) {
            Ok((udp, payload)) => {
                let csum = match (udp.checksum, &carried.addrs) {
                    (0, Addrs::V4(..)) => "csum none".to_string(),
                    _ => checked(pseudo(), 6),
                };
                out.push(
                    depth,
                    format!(
                        "udp {} > {} len {} {csum}",
                        udp.source_port, udp.destination_port, udp.length
                    ),
                );
                out.payload(depth, payload);
            }
            Err(e) => out.push(
                depth,
                format!("udp unparsable ({e}){}, {}", ports(seg), dump(seg)),
            ),
        },
        IpNumber::ICMP => match Icmpv4Slice::from_slice(seg) {
            Ok(icmp) => {
                out.push(
                    depth,
                    format!(
                        "icmpv4 type {} code {} {:?} {}",
                        icmp.type_u8(),
                        icmp.code_u8(),
                        icmp.icmp_type(),
                        checked(Sum16BitWords::new(), 2),
                    ),
                );
                // Destination unreachable, source quench, redirect, time exceeded, parameter
                // problem: these quote the packet that caused them.
                match icmp.type_u8() {
                    3 | 4 | 5 | 11 | 12 => describe_ip(icmp.payload(), depth + 1, out),
                    _ => out.payload(depth, icmp.payload()),
                }
            }
            Err(e) => out.push(depth, format!("icmpv4 unparsable ({e}), {}", dump(seg))),
        },
        IpNumber::IPV6_ICMP => match Icmpv6Slice::from_slice(seg) {
            Ok(icmp) => {
                out.push(
                    depth,
                    format!(
                        "icmpv6 type {} code {} {:?} {}",
                        icmp.type_u8(),
                        icmp.code_u8(),
                        icmp.icmp_type(),
                        checked(pseudo(), 2),
                    ),
                );
                // Types 1 to 4 are the errors, and they quote the packet that caused them.
                match icmp.type_u8() {
                    1..=4 => describe_ip(icmp.payload(), depth + 1, out),
                    _ => out.payload(depth, icmp.payload()),
                }
            }
            Err(e) => out.push(depth, format!("icmpv6 unparsable ({e}), {}", dump(seg))),
        },
        IpNumber::IPV4 | IpNumber::IPV6 => describe_ip(seg, depth + 1, out),
        _ => out.payload(depth, seg),
    }
}

/// `csum 0x1234 ok`, or what it should have been: `sum` already holds any pseudo header.
fn checksum(sum: Sum16BitWords, bytes: &[u8], at: usize) -> String {
    let stored = read_word(bytes, at);
    // Summing the bytes with their checksum in place gives all ones when it is right.
    if sum.clone().add_slice(bytes).ones_complement() == 0 {
        return format!("csum {stored:#06x} ok");
    }
    let mut zeroed = bytes.to_vec();
    zeroed[at..at + 2].fill(0);
    let want = sum.add_slice(&zeroed).ones_complement().to_be();
    format!("csum {stored:#06x} BAD (want {want:#06x})")
}

fn tcp_flags(tcp: &TcpSlice) -> String {
    let flags = [
        (tcp.fin(), "FIN"),
        (tcp.syn(), "SYN"),
        (tcp.rst(), "RST"),
        (tcp.psh(), "PSH"),
        (tcp.ack(), "ACK"),
        (tcp.urg(), "URG"),
        (tcp.ece(), "ECE"),
        (tcp.cwr(), "CWR"),
    ];
    let set: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
    set.join(",")
}

/// ` 1234 > 80` when a cut-short TCP or UDP header still holds its ports (as in ICMP quotes).
fn ports(seg: &[u8]) -> String {
    match seg {
        [a, b, c, d, ..] => format!(
            " {} > {}",
            u16::from_be_bytes([*a, *b]),
            u16::from_be_bytes([*c, *d])
        ),
        _ => String::new(),
    }
}

fn protocol_name(protocol: IpNumber) -> String {
    match protocol.keyword_str() {
        Some(name) => format!("{}({})", name, protocol.0),
        None => protocol.0.to_string(),
    }
}

fn mac(addr: [u8; 6]) -> String {
    let parts: Vec<String> = addr.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// `N bytes: <hex>`, cut after 32 bytes: enough to spot a difference, short enough to read.
fn dump(bytes: &[u8]) -> String {
    const SHOWN: usize = 32;
    let more = if bytes.len() > SHOWN { "…" } else { "" };
    format!(
        "{} bytes: {}{more}",
        bytes.len(),
        hex(&bytes[..bytes.len().min(SHOWN)])
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        LinkExtHeader, LinkHeader, NetHeaders, NetSlice, PacketHeaders, PayloadSlice, SlicedPacket,
        TransportHeader, TransportSlice,
    };

    const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 10);

    fn headers(frame: &[u8]) -> PacketHeaders<'_> {
        PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the frame")
    }

    fn ipv4(frame: &[u8]) -> Ipv4Header {
        match headers(frame).net {
            Some(NetHeaders::Ipv4(ip, _)) => ip,
            other => panic!("not IPv4: {other:?}"),
        }
    }

    fn ipv6(frame: &[u8]) -> Ipv6Header {
        match headers(frame).net {
            Some(NetHeaders::Ipv6(ip, _)) => ip,
            other => panic!("not IPv6: {other:?}"),
        }
    }

    fn l4_payload<'a>(headers: &PacketHeaders<'a>) -> &'a [u8] {
        match headers.payload {
            PayloadSlice::Tcp(p)
            | PayloadSlice::Udp(p)
            | PayloadSlice::Icmpv4(p)
            | PayloadSlice::Icmpv6(p) => p,
            ref other => panic!("no L4 payload: {other:?}"),
        }
    }

    /// The IPv4 header checksum (over options too) as etherparse computes it.
    fn assert_ipv4_checksum(frame: &[u8]) {
        let ip = ipv4(frame);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    }

    /// TCP, UDP, ICMPv4 or ICMPv6 checksum of `frame`, recomputed by etherparse.
    fn assert_l4_checksum(frame: &[u8]) {
        let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse slices the frame");
        let (source, destination) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                (h.source().to_vec(), h.destination().to_vec())
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                (h.source().to_vec(), h.destination().to_vec())
            }
            other => panic!("no IP layer: {other:?}"),
        };
        let v4 = |a: &[u8]| <[u8; 4]>::try_from(a).unwrap();
        let v6 = |a: &[u8]| <[u8; 16]>::try_from(a).unwrap();
        match sliced.transport.expect("a transport layer") {
            TransportSlice::Tcp(tcp) => {
                let want = match source.len() {
                    4 => tcp.calc_checksum_ipv4(v4(&source), v4(&destination)),
                    _ => tcp.calc_checksum_ipv6(v6(&source), v6(&destination)),
                };
                assert_eq!(tcp.checksum(), want.unwrap(), "TCP checksum");
            }
            TransportSlice::Udp(udp) => {
                let header = udp.to_header();
                let want = match source.len() {
                    4 => {
                        header.calc_checksum_ipv4_raw(v4(&source), v4(&destination), udp.payload())
                    }
                    _ => {
                        header.calc_checksum_ipv6_raw(v6(&source), v6(&destination), udp.payload())
                    }
                };
                assert_eq!(udp.checksum(), want.unwrap(), "UDP checksum");
            }
            TransportSlice::Icmpv4(icmp) => {
                let want = icmp.icmp_type().calc_checksum(icmp.payload());
                assert_eq!(icmp.checksum(), want, "ICMPv4 checksum");
            }
            TransportSlice::Icmpv6(icmp) => {
                assert!(
                    icmp.is_checksum_valid(v6(&source), v6(&destination)),
                    "ICMPv6 checksum"
                );
            }
            other => panic!("unexpected transport {other:?}"),
        }
    }

    #[test]
    fn ipv4_tcp_round_trips() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .ttl(17)
            .dont_fragment()
            .id(0x1234)
            .tos(0xb9)
            .tcp(40000, 80)
            .syn()
            .seq(1000)
            .payload(b"hello")
            .build();
        assert_eq!(frame.len(), ETH_LEN + 20 + 20 + 5);
        let parsed = headers(&frame);
        let Some(LinkHeader::Ethernet2(eth)) = &parsed.link else {
            panic!("no Ethernet header");
        };
        assert_eq!(eth.source, MAC_CLIENT);
        assert_eq!(eth.destination, MAC_LB);
        assert_eq!(eth.ether_type, EtherType::IPV4);
        let ip = ipv4(&frame);
        assert_eq!(
            (ip.source, ip.destination),
            (CLIENT4.octets(), VIP4.octets())
        );
        assert_eq!(ip.protocol, IpNumber::TCP);
        assert_eq!(ip.time_to_live, 17);
        assert!(ip.dont_fragment && !ip.more_fragments);
        assert_eq!(ip.identification, 0x1234);
        assert_eq!((ip.dscp.value(), ip.ecn.value()), (0xb9 >> 2, 0b01));
        assert_eq!(ip.total_len, 45);
        let Some(TransportHeader::Tcp(tcp)) = &parsed.transport else {
            panic!("no TCP header");
        };
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
        assert!(tcp.syn && !tcp.ack && !tcp.fin && !tcp.rst);
        assert_eq!(tcp.sequence_number, 1000);
        assert_eq!(tcp.window_size, 65535);
        assert_eq!(l4_payload(&parsed), b"hello");
        assert_ipv4_checksum(&frame);
        assert_l4_checksum(&frame);
    }

    #[test]
    fn headers_default_to_ttl_64_no_flags_and_no_options() {
        let v4 = Packet::eth(MAC_CLIENT, MAC_LB).ipv4(CLIENT4, VIP4);
        let ip = ipv4(&v4.clone().udp(1, 2).build());
        assert_eq!(ip.time_to_live, 64);
        assert_eq!(ip.identification, 0);
        assert!(!ip.dont_fragment && !ip.more_fragments);
        assert_eq!((ip.dscp.value(), ip.ecn.value()), (0, 0));
        assert!(ip.options.is_empty());
        let ip = ipv6(
            &Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT6, VIP6)
                .udp(1, 2)
                .build(),
        );
        assert_eq!(ip.hop_limit, 64);
        assert_eq!((ip.traffic_class, ip.flow_label.value()), (0, 0));
        let Some(TransportHeader::Tcp(tcp)) = headers(&v4.tcp(1, 2).build()).transport else {
            panic!("no TCP header");
        };
        assert_eq!((tcp.sequence_number, tcp.acknowledgment_number), (0, 0));
        assert!(!(tcp.syn || tcp.ack || tcp.fin || tcp.rst || tcp.psh));
        assert_eq!(tcp.window_size, 65535);
    }

    #[test]
    fn tcp_flags_are_set_with_a_valid_checksum() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .tcp(1, 2)
            .ack()
            .fin()
            .rst()
            .build();
        let Some(TransportHeader::Tcp(tcp)) = headers(&frame).transport else {
            panic!("no TCP header");
        };
        assert!(tcp.ack && tcp.fin && tcp.rst && !tcp.syn);
        assert_l4_checksum(&frame);
    }

    #[test]
    fn udp_and_tcp_checksums_over_both_pseudo_headers() {
        let v4 = || Packet::eth(MAC_CLIENT, MAC_LB).ipv4(CLIENT4, VIP4);
        let v6 = || Packet::eth(MAC_CLIENT, MAC_LB).ipv6(CLIENT6, VIP6);
        let frames = [
            v4().udp(5353, 53).payload(b"query").build(),
            v6().udp(5353, 53).payload(b"query").build(),
            v4().tcp(40000, 443).ack().payload(b"odd").build(),
            v6().tcp(40000, 443).ack().payload(b"odd").build(),
        ];
        for frame in &frames {
            assert_l4_checksum(frame);
        }
        assert_eq!(l4_payload(&headers(&frames[1])), b"query");
        assert_eq!(l4_payload(&headers(&frames[3])), b"odd");
        let Some(TransportHeader::Udp(udp)) = headers(&frames[1]).transport else {
            panic!("no UDP header");
        };
        assert_eq!(
            (udp.source_port, udp.destination_port, udp.length),
            (5353, 53, 13)
        );
    }

    #[test]
    fn ipv6_udp_round_trips() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .hop_limit(3)
            .traffic_class(0x2e)
            .flow_label(0xabcde)
            .udp(1000, 53)
            .payload(b"abc")
            .build();
        assert_eq!(frame.len(), ETH_LEN + 40 + 8 + 3);
        let ip = ipv6(&frame);
        assert_eq!((ip.source_addr(), ip.destination_addr()), (CLIENT6, VIP6));
        assert_eq!(ip.next_header, IpNumber::UDP);
        assert_eq!(ip.payload_length, 11);
        assert_eq!(ip.hop_limit, 3);
        assert_eq!(ip.traffic_class, 0x2e);
        assert_eq!(ip.flow_label.value(), 0xabcde);
        assert_eq!(l4_payload(&headers(&frame)), b"abc");
        assert_l4_checksum(&frame);
    }

    #[test]
    fn icmp_echo_requests_and_replies_have_valid_checksums() {
        let request4 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .icmpv4_echo_request(7, 1)
            .payload(b"ping")
            .build();
        let reply4 = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(VIP4, CLIENT4)
            .icmpv4_echo_reply(7, 1)
            .payload(b"ping")
            .build();
        let request6 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .icmpv6_echo_request(7, 1)
            .payload(b"ping")
            .build();
        let reply6 = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv6(VIP6, CLIENT6)
            .icmpv6_echo_reply(7, 1)
            .payload(b"ping")
            .build();
        let echo = IcmpEchoHeader { id: 7, seq: 1 };
        for (frame, want) in [
            (&request4, Icmpv4Type::EchoRequest(echo)),
            (&reply4, Icmpv4Type::EchoReply(echo)),
        ] {
            let Some(TransportHeader::Icmpv4(icmp)) = headers(frame).transport else {
                panic!("no ICMPv4 header");
            };
            assert_eq!(icmp.icmp_type, want);
            assert_eq!(ipv4(frame).protocol, IpNumber::ICMP);
            assert_eq!(l4_payload(&headers(frame)), b"ping");
            assert_l4_checksum(frame);
        }
        for (frame, want) in [
            (&request6, Icmpv6Type::EchoRequest(echo)),
            (&reply6, Icmpv6Type::EchoReply(echo)),
        ] {
            let Some(TransportHeader::Icmpv6(icmp)) = headers(frame).transport else {
                panic!("no ICMPv6 header");
            };
            assert_eq!(icmp.icmp_type, want);
            assert_eq!(ipv6(frame).next_header, IpNumber::IPV6_ICMP);
            assert_l4_checksum(frame);
        }
    }

    #[test]
    fn vlan_tag_and_ip_bytes() {
        let untagged = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 2)
            .build();
        let tagged = Packet::eth(MAC_CLIENT, MAC_LB)
            .vlan(10)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 2)
            .build();
        assert_eq!(tagged.len(), untagged.len() + VLAN_LEN);
        assert_eq!(&tagged[12..14], &[0x81, 0x00]);
        let parsed = headers(&tagged);
        let [LinkExtHeader::Vlan(tag)] = &parsed.link_exts[..] else {
            panic!("want one VLAN tag: {:?}", parsed.link_exts);
        };
        assert_eq!(tag.vlan_id.value(), 10);
        assert_eq!(tag.ether_type, EtherType::IPV4);
        assert_l4_checksum(&tagged);
        assert_eq!(ip_bytes(&tagged), &untagged[ETH_LEN..]);
        assert_eq!(ip_bytes(&untagged), &untagged[ETH_LEN..]);
        assert_eq!(ip_bytes(&tagged)[0], 0x45);
    }

    #[test]
    #[should_panic(expected = "not an IP frame")]
    fn ip_bytes_rejects_non_ip() {
        ip_bytes(&Packet::eth(MAC_CLIENT, MAC_LB).ether_payload(0x0806, &[0; 28]));
    }

    #[test]
    fn a_non_ip_frame_keeps_its_vlan_and_ethertype() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .vlan(5)
            .ether_payload(0x88cc, b"lldp");
        assert_eq!(frame.len(), ETH_LEN + VLAN_LEN + 4);
        assert_eq!(&frame[16..18], &[0x88, 0xcc]);
        assert!(describe(&frame).contains("vlan 5 pcp 0 type 0x88cc"));
    }

    #[test]
    fn ipv4_options_are_padded() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .options(&[0x94, 0x04, 0x00, 0x00, 0x01]) // router alert, then a NOP
            .tcp(1, 2)
            .syn()
            .build();
        let ip = ipv4(&frame);
        assert_eq!(ip.ihl(), 7);
        assert_eq!(ip.options.as_slice(), &[0x94, 4, 0, 0, 1, 0, 0, 0]);
        assert_eq!(ip.total_len, 28 + 20);
        assert_ipv4_checksum(&frame);
        assert_l4_checksum(&frame);
    }

    #[test]
    fn ipv4_fragments_carry_offset_more_flag_and_checksum() {
        let first = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .id(99)
            .fragment(0, true)
            .udp(1, 2)
            .payload(&[0xaa; 16])
            .build();
        let ip = ipv4(&first);
        assert!(ip.more_fragments);
        assert_eq!(ip.fragment_offset.value(), 0);
        assert_ipv4_checksum(&first);

        let later = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .id(99)
            .fragment(1480, false)
            .raw(17)
            .payload(&[0xbb; 8])
            .build();
        let ip = ipv4(&later);
        assert!(!ip.more_fragments);
        assert_eq!(ip.fragment_offset.byte_offset(), 1480);
        assert_eq!(ip.protocol, IpNumber::UDP);
        assert_eq!(ip.total_len, 28);
        assert_eq!(&ip_bytes(&later)[20..], &[0xbb; 8]);
        assert_ipv4_checksum(&later);
        assert!(describe(&later).contains("frag-offset 1480"));
        assert!(describe(&later).contains("fragment data, 8 bytes"));
    }

    #[test]
    #[should_panic(expected = "not a multiple of 8")]
    fn fragment_offset_must_be_aligned() {
        let _ = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .fragment(100, true);
    }

    #[test]
    fn ipv6_extension_headers_chain_to_the_transport() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(ExtHeader::HopByHop)
            .ipv6_ext(ExtHeader::DestOpts)
            .ipv6_ext(ExtHeader::Routing)
            .ipv6_ext(ExtHeader::Fragment {
                offset: 0,
                more: false,
                id: 0x1234_5678,
            })
            .tcp(40000, 80)
            .syn()
            .payload(b"hi")
            .build();
        let ip = ip_bytes(&frame);
        // Next headers: fixed → hop-by-hop → destination options → routing → fragment → TCP.
        assert_eq!(ip[6], 0);
        assert_eq!([ip[40], ip[48], ip[56], ip[64]], [60, 43, 44, 6]);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 4 * 8 + 20 + 2);
        let Some(NetHeaders::Ipv6(_, exts)) = headers(&frame).net else {
            panic!("not IPv6");
        };
        assert!(exts.hop_by_hop_options.is_some());
        assert!(exts.destination_options.is_some());
        assert!(exts.routing.is_some());
        let fragment = exts.fragment.expect("a fragment header");
        assert_eq!(fragment.identification, 0x1234_5678);
        assert_eq!(fragment.next_header, IpNumber::TCP);
        assert_l4_checksum(&frame);
        // Set a TCP field past the chain: the mutator has to walk it.
        let mut broken = frame.clone();
        set_tcp_data_offset(&mut broken, 4);
        assert_eq!(broken[ETH_LEN + 72 + 12] >> 4, 4);
    }

    #[test]
    fn an_ipv6_fragment_header_carries_offset_id_and_more_flag() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(ExtHeader::Fragment {
                offset: 1232,
                more: true,
                id: 7,
            })
            .raw(17)
            .payload(&[1; 8])
            .build();
        let Some(NetHeaders::Ipv6(ip, exts)) = headers(&frame).net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.next_header, IpNumber::IPV6_FRAGMENTATION_HEADER);
        let fragment = exts.fragment.expect("a fragment header");
        assert_eq!(fragment.fragment_offset.byte_offset(), 1232);
        assert!(fragment.more_fragments);
        assert_eq!(fragment.next_header, IpNumber::UDP);
        let text = describe(&frame);
        assert!(
            text.contains("ext fragment offset 1232 more true id 0x7 next UDP(17)"),
            "{text}"
        );
        assert!(text.contains("fragment data, 8 bytes"), "{text}");
    }

    #[test]
    fn ipip_wraps_ipv4_and_ipv6() {
        let inner4 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .tcp(1, 80)
            .syn()
            .build();
        let inner6 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .udp(1, 53)
            .build();
        let outer = |inner: &[u8]| {
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv4(Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(10, 1, 0, 5))
                .ttl(1)
                .dont_fragment()
                .id(4242)
                .tos(0x10)
                .ipip(ip_bytes(inner))
                .build()
        };
        for (inner, protocol) in [(&inner4, IpNumber::IPV4), (&inner6, IpNumber::IPV6)] {
            let frame = outer(inner);
            let ip = ipv4(&frame);
            assert_eq!(ip.protocol, protocol);
            assert_eq!(usize::from(ip.total_len), 20 + ip_bytes(inner).len());
            assert_eq!(
                (ip.time_to_live, ip.identification, ip.dont_fragment),
                (1, 4242, true)
            );
            assert_eq!(ip.dscp.value(), 4);
            assert_ipv4_checksum(&frame);
            assert_eq!(&ip_bytes(&frame)[20..], ip_bytes(inner));
            let text = describe(&frame);
            assert!(
                text.contains(&format!("  {}", describe_ip_line(inner))),
                "{text}"
            );
        }
    }

    /// The IP line that `describe` prints for `frame`.
    fn describe_ip_line(frame: &[u8]) -> String {
        describe(frame)
            .lines()
            .find(|l| l.starts_with("ipv"))
            .expect("an IP line")
            .to_string()
    }

    #[test]
    fn ip6ip6_wraps_ipv6_and_ipv4() {
        let inner6 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .tcp(1, 80)
            .syn()
            .build();
        let inner4 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 53)
            .build();
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00:1::5".parse().unwrap();
        for (inner, next) in [(&inner6, IpNumber::IPV6), (&inner4, IpNumber::IPV4)] {
            let frame = Packet::eth(MAC_LB, MAC_GATEWAY)
                .ipv6(src, dst)
                .hop_limit(9)
                .traffic_class(0x20)
                .flow_label(0x12345)
                .ip6ip6(ip_bytes(inner))
                .build();
            let ip = ipv6(&frame);
            assert_eq!(ip.next_header, next);
            assert_eq!(usize::from(ip.payload_length), ip_bytes(inner).len());
            assert_eq!(
                (ip.hop_limit, ip.traffic_class, ip.flow_label.value()),
                (9, 0x20, 0x12345)
            );
            assert_eq!(&ip_bytes(&frame)[40..], ip_bytes(inner));
            assert!(
                describe(&frame).contains("\n  ipv"),
                "inner packet indented"
            );
        }
    }

    #[test]
    fn icmpv4_errors_quote_the_packet() {
        let offending = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .dont_fragment()
            .tcp(40000, 80)
            .ack()
            .payload(&[0; 1400])
            .build();
        let quoted = &ip_bytes(&offending)[..28];
        let router =
            || Packet::eth(MAC_LB, MAC_CLIENT).ipv4(Ipv4Addr::new(203, 0, 113, 1), CLIENT4);
        let cases = [
            (
                router().icmpv4_dest_unreachable(3, quoted).build(),
                3,
                3,
                [0; 4],
            ),
            (
                router().icmpv4_frag_needed(1400, quoted).build(),
                3,
                4,
                [0, 0, 0x05, 0x78],
            ),
            (router().icmpv4_time_exceeded(quoted).build(), 11, 0, [0; 4]),
        ];
        for (frame, icmp_type, code, rest) in &cases {
            let icmp = &ip_bytes(frame)[20..];
            assert_eq!((icmp[0], icmp[1]), (*icmp_type, *code));
            assert_eq!(&icmp[4..8], rest);
            assert_eq!(&icmp[8..], quoted);
            assert_eq!(ipv4(frame).protocol, IpNumber::ICMP);
            assert_ipv4_checksum(frame);
            assert_l4_checksum(frame);
        }
    }

    #[test]
    fn icmpv6_errors_quote_the_packet() {
        let offending = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .tcp(40000, 80)
            .ack()
            .payload(&[0; 1300])
            .build();
        let quoted = &ip_bytes(&offending)[..1232];
        let router: Ipv6Addr = "2001:db8:ff::1".parse().unwrap();
        let error = || Packet::eth(MAC_LB, MAC_CLIENT).ipv6(router, CLIENT6);
        let cases = [
            (
                error().icmpv6_packet_too_big(1280, quoted).build(),
                2,
                0,
                [0, 0, 0x05, 0x00],
            ),
            (
                error().icmpv6_dest_unreachable(4, quoted).build(),
                1,
                4,
                [0; 4],
            ),
            (error().icmpv6_time_exceeded(quoted).build(), 3, 0, [0; 4]),
        ];
        for (frame, icmp_type, code, rest) in &cases {
            let icmp = &ip_bytes(frame)[40..];
            assert_eq!((icmp[0], icmp[1]), (*icmp_type, *code));
            assert_eq!(&icmp[4..8], rest);
            assert_eq!(&icmp[8..], quoted);
            assert_eq!(usize::from(ipv6(frame).payload_length), 8 + quoted.len());
            assert_l4_checksum(frame);
        }
        // The pseudo header counts: the same message to another address no longer checks out.
        let sliced = SlicedPacket::from_ethernet(&cases[0].0).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("no ICMPv6");
        };
        assert!(!icmp.is_checksum_valid(router.octets(), VIP6.octets()));
    }

    #[test]
    #[should_panic(expected = "codes are 0..=6")]
    fn icmpv6_dest_unreachable_code_is_checked() {
        let _ = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv6(VIP6, CLIENT6)
            .icmpv6_dest_unreachable(9, &[]);
    }

    /// Whether the IPv4 header of `frame` (its first `len` bytes) sums to a valid checksum.
    fn ipv4_header_sums_ok(frame: &[u8], len: usize) -> bool {
        let header = &ip_bytes(frame)[..len];
        Sum16BitWords::new().add_slice(header).ones_complement() == 0
    }

    #[test]
    fn ipv4_mutators_keep_the_header_checksum() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .vlan(7)
            .ipv4(CLIENT4, VIP4)
            .tcp(1, 2)
            .payload(b"data")
            .build();

        let mut short_ihl = frame.clone();
        set_ipv4_ihl(&mut short_ihl, 4);
        assert_eq!(ip_bytes(&short_ihl)[0], 0x44);
        assert!(ipv4_header_sums_ok(&short_ihl, 20));

        let mut v5 = frame.clone();
        set_ip_version(&mut v5, 5);
        assert_eq!(ip_bytes(&v5)[0], 0x55);
        assert!(ipv4_header_sums_ok(&v5, 20));

        let mut long = frame.clone();
        set_ipv4_total_len(&mut long, 2000);
        let (header, _) = Ipv4Header::from_slice(ip_bytes(&long)).unwrap();
        assert_eq!(header.total_len, 2000);
        assert_eq!(header.header_checksum, header.calc_header_checksum());

        // Only the named bytes and the checksum changed.
        let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != long[i]).collect();
        let ip = ETH_LEN + VLAN_LEN;
        assert!(
            changed
                .iter()
                .all(|i| [ip + 2, ip + 3, ip + 10, ip + 11].contains(i))
        );
    }

    #[test]
    fn ipv6_mutators_change_only_their_field() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .udp(1, 2)
            .build();
        let mut long = frame.clone();
        set_ipv6_payload_len(&mut long, 1000);
        assert_eq!(
            u16::from_be_bytes([long[ETH_LEN + 4], long[ETH_LEN + 5]]),
            1000
        );
        let mut v4 = frame.clone();
        set_ip_version(&mut v4, 4);
        assert_eq!(v4[ETH_LEN], 0x40);
        assert_eq!(&v4[ETH_LEN + 1..], &frame[ETH_LEN + 1..]);
    }

    #[test]
    #[should_panic(expected = "not an IPv4 frame")]
    fn ipv4_mutator_rejects_ipv6() {
        let mut frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .udp(1, 2)
            .build();
        set_ipv4_ihl(&mut frame, 4);
    }

    #[test]
    fn tcp_data_offset_mutator_keeps_the_tcp_checksum() {
        let frames = [
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv4(CLIENT4, VIP4)
                .options(&[1; 4])
                .tcp(1, 2)
                .payload(b"options?")
                .build(),
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT6, VIP6)
                .tcp(1, 2)
                .payload(b"options?")
                .build(),
        ];
        for frame in frames {
            // Six words: etherparse still parses it (taking payload for options) and recomputes.
            let mut six = frame.clone();
            set_tcp_data_offset(&mut six, 6);
            let Some(TransportHeader::Tcp(tcp)) = headers(&six).transport else {
                panic!("no TCP");
            };
            assert_eq!(tcp.data_offset(), 6);
            assert_l4_checksum(&six);
            // Four words: etherparse refuses the header, and setting five again restores the
            // original frame, checksum included.
            let mut four = frame.clone();
            set_tcp_data_offset(&mut four, 4);
            assert!(PacketHeaders::from_ethernet_slice(&four).is_err());
            set_tcp_data_offset(&mut four, 5);
            assert_eq!(four, frame);
        }
    }

    #[test]
    fn truncate_keeps_a_prefix() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 2)
            .build();
        let short = truncate(frame.clone(), ETH_LEN + 10);
        assert_eq!(short, frame[..ETH_LEN + 10]);
        assert!(describe(&short).contains("ipv4 unparsable"));
    }

    #[test]
    #[should_panic(expected = "cannot truncate")]
    fn truncate_rejects_growing() {
        truncate(vec![0; 10], 11);
    }

    #[test]
    fn describe_names_each_layer() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .vlan(10)
            .ipv4(CLIENT4, VIP4)
            .dont_fragment()
            .tcp(40000, 80)
            .syn()
            .ack()
            .payload(b"hello")
            .build();
        let text = describe(&frame);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(
            lines[0],
            "eth 02:00:00:00:00:01 > 02:00:00:00:00:02 type 0x8100"
        );
        assert_eq!(lines[1], "vlan 10 pcp 0 type 0x0800");
        assert!(
            lines[2].starts_with(
                "ipv4 198.51.100.7 > 192.0.2.10 proto TCP(6) ttl 64 tos 0x00 id 0 DF len 45 ihl 5 \
                 csum 0x"
            ),
            "{text}"
        );
        assert!(lines[2].ends_with(" ok"), "{text}");
        assert!(
            lines[3].starts_with("tcp 40000 > 80 [SYN,ACK] seq 0 ack 0 win 65535 doff 5 csum 0x"),
            "{text}"
        );
        assert!(lines[3].ends_with(" ok"), "{text}");
        assert_eq!(lines[4], "payload 5 bytes: 68656c6c6f");

        let udp6 = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(ExtHeader::DestOpts)
            .udp(5000, 53)
            .build();
        let text = describe(&udp6);
        assert!(
            text.contains("ipv6 2001:db8:1::7 > 2001:db8:2::a next IPv6-Opts(60) hop-limit 64"),
            "{text}"
        );
        assert!(text.contains("ext dest-opts len 8 next UDP(17)"), "{text}");
        assert!(text.contains("udp 5000 > 53 len 8 csum"), "{text}");
    }

    #[test]
    fn describe_flags_bad_checksums() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 2)
            .payload(b"x")
            .build();
        assert!(!describe(&frame).contains("BAD"));
        let mut bad_ip = frame.clone();
        bad_ip[ETH_LEN + 8] -= 1; // TTL, not covered by the UDP checksum
        let text = describe(&bad_ip);
        assert!(
            text.lines().nth(1).unwrap().contains("BAD (want 0x"),
            "{text}"
        );
        assert!(text.lines().nth(2).unwrap().ends_with(" ok"), "{text}");
        let mut bad_udp = frame.clone();
        *bad_udp.last_mut().unwrap() ^= 0xff;
        assert!(describe(&bad_udp).lines().nth(2).unwrap().contains("BAD"));
        let mut no_udp_checksum = frame.clone();
        no_udp_checksum[ETH_LEN + 26..ETH_LEN + 28].fill(0);
        assert!(describe(&no_udp_checksum).contains("csum none"));
    }

    #[test]
    fn describe_nests_tunnels_and_quotes() {
        let inner = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 53)
            .build();
        let tunnel = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
            .ip6ip6(ip_bytes(&inner))
            .build();
        let text = describe(&tunnel);
        assert!(text.contains("next IPv4(4)"), "{text}");
        assert!(
            text.contains("\n  ipv4 198.51.100.7 > 192.0.2.10 proto UDP(17)"),
            "{text}"
        );
        assert!(text.contains("\n  udp 1 > 53 len 8 csum"), "{text}");

        let big = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .tcp(40000, 80)
            .payload(&[0; 1500])
            .build();
        let ptb = Packet::eth(MAC_LB, MAC_CLIENT)
            .ipv4(VIP4, CLIENT4)
            .icmpv4_frag_needed(1480, &ip_bytes(&big)[..28])
            .build();
        let text = describe(&ptb);
        let icmp = "icmpv4 type 3 code 4 DestinationUnreachable(FragmentationNeeded { \
                    next_hop_mtu: 1480 }) csum";
        assert!(text.contains(icmp), "{text}");
        assert!(
            text.contains("\n  ipv4 198.51.100.7 > 192.0.2.10 proto TCP(6)"),
            "{text}"
        );
        assert!(text.contains("len 1540 (only 28 here)"), "{text}");
        assert!(text.contains("\n  tcp unparsable"), "{text}");
        assert!(text.contains(" 40000 > 80, 8 bytes"), "{text}");
    }

    #[test]
    fn describe_survives_any_cut_or_corruption() {
        let inner = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .options(&[1])
            .tcp(1, 2)
            .payload(b"abc")
            .build();
        let frames = [
            Packet::eth(MAC_LB, MAC_GATEWAY)
                .vlan(3)
                .ipv4(CLIENT4, VIP4)
                .ipip(ip_bytes(&inner))
                .build(),
            Packet::eth(MAC_CLIENT, MAC_LB)
                .ipv6(CLIENT6, VIP6)
                .ipv6_ext(ExtHeader::HopByHop)
                .ipv6_ext(ExtHeader::Routing)
                .ipv6_ext(ExtHeader::Fragment {
                    offset: 0,
                    more: true,
                    id: 1,
                })
                .icmpv6_packet_too_big(1280, ip_bytes(&inner))
                .build(),
        ];
        for frame in &frames {
            for len in 0..=frame.len() {
                describe(&frame[..len]);
            }
            for at in 0..frame.len() {
                let mut corrupt = frame.clone();
                corrupt[at] ^= 0xff;
                describe(&corrupt);
            }
        }
    }

    #[test]
    fn assert_frame_eq_accepts_equal_frames() {
        let frame = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT4, VIP4)
            .udp(1, 2)
            .build();
        assert_frame_eq(&frame, &frame.clone());
    }

    #[test]
    fn assert_frame_eq_reports_both_sides() {
        let expected = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv4(CLIENT4, VIP4)
            .ttl(64)
            .udp(1, 2)
            .build();
        let actual = Packet::eth(MAC_LB, MAC_GATEWAY)
            .ipv4(CLIENT4, VIP4)
            .ttl(63)
            .udp(1, 2)
            .build();
        let panic = std::panic::catch_unwind(|| assert_frame_eq(&actual, &expected))
            .expect_err("different frames panic");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.contains("frames differ at byte 22 (actual 42 bytes, expected 42)"),
            "{message}"
        );
        assert!(
            message.contains("! ipv4 198.51.100.7 > 192.0.2.10 proto UDP(17) ttl 63"),
            "{message}"
        );
        assert!(
            message.contains("! ipv4 198.51.100.7 > 192.0.2.10 proto UDP(17) ttl 64"),
            "{message}"
        );
        assert!(message.contains("  udp 1 > 2 len 8"), "{message}");

        let longer = [&expected[..], &[0xee]].concat();
        let panic = std::panic::catch_unwind(|| assert_frame_eq(&longer, &expected)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("differ at byte 42 (actual 43 bytes, expected 42)"),
            "{message}"
        );
        assert!(message.contains("trailing 1 bytes: ee"), "{message}");
    }
}
