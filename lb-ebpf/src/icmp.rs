//! ICMP and ICMPv6 to VIP addresses: echo requests are answered here; errors about a VIP flow
//! (fragmentation needed, packet too big, unreachable, time exceeded) go to that flow's target;
//! and packets too big for the tunnel get "fragmentation needed" / "packet too big" back.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Reason, VIP_F_NO_ECHO,
};

use network_types::eth::EthHdr;

use crate::{
    csum,
    l2::{self, Macs},
    parse::{self, ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
    verdict::Verdict,
    vip::{self, Vip},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const REPLY_TTL: u8 = 64;
/// Bytes of the offending packet quoted in a generated error: an IPv4 header with the most
/// options plus 8 bytes (RFC 792); for IPv6, the header, a TCP header and some more.
/// Both are multiples of 4, as `bpf_csum_diff` requires.
pub const QUOTE_V4: usize = 68;
pub const QUOTE_V6: usize = 128;

/// What an ICMP packet to a VIP address asks for.
pub enum Icmp {
    /// Answered in place; send it back.
    Reply(Verdict),
    /// An error about the flow `key` of listener `vip`: forward it to that flow's target.
    Error { vip: Vip, key: FlowKey },
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, p: &Packet) -> Result<Icmp, Verdict> {
    // ICMPv6 inside IPv4 (or ICMP inside IPv6) is not this family's ICMP: another protocol.
    let own = if p.key.family == AF_INET {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    if p.key.proto != own {
        return Err(match vip::address(p.key.family, &p.key.dst, own) {
            Some(_) => Verdict::pass(Reason::PassOtherProto),
            None => Verdict::pass(Reason::PassNotVip),
        });
    }
    let addr = vip::address(p.key.family, &p.key.dst, p.key.proto)
        .ok_or(Verdict::pass(Reason::PassNotVip))?;
    let hdr: *const [u8; 4] = ptr_at(ctx, p.l4_off).ok_or(Verdict::drop(Reason::DropBadL4))?;
    // SAFETY: bounds checked by `ptr_at`.
    let ty = unsafe { (*hdr)[0] };
    let v4 = p.key.family == AF_INET;
    let (echo, error) = if v4 {
        (
            ty == ICMP_ECHO,
            ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED,
        )
    } else {
        (
            ty == ICMPV6_ECHO_REQUEST,
            ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PKT_TOOBIG || ty == ICMPV6_TIME_EXCEEDED,
        )
    };
    if echo && addr.flags & VIP_F_NO_ECHO == 0 {
        return echo_reply(ctx, p).map(Icmp::Reply);
    }
    if error {
        return quoted_flow(ctx, p);
    }
    Err(Verdict::pass(Reason::PassIcmp))
}

/// Turns an echo request into its reply in place: swap addresses, change the type, fix sums.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, p: &Packet) -> Result<Verdict, Verdict> {
    let bad = Verdict::drop(Reason::DropBadL4);
    let eth: *mut [u8; 12] = ptr_at(ctx, 0).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        let e = *eth;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&e[6..]);
        swapped[6..].copy_from_slice(&e[..6]);
        *eth = swapped;
    }
    let icmp: *mut [u8; 4] = ptr_at(ctx, p.l4_off).ok_or(bad)?;
    if p.key.family == AF_INET {
        let ip: *mut [u8; 20] = ptr_at(ctx, p.l3_off).ok_or(bad)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            let mut h = *ip;
            // TTL shares a checksum word with the protocol byte.
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] = REPLY_TTL;
            let c = csum::update16(
                u16::from_be_bytes([h[10], h[11]]),
                old,
                u16::from_be_bytes([h[8], h[9]]),
            );
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let mut src = [0u8; 4];
            src.copy_from_slice(&h[12..16]);
            h.copy_within(16..20, 12);
            h[16..20].copy_from_slice(&src);
            *ip = h;
            let mut i = *icmp;
            let c = csum::update16(
                u16::from_be_bytes([i[2], i[3]]),
                (ICMP_ECHO as u16) << 8,
                (ICMP_ECHO_REPLY as u16) << 8,
            );
            i[0] = ICMP_ECHO_REPLY;
            i[2..4].copy_from_slice(&c.to_be_bytes());
            *icmp = i;
        }
    } else {
        let ip: *mut [u8; 40] = ptr_at(ctx, p.l3_off).ok_or(bad)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            let mut h = *ip;
            h[7] = REPLY_TTL;
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            h.copy_within(24..40, 8);
            h[24..40].copy_from_slice(&src);
            *ip = h;
            // The pseudo header sums the same two addresses, so only the type changes the sum.
            let mut i = *icmp;
            let c = csum::update16(
                u16::from_be_bytes([i[2], i[3]]),
                (ICMPV6_ECHO_REQUEST as u16) << 8,
                (ICMPV6_ECHO_REPLY as u16) << 8,
            );
            i[0] = ICMPV6_ECHO_REPLY;
            i[2..4].copy_from_slice(&c.to_be_bytes());
            *icmp = i;
        }
    }
    Ok(Verdict::tx(Reason::TxEchoReply))
}

/// The flow an ICMP error is about. The quoted packet went VIP → client, so the client's flow
/// is its reverse.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, p: &Packet) -> Result<Icmp, Verdict> {
    let other = Verdict::pass(Reason::PassIcmp);
    let inner = p.l4_off + 8;
    let (src, dst, proto, l4) = if p.key.family == AF_INET {
        let ip: *const [u8; 20] = ptr_at(ctx, inner).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &*ip };
        // Quoted headers with options are rare enough to leave to the kernel.
        if ip[0] != 0x45 {
            return Err(other);
        }
        let s = parse::v4([ip[12], ip[13], ip[14], ip[15]]);
        let d = parse::v4([ip[16], ip[17], ip[18], ip[19]]);
        (s, d, ip[9], inner + 20)
    } else {
        let ip: *const [u8; 40] = ptr_at(ctx, inner).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &*ip };
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&ip[8..24]);
        d.copy_from_slice(&ip[24..40]);
        (s, d, ip[6], inner + 40)
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(other);
    }
    // The quoted ports must lie inside the error's own IP packet, not in bytes after it.
    if l4 + 4 > p.l3_off + p.ip_len as usize {
        return Err(other);
    }
    let ports: *const [u8; 4] = ptr_at(ctx, l4).ok_or(other)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ports = unsafe { *ports };
    let sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    let key = FlowKey {
        src: dst,
        dst: src,
        sport_be: dport_be,
        dport_be: sport_be,
        proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let vip = vip::listener(key.vip_key()).ok_or(other)?;
    Ok(Icmp::Error { vip, key })
}

/// Replaces the packet with ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6)
/// telling the client that `mtu` is the largest packet the path takes, and sends it back.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Packet, mtu: u16) -> Result<Verdict, Verdict> {
    let fail = Verdict::drop(Reason::DropAdjust);
    let v4 = p.key.family == AF_INET;
    let (ip_len, quote) = if v4 {
        (20usize, QUOTE_V4)
    } else {
        (40usize, QUOTE_V6)
    };
    if (p.ip_len as usize) < quote {
        return Err(Verdict::drop(Reason::DropTooBig));
    }
    let grow = ip_len + 8;
    let frame_len = parse::frame_len(ctx);
    // SAFETY: the helpers check the new head and tail and fail cleanly.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(fail);
    }
    // The frame is now `grow` bytes longer than it came; cut it after the quote. (Worked out
    // from the parsed length: `bpf_xdp_get_buff_len` would need Linux 5.18.)
    let new_len = p.l3_off + grow + quote;
    let cur_len = frame_len + grow;
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - cur_len as i32) } != 0 {
        return Err(fail);
    }
    l2::write(
        ctx,
        Macs::Reply,
        grow,
        p.l3_off > EthHdr::LEN,
        if v4 { ETH_P_IP } else { ETH_P_IPV6 },
    )?;
    let icmp_off = p.l3_off + ip_len;
    let msg_len = 8 + quote;
    let mut icmp = [0u8; 8];
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let mut sum: u64;
    if v4 {
        icmp[0] = ICMP_DEST_UNREACH;
        icmp[1] = ICMP_FRAG_NEEDED;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[1] = 0xc0; // precedence "internetwork control", as routers send errors
        ip[2..4].copy_from_slice(&((20 + msg_len) as u16).to_be_bytes());
        ip[8] = REPLY_TTL;
        ip[9] = IPPROTO_ICMP;
        ip[12..16].copy_from_slice(&p.key.dst[..4]);
        ip[16..20].copy_from_slice(&p.key.src[..4]);
        let c = csum::ipv4_header(&ip).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        let out: *mut [u8; 20] = ptr_at(ctx, p.l3_off).ok_or(fail)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { *out = ip };
        sum = 0;
    } else {
        icmp[0] = ICMPV6_PKT_TOOBIG;
        let ip: *mut [u8; 40] = ptr_at(ctx, p.l3_off).ok_or(fail)?;
        // SAFETY: bounds checked by `ptr_at`. Written in place: stack is scarce here.
        unsafe {
            let ip = &mut *ip;
            // Version 6, traffic class and flow label 0 (set byte by byte: a whole zeroed
            // header compiles to a call of `memset`, one more frame on the stack).
            ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&(msg_len as u16).to_be_bytes());
            ip[6] = IPPROTO_ICMPV6;
            ip[7] = REPLY_TTL;
            ip[8..24].copy_from_slice(&p.key.dst);
            ip[24..40].copy_from_slice(&p.key.src);
        }
        // Pseudo header: both addresses, upper-layer length, next header.
        sum = csum::sum_addr(&p.key.src)
            + csum::sum_addr(&p.key.dst)
            + msg_len as u64
            + IPPROTO_ICMPV6 as u64;
    }
    let hdr: *mut [u8; 8] = ptr_at(ctx, icmp_off).ok_or(fail)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *hdr = icmp };
    // The message (header with a zero checksum, then the quote) summed by the kernel helper; the
    // pointer's type carries the length so the verifier sees the whole range checked.
    let partial = if v4 {
        let body: *mut [u8; 8 + QUOTE_V4] = ptr_at(ctx, icmp_off).ok_or(fail)?;
        // SAFETY: the whole message is inside the packet (checked by `ptr_at`).
        unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                body.cast(),
                (8 + QUOTE_V4) as u32,
                0,
            )
        }
    } else {
        let body: *mut [u8; 8 + QUOTE_V6] = ptr_at(ctx, icmp_off).ok_or(fail)?;
        // SAFETY: as above.
        unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                body.cast(),
                (8 + QUOTE_V6) as u32,
                0,
            )
        }
    };
    if partial < 0 {
        return Err(fail);
    }
    // The helper sums 16-bit words in host (little-endian) order; a one's complement sum
    // byte-swaps cleanly, so fold it and swap to add it to the big-endian pseudo header sum.
    sum += csum::fold_sum(partial as u64).swap_bytes() as u64;
    let c = csum::fold(sum).to_be_bytes();
    let ck: *mut [u8; 2] = ptr_at(ctx, icmp_off + 2).ok_or(fail)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *ck = c };
    Ok(Verdict::tx(Reason::TxTooBig))
}
