//! The balancer over the real datapath maps: what it writes when targets come and go.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    CONFIG_F_NAT, IPPROTO_TCP, RING_SIZE_DEFAULT, VIP_F_DSR, VIP_F_NAT, VipMeta, names,
};
use lb_config::Config;
use xlb::{
    balancer::{Balancer, addr_bytes},
    dataplane::{Dataplane, Program, Sizes},
    maglev::{self, MaglevTarget},
};
use xlb_tests::{
    fixture::{CLIENT_V4, Proto, VIP_V4, XDP_TX, flow_key, hash5},
    packet::{MAC_CLIENT, MAC_LB, Packet},
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
        ring_slots: 2 * RING_SIZE_DEFAULT,
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

/// One TCP listener on `VIP_V4`:80 over `targets` with tables of `m` slots; the next hop is the
/// gateway MAC, so that packets are tunnelled without the kernel FIB.
fn sized(targets: &[IpAddr], m: u32) -> Config {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ id = \"{t}\" }}"))
        .collect();
    let text = format!(
        "[node]\ninterface = \"lo\"\ngateway_mac = \"02:00:00:00:00:03\"\nmax_listeners = 2\n\
         max_targets = 16\n\n[[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 80\n\
         targets = [{}]\n\n[[listeners]]\naddress = \"{VIP_V4}\"\nport = 80\nprotocol = \"TCP\"\n\
         maglev_table_size = {m}\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        list.join(", ")
    );
    Config::parse(&text, "sized.toml").expect("config")
}

/// The target a packet was tunnelled to: the outer IPv4 destination.
fn tunnelled_to(lb: &mut Balancer, frame: &[u8]) -> IpAddr {
    let (action, out) = lb
        .dataplane()
        .test_run(Program::Lb, frame)
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    IpAddr::V4(Ipv4Addr::new(out[30], out[31], out[32], out[33]))
}

/// The listener's TCP entry as the datapath holds it.
fn entry(lb: &mut Balancer) -> VipMeta {
    let vips = lb.dataplane().vips().expect("VIPS");
    vips.iter()
        .find(|(k, _)| k.proto == IPPROTO_TCP && k.port_be == 80u16.to_be())
        .expect("the listener's entry")
        .1
}

fn syn(sport: u16) -> Vec<u8> {
    Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(sport, 80)
        .syn()
        .build()
}

#[test]
fn a_listener_balances_by_its_table_size_and_a_resize_keeps_established_flows() {
    let targets: Vec<IpAddr> = (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10 + i)))
        .collect();
    // The agent's table for these targets (backend indices 1.., in the file's order).
    let keys: Vec<_> = targets.iter().map(|t| addr_bytes(*t).1).collect();
    let mt: Vec<MaglevTarget<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| MaglevTarget {
            key: k,
            index: i as u32 + 1,
            weight: 1,
        })
        .collect();
    let pick = |m: u32, sport: u16| {
        let key = flow_key(
            IpAddr::V4(CLIENT_V4),
            IpAddr::V4(VIP_V4),
            sport,
            80,
            Proto::Tcp,
        );
        let table = maglev::build(&mt, m).expect("table");
        targets[table[(hash5(&key) % m) as usize] as usize - 1]
    };
    let cfg = sized(&targets, 13);
    // Ring space for two default tables, less than the node's (the refusal at the end).
    let sizes = Sizes {
        ring_slots: 2 * RING_SIZE_DEFAULT,
        ..Sizes::of(&cfg.node)
    };
    let dp = Dataplane::load(sizes).expect("load the maps");
    let mut lb = Balancer::new(dp).expect("balancer");

    // Given tables of 13 slots, every new flow lands on its slot of that table.
    lb.apply(&cfg).expect("apply");
    let first = entry(&mut lb);
    assert_eq!((first.ring_size, first.prev_size), (13, 13), "{first:?}");
    assert_eq!(first.prev_base, first.ring_base, "no previous table yet");
    for sport in 1000..1040 {
        assert_eq!(
            tunnelled_to(&mut lb, &syn(sport)),
            pick(13, sport),
            "port {sport}"
        );
    }
    // A flow whose slot the default size gives to another target.
    let sport = (2000..3000)
        .find(|p| pick(13, *p) != pick(RING_SIZE_DEFAULT, *p))
        .expect("tables that differ");
    let was = tunnelled_to(&mut lb, &syn(sport));
    let flows = lb.dataplane().flows().expect("flows").len();

    // When a reload sets the default size: the flow keeps its target, new flows take the new
    // table, and the VIP names the old one as its previous table.
    lb.apply(&sized(&targets, RING_SIZE_DEFAULT))
        .expect("resize");
    let resized = entry(&mut lb);
    assert_eq!(
        (resized.ring_size, resized.prev_base, resized.prev_size),
        (RING_SIZE_DEFAULT, first.ring_base, 13),
        "{resized:?}"
    );
    let ack = Packet::eth(MAC_CLIENT, MAC_LB)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(sport, 80)
        .ack()
        .build();
    assert_eq!(tunnelled_to(&mut lb, &ack), was);
    assert_eq!(lb.dataplane().flows().expect("flows").len(), flows);
    for sport in 3000..3040 {
        assert_eq!(
            tunnelled_to(&mut lb, &syn(sport)),
            pick(RING_SIZE_DEFAULT, sport),
            "port {sport}"
        );
    }
    assert_eq!(
        tunnelled_to(&mut lb, &syn(sport)),
        pick(RING_SIZE_DEFAULT, sport)
    );

    // Back to 13: the table goes where the previous one of 13 was.
    lb.apply(&cfg).expect("shrink");
    let back = entry(&mut lb);
    assert_eq!((back.ring_base, back.ring_size), (first.ring_base, 13));
    assert_eq!(
        (back.prev_base, back.prev_size),
        (resized.ring_base, RING_SIZE_DEFAULT)
    );

    // A table the ring space cannot place is refused before anything is written.
    let e = lb.apply(&sized(&targets, 131_071)).unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(e));
    assert!(
        text.contains("no run of 131071 free slots for a Maglev table: 131061 of"),
        "{text}"
    );
    assert_eq!(entry(&mut lb), back);
}

/// Removes a pin directory when dropped, the test failed or not.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_restarted_agent_keeps_the_live_and_the_previous_table() {
    let targets: Vec<IpAddr> = (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10 + i)))
        .collect();
    let (before, after) = (sized(&targets[..2], 13), sized(&targets, 13));
    let dir = pin_dir("restart");
    let sizes = Sizes::of(&after.node);
    let (was, live, previous) = {
        let dp = Dataplane::load_pinned(sizes, Some(&dir.0)).expect("pin the maps");
        let mut lb = Balancer::new(dp).expect("balancer");
        lb.apply(&before).expect("apply");
        lb.apply(&after).expect("a target added");
        let m = entry(&mut lb);
        let dp = lb.dataplane();
        let live = dp.read_ring(m.ring_base, 13).expect("live table");
        let previous = dp.read_ring(m.prev_base, 13).expect("previous table");
        assert_ne!(live, previous, "the target changed the table");
        (m, live, previous)
    };
    // The next agent, on the same pins and the same config: nothing moves, so a flow that
    // changes node now still gets its second chance.
    let dp = Dataplane::load_pinned(sizes, Some(&dir.0)).expect("re-open the pins");
    let mut lb = Balancer::new(dp).expect("balancer");
    lb.apply(&after).expect("apply after the restart");
    let now = entry(&mut lb);
    assert_eq!(now, was);
    let dp = lb.dataplane();
    assert_eq!(dp.read_ring(now.ring_base, 13).expect("live"), live);
    assert_eq!(dp.read_ring(now.prev_base, 13).expect("previous"), previous);
    // Another config after the restart: the table it replaces becomes the previous one.
    lb.apply(&before).expect("a target removed");
    let next = entry(&mut lb);
    assert_eq!((next.prev_base, next.prev_size), (was.ring_base, 13));
}

/// NAT listeners on `VIP_V4`, one per (port, group) of `listeners`: group `web` (port 8080) holds
/// 198.18.1.11 and 198.18.1.12 on its own 8081, group `api` (port 9000) holds 198.18.1.11 too.
fn nat(listeners: &[(u16, &str)]) -> Config {
    let mut text = String::from(
        "[node]\ninterface = \"lo\"\nmax_listeners = 2\nmax_targets = 16\n\n\
         [[target_groups]]\nname = \"web\"\nprotocol = \"TCP\"\nport = 8080\n\
         targets = [{ id = \"198.18.1.11\" }, { id = \"198.18.1.12\", port = 8081 }]\n\n\
         [[target_groups]]\nname = \"api\"\nprotocol = \"TCP\"\nport = 9000\n\
         targets = [{ id = \"198.18.1.11\" }]\n",
    );
    for (port, group) in listeners {
        text += &format!(
            "\n[[listeners]]\naddress = \"{VIP_V4}\"\nport = {port}\nprotocol = \"TCP\"\n\
             forwarding = \"nat\"\ndefault_action = {{ type = \"forward\", target_group = \"{group}\" }}\n"
        );
    }
    Config::parse(&text, "nat.toml").expect("config")
}

/// `CONFIG[0]` as the datapath reads it.
fn node_flags(lb: &mut Balancer) -> u16 {
    let (_, map) = lb
        .dataplane()
        .maps()
        .find(|(n, _)| *n == names::CONFIG)
        .expect("CONFIG");
    let config: aya::maps::Array<_, lb_common::Config> =
        aya::maps::Array::try_from(map).expect("CONFIG is an array");
    config.get(&0, 0).expect("CONFIG[0]").flags
}

/// Each listener's targets as (target, backend index).
fn applied(lb: &Balancer) -> Vec<Vec<(String, u32)>> {
    lb.listeners
        .iter()
        .map(|l| {
            l.targets
                .iter()
                .map(|(t, i, _)| (t.to_string(), *i))
                .collect()
        })
        .collect()
}

/// The port each backend index holds, in host order.
fn backend_ports(lb: &mut Balancer) -> Vec<(u32, u16)> {
    let backends = lb.dataplane().backends().expect("BACKENDS");
    backends
        .into_iter()
        .map(|(i, b)| (i, u16::from_be(b.port_be)))
        .collect()
}

#[test]
fn nat_listeners_write_their_flag_their_targets_ports_and_the_nodes_flag() {
    let cfg = nat(&[(80, "web")]);
    let dp = Dataplane::load(Sizes::of(&cfg.node)).expect("load the maps");
    let mut lb = Balancer::new(dp).expect("balancer");
    lb.apply(&cfg).expect("apply");
    let meta = entry(&mut lb);
    assert_eq!(meta.flags & (VIP_F_NAT | VIP_F_DSR), VIP_F_NAT, "{meta:?}");
    assert_eq!(backend_ports(&mut lb), [(1, 8080), (2, 8081)]);
    assert_eq!(
        applied(&lb),
        [[
            ("198.18.1.11:8080".to_owned(), 1),
            ("198.18.1.12:8081".to_owned(), 2)
        ]]
    );
    assert_ne!(
        node_flags(&mut lb) & CONFIG_F_NAT,
        0,
        "NAT replies looked up"
    );

    // The same VIP by tunnel: no NAT anywhere, and its targets keep the packet's port.
    let tunnel = config(&[IpAddr::V4(Ipv4Addr::new(198, 18, 1, 13))]);
    lb.apply(&tunnel).expect("apply the tunnel");
    assert_eq!(entry(&mut lb).flags & VIP_F_NAT, 0);
    assert_eq!(
        node_flags(&mut lb) & CONFIG_F_NAT,
        0,
        "no NAT listener left"
    );
    assert_eq!(applied(&lb), [[("198.18.1.13".to_owned(), 3)]]);
    assert!(backend_ports(&mut lb).contains(&(3, 0)));
}

/// A pin directory of this test process, removed when dropped.
fn pin_dir(name: &str) -> PinDir {
    PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/xlb-test-{name}-{}",
        std::process::id()
    )))
}

#[test]
fn one_address_on_two_ports_is_two_backends_and_keeps_them_across_a_restart() {
    let cfg = nat(&[(80, "web"), (81, "api")]);
    let dir = pin_dir("nat-restart");
    let sizes = Sizes::of(&cfg.node);
    let before = {
        let dp = Dataplane::load_pinned(sizes, Some(&dir.0)).expect("pin the maps");
        let mut lb = Balancer::new(dp).expect("balancer");
        lb.apply(&cfg).expect("apply");
        assert_eq!(backend_ports(&mut lb), [(1, 8080), (2, 8081), (3, 9000)]);
        applied(&lb)
    };
    assert_eq!(
        before,
        [
            vec![
                ("198.18.1.11:8080".to_owned(), 1),
                ("198.18.1.12:8081".to_owned(), 2)
            ],
            vec![("198.18.1.11:9000".to_owned(), 3)],
        ]
    );
    // The next agent reads the backends back by address and port: with the listeners in the
    // other order (a fresh agent would number 198.18.1.11:9000 first), each keeps its index.
    let dp = Dataplane::load_pinned(sizes, Some(&dir.0)).expect("re-open the pins");
    let mut lb = Balancer::new(dp).expect("balancer");
    lb.apply(&nat(&[(81, "api"), (80, "web")]))
        .expect("apply after the restart");
    assert_eq!(applied(&lb), [before[1].clone(), before[0].clone()]);
    assert_eq!(backend_ports(&mut lb), [(1, 8080), (2, 8081), (3, 9000)]);
    // A drain's end retires the address on every port no listener keeps.
    lb.apply(&nat(&[(80, "web")])).expect("api's listener gone");
    lb.retire("198.18.1.11".parse().unwrap()).expect("retire");
    let live: Vec<u32> = lb
        .dataplane()
        .backends()
        .expect("BACKENDS")
        .into_iter()
        .filter(|(_, b)| b.flags & lb_common::BACKEND_F_LIVE != 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        live,
        [1, 2],
        "198.18.1.11:8080 stays in web, 9000 is retired"
    );
}
