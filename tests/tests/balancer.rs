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
        vips: 1,
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
    assert!(e.contains("BACKENDS is full"), "{e}");
    assert!(
        lb.listeners.iter().all(|l| l.targets.is_empty()),
        "nothing written"
    );
}
