//! The balancer over the real datapath maps: what it writes when targets come and go.

use std::net::{IpAddr, Ipv4Addr};

use lb_config::Config;
use xlb::{
    balancer::Balancer,
    dataplane::{Dataplane, Sizes},
};

/// One TCP listener whose group has `targets`.
fn config(targets: &[IpAddr]) -> Config {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ id = \"{t}\" }}"))
        .collect();
    let text = format!(
        "[node]\ninterface = \"lo\"\n\n[[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\n\
         port = 80\ntargets = [{}]\n\n[[listeners]]\naddress = \"198.18.100.1\"\nport = 80\n\
         protocol = \"TCP\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        list.join(", ")
    );
    Config::parse(&text, "balancer.toml").expect("config")
}

/// 3,000 targets from the `n`th /16 of 10.0.0.0/8.
fn batch(n: u8) -> Vec<IpAddr> {
    (0..3000u16)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, n, (i >> 8) as u8, i as u8)))
        .collect()
}

#[test]
fn targets_that_left_give_their_indices_to_new_ones() {
    let dp = Dataplane::load(Sizes {
        flows: 1024,
        listeners: 1,
        targets: 4095,
    })
    .expect("load the maps");
    let mut lb = Balancer::new(dp).expect("balancer");
    // Three times 3,000 targets, each batch leaving before the next comes: 9,000 addresses
    // over the agent's life, never more than 3,000 at once (the datapath holds 4,095).
    for n in 0..3 {
        lb.apply(&config(&batch(n)))
            .unwrap_or_else(|e| panic!("batch {n}: {e}"));
        lb.apply(&config(&[])).expect("no targets");
        for t in batch(n) {
            lb.retire(t).expect("retire");
        }
    }
    // More than fit at once is refused before anything is written.
    let mut many = batch(3);
    many.extend(batch(4).into_iter().take(1200));
    let e = lb.apply(&config(&many)).unwrap_err().to_string();
    assert!(e.contains("would exceed node.max_targets (4095)"), "{e}");
    assert!(
        lb.listeners.iter().all(|l| l.targets.is_empty()),
        "nothing written"
    );
}

/// `listeners` TCP listeners on ports from 1000, each group of `per_group` targets serving
/// `listeners / groups` of them.
fn many(listeners: u32, groups: u32, per_group: u32) -> Config {
    let mut text = format!(
        "[node]\ninterface = \"lo\"\nmax_listeners = {listeners}\nmax_targets = {}\n",
        groups * per_group
    );
    for g in 0..groups {
        let list: Vec<String> = (0..per_group)
            .map(|i| {
                let n = g * per_group + i;
                format!(
                    "{{ id = \"10.{}.{}.{}\" }}",
                    n >> 16,
                    (n >> 8) & 255,
                    n & 255
                )
            })
            .collect();
        text += &format!(
            "\n[[target_groups]]\nname = \"g{g}\"\nprotocol = \"TCP\"\nport = 80\ntargets = [{}]\n",
            list.join(", ")
        );
    }
    for l in 0..listeners {
        text += &format!(
            "\n[[listeners]]\naddress = \"198.18.100.1\"\nport = {}\nprotocol = \"TCP\"\n\
             default_action = {{ type = \"forward\", target_group = \"g{}\" }}\n",
            1000 + l,
            l % groups
        );
    }
    Config::parse(&text, "many.toml").expect("config")
}

#[test]
fn a_node_holds_1024_listeners_and_16384_targets() {
    let cfg = many(1024, 16, 1024);
    let dp = Dataplane::load(Sizes::of(&cfg.node)).expect("load the maps");
    let mut lb = Balancer::new(dp).expect("balancer");
    lb.apply(&cfg).expect("apply");
    assert_eq!(lb.listeners.len(), 1024);
    let targets: std::collections::BTreeSet<_> = lb
        .listeners
        .iter()
        .flat_map(|l| l.targets.iter().map(|t| t.0))
        .collect();
    assert_eq!(targets.len(), 16384);
    // One more listener than the node holds is refused by the balancer too.
    let e = lb.apply(&many(1025, 16, 1)).unwrap_err().to_string();
    assert!(e.contains("would exceed node.max_listeners (1024)"), "{e}");
}
