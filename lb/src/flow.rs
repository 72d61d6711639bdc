//! The per-packet flow hash that picks a Maglev slot.
//!
//! # What and why
//! A load balancer hashes each new flow's 5-tuple and looks the hash up in the service's
//! [`MaglevTable`](crate::MaglevTable). The hash must be
//! - **the same on every node and every version** (for the same seed), or Maglev's promise
//!   that any node picks the same backend for a flow is lost; so it is a fixed function of
//!   the key's *values* (never of `std::hash::Hash` output or a random state) and tests pin
//!   its output;
//! - **fast**: it runs for every packet that misses the connection table; two 64×64→128-bit
//!   multiplies for IPv4, four for IPv6, no allocation, no branch on the data beyond the
//!   address family;
//! - **well spread in its high bits**, which [`MaglevTable::lookup`](crate::MaglevTable::lookup)
//!   uses. Tests check the spread of realistic keys (one client's ephemeral ports, a /16 of
//!   clients) over backends, and the avalanche of single-bit changes.
//!
//! It is not a MAC: with a known seed, someone can build flows that land on one backend, as
//! with any non-cryptographic hash. A secret per-cluster seed makes that guesswork; but the
//! seed must be the same on every node of the cluster.
//!
//! # Construction
//! The key is packed into 64-bit words (IPv4: both addresses in one word; IPv6: two words per
//! address) plus one word of ports, protocol and family. Words are absorbed two at a time by
//! `fold` (multiply to 128 bits, XOR the halves), each operand XORed with a different
//! constant (the first hexadecimal digits of π, the Blowfish P-array) so that no operand is
//! zero for ordinary inputs and swapped fields hash differently; a last `fold` by an odd
//! constant mixes the result. [`client_hash`] hashes the source address alone, with its own
//! constant in place of the ports word, for ClientIP session affinity: every flow of a client
//! then gets the same backend, which Cilium also does ("Maglev will not take the source port
//! as input for its hashing" with affinity, cilium GH#26709) and Linux IPVS `mh` does by
//! default (source address only unless `mh-port`).
//!
//! No canonicalisation: `::ffff:192.0.2.1` and `192.0.2.1` are different clients. A key with
//! one IPv4 and one IPv6 address (which no packet carries) hashes as IPv6 with the IPv4
//! address in its IPv4-mapped form; it does not panic.

use std::net::IpAddr;

use crate::hash::fold;

/// π's hexadecimal digits, 64 bits at a time (the Blowfish P-array).
const PI: [u64; 9] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
];

/// The family marker in the ports word (bits 0..8).
const FAMILY_V4: u64 = 4;
const FAMILY_V6: u64 = 6;
/// Stands in for the ports word in [`client_hash`] (bits 8..16), so a client hash never
/// equals the hash of a 5-tuple.
const CLIENT_ONLY: u64 = 0xc1 << 8;

/// A flow's 5-tuple as the load balancer sees it: the client's source, the virtual IP and
/// port it connects to, and the IP protocol number (6 TCP, 17 UDP, 132 SCTP).
///
/// Both address families work; an ICMP flow uses ports 0 (or the echo identifier, as the
/// caller chooses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source (client) address.
    pub src: IpAddr,
    /// Destination (virtual) address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl FlowKey {
    /// A key from its parts.
    pub const fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
        }
    }
}

/// An IPv6 address (or an IPv4 one in its IPv4-mapped form) as two words, high then low.
#[inline(always)]
fn v6_words(addr: IpAddr) -> (u64, u64) {
    let bits = match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let [high, low] = [bits >> 64, bits & u128::from(u64::MAX)];
    // Both halves fit 64 bits by construction.
    (
        u64::try_from(high).unwrap_or(0),
        u64::try_from(low).unwrap_or(0),
    )
}

/// The hash of a flow under `seed`; feed it to
/// [`MaglevTable::lookup`](crate::MaglevTable::lookup).
///
/// Deterministic across processes, platforms and versions of this crate for a given
/// `seed` (pinned by tests). No allocation, no panic.
#[inline]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u64 {
    let ports =
        u64::from(key.src_port) << 48 | u64::from(key.dst_port) << 32 | u64::from(key.proto) << 16;
    let mixed = match (key.src, key.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let addrs = u64::from(src.to_bits()) << 32 | u64::from(dst.to_bits());
            fold(addrs ^ seed ^ PI[0], ports ^ FAMILY_V4 ^ PI[1])
        }
        (src, dst) => {
            let (src_high, src_low) = v6_words(src);
            let (dst_high, dst_low) = v6_words(dst);
            let h = fold(src_high ^ seed ^ PI[0], src_low ^ PI[2]);
            let h = fold(dst_high ^ h ^ PI[3], dst_low ^ PI[4]);
            fold(ports ^ FAMILY_V6 ^ h ^ PI[1], seed ^ PI[5])
        }
    };
    fold(mixed ^ PI[6], PI[8])
}

/// The hash of a client address alone under `seed`, for ClientIP session affinity: every
/// flow from `src` maps to the same slot of a given table.
///
/// Deterministic like [`flow_hash`]; no allocation, no panic.
#[inline]
pub fn client_hash(src: IpAddr, seed: u64) -> u64 {
    let mixed = match src {
        IpAddr::V4(v4) => fold(
            u64::from(v4.to_bits()) ^ seed ^ PI[0],
            CLIENT_ONLY ^ FAMILY_V4 ^ PI[1],
        ),
        IpAddr::V6(v6) => {
            let (high, low) = v6_words(IpAddr::V6(v6));
            let h = fold(high ^ seed ^ PI[0], low ^ PI[2]);
            fold(CLIENT_ONLY ^ FAMILY_V6 ^ h ^ PI[1], seed ^ PI[5])
        }
    };
    fold(mixed ^ PI[6], PI[8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MaglevTable, TableSize};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
        FlowKey::new(src, sport, dst, dport, 6)
    }

    #[test]
    fn pinned_values() {
        // Part of the cross-node, cross-version contract (see the module docs).
        let key4 = tcp(v4(192, 0, 2, 1), 40000, v4(198, 51, 100, 7), 80);
        let key6 = tcp(v6("2001:db8::1"), 40000, v6("2001:db8:1::7"), 443);
        let got = [
            flow_hash(&key4, 0),
            flow_hash(&key4, 1),
            flow_hash(&key6, 0),
            client_hash(key4.src, 0),
            client_hash(key6.src, 0),
        ];
        // Checked against an independent Python transcription of this module's docs.
        assert_eq!(
            got,
            [
                16_989_720_016_274_801_559,
                10_019_172_081_519_226_940,
                1_888_625_074_538_181_144,
                5_791_853_814_652_589_380,
                16_438_683_774_254_221_031,
            ]
        );
    }

    #[test]
    fn every_field_matters() {
        let base = tcp(v4(10, 0, 0, 1), 1000, v4(10, 0, 0, 2), 80);
        let h = flow_hash(&base, 0);
        let variants = [
            FlowKey {
                src: v4(10, 0, 0, 3),
                ..base
            },
            FlowKey {
                dst: v4(10, 0, 0, 3),
                ..base
            },
            FlowKey {
                src_port: 1001,
                ..base
            },
            FlowKey {
                dst_port: 81,
                ..base
            },
            FlowKey { proto: 17, ..base },
            // Swapped endpoints.
            tcp(base.dst, base.dst_port, base.src, base.src_port),
            // Same values, other family.
            FlowKey {
                src: IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
                dst: IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped()),
                ..base
            },
        ];
        for variant in variants {
            assert_ne!(flow_hash(&variant, 0), h, "{variant:?}");
        }
        assert_ne!(flow_hash(&base, 1), h);
        assert_ne!(client_hash(base.src, 0), h);
    }

    #[test]
    fn client_hash_ignores_everything_but_the_source() {
        let a = v6("2001:db8::42");
        assert_eq!(client_hash(a, 7), client_hash(a, 7));
        assert_ne!(client_hash(a, 7), client_hash(v6("2001:db8::43"), 7));
        assert_ne!(client_hash(a, 7), client_hash(a, 8));
        assert_ne!(
            client_hash(v4(192, 0, 2, 1), 0),
            client_hash(v4(192, 0, 2, 2), 0)
        );
    }

    #[test]
    fn mixed_families_do_not_panic() {
        let key = tcp(v4(192, 0, 2, 1), 1, v6("2001:db8::1"), 2);
        let _ = flow_hash(&key, 0);
    }

    /// Each backend's share of `hashes` through a table of `n` equal backends, as the ratio
    /// max/min of flows per backend.
    fn spread(n: usize, hashes: impl Iterator<Item = u64>) -> f64 {
        let backends: Vec<(String, u32)> = (0..n).map(|i| (format!("b{i}"), 1)).collect();
        let table = MaglevTable::build(&backends, TableSize::DEFAULT).unwrap();
        let mut counts = vec![0u32; n];
        for hash in hashes {
            counts[table.lookup(hash).unwrap()] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        f64::from(*max) / f64::from((*min).max(1))
    }

    #[test]
    fn one_clients_ports_spread_evenly() {
        // One client, 60,000 consecutive ephemeral ports, 10 backends: 6,000 flows expected
        // per backend, binomial σ ≈ 73. A max/min ratio of 1.1 is about ±4σ.
        let vip = v4(203, 0, 113, 10);
        let hashes =
            (1024..61_024u16).map(|port| flow_hash(&tcp(v4(10, 1, 2, 3), port, vip, 443), 0));
        let ratio = spread(10, hashes);
        assert!(ratio < 1.1, "max/min {ratio}");
        let hashes = (1024..61_024u16)
            .map(|port| flow_hash(&tcp(v6("fd00::1:2:3"), port, v6("fd00::10"), 443), 99));
        let ratio = spread(10, hashes);
        assert!(ratio < 1.1, "max/min {ratio}");
    }

    #[test]
    fn a_subnet_of_clients_spreads_evenly() {
        // 65,536 clients of a /16, same port: affinity-style hashing and full 5-tuples.
        let clients = || {
            (0..=u16::MAX).map(|i| {
                let [a, b] = i.to_be_bytes();
                v4(172, 16, a, b)
            })
        };
        let ratio = spread(16, clients().map(|c| client_hash(c, 0)));
        assert!(ratio < 1.1, "client_hash max/min {ratio}");
        let vip = v4(203, 0, 113, 10);
        let ratio = spread(16, clients().map(|c| flow_hash(&tcp(c, 5555, vip, 80), 0)));
        assert!(ratio < 1.1, "flow_hash max/min {ratio}");
        let ratio = spread(
            16,
            (0..=u16::MAX).map(|i| {
                let c = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
                client_hash(c, 0)
            }),
        );
        assert!(ratio < 1.1, "client_hash v6 max/min {ratio}");
    }

    #[test]
    fn single_bit_changes_avalanche() {
        // For each input bit of an IPv4 and an IPv6 key, flip it in 64 keys and count the
        // output bits that change: a good mix changes about 32 of 64 on average, and every
        // output bit changes about half of the time.
        let mut per_output_bit = [0u32; 64];
        let mut trials = 0u32;
        let mut total_flips = 0u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = fold(state ^ PI[3], PI[7]);
            state
        };
        for _ in 0..64 {
            let (r, s) = (next(), next());
            // Random words, cut into fields.
            let [r0, r1, r2, r3, r4, r5, r6, r7] = r.to_be_bytes();
            let [s0, s1, s2, s3, ..] = s.to_be_bytes();
            let a4 = tcp(
                IpAddr::V4(Ipv4Addr::new(r0, r1, r2, r3)),
                u16::from_be_bytes([r4, r5]),
                IpAddr::V4(Ipv4Addr::new(s0, s1, s2, s3)),
                u16::from_be_bytes([r6, r7]),
            );
            let a6 = tcp(
                IpAddr::V6(Ipv6Addr::from_bits(u128::from(r) << 64 | u128::from(s))),
                u16::from_be_bytes([s0, s1]),
                IpAddr::V6(Ipv6Addr::from_bits(u128::from(s) << 64 | u128::from(r))),
                u16::from_be_bytes([s2, s3]),
            );
            for key in [a4, a6] {
                let h = flow_hash(&key, 0);
                let bits = match key.src {
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 128,
                };
                let mut flipped = Vec::new();
                for bit in 0..bits {
                    let flip = |addr: IpAddr| match addr {
                        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() ^ (1 << bit))),
                        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() ^ (1 << bit))),
                    };
                    flipped.push(FlowKey {
                        src: flip(key.src),
                        ..key
                    });
                    flipped.push(FlowKey {
                        dst: flip(key.dst),
                        ..key
                    });
                }
                for bit in 0..16 {
                    flipped.push(FlowKey {
                        src_port: key.src_port ^ (1 << bit),
                        ..key
                    });
                    flipped.push(FlowKey {
                        dst_port: key.dst_port ^ (1 << bit),
                        ..key
                    });
                }
                for bit in 0..8 {
                    flipped.push(FlowKey {
                        proto: key.proto ^ (1 << bit),
                        ..key
                    });
                }
                for other in flipped {
                    let diff = h ^ flow_hash(&other, 0);
                    total_flips += u64::from(diff.count_ones());
                    trials += 1;
                    for (i, count) in per_output_bit.iter_mut().enumerate() {
                        *count += u32::try_from((diff >> i) & 1).unwrap();
                    }
                }
            }
        }
        let mean = total_flips as f64 / f64::from(trials);
        assert!((31.0..33.0).contains(&mean), "mean flipped bits {mean}");
        for (i, count) in per_output_bit.iter().enumerate() {
            let p = f64::from(*count) / f64::from(trials);
            assert!(
                (0.45..0.55).contains(&p),
                "output bit {i} flips with p = {p}"
            );
        }
    }

    proptest! {
        #[test]
        fn deterministic_and_total(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            v4_src in any::<bool>(), v4_dst in any::<bool>(),
            src_port in any::<u16>(), dst_port in any::<u16>(), proto in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let addr = |bytes: [u8; 16], v4: bool| if v4 {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(bytes))
            };
            let key = FlowKey::new(addr(src, v4_src), src_port, addr(dst, v4_dst), dst_port, proto);
            prop_assert_eq!(flow_hash(&key, seed), flow_hash(&key.clone(), seed));
            prop_assert_eq!(client_hash(key.src, seed), client_hash(key.src, seed));
        }
    }
}
