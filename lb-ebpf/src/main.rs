//! xlb's XDP programs.
//!
//! - `xlb_lb`, the balancer: parse → VIP lookup → flow table → Maglev ring → forward → count.
//!   Each stage is a module named after it; this file holds only the entry points and the order
//!   of the stages. Stages return `Result<_, Verdict>`; the entry point counts the verdict's
//!   reason once and returns its action.
//! - `xlb_decap`, for targets: strips the tunnel the balancer adds.
//! - `xlb_pass`, a plain pass: a veth whose peer sends with `XDP_TX` needs an XDP program.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod decap;
mod encap;
mod icmp;
mod l2;
mod maps;
mod nat;
mod next_hop;
mod parse;
mod snat;
mod stats;
mod verdict;
mod vip;

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    CONFIG_F_NAT, CONFIG_F_SNAT, Config, DecapReason, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, Reason, VIP_F_NAT, VIP_F_SOURCE_IP,
};

use crate::{
    conntrack::Choice,
    icmp::Icmp,
    maps::CONFIG,
    parse::{ETH_P_IP, ETH_P_IPV6, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    verdict::Verdict,
    vip::Vip,
};

// `inline(always)` reaches the function the macro nests in the entry point: without it, LLVM
// kept that body out of line once SNAT grew it (a BPF-to-BPF call; 6.1 adds up their frames).
#[xdp]
#[inline(always)]
pub fn xlb_lb(ctx: XdpContext) -> u32 {
    let bytes = (parse::frame_len(&ctx)) as u64;
    let v = match balance(&ctx, bytes) {
        Ok(v) | Err(v) => v,
    };
    stats::reason(v.reason_index(), bytes);
    v.action()
}

#[inline(always)]
fn balance(ctx: &XdpContext, bytes: u64) -> Result<Verdict, Verdict> {
    let (ether_type, l3_off) = parse::ethernet(ctx)?;
    // The flow table's key: parsing writes it, on the stack, where the map helpers read it.
    let mut key = MaybeUninit::uninit();
    let p = match ether_type {
        ETH_P_IP => parse::ipv4(ctx, l3_off, bytes as usize, &mut key)?,
        ETH_P_IPV6 => parse::ipv6(ctx, l3_off, bytes as usize, &mut key)?,
        _ => return Ok(Verdict::pass(Reason::PassNotIp)),
    };
    if p.fragment {
        return fragment(ctx, &p, bytes);
    }
    match p.key.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Some(vip) = vip::listener(p.key.vip_key()) else {
                return not_vip(ctx, &p);
            };
            let tcp = p.key.proto == IPPROTO_TCP;
            let syn = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let closing = tcp && p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
            let choice = if tcp {
                conntrack::choose::<false>(&vip, p.key, syn, closing)
            } else {
                conntrack::choose::<true>(&vip, p.key, false, false)
            };
            // A `match`, not `and_then`: LLVM may keep a closure out of line (a BPF-to-BPF call,
            // whose frame 6.1's verifier adds to this one's), and did once SNAT grew the path.
            let sent = match choice {
                Ok(choice) => send(ctx, &p, &vip, &choice, bytes),
                Err(v) => Err(v),
            };
            counted(&vip, sent)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match icmp::handle(ctx, &p)? {
            Icmp::Reply(v) => Ok(v),
            // Translating the quoted packet for a NAT target is not built: the kernel gets it.
            Icmp::Error { vip, .. } if vip.flags & VIP_F_NAT != 0 => {
                Err(Verdict::pass(Reason::PassIcmp))
            }
            Icmp::Error { vip, key } => {
                let sent = match conntrack::existing(&vip, &key) {
                    Ok(choice) => send(ctx, &p, &vip, &choice, bytes),
                    Err(v) => Err(v),
                };
                counted(&vip, sent)
            }
        },
        other => {
            let icmp = if p.key.family == lb_common::AF_INET {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            };
            let _ = other;
            Err(match vip::address(p.key.family, &p.key.dst, icmp) {
                Some(_) => Verdict::pass(Reason::PassOtherProto),
                None => Verdict::pass(Reason::PassNotVip),
            })
        }
    }
}

/// A TCP or UDP packet to no listener: a NAT target's reply when some listener forwards by NAT
/// and `NAT_REPLIES` knows it, or an SNAT target's when `SNAT_PORTS` does, else none of xlb's
/// business.
#[inline(always)]
fn not_vip(ctx: &XdpContext, p: &Packet) -> Result<Verdict, Verdict> {
    let pass = Verdict::pass(Reason::PassNotVip);
    let cfg: &Config = CONFIG.get(0).ok_or(pass)?;
    if cfg.flags & (CONFIG_F_NAT | CONFIG_F_SNAT) == 0 {
        return Err(pass);
    }
    if cfg.flags & CONFIG_F_SNAT != 0
        && let Some(r) = snat::reply(ctx, p, cfg)
    {
        return r;
    }
    if cfg.flags & CONFIG_F_NAT == 0 {
        return Err(pass);
    }
    nat::reply(ctx, p, cfg).unwrap_or(Err(pass))
}

/// Counts a packet of listener `vip` that ends dropped in the listener's counters.
#[inline(always)]
fn counted(vip: &Vip, r: Result<Verdict, Verdict>) -> Result<Verdict, Verdict> {
    // Only an `Err` can drop: `Ok` is a packet on its way to a target.
    if let Err(v) = &r
        && v.action() == xdp_action::XDP_DROP
    {
        stats::vip_dropped(vip.index);
    }
    r
}

/// Fragment policy: all fragments of a datagram must reach one target, and only the first has
/// ports. VIPs with source-IP hashing have that property (the hash ignores ports), so their
/// fragments are forwarded by the ring; fragments to other VIP addresses are dropped and counted.
#[inline(always)]
fn fragment(ctx: &XdpContext, p: &Packet, bytes: u64) -> Result<Verdict, Verdict> {
    let vip = vip::address(p.key.family, &p.key.dst, p.key.proto)
        .ok_or(Verdict::pass(Reason::PassNotVip))?;
    // NAT rewrites ports, which later fragments do not carry.
    if vip.flags & VIP_F_SOURCE_IP == 0 || vip.flags & VIP_F_NAT != 0 {
        return counted(&vip, Err(Verdict::drop(Reason::DropFragment)));
    }
    let hash = conntrack::hash(&vip, p.key);
    let r = conntrack::ring(&vip, hash).and_then(|(index, backend)| {
        let choice = Choice {
            index,
            backend,
            hash,
            new_flow: false,
            second: None,
        };
        send(ctx, p, &vip, &choice, bytes)
    });
    counted(&vip, r)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    p: &Packet,
    vip: &Vip,
    choice: &Choice,
    bytes: u64,
) -> Result<Verdict, Verdict> {
    let v = match choice.second {
        None => encap::forward::<false>(ctx, p, vip, choice, choice.backend),
        Some(prev) => encap::forward::<true>(ctx, p, vip, choice, prev),
    }?;
    // Counted once the packet is on its way to the target (not when it was answered with
    // "too big" instead), by the datapath or by the kernel that resolves its next hop.
    stats::vip(vip.index, bytes, choice.new_flow);
    stats::backend(choice.index, bytes);
    Ok(v)
}

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let bytes = (parse::frame_len(&ctx)) as u64;
    let r = match decap::decap(&ctx) {
        Ok(r) | Err(r) => r,
    };
    stats::decap(r, bytes);
    match r {
        DecapReason::DropMalformed => xdp_action::XDP_DROP,
        DecapReason::TxSecondChance => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
