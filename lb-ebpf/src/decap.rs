//! `xlb_decap`: on a target, removes the IPIP / IP6IP6 header that the balancer added when the
//! outer destination is one of this host's addresses, and passes the inner packet on. The
//! target has the VIP on `lo` and answers the client directly.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{DecapReason, IPPROTO_IPIP, IPPROTO_IPV6};
use network_types::ip::Ipv6Hdr;

use crate::{
    maps::DECAP_ADDRS,
    parse::{ETH_P_IP, ETH_P_IPV6, ptr_at, v4},
};

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
        ((ip[0] & 0x0f) as usize * 4, ip[9], v4(d))
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const [u8; 40] = ptr_at(ctx, l3_off).ok_or(other)?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &*ip };
        let mut d = [0u8; 16];
        d.copy_from_slice(&ip[24..40]);
        (Ipv6Hdr::LEN, ip[6], d)
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
    // The inner header must be there, at least its first word with the version. (A one-byte
    // read compiles to a bounds check the verifier cannot use.)
    let inner: *const [u8; 4] = ptr_at(ctx, l3_off + outer_len).ok_or(bad)?;
    // SAFETY: bounds checked by `ptr_at`.
    let version = unsafe { (*inner)[0] } >> 4;
    if (inner_type == ETH_P_IP && version != 4) || (inner_type == ETH_P_IPV6 && version != 6) {
        return Err(bad);
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
