//! xlb's test harnesses, shared by the tests in `tests/tests/`, the demo and the benchmarks.
//!
//! - [`packet`]: builds frames with correct checksums, and describes them for readable diffs.
//! - [`fixture`]: runs the real XDP program on a frame with `BPF_PROG_TEST_RUN` and reports the
//!   verdict, the output frame and the counters that moved.
//! - [`agent`]: runs the real `xlb` agent in a lab, and real HTTP clients against it.
//! - [`stack`]: the verifier's combined stack limit, computed from the eBPF object.
//! - [`ebpf_count`]: runs an XDP program's bytecode outside the kernel and counts the
//!   instructions it executes; [`testrun`]: the bench's test-run cases it counts.
//! - [`lab`]: network namespaces joined by veth pairs (client, router, lb, backends) with real
//!   servers, for end-to-end traffic.

pub mod agent;
pub mod cluster;
pub mod ebpf_count;
pub mod fixture;
pub mod lab;
pub mod packet;
pub mod plain_targets;
pub mod stack;
pub mod stop;
pub mod testrun;
