//! Stage 6: count. Per-CPU arrays, so no atomics on the hot path.

use lb_common::{Counters, DecapReason};

use crate::maps::{BACKEND_STATS, DECAP_STATS, REASON_STATS, VIP_STATS};

#[inline(always)]
fn add(c: Option<*mut Counters>, bytes: u64) {
    if let Some(c) = c {
        // SAFETY: a per-CPU array slot: only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn reason(index: u32, bytes: u64) {
    add(REASON_STATS.get_ptr_mut(index), bytes);
}

#[inline(always)]
pub fn decap(r: DecapReason, bytes: u64) {
    add(DECAP_STATS.get_ptr_mut(r as u32), bytes);
}

#[inline(always)]
pub fn backend(index: u32, bytes: u64) {
    add(BACKEND_STATS.get_ptr_mut(index), bytes);
}

#[inline(always)]
pub fn vip(index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = VIP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            // A branch: most packets belong to a flow that exists, and then nothing is written.
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

/// A packet to listener `index` that was dropped.
#[inline(always)]
pub fn vip_dropped(index: u32) {
    if let Some(c) = VIP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as above.
        unsafe { (*c).dropped += 1 };
    }
}
