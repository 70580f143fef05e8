//! Turns a validated [`Config`] into datapath state: backends, Maglev rings, VIP entries and
//! the node config. Applying is idempotent and works as a diff against what was applied
//! before, so a reload changes only what changed, and established flows keep their targets.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    AF_INET, AF_INET6, Addr, BACKEND_F_LIVE, Backend, CONFIG_F_NAT, CONFIG_F_NO_FIB, CONFIG_F_SNAT,
    FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VIP_F_ADDRESS_ONLY, VIP_F_DSR,
    VIP_F_NAT, VIP_F_SNAT, VIP_F_SOURCE_IP, VipKey, VipMeta,
};

use lb_config::{Config, Forwarding, Listener, Protocol, TargetGroup, parse_mac};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    maglev::{self, MaglevTarget},
    rings::{RingSpace, Segment},
};

/// A listener as the datapath knows it: address, port, IP protocols.
type ListenerKey = (IpAddr, u16, &'static [u8]);

/// What a backend is to the datapath: a target's address, and the port NAT sends it to (0 for
/// tunnel and DSR targets, and NAT on every port: the packet keeps its port). A NAT target in
/// two groups on two ports is two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetAddr {
    pub addr: IpAddr,
    pub port: u16,
}

impl TargetAddr {
    /// Target `t` of `g` as listeners of `cfg` forward to it.
    pub fn of(cfg: &Config, g: &TargetGroup, t: &lb_config::Target) -> TargetAddr {
        TargetAddr {
            addr: t.id,
            port: cfg.nat_port(g, t).unwrap_or(0),
        }
    }
}

/// `address:port` for NAT targets, the address for the others.
impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            0 => self.addr.fmt(f),
            port => SocketAddr::new(self.addr, port).fmt(f),
        }
    }
}

/// What was applied for one listener.
#[derive(Debug, Clone)]
pub struct AppliedListener {
    pub name: String,
    pub vip: u32,
    /// Backend indices of the listener's targets, as (target, index, weight).
    pub targets: Vec<(TargetAddr, u32, u32)>,
}

/// A listener's Maglev tables in `RINGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tables {
    live: Segment,
    /// Where the next table goes; none until the listener's second table.
    standby: Option<Segment>,
    /// The standby holds the table the live one replaced, and the VIP entries name it.
    previous: bool,
}

impl Tables {
    /// The VIP entries' view of them.
    fn meta(self, index: u32, flags: u32) -> VipMeta {
        let prev = self.standby.filter(|_| self.previous).unwrap_or(self.live);
        VipMeta {
            index,
            flags,
            ring_base: self.live.base,
            ring_size: self.live.size,
            prev_base: prev.base,
            prev_size: prev.size,
        }
    }
}

/// What the flow table holds: [`Balancer::flows`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowCensus {
    /// Live flows per target.
    pub per_target: BTreeMap<TargetAddr, u64>,
    /// Live flows, whatever their target (one that has left included).
    pub live: u64,
    /// Every entry: the live flows and the closed or idle ones the LRU has not evicted yet.
    pub entries: u64,
    /// The most entries the table holds (`node.flow_table_size`); beyond it the LRU evicts the
    /// oldest, live or not, and an evicted live flow is balanced again on its next packet.
    pub capacity: u64,
}

/// The agent's view of the datapath it programs.
pub struct Balancer {
    dp: Dataplane,
    /// Backend index per target, while the target is in the datapath.
    backends: BTreeMap<TargetAddr, u32>,
    /// Indices of targets that left (their drain over), oldest first: reused for new targets
    /// so that `node.max_targets` bounds the targets at one time, not over the
    /// agent's life. A flow still pinned to a reused index had lost its target already.
    free: VecDeque<u32>,
    /// VIP entries written, to remove the ones a new config drops and to retract a previous
    /// table before it is overwritten.
    keys: BTreeMap<VipKey, VipMeta>,
    /// Which `RINGS` slots hold tables.
    space: RingSpace,
    /// The tables of each VIP index.
    rings: BTreeMap<u32, Tables>,
    /// The targets (target, index, weight) each VIP index's live ring was built from.
    tables: BTreeMap<u32, Vec<(TargetAddr, u32, u32)>>,
    /// Each listener's VIP index, by what it listens on: the counters and the ring stay with
    /// the listener when a reload reorders the file.
    vips: BTreeMap<ListenerKey, u32>,
    pub listeners: Vec<AppliedListener>,
}

impl Balancer {
    /// Takes over `dp`. Whatever an earlier agent left in its pinned maps is read back first:
    /// targets keep their backend indices (established flows point at them) and each VIP's
    /// live ring is known, so the next table goes to the standby one.
    pub fn new(mut dp: Dataplane) -> Result<Balancer, DataplaneError> {
        let mut backends = BTreeMap::new();
        let mut free = VecDeque::new();
        for (index, b) in dp.backends()? {
            if b.flags & BACKEND_F_LIVE != 0 {
                let t = TargetAddr {
                    addr: addr_from(b.family, &b.addr),
                    port: u16::from_be(b.port_be),
                };
                backends.insert(t, index);
            } else {
                free.push_back(index);
            }
        }
        let mut keys = BTreeMap::new();
        let mut rings = BTreeMap::new();
        let mut listening: BTreeMap<u32, (IpAddr, u16, Vec<u8>)> = BTreeMap::new();
        for (key, meta) in dp.vips()? {
            keys.insert(key, meta);
            if meta.flags & VIP_F_ADDRESS_ONLY == 0 {
                let live = Segment {
                    base: meta.ring_base,
                    size: meta.ring_size,
                };
                let prev = Segment {
                    base: meta.prev_base,
                    size: meta.prev_size,
                };
                let standby = (prev != live).then_some(prev);
                let previous = standby.is_some();
                rings.insert(
                    meta.index,
                    Tables {
                        live,
                        standby,
                        previous,
                    },
                );
                let l = listening.entry(meta.index).or_insert_with(|| {
                    (
                        addr_from(key.family, &key.addr),
                        u16::from_be(key.port_be),
                        Vec::new(),
                    )
                });
                l.2.push(key.proto);
            }
        }
        // The listeners an earlier agent applied, so that each keeps its index.
        let mut vips = BTreeMap::new();
        for (index, (addr, port, mut protos)) in listening {
            protos.sort_unstable();
            let protos = [Protocol::Tcp, Protocol::Udp, Protocol::TcpUdp]
                .map(protocols)
                .into_iter()
                .find(|p| *p == &protos[..]);
            if let Some(protos) = protos {
                vips.insert((addr, port, protos), index);
            }
        }
        // The tables an earlier agent wrote stay where they are.
        let mut space = RingSpace::new(dp.sizes().ring_slots);
        for t in rings.values() {
            for segment in std::iter::once(t.live).chain(t.standby) {
                space.claim(segment).map_err(DataplaneError::PinnedRings)?;
            }
        }
        Ok(Balancer {
            dp,
            backends,
            free,
            keys,
            space,
            rings,
            tables: BTreeMap::new(),
            vips,
            listeners: Vec::new(),
        })
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Programs `cfg` into the datapath. A config with more targets than the datapath holds, or
    /// with tables its ring space cannot place, is refused before anything is written. Listeners
    /// served in user space (TLS, PROXY v2) are not the datapath's: it does not claim their
    /// address and port.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        let max = self.dp.sizes().listeners;
        if cfg.xdp_listeners().count() > max as usize {
            return Err(DataplaneError::Capacity {
                setting: "max_listeners",
                max,
                what: "the listeners",
            });
        }
        let mut new: BTreeSet<TargetAddr> = BTreeSet::new();
        for l in cfg.xdp_listeners() {
            let tg = cfg.group(l.target_group()).expect("validated");
            new.extend(tg.targets.iter().map(|t| TargetAddr::of(cfg, tg, t)));
        }
        new.retain(|a| !self.backends.contains_key(a));
        let fresh = new.len().saturating_sub(self.free.len()) as u32;
        let max = self.dp.sizes().targets;
        if self.next_unused() - 1 + fresh > max {
            return Err(DataplaneError::Capacity {
                setting: "max_targets",
                max,
                what: "the targets, draining ones included,",
            });
        }
        let wanted: BTreeSet<ListenerKey> = cfg
            .xdp_listeners()
            .map(|l| (l.address, l.port, protocols(l.protocol)))
            .collect();
        let gone: Vec<u32> = self
            .vips
            .iter()
            .filter(|(k, _)| !wanted.contains(*k))
            .map(|(_, i)| *i)
            .collect();
        self.plan_tables(cfg, &gone)?;
        // The SNAT source first: the node config turns its replies on.
        self.dp.set_snat_config(&snat_config(cfg))?;
        self.dp.set_config(&node_config(cfg))?;
        // Listeners that left go first: their slots are for the tables written below, and their
        // index for new listeners, which start with zeroed counters.
        for index in gone {
            self.remove_listener(index)?;
        }
        self.vips.retain(|k, _| wanted.contains(k));
        let mut keys = BTreeMap::new();
        let mut listeners = Vec::new();
        for l in cfg.xdp_listeners() {
            let vip = self.vip_index((l.address, l.port, protocols(l.protocol)))?;
            let tg = cfg.group(l.target_group()).expect("validated");
            let mut targets = Vec::new();
            for t in &tg.targets {
                let target = TargetAddr::of(cfg, tg, t);
                let index = self.backend_index(target)?;
                let mac = t
                    .mac
                    .as_deref()
                    .map(parse_mac)
                    .transpose()
                    .unwrap_or_default()
                    .unwrap_or([0; 6]);
                let (family, addr) = addr_bytes(t.id);
                self.dp.set_backend(
                    index,
                    &Backend {
                        addr,
                        family,
                        flags: BACKEND_F_LIVE,
                        mac,
                        port_be: target.port.to_be(),
                        _pad: [0; 6],
                    },
                )?;
                targets.push((target, index, t.weight));
            }
            // A listener whose targets and table size did not change keeps its table (a table
            // takes milliseconds to build, and a health change would otherwise rebuild every
            // listener's); else the new table goes to the standby, and the VIP entries below
            // flip to it in one map update each.
            let m = l.maglev_table_size;
            let tables = match self.rings.get(&vip) {
                Some(&t) if t.live.size == m && self.tables.get(&vip) == Some(&targets) => t,
                // After a restart, a live table read back that is the one these targets give
                // stays, and so does the table before it, for second chance.
                Some(&t)
                    if t.live.size == m && !self.tables.contains_key(&vip) && {
                        let want = table(&targets, m).map_err(|source| DataplaneError::Table {
                            listener: name(l),
                            source,
                        })?;
                        self.dp.read_ring(t.live.base, m as usize)? == want
                    } =>
                {
                    self.tables.insert(vip, targets.clone());
                    t
                }
                _ => self.write_table(vip, l, &targets)?,
            };
            let mut flags = 0;
            match l.forwarding {
                Forwarding::Tunnel => {}
                Forwarding::Dsr => flags |= VIP_F_DSR,
                Forwarding::Nat => flags |= VIP_F_NAT,
                // SNAT is NAT that sets the source too: NAT's rules (fragments, ICMP errors, no
                // second chance) hold for it as they are.
                Forwarding::Snat => flags |= VIP_F_NAT | VIP_F_SNAT,
            }
            if tg.source_ip_stickiness() {
                flags |= VIP_F_SOURCE_IP;
            }
            let (family, addr) = addr_bytes(l.address);
            let meta = tables.meta(vip, flags);
            for &proto in protocols(l.protocol) {
                let key = VipKey {
                    addr,
                    port_be: l.port.to_be(),
                    proto,
                    family,
                };
                self.dp.set_vip(&key, &meta)?;
                keys.insert(key, meta);
            }
            // The address entry: echo replies and ICMP errors for this VIP address.
            let icmp = if family == AF_INET {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            };
            let key = VipKey {
                addr,
                port_be: 0,
                proto: icmp,
                family,
            };
            let address_meta = VipMeta {
                flags: flags | VIP_F_ADDRESS_ONLY,
                ..meta
            };
            self.address_entry(&mut keys, key, &address_meta)?;
            // Fragments follow source-IP VIPs (see the fragment policy in the README), unless an
            // all-ports listener owns the address.
            let all_ports = cfg
                .xdp_listeners()
                .any(|o| o.port == 0 && o.address == l.address);
            if flags & VIP_F_SOURCE_IP != 0 && l.port != 0 && !all_ports {
                for &proto in protocols(l.protocol) {
                    let key = VipKey {
                        addr,
                        port_be: 0,
                        proto,
                        family,
                    };
                    self.address_entry(&mut keys, key, &address_meta)?;
                }
            }
            listeners.push(AppliedListener {
                name: name(l),
                vip,
                targets,
            });
        }
        for old in self.keys.keys().filter(|k| !keys.contains_key(*k)) {
            self.dp.remove_vip(old)?;
        }
        // Targets no longer in any group stay live for the flows they have (draining, as a
        // deregistered NLB target does); they get no new flows, being in no ring.
        self.keys = keys;
        self.listeners = listeners;
        Ok(())
    }

    /// Refuses `cfg` if the ring space cannot place its new tables once the listeners `gone`
    /// have left: the steps [`Balancer::apply`] takes, on a copy of the space.
    fn plan_tables(&self, cfg: &Config, gone: &[u32]) -> Result<(), DataplaneError> {
        let mut space = self.space.clone();
        for t in gone.iter().filter_map(|i| self.rings.get(i)) {
            std::iter::once(t.live)
                .chain(t.standby)
                .for_each(|s| space.free(s));
        }
        for l in cfg.xdp_listeners() {
            let tg = cfg.group(l.target_group()).expect("validated");
            let vip = self.vips.get(&(l.address, l.port, protocols(l.protocol)));
            let tables = vip.and_then(|i| self.rings.get(i));
            let kept = tables.is_some_and(|t| t.live.size == l.maglev_table_size)
                && vip.is_some_and(|i| self.same_targets(*i, cfg, tg));
            if !kept {
                let standby = tables.and_then(|t| t.standby);
                standby_in(&mut space, standby, l.maglev_table_size).map_err(|source| {
                    DataplaneError::RingSpace {
                        listener: name(l),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Whether VIP `vip`'s live table was built from `tg`'s targets as they are now.
    fn same_targets(&self, vip: u32, cfg: &Config, tg: &TargetGroup) -> bool {
        self.tables.get(&vip).is_some_and(|built| {
            built.len() == tg.targets.len()
                && built.iter().zip(&tg.targets).all(|((a, i, w), t)| {
                    *a == TargetAddr::of(cfg, tg, t)
                        && *w == t.weight
                        && self.backends.get(a) == Some(i)
                })
        })
    }

    /// Builds listener `l`'s table over `targets` and writes it to VIP `vip`'s standby; returns
    /// its tables with the new one live (the VIP entries still to be written).
    fn write_table(
        &mut self,
        vip: u32,
        l: &Listener,
        targets: &[(TargetAddr, u32, u32)],
    ) -> Result<Tables, DataplaneError> {
        let m = l.maglev_table_size;
        let table = table(targets, m).map_err(|source| DataplaneError::Table {
            listener: name(l),
            source,
        })?;
        let Some(mut t) = self.rings.get(&vip).copied() else {
            // A new listener: its first table, which no entry names yet.
            let at = self
                .space
                .alloc(m)
                .map_err(|source| DataplaneError::RingSpace {
                    listener: name(l),
                    source,
                })?;
            if let Err(e) = self.dp.write_ring(at.base, &table) {
                self.space.free(at);
                return Err(e);
            }
            let t = Tables {
                live: at,
                standby: None,
                previous: false,
            };
            self.rings.insert(vip, t);
            self.tables.insert(vip, targets.to_vec());
            return Ok(t);
        };
        // The standby holds the previous table, which the VIP entries name: they stop naming it
        // before it is overwritten, so that it is never read half-written.
        if t.previous {
            t.previous = false;
            for (key, meta) in self.keys.iter_mut().filter(|(_, m)| m.index == vip) {
                *meta = t.meta(vip, meta.flags);
                self.dp.set_vip(key, meta)?;
            }
        }
        let at = standby_in(&mut self.space, t.standby, m);
        t.standby = at.as_ref().ok().copied();
        self.rings.insert(vip, t);
        let at = at.map_err(|source| DataplaneError::RingSpace {
            listener: name(l),
            source,
        })?;
        self.dp.write_ring(at.base, &table)?;
        let t = Tables {
            live: at,
            standby: Some(t.live),
            previous: true,
        };
        self.rings.insert(vip, t);
        self.tables.insert(vip, targets.to_vec());
        Ok(t)
    }

    /// Removes the VIP entries of listener `index` and frees its tables.
    fn remove_listener(&mut self, index: u32) -> Result<(), DataplaneError> {
        let keys: Vec<VipKey> = self
            .keys
            .iter()
            .filter(|(_, m)| m.index == index)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.dp.remove_vip(&key)?;
            self.keys.remove(&key);
        }
        if let Some(t) = self.rings.remove(&index) {
            std::iter::once(t.live)
                .chain(t.standby)
                .for_each(|s| self.space.free(s));
        }
        self.tables.remove(&index);
        Ok(())
    }

    /// Writes a per-address entry once per apply (the first listener on an address owns it).
    fn address_entry(
        &mut self,
        keys: &mut BTreeMap<VipKey, VipMeta>,
        key: VipKey,
        meta: &VipMeta,
    ) -> Result<(), DataplaneError> {
        if let std::collections::btree_map::Entry::Vacant(e) = keys.entry(key) {
            self.dp.set_vip(&key, meta)?;
            e.insert(*meta);
        }
        Ok(())
    }

    /// Takes a target's backends (one per port it is sent to) out of the datapath for good
    /// (its drain is over): flows still pinned to them are re-balanced on their next packet, and
    /// their indices go back to the free list. A backend still in some listener stays.
    pub fn retire(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let ports: Vec<TargetAddr> = self
            .backends
            .keys()
            .filter(|t| t.addr == addr)
            .copied()
            .collect();
        for target in ports {
            self.retire_backend(target)?;
        }
        Ok(())
    }

    fn retire_backend(&mut self, target: TargetAddr) -> Result<(), DataplaneError> {
        let in_use = self
            .listeners
            .iter()
            .any(|l| l.targets.iter().any(|(a, _, w)| *a == target && *w > 0));
        if let (false, Some(&index)) = (in_use, self.backends.get(&target)) {
            let (family, a) = addr_bytes(target.addr);
            self.dp.set_backend(
                index,
                &Backend {
                    addr: a,
                    family,
                    flags: 0,
                    mac: [0; 6],
                    port_be: 0,
                    _pad: [0; 6],
                },
            )?;
            self.backends.remove(&target);
            self.free.push_back(index);
        }
        Ok(())
    }

    /// Retires the targets in the datapath that no listener of what was last applied has (an
    /// earlier agent left them, with a config that had them); returns them.
    pub fn retire_orphans(&mut self) -> Result<Vec<TargetAddr>, DataplaneError> {
        let orphans: Vec<TargetAddr> = self
            .backends
            .keys()
            .filter(|a| {
                !self
                    .listeners
                    .iter()
                    .any(|l| l.targets.iter().any(|(t, _, _)| t == *a))
            })
            .copied()
            .collect();
        for a in &orphans {
            self.retire_backend(*a)?;
        }
        Ok(orphans)
    }

    /// The flow table in one pass: live flows per target, and how full it is. A flow is live
    /// while its TCP client has sent no FIN or RST, or its UDP datagrams come within the idle
    /// timeout.
    pub fn flows(&mut self) -> Result<FlowCensus, DataplaneError> {
        let by_index: BTreeMap<u32, TargetAddr> =
            self.backends.iter().map(|(a, i)| (*i, *a)).collect();
        // The datapath's clock: `bpf_ktime_get_ns` is CLOCK_MONOTONIC.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        let mut census = FlowCensus {
            capacity: u64::from(self.dp.sizes().flows),
            ..FlowCensus::default()
        };
        for (key, state) in self.dp.flows()? {
            census.entries += 1;
            let live = if key.proto == IPPROTO_UDP {
                now.saturating_sub(state.seen_ns) < lb_common::UDP_FLOW_TIMEOUT_NS
            } else {
                state.seen_ns == 0
            };
            if !live {
                continue;
            }
            census.live += 1;
            if let Some(addr) = by_index.get(&state.backend) {
                *census.per_target.entry(*addr).or_insert(0) += 1;
            }
        }
        Ok(census)
    }

    /// The SNAT ports in use and the SNAT flows, as the datapath holds them.
    pub fn snat_entries(&mut self) -> Result<SnatEntries, DataplaneError> {
        Ok(SnatEntries {
            ports: self.dp.snat_ports()?,
            flows: self.dp.snat_flows()?,
        })
    }

    /// Removes SNAT flows, then the ports they held: a packet of the flow that comes between
    /// the two gets a new port, never one whose entry is going.
    pub fn remove_snat(
        &mut self,
        flows: &[FlowKey],
        ports: &[FlowKey],
    ) -> Result<(), DataplaneError> {
        for k in flows {
            self.dp.remove_snat_flow(k)?;
        }
        for k in ports {
            self.dp.remove_snat_port(k)?;
        }
        Ok(())
    }

    /// The index of `target`: its own, a freed one, or the next never used. A reused index
    /// starts with zeroed counters.
    fn backend_index(&mut self, target: TargetAddr) -> Result<u32, DataplaneError> {
        if let Some(&index) = self.backends.get(&target) {
            return Ok(index);
        }
        let index = match self.free.pop_front() {
            Some(index) => {
                self.dp.reset_backend_counters(index)?;
                index
            }
            None => self.next_unused(),
        };
        self.backends.insert(target, index);
        Ok(index)
    }

    /// The VIP index of listener `key`: its own, else the lowest free one, with its counters
    /// zeroed.
    fn vip_index(&mut self, key: ListenerKey) -> Result<u32, DataplaneError> {
        if let Some(&index) = self.vips.get(&key) {
            return Ok(index);
        }
        let taken: BTreeSet<u32> = self.vips.values().copied().collect();
        let max = self.dp.sizes().listeners;
        let index = (0..max)
            .find(|i| !taken.contains(i))
            .ok_or(DataplaneError::Capacity {
                setting: "max_listeners",
                max,
                what: "the listeners",
            })?;
        self.dp.reset_vip_counters(index)?;
        self.vips.insert(key, index);
        Ok(index)
    }

    /// The lowest index no target has held (index 0 means "no backend").
    fn next_unused(&self) -> u32 {
        let used = self.backends.values().chain(&self.free);
        used.max().copied().unwrap_or(0) + 1
    }
}

fn protocols(p: Protocol) -> &'static [u8] {
    match p {
        // TLS listeners are served in user space; a TLS group is reached through them.
        Protocol::Tcp | Protocol::Tls => &[IPPROTO_TCP],
        Protocol::Udp => &[IPPROTO_UDP],
        Protocol::TcpUdp => &[IPPROTO_TCP, IPPROTO_UDP],
        // Validation keeps HTTP out of L4 listeners.
        Protocol::Http | Protocol::Https => &[],
    }
}

/// Where a listener's next table of `m` slots goes: its `standby` if that has `m` slots, else new
/// slots (a standby of another size is freed first).
fn standby_in(
    space: &mut RingSpace,
    standby: Option<Segment>,
    m: u32,
) -> Result<Segment, crate::rings::RingSpaceError> {
    match standby {
        Some(s) if s.size == m => Ok(s),
        other => {
            if let Some(s) = other {
                space.free(s);
            }
            space.alloc(m)
        }
    }
}

/// How logs and errors name a listener.
fn name(l: &Listener) -> String {
    format!("{}:{}/{:?}", l.address, l.port, l.protocol)
}

/// The Maglev table of `m` slots over `targets` (address bytes are the stable key).
fn table(targets: &[(TargetAddr, u32, u32)], m: u32) -> Result<Vec<u32>, maglev::MaglevError> {
    let keys: Vec<Addr> = targets
        .iter()
        .map(|(a, _, _)| addr_bytes(a.addr).1)
        .collect();
    let mt: Vec<MaglevTarget<'_>> = targets
        .iter()
        .zip(&keys)
        .map(|((_, index, weight), key)| MaglevTarget {
            key,
            index: *index,
            weight: *weight,
        })
        .collect();
    maglev::build(&mt, m)
}

fn node_config(cfg: &Config) -> lb_common::Config {
    let n = &cfg.node;
    let mut c = lb_common::Config {
        tunnel_src_v4: n.tunnel_source_v4.octets(),
        tunnel_src_v6: n.tunnel_source_v6.octets(),
        gateway_mac: [0; 6],
        flags: 0,
        mtu: n.mtu,
        _pad: [0; 6],
    };
    if let Some(mac) = &n.gateway_mac {
        c.gateway_mac = parse_mac(mac).expect("validated");
        // A configured gateway is used as is.
        c.flags |= CONFIG_F_NO_FIB;
    }
    // Only then does the datapath look up packets to no VIP as NAT replies.
    if cfg.xdp_listeners().any(|l| l.forwarding == Forwarding::Nat) {
        c.flags |= CONFIG_F_NAT;
    }
    // And as SNAT replies.
    if cfg
        .xdp_listeners()
        .any(|l| l.forwarding == Forwarding::Snat)
    {
        c.flags |= CONFIG_F_SNAT;
    }
    c
}

/// The datapath's SNAT state: (reply key, entry) per port, (client key, flow) per flow.
#[derive(Debug, Default)]
pub struct SnatEntries {
    pub ports: Vec<(FlowKey, lb_common::SnatEntry)>,
    pub flows: Vec<(FlowKey, lb_common::SnatFlow)>,
}

/// `SNAT_CONFIG[0]` of `[node.snat]`.
pub fn snat_config(cfg: &Config) -> lb_common::SnatConfig {
    let s = &cfg.node.snat;
    lb_common::SnatConfig {
        addr_v4: s.address_v4.map_or([0; 16], |a| addr_bytes(a.into()).1),
        addr_v6: s.address_v6.map_or([0; 16], |a| addr_bytes(a.into()).1),
        port_first: s.ports[0],
        port_count: s.port_count() as u16,
        _pad: 0,
    }
}

/// The address a map entry holds.
fn addr_from(family: u8, a: &Addr) -> IpAddr {
    if family == AF_INET {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

/// (family, 16-byte address) as the maps hold it.
pub fn addr_bytes(addr: IpAddr) -> (u8, Addr) {
    let mut a = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (AF_INET, a)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}
