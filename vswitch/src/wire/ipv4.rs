//! IPv4 work a router does on packets it forwards or originates, over `smoltcp::wire`'s
//! [`Ipv4Packet`] view: the TTL decrement with an incremental checksum update (RFC 1624),
//! fragmentation (RFC 791 section 3.2), and the option-less header of packets the switch
//! sends itself (ICMP).
//!
//! Fragmentation rules (RFC 791 section 3.2, "Fragmentation and reassembly"; RFC 1812
//! section 5.2.6):
//! - every fragment but the last carries a multiple of 8 data bytes, and its fragment offset
//!   counts 8-byte units from the start of the original datagram's data (a fragment that is
//!   fragmented again keeps its own offset as the base);
//! - every fragment but the last has MF set; the last keeps the original's MF (so re-fragmenting
//!   a middle fragment leaves MF set on all pieces);
//! - the first fragment carries the whole original header, options included; later fragments
//!   carry only the options whose copied flag (bit 7 of the type octet) is set, padded with
//!   end-of-options to a multiple of 4 bytes;
//! - each fragment gets its own total length and header checksum; identification, TOS, TTL,
//!   protocol and addresses are copied.

use core::fmt;
use std::net::Ipv4Addr;

use smoltcp::wire::{IpProtocol, Ipv4Packet};

use super::checksum;

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Longest IPv4 header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

/// Fragment offsets count units of 8 bytes (RFC 791).
pub const FRAGMENT_UNIT: usize = 8;

/// The smallest MTU every IPv4 link must carry (RFC 791: "Every internet module must be able
/// to forward a datagram of 68 octets without further fragmentation").
pub const MIN_MTU: usize = 68;

/// The largest fragment offset the 13-bit field can express, in bytes.
const MAX_FRAGMENT_OFFSET: usize = 0x1fff * FRAGMENT_UNIT;

/// IPv4 option types with special meaning (RFC 791 section 3.1).
mod option {
    /// End of option list: the rest of the header is padding.
    pub const END: u8 = 0;
    /// No operation: a single byte, used for alignment.
    pub const NOP: u8 = 1;
    /// The copied flag: the option goes into every fragment.
    pub const COPIED: u8 = 0x80;
}

/// Decrements the TTL of a packet whose TTL is at least 2, and updates the header checksum
/// incrementally (RFC 1624), as RFC 1812 section 5.3.1 has a router do; returns the new TTL.
/// The TTL shares its 16-bit checksum word with the protocol field.
///
/// A TTL of 0 stays 0 (the caller sends "time exceeded" for TTL <= 1 instead).
pub fn decrement_ttl<T: AsRef<[u8]> + AsMut<[u8]>>(packet: &mut Ipv4Packet<T>) -> u8 {
    let ttl = packet.hop_limit();
    let Some(new_ttl) = ttl.checked_sub(1) else {
        return 0;
    };
    let protocol = u8::from(packet.next_header());
    let old_word = u16::from_be_bytes([ttl, protocol]);
    let new_word = u16::from_be_bytes([new_ttl, protocol]);
    packet.set_hop_limit(new_ttl);
    let updated = checksum::update(packet.checksum(), old_word, new_word);
    packet.set_checksum(updated);
    new_ttl
}

/// The option-less header of a packet the switch originates (an ICMP message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnHeader {
    /// Source address (a gateway address).
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Identification.
    pub ident: u16,
    /// The whole TOS octet (DSCP and ECN).
    pub tos: u8,
    /// Time to live.
    pub ttl: u8,
}

impl OwnHeader {
    /// Length of the emitted header.
    pub const LEN: usize = MIN_HEADER_LEN;

    /// Length of the emitted packet (header and payload).
    pub const fn buffer_len(&self) -> usize {
        Self::LEN + self.payload_len
    }

    /// Writes the header (DF and MF clear, fragment offset 0, checksum filled) into the first
    /// [`OwnHeader::LEN`] bytes of `buf`; the payload after it is untouched. Returns false,
    /// writing nothing, when `buf` is shorter than [`buffer_len`](OwnHeader::buffer_len) or
    /// the total length does not fit 16 bits.
    pub fn emit(&self, buf: &mut [u8]) -> bool {
        let Ok(total_len) = u16::try_from(self.buffer_len()) else {
            return false;
        };
        if buf.len() < self.buffer_len() {
            return false;
        }
        let mut packet = Ipv4Packet::new_unchecked(buf);
        packet.set_version(4);
        // 20 bytes: IHL 5.
        packet.set_header_len(20);
        packet.set_dscp(self.tos >> 2);
        packet.set_ecn(self.tos & 0x03);
        packet.set_total_len(total_len);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_frag_offset(0);
        packet.set_hop_limit(self.ttl);
        packet.set_next_header(self.protocol);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.fill_checksum();
        true
    }
}

/// Why a packet cannot be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// The bytes are not a complete IPv4 packet (shorter than its header or total length).
    Malformed,
    /// The MTU leaves no room for 8 data bytes after a fragment's header.
    MtuTooSmall {
        /// The MTU asked for.
        mtu: usize,
    },
    /// An option runs past the header or has a length below 2.
    BadOptions,
    /// The data would reach past the largest offset the 13-bit field can express.
    OffsetOverflow,
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentError::Malformed => f.write_str("not a complete IPv4 packet"),
            FragmentError::MtuTooSmall { mtu } => write!(
                f,
                "MTU {mtu} leaves no room for 8 data bytes per fragment (IPv4 needs at least {MIN_MTU})"
            ),
            FragmentError::BadOptions => f.write_str("malformed IPv4 options"),
            FragmentError::OffsetOverflow => {
                f.write_str("fragment offset beyond 65528 bytes (13-bit field)")
            }
        }
    }
}

impl std::error::Error for FragmentError {}

/// Builds the header of the second and later fragments: the fixed 20 bytes, then the options
/// with the copied flag, padded with end-of-options to a multiple of 4.
fn later_header(header: &[u8], out: &mut [u8; MAX_HEADER_LEN]) -> Result<usize, FragmentError> {
    let fixed = header
        .get(..MIN_HEADER_LEN)
        .ok_or(FragmentError::Malformed)?;
    out[..MIN_HEADER_LEN].copy_from_slice(fixed);
    let options = header.get(MIN_HEADER_LEN..).unwrap_or(&[]);
    let mut len = MIN_HEADER_LEN;
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            option::END => break,
            option::NOP => at += 1,
            _ => {
                let size = usize::from(*options.get(at + 1).ok_or(FragmentError::BadOptions)?);
                let end = at + size;
                if size < 2 || end > options.len() {
                    return Err(FragmentError::BadOptions);
                }
                if kind & option::COPIED != 0 {
                    out[len..len + size].copy_from_slice(&options[at..end]);
                    len += size;
                }
                at = end;
            }
        }
    }
    // Pad to a 32-bit boundary; the copied options are a subset of at most 40 bytes, so the
    // padded length stays within 60.
    let padded = len.div_ceil(4) * 4;
    out[len..padded].fill(option::END);
    let mut packet = Ipv4Packet::new_unchecked(&mut out[..]);
    // At most 60, a multiple of 4.
    packet.set_header_len(u8::try_from(padded).map_err(|_| FragmentError::BadOptions)?);
    Ok(padded)
}

/// Splits one IPv4 packet into fragments that each fit an MTU, one fragment at a time, into
/// buffers the caller provides (no allocation).
#[derive(Debug)]
pub struct Fragmenter<'a> {
    /// The packet, exactly its total length.
    packet: &'a [u8],
    header_len: usize,
    later_header: [u8; MAX_HEADER_LEN],
    later_header_len: usize,
    /// Data bytes in the first fragment, and in each later one but the last.
    first_data: usize,
    later_data: usize,
    /// Data bytes emitted so far.
    done: usize,
    /// Fragments emitted so far.
    emitted: usize,
    /// The packet's own offset (bytes) and MF flag: a fragment fragmented again keeps its place.
    base_offset: usize,
    more_fragments: bool,
}

impl<'a> Fragmenter<'a> {
    /// Prepares to fragment `packet` (an IPv4 header and payload; bytes past its total length,
    /// such as Ethernet padding, are ignored) into fragments of at most `mtu` bytes. The
    /// caller decides whether fragmenting is allowed (DF clear) and needed.
    ///
    /// # Errors
    /// [`FragmentError`] when the packet is malformed, its options are, or the MTU is too
    /// small for 8 data bytes after the header.
    pub fn new(packet: &'a [u8], mtu: usize) -> Result<Fragmenter<'a>, FragmentError> {
        let view = Ipv4Packet::new_checked(packet).map_err(|_| FragmentError::Malformed)?;
        let header_len = usize::from(view.header_len());
        let total_len = usize::from(view.total_len());
        let base_offset = usize::from(view.frag_offset());
        let more_fragments = view.more_frags();
        let packet = packet.get(..total_len).ok_or(FragmentError::Malformed)?;
        let header = packet.get(..header_len).ok_or(FragmentError::Malformed)?;
        let mut later = [0u8; MAX_HEADER_LEN];
        let later_header_len = later_header(header, &mut later)?;
        let units = |header: usize| mtu.saturating_sub(header) / FRAGMENT_UNIT * FRAGMENT_UNIT;
        let (first_data, later_data) = (units(header_len), units(later_header_len));
        if first_data == 0 || later_data == 0 {
            return Err(FragmentError::MtuTooSmall { mtu });
        }
        let payload_len = total_len - header_len;
        if base_offset + payload_len > MAX_FRAGMENT_OFFSET + FRAGMENT_UNIT {
            return Err(FragmentError::OffsetOverflow);
        }
        Ok(Fragmenter {
            packet,
            header_len,
            later_header: later,
            later_header_len,
            first_data,
            later_data,
            done: 0,
            emitted: 0,
            base_offset,
            more_fragments,
        })
    }

    fn payload_len(&self) -> usize {
        self.packet.len() - self.header_len
    }

    /// The header and data lengths of fragment number `index` starting at data byte `done`.
    fn shape(&self, index: usize, done: usize) -> (usize, usize) {
        let (header, room) = if index == 0 {
            (self.header_len, self.first_data)
        } else {
            (self.later_header_len, self.later_data)
        };
        (header, room.min(self.payload_len() - done))
    }

    /// The number of fragments, in all.
    pub fn count(&self) -> usize {
        let rest = self.payload_len().saturating_sub(self.first_data);
        1 + rest.div_ceil(self.later_data)
    }

    /// The sum of all fragments' lengths (headers included).
    pub fn total_len(&self) -> usize {
        let count = self.count();
        self.header_len + (count - 1) * self.later_header_len + self.payload_len()
    }

    /// The length of the next fragment, or `None` when all have been emitted.
    pub fn next_len(&self) -> Option<usize> {
        if self.emitted > 0 && self.done >= self.payload_len() {
            return None;
        }
        let (header, data) = self.shape(self.emitted, self.done);
        Some(header + data)
    }

    /// Writes the next fragment at the start of `out` and returns its length; `None` when all
    /// have been emitted or `out` is shorter than [`next_len`](Fragmenter::next_len) (nothing
    /// is written then).
    pub fn emit_next(&mut self, out: &mut [u8]) -> Option<usize> {
        let len = self.next_len()?;
        let out = out.get_mut(..len)?;
        let (header_len, data) = self.shape(self.emitted, self.done);
        let header = if self.emitted == 0 {
            &self.packet[..self.header_len]
        } else {
            &self.later_header[..self.later_header_len]
        };
        out[..header_len].copy_from_slice(header);
        let start = self.header_len + self.done;
        out[header_len..].copy_from_slice(&self.packet[start..start + data]);
        let last = self.done + data >= self.payload_len();
        let offset = self.base_offset + self.done;
        let mut fragment = Ipv4Packet::new_unchecked(out);
        // Both fit: len <= the original total length, and `new` bounded the offset.
        fragment.set_total_len(u16::try_from(len).ok()?);
        fragment.set_frag_offset(u16::try_from(offset).ok()?);
        fragment.set_more_frags(!last || self.more_fragments);
        fragment.fill_checksum();
        self.done += data;
        self.emitted += 1;
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 10.0.0.1 -> 10.0.0.2, UDP, ID 0x1234, TTL 64, no flags, with `payload`; checksum filled.
    fn packet(payload: &[u8], options: &[u8]) -> Vec<u8> {
        let header_len = MIN_HEADER_LEN + options.len();
        let mut bytes = vec![0u8; header_len + payload.len()];
        bytes[MIN_HEADER_LEN..header_len].copy_from_slice(options);
        bytes[header_len..].copy_from_slice(payload);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_version(4);
        ip.set_header_len(u8::try_from(header_len).unwrap());
        ip.set_total_len(u16::try_from(header_len + payload.len()).unwrap());
        ip.set_ident(0x1234);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Udp);
        ip.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        ip.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        ip.fill_checksum();
        bytes
    }

    fn fragment_all(packet: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, FragmentError> {
        let mut fragmenter = Fragmenter::new(packet, mtu)?;
        let count = fragmenter.count();
        let total = fragmenter.total_len();
        let mut out = Vec::new();
        while let Some(len) = fragmenter.next_len() {
            let mut buf = vec![0u8; len];
            assert_eq!(fragmenter.emit_next(&mut buf), Some(len));
            out.push(buf);
        }
        assert_eq!(out.len(), count, "count() predicts the fragments");
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), total);
        Ok(out)
    }

    /// Reassembles fragments the way a receiver does (by offset), checking each header.
    fn reassemble(fragments: &[Vec<u8>], mtu: usize) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut last_mf = true;
        for (index, bytes) in fragments.iter().enumerate() {
            assert!(bytes.len() <= mtu, "fragment {index} exceeds the MTU");
            let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
            assert!(ip.verify_checksum(), "fragment {index} checksum");
            assert_eq!(usize::from(ip.total_len()), bytes.len());
            assert_eq!(ip.ident(), 0x1234);
            assert_eq!(ip.hop_limit(), 64);
            let offset = usize::from(ip.frag_offset());
            assert_eq!(offset, data.len(), "fragment {index} offset");
            let payload = ip.payload();
            if index + 1 < fragments.len() {
                assert!(ip.more_frags(), "MF on fragment {index}");
                assert_eq!(payload.len() % FRAGMENT_UNIT, 0, "8-byte multiple");
            } else {
                last_mf = ip.more_frags();
            }
            data.extend_from_slice(payload);
        }
        (data, last_mf)
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid() {
        let mut bytes = packet(b"hello", &[]);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        assert_eq!(decrement_ttl(&mut ip), 63);
        assert_eq!(ip.hop_limit(), 63);
        assert!(ip.verify_checksum());
        ip.set_hop_limit(0);
        ip.fill_checksum();
        assert_eq!(decrement_ttl(&mut ip), 0, "0 stays 0");
        assert!(ip.verify_checksum());
    }

    #[test]
    fn own_header_bytes() {
        let header = OwnHeader {
            src: Ipv4Addr::new(172, 30, 0, 1),
            dst: Ipv4Addr::new(172, 30, 0, 2),
            protocol: IpProtocol::Icmp,
            payload_len: 8,
            ident: 0x0102,
            tos: 0xc0,
            ttl: 64,
        };
        let mut buf = [0xaau8; 28];
        assert!(header.emit(&mut buf));
        let expected: [u8; 20] = [
            0x45, 0xc0, 0x00, 0x1c, 0x01, 0x02, 0x00, 0x00, 0x40, 0x01, 0x20, 0xe0, 172, 30, 0, 1,
            172, 30, 0, 2,
        ];
        assert_eq!(&buf[..20], &expected);
        assert_eq!(&buf[20..], &[0xaa; 8], "payload untouched");
        assert!(!header.emit(&mut buf[..27]), "short buffer");
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let payload: Vec<u8> = (0..3000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let original = packet(&payload, &[]);
        let fragments = fragment_all(&original, 1500).unwrap();
        assert_eq!(
            fragments.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1500, 1500, 60]
        );
        let (data, last_mf) = reassemble(&fragments, 1500);
        assert_eq!(data, payload);
        assert!(!last_mf);
    }

    #[test]
    fn options_copy_flag_decides_later_fragments() {
        // Record route (7, not copied, 7 bytes), NOP, security (130, copied, 11 bytes), end.
        let mut options = vec![7, 7, 4, 0, 0, 0, 0, 1, 130, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        options.push(0);
        assert_eq!(options.len(), 20);
        let payload = vec![0x5a; 200];
        let original = packet(&payload, &options);
        let fragments = fragment_all(&original, 100).unwrap();
        let first = Ipv4Packet::new_checked(&fragments[0][..]).unwrap();
        assert_eq!(
            first.header_len(),
            40,
            "the first fragment keeps every option"
        );
        assert_eq!(&fragments[0][20..40], &options[..]);
        // 100 - 40 = 60 -> 56 data bytes in the first fragment.
        assert_eq!(first.payload().len(), 56);
        for later in &fragments[1..] {
            let ip = Ipv4Packet::new_checked(&later[..]).unwrap();
            assert_eq!(ip.header_len(), 32, "11 copied bytes padded to 12");
            assert_eq!(&later[20..31], &[130, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
            assert_eq!(later[31], 0, "padded with end-of-options");
        }
        let (data, _) = reassemble(&fragments, 100);
        assert_eq!(data, payload);
    }

    #[test]
    fn fragmenting_a_fragment_keeps_its_offset_and_mf() {
        let payload = vec![7u8; 1000];
        let mut original = packet(&payload, &[]);
        let mut ip = Ipv4Packet::new_unchecked(&mut original[..]);
        ip.set_frag_offset(800);
        ip.set_more_frags(true);
        ip.fill_checksum();
        let fragments = fragment_all(&original, 576).unwrap();
        let offsets: Vec<(u16, bool)> = fragments
            .iter()
            .map(|f| {
                let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
                (ip.frag_offset(), ip.more_frags())
            })
            .collect();
        assert_eq!(offsets, vec![(800, true), (1352, true)]);
    }

    #[test]
    fn refusals() {
        let original = packet(&[0u8; 100], &[]);
        assert_eq!(
            Fragmenter::new(&original, 27).unwrap_err(),
            FragmentError::MtuTooSmall { mtu: 27 }
        );
        assert!(Fragmenter::new(&original, 28).is_ok());
        assert_eq!(
            Fragmenter::new(&original[..50], 68).unwrap_err(),
            FragmentError::Malformed
        );
        // An option whose length runs past the header.
        let bad = packet(&[0u8; 100], &[7, 9, 4, 0]);
        assert_eq!(
            Fragmenter::new(&bad, 68).unwrap_err(),
            FragmentError::BadOptions
        );
        let zero = packet(&[0u8; 100], &[7, 0, 4, 0]);
        assert_eq!(
            Fragmenter::new(&zero, 68).unwrap_err(),
            FragmentError::BadOptions
        );
        let mut late = packet(&[0u8; 100], &[]);
        let mut ip = Ipv4Packet::new_unchecked(&mut late[..]);
        ip.set_frag_offset(65_528);
        assert_eq!(
            Fragmenter::new(&late, 68).unwrap_err(),
            FragmentError::OffsetOverflow
        );
    }

    #[test]
    fn short_output_buffer_writes_nothing() {
        let original = packet(&[1u8; 100], &[]);
        let mut fragmenter = Fragmenter::new(&original, 68).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(fragmenter.emit_next(&mut small), None);
        assert_eq!(small, [0; 10]);
        assert_eq!(fragmenter.next_len(), Some(68));
    }

    proptest! {
        #[test]
        fn ttl_decrement_matches_full_recompute(
            header in any::<[u8; 20]>(),
            ttl in 1u8..=255,
        ) {
            let mut bytes = header.to_vec();
            bytes[0] = 0x45;
            let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
            ip.set_hop_limit(ttl);
            ip.fill_checksum();
            let mut incremental = bytes.clone();
            let mut ip = Ipv4Packet::new_unchecked(&mut incremental[..]);
            prop_assert_eq!(decrement_ttl(&mut ip), ttl - 1);
            let mut full = bytes.clone();
            let mut reference = Ipv4Packet::new_unchecked(&mut full[..]);
            reference.set_hop_limit(ttl - 1);
            reference.fill_checksum();
            prop_assert_eq!(incremental, full);
        }

        #[test]
        fn fragments_always_reassemble(
            payload in proptest::collection::vec(any::<u8>(), 0..4000),
            mtu in 68usize..2000,
            copied in any::<bool>(),
        ) {
            let options: &[u8] = if copied { &[0x94, 4, 0, 0] } else { &[0x07, 3, 4, 0] };
            let original = packet(&payload, options);
            let fragments = fragment_all(&original, mtu).unwrap();
            let (data, last_mf) = reassemble(&fragments, mtu);
            prop_assert_eq!(data, payload);
            prop_assert!(!last_mf);
        }
    }
}
