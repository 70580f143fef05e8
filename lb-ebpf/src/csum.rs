//! Internet checksums (RFC 1071), and incremental updates (RFC 1624).

/// Folds a 64-bit one's complement sum to 16 bits.
#[inline(always)]
pub fn fold_sum(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a one's complement sum and complements it: the checksum field's value.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    !fold_sum(sum)
}

/// The checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    fold(sum)
}

/// `csum` (as on the wire, big-endian value) after a 16-bit word changes from `old` to `new`.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!csum) as u64 + (!old) as u64 + new as u64;
    fold(sum)
}

/// One's complement sum of 16-byte address, as 16-bit words (for pseudo headers).
#[inline(always)]
pub fn sum_addr(a: &[u8; 16]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 16 {
        sum += u16::from_be_bytes([a[i], a[i + 1]]) as u64;
        i += 2;
    }
    sum
}
