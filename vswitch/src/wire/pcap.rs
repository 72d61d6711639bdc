//! The classic pcap file format (libpcap's `pcap-savefile(5)`), as `vswitchctl capture`
//! writes it: a 24-byte file header, then per frame a 16-byte record header and the frame's
//! captured bytes.
//!
//! We write the nanosecond variant (magic `0xa1b23c4d`) in little-endian byte order, with
//! link type 1 (`LINKTYPE_ETHERNET`): tcpdump, tshark and Wireshark read it as written
//! (`tcpdump -r -`), and a reader tells the byte order from the magic.

/// The file header's length.
pub const FILE_HEADER_LEN: usize = 24;

/// A record header's length.
pub const RECORD_HEADER_LEN: usize = 16;

/// The magic of a file with nanosecond timestamps.
pub const MAGIC_NANOSECONDS: u32 = 0xa1b2_3c4d;

/// `LINKTYPE_ETHERNET`: every record is an Ethernet frame.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Format version 2.4, the only one readers know.
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

mod field {
    use std::ops::Range;

    // The file header.
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION_MAJOR: Range<usize> = 4..6;
    pub const VERSION_MINOR: Range<usize> = 6..8;
    // 8..16: time zone offset and accuracy, zero.
    pub const SNAPLEN: Range<usize> = 16..20;
    pub const LINKTYPE: Range<usize> = 20..24;

    // A record header.
    pub const SECONDS: Range<usize> = 0..4;
    pub const NANOSECONDS: Range<usize> = 4..8;
    pub const CAPTURED_LEN: Range<usize> = 8..12;
    pub const ORIGINAL_LEN: Range<usize> = 12..16;
}

/// The file header for frames of at most `snaplen` captured bytes.
pub fn file_header(snaplen: u32) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0u8; FILE_HEADER_LEN];
    header[field::MAGIC].copy_from_slice(&MAGIC_NANOSECONDS.to_le_bytes());
    header[field::VERSION_MAJOR].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    header[field::VERSION_MINOR].copy_from_slice(&VERSION_MINOR.to_le_bytes());
    header[field::SNAPLEN].copy_from_slice(&snaplen.to_le_bytes());
    header[field::LINKTYPE].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    header
}

/// The header of a record taken at `unix_nanos` (nanoseconds since the Unix epoch), holding
/// `captured` bytes of a frame of `original` bytes.
pub fn record_header(unix_nanos: u64, captured: u32, original: u32) -> [u8; RECORD_HEADER_LEN] {
    // The seconds field is 32 bits: it wraps in 2106, as every pcap writer's does.
    let seconds = u32::try_from((unix_nanos / NANOS_PER_SECOND) & u64::from(u32::MAX)).unwrap_or(0);
    let nanos = u32::try_from(unix_nanos % NANOS_PER_SECOND).unwrap_or(0);
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[field::SECONDS].copy_from_slice(&seconds.to_le_bytes());
    header[field::NANOSECONDS].copy_from_slice(&nanos.to_le_bytes());
    header[field::CAPTURED_LEN].copy_from_slice(&captured.to_le_bytes());
    header[field::ORIGINAL_LEN].copy_from_slice(&original.to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_bytes() {
        assert_eq!(
            file_header(65535),
            [
                0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0,
                0, 0
            ]
        );
    }

    #[test]
    fn record_header_bytes() {
        let header = record_header(1_700_000_000 * NANOS_PER_SECOND + 123_456_789, 60, 1514);
        assert_eq!(&header[0..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&header[4..8], &123_456_789u32.to_le_bytes());
        assert_eq!(&header[8..12], &60u32.to_le_bytes());
        assert_eq!(&header[12..16], &1514u32.to_le_bytes());
    }
}
