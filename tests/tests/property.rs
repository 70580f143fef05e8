//! Property test: a million random and mutated frames through the real `xlb_lb` program.
//!
//! - Never `XDP_ABORTED` (nor any action other than drop, pass and tx: the fixture's private
//!   network namespace has no other interface to redirect to).
//! - A frame to an address that is not a VIP (valid-looking, then mutated only past the IP
//!   destination address) leaves unchanged with `XDP_PASS`, or is dropped as malformed
//!   (short Ethernet, bad IPv4/IPv6, bad L4) — never modified, never forwarded.
//! - Every run bumps exactly one reason counter: the reason counters' deltas add up to the
//!   number of runs (checked per phase, in aggregate, so the hot loop stays one syscall a run).
//!
//! The generator is a xorshift64* PRNG with a fixed seed, printed on failure; set
//! `XLB_PROPERTY_SEED` to replay another, `XLB_PROPERTY_PACKETS` to change the count.
//! Run as root, in release: `cargo test --release -p xlb-tests --test property`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use lb_common::{VIP_F_DSR, VIP_F_NO_ECHO, VIP_F_SOURCE_IP};
use xlb::dataplane::Program;
use xlb_tests::{
    fixture::*,
    packet::{ExtHeader, MAC_CLIENT, MAC_LB, Packet},
};

const DEFAULT_SEED: u64 = 0x786c_625f_7072_6f70; // "xlb_prop"
const DEFAULT_PACKETS: u64 = 1_000_000;

/// xorshift64* (Vigna): small, fast, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.usize(items.len())]
    }
}

const VIP2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const VIP3_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 3);
const VIP2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);

/// VIPs of every kind: tunnel and DSR, exact and all-ports, source-IP with address entries (so
/// fragments are forwarded), IPv4 VIP with an IPv6 target, no-echo, and one without targets.
fn fixture() -> Fixture {
    use lb_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VIP_F_ADDRESS_ONLY};
    // The fixture has room for four VIP indices; further addresses share them.
    let mut f = Fixture::new();
    f.listener(VIP_V4, 80, Proto::Tcp, 0, &[BACKEND1_V4, BACKEND2_V4]);
    let dsr = f.listener(
        VIP_V4,
        53,
        Proto::Udp,
        VIP_F_DSR,
        &[BACKEND1_V4, BACKEND3_V4],
    );
    let sticky = f.listener(
        VIP2_V4,
        0,
        Proto::Tcp,
        VIP_F_SOURCE_IP,
        &[BACKEND1_V6, BACKEND2_V4],
    );
    f.address_entry(VIP2_V4, Proto::Udp, sticky, VIP_F_SOURCE_IP);
    let v6 = f.listener(VIP_V6, 443, Proto::Tcp, 0, &[BACKEND1_V6, BACKEND1_V4]);
    // A VIP whose live ring (the standby one, never written) is empty, and that does not echo.
    f.vip_entry(IpAddr::V4(VIP3_V4), 443, IPPROTO_TCP, vip_meta(dsr, 1, 0));
    f.vip_entry(
        IpAddr::V4(VIP3_V4),
        0,
        IPPROTO_ICMP,
        vip_meta(dsr, 1, VIP_F_NO_ECHO | VIP_F_ADDRESS_ONLY),
    );
    // An all-ports source-IP UDP VIP on IPv6 that also takes TCP fragments.
    f.vip_entry(
        IpAddr::V6(VIP2_V6),
        0,
        IPPROTO_UDP,
        vip_meta(v6, 0, VIP_F_SOURCE_IP),
    );
    f.address_entry(VIP2_V6, Proto::Tcp, v6, VIP_F_SOURCE_IP);
    f.vip_entry(
        IpAddr::V6(VIP2_V6),
        0,
        IPPROTO_ICMPV6,
        vip_meta(v6, 0, VIP_F_ADDRESS_ONLY),
    );
    f
}

const VIPS_V4: [Ipv4Addr; 3] = [VIP_V4, VIP2_V4, VIP3_V4];
const VIPS_V6: [Ipv6Addr; 2] = [VIP_V6, VIP2_V6];

fn is_vip(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => VIPS_V4.contains(&a),
        IpAddr::V6(a) => VIPS_V6.contains(&a),
    }
}

fn random_v4(r: &mut Rng) -> Ipv4Addr {
    // Mostly near the VIPs (same /16), sometimes anywhere.
    if r.chance(70) {
        Ipv4Addr::new(198, 18, r.pick(&[0, 1, 100]), r.u8())
    } else {
        Ipv4Addr::from(r.next() as u32)
    }
}

fn random_v6(r: &mut Rng) -> Ipv6Addr {
    if r.chance(70) {
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            r.pick(&[1, 2, 0x100]),
            0,
            0,
            0,
            0,
            r.u16() & 0xff,
        )
    } else {
        Ipv6Addr::from(((r.next() as u128) << 64) | r.next() as u128)
    }
}

/// A destination: a VIP, or (`vip == false`) an address that is not one.
fn destination(r: &mut Rng, v6: bool, vip: bool) -> IpAddr {
    loop {
        let a = match (v6, vip) {
            (false, true) => IpAddr::V4(r.pick(&VIPS_V4)),
            (true, true) => IpAddr::V6(r.pick(&VIPS_V6)),
            (false, false) => IpAddr::V4(random_v4(r)),
            (true, false) => IpAddr::V6(random_v6(r)),
        };
        if is_vip(a) == vip {
            return a;
        }
    }
}

fn port(r: &mut Rng) -> u16 {
    if r.chance(60) {
        r.pick(&[0, 53, 80, 443, 8080])
    } else {
        r.u16()
    }
}

fn payload(r: &mut Rng) -> Vec<u8> {
    let n = if r.chance(5) {
        1300 + r.usize(300)
    } else {
        r.usize(120)
    };
    r.bytes(n)
}

/// A quoted VIP → client packet for ICMP errors (sometimes about a VIP flow, sometimes not).
fn quote(r: &mut Rng, v6: bool) -> Vec<u8> {
    let about_vip = r.chance(70);
    let src = destination(r, v6, about_vip);
    let dst = if v6 {
        IpAddr::V6(random_v6(r))
    } else {
        IpAddr::V4(random_v4(r))
    };
    let link = Packet::eth(MAC_LB, MAC_CLIENT);
    let udp = r.chance(50);
    let frame = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = link.ipv4(s, d);
            if udp {
                ip.udp(port(r), port(r)).payload(&r.bytes(8)).build()
            } else {
                ip.tcp(port(r), port(r)).ack().build()
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = link.ipv6(s, d);
            if udp {
                ip.udp(port(r), port(r)).payload(&r.bytes(8)).build()
            } else {
                ip.tcp(port(r), port(r)).ack().build()
            }
        }
        _ => unreachable!(),
    };
    let cut = if v6 {
        48 + r.usize(frame.len() - 14 - 48 + 1)
    } else {
        28
    };
    frame[14..14 + cut].to_vec()
}

/// A valid-looking frame to `dst` (any of the kinds the datapath distinguishes), and the offset
/// just past its IP destination address.
fn frame(r: &mut Rng, dst: IpAddr) -> (Vec<u8>, usize) {
    let mut link = Packet::eth(MAC_CLIENT, MAC_LB);
    let vlan = r.chance(15);
    if vlan {
        link = link.vlan(r.u16() & 0x0fff);
    }
    let l3 = if vlan { 18 } else { 14 };
    let kind = r.below(10);
    let frame = match dst {
        IpAddr::V4(d) => {
            let mut ip = link.ipv4(random_v4(r), d).ttl(r.u8()).id(r.u16());
            if r.chance(40) {
                ip = ip.dont_fragment();
            }
            if r.chance(10) {
                let n = 1 + r.usize(40);
                ip = ip.options(&r.bytes(n));
            }
            if r.chance(10) {
                ip = ip.fragment((r.u16() % 1000) * 8, r.chance(50));
            }
            match kind {
                0..=3 => {
                    let mut t = ip.tcp(port(r), port(r)).seq(r.next() as u32);
                    let flags = r.u8();
                    if flags & 1 != 0 {
                        t = t.syn();
                    }
                    if flags & 2 != 0 {
                        t = t.ack();
                    }
                    if flags & 4 != 0 {
                        t = t.fin();
                    }
                    if flags & 8 != 0 {
                        t = t.rst();
                    }
                    t.payload(&payload(r)).build()
                }
                4..=5 => ip.udp(port(r), port(r)).payload(&payload(r)).build(),
                6 => ip
                    .icmpv4_echo_request(r.u16(), r.u16())
                    .payload(&payload(r))
                    .build(),
                7 => {
                    let q = quote(r, false);
                    match r.below(3) {
                        0 => ip.icmpv4_dest_unreachable((r.u8()) % 16, &q).build(),
                        1 => ip.icmpv4_frag_needed(r.u16(), &q).build(),
                        _ => ip.icmpv4_time_exceeded(&q).build(),
                    }
                }
                _ => ip
                    .raw(r.pick(&[0, 1, 4, 41, 47, 50, 58, 132, 255]))
                    .payload(&payload(r))
                    .build(),
            }
        }
        IpAddr::V6(d) => {
            let mut ip = link
                .ipv6(random_v6(r), d)
                .hop_limit(r.u8())
                .flow_label(r.next() as u32 & 0xfffff);
            let exts = if r.chance(25) { r.usize(6) } else { 0 };
            for _ in 0..exts {
                let e = match r.below(4) {
                    0 => ExtHeader::HopByHop,
                    1 => ExtHeader::DestOpts,
                    2 => ExtHeader::Routing,
                    _ => ExtHeader::Fragment {
                        offset: (r.u16() % 1000) * 8,
                        more: r.chance(50),
                        id: r.next() as u32,
                    },
                };
                ip = ip.ipv6_ext(e);
            }
            match kind {
                0..=3 => {
                    let mut t = ip.tcp(port(r), port(r));
                    let flags = r.u8();
                    if flags & 1 != 0 {
                        t = t.syn();
                    }
                    if flags & 2 != 0 {
                        t = t.ack();
                    }
                    t.payload(&payload(r)).build()
                }
                4..=5 => ip.udp(port(r), port(r)).payload(&payload(r)).build(),
                6 => ip
                    .icmpv6_echo_request(r.u16(), r.u16())
                    .payload(&payload(r))
                    .build(),
                7 => {
                    let q = quote(r, true);
                    match r.below(3) {
                        0 => ip.icmpv6_packet_too_big(r.next() as u32, &q).build(),
                        1 => ip.icmpv6_dest_unreachable(r.u8() % 7, &q).build(),
                        _ => ip.icmpv6_time_exceeded(&q).build(),
                    }
                }
                _ => ip
                    .raw(r.pick(&[1, 4, 41, 47, 50, 58, 59, 132]))
                    .payload(&payload(r))
                    .build(),
            }
        }
    };
    let dst_end = l3 + if dst.is_ipv4() { 20 } else { 40 };
    (frame, dst_end)
}

/// Interesting byte values for header fields.
const SPECIAL: [u8; 12] = [0, 1, 2, 4, 5, 6, 0x11, 0x2c, 0x3a, 0x45, 0x60, 0xff];

/// Mutates `frame` at offsets `from..`: flipped bits, special values, truncation, extension.
fn mutate(r: &mut Rng, frame: &mut Vec<u8>, from: usize) {
    let rounds = r.below(4);
    for _ in 0..rounds {
        if frame.len() <= from {
            break;
        }
        let at = from + r.usize(frame.len() - from);
        match r.below(6) {
            0 => frame[at] ^= 1 << r.below(8),
            1 => frame[at] = r.pick(&SPECIAL),
            2 => frame[at] = r.u8(),
            3 => {
                // Truncate, not below the Ethernet header (the kernel refuses shorter frames).
                let len = at.max(14);
                frame.truncate(len);
            }
            4 => {
                let n = r.usize(64);
                let extra = r.bytes(n);
                frame.extend_from_slice(&extra);
            }
            _ => {
                // A 16-bit length-like field set to something near the frame size.
                let v = (frame.len() as u16)
                    .wrapping_add(r.u16() % 64)
                    .wrapping_sub(32);
                if at + 1 < frame.len() {
                    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("XLB_PROPERTY_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(DEFAULT_SEED)
}

fn packets() -> u64 {
    std::env::var("XLB_PROPERTY_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_PACKETS)
}

fn reason_totals(f: &mut Fixture) -> Vec<u64> {
    f.reason_packets().into_iter().map(|(_, p)| p).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<(Reason, u64)> {
    Reason::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect()
}

/// What any frame sent back out looks like: from the balancer's MAC (the one the frame came to);
/// to the gateway carrying the input's IP packet whole after one outer header (a tunnel), to the
/// target's MAC with nothing else changed (DSR), or back to the client (echo reply, PTB).
fn check_tx(input: &[u8], out: &[u8]) -> Result<(), String> {
    use xlb_tests::packet::{MAC_BACKEND, MAC_GATEWAY};
    if out.len() < 14 || out[6..12] != MAC_LB {
        return Err("tx frame not from the balancer's MAC".into());
    }
    let tagged = matches!(input[12..14], [0x81, 0x00] | [0x88, 0xa8]);
    let l3 = if tagged { 18 } else { 14 };
    match &out[..6] {
        m if m == MAC_GATEWAY => {
            let outer = match out[l3 - 2..l3] {
                [0x08, 0x00] => 20,
                [0x86, 0xdd] => 40,
                _ => return Err("tunnel with an unknown outer ether type".into()),
            };
            if out[l3 + outer..] != input[l3..] || out[12..l3 - 2] != input[12..l3 - 2] {
                return Err("tunnel does not carry the input packet (and tag) unchanged".into());
            }
        }
        m if m == MAC_BACKEND => {
            if out[12..] != input[12..] {
                return Err("dsr changed more than the MACs".into());
            }
        }
        m if m == MAC_CLIENT => {}
        _ => return Err("tx frame to an unknown MAC".into()),
    }
    Ok(())
}

const MALFORMED: [Reason; 4] = [
    Reason::DropShortEth,
    Reason::DropBadIpv4,
    Reason::DropBadIpv6,
    Reason::DropBadL4,
];

/// Base frames are built once per pool (the builder is slower than the program) and mutated a
/// fresh copy at a time in the hot loop.
const POOL: usize = 4096;

#[test]
fn random_and_mutated_frames_never_abort_never_modify_non_vips_and_count_one_reason_each() {
    let seed = seed();
    let total = packets();
    let started = Instant::now();
    println!("seed {seed:#x} (XLB_PROPERTY_SEED), {total} packets (XLB_PROPERTY_PACKETS)");
    let mut r = Rng::new(seed);
    let mut f = fixture();

    // Three phases, a third of the packets each.
    let per_phase = total / 3;
    let totals_start = reason_totals(&mut f);

    // Phase 1: frames to VIPs, mutated anywhere after the Ethernet addresses (or not at all).
    let pool: Vec<Vec<u8>> = (0..POOL)
        .map(|_| {
            let v6 = r.chance(40);
            let dst = destination(&mut r, v6, true);
            frame(&mut r, dst).0
        })
        .collect();
    let before = reason_totals(&mut f);
    let mut actions = [0u64; 4];
    for i in 0..per_phase {
        let mut pkt = pool[r.usize(POOL)].clone();
        if r.chance(70) {
            mutate(&mut r, &mut pkt, 12);
        }
        let (action, out) = f
            .dataplane()
            .test_run(Program::Lb, &pkt)
            .unwrap_or_else(|e| panic!("seed {seed:#x} run {i}: {e}"));
        assert!(
            matches!(action, XDP_DROP | XDP_PASS | XDP_TX),
            "seed {seed:#x} phase 1 run {i}: action {action} for {}",
            xlb_tests::packet::describe(&pkt)
        );
        if action == XDP_PASS {
            assert!(
                out == pkt,
                "seed {seed:#x} phase 1 run {i}: a passed frame was modified\n{}",
                xlb_tests::packet::describe(&pkt)
            );
        }
        if action == XDP_TX {
            check_tx(&pkt, &out).unwrap_or_else(|e| {
                panic!(
                    "seed {seed:#x} phase 1 run {i}: {e}\nin:\n{}out:\n{}",
                    xlb_tests::packet::describe(&pkt),
                    xlb_tests::packet::describe(&out)
                )
            });
        }
        actions[action as usize] += 1;
    }
    let d = delta(&before, &reason_totals(&mut f));
    let counted: u64 = d.iter().map(|(_, n)| n).sum();
    println!(
        "phase 1 (VIPs, mutated): actions drop/pass/tx {:?}, reasons {d:?}",
        &actions[1..]
    );
    assert_eq!(
        counted, per_phase,
        "seed {seed:#x} phase 1: reason counts {d:?}"
    );

    // Phase 2: valid-looking frames to other addresses, mutated only past the IP destination.
    let pool: Vec<(Vec<u8>, usize)> = (0..POOL)
        .map(|_| {
            let v6 = r.chance(40);
            let dst = destination(&mut r, v6, false);
            frame(&mut r, dst)
        })
        .collect();
    let before = reason_totals(&mut f);
    let (mut passed, mut dropped) = (0u64, 0u64);
    for i in 0..per_phase {
        let (base, dst_end) = &pool[r.usize(POOL)];
        let mut pkt = base.clone();
        if r.chance(80) {
            mutate(&mut r, &mut pkt, *dst_end);
        }
        let (action, out) = f
            .dataplane()
            .test_run(Program::Lb, &pkt)
            .unwrap_or_else(|e| panic!("seed {seed:#x} run {i}: {e}"));
        match action {
            XDP_PASS => {
                assert!(
                    out == pkt,
                    "seed {seed:#x} phase 2 run {i}: a non-VIP frame was modified\nin:\n{}out:\n{}",
                    xlb_tests::packet::describe(&pkt),
                    xlb_tests::packet::describe(&out)
                );
                passed += 1;
            }
            XDP_DROP => dropped += 1,
            other => panic!(
                "seed {seed:#x} phase 2 run {i}: action {other} for a non-VIP frame\n{}",
                xlb_tests::packet::describe(&pkt)
            ),
        }
    }
    let d = delta(&before, &reason_totals(&mut f));
    println!("phase 2 (non-VIPs): passed {passed}, dropped {dropped}, reasons {d:?}");
    let malformed: u64 = d
        .iter()
        .filter(|(r, _)| MALFORMED.contains(r))
        .map(|(_, n)| n)
        .sum();
    let passes: u64 = d
        .iter()
        .filter(|(r, _)| matches!(r, Reason::PassNotIp | Reason::PassNotVip))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        malformed, dropped,
        "seed {seed:#x} phase 2: every drop is a malformed drop: {d:?}"
    );
    assert_eq!(
        passes, passed,
        "seed {seed:#x} phase 2: every pass is not-IP or not-VIP: {d:?}"
    );
    assert_eq!(
        malformed + passes,
        per_phase,
        "seed {seed:#x} phase 2: one reason per run: {d:?}"
    );

    // Phase 3: random bytes behind a random or IP ether type, any length the kernel accepts.
    let before = reason_totals(&mut f);
    let rest = total - 2 * per_phase;
    for i in 0..rest {
        let max = if r.chance(10) { 1600 } else { 120 };
        let len = 14 + r.usize(max);
        let mut pkt = r.bytes(len);
        match r.below(4) {
            0 => pkt[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => pkt[12..14].copy_from_slice(&[0x86, 0xdd]),
            2 => pkt[12..14].copy_from_slice(&[0x81, 0x00]),
            _ => {}
        }
        if pkt.len() > 14 && r.chance(50) {
            pkt[14] = r.pick(&[0x45, 0x46, 0x4f, 0x60]);
        }
        let (action, _) = f
            .dataplane()
            .test_run(Program::Lb, &pkt)
            .unwrap_or_else(|e| panic!("seed {seed:#x} run {i}: {e}"));
        assert!(
            matches!(action, XDP_DROP | XDP_PASS | XDP_TX),
            "seed {seed:#x} phase 3 run {i}: action {action}\n{}",
            xlb_tests::packet::describe(&pkt)
        );
    }
    let d = delta(&before, &reason_totals(&mut f));
    let counted: u64 = d.iter().map(|(_, n)| n).sum();
    println!("phase 3 (random bytes): reasons {d:?}");
    assert_eq!(counted, rest, "seed {seed:#x} phase 3: reason counts {d:?}");

    let all = delta(&totals_start, &reason_totals(&mut f));
    assert_eq!(
        all.iter().map(|(_, n)| n).sum::<u64>(),
        total,
        "seed {seed:#x}: one reason per run"
    );
    println!(
        "{total} packets in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
