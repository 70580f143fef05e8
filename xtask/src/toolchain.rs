//! The toolchain facts, pinned in one place.
//!
//! eBPF crates build with the installed stable rustc and `-Z build-std=core` (allowed by
//! `RUSTC_BOOTSTRAP=1`). bpf-linker must link against the very LLVM that rustc ships, so it is built
//! from source against rustc's own `libLLVM`.

/// The BPF target triple (little-endian hosts).
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// bpf-linker release, and the cargo feature that selects rustc's LLVM major version.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// cargo-deb release, which `cargo xtask dist` packages with.
pub const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages used by the build, the lab, the tests and the benchmarks (HAProxy, nginx,
/// wrk and h2load for `bench l7`; strace for `tests/attach.rs`; python3 for the plain servers of
/// `tests/nat_lab.rs`'s targets).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "procps",
    "openssl",
    "haproxy",
    "nginx",
    "wrk",
    "nghttp2-client",
    "strace",
    "python3",
];
/// Debian packages only the host uses, kept out of the VM images (`cargo xtask vm` does not run
/// those tests): promtool, from `prometheus`, for `tests/monitoring.rs`; BIRD for
/// `tests/bgp_lab.rs`; groff for the man pages `tests/cli_help.rs` checks; `dpkg-dev`, whose
/// `dpkg-shlibdeps` gives `cargo xtask dist` the package's dependencies.
pub const HOST_TEST_PACKAGES: &[&str] = &["prometheus", "bird2", "groff-base", "dpkg-dev"];
