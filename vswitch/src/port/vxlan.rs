//! The VTEP: the node's VXLAN tunnel endpoint on `localAddress:port` (UDP 4789 by default).
//!
//! [`open`] returns a [`PortIo`] of kind [`PortKind::Vxlan`] with one [`VtepQueue`] per
//! worker. Receive: one UDP socket per worker, `SO_REUSEPORT`, bound to the local address and
//! port, read with `recvmmsg`, with `UDP_GRO` where the kernel has it.
//! Transmit: single frames get outer IPv4/UDP/VXLAN headers built by the `vxlan` crate and
//! go out with `sendmmsg` on a raw `IPPROTO_RAW` socket, so the UDP source port can be hashed
//! from the inner flow (a UDP socket would always send from 4789); GSO super-frames are
//! segmented and sent with `UDP_SEGMENT` from a UDP socket bound to that hashed port.
//!
//! # Receive
//! Datagrams are received straight into the batch's free slots at offset [`RX_PAD`]; the
//! [`RX_PAD`] bytes in front are zeroed. A datagram longer than a slot (impossible with
//! [`RxBatch`]'s 64 KiB slots, kept for safety) is dropped and counted in
//! [`VtepQueue::truncated`].
//!
//! With `UDP_GRO` on, one received buffer may hold several datagrams of one flow (the kernel
//! coalesces them, or a sender's `UDP_SEGMENT` super-datagram reaches us whole), all of the
//! size its `UDP_GRO` control message gives but the last. When its leading datagrams carry
//! the same VXLAN header and consecutive TCP segments of one flow (the rules of
//! [`crate::wire::gro`], checksums verified), they are first merged in place into one
//! datagram whose inner frame is the super-frame: each payload moves once toward the front,
//! and the run's MSS goes in the datagram's [`RX_PAD`] bytes for
//! `pipeline::vxlan::decap`. A bulk TCP flow then costs one slot, one pass of
//! the pipeline and one TAP write per buffer instead of one per segment, and nothing is
//! copied between slots. What is left of the buffer is split into its datagrams,
//! every one committed to its own slot as `[RX_PAD][datagram]` with the buffer's peer, in
//! order: the first stays where it was received (or moves down), the others are copied to the
//! slots after it. The queue asks `recvmmsg` for only as many buffers as are expected to fit
//! once split (from the most datagrams per buffer seen in the previous call), and stops
//! receiving when the rest of the batch would likely not hold the next buffer. What does not
//! fit anyway is kept in a per-queue stash (room for one `recvmmsg` worth of buffers,
//! allocated once; its pages are only touched when used) and handed over, in order, at the
//! start of the next [`VtepQueue::recv_batch`], before anything new is received.
//!
//! # Transmit
//! [`VtepQueue::send_encap`] copies the inner frame into the next slot of a ring of
//! [`TX_SLOTS`] preallocated slots, behind room for the outer IPv4, UDP and VXLAN headers
//! ([`OUTER_LEN`] bytes), and writes those headers with [`::vxlan::encap::encapsulate`]
//! (no outer Ethernet header: the kernel routes the packet and resolves the next hop).
//! [`VtepQueue::flush`] hands the ring to the kernel in one `sendmmsg`. Each queue numbers
//! its outer IPv4 identifications from its own starting point, so that fragments of packets
//! from different queues (DF is clear by default) are unlikely to share an ID.
//!
//! [`VtepQueue::send_encap_gso`] takes a GSO super-frame (`virtio_net_hdr` + Ethernet) as a
//! TAP hands it over, segments it with [`Segmenter`] (the only software segmentation on the
//! way) and lays the segments out as consecutive `[VXLAN header][inner segment]` datagrams in
//! one buffer; one `sendmsg` with a `UDP_SEGMENT` control message (segment size = 8 + the
//! inner segment length) sends them all, so the kernel (and the veth or NIC behind it) carries
//! them as one GSO packet as far as it can. The outer UDP source port is still the inner
//! flow's hash ([`::vxlan::encap::source_port`]): the queue keeps up to
//! [`SOURCE_PORT_SOCKETS`] send-only UDP sockets, one per source port in use, bound to
//! `localAddress:port`, opened on demand and closed least recently used first. They are opened
//! in the network namespace the VTEP was opened in, whichever thread asks (a thread elsewhere
//! has one made for it by a short-lived thread that enters that namespace).
//!
//! Those sockets are bound without `SO_REUSEPORT` or `SO_REUSEADDR`, so they never join
//! another socket's group: when a port is taken (by a local application using it as an
//! ephemeral port, or by another queue of this VTEP whose flow hashed to the same port), the
//! bind fails and the super-frames of that port take the raw path, packet by packet, until the
//! entry is evicted. While bound, a socket holds its port, so local applications cannot get
//! it as an ephemeral port (at most [`SOURCE_PORT_SOCKETS`] ports per queue). They are
//! send-only: a BPF filter that accepts nothing is attached and the receive buffer is the
//! kernel's minimum, so datagrams sent to those ports are dropped by the kernel and nothing
//! is ever read from them.
//!
//! Differences from the raw path, all forced by the kernel: the outer UDP checksum is
//! always computed (`UDP_SEGMENT` is refused on a socket with `SO_NO_CHECK`, whatever
//! [`VxlanEncapConfig::udp_checksum_ipv4`] says; RFC 7348 allows a correct non-zero checksum
//! and every receiver accepts it; veth and most NICs compute it in hardware), and the
//! kernel numbers the outer IPv4 identifications. TTL and DF follow the configuration. When
//! the kernel refuses `UDP_SEGMENT` (not supported at open, or `EIO`/`ENOPROTOOPT`, or an
//! `EINVAL` for segments that the raw path then sends fine), the queue falls back to the raw
//! path for good and says so once in the log.
//!
//! Only an IPv4 underlay is supported: the local address is an IPv4 address.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use ::vxlan::encap::{EncapParams, Underlay, encapsulate, source_port};
use ::vxlan::{VXLAN_HEADER_LEN, Vni, VxlanEncapConfig, VxlanPacket, VxlanRepr};
use smoltcp::wire::{IPV4_HEADER_LEN, UDP_HEADER_LEN};

use super::{Capabilities, PortIo, PortKind, PortQueue, RxBatch};
use crate::sys::batch::MAX_FRAME_LEN;
use crate::sys::udp::{
    RawIpv4Socket, ReadySet, Receiver, SendOptions, Sender, SocketError, UdpSocket,
};
use crate::wire::VNET_HDR_LEN;
use crate::wire::gro;
use crate::wire::gso::{GsoError, Segmenter};

/// Bytes in front of the VXLAN header in a received frame: the frame handed to the pipeline
/// is `[PAD][VXLAN header][inner Ethernet]`, so that once the 8-byte VXLAN header is
/// validated, the pipeline overwrites `frame[..VNET_HDR_LEN]` with a virtio header and the
/// frame becomes `[virtio_net_hdr][inner Ethernet]` in place (10 = 2 + 8).
///
/// The pad is zero, except in a datagram that the queue merged in place from the TCP
/// segments of one `UDP_GRO` buffer (see the module docs): there it holds the run's MSS,
/// big-endian, which `pipeline::vxlan::decap` turns into the super-frame's virtio
/// header. The pad is outside the datagram: no peer can set it.
pub const RX_PAD: usize = crate::wire::VNET_HDR_LEN - ::vxlan::VXLAN_HEADER_LEN;

/// Outer headers the VTEP writes in front of an inner frame: IPv4 + UDP + VXLAN = 36 bytes.
pub const OUTER_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + ::vxlan::VXLAN_HEADER_LEN;

/// The longest inner Ethernet frame [`VtepQueue::send_encap`] takes: a 9216-byte jumbo
/// frame (more than a 9000-byte underlay can carry anyway).
pub const MAX_INNER_LEN: usize = 9216;

/// Packets queued for one `sendmmsg`.
pub const TX_SLOTS: usize = 64;

/// The most UDP payload one `UDP_SEGMENT` send carries: an IPv4 packet's 65535 bytes minus
/// the IPv4 and UDP headers (`udp_sendmsg` refuses more with `EMSGSIZE`). A super-frame whose
/// segments need more goes out in several sends.
pub const MAX_GSO_PAYLOAD: usize = 65_535 - IPV4_HEADER_LEN - UDP_HEADER_LEN;

/// The most datagrams one `UDP_SEGMENT` send carries: the kernel's `UDP_MAX_SEGMENTS` (64 on
/// older kernels, 128 on recent ones; the smaller works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Send-only UDP sockets a queue keeps open, one per outer source port in use.
pub const SOURCE_PORT_SOCKETS: usize = 64;

/// Datagrams received by one `recvmmsg`.
const RX_BURST: usize = 64;

/// The longest datagram (or GRO buffer) a receive slot holds: the slot after [`RX_PAD`].
const RX_DATAGRAM_MAX: usize = MAX_FRAME_LEN - RX_PAD;

const TX_SLOT_LEN: usize = OUTER_LEN + MAX_INNER_LEN;

/// Receive buffer per queue socket: room for bursts of jumbo datagrams.
const RCVBUF_BYTES: u32 = 4 << 20;

/// Send buffer of the raw socket: a full ring of jumbo packets several times over.
const SNDBUF_BYTES: u32 = 4 << 20;

/// Send buffer of each source-port socket: several 64 KiB `UDP_SEGMENT` sends.
const GSO_SNDBUF_BYTES: u32 = 1 << 20;

/// What [`VtepQueue::send_encap_gso`] did with a super-frame's segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GsoSent {
    /// Segments handed to the kernel (or queued on the raw path for the next
    /// [`flush`](VtepQueue::flush), whose failures it counts as usual).
    pub segments: usize,
    /// Bytes of the inner frames (Ethernet, no virtio header) of those segments.
    pub bytes: u64,
    /// Segments dropped: refused by the kernel or not encapsulable. They are counted in
    /// [`VtepQueue::send_errors`] as well.
    pub failed: usize,
}

/// A send-only socket for one outer source port, or the memory that binding the port failed.
#[derive(Debug)]
struct PortSocket {
    port: u16,
    /// `None`: the port could not be bound (taken): its packets take the raw path.
    socket: Option<UdpSocket>,
    last_used: u64,
}

/// The source-port sockets of one queue (at most [`SOURCE_PORT_SOCKETS`], least recently
/// used evicted first), all opened with the same [`SendOptions`].
#[derive(Debug)]
struct PortSockets {
    entries: Vec<PortSocket>,
    clock: u64,
    options: Option<SendOptions>,
    bind_failures: u64,
    /// The network namespace the VTEP was opened in (and its identity): sockets are created
    /// there even when the calling thread is elsewhere.
    home: Option<(OwnedFd, NamespaceId)>,
}

/// A network namespace's identity: the device and inode of its `ns/net` file.
type NamespaceId = (u64, u64);

/// The calling thread's network namespace, when procfs tells.
fn current_namespace() -> Option<NamespaceId> {
    let metadata = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Opens the calling thread's network namespace (see [`PortSockets::home`]).
fn open_current_namespace() -> Option<(OwnedFd, NamespaceId)> {
    let file = std::fs::File::open("/proc/thread-self/ns/net").ok()?;
    let metadata = file.metadata().ok()?;
    Some((OwnedFd::from(file), (metadata.dev(), metadata.ino())))
}

impl PortSockets {
    fn new(home: Option<(OwnedFd, NamespaceId)>) -> PortSockets {
        PortSockets {
            entries: Vec::with_capacity(SOURCE_PORT_SOCKETS),
            clock: 0,
            options: None,
            bind_failures: 0,
            home,
        }
    }

    /// Opens a send-only socket on `address` in the VTEP's namespace: directly when the
    /// calling thread is there (always, in vswitchd: the workers live in the daemon's
    /// namespace), else from a short-lived thread that enters it.
    fn bind(&self, address: SocketAddrV4, options: SendOptions) -> io::Result<UdpSocket> {
        let bind = || {
            UdpSocket::bind_sender(address, options)
                .map_err(|error| io::Error::new(error.source.kind(), error))
        };
        match &self.home {
            Some((fd, id)) if current_namespace() != Some(*id) => {
                crate::sys::netns::run_in_fd(fd, bind).and_then(|socket| socket)
            }
            _ => bind(),
        }
    }

    /// The entry for `local:port`, opening its socket on a miss. When `options` differ from
    /// the ones the open sockets have (the overlay's settings changed), they are all closed
    /// first.
    fn lookup(&mut self, local: Ipv4Addr, port: u16, options: SendOptions) -> usize {
        if self.options != Some(options) {
            self.entries.clear();
            self.options = Some(options);
        }
        self.clock += 1;
        if let Some(index) = self.entries.iter().position(|entry| entry.port == port) {
            if let Some(entry) = self.entries.get_mut(index) {
                entry.last_used = self.clock;
            }
            return index;
        }
        let address = SocketAddrV4::new(local, port);
        let socket = match self.bind(address, options) {
            Ok(socket) => Some(socket),
            Err(error) => {
                self.bind_failures += 1;
                tracing::debug!(%address, %error, "no UDP_SEGMENT socket for this source port; its packets take the raw path");
                None
            }
        };
        let entry = PortSocket {
            port,
            socket,
            last_used: self.clock,
        };
        if self.entries.len() < SOURCE_PORT_SOCKETS {
            // Within the capacity reserved in `new`: no allocation.
            self.entries.push(entry);
            return self.entries.len() - 1;
        }
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, entry)| entry.last_used)
            .map_or(0, |(index, _)| index);
        if let Some(slot) = self.entries.get_mut(oldest) {
            *slot = entry;
        }
        oldest
    }

    fn socket(&self, index: usize) -> Option<&UdpSocket> {
        self.entries.get(index)?.socket.as_ref()
    }
}

/// How the segments of one super-frame leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `UDP_SEGMENT` on the source-port socket at this index of [`PortSockets`].
    Socket(usize),
    /// One by one on the raw socket ([`VtepQueue::send_encap`]).
    Raw,
}

/// The datagrams of one `UDP_SEGMENT` send being laid out in the queue's GSO buffer.
#[derive(Clone, Copy, Debug, Default)]
struct Chunk {
    /// Datagrams laid out.
    count: usize,
    /// Bytes used in the buffer.
    used: usize,
    /// Inner length of the first segment: every datagram but the last has this length.
    segment_len: usize,
    /// A shorter segment was laid out: it must be the last.
    closed: bool,
}

/// One received buffer: `len` bytes at `start` (in the stash; unused for the batch), holding
/// datagrams of `segment` bytes (the last may be shorter). When its first `merged` datagrams
/// were merged in place into one ([`gro::merge_in_place`]), that one is `merged_len` bytes
/// long and carries `mss` in its pad; the others are where they were received.
#[derive(Clone, Copy, Debug)]
struct Coalesced {
    start: usize,
    len: usize,
    segment: usize,
    peer: SocketAddrV4,
    merged: usize,
    merged_len: usize,
    mss: u16,
}

impl Coalesced {
    const EMPTY: Coalesced = Coalesced {
        start: 0,
        len: 0,
        segment: 0,
        peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        merged: 0,
        merged_len: 0,
        mss: 0,
    };

    /// A buffer as received: nothing merged.
    fn received(len: usize, segment: usize, peer: SocketAddrV4) -> Coalesced {
        Coalesced {
            len,
            segment,
            peer,
            ..Coalesced::EMPTY
        }
    }

    /// How many datagrams it holds (an empty datagram is one; merged ones count as one).
    fn count(&self) -> usize {
        datagram_count(self.len, self.segment) - self.merged.saturating_sub(1)
    }

    /// Where datagram `index` lies, relative to the buffer's start.
    fn datagram(&self, index: usize) -> Range<usize> {
        if self.merged < 2 {
            datagram_range(self.len, self.segment, index)
        } else if index == 0 {
            0..self.merged_len
        } else {
            datagram_range(self.len, self.segment, index + self.merged - 1)
        }
    }

    /// The [`RX_PAD`] bytes of datagram `index`.
    fn pad(&self, index: usize) -> [u8; RX_PAD] {
        if index == 0 && self.merged >= 2 {
            self.mss.to_be_bytes()
        } else {
            [0; RX_PAD]
        }
    }

    /// The datagrams from `index` on, as a buffer of their own (for the stash).
    fn rest(&self, index: usize) -> Coalesced {
        if index == 0 {
            *self
        } else {
            Coalesced::received(
                self.len - self.datagram(index).start,
                self.segment,
                self.peer,
            )
        }
    }
}

/// How many datagrams a received buffer of `len` bytes holds when each is `segment` bytes
/// (the last may be shorter); `segment` 0 (no `UDP_GRO` message) means one datagram.
fn datagram_count(len: usize, segment: usize) -> usize {
    if segment == 0 || len <= segment {
        1
    } else {
        len.div_ceil(segment)
    }
}

/// Where datagram `index` lies in a buffer of `len` bytes of `segment`-byte datagrams.
fn datagram_range(len: usize, segment: usize, index: usize) -> Range<usize> {
    if segment == 0 || len <= segment {
        return 0..len;
    }
    let start = (index * segment).min(len);
    start..(start + segment).min(len)
}

/// Received buffers that did not fit in the batch, kept for the next call.
struct RxStash {
    /// Room for [`RX_BURST`] buffers of [`RX_DATAGRAM_MAX`] bytes (what one `recvmmsg` can
    /// return), allocated zeroed once: pages are only touched when used.
    bytes: Box<[u8]>,
    buffers: Box<[Coalesced]>,
    /// Buffers stashed.
    count: usize,
    /// Bytes of `bytes` used.
    used: usize,
    /// The first buffer not yet handed over completely, and its next datagram.
    next: usize,
    next_datagram: usize,
}

impl fmt::Debug for RxStash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxStash")
            .field("count", &self.count)
            .field("used", &self.used)
            .field("next", &self.next)
            .field("next_datagram", &self.next_datagram)
            .finish_non_exhaustive()
    }
}

impl RxStash {
    fn new() -> RxStash {
        RxStash {
            bytes: vec![0u8; RX_BURST * RX_DATAGRAM_MAX].into_boxed_slice(),
            buffers: vec![Coalesced::EMPTY; RX_BURST].into_boxed_slice(),
            count: 0,
            used: 0,
            next: 0,
            next_datagram: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.next >= self.count
    }

    /// Datagrams not yet handed over.
    fn pending(&self) -> usize {
        let mut pending = 0;
        for (index, buffer) in self
            .buffers
            .iter()
            .enumerate()
            .take(self.count)
            .skip(self.next)
        {
            pending += buffer.count();
            if index == self.next {
                pending -= self.next_datagram.min(buffer.count());
            }
        }
        pending
    }

    /// Keeps `data` (datagrams of `segment` bytes from `peer`); false when there is no room
    /// (cannot happen: the stash is filled only when empty, from one `recvmmsg`).
    fn push(&mut self, data: &[u8], layout: Coalesced) -> bool {
        let start = self.used;
        let (Some(slot), Some(target)) = (
            self.buffers.get_mut(self.count),
            self.bytes.get_mut(start..start + data.len()),
        ) else {
            return false;
        };
        target.copy_from_slice(data);
        *slot = Coalesced {
            start,
            len: data.len(),
            ..layout
        };
        self.count += 1;
        self.used += data.len();
        true
    }

    /// Hands stashed datagrams over to `batch`, in order, until it is full or the stash
    /// empty; returns how many.
    fn drain(&mut self, batch: &mut RxBatch) -> usize {
        let mut added = 0;
        while !self.is_empty() {
            let Some(buffer) = self.buffers.get(self.next).copied() else {
                break;
            };
            while self.next_datagram < buffer.count() {
                let Some(slot) = batch.next_slot() else {
                    return added;
                };
                let range = buffer.datagram(self.next_datagram);
                let len = range.len();
                let source = self
                    .bytes
                    .get(buffer.start + range.start..buffer.start + range.end);
                if let (Some(source), Some(target)) = (source, slot.get_mut(RX_PAD..RX_PAD + len)) {
                    target.copy_from_slice(source);
                    slot[..RX_PAD].copy_from_slice(&buffer.pad(self.next_datagram));
                    batch.commit_from(RX_PAD + len, buffer.peer);
                    added += 1;
                }
                self.next_datagram += 1;
            }
            self.next += 1;
            self.next_datagram = 0;
        }
        self.count = 0;
        self.used = 0;
        self.next = 0;
        added
    }
}

impl fmt::Debug for GsoState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoState")
            .field("sockets", &self.sockets)
            .field("sends", &self.sends)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for GroState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroState")
            .field("stash", &self.stash)
            .field("expected", &self.expected)
            .field("coalesced", &self.coalesced)
            .field("merged", &self.merged)
            .finish_non_exhaustive()
    }
}

/// One worker's queue of the VTEP.
pub struct VtepQueue {
    local: SocketAddrV4,
    socket: UdpSocket,
    /// What the worker polls: the socket, or the doorbell while the stash holds datagrams.
    ready: ReadySet,
    raw: RawIpv4Socket,
    receiver: Receiver,
    sender: Sender,
    /// `TX_SLOTS` slots of `TX_SLOT_LEN` bytes.
    tx_buffer: Box<[u8]>,
    /// Where the finished packet lies in each queued slot (slot-relative).
    tx_frames: Box<[(usize, usize)]>,
    /// The remote VTEP of each queued packet.
    tx_remotes: Box<[Ipv4Addr]>,
    tx_queued: usize,
    ipv4_ident: u16,
    truncated: u64,
    send_errors: u64,
    /// `UDP_SEGMENT` usable (probed at open; cleared for good if the kernel refuses it).
    udp_segment: bool,
    /// `UDP_GRO` on the receiving socket.
    udp_gro: bool,
    gso: Box<GsoState>,
    gro: Box<GroState>,
}

/// Transmit state for `UDP_SEGMENT` sends.
struct GsoState {
    /// [`MAX_GSO_PAYLOAD`] bytes: the datagrams of one `UDP_SEGMENT` send.
    buffer: Box<[u8]>,
    sockets: PortSockets,
    /// `sendmsg` calls made with `UDP_SEGMENT`.
    sends: u64,
}

/// Receive state for splitting `UDP_GRO` buffers.
struct GroState {
    /// The buffers of the last `recvmmsg` (source slot, layout), described for splitting.
    buffers: Box<[(usize, Coalesced)]>,
    stash: RxStash,
    /// Most datagrams per received buffer in the previous `recvmmsg` (at least 1).
    expected: usize,
    /// Received buffers that held more than one datagram.
    coalesced: u64,
    /// Received buffers whose leading datagrams were merged in place into one.
    merged: u64,
}

impl fmt::Debug for VtepQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtepQueue")
            .field("local", &self.local)
            .field("socket", &self.socket)
            .field("raw", &self.raw)
            .field("tx_queued", &self.tx_queued)
            .field("truncated", &self.truncated)
            .field("send_errors", &self.send_errors)
            .field("udp_segment", &self.udp_segment)
            .field("udp_gro", &self.udp_gro)
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .finish_non_exhaustive()
    }
}

impl AsFd for VtepQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }
}

/// The options of the source-port sockets for `config`.
fn send_options(config: &VxlanEncapConfig) -> SendOptions {
    SendOptions {
        ttl: config.ttl,
        dont_fragment: config.dont_fragment,
        send_buffer: Some(GSO_SNDBUF_BYTES),
    }
}

/// Copies `len` bytes at `RX_PAD + offset` of free slot `from` to `RX_PAD` of free slot
/// `to` (`from != to`) and writes `pad` in the target's [`RX_PAD`] bytes. False when the
/// slots or ranges are not there (cannot happen for ranges of a received buffer).
fn copy_between(
    batch: &mut RxBatch,
    from: usize,
    offset: usize,
    len: usize,
    to: usize,
    pad: [u8; RX_PAD],
) -> bool {
    let mut slots = batch.free_slots();
    let (source, target) = if from < to {
        let source = slots.nth(from);
        (source, slots.nth(to - from - 1))
    } else {
        let target = slots.nth(to);
        (slots.nth(from - to - 1), target)
    };
    let (Some(source), Some(target)) = (source, target) else {
        return false;
    };
    let (Some(source), Some(target)) = (
        source.get(RX_PAD + offset..RX_PAD + offset + len),
        target.get_mut(..RX_PAD + len),
    ) else {
        return false;
    };
    target[RX_PAD..].copy_from_slice(source);
    target[..RX_PAD].copy_from_slice(&pad);
    true
}

/// Writes `pad` in the [`RX_PAD`] bytes of free slot `index`.
fn write_pad(batch: &mut RxBatch, index: usize, pad: [u8; RX_PAD]) {
    if let Some(target) = batch
        .free_slots()
        .nth(index)
        .and_then(|slot| slot.get_mut(..RX_PAD))
    {
        target.copy_from_slice(&pad);
    }
}

/// Merges in place the leading run of TCP segments of the received buffer in free slot
/// `index` ([`gro::merge_in_place`]: the VXLAN headers must be equal too) and records it in
/// `buffer`. The datagrams after the run stay where they are.
fn merge_buffer(batch: &mut RxBatch, index: usize, buffer: &mut Coalesced) {
    let count = buffer.count();
    let Some(slot) = batch.free_slots().nth(index) else {
        return;
    };
    // Datagram `j` is at `RX_PAD + range.start`: its view (virtio-header-sized prefix, then
    // the inner Ethernet frame) starts RX_PAD bytes earlier, where the VXLAN header fills
    // the prefix but its first RX_PAD bytes.
    let (len, segment) = (buffer.len, buffer.segment);
    let view = |j: usize| {
        let range = datagram_range(len, segment, j);
        range.start..RX_PAD + range.end
    };
    if let Some(merged) = gro::merge_in_place(slot, count, view, RX_PAD..VNET_HDR_LEN) {
        buffer.merged = merged.segments;
        buffer.merged_len = merged.len - RX_PAD;
        buffer.mss = merged.mss;
    }
}

impl VtepQueue {
    /// Opens one queue: a UDP socket bound to `local` (which must be free for this
    /// process's `SO_REUSEPORT` group) and a raw send socket. `ident_start` is the first
    /// outer IPv4 identification.
    fn open(local: SocketAddrV4, ident_start: u16) -> io::Result<VtepQueue> {
        let socket = UdpSocket::bind(local, true, Some(RCVBUF_BYTES))
            .map_err(|error| describe(local, error))?;
        let raw =
            RawIpv4Socket::open(Some(SNDBUF_BYTES)).map_err(|error| describe(local, error))?;
        let ready = ReadySet::new(&socket).map_err(|error| describe(local, error))?;
        // Optional offloads: without them the queue works packet by packet.
        let udp_gro = match socket.enable_gro() {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%local, %error, "UDP_GRO refused: datagrams arrive one by one");
                false
            }
        };
        let udp_segment = match socket.set_segment_size(0) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%local, %error, "UDP_SEGMENT refused: segments go out one by one");
                false
            }
        };
        Ok(VtepQueue {
            local,
            socket,
            ready,
            raw,
            receiver: Receiver::new(RX_BURST),
            sender: Sender::new(TX_SLOTS),
            tx_buffer: vec![0u8; TX_SLOTS * TX_SLOT_LEN].into_boxed_slice(),
            tx_frames: vec![(0, 0); TX_SLOTS].into_boxed_slice(),
            tx_remotes: vec![Ipv4Addr::UNSPECIFIED; TX_SLOTS].into_boxed_slice(),
            tx_queued: 0,
            ipv4_ident: ident_start,
            truncated: 0,
            send_errors: 0,
            udp_segment,
            udp_gro,
            gso: Box::new(GsoState {
                buffer: vec![0u8; MAX_GSO_PAYLOAD].into_boxed_slice(),
                sockets: PortSockets::new(open_current_namespace()),
                sends: 0,
            }),
            gro: Box::new(GroState {
                buffers: vec![(0, Coalesced::EMPTY); RX_BURST].into_boxed_slice(),
                stash: RxStash::new(),
                expected: 1,
                coalesced: 0,
                merged: 0,
            }),
        })
    }

    /// The address and UDP port the queue receives on (every queue of a VTEP has the same).
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Datagrams dropped on receive because they were longer than a batch slot.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Packets dropped on transmit because the kernel refused them (socket or device queue
    /// full, no route, larger than the route's MTU, ...).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Whether super-frames go out with `UDP_SEGMENT` (false when the kernel lacks it or
    /// refused it once).
    pub fn udp_segment(&self) -> bool {
        self.udp_segment
    }

    /// Whether the receiving socket has `UDP_GRO` on.
    pub fn udp_gro(&self) -> bool {
        self.udp_gro
    }

    /// `sendmsg` calls made with `UDP_SEGMENT` (each carries several datagrams).
    pub fn gso_sends(&self) -> u64 {
        self.gso.sends
    }

    /// Received buffers that held several datagrams (coalesced by `UDP_GRO`, or a sender's
    /// `UDP_SEGMENT` send that reached us whole).
    pub fn gro_coalesced(&self) -> u64 {
        self.gro.coalesced
    }

    /// Received buffers whose leading TCP segments were merged in place into one super-frame.
    pub fn gro_merged(&self) -> u64 {
        self.gro.merged
    }

    /// Source ports whose send-only socket could not be bound (taken by someone else): their
    /// packets took the raw path.
    pub fn port_bind_failures(&self) -> u64 {
        self.gso.sockets.bind_failures
    }

    /// The fd to register with epoll: readable when datagrams wait in the socket or in the
    /// queue's stash (an epoll set of the receiving socket and a doorbell; see
    /// [`ReadySet`]).
    pub fn raw_fd(&self) -> RawFd {
        self.ready.raw_fd()
    }

    /// Datagrams received but not yet handed over (they come first in the next
    /// [`recv_batch`](VtepQueue::recv_batch)); the queue's fd stays readable meanwhile.
    pub fn pending(&self) -> usize {
        self.gro.stash.pending()
    }

    /// Receives waiting datagrams (`recvmmsg`, up to the batch's free slots) without
    /// blocking. Each one is committed with [`RxBatch::commit_from`] (the sender's address)
    /// as `[RX_PAD zero bytes][UDP payload]`, i.e. written at offset [`RX_PAD`] of the slot
    /// and committed with length `RX_PAD + payload length`. A `UDP_GRO` buffer is split into
    /// its datagrams, one per slot; datagrams that do not fit are kept, in order, for the
    /// next call (see the module docs). Datagrams are not validated here (the pipeline's
    /// VXLAN stage does it and counts every drop).
    ///
    /// Datagrams still waiting in the queue's stash are handed over first; the socket is
    /// read only once the stash is empty. While the stash holds datagrams the queue's fd
    /// stays readable (its doorbell rings), so a worker that polls the fd comes back for
    /// them even when nothing new arrives.
    ///
    /// # Errors
    /// The kernel's error, other than "nothing to read" (then `Ok(0)`).
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut added = self.gro.stash.drain(batch);
        while !batch.is_full() && self.gro.stash.is_empty() {
            let free = batch.capacity() - batch.len();
            let expected = self.gro.expected.max(1);
            if added > 0 && free < expected {
                // The next buffer would likely not fit: leave it in the socket.
                break;
            }
            let want = (free / expected).clamp(1, self.receiver.capacity());
            let received = match self.receiver.recv(
                &self.socket,
                batch
                    .free_slots()
                    .take(want)
                    .map(|slot| slot.get_mut(RX_PAD..).unwrap_or_default()),
            ) {
                Ok(received) => received,
                // Hand over what this call already added; a lasting error shows next call.
                Err(_) if added > 0 => break,
                Err(error) => return Err(error),
            };
            if received == 0 {
                break;
            }
            added += self.spread(batch, received);
            if received < want {
                break;
            }
        }
        // An eventfd write or read of 1 cannot fail (no overflow, the fd is ours): the
        // error, if any, is the kernel's to report next call.
        let _ = if self.gro.stash.is_empty() {
            self.ready.silence()
        } else {
            self.ready.ring()
        };
        Ok(added)
    }

    /// Splits the `received` buffers of the last `recvmmsg` (in the first free slots of
    /// `batch`) into datagrams, one per slot, commits those that fit and stashes the rest;
    /// returns how many were committed.
    fn spread(&mut self, batch: &mut RxBatch, received: usize) -> usize {
        // 1. Describe the buffers (source slot and layout); drop truncated ones.
        let mut kept = 0;
        let mut most = 1;
        for i in 0..received {
            let Some(datagram) = self.receiver.datagram(i) else {
                break;
            };
            if datagram.truncated || RX_PAD + datagram.len > MAX_FRAME_LEN {
                self.truncated += 1;
                continue;
            }
            let mut buffer = Coalesced::received(
                datagram.len,
                datagram.segment_size.map_or(0, usize::from),
                datagram
                    .peer
                    .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            );
            if buffer.count() > 1 {
                self.gro.coalesced += 1;
                merge_buffer(batch, i, &mut buffer);
                if buffer.merged >= 2 {
                    self.gro.merged += 1;
                }
            }
            most = most.max(buffer.count());
            if let Some(entry) = self.gro.buffers.get_mut(kept) {
                *entry = (i, buffer);
                kept += 1;
            }
        }
        self.gro.expected = most;
        // 2. Close the gaps left by dropped buffers: buffer `k` moves down to slot `k`
        // (in order, so no buffer is overwritten before it moved).
        for k in 0..kept {
            let Some(&(source, buffer)) = self.gro.buffers.get(k) else {
                break;
            };
            if source != k {
                copy_between(batch, source, 0, buffer.len, k, [0; RX_PAD]);
                if let Some(entry) = self.gro.buffers.get_mut(k) {
                    entry.0 = k;
                }
            }
        }
        // 3. Which datagrams fit: buffers before `full` entirely, buffer `full` (if any) its
        // first `partial` datagrams.
        let free = batch.capacity() - batch.len();
        let mut placed = 0;
        let mut full = kept;
        let mut partial = 0;
        for (k, (_, buffer)) in self.gro.buffers.iter().take(kept).enumerate() {
            let count = buffer.count();
            if placed + count > free {
                full = k;
                partial = free - placed;
                break;
            }
            placed += count;
        }
        // 4. Stash what does not fit, before anything is overwritten.
        for (k, (_, buffer)) in self.gro.buffers.iter().enumerate().take(kept).skip(full) {
            let skip = if k == full { partial } else { 0 };
            let from = buffer.datagram(skip).start;
            let Some(data) = batch
                .free_slots()
                .nth(k)
                .and_then(|slot| slot.get(RX_PAD + from..RX_PAD + buffer.len))
            else {
                continue;
            };
            // The rest of a split buffer is still datagrams of `segment` bytes.
            if !self.gro.stash.push(data, buffer.rest(skip)) {
                self.truncated += 1;
            }
        }
        // 5. Spread the datagrams that fit, last buffer first: buffer `k` (in slot `k`) goes
        // to slots `first[k]..first[k] + n` with `first[k] >= k`, so every target slot is
        // either free already or the buffer's own slot (its first datagram, which stays).
        let fitting = if partial > 0 { full + 1 } else { full };
        let mut end = placed + partial;
        for k in (0..fitting).rev() {
            let Some(&(_, buffer)) = self.gro.buffers.get(k) else {
                continue;
            };
            let count = if k == full { partial } else { buffer.count() };
            let first = end - count;
            for j in (1..count).rev() {
                let range = buffer.datagram(j);
                copy_between(batch, k, range.start, range.len(), first + j, buffer.pad(j));
            }
            if first == k {
                write_pad(batch, k, buffer.pad(0));
            } else {
                copy_between(batch, k, 0, buffer.datagram(0).len(), first, buffer.pad(0));
            }
            end = first;
        }
        // 6. Commit them in order.
        let mut committed = 0;
        for k in 0..fitting {
            let Some(&(_, buffer)) = self.gro.buffers.get(k) else {
                continue;
            };
            let count = if k == full { partial } else { buffer.count() };
            for j in 0..count {
                batch.commit_from(RX_PAD + buffer.datagram(j).len(), buffer.peer);
                committed += 1;
            }
        }
        committed
    }

    /// Encapsulates `inner` (an Ethernet frame, without virtio header, checksums complete,
    /// not GSO) for VNI `vni` toward `remote` (its UDP port is the VTEP's port) and queues it
    /// for the next [`flush`](VtepQueue::flush); a full queue is flushed first.
    ///
    /// # Errors
    /// `InvalidInput` when the frame cannot be encapsulated (too short or too long); the
    /// kernel's error when a flush forced by a full queue fails.
    pub fn send_encap(
        &mut self,
        inner: &[u8],
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
    ) -> io::Result<()> {
        if inner.len() > MAX_INNER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "inner frame longer than the VTEP's 9216-byte limit",
            ));
        }
        if self.tx_queued >= TX_SLOTS {
            self.flush()?;
        }
        let index = self.tx_queued;
        let Some(slot) = self
            .tx_buffer
            .get_mut(index * TX_SLOT_LEN..(index + 1) * TX_SLOT_LEN)
        else {
            // `tx_queued < TX_SLOTS` after the flush above, so the slot exists.
            return Err(io::Error::other("VTEP transmit ring out of slots"));
        };
        let inner_range = OUTER_LEN..OUTER_LEN + inner.len();
        slot[inner_range.clone()].copy_from_slice(inner);
        let params = EncapParams {
            vni,
            underlay: Underlay::Ipv4 {
                local: *self.local.ip(),
                remote,
            },
            dst_port: self.local.port(),
            ethernet: None,
            ipv4_ident: self.ipv4_ident,
        };
        let frame = encapsulate(slot, inner_range, &params, config)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        self.ipv4_ident = self.ipv4_ident.wrapping_add(1);
        if let (Some(frame_slot), Some(remote_slot)) = (
            self.tx_frames.get_mut(index),
            self.tx_remotes.get_mut(index),
        ) {
            *frame_slot = (frame.start, frame.end);
            *remote_slot = remote;
        }
        self.tx_queued += 1;
        Ok(())
    }

    /// Segments `frame` (a `virtio_net_hdr` + Ethernet GSO super-frame, as a TAP or
    /// AF_PACKET socket hands it over) with `segmenter`, encapsulates every segment for VNI
    /// `vni` toward `remote` (the VTEP's UDP port) and sends them with `UDP_SEGMENT`: one
    /// `sendmsg` per [`MAX_GSO_PAYLOAD`] bytes or [`MAX_GSO_SEGMENTS`] datagrams, from the
    /// UDP source port hashed from the inner flow ([`::vxlan::encap::source_port`] of the
    /// first segment, the same port [`send_encap`](VtepQueue::send_encap) uses for the
    /// flow's other packets). Packets queued by [`send_encap`](VtepQueue::send_encap) are
    /// flushed first, so the order of a flow's packets is kept.
    ///
    /// When `UDP_SEGMENT` is unusable (kernel without it, refused once) or the source port
    /// is taken, the segments are queued on the raw path instead, as
    /// [`send_encap`](VtepQueue::send_encap) would. The segments are complete frames (every
    /// checksum computed), so the frame needs no other preparation; the outer UDP checksum
    /// of a `UDP_SEGMENT` send is computed (see the module docs).
    ///
    /// Returns what became of the segments; those the kernel refused are also counted in
    /// [`send_errors`](VtepQueue::send_errors).
    ///
    /// # Errors
    /// The [`GsoError`] saying why `frame` cannot be segmented; then nothing was sent (the
    /// queued packets were flushed all the same).
    pub fn send_encap_gso(
        &mut self,
        frame: &[u8],
        segmenter: &mut Segmenter,
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
    ) -> Result<GsoSent, GsoError> {
        if self.tx_queued > 0 {
            // Refused packets are counted in `send_errors`; this frame goes out regardless.
            let _ = self.flush();
        }
        let options = send_options(config);
        let mut route = None;
        let mut chunk = Chunk::default();
        let mut sent = GsoSent::default();
        segmenter.segment(frame, |segment| {
            let inner = segment.get(VNET_HDR_LEN..).unwrap_or_default();
            let route = *route.get_or_insert_with(|| self.route(inner, config, options));
            match route {
                Route::Socket(index) => {
                    self.push_segment(inner, index, vni, remote, config, &mut chunk, &mut sent);
                }
                Route::Raw => self.send_raw(inner, vni, remote, config, &mut sent),
            }
        })?;
        if let Some(Route::Socket(index)) = route {
            self.send_chunk(&mut chunk, index, vni, remote, config, &mut sent);
        }
        Ok(sent)
    }

    /// How the segments of a super-frame whose first segment is `inner` leave.
    fn route(&mut self, inner: &[u8], config: &VxlanEncapConfig, options: SendOptions) -> Route {
        if !self.udp_segment {
            return Route::Raw;
        }
        let port = source_port(inner, config);
        let index = self.gso.sockets.lookup(*self.local.ip(), port, options);
        match self.gso.sockets.socket(index) {
            Some(_) => Route::Socket(index),
            None => Route::Raw,
        }
    }

    /// Queues one segment on the raw path and tallies it.
    fn send_raw(
        &mut self,
        inner: &[u8],
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
        sent: &mut GsoSent,
    ) {
        match self.send_encap(inner, vni, remote, config) {
            Ok(()) => {
                sent.segments += 1;
                sent.bytes += u64::try_from(inner.len()).unwrap_or(u64::MAX);
            }
            Err(_) => {
                self.send_errors += 1;
                sent.failed += 1;
            }
        }
    }

    /// Lays `inner` out as the next datagram of `chunk` (`[VXLAN header][inner]`), sending
    /// the chunk first when `inner` cannot join it.
    #[allow(clippy::too_many_arguments)]
    fn push_segment(
        &mut self,
        inner: &[u8],
        socket: usize,
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
        chunk: &mut Chunk,
        sent: &mut GsoSent,
    ) {
        let len = inner.len();
        let block = VXLAN_HEADER_LEN + len;
        if block > MAX_GSO_PAYLOAD {
            // Cannot be one datagram of a send: out on its own (the raw path refuses it
            // and counts it, as it refuses any inner frame over MAX_INNER_LEN).
            self.send_chunk(chunk, socket, vni, remote, config, sent);
            self.send_raw(inner, vni, remote, config, sent);
            return;
        }
        if chunk.count > 0
            && (chunk.closed
                || len > chunk.segment_len
                || chunk.used + block > MAX_GSO_PAYLOAD
                || chunk.count >= MAX_GSO_SEGMENTS)
        {
            self.send_chunk(chunk, socket, vni, remote, config, sent);
        }
        if chunk.count == 0 {
            chunk.segment_len = len;
        } else if len < chunk.segment_len {
            chunk.closed = true;
        }
        let Some(target) = self.gso.buffer.get_mut(chunk.used..chunk.used + block) else {
            // Cannot happen: `used + block <= MAX_GSO_PAYLOAD`, the buffer's length.
            self.send_errors += 1;
            sent.failed += 1;
            return;
        };
        let (header, payload) = target.split_at_mut(VXLAN_HEADER_LEN);
        VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(header));
        payload.copy_from_slice(inner);
        chunk.used += block;
        chunk.count += 1;
    }

    /// Sends the datagrams laid out in `chunk` from the source-port socket at `socket` (one
    /// `sendmsg`, with `UDP_SEGMENT` when there are several) and empties the chunk.
    fn send_chunk(
        &mut self,
        chunk: &mut Chunk,
        socket: usize,
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
        sent: &mut GsoSent,
    ) {
        let taken = std::mem::take(chunk);
        if taken.count == 0 {
            return;
        }
        let count_u64 = u64::try_from(taken.count).unwrap_or(u64::MAX);
        let inner_bytes = taken.used - taken.count * VXLAN_HEADER_LEN;
        // At most MAX_GSO_PAYLOAD (< 65536) bytes: the conversion cannot fail.
        let segment_size = (taken.count > 1)
            .then(|| u16::try_from(VXLAN_HEADER_LEN + taken.segment_len).ok())
            .flatten();
        let to = SocketAddrV4::new(remote, self.local.port());
        let result = match (
            self.gso.sockets.socket(socket),
            self.gso.buffer.get(..taken.used),
        ) {
            (Some(udp), Some(payload)) => udp.send_to(payload, to, segment_size),
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        let error = match result {
            Ok(_) => {
                sent.segments += taken.count;
                sent.bytes += u64::try_from(inner_bytes).unwrap_or(u64::MAX);
                if segment_size.is_some() {
                    self.gso.sends += 1;
                }
                return;
            }
            Err(error) => error,
        };
        let errno = error.raw_os_error();
        if segment_size.is_some()
            && matches!(errno, Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT))
        {
            // The kernel may refuse the offload itself (EIO: a route that cannot take UDP
            // GSO; ENOPROTOOPT: no UDP GSO), or these segments (EINVAL: larger than the
            // route's MTU, but also UDP GSO refused by the device). Send them the raw way,
            // now: if they go out, the offload was the problem.
            let errors_before = self.send_errors;
            // Counts its own refusals in `failed` and `send_errors`.
            self.resend_raw(&taken, vni, remote, config, sent);
            let errors_queued = self.send_errors;
            let flushed = self.flush();
            let refused = usize::try_from(self.send_errors - errors_queued).unwrap_or(usize::MAX);
            sent.segments = sent.segments.saturating_sub(refused);
            sent.failed += refused;
            let clean = self.send_errors == errors_before && flushed.is_ok();
            if errno != Some(libc::EINVAL) || clean {
                self.udp_segment = false;
                tracing::warn!(local = %self.local, %error, "the kernel refuses UDP_SEGMENT on the VTEP's sockets; segments go out one by one from now on");
            }
            return;
        }
        // Queue or device full (EAGAIN, ENOBUFS), no route, ...: these segments are lost.
        self.send_errors += count_u64;
        sent.failed += taken.count;
    }

    /// Queues the datagrams of `chunk` (laid out in the GSO buffer) on the raw path.
    fn resend_raw(
        &mut self,
        chunk: &Chunk,
        vni: Vni,
        remote: Ipv4Addr,
        config: &VxlanEncapConfig,
        sent: &mut GsoSent,
    ) {
        // Taken out for the loop, so that `send_encap` can borrow the queue; a boxed empty
        // slice takes no allocation.
        let buffer = std::mem::take(&mut self.gso.buffer);
        let block = VXLAN_HEADER_LEN + chunk.segment_len;
        for index in 0..chunk.count {
            let start = index * block + VXLAN_HEADER_LEN;
            let end = (start + chunk.segment_len).min(chunk.used);
            match buffer.get(start..end) {
                Some(inner) => self.send_raw(inner, vni, remote, config, sent),
                None => {
                    self.send_errors += 1;
                    sent.failed += 1;
                }
            }
        }
        self.gso.buffer = buffer;
    }

    /// Sends every queued packet (`sendmmsg`). Packets the kernel refuses are dropped and
    /// counted in [`VtepQueue::send_errors`].
    ///
    /// # Errors
    /// The first kernel error, when not one packet could be sent.
    pub fn flush(&mut self) -> io::Result<()> {
        let queued = self.tx_queued.min(TX_SLOTS);
        self.tx_queued = 0;
        let mut next = 0;
        let mut sent_any = false;
        let mut first_error = None;
        while next < queued {
            let buffer = &self.tx_buffer;
            let packets = (next..queued).map(|i| {
                let (start, end) = self.tx_frames.get(i).copied().unwrap_or_default();
                let base = i * TX_SLOT_LEN;
                (
                    buffer.get(base + start..base + end).unwrap_or_default(),
                    self.tx_remotes
                        .get(i)
                        .copied()
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                )
            });
            match self.sender.send(&self.raw, packets) {
                Ok(0) => {
                    // Cannot happen (sendmmsg takes at least one or fails); never spin.
                    self.send_errors += u64::try_from(queued - next).unwrap_or(u64::MAX);
                    break;
                }
                Ok(sent) => {
                    next += sent;
                    sent_any = true;
                }
                Err(error)
                    if error.kind() == io::ErrorKind::WouldBlock
                        || error.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    // The socket or the device queue is full: the rest would fail alike.
                    self.send_errors += u64::try_from(queued - next).unwrap_or(u64::MAX);
                    first_error.get_or_insert(error);
                    break;
                }
                Err(error) => {
                    // This packet's own problem (no route, too big): skip it, send the rest.
                    self.send_errors += 1;
                    next += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if !sent_any => Err(error),
            _ => Ok(()),
        }
    }
}

/// An error of opening the VTEP on `local`, saying what to check.
fn describe(local: SocketAddrV4, error: SocketError) -> io::Error {
    let address = local.ip();
    let port = local.port();
    let message = match error.source.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => format!(
            "cannot open the VTEP on {local}: address {address} is not configured on any \
             interface in vswitchd's network namespace; set localAddress to an address of \
             this node"
        ),
        Some(libc::EADDRINUSE) => format!(
            "cannot open the VTEP on {local}: UDP port {port} on {address} is in use (a kernel \
             vxlan device or another vswitchd?)"
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "cannot open the VTEP on {local}: {error}; vswitchd needs CAP_NET_RAW (raw send \
             socket), CAP_NET_ADMIN and, for ports below 1024, CAP_NET_BIND_SERVICE"
        ),
        _ => format!("cannot open the VTEP on {local}: {error}"),
    };
    io::Error::new(error.source.kind(), message)
}

/// Opens the VTEP on `local:port` with `queues` queues (one per worker).
///
/// Port 0 makes the kernel choose a free port (every queue then binds that port; see
/// [`VtepQueue::local`]).
///
/// # Errors
/// An error that names the address and says what to check (address not configured on any
/// interface of the daemon's namespace, port in use, no permission).
pub fn open(local: SocketAddrV4, queues: usize) -> io::Result<PortIo> {
    let address = *local.ip();
    if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot open the VTEP on {local}: the local address must be a unicast address \
                 of this node (the one other nodes reach)"
            ),
        ));
    }
    if queues == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot open the VTEP with 0 queues: give it one per worker",
        ));
    }
    // A socket without SO_REUSEPORT first: its bind fails when anyone already holds the port,
    // including another process's SO_REUSEPORT group (the same user's other vswitchd, whose
    // group ours would silently join). It also learns the port when 0 was given. UDP keeps
    // no state after close, so the queues can bind the port right after.
    let probe = UdpSocket::bind(local, false, None).map_err(|error| describe(local, error))?;
    let local = probe.local_addr().map_err(|source| {
        describe(
            local,
            SocketError {
                what: "getsockname",
                source,
            },
        )
    })?;
    drop(probe);
    // Spread the queues' starting identifications over the 16-bit space from a random point.
    let seed = RandomState::new().hash_one(local);
    let stride = 65_536 / queues;
    let mut io_queues = Vec::with_capacity(queues);
    for index in 0..queues {
        let offset = u64::try_from(index * stride).unwrap_or(0);
        // Masked to 16 bits, so the conversion cannot fail.
        let ident = u16::try_from(seed.wrapping_add(offset) & 0xffff).unwrap_or(0);
        let queue = VtepQueue::open(local, ident)?;
        io_queues.push(parking_lot::Mutex::new(PortQueue::Vxlan(queue)));
    }
    tracing::debug!(%local, queues, "VTEP open (recvmmsg on SO_REUSEPORT UDP sockets, sendmmsg on IPPROTO_RAW)");
    Ok(PortIo {
        kind: PortKind::Vxlan,
        queues: io_queues,
        capabilities: Capabilities {
            vnet_hdr: true,
            tx_partial_csum: false,
            tx_gso: false,
            tun_offload_flags: 0,
        },
        host_ifname: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ::vxlan::encap::decapsulate;
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

    use super::*;
    use crate::wire::checksum::pseudo_header_ipv4;
    use crate::wire::vnet_hdr;

    fn loopback_vtep(queues: usize) -> PortIo {
        open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), queues)
            .expect("VTEP on loopback (the tests must run as root)")
    }

    fn queue(io: &PortIo, index: usize) -> parking_lot::MappedMutexGuard<'_, VtepQueue> {
        parking_lot::MutexGuard::map(io.queues[index].lock(), |q| match q {
            PortQueue::Vxlan(q) => q,
            other => panic!("not a VTEP queue: {other:?}"),
        })
    }

    /// Receives on every queue of `io` until `want` frames arrived or 5 s passed.
    fn receive(io: &PortIo, batch: &mut RxBatch, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while batch.len() < want && Instant::now() < deadline {
            for index in 0..io.queues.len() {
                queue(io, index).recv_batch(batch).expect("recv_batch");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(batch.len(), want, "frames received");
    }

    /// An inner Ethernet/IPv4/UDP frame with `port` as its UDP source port.
    fn inner_frame(port: u16) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        let payload = b"hello";
        let total = u16::try_from(20 + 8 + payload.len()).unwrap();
        frame.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        frame.extend_from_slice(&port.to_be_bytes());
        frame.extend_from_slice(&[0x30, 0x39, 0, 13, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn queues_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<VtepQueue>();
        assert_send::<PortIo>();
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn open_gives_one_queue_per_worker_on_one_port() {
        let io = loopback_vtep(3);
        assert_eq!(io.kind, PortKind::Vxlan);
        assert_eq!(io.queues.len(), 3);
        assert!(io.capabilities.vnet_hdr);
        assert!(!io.capabilities.tx_gso && !io.capabilities.tx_partial_csum);
        assert_eq!(io.host_ifname, None);
        let port = queue(&io, 0).local().port();
        assert_ne!(port, 0);
        for index in 1..3 {
            assert_eq!(queue(&io, index).local().port(), port);
            assert_ne!(queue(&io, index).raw_fd(), queue(&io, 0).raw_fd());
        }
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn refuses_bad_addresses_and_busy_ports() {
        let error = open(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 123), 0), 1).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("address 192.0.2.123 is not configured on any interface"),
            "{error}"
        );
        let io = loopback_vtep(1);
        let local = queue(&io, 0).local();
        let error = open(local, 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(
            error.to_string().contains(&format!(
                "UDP port {} on 127.0.0.1 is in use (a kernel vxlan device or another vswitchd?)",
                local.port()
            )),
            "{error}"
        );
        let error = open(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4789), 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 0).is_err());
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn receives_datagrams_with_pad_and_peer() {
        let io = loopback_vtep(2);
        let local = queue(&io, 0).local();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload: Vec<u8> = (0u8..68).collect();
        client.send_to(&payload, local).unwrap();
        let mut batch = RxBatch::new(4);
        // Dirty the pad bytes: they must come back zero.
        batch.next_slot().unwrap()[..RX_PAD].fill(0xee);
        receive(&io, &mut batch, 1);
        let frame = batch.frame(0);
        assert_eq!(frame.len(), RX_PAD + payload.len());
        assert_eq!(&frame[..RX_PAD], &[0; RX_PAD]);
        assert_eq!(&frame[RX_PAD..], &payload[..]);
        assert_eq!(
            std::net::SocketAddr::V4(batch.peer(0)),
            client.local_addr().unwrap()
        );
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn encap_round_trip_over_loopback() {
        let io = loopback_vtep(1);
        let local = queue(&io, 0).local();
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(4242).unwrap();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| inner_frame(1000 + i)).collect();
        {
            let mut q = queue(&io, 0);
            for frame in &frames {
                q.send_encap(frame, vni, Ipv4Addr::LOCALHOST, &config)
                    .unwrap();
            }
            q.flush().unwrap();
            assert_eq!(q.send_errors(), 0);
            // An empty flush is a no-op.
            q.flush().unwrap();
        }
        let mut batch = RxBatch::new(8);
        receive(&io, &mut batch, 3);
        for (index, frame) in frames.iter().enumerate() {
            let received = batch.frame(index);
            assert_eq!(&received[..RX_PAD], &[0; RX_PAD]);
            let decap = decapsulate(&received[RX_PAD..]).expect("valid VXLAN");
            assert_eq!(decap.vni, vni);
            assert_eq!(&received[RX_PAD..][decap.inner], &frame[..]);
            let peer = batch.peer(index);
            assert_eq!(*peer.ip(), Ipv4Addr::LOCALHOST);
            assert_eq!(
                peer.port(),
                ::vxlan::encap::source_port(frame, &config),
                "source port hashed from the inner flow"
            );
            assert!((32768..=60999).contains(&peer.port()));
        }
        assert_eq!(queue(&io, 0).local(), local);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn full_ring_flushes_itself() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(7).unwrap();
        let frame = inner_frame(5);
        let total = TX_SLOTS + 5;
        {
            let mut q = queue(&io, 0);
            for _ in 0..total {
                q.send_encap(&frame, vni, Ipv4Addr::LOCALHOST, &config)
                    .unwrap();
            }
            q.flush().unwrap();
        }
        let mut batch = RxBatch::new(total);
        receive(&io, &mut batch, total);
        assert_eq!(queue(&io, 0).send_errors(), 0);
        for index in 0..total {
            let decap = decapsulate(&batch.frame(index)[RX_PAD..]).expect("valid VXLAN");
            assert_eq!(decap.vni, vni);
        }
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn refuses_frames_that_cannot_be_encapsulated() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(7).unwrap();
        let mut q = queue(&io, 0);
        let short = q.send_encap(&[0; 10], vni, Ipv4Addr::LOCALHOST, &config);
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let long = vec![0u8; MAX_INNER_LEN + 1];
        let long = q.send_encap(&long, vni, Ipv4Addr::LOCALHOST, &config);
        assert_eq!(long.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(q.tx_queued, 0);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn outer_headers_are_ipv4_udp_vxlan() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(99).unwrap();
        let frame = inner_frame(4000);
        let mut q = queue(&io, 0);
        let first_ident = q.ipv4_ident;
        q.send_encap(&frame, vni, Ipv4Addr::new(192, 0, 2, 9), &config)
            .unwrap();
        q.send_encap(&frame, vni, Ipv4Addr::new(192, 0, 2, 9), &config)
            .unwrap();
        let (start, end) = q.tx_frames[0];
        let ip = Ipv4Packet::new_checked(&q.tx_buffer[start..end]).expect("IPv4");
        assert_eq!(ip.src_addr(), Ipv4Addr::LOCALHOST);
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(ip.ident(), first_ident);
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("UDP");
        assert_eq!(udp.dst_port(), q.local().port());
        assert_eq!(
            udp.checksum(),
            0,
            "zero outer UDP checksum over IPv4 by default"
        );
        let (start, end) = q.tx_frames[1];
        let second = &q.tx_buffer[TX_SLOT_LEN + start..TX_SLOT_LEN + end];
        let ip = Ipv4Packet::new_checked(second).expect("IPv4");
        assert_eq!(ip.ident(), first_ident.wrapping_add(1));
        // Not flushed: nothing leaves toward the documentation address.
        q.tx_queued = 0;
    }

    #[test]
    fn datagram_count_and_ranges() {
        // No UDP_GRO message: one datagram, whatever its length (an empty one too).
        assert_eq!(datagram_count(1500, 0), 1);
        assert_eq!(datagram_count(0, 0), 1);
        assert_eq!(datagram_range(1500, 0, 0), 0..1500);
        // A buffer no longer than its segment size is one datagram.
        assert_eq!(datagram_count(1000, 1000), 1);
        assert_eq!(datagram_count(999, 1000), 1);
        // Several: all of the segment size but the last.
        assert_eq!(datagram_count(2500, 1000), 3);
        assert_eq!(datagram_range(2500, 1000, 0), 0..1000);
        assert_eq!(datagram_range(2500, 1000, 1), 1000..2000);
        assert_eq!(datagram_range(2500, 1000, 2), 2000..2500);
        assert_eq!(datagram_count(3000, 1000), 3);
        assert_eq!(datagram_range(3000, 1000, 2), 2000..3000);
        // Out of range: empty, never a panic.
        assert_eq!(datagram_range(2500, 1000, 9), 2500..2500);
    }

    /// Sends `datagrams` (all of `size` bytes but the last) from `socket` to `to` in one
    /// `UDP_SEGMENT` send; datagram `i` is filled with `tag + i`.
    fn send_coalesced(socket: &UdpSocket, to: SocketAddrV4, sizes: &[usize], tag: u8) {
        let mut payload = Vec::new();
        for (index, &size) in sizes.iter().enumerate() {
            payload.extend(std::iter::repeat_n(
                tag.wrapping_add(u8::try_from(index).unwrap()),
                size,
            ));
        }
        let segment = sizes.first().copied().unwrap_or(0);
        let segment = (sizes.len() > 1).then(|| u16::try_from(segment).unwrap());
        assert_eq!(
            socket.send_to(&payload, to, segment).unwrap(),
            payload.len()
        );
    }

    fn loopback_sender() -> UdpSocket {
        let options = SendOptions {
            ttl: 64,
            dont_fragment: false,
            send_buffer: None,
        };
        UdpSocket::bind_sender(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), options)
            .expect("send-only socket on loopback")
    }

    /// Checks that frame `index` of `batch` is `[RX_PAD zeros][len bytes of fill]`.
    fn check_frame(batch: &RxBatch, index: usize, len: usize, fill: u8, peer: SocketAddrV4) {
        let frame = batch.frame(index);
        assert_eq!(frame.len(), RX_PAD + len, "frame {index}");
        assert_eq!(&frame[..RX_PAD], &[0; RX_PAD], "frame {index}");
        assert!(
            frame[RX_PAD..].iter().all(|&byte| byte == fill),
            "frame {index} should be filled with {fill}"
        );
        assert_eq!(batch.peer(index), peer, "frame {index}");
    }

    fn readable(queue: &VtepQueue) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn gro_buffers_are_split_one_datagram_per_slot() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        assert!(q.udp_gro(), "UDP_GRO on this kernel");
        let local = q.local();
        let sender = loopback_sender();
        let peer = sender.local_addr().unwrap();
        // A super-datagram of 10 (the last shorter), a single datagram, one of 5.
        send_coalesced(
            &sender,
            local,
            &[100; 9].iter().copied().chain([50]).collect::<Vec<_>>(),
            1,
        );
        send_coalesced(&sender, local, &[77], 20);
        send_coalesced(&sender, local, &[200; 5], 30);
        let mut batch = RxBatch::new(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        while batch.len() < 16 && Instant::now() < deadline {
            q.recv_batch(&mut batch).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(batch.len(), 16);
        for i in 0..9 {
            check_frame(&batch, i, 100, 1 + u8::try_from(i).unwrap(), peer);
        }
        check_frame(&batch, 9, 50, 10, peer);
        check_frame(&batch, 10, 77, 20, peer);
        for i in 0..5 {
            check_frame(&batch, 11 + i, 200, 30 + u8::try_from(i).unwrap(), peer);
        }
        assert!(
            q.gro_coalesced() >= 2,
            "the kernel handed over coalesced buffers"
        );
        assert_eq!(q.pending(), 0);
        assert_eq!(q.truncated(), 0);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn datagrams_that_do_not_fit_wait_for_the_next_call_and_keep_the_fd_readable() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        let local = q.local();
        let sender = loopback_sender();
        let peer = sender.local_addr().unwrap();
        send_coalesced(&sender, local, &[64; 10], 0);
        send_coalesced(&sender, local, &[32; 3], 100);
        send_coalesced(&sender, local, &[16], 200);
        // Both are waiting before the first read, so one recvmmsg takes them all.
        std::thread::sleep(Duration::from_millis(50));
        let mut sizes = Vec::new();
        let mut batch = RxBatch::new(4);
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < 14 && Instant::now() < deadline {
            batch.clear();
            let added = q.recv_batch(&mut batch).unwrap();
            assert_eq!(added, batch.len());
            sizes.push(added);
            for i in 0..batch.len() {
                assert_eq!(batch.peer(i), peer);
                received.push(batch.frame(i).to_vec());
            }
            // The fd is readable exactly while datagrams wait in the socket or the stash.
            if q.pending() > 0 {
                assert!(
                    readable(&q),
                    "the doorbell rings while {} wait",
                    q.pending()
                );
            }
        }
        assert_eq!(received.len(), 14, "calls handed over {sizes:?}");
        assert_eq!(q.pending(), 0);
        assert!(!readable(&q), "nothing left: the fd is quiet");
        let mut expected: Vec<Vec<u8>> = (0..10u8)
            .map(|i| [vec![0; RX_PAD], vec![i; 64]].concat())
            .collect();
        expected.extend((0..3u8).map(|i| [vec![0; RX_PAD], vec![100 + i; 32]].concat()));
        expected.push([vec![0; RX_PAD], vec![200; 16]].concat());
        assert_eq!(received, expected, "every datagram, in order");
        assert!(sizes.iter().all(|&size| size <= 4));
    }

    /// 10 VXLAN datagrams of equal size: the segments of one TCP flow (MSS 1000), the first
    /// `same_vni` with VNI 5 and the rest with VNI 6.
    fn tcp_datagrams(same_vni: usize, seq: u32) -> Vec<Vec<u8>> {
        let frame = tcp_super_frame(10_000, 1000, seq);
        let mut segments = Vec::new();
        Segmenter::new()
            .segment(&frame, |segment| {
                segments.push(segment[VNET_HDR_LEN..].to_vec())
            })
            .unwrap();
        segments
            .into_iter()
            .enumerate()
            .map(|(index, inner)| {
                let vni = if index < same_vni { 5 } else { 6 };
                [vec![0x08, 0, 0, 0, 0, 0, vni, 0], inner].concat()
            })
            .collect()
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn merged_buffers_keep_their_layout_through_the_stash() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        let local = q.local();
        let sender = loopback_sender();
        // Two buffers: 6 segments that merge then 4 that do not (another VNI), twice.
        let buffers = [tcp_datagrams(6, 1), tcp_datagrams(6, 20_001)];
        for datagrams in &buffers {
            let size = u16::try_from(datagrams[0].len()).unwrap();
            sender
                .send_to(&datagrams.concat(), local, Some(size))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        // Room for 4 frames a call: each buffer is 5 frames once merged, so part of the
        // first and the whole second (merged) go through the stash.
        let mut batch = RxBatch::new(4);
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < 10 && Instant::now() < deadline {
            batch.clear();
            q.recv_batch(&mut batch).unwrap();
            received.extend((0..batch.len()).map(|i| batch.frame(i).to_vec()));
        }
        assert_eq!(received.len(), 10, "2 merged datagrams and 8 single ones");
        assert_eq!(q.gro_merged(), 2);
        for (buffer, datagrams) in buffers.iter().enumerate() {
            let frames = &received[buffer * 5..buffer * 5 + 5];
            // The merged one: MSS in the pad, VNI 5, the 6 payloads in order.
            check_tcp_segments(
                &frames[..1],
                Vni::new(5).unwrap(),
                6000,
                1000,
                [1, 20_001][buffer],
            );
            // The others: as sent, zero pad.
            for (frame, datagram) in frames[1..].iter().zip(&datagrams[6..]) {
                assert_eq!(frame[..RX_PAD], [0; RX_PAD]);
                assert_eq!(&frame[RX_PAD..], &datagram[..]);
            }
        }
    }

    /// A TCP over IPv4 GSO super-frame as a TAP hands it over: virtio_net_hdr with
    /// NEEDS_CSUM and TCPV4, the TCP checksum field holding the pseudo-header sum.
    pub(crate) fn tcp_super_frame(payload_len: usize, mss: u16, seq: u32) -> Vec<u8> {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let tcp_len = 20 + payload_len;
        let mut frame = vec![0u8; vnet_hdr::HEADER_LEN];
        frame[0] = vnet_hdr::flags::NEEDS_CSUM;
        frame[1] = vnet_hdr::gso::TCPV4;
        frame[2..4].copy_from_slice(&54u16.to_le_bytes());
        frame[4..6].copy_from_slice(&mss.to_le_bytes());
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&16u16.to_le_bytes());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(20 + tcp_len).unwrap().to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF, as Linux sends TCP
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let mut packet = Ipv4Packet::new_unchecked(&mut ip[..]);
        packet.fill_checksum();
        frame.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x18; // ACK | PSH
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        let partial = pseudo_header_ipv4(src, dst, 6, u16::try_from(tcp_len).unwrap());
        tcp[16..18].copy_from_slice(&partial.to_be_bytes());
        frame.extend_from_slice(&tcp);
        frame.extend((0..payload_len).map(|i| u8::try_from(i % 251).unwrap()));
        frame
    }

    /// The MSS a VTEP left in the pad of a datagram it merged in place (0: not merged).
    fn merged_mss(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[0], frame[1]])
    }

    /// How many wire segments a received frame stands for (merged ones stand for several).
    fn segments_in(frame: &[u8]) -> usize {
        let mss = usize::from(merged_mss(frame));
        if mss == 0 {
            return 1;
        }
        let inner = &frame[VNET_HDR_LEN..];
        let ip = Ipv4Packet::new_checked(&inner[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        tcp.payload().len().div_ceil(mss)
    }

    /// Checks that `frames` (received by a VTEP: `[RX_PAD][VXLAN][inner]`) carry the
    /// segments of [`tcp_super_frame`]`(payload_len, mss, seq)` in order, checksums valid.
    /// A datagram merged in place from several segments must say `mss` in its pad and carry
    /// a partial TCP checksum (completed here before it is verified).
    fn check_tcp_segments(frames: &[Vec<u8>], vni: Vni, payload_len: usize, mss: usize, seq: u32) {
        let mut next_seq = seq;
        let mut payload = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            let decap = decapsulate(&frame[RX_PAD..]).expect("valid VXLAN");
            assert_eq!(decap.vni, vni);
            let mut inner = frame[RX_PAD..][decap.inner].to_vec();
            let merged = merged_mss(frame);
            if merged != 0 {
                assert_eq!(usize::from(merged), mss, "segment {index}: the run's MSS");
                crate::wire::checksum::complete_partial_checksum(&mut inner, 34, 16).unwrap();
            }
            let eth = EthernetFrame::new_checked(&inner[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum(), "segment {index}: IPv4 checksum");
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(
                tcp.verify_checksum(
                    &IpAddress::Ipv4(ip.src_addr()),
                    &IpAddress::Ipv4(ip.dst_addr())
                ),
                "segment {index}: TCP checksum"
            );
            assert_eq!(
                tcp.seq_number().0.cast_unsigned(),
                next_seq,
                "segment {index}: sequence"
            );
            assert!(merged != 0 || tcp.payload().len() <= mss);
            next_seq = next_seq.wrapping_add(u32::try_from(tcp.payload().len()).unwrap());
            payload.extend_from_slice(tcp.payload());
        }
        let expected: Vec<u8> = (0..payload_len)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        assert_eq!(payload, expected, "the payload, whole and in order");
    }

    /// Receives on queue 0 of `io` until frames standing for `want` wire segments arrived
    /// or 5 s passed.
    fn receive_frames(io: &PortIo, want: usize) -> Vec<(Vec<u8>, SocketAddrV4)> {
        let mut frames = Vec::new();
        let mut segments = 0;
        let mut batch = RxBatch::new(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        while segments < want && Instant::now() < deadline {
            batch.clear();
            queue(io, 0).recv_batch(&mut batch).unwrap();
            segments += (0..batch.len())
                .map(|i| segments_in(batch.frame(i)))
                .sum::<usize>();
            frames.extend((0..batch.len()).map(|i| (batch.frame(i).to_vec(), batch.peer(i))));
            std::thread::sleep(Duration::from_millis(2));
        }
        frames
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn gso_send_over_loopback_with_udp_segment() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(4242).unwrap();
        let (payload_len, mss) = (20_000, 1398);
        let frame = tcp_super_frame(payload_len, mss, 1000);
        let mut segmenter = Segmenter::new();
        let expected_port = {
            let mut first = None;
            segmenter
                .segment(&frame, |segment| {
                    first.get_or_insert_with(|| segment[VNET_HDR_LEN..].to_vec());
                })
                .unwrap();
            source_port(&first.unwrap(), &config)
        };
        // A packet queued on the raw path first: it must leave before the super-frame.
        let single = inner_frame(7);
        let sent = {
            let mut q = queue(&io, 0);
            assert!(q.udp_segment(), "UDP_SEGMENT on this kernel");
            q.send_encap(&single, vni, Ipv4Addr::LOCALHOST, &config)
                .unwrap();
            q.send_encap_gso(&frame, &mut segmenter, vni, Ipv4Addr::LOCALHOST, &config)
                .unwrap()
        };
        let count = payload_len.div_ceil(usize::from(mss));
        assert_eq!(sent.segments, count);
        assert_eq!(sent.failed, 0);
        assert_eq!(sent.bytes, u64::try_from(payload_len + count * 54).unwrap());
        let frames = receive_frames(&io, count + 1);
        let segments: usize = frames.iter().map(|(f, _)| segments_in(f)).sum();
        assert_eq!(segments, count + 1);
        let decap = decapsulate(&frames[0].0[RX_PAD..]).unwrap();
        assert_eq!(
            &frames[0].0[RX_PAD..][decap.inner],
            &single[..],
            "the queued packet first"
        );
        for (_, peer) in &frames[1..] {
            assert_eq!(*peer, SocketAddrV4::new(Ipv4Addr::LOCALHOST, expected_port));
        }
        let segments: Vec<Vec<u8>> = frames[1..].iter().map(|(f, _)| f.clone()).collect();
        check_tcp_segments(&segments, vni, payload_len, usize::from(mss), 1000);
        let q = queue(&io, 0);
        assert_eq!(q.gso_sends(), 1, "one sendmsg for the whole super-frame");
        assert_eq!(q.send_errors(), 0);
        assert!(q.gro_coalesced() >= 1, "received whole over loopback");
        assert!(q.gro_merged() >= 1, "and its TCP segments merged in place");
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn large_super_frames_take_several_sends() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(9).unwrap();
        // 64 KB of payload in 1448-byte segments: 46 datagrams of 1510 bytes > 65507.
        let (payload_len, mss) = (65_000, 1448);
        let frame = tcp_super_frame(payload_len, mss, 7);
        let sent = queue(&io, 0)
            .send_encap_gso(
                &frame,
                &mut Segmenter::new(),
                vni,
                Ipv4Addr::LOCALHOST,
                &config,
            )
            .unwrap();
        let count = payload_len.div_ceil(usize::from(mss));
        assert_eq!((sent.segments, sent.failed), (count, 0));
        let frames: Vec<Vec<u8>> = receive_frames(&io, count)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        check_tcp_segments(&frames, vni, payload_len, usize::from(mss), 7);
        assert_eq!(queue(&io, 0).gso_sends(), 2);
        // Tiny segments: the 64-datagram limit splits the sends.
        let frame = tcp_super_frame(100 * 20, 20, 1);
        let sent = queue(&io, 0)
            .send_encap_gso(
                &frame,
                &mut Segmenter::new(),
                vni,
                Ipv4Addr::LOCALHOST,
                &config,
            )
            .unwrap();
        assert_eq!((sent.segments, sent.failed), (100, 0));
        let frames: Vec<Vec<u8>> = receive_frames(&io, 100)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        check_tcp_segments(&frames, vni, 2000, 20, 1);
        assert_eq!(queue(&io, 0).gso_sends(), 4);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn a_taken_source_port_falls_back_to_the_raw_path() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(5).unwrap();
        let frame = tcp_super_frame(5000, 1000, 0);
        let mut segmenter = Segmenter::new();
        let mut first = None;
        segmenter
            .segment(&frame, |segment| {
                first.get_or_insert_with(|| segment[VNET_HDR_LEN..].to_vec());
            })
            .unwrap();
        let port = source_port(&first.unwrap(), &config);
        // Someone else holds the port (this test, or whoever had it already).
        let _holder = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).ok();
        let sent = {
            let mut q = queue(&io, 0);
            let sent = q
                .send_encap_gso(&frame, &mut segmenter, vni, Ipv4Addr::LOCALHOST, &config)
                .unwrap();
            q.flush().unwrap();
            sent
        };
        assert_eq!((sent.segments, sent.failed), (5, 0));
        let frames = receive_frames(&io, 5);
        for (_, peer) in &frames {
            assert_eq!(peer.port(), port, "still the flow's source port (raw path)");
        }
        let frames: Vec<Vec<u8>> = frames.into_iter().map(|(f, _)| f).collect();
        check_tcp_segments(&frames, vni, 5000, 1000, 0);
        let q = queue(&io, 0);
        assert_eq!(q.gso_sends(), 0);
        assert_eq!(q.port_bind_failures(), 1);
        assert!(q.udp_segment(), "a taken port does not disable UDP_SEGMENT");
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn frames_that_cannot_be_segmented_are_refused() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(5).unwrap();
        let mut q = queue(&io, 0);
        let mut not_gso = tcp_super_frame(3000, 1000, 0);
        not_gso[1] = vnet_hdr::gso::NONE;
        let error = q
            .send_encap_gso(
                &not_gso,
                &mut Segmenter::new(),
                vni,
                Ipv4Addr::LOCALHOST,
                &config,
            )
            .unwrap_err();
        assert_eq!(error, GsoError::NotGso);
        let frame = tcp_super_frame(3000, 1000, 0);
        let error = q
            .send_encap_gso(
                &frame[..40],
                &mut Segmenter::new(),
                vni,
                Ipv4Addr::LOCALHOST,
                &config,
            )
            .unwrap_err();
        assert_eq!(error, GsoError::Truncated);
        assert_eq!(q.gso_sends(), 0);
        assert_eq!(q.send_errors(), 0);
    }

    #[test]
    fn source_port_sockets_are_bounded_and_evicted_least_recently_used() {
        let mut sockets = PortSockets::new(open_current_namespace());
        let options = send_options(&VxlanEncapConfig::default());
        let base = 40_000;
        for offset in 0..SOURCE_PORT_SOCKETS {
            let port = base + u16::try_from(offset).unwrap();
            // A port someone else holds is remembered as taken: an entry all the same.
            sockets.lookup(Ipv4Addr::LOCALHOST, port, options);
        }
        // Touch the first port: the second becomes the least recently used.
        let first = sockets.lookup(Ipv4Addr::LOCALHOST, base, options);
        assert_eq!(sockets.entries.len(), SOURCE_PORT_SOCKETS);
        let index = sockets.lookup(Ipv4Addr::LOCALHOST, base + 1000, options);
        assert_eq!(sockets.entries.len(), SOURCE_PORT_SOCKETS, "bounded");
        assert_eq!(sockets.entries[index].port, base + 1000);
        assert!(sockets.entries.iter().any(|entry| entry.port == base));
        assert!(
            !sockets.entries.iter().any(|entry| entry.port == base + 1),
            "LRU evicted"
        );
        assert_eq!(sockets.entries[first].port, base);
        // New options close them all.
        let other = SendOptions { ttl: 5, ..options };
        sockets.lookup(Ipv4Addr::LOCALHOST, base, other);
        assert_eq!(sockets.entries.len(), 1);
    }

    #[test]
    fn send_only_sockets_receive_nothing() {
        let sender = loopback_sender();
        let address = sender.local_addr().unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"should be dropped", address).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut receiver = Receiver::new(1);
        let mut slot = [0u8; 64];
        assert_eq!(
            receiver
                .recv(&sender, std::iter::once(&mut slot[..]))
                .unwrap(),
            0,
            "the filter drops everything sent to a send-only socket"
        );
    }
}
