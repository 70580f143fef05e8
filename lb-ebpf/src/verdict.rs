//! The one return type of every stage: an XDP action and the reason it was chosen.

use aya_ebpf::bindings::xdp_action;
use lb_common::Reason;

/// How a packet leaves the program. Stages return `Result<_, Verdict>`: `Err` stops the pipeline
/// here, and the entry point counts `reason` exactly once.
/// Eight bytes: it travels in a register.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }
    #[inline(always)]
    pub const fn tx(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}
