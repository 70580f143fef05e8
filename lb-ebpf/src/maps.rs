//! Every map of the datapath. The agent writes the configuration maps and reads the counters;
//! the datapath writes only `FLOWS` and the counters.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, bpf_fib_lookup},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr, Backend, CachedHop, Config, Counters, DecapReason, FLOWS_DEFAULT, FlowKey, FlowState,
    LISTENERS_DEFAULT, MAX_DECAP_ADDRS, NatReply, RING_SIZE_DEFAULT, Reason, SnatConfig, SnatEntry,
    SnatFlow, TARGETS_DEFAULT, VipCounters, VipKey, VipMeta,
};

/// VIP (address, port, protocol) → its index, flags and Maglev tables. Also holds per-address entries
/// (`VIP_F_ADDRESS_ONLY`) for echo, ICMP errors and fragments. Agent writes.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(LISTENERS_DEFAULT * 4, 0);

/// Backend index → target address, MAC and flags. Index 0 is never used. Agent writes.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(TARGETS_DEFAULT + 1, 0);

/// Maglev rings, two per VIP, each `VipMeta::ring_size` slots from `VipMeta::ring_base`:
/// `ring_base + hash % ring_size` → backend index. Agent writes a standby ring (through a memory
/// mapping: a ring is 65,537 slots by default), then points the VIP at it. Sized at load time
/// (`node.maglev_slots`).
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(LISTENERS_DEFAULT * 2 * RING_SIZE_DEFAULT, BPF_F_MMAPABLE);

/// Flow 5-tuple → backend it was given. LRU with per-CPU LRU lists (no shared list lock on the
/// hot path). Datapath writes; the agent reads it to count flows per draining target.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT, BPF_F_NO_COMMON_LRU);

/// A NAT target's reply as it arrives (target address and port → client address and port) → the
/// listener it answers for. The datapath writes an entry with every flow it gives a NAT target;
/// LRU, sized as `FLOWS`.
#[map]
pub static NAT_REPLIES: LruHashMap<FlowKey, NatReply> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT, BPF_F_NO_COMMON_LRU);

/// `SNAT_CONFIG[0]`: the node's SNAT source addresses and port range. Agent writes.
#[map]
pub static SNAT_CONFIG: Array<SnatConfig> = Array::with_max_entries(1, 0);

/// An SNAT target's reply as it arrives (target address and port → the node's SNAT address and
/// the allocated port) → the client and listener it belongs to. A plain hash, not LRU: the
/// datapath allocates a port with an insert that fails when it is taken (`BPF_NOEXIST`, under
/// the bucket's lock, so two CPUs never get one port), and an entry leaves only when the agent's
/// sweep removes it. Not preallocated: a node without SNAT listeners spends nothing on it.
#[map]
pub static SNAT_PORTS: HashMap<FlowKey, SnatEntry> =
    HashMap::with_max_entries(FLOWS_DEFAULT, BPF_F_NO_PREALLOC);

/// An SNAT flow as the client sends it → its allocated port and target: later packets of the
/// flow leave with the port the first one got. Written with the `SNAT_PORTS` entry, removed
/// with it by the agent's sweep.
#[map]
pub static SNAT_FLOWS: HashMap<FlowKey, SnatFlow> =
    HashMap::with_max_entries(FLOWS_DEFAULT, BPF_F_NO_PREALLOC);

/// Scratch for a new SNAT flow's entries as they are inserted, per CPU: on the stack they took
/// 128 bytes of the verifier's 512. Datapath only; not pinned.
#[map]
pub static SNAT_SCRATCH: PerCpuArray<SnatScratch> = PerCpuArray::with_max_entries(1, 0);

/// A `SNAT_SCRATCH` slot: the `SNAT_PORTS` key and value, and the `SNAT_FLOWS` value.
#[repr(C, align(8))]
pub struct SnatScratch {
    pub reply: FlowKey,
    pub entry: SnatEntry,
    pub flow: SnatFlow,
}

/// Backend index → the next hop toward it, per CPU, for [`NEXT_HOP_TTL_NS`], with what the tunnel
/// needs of the node's settings: the FIB lookup is the most expensive step of the tunnel path, its
/// answer changes rarely, and so the established path reads neither the FIB nor `CONFIG`.
/// Datapath only; not pinned (a restart refills it). The agent clears it when it writes `CONFIG`.
#[map]
pub static NEXT_HOPS: PerCpuArray<CachedHop> =
    PerCpuArray::with_max_entries(TARGETS_DEFAULT + 1, 0);

/// How long a cached next hop is used before it is asked again: route, neighbour and node
/// setting changes take effect within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Scratch for the argument of `bpf_fib_lookup` (64 bytes), per CPU: the verifier gives a
/// program 512 bytes of stack for all its frames, and this would be the largest value on it.
/// Datapath only; not pinned.
#[map]
pub static FIB_ARGS: PerCpuArray<FibArgs> = PerCpuArray::with_max_entries(1, 0);

/// A `FIB_ARGS` slot: 8-byte aligned, so that it is written a word at a time.
#[repr(C, align(8))]
pub struct FibArgs {
    pub lookup: bpf_fib_lookup,
    /// The answer's Ethernet addresses, next hop first, as `Macs::Resolved` reads them.
    pub macs: [u8; 12],
    /// The answer's interface when it is not the one the packet came in on; else 0.
    pub redirect: u32,
}

/// `CONFIG[0]`: node settings (tunnel source prefixes, gateway MAC, MTU). Agent writes.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU counters per VIP index.
#[map]
pub static VIP_STATS: PerCpuArray<VipCounters> =
    PerCpuArray::with_max_entries(LISTENERS_DEFAULT, 0);

/// Per-CPU counters per backend index.
#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(TARGETS_DEFAULT + 1, 0);

/// Per-CPU counters per [`Reason`]: every packet the balancer sees bumps exactly one.
#[map]
pub static REASON_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Addresses (IPv4 in the first 4 bytes) that the decap program removes tunnels for. The agent
/// fills it with the host's addresses.
#[map]
pub static DECAP_ADDRS: HashMap<Addr, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Per-CPU counters per [`DecapReason`].
#[map]
pub static DECAP_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DecapReason::COUNT, 0);
