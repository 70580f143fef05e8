//! A counting eBPF interpreter: runs an XDP program of a real object (`xlb_lb`, `xlb_pass`) on one
//! frame outside the kernel, and counts the instructions it executes.
//!
//! This host has no hardware PMU, so "instructions per packet" cannot come from `perf`; it comes
//! from executing the program's bytecode here. `tests/tests/ebpf_count.rs` runs the bench's cases
//! through this and through `BPF_PROG_TEST_RUN` and checks that verdict, frame, flows and reason
//! counters agree, so the count is of what the kernel runs.
//!
//! Written here rather than taken from a crate: rbpf (0.4) interprets eBPF and takes helpers,
//! but its helpers are plain `fn`s without the machine's state (the maps, the packet that
//! `bpf_xdp_adjust_head` grows) and it counts nothing. aya-obj, already used by [`crate::stack`],
//! parses the object and links its calls and map references as aya does before loading; what is
//! left is the instruction set, four map types and the helpers `xlb_lb` calls.
//!
//! What is counted: the object's bytecode as the compiler emitted it, each instruction executed
//! once. A helper call is one instruction (the helper's own work is not counted); a 16-byte
//! `lddw` is one. The kernel rewrites a few before running them (context loads, array lookups
//! inlined), so what its JIT runs differs by a few instructions. Stack accesses are the loads and
//! stores whose address is on the stack, through r10 or a pointer made from it (the helpers'
//! reads of keys are not among them).
//!
//! Memory: each region (the context, the packet, a stack frame, a map value) is a 4 GiB window
//! of a 64-bit address, its number in the high 32 bits; every access is bounds-checked (the
//! verifier's job in the kernel: a failed check here is a bug in the program or in this file).
//!
//! Maps are in memory, as one CPU sees them (hash, LRU hash, array, per-CPU array). Their
//! contents are copied from a loaded [`Dataplane`] ([`Machine::copy_maps`]), so the counter runs
//! on exactly the maps a fixture set up. The FIB is a table of answers ([`Route`]).

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya_obj::{Object, generated::bpf_insn};
use xlb::dataplane::Dataplane;

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub action: u32,
    /// The frame as the program left it (from `data` to `data_end`).
    pub frame: Vec<u8>,
    /// Instructions executed.
    pub insns: u64,
    /// Of those, loads and stores to the stack.
    pub stack: u64,
}

/// One answer of the emulated FIB: a lookup for `dst` from interface `ingress` succeeds with
/// these. Lookups it holds no answer for fail with `-ENODEV`, as the kernel's do for a packet
/// without an ingress interface.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub ingress: u32,
    pub dst: IpAddr,
    /// The egress interface.
    pub ifindex: u32,
    /// The egress interface's MAC and the next hop's.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// An object's programs and maps, ready to run frames.
pub struct Machine {
    programs: HashMap<String, Vec<bpf_insn>>,
    maps: Vec<Map>,
    /// Map values; a lookup hands out a pointer into one of these.
    values: Vec<Vec<u8>>,
    pub routes: Vec<Route>,
    /// Ticks for the LRU maps' eviction order.
    tick: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hash,
    LruHash,
    Array,
    PerCpuArray,
}

struct Map {
    name: String,
    kind: Kind,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    /// Key bytes (an array's index as a native-endian u32) → index into `Machine::values`, and
    /// when it was last used.
    entries: HashMap<Vec<u8>, (usize, u64)>,
}

// Map types, as `enum bpf_map_type` numbers them.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

// Regions: the high 32 bits of an address.
const CTX: u64 = 1;
const PACKET: u64 = 2;
const STACK: u64 = 16;
/// A map as `lddw` loads it: a handle, not memory.
const MAP_HANDLE: u64 = 0x1000;
const VALUE: u64 = 0x10000;

const STACK_SIZE: usize = 512;
const MAX_CALL_DEPTH: usize = 8;
/// The kernel's test run gives the frame 256 bytes of headroom in a 4 KiB buffer, the last
/// 320 of which (`struct skb_shared_info`) it cannot grow into.
const HEADROOM: usize = 256;
const BUFFER: usize = 4096;
const TAILROOM: usize = 320;
/// `struct xdp_frame` sits at the start of the headroom: the head cannot move into it.
const XDP_FRAME_SIZE: usize = 40;
const ETH_HLEN: usize = 14;
/// A run longer than this loops: the verifier would have refused the program.
const INSN_LIMIT: u64 = 1_000_000;

// What helpers return (negated errno values, verdicts).
const EINVAL: i64 = 22;
const ENOENT: i64 = 2;
const EEXIST: i64 = 17;
const E2BIG: i64 = 7;
const ENODEV: i64 = 19;
const EAFNOSUPPORT: i64 = 97;
const XDP_REDIRECT: u64 = 4;
const XDP_ABORTED: u64 = 0;

const fn addr(region: u64, offset: u64) -> u64 {
    region << 32 | offset
}

impl Machine {
    /// Parses `object` and links its programs; every map starts empty.
    pub fn new(object: &[u8]) -> Result<Machine> {
        let mut obj = Object::parse(object).context("parse the eBPF object")?;
        let mut names: Vec<String> = obj.maps.keys().cloned().collect();
        names.sort();
        let mut maps = Vec::new();
        let mut values = Vec::new();
        for name in &names {
            let m = &obj.maps[name];
            let kind = match m.map_type() {
                BPF_MAP_TYPE_HASH => Kind::Hash,
                BPF_MAP_TYPE_LRU_HASH => Kind::LruHash,
                BPF_MAP_TYPE_ARRAY => Kind::Array,
                BPF_MAP_TYPE_PERCPU_ARRAY => Kind::PerCpuArray,
                other => bail!("map {name}: type {other} is not emulated"),
            };
            let mut map = Map {
                name: name.clone(),
                kind,
                key_size: m.key_size() as usize,
                value_size: m.value_size() as usize,
                max_entries: m.max_entries(),
                entries: HashMap::new(),
            };
            // Global data (`.rodata`, `.data`, `.bss`): a one-entry array holding the section.
            if !m.data().is_empty() {
                map.entries
                    .insert(0u32.to_ne_bytes().to_vec(), (values.len(), 0));
                values.push(m.data().to_vec());
            }
            maps.push(map);
        }
        let text = obj.functions.keys().map(|(s, _)| *s).collect();
        // The "file descriptor" of a map is its position here, plus one.
        let defs: Vec<(String, aya_obj::Map)> = names
            .iter()
            .map(|n| (n.clone(), obj.maps[n].clone()))
            .collect();
        obj.relocate_maps(
            defs.iter()
                .enumerate()
                .map(|(i, (n, m))| (n.as_str(), i as RawFd + 1, m)),
            &text,
        )
        .context("relocate the map references")?;
        obj.relocate_calls(&text).context("link the calls")?;
        let programs = obj
            .programs
            .iter()
            .map(|(name, p)| {
                let f = &obj.functions[&p.function_key()];
                (name.clone(), f.instructions.clone())
            })
            .collect();
        Ok(Machine {
            programs,
            maps,
            values,
            routes: Vec::new(),
            tick: 0,
        })
    }

    /// Replaces every map's contents (and size) with those of `dp`'s map of the same name; of a
    /// per-CPU map, CPU 0's values.
    pub fn copy_maps(&mut self, dp: &Dataplane) -> Result<()> {
        for (name, _) in dp.maps() {
            self.copy_map(dp, name)?;
        }
        Ok(())
    }

    /// [`Machine::copy_maps`] for map `name` alone.
    pub fn copy_map(&mut self, dp: &Dataplane, name: &str) -> Result<()> {
        use aya::maps::Map as M;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let map = dp
            .maps()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no map {name} in the dataplane"))?
            .1;
        let (M::Array(data) | M::HashMap(data) | M::LruHashMap(data) | M::PerCpuArray(data)) = map
        else {
            bail!("map {name}: a type the counter does not emulate");
        };
        let i = self
            .maps
            .iter()
            .position(|m| m.name == name)
            .with_context(|| format!("map {name} is not in the object"))?;
        let info = data.info()?;
        let fd = data.fd().as_fd().as_raw_fd();
        let m = &mut self.maps[i];
        ensure!(
            info.key_size() as usize == m.key_size && info.value_size() as usize == m.value_size,
            "map {name}: the kernel's has other key or value sizes"
        );
        m.max_entries = info.max_entries();
        // The replaced values stay allocated (a pointer may still name one): copy large maps once.
        m.entries.clear();
        // A per-CPU value comes as one 8-byte-aligned slot per possible CPU.
        let value_len = match m.kind {
            Kind::PerCpuArray => m.value_size.div_ceil(8) * 8 * cpus,
            _ => m.value_size,
        };
        let mut value = vec![0u8; value_len];
        let mut put = |m: &mut Map, key: Vec<u8>, value: &[u8]| {
            m.entries.insert(key, (self.values.len(), 0));
            self.values.push(value[..m.value_size].to_vec());
        };
        match m.kind {
            Kind::Array | Kind::PerCpuArray => {
                for index in 0..m.max_entries {
                    let key = index.to_ne_bytes();
                    sys::lookup(fd, &key, &mut value)
                        .with_context(|| format!("map {name}: read index {index}"))?;
                    // Absent entries of an emulated array read as zeros: keep only the others.
                    if value[..m.value_size].iter().any(|b| *b != 0) {
                        put(m, key.to_vec(), &value);
                    }
                }
            }
            Kind::Hash | Kind::LruHash => {
                let mut key: Option<Vec<u8>> = None;
                let mut next = vec![0u8; m.key_size];
                while sys::next_key(fd, key.as_deref(), &mut next)
                    .with_context(|| format!("map {name}: next key"))?
                {
                    // An entry that went away between the two calls is skipped.
                    if sys::lookup(fd, &next, &mut value).is_ok() {
                        put(m, next.clone(), &value);
                    }
                    key = Some(next.clone());
                }
            }
        }
        Ok(())
    }

    /// Runs program `name` on `frame` as `BPF_PROG_TEST_RUN` does, as if it came in on
    /// `ingress_ifindex`. The maps keep what it changed.
    pub fn run(&mut self, name: &str, frame: &[u8], ingress_ifindex: u32) -> Result<Run> {
        let insns = self
            .programs
            .get(name)
            .with_context(|| format!("no program {name} in the object"))?
            .clone();
        ensure!(
            frame.len() <= BUFFER - HEADROOM - TAILROOM,
            "a frame of {} bytes",
            frame.len()
        );
        let mut packet = vec![0u8; BUFFER];
        packet[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut cpu = Cpu {
            m: self,
            insns: &insns,
            regs: [0; 11],
            frames: Vec::new(),
            stacks: vec![vec![0u8; STACK_SIZE]; MAX_CALL_DEPTH],
            packet,
            data: HEADROOM,
            data_end: HEADROOM + frame.len(),
            ingress_ifindex,
            count: 0,
            stack: 0,
        };
        cpu.regs[1] = addr(CTX, 0);
        cpu.regs[10] = addr(STACK, STACK_SIZE as u64);
        let r0 = cpu.exec().with_context(|| format!("running {name}"))?;
        Ok(Run {
            action: r0 as u32,
            frame: cpu.packet[cpu.data..cpu.data_end].to_vec(),
            insns: cpu.count,
            stack: cpu.stack,
        })
    }

    /// The entries of map `name`, as (key, value) bytes, sorted by key.
    pub fn entries(&self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let m = self
            .maps
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no map {name}"))?;
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = m
            .entries
            .iter()
            .map(|(k, (v, _))| (k.clone(), self.values[*v].clone()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The value at `key` of map number `map`, for a lookup (`None`: no such entry).
    fn lookup(&mut self, map: usize, key: &[u8]) -> Option<usize> {
        self.tick += 1;
        let tick = self.tick;
        let m = &mut self.maps[map];
        if let Some((v, used)) = m.entries.get_mut(key) {
            *used = tick;
            return Some(*v);
        }
        match m.kind {
            Kind::Array | Kind::PerCpuArray => {
                let index = u32::from_ne_bytes(key.try_into().ok()?);
                if index >= m.max_entries {
                    return None;
                }
                let v = self.values.len();
                self.values.push(vec![0; m.value_size]);
                m.entries.insert(key.to_vec(), (v, tick));
                Some(v)
            }
            Kind::Hash | Kind::LruHash => None,
        }
    }

    /// `bpf_map_update_elem`: 0 or a negative error number.
    fn update(&mut self, map: usize, key: &[u8], value: &[u8], flags: u64) -> i64 {
        const BPF_NOEXIST: u64 = 1;
        const BPF_EXIST: u64 = 2;
        self.tick += 1;
        let tick = self.tick;
        let m = &mut self.maps[map];
        let exists = m.entries.contains_key(key);
        if matches!(m.kind, Kind::Array | Kind::PerCpuArray) {
            let index = u32::from_ne_bytes(key.try_into().unwrap_or([0xff; 4]));
            if index >= m.max_entries {
                return -E2BIG;
            }
            if flags == BPF_NOEXIST {
                return -EEXIST;
            }
        } else if flags == BPF_NOEXIST && exists {
            return -EEXIST;
        } else if flags == BPF_EXIST && !exists {
            return -ENOENT;
        }
        if let Some((v, used)) = m.entries.get_mut(key) {
            *used = tick;
            self.values[*v].copy_from_slice(value);
            return 0;
        }
        if m.entries.len() >= m.max_entries as usize {
            if m.kind != Kind::LruHash {
                return -E2BIG;
            }
            let oldest = m
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                m.entries.remove(&k);
            }
        }
        m.entries.insert(key.to_vec(), (self.values.len(), tick));
        self.values.push(value.to_vec());
        0
    }

    fn delete(&mut self, map: usize, key: &[u8]) -> i64 {
        let m = &mut self.maps[map];
        match m.kind {
            Kind::Array | Kind::PerCpuArray => -EINVAL,
            Kind::Hash | Kind::LruHash => match m.entries.remove(key) {
                Some(_) => 0,
                None => -ENOENT,
            },
        }
    }
}

/// A call frame to return to.
struct Frame {
    ret: usize,
    /// r6 to r9 and r10 of the caller.
    saved: [u64; 5],
}

/// The state of one run.
struct Cpu<'a> {
    m: &'a mut Machine,
    insns: &'a [bpf_insn],
    regs: [u64; 11],
    frames: Vec<Frame>,
    stacks: Vec<Vec<u8>>,
    packet: Vec<u8>,
    /// Offsets of `data` and `data_end` in `packet` (`data_meta` is always `data`).
    data: usize,
    data_end: usize,
    ingress_ifindex: u32,
    count: u64,
    stack: u64,
}

// Instruction classes, sizes, modes and operations (`include/uapi/linux/bpf.h`).
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU64: u8 = 0x07;
const BPF_X: u8 = 0x08;
const BPF_MEM: u8 = 0x60;
const BPF_MEMSX: u8 = 0x80;
const BPF_ATOMIC: u8 = 0xc0;
const BPF_IMM: u8 = 0x00;
const BPF_FETCH: i32 = 0x01;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_MAP_VALUE: u8 = 2;
const BPF_PSEUDO_CALL: u8 = 1;

/// Whether address `a` is in a stack frame.
fn on_stack(a: u64) -> bool {
    (STACK..STACK + MAX_CALL_DEPTH as u64).contains(&(a >> 32))
}

fn size_of_mode(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

fn sign_extend(v: u64, bytes: usize) -> u64 {
    let shift = 64 - 8 * bytes as u32;
    ((v << shift) as i64 >> shift) as u64
}

impl Cpu<'_> {
    fn exec(&mut self) -> Result<u64> {
        let mut pc = 0usize;
        loop {
            let ins = *self
                .insns
                .get(pc)
                .with_context(|| format!("jumped to {pc}, outside the program"))?;
            self.count += 1;
            ensure!(self.count <= INSN_LIMIT, "over {INSN_LIMIT} instructions");
            let at = pc;
            pc += 1;
            let (code, dst, src) = (ins.code, ins.dst_reg() as usize, ins.src_reg() as usize);
            ensure!(dst <= 10 && src <= 10, "insn {at}: register out of range");
            let imm = ins.imm as i64 as u64;
            match code & 0x07 {
                BPF_ALU | BPF_ALU64 => {
                    ensure!(dst != 10, "insn {at}: writes r10");
                    self.regs[dst] = alu(code, self.regs[dst], self.regs[src], imm, ins.off)
                        .with_context(|| format!("insn {at}: code {code:#04x}"))?;
                }
                BPF_LDX => {
                    ensure!(dst != 10, "insn {at}: writes r10");
                    let size = size_of_mode(code);
                    let a = self.regs[src].wrapping_add(ins.off as i64 as u64);
                    let v = self.load(a, size).with_context(|| format!("insn {at}"))?;
                    self.regs[dst] = match code & 0xe0 {
                        BPF_MEM => v,
                        BPF_MEMSX => sign_extend(v, size),
                        _ => bail!("insn {at}: load mode {code:#04x}"),
                    };
                    self.stack += u64::from(on_stack(a));
                }
                class @ (BPF_ST | BPF_STX) => {
                    let size = size_of_mode(code);
                    let a = self.regs[dst].wrapping_add(ins.off as i64 as u64);
                    let v = if class == BPF_ST { imm } else { self.regs[src] };
                    match code & 0xe0 {
                        BPF_MEM => self.store(a, size, v),
                        BPF_ATOMIC if class == BPF_STX => self.atomic(a, size, src, ins.imm),
                        _ => bail!("insn {at}: store mode {code:#04x}"),
                    }
                    .with_context(|| format!("insn {at}"))?;
                    self.stack += u64::from(on_stack(a));
                }
                BPF_LD => {
                    ensure!(
                        code == BPF_LD | BPF_IMM | 0x18,
                        "insn {at}: load {code:#04x}"
                    );
                    let next = self
                        .insns
                        .get(pc)
                        .with_context(|| format!("insn {at}: lddw cut short"))?;
                    pc += 1;
                    // A map's "file descriptor" is its number plus one (see `Machine::new`).
                    let map = (ins.imm as u64).wrapping_sub(1);
                    self.regs[dst] = match src as u8 {
                        0 => (ins.imm as u32 as u64) | (next.imm as u32 as u64) << 32,
                        BPF_PSEUDO_MAP_FD => addr(MAP_HANDLE + map, 0),
                        BPF_PSEUDO_MAP_VALUE => {
                            ensure!((map as usize) < self.m.maps.len(), "insn {at}: no map");
                            let v = self
                                .m
                                .lookup(map as usize, &0u32.to_ne_bytes())
                                .with_context(|| format!("insn {at}: global data"))?;
                            addr(VALUE + v as u64, next.imm as u32 as u64)
                        }
                        other => bail!("insn {at}: lddw of kind {other}"),
                    };
                }
                class @ (BPF_JMP | BPF_JMP32) => {
                    let op = code & 0xf0;
                    match op {
                        0x00 => {
                            // `ja`; in the 32-bit class the offset is the immediate (`gotol`).
                            let off = if class == BPF_JMP {
                                ins.off as i64
                            } else {
                                ins.imm as i64
                            };
                            pc = (pc as i64 + off) as usize;
                        }
                        0x80 if class == BPF_JMP => {
                            if src as u8 == BPF_PSEUDO_CALL {
                                ensure!(
                                    self.frames.len() + 1 < MAX_CALL_DEPTH,
                                    "insn {at}: calls nested too deep"
                                );
                                let r = &self.regs;
                                self.frames.push(Frame {
                                    ret: pc,
                                    saved: [r[6], r[7], r[8], r[9], r[10]],
                                });
                                let depth = self.frames.len() as u64;
                                self.regs[10] = addr(STACK + depth, STACK_SIZE as u64);
                                self.stacks[depth as usize].fill(0);
                                pc = (pc as i64 + ins.imm as i64) as usize;
                            } else {
                                self.regs[0] = self
                                    .helper(ins.imm)
                                    .with_context(|| format!("insn {at}: helper {}", ins.imm))?;
                            }
                        }
                        0x90 if class == BPF_JMP => match self.frames.pop() {
                            None => return Ok(self.regs[0]),
                            Some(f) => {
                                self.regs[6..=10].copy_from_slice(&f.saved);
                                pc = f.ret;
                            }
                        },
                        _ => {
                            let b = if code & BPF_X != 0 {
                                self.regs[src]
                            } else {
                                imm
                            };
                            let taken = condition(op, self.regs[dst], b, class == BPF_JMP32)
                                .with_context(|| format!("insn {at}: jump {code:#04x}"))?;
                            if taken {
                                pc = (pc as i64 + ins.off as i64) as usize;
                            }
                        }
                    }
                }
                _ => unreachable!("three bits"),
            }
        }
    }

    /// The bytes at `a`, `len` long, in whichever region holds them.
    fn mem(&mut self, a: u64, len: usize) -> Result<&mut [u8]> {
        let (region, off) = (a >> 32, (a & 0xffff_ffff) as usize);
        let bytes: &mut [u8] = match region {
            PACKET => &mut self.packet[..],
            r if on_stack(a) => &mut self.stacks[(r - STACK) as usize][..],
            r if r >= VALUE && ((r - VALUE) as usize) < self.m.values.len() => {
                &mut self.m.values[(r - VALUE) as usize][..]
            }
            _ => bail!("access of {len} bytes at {a:#x}: no memory there"),
        };
        let in_packet = region != PACKET || (off >= self.data && off + len <= self.data_end);
        ensure!(
            off + len <= bytes.len() && in_packet,
            "access of {len} bytes at {a:#x}: out of bounds"
        );
        Ok(&mut bytes[off..off + len])
    }

    fn load(&mut self, a: u64, len: usize) -> Result<u64> {
        if a >> 32 == CTX {
            // `struct xdp_md`: the kernel turns these 32-bit loads into pointer loads.
            return Ok(match (a & 0xffff_ffff, len) {
                (0 | 8, 4) => addr(PACKET, self.data as u64),
                (4, 4) => addr(PACKET, self.data_end as u64),
                (12, 4) => self.ingress_ifindex.into(),
                (16 | 20, 4) => 0,
                (off, _) => bail!("context load of {len} bytes at {off}"),
            });
        }
        let b = self.mem(a, len)?;
        let mut w = [0u8; 8];
        w[..len].copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    fn store(&mut self, a: u64, len: usize, v: u64) -> Result<()> {
        self.mem(a, len)?.copy_from_slice(&v.to_le_bytes()[..len]);
        Ok(())
    }

    fn read(&mut self, a: u64, len: usize) -> Result<Vec<u8>> {
        Ok(self.mem(a, len)?.to_vec())
    }

    fn atomic(&mut self, a: u64, size: usize, src: usize, op: i32) -> Result<()> {
        ensure!(size == 4 || size == 8, "atomic of {size} bytes");
        let old = self.load(a, size)?;
        let v = self.regs[src];
        let new = match op & !BPF_FETCH {
            0x00 => old.wrapping_add(v),
            0x40 => old | v,
            0x50 => old & v,
            0xa0 => old ^ v,
            0xe0 => v,
            0xf0 => {
                // cmpxchg: compares with r0, and r0 gets the old value.
                let expected = self.regs[0];
                let hit = if size == 4 {
                    old as u32 == expected as u32
                } else {
                    old == expected
                };
                self.regs[0] = old;
                if hit {
                    self.store(a, size, v)?;
                }
                return Ok(());
            }
            other => bail!("atomic operation {other:#x}"),
        };
        self.store(a, size, new)?;
        if op & BPF_FETCH != 0 {
            self.regs[src] = old;
        }
        Ok(())
    }

    /// The map a helper argument names (its number in `Machine::maps`).
    fn map_arg(&self, r: u64) -> Result<usize> {
        let region = r >> 32;
        ensure!(
            r & 0xffff_ffff == 0
                && region >= MAP_HANDLE
                && ((region - MAP_HANDLE) as usize) < self.m.maps.len(),
            "{r:#x} is not a map"
        );
        Ok((region - MAP_HANDLE) as usize)
    }

    /// Runs helper `id` on r1 to r5; returns r0.
    fn helper(&mut self, id: i32) -> Result<u64> {
        let [_, r1, r2, r3, r4, r5, ..] = self.regs;
        Ok(match id {
            // bpf_map_lookup_elem
            1 => {
                let map = self.map_arg(r1)?;
                let key = self.read(r2, self.m.maps[map].key_size)?;
                self.m
                    .lookup(map, &key)
                    .map_or(0, |v| addr(VALUE + v as u64, 0))
            }
            // bpf_map_update_elem
            2 => {
                let map = self.map_arg(r1)?;
                let key = self.read(r2, self.m.maps[map].key_size)?;
                let value = self.read(r3, self.m.maps[map].value_size)?;
                self.m.update(map, &key, &value, r4) as u64
            }
            // bpf_map_delete_elem
            3 => {
                let map = self.map_arg(r1)?;
                let key = self.read(r2, self.m.maps[map].key_size)?;
                self.m.delete(map, &key) as u64
            }
            // bpf_ktime_get_ns, bpf_ktime_get_coarse_ns: the kernel's monotonic clock.
            5 | 160 => {
                let mut t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: fills the timespec it is given.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
                t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
            }
            // bpf_get_smp_processor_id: one CPU.
            8 => 0,
            // bpf_redirect
            23 => {
                if r2 != 0 {
                    XDP_ABORTED
                } else {
                    XDP_REDIRECT
                }
            }
            // bpf_csum_diff: the one's complement sum of `to` and of the complement of `from`,
            // folded to 32 bits (what the checksum of either comes to is the same).
            28 => {
                if (r2 | r4) % 4 != 0 {
                    return Ok(-EINVAL as u64);
                }
                let from = if r2 == 0 {
                    Vec::new()
                } else {
                    self.read(r1, r2 as usize)?
                };
                let to = if r4 == 0 {
                    Vec::new()
                } else {
                    self.read(r3, r4 as usize)?
                };
                let words = |b: &[u8], invert: bool| -> u64 {
                    b.chunks_exact(4)
                        .map(|w| {
                            let w = u32::from_ne_bytes(w.try_into().expect("4 bytes"));
                            u64::from(if invert { !w } else { w })
                        })
                        .sum()
                };
                let mut sum = words(&from, true) + words(&to, false) + (r5 & 0xffff_ffff);
                while sum >> 32 != 0 {
                    sum = (sum & 0xffff_ffff) + (sum >> 32);
                }
                sum
            }
            // bpf_xdp_adjust_head
            44 => {
                let data = self.data as i64 + r2 as i32 as i64;
                if data < XDP_FRAME_SIZE as i64 || data > self.data_end as i64 - ETH_HLEN as i64 {
                    return Ok(-EINVAL as u64);
                }
                self.data = data as usize;
                0
            }
            // bpf_xdp_adjust_tail
            65 => {
                let end = self.data_end as i64 + r2 as i32 as i64;
                if end < (self.data + ETH_HLEN) as i64 || end > (BUFFER - TAILROOM) as i64 {
                    return Ok(-EINVAL as u64);
                }
                let end = end as usize;
                if end > self.data_end {
                    // Grown bytes read as zeros.
                    self.packet[self.data_end..end].fill(0);
                }
                self.data_end = end;
                0
            }
            // bpf_fib_lookup
            69 => self.fib_lookup(r2, r3)?,
            other => bail!("helper {other} is not emulated"),
        })
    }

    /// `bpf_fib_lookup` on `struct bpf_fib_lookup` at `params`, answered from the routes.
    fn fib_lookup(&mut self, params: u64, len: u64) -> Result<u64> {
        const AF_INET: u8 = 2;
        const AF_INET6: u8 = 10;
        if len != 64 {
            return Ok(-EINVAL as u64);
        }
        let p = self.read(params, 64)?;
        let ingress = u32::from_ne_bytes(p[8..12].try_into()?);
        let dst: IpAddr = match p[0] {
            AF_INET => <[u8; 4]>::try_from(&p[32..36])?.into(),
            AF_INET6 => <[u8; 16]>::try_from(&p[32..48])?.into(),
            _ => return Ok(-EAFNOSUPPORT as u64),
        };
        let Some(r) = self
            .m
            .routes
            .iter()
            .find(|r| r.ingress == ingress && r.dst == dst)
            .copied()
        else {
            return Ok(-ENODEV as u64);
        };
        let out = self.mem(params, 64)?;
        out[8..12].copy_from_slice(&r.ifindex.to_ne_bytes());
        // The VLAN fields are cleared, as the kernel does.
        out[48..52].fill(0);
        out[52..58].copy_from_slice(&r.smac);
        out[58..64].copy_from_slice(&r.dmac);
        Ok(0) // BPF_FIB_LKUP_RET_SUCCESS
    }
}

/// An ALU instruction's result for `dst` (`src`: the register operand, `imm`: sign-extended).
fn alu(code: u8, dst: u64, src: u64, imm: u64, off: i16) -> Result<u64> {
    let wide = code & 0x07 == BPF_ALU64;
    let op = code & 0xf0;
    let x = code & BPF_X != 0;
    let s = if x { src } else { imm };
    if op == 0xd0 {
        // Byte swaps: `imm` bits; in the 32-bit class `BPF_X` means "to big endian".
        let bits = imm as u32;
        let v = match bits {
            16 => dst & 0xffff,
            32 => dst & 0xffff_ffff,
            64 => dst,
            _ => bail!("byte swap of {bits} bits"),
        };
        return Ok(if wide || x {
            v.swap_bytes() >> (64 - bits)
        } else {
            v
        });
    }
    if wide {
        let signed = off == 1;
        Ok(match op {
            0x00 => dst.wrapping_add(s),
            0x10 => dst.wrapping_sub(s),
            0x20 => dst.wrapping_mul(s),
            0x30 if s == 0 => 0,
            0x30 if signed => (dst as i64).wrapping_div(s as i64) as u64,
            0x30 => dst / s,
            0x40 => dst | s,
            0x50 => dst & s,
            0x60 => dst << (s & 63),
            0x70 => dst >> (s & 63),
            0x80 => dst.wrapping_neg(),
            0x90 if s == 0 => dst,
            0x90 if signed => (dst as i64).wrapping_rem(s as i64) as u64,
            0x90 => dst % s,
            0xa0 => dst ^ s,
            0xb0 if x && off != 0 => sign_extend(s, off as usize / 8),
            0xb0 => s,
            0xc0 => ((dst as i64) >> (s & 63)) as u64,
            _ => bail!("ALU64 operation {op:#x}"),
        })
    } else {
        let (d, s) = (dst as u32, s as u32);
        let signed = off == 1;
        Ok(u64::from(match op {
            0x00 => d.wrapping_add(s),
            0x10 => d.wrapping_sub(s),
            0x20 => d.wrapping_mul(s),
            0x30 if s == 0 => 0,
            0x30 if signed => (d as i32).wrapping_div(s as i32) as u32,
            0x30 => d / s,
            0x40 => d | s,
            0x50 => d & s,
            0x60 => d << (s & 31),
            0x70 => d >> (s & 31),
            0x80 => d.wrapping_neg(),
            0x90 if s == 0 => d,
            0x90 if signed => (d as i32).wrapping_rem(s as i32) as u32,
            0x90 => d % s,
            0xa0 => d ^ s,
            0xb0 if x && off != 0 => sign_extend(u64::from(s), off as usize / 8) as u32,
            0xb0 => s,
            0xc0 => ((d as i32) >> (s & 31)) as u32,
            _ => bail!("ALU operation {op:#x}"),
        }))
    }
}

/// Whether a conditional jump `op` is taken (`narrow`: the 32-bit class).
fn condition(op: u8, a: u64, b: u64, narrow: bool) -> Result<bool> {
    let (a, b, sa, sb) = if narrow {
        let (a, b) = (a as u32, b as u32);
        (a as u64, b as u64, a as i32 as i64, b as i32 as i64)
    } else {
        (a, b, a as i64, b as i64)
    };
    Ok(match op {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => sa > sb,
        0x70 => sa >= sb,
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => sa < sb,
        0xd0 => sa <= sb,
        _ => bail!("jump operation {op:#x}"),
    })
}

/// The two `bpf()` commands that read a map's contents: aya's maps are typed, and these are
/// read as bytes.
mod sys {
    use std::{io, os::fd::RawFd};

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

    /// `union bpf_attr` for the element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn bpf(cmd: libc::c_long, attr: &mut ElemAttr) -> io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed, and its pointers point
        // to buffers of the map's key and value sizes (the callers' contract).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut ElemAttr,
                size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The value at `key` (the map's key size) into `value` (its value size, per CPU).
    pub fn lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<()> {
        bpf(
            BPF_MAP_LOOKUP_ELEM,
            &mut ElemAttr {
                map_fd: fd as u32,
                _pad: 0,
                key: key.as_ptr() as u64,
                value: value.as_mut_ptr() as u64,
                flags: 0,
            },
        )
    }

    /// The key after `key` (the first with `None`) into `next`; false after the last.
    pub fn next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
        let r = bpf(
            BPF_MAP_GET_NEXT_KEY,
            &mut ElemAttr {
                map_fd: fd as u32,
                _pad: 0,
                key: key.map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                flags: 0,
            },
        );
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
