//! Announcing the VIPs this node can serve (`[node.bgp]`) through BIRD 2, which speaks BGP to the
//! routers: xlb writes BIRD's whole config file (a static route per VIP, exported to each peer)
//! and asks BIRD to reload it (`birdc configure`). BIRD, not xlb, keeps the sessions: when the
//! agent dies, BIRD goes on announcing what it last had while the datapath goes on forwarding;
//! when the node dies, the routers drop it after the hold time (or BFD's second).
//!
//! BIRD over FRR and GoBGP: one config file and a one-line reload are the whole interface (no
//! gRPC API to track, no vtysh sessions), IPv4 and IPv6 in one daemon, BFD built in, and Debian
//! packages it (`bird2`). The driver is this file: another daemon is another `render`.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use lb_config::bgp::{Bgp, community};
use tokio::{process::Command, sync::watch};

/// How long BIRD may take to answer a reload before the try counts as failed.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// BIRD's config for announcing `vips`.
pub fn render(bgp: &Bgp, vips: &BTreeSet<IpAddr>) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by xlb from [node.bgp]: the VIPs this node can serve. xlb rewrites this file."
    );
    let _ = writeln!(c, "router id {};", bgp.router_id);
    let _ = writeln!(c, "protocol device {{ }}");
    if bgp.bfd {
        let _ = writeln!(c, "protocol bfd {{ }}");
    }
    for (name, v4) in [("xlb_vips4", true), ("xlb_vips6", false)] {
        let _ = writeln!(c, "protocol static {name} {{");
        let _ = writeln!(c, "  {};", if v4 { "ipv4" } else { "ipv6" });
        for vip in vips.iter().filter(|v| v.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            let _ = writeln!(c, "  route {vip}/{len} blackhole;");
        }
        let _ = writeln!(c, "}}");
    }
    let _ = writeln!(c, "filter xlb_export {{");
    let _ = writeln!(
        c,
        "  if proto = \"xlb_vips4\" || proto = \"xlb_vips6\" then {{"
    );
    attributes(&mut c, "    ", &bgp.communities, bgp.med);
    // A VIP's own attributes, over the node's.
    for v in &bgp.vips {
        let len = if v.address.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(c, "    if net = {}/{len} then {{", v.address);
        attributes(&mut c, "      ", &v.communities, v.med);
        let _ = writeln!(c, "    }}");
    }
    let _ = writeln!(c, "    accept;\n  }}\n  reject;\n}}");
    for (i, p) in bgp.peers.iter().enumerate() {
        let _ = writeln!(c, "protocol bgp xlb_peer{i} {{");
        let _ = writeln!(c, "  local as {};", bgp.local_as);
        let _ = writeln!(c, "  neighbor {} as {};", p.address, p.remote_as);
        let _ = writeln!(c, "  hold time {};", bgp.hold_time);
        if bgp.hold_time > 0 {
            let _ = writeln!(c, "  keepalive time {};", (bgp.hold_time / 3).max(1));
        }
        if bgp.bfd {
            let _ = writeln!(c, "  bfd on;");
        }
        let (family, next_hop) = match p.address {
            IpAddr::V4(_) => ("ipv4", bgp.next_hop_v4.map(IpAddr::V4)),
            IpAddr::V6(_) => ("ipv6", bgp.next_hop_v6.map(IpAddr::V6)),
        };
        let next_hop = next_hop.map_or("next hop self".to_owned(), |a| {
            format!("next hop address {a}")
        });
        let _ = writeln!(
            c,
            "  {family} {{ import none; export filter xlb_export; {next_hop}; }};"
        );
        let _ = writeln!(c, "}}");
    }
    c
}

/// The filter statements that set `communities` (added) and `med`, each line after `indent`.
fn attributes(c: &mut String, indent: &str, communities: &[String], med: Option<u32>) {
    for (asn, value) in communities.iter().filter_map(|t| community(t).ok()) {
        let _ = writeln!(c, "{indent}bgp_community.add(({asn}, {value}));");
    }
    if let Some(med) = med {
        let _ = writeln!(c, "{indent}bgp_med = {med};");
    }
}

/// Writes BIRD's config for `vips` and has BIRD reload it.
async fn announce(bgp: &Bgp, vips: &BTreeSet<IpAddr>) -> Result<()> {
    let file = &bgp.config_file;
    // BIRD reads the file whole or not at all: written beside it, then renamed over it.
    let tmp = file.with_extension("xlb-new");
    tokio::fs::write(&tmp, render(bgp, vips))
        .await
        .with_context(|| format!("write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, file)
        .await
        .with_context(|| format!("replace {}", file.display()))?;
    let reload = Command::new("birdc")
        .arg("-s")
        .arg(&bgp.control_socket)
        .arg("configure")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BIRDC_TIMEOUT, reload)
        .await
        .with_context(|| format!("birdc configure took over {BIRDC_TIMEOUT:?}"))?
        .context("run birdc")?;
    let said = String::from_utf8_lossy(&out.stdout);
    // birdc exits 0 whatever BIRD answered: the answer says whether the file was taken.
    if !out.status.success() || !said.contains("Reconfigur") {
        bail!(
            "BIRD did not take {}: {}{}",
            file.display(),
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Announces each VIP set `vips` gives, in order, until its sender is gone (the last set is
/// announced first). A failure is logged and tried again with the next change.
pub async fn announcer(bgp: Bgp, mut vips: watch::Receiver<BTreeSet<IpAddr>>) {
    loop {
        let now = vips.borrow_and_update().clone();
        match announce(&bgp, &now).await {
            Ok(()) => {
                let list: Vec<String> = now.iter().map(IpAddr::to_string).collect();
                tracing::info!(vips = list.join(" "), "announced through BIRD");
            }
            Err(e) => tracing::error!(error = format!("{e:#}"), "BGP announcement failed"),
        }
        if vips.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_config::bgp::{Peer, VipAttributes};

    use super::*;

    #[test]
    fn the_bird_config_announces_each_vip_to_each_peer_with_its_attributes() {
        let bgp = Bgp {
            local_as: 65001,
            router_id: "198.18.1.2".parse().unwrap(),
            peers: ["198.18.1.1", "2001:db8:2::1"]
                .iter()
                .map(|a| Peer {
                    address: a.parse().unwrap(),
                    remote_as: 65000,
                })
                .collect(),
            config_file: "/tmp/bird.conf".into(),
            control_socket: "/tmp/bird.ctl".into(),
            hold_time: 3,
            bfd: true,
            communities: vec!["65001:100".into()],
            med: Some(10),
            next_hop_v4: None,
            next_hop_v6: Some("2001:db8:2::99".parse().unwrap()),
            vips: vec![VipAttributes {
                address: "198.18.100.1".parse().unwrap(),
                communities: vec!["65001:200".into()],
                med: Some(50),
            }],
        };
        let vips: BTreeSet<IpAddr> = ["198.18.100.1", "2001:db8:100::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let c = render(&bgp, &vips);
        for line in [
            "router id 198.18.1.2;",
            "  route 198.18.100.1/32 blackhole;",
            "  route 2001:db8:100::1/128 blackhole;",
            "    bgp_community.add((65001, 100));",
            "    bgp_med = 10;",
            "protocol bfd { }",
            "  neighbor 198.18.1.1 as 65000;",
            "  ipv4 { import none; export filter xlb_export; next hop self; };",
            "  neighbor 2001:db8:2::1 as 65000;",
            "  ipv6 { import none; export filter xlb_export; next hop address 2001:db8:2::99; };",
            "    if net = 198.18.100.1/32 then {",
            "      bgp_community.add((65001, 200));",
            "      bgp_med = 50;",
            "  hold time 3;",
            "  bfd on;",
        ] {
            assert!(c.lines().any(|l| l == line), "{line:?} not in\n{c}");
        }
        // BIRD itself takes the file (`bird -p` parses it and stops).
        let file = std::env::temp_dir().join(format!("xlb-bird-{}.conf", std::process::id()));
        std::fs::write(&file, &c).unwrap();
        let parsed = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&file)
            .output();
        let _ = std::fs::remove_file(&file);
        let parsed = parsed.expect("run bird (cargo xtask setup installs bird2)");
        assert!(
            parsed.status.success(),
            "BIRD refused the file: {}\n{c}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        // Nothing to serve: the peers stay, the routes go.
        let none = render(&bgp, &BTreeSet::new());
        assert!(!none.contains("route "), "{none}");
        assert!(none.contains("neighbor 198.18.1.1 as 65000;"));
    }
}
