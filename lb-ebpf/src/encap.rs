//! Stage 5: forward. IPIP / IP6IP6 tunnel or L2 DSR (NAT: `nat`), out the same interface
//! (`XDP_TX`) or another one (`bpf_redirect`), with the next hop from `next_hop`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    AF_INET, Backend, CachedHop, IPPROTO_IPIP, IPPROTO_IPV6, Reason, SECOND_CHANCE_OPTION,
    SECOND_CHANCE_V4_LEN, SECOND_CHANCE_V6_LEN, VIP_F_DSR, VIP_F_NAT, VIP_F_SNAT,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    conntrack::Choice,
    csum, icmp, l2, nat, next_hop,
    parse::{ETH_P_IP, ETH_P_IPV6, IPV6_DSTOPTS, Packet, ptr_at, words},
    snat,
    verdict::Verdict,
    vip::Vip,
};

const TUNNEL_TTL: u8 = 64;

/// Sends the packet to the chosen backend the way its VIP says: `Ok` when it is on its way there.
/// With `SECOND`, the tunnel also names `prev`, the previous table's target (a second chance, see
/// `conntrack`); without, `prev` is not read. Two copies of the path, so that the established one
/// keeps its code.
#[inline(always)]
pub fn forward<const SECOND: bool>(
    ctx: &XdpContext,
    p: &Packet,
    vip: &Vip,
    choice: &Choice,
    prev: &Backend,
) -> Result<Verdict, Verdict> {
    let b = choice.backend;
    // One test on the tunnel's path for both other ways.
    if vip.flags & (VIP_F_DSR | VIP_F_NAT) != 0 {
        if vip.flags & VIP_F_DSR != 0 {
            return dsr(ctx, b);
        }
        // SNAT is NAT that sets the source too (`VIP_F_NAT` is set with it).
        if vip.flags & VIP_F_SNAT != 0 {
            return snat::forward(ctx, p, choice);
        }
        return nat::forward(ctx, p, choice);
    }
    let hop = next_hop::toward(ctx, choice.index, b)?;
    let v4 = b.family == AF_INET;
    let outer_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if p.ip_len as u32 + outer_len as u32 > hop.mtu {
        if hop.no_ptb != 0 || !p.dont_fragment {
            return Err(Verdict::drop(Reason::DropTooBig));
        }
        // The answer ends the packet's way here: `Err`, so that it is not counted as sent.
        let mtu = (hop.mtu - outer_len as u32) as u16;
        return Err(match icmp::too_big(ctx, p, mtu) {
            Ok(v) | Err(v) => v,
        });
    }
    // One branch on the target's family, into two copies of the path with the family a
    // constant, rather than a branch on it at every field that differs.
    if SECOND {
        let extra = if v4 {
            SECOND_CHANCE_V4_LEN
        } else {
            SECOND_CHANCE_V6_LEN
        };
        // A second chance that would not fit the MTU is left out: the flow then breaks as it
        // would without one, rather than the client learning a smaller MTU for the rest of it.
        if p.ip_len as u32 + (outer_len + extra) as u32 <= hop.mtu {
            return if v4 {
                encapsulate::<true, true>(ctx, p, choice, hop, prev)
            } else {
                encapsulate::<false, true>(ctx, p, choice, hop, prev)
            };
        }
    }
    if v4 {
        encapsulate::<true, false>(ctx, p, choice, hop, b)
    } else {
        encapsulate::<false, false>(ctx, p, choice, hop, b)
    }
}

/// L2 DSR: the target has the VIP on a local interface; only the destination MAC changes.
#[inline(always)]
fn dsr(ctx: &XdpContext, backend: &Backend) -> Result<Verdict, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::drop(Reason::DropShortEth))?;
    // SAFETY: bounds checked by `ptr_at`. Copies that say they do not overlap: plain
    // assignments between the packet and a map compiled to calls of a byte-wise `memmove`.
    unsafe {
        let eth = &mut *eth;
        core::ptr::copy_nonoverlapping(&eth.dst_addr, &mut eth.src_addr, 1);
        core::ptr::copy_nonoverlapping(&backend.mac, &mut eth.dst_addr, 1);
    }
    Ok(Verdict::tx(Reason::TxDsr))
}

/// IPIP (`V4`: an IPv4 target) or IP6IP6 toward the chosen target. With `SECOND`, the outer
/// header also names `prev`, the previous table's target (an IPv4 option, or an IPv6
/// Destination Options header; see [`SECOND_CHANCE_OPTION`]); without, `prev` is not read.
#[inline(always)]
fn encapsulate<const V4: bool, const SECOND: bool>(
    ctx: &XdpContext,
    p: &Packet,
    choice: &Choice,
    cached: &CachedHop,
    prev: &Backend,
) -> Result<Verdict, Verdict> {
    let v4 = V4;
    let b = choice.backend;
    let extra = match (SECOND, v4) {
        (false, _) => 0,
        (true, true) => SECOND_CHANCE_V4_LEN,
        (true, false) => SECOND_CHANCE_V6_LEN,
    };
    let outer_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN } + extra;
    // SAFETY: the helper checks the new head against the headroom and fails cleanly.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    let hop = next_hop::hop(cached);
    // One bounds check for all that is written: the new Ethernet header, the old one `outer_len`
    // bytes in (at most 18 bytes, VLAN tag included), and the outer IP header between them.
    let short = Verdict::drop(Reason::DropAdjust);
    let frame = ptr_at::<[u8; 18]>(ctx, outer_len)
        .ok_or(short)?
        .cast::<u8>()
        .wrapping_sub(outer_len);
    let outer_type = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    // SAFETY: `frame` is valid for `outer_len + 18` bytes, and `outer_len` is at least 20.
    unsafe {
        l2::write_at(
            frame,
            hop.macs,
            outer_len,
            p.l3_off > EthHdr::LEN,
            outer_type,
        )
    };
    let inner_proto = if p.key.family == AF_INET {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    // The outer header is written in place, a word at a time (the backend allows misaligned
    // access, see `build.rs`): no copy of it on the stack. Words are built in memory order, so
    // as little-endian integers; the one's complement sum does not depend on the byte order.
    let hash_be = choice.hash.to_be();
    // SAFETY: inside the checked bytes: `l3_off` is at most 18.
    let ip = unsafe { frame.add(p.l3_off) }.cast::<u32>();
    if v4 {
        let total = (p.ip_len as usize + outer_len) as u16;
        // RFC 2003: copy the inner DF bit to the outer header.
        let df: u16 = if p.dont_fragment { 0x4000 } else { 0 };
        // Version 4, IHL (5, or 7 with the option), DSCP 0, total length; identification 0,
        // flags; TTL, protocol.
        let w0 = (0x40 | (outer_len / 4)) as u32 | (total.to_be() as u32) << 16;
        let w1 = (df.to_be() as u32) << 16;
        let w2 = TUNNEL_TTL as u32 | (inner_proto as u32) << 8;
        // SAFETY: the next hop and `Backend` hold these bytes; reads of any alignment.
        let (prefix, dst) = unsafe {
            (
                cached.src_prefix.as_ptr().cast::<u16>().read_unaligned(),
                b.addr.as_ptr().cast::<u32>().read_unaligned(),
            )
        };
        // The last two bytes of the source: the flow hash's last two.
        let src = prefix as u32 | hash_be & 0xffff_0000;
        let mut sum = w0 as u64 + w1 as u64 + w2 as u64 + src as u64 + dst as u64;
        if SECOND {
            // Type, length, two zero bytes; the previous target's address.
            let o0 = SECOND_CHANCE_OPTION as u32 | (SECOND_CHANCE_V4_LEN as u32) << 8;
            // SAFETY: `Backend` holds the bytes; a read of any alignment.
            let o1 = unsafe { prev.addr.as_ptr().cast::<u32>().read_unaligned() };
            sum += o0 as u64 + o1 as u64;
            // SAFETY: inside the checked bytes, right after the fixed header.
            unsafe {
                let opt = ip.add(5);
                opt.write_unaligned(o0);
                opt.add(1).write_unaligned(o1);
            }
        }
        let w2 = w2 | (csum::fold(sum) as u32) << 16;
        // SAFETY: inside the checked bytes.
        unsafe {
            ip.write_unaligned(w0);
            ip.add(1).write_unaligned(w1);
            ip.add(2).write_unaligned(w2);
            ip.add(3).write_unaligned(src);
            ip.add(4).write_unaligned(dst);
        }
    } else {
        let next = if SECOND { IPV6_DSTOPTS } else { inner_proto };
        // Version 6, traffic class 0, flow label from the flow hash (receivers and ECMP spread
        // on it); payload length, next header, hop limit.
        let w0 = 0x60 | hash_be & 0xffff_0f00;
        let payload = p.ip_len + extra as u16;
        let w1 = (payload.to_be() as u32) | (next as u32) << 16 | (TUNNEL_TTL as u32) << 24;
        // SAFETY: inside the checked bytes; `Config` and `Backend` hold the bytes read.
        unsafe {
            ip.write_unaligned(w0);
            ip.add(1).write_unaligned(w1);
            // Source: the configured prefix's first 12 bytes, then the flow hash.
            let pfx = cached.src_prefix.as_ptr().cast::<u32>();
            ip.add(2).write_unaligned(pfx.read_unaligned());
            ip.add(3).write_unaligned(pfx.add(1).read_unaligned());
            ip.add(4).write_unaligned(pfx.add(2).read_unaligned());
            ip.add(5).write_unaligned(hash_be);
            let [d0, d1] = words(&b.addr);
            ip.add(6).cast::<u64>().write_unaligned(d0);
            ip.add(8).cast::<u64>().write_unaligned(d1);
        }
        if SECOND {
            let [a0, a1] = words(&prev.addr);
            // SAFETY: inside the checked bytes, right after the fixed header.
            unsafe {
                let opt = ip.add(10);
                // Next header (the tunnel's), length in 8-byte units after the first 8; the
                // option: type, length 16, the previous target's address; a PadN of 4.
                opt.write_unaligned(
                    inner_proto as u32
                        | ((SECOND_CHANCE_V6_LEN / 8 - 1) as u32) << 8
                        | (SECOND_CHANCE_OPTION as u32) << 16
                        | 16 << 24,
                );
                opt.add(1).cast::<u64>().write_unaligned(a0);
                opt.add(3).cast::<u64>().write_unaligned(a1);
                opt.add(5).write_unaligned(1 | 2 << 8);
            }
        }
    }
    let reason = if SECOND {
        Reason::TxSecondChance
    } else {
        Reason::TxTunnel
    };
    Ok(l2::send(&hop, reason))
}
