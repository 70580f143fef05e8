//! The datapath's stack, against the verifier's limit with a margin.
//!
//! Kernels up to 6.1 refuse a program whose call chain uses more than 512 bytes of stack, each
//! frame rounded up to 32 bytes; newer ones round less and accept more. So a change can pass
//! every test on a new kernel and not load on Debian 12. This test adds up the frames from the
//! object itself, as 6.1 does, and keeps the sum below a budget that leaves room for the next
//! change. Values that do not fit go in a per-CPU scratch map, not on the stack.

use lb_common::names;
use xlb::dataplane::{Dataplane, OBJECT, Program, Sizes};
use xlb_tests::stack::{self, KERNEL_LIMIT};

/// The most stack any program's call chain may use: 64 bytes under the kernel's limit.
const BUDGET: u32 = 448;

#[test]
fn every_programs_deepest_call_chain_fits_the_stack_budget() {
    let chains = stack::chains(OBJECT).expect("the object's call chains");
    for c in &chains {
        println!("{c}");
    }
    let names: Vec<&str> = chains.iter().map(|c| c.program.as_str()).collect();
    for p in ["xlb_lb", "xlb_decap", "xlb_pass"] {
        assert!(names.contains(&p), "{p} is not in the object: {names:?}");
    }
    let over: Vec<String> = chains
        .iter()
        .filter(|c| c.total > BUDGET)
        .map(|c| c.to_string())
        .collect();
    assert!(
        over.is_empty(),
        "the stack budget is {BUDGET} bytes (the kernel refuses more than {KERNEL_LIMIT}); over it:\n  {}",
        over.join("\n  ")
    );
}

/// The BPF backend lowers a `memset` or `memcpy` it does not expand into a call of a
/// byte-at-a-time loop: a zeroed struct on the hot path once cost a third of the balancer's own
/// time, and each call is one more frame on the stack. Every program, every path.
#[test]
fn no_program_calls_a_memory_builtin() {
    let chains = stack::chains(OBJECT).expect("the object's call chains");
    let calls: Vec<String> = chains
        .iter()
        .flat_map(|c| {
            c.callees
                .iter()
                .filter(|f| ["memset", "memmove", "memcpy", "memcmp", "bcmp"].contains(&f.as_str()))
                .map(move |f| format!("{} calls {f}", c.program))
        })
        .collect();
    assert!(calls.is_empty(), "calls to memory builtins: {calls:?}");
}

/// The programs are one function each, every stage inlined. With the tunnel and the ICMP answers
/// out of line (BPF-to-BPF calls), Linux 6.1's verifier pruned a live branch of the tunnel as dead
/// and hard-wired the other: tunnels between families left with the inner packet's EtherType
/// (its precision tracking gives up at calls; fixed in 6.3). Inlined, the stack is smaller too.
#[test]
fn the_programs_make_no_bpf_to_bpf_calls() {
    let chains = stack::chains(OBJECT).expect("the object's call chains");
    let calls: Vec<String> = chains
        .iter()
        .filter(|c| !c.callees.is_empty())
        .map(|c| format!("{} calls {}", c.program, c.callees.join(", ")))
        .collect();
    assert!(calls.is_empty(), "{calls:?}");
}

/// Each program loads on this kernel: in CI's VMs that is Debian 12's and 13's. A refusal fails
/// here with the one line `xlb` prints (what the kernel lacks), not the verifier's dump.
#[test]
fn every_program_loads_on_this_kernel() {
    let mut dp = Dataplane::load(Sizes::MINIMAL).expect("the maps");
    // Not IP: every program passes it untouched, once it is loaded.
    let frame = [0u8; 60];
    let failed: Vec<String> = [Program::Lb, Program::Decap, Program::Pass]
        .into_iter()
        .filter_map(|p| dp.test_run(p, &frame).err().map(|e| e.to_string()))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// What ships is the agent's own: the benchmark's generator, reflector and sink, and their maps,
/// are built into `xlb-bench` alone (`lb-ebpf-bench`), never into the object `xlb` embeds.
#[test]
fn the_shipped_object_has_the_agents_three_programs_and_no_bench_map() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse the eBPF object");
    let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    programs.sort_unstable();
    assert_eq!(
        programs,
        [names::PROG_DECAP, names::PROG_LB, names::PROG_PASS]
    );
    let bench: Vec<&String> = obj.maps.keys().filter(|m| m.starts_with("BENCH")).collect();
    assert!(bench.is_empty(), "benchmark maps in the object: {bench:?}");
}
