//! The fixed hash functions behind Maglev's permutations and the per-packet flow hash.
//!
//! Two nodes (or two versions of vswitch during a rolling upgrade) must build the same
//! Maglev table from the same backends, or a flow that moves between them changes backend.
//! So nothing here may depend on the process, the platform or a dependency's version:
//! - no `RandomState`, and no `std::hash::Hash` either: the bytes `Hash` feeds a hasher for a
//!   `str` or a tuple are not a stable interface;
//! - not foldhash's `FixedState` either: its crate docs say not to use it if "you expect
//!   foldhash to have a consistent output across versions or platforms", and its
//!   `folded_multiply` does take another path on targets without a 64×64→128-bit multiply,
//!   32-bit ones among them (foldhash 0.2.0, `src/lib.rs`).
//!
//! Instead, two small functions whose output is pinned by tests:
//! - [`siphash24`]: SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
//!   INDOCRYPT 2012), checked against the paper's test vector and against std's (deprecated)
//!   `SipHasher`, which is SipHash-2-4. It hashes backend identities (a few dozen bytes, once
//!   per backend per table build), where speed does not matter and a well-known function
//!   does. Linux's IPVS `mh` scheduler also uses SipHash (`hsiphash`) for its keys.
//! - [`fold`]: a 64×64→128-bit multiply whose halves are XORed, the mixing step of
//!   wyhash/foldhash-style hashes, used by [`crate::flow`] for the per-packet hash. Pure
//!   integer arithmetic: the same on every target.

/// Multiplies `a` by `b` as 128-bit integers and XORs the two 64-bit halves of the product.
///
/// Every input bit can reach every output bit; a zero operand loses the other one, which is
/// why callers XOR a constant into each operand.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low and high halves of the 128-bit product are taken on purpose"
)]
pub(crate) const fn fold(a: u64, b: u64) -> u64 {
    let product = (a as u128) * (b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

/// One SipRound on the four state words.
#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `data` under the 128-bit key `(k0, k1)` (each half read little-endian, as
/// in the reference implementation).
pub(crate) fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575, // "somepseu"
        k1 ^ 0x646f_7261_6e64_6f6d, // "dorandom"
        k0 ^ 0x6c79_6765_6e65_7261, // "lygenera"
        k1 ^ 0x7465_6462_7974_6573, // "tedbytes"
    ];
    let mut compress = |m: u64| {
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    };
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    for word in words {
        if let Some(bytes) = word.first_chunk::<8>() {
            compress(u64::from_le_bytes(*bytes));
        }
    }
    // The last block: the remaining bytes, and the message length mod 256 in the top byte.
    let mut last = u64::from(data.len().to_le_bytes()[0]) << 56;
    for (i, byte) in tail.iter().enumerate() {
        last |= u64::from(*byte) << (8 * i);
    }
    compress(last);
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference key 00 01 02 … 0f.
    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    #[test]
    fn siphash24_matches_the_paper() {
        // Appendix A of the SipHash paper: the 15-byte message 00 01 … 0e.
        let message: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(K0, K1, &message), 0xa129_ca61_49be_45e5);
        // The reference implementation's vectors.h, first entry (empty message).
        assert_eq!(siphash24(K0, K1, &[]), 0x726f_db47_dd0e_0e31);
    }

    #[allow(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4: the oracle for our copy"
    )]
    fn std_siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut hasher = std::hash::SipHasher::new_with_keys(k0, k1);
        hasher.write(data);
        hasher.finish()
    }

    #[test]
    fn fold_is_the_xor_of_the_product_halves() {
        assert_eq!(fold(0, u64::MAX), 0);
        assert_eq!(fold(1, 5), 5);
        // (2^64 - 1)^2 = 2^128 - 2^65 + 1: high half 2^64 - 2, low half 1.
        assert_eq!(fold(u64::MAX, u64::MAX), (u64::MAX - 1) ^ 1);
    }

    proptest! {
        #[test]
        fn siphash24_agrees_with_std(
            k0 in any::<u64>(),
            k1 in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            prop_assert_eq!(siphash24(k0, k1, &data), std_siphash24(k0, k1, &data));
        }
    }
}
