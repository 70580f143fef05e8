//! `xlb_decap`: on a target, removes the IPIP / IP6IP6 header that the balancer added when the
//! outer destination is one of this host's addresses, and passes the inner packet on. The
//! target has the VIP on `lo` and answers the client directly.
//!
//! Second chance: a tunnel packet that names the previous table's target (see
//! [`SECOND_CHANCE_OPTION`]) is a TCP packet of a connection a balancer node had not seen. When
//! this host has no socket for it (none, or only a listener), it is not this host's connection:
//! the packet goes on to the named target, re-addressed from this host, back out through the hop
//! it came from (a router or the balancer node, which route it like any packet to a target).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    Addr, DecapReason, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, SECOND_CHANCE_OPTION,
    SECOND_CHANCE_V4_LEN, SECOND_CHANCE_V6_LEN,
};
use network_types::ip::Ipv6Hdr;

use crate::{
    csum,
    maps::DECAP_ADDRS,
    parse::{ETH_P_IP, ETH_P_IPV6, IPV6_DSTOPTS, TCP_SYN, ptr_at, v4},
};

/// `TCP_LISTEN` in the kernel's socket states: a listener is not a connection.
const TCP_LISTEN: u32 = 10;

/// Decapsulates in place; `Err` carries the reason the frame was left alone or dropped.
#[inline(always)]
pub fn decap(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let other = DecapReason::PassOther;
    let bad = DecapReason::DropMalformed;
    let eth: *const [u8; 14] = ptr_at(ctx, 0).ok_or(other)?;
    // SAFETY: bounds checked by `ptr_at`.
    let eth = unsafe { *eth };
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3_off = 14;
    let mut vlan = [0u8; 4];
    if ether_type == 0x8100 || ether_type == 0x88a8 {
        let tag: *const [u8; 4] = ptr_at(ctx, 14).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        vlan = unsafe { *tag };
        ether_type = u16::from_be_bytes([vlan[2], vlan[3]]);
        l3_off = 18;
    }
    // The outer header's length, the tunnelled protocol, the outer destination, and the
    // second chance's target if the header names one.
    let mut second: Option<Addr> = None;
    let (outer_len, next, dst) = if ether_type == ETH_P_IP {
        let ip: *const [u8; 20] = ptr_at(ctx, l3_off).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &*ip };
        // A fragment of a tunnel packet (MF or an offset): only the kernel can reassemble it.
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return Err(other);
        }
        let mut d = [0u8; 4];
        d.copy_from_slice(&ip[16..20]);
        let len = (ip[0] & 0x0f) as usize * 4;
        if len == 20 + SECOND_CHANCE_V4_LEN {
            let opt: *const [u8; SECOND_CHANCE_V4_LEN] = ptr_at(ctx, l3_off + 20).ok_or(bad)?;
            // SAFETY: bounds checked by `ptr_at`.
            let opt = unsafe { *opt };
            if opt[0] == SECOND_CHANCE_OPTION && opt[1] as usize == SECOND_CHANCE_V4_LEN {
                second = Some(v4([opt[4], opt[5], opt[6], opt[7]]));
            }
        }
        (len, ip[9], v4(d))
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const [u8; 40] = ptr_at(ctx, l3_off).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &*ip };
        let mut d = [0u8; 16];
        d.copy_from_slice(&ip[24..40]);
        let mut next = ip[6];
        let mut len = Ipv6Hdr::LEN;
        if next == IPV6_DSTOPTS {
            let ext: *const [u8; SECOND_CHANCE_V6_LEN] =
                ptr_at(ctx, l3_off + Ipv6Hdr::LEN).ok_or(other)?;
            // SAFETY: bounds checked by `ptr_at`.
            let ext = unsafe { &*ext };
            // Only the header the balancer writes; other destination options are the kernel's.
            if ext[1] as usize != SECOND_CHANCE_V6_LEN / 8 - 1
                || ext[2] != SECOND_CHANCE_OPTION
                || ext[3] != 16
            {
                return Err(other);
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&ext[4..20]);
            second = Some(a);
            next = ext[0];
            len += SECOND_CHANCE_V6_LEN;
        }
        (len, next, d)
    } else {
        return Err(other);
    };
    let inner_type = match next {
        IPPROTO_IPIP => ETH_P_IP,
        IPPROTO_IPV6 => ETH_P_IPV6,
        _ => return Err(other),
    };
    // SAFETY: the value is not kept.
    if unsafe { DECAP_ADDRS.get(dst) }.is_none() {
        return Err(other);
    }
    if outer_len < 20 {
        return Err(bad);
    }
    let inner_off = l3_off + outer_len;
    // The inner header must be there, at least its first word with the version. (A one-byte
    // read compiles to a bounds check the verifier cannot use.)
    let inner: *const [u8; 4] = ptr_at(ctx, inner_off).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    let version = unsafe { (*inner)[0] } >> 4;
    if (inner_type == ETH_P_IP && version != 4) || (inner_type == ETH_P_IPV6 && version != 6) {
        return Err(bad);
    }
    if let Some(prev) = second
        && !has_socket(ctx, inner_type == ETH_P_IP, inner_off)
    {
        let front = Front { eth, vlan, l3_off };
        return hand_on(ctx, &front, ether_type == ETH_P_IP, &prev, &dst);
    }
    // Write the Ethernet header (and tag) just in front of the inner packet, then move the head
    // there. outer_len ≥ 20 > 18, so the new header never overlaps the old one.
    let t = inner_type.to_be_bytes();
    let new: *mut [u8; 14] = ptr_at(ctx, outer_len).ok_or(bad)?;
    let mut e = eth;
    if l3_off == 18 {
        let tail: *mut [u8; 4] = ptr_at(ctx, outer_len + 14).ok_or(bad)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { *tail = [vlan[0], vlan[1], t[0], t[1]] };
    } else {
        e[12] = t[0];
        e[13] = t[1];
    }
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *new = e };
    // SAFETY: the helper checks the new head against the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(bad);
    }
    Ok(DecapReason::Decapsulated)
}

/// Whether the inner packet at `off` is this host's to take: not TCP, a SYN (a new connection
/// is whoever's the table says), or a TCP segment with a socket here other than a listener
/// (a connection, a handshake in progress, or one in TIME_WAIT). A truncated inner header is
/// left to the kernel too.
#[inline(always)]
fn has_socket(ctx: &XdpContext, inner_v4: bool, off: usize) -> bool {
    // `bpf_sock_tuple` as words: addresses (client, then VIP), then both ports as they are on
    // the wire; only the `size` bytes the helper reads are written. (A zeroed array here is a
    // call of a byte-wise `memset`.)
    let mut t = MaybeUninit::<[u64; 5]>::uninit();
    let w = t.as_mut_ptr().cast::<u64>();
    let size = if inner_v4 {
        let Some(ip) = ptr_at::<[u32; 5]>(ctx, off) else {
            return true;
        };
        let ip = ip.cast::<u32>();
        // SAFETY: bounds checked by `ptr_at`.
        let (w0, w1, w2) = unsafe {
            (
                ip.read_unaligned(),
                ip.add(1).read_unaligned(),
                ip.add(2).read_unaligned(),
            )
        };
        // Not TCP, or a fragment (MF or an offset): no ports to look up by.
        if (w2 >> 8) & 0xff != IPPROTO_TCP as u32 || w1 & 0xff3f_0000 != 0 {
            return true;
        }
        let Some(tcp) = ptr_at::<[u32; 4]>(ctx, off + (w0 & 0x0f) as usize * 4) else {
            return true;
        };
        let tcp = tcp.cast::<u32>();
        // SAFETY: bounds checked by `ptr_at`; `w` points at 40 bytes of stack.
        unsafe {
            if (tcp.add(3).read_unaligned() >> 8) as u8 & TCP_SYN != 0 {
                return true;
            }
            w.write(ip.add(3).cast::<u64>().read_unaligned());
            w.add(1).write(tcp.read_unaligned() as u64);
        }
        12
    } else {
        let Some(ip) = ptr_at::<[u32; 10]>(ctx, off) else {
            return true;
        };
        let ip = ip.cast::<u32>();
        // Next header right after the fixed header; extension headers are left to the kernel.
        // SAFETY: bounds checked by `ptr_at`.
        if (unsafe { ip.add(1).read_unaligned() } >> 16) & 0xff != IPPROTO_TCP as u32 {
            return true;
        }
        let Some(tcp) = ptr_at::<[u32; 4]>(ctx, off + Ipv6Hdr::LEN) else {
            return true;
        };
        let tcp = tcp.cast::<u32>();
        // SAFETY: bounds checked by `ptr_at`; `w` points at 40 bytes of stack.
        unsafe {
            if (tcp.add(3).read_unaligned() >> 8) as u8 & TCP_SYN != 0 {
                return true;
            }
            let a = ip.add(2).cast::<u64>();
            w.write(a.read_unaligned());
            w.add(1).write(a.add(1).read_unaligned());
            w.add(2).write(a.add(2).read_unaligned());
            w.add(3).write(a.add(3).read_unaligned());
            w.add(4).write(tcp.read_unaligned() as u64);
        }
        36
    };
    // SAFETY: `t` holds a whole `bpf_sock_tuple` of `size` bytes; the socket the helper returns
    // is released on every path.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            w.cast::<bpf_sock_tuple>(),
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let state = core::ptr::read_volatile(&(*sk).state);
        bpf_sk_release(sk.cast());
        state != TCP_LISTEN
    }
}

/// What the frame had in front of its outer IP header.
struct Front {
    eth: [u8; 14],
    vlan: [u8; 4],
    l3_off: usize,
}

/// Sends a second-chance packet on to `prev`: the option goes, the outer header moves in over
/// it with `prev` as its destination and this host (`local`, the old destination) as its
/// source, and the frame goes back to the MAC it came from. `outer_v4`: an IPv4 outer header.
#[inline(always)]
fn hand_on(
    ctx: &XdpContext,
    front: &Front,
    outer_v4: bool,
    prev: &Addr,
    local: &Addr,
) -> Result<DecapReason, DecapReason> {
    let bad = DecapReason::DropMalformed;
    let l3 = front.l3_off;
    let cut = if outer_v4 {
        SECOND_CHANCE_V4_LEN
    } else {
        SECOND_CHANCE_V6_LEN
    };
    if outer_v4 {
        let ip: *mut [u32; 5] = ptr_at(ctx, l3).ok_or(bad)?;
        let new: *mut [u32; 5] = ptr_at(ctx, l3 + cut).ok_or(bad)?;
        // SAFETY: both bounds checked by `ptr_at`; every word of the old header is read before
        // the new one, which overlaps it, is written.
        unsafe {
            let (ip, new) = (ip.cast::<u32>(), new.cast::<u32>());
            let (w0, w1, w2) = (
                ip.read_unaligned(),
                ip.add(1).read_unaligned(),
                ip.add(2).read_unaligned(),
            );
            // IHL 5; total length without the option; checksum over the new words.
            let total = u16::from_be((w0 >> 16) as u16) - cut as u16;
            let w0 = (w0 & 0xff00) | 0x45 | (total.to_be() as u32) << 16;
            let w2 = w2 & 0xffff;
            let src = local.as_ptr().cast::<u32>().read_unaligned();
            let dst = prev.as_ptr().cast::<u32>().read_unaligned();
            let sum = w0 as u64 + w1 as u64 + w2 as u64 + src as u64 + dst as u64;
            new.write_unaligned(w0);
            new.add(1).write_unaligned(w1);
            new.add(2)
                .write_unaligned(w2 | (csum::fold(sum) as u32) << 16);
            new.add(3).write_unaligned(src);
            new.add(4).write_unaligned(dst);
        }
    } else {
        let ip: *mut [u32; 2] = ptr_at(ctx, l3).ok_or(bad)?;
        let ext: *const [u8; 1] = ptr_at(ctx, l3 + Ipv6Hdr::LEN).ok_or(bad)?;
        let new: *mut [u32; 10] = ptr_at(ctx, l3 + cut).ok_or(bad)?;
        // SAFETY: all bounds checked by `ptr_at`; what the new header takes from the old one
        // (first two words, the extension's next header) is read before it is written.
        unsafe {
            let (ip, new) = (ip.cast::<u32>(), new.cast::<u32>());
            let (w0, w1, next) = (ip.read_unaligned(), ip.add(1).read_unaligned(), (*ext)[0]);
            let payload = u16::from_be(w1 as u16) - cut as u16;
            let w1 = (w1 & 0xff00_0000) | (next as u32) << 16 | payload.to_be() as u32;
            let src = local.as_ptr().cast::<u64>();
            let dst = prev.as_ptr().cast::<u64>();
            new.write_unaligned(w0);
            new.add(1).write_unaligned(w1);
            new.add(2)
                .cast::<u64>()
                .write_unaligned(src.read_unaligned());
            new.add(4)
                .cast::<u64>()
                .write_unaligned(src.add(1).read_unaligned());
            new.add(6)
                .cast::<u64>()
                .write_unaligned(dst.read_unaligned());
            new.add(8)
                .cast::<u64>()
                .write_unaligned(dst.add(1).read_unaligned());
        }
    }
    // The Ethernet header (and tag), addressed back to where the frame came from.
    let mut e = front.eth;
    e.copy_within(6..12, 0);
    e[6..12].copy_from_slice(&front.eth[0..6]);
    let out: *mut [u8; 14] = ptr_at(ctx, cut).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *out = e };
    if l3 == 18 {
        let tag: *mut [u8; 4] = ptr_at(ctx, cut + 14).ok_or(bad)?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { *tag = front.vlan };
    }
    // SAFETY: the helper checks the new head against the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, cut as i32) } != 0 {
        return Err(bad);
    }
    Ok(DecapReason::TxSecondChance)
}
