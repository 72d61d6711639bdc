//! `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), the 10-byte header that TAP
//! (IFF_VNET_HDR, TUNSETVNETHDRSZ = 10) and AF_PACKET (PACKET_VNET_HDR) put before every frame.
//!
//! Every frame inside the switch is stored as this header followed by the Ethernet frame, so a
//! frame read from a TAP can be written to a veth (and back) without conversion.
//!
//! ```text
//!  0        1          2            4            6              8               10
//! +--------+----------+------------+------------+--------------+---------------+
//! | flags  | gso_type | hdr_len    | gso_size   | csum_start   | csum_offset   |
//! +--------+----------+------------+------------+--------------+---------------+
//! ```
//!
//! The 16-bit fields are little-endian: virtio 1.0 headers are, and a TAP (TUNSETVNETHDRSZ) or an
//! AF_PACKET socket (PACKET_VNET_HDR) uses the host's byte order, which is little-endian on every
//! host we run on (x86-64, aarch64).
//!
//! Rules enforced by [`Repr::parse`], as the kernel's `virtio_net_hdr_to_skb` enforces them on a
//! frame written to a TAP or an AF_PACKET socket:
//! - `gso_type` without the ECN bit is NONE, TCPV4, UDP, TCPV6 or UDP_L4; anything else is refused.
//! - A GSO frame has a non-zero `gso_size` (the kernel cannot segment by 0).
//! - With `NEEDS_CSUM`, `csum_start + csum_offset + 2` lies inside the frame
//!   (`skb_partial_csum_set`).
//! - Other flag bits (`RSC_INFO` is meaningful only from a device to a guest) are ignored, as the
//!   kernel ignores them.

use core::fmt;

/// Length of `struct virtio_net_hdr` without the `num_buffers` field.
pub const HEADER_LEN: usize = 10;

/// Byte offsets of the header's fields.
#[allow(missing_docs)]
pub mod field {
    pub type Field = core::ops::Range<usize>;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
    pub const PAYLOAD: usize = 10;
}

/// Values of the `flags` field (`VIRTIO_NET_HDR_F_*`).
pub mod flags {
    /// The checksum at `csum_start + csum_offset` holds only the pseudo-header sum; the reader
    /// must complete it (the kernel's CHECKSUM_PARTIAL).
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum was already validated (the kernel's CHECKSUM_UNNECESSARY).
    pub const DATA_VALID: u8 = 2;
    /// Receive-segment-coalescing info in `csum_*` (device to guest only; ignored here).
    pub const RSC_INFO: u8 = 4;
}

/// Values of the `gso_type` field (`VIRTIO_NET_HDR_GSO_*`).
pub mod gso {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 segmentation (TSO4).
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO, legacy).
    pub const UDP: u8 = 3;
    /// TCP over IPv6 segmentation (TSO6).
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO, `UDP_SEGMENT`).
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP stream uses ECN (CWR must be set on the first segment only).
    pub const ECN: u8 = 0x80;
}

/// Why a `virtio_net_hdr` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than [`HEADER_LEN`].
    Truncated,
    /// `gso_type` (without the ECN bit) is not one the kernel knows.
    UnknownGsoType(u8),
    /// A GSO frame with `gso_size` 0.
    ZeroGsoSize,
    /// `NEEDS_CSUM` with `csum_start + csum_offset + 2` past the end of the frame.
    ChecksumOutOfFrame {
        /// `csum_start` as read.
        start: u16,
        /// `csum_offset` as read.
        offset: u16,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "shorter than the {HEADER_LEN}-byte virtio_net_hdr"),
            Error::UnknownGsoType(value) => write!(f, "unknown gso_type {value:#04x}"),
            Error::ZeroGsoSize => write!(f, "GSO frame with gso_size 0"),
            Error::ChecksumOutOfFrame { start, offset } => write!(
                f,
                "csum_start {start} + csum_offset {offset} + 2 is past the end of the frame"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A read/write view over a `virtio_net_hdr` followed by the frame it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Packet::check_len): afterwards no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole header.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn read_u16(&self, range: field::Field) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_le_bytes([data[range.start], data[range.start + 1]])
    }

    /// The `flags` field (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The `gso_type` field, ECN bit included (see [`gso`]).
    #[inline]
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// The `hdr_len` field: length of the headers to copy into each segment (a hint).
    #[inline]
    pub fn hdr_len(&self) -> u16 {
        self.read_u16(field::HDR_LEN)
    }

    /// The `gso_size` field: payload bytes per segment.
    #[inline]
    pub fn gso_size(&self) -> u16 {
        self.read_u16(field::GSO_SIZE)
    }

    /// The `csum_start` field: offset (from the Ethernet header) where checksumming starts.
    #[inline]
    pub fn csum_start(&self) -> u16 {
        self.read_u16(field::CSUM_START)
    }

    /// The `csum_offset` field: where, after `csum_start`, the checksum is stored.
    #[inline]
    pub fn csum_offset(&self) -> u16 {
        self.read_u16(field::CSUM_OFFSET)
    }

    /// True when `NEEDS_CSUM` is set.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags() & flags::NEEDS_CSUM != 0
    }

    /// True when `gso_type` (without the ECN bit) is not NONE.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type() & !gso::ECN != gso::NONE
    }

    /// The frame after the header (the Ethernet frame).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn write_u16(&mut self, range: field::Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the `flags` field.
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the `gso_type` field.
    #[inline]
    pub fn set_gso_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = value;
    }

    /// Sets the `hdr_len` field.
    #[inline]
    pub fn set_hdr_len(&mut self, value: u16) {
        self.write_u16(field::HDR_LEN, value);
    }

    /// Sets the `gso_size` field.
    #[inline]
    pub fn set_gso_size(&mut self, value: u16) {
        self.write_u16(field::GSO_SIZE, value);
    }

    /// Sets the `csum_start` field.
    #[inline]
    pub fn set_csum_start(&mut self, value: u16) {
        self.write_u16(field::CSUM_START, value);
    }

    /// Sets the `csum_offset` field.
    #[inline]
    pub fn set_csum_offset(&mut self, value: u16) {
        self.write_u16(field::CSUM_OFFSET, value);
    }

    /// The frame after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// What the header says about the frame's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Nothing said: the receiver verifies as usual.
    None,
    /// `NEEDS_CSUM`: the checksum field holds the pseudo-header sum; the sum of the bytes from
    /// `start` to the end of the frame must be folded into it.
    Partial {
        /// Offset from the start of the Ethernet frame where checksumming starts.
        start: u16,
        /// Offset from `start` of the 16-bit checksum field.
        offset: u16,
    },
    /// `DATA_VALID`: the checksum was already verified.
    Validated,
}

/// The segmentation a GSO super-frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// UDP fragmentation (legacy UFO).
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// UDP segmentation (USO).
    UdpL4,
}

impl GsoKind {
    /// The `gso_type` value, without the ECN bit.
    pub const fn to_raw(self) -> u8 {
        match self {
            GsoKind::TcpV4 => gso::TCPV4,
            GsoKind::Udp => gso::UDP,
            GsoKind::TcpV6 => gso::TCPV6,
            GsoKind::UdpL4 => gso::UDP_L4,
        }
    }

    /// The kind for a `gso_type` value without the ECN bit; `None` for NONE and unknown values.
    pub const fn from_raw(value: u8) -> Option<GsoKind> {
        match value {
            gso::TCPV4 => Some(GsoKind::TcpV4),
            gso::UDP => Some(GsoKind::Udp),
            gso::TCPV6 => Some(GsoKind::TcpV6),
            gso::UDP_L4 => Some(GsoKind::UdpL4),
            _ => None,
        }
    }
}

/// Segmentation details of a GSO super-frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// What to segment.
    pub kind: GsoKind,
    /// The ECN bit of `gso_type`.
    pub ecn: bool,
    /// Payload bytes per segment (never 0).
    pub size: u16,
}

/// A parsed `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Checksum state of the frame.
    pub checksum: Checksum,
    /// Segmentation, for a GSO super-frame.
    pub gso: Option<Gso>,
    /// `hdr_len`: a hint of the header length (kept as read; the kernel recomputes it).
    pub hdr_len: u16,
}

impl Repr {
    /// A header that says nothing: no checksum state, no GSO (what a plain frame gets).
    pub const PLAIN: Repr = Repr {
        checksum: Checksum::None,
        gso: None,
        hdr_len: 0,
    };

    /// Parses and validates the header against the frame that follows it (see the module docs
    /// for the rules). When both `NEEDS_CSUM` and `DATA_VALID` are set, `NEEDS_CSUM` wins, as in
    /// the kernel.
    ///
    /// # Errors
    /// The first rule the header breaks.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        let raw_gso = packet.gso_type();
        let gso = match raw_gso & !gso::ECN {
            gso::NONE => None,
            value => {
                let kind = GsoKind::from_raw(value).ok_or(Error::UnknownGsoType(raw_gso))?;
                let size = packet.gso_size();
                if size == 0 {
                    return Err(Error::ZeroGsoSize);
                }
                Some(Gso {
                    kind,
                    ecn: raw_gso & gso::ECN != 0,
                    size,
                })
            }
        };
        let checksum = if packet.needs_csum() {
            let start = packet.csum_start();
            let offset = packet.csum_offset();
            let end = usize::from(start) + usize::from(offset) + 2;
            if end > packet.payload().len() {
                return Err(Error::ChecksumOutOfFrame { start, offset });
            }
            Checksum::Partial { start, offset }
        } else if packet.flags() & flags::DATA_VALID != 0 {
            Checksum::Validated
        } else {
            Checksum::None
        };
        Ok(Repr {
            checksum,
            gso,
            hdr_len: packet.hdr_len(),
        })
    }

    /// The length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `packet` (the frame after it is
    /// untouched).
    ///
    /// # Panics
    /// When the buffer is shorter than [`buffer_len`](Repr::buffer_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (flag_bits, start, offset) = match self.checksum {
            Checksum::None => (0, 0, 0),
            Checksum::Partial { start, offset } => (flags::NEEDS_CSUM, start, offset),
            Checksum::Validated => (flags::DATA_VALID, 0, 0),
        };
        packet.set_flags(flag_bits);
        match self.gso {
            Some(gso_info) => {
                let ecn = if gso_info.ecn { gso::ECN } else { 0 };
                packet.set_gso_type(gso_info.kind.to_raw() | ecn);
                packet.set_gso_size(gso_info.size);
            }
            None => {
                packet.set_gso_type(gso::NONE);
                packet.set_gso_size(0);
            }
        }
        packet.set_hdr_len(self.hdr_len);
        packet.set_csum_start(start);
        packet.set_csum_offset(offset);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtio_net_hdr")?;
        match self.checksum {
            Checksum::None => {}
            Checksum::Partial { start, offset } => {
                write!(f, " needs_csum start={start} offset={offset}")?;
            }
            Checksum::Validated => write!(f, " data_valid")?,
        }
        if let Some(gso_info) = self.gso {
            write!(
                f,
                " gso={:?}{} size={} hdr_len={}",
                gso_info.kind,
                if gso_info.ecn { "+ecn" } else { "" },
                gso_info.size,
                self.hdr_len
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSO4 super-frame header as a TAP hands it over: NEEDS_CSUM at 34 + 16 (TCP checksum
    /// after a 14-byte Ethernet and 20-byte IPv4 header), gso_size 1448, hdr_len 66.
    static TSO4_HEADER: [u8; 10] = [
        0x01, // flags: NEEDS_CSUM
        0x01, // gso_type: TCPV4
        0x42, 0x00, // hdr_len 66
        0xa8, 0x05, // gso_size 1448
        0x22, 0x00, // csum_start 34
        0x10, 0x00, // csum_offset 16
    ];

    fn with_frame(header: &[u8], frame_len: usize) -> Vec<u8> {
        let mut bytes = header.to_vec();
        bytes.resize(HEADER_LEN + frame_len, 0);
        bytes
    }

    fn tso4_repr() -> Repr {
        Repr {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: false,
                size: 1448,
            }),
            hdr_len: 66,
        }
    }

    #[test]
    fn deconstruct() {
        let bytes = with_frame(&TSO4_HEADER, 100);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.flags(), flags::NEEDS_CSUM);
        assert_eq!(packet.gso_type(), gso::TCPV4);
        assert_eq!(packet.hdr_len(), 66);
        assert_eq!(packet.gso_size(), 1448);
        assert_eq!(packet.csum_start(), 34);
        assert_eq!(packet.csum_offset(), 16);
        assert!(packet.needs_csum());
        assert!(packet.is_gso());
        assert_eq!(packet.payload().len(), 100);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5u8; HEADER_LEN];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(flags::NEEDS_CSUM);
        packet.set_gso_type(gso::TCPV4);
        packet.set_hdr_len(66);
        packet.set_gso_size(1448);
        packet.set_csum_start(34);
        packet.set_csum_offset(16);
        assert_eq!(&bytes[..], &TSO4_HEADER[..]);
    }

    #[test]
    fn parse() {
        let bytes = with_frame(&TSO4_HEADER, 100);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(tso4_repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5u8; HEADER_LEN + 4];
        let repr = tso4_repr();
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..HEADER_LEN], &TSO4_HEADER[..]);
        assert_eq!(&bytes[HEADER_LEN..], &[0xa5; 4], "the frame is untouched");
    }

    #[test]
    fn round_trip_every_shape() {
        let reprs = [
            Repr::PLAIN,
            Repr {
                checksum: Checksum::Validated,
                gso: None,
                hdr_len: 0,
            },
            Repr {
                checksum: Checksum::Partial {
                    start: 34,
                    offset: 6,
                },
                gso: Some(Gso {
                    kind: GsoKind::UdpL4,
                    ecn: false,
                    size: 1200,
                }),
                hdr_len: 42,
            },
            Repr {
                checksum: Checksum::Partial {
                    start: 54,
                    offset: 16,
                },
                gso: Some(Gso {
                    kind: GsoKind::TcpV6,
                    ecn: true,
                    size: 1428,
                }),
                hdr_len: 86,
            },
            Repr {
                checksum: Checksum::None,
                gso: Some(Gso {
                    kind: GsoKind::Udp,
                    ecn: false,
                    size: 1472,
                }),
                hdr_len: 0,
            },
        ];
        for repr in reprs {
            let mut bytes = vec![0u8; repr.buffer_len() + 100];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap());
            assert_eq!(parsed, Ok(repr), "{repr}");
        }
    }

    #[test]
    fn plain_header_is_all_zero() {
        let mut bytes = [0xffu8; HEADER_LEN];
        Repr::PLAIN.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, [0u8; HEADER_LEN]);
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            let bytes = vec![0u8; len];
            assert_eq!(
                Packet::new_checked(&bytes[..]).unwrap_err(),
                Error::Truncated
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&bytes[..])),
                Err(Error::Truncated)
            );
        }
        assert!(Packet::new_checked(&[0u8; HEADER_LEN][..]).is_ok());
    }

    #[test]
    fn parse_unknown_gso_type() {
        for raw in [2u8, 6, 0x7f, 0x82, 0x20] {
            let mut bytes = with_frame(&TSO4_HEADER, 100);
            bytes[1] = raw;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error::UnknownGsoType(raw)));
        }
    }

    #[test]
    fn parse_ecn_alone_is_no_gso() {
        // The kernel masks ECN off before looking at the type: ECN alone means "not GSO".
        let mut bytes = with_frame(&[0u8; HEADER_LEN], 60);
        bytes[1] = gso::ECN;
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.gso, None);
    }

    #[test]
    fn parse_zero_gso_size() {
        let mut bytes = with_frame(&TSO4_HEADER, 100);
        bytes[4] = 0;
        bytes[5] = 0;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::ZeroGsoSize));
    }

    #[test]
    fn parse_checksum_out_of_frame() {
        // csum_start 34 + csum_offset 16 + 2 = 52: a 51-byte frame is one short.
        let bytes = with_frame(&TSO4_HEADER, 51);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::ChecksumOutOfFrame {
                start: 34,
                offset: 16
            })
        );
        let bytes = with_frame(&TSO4_HEADER, 52);
        assert!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).is_ok());
        // Offsets near u16::MAX must not overflow.
        let mut bytes = with_frame(&TSO4_HEADER, 52);
        bytes[6..10].copy_from_slice(&[0xff; 4]);
        assert!(matches!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::ChecksumOutOfFrame { .. })
        ));
    }

    #[test]
    fn parse_needs_csum_wins_over_data_valid_and_unknown_flags_are_ignored() {
        let mut bytes = with_frame(&TSO4_HEADER, 100);
        bytes[0] = flags::NEEDS_CSUM | flags::DATA_VALID | flags::RSC_INFO | 0x80;
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.checksum, tso4_repr().checksum);
        bytes[0] = flags::DATA_VALID | 0x40;
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.checksum, Checksum::Validated);
    }

    #[test]
    fn display() {
        assert_eq!(
            tso4_repr().to_string(),
            "virtio_net_hdr needs_csum start=34 offset=16 gso=TcpV4 size=1448 hdr_len=66"
        );
        assert_eq!(Repr::PLAIN.to_string(), "virtio_net_hdr");
    }
}
