//! The verifier's stack limit, computed from the eBPF object as the oldest kernels compute it.
//!
//! The kernel gives every program 512 bytes of stack for the deepest chain of BPF-to-BPF calls.
//! `check_max_stack_depth` rounds each function's frame up to 32 bytes (newer kernels round to
//! 16 when the program is JIT-compiled) and adds the frames along every call chain. A change can
//! pass on the development kernel and fail on Debian 12's (6.1) at load time, so the fixtures
//! check the sum here, where it cannot depend on the kernel: from the object's instructions, with
//! each frame as deep as the deepest stack slot its code addresses.
//!
//! aya-obj parses the object and links each program's calls, as aya does before loading it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{Context as _, Result, bail};
use aya_obj::{Object, generated::bpf_insn};

/// Stack the kernel allows a program, all frames of a call chain together.
pub const KERNEL_LIMIT: u32 = 512;

/// One function of a linked program, as the verifier splits it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub name: String,
    /// Deepest stack byte the function's code addresses.
    pub depth: u32,
}

/// The deepest call chain of one program.
#[derive(Clone, Debug)]
pub struct Chain {
    pub program: String,
    /// From the entry point down.
    pub frames: Vec<Frame>,
    /// The frames rounded up to 32 bytes each and added, as 5.10 to 6.1 do.
    pub total: u32,
    /// Every function the program calls, on any path.
    pub callees: Vec<String>,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} bytes (", self.program, self.total)?;
        for (i, fr) in self.frames.iter().enumerate() {
            let sep = if i == 0 { "" } else { " -> " };
            write!(f, "{sep}{} {}", short(&fr.name), fr.depth)?;
        }
        write!(f, ")")
    }
}

/// The deepest call chain of every program in `object`, by program name.
pub fn chains(object: &[u8]) -> Result<Vec<Chain>> {
    let mut obj = Object::parse(object).context("parse the eBPF object")?;
    // The unlinked functions, to name the pieces of each linked program.
    let functions: Vec<(String, Vec<bpf_insn>)> = obj
        .functions
        .values()
        .map(|f| (f.name.clone(), f.instructions.clone()))
        .collect();
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_calls(&text).context("link the calls")?;
    let mut out = Vec::new();
    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    for name in names {
        let program = &obj.programs[name];
        let linked = &obj.functions[&program.function_key()].instructions;
        out.push(chain(name, linked, &functions)?);
    }
    Ok(out)
}

fn chain(
    program: &str,
    insns: &[bpf_insn],
    functions: &[(String, Vec<bpf_insn>)],
) -> Result<Chain> {
    // Subprograms start at 0 and at every target of a BPF-to-BPF call, as the kernel splits them.
    let mut starts = BTreeSet::from([0usize]);
    for (i, ins) in insns.iter().enumerate() {
        if is_pseudo_call(ins) {
            let target = i as i64 + ins.imm as i64 + 1;
            if target < 0 || target as usize >= insns.len() {
                bail!("{program}: call at {i} leaves the program");
            }
            starts.insert(target as usize);
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let mut subs: BTreeMap<usize, (Frame, Vec<usize>)> = BTreeMap::new();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(insns.len());
        let body = &insns[s..end];
        let callees = body
            .iter()
            .enumerate()
            .filter(|(_, ins)| is_pseudo_call(ins))
            .map(|(i, ins)| (s + i) as i64 + ins.imm as i64 + 1)
            .map(|t| t as usize)
            .collect();
        let name = if s == 0 {
            program.to_owned()
        } else {
            name_of(body, functions).unwrap_or_else(|| format!("subprog at {s}"))
        };
        let depth = depth(body);
        subs.insert(s, (Frame { name, depth }, callees));
    }
    let (total, path) = deepest(0, &subs, &mut Vec::new())?;
    Ok(Chain {
        program: program.to_owned(),
        frames: path.iter().map(|s| subs[s].0.clone()).collect(),
        total,
        callees: subs.values().skip(1).map(|(f, _)| f.name.clone()).collect(),
    })
}

/// The deepest chain from subprogram `at`: its total and the subprograms on it.
fn deepest(
    at: usize,
    subs: &BTreeMap<usize, (Frame, Vec<usize>)>,
    stack: &mut Vec<usize>,
) -> Result<(u32, Vec<usize>)> {
    if stack.contains(&at) {
        bail!("recursive call to the subprogram at {at}");
    }
    let (frame, callees) = &subs[&at];
    stack.push(at);
    let mut best = (0, Vec::new());
    for &c in callees {
        let below = deepest(c, subs, stack)?;
        if below.0 > best.0 {
            best = below;
        }
    }
    stack.pop();
    let mut path = vec![at];
    path.extend(best.1);
    Ok((frame.depth.max(1).div_ceil(32) * 32 + best.0, path))
}

/// The deepest stack byte addressed in `body`: loads and stores through the frame pointer (r10),
/// and pointers made from it (`rX = r10; rX += -N`), which helpers and callees write through.
fn depth(body: &[bpf_insn]) -> u32 {
    const FP: u8 = 10;
    // Registers known to hold r10 + offset.
    let mut fp: [Option<i64>; 11] = [None; 11];
    fp[FP as usize] = Some(0);
    let mut deepest = 0i64;
    let mut note = |o: i64| deepest = deepest.max(-o);
    let mut i = 0;
    while i < body.len() {
        let ins = &body[i];
        let (dst, src) = (ins.dst_reg() as usize, ins.src_reg() as usize);
        let class = ins.code & 0x07;
        match class {
            // LD: only the two-slot 64-bit immediate load is left in programs.
            0x00 => {
                fp[dst] = None;
                i += 1;
            }
            // LDX: a load from [src + off].
            0x01 => {
                if let Some(o) = fp.get(src).copied().flatten() {
                    note(o + ins.off as i64);
                }
                fp[dst] = None;
            }
            // ST, STX: a store to [dst + off].
            0x02 | 0x03 => {
                if let Some(o) = fp.get(dst).copied().flatten() {
                    note(o + ins.off as i64);
                }
            }
            // ALU64: `mov` copies, `add`/`sub` of a constant moves the pointer.
            0x07 if dst != FP as usize => {
                let op = ins.code & 0xf0;
                let from_reg = ins.code & 0x08 != 0;
                fp[dst] = match (op, from_reg) {
                    (0xb0, true) => fp.get(src).copied().flatten(),
                    (0x00, false) => fp[dst].map(|o| o + ins.imm as i64),
                    (0x10, false) => fp[dst].map(|o| o - ins.imm as i64),
                    _ => None,
                };
                if let Some(o) = fp[dst] {
                    note(o);
                }
            }
            // ALU (32-bit) results are never pointers.
            0x04 if dst != FP as usize => fp[dst] = None,
            // JMP: a call clobbers r0 to r5.
            0x05 if ins.code & 0xf0 == 0x80 => fp[..6].fill(None),
            _ => {}
        }
        i += 1;
    }
    deepest.max(0) as u32
}

fn is_pseudo_call(ins: &bpf_insn) -> bool {
    ins.code == 0x85 && ins.src_reg() == 1
}

/// The name of the unlinked function whose code is `body` (call and load immediates differ once
/// linked, so they are not compared).
fn name_of(body: &[bpf_insn], functions: &[(String, Vec<bpf_insn>)]) -> Option<String> {
    let same = |a: &bpf_insn, b: &bpf_insn| {
        a.code == b.code
            && a.dst_reg() == b.dst_reg()
            && a.src_reg() == b.src_reg()
            && a.off == b.off
            && (a.code == 0x85 || a.code == 0x18 || a.imm == b.imm)
    };
    functions
        .iter()
        .find(|(_, f)| f.len() == body.len() && f.iter().zip(body).all(|(a, b)| same(a, b)))
        .map(|(n, _)| n.clone())
}

/// A Rust function's name without its mangling and hash, for messages (`xlb::encap::tunnel`).
fn short(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        // SAFETY: plain data; all zeros is a valid instruction.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code;
        i.set_dst_reg(dst);
        i.set_src_reg(src);
        i.off = off;
        i.imm = imm;
        i
    }
    const EXIT: u8 = 0x95;

    #[test]
    fn a_frame_is_as_deep_as_its_deepest_store_load_or_pointer() {
        // *(u64 *)(r10 - 16) = r1; r2 = r10; r2 += -72 (a key for a helper); exit.
        let body = [
            ins(0x7b, 10, 1, -16, 0),
            ins(0xbf, 2, 10, 0, 0),
            ins(0x07, 2, 0, 0, -72),
            ins(0x85, 0, 0, 0, 1),
            ins(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(depth(&body), 72);
        // A pointer moved again before the store: r3 = r10; r3 += -8; *(u32 *)(r3 - 100) = 0.
        let body = [
            ins(0xbf, 3, 10, 0, 0),
            ins(0x07, 3, 0, 0, -8),
            ins(0x62, 3, 0, -100, 0),
            ins(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(depth(&body), 108);
        // A helper call clobbers r1 to r5: a later store through r2 is not into the frame.
        let body = [
            ins(0xbf, 2, 10, 0, 0),
            ins(0x85, 0, 0, 0, 1),
            ins(0x7b, 2, 1, -300, 0),
            ins(EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(depth(&body), 0);
    }

    #[test]
    fn chains_add_frames_rounded_to_32_bytes_along_the_deepest_call_path() {
        // main (40 bytes) calls a (8 bytes, which calls b with 100) and c (200, a leaf).
        let insns = [
            ins(0x7b, 10, 1, -40, 0),  // 0: main
            ins(0x85, 0, 1, 0, 3),     // 1: call a (5)
            ins(0x85, 0, 1, 0, 6),     // 2: call c (9)
            ins(EXIT, 0, 0, 0, 0),     // 3
            ins(EXIT, 0, 0, 0, 0),     // 4
            ins(0x7b, 10, 1, -8, 0),   // 5: a
            ins(0x85, 0, 1, 0, 1),     // 6: call b (8)
            ins(EXIT, 0, 0, 0, 0),     // 7
            ins(0x7b, 10, 1, -100, 0), // 8: b
            ins(0x7b, 10, 1, -200, 0), // 9: c
            ins(EXIT, 0, 0, 0, 0),     // 10
        ];
        let c = chain("p", &insns, &[]).unwrap();
        // main 64 + c 224 = 288 beats main 64 + a 32 + b 128 = 224.
        assert_eq!(c.total, 288, "{c}");
        let depths: Vec<u32> = c.frames.iter().map(|f| f.depth).collect();
        assert_eq!(depths, [40, 200]);
    }
}
