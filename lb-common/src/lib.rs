//! Types shared by xlb's datapath (`lb-ebpf`) and its agent (`lb-userspace`); [`bench`] holds
//! those of the benchmark's own programs (`lb-ebpf-bench`) and `xlb-bench`.
//!
//! Every map key and value is defined once, here: `#[repr(C)]`, fixed-width integers, explicit
//! padding, `bytemuck::Pod` so hidden padding fails to compile, and a size assertion beside each
//! type. The `user` feature adds `aya::Pod`, which aya's typed maps require.
//!
//! Byte order: fields that hold bytes from the wire say so (`_be` suffix or `[u8; N]`). Addresses
//! are 16 bytes: IPv4 addresses sit in the first 4 bytes, the rest zero, and `family` tells them
//! apart from IPv6.
//!
//! Names come in key → value pairs: [`VipKey`] → [`VipMeta`], [`FlowKey`] → [`FlowState`],
//! backend index → [`Backend`].
#![no_std]

pub mod hash;

use bytemuck::{Pod, Zeroable};

/// Names of the programs and maps in the eBPF object; the loader looks every one up by these.
pub mod names {
    pub const PROG_LB: &str = "xlb_lb";
    pub const PROG_DECAP: &str = "xlb_decap";
    pub const PROG_PASS: &str = "xlb_pass";
    pub const VIPS: &str = "VIPS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const CONFIG: &str = "CONFIG";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const NAT_REPLIES: &str = "NAT_REPLIES";
    pub const SNAT_CONFIG: &str = "SNAT_CONFIG";
    pub const SNAT_PORTS: &str = "SNAT_PORTS";
    pub const SNAT_FLOWS: &str = "SNAT_FLOWS";
    /// The maps the agent pins (they outlive it); the datapath's per-CPU scratch maps
    /// (`NEXT_HOPS`, `FIB_ARGS`) are not among them: a new agent starts them empty.
    pub const MAPS: &[&str] = &[
        VIPS,
        BACKENDS,
        RINGS,
        FLOWS,
        CONFIG,
        VIP_STATS,
        BACKEND_STATS,
        REASON_STATS,
        DECAP_ADDRS,
        DECAP_STATS,
        NAT_REPLIES,
        SNAT_CONFIG,
        SNAT_PORTS,
        SNAT_FLOWS,
    ];
}

/// Default most listeners (VIPs) one node serves (`node.max_listeners`); the agent sizes
/// `VIPS` and `VIP_STATS` from its setting at load time, and `RINGS` by default (`node.maglev_slots`).
pub const LISTENERS_DEFAULT: u32 = 64;
/// Default most targets over all listeners (`node.max_targets`); sizes `BACKENDS` and its
/// companions at load time. Index 0 is reserved: a ring slot holding 0 is "no backend".
pub const TARGETS_DEFAULT: u32 = 16384;
/// Default Maglev table size M (prime; a listener's `maglev_table_size`). Each VIP owns two rings
/// (live and standby) so that a new table is written off to the side and switched in with one
/// `VipMeta` update; `RINGS` holds `LISTENERS_DEFAULT` × 2 of these by default.
pub const RING_SIZE_DEFAULT: u32 = 65537;

/// Whether `n` is prime, as a Maglev table's size must be (trial division; at most ~32k steps
/// for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
/// Default flow table size (entries); the agent may set another at load time.
pub const FLOWS_DEFAULT: u32 = 1 << 20;
/// A UDP flow idle for this long is re-balanced on its next packet (TCP flows have no timeout).
pub const UDP_FLOW_TIMEOUT_NS: u64 = 30_000_000_000;
/// Most addresses the decap program accepts tunnels for.
pub const MAX_DECAP_ADDRS: u32 = 64;

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An IPv4 or IPv6 address as it is on the wire (network order); IPv4 in the first 4 bytes.
pub type Addr = [u8; 16];

/// `VIPS` key: the destination a client addresses. `port_be == 0` is an all-ports VIP for
/// `proto`; the datapath tries the exact port first.
// The alignments (here and below) let the BPF compiler copy and compare addresses a word at a
// time: with alignment 1 every byte is a load and a store of its own.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct VipKey {
    pub addr: Addr,
    /// Destination port, network byte order.
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// `VIPS` value.
///
/// A listener's two Maglev tables lie anywhere in `RINGS`, each `RINGS[base .. base + size]`
/// (the agent allocates them, sized by `maglev_table_size`): a hash goes to slot
/// `ring_base + hash % ring_size` of the live one. The other one, `prev_base`/`prev_size`, holds
/// the table the live one replaced, complete and unchanged for as long as this entry names it:
/// the agent points it at the live table (`prev_* == ring_*`) before it writes a new table there.
/// So "the target the previous table gives" for a hash is `RINGS[prev_base + hash % prev_size]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipMeta {
    /// Index into `VIP_STATS`, below `node.max_listeners`.
    pub index: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// First `RINGS` slot of the live table.
    pub ring_base: u32,
    /// Its size M (prime, never 0).
    pub ring_size: u32,
    /// First `RINGS` slot of the previous table (the live one's when there is none).
    pub prev_base: u32,
    /// Its size.
    pub prev_size: u32,
}
const _: () = assert!(size_of::<VipMeta>() == 24);

/// Forward by L2 direct server return (rewrite the destination MAC) instead of IPIP/IP6IP6.
pub const VIP_F_DSR: u32 = 1 << 0;
/// Hash the source address only (NLB `stickiness.type = source_ip`); fragments are forwarded.
pub const VIP_F_SOURCE_IP: u32 = 1 << 1;
/// This entry only catches fragments and ICMP for its address: it is not an all-ports VIP.
pub const VIP_F_ADDRESS_ONLY: u32 = 1 << 2;
/// Do not answer echo requests to this address.
pub const VIP_F_NO_ECHO: u32 = 1 << 3;
/// Forward by NAT: the destination becomes the target's address and port, and the target's
/// replies, routed back through this node, get the VIP's back (`NAT_REPLIES`).
pub const VIP_F_NAT: u32 = 1 << 4;
/// With [`VIP_F_NAT`]: source NAT too. The source becomes a node address ([`SnatConfig`]) and a
/// port allocated per flow (`SNAT_PORTS`), so the target answers the node, not the client. Every
/// rule of NAT listeners (fragments dropped, ICMP errors passed, no second chance) applies.
pub const VIP_F_SNAT: u32 = 1 << 5;

/// `BACKENDS` value, indexed by backend index (1-based; 0 means none).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: Addr,
    pub family: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// The target's MAC, for L2 DSR.
    pub mac: [u8; 6],
    /// NAT: the target's port, network byte order. 0 for other forwarding, which keeps the
    /// listener's port.
    pub port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<Backend>() == 32);

/// The slot holds a target; established flows may keep using it. Cleared when the target is gone
/// (after its deregistration delay), so flows pinned to it are re-balanced.
pub const BACKEND_F_LIVE: u8 = 1 << 0;

/// `FLOWS` key: the 5-tuple of a client's flow as it arrives (client → VIP). Its bytes 16..36
/// (`dst`, `dport_be`, `proto`, `family`) are the flow's [`VipKey`]: the balancer looks the
/// listener up with them in place ([`FlowKey::vip_key`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Ports in network byte order (zero for flows without ports).
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub sport_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);
// The `VipKey` inside: same fields at the same places, 16 bytes in.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(FlowKey, dst) == 16 + offset_of!(VipKey, addr));
    assert!(offset_of!(FlowKey, dport_be) == 16 + offset_of!(VipKey, port_be));
    assert!(offset_of!(FlowKey, proto) == 16 + offset_of!(VipKey, proto));
    assert!(offset_of!(FlowKey, family) == 16 + offset_of!(VipKey, family));
    assert!(16 % align_of::<VipKey>() == 0 && align_of::<FlowKey>() >= align_of::<VipKey>());
};

impl FlowKey {
    /// The listener key inside this flow key (no copy).
    #[inline(always)]
    pub fn vip_key(&self) -> &VipKey {
        // SAFETY: bytes 16..36 of a `FlowKey` hold a `VipKey`'s fields at its offsets, and are
        // aligned for it (asserted above); any bits are valid for both.
        unsafe {
            &*(self as *const FlowKey)
                .cast::<u8>()
                .add(16)
                .cast::<VipKey>()
        }
    }
}

/// Second chance: the IPv4 option (outer header of IPIP) or IPv6 destination option (a
/// Destination Options header after the outer IPv6 header) that carries the previous table's
/// target. RFC 4727's experimental type 30: not copied on fragmentation, and for IPv6 "skip if
/// unknown", so a target without `xlb_decap` ignores it.
pub const SECOND_CHANCE_OPTION: u8 = 0x1e;
/// Bytes the second-chance option adds to the outer IPv4 header: type, length, two zero bytes,
/// the address.
pub const SECOND_CHANCE_V4_LEN: usize = 8;
/// Bytes the Destination Options header adds after the outer IPv6 header: next header, length,
/// the option (type, length 16, the address), then a 4-byte PadN.
pub const SECOND_CHANCE_V6_LEN: usize = 24;

/// `FLOWS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowState {
    pub backend: u32,
    /// The flow hash the ring was asked with (the tunnel's outer source carries it): kept so
    /// that established packets skip hashing their 5-tuple.
    pub hash: u32,
    /// UDP: the last packet, `bpf_ktime_get_ns` (monotonic), for the idle timeout. TCP: 0 while
    /// open; when the client's FIN or RST passed, so that a flow's connection counts as closed.
    pub seen_ns: u64,
}
const _: () = assert!(size_of::<FlowState>() == 16);

/// `NAT_REPLIES` key is the [`FlowKey`] of a reply as it arrives (target address and port →
/// client address and port); this is its value: the listener the client sent to, which becomes
/// the reply's source again.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatReply {
    pub vip: Addr,
    /// The listener's port, network byte order.
    pub vport_be: u16,
    /// Padding as two integers: a zeroed byte array compiles to a call of a byte-wise `memset`.
    pub _pad16: u16,
    pub _pad32: u32,
}
const _: () = assert!(size_of::<NatReply>() == 24);

/// A `NEXT_HOPS` entry: the next hop toward a target, cached per CPU by the datapath with the
/// node settings the tunnel needs. Zeroed (never filled, or cleared by the agent with a new
/// `Config`) entries have `expires_ns` 0: always stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CachedHop {
    /// The target it was resolved for (its address as two words, compared in two steps):
    /// backend indices are reused for other targets.
    pub addr: [u64; 2],
    /// Coarse clock time after which it is asked again.
    pub expires_ns: u64,
    /// The interface the packet came in on: the FIB answer depends on it.
    pub ingress: u32,
    /// Where the frame goes when that is another interface; 0 when it is `ingress`.
    pub redirect: u32,
    /// The Ethernet addresses to write: the next hop's, then the egress interface's.
    pub macs: [u8; 12],
    /// `Config::mtu`, or `u32::MAX` when it is not set.
    pub mtu: u32,
    /// `Config::tunnel_src_v4`'s first 2 bytes or `tunnel_src_v6`'s first 12, by the target's
    /// family.
    pub src_prefix: [u8; 12],
    /// [`HOP_RESOLVED`] or [`HOP_KERNEL`].
    pub kind: u8,
    /// `CONFIG_F_NO_PTB` is set.
    pub no_ptb: u8,
    pub _pad: u16,
}

/// The FIB (or the gateway) gave the next hop's MACs.
pub const HOP_RESOLVED: u8 = 0;
/// A route without a neighbour entry yet: the kernel resolves it, and gets the frame as it came.
/// Never cached (`expires_ns` 0): the next packet finds the neighbour.
pub const HOP_KERNEL: u8 = 1;
const _: () = assert!(size_of::<CachedHop>() == 64);
/// `SNAT_CONFIG[0]`: the node's source for SNAT listeners ([`VIP_F_SNAT`]), written by the agent.
/// A map of its own rather than fields of [`Config`]: `CONFIG`'s layout, pinned by running
/// agents, stays as it was.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SnatConfig {
    /// The IPv4 source (first 4 bytes; all zero: none).
    pub addr_v4: Addr,
    /// The IPv6 source (all zero: none).
    pub addr_v6: Addr,
    /// First source port of the range, host byte order.
    pub port_first: u16,
    /// Ports in the range (`last - first + 1`); 0: no SNAT port can be allocated.
    pub port_count: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SnatConfig>() == 40);

/// Ports tried for a new SNAT flow before it is refused (`drop_snat_exhausted`): candidates
/// derived from the flow's hash, each an insert that fails when the port is taken.
pub const SNAT_TRIES: u32 = 8;

/// `SNAT_PORTS` key is the [`FlowKey`] of a reply as it arrives (target address and port → the
/// node's SNAT address and the allocated port); this is its value: who the flow belongs to, and
/// its tracking. The datapath writes it whole when it allocates the port (`BPF_NOEXIST`: the
/// insert that wins the port), then only `seen_ns` and `flags`; the agent deletes it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SnatEntry {
    pub client: Addr,
    /// The listener's address: the reply's source again.
    pub vip: Addr,
    /// Network byte order.
    pub client_port_be: u16,
    /// The listener's port, network byte order.
    pub vport_be: u16,
    /// `SNAT_F_*` bits.
    pub flags: u32,
    /// The last reply, `bpf_ktime_get_coarse_ns` (monotonic coarse), written when it moved on by
    /// [`SNAT_SEEN_STEP_NS`] or more.
    pub seen_ns: u64,
}
const _: () = assert!(size_of::<SnatEntry>() == 48);

/// `SNAT_FLOWS` key is the client's [`FlowKey`] (client → listener); this is its value: the port
/// its packets leave with, and the target it was allocated for (the `SNAT_PORTS` key is
/// `target`, `target_port_be` → SNAT address, `port_be`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SnatFlow {
    pub target: Addr,
    /// The last packet from the client, as [`SnatEntry::seen_ns`].
    pub seen_ns: u64,
    /// The backend index the port was allocated toward.
    pub backend: u32,
    /// The allocated source port, network byte order.
    pub port_be: u16,
    /// The target's port, network byte order.
    pub target_port_be: u16,
    /// `SNAT_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SnatFlow>() == 40);

/// A FIN or RST passed (this direction): the agent removes the flow after a quiet time.
pub const SNAT_F_CLOSING: u32 = 1 << 0;
/// The datapath writes `seen_ns` when it moved on by this much: one write a second per flow.
pub const SNAT_SEEN_STEP_NS: u64 = 1_000_000_000;

/// `CONFIG[0]`: node-wide datapath settings written by the agent.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Outer source for IPIP: the first two bytes are the prefix, the last two come from the flow
    /// hash so that targets can spread tunnelled traffic over their receive queues.
    pub tunnel_src_v4: [u8; 4],
    /// Outer source for IP6IP6: the first 12 bytes are the prefix, the last 4 from the flow hash.
    pub tunnel_src_v6: [u8; 16],
    /// Next hop MAC when the FIB lookup cannot give one (all zero: none, drop and count).
    pub gateway_mac: [u8; 6],
    /// `CONFIG_F_*` bits.
    pub flags: u16,
    /// Largest IP packet (bytes) the path to targets carries; a packet that would be larger after
    /// encapsulation gets ICMP "fragmentation needed" / "packet too big".
    pub mtu: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<Config>() == 36);

/// Skip the kernel FIB lookup for next hops and always use `gateway_mac` (fixtures, static labs).
pub const CONFIG_F_NO_FIB: u16 = 1 << 0;
/// Do not generate ICMP "fragmentation needed" / "packet too big" (drop and count instead).
pub const CONFIG_F_NO_PTB: u16 = 1 << 1;
/// Some listener forwards by NAT: TCP and UDP packets to no VIP are looked up in `NAT_REPLIES`.
pub const CONFIG_F_NAT: u16 = 1 << 2;
/// Some listener forwards by SNAT: TCP and UDP packets to no VIP are looked up in `SNAT_PORTS`.
pub const CONFIG_F_SNAT: u16 = 1 << 3;

/// Packets and bytes, summed per CPU by the reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// `VIP_STATS` value (per CPU, indexed by `VipMeta::index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that took a backend from the Maglev ring (new or re-balanced).
    pub new_flows: u64,
    /// Packets to this listener that were dropped (no target, no route, too big, ...).
    pub dropped: u64,
}

/// Why a packet got its verdict. Indexes `REASON_STATS`; every verdict bumps exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a target in an IPIP/IP6IP6 tunnel.
    TxTunnel = 0,
    /// Forwarded to a target by L2 DSR.
    TxDsr,
    /// Answered an echo request to a VIP.
    TxEchoReply,
    /// Sent ICMP fragmentation-needed / packet-too-big to the client.
    TxTooBig,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PassNotIp,
    /// Not addressed to a VIP: passed untouched.
    PassNotVip,
    /// Addressed to a VIP address with a protocol xlb does not balance: passed.
    PassOtherProto,
    /// ICMP to a VIP that is neither echo nor an error about a VIP flow: passed.
    PassIcmp,
    /// Frame shorter than its Ethernet or VLAN header.
    DropShortEth,
    /// Truncated IPv4 header, IHL < 5, or total length beyond the frame.
    DropBadIpv4,
    /// Truncated IPv6 header, payload length beyond the frame, or too many extension headers.
    DropBadIpv6,
    /// Truncated TCP/UDP/ICMP header, or TCP data offset < 5.
    DropBadL4,
    /// A fragment of a VIP flow that does not use source-IP hashing (policy: drop).
    DropFragment,
    /// The VIP has no backend (empty ring).
    DropNoBackend,
    /// No next hop MAC (FIB lookup failed and no gateway MAC configured).
    DropNoRoute,
    /// Too big after encapsulation and PTB generation is off.
    DropTooBig,
    /// Growing or shrinking the frame failed.
    DropAdjust,
    /// Tunnelled, then passed to the kernel: the FIB knows the route to the target but not the
    /// next hop's MAC yet, and the kernel resolves it while it forwards this packet.
    PassNoNeighbour,
    /// Forwarded in a tunnel that also names the previous table's target: a TCP flow this node
    /// has no entry for, which the VIP's live and previous tables give different targets
    /// (second chance, see [`SECOND_CHANCE_OPTION`]).
    TxSecondChance,
    /// Forwarded to a target by NAT (destination address and port rewritten).
    TxNat,
    /// A NAT target's reply, its source rewritten back to the listener's, sent to the client.
    TxNatReply,
    /// A packet to forward by NAT whose TTL (hop limit) would reach 0 on the way.
    DropTtl,
    /// Forwarded to a target by SNAT (both addresses and ports rewritten).
    TxSnat,
    /// An SNAT target's reply, translated back (from the listener, to the client), sent on.
    TxSnatReply,
    /// A new SNAT flow found no free source port toward its target (or the table is full).
    DropSnatExhausted,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropSnatExhausted as u32 + 1;
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::TxTunnel,
        Reason::TxDsr,
        Reason::TxEchoReply,
        Reason::TxTooBig,
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassOtherProto,
        Reason::PassIcmp,
        Reason::DropShortEth,
        Reason::DropBadIpv4,
        Reason::DropBadIpv6,
        Reason::DropBadL4,
        Reason::DropFragment,
        Reason::DropNoBackend,
        Reason::DropNoRoute,
        Reason::DropTooBig,
        Reason::DropAdjust,
        Reason::PassNoNeighbour,
        Reason::TxSecondChance,
        Reason::TxNat,
        Reason::TxNatReply,
        Reason::DropTtl,
        Reason::TxSnat,
        Reason::TxSnatReply,
        Reason::DropSnatExhausted,
    ];

    /// The snake_case name that `xlb stats` and the metrics print.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::TxTunnel => "tx_tunnel",
            Reason::TxDsr => "tx_dsr",
            Reason::TxEchoReply => "tx_echo_reply",
            Reason::TxTooBig => "tx_too_big",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassOtherProto => "pass_other_proto",
            Reason::PassIcmp => "pass_icmp",
            Reason::DropShortEth => "drop_short_eth",
            Reason::DropBadIpv4 => "drop_bad_ipv4",
            Reason::DropBadIpv6 => "drop_bad_ipv6",
            Reason::DropBadL4 => "drop_bad_l4",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropAdjust => "drop_adjust",
            Reason::PassNoNeighbour => "pass_no_neighbour",
            Reason::TxSecondChance => "tx_second_chance",
            Reason::TxNat => "tx_nat",
            Reason::TxNatReply => "tx_nat_reply",
            Reason::DropTtl => "drop_ttl",
            Reason::TxSnat => "tx_snat",
            Reason::TxSnatReply => "tx_snat_reply",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
        }
    }
}

/// Why the decap program gave its verdict; indexes `DECAP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// Tunnel removed, inner packet passed to the stack.
    Decapsulated = 0,
    /// Not a tunnel for this host: passed untouched.
    PassOther,
    /// A tunnel header that is truncated or malformed: dropped.
    DropMalformed,
    /// A second-chance tunnel packet (TCP, not a SYN) for a connection this host has no socket
    /// for: sent on to the previous table's target it names, back through the hop it came from.
    TxSecondChance,
}

impl DecapReason {
    pub const COUNT: u32 = DecapReason::TxSecondChance as u32 + 1;
    pub const ALL: [DecapReason; DecapReason::COUNT as usize] = [
        DecapReason::Decapsulated,
        DecapReason::PassOther,
        DecapReason::DropMalformed,
        DecapReason::TxSecondChance,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DecapReason::Decapsulated => "decapsulated",
            DecapReason::PassOther => "pass_other",
            DecapReason::DropMalformed => "drop_malformed",
            DecapReason::TxSecondChance => "tx_second_chance",
        }
    }
}

/// The benchmark's own XDP programs (`lb-ebpf-bench`), which `xlb-bench` loads beside xlb's:
/// not part of the object xlb ships.
pub mod bench {
    use bytemuck::{Pod, Zeroable};

    /// Live-frames traffic generator.
    pub const PROG_GEN: &str = "xlb_bench_gen";
    /// Swaps the MACs and sends the frame back: the baseline.
    pub const PROG_REFLECT: &str = "xlb_bench_refl";
    /// Drops what comes back to the generator's interface.
    pub const PROG_SINK: &str = "xlb_bench_sink";
    /// The generator's [`GenConfig`], at index 0.
    pub const BENCH_GEN: &str = "BENCH_GEN";
    /// Per-CPU packet counts, one slot per program: `STAT_*`.
    pub const BENCH_STATS: &str = "BENCH_STATS";

    /// `BENCH_STATS` slots.
    pub const STAT_GEN: u32 = 0;
    pub const STAT_REFLECT: u32 = 1;
    pub const STAT_SINK: u32 = 2;
    /// Entries in `BENCH_STATS`.
    pub const STATS_LEN: u32 = 3;

    /// Largest frame the generator writes (bytes).
    pub const GEN_FRAME_MAX: usize = 128;

    /// `BENCH_GEN[0]`: the frame the generator sends and how it varies the flow.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct GenConfig {
        /// Offset of the L4 source port.
        pub sport_off: u32,
        /// Offset of the L4 checksum, 0 for none.
        pub csum_off: u32,
        /// Flow count minus one (a power of two minus one).
        pub flow_mask: u32,
        pub _pad: u32,
        /// The frame, in 8-byte words, bytes in wire order; the run's input frame has the length
        /// to write (a multiple of 8, at most `GEN_FRAME_MAX`).
        pub frame: [u64; GEN_FRAME_MAX / 8],
    }
    const _: () = assert!(size_of::<GenConfig>() == 144);
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::VipMeta {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::VipCounters {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::NatReply {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::CachedHop {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::SnatConfig {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::SnatEntry {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::SnatFlow {}
    // SAFETY: `bytemuck::Pod` (no padding, every bit pattern valid) is aya's contract too.
    unsafe impl aya::Pod for super::bench::GenConfig {}
}
