//! Ethernet: the header a rewritten frame leaves with, and how it leaves. Shared by the tunnel
//! (`encap`) and the ICMP answers (`icmp`).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::Reason;

use crate::{parse::ptr_at, verdict::Verdict};

/// The addresses of the Ethernet header a frame leaves with.
#[derive(Clone, Copy)]
pub enum Macs {
    /// Destination, then source: the next hop and the egress interface, from the kernel's FIB
    /// (a per-CPU cache slot, so nothing is copied to the stack).
    Resolved(*const [u8; 12]),
    /// To the configured gateway, from the MAC the frame came to (ours).
    Gateway([u8; 6]),
    /// Back to the MAC the frame came from.
    Reply,
    /// As the frame came: the kernel, which gets it, resolves the next hop itself.
    Kernel,
}

/// Where a frame goes after its headers are written.
#[derive(Clone, Copy)]
pub struct NextHop {
    pub macs: Macs,
    /// Another interface to redirect to; `None` sends it back out with `XDP_TX`.
    pub redirect: Option<u32>,
}

/// Writes the Ethernet header (and the VLAN tag the frame had) at the head of a frame whose
/// head was just moved `moved` bytes out: its old header is still there, `moved` bytes in, and
/// is read from there rather than copied aside. `moved` must be at least 18, so the two do not
/// overlap; the caller writes the headers that follow afterwards.
#[inline(always)]
pub fn write(
    ctx: &XdpContext,
    macs: Macs,
    moved: usize,
    vlan: bool,
    ether_type: u16,
) -> Result<(), Verdict> {
    let short = Verdict::drop(Reason::DropAdjust);
    let out: *mut [u8; 18] = ptr_at(ctx, 0).ok_or(short)?;
    let old: *const [u8; 18] = ptr_at(ctx, moved).ok_or(short)?;
    // SAFETY: both bounds checked by `ptr_at`; they do not overlap (`moved` >= 18).
    unsafe {
        let (out, old) = (&mut *out, &*old);
        match macs {
            Macs::Resolved(m) => out[..12].copy_from_slice(&*m),
            Macs::Gateway(dst) => {
                out[6..12].copy_from_slice(&old[..6]);
                out[..6].copy_from_slice(&dst);
            }
            Macs::Reply => {
                out[..6].copy_from_slice(&old[6..12]);
                out[6..12].copy_from_slice(&old[..6]);
            }
            Macs::Kernel => out[..12].copy_from_slice(&old[..12]),
        }
        let t = ether_type.to_be_bytes();
        if vlan {
            out[12..16].copy_from_slice(&old[12..16]);
            out[16] = t[0];
            out[17] = t[1];
        } else {
            out[12] = t[0];
            out[13] = t[1];
        }
    }
    Ok(())
}

/// The verdict that sends the frame on its way to `hop`.
#[inline(always)]
pub fn send(hop: &NextHop, reason: Reason) -> Verdict {
    if let Macs::Kernel = hop.macs {
        return Verdict::pass(Reason::PassNoNeighbour);
    }
    match hop.redirect {
        Some(ifindex) => Verdict {
            // SAFETY: a helper with plain integer arguments.
            action: unsafe { bpf_redirect(ifindex, 0) } as u32,
            reason,
        },
        None => Verdict {
            action: xdp_action::XDP_TX,
            reason,
        },
    }
}
