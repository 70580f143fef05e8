//! Packet fixtures: the real `xlb_lb` program, real maps, one frame through
//! `BPF_PROG_TEST_RUN`, and what came out.
//!
//! ```no_run
//! use xlb_tests::{fixture::*, packet::*};
//! let mut f = Fixture::new();
//! let vip = f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4]);
//! let syn = Packet::eth(MAC_CLIENT, MAC_LB).ipv4(CLIENT_V4, VIP_V4).tcp(1000, 80).syn().build();
//! let out = f.run(&syn);
//! assert_eq!(out.action, XDP_TX);
//! assert_eq!(out.reason(), Reason::TxTunnel);
//! # let _ = vip;
//! ```
//!
//! Each fixture runs in a network namespace of its own (the test thread unshares one), so the
//! kernel FIB lookup for next hops finds nothing and the configured gateway MAC is used: outputs
//! do not depend on the host's routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use lb_common::Reason;
use lb_common::{
    AF_INET, BACKEND_F_LIVE, Backend, CONFIG_F_NO_PTB, Config, Counters, FlowKey, IPPROTO_TCP,
    IPPROTO_UDP, RING_SIZE_DEFAULT, VipCounters, VipKey, VipMeta,
    hash::{flow_hash, source_hash},
};
use xlb::{
    dataplane::{Dataplane, Program, RunOptions, Sizes},
    maglev::{self, MaglevTarget},
};

use crate::packet::MAC_GATEWAY;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const BACKEND1_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 11));
pub const BACKEND2_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 12));
pub const BACKEND3_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 13));
pub const BACKEND1_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11));
/// Tunnel source prefixes the fixtures configure.
pub const TUNNEL_SRC_V4: [u8; 2] = [172, 16];
pub const TUNNEL_SRC_V6: [u8; 12] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// Path MTU the fixtures configure.
pub const MTU: u16 = 1500;
/// The MAC every fixture backend has (for DSR).
pub const BACKEND_MAC: [u8; 6] = crate::packet::MAC_BACKEND;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
    /// The reason counters that moved (packets), by reason.
    pub reasons: Vec<(Reason, u64)>,
}

impl Outcome {
    /// The single reason counted for this packet (panics if not exactly one moved by one).
    #[track_caller]
    pub fn reason(&self) -> Reason {
        match self.reasons.as_slice() {
            [(r, 1)] => *r,
            other => panic!("expected exactly one reason counted once, got {other:?}"),
        }
    }
}

/// The first `RINGS` slot of ring `ring` (0 or 1) of VIP `index`: the fixtures give each VIP
/// two tables of the default size, one after the other.
pub fn ring_base(index: u32, ring: u32) -> u32 {
    (index * 2 + ring) * RING_SIZE_DEFAULT
}

/// The entry of VIP `index` whose live table is its ring `ring` and whose previous table is its
/// other ring (empty until written: no previous target).
pub fn vip_meta(index: u32, ring: u32, flags: u32) -> VipMeta {
    VipMeta {
        index,
        flags,
        ring_base: ring_base(index, ring),
        ring_size: RING_SIZE_DEFAULT,
        prev_base: ring_base(index, ring ^ 1),
        prev_size: RING_SIZE_DEFAULT,
    }
}

/// A loaded datapath with its maps, ready for frames.
pub struct Fixture {
    dp: Dataplane,
    next_vip: u32,
    next_backend: u32,
    backends: Vec<IpAddr>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// Loads the program in a fresh network namespace with the fixtures' node config.
    pub fn new() -> Fixture {
        Fixture::with_object(xlb::dataplane::OBJECT)
    }

    /// [`Fixture::new`] with another build's XDP object.
    pub fn with_object(object: &[u8]) -> Fixture {
        // SAFETY: affects only this thread; a test thread owns its namespace until it ends.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
        let sizes = Sizes {
            flows: 4096,
            listeners: 4,
            ring_slots: 4 * 2 * RING_SIZE_DEFAULT,
            targets: 64,
        };
        let dp = Dataplane::load_object(object, sizes, None).expect("load the XDP object");
        let mut f = Fixture {
            dp,
            next_vip: 0,
            next_backend: 1,
            backends: Vec::new(),
        };
        f.config(|_| {});
        f
    }

    /// Sets the fixtures' node config, changed by `f` (e.g. to change the MTU or turn PTB off).
    pub fn config(&mut self, f: impl FnOnce(&mut Config)) {
        let mut cfg = Config {
            tunnel_src_v4: [TUNNEL_SRC_V4[0], TUNNEL_SRC_V4[1], 0, 0],
            tunnel_src_v6: [0; 16],
            gateway_mac: MAC_GATEWAY,
            flags: 0,
            mtu: MTU,
            _pad: [0; 6],
        };
        cfg.tunnel_src_v6[..12].copy_from_slice(&TUNNEL_SRC_V6);
        f(&mut cfg);
        self.dp.set_config(&cfg).expect("set config");
    }

    /// Turns generation of "too big" errors off.
    pub fn no_ptb(&mut self) {
        self.config(|c| c.flags |= CONFIG_F_NO_PTB);
    }

    /// Registers `targets` (weight 1 each) and a listener on `addr:port/proto` forwarding to
    /// them with `flags` (`VIP_F_*`); also the address entry for echo and ICMP errors. Returns
    /// the VIP index.
    pub fn listener(
        &mut self,
        addr: impl Into<IpAddr>,
        port: u16,
        proto: Proto,
        flags: u32,
        targets: &[IpAddr],
    ) -> u32 {
        let addr = addr.into();
        let index = self.next_vip;
        self.next_vip += 1;
        let mut indices = Vec::new();
        for t in targets {
            let i = self.backend(*t);
            indices.push(i);
        }
        self.ring(index, &indices);
        let (family, a) = addr_bytes(addr);
        let meta = vip_meta(index, 0, flags);
        self.dp
            .set_vip(
                &VipKey {
                    addr: a,
                    port_be: port.to_be(),
                    proto: proto.number(),
                    family,
                },
                &meta,
            )
            .expect("set vip");
        let icmp = if family == AF_INET {
            lb_common::IPPROTO_ICMP
        } else {
            lb_common::IPPROTO_ICMPV6
        };
        let address = vip_meta(index, 0, flags | lb_common::VIP_F_ADDRESS_ONLY);
        self.dp
            .set_vip(
                &VipKey {
                    addr: a,
                    port_be: 0,
                    proto: icmp,
                    family,
                },
                &address,
            )
            .expect("set address entry");
        index
    }

    /// For a TCP listener on [`VIP_V4`] port 80 that rewrites ports (NAT, SNAT): a fragment to
    /// it is dropped (later fragments carry no ports), and an ICMP error about one of its flows
    /// goes to the kernel untranslated.
    pub fn assert_fragments_dropped_and_icmp_errors_passed(&mut self) {
        use crate::packet::{MAC_CLIENT, MAC_LB, Packet};
        let fragment = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(CLIENT_V4, VIP_V4)
            .fragment(8, false)
            .raw(6)
            .payload(&[0; 16])
            .build();
        let out = self.run(&fragment);
        assert_eq!((out.action, out.reason()), (XDP_DROP, Reason::DropFragment));

        let quoted = Packet::eth(MAC_CLIENT, MAC_LB)
            .ipv4(VIP_V4, CLIENT_V4)
            .tcp(80, 40000)
            .ack()
            .build();
        let error = Packet::eth(MAC_GATEWAY, MAC_LB)
            .ipv4(Ipv4Addr::new(203, 0, 113, 1), VIP_V4)
            .icmpv4_dest_unreachable(1, &quoted[14..])
            .build();
        let out = self.run(&error);
        assert_eq!((out.action, out.reason()), (XDP_PASS, Reason::PassIcmp));
    }

    /// Adds the per-address entry that catches fragments for `proto` (see the fragment policy).
    pub fn address_entry(&mut self, addr: impl Into<IpAddr>, proto: Proto, vip: u32, flags: u32) {
        let (family, a) = addr_bytes(addr.into());
        let meta = vip_meta(vip, 0, flags | lb_common::VIP_F_ADDRESS_ONLY);
        self.dp
            .set_vip(
                &VipKey {
                    addr: a,
                    port_be: 0,
                    proto: proto.number(),
                    family,
                },
                &meta,
            )
            .expect("set address entry");
    }

    /// The backend index of `addr`, registering it (live, with [`BACKEND_MAC`]) if new.
    pub fn backend(&mut self, addr: IpAddr) -> u32 {
        if let Some(i) = self.backends.iter().position(|b| *b == addr) {
            return i as u32 + 1;
        }
        let index = self.next_backend;
        self.next_backend += 1;
        self.backends.push(addr);
        let (family, a) = addr_bytes(addr);
        let b = Backend {
            addr: a,
            family,
            flags: BACKEND_F_LIVE,
            mac: BACKEND_MAC,
            port_be: 0,
            _pad: [0; 6],
        };
        self.dp.set_backend(index, &b).expect("set backend");
        index
    }

    /// Gives backend `index` a port of its own (NAT forwarding rewrites the destination to it).
    pub fn backend_port(&mut self, index: u32, port: u16) {
        let addr = self.backends[index as usize - 1];
        let (family, a) = addr_bytes(addr);
        self.dp
            .set_backend(
                index,
                &Backend {
                    addr: a,
                    family,
                    flags: BACKEND_F_LIVE,
                    mac: BACKEND_MAC,
                    port_be: port.to_be(),
                    _pad: [0; 6],
                },
            )
            .expect("set backend");
    }

    /// Marks backend `index` gone (its flows re-balance) or live again.
    pub fn set_live(&mut self, index: u32, live: bool) {
        let addr = self.backends[index as usize - 1];
        let (family, a) = addr_bytes(addr);
        let flags = if live { BACKEND_F_LIVE } else { 0 };
        self.dp
            .set_backend(
                index,
                &Backend {
                    addr: a,
                    family,
                    flags,
                    mac: BACKEND_MAC,
                    port_be: 0,
                    _pad: [0; 6],
                },
            )
            .expect("set backend");
    }

    /// Fills ring 0 of VIP `vip` with a Maglev table over backend `indices` (empty: no backend).
    pub fn ring(&mut self, vip: u32, indices: &[u32]) {
        let table = self.table(indices);
        self.dp
            .write_ring(ring_base(vip, 0), &table)
            .expect("write ring");
    }

    /// The Maglev table the agent would build for these backends (weight 1 each).
    pub fn table(&self, indices: &[u32]) -> Vec<u32> {
        let keys: Vec<Vec<u8>> = indices
            .iter()
            .map(|i| addr_bytes(self.backends[*i as usize - 1]).1.to_vec())
            .collect();
        let targets: Vec<MaglevTarget<'_>> = indices
            .iter()
            .zip(&keys)
            .map(|(i, k)| MaglevTarget {
                key: k,
                index: *i,
                weight: 1,
            })
            .collect();
        maglev::build(&targets, RING_SIZE_DEFAULT).expect("maglev")
    }

    /// Runs `frame` through `xlb_lb` once.
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        self.run_on(0, frame)
    }

    /// Runs `frame` through `xlb_lb` once as if it came in on interface `ingress_ifindex` (of
    /// the fixture's namespace; 0 for none).
    pub fn run_on(&mut self, ingress_ifindex: u32, frame: &[u8]) -> Outcome {
        let before = self.dp.reasons().expect("read reasons");
        let opts = RunOptions {
            ingress_ifindex,
            ..RunOptions::default()
        };
        let run = self
            .dp
            .test_run_with(Program::Lb, frame, opts)
            .expect("BPF_PROG_TEST_RUN");
        let (action, out) = (run.action, run.frame);
        let after = self.dp.reasons().expect("read reasons");
        let reasons = before
            .iter()
            .zip(&after)
            .filter(|((_, b), (_, a))| a.packets != b.packets)
            .map(|((r, b), (_, a))| (*r, a.packets - b.packets))
            .collect();
        Outcome {
            action,
            frame: out,
            reasons,
        }
    }

    /// Runs `frame` through `xlb_decap` once with `addrs` as this host's addresses.
    pub fn run_decap(&mut self, addrs: &[IpAddr], frame: &[u8]) -> (u32, Vec<u8>) {
        for a in addrs {
            self.dp
                .add_decap_addr(&addr_bytes(*a).1)
                .expect("decap addr");
        }
        self.dp
            .test_run(Program::Decap, frame)
            .expect("BPF_PROG_TEST_RUN")
    }

    pub fn vip_counters(&mut self, vip: u32) -> VipCounters {
        self.dp.vip_counters(vip).expect("vip counters")
    }

    pub fn backend_counters(&mut self, index: u32) -> Counters {
        self.dp.backend_counters(index).expect("backend counters")
    }

    pub fn flows(&mut self) -> usize {
        self.dp.flows().expect("flows").len()
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dp
    }
}

/// (family, 16-byte address) as the maps hold it: the agent's own conversion.
pub use xlb::balancer::addr_bytes;

/// The flow key of a client → VIP flow, as the datapath builds it.
pub fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: Proto) -> FlowKey {
    let (family, s) = addr_bytes(src);
    FlowKey {
        src: s,
        dst: addr_bytes(dst).1,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: proto.number(),
        family,
        _pad: [0; 2],
    }
}

/// The outer IPv4 source the datapath derives from a flow hash.
pub fn tunnel_src_v4(hash: u32) -> Ipv4Addr {
    let h = hash.to_be_bytes();
    Ipv4Addr::new(TUNNEL_SRC_V4[0], TUNNEL_SRC_V4[1], h[2], h[3])
}

/// The outer IPv6 source the datapath derives from a flow hash.
pub fn tunnel_src_v6(hash: u32) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(&TUNNEL_SRC_V6);
    a[12..].copy_from_slice(&hash.to_be_bytes());
    Ipv6Addr::from(a)
}

/// The outer IPv6 flow label the datapath derives from a flow hash.
pub fn tunnel_flow_label(hash: u32) -> u32 {
    hash & 0x000f_ffff
}

/// The 5-tuple hash (re-exported for expectations).
pub fn hash5(key: &FlowKey) -> u32 {
    flow_hash(key)
}

/// The source-only hash (re-exported for expectations).
pub fn hash_src(key: &FlowKey) -> u32 {
    source_hash(key)
}

// -------------------------------------------------------------------------------------------------
// Helpers for the `fixtures_*.rs` and `property.rs` test files.

impl Fixture {
    /// Runs `frame` through `xlb_decap` like [`Fixture::run_decap`], and also returns the decap
    /// reason counters that moved (packets), by reason.
    pub fn run_decap_counted(
        &mut self,
        addrs: &[IpAddr],
        frame: &[u8],
    ) -> (u32, Vec<u8>, Vec<(lb_common::DecapReason, u64)>) {
        let before = self.dp.decap_reasons().expect("read decap reasons");
        let (action, out) = self.run_decap(addrs, frame);
        let after = self.dp.decap_reasons().expect("read decap reasons");
        let moved = before
            .iter()
            .zip(&after)
            .filter(|((_, b), (_, a))| a.packets != b.packets)
            .map(|((r, b), (_, a))| (*r, a.packets - b.packets))
            .collect();
        (action, out, moved)
    }

    /// Writes one `VIPS` entry as given (for entries [`Fixture::listener`] does not make).
    pub fn vip_entry(&mut self, addr: IpAddr, port: u16, proto: u8, meta: VipMeta) {
        let (family, a) = addr_bytes(addr);
        self.dp
            .set_vip(
                &VipKey {
                    addr: a,
                    port_be: port.to_be(),
                    proto,
                    family,
                },
                &meta,
            )
            .expect("set vip");
    }

    /// Total packets per reason counter so far (summed over CPUs).
    pub fn reason_packets(&mut self) -> Vec<(Reason, u64)> {
        self.dp
            .reasons()
            .expect("read reasons")
            .into_iter()
            .map(|(r, c)| (r, c.packets))
            .collect()
    }

    /// The flow table's entries.
    pub fn flow_entries(&mut self) -> Vec<(FlowKey, lb_common::FlowState)> {
        self.dp.flows().expect("flows")
    }
}

/// The frame the balancer sends for the client frame `inner` tunnelled to `backend` with flow hash
/// `hash`: Ethernet from the frame's own destination MAC (the balancer's) to [`MAC_GATEWAY`] with
/// the frame's VLAN tag kept; outer IPv4 (protocol 4 or 41: ttl 64, id 0, tos 0, DF copied from an
/// IPv4 inner packet, set for an IPv6 one, source [`tunnel_src_v4`]) or outer IPv6 (hop limit 64,
/// flow label [`tunnel_flow_label`], source [`tunnel_src_v6`]); then the inner IP packet as is.
pub fn expect_tunnel(inner: &[u8], backend: IpAddr, hash: u32) -> Vec<u8> {
    use crate::packet::{Packet, ip_bytes};
    let mut lb_mac = [0u8; 6];
    lb_mac.copy_from_slice(&inner[..6]);
    let link = Packet::eth(lb_mac, MAC_GATEWAY);
    let link = if inner[12..14] == [0x81, 0x00] {
        link.vlan(u16::from_be_bytes([inner[14], inner[15]]) & 0x0fff)
    } else {
        link
    };
    let ip = ip_bytes(inner);
    let df = ip[0] >> 4 == 6 || ip[6] & 0x40 != 0;
    match backend {
        IpAddr::V4(b) => {
            let outer = link.ipv4(tunnel_src_v4(hash), b).ttl(64);
            let outer = if df { outer.dont_fragment() } else { outer };
            outer.ipip(ip).build()
        }
        IpAddr::V6(b) => link
            .ipv6(tunnel_src_v6(hash), b)
            .flow_label(tunnel_flow_label(hash))
            .hop_limit(64)
            .ip6ip6(ip)
            .build(),
    }
}

/// The frame L2 DSR sends for `frame`: only the MACs change (source: the balancer's MAC that the
/// frame was sent to; destination: the target's, [`BACKEND_MAC`]).
pub fn expect_dsr(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.copy_within(0..6, 6);
    out[..6].copy_from_slice(&BACKEND_MAC);
    out
}

/// One row of a fixture table: this frame in, this verdict, this reason, this frame out.
pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub reason: Reason,
    pub expect: Vec<u8>,
}

impl Case {
    pub fn new(
        name: &'static str,
        input: Vec<u8>,
        action: u32,
        reason: Reason,
        expect: Vec<u8>,
    ) -> Case {
        Case {
            name,
            input,
            action,
            reason,
            expect,
        }
    }

    /// The frame leaves as it came.
    pub fn unchanged(name: &'static str, input: Vec<u8>, action: u32, reason: Reason) -> Case {
        Case {
            name,
            expect: input.clone(),
            input,
            action,
            reason,
        }
    }

    pub fn pass(name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
        Case::unchanged(name, input, XDP_PASS, reason)
    }

    pub fn drop(name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
        Case::unchanged(name, input, XDP_DROP, reason)
    }

    /// Tunnelled to `backend`, the outer source from `hash` (see [`expect_tunnel`]).
    pub fn tunnel(name: &'static str, input: Vec<u8>, backend: IpAddr, hash: u32) -> Case {
        let expect = expect_tunnel(&input, backend, hash);
        Case {
            name,
            input,
            action: XDP_TX,
            reason: Reason::TxTunnel,
            expect,
        }
    }

    /// Sent by L2 DSR (see [`expect_dsr`]).
    pub fn dsr(name: &'static str, input: Vec<u8>) -> Case {
        let expect = expect_dsr(&input);
        Case {
            name,
            input,
            action: XDP_TX,
            reason: Reason::TxDsr,
            expect,
        }
    }
}

impl Fixture {
    /// Runs every case; a failure names its case and prints both frames.
    #[track_caller]
    pub fn run_cases(&mut self, cases: &[Case]) {
        for c in cases {
            println!("case: {}", c.name);
            let out = self.run(&c.input);
            assert_eq!(out.action, c.action, "case {}: action", c.name);
            assert_eq!(
                out.reasons,
                vec![(c.reason, 1)],
                "case {}: reason counters",
                c.name
            );
            crate::packet::assert_frame_eq(&out.frame, &c.expect);
        }
    }
}
