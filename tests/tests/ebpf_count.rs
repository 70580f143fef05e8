//! The instruction counter (`xlb_tests::ebpf_count`) runs what the kernel runs. On each of the
//! bench's test-run cases, the same frame goes through the program in the kernel
//! (`BPF_PROG_TEST_RUN`) and in the counter, each on its own copy of the same maps, twice (the
//! first fills the next-hop cache): both give the same verdict, the same frame and the same reason
//! counter, and leave the same flows.

use lb_common::names;
use xlb::dataplane::{Program, RunOptions};
use xlb_tests::{
    ebpf_count::Machine,
    fixture::Fixture,
    packet::assert_frame_eq,
    testrun::{Frames, Hop, cases, links, prepare, routes},
};

/// Packets per reason counter, by reason index.
fn reasons(m: &Machine) -> Vec<(u32, u64)> {
    m.entries(names::REASON_STATS)
        .expect("reason counters")
        .iter()
        .map(|(k, v)| {
            let index = u32::from_ne_bytes(k[..4].try_into().expect("a u32 key"));
            let packets = u64::from_ne_bytes(v[..8].try_into().expect("a u64 count"));
            (index, packets)
        })
        .collect()
}

/// The reasons whose counters moved from `before` to `after`, and by how much.
fn moved(before: &[(u32, u64)], after: &[(u32, u64)]) -> Vec<(u32, u64)> {
    after
        .iter()
        .filter_map(|(r, a)| {
            let b = before.iter().find(|(rb, _)| rb == r).map_or(0, |(_, b)| *b);
            (*a != b).then_some((*r, a - b))
        })
        .collect()
}

#[test]
fn the_counter_gives_the_kernels_verdict_frame_reason_and_flows_on_every_bench_case() {
    let frames = Frames::new();
    let mut f = prepare(Fixture::new(), &frames).expect("the bench's listeners and flows");
    let mut m = Machine::new(xlb::dataplane::OBJECT).expect("parse the object");
    m.copy_maps(f.dataplane()).expect("copy the maps");
    let mut ingress = None;
    for case in cases(&frames) {
        let ingress_ifindex = match case.hop {
            Hop::Fib => *ingress.get_or_insert_with(|| {
                let i = links().expect("the links that resolve the targets");
                m.routes = routes(i);
                i
            }),
            Hop::Gateway | Hop::FibMiss => 0,
        };
        f.config(|c| c.flags |= case.config_flags());
        m.copy_map(f.dataplane(), names::CONFIG)
            .expect("copy the config");
        for round in 1..=2 {
            let kernel_before: Vec<(u32, u64)> = f
                .reason_packets()
                .into_iter()
                .map(|(r, p)| (r as u32, p))
                .collect();
            let counted_before = reasons(&m);
            let opts = RunOptions {
                repeat: 1,
                ingress_ifindex,
            };
            let kernel = f
                .dataplane()
                .test_run_with(case.program, case.frame, opts)
                .expect("BPF_PROG_TEST_RUN");
            let counted = m
                .run(case.program.name(), case.frame, ingress_ifindex)
                .expect("the counter runs the program");
            println!(
                "{} run {round}: {} instructions, {} on the stack",
                case.path, counted.insns, counted.stack
            );
            assert_eq!(counted.action, kernel.action, "{}: verdict", case.path);
            assert_eq!(
                counted.action, case.action,
                "{}: the bench's verdict",
                case.path
            );
            assert_frame_eq(&counted.frame, &kernel.frame);
            if case.program == Program::Lb {
                let kernel_after: Vec<(u32, u64)> = f
                    .reason_packets()
                    .into_iter()
                    .map(|(r, p)| (r as u32, p))
                    .collect();
                let kernel_moved = moved(&kernel_before, &kernel_after);
                assert_eq!(kernel_moved.len(), 1, "{}: one reason counted", case.path);
                assert_eq!(
                    moved(&counted_before, &reasons(&m)),
                    kernel_moved,
                    "{}: reason counters",
                    case.path
                );
            }
            assert!(counted.insns > 0, "{}: instructions counted", case.path);
        }
    }
    let mut kernel_flows: Vec<(Vec<u8>, Vec<u8>)> = f
        .flow_entries()
        .iter()
        .map(|(k, s)| {
            (
                bytemuck::bytes_of(k).to_vec(),
                bytemuck::bytes_of(s).to_vec(),
            )
        })
        .collect();
    kernel_flows.sort();
    assert_eq!(m.entries(names::FLOWS).expect("flows"), kernel_flows);
}

#[test]
fn xlb_pass_executes_two_instructions_and_leaves_the_frame_as_it_came() {
    // `xlb_pass` is `r0 = XDP_PASS; exit`: two instructions, neither of them on the stack.
    let frames = Frames::new();
    let mut m = Machine::new(xlb::dataplane::OBJECT).expect("parse the object");
    let run = m
        .run(names::PROG_PASS, &frames.ack, 0)
        .expect("run xlb_pass");
    assert_eq!((run.action, run.insns, run.stack), (2, 2, 0));
    assert_eq!(run.frame, frames.ack);
}
