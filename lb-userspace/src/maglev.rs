//! Maglev lookup-table builder (Eisenbud et al., NSDI 2016, §3.4), with weights.
//!
//! The datapath picks a backend as `ring[hash(flow) % M]`; this module fills `ring`.
//!
//! **Permutation.** Each target's stable byte key (e.g. its address and port) is
//! hashed once with 128-bit SipHash-2-4 from the `siphasher` crate under fixed
//! keys: `offset = h1 % M`, `skip = h2 % (M - 1) + 1`. Because `M` is prime,
//! every skip is coprime to `M`, so each target's preference list visits every
//! slot exactly once. Offset and skip depend only on the key, never on the
//! target's position in the list.
//!
//! **Determinism.** Every node with the same config must build the same table,
//! so targets are sorted by `(key, index, weight)` before filling, the hash keys
//! are constants, and no hash-map iteration order or process-seeded hasher is
//! involved. The hash keys and the fill order are therefore part of the contract
//! between nodes: changing either changes every table in the fleet.
//!
//! **Weights (credits).** Filling runs in rounds as in the paper, but a target
//! only takes a turn when it has a whole credit: each round it earns
//! `weight / max_weight`, kept as an exact integer ratio so no float rounding
//! can differ between nodes. Targets still walk their own preference lists
//! exactly as in the paper; weights only change how often each one gets a turn.
//! So slot counts follow weights to within about one slot, disruption behaves as
//! in vanilla Maglev, and with equal weights this *is* the paper's algorithm
//! (`build` and `build_vanilla` agree). Normalizing to the largest weight means
//! the heaviest target moves every round, so no round is empty, and scaling all
//! weights by a constant leaves the table unchanged.
//!
//! **Disruption.** Maglev's greedy fill cascades a little when a target leaves:
//! at `M = 65537` about 0.6 % of the other slots move as well, whatever `N` is.
//! That is close to ideal for tens of targets but several times `1/N` at
//! `N = 1000`; a larger prime `M` reduces it, slowly: the paper's `M > 100 N`
//! is not enough, and `N = 1000` needs `M` ≈ 5000 `N` to come within twice
//! `1/N` (a listener's `maglev_table_size`; `cargo xtask bench` measures it).
//!
//! **Cost.** Each target keeps its current position in its preference list, so
//! claiming a slot is a short forward scan with no per-slot allocation (about
//! `M ln M` probes in all), and a min-heap hands out turns so that light targets
//! cost nothing in rounds where they have none: 5-7 ms for `N = 1000` at
//! `M = 65537` in release, whatever the weight mix.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

pub use lb_common::is_prime;
use siphasher::sip128::SipHasher24;

/// Fixed SipHash keys ("xlb_magl", "ev_v1_ke"); changing them reshuffles every table.
const HASH_KEYS: (u64, u64) = (0x786c_625f_6d61_676c, 0x6576_5f76_315f_6b65);

/// One backend as seen by the table builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevTarget<'a> {
    /// Stable identity that seeds the permutation, e.g. address and port bytes.
    pub key: &'a [u8],
    /// Value written into the table slots this target owns (0 is reserved for "no backend").
    pub index: u32,
    /// Relative share of slots; 0 keeps the target out of the table.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The ring size must be prime so every skip yields a full permutation.
    #[error("Maglev ring size {m} is not prime")]
    RingSizeNotPrime {
        /// The rejected ring size.
        m: u32,
    },
    /// There are more targets with weight > 0 than slots in the ring.
    #[error("Maglev ring size {m} is smaller than the number of weighted targets ({targets})")]
    RingTooSmall {
        /// The rejected ring size.
        m: u32,
        /// How many targets have weight > 0.
        targets: usize,
    },
}

/// Builds the weighted Maglev table of length `m`; all zeros if no target has weight > 0.
pub fn build(targets: &[MaglevTarget<'_>], m: u32) -> Result<Vec<u32>, MaglevError> {
    fill(targets, m, |t| t.weight)
}

/// Builds the paper's unweighted table: every target with weight > 0 counts equally.
pub fn build_vanilla(targets: &[MaglevTarget<'_>], m: u32) -> Result<Vec<u32>, MaglevError> {
    fill(targets, m, |t| u32::from(t.weight > 0))
}

/// Worst `slots_i / (M * w_i / Σw)` over targets with weight > 0: 1.0 is perfect, NaN if none.
pub fn balance(table: &[u32], targets: &[MaglevTarget<'_>]) -> f64 {
    // (weight, slots) per index; a BTreeMap keeps this independent of hasher seeds.
    let mut per_index: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for t in targets.iter().filter(|t| t.weight > 0) {
        per_index.entry(t.index).or_default().0 += u64::from(t.weight);
    }
    let total_weight: u64 = per_index.values().map(|&(w, _)| w).sum();
    if total_weight == 0 || table.is_empty() {
        return f64::NAN;
    }
    for slot in table {
        if let Some(entry) = per_index.get_mut(slot) {
            entry.1 += 1;
        }
    }
    let m = table.len() as f64;
    per_index
        .values()
        .map(|&(w, slots)| slots as f64 / (m * w as f64 / total_weight as f64))
        .fold(0.0, f64::max)
}

/// Share of slots whose value changed; panics if the tables differ in length (ring size).
pub fn disruption(before: &[u32], after: &[u32]) -> f64 {
    assert_eq!(
        before.len(),
        after.len(),
        "disruption needs tables of the same ring size"
    );
    if before.is_empty() {
        return 0.0;
    }
    let changed = before.iter().zip(after).filter(|(b, a)| b != a).count();
    changed as f64 / before.len() as f64
}

/// A target's walk through its preference list while the table is filled.
struct Cursor {
    index: u32,
    weight: u64,
    /// Slots claimed so far.
    turns: u64,
    /// Next candidate slot: `offset + j * skip (mod m)` for the current `j`.
    pos: u32,
    skip: u32,
}

impl Cursor {
    /// Round (from 1) of the next turn: the first round whose accumulated credit
    /// `round * weight / max_weight` covers `turns + 1` whole turns.
    fn next_round(&self, max_weight: u64) -> u64 {
        // turns <= m < 2^32 and max_weight < 2^32, so this cannot overflow.
        ((self.turns + 1) * max_weight).div_ceil(self.weight)
    }

    fn advance(&mut self, m: u32) {
        // Widened so pos + skip cannot overflow for large m; the select compiles
        // branch-free, which matters because the wrap is unpredictable.
        let next = u64::from(self.pos) + u64::from(self.skip);
        let m = u64::from(m);
        self.pos = (if next >= m { next - m } else { next }) as u32;
    }
}

fn fill(
    targets: &[MaglevTarget<'_>],
    m: u32,
    weight_of: impl Fn(&MaglevTarget<'_>) -> u32,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::RingSizeNotPrime { m });
    }
    let mut live: Vec<&MaglevTarget<'_>> = targets.iter().filter(|t| weight_of(t) > 0).collect();
    if live.len() > m as usize {
        return Err(MaglevError::RingTooSmall {
            m,
            targets: live.len(),
        });
    }
    if live.is_empty() {
        return Ok(vec![0; m as usize]);
    }
    // Sorting on the whole tuple makes the fill order independent of input order,
    // even for duplicate keys.
    live.sort_unstable_by(|a, b| (a.key, a.index, a.weight).cmp(&(b.key, b.index, b.weight)));

    let hasher = SipHasher24::new_with_keys(HASH_KEYS.0, HASH_KEYS.1);
    let wide_m = u64::from(m);
    let mut cursors: Vec<Cursor> = live
        .iter()
        .map(|t| {
            let h = hasher.hash(t.key);
            // Both casts are lossless: the values are below m.
            Cursor {
                index: t.index,
                weight: u64::from(weight_of(t)),
                turns: 0,
                pos: (h.h1 % wide_m) as u32,
                skip: (h.h2 % (wide_m - 1)) as u32 + 1,
            }
        })
        .collect();
    let max_weight = cursors
        .iter()
        .map(|c| c.weight)
        .max()
        .expect("live is not empty");

    // Turns are taken in (round, sorted position) order. A min-heap replays that
    // schedule without visiting light targets in the rounds where they have no
    // turn, so a skewed weight mix costs O(M log N) rather than O(M * N).
    let mut schedule: BinaryHeap<Reverse<(u64, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(i, c)| Reverse((c.next_round(max_weight), i)))
        .collect();
    let mut table = vec![0u32; m as usize];
    let mut taken = vec![false; m as usize];
    for _ in 0..m {
        let mut turn = schedule
            .peek_mut()
            .expect("every weighted target always has a next turn");
        let Reverse((_, i)) = *turn;
        let c = &mut cursors[i];
        while taken[c.pos as usize] {
            c.advance(m);
        }
        table[c.pos as usize] = c.index;
        taken[c.pos as usize] = true;
        c.advance(m);
        c.turns += 1;
        // Rewriting the top in place costs one sift instead of a pop and a push.
        *turn = Reverse((c.next_round(max_weight), i));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = lb_common::RING_SIZE_DEFAULT;

    /// IPv4 address + port bytes, as the agent would use: 10.a.b.c:8080.
    fn keys(n: usize) -> Vec<[u8; 6]> {
        (0..n)
            .map(|i| [10, (i >> 16) as u8, (i >> 8) as u8, i as u8, 0x1f, 0x90])
            .collect()
    }

    /// Targets with indexes 1..=n (0 is reserved in the datapath).
    fn targets<'a>(keys: &'a [[u8; 6]], weight: impl Fn(usize) -> u32) -> Vec<MaglevTarget<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| MaglevTarget {
                key: k,
                index: i as u32 + 1,
                weight: weight(i),
            })
            .collect()
    }

    fn slots_of(table: &[u32], index: u32) -> usize {
        table.iter().filter(|&&s| s == index).count()
    }

    #[test]
    fn is_prime_matches_sieve() {
        let limit = 10_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for j in (i * i..limit).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), prime, "n = {n}");
        }
        assert!(is_prime(65537));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65519));
    }

    #[test]
    fn rejects_non_prime_ring() {
        let k = keys(3);
        let t = targets(&k, |_| 1);
        for m in [0, 1, 4, 65536] {
            assert_eq!(build(&t, m), Err(MaglevError::RingSizeNotPrime { m }));
            assert_eq!(
                build_vanilla(&t, m),
                Err(MaglevError::RingSizeNotPrime { m })
            );
        }
    }

    #[test]
    fn rejects_ring_smaller_than_weighted_targets() {
        let k = keys(10);
        let t = targets(&k, |_| 1);
        let err = MaglevError::RingTooSmall { m: 7, targets: 10 };
        assert_eq!(build(&t, 7), Err(err.clone()));
        assert_eq!(build_vanilla(&t, 7), Err(err));
        // Weight-0 targets take no slot, so they do not count against the ring size.
        let t = targets(&k, |i| u32::from(i < 7));
        assert!(build(&t, 7).is_ok());
        assert!(build_vanilla(&t, 7).is_ok());
    }

    #[test]
    fn no_weighted_target_gives_empty_table() {
        let k = keys(4);
        let zero = targets(&k, |_| 0);
        for t in [&zero[..], &[]] {
            assert_eq!(build(t, 13).unwrap(), vec![0; 13]);
            assert_eq!(build_vanilla(t, 13).unwrap(), vec![0; 13]);
        }
    }

    #[test]
    fn tiny_rings_give_each_equal_target_its_share() {
        // With m == n every target must get exactly one slot: checks the free-slot walk.
        for m in [2u32, 3, 5, 7, 11, 13, 101] {
            let k = keys(m as usize);
            let t = targets(&k, |_| 1);
            let table = build(&t, m).unwrap();
            for target in &t {
                assert_eq!(slots_of(&table, target.index), 1, "m = {m}");
            }
        }
        let k = keys(1);
        assert_eq!(build(&targets(&k, |_| 5), 2).unwrap(), vec![1, 1]);
    }

    #[test]
    fn slots_only_hold_weighted_targets() {
        let k = keys(50);
        let t = targets(&k, |i| (i % 4) as u32); // every fourth target has weight 0
        for table in [build(&t, M).unwrap(), build_vanilla(&t, M).unwrap()] {
            assert_eq!(table.len(), M as usize);
            for target in &t {
                let slots = slots_of(&table, target.index);
                if target.weight == 0 {
                    assert_eq!(slots, 0, "weight-0 target {} has slots", target.index);
                } else {
                    assert!(slots > 0, "target {} has no slots", target.index);
                }
            }
            assert!(table.iter().all(|&s| s != 0));
        }
    }

    #[test]
    fn equal_weights_are_balanced_and_match_vanilla() {
        for n in [10, 100, 1000] {
            let k = keys(n);
            let t = targets(&k, |_| 1);
            let weighted = build(&t, M).unwrap();
            let vanilla = build_vanilla(&t, M).unwrap();
            let (bw, bv) = (balance(&weighted, &t), balance(&vanilla, &t));
            eprintln!("balance n={n}: weighted {bw:.4} vanilla {bv:.4}");
            assert!(bw <= 1.05, "n={n}: weighted balance {bw}");
            assert!(bv <= 1.05, "n={n}: vanilla balance {bv}");
            // Equal weights reduce the credit scheme to the paper's algorithm.
            assert_eq!(weighted, vanilla, "n={n}");
        }
    }

    /// Share of the ring that changed although it did not point at `gone`.
    fn collateral(before: &[u32], after: &[u32], gone: u32) -> f64 {
        let moved = before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| b != gone && b != a)
            .count();
        moved as f64 / before.len() as f64
    }

    #[test]
    fn removing_a_target_moves_little_beyond_its_own_slots() {
        for n in [10, 100, 1000] {
            let k = keys(n);
            let all = targets(&k, |_| 1);
            let gone = all[n / 2];
            let rest: Vec<_> = all
                .iter()
                .copied()
                .filter(|t| t.index != gone.index)
                .collect();
            let ideal = 1.0 / n as f64;
            let mut measured = [0.0; 2];
            for (slot, builder) in [build, build_vanilla].into_iter().enumerate() {
                let before = builder(&all, M).unwrap();
                let after = builder(&rest, M).unwrap();
                let d = disruption(&before, &after);
                let extra = collateral(&before, &after, gone.index);
                eprintln!(
                    "disruption n={n} {}: {d:.5} (ideal {ideal:.5}, collateral {extra:.5})",
                    ["weighted", "vanilla"][slot]
                );
                let own = slots_of(&before, gone.index) as f64 / f64::from(M);
                assert!(
                    (d - (own + extra)).abs() < 1e-12,
                    "n={n}: own slots must all move"
                );
                // Maglev's greedy fill cascades a little when a target leaves; at
                // M = 65537 that costs about 0.6 % of the ring whatever N is, so it only
                // stays within 2x of 1/N while M is at least ~650x N.
                assert!(extra <= 0.01, "n={n}: collateral {extra}");
                if n <= 100 {
                    assert!(d <= ideal * 2.0, "n={n}: {d} vs ideal {ideal}");
                }
                measured[slot] = d;
            }
            assert!(measured[0] <= measured[1] * 1.1, "n={n}: {measured:?}");
        }
    }

    #[test]
    fn larger_ring_brings_disruption_closer_to_ideal() {
        let n = 100;
        let k = keys(n);
        let all = targets(&k, |_| 1);
        let rest = &all[1..];
        let removal = |m| disruption(&build(&all, m).unwrap(), &build(rest, m).unwrap());
        let (small, large) = (removal(M), removal(655_373));
        eprintln!("n={n} removal: m={M} {small:.5}, m=655373 {large:.5}");
        assert!(large < small, "{large} vs {small}");
        assert!(large <= 1.25 / n as f64, "{large}");
    }

    #[test]
    fn shares_follow_weights() {
        for weights in [[1u32, 2, 3], [1, 2, 1], [5, 5, 90]] {
            let k = keys(3);
            let t = targets(&k, |i| weights[i]);
            let table = build(&t, M).unwrap();
            let total: u32 = weights.iter().sum();
            for target in &t {
                let share = slots_of(&table, target.index) as f64 / f64::from(M);
                let want = f64::from(target.weight) / f64::from(total);
                assert!(
                    (share - want).abs() <= want * 0.01,
                    "weights {weights:?}: target {} has {share}, want {want}",
                    target.index
                );
            }
            assert!(balance(&table, &t) <= 1.01);
        }
    }

    #[test]
    fn extreme_weights_neither_overflow_nor_starve_heavy_targets() {
        let k = keys(3);
        let t = targets(&k, |i| [u32::MAX, 1, u32::MAX - 1][i]);
        let table = build(&t, 101).unwrap();
        // The weight-1 target's share is far below one slot.
        assert_eq!(slots_of(&table, 2), 0);
        let (a, b) = (slots_of(&table, 1), slots_of(&table, 3));
        assert_eq!(a + b, 101);
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
    }

    #[test]
    fn mixed_weights_stay_balanced_and_stable() {
        let n = 200;
        let k = keys(n);
        let all = targets(&k, |i| (i % 4) as u32 + 1);
        let table = build(&all, M).unwrap();
        let b = balance(&table, &all);
        assert!(b <= 1.05, "balance {b}");
        let total: u32 = all.iter().map(|t| t.weight).sum();
        // Remove a light and a heavy target in turn: only their own slots plus the
        // same small collateral as with equal weights may move.
        for gone in [all[100], all[103]] {
            let rest: Vec<_> = all
                .iter()
                .copied()
                .filter(|t| t.index != gone.index)
                .collect();
            let after = build(&rest, M).unwrap();
            let d = disruption(&table, &after);
            let extra = collateral(&table, &after, gone.index);
            let ideal = f64::from(gone.weight) / f64::from(total);
            eprintln!(
                "mixed weights: remove w={} -> {d:.5} (ideal {ideal:.5}, collateral {extra:.5})",
                gone.weight
            );
            assert!(
                d >= ideal * 0.95,
                "weight {}: {d} below its share",
                gone.weight
            );
            assert!(extra <= 0.01, "weight {}: collateral {extra}", gone.weight);
        }
        // Raising one weight moves about the share it gains, plus the same collateral.
        let mut heavier = all.clone();
        heavier[100].weight += 1;
        let d = disruption(&table, &build(&heavier, M).unwrap());
        let gain = f64::from(heavier[100].weight) / f64::from(total + 1)
            - f64::from(all[100].weight) / f64::from(total);
        eprintln!("mixed weights: weight 1 -> 2 moves {d:.5} (ideal {gain:.5})");
        assert!(d >= gain * 0.95 && d <= gain + 0.01, "{d} vs {gain}");
    }

    #[test]
    fn scaling_all_weights_keeps_the_table() {
        let k = keys(30);
        let base = targets(&k, |i| (i % 5) as u32 + 1);
        let scaled = targets(&k, |i| ((i % 5) as u32 + 1) * 7);
        assert_eq!(build(&base, M).unwrap(), build(&scaled, M).unwrap());
    }

    #[test]
    fn input_order_does_not_matter() {
        let k = keys(100);
        let t = targets(&k, |i| (i % 3) as u32 + 1);
        let mut shuffled = t.clone();
        shuffled.reverse();
        shuffled.rotate_left(37);
        shuffled.swap(3, 71);
        assert_ne!(t, shuffled);
        assert_eq!(build(&t, M).unwrap(), build(&shuffled, M).unwrap());
        assert_eq!(
            build_vanilla(&t, M).unwrap(),
            build_vanilla(&shuffled, M).unwrap()
        );
    }

    #[test]
    fn table_is_pinned_across_versions() {
        // Nodes running different builds must agree; this catches a change in the
        // hash crate, the hash keys or the fill order.
        let k = keys(3);
        let t = targets(&k, |i| i as u32 + 1);
        assert_eq!(build(&t, 17).unwrap(), PINNED_WEIGHTED);
        assert_eq!(build_vanilla(&t, 17).unwrap(), PINNED_VANILLA);
    }
    const PINNED_WEIGHTED: [u32; 17] = [3, 3, 1, 2, 2, 3, 2, 3, 3, 2, 3, 3, 3, 2, 1, 1, 2];
    const PINNED_VANILLA: [u32; 17] = [3, 1, 1, 2, 1, 3, 2, 3, 2, 2, 3, 2, 3, 2, 1, 1, 1];

    #[test]
    fn every_weighted_target_gets_slots_at_100_per_target() {
        let n = (M / 100) as usize;
        let k = keys(n);
        for t in [targets(&k, |_| 1), targets(&k, |i| (i % 4) as u32 + 1)] {
            let table = build(&t, M).unwrap();
            for target in &t {
                assert!(
                    slots_of(&table, target.index) > 0,
                    "target {}",
                    target.index
                );
            }
        }
    }

    #[test]
    fn balance_and_disruption_on_known_tables() {
        let k = keys(2);
        let t = targets(&k, |i| i as u32 + 1); // weights 1 and 2
        // Ideal shares are 2 and 4 slots of 6; target 1 holds 3 → 1.5.
        assert_eq!(balance(&[1, 1, 1, 2, 2, 2], &t), 1.5);
        assert_eq!(balance(&[1, 1, 2, 2, 2, 2], &t), 1.0);
        assert!(balance(&[1, 2], &targets(&k, |_| 0)).is_nan());
        assert_eq!(disruption(&[1, 2, 3, 4], &[1, 2, 4, 4]), 0.25);
        assert_eq!(disruption(&[], &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "same ring size")]
    fn disruption_rejects_different_ring_sizes() {
        disruption(&[1, 2, 3], &[1, 2]);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "timing is only meaningful in release builds"
    )]
    fn builds_1000_targets_quickly() {
        let k = keys(1000);
        let equal = targets(&k, |_| 1);
        // One heavy target among light ones forces the most rounds (about M).
        let skewed = targets(&k, |i| if i == 0 { 1000 } else { 1 });
        for t in [equal, skewed] {
            let start = std::time::Instant::now();
            let table = build(&t, M).unwrap();
            let elapsed = start.elapsed();
            eprintln!("build n=1000 m={M}: {elapsed:?}");
            assert_eq!(table.len(), M as usize);
            assert!(elapsed.as_millis() < 100, "took {elapsed:?}");
        }
    }
}
