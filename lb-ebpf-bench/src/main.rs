//! `xlb-bench`'s XDP programs. They live apart from xlb's (`lb-ebpf`) so that the object xlb
//! ships holds only what the agent runs; `tests/build.rs` builds this one for `xlb-bench`.
//!
//! - `xlb_bench_gen`: a traffic generator for `BPF_PROG_RUN` in live-frames mode. The kernel
//!   recycles live frames without restoring their bytes (the program under test on the other end
//!   of the veth rewrites them), so every run writes the whole frame from the template in
//!   `BENCH_GEN`, then varies the flow: the source port becomes the template's plus a per-CPU
//!   sequence number masked to the flow count, with the L4 checksum patched to match. `XDP_TX`
//!   sends the frame out of the interface named as the run's ingress.
//! - `xlb_bench_refl`: the baseline a forwarding XDP program is measured against: swaps the
//!   MACs and sends the frame back (`XDP_TX`).
//! - `xlb_bench_sink`: drops what comes back to the generator's interface (an interface whose
//!   peer sends with `XDP_TX` needs an XDP program).
//!
//! Each counts its packets in its own slot of the per-CPU `BENCH_STATS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::bench::{GEN_FRAME_MAX, GenConfig, STAT_GEN, STAT_REFLECT, STAT_SINK, STATS_LEN};

#[map]
static BENCH_GEN: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map]
static BENCH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Bumps this CPU's counter `slot`; returns its value before.
#[inline(always)]
fn count(slot: u32) -> u64 {
    match BENCH_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        Some(c) => unsafe {
            let n = *c;
            *c = n + 1;
            n
        },
        None => 0,
    }
}

/// The frame's start and end. Read volatile, as `lb-ebpf`'s `parse::data` explains, so that the
/// verifier always sees them as packet pointers.
#[inline(always)]
fn frame(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// A pointer to a `T` at `offset` in the frame, or `None` past its end. Callers bound `offset`
/// (the verifier refuses an unbounded one).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = frame(ctx);
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[xdp]
pub fn xlb_bench_gen(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<()> {
    let cfg = BENCH_GEN.get(0)?;
    let seq = count(STAT_GEN);
    let (start, end) = frame(ctx);
    let mut i = 0;
    while i < GEN_FRAME_MAX / 8 {
        if start + i * 8 + 8 > end {
            break;
        }
        // SAFETY: bounds checked just above; x86 and arm64 allow unaligned stores.
        unsafe { ((start + i * 8) as *mut u64).write_unaligned(cfg.frame[i]) };
        i += 1;
    }
    let port: *mut [u8; 2] = ptr_at(ctx, (cfg.sport_off & 0xff) as usize)?;
    // SAFETY: bounds checked by `ptr_at`.
    let old = u16::from_be_bytes(unsafe { *port });
    let new = old.wrapping_add((seq as u32 & cfg.flow_mask) as u16);
    // SAFETY: as above.
    unsafe { *port = new.to_be_bytes() };
    if cfg.csum_off != 0 {
        let csum: *mut [u8; 2] = ptr_at(ctx, (cfg.csum_off & 0xff) as usize)?;
        // RFC 1624: HC' = ~(~HC + ~m + m').
        // SAFETY: bounds checked by `ptr_at`.
        let hc = u16::from_be_bytes(unsafe { *csum });
        let mut s = (!hc) as u32 + (!old) as u32 + new as u32;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        // SAFETY: as above.
        unsafe { *csum = (!(s as u16)).to_be_bytes() };
    }
    Some(())
}

#[xdp]
pub fn xlb_bench_refl(ctx: XdpContext) -> u32 {
    count(STAT_REFLECT);
    let Some(eth) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        let e = *eth;
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&e[6..]);
        out[6..].copy_from_slice(&e[..6]);
        *eth = out;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn xlb_bench_sink(_ctx: XdpContext) -> u32 {
    count(STAT_SINK);
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
