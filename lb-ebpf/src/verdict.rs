//! The one return type of every stage: an XDP action and the reason it was chosen.

use aya_ebpf::bindings::xdp_action;
use lb_common::Reason;

/// How a packet leaves the program. Stages return `Result<_, Verdict>`: `Err` stops the pipeline
/// here, and the entry point counts the reason exactly once.
///
/// The action and the reason packed in one integer (action above the reason's byte): a stage that
/// may end sets one register, not two.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Verdict(u32);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, reason: Reason) -> Self {
        Verdict(action << 8 | reason as u32)
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict::new(xdp_action::XDP_DROP, reason)
    }
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict::new(xdp_action::XDP_PASS, reason)
    }
    #[inline(always)]
    pub const fn tx(reason: Reason) -> Self {
        Verdict::new(xdp_action::XDP_TX, reason)
    }
    /// The XDP action.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 >> 8
    }
    /// The reason, as its index in `REASON_STATS`.
    #[inline(always)]
    pub const fn reason_index(self) -> u32 {
        self.0 & 0xff
    }
}
