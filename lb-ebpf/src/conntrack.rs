//! Stages 3 and 4: the flow table, then the Maglev ring.
//!
//! An established flow keeps the backend it was given, even after the rings change, until its
//! entry is evicted (LRU), goes idle (UDP), or its backend is gone (`BACKEND_F_LIVE` cleared).
//! A TCP SYN always consults the ring: it starts a new connection, so a stale entry from an
//! earlier connection on the same 5-tuple must not pin it.
//!
//! Second chance: a TCP packet that is not a SYN and that this node has no entry for belongs to a
//! connection that started elsewhere (another node, before ECMP moved it here). When the VIP's
//! previous table (`VipMeta::prev_*`) gives another target than the live one, the packet goes to
//! the live ring's target naming the previous one too; that target's `xlb_decap` hands it on when
//! it has no socket for it. Such flows get no entry, so every packet gets the same chance while
//! the previous table lasts.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    BACKEND_F_LIVE, Backend, FlowKey, FlowState, Reason, UDP_FLOW_TIMEOUT_NS, VIP_F_DSR, VIP_F_NAT,
    VIP_F_SOURCE_IP,
    hash::{flow_hash, source_hash},
};

use crate::{
    maps::{BACKENDS, FLOWS, RINGS},
    verdict::Verdict,
    vip::{self, Vip},
};

/// The chosen backend (its index: the forward stage reads the entry in place, where it is) and
/// whether the ring chose it (a new flow).
pub struct Choice {
    pub index: u32,
    /// Its `BACKENDS` entry, live.
    pub backend: &'static Backend,
    pub hash: u32,
    pub new_flow: bool,
    /// The previous table's target for this flow, when it differs (same family): the second
    /// chance the packet carries.
    pub second: Option<&'static Backend>,
}

/// Backend `index` (in `BACKENDS`) if it is live.
#[inline(always)]
fn live(index: u32) -> Option<&'static Backend> {
    BACKENDS
        .get(index)
        .filter(|b| b.flags & BACKEND_F_LIVE != 0)
}

#[inline(always)]
pub fn hash(vip: &Vip, key: &FlowKey) -> u32 {
    if vip.flags & VIP_F_SOURCE_IP != 0 {
        source_hash(key)
    } else {
        flow_hash(key)
    }
}

/// Maglev: the VIP's live ring at `hash % M`, and that backend.
#[inline(always)]
pub fn ring(vip: &Vip, hash: u32) -> Result<(u32, &'static Backend), Verdict> {
    let index =
        *slot(vip.ring_base, vip.ring_size, hash).ok_or(Verdict::drop(Reason::DropNoBackend))?;
    // Index 0: the ring was never filled (no target registered).
    if index == 0 {
        return Err(Verdict::drop(Reason::DropNoBackend));
    }
    let b = live(index).ok_or(Verdict::drop(Reason::DropNoBackend))?;
    Ok((index, b))
}

/// The table of `size` slots from `RINGS[base]`, at `hash % size`. The size is the listener's
/// own, so this is a register `mod`; a zero size is an entry never written (`%` would be a
/// panic, which BPF cannot have).
#[inline(always)]
fn slot(base: u32, size: u32, hash: u32) -> Option<&'static u32> {
    RINGS.get(base + hash.checked_rem(size)?)
}

/// The previous table's target for `hash` (`VipMeta::prev_base`/`prev_size` of `key`'s
/// listener; the live table when there is none), when it is live, another than `index`, and of
/// `now`'s family (the tunnel that carries it is `now`'s).
#[inline(always)]
fn previous(key: &FlowKey, hash: u32, index: u32, now: &Backend) -> Option<&'static Backend> {
    let (base, size) = vip::previous_table(key.vip_key())?;
    let before = *slot(base, size, hash)?;
    if before == 0 || before == index {
        return None;
    }
    live(before).filter(|b| b.family == now.family)
}

/// Flow table first (unless `syn`), then the ring; records new flows. `closing`: a TCP FIN or
/// RST, marked on the flow's entry so that the agent counts its connection as closed. `UDP`:
/// the flow is UDP (a constant, so that TCP's path carries none of UDP's timeout handling).
#[inline(always)]
pub fn choose<const UDP: bool>(
    vip: &Vip,
    key: &FlowKey,
    syn: bool,
    closing: bool,
) -> Result<Choice, Verdict> {
    let udp = UDP;
    // UDP needs the clock for its idle timeout; TCP entries never expire by time.
    let now = if udp {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    if !syn && let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the LRU value stays valid while the program runs; a concurrent update of the
        // same flow from another CPU can only write another valid backend index.
        // The time is read only where it is needed: TCP's established path does not load it.
        let (index, hash) = unsafe { ((*state).backend, (*state).hash) };
        // SAFETY: as above.
        let seen = || unsafe { (*state).seen_ns };
        if (!udp || now.wrapping_sub(seen()) < UDP_FLOW_TIMEOUT_NS)
            && let Some(backend) = live(index)
        {
            if udp {
                // SAFETY: as above.
                unsafe { (*state).seen_ns = now };
            } else if closing && seen() == 0 {
                // SAFETY: as above; a helper without arguments.
                unsafe { (*state).seen_ns = bpf_ktime_get_ns() };
            }
            return Ok(Choice {
                index,
                backend,
                hash,
                new_flow: false,
                second: None,
            });
        }
    }
    let h = hash(vip, key);
    let (index, backend) = ring(vip, h)?;
    // Only tunnelled flows have a second chance: the target's `xlb_decap` gives it.
    let second = if !syn && !udp && vip.flags & (VIP_F_DSR | VIP_F_NAT) == 0 {
        previous(key, h, index, backend)
    } else {
        None
    };
    if second.is_none() {
        let state = FlowState {
            backend: index,
            hash: h,
            seen_ns: now,
        };
        // A full table evicts its least recently used flow; an error here only costs
        // stickiness.
        let _ = FLOWS.insert(key, state, 0);
    }
    Ok(Choice {
        index,
        backend,
        hash: h,
        new_flow: second.is_none(),
        second,
    })
}

/// The backend an existing flow uses, without creating one (ICMP errors about a flow).
#[inline(always)]
pub fn existing(vip: &Vip, key: &FlowKey) -> Result<Choice, Verdict> {
    // SAFETY: copied out at once.
    if let Some(state) = unsafe { FLOWS.get(key) }
        && let Some(backend) = live(state.backend)
    {
        return Ok(Choice {
            index: state.backend,
            backend,
            hash: state.hash,
            new_flow: false,
            second: None,
        });
    }
    let h = hash(vip, key);
    let (index, backend) = ring(vip, h)?;
    Ok(Choice {
        index,
        backend,
        hash: h,
        new_flow: false,
        second: None,
    })
}
