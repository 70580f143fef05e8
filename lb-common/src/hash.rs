//! The flow hash: MurmurHash3 (x86, 32-bit) over the flow key's words.
//!
//! Written here rather than taken from a crate because the same function must run inside the XDP
//! program (no loops the verifier has to reason about, no allocation) and in userspace, where
//! tests predict which backend a packet gets. Every node computes the same value for the same
//! flow, so with the same Maglev table every node picks the same backend.

use crate::{AF_INET, FlowKey};

const SEED: u32 = 0x786c_6221; // "xlb!"

#[inline(always)]
fn round(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// Hash of the whole 5-tuple (source, destination, ports, protocol). An IPv4 key hashes the
/// words its addresses have (the other twelve bytes of each are zero): 4 rounds, not 10, on the
/// path of every new flow.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = (key.sport_be as u32) << 16 | key.dport_be as u32;
    let mut h = SEED;
    if key.family == AF_INET {
        h = round(h, word(&key.src, 0));
        h = round(h, word(&key.dst, 0));
        h = round(h, ports);
        h = round(h, key.proto as u32);
        return finish(h, 16);
    }
    h = round(h, word(&key.src, 0));
    h = round(h, word(&key.src, 4));
    h = round(h, word(&key.src, 8));
    h = round(h, word(&key.src, 12));
    h = round(h, word(&key.dst, 0));
    h = round(h, word(&key.dst, 4));
    h = round(h, word(&key.dst, 8));
    h = round(h, word(&key.dst, 12));
    h = round(h, ports);
    h = round(h, key.proto as u32);
    finish(h, 40)
}

/// Hash of the source address only (NLB `source_ip` stickiness, and fragments); an IPv4 key's
/// one word, as [`flow_hash`].
#[inline(always)]
pub fn source_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    h = round(h, word(&key.src, 0));
    if key.family == AF_INET {
        return finish(h, 4);
    }
    h = round(h, word(&key.src, 4));
    h = round(h, word(&key.src, 8));
    h = round(h, word(&key.src, 12));
    finish(h, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_last: u8, sport: u16) -> FlowKey {
        let mut k = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport_be: sport.to_be(),
            dport_be: 80u16.to_be(),
            proto: crate::IPPROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        };
        k.src[..4].copy_from_slice(&[198, 18, 0, src_last]);
        k.dst[..4].copy_from_slice(&[198, 18, 100, 1]);
        k
    }

    #[test]
    fn flow_hash_depends_on_ports_source_hash_does_not() {
        assert_ne!(flow_hash(&key(2, 1000)), flow_hash(&key(2, 1001)));
        assert_eq!(source_hash(&key(2, 1000)), source_hash(&key(2, 1001)));
        assert_ne!(source_hash(&key(2, 1000)), source_hash(&key(3, 1000)));
    }

    #[test]
    fn ipv6_keys_hash_every_word() {
        let mut a = key(2, 1000);
        a.family = crate::AF_INET6;
        let mut b = a;
        b.src[15] = 1;
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_ne!(source_hash(&a), source_hash(&b));
        let mut c = a;
        c.dst[15] = 1;
        assert_ne!(flow_hash(&a), flow_hash(&c));
    }

    #[test]
    fn flow_hash_spreads_evenly_over_buckets() {
        // 64k flows from one client over 16 buckets: each within 5% of the mean.
        let mut buckets = [0u32; 16];
        for port in 0..65535u16 {
            buckets[(flow_hash(&key(2, port)) % 16) as usize] += 1;
        }
        let mean = 65535.0 / 16.0;
        for b in buckets {
            assert!((b as f64 - mean).abs() / mean < 0.05, "{buckets:?}");
        }
    }
}
