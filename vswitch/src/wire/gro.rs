//! Software receive coalescing of TCP segments over IPv4 and IPv6 (the kernel's GRO,
//! `tcp_gro_receive`) for a port that accepts GSO super-frames (a TAP with `TUN_F_TSO4` and
//! `TUN_F_TSO6`).
//!
//! Frames arriving from the VXLAN overlay are individual wire-sized TCP segments; handing each
//! to a container's TAP with its own `write()` makes the container's TCP stack run once per
//! segment. [`Coalescer`] merges a run of consecutive segments of one flow into one super-frame:
//! a `virtio_net_hdr` with `NEEDS_CSUM` and `gso_type` TCPV4 or TCPV6 (see
//! [`super::vnet_hdr`]), then the first segment's headers and the concatenated payloads.
//!
//! A frame is coalescable, as conservatively as the kernel's `inet_gro_receive` and
//! `tcp_gro_receive` decide it, when it is:
//! - a complete frame: `gso_type` NONE (no ECN bit either) and no `NEEDS_CSUM`;
//! - untagged Ethernet II carrying IPv4 with IHL 5 (no options), not a fragment (MF clear,
//!   offset 0, reserved bit clear), protocol TCP, with a correct header checksum; or IPv6
//!   whose next header is TCP (no extension header) and whose payload length is not 0 (no
//!   jumbogram), the whole packet at most 65535 bytes;
//! - TCP with flags exactly ACK or ACK|PSH (no SYN, FIN, RST, URG, ECE, CWR, and the reserved
//!   bits and AE/NS clear), a non-empty payload, and a correct TCP checksum.
//!
//! The checksums are verified because the super-frame is handed on with `NEEDS_CSUM`: the
//! receiver then trusts the payload and recomputes nothing, so a corrupted segment merged into
//! it would be accepted. A segment failing either check is emitted unchanged (the receiver
//! drops it as it would have anyway).
//!
//! A coalescable frame continues the pending run when its Ethernet header is identical to the
//! run's, its IP header differs only in total length, identification and checksum (IPv6: only
//! in payload length; traffic class, flow label and hop limit equal), its TCP
//! header differs only in sequence number, checksum and PSH (ports, acknowledgment number,
//! data offset, window, urgent pointer and options, timestamps included, byte-identical), its
//! sequence number follows the run's last byte, and:
//! - identification (IPv4): without DF it is the previous one plus 1 (wrapping); with DF the
//!   run is either incrementing or fixed, decided by its second segment (the kernel's
//!   `flush_id`);
//! - its payload is at most the first segment's (the run's MSS); a shorter one ends the run;
//! - a PSH segment ends the run (PSH is allowed only on a run's last segment);
//! - the merged IP packet stays within 65535 bytes.
//!
//! The super-frame keeps the first segment's headers (its IP identification and Ethernet
//! addresses) with the IP total length and header checksum updated (IPv6: the payload
//! length), PSH set if the last segment had it, and in the TCP checksum field the
//! pseudo-header sum over the super-frame's TCP length, folded and not complemented, as the
//! kernel leaves a CHECKSUM_PARTIAL frame (see
//! [`super::checksum::complete_partial_checksum`]). Its `virtio_net_hdr`: `NEEDS_CSUM`,
//! `gso_type` TCPV4 (TCPV6), `gso_size` the MSS, `hdr_len` 54 (74) plus the TCP options,
//! `csum_start` 34 (54), `csum_offset` 16. Ethernet padding after a segment's IP packet is
//! dropped when it is merged.
//!
//! A run of one segment leaves as the original frame, byte for byte; a frame that cannot start
//! a run (not coalescable, or a PSH segment, which no segment may follow) leaves at once,
//! unchanged. Frames always leave in the order they were pushed.
//!
//! The coalescer owns one scratch buffer, allocated once in [`Coalescer::new`], holding the
//! largest IP packet there is: coalescing allocates nothing.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN};

use super::checksum;
use super::vnet_hdr::{self, HEADER_LEN as VNET_HEADER_LEN};

/// The largest IPv4 total length.
const MAX_IP_LEN: u16 = u16::MAX;
/// Offset of the Ethernet header in a frame (after the `virtio_net_hdr`).
const ETH: usize = VNET_HEADER_LEN;
/// Offset of the IPv4 header in a frame.
const IP: usize = ETH + ETHERNET_HEADER_LEN;
/// Offset of the TCP header in a frame (IHL 5 only).
const TCP: usize = IP + IPV4_HEADER_LEN;
/// Offset of the TCP header in an IPv6 frame (no extension header).
const TCP6: usize = IP + IPV6_HEADER_LEN;
/// The scratch buffer: a `virtio_net_hdr`, an Ethernet header and the largest IP packet.
const SCRATCH_LEN: usize = IP + MAX_IP_LEN as usize;

/// IP protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;
/// EtherType of IPv4.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// EtherType of IPv6.
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// Version 4, IHL 5.
const VERSION_IHL_NO_OPTIONS: u8 = 0x45;
/// The DF bit of the IPv4 flags/fragment-offset field.
const IP_DONT_FRAGMENT: u16 = 0x4000;

/// Byte ranges of the IPv4 header (RFC 791), from its start.
mod ip_field {
    pub type Field = core::ops::Range<usize>;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const PROTOCOL: usize = 9;
    /// Flags/fragment offset, TTL and protocol: must match within a run.
    pub const FLG_OFF_TTL_PROTOCOL: Field = 6..10;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    /// Source and destination addresses.
    pub const ADDRESSES: Field = 12..20;
}

/// Byte ranges of the IPv6 header (RFC 8200), from its start.
mod ip6_field {
    pub type Field = core::ops::Range<usize>;

    /// Version, traffic class and flow label: must match within a run.
    pub const VERSION_CLASS_FLOW: Field = 0..4;
    pub const PAYLOAD_LENGTH: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    /// Next header, hop limit and the addresses: must match within a run.
    pub const NEXT_HEADER_TO_END: Field = 6..40;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Byte ranges of the TCP header (RFC 9293), from its start.
mod tcp_field {
    pub type Field = core::ops::Range<usize>;

    pub const PORTS: Field = 0..4;
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgment number and the data offset/reserved byte: must match within a run.
    pub const ACK_NUM_DATA_OFF: Field = 8..13;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    /// From the urgent pointer to the end of the options (the header length).
    pub const URGENT: usize = 18;
}

/// TCP flag bits (byte 13 of the header).
mod tcp_flags {
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Offset of the TCP checksum in the TCP header, as `csum_offset`.
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// What a run knows of a coalescable segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// End of the IP packet in the frame (Ethernet padding may follow).
    end: usize,
    /// Start of the TCP payload in the frame.
    payload: usize,
    /// IP total length (IPv6: the header and its payload length).
    ip_len: u16,
    /// TCP sequence number.
    seq: u32,
    /// IP identification (0 over IPv6).
    ident: u16,
    /// PSH is set.
    psh: bool,
    /// Start of the TCP header in the frame: [`TCP`] or [`TCP6`].
    tcp: usize,
    /// IPv6.
    v6: bool,
}

impl Segment {
    /// Bytes of TCP payload (never 0).
    fn payload_len(&self) -> usize {
        self.end - self.payload
    }

    /// Parses a frame that may join a run (see the module docs); `None` when it may not.
    fn parse(frame: &[u8]) -> Option<Segment> {
        let vnet = vnet_hdr::Packet::new_checked(frame).ok()?;
        if vnet.gso_type() != vnet_hdr::gso::NONE || vnet.needs_csum() {
            return None;
        }
        Segment::parse_headers(frame, true)
    }

    /// [`parse`](Segment::parse) without looking at the first [`ETH`] bytes: the Ethernet
    /// frame starts at [`ETH`], whatever precedes it. The TCP checksum is verified only when
    /// `verify_tcp`.
    fn parse_headers(frame: &[u8], verify_tcp: bool) -> Option<Segment> {
        let eth = frame.get(ETH..IP)?;
        let v6 = match eth[ETHERNET_HEADER_LEN - 2..] {
            [0x08, 0x00] => false,
            [0x86, 0xdd] => true,
            _ => return None,
        };
        let (tcp_start, ip_len, ident) = if v6 {
            let ip = frame.get(IP..TCP6)?;
            let payload_len = read_u16(ip, ip6_field::PAYLOAD_LENGTH);
            if ip[0] >> 4 != 6 || ip[ip6_field::NEXT_HEADER] != PROTOCOL_TCP || payload_len == 0 {
                return None;
            }
            let total = u16::try_from(IPV6_HEADER_LEN + usize::from(payload_len)).ok()?;
            (TCP6, total, 0)
        } else {
            let ip = frame.get(IP..TCP)?;
            if ip[ip_field::VER_IHL] != VERSION_IHL_NO_OPTIONS
                || ip[ip_field::PROTOCOL] != PROTOCOL_TCP
                || read_u16(ip, ip_field::FLG_OFF) & !IP_DONT_FRAGMENT != 0
                || checksum::sum(ip) != 0xffff
            {
                return None;
            }
            (
                TCP,
                read_u16(ip, ip_field::LENGTH),
                read_u16(ip, ip_field::IDENT),
            )
        };
        let ip = frame.get(IP..tcp_start)?;
        let end = IP + usize::from(ip_len);
        let tcp = frame.get(tcp_start..end)?;
        let data_off = *tcp.get(tcp_field::DATA_OFF)?;
        // Reserved bits and AE (formerly NS) clear; the header fits and leaves a payload.
        let header_len = usize::from(data_off >> 4) * 4;
        if data_off & 0x0f != 0 || header_len < TCP_HEADER_LEN || header_len >= tcp.len() {
            return None;
        }
        let psh = match tcp[tcp_field::FLAGS] {
            tcp_flags::ACK => false,
            flags if flags == tcp_flags::ACK | tcp_flags::PSH => true,
            _ => return None,
        };
        if verify_tcp {
            let tcp_len = u16::try_from(tcp.len()).ok()?;
            let pseudo = pseudo_header(ip, v6, tcp_len);
            if checksum::combine(&[pseudo, checksum::sum(tcp)]) != 0xffff {
                return None;
            }
        }
        Some(Segment {
            end,
            payload: tcp_start + header_len,
            ip_len,
            seq: read_u32(tcp, tcp_field::SEQ_NUM),
            ident,
            psh,
            tcp: tcp_start,
            v6,
        })
    }
}

/// A big-endian 16-bit field of a header whose length was checked.
fn read_u16(header: &[u8], range: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([header[range.start], header[range.start + 1]])
}

/// A big-endian 32-bit field of a header whose length was checked.
fn read_u32(header: &[u8], range: core::ops::Range<usize>) -> u32 {
    u32::from_be_bytes([
        header[range.start],
        header[range.start + 1],
        header[range.start + 2],
        header[range.start + 3],
    ])
}

/// An IPv4 address field of a header whose length was checked.
fn address(header: &[u8], range: core::ops::Range<usize>) -> Ipv4Addr {
    Ipv4Addr::from(read_u32(header, range))
}

/// An IPv6 address field of a header whose length was checked.
fn address6(header: &[u8], range: core::ops::Range<usize>) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    if let Some(field) = header.get(range) {
        octets.copy_from_slice(field);
    }
    Ipv6Addr::from(octets)
}

/// The TCP pseudo-header sum of the IP header `ip` (IPv4 without options, or IPv6 without
/// extension headers) for `tcp_len` bytes of TCP.
fn pseudo_header(ip: &[u8], v6: bool, tcp_len: u16) -> u16 {
    if v6 {
        checksum::pseudo_header_ipv6(
            address6(ip, ip6_field::SRC_ADDR),
            address6(ip, ip6_field::DST_ADDR),
            PROTOCOL_TCP,
            u32::from(tcp_len),
        )
    } else {
        checksum::pseudo_header_ipv4(
            address(ip, ip_field::SRC_ADDR),
            address(ip, ip_field::DST_ADDR),
            PROTOCOL_TCP,
            tcp_len,
        )
    }
}

/// How the IP identification moves within a run with DF set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentMode {
    /// Not known yet (one segment).
    Unknown,
    /// `+1` per segment.
    Incrementing,
    /// The same in every segment.
    Fixed,
}

/// Merges consecutive TCP over IPv4 segments of one flow into GSO super-frames (see the module
/// docs); owns one scratch buffer (allocated once, reused: no allocation per packet).
///
/// One coalescer serves one destination at a time: push its frames in the order they must
/// leave, then [`flush`](Coalescer::flush) at the end of the batch.
pub struct Coalescer {
    /// The pending run: the first frame as pushed, then (from the second segment) the
    /// payloads appended after its IP packet.
    scratch: Box<[u8]>,
    /// Bytes of the pending run in `scratch`; 0 when there is none.
    len: usize,
    /// The pending run's state.
    run: Run,
}

/// The state of a run of segments being merged, wherever its bytes are (the coalescer's
/// scratch buffer, or a receive buffer merged in place).
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Segments in the run.
    segments: usize,
    /// IP total length of the merged packet.
    ip_len: u16,
    /// Payload of the first segment: the run's MSS.
    mss: usize,
    /// TCP header length (options included) of the run.
    header_len: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Identification of the last segment.
    last_ident: u16,
    /// How identifications move (runs with DF).
    ident_mode: IdentMode,
    /// The last segment had PSH.
    psh: bool,
    /// No segment may join any more (PSH, or a segment shorter than the MSS).
    closed: bool,
    /// Start of the TCP header in the run's first frame.
    tcp: usize,
    /// IPv6.
    v6: bool,
}

impl fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("pending_len", &self.len)
            .field("segments", &self.run.segments)
            .field("mss", &self.run.mss)
            .field("closed", &self.run.closed)
            .finish_non_exhaustive()
    }
}

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer::new()
    }
}

impl Coalescer {
    /// A coalescer with its scratch buffer (about 64 KiB, the largest super-frame).
    pub fn new() -> Coalescer {
        Coalescer {
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            len: 0,
            run: Run::start(&Segment {
                end: TCP + TCP_HEADER_LEN + 1,
                payload: TCP + TCP_HEADER_LEN,
                ip_len: 0,
                seq: 0,
                ident: 0,
                psh: false,
                tcp: TCP,
                v6: false,
            }),
        }
    }

    /// True when a run is pending (a [`flush`](Coalescer::flush) would emit a frame).
    pub fn is_pending(&self) -> bool {
        self.len != 0
    }

    /// Offers the next frame (a `virtio_net_hdr` followed by an Ethernet frame) for one
    /// destination, frames in the order they must leave.
    ///
    /// If it continues the pending run, it is absorbed (its payload copied in) and `emit` is
    /// not called. Otherwise the pending run (if any) is emitted first — as one GSO super-frame
    /// when it holds 2 or more segments, or as the original frame unchanged — and then the new
    /// frame either starts a new run (if it is a coalescable TCP segment without PSH) or is
    /// emitted unchanged at once.
    pub fn push(&mut self, frame: &[u8], emit: &mut impl FnMut(&[u8])) {
        let segment = Segment::parse(frame);
        if let Some(segment) = segment
            && self.len != 0
            && self
                .run
                .continues(&self.scratch[..self.len], frame, &segment)
        {
            self.absorb(frame, &segment);
            return;
        }
        self.flush(emit);
        match segment {
            Some(segment) if !segment.psh && frame.len() <= self.scratch.len() => {
                self.start(frame, &segment);
            }
            _ => emit(frame),
        }
    }

    /// Emits the pending run, if any (call at the end of the batch for this destination).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        if self.run.segments >= 2 {
            self.run.finish_headers(&mut self.scratch[..]);
            self.run.write_vnet_header(&mut self.scratch[..]);
            crate::cost::coalesced(self.run.segments - 1);
        }
        emit(&self.scratch[..self.len]);
        self.len = 0;
    }

    /// Starts a run with `frame`, copied whole (a run of one leaves unchanged).
    fn start(&mut self, frame: &[u8], segment: &Segment) {
        self.scratch[..frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        self.run = Run::start(segment);
    }

    /// Appends the payload of `segment` (parsed from `frame`, accepted by `continues`).
    fn absorb(&mut self, frame: &[u8], segment: &Segment) {
        if self.run.segments == 1 {
            // Drop the first segment's Ethernet padding.
            self.len = IP + usize::from(self.run.ip_len);
        }
        let payload = &frame[segment.payload..segment.end];
        self.scratch[self.len..self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        self.run.absorb(segment);
    }
}

impl Run {
    /// A run of the one segment `segment`.
    fn start(segment: &Segment) -> Run {
        Run {
            segments: 1,
            ip_len: segment.ip_len,
            mss: segment.payload_len(),
            header_len: segment.payload - segment.tcp,
            next_seq: segment.seq.wrapping_add(payload_len_u32(segment)),
            last_ident: segment.ident,
            ident_mode: IdentMode::Unknown,
            psh: segment.psh,
            closed: segment.psh,
            tcp: segment.tcp,
            v6: segment.v6,
        }
    }

    /// True when the coalescable `segment` (parsed from `frame`) may join the run, whose
    /// first frame's headers (as received) are at the start of `run`.
    fn continues(&self, run: &[u8], frame: &[u8], segment: &Segment) -> bool {
        if self.closed || segment.v6 != self.v6 || segment.tcp != self.tcp {
            return false;
        }
        let tcp_start = self.tcp;
        let header_len = segment.payload - tcp_start;
        if header_len != self.header_len || run.len() < tcp_start + header_len {
            // Also keeps the run's TCP header as long as this one's for the comparisons.
            return false;
        }
        let payload_len = segment.payload_len();
        let (ip, run_ip) = (&frame[IP..tcp_start], &run[IP..tcp_start]);
        let (tcp, run_tcp) = (
            &frame[tcp_start..segment.payload],
            &run[tcp_start..tcp_start + header_len],
        );
        let same =
            |a: &[u8], b: &[u8], range: core::ops::Range<usize>| a[range.clone()] == b[range];
        let same_ip = if self.v6 {
            same(ip, run_ip, ip6_field::VERSION_CLASS_FLOW)
                && same(ip, run_ip, ip6_field::NEXT_HEADER_TO_END)
        } else {
            ip[ip_field::TOS] == run_ip[ip_field::TOS]
                && same(ip, run_ip, ip_field::FLG_OFF_TTL_PROTOCOL)
                && same(ip, run_ip, ip_field::ADDRESSES)
                && self.ident_follows(segment.ident, ip)
        };
        frame[ETH..IP] == run[ETH..IP]
            && same_ip
            && same(tcp, run_tcp, tcp_field::PORTS)
            && same(tcp, run_tcp, tcp_field::ACK_NUM_DATA_OFF)
            && same(tcp, run_tcp, tcp_field::WINDOW)
            && same(tcp, run_tcp, tcp_field::URGENT..header_len)
            && segment.seq == self.next_seq
            && payload_len <= self.mss
            && self
                .ip_len
                .checked_add(u16::try_from(payload_len).unwrap_or(u16::MAX))
                .is_some()
    }

    /// True when `ident` may follow the run's last identification (see the module docs).
    fn ident_follows(&self, ident: u16, ip: &[u8]) -> bool {
        let incrementing = ident == self.last_ident.wrapping_add(1);
        let dont_fragment = read_u16(ip, ip_field::FLG_OFF) & IP_DONT_FRAGMENT != 0;
        if !dont_fragment {
            return incrementing;
        }
        match self.ident_mode {
            IdentMode::Unknown => incrementing || ident == self.last_ident,
            IdentMode::Incrementing => incrementing,
            IdentMode::Fixed => ident == self.last_ident,
        }
    }

    /// Adds `segment` (accepted by `continues`) to the run's state; its payload is the
    /// caller's to move.
    fn absorb(&mut self, segment: &Segment) {
        if self.segments == 1 {
            self.ident_mode = if segment.ident == self.last_ident {
                IdentMode::Fixed
            } else {
                IdentMode::Incrementing
            };
        }
        let payload_len = segment.payload_len();
        // `continues` checked that the sum fits; the saturation never fires.
        let grown = u16::try_from(payload_len).unwrap_or(u16::MAX);
        self.ip_len = self.ip_len.saturating_add(grown);
        self.segments += 1;
        self.next_seq = segment.seq.wrapping_add(payload_len_u32(segment));
        self.last_ident = segment.ident;
        self.psh = segment.psh;
        self.closed = segment.psh || payload_len < self.mss;
    }

    /// Rewrites the headers of the run's first frame, at the start of `frame`, for the merged
    /// packet (2+ segments): IP total length and header checksum, PSH if the last segment had
    /// it, and the pseudo-header sum in the TCP checksum field. The `virtio_net_hdr` is
    /// [`write_vnet_header`](Run::write_vnet_header)'s.
    fn finish_headers(&self, frame: &mut [u8]) {
        let ip = &mut frame[IP..self.tcp];
        // The IP header's length, at most 40: the subtraction cannot underflow (ip_len holds it).
        let header = u16::try_from(ip.len()).unwrap_or(0);
        let tcp_len = self.ip_len.saturating_sub(header);
        if self.v6 {
            ip[ip6_field::PAYLOAD_LENGTH].copy_from_slice(&tcp_len.to_be_bytes());
        } else {
            ip[ip_field::LENGTH].copy_from_slice(&self.ip_len.to_be_bytes());
            ip[ip_field::CHECKSUM].copy_from_slice(&[0, 0]);
            let ip_checksum = checksum::checksum(ip);
            ip[ip_field::CHECKSUM].copy_from_slice(&ip_checksum.to_be_bytes());
        }
        let pseudo = pseudo_header(ip, self.v6, tcp_len);
        let tcp = &mut frame[self.tcp..];
        if self.psh {
            tcp[tcp_field::FLAGS] |= tcp_flags::PSH;
        }
        tcp[tcp_field::CHECKSUM].copy_from_slice(&pseudo.to_be_bytes());
    }

    /// Writes the super-frame's `virtio_net_hdr` at the start of `frame`.
    fn write_vnet_header(&self, frame: &mut [u8]) {
        write_super_frame_header(frame, self.tcp, self.header_len, self.mss);
    }
}

/// Writes, at the start of `frame`, the `virtio_net_hdr` of a TCP super-frame whose TCP
/// header starts at `tcp` ([`TCP`]: IPv4 with IHL 5; [`TCP6`]: IPv6 without extension
/// headers) with `tcp_header_len` bytes of TCP header and segments of `mss` bytes:
/// `NEEDS_CSUM`, TCPV4 or TCPV6, `hdr_len`, `gso_size`, `csum_start` and `csum_offset` (see
/// the module docs).
fn write_super_frame_header(frame: &mut [u8], tcp: usize, tcp_header_len: usize, mss: usize) {
    // Header lengths are at most 14 + 40 + 60 and the MSS below 65535: no saturation fires.
    let to_u16 = |value: usize| u16::try_from(value).unwrap_or(u16::MAX);
    let mut vnet = vnet_hdr::Packet::new_unchecked(&mut frame[..VNET_HEADER_LEN]);
    vnet.set_flags(vnet_hdr::flags::NEEDS_CSUM);
    vnet.set_gso_type(if tcp == TCP6 {
        vnet_hdr::gso::TCPV6
    } else {
        vnet_hdr::gso::TCPV4
    });
    vnet.set_hdr_len(to_u16(tcp - ETH + tcp_header_len));
    vnet.set_gso_size(to_u16(mss));
    vnet.set_csum_start(to_u16(tcp - ETH));
    vnet.set_csum_offset(TCP_CHECKSUM_OFFSET);
}

/// What [`merge_in_place`] merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// How many frames, from the first, are now one (2 or more).
    pub segments: usize,
    /// The merged frame's length, prefix included.
    pub len: usize,
    /// The run's MSS (the first segment's payload): the super-frame's `gso_size`.
    pub mss: u16,
}

/// Merges, in place, the leading run of `count` frames laid out back to back in `buf` (the
/// segments of one `UDP_GRO` buffer) into one super-frame, by the same rules as
/// [`Coalescer`] (see the module docs), without copying anything but the payloads, each moved
/// once toward the front. Returns `None` when fewer than two frames merge; `buf` is then
/// unchanged.
///
/// `frame(j)` is the range of frame `j` in `buf`: a [`VNET_HEADER_LEN`]-byte prefix, then
/// the Ethernet frame. The ranges increase; a prefix may reach back into the previous
/// frame's last bytes, because only the prefix bytes in `same` are read: those must be equal
/// in every merged frame (an encapsulation header, such as VXLAN's: what the merged frame
/// keeps of it is the first frame's). No `virtio_net_hdr` is read or written: the caller
/// writes the super-frame's with [`write_super_frame_vnet_header`] once the prefix is free.
///
/// On success the first frame is the super-frame's headers (rewritten as the module docs
/// say, the prefix untouched) followed by every merged payload, `Merged::len` bytes from
/// its start; frames from `Merged::segments` on are where they were, intact, except for the
/// prefix bytes outside `same` of the first of them. Never panics.
///
/// With `partial_tcp` the segments' TCP checksums are not verified: for segments whose
/// sender left them partial and whose integrity something else vouches for (VXLAN remote
/// checksum offload under a verified outer UDP checksum). The super-frame is partial either
/// way.
pub fn merge_in_place(
    buf: &mut [u8],
    count: usize,
    frame: impl Fn(usize) -> core::ops::Range<usize>,
    same: core::ops::Range<usize>,
    partial_tcp: bool,
) -> Option<Merged> {
    if count < 2 || same.start > same.end || same.end > ETH {
        return None;
    }
    let first = frame(0);
    let head = Segment::parse_headers(buf.get(first.clone())?, !partial_tcp)?;
    let mut run = Run::start(&head);
    if run.closed {
        return None;
    }
    let headers = first.start..first.start + head.payload;
    let mut write = first.start + head.end;
    for j in 1..count {
        let range = frame(j);
        // The first byte of frame `j` that is read must not have been overwritten.
        let first_read = if same.is_empty() { ETH } else { same.start };
        if range.start + first_read < write || range.end > buf.len() || range.end < range.start {
            break;
        }
        let view = &buf[range.clone()];
        let run_view = &buf[headers.clone()];
        let Some(segment) = Segment::parse_headers(view, !partial_tcp) else {
            break;
        };
        if view.get(same.clone()) != run_view.get(same.clone())
            || !run.continues(run_view, view, &segment)
        {
            break;
        }
        let payload = range.start + segment.payload..range.start + segment.end;
        buf.copy_within(payload.clone(), write);
        write += payload.len();
        run.absorb(&segment);
        if run.closed {
            break;
        }
    }
    if run.segments < 2 {
        return None;
    }
    run.finish_headers(&mut buf[first.start..]);
    crate::cost::coalesced(run.segments - 1);
    Some(Merged {
        segments: run.segments,
        len: write - first.start,
        mss: u16::try_from(run.mss).unwrap_or(u16::MAX),
    })
}

/// Writes, at the start of `frame` (a `virtio_net_hdr`, then an Ethernet frame), the
/// `virtio_net_hdr` of the super-frame [`merge_in_place`] made there, segments of `mss`
/// bytes. False, and nothing written, when the frame does not hold a TCP over IPv4 or IPv6
/// header.
pub fn write_super_frame_vnet_header(frame: &mut [u8], mss: u16) -> bool {
    let tcp = match frame.get(IP - 2..IP) {
        Some(ethertype) if ethertype == ETHERTYPE_IPV4 => TCP,
        Some(ethertype) if ethertype == ETHERTYPE_IPV6 => TCP6,
        _ => return false,
    };
    let Some(&data_off) = frame.get(tcp + tcp_field::DATA_OFF) else {
        return false;
    };
    let header_len = usize::from(data_off >> 4) * 4;
    if header_len < TCP_HEADER_LEN || frame.len() < tcp + header_len {
        return false;
    }
    write_super_frame_header(frame, tcp, header_len, usize::from(mss));
    true
}

/// The payload length of a segment, for sequence arithmetic (below 65536).
fn payload_len_u32(segment: &Segment) -> u32 {
    u32::try_from(segment.payload_len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::complete_partial_checksum;
    use crate::wire::gso::Segmenter;
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

    const ACK: u8 = tcp_flags::ACK;
    const PSH: u8 = tcp_flags::PSH;
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;

    /// A TCP over IPv4 segment to build.
    #[derive(Debug, Clone)]
    struct Spec {
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        seq: u32,
        ack: u32,
        window: u16,
        flags: u8,
        ident: u16,
        df: bool,
        tos: u8,
        ttl: u8,
        options: Vec<u8>,
        payload: Vec<u8>,
        padding: usize,
        vnet_flags: u8,
    }

    /// Timestamps option (NOP, NOP, TS): 12 bytes.
    fn timestamps(value: u32) -> Vec<u8> {
        let mut option = vec![1, 1, 8, 10];
        option.extend_from_slice(&value.to_be_bytes());
        option.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        option
    }

    impl Spec {
        fn new(seq: u32, len: usize) -> Spec {
            Spec {
                src: [10, 0, 0, 1],
                dst: [10, 0, 0, 2],
                ports: (40000, 5201),
                seq,
                ack: 0x7000_0000,
                window: 512,
                flags: ACK,
                ident: 0x1000,
                df: true,
                tos: 0,
                ttl: 64,
                options: timestamps(1),
                payload: (0..len)
                    .map(|i| u8::try_from((i * 7 + seq as usize) % 251).unwrap())
                    .collect(),
                padding: 0,
                vnet_flags: 0,
            }
        }

        fn build(&self) -> Vec<u8> {
            let tcp_len = 20 + self.options.len() + self.payload.len();
            let ip_len = 20 + tcp_len;
            let mut frame = vec![0u8; IP + ip_len + self.padding];
            frame[0] = self.vnet_flags;
            frame[ETH..ETH + 6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            frame[ETH + 6..ETH + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            frame[ETH + 12..IP].copy_from_slice(&ETHERTYPE_IPV4);
            {
                let ip = &mut frame[IP..TCP];
                ip[0] = 0x45;
                ip[1] = self.tos;
                ip[2..4].copy_from_slice(&u16::try_from(ip_len).unwrap().to_be_bytes());
                ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
                ip[6] = if self.df { 0x40 } else { 0 };
                ip[8] = self.ttl;
                ip[9] = PROTOCOL_TCP;
                ip[12..16].copy_from_slice(&self.src);
                ip[16..20].copy_from_slice(&self.dst);
                let sum = checksum::checksum(ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            let tcp = &mut frame[TCP..IP + ip_len];
            tcp[0..2].copy_from_slice(&self.ports.0.to_be_bytes());
            tcp[2..4].copy_from_slice(&self.ports.1.to_be_bytes());
            tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
            tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
            tcp[12] = u8::try_from((20 + self.options.len()) / 4).unwrap() << 4;
            tcp[13] = self.flags;
            tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
            let options_end = 20 + self.options.len();
            tcp[20..options_end].copy_from_slice(&self.options);
            tcp[options_end..].copy_from_slice(&self.payload);
            let mut packet = TcpPacket::new_unchecked(tcp);
            packet.fill_checksum(&ip_addr(self.src), &ip_addr(self.dst));
            frame
        }
    }

    fn ip_addr(octets: [u8; 4]) -> IpAddress {
        IpAddress::Ipv4(Ipv4Addr::from(octets))
    }

    /// `count` consecutive segments of `mss` bytes (incrementing identification).
    fn stream(count: usize, mss: usize) -> Vec<Spec> {
        (0..count)
            .map(|i| Spec {
                ident: 0x1000 + u16::try_from(i).unwrap(),
                ..Spec::new(0x1000_0000 + u32::try_from(i * mss).unwrap(), mss)
            })
            .collect()
    }

    fn build_all(specs: &[Spec]) -> Vec<Vec<u8>> {
        specs.iter().map(Spec::build).collect()
    }

    /// Pushes every frame, flushes, and returns what was emitted.
    fn run(coalescer: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut emit = |frame: &[u8]| out.push(frame.to_vec());
        for frame in frames {
            coalescer.push(frame, &mut emit);
        }
        coalescer.flush(&mut emit);
        assert!(!coalescer.is_pending());
        out
    }

    /// The TCP payload of an IPv4/TCP frame (by IP length), empty for anything else.
    fn tcp_payload(frame: &[u8]) -> &[u8] {
        let Some(ip) = frame.get(IP..) else {
            return &[];
        };
        if frame[ETH + 12..IP] != ETHERTYPE_IPV4 {
            return &[];
        }
        let Ok(ip) = Ipv4Packet::new_checked(ip) else {
            return &[];
        };
        if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
            return &[];
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return &[];
        };
        let start = IP + usize::from(ip.header_len()) + usize::from(tcp.header_len());
        &frame[start..IP + usize::from(ip.total_len())]
    }

    /// The TCP checksum 0xffff rewritten as 0 (the same number), for byte comparisons.
    fn normalise(frame: &[u8]) -> Vec<u8> {
        let mut frame = frame.to_vec();
        if frame.len() >= TCP + 18
            && frame[ETH + 12..IP] == ETHERTYPE_IPV4
            && frame[IP] == 0x45
            && frame[IP + 9] == PROTOCOL_TCP
            && frame[TCP + 16..TCP + 18] == [0xff, 0xff]
        {
            frame[TCP + 16..TCP + 18].copy_from_slice(&[0, 0]);
        }
        frame
    }

    /// Checks a super-frame made of `parts` (complete frames).
    fn check_super_frame(frame: &[u8], parts: &[Vec<u8>]) {
        let vnet = vnet_hdr::Packet::new_checked(frame).unwrap();
        let part_tcp_header_len = usize::from(parts[0][TCP + 12] >> 4) * 4;
        let mss = tcp_payload(&parts[0]).len();
        assert_eq!(vnet.flags(), vnet_hdr::flags::NEEDS_CSUM);
        assert_eq!(vnet.gso_type(), vnet_hdr::gso::TCPV4);
        assert_eq!(usize::from(vnet.gso_size()), mss);
        assert_eq!(usize::from(vnet.hdr_len()), 34 + part_tcp_header_len);
        assert_eq!(vnet.csum_start(), 34);
        assert_eq!(vnet.csum_offset(), 16);

        let ip = Ipv4Packet::new_checked(&frame[IP..]).unwrap();
        assert_eq!(usize::from(ip.total_len()), frame.len() - IP);
        assert!(ip.verify_checksum());
        assert_eq!(
            ip.ident(),
            Ipv4Packet::new_checked(&parts[0][IP..]).unwrap().ident()
        );

        let expected: Vec<u8> = parts.iter().flat_map(|p| tcp_payload(p).to_vec()).collect();
        assert_eq!(tcp_payload(frame), &expected[..]);
        // Headers other than lengths, checksums and PSH are the first part's.
        assert_eq!(frame[ETH..IP + 2], parts[0][ETH..IP + 2]);
        assert_eq!(frame[IP + 4..IP + 10], parts[0][IP + 4..IP + 10]);
        assert_eq!(frame[TCP..TCP + 13], parts[0][TCP..TCP + 13]);
        let last_flags = parts.last().unwrap()[TCP + 13];
        assert_eq!(frame[TCP + 13], parts[0][TCP + 13] | (last_flags & PSH));
        assert_eq!(frame[TCP + 14..TCP + 16], parts[0][TCP + 14..TCP + 16]);
        assert_eq!(
            frame[TCP + 18..TCP + part_tcp_header_len],
            parts[0][TCP + 18..TCP + part_tcp_header_len]
        );

        // The checksum field holds what the kernel leaves for CHECKSUM_PARTIAL: completing it
        // gives a segment that verifies.
        let mut completed = frame[ETH..].to_vec();
        complete_partial_checksum(&mut completed, 34, 16).unwrap();
        let ip = Ipv4Packet::new_checked(&completed[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));

        // Segmenting it again gives back the parts, when they had no padding and
        // incrementing identifications (what the segmenter writes).
        let idents_increment = parts.iter().enumerate().all(|(i, p)| {
            let first = Ipv4Packet::new_checked(&parts[0][IP..]).unwrap().ident();
            Ipv4Packet::new_checked(&p[IP..]).unwrap().ident()
                == first.wrapping_add(u16::try_from(i).unwrap())
        });
        let unpadded = parts
            .iter()
            .all(|p| tcp_payload(p).as_ptr_range().end == p.as_ptr_range().end);
        let unflagged = parts.iter().all(|p| p[0] == 0);
        if idents_increment && unpadded && unflagged {
            let mut segments = Vec::new();
            Segmenter::new()
                .segment(frame, |s| segments.push(normalise(s)))
                .unwrap();
            let parts: Vec<Vec<u8>> = parts.iter().map(|p| normalise(p)).collect();
            assert_eq!(segments, parts);
        }
    }

    /// Runs `frames` through a coalescer and checks that the output is groups of them of the
    /// `sizes` given, in order: single frames unchanged, longer groups as one super-frame.
    fn assert_groups(frames: &[Vec<u8>], sizes: &[usize]) {
        let out = run(&mut Coalescer::new(), frames);
        assert_eq!(out.len(), sizes.len(), "frames out: {out:?}");
        let mut next = 0;
        for (frame, size) in out.iter().zip(sizes) {
            let group = next..next + size;
            next = group.end;
            if group.len() == 1 {
                assert_eq!(
                    frame, &frames[group.start],
                    "frame {} unchanged",
                    group.start
                );
            } else {
                check_super_frame(frame, &frames[group.clone()]);
            }
        }
        assert_eq!(next, frames.len());
    }

    /// A TCP over IPv6 super-frame as a TAP hands it over: `payload_len` bytes in segments
    /// of `mss`, timestamps in the TCP options, the checksum field holding the
    /// pseudo-header sum.
    fn tcp6_super_frame(payload_len: usize, mss: u16, seq: u32) -> Vec<u8> {
        let options = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let tcp_len = 20 + options.len() + payload_len;
        let mut frame = vec![0u8; VNET_HEADER_LEN];
        frame[0] = vnet_hdr::flags::NEEDS_CSUM;
        frame[1] = vnet_hdr::gso::TCPV6;
        frame[2..4].copy_from_slice(&u16::try_from(TCP6 - ETH + 32).unwrap().to_le_bytes());
        frame[4..6].copy_from_slice(&mss.to_le_bytes());
        frame[6..8].copy_from_slice(&u16::try_from(TCP6 - ETH).unwrap().to_le_bytes());
        frame[8..10].copy_from_slice(&16u16.to_le_bytes());
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        let src: Ipv6Addr = "fd00:10:0:1::5".parse().unwrap();
        let dst: Ipv6Addr = "fd00:10:0:2::7".parse().unwrap();
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&u16::try_from(tcp_len).unwrap().to_be_bytes());
        ip[6] = PROTOCOL_TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        frame.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 0x80; // 32 bytes of header
        tcp[13] = ACK | PSH;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        let pseudo =
            checksum::pseudo_header_ipv6(src, dst, PROTOCOL_TCP, u32::try_from(tcp_len).unwrap());
        tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
        tcp.extend_from_slice(&options);
        frame.extend_from_slice(&tcp);
        frame.extend((0..payload_len).map(|i| u8::try_from(i % 251).unwrap()));
        frame
    }

    /// TCP over IPv6: the segments of a super-frame merge back into one TCPV6 super-frame
    /// (payload length, the pseudo-header sum, csum_start 54), by the coalescer and in place,
    /// and segmenting that again gives the same segments.
    #[test]
    fn ipv6_segments_merge_into_a_tcpv6_super_frame() {
        let (payload_len, mss) = (10_000, 1368);
        let original = tcp6_super_frame(payload_len, mss, 1000);
        let mut parts = Vec::new();
        Segmenter::new()
            .segment(&original, |s| parts.push(s.to_vec()))
            .unwrap();
        assert_eq!(parts.len(), payload_len.div_ceil(usize::from(mss)));
        let out = run(&mut Coalescer::new(), &parts);
        assert_eq!(out.len(), 1, "one super-frame");
        let frame = &out[0];
        let vnet = vnet_hdr::Packet::new_checked(&frame[..]).unwrap();
        assert_eq!(vnet.gso_type(), vnet_hdr::gso::TCPV6);
        assert!(vnet.needs_csum());
        assert_eq!(vnet.gso_size(), mss);
        assert_eq!(usize::from(vnet.csum_start()), TCP6 - ETH);
        assert_eq!(usize::from(vnet.hdr_len()), TCP6 - ETH + 32);
        assert_eq!(frame.len(), TCP6 + 32 + payload_len);
        assert_eq!(
            usize::from(read_u16(&frame[IP..], ip6_field::PAYLOAD_LENGTH)),
            32 + payload_len
        );
        assert_eq!(frame[TCP6 + 13], ACK | PSH, "the last segment's PSH");
        // Completing the partial checksum gives a valid TCP checksum.
        let mut completed = frame[ETH..].to_vec();
        complete_partial_checksum(&mut completed, TCP6 - ETH, 16).unwrap();
        let ip = smoltcp::wire::Ipv6Packet::new_checked(&completed[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv6(ip.src_addr()),
            &IpAddress::Ipv6(ip.dst_addr())
        ));
        // Segmenting it again gives the same segments.
        let mut again = Vec::new();
        Segmenter::new()
            .segment(frame, |s| again.push(s.to_vec()))
            .unwrap();
        assert_eq!(again, parts);

        // In place, as the VTEP merges a UDP_GRO buffer: the same super-frame.
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for part in &parts {
            ranges.push(buf.len()..buf.len() + part.len());
            buf.extend_from_slice(part);
        }
        let merged = merge_in_place(&mut buf, parts.len(), |j| ranges[j].clone(), 0..0, false)
            .expect("merged");
        assert_eq!(merged.segments, parts.len());
        let mut in_place = buf[..merged.len].to_vec();
        assert!(write_super_frame_vnet_header(&mut in_place, merged.mss));
        assert_eq!(in_place, *frame);
        // A corrupted segment is not merged in (its checksum is verified): it leaves as it
        // came, between the run before it and the run after it.
        let mut corrupt = parts.clone();
        let last = corrupt[1].len() - 1;
        corrupt[1][last] ^= 0xff;
        let out = run(&mut Coalescer::new(), &corrupt);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], corrupt[0]);
        assert_eq!(out[1], corrupt[1]);
        assert_eq!(
            vnet_hdr::Packet::new_checked(&out[2][..])
                .unwrap()
                .gso_type(),
            vnet_hdr::gso::TCPV6
        );
    }

    #[test]
    fn contiguous_segments_merge() {
        let mut specs = stream(4, 1000);
        specs[3].payload.truncate(300);
        specs[3].flags = ACK | PSH;
        let frames = build_all(&specs);
        assert_groups(&frames, &[4]);
        let out = run(&mut Coalescer::new(), &frames);
        assert_eq!(out[0].len(), IP + 20 + 32 + 3300);
        assert_eq!(out[0][TCP + 13], ACK | PSH);
    }

    #[test]
    fn three_segments_without_options_or_df() {
        let mut specs = stream(3, 1448);
        for spec in &mut specs {
            spec.options.clear();
            spec.df = false;
        }
        assert_groups(&build_all(&specs), &[3]);
    }

    #[test]
    fn single_segment_unchanged() {
        assert_groups(&build_all(&stream(1, 1448)), &[1]);
        // Padding included.
        let mut spec = Spec::new(1, 2);
        spec.options.clear();
        spec.padding = 4;
        assert_groups(&[spec.build()], &[1]);
    }

    #[test]
    fn seq_gap_ends_run() {
        let mut specs = stream(5, 1000);
        specs.remove(2);
        assert_groups(&build_all(&specs), &[2, 2]);
    }

    #[test]
    fn different_flow_ends_run() {
        let mut specs = stream(3, 1000);
        let mut other = Spec::new(5, 1000);
        other.ports.0 += 1;
        specs.insert(2, other);
        assert_groups(&build_all(&specs), &[2, 1, 1]);
        for change in 0..8 {
            let mut specs = stream(2, 1000);
            let spec = &mut specs[1];
            match change {
                0 => spec.src[3] = 9,
                1 => spec.dst[3] = 9,
                2 => spec.ports.1 += 1,
                3 => spec.ack += 1,
                4 => spec.window += 1,
                5 => spec.options = timestamps(2),
                6 => spec.options.clear(),
                _ => spec.tos = 2,
            }
            assert_groups(&build_all(&specs), &[1, 1]);
        }
    }

    #[test]
    fn longer_tcp_header_after_tiny_run() {
        let mut first = Spec::new(1, 1);
        first.options.clear();
        let second = Spec {
            ident: first.ident + 1,
            ..Spec::new(2, 1)
        };
        assert_groups(&[first.build(), second.build()], &[1, 1]);
    }

    #[test]
    fn syn_fin_rst_urg_not_merged() {
        for flags in [
            SYN | ACK,
            FIN | ACK,
            0x04 | ACK,
            0x20 | ACK,
            0x40 | ACK,
            0x80 | ACK,
            0,
        ] {
            let mut specs = stream(4, 1000);
            specs[2].flags = flags;
            assert_groups(&build_all(&specs), &[2, 1, 1]);
        }
        // A SYN without payload, alone.
        let mut syn = Spec::new(7, 0);
        syn.flags = SYN;
        assert_groups(&[syn.build()], &[1]);
    }

    #[test]
    fn psh_ends_run() {
        let mut specs = stream(5, 1000);
        specs[1].flags = ACK | PSH;
        assert_groups(&build_all(&specs), &[2, 3]);
        // PSH on the first: nothing may follow it, it leaves at once.
        let mut specs = stream(3, 1000);
        specs[0].flags = ACK | PSH;
        let frames = build_all(&specs);
        let mut coalescer = Coalescer::new();
        let mut out = Vec::new();
        coalescer.push(&frames[0], &mut |f| out.push(f.to_vec()));
        assert_eq!(out, frames[..1]);
        assert!(!coalescer.is_pending());
    }

    #[test]
    fn short_segment_ends_run() {
        let mut specs = stream(4, 1000);
        specs[1].payload.truncate(500);
        for (i, spec) in specs.iter_mut().enumerate().skip(2) {
            spec.seq = 0x1000_0000 + 1500 + u32::try_from((i - 2) * 1000).unwrap();
        }
        assert_groups(&build_all(&specs), &[2, 2]);
    }

    #[test]
    fn longer_segment_starts_new_run() {
        let mut specs = stream(3, 1000);
        specs[0].payload.truncate(500);
        specs[1].seq = 0x1000_0000 + 500;
        specs[2].seq = 0x1000_0000 + 1500;
        assert_groups(&build_all(&specs), &[1, 2]);
    }

    #[test]
    fn non_tcp_ends_run() {
        let specs = stream(4, 1000);
        let mut frames = build_all(&specs);
        let mut udp = frames[0].clone();
        udp[IP + 9] = 17;
        udp[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&udp[IP..TCP]);
        udp[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
        frames.insert(2, udp);
        let mut arp = vec![0u8; VNET_HEADER_LEN + 42];
        arp[ETH + 12..IP].copy_from_slice(&[0x08, 0x06]);
        frames.insert(4, arp);
        assert_groups(&frames, &[2, 1, 1, 1, 1]);
    }

    #[test]
    fn bad_checksums_not_merged() {
        let specs = stream(4, 1000);
        let mut frames = build_all(&specs);
        let last = frames[2].len() - 1;
        frames[2][last] ^= 0x40;
        assert_groups(&frames, &[2, 1, 1]);
        let mut frames = build_all(&specs);
        frames[1][IP + 8] -= 1; // TTL changed, header checksum not updated
        assert_groups(&frames, &[1, 1, 2]);
    }

    #[test]
    fn offloaded_frames_not_merged() {
        let mut specs = stream(3, 1000);
        specs[1].vnet_flags = vnet_hdr::flags::NEEDS_CSUM;
        assert_groups(&build_all(&specs), &[1, 1, 1]);
        // DATA_VALID alone is fine: the checksum is verified anyway.
        let mut specs = stream(3, 1000);
        specs[1].vnet_flags = vnet_hdr::flags::DATA_VALID;
        assert_groups(&build_all(&specs), &[3]);
    }

    #[test]
    fn fragments_and_ip_options_not_merged() {
        let frames = build_all(&stream(3, 1000));
        let mut more_fragments = frames.clone();
        more_fragments[1][IP + 6] |= 0x20;
        let mut fixed = more_fragments[1][IP..TCP].to_vec();
        fixed[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&fixed);
        more_fragments[1][IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
        assert_groups(&more_fragments, &[1, 1, 1]);
        let mut options = frames.clone();
        options[1][IP] = 0x46;
        options[1][IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&options[1][IP..TCP + 4]);
        options[1][IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
        assert_groups(&options, &[1, 1, 1]);
    }

    #[test]
    fn identification_rules() {
        // Without DF the identification must increment.
        let mut specs = stream(3, 1000);
        for spec in &mut specs {
            spec.df = false;
        }
        specs[2].ident = specs[1].ident;
        assert_groups(&build_all(&specs), &[2, 1]);
        // With DF, a fixed identification is fine ...
        let mut specs = stream(3, 1000);
        for spec in &mut specs {
            spec.ident = 7;
        }
        assert_groups(&build_all(&specs), &[3]);
        // ... but not a mix.
        specs[2].ident = 8;
        assert_groups(&build_all(&specs), &[2, 1]);
    }

    #[test]
    fn padding_dropped_when_merged() {
        let mut specs = stream(3, 2);
        for spec in &mut specs {
            spec.options.clear();
            spec.padding = 4;
        }
        let frames = build_all(&specs);
        assert_groups(&frames, &[3]);
        let out = run(&mut Coalescer::new(), &frames);
        assert_eq!(out[0].len(), TCP + 20 + 6);
    }

    #[test]
    fn ip_length_limit() {
        // 45 segments of 1448 bytes make 65160 + 52 bytes of IP packet; a 46th does not fit.
        let frames = build_all(&stream(50, 1448));
        assert_groups(&frames, &[45, 5]);
        // Exactly 65535 = 20 + 32 + 2 * 21828 + 21827 fits; one byte more does not.
        let mut specs = stream(3, 21828);
        specs[2].payload.truncate(21827);
        let frames = build_all(&specs);
        assert_groups(&frames, &[3]);
        let out = run(&mut Coalescer::new(), &frames);
        assert_eq!(out[0].len(), IP + 65535);
        assert_groups(&build_all(&stream(3, 21828)), &[2, 1]);
    }

    #[test]
    fn reused_across_batches() {
        let mut coalescer = Coalescer::new();
        let first = build_all(&stream(3, 800));
        let out = run(&mut coalescer, &first);
        check_super_frame(&out[0], &first);
        let mut specs = stream(2, 1000);
        for spec in &mut specs {
            spec.ports.0 = 1;
        }
        let second = build_all(&specs);
        let out = run(&mut coalescer, &second);
        check_super_frame(&out[0], &second);
        let out = run(&mut coalescer, &first[..1]);
        assert_eq!(out, first[..1]);
    }

    /// One frame of a random sequence.
    #[derive(Debug, Clone)]
    enum Op {
        /// The next segment of flow `flow`, possibly perturbed.
        Segment {
            flow: usize,
            len: usize,
            flags: u8,
            gap: bool,
            corrupt: bool,
            timestamps: bool,
        },
        /// Random bytes (with a zero `virtio_net_hdr`).
        Garbage(Vec<u8>),
    }

    fn arbitrary_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (
                0usize..2,
                prop_oneof![4 => Just(300usize), 1 => 1usize..400],
                prop_oneof![8 => Just(ACK), 2 => Just(ACK | PSH), 1 => any::<u8>()],
                proptest::bool::weighted(0.05),
                proptest::bool::weighted(0.05),
                proptest::bool::weighted(0.9),
            )
                .prop_map(|(flow, len, flags, gap, corrupt, timestamps)| Op::Segment {
                    flow,
                    len,
                    flags,
                    gap,
                    corrupt,
                    timestamps,
                }),
            1 => proptest::collection::vec(any::<u8>(), 0..120).prop_map(Op::Garbage),
        ]
    }

    fn frames_of(ops: &[Op]) -> Vec<Vec<u8>> {
        let mut seqs = [1u32, 0xffff_ff00];
        let mut idents = [0u16, 0xfff0];
        ops.iter()
            .map(|op| match op {
                Op::Segment {
                    flow,
                    len,
                    flags,
                    gap,
                    corrupt,
                    timestamps,
                } => {
                    if *gap {
                        seqs[*flow] = seqs[*flow].wrapping_add(1);
                    }
                    let mut spec = Spec::new(seqs[*flow], *len);
                    spec.ports.0 += u16::try_from(*flow).unwrap();
                    spec.flags = *flags;
                    spec.ident = idents[*flow];
                    spec.df = *flow == 0;
                    if !timestamps {
                        spec.options.clear();
                    }
                    seqs[*flow] = seqs[*flow].wrapping_add(u32::try_from(*len).unwrap());
                    idents[*flow] = idents[*flow].wrapping_add(1);
                    let mut frame = spec.build();
                    if *corrupt {
                        let at = frame.len() / 2;
                        frame[at] ^= 1;
                    }
                    frame
                }
                Op::Garbage(bytes) => {
                    let mut frame = bytes.clone();
                    let header = frame.len().min(VNET_HEADER_LEN);
                    frame[..header].fill(0);
                    frame
                }
            })
            .collect()
    }

    /// Lays `frames` (each a zero `virtio_net_hdr` and an Ethernet frame) out as a `UDP_GRO`
    /// buffer of VXLAN datagrams: 2 bytes of pad, then per frame an 8-byte header from
    /// `header(j)` and the Ethernet frame. Returns the buffer and each frame's view range (its
    /// 10-byte prefix starts 2 bytes before its header).
    fn gro_buffer(
        frames: &[Vec<u8>],
        header: impl Fn(usize) -> [u8; 8],
    ) -> (Vec<u8>, Vec<core::ops::Range<usize>>) {
        let mut buf = vec![0u8; 2];
        let mut views = Vec::new();
        for (j, frame) in frames.iter().enumerate() {
            let start = buf.len() - 2;
            buf.extend_from_slice(&header(j));
            buf.extend_from_slice(&frame[VNET_HEADER_LEN..]);
            views.push(start..buf.len());
        }
        (buf, views)
    }

    const VXLAN_42: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 42, 0];

    /// Merges the buffer laid out from `frames` and checks it against the coalescer.
    fn check_in_place(frames: &[Vec<u8>]) -> Option<Merged> {
        let (mut buf, views) = gro_buffer(frames, |_| VXLAN_42);
        let before = buf.clone();
        let merged = merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, false);
        let out = run(&mut Coalescer::new(), frames);
        let Some(merged) = merged else {
            assert_eq!(buf, before, "nothing merged, nothing changed");
            if let Some(first) = out.first() {
                assert!(!vnet_hdr::Packet::new_checked(&first[..]).unwrap().is_gso());
            }
            return None;
        };
        assert!(merged.segments >= 2);
        // The super-frame: the coalescer's first frame, byte for byte, once the virtio header
        // is written where the pad and the VXLAN header were.
        let start = views[0].start;
        let mut super_frame = buf[start..start + merged.len].to_vec();
        assert_eq!(super_frame[2..10], VXLAN_42, "the VXLAN header stays");
        assert!(write_super_frame_vnet_header(&mut super_frame, merged.mss));
        assert_eq!(super_frame, out[0], "same super-frame as the coalescer");
        let parts: Vec<Vec<u8>> = frames[..merged.segments].to_vec();
        check_super_frame(&super_frame, &parts);
        // The frames after the run are intact (but for the 2 bytes before their header).
        for view in &views[merged.segments..] {
            assert_eq!(
                buf[view.start + 2..view.end],
                before[view.start + 2..view.end]
            );
        }
        Some(merged)
    }

    #[test]
    fn in_place_merge_matches_the_coalescer() {
        let frames = build_all(&stream(44, 1398));
        let merged = check_in_place(&frames).unwrap();
        assert_eq!(merged.segments, 44);
        assert_eq!(merged.mss, 1398);
        // A run that ends early (a different flow): the rest stays for the caller.
        let mut specs = stream(6, 1000);
        specs[4].ports = (1, 2);
        let merged = check_in_place(&build_all(&specs)).unwrap();
        assert_eq!(merged.segments, 4);
        // PSH ends the run after its segment; a short segment too.
        let mut specs = stream(5, 1000);
        specs[2].flags |= PSH;
        assert_eq!(check_in_place(&build_all(&specs)).unwrap().segments, 3);
        let mut specs = stream(5, 1000);
        specs[1].payload.truncate(10);
        assert_eq!(check_in_place(&build_all(&specs)).unwrap().segments, 2);
        // Nothing to merge: one frame, a first frame that cannot start a run.
        assert_eq!(check_in_place(&build_all(&stream(1, 100))), None);
        let mut specs = stream(3, 100);
        specs[0].flags |= PSH;
        assert_eq!(check_in_place(&build_all(&specs)), None);
    }

    /// Segments whose TCP checksum the sender left partial (the pseudo-header sum in the
    /// field, as VXLAN remote checksum offload sends them) merge only when told to trust
    /// them, into the same super-frame as complete ones.
    #[test]
    fn partial_segments_merge_only_when_trusted() {
        let complete = build_all(&stream(4, 800));
        let partial: Vec<Vec<u8>> = complete
            .iter()
            .map(|frame| {
                let mut frame = frame.clone();
                let tcp = TCP;
                let ip = &frame[IP..TCP];
                let tcp_len = u16::try_from(frame.len() - tcp).unwrap();
                let pseudo = checksum::pseudo_header_ipv4(
                    address(ip, ip_field::SRC_ADDR),
                    address(ip, ip_field::DST_ADDR),
                    PROTOCOL_TCP,
                    tcp_len,
                );
                frame[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
                frame
            })
            .collect();
        let (mut buf, views) = gro_buffer(&partial, |_| VXLAN_42);
        assert_eq!(
            merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, false),
            None,
            "unverifiable checksums are not merged by default"
        );
        let merged =
            merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, true).unwrap();
        assert_eq!(merged.segments, 4);
        let (mut reference, views) = gro_buffer(&complete, |_| VXLAN_42);
        let expected = merge_in_place(
            &mut reference,
            views.len(),
            |j| views[j].clone(),
            2..10,
            false,
        )
        .unwrap();
        assert_eq!(merged, expected);
        assert_eq!(buf[..merged.len], reference[..expected.len]);
    }

    #[test]
    fn in_place_merge_needs_equal_encapsulation_headers() {
        let frames = build_all(&stream(5, 500));
        let (mut buf, views) = gro_buffer(&frames, |j| {
            let mut header = VXLAN_42;
            header[6] = if j < 3 { 42 } else { 43 };
            header
        });
        let merged =
            merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, false).unwrap();
        assert_eq!(merged.segments, 3, "the fourth datagram has another VNI");
        // Bad checksums are never merged.
        let mut frames = build_all(&stream(3, 500));
        let last = frames[1].len() - 1;
        frames[1][last] ^= 0xff;
        let (mut buf, views) = gro_buffer(&frames, |_| VXLAN_42);
        assert_eq!(
            merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, false),
            None
        );
    }

    proptest! {
        #[test]
        fn random_frames_round_trip(ops in proptest::collection::vec(arbitrary_op(), 0..60)) {
            let frames = frames_of(&ops);
            let out = run(&mut Coalescer::new(), &frames);
            let bytes = |frames: &[Vec<u8>]| frames.iter().map(|f| tcp_payload(f).len()).sum::<usize>();
            prop_assert_eq!(bytes(&out), bytes(&frames));
            // Segmenting every super-frame again gives back the input, in order.
            let mut segmenter = Segmenter::new();
            let mut expanded = Vec::new();
            for frame in &out {
                if vnet_hdr::Packet::new_checked(&frame[..]).is_ok_and(|p| p.is_gso()) {
                    segmenter.segment(frame, |s| expanded.push(normalise(s))).unwrap();
                } else {
                    expanded.push(normalise(frame));
                }
            }
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| normalise(f)).collect();
            prop_assert_eq!(expanded, frames);
        }

        #[test]
        fn random_frames_merge_in_place_like_the_coalescer(
            ops in proptest::collection::vec(arbitrary_op(), 0..60),
        ) {
            // The in-place merge reads no virtio header: give the coalescer none either.
            let frames: Vec<Vec<u8>> = frames_of(&ops)
                .into_iter()
                .filter(|f| f.len() >= ETH)
                .map(|mut f| { f[..VNET_HEADER_LEN].fill(0); f })
                .collect();
            check_in_place(&frames);
        }

        #[test]
        fn arbitrary_buffers_never_panic_in_place(
            buf in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..700, 0..10),
        ) {
            let mut buf = buf;
            let mut cuts = cuts;
            cuts.sort_unstable();
            let views: Vec<core::ops::Range<usize>> =
                cuts.windows(2).map(|w| w[0]..w[1]).collect();
            let _ = merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 2..10, false);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
        ) {
            let out = run(&mut Coalescer::new(), &frames);
            prop_assert_eq!(out, frames);
        }
    }
}
