//! The profile-guided build (`cargo xtask build --pgo`; `bench l7` measures it). xlb is built
//! with instrumentation, runs the L7 bench's loads once (`xlb-bench-l7 --train`), and is built
//! again with the profile that run wrote, so LLVM inlines and lays out the request path (hyper, h2,
//! tokio, rustls and xlb's own code) for how it actually runs. Needs root, as the bench does.
//!
//! By hand rather than with cargo-pgo: two builds, one run and one merge, and no other tool to
//! install. Each build has a target directory of its own, so the plain builds stay cached.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    paths,
    setup::{self, output},
    status, tool_command,
};

/// Builds `target/pgo/use/dist/xlb` and returns its path.
pub fn build() -> Result<PathBuf> {
    let root = paths::target_dir()?.join("pgo");
    // Build scripts are instrumented too and write their own profiles there; the training run's go
    // to a folder of their own.
    let generated = root.join("generated");
    let trained = root.join("trained");
    let _ = fs::remove_dir_all(&generated);
    let _ = fs::remove_dir_all(&trained);
    fs::create_dir_all(&trained).with_context(|| format!("create {}", trained.display()))?;

    eprintln!("xtask: profile-guided build 1/3: instrumented");
    let instrumented = dist(
        &root.join("generate"),
        &format!("-Cprofile-generate={}", generated.display()),
    )?;

    eprintln!("xtask: profile-guided build 2/3: the L7 loads through the instrumented xlb");
    let mut train = tool_command(
        "xlb-bench-l7",
        &[
            "--train".into(),
            "--xlb".into(),
            instrumented.display().to_string(),
        ],
    );
    train.env("LLVM_PROFILE_FILE", trained.join("xlb-%p-%m.profraw"));
    status(&mut train)?;
    let profiles: Vec<PathBuf> = fs::read_dir(&trained)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    ensure!(
        !profiles.is_empty(),
        "the training run left no profile in {} (did xlb exit cleanly?)",
        trained.display()
    );
    let profdata = root.join("xlb.profdata");
    status(
        Command::new(llvm_profdata()?)
            .arg("merge")
            .arg("-o")
            .arg(&profdata)
            .args(&profiles),
    )?;

    eprintln!("xtask: profile-guided build 3/3: optimized with the profile");
    // Cargo does not see a new profile behind the same flag: every crate is built again with it.
    let optimized = root.join("use");
    let _ = fs::remove_dir_all(&optimized);
    dist(&optimized, &format!("-Cprofile-use={}", profdata.display()))
}

/// `xlb` in the `dist` profile with one more rustc flag, in `target_dir`. `--config` adds the
/// flag to the workspace's `build.rustflags` (RUSTFLAGS would replace them).
fn dist(target_dir: &Path, flag: &str) -> Result<PathBuf> {
    status(
        Command::new(env!("CARGO"))
            .args(["build", "--profile", "dist", "--package", "lb-userspace"])
            .args(["--bin", "xlb", "--target-dir"])
            .arg(target_dir)
            .arg("--config")
            .arg(format!("build.rustflags = [{flag:?}]")),
    )?;
    Ok(target_dir.join("dist").join("xlb"))
}

/// rustup's `llvm-tools` component (installed by setup): LLVM's own, as rustc's profiles need.
fn llvm_profdata() -> Result<PathBuf> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("no host in `rustc -vV`")?;
    let path = setup::sysroot()?
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    Ok(path)
}
