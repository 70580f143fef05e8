//! The effective config: the file with the API's changes, and the ring weights that draining,
//! health and zones give each target.

use std::net::IpAddr;

use lb_config::{Config, Target};

use super::overlay::Overlay;

/// `file` with the overlay's targets: those registered through the API and those a reload
/// took out while they drain; without the deregistered ones whose drain is over. What API
/// registrations are validated on, with the file's rules.
pub fn merged(file: &Config, overlay: &Overlay, draining: &dyn Fn(&str, IpAddr) -> bool) -> Config {
    let mut cfg = file.clone();
    for g in &mut cfg.target_groups {
        let extra = overlay
            .registered
            .iter()
            .chain(overlay.departed.iter().map(|d| &d.target))
            .filter(|r| r.target_group == g.name);
        for r in extra {
            if !g.targets.iter().any(|t| t.id == r.id) {
                g.targets.push(Target {
                    id: r.id,
                    weight: r.weight,
                    mac: r.mac.clone(),
                    zone: r.zone.clone(),
                    port: r.port,
                });
            }
        }
        let name = g.name.clone();
        // Deregistered targets stay only while they drain.
        let dereg = |id: IpAddr| {
            overlay
                .deregistered
                .iter()
                .any(|d| d.target_group == name && d.id == id)
        };
        g.targets.retain(|t| !dereg(t.id) || draining(&name, t.id));
    }
    cfg
}

/// The effective config: [`merged`]; targets that are draining, or outside the node's zone
/// while the zone has a target in service and cross-zone is off, get ring weight 0 (they keep
/// their flows but take no new ones). With cross-zone on, weights are multiplied by the zone's
/// weight.
pub fn effective(
    file: &Config,
    overlay: &Overlay,
    draining: &dyn Fn(&str, IpAddr) -> bool,
) -> Config {
    let mut cfg = merged(file, overlay, draining);
    let node_zone = cfg.node.zone.clone();
    for g in &mut cfg.target_groups {
        let name = g.name.clone();
        let cross = g.cross_zone();
        let serving: Vec<bool> = g
            .targets
            .iter()
            .map(|t| t.weight > 0 && !draining(&name, t.id))
            .collect();
        let local = |t: &Target| node_zone.is_some() && t.zone == node_zone;
        let local_serving = g.targets.iter().zip(&serving).any(|(t, s)| *s && local(t));
        for (t, s) in g.targets.iter_mut().zip(serving) {
            // Cross-zone off: stay in the node's zone while it has a target; spill over when not.
            let zone_ok = cross || !local_serving || local(t);
            let zone_weight = t
                .zone
                .as_ref()
                .and_then(|z| cfg.node.zone_weights.get(z))
                .copied()
                .unwrap_or(1);
            t.weight = match (s && zone_ok, cross) {
                (false, _) => 0,
                (true, true) => t.weight.saturating_mul(zone_weight),
                (true, false) => t.weight,
            };
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{agent::overlay::Deregistration, api::Registration};

    fn cfg(cross_zone: bool) -> Config {
        let text = format!(
            r#"
[node]
interface = "eth0"
zone = "a"
zone_weights = {{ a = 1, b = 3 }}

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [
  {{ id = "198.18.1.11", zone = "a" }},
  {{ id = "198.18.1.12", zone = "b" }},
  {{ id = "198.18.1.13", zone = "b", weight = 2 }},
]
attributes = {{ "load_balancing.cross_zone.enabled" = "{cross_zone}" }}
"#
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    fn weights(c: &Config) -> Vec<(String, u32)> {
        c.target_groups[0]
            .targets
            .iter()
            .map(|t| (t.id.to_string(), t.weight))
            .collect()
    }

    const NONE: &dyn Fn(&str, IpAddr) -> bool = &|_, _| false;

    #[test]
    fn cross_zone_off_keeps_traffic_in_the_node_zone() {
        let e = effective(&cfg(false), &Overlay::default(), NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 1),
                ("198.18.1.12".into(), 0),
                ("198.18.1.13".into(), 0)
            ]
        );
    }

    #[test]
    fn cross_zone_off_spills_over_when_the_zone_has_no_target() {
        let a: IpAddr = "198.18.1.11".parse().unwrap();
        let draining = move |_: &str, id: IpAddr| id == a;
        let mut o = Overlay::default();
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: a,
            drain_until: 0,
        });
        let e = effective(&cfg(false), &o, &draining);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 0),
                ("198.18.1.12".into(), 1),
                ("198.18.1.13".into(), 2)
            ]
        );
    }

    #[test]
    fn cross_zone_on_multiplies_by_zone_weights() {
        let e = effective(&cfg(true), &Overlay::default(), NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.11".into(), 1),
                ("198.18.1.12".into(), 3),
                ("198.18.1.13".into(), 6)
            ]
        );
    }

    #[test]
    fn registered_targets_join_and_drained_ones_leave() {
        let mut o = Overlay::default();
        o.registered.push(Registration {
            target_group: "web".into(),
            id: "198.18.1.14".parse().unwrap(),
            weight: 1,
            zone: Some("a".into()),
            mac: None,
            port: None,
        });
        o.deregistered.push(Deregistration {
            target_group: "web".into(),
            id: "198.18.1.11".parse().unwrap(),
            drain_until: 0,
        });
        // The drain is over (not draining any more): the target is gone.
        let e = effective(&cfg(false), &o, NONE);
        assert_eq!(
            weights(&e),
            [
                ("198.18.1.12".into(), 0),
                ("198.18.1.13".into(), 0),
                ("198.18.1.14".into(), 1)
            ]
        );
    }
}
