//! The changes made through the API (registrations and deregistrations), kept in
//! `node.state_file` across restarts and reported as drift from the file.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::api::Registration;

/// Changes made through the API, kept in `node.state_file` across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Overlay {
    /// Targets added to a group.
    pub registered: Vec<Registration>,
    /// Targets taken out of a group (of the file or of `registered`).
    pub deregistered: Vec<Deregistration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deregistration {
    pub target_group: String,
    pub id: IpAddr,
    /// When its drain ends (seconds since the Unix epoch): a restarted agent resumes the drain.
    pub drain_until: u64,
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn load(path: &Path) -> Result<Overlay> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parse the state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
        Err(e) => Err(e).with_context(|| format!("read the state file {}", path.display())),
    }
}

/// Writes the overlay atomically: a temporary file beside it, then a rename.
pub(super) fn save(path: &Path, overlay: &Overlay) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(overlay)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_round_trips_through_the_state_file() {
        let dir = std::env::temp_dir().join(format!("xlb-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut o = Overlay::default();
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: "198.18.1.11".parse().unwrap(),
            drain_until: 0,
        });
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(load(&path).unwrap(), Overlay::default());
    }
}
