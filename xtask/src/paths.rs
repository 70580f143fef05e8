//! Where the workspace is, and where cargo builds.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The workspace's root directory.
pub fn workspace_root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the workspace) or `target`.
pub fn target_dir() -> Result<PathBuf> {
    let root = workspace_root()?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target")))
}
