//! Stage 2: VIP lookup. (address, port, protocol) first, then the all-ports entry (port 0).

use lb_common::{VIP_F_ADDRESS_ONLY, VipKey, VipMeta};

use crate::maps::VIPS;

#[inline(always)]
fn get(key: &VipKey) -> Option<VipMeta> {
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    unsafe { VIPS.get(key).copied() }
}

/// The listener for `key` (address, port, protocol), exact port first, then an all-ports VIP.
#[inline(always)]
pub fn listener(key: &VipKey) -> Option<VipMeta> {
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
pub fn address(family: u8, addr: &[u8; 16], proto: u8) -> Option<VipMeta> {
    get(&VipKey {
        addr: *addr,
        port_be: 0,
        proto,
        family,
    })
}
