//! Next hops: where a frame the datapath sends goes, and with which Ethernet addresses. The kernel
//! FIB (route and neighbour), cached per CPU and target for the tunnel and NAT's forward way; asked
//! for every NAT reply; else the configured gateway.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{Addr, Backend, CONFIG_F_NO_FIB, Config, Reason};

use crate::{
    l2::{Macs, NextHop},
    maps::{CachedHop, FIB_ARGS, FibArgs, NEXT_HOP_TTL_NS, NEXT_HOPS},
    parse::words,
    verdict::Verdict,
};

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;

/// The next hop toward `b` (backend `index`): the kernel FIB (route and neighbour), cached per
/// CPU for a second, else the configured gateway. `v4`: `b` is an IPv4 target.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    cfg: &Config,
    index: u32,
    b: &Backend,
    v4: bool,
) -> Result<NextHop, Verdict> {
    if cfg.flags & CONFIG_F_NO_FIB == 0
        && let Some(c) = NEXT_HOPS.get_ptr_mut(index)
    {
        let ingress = ctx.ingress_ifindex() as u32;
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // SAFETY: a per-CPU slot: only this CPU uses it while the program runs.
        let c = unsafe { &mut *c };
        if now < c.expires_ns && c.ingress == ingress && c.addr == words(&b.addr) {
            return Ok(hop(c));
        }
        match fib(ctx, ingress, &b.addr, v4) {
            Ok(Some(a)) => {
                c.addr = words(&b.addr);
                c.expires_ns = now + NEXT_HOP_TTL_NS;
                c.ingress = ingress;
                c.redirect = a.redirect;
                c.macs[..6].copy_from_slice(&a.macs[..6]);
                c.macs[6..].copy_from_slice(&a.macs[6..]);
                return Ok(hop(c));
            }
            // Not cached: the next packets find the neighbour the kernel resolves.
            Ok(None) => return Ok(KERNEL),
            Err(()) => {}
        }
    }
    gateway(cfg)
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

/// The hop a cached FIB answer gives.
#[inline(always)]
fn hop(c: &CachedHop) -> NextHop {
    NextHop {
        macs: Macs::Resolved(&c.macs),
        redirect: c.redirect,
    }
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
