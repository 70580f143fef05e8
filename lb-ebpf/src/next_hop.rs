//! Next hops: where a frame the datapath sends goes, and with which Ethernet addresses. Toward a
//! target (the tunnel, NAT's forward way): the kernel FIB (route and neighbour), else the
//! configured gateway, cached per CPU and target with the node settings the tunnel needs. Toward
//! a client (NAT replies): the FIB asked for every packet, else the gateway.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, Addr, Backend, CONFIG_F_NO_FIB, CONFIG_F_NO_PTB, CachedHop, Config, HOP_KERNEL,
    HOP_RESOLVED, Reason,
};
use network_types::eth::EthHdr;

use crate::{
    l2::{Macs, NextHop, copy6, copy12},
    maps::{CONFIG, FIB_ARGS, FibArgs, NEXT_HOP_TTL_NS, NEXT_HOPS},
    parse::{ptr_at, words},
    verdict::Verdict,
};

/// `CachedHop::expires_ns` of an answer that does not expire: the gateway, with the FIB off.
const NEVER: u64 = u64::MAX;

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;

/// The next hop toward `b` (backend `index`), from this CPU's cache; asked again when it is older
/// than [`NEXT_HOP_TTL_NS`], was made for another target or came in on another interface.
#[inline(always)]
pub fn toward(ctx: &XdpContext, index: u32, b: &Backend) -> Result<&'static CachedHop, Verdict> {
    let c = NEXT_HOPS
        .get_ptr_mut(index)
        .ok_or(Verdict::drop(Reason::DropNoRoute))?;
    // SAFETY: a per-CPU slot: only this CPU uses it while the program runs.
    let c = unsafe { &mut *c };
    if c.ingress == ctx.ingress_ifindex() as u32
        && c.addr == words(&b.addr)
        // SAFETY: a helper without arguments.
        && (c.expires_ns == NEVER || unsafe { bpf_ktime_get_coarse_ns() } < c.expires_ns)
    {
        return Ok(c);
    }
    fill(ctx, c, b)?;
    Ok(c)
}

/// Asks for the next hop toward `b` and writes the answer, with the node settings, into `c`.
/// Kept apart from [`toward`], which the established path runs, with all it reads.
#[inline(always)]
fn fill(ctx: &XdpContext, c: &mut CachedHop, b: &Backend) -> Result<(), Verdict> {
    let no_route = Verdict::drop(Reason::DropNoRoute);
    let cfg: &Config = CONFIG.get(0).ok_or(no_route)?;
    let ingress = ctx.ingress_ifindex() as u32;
    let v4 = b.family == AF_INET;
    let found = if cfg.flags & CONFIG_F_NO_FIB == 0 {
        fib(ctx, ingress, &b.addr, v4)
    } else {
        Err(())
    };
    // A route without a neighbour entry is not cached: the next packets find the neighbour the
    // kernel resolves.
    let mut cache = true;
    match found {
        Ok(Some(a)) => {
            c.kind = HOP_RESOLVED;
            c.redirect = a.redirect;
            // SAFETY: both hold 12 bytes.
            unsafe { copy12(c.macs.as_mut_ptr(), a.macs.as_ptr()) };
        }
        Ok(None) => {
            c.kind = HOP_KERNEL;
            c.redirect = 0;
            cache = false;
        }
        // The gateway, from the MAC the frame came to (ours, on this interface).
        Err(()) => {
            if cfg.gateway_mac == [0; 6] {
                return Err(no_route);
            }
            let eth: *const [u8; EthHdr::LEN] = ptr_at(ctx, 0).ok_or(no_route)?;
            // SAFETY: bounds checked by `ptr_at`; `Config` holds the six bytes.
            unsafe {
                let m = c.macs.as_mut_ptr();
                copy6(m, cfg.gateway_mac.as_ptr());
                copy6(m.add(6), eth.cast());
            }
            c.kind = HOP_RESOLVED;
            c.redirect = 0;
        }
    }
    c.mtu = if cfg.mtu == 0 {
        u32::MAX
    } else {
        cfg.mtu as u32
    };
    c.no_ptb = (cfg.flags & CONFIG_F_NO_PTB != 0) as u8;
    // SAFETY: `Config` holds the bytes read: 2 of the IPv4 source, 12 of the IPv6 one.
    unsafe {
        let to = c.src_prefix.as_mut_ptr();
        if v4 {
            let from = cfg.tunnel_src_v4.as_ptr().cast::<u16>();
            to.cast::<u16>().write_unaligned(from.read_unaligned());
        } else {
            copy12(to, cfg.tunnel_src_v6.as_ptr());
        }
    }
    c.addr = words(&b.addr);
    c.ingress = ingress;
    c.expires_ns = if cfg.flags & CONFIG_F_NO_FIB != 0 {
        // Only the node settings make this answer, and the agent clears the cache when it
        // writes new ones: it needs no clock.
        NEVER
    } else if cache {
        // SAFETY: a helper without arguments. Read again, not kept from `toward`: kept, it
        // would take a place on the established path's stack.
        (unsafe { bpf_ktime_get_coarse_ns() }) + NEXT_HOP_TTL_NS
    } else {
        0
    };
    Ok(())
}

/// The hop a cached answer gives.
#[inline(always)]
pub fn hop(c: &CachedHop) -> NextHop {
    NextHop {
        macs: if c.kind == HOP_KERNEL {
            Macs::Kernel
        } else {
            Macs::Resolved(&c.macs)
        },
        redirect: c.redirect,
    }
}

/// The next hop toward `dst` (a client's address, for NAT replies): the kernel FIB, asked for
/// every packet, else the configured gateway.
#[inline(always)]
pub fn route(ctx: &XdpContext, cfg: &Config, dst: &Addr, v4: bool) -> Result<NextHop, Verdict> {
    if cfg.flags & CONFIG_F_NO_FIB == 0 {
        let ingress = ctx.ingress_ifindex() as u32;
        match fib(ctx, ingress, dst, v4) {
            Ok(Some(a)) => {
                return Ok(NextHop {
                    macs: Macs::Resolved(&a.macs),
                    redirect: a.redirect,
                });
            }
            Ok(None) => return Ok(KERNEL),
            Err(()) => {}
        }
    }
    gateway(cfg)
}

/// The configured gateway, when there is one.
#[inline(always)]
fn gateway(cfg: &Config) -> Result<NextHop, Verdict> {
    if cfg.gateway_mac == [0; 6] {
        return Err(Verdict::drop(Reason::DropNoRoute));
    }
    Ok(NextHop {
        macs: Macs::Gateway(&cfg.gateway_mac),
        redirect: 0,
    })
}

/// A route, but no neighbour entry yet: the kernel resolves it (ARP, neighbour discovery) as it
/// forwards the frame, which goes to it as it is.
const KERNEL: NextHop = NextHop {
    macs: Macs::Kernel,
    redirect: 0,
};

/// The kernel's route and neighbour for `dst`, from the interface the packet came in on:
/// `Some`, the slot holding the answer's MACs and redirect; `None`, a route without a neighbour
/// entry yet; `Err`, no route. The helper's 64-byte argument lives in that per-CPU scratch slot,
/// not on the stack.
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    ingress: u32,
    dst: &Addr,
    v4: bool,
) -> Result<Option<&'static FibArgs>, ()> {
    let args = FIB_ARGS.get_ptr_mut(0).ok_or(())?;
    // What the kernel reads, as whole words (field by field, LLVM merged the zeros into a call
    // of a byte-wise `memset`): the family, with protocol, ports and length 0 (no MTU check: the
    // tunnel has its own); the ingress interface, with flow info 0; the destination (IPv4
    // addresses are zero-padded, so both families are the same two words). The answer
    // overwrites the first two words, so they are written every time; the source words (0: the
    // kernel picks) are never written by either side.
    let family = if v4 { AF_INET_KERNEL } else { AF_INET6_KERNEL };
    let [d0, d1] = words(dst);
    // SAFETY: a per-CPU slot, used only by this CPU while the program runs; `FibArgs` is
    // 8-byte aligned and starts with the 64-byte argument.
    unsafe {
        let w = &mut *args.cast::<[u64; 8]>();
        w[0] = family as u64;
        w[1] = ingress as u64;
        w[4] = d0;
        w[5] = d1;
    }
    // SAFETY: `args` holds a whole `bpf_fib_lookup` of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            args.cast(),
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Ok(None);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(());
    }
    // SAFETY: as above; read only until the next packet on this CPU.
    let a = unsafe { &mut *args };
    a.macs[..6].copy_from_slice(&a.lookup.dmac);
    a.macs[6..].copy_from_slice(&a.lookup.smac);
    let out = a.lookup.ifindex;
    a.redirect = if out == ingress { 0 } else { out };
    Ok(Some(a))
}
