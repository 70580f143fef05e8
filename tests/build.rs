//! Builds `xlb-bench`'s own XDP programs (`lb-ebpf-bench`: generator, reflector, sink) for the
//! BPF target and leaves the object in `OUT_DIR`, where `xlb-bench` embeds it. They are built
//! here, not into the object `lb-userspace/build.rs` builds, so that xlb never ships them. The
//! same way as there: needs `cargo xtask setup` once (rust-src and bpf-linker).

fn main() -> anyhow::Result<()> {
    // The installed stable toolchain builds `core` for the BPF target with `-Z build-std`;
    // RUSTC_BOOTSTRAP=1 lets the nested cargo accept that flag.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build watches lb-ebpf-bench; `GenConfig` and the names live in lb-common.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf-bench",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf-bench"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
}
