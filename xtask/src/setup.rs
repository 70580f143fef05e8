//! `cargo xtask setup`: makes a fresh machine able to build and test xlb. Every step checks first
//! and does nothing when its piece is present, so running it again is cheap.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::{
    BPF_LINKER_LLVM_FEATURE, BPF_LINKER_VERSION, CARGO_DEB_VERSION, DEBIAN_PACKAGES,
    HOST_TEST_PACKAGES,
};

pub fn run() -> Result<()> {
    // rust-src builds `core` for the BPF target; llvm-tools merges the profiles of `build --pgo`.
    for name in ["rust-src", "llvm-tools"] {
        component(name).with_context(|| format!("setup: rustup component {name}"))?;
    }
    bpf_linker().context("setup: bpf-linker")?;
    cargo_deb().context("setup: cargo-deb")?;
    debian_packages().context("setup: Debian packages")?;
    bpffs().context("setup: bpffs at /sys/fs/bpf")?;
    Ok(())
}

fn component(name: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with(name)) {
        return Ok(());
    }
    say(&format!("installing rustup component {name}"));
    check(Command::new("rustup").args(["component", "add", name]))
}

/// bpf-linker built against rustc's own libLLVM. The stamp file records which rustc it was built
/// for, so a rustc upgrade rebuilds it.
fn bpf_linker() -> Result<()> {
    let sysroot = sysroot()?;
    let llvm = find_libllvm(&sysroot.join("lib"))?;
    let llvm_name = llvm
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // The prefix must outlive the build: bpf-linker loads libLLVM from it at run time.
    let prefix = cargo_home.join("xlb-llvm");
    let stamp = prefix.join("stamp");
    let want = format!("{BPF_LINKER_VERSION} {llvm_name}");
    let linker = cargo_home.join("bin").join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.display()
    ));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    for name in ["libLLVM.so", llvm_name.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    check(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ]),
    )?;
    fs::write(&stamp, want).with_context(|| format!("write {}", stamp.display()))
}

/// cargo-deb, which `cargo xtask dist` packages with, at the pinned version.
fn cargo_deb() -> Result<()> {
    let want = format!("cargo-deb {CARGO_DEB_VERSION}");
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if have == want {
        return Ok(());
    }
    say(&format!("installing {want} (about 3 minutes)"));
    check(Command::new("cargo").args([
        "install",
        "--locked",
        "--force",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// rustc's shared LLVM, `libLLVM.so.<major>.<minor>-rust-<version>-<channel>`.
fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: is this a rustup toolchain?",
        dir.display()
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .chain(HOST_TEST_PACKAGES)
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map_or(true, |o| {
                    !String::from_utf8_lossy(&o.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    check(Command::new("apt-get").args(["update", "-q"]))?;
    check(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    say("mounting bpffs at /sys/fs/bpf");
    check(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// The installed rustc's sysroot, where its libLLVM and rustup's LLVM tools live.
pub fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["--print", "sysroot"]))?.trim(),
    ))
}

fn say(msg: &str) {
    eprintln!("xtask setup: {msg}");
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("start {cmd:?} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("start {cmd:?} (is it installed?)"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}
