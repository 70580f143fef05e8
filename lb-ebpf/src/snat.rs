//! Stage 5, SNAT forwarding (`VIP_F_NAT | VIP_F_SNAT`): NLB's mode without client IP
//! preservation. Toward the target, the destination becomes the target's address and port and
//! the source the node's SNAT address (`SNAT_CONFIG`) and a port allocated for the flow; the
//! target answers the node, whose reply path (a packet to no VIP, `CONFIG_F_SNAT`) gives the
//! reply the listener's address and port as its source and the client's as its destination.
//!
//! - **Allocation:** a new flow tries [`SNAT_TRIES`] ports of the range, derived from its 5-tuple
//!   hash, each an insert into `SNAT_PORTS` (keyed by the reply as it will arrive) that fails when
//!   the port is taken: the bucket's lock makes one CPU's port fail on another. The winner is
//!   recorded in `SNAT_FLOWS` (keyed by the client's flow) with `BPF_NOEXIST` too: of two CPUs that
//!   allocate for one new flow at once, the loser gives its port back and takes the winner's.
//! - **Tracking:** both entries keep the last packet's time (coarse clock, written when it moved
//!   on by a second) and whether a FIN or RST passed; the agent's sweep removes them when the
//!   flow is over (`lb-userspace/src/agent/snat.rs`). Neither map is LRU: a port is reused only
//!   once its entry is gone.
//!
//! Both directions rewrite in place with `nat::rewrite` (RFC 1624 updates).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::{
    AF_INET, Addr, Config, FlowKey, IPPROTO_TCP, Reason, SNAT_F_CLOSING, SNAT_SEEN_STEP_NS,
    SNAT_TRIES, SnatConfig, SnatEntry, SnatFlow, hash::flow_hash,
};

use crate::{
    conntrack::Choice,
    l2,
    maps::{SNAT_CONFIG, SNAT_FLOWS, SNAT_PORTS, SNAT_SCRATCH, SnatScratch},
    nat,
    next_hop::{self, route},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, copy_addr, words},
    verdict::Verdict,
};

/// Spreads the candidates of one flow over the range (an odd constant: the golden ratio's).
const STRIDE: u32 = 0x9e37_79b9;

/// Client → target: the flow's port (allocated with its first packet), then both ends
/// rewritten. A flow that finds no free port is dropped as `drop_snat_exhausted`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Packet, choice: &Choice) -> Result<Verdict, Verdict> {
    let exhausted = Verdict::drop(Reason::DropSnatExhausted);
    let sc = SNAT_CONFIG.get(0).ok_or(exhausted)?;
    let key = p.key;
    let b = choice.backend;
    let v4 = key.family == AF_INET;
    let src = if v4 { &sc.addr_v4 } else { &sc.addr_v6 };
    let target_port_be = if b.port_be != 0 {
        b.port_be
    } else {
        key.dport_be
    };
    let (closing, syn) = flags(p);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let flow = SNAT_FLOWS.get_ptr_mut(key);
    let same = match flow {
        // SAFETY: a map value, valid while the program runs; other CPUs write only its time and
        // flags, and any value of those is valid.
        Some(f) => unsafe { (*f).backend == choice.index && words(&(*f).target) == words(&b.addr) },
        None => false,
    };
    let port_be = match flow {
        Some(f) if same => {
            // SAFETY: as above.
            unsafe {
                touch(&mut (*f).seen_ns, &mut (*f).flags, now, closing, syn);
                (*f).port_be
            }
        }
        other => {
            let s = SNAT_SCRATCH.get_ptr_mut(0).ok_or(exhausted)?;
            // SAFETY: a per-CPU slot, used only by this CPU while the program runs.
            let s = unsafe { &mut *s };
            // The flow went to another target (its own was removed, or its flow entry was
            // evicted and the table changed): its port toward the old one is given back.
            if let Some(f) = other {
                // SAFETY: as above.
                release(s, key, unsafe { &*f }, src);
            }
            allocate(s, key, choice, sc, src, target_port_be, now)?
        }
    };
    let hop = next_hop::hop(next_hop::toward(ctx, choice.index, b)?);
    nat::rewrite::<true, true>(ctx, p, src, &b.addr, port_be, target_port_be, &hop)?;
    Ok(l2::send(&hop, Reason::TxSnat))
}

/// Target → client, for a packet to no VIP: when `SNAT_PORTS` knows it, it comes from the
/// listener again and goes to the client. `None`: not an SNAT reply.
#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Packet, cfg: &Config) -> Option<Result<Verdict, Verdict>> {
    let e = SNAT_PORTS.get_ptr_mut(p.key)?;
    // SAFETY: a map value, valid while the program runs (the agent's delete frees it after an
    // RCU grace period); other CPUs write only its time and flags.
    let e = unsafe { &mut *e };
    let (closing, _) = flags(p);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    touch(&mut e.seen_ns, &mut e.flags, now, closing, false);
    let v4 = p.key.family == AF_INET;
    // A `match`, not `and_then`: a closure may stay out of line (see `main.rs`).
    let hop = match route(ctx, cfg, &e.client, v4) {
        Ok(hop) => hop,
        Err(v) => return Some(Err(v)),
    };
    let r = nat::rewrite::<true, true>(
        ctx,
        p,
        &e.vip,
        &e.client,
        e.vport_be,
        e.client_port_be,
        &hop,
    );
    Some(r.map(|()| l2::send(&hop, Reason::TxSnatReply)))
}

/// (a TCP FIN or RST, a TCP SYN without ACK).
#[inline(always)]
fn flags(p: &Packet) -> (bool, bool) {
    let tcp = p.key.proto == IPPROTO_TCP;
    (
        tcp && p.tcp_flags & (TCP_FIN | TCP_RST) != 0,
        tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
    )
}

/// Tracking: the time, when it moved on by [`SNAT_SEEN_STEP_NS`] or the flags change; a FIN or
/// RST marks the entry closing, a SYN (a new connection on the same ports) opens it again.
#[inline(always)]
fn touch(seen: &mut u64, flags: &mut u32, now: u64, closing: bool, syn: bool) {
    let old = *flags;
    let new = if closing {
        old | SNAT_F_CLOSING
    } else if syn {
        old & !SNAT_F_CLOSING
    } else {
        old
    };
    if new != old || now.wrapping_sub(*seen) >= SNAT_SEEN_STEP_NS {
        *seen = now;
        *flags = new;
    }
}

/// A new flow's port: the first of [`SNAT_TRIES`] candidates that no other flow to the same
/// target address and port holds, recorded both ways.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the scratch slot itself goes to the helpers: a value would be copied to the stack"
)]
fn allocate(
    s: &mut SnatScratch,
    key: &FlowKey,
    choice: &Choice,
    sc: &SnatConfig,
    src: &Addr,
    target_port_be: u16,
    now: u64,
) -> Result<u16, Verdict> {
    let exhausted = Verdict::drop(Reason::DropSnatExhausted);
    let count = sc.port_count as u32;
    if count == 0 {
        return Err(exhausted);
    }
    let b = choice.backend;
    s.reply = FlowKey {
        src: copy_addr(&b.addr),
        dst: copy_addr(src),
        dport_be: 0,
        proto: key.proto,
        family: key.family,
        sport_be: target_port_be,
        _pad: [0; 2],
    };
    s.entry = SnatEntry {
        client: copy_addr(&key.src),
        vip: copy_addr(&key.dst),
        client_port_be: key.sport_be,
        vport_be: key.dport_be,
        flags: 0,
        seen_ns: now,
    };
    // The 5-tuple's hash even under source-IP stickiness: one client's flows need other ports.
    let h = flow_hash(key);
    // No more tries than ports. The bound also keeps the loop a loop: with a constant count
    // LLVM unrolled it into eight copies of the insert, in every inlined copy of the path.
    let tries = if count < SNAT_TRIES {
        count
    } else {
        SNAT_TRIES
    };
    let mut port_be = 0u16;
    let mut i = 0u32;
    while i < tries {
        let port = sc.port_first as u32 + h.wrapping_add(i.wrapping_mul(STRIDE)) % count;
        s.reply.dport_be = (port as u16).to_be();
        if SNAT_PORTS
            .insert(&s.reply, &s.entry, BPF_NOEXIST as u64)
            .is_ok()
        {
            port_be = s.reply.dport_be;
            break;
        }
        i += 1;
    }
    // The range starts at 1 at least (the agent's config), so 0 is "none".
    if port_be == 0 {
        return Err(exhausted);
    }
    s.flow = SnatFlow {
        target: copy_addr(&b.addr),
        seen_ns: now,
        backend: choice.index,
        port_be,
        target_port_be,
        flags: 0,
        _pad: 0,
    };
    if SNAT_FLOWS.insert(key, &s.flow, BPF_NOEXIST as u64).is_ok() {
        return Ok(port_be);
    }
    // Another CPU allocated for this flow meanwhile (or the table is full): the port goes back,
    // and the flow leaves with the winner's.
    let _ = SNAT_PORTS.remove(&s.reply);
    // SAFETY: copied out at once.
    match unsafe { SNAT_FLOWS.get(key) } {
        Some(w) if w.backend == choice.index => Ok(w.port_be),
        _ => Err(exhausted),
    }
}

/// Removes flow `key`'s entries, whose port `f` names toward its earlier target.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the scratch slot itself goes to the helper: a value would be copied to the stack"
)]
fn release(s: &mut SnatScratch, key: &FlowKey, f: &SnatFlow, src: &Addr) {
    s.reply = FlowKey {
        src: copy_addr(&f.target),
        dst: copy_addr(src),
        dport_be: f.port_be,
        proto: key.proto,
        family: key.family,
        sport_be: f.target_port_be,
        _pad: [0; 2],
    };
    let _ = SNAT_PORTS.remove(&s.reply);
    let _ = SNAT_FLOWS.remove(key);
}
