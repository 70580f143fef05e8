//! Stage 2: VIP lookup. (address, port, protocol) first, then the all-ports entry (port 0).

use lb_common::{VIP_F_ADDRESS_ONLY, VipKey, VipMeta};

use crate::maps::VIPS;

/// The fields of a `VipMeta` every packet needs, copied out of `VIPS`. Not the previous table's,
/// which only second chance reads ([`previous_table`]): 16 bytes stay in registers where the
/// whole entry (24) took 96 more bytes of stack.
#[derive(Clone, Copy)]
pub struct Vip {
    pub index: u32,
    pub flags: u32,
    pub ring_base: u32,
    pub ring_size: u32,
}

#[inline(always)]
fn entry(key: &VipKey) -> Option<&'static VipMeta> {
    // SAFETY: read at once by the callers; the agent replaces entries whole.
    unsafe { VIPS.get(key) }
}

#[inline(always)]
fn get(key: &VipKey) -> Option<Vip> {
    entry(key).map(|m| Vip {
        index: m.index,
        flags: m.flags,
        ring_base: m.ring_base,
        ring_size: m.ring_size,
    })
}

/// The previous table (first slot, size) of the listener for `key`, looked up again as
/// [`listener`] does: a packet that needs it (second chance) is rare.
#[inline(always)]
pub fn previous_table(key: &VipKey) -> Option<(u32, u32)> {
    let listening = |m: &&VipMeta| m.flags & VIP_F_ADDRESS_ONLY == 0;
    let m = entry(key)
        .filter(listening)
        .or_else(|| entry(&VipKey { port_be: 0, ..*key }).filter(listening))?;
    Some((m.prev_base, m.prev_size))
}

/// The listener for `key` (address, port, protocol), exact port first, then an all-ports VIP.
#[inline(always)]
pub fn listener(key: &VipKey) -> Option<Vip> {
    // Port 0 is the all-ports key: an address-only entry there must not answer the exact lookup.
    if let Some(m) = get(key)
        && m.flags & VIP_F_ADDRESS_ONLY == 0
    {
        return Some(m);
    }
    let any_port = VipKey { port_be: 0, ..*key };
    get(&any_port).filter(|m| m.flags & VIP_F_ADDRESS_ONLY == 0)
}

/// The per-address entry for `proto` (port 0), all-ports VIP or address-only.
#[inline(always)]
pub fn address(family: u8, addr: &[u8; 16], proto: u8) -> Option<Vip> {
    get(&VipKey {
        addr: *addr,
        port_be: 0,
        proto,
        family,
    })
}
