//! What a config may not ask of the host it runs on, checked where the agent runs (`xlb run`,
//! a reload, `xlb check`): a VIP that is one of the host's own addresses (the kernel's sockets
//! and the balancer would both claim its packets), or a host address inside the tunnel sources
//! (its replies would look like tunnelled traffic to the path).

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result};
use lb_config::{Config, Forwarding, Refusal};

/// Every address of this host (its network namespace), with the interface that holds it.
pub fn addresses() -> Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push((ifa.interface_name, ip));
    }
    Ok(out)
}

/// Refuses a config that claims one of `host`'s addresses as a VIP, or puts one inside the
/// tunnel sources. Listeners served in user space bind a socket like HTTP listeners: their
/// address is the host's to hold.
pub fn check(cfg: &Config, host: &[(String, IpAddr)]) -> Result<(), Refusal> {
    let xdp = cfg.listeners.iter().enumerate();
    for (i, l) in xdp.filter(|(_, l)| !cfg.in_user_space(l)) {
        if let Some((iface, _)) = host.iter().find(|(_, a)| *a == l.address) {
            return Err(Refusal::new(
                format!("listeners[{i}].address"),
                format!(
                    "{} is an address of this host (on {iface}): a VIP must be an address \
                     no interface of the balancer holds",
                    l.address
                ),
            ));
        }
    }
    // The families of the outer headers tunnels have: their targets'.
    let outer: Vec<bool> = cfg
        .xdp_listeners()
        .filter(|l| l.forwarding == Forwarding::Tunnel)
        .filter_map(|l| cfg.group(l.target_group()))
        .flat_map(|g| g.targets.iter().map(|t| t.id.is_ipv4()))
        .collect();
    if let Some((iface, a)) = host.iter().find(|(_, a)| {
        outer.contains(&a.is_ipv4()) && !a.is_loopback() && cfg.node.in_tunnel_sources(*a)
    }) {
        let key = if a.is_ipv4() {
            "node.tunnel_source_v4"
        } else {
            "node.tunnel_source_v6"
        };
        return Err(Refusal::new(
            key,
            format!(
                "this host's {a} (on {iface}) is inside the tunnel sources ({}): pick a prefix \
                 no host on the path uses",
                cfg.node.tunnel_prefix(*a)
            ),
        ));
    }
    Ok(())
}

/// What keeps forwarded packets from leaving on this host, as lines for the log and `xlb
/// status`: the kernel's FIB answers `bpf_fib_lookup` only on an interface that forwards, so with
/// forwarding off and no `gateway_mac` every tunnelled or NAT packet is dropped
/// (`drop_no_route`); and the NAT packets the datapath passes to the kernel (no neighbour yet)
/// are forwarded only with the host's forwarding on.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let families = |f: &dyn Fn(Forwarding) -> bool| -> BTreeSet<bool> {
        cfg.xdp_listeners()
            .filter(|l| f(l.forwarding))
            .filter_map(|l| cfg.group(l.target_group()))
            .flat_map(|g| g.targets.iter().map(|t| t.id.is_ipv4()))
            .collect()
    };
    let off = |key: &str| {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "0")
    };
    let name = |v4: bool| {
        if v4 {
            ("IPv4", "ipv4")
        } else {
            ("IPv6", "ipv6")
        }
    };
    let mut out = Vec::new();
    if cfg.node.gateway_mac.is_none() {
        let iface = &cfg.node.interface;
        for v4 in families(&|f| f != Forwarding::Dsr) {
            let (family, ip) = name(v4);
            let key = format!("net.{ip}.conf.{iface}.forwarding");
            if off(&key) {
                out.push(format!(
                    "{key} is 0: the kernel's FIB gives no next hop toward {family} targets and \
                     their tunnelled or NAT packets are dropped (drop_no_route); set it to 1 \
                     (sysctl -w {key}=1), or set node.gateway_mac"
                ));
            }
        }
    }
    for v4 in families(&|f| f.translates()) {
        let (family, _) = name(v4);
        let key = if v4 {
            "net.ipv4.ip_forward"
        } else {
            "net.ipv6.conf.all.forwarding"
        };
        if off(key) {
            out.push(format!(
                "{key} is 0: NAT packets toward {family} targets whose next hop has no \
                 neighbour entry yet (pass_no_neighbour) are dropped by the kernel; set it to 1 \
                 (sysctl -w {key}=1)"
            ));
        }
    }
    // SNAT ports the node's own connections may take: a reply to one of those would be taken
    // for an SNAT reply while an SNAT flow holds the port, and the other way round.
    if cfg
        .xdp_listeners()
        .any(|l| l.forwarding == Forwarding::Snat)
        && let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        && let Some(w) = snat_overlap(cfg.node.snat.ports, &range)
    {
        out.push(w);
    }
    out
}

/// A warning when `[first, last]` overlaps the kernel's ephemeral ports (`range`, as
/// `net.ipv4.ip_local_port_range` reads: "32768\t60999").
fn snat_overlap([first, last]: [u16; 2], range: &str) -> Option<String> {
    let mut it = range.split_whitespace().map(|v| v.parse::<u16>());
    let (Some(Ok(low)), Some(Ok(high))) = (it.next(), it.next()) else {
        return None;
    };
    (first <= high && low <= last).then(|| {
        format!(
            "node.snat.ports [{first}, {last}] overlaps net.ipv4.ip_local_port_range ({low}-{high}): \
             the node's own connections may take ports SNAT flows use; move one of the two \
             ranges"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_snat_range_inside_the_ephemeral_ports_is_warned_of() {
        assert_eq!(snat_overlap([10000, 32767], "32768\t60999\n"), None);
        let w = snat_overlap([30000, 40000], "32768\t60999\n").expect("a warning");
        assert!(w.contains("32768-60999"), "{w}");
        assert!(snat_overlap([60999, 61000], "32768 60999").is_some());
    }

    #[test]
    fn vips_and_tunnel_sources_keep_off_the_hosts_addresses() {
        let text = r#"
[node]
interface = "eth0"

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [{ id = "198.18.1.11" }]

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
default_action = { type = "forward", target_group = "web" }
"#;
        let cfg = Config::parse(text, "x.toml").unwrap();
        let host = |a: &str| vec![("eth0".to_owned(), a.parse().unwrap())];
        check(&cfg, &host("198.18.1.2")).unwrap();
        let e = check(&cfg, &host("198.18.100.1")).unwrap_err();
        assert_eq!(e.key, "listeners[0].address");
        assert!(
            e.message.contains("is an address of this host (on eth0)"),
            "{e:?}"
        );
        let e = check(&cfg, &host("172.16.3.4")).unwrap_err();
        assert_eq!(e.key, "node.tunnel_source_v4");
        assert!(e.message.contains("172.16.0.0/16"), "{e:?}");
        // No IPv6 target, no IPv6 tunnel: the host's IPv6 addresses do not matter.
        check(&cfg, &host("fd00::2")).unwrap();
    }
}
