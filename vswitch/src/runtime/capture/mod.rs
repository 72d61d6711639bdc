//! Packet capture on a port: the workers copy the frames a capture wants into a bounded ring,
//! and a reader (the control API) turns them into a pcap stream.
//!
//! Invariants:
//! - Off, a capture costs the datapath one relaxed atomic load per received batch and one per
//!   transmitted batch ([`Captures::armed`]): no lock, no allocation, no per-packet work.
//! - On, a worker never blocks and never allocates: each capture has one ring per worker
//!   ([`ring::Ring`], preallocated, [`RING_BYTES`] and [`RING_RECORDS`]), taken with
//!   `try_lock`; a full ring, or one the reader is swapping at that instant, drops the frame
//!   and counts it (`dropped`). The reader swaps a worker's ring for an empty one of the same
//!   size under the lock (a pointer swap), and writes the records outside it.
//! - Frames are captured as the port sees them: received ones (rx) as read, before any stage
//!   rewrites them; transmitted ones (tx) as written to the device, after the rewrites. The
//!   `virtio_net_hdr` is not part of the capture. A TSO super-frame is one record (as
//!   tcpdump on a Linux interface with GSO shows it).
//! - On the VTEP (`vxlan`), records are the outer packets: the VTEP's sockets see UDP
//!   payloads, so the outer Ethernet, IP and UDP headers are synthesized from the socket
//!   addresses (Ethernet addresses zero, UDP checksum zero), and on transmit the VXLAN
//!   header as well. A `UDP_GRO` buffer merged on receive, and a super-frame sent with
//!   `UDP_SEGMENT`, are one record each.
//! - A capture ends when its [`CaptureStream`] is dropped (the client went away, or the
//!   count was reached): it leaves the registry at once, and its rings are freed when the
//!   last worker that loaded the registry before that lets go of it (at its next batch).

pub mod filter;
mod ring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UDP_HEADER_LEN,
    UdpPacket,
};

use crate::port::PortId;
use crate::wire::pcap;
pub use filter::{Filter, FilterError};
use ring::Ring;

/// Bytes of frames each worker's ring of a capture holds before it drops (the reader holds
/// as many again while it writes a swapped-out ring).
pub const RING_BYTES: usize = 4 * 1024 * 1024;

/// Frames each worker's ring of a capture holds before it drops.
pub const RING_RECORDS: usize = 16 * 1024;

/// The largest snap length: a whole TSO super-frame.
pub const MAX_SNAPLEN: u32 = 65_535;

/// The longest outer headers synthesized for a VTEP datagram: Ethernet, IPv6, UDP, and
/// VXLAN for a packet the VTEP sends.
const OUTER_MAX: usize =
    ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN + ::vxlan::header::HEADER_LEN;

/// Which frames of a port a capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Frames received on the port.
    Rx,
    /// Frames sent to the port.
    Tx,
    /// Both.
    Both,
}

impl Direction {
    /// `rx`, `tx` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
            Direction::Both => "both",
        }
    }

    /// Parses `rx`, `tx` or `both`.
    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "rx" => Some(Direction::Rx),
            "tx" => Some(Direction::Tx),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    fn rx(self) -> bool {
        self != Direction::Tx
    }

    fn tx(self) -> bool {
        self != Direction::Rx
    }
}

/// What to capture, validated: the port (by id, resolved from its name by the engine), the
/// direction, the snap length and the filter.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// The port's name, as `/v1/stats` lists it.
    pub port: String,
    /// Which frames.
    pub direction: Direction,
    /// At most this many bytes of each frame are kept (1 to [`MAX_SNAPLEN`]).
    pub snaplen: u32,
    /// Only the frames it matches (all when `None`).
    pub filter: Option<Filter>,
}

/// Why a capture could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// No port, uplink or VTEP has that name.
    #[error("no port {port:?} to capture on; ports: {}", known.join(", "))]
    UnknownPort {
        /// The name asked for.
        port: String,
        /// The names that can be captured on.
        known: Vec<String>,
    },
    /// The port is a stretched subnet's tunnel, which has no device: its frames cross the
    /// VTEP.
    #[error(
        "{port:?} is a subnet's tunnel, which has no device of its own; capture on \"vxlan\" (the VTEP) to see its traffic"
    )]
    TunnelPort {
        /// The name asked for.
        port: String,
    },
}

/// A running capture, as listed by `GET /v1/captures` and in `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureInfo {
    /// Its number, unique while the daemon runs.
    pub id: u64,
    /// The port.
    pub port: String,
    /// `rx`, `tx` or `both`.
    pub direction: Direction,
    /// The filter as understood (empty: every frame).
    pub filter: String,
    /// Frames copied into the rings.
    pub captured: u64,
    /// Frames that matched but found the ring full (the reader too slow) or being swapped.
    pub dropped: u64,
}

/// One capture, shared by the workers (writers) and its [`CaptureStream`] (the reader).
#[derive(Debug)]
pub(crate) struct Capture {
    id: u64,
    port: PortId,
    /// Further ids whose received frames it takes (a bonded uplink's members).
    rx_also: Vec<PortId>,
    name: String,
    direction: Direction,
    snaplen: usize,
    filter: Option<Filter>,
    /// One per worker.
    rings: Box<[Mutex<Ring>]>,
    /// Set when the daemon stops: the reader ends the stream.
    closed: AtomicBool,
    /// Frames lost because the worker found its ring being swapped by the reader.
    contended: AtomicU64,
}

impl Capture {
    /// True when this capture takes `port`'s received frames.
    #[inline]
    pub(crate) fn wants_rx(&self, port: PortId) -> bool {
        (self.port == port || self.rx_also.contains(&port)) && self.direction.rx()
    }

    /// True when this capture takes `port`'s transmitted frames.
    #[inline]
    pub(crate) fn wants_tx(&self, port: PortId) -> bool {
        self.port == port && self.direction.tx()
    }

    /// Offers worker `worker`'s frame `head` + `body` (Ethernet, `head` possibly empty): it
    /// is copied (up to the snap length) when the filter, applied to `head` when there is
    /// one (synthesized outer headers) and to `body` otherwise, matches. Never blocks.
    pub(crate) fn offer(&self, worker: usize, head: &[u8], body: &[u8]) {
        if let Some(filter) = &self.filter {
            let view = if head.is_empty() { body } else { head };
            if !filter.matches(view) {
                return;
            }
        }
        let Some(ring) = self.rings.get(worker) else {
            return;
        };
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        match ring.try_lock() {
            Some(mut ring) => ring.push(unix_nanos, head, body, self.snaplen),
            // The reader is swapping this ring out (a pointer swap): this one frame is lost.
            None => {
                self.contended.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn info(&self) -> CaptureInfo {
        let (mut captured, mut dropped) = (0, self.contended.load(Ordering::Relaxed));
        for ring in self.rings.iter() {
            let ring = ring.lock();
            captured += ring.captured();
            dropped += ring.dropped();
        }
        CaptureInfo {
            id: self.id,
            port: self.name.clone(),
            direction: self.direction,
            filter: self
                .filter
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            captured,
            dropped,
        }
    }
}

/// The running captures. Workers read [`armed`](Captures::armed) once per batch and look at
/// the list only when it is non-zero; the control plane adds and removes.
#[derive(Debug)]
pub(crate) struct Captures {
    armed: AtomicUsize,
    list: ArcSwap<Vec<Arc<Capture>>>,
    next_id: AtomicU64,
    /// Serialises changes of the list (control plane only; workers never take it).
    edit: Mutex<()>,
}

impl Captures {
    pub(crate) fn new() -> Captures {
        Captures {
            armed: AtomicUsize::new(0),
            list: ArcSwap::from_pointee(Vec::new()),
            next_id: AtomicU64::new(1),
            edit: Mutex::new(()),
        }
    }

    /// True while at least one capture runs: the datapath's one check, a relaxed load.
    #[inline]
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed) != 0
    }

    /// The running captures (a guard: no reference count is written).
    #[inline]
    pub(crate) fn list(&self) -> arc_swap::Guard<Arc<Vec<Arc<Capture>>>> {
        self.list.load()
    }

    /// Starts capturing `spec` on `port` with one ring per worker.
    pub(crate) fn start(
        self: &Arc<Captures>,
        spec: CaptureSpec,
        port: PortId,
        rx_also: Vec<PortId>,
        workers: usize,
    ) -> CaptureStream {
        let capture = Arc::new(Capture {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            port,
            rx_also,
            name: spec.port,
            direction: spec.direction,
            snaplen: usize::try_from(spec.snaplen.clamp(1, MAX_SNAPLEN)).unwrap_or(usize::MAX),
            filter: spec.filter,
            rings: (0..workers)
                .map(|_| Mutex::new(Ring::new(RING_BYTES, RING_RECORDS)))
                .collect(),
            closed: AtomicBool::new(false),
            contended: AtomicU64::new(0),
        });
        {
            let _edit = self.edit.lock();
            let mut list = Vec::clone(&self.list.load());
            list.push(Arc::clone(&capture));
            self.list.store(Arc::new(list));
            self.armed.fetch_add(1, Ordering::Relaxed);
        }
        CaptureStream {
            taken: (0..workers)
                .map(|_| Ring::new(RING_BYTES, RING_RECORDS))
                .collect(),
            snaplen: spec.snaplen.clamp(1, MAX_SNAPLEN),
            capture,
            captures: Arc::clone(self),
            order: Vec::new(),
            next: 0,
        }
    }

    fn remove(&self, id: u64) {
        let _edit = self.edit.lock();
        let mut list = Vec::clone(&self.list.load());
        let before = list.len();
        list.retain(|capture| capture.id != id);
        if list.len() != before {
            self.list.store(Arc::new(list));
            self.armed.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The running captures.
    pub(crate) fn infos(&self) -> Vec<CaptureInfo> {
        self.list
            .load()
            .iter()
            .map(|capture| capture.info())
            .collect()
    }

    /// Ends every capture's stream (the daemon stops).
    pub(crate) fn close_all(&self) {
        for capture in self.list.load().iter() {
            capture.closed.store(true, Ordering::Release);
        }
    }
}

/// The reading end of a capture: drains the workers' rings into pcap records. Dropping it
/// stops the capture.
#[derive(Debug)]
pub struct CaptureStream {
    capture: Arc<Capture>,
    captures: Arc<Captures>,
    /// Per worker, the frames swapped out of its ring (and, once written, the empty arena
    /// swapped in next time).
    taken: Box<[Ring]>,
    snaplen: u32,
    /// The taken frames in time order, as (time, worker, record); `next` is the first not
    /// yet written.
    order: Vec<(u64, usize, usize)>,
    next: usize,
}

impl CaptureStream {
    /// The pcap file header this capture's stream starts with.
    pub fn file_header(&self) -> [u8; pcap::FILE_HEADER_LEN] {
        pcap::file_header(self.snaplen)
    }

    /// Moves what the workers captured since the last call into `out` as pcap records,
    /// oldest first (over all workers), at most `limit` of them (the rest stay for the next
    /// call); returns how many.
    pub fn drain(&mut self, out: &mut Vec<u8>, limit: usize) -> usize {
        if self.next == self.order.len() {
            self.order.clear();
            self.next = 0;
            for (worker, (ring, taken)) in self
                .capture
                .rings
                .iter()
                .zip(self.taken.iter_mut())
                .enumerate()
            {
                taken.clear();
                ring.lock().swap_frames(taken);
                self.order.extend(
                    taken
                        .records()
                        .iter()
                        .enumerate()
                        .map(|(index, record)| (record.unix_nanos, worker, index)),
                );
            }
            // Stable: a worker's own frames keep their order when two share a time.
            self.order.sort_by_key(|&(unix_nanos, _, _)| unix_nanos);
        }
        let mut written = 0;
        while written < limit {
            let Some(&(_, worker, index)) = self.order.get(self.next) else {
                break;
            };
            self.next += 1;
            let Some(ring) = self.taken.get(worker) else {
                continue;
            };
            let Some(record) = ring.records().get(index) else {
                continue;
            };
            let bytes = ring.bytes(record);
            let captured = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&pcap::record_header(
                record.unix_nanos,
                captured,
                record.original,
            ));
            out.extend_from_slice(bytes);
            written += 1;
        }
        written
    }

    /// True once the daemon is stopping: the stream should end.
    pub fn is_closed(&self) -> bool {
        self.capture.closed.load(Ordering::Acquire)
    }

    /// The capture's counters.
    pub fn info(&self) -> CaptureInfo {
        self.capture.info()
    }
}

impl Drop for CaptureStream {
    fn drop(&mut self) {
        self.captures.remove(self.capture.id);
    }
}

/// The outer headers synthesized for a VTEP datagram (see [`outer_headers`]).
pub(crate) struct OuterHeaders {
    buffer: [u8; OUTER_MAX],
    /// Ethernet, IP and UDP: 42 bytes over IPv4, 62 over IPv6.
    len: usize,
}

impl OuterHeaders {
    /// Ethernet, IP and UDP.
    pub(crate) fn outer(&self) -> &[u8] {
        self.buffer.get(..self.len).unwrap_or_default()
    }

    /// Ethernet, IP, UDP and the VXLAN header of `vni` (for a packet the VTEP sends).
    pub(crate) fn with_vxlan(&mut self, vni: ::vxlan::Vni) -> &[u8] {
        let end = self.len + ::vxlan::header::HEADER_LEN;
        if let Some(header) = self.buffer.get_mut(self.len..end) {
            ::vxlan::header::Repr { vni }.emit(&mut ::vxlan::header::Packet::new_unchecked(header));
        }
        self.buffer.get(..end).unwrap_or_default()
    }
}

/// The outer Ethernet, IP and UDP headers of a datagram of `payload_len` bytes from `src`
/// to `dst` (both of one family), as a VTEP capture shows them: Ethernet addresses zero (the
/// kernel routes the VTEP's packets and picks the next hop), TTL or hop limit 64, UDP
/// checksum zero (allowed over IPv4, RFC 768; over IPv6 the real one is not computed for a
/// capture either); lengths saturate at 65,535.
pub(crate) fn outer_headers(src: SocketAddr, dst: SocketAddr, payload_len: usize) -> OuterHeaders {
    let mut buffer = [0u8; OUTER_MAX];
    // IPv4 only when both are (the header written below is decided the same way).
    let ip_len = if src.is_ipv4() && dst.is_ipv4() {
        IPV4_HEADER_LEN
    } else {
        IPV6_HEADER_LEN
    };
    let max_payload = usize::from(u16::MAX) - ip_len - UDP_HEADER_LEN;
    let payload_len = payload_len.min(max_payload);
    let udp_len = u16::try_from(UDP_HEADER_LEN + payload_len).unwrap_or(u16::MAX);
    let mut ethernet = EthernetFrame::new_unchecked(&mut buffer[..]);
    ethernet.set_src_addr(EthernetAddress([0; 6]));
    ethernet.set_dst_addr(EthernetAddress([0; 6]));
    let ip_buffer = &mut buffer[ETHERNET_HEADER_LEN..];
    let ethertype = match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(src_addr), std::net::IpAddr::V4(dst_addr)) => {
            Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::Udp,
                payload_len: UDP_HEADER_LEN + payload_len,
                hop_limit: 64,
            }
            .emit(
                &mut Ipv4Packet::new_unchecked(ip_buffer),
                &ChecksumCapabilities::default(),
            );
            EthernetProtocol::Ipv4
        }
        (src_addr, dst_addr) => {
            let v6 = |address: std::net::IpAddr| match address {
                std::net::IpAddr::V6(v6) => v6,
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            Ipv6Repr {
                src_addr: v6(src_addr),
                dst_addr: v6(dst_addr),
                next_header: IpProtocol::Udp,
                payload_len: UDP_HEADER_LEN + payload_len,
                hop_limit: 64,
            }
            .emit(&mut Ipv6Packet::new_unchecked(ip_buffer));
            EthernetProtocol::Ipv6
        }
    };
    EthernetFrame::new_unchecked(&mut buffer[..]).set_ethertype(ethertype);
    let mut udp = UdpPacket::new_unchecked(&mut buffer[ETHERNET_HEADER_LEN + ip_len..]);
    udp.set_src_port(src.port());
    udp.set_dst_port(dst.port());
    udp.set_len(udp_len);
    udp.set_checksum(0);
    OuterHeaders {
        buffer,
        len: ETHERNET_HEADER_LEN + ip_len + UDP_HEADER_LEN,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn spec(direction: Direction, filter: &str) -> CaptureSpec {
        CaptureSpec {
            port: "c1".into(),
            direction,
            snaplen: MAX_SNAPLEN,
            filter: Filter::parse(filter).unwrap(),
        }
    }

    /// An Ethernet frame of `len` bytes, its last byte `tag`.
    fn frame(len: usize, tag: u8) -> Vec<u8> {
        let mut frame = vec![0u8; len];
        frame[12] = 0x08; // EtherType IPv4 (no valid header behind it)
        frame[len - 1] = tag;
        frame
    }

    #[test]
    fn arming_follows_the_streams() {
        let captures = Arc::new(Captures::new());
        assert!(!captures.armed());
        // A bonded uplink (3) receives on its members (7, 8).
        let first = captures.start(
            spec(Direction::Rx, ""),
            PortId(3),
            vec![PortId(7), PortId(8)],
            2,
        );
        let second = captures.start(spec(Direction::Tx, ""), PortId(4), Vec::new(), 2);
        assert!(captures.armed());
        assert_eq!(captures.infos().len(), 2);
        let list = captures.list();
        assert!(list[0].wants_rx(PortId(3)) && !list[0].wants_tx(PortId(3)));
        assert!(list[0].wants_rx(PortId(8)) && !list[0].wants_rx(PortId(9)));
        assert!(list[1].wants_tx(PortId(4)) && !list[1].wants_rx(PortId(4)));
        drop(list);
        drop(first);
        assert!(captures.armed());
        drop(second);
        assert!(!captures.armed());
        assert!(captures.infos().is_empty());
    }

    #[test]
    fn records_come_out_oldest_first_across_workers() {
        let captures = Arc::new(Captures::new());
        let mut stream = captures.start(spec(Direction::Both, ""), PortId(1), Vec::new(), 2);
        let capture = Arc::clone(&captures.list()[0]);
        capture.offer(1, &[], &frame(60, 1));
        capture.offer(0, &[], &frame(61, 2));
        capture.offer(1, &[], &frame(62, 3));
        let mut out = Vec::new();
        assert_eq!(stream.drain(&mut out, 2), 2);
        assert_eq!(stream.drain(&mut out, 10), 1);
        assert_eq!(stream.drain(&mut out, 10), 0);
        // Three records; each header's captured length says where the next one starts.
        let mut at = 0;
        let mut tags = Vec::new();
        let mut times = Vec::new();
        while at < out.len() {
            let header = &out[at..at + pcap::RECORD_HEADER_LEN];
            let seconds = u64::from(u32::from_le_bytes(header[0..4].try_into().unwrap()));
            let nanos = u64::from(u32::from_le_bytes(header[4..8].try_into().unwrap()));
            let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
            at += pcap::RECORD_HEADER_LEN + len;
            tags.push(out[at - 1]);
            times.push(seconds * 1_000_000_000 + nanos);
        }
        assert_eq!(tags, vec![1, 2, 3]);
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(stream.info().captured, 3);
    }

    #[test]
    fn the_filter_and_the_snap_length_apply() {
        let captures = Arc::new(Captures::new());
        let mut short = spec(Direction::Rx, "arp");
        short.snaplen = 20;
        let mut stream = captures.start(short, PortId(1), Vec::new(), 1);
        let capture = Arc::clone(&captures.list()[0]);
        capture.offer(0, &[], &frame(100, 1));
        let mut arp = frame(100, 2);
        arp[13] = 0x06;
        // Ethernet/IPv4 addresses, a request.
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        capture.offer(0, &[], &arp);
        let mut out = Vec::new();
        assert_eq!(stream.drain(&mut out, 10), 1);
        assert_eq!(out.len(), pcap::RECORD_HEADER_LEN + 20);
        assert_eq!(&out[8..12], &20u32.to_le_bytes());
        assert_eq!(&out[12..16], &100u32.to_le_bytes());
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let captures = Arc::new(Captures::new());
        let stream = captures.start(spec(Direction::Rx, ""), PortId(1), Vec::new(), 1);
        let capture = Arc::clone(&captures.list()[0]);
        let big = frame(usize::try_from(MAX_SNAPLEN).unwrap(), 0);
        let fit = RING_BYTES / big.len();
        for _ in 0..fit + 3 {
            capture.offer(0, &[], &big);
        }
        let info = stream.info();
        assert_eq!(info.captured, u64::try_from(fit).unwrap());
        assert_eq!(info.dropped, 3);
    }

    #[test]
    fn outer_headers_filter_as_udp_4789() {
        let src = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 40000);
        let dst = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 4789);
        let mut head = outer_headers(src, dst, 100);
        let outer = head.outer();
        assert_eq!(outer.len(), 42);
        for (filter, expected) in [
            ("udp and dst port 4789", true),
            ("src host 192.0.2.1 and dst host 192.0.2.2", true),
            ("tcp", false),
        ] {
            let filter = Filter::parse(filter).unwrap().unwrap();
            assert_eq!(filter.matches(outer), expected, "{filter}");
        }
        let ip = Ipv4Packet::new_checked(&outer[ETHERNET_HEADER_LEN..]);
        assert!(
            ip.is_err(),
            "the payload is not in the buffer, only its length"
        );
        let ip = Ipv4Packet::new_unchecked(&outer[ETHERNET_HEADER_LEN..]);
        assert_eq!(ip.total_len(), 20 + 8 + 100);
        assert!(ip.verify_checksum());
        let vni = ::vxlan::Vni::new(42).unwrap();
        let sent = head.with_vxlan(vni);
        assert_eq!(sent.len(), 50);
        assert_eq!(&sent[42..50], &[0x08, 0, 0, 0, 0, 0, 42, 0]);
    }

    #[test]
    fn outer_headers_over_ipv6() {
        let src: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:4789".parse().unwrap();
        let head = outer_headers(src, dst, 100);
        let outer = head.outer();
        assert_eq!(outer.len(), 14 + 40 + 8);
        assert_eq!(&outer[12..14], &[0x86, 0xdd]);
        let ip = Ipv6Packet::new_unchecked(&outer[ETHERNET_HEADER_LEN..]);
        assert_eq!(ip.payload_len(), 8 + 100);
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        assert_eq!(
            ip.src_addr(),
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        let udp = UdpPacket::new_unchecked(&outer[54..]);
        assert_eq!(
            (udp.src_port(), udp.dst_port(), udp.len()),
            (40000, 4789, 108)
        );
        for (filter, expected) in [
            ("ip6 and udp and dst port 4789", true),
            ("src host 2001:db8::1", true),
            ("ip", false),
        ] {
            let filter = Filter::parse(filter).unwrap().unwrap();
            assert_eq!(filter.matches(outer), expected, "{filter}");
        }
    }
}
