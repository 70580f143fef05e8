//! Builds the XDP programs (`lb-ebpf`) for the BPF target and leaves the object in `OUT_DIR`,
//! where `dataplane.rs` embeds it. Needs `cargo xtask setup` once (rust-src and bpf-linker).

fn main() -> anyhow::Result<()> {
    // The installed stable toolchain builds `core` for the BPF target with `-Z build-std`;
    // RUSTC_BOOTSTRAP=1 lets the nested cargo accept that flag.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    // aya-build watches lb-ebpf; the shared types live next door.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
}
