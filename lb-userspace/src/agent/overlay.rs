//! The changes made through the API (registrations and deregistrations), and the targets a
//! reload took out of the file while they drain, kept in `node.state_file` across restarts.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::api::Registration;

/// What the agent runs beyond the file, kept in `node.state_file` across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Overlay {
    /// Targets added to a group through the API.
    pub registered: Vec<Registration>,
    /// Targets taken out of a group through the API (of the file or of `registered`).
    pub deregistered: Vec<Deregistration>,
    /// Targets a reload took out of the file, until their drain ends.
    #[serde(default)]
    pub departed: Vec<Departure>,
}

/// A target that left the file: it takes no new flows, and its own go on until its group's
/// deregistration delay ends, as for a deregistered one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Departure {
    pub target: Registration,
    /// When its drain ends (seconds since the Unix epoch).
    pub drain_until: u64,
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
