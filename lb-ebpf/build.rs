//! Code generation options for the BPF backend. bpf-linker generates the code (rustc hands it
//! LLVM bitcode), so they are linker arguments.

fn main() {
    // Packet headers sit at any 2-byte offset, and LLVM otherwise splits every multi-byte load or
    // store it cannot prove aligned into single bytes. The kernels xlb supports allow misaligned
    // packet and map-value access on the architectures they run on (the verifier checks it);
    // stack accesses stay aligned, which LLVM knows of its own slots.
    println!("cargo::rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
