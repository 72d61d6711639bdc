//! The Internet checksum (RFC 1071) and completion of partial checksums.
//!
//! A frame the kernel hands over with `VIRTIO_NET_HDR_F_NEEDS_CSUM` (its CHECKSUM_PARTIAL) has,
//! in the L4 checksum field, the folded but *not* complemented sum of the pseudo-header; the rest
//! of the segment is left for the device. [`complete_partial_checksum`] does what the kernel's
//! `skb_checksum_help` does: sum from `csum_start` to the end of the frame (the field included),
//! complement, and store the result at `csum_start + csum_offset`. A computed 0 is stored as
//! `0xffff` (the kernel's `CSUM_MANGLED_0`): for UDP, 0 would mean "no checksum" (RFC 768), and
//! for TCP both values are the same number in ones' complement.
//!
//! [`update`] changes a checksum after one 16-bit word of the covered data changed, without
//! summing the data again (RFC 1624): a router uses it for the TTL it decrements.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use nat::checksum::fold;

/// The ones' complement sum of `data` read as big-endian 16-bit words (an odd last byte is
/// padded with a zero), folded to 16 bits but not complemented. The loop itself is
/// [`nat::checksum::sum`]: one implementation for the NAT rewrites and the datapath.
///
/// Every call counts its bytes in the thread's [`cost`](crate::cost) tally.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    crate::cost::checksummed(data.len());
    nat::checksum::sum(data)
}

/// Adds ones' complement sums (e.g. a pseudo-header sum and a data sum).
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The Internet checksum of `data`: the complement of [`sum`].
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// The checksum after one 16-bit word of the data it covers changed from `old` to `new`,
/// computed from the old checksum alone (RFC 1624 section 3, equation 3:
/// `HC' = ~(~HC + ~m + m')`). Unlike equation 2 of RFC 1141, it never turns a correct
/// checksum into `0xffff` (-0) where a full recompute gives `0x0000`.
#[inline]
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !combine(&[!checksum, !old, new])
}

/// The sum of the IPv4 pseudo-header (RFC 768, RFC 793): source, destination, zero, protocol,
/// and the L4 length.
pub fn pseudo_header_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u16 {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&src.octets());
    bytes[4..8].copy_from_slice(&dst.octets());
    bytes[9] = protocol;
    bytes[10..12].copy_from_slice(&l4_len.to_be_bytes());
    sum(&bytes)
}

/// The sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source, destination, the 32-bit
/// upper-layer length, and the next header.
pub fn pseudo_header_ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4_len: u32) -> u16 {
    let mut bytes = [0u8; 40];
    bytes[0..16].copy_from_slice(&src.octets());
    bytes[16..32].copy_from_slice(&dst.octets());
    bytes[32..36].copy_from_slice(&l4_len.to_be_bytes());
    bytes[39] = next_header;
    sum(&bytes)
}

/// Why a partial checksum could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumError {
    /// `csum_start + csum_offset + 2` is past the end of the frame.
    OutOfFrame {
        /// `csum_start` as given.
        start: usize,
        /// `csum_offset` as given.
        offset: usize,
        /// The frame's length.
        len: usize,
    },
}

impl fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChecksumError::OutOfFrame { start, offset, len } => write!(
                f,
                "checksum field at {start}+{offset} does not fit in a {len}-byte frame"
            ),
        }
    }
}

impl std::error::Error for ChecksumError {}

/// Finishes a CHECKSUM_PARTIAL frame in place: `frame` is the Ethernet frame (after the
/// `virtio_net_hdr`), whose checksum field at `csum_start + csum_offset` holds the pseudo-header
/// sum. Returns the checksum stored.
///
/// # Errors
/// [`ChecksumError::OutOfFrame`] when the field does not lie inside the frame; the frame is
/// left untouched.
pub fn complete_partial_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<u16, ChecksumError> {
    let out_of_frame = ChecksumError::OutOfFrame {
        start: csum_start,
        offset: csum_offset,
        len: frame.len(),
    };
    let field = csum_start
        .checked_add(csum_offset)
        .filter(|&at| at.checked_add(2).is_some_and(|end| end <= frame.len()))
        .ok_or(out_of_frame)?;
    let segment = frame.get(csum_start..).ok_or(out_of_frame)?;
    let value = match !sum(segment) {
        0 => 0xffff,
        value => value,
    };
    frame
        .get_mut(field..field + 2)
        .ok_or(out_of_frame)?
        .copy_from_slice(&value.to_be_bytes());
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, TcpPacket, UdpPacket};

    /// The example of RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
    static RFC1071_EXAMPLE: [u8; 8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];

    /// An IPv4 header (20 bytes) with a correct header checksum (the classic textbook example):
    /// 192.168.0.1 -> 192.168.0.199, UDP, total length 0x73.
    static IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn rfc1071_example() {
        assert_eq!(sum(&RFC1071_EXAMPLE), 0xddf2);
        assert_eq!(checksum(&RFC1071_EXAMPLE), !0xddf2);
    }

    #[test]
    fn valid_header_sums_to_all_ones() {
        assert_eq!(sum(&IPV4_HEADER), 0xffff);
        assert_eq!(checksum(&IPV4_HEADER), 0);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn combine_wraps_carries() {
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
        assert_eq!(combine(&[0x8000, 0x8000]), 0x0001);
        assert_eq!(combine(&[]), 0);
    }

    /// The example of RFC 1624 section 4: m = 0x5555 becomes 0x3285 while the other words
    /// sum to 0xcd7a; equation 3 gives 0x0000, as a full recompute does.
    #[test]
    fn rfc1624_example() {
        let before = !combine(&[0xcd7a, 0x5555]);
        assert_eq!(before, 0xdd2f);
        assert_eq!(update(before, 0x5555, 0x3285), 0x0000);
        assert_eq!(update(before, 0x5555, 0x3285), !combine(&[0xcd7a, 0x3285]));
    }

    #[test]
    fn complete_rejects_out_of_frame() {
        let mut frame = [0u8; 20];
        let before = frame;
        for (start, offset) in [
            (19, 0),
            (18, 1),
            (21, 0),
            (0, 19),
            (usize::MAX, 1),
            (1, usize::MAX),
        ] {
            assert!(
                complete_partial_checksum(&mut frame, start, offset).is_err(),
                "{start}+{offset}"
            );
        }
        assert_eq!(frame, before, "nothing written on error");
        assert!(complete_partial_checksum(&mut frame, 18, 0).is_ok());
        assert!(complete_partial_checksum(&mut frame, 0, 18).is_ok());
    }

    #[test]
    fn complete_stores_mangled_zero() {
        // Sum of everything from start (the field holding 0xffff, the rest zero) is 0xffff,
        // so the complement is 0, which must be stored as 0xffff.
        let mut frame = [0u8; 8];
        frame[2] = 0xff;
        frame[3] = 0xff;
        assert_eq!(complete_partial_checksum(&mut frame, 0, 2), Ok(0xffff));
        assert_eq!(&frame[2..4], &[0xff, 0xff]);
    }

    /// Builds Ethernet(14) + IPv4(20) + L4 with `payload`, leaves the pseudo-header sum in the
    /// checksum field as the kernel does for CHECKSUM_PARTIAL, and returns the frame with
    /// (csum_start, csum_offset).
    fn partial_frame(
        tcp: bool,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
        ports: (u16, u16),
    ) -> (Vec<u8>, usize, usize) {
        let l4_header = if tcp { 20 } else { 8 };
        let l4_len = l4_header + payload.len();
        let mut frame = vec![0u8; 34 + l4_len];
        let start = 34;
        frame[start + l4_header..].copy_from_slice(payload);
        let l4_len16 = u16::try_from(l4_len).unwrap();
        let pseudo = pseudo_header_ipv4(src, dst, if tcp { 6 } else { 17 }, l4_len16).to_be_bytes();
        let offset = if tcp {
            let mut packet = TcpPacket::new_unchecked(&mut frame[start..]);
            packet.set_src_port(ports.0);
            packet.set_dst_port(ports.1);
            packet.set_header_len(20);
            packet.set_seq_number(smoltcp::wire::TcpSeqNumber(0x0102_0304));
            16
        } else {
            let mut packet = UdpPacket::new_unchecked(&mut frame[start..]);
            packet.set_src_port(ports.0);
            packet.set_dst_port(ports.1);
            packet.set_len(l4_len16);
            6
        };
        frame[start + offset..start + offset + 2].copy_from_slice(&pseudo);
        (frame, start, offset)
    }

    proptest! {
        #[test]
        fn completion_matches_full_recompute(
            tcp in any::<bool>(),
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            ports in any::<(u16, u16)>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
        ) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let (mut frame, start, offset) = partial_frame(tcp, src, dst, &payload, ports);
            let stored = complete_partial_checksum(&mut frame, start, offset).unwrap();
            let (src_ip, dst_ip) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
            // The completed frame verifies ...
            if tcp {
                prop_assert!(TcpPacket::new_checked(&frame[start..]).unwrap()
                    .verify_checksum(&src_ip, &dst_ip));
            } else {
                prop_assert!(UdpPacket::new_checked(&frame[start..]).unwrap()
                    .verify_checksum(&src_ip, &dst_ip));
            }
            // ... and equals smoltcp's full recompute (0 and 0xffff are the same number in
            // ones' complement; smoltcp writes 0 for TCP where we write 0xffff).
            let mut reference = frame.clone();
            let expected = if tcp {
                let mut packet = TcpPacket::new_unchecked(&mut reference[start..]);
                packet.fill_checksum(&src_ip, &dst_ip);
                packet.checksum()
            } else {
                let mut packet = UdpPacket::new_unchecked(&mut reference[start..]);
                packet.fill_checksum(&src_ip, &dst_ip);
                packet.checksum()
            };
            let normalise = |value: u16| if value == 0 { 0xffff } else { value };
            prop_assert_eq!(normalise(stored), normalise(expected));
        }

        #[test]
        fn update_matches_full_recompute(
            mut words in proptest::collection::vec(any::<u16>(), 1..40),
            at in any::<proptest::sample::Index>(),
            new in any::<u16>(),
        ) {
            let bytes = |words: &[u16]| words.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
            let before = checksum(&bytes(&words));
            let at = at.index(words.len());
            let old = words[at];
            words[at] = new;
            // All-zero data sums to +0, which a full recompute complements to 0xffff and the
            // update to 0x0000 (the same number); real headers are never all zero.
            prop_assume!(words.iter().any(|&w| w != 0));
            prop_assert_eq!(update(before, old, new), checksum(&bytes(&words)));
        }

        #[test]
        fn sum_matches_word_by_word(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut acc: u32 = 0;
            for pair in data.chunks(2) {
                let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
                acc += u32::from(word);
                acc = (acc & 0xffff) + (acc >> 16);
            }
            prop_assert_eq!(u32::from(sum(&data)), acc);
        }

        #[test]
        fn complete_never_panics(
            mut frame in proptest::collection::vec(any::<u8>(), 0..64),
            start in 0usize..80,
            offset in 0usize..80,
        ) {
            let fits = start + offset + 2 <= frame.len();
            prop_assert_eq!(complete_partial_checksum(&mut frame, start, offset).is_ok(), fits);
        }
    }

    #[test]
    fn ipv6_pseudo_header_matches_smoltcp() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut segment = vec![0u8; 8 + 5];
        segment[8..].copy_from_slice(b"hello");
        {
            let mut packet = UdpPacket::new_unchecked(&mut segment[..]);
            packet.set_src_port(1000);
            packet.set_dst_port(2000);
            packet.set_len(13);
        }
        let pseudo = pseudo_header_ipv6(src, dst, 17, 13);
        segment[6..8].copy_from_slice(&pseudo.to_be_bytes());
        complete_partial_checksum(&mut segment, 0, 6).unwrap();
        let packet = UdpPacket::new_checked(&segment[..]).unwrap();
        assert!(packet.verify_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst)));
    }
}
