//! The VXLAN header (RFC 7348, section 5) as a typed, zero-copy view.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! RFC 7348, section 5, says of the header:
//!
//! > Flags (8 bits): where the I flag MUST be set to 1 for a valid VXLAN Network ID (VNI). The
//! > other 7 bits (designated "R") are reserved fields and MUST be set to zero on transmission
//! > and ignored on receipt.
//! >
//! > VXLAN Segment ID/VXLAN Network Identifier (VNI): this is a 24-bit value used to designate
//! > the individual VXLAN overlay network on which the communicating VMs are situated.
//! >
//! > Reserved fields (24 bits and 8 bits): MUST be set to zero on transmission and ignored on
//! > receipt.
//!
//! **On receipt we do not ignore the reserved bits: we refuse them, as Linux does.**
//! `vxlan_rcv` (drivers/net/vxlan/vxlan_core.c) drops a packet whose I flag is clear, and,
//! once the VNI's device is found, drops it if any bit other than the I flag and the VNI is
//! set, "to maintain compatibility with previous stack code" and because it "is more robust
//! and provides a little more security in adding extensions to VXLAN" (GBP, GPE and remote
//! checksum offload reuse those bits; we implement none of them, so for us they are all
//! reserved). A vswitchd VTEP and a kernel VTEP therefore accept exactly the same packets.
//!
//! **Remote checksum offload** (RCO, draft-herbert-vxlan-rco, Linux `remcsumtx` and
//! `remcsumrx`) is the one extension implemented, and only where the VTEP is configured for
//! it: [`Repr::parse_with_rco`] accepts the C flag (bit 21 of the first word, Linux
//! `VXLAN_HF_RCO`) and the option it enables in the byte after the VNI:
//!
//! ```text
//! |R|R|R|R|I|R|R|R|R|R|C|              Reserved                   |
//! |           VXLAN Network Identifier (VNI)      |O| Csum start  |
//! ```
//!
//! The sender leaves the inner TCP or UDP checksum partial (the pseudo-header sum in its
//! field) and says where it is: `Csum start` is the checksum's start, counted from the inner
//! Ethernet header in units of 2 bytes, and O selects the field's offset from there (set:
//! UDP's, 6; clear: TCP's, 16). The receiver completes the checksum, or hands the frame on as
//! partial (Linux does the latter unless `remcsum_nopartial`). [`RemoteChecksum`] is the
//! option; [`Packet::set_remote_checksum`] writes it. [`Repr::parse`] refuses it, as every
//! VTEP without RCO does.
//!
//! [`Repr::parse`] applies the rules in the kernel's order: too short ([`Error::Truncated`]),
//! I flag clear ([`Error::BadFlags`]), then any reserved bit set ([`Error::ReservedBitsSet`]).
//! The kernel looks the VNI up between the last two checks; [`crate::encap::decapsulate_with`]
//! reproduces that order when a lookup is involved. [`Repr::emit`] writes the I flag, the VNI
//! and zeros everywhere else.
//!
//! The view follows smoltcp's `wire` shape: [`Packet::new_checked`] checks the length once,
//! after which no accessor can panic.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Byte ranges of the header fields.
mod field {
    use core::ops::{Range, RangeFrom};

    /// Flags: only the I bit is defined.
    pub const FLAGS: usize = 0;
    /// The 24-bit reserved field after the flags.
    pub const RESERVED_AFTER_FLAGS: Range<usize> = 1..4;
    /// The 24-bit VXLAN Network Identifier.
    pub const VNI: Range<usize> = 4..7;
    /// The 8-bit reserved field after the VNI.
    pub const RESERVED_AFTER_VNI: usize = 7;
    /// The encapsulated Ethernet frame.
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// The I flag ("VNI present"), the only flag RFC 7348 defines (Linux `VXLAN_HF_VNI`).
pub const FLAG_I: u8 = 0x08;

/// The C flag (remote checksum offload) in the 24 bits after the flags (Linux
/// `VXLAN_HF_RCO`, bit 21 of the first word).
pub const RCO_FLAG: u32 = 0x0020_0000;

/// In the byte after the VNI with [`RCO_FLAG`]: the checksum start divided by two.
const RCO_START_MASK: u8 = 0x7f;

/// In the byte after the VNI with [`RCO_FLAG`]: the checksum is UDP's (offset 6), not TCP's.
const RCO_UDP: u8 = 0x80;

/// A remote checksum offload option: where the inner TCP or UDP checksum that the sender
/// left partial is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteChecksum {
    start: u8,
    udp: bool,
}

impl RemoteChecksum {
    /// Offset of the checksum field in a TCP header.
    pub const TCP_OFFSET: u16 = 16;
    /// Offset of the checksum field in a UDP header.
    pub const UDP_OFFSET: u16 = 6;
    /// The largest checksum start the option can say (254 bytes into the inner frame).
    pub const MAX_START: u16 = (RCO_START_MASK as u16) << 1;

    /// The option for a checksum that starts `start` bytes into the inner Ethernet frame with
    /// its field `offset` bytes further, or `None` when the option cannot say it: `start` odd
    /// or beyond [`RemoteChecksum::MAX_START`], or `offset` neither TCP's nor UDP's (Linux
    /// sends such a frame's checksum complete instead).
    pub fn new(start: u16, offset: u16) -> Option<RemoteChecksum> {
        if start % 2 != 0 || start > RemoteChecksum::MAX_START {
            return None;
        }
        let udp = match offset {
            RemoteChecksum::TCP_OFFSET => false,
            RemoteChecksum::UDP_OFFSET => true,
            _ => return None,
        };
        Some(RemoteChecksum {
            start: u8::try_from(start / 2).ok()?,
            udp,
        })
    }

    /// Where the checksum starts, in bytes from the inner Ethernet header.
    pub fn start(self) -> u16 {
        u16::from(self.start) * 2
    }

    /// Offset of the checksum field from [`RemoteChecksum::start`].
    pub fn offset(self) -> u16 {
        if self.udp {
            RemoteChecksum::UDP_OFFSET
        } else {
            RemoteChecksum::TCP_OFFSET
        }
    }

    fn to_byte(self) -> u8 {
        self.start | if self.udp { RCO_UDP } else { 0 }
    }

    fn from_byte(byte: u8) -> RemoteChecksum {
        RemoteChecksum {
            start: byte & RCO_START_MASK,
            udp: byte & RCO_UDP != 0,
        }
    }
}

/// The IANA-assigned VXLAN UDP destination port (RFC 7348, section 5).
pub const UDP_PORT: u16 = 4789;

/// Why a VXLAN header was refused.
///
/// The variants map one to one onto the decap drop reasons of [`crate::encap::DecapError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("VXLAN header truncated: fewer than {HEADER_LEN} bytes")]
    Truncated,
    /// The I flag is clear, so the packet carries no valid VNI (Linux drops it first).
    #[error("VXLAN I flag clear: the header carries no valid VNI")]
    BadFlags,
    /// A reserved bit is set: a flag other than I, the 24 bits after the flags or the 8 bits
    /// after the VNI (Linux drops these instead of ignoring them).
    #[error("VXLAN reserved bits set")]
    ReservedBitsSet,
}

/// A value that does not fit the 24-bit VNI field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is out of range: a VNI is 24 bits, 0 to 16777215")]
pub struct InvalidVni(pub u32);

/// A VXLAN Network Identifier: a 24-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: Vni = Vni(0x00ff_ffff);

    /// The VNI `value`, or `None` if it does not fit in 24 bits.
    #[inline]
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Vni::MAX.0 {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The VNI as a number.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    #[inline]
    const fn from_bytes(bytes: [u8; 3]) -> Vni {
        Vni(((bytes[0] as u32) << 16) | ((bytes[1] as u32) << 8) | bytes[2] as u32)
    }

    #[inline]
    const fn to_bytes(self) -> [u8; 3] {
        let [_, high, middle, low] = self.0.to_be_bytes();
        [high, middle, low]
    }
}

impl TryFrom<u32> for Vni {
    type Error = InvalidVni;

    fn try_from(value: u32) -> Result<Vni, InvalidVni> {
        Vni::new(value).ok_or(InvalidVni(value))
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A read/write view of a VXLAN header followed by its payload (the inner Ethernet frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length; accessors panic on a buffer shorter than
    /// [`HEADER_LEN`]. Use it to emit into a buffer known to be large enough.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`]; no accessor can panic afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole header. No setter changes the answer: the header
    /// has a fixed length.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte (only [`FLAG_I`] is defined).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when the I flag is set.
    #[inline]
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit reserved field after the flags, in the low bits.
    #[inline]
    pub fn reserved_after_flags(&self) -> u32 {
        let data = self.buffer.as_ref();
        let bytes = &data[field::RESERVED_AFTER_FLAGS];
        (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2])
    }

    /// The VNI field (meaningful only when the I flag is set).
    #[inline]
    pub fn vni(&self) -> Vni {
        let data = self.buffer.as_ref();
        let bytes = &data[field::VNI];
        Vni::from_bytes([bytes[0], bytes[1], bytes[2]])
    }

    /// The 8-bit reserved field after the VNI.
    #[inline]
    pub fn reserved_after_vni(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED_AFTER_VNI]
    }

    /// The bytes after the header: the inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the 24-bit reserved field after the flags (the top 8 bits of `value` are ignored).
    #[inline]
    pub fn set_reserved_after_flags(&mut self, value: u32) {
        let [_, high, middle, low] = value.to_be_bytes();
        self.buffer.as_mut()[field::RESERVED_AFTER_FLAGS].copy_from_slice(&[high, middle, low]);
    }

    /// Sets the VNI field.
    #[inline]
    pub fn set_vni(&mut self, value: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_bytes());
    }

    /// Sets the 8-bit reserved field after the VNI.
    #[inline]
    pub fn set_reserved_after_vni(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED_AFTER_VNI] = value;
    }

    /// Sets the remote checksum offload option: the C flag and the byte after the VNI.
    #[inline]
    pub fn set_remote_checksum(&mut self, option: RemoteChecksum) {
        let reserved = self.reserved_after_flags() | RCO_FLAG;
        self.set_reserved_after_flags(reserved);
        self.set_reserved_after_vni(option.to_byte());
    }

    /// The bytes after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Repr::parse(self) {
            Ok(repr) => write!(f, "{repr}"),
            Err(Error::Truncated) => write!(f, "VXLAN ({})", Error::Truncated),
            Err(error) => write!(
                f,
                "VXLAN ({error}) flags=0x{:02x} reserved=0x{:06x} vni={} reserved=0x{:02x}",
                self.flags(),
                self.reserved_after_flags(),
                self.vni(),
                self.reserved_after_vni()
            ),
        }
    }
}

/// A parsed, valid VXLAN header: all it carries is the VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The VXLAN Network Identifier.
    pub vni: Vni,
}

impl Repr {
    /// Parses and validates a header the way Linux `vxlan_rcv` does (see the module docs).
    /// Never panics, whatever the buffer.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`]; [`Error::BadFlags`]
    /// if the I flag is clear (checked before the reserved bits, as in Linux);
    /// [`Error::ReservedBitsSet`] if any other flag, the 24 bits after the flags or the 8 bits
    /// after the VNI are not zero.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(Error::BadFlags);
        }
        if packet.flags() & !FLAG_I != 0
            || packet.reserved_after_flags() != 0
            || packet.reserved_after_vni() != 0
        {
            return Err(Error::ReservedBitsSet);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// [`Repr::parse`] for a VTEP that takes remote checksum offload: the C flag and its option
    /// in the byte after the VNI are accepted (the option is returned); every other reserved
    /// bit is still refused. Never panics.
    ///
    /// # Errors
    ///
    /// As [`Repr::parse`].
    pub fn parse_with_rco<T: AsRef<[u8]>>(
        packet: &Packet<T>,
    ) -> Result<(Repr, Option<RemoteChecksum>), Error> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(Error::BadFlags);
        }
        let rco = packet.reserved_after_flags() == RCO_FLAG;
        if packet.flags() & !FLAG_I != 0
            || (packet.reserved_after_flags() != 0 && !rco)
            || (packet.reserved_after_vni() != 0 && !rco)
        {
            return Err(Error::ReservedBitsSet);
        }
        let option = rco.then(|| RemoteChecksum::from_byte(packet.reserved_after_vni()));
        Ok((Repr { vni: packet.vni() }, option))
    }

    /// The length of the header this emits: [`HEADER_LEN`].
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: the I flag, the VNI, and zero in every reserved bit. The payload is
    /// left alone.
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.set_reserved_after_flags(0);
        packet.set_vni(self.vni);
        packet.set_reserved_after_vni(0);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A VXLAN header for VNI 101 (base 100 + runner 1) and the first bytes of an inner frame.
    static PACKET_BYTES: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, // flags: I; reserved
        0x00, 0x00, 0x65, 0x00, // VNI 101; reserved
        0xaa, 0xbb, 0xcc, 0xdd, // payload
    ];

    /// The VXLAN header of a frame captured from a Linux VXLAN device (`ip link add vx0 type
    /// vxlan id 101 dstport 4789 ...`; bytes 42..50 of `KERNEL_FRAME` in the encap tests).
    static KERNEL_HEADER: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x65, 0x00];

    fn vni(value: u32) -> Vni {
        Vni::new(value).expect("test VNI fits 24 bits")
    }

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).expect("12 bytes is enough");
        assert_eq!(packet.flags(), FLAG_I);
        assert!(packet.i_flag());
        assert_eq!(packet.reserved_after_flags(), 0);
        assert_eq!(packet.vni(), vni(101));
        assert_eq!(packet.reserved_after_vni(), 0);
        assert_eq!(packet.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xffu8; 12];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(FLAG_I);
        packet.set_reserved_after_flags(0);
        packet.set_vni(vni(101));
        packet.set_reserved_after_vni(0);
        packet
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn test_parse() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).expect("long enough");
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: vni(101) }));
    }

    #[test]
    fn test_emit_over_dirty_buffer() {
        // A reused buffer full of old bytes: emit must clear every reserved bit.
        let mut bytes = [0xffu8; 12];
        let repr = Repr { vni: vni(101) };
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes[..HEADER_LEN], PACKET_BYTES[..HEADER_LEN]);
        assert_eq!(
            bytes[HEADER_LEN..],
            [0xff; 4],
            "emit leaves the payload alone"
        );
    }

    #[test]
    fn test_kernel_fixture() {
        let packet = Packet::new_checked(&KERNEL_HEADER[..]).expect("8 bytes");
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: vni(101) }));
        assert!(packet.payload().is_empty());
        let mut emitted = [0u8; HEADER_LEN];
        Repr { vni: vni(101) }.emit(&mut Packet::new_unchecked(&mut emitted[..]));
        assert_eq!(emitted, KERNEL_HEADER);
    }

    #[test]
    fn test_round_trip_edges() {
        for value in [0, 1, 100, 355, 0x00ff_fffe, 0x00ff_ffff] {
            let repr = Repr { vni: vni(value) };
            let mut bytes = [0u8; HEADER_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).expect("8 bytes");
            assert_eq!(Repr::parse(&packet), Ok(repr), "VNI {value}");
        }
    }

    #[test]
    fn test_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]).err(),
                Some(Error::Truncated),
                "{len} bytes"
            );
            // parse checks again, so an unchecked view of a short buffer cannot panic.
            let packet = Packet::new_unchecked(&PACKET_BYTES[..len]);
            assert_eq!(Repr::parse(&packet), Err(Error::Truncated));
            assert_eq!(
                packet.to_string(),
                "VXLAN (VXLAN header truncated: fewer than 8 bytes)"
            );
        }
        let exact = Packet::new_checked(&PACKET_BYTES[..HEADER_LEN]).expect("exactly 8 bytes");
        assert_eq!(Repr::parse(&exact), Ok(Repr { vni: vni(101) }));
    }

    #[test]
    fn test_parse_i_flag_clear() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x00;
        let packet = Packet::new_checked(&bytes[..]).expect("long enough");
        assert_eq!(Repr::parse(&packet), Err(Error::BadFlags));
    }

    #[test]
    fn test_parse_i_flag_clear_wins_over_reserved_bits() {
        // Linux tests the I flag before anything else: a header with I clear and reserved
        // bits set counts as bad flags.
        let bytes = [0xf7, 0xff, 0xff, 0xff, 0x00, 0x00, 0x65, 0xff];
        let packet = Packet::new_checked(&bytes[..]).expect("8 bytes");
        assert_eq!(Repr::parse(&packet), Err(Error::BadFlags));
    }

    #[test]
    fn test_parse_reserved_flag_bits() {
        for bit in 0..8 {
            let flag = 1u8 << bit;
            if flag == FLAG_I {
                continue;
            }
            let mut bytes = PACKET_BYTES;
            bytes[0] = FLAG_I | flag;
            let packet = Packet::new_checked(&bytes[..]).expect("long enough");
            assert_eq!(
                Repr::parse(&packet),
                Err(Error::ReservedBitsSet),
                "flag 0x{flag:02x}"
            );
        }
    }

    #[test]
    fn test_parse_reserved_after_flags() {
        for index in field::RESERVED_AFTER_FLAGS {
            for bit in 0..8 {
                let mut bytes = PACKET_BYTES;
                bytes[index] = 1 << bit;
                let packet = Packet::new_checked(&bytes[..]).expect("long enough");
                assert_eq!(
                    Repr::parse(&packet),
                    Err(Error::ReservedBitsSet),
                    "byte {index} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn test_parse_reserved_after_vni() {
        for bit in 0..8 {
            let mut bytes = PACKET_BYTES;
            bytes[field::RESERVED_AFTER_VNI] = 1 << bit;
            let packet = Packet::new_checked(&bytes[..]).expect("long enough");
            assert_eq!(
                Repr::parse(&packet),
                Err(Error::ReservedBitsSet),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn test_reserved_setters_round_trip() {
        let mut bytes = [0u8; HEADER_LEN];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_reserved_after_flags(0xff12_3456);
        packet.set_reserved_after_vni(0x78);
        assert_eq!(packet.reserved_after_flags(), 0x0012_3456);
        assert_eq!(packet.reserved_after_vni(), 0x78);
        assert_eq!(packet.vni(), vni(0));
    }

    #[test]
    fn test_vni_bounds() {
        assert_eq!(Vni::new(0x00ff_ffff), Some(Vni::MAX));
        assert_eq!(Vni::new(0x0100_0000), None);
        assert_eq!(Vni::try_from(0x0100_0000), Err(InvalidVni(0x0100_0000)));
        assert_eq!(u32::from(vni(4242)), 4242);
        assert_eq!(
            InvalidVni(16_777_216).to_string(),
            "VNI 16777216 is out of range: a VNI is 24 bits, 0 to 16777215"
        );
    }

    #[test]
    fn test_vni_serde() {
        assert_eq!(serde_json::to_string(&vni(101)).expect("serialise"), "101");
        assert_eq!(serde_json::from_str::<Vni>("101").expect("parse"), vni(101));
        assert!(serde_json::from_str::<Vni>("16777216").is_err());
    }

    #[test]
    fn test_display() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).expect("long enough");
        assert_eq!(packet.to_string(), "VXLAN vni=101");
        let mut bytes = PACKET_BYTES;
        bytes[7] = 0x01;
        let packet = Packet::new_checked(&bytes[..]).expect("long enough");
        assert_eq!(
            packet.to_string(),
            "VXLAN (VXLAN reserved bits set) flags=0x08 reserved=0x000000 vni=101 reserved=0x01"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let packet = Packet::new_unchecked(&bytes[..]);
            let parsed = Repr::parse(&packet);
            let _ = packet.to_string();
            if let Ok(repr) = parsed {
                // Whatever parses re-emits to the same eight bytes: nothing was ignored.
                let mut emitted = [0u8; HEADER_LEN];
                repr.emit(&mut Packet::new_unchecked(&mut emitted[..]));
                prop_assert_eq!(&emitted[..], &bytes[..HEADER_LEN]);
            }
        }

        #[test]
        fn round_trip(value in 0u32..=0x00ff_ffff, payload in proptest::collection::vec(any::<u8>(), 0..16)) {
            let repr = Repr { vni: vni(value) };
            let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Packet::new_checked(&bytes[..]).expect("long enough");
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }
    }

    #[test]
    fn remote_checksum_option_round_trips_as_linux_lays_it_out() {
        let mut bytes = [0u8; HEADER_LEN];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            vni: Vni::new(42).unwrap(),
        }
        .emit(&mut packet);
        // TCP over IPv4 without options: the checksum starts 34 bytes in, field at +16.
        let option = RemoteChecksum::new(34, 16).unwrap();
        packet.set_remote_checksum(option);
        // Linux: VXLAN_HF_RCO = BIT(21) of the first word; start >> 1 in the last byte.
        assert_eq!(bytes, [0x08, 0x20, 0x00, 0x00, 0x00, 0x00, 0x2a, 17]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::ReservedBitsSet));
        let (repr, parsed) = Repr::parse_with_rco(&packet).unwrap();
        assert_eq!(repr.vni.get(), 42);
        assert_eq!(parsed, Some(option));
        assert_eq!((option.start(), option.offset()), (34, 16));
        let udp = RemoteChecksum::new(34, 6).unwrap();
        assert_eq!((udp.start(), udp.offset()), (34, 6));
        assert_eq!(udp.to_byte(), 0x80 | 17);
        // What the option cannot say.
        assert_eq!(RemoteChecksum::new(35, 16), None);
        assert_eq!(RemoteChecksum::new(256, 16), None);
        assert_eq!(RemoteChecksum::new(34, 10), None);
    }

    #[test]
    fn rco_parsing_still_refuses_other_reserved_bits() {
        let plain = [0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        let (_, option) = Repr::parse_with_rco(&Packet::new_checked(&plain[..]).unwrap()).unwrap();
        assert_eq!(option, None);
        for bad in [
            [0x08, 0x20, 0x00, 0x01, 0, 0, 0x2a, 17], // C and another reserved bit
            [0x08, 0x00, 0x00, 0x00, 0, 0, 0x2a, 17], // an option without C
            [0x88, 0x20, 0x00, 0x00, 0, 0, 0x2a, 17], // GBP's G flag
        ] {
            let packet = Packet::new_checked(&bad[..]).unwrap();
            assert_eq!(
                Repr::parse_with_rco(&packet),
                Err(Error::ReservedBitsSet),
                "{bad:02x?}"
            );
        }
        let no_i = [0x00, 0x20, 0, 0, 0, 0, 0x2a, 17];
        assert_eq!(
            Repr::parse_with_rco(&Packet::new_checked(&no_i[..]).unwrap()),
            Err(Error::BadFlags)
        );
    }
}
