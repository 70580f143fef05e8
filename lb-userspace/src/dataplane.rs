//! The only module that touches BPF: loads the XDP object, attaches its programs, and gives
//! typed access to its maps. Everything else in the agent speaks in listeners and targets and
//! calls into here.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Addr, Backend, CachedHop, Config, Counters, DecapReason, FlowKey, FlowState, NatReply, Reason,
    SnatConfig, SnatEntry, SnatFlow, VipCounters, VipKey, VipMeta, names,
};
use thiserror::Error;

/// The eBPF object built by `build.rs`: every program and map of the datapath.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("load the XDP object (is this root, with bpffs and BTF?)")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The kernel's verifier refused a program: what it lacks, in one line; the whole log is kept
    /// for `--verbose` ([`verifier_log`]).
    #[error("this kernel ({kernel}) refused {program}: {why}")]
    Refused {
        program: &'static str,
        kernel: String,
        why: String,
        log: String,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name} is not in the object")]
    MissingMap { name: &'static str },
    #[error("attach {program} to {iface} in {mode} mode (try `--xdp-mode generic`)")]
    Attach {
        program: &'static str,
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pin {path}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("create the pin directory {path}")]
    PinDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("remove the pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("re-open the XDP link pinned at {path}")]
    Link {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("read the XDP object: {why}")]
    Object { why: String },
    /// A map pinned by an earlier agent does not have the shape this one needs: other sizes in
    /// `[node]`, or another version of xlb.
    #[error(
        "the map pinned at {path} holds {pinned}; this config and version of xlb need {wanted}. \
         Set [node] back to the sizes it was made with, or start afresh with `xlb stop --detach` \
         (it detaches the datapath and drops every flow)"
    )]
    PinnedShape {
        path: String,
        pinned: String,
        wanted: String,
    },
    #[error("{what} would exceed node.{setting} ({max})")]
    Capacity {
        setting: &'static str,
        max: u32,
        what: &'static str,
    },
    #[error("a Maglev table of {len} slots from slot {base} would end past RINGS ({slots} slots)")]
    RingOutside { base: u32, len: usize, slots: u32 },
    /// The listener's tables do not fit in `RINGS` beside the others'.
    #[error("listener {listener}")]
    RingSpace {
        listener: String,
        #[source]
        source: crate::rings::RingSpaceError,
    },
    /// The pinned `VIPS` map names tables that overlap or lie outside `RINGS`.
    #[error("the pinned VIPS map's Maglev tables")]
    PinnedRings(#[source] crate::rings::RingSpaceError),
    #[error("listener {listener}")]
    Table {
        listener: String,
        #[source]
        source: crate::maglev::MaglevError,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

/// Which XDP program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// The balancer.
    Lb,
    /// The tunnel decapsulator, for targets.
    Decap,
    /// A plain pass, for veth peers of interfaces that send with `XDP_TX`.
    Pass,
}

impl Program {
    pub const fn name(self) -> &'static str {
        match self {
            Program::Lb => names::PROG_LB,
            Program::Decap => names::PROG_DECAP,
            Program::Pass => names::PROG_PASS,
        }
    }
}

/// How the datapath's maps are sized when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Flow table entries.
    pub flows: u32,
    /// Listeners (VIPs).
    pub listeners: u32,
    /// `RINGS` slots (8 bytes each), for every listener's two Maglev tables.
    pub ring_slots: u32,
    /// Targets (backend slots; the datapath's slot 0 means "none" and comes on top).
    pub targets: u32,
}

impl Sizes {
    /// For decap or pass programs alone: the balancer's maps shrink to one entry.
    pub const MINIMAL: Sizes = Sizes {
        flows: 1,
        listeners: 1,
        ring_slots: 1,
        targets: 1,
    };

    /// The sizes `[node]` asks for.
    pub fn of(node: &lb_config::Node) -> Sizes {
        Sizes {
            flows: node.flow_table_size,
            listeners: node.max_listeners,
            ring_slots: node.ring_slots(),
            targets: node.max_targets,
        }
    }

    /// Entries of each map these sizes set (the others keep the object's).
    fn entries(self) -> [(&'static str, u32); 10] {
        let (l, t) = (self.listeners.max(1), self.targets.max(1) + 1);
        [
            (names::FLOWS, self.flows.max(1)),
            (names::NAT_REPLIES, self.flows.max(1)),
            (names::SNAT_PORTS, self.flows.max(1)),
            (names::SNAT_FLOWS, self.flows.max(1)),
            (names::RINGS, self.ring_slots.max(1)),
            (names::VIPS, l * 4),
            (names::VIP_STATS, l),
            (names::BACKENDS, t),
            (names::BACKEND_STATS, t),
            (names::NEXT_HOPS, t),
        ]
    }

    /// The kernel memory each map takes at these sizes, largest first, in bytes: as Linux 6.4
    /// and later account it (`memlock` in a map's fdinfo), for `cpus` possible CPUs; the SNAT
    /// maps, which are not preallocated, empty. An array
    /// holds its entries (one per CPU for per-CPU maps); a hash map preallocates every element
    /// with the kernel's 48-byte header, and a bucket per entry rounded up to a power of two.
    pub fn memory(self, cpus: usize) -> Result<Vec<(String, u64)>> {
        let object = aya_obj::Object::parse(OBJECT)
            .map_err(|e| DataplaneError::Object { why: e.to_string() })?;
        let set = self.entries();
        let up8 = |n: u32| u64::from(n).div_ceil(8) * 8;
        let page = page_size() as u64;
        let mut out: Vec<(String, u64)> = object
            .maps
            .iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .map(|(name, m)| {
                let entries = set
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(m.max_entries(), |(_, e)| *e);
                let n = u64::from(entries);
                let bytes = match m.map_type() {
                    // A mappable array takes whole pages, and one for its header.
                    BPF_MAP_TYPE_ARRAY if m.map_flags() & BPF_F_MMAPABLE != 0 => {
                        (n * up8(m.value_size())).div_ceil(page) * page + page
                    }
                    BPF_MAP_TYPE_ARRAY => n * up8(m.value_size()),
                    BPF_MAP_TYPE_PERCPU_ARRAY => n * (up8(m.value_size()) * cpus as u64 + 8),
                    // Not preallocated (the SNAT maps): the buckets, then each entry as it is
                    // made, which this does not count.
                    _ if m.map_flags() & BPF_F_NO_PREALLOC != 0 => n.next_power_of_two() * 16,
                    _ => {
                        let element = 48 + up8(m.key_size()) + up8(m.value_size());
                        n * element + n.next_power_of_two() * 16
                    }
                };
                (name.clone(), bytes)
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}

// Map types (`enum bpf_map_type`), as the object and the kernel number them.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_NO_PREALLOC: u32 = 1 << 0;

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize)
}

/// XDP attach mode, as the user asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (fast; veth, most NICs).
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
}

impl From<lb_config::XdpMode> for AttachMode {
    fn from(m: lb_config::XdpMode) -> AttachMode {
        match m {
            lb_config::XdpMode::Native => AttachMode::Native,
            lb_config::XdpMode::Generic => AttachMode::Generic,
        }
    }
}

impl AttachMode {
    fn xdp(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
    const fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// What [`Dataplane::attach_or_replace`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, pinned.
    New,
    /// The pinned link now runs this program.
    Replaced,
    /// The pinned link held another interface (by index), or none (severed): a new one replaced
    /// it.
    Moved { from: Option<u32> },
}

/// How [`Dataplane::test_run_with`] runs a program.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Runs per call (the kernel reports the mean duration).
    pub repeat: u32,
    /// The `xdp_md` ingress interface (in the calling thread's namespace); 0 for none.
    pub ingress_ifindex: u32,
}

/// What [`Dataplane::test_run_with`] measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub action: u32,
    /// Kernel-reported time per run.
    pub duration: std::time::Duration,
    /// The output frame.
    pub frame: Vec<u8>,
}

/// The loaded XDP object: programs and maps.
pub struct Dataplane {
    ebpf: Ebpf,
    sizes: Sizes,
    /// Loaded from this build's object, whose `NEXT_HOPS` entries are [`CachedHop`]s; another
    /// build's (`xlb-bench --baseline`) may lay them out otherwise, and is not asked to clear them.
    own_object: bool,
}

impl Dataplane {
    /// Creates the object's maps with the given sizes. A program goes into the kernel when it is
    /// first used (attached, run, asked about), so a command that needs one program does not
    /// depend on the kernel accepting the others: `xlb attach --program decap` works on a
    /// kernel that refuses the balancer.
    pub fn load(sizes: Sizes) -> Result<Self> {
        Self::load_pinned(sizes, None)
    }

    /// Like [`Dataplane::load`], with every map pinned under `pin_dir`. Maps already pinned
    /// there are reused, not recreated: a restarted or upgraded agent keeps the flow table,
    /// the rings and the counters of the one before it.
    /// A pinned map of another shape (other sizes, another version's layout) is refused
    /// before anything is loaded.
    pub fn load_pinned(sizes: Sizes, pin_dir: Option<&Path>) -> Result<Self> {
        Self::load_object(OBJECT, sizes, pin_dir)
    }

    /// Like [`Dataplane::load_pinned`], from another build's object (`xlb-bench --baseline`
    /// compares two builds' programs on the same maps and packets). Its maps must have this
    /// build's layouts.
    pub fn load_object(object: &[u8], sizes: Sizes, pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.entries() {
            loader.map_max_entries(name, entries);
        }
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                path: dir.display().to_string(),
                source,
            })?;
            check_pins(sizes, dir)?;
            for name in names::MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let ebpf = loader.load(object).map_err(Box::new)?;
        Ok(Dataplane {
            ebpf,
            sizes,
            own_object: std::ptr::eq(object, OBJECT),
        })
    }

    /// The sizes the maps were made with.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    /// Detaches a link made by [`Dataplane::attach`].
    pub fn detach(&mut self, p: Program, id: XdpLinkId) -> Result<()> {
        self.xdp(p)?
            .detach(id)
            .map_err(|source| DataplaneError::Program {
                name: p.name(),
                source: Box::new(source),
            })
    }

    /// Runs `p` on `frame` with `BPF_PROG_TEST_RUN` as `opts` says; the duration is the kernel's.
    pub fn test_run_with(
        &mut self,
        p: Program,
        frame: &[u8],
        opts: RunOptions,
    ) -> Result<RunResult> {
        use aya::programs::{TestRun as _, TestRunOptions};
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data 0 and data_end the frame length.
        let md: [u32; 6] = [0, frame.len() as u32, 0, opts.ingress_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let res = self
            .xdp(p)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: (opts.ingress_ifindex != 0).then_some(&ctx[..]),
                repeat: opts.repeat.max(1),
                ..Default::default()
            })
            .map_err(|source| DataplaneError::Program {
                name: p.name(),
                source: Box::new(source),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok(RunResult {
            action: res.return_value,
            duration: res.duration,
            frame: out,
        })
    }

    /// The kernel's total run time and run count of `p`: the program's own cost, which only the
    /// holder of the loaded program can read (`xlb-bench` reports it as `*.prog_ns`). The kernel
    /// counts only while run-time statistics are on (`BPF_ENABLE_STATS`, or the sysctl
    /// `kernel.bpf_stats_enabled`).
    pub fn run_stats(&mut self, p: Program) -> Result<(std::time::Duration, u64)> {
        let info = self
            .xdp(p)?
            .info()
            .map_err(|source| DataplaneError::Program {
                name: p.name(),
                source: Box::new(source),
            })?;
        Ok((info.run_time(), info.run_count()))
    }

    /// Program `p`, loaded into the kernel (verified) on first use.
    fn xdp(&mut self, p: Program) -> Result<&mut Xdp> {
        let name = p.name();
        let prog = self.ebpf.program_mut(name).ok_or(DataplaneError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?;
        let xdp: &mut Xdp = prog.try_into().map_err(|source| DataplaneError::Program {
            name,
            source: Box::new(source),
        })?;
        if xdp.fd().is_err() {
            xdp.load().map_err(|source| refused(name, source))?;
        }
        Ok(xdp)
    }

    /// Attaches `p` to `iface`; it stays attached while this value lives.
    pub fn attach(&mut self, p: Program, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        self.xdp(p)?
            .attach(iface, mode.xdp())
            .map_err(|source| DataplaneError::Attach {
                program: p.name(),
                iface: iface.to_owned(),
                mode: mode.name(),
                source: Box::new(source),
            })
    }

    /// Attaches `p` to `iface` and pins the link at `pin`, so it outlives this process.
    pub fn attach_pinned(
        &mut self,
        p: Program,
        iface: &str,
        mode: AttachMode,
        pin: &Path,
    ) -> Result<()> {
        let id = self.attach(p, iface, mode)?;
        let link = self
            .xdp(p)?
            .take_link(id)
            .map_err(|source| DataplaneError::Program {
                name: p.name(),
                source: Box::new(source),
            })?;
        let fd: FdLink = link.try_into().map_err(|_| DataplaneError::Attach {
            program: p.name(),
            iface: iface.to_owned(),
            mode: mode.name(),
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?;
        fd.pin(pin).map_err(|source| DataplaneError::Pin {
            path: pin.display().to_string(),
            source,
        })?;
        Ok(())
    }

    /// Attaches `p` to `iface` through the link pinned at `link_pin`: if that link exists (an
    /// earlier agent made it), its program is replaced atomically (`bpf_link_update`), so no
    /// packet goes without a program; otherwise a new link is made and pinned. Either way the
    /// program stays attached after this process exits.
    ///
    /// A pinned link that no longer holds `iface` (the interface was deleted and made again, and
    /// the kernel severed the link; or the config names another interface) is unpinned and a
    /// new one made: the answer says so, for the log.
    pub fn attach_or_replace(
        &mut self,
        p: Program,
        iface: &str,
        mode: AttachMode,
        link_pin: &Path,
    ) -> Result<Attached> {
        let path = || link_pin.display().to_string();
        if !link_pin.exists() {
            self.attach_pinned(p, iface, mode, link_pin)?;
            return Ok(Attached::New);
        }
        let link: FdLink = PinnedLink::from_pin(link_pin)
            .map_err(|source| DataplaneError::Link {
                path: path(),
                source,
            })?
            .into();
        let was = link_ifindex(&link).map_err(|source| DataplaneError::Link {
            path: path(),
            source,
        })?;
        let now = nix::net::if_::if_nametoindex(iface).ok();
        if was.is_some() && was == now {
            let link = XdpLink::try_from(link).map_err(|source| DataplaneError::Link {
                path: path(),
                source,
            })?;
            self.xdp(p)?
                .attach_to_link(link)
                .map_err(|source| DataplaneError::Program {
                    name: p.name(),
                    source: Box::new(source),
                })?;
            return Ok(Attached::Replaced);
        }
        // Dropping the old link's last reference detaches it from whatever it still holds.
        std::fs::remove_file(link_pin).map_err(|source| DataplaneError::Unpin {
            path: path(),
            source,
        })?;
        drop(link);
        self.attach_pinned(p, iface, mode, link_pin)?;
        Ok(Attached::Moved { from: was })
    }

    /// Runs `p` once on `frame` with `BPF_PROG_TEST_RUN`; returns the action and the output frame.
    pub fn test_run(&mut self, p: Program, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        // Room for the largest growth the program makes (tunnel headers).
        let mut out = vec![0u8; frame.len() + 256];
        let res = self
            .xdp(p)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|source| DataplaneError::Program {
                name: p.name(),
                source: Box::new(source),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Every map by name, as aya made it: `xlb-tests`' instruction counter copies their contents
    /// to run the programs outside the kernel on the same maps.
    pub fn maps(&self) -> impl Iterator<Item = (&str, &aya::maps::Map)> {
        self.ebpf.maps()
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map(name)?).map_err(|source| DataplaneError::Map { name, source })
    }

    fn array<V: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>> {
        Array::try_from(self.map(name)?).map_err(|source| DataplaneError::Map { name, source })
    }

    fn per_cpu<V: aya::Pod>(&mut self, name: &'static str) -> Result<PerCpuArray<&mut MapData, V>> {
        PerCpuArray::try_from(self.map(name)?)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Writes the node settings. The datapath keeps those the tunnel needs with each target's
    /// cached next hop (`NEXT_HOPS`, per CPU, for a second): a change clears them, so that it
    /// applies from the next packet.
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        let name = names::CONFIG;
        let mut config = self.array::<Config>(name)?;
        if config.get(&0, 0).is_ok_and(|now| now == *cfg) {
            return Ok(());
        }
        config
            .set(0, cfg, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        if !self.own_object {
            return Ok(());
        }
        let targets = self.sizes.targets.max(1) + 1;
        self.reset::<CachedHop>(names::NEXT_HOPS, 0..targets)
    }

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        let name = names::VIPS;
        self.hash::<VipKey, VipMeta>(name)?
            .insert(key, meta, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let name = names::VIPS;
        self.hash::<VipKey, VipMeta>(name)?
            .remove(key)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    pub fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<()> {
        let name = names::BACKENDS;
        self.array::<Backend>(name)?
            .set(index, backend, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Writes `table` into `RINGS` from slot `base`. Write a table no VIP entry names, then point
    /// the VIP at it with [`Dataplane::set_vip`]: lookups never see a half-written table.
    pub fn write_ring(&mut self, base: u32, table: &[u32]) -> Result<()> {
        // An array map lays its values out 8 bytes apart: a slot is a u32 and 4 bytes of padding.
        let mut bytes = vec![0u8; table.len() * 8];
        for (slot, b) in bytes.chunks_exact_mut(8).zip(table) {
            slot[..4].copy_from_slice(&b.to_ne_bytes());
        }
        // SAFETY: `rings_mapped` gives a writable mapping of `bytes.len()` bytes.
        self.rings_mapped(base, table.len(), true, |ring| unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring, bytes.len())
        })
    }

    /// The `len` slots of `RINGS` from slot `base`: a table as the datapath reads it.
    pub fn read_ring(&mut self, base: u32, len: usize) -> Result<Vec<u32>> {
        let mut table = Vec::with_capacity(len);
        self.rings_mapped(base, len, false, |ring| {
            // SAFETY: `rings_mapped` gives a readable mapping of `len * 8` bytes.
            let ring = unsafe { std::slice::from_raw_parts(ring.cast_const(), len * 8) };
            table.extend(
                ring.chunks_exact(8)
                    .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]])),
            );
        })?;
        Ok(table)
    }

    /// Runs `f` on the first byte of `len` slots (8 bytes each) of `RINGS` from `base`, mapped
    /// into this process (`writable` or read-only) for the call: one copy, not one system call
    /// per slot (65,537 updates took 70 ms a ring, over a minute for 1,024 listeners).
    fn rings_mapped(
        &mut self,
        base: u32,
        len: usize,
        writable: bool,
        f: impl FnOnce(*mut u8),
    ) -> Result<()> {
        let slots = self.sizes.ring_slots;
        if u64::from(base) + len as u64 > u64::from(slots) {
            return Err(DataplaneError::RingOutside { base, len, slots });
        }
        let name = names::RINGS;
        let aya::maps::Map::Array(rings) = self.map(name)? else {
            return Err(DataplaneError::MissingMap { name });
        };
        let os = |e: nix::Error| DataplaneError::Map {
            name,
            source: aya::maps::MapError::IoError(e.into()),
        };
        let page = page_size();
        let start = base as usize * 8;
        let offset = start / page * page;
        let Some(map_len) = std::num::NonZeroUsize::new(start - offset + len * 8) else {
            return Ok(());
        };
        let prot = if writable {
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE
        } else {
            nix::sys::mman::ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's pages [offset, offset + map_len), which
        // the kernel checks against the map's size; nothing else in this process refers to it.
        let at = unsafe {
            nix::sys::mman::mmap(
                None,
                map_len,
                prot,
                nix::sys::mman::MapFlags::MAP_SHARED,
                rings.fd(),
                offset as i64,
            )
        }
        .map_err(os)?;
        // SAFETY: the mapping is `map_len` bytes long and the slots lie at its end.
        unsafe {
            f(at.as_ptr().cast::<u8>().add(start - offset));
            nix::sys::mman::munmap(at, map_len.get()).map_err(os)?;
        }
        Ok(())
    }

    /// Counters per [`Reason`], summed over CPUs.
    pub fn reasons(&mut self) -> Result<Vec<(Reason, Counters)>> {
        self.counters_by(names::REASON_STATS, &Reason::ALL, |r| r as u32)
    }

    /// Counters per [`DecapReason`], summed over CPUs.
    pub fn decap_reasons(&mut self) -> Result<Vec<(DecapReason, Counters)>> {
        self.counters_by(names::DECAP_STATS, &DecapReason::ALL, |r| r as u32)
    }

    /// Each key of `keys` with the counters at its index of the per-CPU array `name`.
    fn counters_by<K: Copy>(
        &mut self,
        name: &'static str,
        keys: &[K],
        index: impl Fn(K) -> u32,
    ) -> Result<Vec<(K, Counters)>> {
        let map = self.per_cpu::<Counters>(name)?;
        keys.iter()
            .map(|&k| {
                let v = map
                    .get(&index(k), 0)
                    .map_err(|source| DataplaneError::Map { name, source })?;
                Ok((k, sum(v.iter())))
            })
            .collect()
    }

    pub fn vip_counters(&mut self, index: u32) -> Result<VipCounters> {
        let name = names::VIP_STATS;
        let v = self
            .per_cpu::<VipCounters>(name)?
            .get(&index, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(v.iter().fold(VipCounters::default(), |a, c| VipCounters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
            dropped: a.dropped + c.dropped,
        }))
    }

    /// Zeroes the counters of listener `index` (it is given to another listener).
    pub fn reset_vip_counters(&mut self, index: u32) -> Result<()> {
        self.reset::<VipCounters>(names::VIP_STATS, index..index + 1)
    }

    /// Zeroes the counters of backend `index` (it is given to another target).
    pub fn reset_backend_counters(&mut self, index: u32) -> Result<()> {
        self.reset::<Counters>(names::BACKEND_STATS, index..index + 1)
    }

    /// Zeroes entries `indices` of per-CPU array `name`, on every CPU.
    fn reset<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        indices: std::ops::Range<u32>,
    ) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map {
            name,
            source: aya::maps::MapError::IoError(e),
        })?;
        let mut map = self.per_cpu::<V>(name)?;
        for index in indices {
            let zeros =
                aya::maps::PerCpuValues::try_from(vec![V::default(); cpus]).map_err(|e| {
                    DataplaneError::Map {
                        name,
                        source: aya::maps::MapError::IoError(e),
                    }
                })?;
            map.set(index, zeros, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        Ok(())
    }

    pub fn backend_counters(&mut self, index: u32) -> Result<Counters> {
        let name = names::BACKEND_STATS;
        let v = self
            .per_cpu::<Counters>(name)?
            .get(&index, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(sum(v.iter()))
    }

    /// The NAT replies' entries: (the reply's flow key, the listener it answers for).
    pub fn nat_replies(&mut self) -> Result<Vec<(FlowKey, NatReply)>> {
        let name = names::NAT_REPLIES;
        let map = self.hash::<FlowKey, NatReply>(name)?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Sets the node's SNAT source addresses and port range.
    pub fn set_snat_config(&mut self, c: &SnatConfig) -> Result<()> {
        let name = names::SNAT_CONFIG;
        self.array::<SnatConfig>(name)?
            .set(0, c, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// The SNAT ports in use: (the reply's flow key, whose flow it is).
    pub fn snat_ports(&mut self) -> Result<Vec<(FlowKey, SnatEntry)>> {
        let name = names::SNAT_PORTS;
        let map = self.hash::<FlowKey, SnatEntry>(name)?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// The SNAT flows: (the client's flow key, its port and target).
    pub fn snat_flows(&mut self) -> Result<Vec<(FlowKey, SnatFlow)>> {
        let name = names::SNAT_FLOWS;
        let map = self.hash::<FlowKey, SnatFlow>(name)?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Removes an SNAT port's entry (absent already: fine).
    pub fn remove_snat_port(&mut self, key: &FlowKey) -> Result<()> {
        let name = names::SNAT_PORTS;
        match self.hash::<FlowKey, SnatEntry>(name)?.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    /// Removes an SNAT flow's entry (absent already: fine).
    pub fn remove_snat_flow(&mut self, key: &FlowKey) -> Result<()> {
        let name = names::SNAT_FLOWS;
        match self.hash::<FlowKey, SnatFlow>(name)?.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    /// The flow table's entries.
    pub fn flows(&mut self) -> Result<Vec<(FlowKey, FlowState)>> {
        let name = names::FLOWS;
        let map = self.hash::<FlowKey, FlowState>(name)?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// The VIP entries, as the datapath holds them (after a restart: what the last agent wrote).
    pub fn vips(&mut self) -> Result<Vec<(VipKey, VipMeta)>> {
        let name = names::VIPS;
        let map = self.hash::<VipKey, VipMeta>(name)?;
        map.iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// The backend slots in use (family set), by index.
    pub fn backends(&mut self) -> Result<Vec<(u32, Backend)>> {
        let name = names::BACKENDS;
        let map = self.array::<Backend>(name)?;
        let mut out = Vec::new();
        for (i, b) in map.iter().enumerate() {
            let b = b.map_err(|source| DataplaneError::Map { name, source })?;
            if b.family != 0 {
                out.push((i as u32, b));
            }
        }
        Ok(out)
    }

    /// Adds an address the decap program removes tunnels for.
    pub fn add_decap_addr(&mut self, addr: &Addr) -> Result<()> {
        let name = names::DECAP_ADDRS;
        self.hash::<Addr, u8>(name)?
            .insert(addr, 1, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }
}

/// The error for a program the kernel did not load: a verifier refusal becomes
/// [`DataplaneError::Refused`], with what the kernel lacks when the log says.
fn refused(program: &'static str, e: aya::programs::ProgramError) -> DataplaneError {
    use aya::programs::ProgramError;
    let ProgramError::LoadError { verifier_log, .. } = &e else {
        return DataplaneError::Program {
            name: program,
            source: Box::new(e),
        };
    };
    let log = verifier_log.to_string();
    DataplaneError::Refused {
        program,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "Linux".to_owned()),
        why: kernel_lacks(&log),
        log,
    }
}

/// BPF helpers the datapath calls: (id, name, first Linux release that has it for XDP).
const HELPERS: &[(u32, &str, &str)] = &[
    (1, "bpf_map_lookup_elem", "4.8"),
    (2, "bpf_map_update_elem", "4.8"),
    (5, "bpf_ktime_get_ns", "4.8"),
    (23, "bpf_redirect", "4.14"),
    (28, "bpf_csum_diff", "4.8"),
    (44, "bpf_xdp_adjust_head", "4.10"),
    (65, "bpf_xdp_adjust_tail", "4.18"),
    (69, "bpf_fib_lookup", "4.18"),
    (160, "bpf_ktime_get_coarse_ns", "5.11"),
];

/// What a verifier log says the kernel lacks, in one line.
fn kernel_lacks(log: &str) -> String {
    // An unknown helper: `unknown func bpf_x#N` (newer kernels) or `invalid func unknown#N`.
    for line in log.lines() {
        let Some(at) = line.find("func ") else {
            continue;
        };
        let rest = &line[at + 5..];
        if !(line.contains("unknown func") || line.contains("invalid func")) {
            continue;
        }
        let id: Option<u32> = rest.rsplit('#').next().and_then(|n| n.trim().parse().ok());
        if let Some(&(_, name, since)) = id.and_then(|id| HELPERS.iter().find(|h| h.0 == id)) {
            return format!(
                "it lacks the BPF helper {name}, which xlb needs (Linux {since} and later have it)"
            );
        }
        return format!("it lacks a BPF helper xlb needs ({})", line.trim());
    }
    if let Some(line) = log.lines().find(|l| l.contains("combined stack size")) {
        return format!(
            "the program needs more stack than its verifier allows ({}); this is a defect of xlb's, please report it",
            line.trim()
        );
    }
    if log.contains("too large") || log.contains("too complex") {
        return "the program is too large or complex for its verifier".to_owned();
    }
    // Otherwise the verifier's last words, which name the instruction it stopped at.
    let last = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty() && !l.starts_with("verification time") && !l.starts_with("processed ")
        })
        .unwrap_or("no reason given");
    format!("its verifier said: {last}")
}

/// The verifier's whole log, when `e` (or an error it wraps) is a refused program.
pub fn verifier_log(e: &anyhow::Error) -> Option<&str> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<DataplaneError>() {
            Some(DataplaneError::Refused { log, .. }) => Some(log.as_str()),
            _ => None,
        })
}

fn sum<'a>(it: impl Iterator<Item = &'a Counters>) -> Counters {
    it.fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

/// Refuses maps pinned under `dir` whose type, key, value or size differ from what the object
/// at `sizes` makes: the kernel would hand the programs a map they were not built for.
fn check_pins(sizes: Sizes, dir: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| DataplaneError::Object { why: e.to_string() })?;
    let set = sizes.entries();
    let shape = |t: u32, k: u32, v: u32, n: u32, flags: u32| {
        let kind = match t {
            BPF_MAP_TYPE_HASH => "hash".to_owned(),
            BPF_MAP_TYPE_ARRAY => "array".to_owned(),
            BPF_MAP_TYPE_PERCPU_ARRAY => "per-CPU array".to_owned(),
            BPF_MAP_TYPE_LRU_HASH => "LRU hash".to_owned(),
            other => format!("type {other}"),
        };
        format!("{n} entries ({kind}, {k}-byte keys, {v}-byte values, flags {flags:#x})")
    };
    for name in names::MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = object.maps.get(*name) else {
            continue;
        };
        let entries = set
            .iter()
            .find(|(n, _)| n == name)
            .map_or(def.max_entries(), |(_, e)| *e);
        let wanted = shape(
            def.map_type(),
            def.key_size(),
            def.value_size(),
            entries,
            def.map_flags(),
        );
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|source| DataplaneError::Map { name, source })?;
        let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
        let pinned = shape(
            kind,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        if pinned != wanted {
            return Err(DataplaneError::PinnedShape {
                path: path.display().to_string(),
                pinned,
                wanted,
            });
        }
    }
    Ok(())
}

/// The interface index a pinned XDP link holds; `None` when the kernel severed it (its
/// interface was deleted). Read from the link's fdinfo, found by its id: aya gives neither.
fn link_ifindex(link: &FdLink) -> std::result::Result<Option<u32>, LinkError> {
    let id = link.info()?.id();
    let field = |info: &str, name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
    };
    let unreadable = |io_error| {
        LinkError::SyscallError(aya::sys::SyscallError {
            call: "read /proc/self/fdinfo",
            io_error,
        })
    };
    for fd in std::fs::read_dir("/proc/self/fdinfo").map_err(unreadable)? {
        let Ok(info) = std::fs::read_to_string(fd.map_err(unreadable)?.path()) else {
            continue;
        };
        if field(&info, "link_id:") == Some(id) {
            return Ok(field(&info, "ifindex:").filter(|i| *i != 0));
        }
    }
    Err(unreadable(std::io::Error::other(format!(
        "no descriptor of link {id}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::kernel_lacks;

    #[test]
    fn a_refusal_names_what_the_kernel_lacks() {
        // Linux 5.10 does not know the helper's number at all.
        let old = "0: (85) call unknown#160\ninvalid func unknown#160\nprocessed 12 insns";
        assert_eq!(
            kernel_lacks(old),
            "it lacks the BPF helper bpf_ktime_get_coarse_ns, which xlb needs (Linux 5.11 and later have it)"
        );
        // A helper the kernel has, but not for XDP programs.
        let other = "15: (85) call bpf_skb_load_bytes#26\nunknown func bpf_skb_load_bytes#26\n";
        assert_eq!(
            kernel_lacks(other),
            "it lacks a BPF helper xlb needs (unknown func bpf_skb_load_bytes#26)"
        );
        // Linux 6.1 on the balancer of 32cb35d.
        let stack = "combined stack size of 3 calls is 544. Too large\nverification time 4043 usec\n\
                     stack depth 288+120+0+28+216\nprocessed 7717 insns";
        assert!(kernel_lacks(stack).contains(
            "more stack than its verifier allows (combined stack size of 3 calls is 544. Too large)"
        ));
        // Anything else: the verifier's last words, not its statistics.
        let other = "27: (61) r1 = *(u32 *)(r2 +0)\ninvalid access to packet, off=0 size=4\nprocessed 30 insns (limit 1000000)";
        assert_eq!(
            kernel_lacks(other),
            "its verifier said: invalid access to packet, off=0 size=4"
        );
    }
}
