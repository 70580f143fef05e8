//! Ethernet: the header a rewritten frame leaves with, and how it leaves. Shared by the tunnel
//! (`encap`) and the ICMP answers (`icmp`).

use aya_ebpf::{helpers::bpf_redirect, programs::XdpContext};
use lb_common::Reason;

use crate::{parse::ptr_at, verdict::Verdict};

/// The addresses of the Ethernet header a frame leaves with.
#[derive(Clone, Copy)]
pub enum Macs {
    /// Destination, then source: the next hop and the egress interface, from the kernel's FIB
    /// (a per-CPU cache slot, so nothing is copied to the stack).
    Resolved(*const [u8; 12]),
    /// To the configured gateway, from the MAC the frame came to (ours).
    Gateway(*const [u8; 6]),
    /// Back to the MAC the frame came from.
    Reply,
    /// As the frame came: the kernel, which gets it, resolves the next hop itself.
    Kernel,
}

/// Where a frame goes after its headers are written.
#[derive(Clone, Copy)]
pub struct NextHop {
    pub macs: Macs,
    /// Another interface to redirect to; 0 sends it back out with `XDP_TX`.
    pub redirect: u32,
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
    ptr_at::<[u8; 18]>(ctx, moved).ok_or(short)?;
    // SAFETY: both bounds checked by `ptr_at`.
    unsafe { write_at(out.cast(), macs, moved, vlan, ether_type) };
    Ok(())
}

/// [`write`] at `out`, the frame's first byte.
///
/// # Safety
/// `out` is valid for `moved + 18` bytes, and `moved` is at least 18.
#[inline(always)]
pub unsafe fn write_at(out: *mut u8, macs: Macs, moved: usize, vlan: bool, ether_type: u16) {
    // SAFETY: the caller's; the two headers do not overlap.
    unsafe {
        let old = out.add(moved).cast_const();
        match macs {
            Macs::Resolved(m) => copy12(out, m.cast()),
            Macs::Gateway(dst) => {
                copy6(out.add(6), old);
                copy6(out, dst.cast());
            }
            Macs::Reply => {
                copy6(out, old.add(6));
                copy6(out.add(6), old);
            }
            Macs::Kernel => copy12(out, old),
        }
        let t = ether_type.to_be();
        if vlan {
            copy_unaligned::<u32>(out.add(12), old.add(12));
            out.add(16).cast::<u16>().write_unaligned(t);
        } else {
            out.add(12).cast::<u16>().write_unaligned(t);
        }
    }
}

/// Writes the Ethernet addresses `macs` says into a frame that keeps its headers (NAT).
///
/// # Safety
/// `eth`, the frame's first byte, is valid for 12 bytes.
#[inline(always)]
pub unsafe fn set_macs(eth: *mut u8, macs: Macs) {
    // SAFETY: the caller's.
    unsafe {
        match macs {
            Macs::Resolved(m) => copy12(eth, m.cast()),
            Macs::Gateway(dst) => {
                copy6(eth.add(6), eth);
                copy6(eth, dst.cast());
            }
            Macs::Reply => {
                let (d0, d1) = (
                    eth.cast::<u32>().read_unaligned(),
                    eth.add(4).cast::<u16>().read_unaligned(),
                );
                copy6(eth, eth.add(6));
                eth.add(6).cast::<u32>().write_unaligned(d0);
                eth.add(10).cast::<u16>().write_unaligned(d1);
            }
            Macs::Kernel => {}
        }
    }
}

/// Copies a `T` between unaligned places: one load and one store (the BPF backend is built to
/// allow misaligned access, see `build.rs`), where a byte array copy takes one per byte.
///
/// # Safety
/// Both pointers valid for `size_of::<T>()` bytes.
#[inline(always)]
unsafe fn copy_unaligned<T: Copy>(dst: *mut u8, src: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        dst.cast::<T>()
            .write_unaligned(src.cast::<T>().read_unaligned())
    }
}

/// Copies two MAC addresses (12 bytes).
///
/// # Safety
/// As [`copy_unaligned`].
#[inline(always)]
pub unsafe fn copy12(dst: *mut u8, src: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        copy_unaligned::<u64>(dst, src);
        copy_unaligned::<u32>(dst.add(8), src.add(8));
    }
}

/// Copies one MAC address.
///
/// # Safety
/// As [`copy_unaligned`].
#[inline(always)]
pub unsafe fn copy6(dst: *mut u8, src: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        copy_unaligned::<u32>(dst, src);
        copy_unaligned::<u16>(dst.add(4), src.add(4));
    }
}

/// The verdict that sends the frame on its way to `hop`.
#[inline(always)]
pub fn send(hop: &NextHop, reason: Reason) -> Verdict {
    if let Macs::Kernel = hop.macs {
        return Verdict::pass(Reason::PassNoNeighbour);
    }
    if hop.redirect == 0 {
        return Verdict::tx(reason);
    }
    // SAFETY: a helper with plain integer arguments.
    Verdict::new(unsafe { bpf_redirect(hop.redirect, 0) } as u32, reason)
}
