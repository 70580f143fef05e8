//! Stage 5: forward. IPIP / IP6IP6 tunnel or L2 DSR, out the same interface (`XDP_TX`) or
//! another one (`bpf_redirect`), with the next hop from the kernel FIB.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_xdp_adjust_head,
    },
    programs::XdpContext,
};
use lb_common::{
    AF_INET, AF_INET6, Addr, Backend, CONFIG_F_NO_FIB, CONFIG_F_NO_PTB, Config, IPPROTO_IPIP,
    IPPROTO_IPV6, Reason, VIP_F_DSR, VipMeta,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    conntrack::Choice,
    csum, icmp,
    maps::{NEXT_HOP_TTL_NS, NEXT_HOPS},
    parse::{ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
    verdict::Verdict,
};

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;
const TUNNEL_TTL: u8 = 64;

/// Where a frame goes after its headers are written.
pub struct NextHop {
    dst_mac: [u8; 6],
    /// From the FIB; `None` keeps the frame's own destination MAC (ours) as the source.
    src_mac: Option<[u8; 6]>,
    /// Another interface to redirect to; `None` sends it back out with `XDP_TX`.
    redirect: Option<u32>,
}

/// Sends the packet to the chosen backend the way its VIP says.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    p: &Packet,
    vip: &VipMeta,
    choice: &Choice,
    cfg: &Config,
) -> Result<Verdict, Verdict> {
    if vip.flags & VIP_F_DSR != 0 {
        return dsr(ctx, &choice.backend);
    }
    // Checked here rather than in `tunnel` so the two out-of-line calls are siblings: the
    // verifier adds up the stack of nested calls.
    let outer_len = if choice.backend.family == AF_INET {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    };
    if cfg.mtu != 0 && p.ip_len as usize + outer_len > cfg.mtu as usize {
        if cfg.flags & CONFIG_F_NO_PTB != 0 || !p.dont_fragment {
            return Err(Verdict::drop(Reason::DropTooBig));
        }
        return Ok(icmp::too_big(ctx, p, cfg.mtu - outer_len as u16));
    }
    Ok(tunnel(ctx, p, choice, cfg))
}

/// L2 DSR: the target has the VIP on a local interface; only the destination MAC changes.
#[inline(always)]
fn dsr(ctx: &XdpContext, backend: &Backend) -> Result<Verdict, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::drop(Reason::DropShortEth))?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = backend.mac;
    }
    Ok(Verdict::tx(Reason::TxDsr))
}

#[inline(never)]
fn tunnel(ctx: &XdpContext, p: &Packet, choice: &Choice, cfg: &Config) -> Verdict {
    // Out of line, returning the 8-byte verdict by value: a `Result` would come back through a
    // pointer, which the verifier does not allow across BPF-to-BPF calls in every form.
    match encapsulate(ctx, p, choice, cfg) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    p: &Packet,
    choice: &Choice,
    cfg: &Config,
) -> Result<Verdict, Verdict> {
    let b = &choice.backend;
    let outer_len = if b.family == AF_INET {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    };
    let hop = next_hop(ctx, cfg, choice.index, b)?;

    // Keep the Ethernet header (and VLAN tag) before the head moves.
    let eth: *const [u8; 14] = ptr_at(ctx, 0).ok_or(Verdict::drop(Reason::DropShortEth))?;
    // SAFETY: bounds checked by `ptr_at`.
    let eth = unsafe { *eth };
    let vlan = if p.l3_off > EthHdr::LEN {
        let v: *const [u8; 4] = ptr_at(ctx, 12).ok_or(Verdict::drop(Reason::DropShortEth))?;
        // SAFETY: bounds checked by `ptr_at`.
        Some(unsafe { *v })
    } else {
        None
    };

    // SAFETY: the helper checks the new head against the headroom and fails cleanly.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    let outer_type = if b.family == AF_INET {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    write_eth(ctx, &hop, &eth, vlan, outer_type)?;
    let inner_proto = if p.family == AF_INET {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let h = choice.hash.to_be_bytes();
    if b.family == AF_INET {
        let mut ip = [0u8; 20];
        let total = (p.ip_len as usize + Ipv4Hdr::LEN) as u16;
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        // RFC 2003: copy the inner DF bit to the outer header.
        ip[6] = if p.dont_fragment { 0x40 } else { 0 };
        ip[8] = TUNNEL_TTL;
        ip[9] = inner_proto;
        ip[12] = cfg.tunnel_src_v4[0];
        ip[13] = cfg.tunnel_src_v4[1];
        ip[14] = h[2];
        ip[15] = h[3];
        ip[16..20].copy_from_slice(&b.addr[..4]);
        let c = csum::ipv4_header(&ip).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        let out: *mut [u8; 20] = ptr_at(ctx, p.l3_off).ok_or(Verdict::drop(Reason::DropAdjust))?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { *out = ip };
    } else {
        let ip: *mut [u8; 40] = ptr_at(ctx, p.l3_off).ok_or(Verdict::drop(Reason::DropAdjust))?;
        // SAFETY: bounds checked by `ptr_at`. Written in place: stack is scarce here.
        unsafe {
            let ip = &mut *ip;
            // Version 6, traffic class 0, flow label from the flow hash (receivers and ECMP
            // spread on it).
            ip[0] = 0x60;
            ip[1] = h[1] & 0x0f;
            ip[2] = h[2];
            ip[3] = h[3];
            ip[4..6].copy_from_slice(&p.ip_len.to_be_bytes());
            ip[6] = inner_proto;
            ip[7] = TUNNEL_TTL;
            ip[8..20].copy_from_slice(&cfg.tunnel_src_v6[..12]);
            ip[20..24].copy_from_slice(&h);
            ip[24..40].copy_from_slice(&b.addr);
        }
    }
    Ok(send(&hop, Reason::TxTunnel))
}

#[inline(always)]
fn send(hop: &NextHop, reason: Reason) -> Verdict {
    match hop.redirect {
        // SAFETY: a helper with plain integer arguments.
        Some(ifindex) => Verdict {
            action: unsafe { bpf_redirect(ifindex, 0) } as u32,
            reason,
        },
        None => Verdict {
            action: xdp_action::XDP_TX,
            reason,
        },
    }
}

/// Writes the Ethernet header (and the VLAN tag it had) at the head of the frame.
#[inline(always)]
pub fn write_eth(
    ctx: &XdpContext,
    hop: &NextHop,
    old: &[u8; 14],
    vlan: Option<[u8; 4]>,
    ether_type: u16,
) -> Result<(), Verdict> {
    let short = Verdict::drop(Reason::DropAdjust);
    let out: *mut [u8; 14] = ptr_at(ctx, 0).ok_or(short)?;
    let mut eth = [0u8; 14];
    eth[..6].copy_from_slice(&hop.dst_mac);
    match hop.src_mac {
        Some(mac) => eth[6..12].copy_from_slice(&mac),
        // The frame came to our MAC: that is the source now.
        None => eth[6..12].copy_from_slice(&old[..6]),
    }
    let t = ether_type.to_be_bytes();
    match vlan {
        Some(tag) => {
            eth[12] = tag[0];
            eth[13] = tag[1];
            let rest: *mut [u8; 4] = ptr_at(ctx, 14).ok_or(short)?;
            // SAFETY: bounds checked by `ptr_at`.
            unsafe { *rest = [tag[2], tag[3], t[0], t[1]] };
        }
        None => {
            eth[12] = t[0];
            eth[13] = t[1];
        }
    }
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *out = eth };
    Ok(())
}

/// The next hop toward `b` (backend `index`): the kernel FIB (route and neighbour), cached per
/// CPU for a second, else the configured gateway.
#[inline(always)]
fn next_hop(ctx: &XdpContext, cfg: &Config, index: u32, b: &Backend) -> Result<NextHop, Verdict> {
    if cfg.flags & CONFIG_F_NO_FIB == 0 {
        let ingress = ctx.ingress_ifindex() as u32;
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let cached = NEXT_HOPS.get_ptr_mut(index);
        if let Some(c) = cached {
            // SAFETY: a per-CPU slot: only this CPU uses it while the program runs.
            let c = unsafe { &*c };
            if now < c.expires_ns && c.ingress == ingress && c.addr == words(&b.addr) {
                return Ok(hop(ingress, c.ifindex, c.dst_mac, c.src_mac));
            }
        }
        if let Some(fib) = fib(ctx, ingress, b) {
            if let Some(c) = cached {
                // SAFETY: as above.
                unsafe {
                    (*c).addr = words(&b.addr);
                    (*c).expires_ns = now + NEXT_HOP_TTL_NS;
                    (*c).ingress = ingress;
                    (*c).ifindex = fib.ifindex;
                    (*c).dst_mac = fib.dmac;
                    (*c).src_mac = fib.smac;
                }
            }
            return Ok(hop(ingress, fib.ifindex, fib.dmac, fib.smac));
        }
    }
    if cfg.gateway_mac == [0; 6] {
        return Err(Verdict::drop(Reason::DropNoRoute));
    }
    Ok(NextHop {
        dst_mac: cfg.gateway_mac,
        src_mac: None,
        redirect: None,
    })
}

/// An address as two words. `Backend` is 8-byte aligned, so these are two loads, not sixteen.
#[inline(always)]
fn words(a: &Addr) -> [u64; 2] {
    // SAFETY: same size; any bits are valid for both.
    unsafe { core::mem::transmute::<Addr, [u64; 2]>(*a) }
}

#[inline(always)]
fn hop(ingress: u32, ifindex: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> NextHop {
    NextHop {
        dst_mac,
        src_mac: Some(src_mac),
        redirect: (ifindex != ingress).then_some(ifindex),
    }
}

/// The kernel's route and neighbour for `b`, from the interface the packet came in on.
#[inline(always)]
fn fib(ctx: &XdpContext, ingress: u32, b: &Backend) -> Option<bpf_fib_lookup> {
    // SAFETY: plain data; every field the kernel reads is set below.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    if b.family == AF_INET {
        params.family = AF_INET_KERNEL;
        params.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
    } else if b.family == AF_INET6 {
        params.family = AF_INET6_KERNEL;
        // SAFETY: [u8; 16] and [u32; 4] have the same size; any bits are valid.
        params.__bindgen_anon_4.ipv6_dst =
            unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(b.addr) };
    }
    // SAFETY: `params` is a valid, initialised struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(params)
}

/// Builds a NextHop that turns the frame around to where it came from.
#[inline(always)]
pub fn back_to_sender(ctx: &XdpContext) -> Result<(NextHop, [u8; 14]), Verdict> {
    let eth: *const [u8; 14] = ptr_at(ctx, 0).ok_or(Verdict::drop(Reason::DropShortEth))?;
    // SAFETY: bounds checked by `ptr_at`.
    let eth = unsafe { *eth };
    let mut src = [0u8; 6];
    src.copy_from_slice(&eth[6..12]);
    Ok((
        NextHop {
            dst_mac: src,
            src_mac: None,
            redirect: None,
        },
        eth,
    ))
}
