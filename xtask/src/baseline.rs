//! `cargo xtask bench --baseline-rev REV`: another commit's XDP object, for `xlb-bench --baseline`.
//! The commit is checked out in a worktree of its own under `target/baseline/` and built there with
//! its own target directory, both kept so that the next run against it builds nothing.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{paths, status};

/// The `xlb` eBPF object that commit `rev` builds.
pub fn object(rev: &str) -> Result<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!(
            "{rev} is not a commit: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let root = paths::target_dir()?.join("baseline").join(&commit);
    let tree = root.join("src");
    if !tree.join("Cargo.toml").is_file() {
        // A worktree left half-made by an interrupted run is pruned first.
        let _ = std::fs::remove_dir_all(&tree);
        status(Command::new("git").args(["worktree", "prune"]))?;
        status(
            Command::new("git")
                .args(["worktree", "add", "--detach"])
                .arg(&tree)
                .arg(&commit),
        )?;
    }
    let target = root.join("target");
    status(
        Command::new(env!("CARGO"))
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "--package",
                "lb-userspace",
                "--bin",
                "xlb",
            ]),
    )?;
    // The build script writes the object into its OUT_DIR; the newest is this build's.
    let mut objects: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(target.join("release").join("build"))?
            .filter_map(|e| {
                let path = e.ok()?.path().join("out").join("xlb");
                let name = path.parent()?.parent()?.file_name()?.to_str()?.to_owned();
                let modified = path.metadata().ok()?.modified().ok()?;
                name.starts_with("lb-userspace-")
                    .then_some((modified, path))
            })
            .collect();
    objects.sort();
    match objects.pop() {
        Some((_, path)) => Ok(path),
        None => bail!("{commit} built no XDP object under {}", target.display()),
    }
}
