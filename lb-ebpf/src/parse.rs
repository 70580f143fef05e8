//! Stage 1: parse. Every packet byte the datapath reads goes through [`ptr_at`], the one bounds
//! check; offsets into the packet are computed only here.

use core::mem::MaybeUninit;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AF_INET, AF_INET6, Addr, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    Reason,
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
pub const IPV6_DSTOPTS: u8 = 60;
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
pub struct Packet<'k> {
    /// Addresses, ports, protocol and family: the flow table's key as it is looked up, so
    /// that it is built once. Ports are zero for ICMP and for fragments without an L4 header.
    /// Apart from the rest, which then stay in registers: the key's address goes to the map
    /// helpers, and the compiler keeps whatever shares its place on the stack there too.
    pub key: &'k FlowKey,
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3_off: usize,
    /// Offset of the L4 header (past IPv4 options or IPv6 extension headers).
    pub l4_off: usize,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub tcp_flags: u8,
    /// Part of a fragmented datagram (first or later fragment).
    pub fragment: bool,
    /// IPv4 "don't fragment" (always true for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// Length of the IP packet (header included).
    pub ip_len: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
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

/// IPv4 header (and the L4 header unless a fragment) → the packet. `len`: the frame's length, as
/// the entry point read it.
///
/// The flow key goes into `key` (the caller's stack slot, which the map helpers read); the rest is
/// returned by value, and the stages are inlined, so the compiler keeps it in registers. (A zeroed
/// key filled in field by field compiled to a call of a byte-wise `memset`.)
#[inline(always)]
pub fn ipv4<'k>(
    ctx: &XdpContext,
    l3_off: usize,
    len: usize,
    key: &'k mut MaybeUninit<FlowKey>,
) -> Result<Packet<'k>, Verdict> {
    let bad = Verdict::drop(Reason::DropBadIpv4);
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`; reads of any alignment (see `build.rs`).
    let (vihl, ip_len, frag, proto, src, dst) = unsafe {
        let b = ip.cast::<u8>();
        (
            *b,
            u16::from_be(b.add(2).cast::<u16>().read_unaligned()),
            u16::from_be(b.add(6).cast::<u16>().read_unaligned()),
            *b.add(9),
            b.add(12).cast::<[u8; 4]>().read_unaligned(),
            b.add(16).cast::<[u8; 4]>().read_unaligned(),
        )
    };
    // Written at once (ports later), so that the compiler need not keep the addresses in
    // registers while it reads the L4 header.
    let key = key.write(FlowKey {
        src: v4(src),
        dst: v4(dst),
        dport_be: 0,
        proto,
        family: AF_INET,
        sport_be: 0,
        _pad: [0; 2],
    });
    // Version 4 and a header of at least 5 words, in one range test of the first byte.
    let ihl = (vihl & 0x0f) as usize * 4;
    if !(0x45..=0x4f).contains(&vihl) || (ip_len as usize) < ihl {
        return Err(bad);
    }
    let l3_end = l3_off + ip_len as usize;
    if l3_end > len {
        return Err(bad);
    }
    // MF set or a non-zero offset.
    let fragment = frag & 0x3fff != 0;
    let l4_off = l3_off + ihl;
    // Later fragments carry no L4 header; the first one does, but it is routed like the rest.
    let ports = if fragment {
        Ports::NONE
    } else {
        l4(ctx, proto, l4_off, l3_end)?
    };
    key.dport_be = ports.dport_be;
    key.sport_be = ports.sport_be;
    Ok(Packet {
        key,
        l3_off,
        l4_off,
        tcp_flags: ports.tcp_flags,
        fragment,
        dont_fragment: frag & 0x4000 != 0,
        ip_len,
    })
}

/// IPv6 header, extension headers and the L4 header → the packet. `len` as for [`ipv4`].
#[inline(always)]
pub fn ipv6<'k>(
    ctx: &XdpContext,
    l3_off: usize,
    len: usize,
    key: &'k mut MaybeUninit<FlowKey>,
) -> Result<Packet<'k>, Verdict> {
    let bad = Verdict::drop(Reason::DropBadIpv6);
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ip_len = u16::from_be_bytes(ip.payload_len) as usize + Ipv6Hdr::LEN;
    if ip.vcf[0] >> 4 != 6 || l3_off + ip_len > len {
        return Err(bad);
    }
    let l3_end = l3_off + ip_len;
    let mut proto = ip.next_hdr;
    let mut l4_off = l3_off + Ipv6Hdr::LEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT && matches!(proto, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS) {
        // Next header, then the length in 8-byte units not counting the first 8.
        let ext: *const [u8; 2] = ptr_at(ctx, l4_off).ok_or(bad)?;
        // SAFETY: bounds checked by `ptr_at`.
        let [next, len] = unsafe { *ext };
        proto = next;
        l4_off += (len as usize + 1) * 8;
        walked += 1;
    }
    // The fragment header counts as one of the `MAX_IPV6_EXT`; past them the L4 header must come.
    let (fragment, ports) = match proto {
        IPV6_FRAGMENT if walked < MAX_IPV6_EXT => {
            let ext: *const [u8; 2] = ptr_at(ctx, l4_off).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            proto = unsafe { (*ext)[0] };
            l4_off += 8;
            (true, Ports::NONE)
        }
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT => return Err(bad),
        _ => (false, l4(ctx, proto, l4_off, l3_end)?),
    };
    let key = key.write(FlowKey {
        src: copy_addr(&ip.src_addr),
        dst: copy_addr(&ip.dst_addr),
        dport_be: ports.dport_be,
        proto,
        family: AF_INET6,
        sport_be: ports.sport_be,
        _pad: [0; 2],
    });
    Ok(Packet {
        key,
        l3_off,
        l4_off,
        tcp_flags: ports.tcp_flags,
        fragment,
        dont_fragment: true,
        ip_len: ip_len as u16,
    })
}

/// What the L4 header tells: ports (network byte order) and TCP flags.
pub struct Ports {
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
}

impl Ports {
    const NONE: Ports = Ports {
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
    };

    /// The ports at the start of a TCP or UDP header, in one load.
    #[inline(always)]
    fn read<const N: usize>(h: &[u8; N], tcp_flags: u8) -> Ports {
        // SAFETY: both headers start with the two ports; a read of any alignment.
        let w = unsafe { h.as_ptr().cast::<u32>().read_unaligned() };
        Ports {
            sport_be: w as u16,
            dport_be: (w >> 16) as u16,
            tcp_flags,
        }
    }
}

/// Reads ports and TCP flags of the `proto` header at `l4_off`, which must end by `l3_end` (the
/// end of the IP packet: bytes after it, Ethernet padding or trailers, are not part of it). ICMP
/// and other protocols have no ports.
#[inline(always)]
fn l4(ctx: &XdpContext, proto: u8, l4_off: usize, l3_end: usize) -> Result<Ports, Verdict> {
    let bad = Verdict::drop(Reason::DropBadL4);
    match proto {
        IPPROTO_TCP => {
            if l4_off + TcpHdr::LEN > l3_end {
                return Err(bad);
            }
            let tcp: *const [u8; TcpHdr::LEN] = ptr_at(ctx, l4_off).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            let tcp = unsafe { &*tcp };
            // Byte 12 holds the data offset in its high nibble, byte 13 the flags.
            if tcp[12] >> 4 < 5 {
                return Err(bad);
            }
            Ok(Ports::read(tcp, tcp[13]))
        }
        IPPROTO_UDP => {
            if l4_off + UdpHdr::LEN > l3_end {
                return Err(bad);
            }
            let udp: *const [u8; UdpHdr::LEN] = ptr_at(ctx, l4_off).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            Ok(Ports::read(unsafe { &*udp }, 0))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code and checksum must be there for the ICMP stage.
            if l4_off + 4 > l3_end {
                return Err(bad);
            }
            ptr_at::<[u8; 4]>(ctx, l4_off).ok_or(bad)?;
            Ok(Ports::NONE)
        }
        _ => Ok(Ports::NONE),
    }
}

/// An IPv4 address in the 16-byte form the maps use (zero-padded). Built as one 128-bit value:
/// a zeroed array with four bytes set compiled to a call of a byte-wise `memset`.
#[inline(always)]
pub fn v4(a: [u8; 4]) -> Addr {
    (u32::from_le_bytes(a) as u128).to_le_bytes()
}

/// An address copied as one 128-bit value (an array copy compiles to a call of a byte-wise
/// `memmove`), out of the packet or a map.
#[inline(always)]
pub fn copy_addr(a: &Addr) -> Addr {
    // SAFETY: `a` is a valid 16-byte array; the read is unaligned on purpose.
    unsafe { (a as *const Addr).cast::<u128>().read_unaligned() }.to_ne_bytes()
}

/// An address as two words: two loads, not sixteen (the maps' addresses, in `Backend` and
/// `FlowKey`, are 8-byte aligned).
#[inline(always)]
pub fn words(a: &Addr) -> [u64; 2] {
    // SAFETY: same size; any bits are valid for both.
    unsafe { core::mem::transmute::<Addr, [u64; 2]>(*a) }
}
