//! Stage 5, NAT forwarding (`VIP_F_NAT`): the target runs nothing of xlb's and listens on its own
//! port. Toward it, the destination becomes the target's address and port; its replies, routed
//! back through this node, get the listener's address and port back as their source, from the
//! `NAT_REPLIES` entry written with the flow. The client's address is kept both ways.
//!
//! Both directions rewrite in place: one address, one port, the TTL (hop limit), and the
//! checksums by RFC 1624's update, never a full sum over the payload.

use aya_ebpf::programs::XdpContext;
use lb_common::{AF_INET, Addr, Config, FlowKey, IPPROTO_TCP, NatReply, Reason};
use network_types::{eth::EthHdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    conntrack::Choice,
    csum,
    l2::{self, NextHop},
    maps::NAT_REPLIES,
    next_hop::{self, route},
    parse::{Packet, copy_addr, ptr_at},
    verdict::Verdict,
};

/// Offsets, in the IP header, of the source and destination addresses.
const V4_SRC: usize = 12;
const V4_DST: usize = 16;
const V6_SRC: usize = 8;
const V6_DST: usize = 24;

/// Client → target: the destination becomes the chosen backend's address and port (its own port
/// when it has one). A new flow also gets the entry its replies are found by.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Packet, choice: &Choice) -> Result<Verdict, Verdict> {
    let b = choice.backend;
    let key = p.key;
    let port_be = if b.port_be != 0 {
        b.port_be
    } else {
        key.dport_be
    };
    if choice.new_flow {
        let reply = FlowKey {
            src: copy_addr(&b.addr),
            dst: copy_addr(&key.src),
            dport_be: key.sport_be,
            proto: key.proto,
            family: key.family,
            sport_be: port_be,
            _pad: [0; 2],
        };
        let vip = NatReply {
            vip: copy_addr(&key.dst),
            vport_be: key.dport_be,
            _pad16: 0,
            _pad32: 0,
        };
        // A full table evicts its least recently used entry; failing here loses this flow's
        // replies, which then reach the client untranslated and are reset.
        let _ = NAT_REPLIES.insert(reply, vip, 0);
    }
    let hop = next_hop::hop(next_hop::toward(ctx, choice.index, b)?);
    rewrite::<false, true>(ctx, p, &b.addr, &b.addr, 0, port_be, &hop)?;
    Ok(l2::send(&hop, Reason::TxNat))
}

/// Target → client, for a packet to no VIP: when `NAT_REPLIES` knows it, its source becomes the
/// listener's address and port, and it goes to the client. `None`: not a NAT reply.
#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Packet, cfg: &Config) -> Option<Result<Verdict, Verdict>> {
    // SAFETY: copied out at once; the datapath writes entries whole.
    let r = unsafe { NAT_REPLIES.get(p.key) }?;
    let (vip, vport_be) = (r.vip, r.vport_be);
    let v4 = p.key.family == AF_INET;
    let r = route(ctx, cfg, &p.key.dst, v4).and_then(|hop| {
        rewrite::<true, false>(ctx, p, &vip, &vip, vport_be, 0, &hop)?;
        Ok(l2::send(&hop, Reason::TxNatReply))
    });
    Some(r)
}

/// Writes `src` and `sport_be` as the packet's source (`SRC`), `dst` and `dport_be` as its
/// destination (`DST`), and the Ethernet addresses of `hop`. What a constant leaves out is not
/// read. NAT sets one side, SNAT (`snat.rs`) both.
#[inline(always)]
pub fn rewrite<const SRC: bool, const DST: bool>(
    ctx: &XdpContext,
    p: &Packet,
    src: &Addr,
    dst: &Addr,
    sport_be: u16,
    dport_be: u16,
    hop: &NextHop,
) -> Result<(), Verdict> {
    // One copy per family and protocol, each with its offsets as constants: the verifier would
    // otherwise follow a path where a branch on the family went one way and the next the other.
    let ends = Ends {
        src,
        dst,
        ports: sport_be as u32 | (dport_be as u32) << 16,
    };
    match (p.key.family == AF_INET, p.key.proto == IPPROTO_TCP) {
        (true, true) => rewrite_in::<true, true, SRC, DST>(ctx, p, &ends, hop),
        (true, false) => rewrite_in::<true, false, SRC, DST>(ctx, p, &ends, hop),
        (false, true) => rewrite_in::<false, true, SRC, DST>(ctx, p, &ends, hop),
        (false, false) => rewrite_in::<false, false, SRC, DST>(ctx, p, &ends, hop),
    }
}

/// The new addresses and ports of a [`rewrite`]; `ports` as the L4 header holds them (source
/// port first, in memory order).
struct Ends<'a> {
    src: &'a Addr,
    dst: &'a Addr,
    ports: u32,
}

/// [`rewrite`] for IPv4 (`V4`) or IPv6, TCP (`TCP`) or UDP: the addresses and ports, one off
/// the TTL (hop limit), the checksums updated.
#[inline(always)]
fn rewrite_in<const V4: bool, const TCP: bool, const SRC: bool, const DST: bool>(
    ctx: &XdpContext,
    p: &Packet,
    ends: &Ends,
    hop: &NextHop,
) -> Result<(), Verdict> {
    let short = Verdict::drop(Reason::DropBadL4);
    let (v4, tcp) = (V4, TCP);
    let (src_off, dst_off) = if V4 {
        (V4_SRC, V4_DST)
    } else {
        (V6_SRC, V6_DST)
    };
    // The L4 checksum's offset; both headers hold the ports first. One bounds check of the
    // header's own size: the verifier does not carry a check over to another pointer.
    let csum_off = if tcp { 16 } else { 6 };
    let l4: *mut u8 = if tcp {
        ptr_at::<[u8; TcpHdr::LEN]>(ctx, p.l4_off)
            .ok_or(short)?
            .cast()
    } else {
        ptr_at::<[u8; UdpHdr::LEN]>(ctx, p.l4_off)
            .ok_or(short)?
            .cast()
    };
    // The pseudo header holds the addresses, so a change of address or port is one update of
    // the L4 checksum: the sum of what goes (complemented) and what comes, as 32-bit words (one's
    // complement sums fold the same in any width and byte order). Both ports are one word.
    // SAFETY: bounds checked by `ptr_at`.
    let (old_ports, l4_csum) = unsafe {
        (
            l4.cast::<u32>().read_unaligned(),
            l4.add(csum_off).cast::<u16>().read_unaligned(),
        )
    };
    let sport = if SRC {
        ends.ports & 0xffff
    } else {
        old_ports & 0xffff
    };
    let dport = if DST {
        ends.ports & 0xffff_0000
    } else {
        old_ports & 0xffff_0000
    };
    let new_ports = sport | dport;
    let mut diff = (!old_ports) as u64 + new_ports as u64;
    let (new_src, new_dst) = (addr_words(ends.src), addr_words(ends.dst));
    if v4 {
        let ip: *mut [u8; 20] = ptr_at(ctx, p.l3_off).ok_or(short)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            let ip = ip.cast::<u8>();
            if *ip.add(8) <= 1 {
                return Err(Verdict::drop(Reason::DropTtl));
            }
            let mut addr_diff = 0u64;
            if SRC {
                let a = ip.add(src_off).cast::<u32>();
                addr_diff += (!a.read_unaligned()) as u64 + new_src[0] as u64;
                a.write_unaligned(new_src[0]);
            }
            if DST {
                let a = ip.add(dst_off).cast::<u32>();
                addr_diff += (!a.read_unaligned()) as u64 + new_dst[0] as u64;
                a.write_unaligned(new_dst[0]);
            }
            diff += addr_diff;
            // TTL and protocol are one 16-bit word of the header checksum.
            let ttl = ip.add(8).cast::<u16>();
            let old_ttl = ttl.read_unaligned();
            *ip.add(8) -= 1;
            let new_ttl = ttl.read_unaligned();
            let c = ip.add(10).cast::<u16>();
            let sum = (!c.read_unaligned()) as u64 + addr_diff + (!old_ttl) as u64 + new_ttl as u64;
            c.write_unaligned(csum::fold(sum));
        }
    } else {
        let ip: *mut [u8; 40] = ptr_at(ctx, p.l3_off).ok_or(short)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            let ip = ip.cast::<u8>();
            let hops = ip.add(7);
            if *hops <= 1 {
                return Err(Verdict::drop(Reason::DropTtl));
            }
            *hops -= 1;
            if SRC {
                diff += swap_words(ip.add(src_off).cast(), &new_src);
            }
            if DST {
                diff += swap_words(ip.add(dst_off).cast(), &new_dst);
            }
        }
    }
    // SAFETY: bounds checked by `ptr_at` above.
    unsafe {
        l4.cast::<u32>().write_unaligned(new_ports);
        // UDP over IPv4 may go without a checksum (0), and then stays without; a computed 0 is
        // sent as all ones (RFC 768).
        if tcp || !v4 || l4_csum != 0 {
            let mut c = csum::fold((!l4_csum) as u64 + diff);
            if !tcp && c == 0 {
                c = 0xffff;
            }
            l4.add(csum_off).cast::<u16>().write_unaligned(c);
        }
    }
    let eth: *mut [u8; EthHdr::LEN] = ptr_at(ctx, 0).ok_or(short)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { l2::set_macs(eth.cast(), hop.macs) };
    Ok(())
}

/// Writes an IPv6 address's four words at `a` and returns the checksum's difference (what went,
/// complemented, plus what came).
///
/// # Safety
/// `a` must be valid for 16 bytes of writes.
#[inline(always)]
unsafe fn swap_words(a: *mut u32, new: &[u32; 4]) -> u64 {
    let mut diff = 0u64;
    let mut i = 0;
    while i < 4 {
        // SAFETY: inside the 16 bytes the caller vouches for.
        unsafe {
            let old = a.add(i).read_unaligned();
            a.add(i).write_unaligned(new[i]);
            diff += (!old) as u64 + new[i] as u64;
        }
        i += 1;
    }
    diff
}

/// An address as four 32-bit words in memory order.
#[inline(always)]
fn addr_words(a: &Addr) -> [u32; 4] {
    // SAFETY: same size; any bits are valid for both.
    unsafe { core::mem::transmute::<Addr, [u32; 4]>(*a) }
}
