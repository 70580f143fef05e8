//! Stage 1: parse. Every packet byte the datapath reads goes through [`ptr_at`], the one bounds
//! check; offsets into the packet are computed only here.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AF_INET, AF_INET6, Addr, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Reason,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::verdict::Verdict;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers skipped on the way to the L4 header (hop-by-hop, routing, dest opts).
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Largest offset into a frame that [`ptr_at`] accepts (jumbo frames are 9 KiB).
const MAX_OFFSET: usize = 0x3fff;
/// Most IPv6 extension headers walked before giving up (bounded for the verifier).
const MAX_IPV6_EXT: usize = 4;

/// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
///
/// Callers dereference it; the bounds check here is what makes that sound and what the
/// verifier requires.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // An explicit upper bound: offsets that crossed a function call reach the verifier as
    // unbounded scalars, and it refuses to add those to a packet pointer.
    if offset > MAX_OFFSET {
        return None;
    }
    let start = data(ctx);
    let end = data_end(ctx);
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `ctx->data`. Read volatile so that LLVM cannot hoist the load into a caller and pass the
/// packet pointer as a truncated integer argument, which the verifier rejects
/// ("pointer arithmetic with <<= operator prohibited").
#[inline(always)]
pub fn data(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data) as usize }
}

/// `ctx->data_end`, read like [`data`].
#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: as in `data`.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize }
}

/// Length of the frame.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    data_end(ctx) - data(ctx)
}

/// What the stages after parsing need to know about a packet.
pub struct Packet {
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3_off: usize,
    /// Offset of the L4 header (past IPv4 options or IPv6 extension headers).
    pub l4_off: usize,
    pub family: u8,
    /// The L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// Ports, network byte order; zero for ICMP and for fragments without an L4 header.
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub tcp_flags: u8,
    /// Part of a fragmented datagram (first or later fragment).
    pub fragment: bool,
    /// IPv4 "don't fragment" (always true for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// Length of the IP packet (header included).
    pub ip_len: u16,
}

impl Packet {
    pub const EMPTY: Packet = Packet {
        l3_off: 0,
        l4_off: 0,
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
        fragment: false,
        dont_fragment: false,
        ip_len: 0,
    };
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet and one optional VLAN tag → (EtherType, L3 offset).
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::drop(Reason::DropShortEth))?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let proto = u16::from_be(unsafe { (*eth).ether_type });
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let vlan: *const VlanHdr =
            ptr_at(ctx, EthHdr::LEN).ok_or(Verdict::drop(Reason::DropShortEth))?;
        // SAFETY: bounds checked by `ptr_at`.
        return Ok((
            u16::from_be(unsafe { (*vlan).ether_type }),
            EthHdr::LEN + VlanHdr::LEN,
        ));
    }
    Ok((proto, EthHdr::LEN))
}

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, l3_off: usize, p: &mut Packet) -> Result<(), Verdict> {
    let bad = Verdict::drop(Reason::DropBadIpv4);
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    let ip_len = u16::from_be_bytes(ip.tot_len);
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (ip_len as usize) < ihl {
        return Err(bad);
    }
    if l3_off + ip_len as usize > frame_len(ctx) {
        return Err(bad);
    }
    let frag = u16::from_be_bytes(ip.frags);
    p.l3_off = l3_off;
    p.l4_off = l3_off + ihl;
    p.family = AF_INET;
    p.proto = ip.proto;
    p.src = v4(ip.src_addr);
    p.dst = v4(ip.dst_addr);
    // MF set or a non-zero offset.
    p.fragment = frag & 0x3fff != 0;
    p.dont_fragment = frag & 0x4000 != 0;
    p.ip_len = ip_len;
    // Later fragments carry no L4 header; the first one does, but it is routed like the rest.
    if !p.fragment {
        l4(ctx, p)?;
    }
    Ok(())
}

#[inline(always)]
pub fn ipv6(ctx: &XdpContext, l3_off: usize, p: &mut Packet) -> Result<(), Verdict> {
    let bad = Verdict::drop(Reason::DropBadIpv6);
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ip_len = u16::from_be_bytes(ip.payload_len) as usize + Ipv6Hdr::LEN;
    if ip.vcf[0] >> 4 != 6 || l3_off + ip_len > frame_len(ctx) {
        return Err(bad);
    }
    p.l3_off = l3_off;
    p.l4_off = l3_off + Ipv6Hdr::LEN;
    p.family = AF_INET6;
    p.proto = ip.next_hdr;
    p.src = ip.src_addr;
    p.dst = ip.dst_addr;
    p.dont_fragment = true;
    p.ip_len = ip_len as u16;
    for _ in 0..MAX_IPV6_EXT {
        match p.proto {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Next header, then the length in 8-byte units not counting the first 8.
                let ext: *const [u8; 2] = ptr_at(ctx, p.l4_off).ok_or(bad)?;
                // SAFETY: bounds checked by `ptr_at`.
                let [next, len] = unsafe { *ext };
                p.proto = next;
                p.l4_off += (len as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: *const [u8; 2] = ptr_at(ctx, p.l4_off).ok_or(bad)?;
                // SAFETY: bounds checked by `ptr_at`.
                p.proto = unsafe { (*ext)[0] };
                p.l4_off += 8;
                p.fragment = true;
                return Ok(());
            }
            _ => return l4(ctx, p),
        }
    }
    // `MAX_IPV6_EXT` headers walked: the next one must be the L4 header.
    match p.proto {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT => Err(bad),
        _ => l4(ctx, p),
    }
}

/// Reads ports and TCP flags. ICMP and other protocols have no ports.
#[inline(always)]
fn l4(ctx: &XdpContext, p: &mut Packet) -> Result<(), Verdict> {
    let bad = Verdict::drop(Reason::DropBadL4);
    // The header must fit in the IP packet, not only in the frame: bytes after the IP length
    // (Ethernet padding, trailers) are not part of it.
    let need = match p.proto {
        IPPROTO_TCP => TcpHdr::LEN,
        IPPROTO_UDP => UdpHdr::LEN,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 4,
        _ => 0,
    };
    if p.l4_off + need > p.l3_off + p.ip_len as usize {
        return Err(bad);
    }
    match p.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, p.l4_off).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            let tcp = unsafe { &*tcp };
            // Byte 12 holds the data offset in its high nibble, byte 13 the flags.
            let raw: *const [u8; 14] = (tcp as *const TcpHdr).cast();
            // SAFETY: TcpHdr is 20 bytes, so its first 14 are in bounds.
            let raw = unsafe { &*raw };
            if raw[12] >> 4 < 5 {
                return Err(bad);
            }
            p.sport_be = u16::from_ne_bytes(tcp.source);
            p.dport_be = u16::from_ne_bytes(tcp.dest);
            p.tcp_flags = raw[13];
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, p.l4_off).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            let udp = unsafe { &*udp };
            p.sport_be = u16::from_ne_bytes(udp.src);
            p.dport_be = u16::from_ne_bytes(udp.dst);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code and checksum must be there for the ICMP stage.
            ptr_at::<[u8; 4]>(ctx, p.l4_off).ok_or(bad)?;
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
pub fn v4(a: [u8; 4]) -> Addr {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}
