//! AF_PACKET sockets bound to one interface (a veth port's host end, or the uplink), one per
//! worker.
//!
//! Each socket is `SOCK_RAW` for `ETH_P_ALL`, bound to the interface, with
//! - `PACKET_VNET_HDR`: every frame in and out carries a `virtio_net_hdr`, so TCP
//!   super-frames (GSO) and partial checksums cross intact in both directions;
//! - `PACKET_IGNORE_OUTGOING`: frames we transmit are not looped back to the sockets (ours
//!   and the other workers') bound to the same interface;
//! - `PACKET_QDISC_BYPASS` (veth ports, not the uplink: see [`SocketOptions`]): transmit
//!   straight to the driver (veth has no queue worth shaping);
//! - `PACKET_FANOUT` (`PACKET_FANOUT_HASH`) when there are several: the kernel spreads flows
//!   over the workers' sockets. The group id is chosen by the kernel
//!   (`PACKET_FANOUT_FLAG_UNIQUEID`) so it can never collide with another group, and the
//!   other sockets join it by that id.
//!
//! # Receive path: a TPACKET_V2 ring, not TPACKET_V3
//! A `TPACKET_V3` ring ([`RingLayout::V3`]) hands a block to userspace (and wakes the reader)
//! only when the block is full or its retire timer fires. At low packet rates that is the
//! timer every time. Measured on kernel 6.18 with a ping across a veth port answered through
//! the ring (`tests/ports.rs`, `veth_ring_latency`, 20 pings, 2 cores under load):
//!
//! | receive ring                              | RTT min / avg / max      |
//! |-------------------------------------------|--------------------------|
//! | TPACKET_V3, kernel default retire timeout | 0.2 / 3.7–5.7 / 10–15 ms |
//! | TPACKET_V3, 1 ms retire timeout           | 0.3 / 0.4–0.9 / 1–4 ms   |
//! | TPACKET_V2 (what the port uses)           | 0.10 / 0.13 / 0.2 ms     |
//!
//! Request/response traffic cannot pay milliseconds per hop, so the port uses a
//! `TPACKET_V2` ring ([`RingLayout::v2_for_mtu`]): per-frame status, the reader woken per
//! frame, slots sized for the MTU (2 KiB at 1500, about 1 MiB per socket). Frames larger than
//! a slot (TCP super-frames of up to 64 KiB) are not given 64 KiB slots, which would cost
//! tens of MiB per port: `PACKET_COPY_THRESH` makes the kernel also queue such a frame whole
//! on the socket and flag the slot `TP_STATUS_COPY`, and the frame is then read with
//! `recv()` straight into the batch (one syscall per super-frame, up to 64 KiB). The virtio
//! header is delivered in the ring (right before the Ethernet header) with both layouts on
//! 6.18, as with `recv()`; `tests/ports.rs` checks both paths.
//!
//! # Transmit path: one `sendmmsg` per batch
//! [`PacketSocket::enqueue`] copies each frame (virtio header + Ethernet, exactly as it will be
//! sent) into the socket's transmit buffer, allocated once when the socket opens (room for
//! [`TX_FRAMES`] frames in [`TX_BUFFER_BYTES`]; its pages are only touched when used), and
//! [`PacketSocket::flush_with`] hands them all to the kernel in one `sendmmsg` (more only when
//! the kernel takes part of them). The `mmsghdr` and `iovec` arrays are built on the stack in
//! each flush from the stored frame lengths, so no pointer outlives the call. A full buffer is
//! flushed before the next frame is copied, and a frame longer than [`TX_COPY_MAX`] (a TCP
//! super-frame) is not copied at all: the queued frames are flushed and it is sent alone with
//! one `send`, so frames always leave in the order given. Every frame the kernel refuses is
//! reported by its position in the queue, so the caller counts it as a drop exactly as it
//! counted a failed `send()`: `EAGAIN`/`ENOBUFS` (the socket or device queue is full) refuse
//! that frame and the rest of the batch, which would fail alike; any other error refuses that
//! frame only, and the rest are sent. [`PacketSocket::send`] still sends one frame at once
//! (after flushing what is queued), for callers that do not batch.
//!
//! # Per-port choices
//! [`PacketSocket::open`]/[`PacketSocket::open_group`] open the veth port's sockets.
//! [`PacketSocket::open_with`]/[`PacketSocket::open_group_with`] take [`SocketOptions`]: whether
//! to bypass the qdisc, a larger send buffer, and a classic BPF receive filter ([`filter`])
//! attached before the socket is bound, so no unfiltered frame ever reaches the ring. A
//! filter the kernel refuses is logged and left off ([`PacketSocket::filtered`] says which).
//! [`PacketSocket::add_membership`] joins a `PACKET_ADD_MEMBERSHIP` (promiscuous mode or one
//! extra unicast address); the kernel drops memberships when the socket closes.
//!
//! # Fanout and outgoing frames
//! Once a socket joins a fanout group, the kernel delivers frames through the *group's* hook,
//! which ignores the sockets' own `PACKET_IGNORE_OUTGOING`; the group therefore is created
//! with `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` where the kernel knows it (6.5 and later), so
//! frames the host transmits on the interface are not read back as received. Our own
//! transmissions never come back either way (the kernel skips the sending socket's group).

pub mod filter;
mod ring;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use ring::Ring;
pub use ring::{Geometry, GeometryError, RingLayout};

use crate::cost::{self, Syscall};
use crate::sys::batch::{BATCH_SIZE, RxBatch, Sent};

/// The most frames a socket queues for one flush: the worker's batch size.
pub const TX_FRAMES: usize = BATCH_SIZE;

/// Bytes of each socket's transmit buffer: [`TX_FRAMES`] frames of a 1500-byte MTU fit with
/// room to spare (jumbo frames fill it sooner and are flushed in smaller batches).
pub const TX_BUFFER_BYTES: usize = 256 << 10;

/// Frames longer than this are not copied into the transmit buffer: the queued frames are
/// flushed and the frame is sent alone (one system call per super-frame of up to 64 KiB costs
/// less than copying it). At most [`TX_BUFFER_BYTES`], so any shorter frame fits an empty
/// buffer.
pub const TX_COPY_MAX: usize = 16 << 10;

/// Frames waiting for the next flush, copied back to back into one buffer allocated when the
/// socket opens.
struct TxQueue {
    buffer: Box<[u8]>,
    /// Where each queued frame ends in `buffer` (frame `i` starts where frame `i - 1` ends).
    ends: Box<[usize]>,
    /// Frames queued.
    queued: usize,
}

impl fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxQueue")
            .field("queued", &self.queued)
            .field("bytes", &self.used())
            .finish_non_exhaustive()
    }
}

impl TxQueue {
    fn new() -> TxQueue {
        TxQueue {
            buffer: vec![0u8; TX_BUFFER_BYTES].into_boxed_slice(),
            ends: vec![0; TX_FRAMES].into_boxed_slice(),
            queued: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Bytes of `buffer` the queued frames take.
    fn used(&self) -> usize {
        match self.queued.checked_sub(1) {
            Some(last) => self.ends.get(last).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Whether a frame of `len` bytes can still be queued.
    fn fits(&self, len: usize) -> bool {
        self.queued < self.ends.len() && self.used().saturating_add(len) <= self.buffer.len()
    }

    /// Copies `frame` in after the queued frames; returns its position, or `None` (nothing
    /// queued) when it does not fit.
    fn push(&mut self, frame: &[u8]) -> Option<usize> {
        if !self.fits(frame.len()) {
            return None;
        }
        let start = self.used();
        let end = start + frame.len();
        self.buffer.get_mut(start..end)?.copy_from_slice(frame);
        let position = self.queued;
        *self.ends.get_mut(position)? = end;
        self.queued += 1;
        Some(position)
    }

    /// Queued frame `position` (empty past the last).
    fn frame(&self, position: usize) -> &[u8] {
        if position >= self.queued {
            return &[];
        }
        let start = match position.checked_sub(1) {
            Some(previous) => self.ends.get(previous).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.ends.get(position).copied().unwrap_or(start);
        self.buffer.get(start..end).unwrap_or_default()
    }

    /// Forgets every queued frame (the buffer stays allocated).
    fn clear(&mut self) {
        self.queued = 0;
    }
}

/// True for send errors that mean "the queue is full": `WouldBlock` (the socket's send
/// buffer), `ENOBUFS` (the device or its qdisc).
fn is_queue_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock || error.raw_os_error() == Some(libc::ENOBUFS)
}

/// An empty `mmsghdr`.
fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and pointers (and, on some libcs,
    // private padding) for which all-zero bytes are a valid value (null pointers, zero
    // lengths).
    unsafe { std::mem::zeroed() }
}

/// An AF_PACKET operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} on AF_PACKET socket of ifindex {ifindex}: {source}")]
pub struct PacketError {
    /// The operation (`socket`, `PACKET_RX_RING`, `bind`, ...).
    pub what: &'static str,
    /// The interface the socket is for.
    pub ifindex: u32,
    /// The kernel's error.
    pub source: io::Error,
}

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ring: Ring,
    /// Whether the receive filter of [`SocketOptions::filter`] is attached.
    filtered: bool,
    /// Frames queued by [`PacketSocket::enqueue`] for the next flush.
    tx: TxQueue,
    /// Queued frames the kernel refused at a flush (see [`PacketSocket::refused_frames`]).
    refused: u64,
}

/// How [`PacketSocket::open_with`] opens a socket, beyond what every socket gets (see the
/// module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions<'a> {
    /// `PACKET_QDISC_BYPASS`: hand frames straight to the driver. Good for a veth (no queue
    /// worth having); wrong for a NIC shared with the host, where it would skip the host's
    /// traffic control and hide our frames from `tcpdump`.
    pub qdisc_bypass: bool,
    /// `SO_SNDBUF` in bytes (forced past `net.core.wmem_max`), when frames may wait in a
    /// qdisc and the default would make sends fail early; `None` keeps the default.
    pub send_buffer: Option<u32>,
    /// A classic BPF program run on every received frame before it is copied, attached
    /// before the socket is bound.
    pub filter: Option<&'a [filter::BpfInstruction]>,
}

impl SocketOptions<'_> {
    /// What the veth port uses: qdisc bypass, default send buffer, no filter.
    pub const VETH: SocketOptions<'static> = SocketOptions {
        qdisc_bypass: true,
        send_buffer: None,
        filter: None,
    };
}

/// An extra receive membership (`PACKET_ADD_MEMBERSHIP`, include/uapi/linux/if_packet.h).
/// The kernel counts memberships on the device and takes them back when the socket closes,
/// so a crashed daemon leaves the interface as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// `PACKET_MR_PROMISC`: the device receives every frame (raises its promiscuity count).
    Promiscuous,
    /// `PACKET_MR_UNICAST`: the device also accepts frames for this MAC (adds it to the
    /// device's unicast address list; a device that cannot filter on several unicast
    /// addresses turns promiscuous instead, by itself).
    Unicast([u8; 6]),
    /// `PACKET_MR_ALLMULTI`: the device receives every multicast frame (raises its allmulti
    /// count), for neighbour solicitations to the switch's own IPv6 addresses.
    AllMulticast,
}

/// Receive buffer for frames the V2 ring cannot hold whole (queued on the socket): room for
/// a few dozen 64 KiB super-frames.
const RCVBUF_BYTES: libc::c_int = 8 << 20;

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &impl Copy,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of_val(value))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `value` is a live, initialised value of `len` bytes that setsockopt only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` (Linux 6.5): the group's hook skips outgoing frames.
const FANOUT_IGNORE_OUTGOING: u32 = libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;

/// Attaches the classic BPF `program` to `fd` (`SO_ATTACH_FILTER`).
fn attach_filter(fd: &OwnedFd, program: &[filter::BpfInstruction]) -> io::Result<()> {
    let mut instructions = filter::to_kernel(program);
    let program = libc::sock_fprog {
        len: u16::try_from(instructions.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: instructions.as_mut_ptr(),
    };
    // The kernel copies the instructions during the call; `instructions` outlives it.
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
}

/// `htons(ETH_P_ALL)`: the protocol field of `sockaddr_ll` is in network order.
fn eth_p_all() -> u16 {
    // ETH_P_ALL is 3; the conversion cannot fail.
    u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be()
}

impl PacketSocket {
    /// Opens one socket on interface `ifindex` with the options in the module doc and a
    /// receive ring of `layout` ([`SocketOptions::VETH`]).
    ///
    /// # Errors
    /// [`PacketError`] naming the step that failed.
    pub fn open(ifindex: u32, layout: RingLayout) -> Result<PacketSocket, PacketError> {
        PacketSocket::open_with(ifindex, layout, &SocketOptions::VETH)
    }

    /// Opens one socket on interface `ifindex` with the options in the module doc, a receive
    /// ring of `layout` and the choices in `options`. A receive filter the kernel refuses is
    /// logged and left off (see [`PacketSocket::filtered`]).
    ///
    /// # Errors
    /// [`PacketError`] naming the step that failed.
    pub fn open_with(
        ifindex: u32,
        layout: RingLayout,
        options: &SocketOptions<'_>,
    ) -> Result<PacketSocket, PacketError> {
        let fail = |what: &'static str| {
            move |source: io::Error| PacketError {
                what,
                ifindex,
                source,
            }
        };
        // The ring's geometry is checked before anything is opened: the reader indexes the
        // mapping with it.
        let geometry = layout.geometry(ring::page_size()).map_err(|error| {
            fail("ring geometry")(io::Error::new(io::ErrorKind::InvalidInput, error))
        })?;
        // Protocol 0: receive nothing until bound, so no frame of another interface slips
        // into the ring between socket() and bind().
        // SAFETY: socket() has no memory-safety preconditions.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(fail("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // Before the ring: the kernel refuses PACKET_VNET_HDR and PACKET_VERSION once a ring
        // exists.
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)
            .map_err(fail("PACKET_VNET_HDR"))?;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
            .map_err(fail("PACKET_IGNORE_OUTGOING"))?;
        if options.qdisc_bypass {
            if let Err(error) = set_option(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one) {
                // Only an optimisation.
                tracing::debug!(ifindex, %error, "PACKET_QDISC_BYPASS refused");
            }
        }
        if let Some(bytes) = options.send_buffer {
            let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            // SO_SNDBUFFORCE ignores net.core.wmem_max (we hold CAP_NET_ADMIN).
            if let Err(error) = set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &bytes) {
                tracing::debug!(ifindex, %error, "SO_SNDBUFFORCE refused, trying SO_SNDBUF");
                set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &bytes)
                    .map_err(fail("SO_SNDBUF"))?;
            }
        }
        set_option(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &layout.version(),
        )
        .map_err(fail("PACKET_VERSION"))?;
        if let RingLayout::V2 { .. } = layout {
            set_option(&fd, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, &one)
                .map_err(fail("PACKET_COPY_THRESH"))?;
            // Whole copies are charged to the receive buffer: make room for super-frames.
            // SO_RCVBUFFORCE ignores net.core.rmem_max (we hold CAP_NET_ADMIN).
            if let Err(error) =
                set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF_BYTES)
            {
                tracing::debug!(ifindex, %error, "SO_RCVBUFFORCE refused, trying SO_RCVBUF");
                set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF_BYTES)
                    .map_err(fail("SO_RCVBUF"))?;
            }
        }
        set_option(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &geometry.request(),
        )
        .map_err(fail("PACKET_RX_RING"))?;
        let ring = Ring::map(&fd, layout, geometry).map_err(fail("mmap rx ring"))?;
        // Before bind(): until then the socket (protocol 0) receives nothing, so no frame
        // reaches the ring unfiltered.
        let filtered = match options.filter {
            Some(program) => match attach_filter(&fd, program) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(ifindex, %error,
                        "SO_ATTACH_FILTER refused: every frame on the interface will be copied \
                         to the switch, which then drops those not addressed to it");
                    false
                }
            },
            None => false,
        };
        let address = libc::sockaddr_ll {
            sll_family: u16::try_from(libc::AF_PACKET).unwrap_or(17),
            sll_protocol: eth_p_all(),
            sll_ifindex: libc::c_int::try_from(ifindex)
                .map_err(|_| fail("bind")(io::Error::from_raw_os_error(libc::ENODEV)))?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let address_len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(20);
        // SAFETY: `address` is a live `sockaddr_ll` of `address_len` bytes that bind() reads.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                address_len,
            )
        };
        if rc < 0 {
            return Err(fail("bind")(io::Error::last_os_error()));
        }
        Ok(PacketSocket {
            fd,
            ring,
            filtered,
            tx: TxQueue::new(),
            refused: 0,
        })
    }

    /// Opens `count` sockets on `ifindex`; when there are several, they form one
    /// `PACKET_FANOUT_HASH` group so each flow reaches exactly one of them
    /// ([`SocketOptions::VETH`]).
    ///
    /// # Errors
    /// [`PacketError`] naming the step that failed.
    pub fn open_group(
        ifindex: u32,
        count: usize,
        layout: RingLayout,
    ) -> Result<Vec<PacketSocket>, PacketError> {
        PacketSocket::open_group_with(ifindex, count, layout, &SocketOptions::VETH)
    }

    /// [`PacketSocket::open_group`] with the choices in `options` for every socket.
    ///
    /// # Errors
    /// [`PacketError`] naming the step that failed.
    pub fn open_group_with(
        ifindex: u32,
        count: usize,
        layout: RingLayout,
        options: &SocketOptions<'_>,
    ) -> Result<Vec<PacketSocket>, PacketError> {
        let mut sockets = Vec::with_capacity(count);
        let mut group: Option<(u16, u32)> = None;
        for _ in 0..count {
            let socket = PacketSocket::open_with(ifindex, layout, options)?;
            if count > 1 {
                group = Some(socket.join_fanout(group).map_err(|source| PacketError {
                    what: "PACKET_FANOUT",
                    ifindex,
                    source,
                })?);
            }
            sockets.push(socket);
        }
        tracing::debug!(ifindex, sockets = count, fanout_group = ?group.map(|(id, _)| id),
            fanout_ignores_outgoing = group.is_some_and(|(_, flags)| flags & FANOUT_IGNORE_OUTGOING != 0),
            ?layout, ?options, "AF_PACKET sockets open (vnet_hdr, ignore_outgoing)");
        Ok(sockets)
    }

    /// Joins fanout group `group` (id and the flags it was created with), or creates one
    /// with a kernel-chosen id when `None`; returns the group's id and flags.
    fn join_fanout(&self, group: Option<(u16, u32)>) -> io::Result<(u16, u32)> {
        // The option value: the id in the low 16 bits, the mode and flags in the high ones.
        let set = |id: u16, mode: u32| {
            let value: u32 = u32::from(id) | (mode << 16);
            set_option(&self.fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &value)
        };
        if let Some((id, flags)) = group {
            set(id, libc::PACKET_FANOUT_HASH | flags)?;
            return Ok((id, flags));
        }
        let create = |flags: u32| {
            set(
                0,
                libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_UNIQUEID | flags,
            )
        };
        // Kernels before 6.5 refuse the flag (EINVAL); the group then also hands the host's
        // outgoing frames to us (filter them, as the uplink's BPF program does).
        let flags = match create(FANOUT_IGNORE_OUTGOING) {
            Ok(()) => FANOUT_IGNORE_OUTGOING,
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(%error, "PACKET_FANOUT_FLAG_IGNORE_OUTGOING refused");
                create(0)?;
                0
            }
            Err(error) => return Err(error),
        };
        let mut current: u32 = 0;
        let mut len = libc::socklen_t::try_from(size_of::<u32>()).unwrap_or(4);
        // SAFETY: getsockopt writes at most `len` (4) bytes into `current`, a live u32, and
        // updates `len`, a live socklen_t.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                std::ptr::from_mut(&mut current).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // The low 16 bits are the id.
        Ok((u16::try_from(current & 0xffff).unwrap_or(0), flags))
    }

    /// Whether the receive filter given in [`SocketOptions::filter`] is attached (false when
    /// none was given or the kernel refused it).
    pub fn filtered(&self) -> bool {
        self.filtered
    }

    /// Replaces the socket's receive filter with `program` (`SO_ATTACH_FILTER` swaps it
    /// atomically: no frame passes unfiltered in between).
    ///
    /// # Errors
    /// The kernel's error; the old filter then stays.
    pub fn set_filter(&mut self, program: &[filter::BpfInstruction]) -> io::Result<()> {
        attach_filter(&self.fd, program)?;
        self.filtered = true;
        Ok(())
    }

    /// Leaves `membership` on interface `ifindex` (joined with
    /// [`add_membership`](PacketSocket::add_membership)).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn drop_membership(&self, ifindex: u32, membership: Membership) -> io::Result<()> {
        self.membership(ifindex, membership, libc::PACKET_DROP_MEMBERSHIP)
    }

    /// Joins `membership` on interface `ifindex` (the one the socket is bound to).
    ///
    /// # Errors
    /// The kernel's error (`EINVAL` for an interface whose addresses are not 6 bytes long).
    pub fn add_membership(&self, ifindex: u32, membership: Membership) -> io::Result<()> {
        self.membership(ifindex, membership, libc::PACKET_ADD_MEMBERSHIP)
    }

    fn membership(
        &self,
        ifindex: u32,
        membership: Membership,
        option: libc::c_int,
    ) -> io::Result<()> {
        let (kind, address) = match membership {
            Membership::Promiscuous => (libc::PACKET_MR_PROMISC, [0u8; 6]),
            Membership::Unicast(mac) => (libc::PACKET_MR_UNICAST, mac),
            Membership::AllMulticast => (libc::PACKET_MR_ALLMULTI, [0u8; 6]),
        };
        let mut mr_address = [0u8; 8];
        mr_address[..6].copy_from_slice(&address);
        let request = libc::packet_mreq {
            mr_ifindex: libc::c_int::try_from(ifindex)
                .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?,
            mr_type: u16::try_from(kind).unwrap_or(u16::MAX),
            mr_alen: if kind == libc::PACKET_MR_UNICAST {
                6
            } else {
                0
            },
            mr_address,
        };
        set_option(&self.fd, libc::SOL_PACKET, option, &request)
    }

    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Frames dropped so far because they arrived truncated (larger than a ring slot while
    /// the socket's receive buffer was full).
    pub fn truncated_frames(&self) -> u64 {
        self.ring.truncated
    }

    /// Moves waiting frames into `batch` until it is full or nothing is left; returns how
    /// many were added. Never blocks. Reads the ring; frames flagged `TP_STATUS_COPY` are
    /// read whole from the socket. When there is nothing to read, the socket's pending error
    /// (if any) is returned, once.
    ///
    /// # Errors
    /// `ENETDOWN` once after the interface disappeared (its namespace or the pair was
    /// deleted); sends then fail with `ENXIO`. A failed whole-frame read counts as truncated.
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let mut copy = |slot: &mut [u8]| -> io::Result<usize> {
            loop {
                // SAFETY: `slot` is a live, writable buffer of `slot.len()` bytes; recv()
                // writes at most that many (MSG_TRUNC only changes the returned length).
                let rc = unsafe {
                    libc::recv(
                        fd,
                        slot.as_mut_ptr().cast(),
                        slot.len(),
                        libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    )
                };
                cost::syscall(Syscall::Recv);
                match usize::try_from(rc) {
                    // Larger than a slot (BIG TCP super-frames beyond 64 KiB): cut, so drop.
                    Ok(len) if len > slot.len() => {
                        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
                    }
                    Ok(len) => return Ok(len),
                    Err(_) => {
                        let error = io::Error::last_os_error();
                        if error.kind() != io::ErrorKind::Interrupted {
                            return Err(error);
                        }
                    }
                }
            }
        };
        let received = self.ring.receive(batch, &mut copy);
        if received == 0 {
            cost::empty_read();
            // Woken with nothing to read: the interface may be gone (the kernel then sets
            // ENETDOWN on the socket and reports POLLERR until the error is read).
            self.take_error()?;
        }
        Ok(received)
    }

    /// Reads and clears the socket's pending error (`SO_ERROR`).
    fn take_error(&self) -> io::Result<()> {
        let mut error: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
        // SAFETY: getsockopt writes at most `len` bytes into `error`, a live c_int, and
        // updates `len`, a live socklen_t.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::from_mut(&mut error).cast(),
                &mut len,
            )
        };
        cost::syscall(Syscall::Getsockopt);
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(())
    }

    /// Sends `frame` (`virtio_net_hdr` + Ethernet) at once, never blocking. Frames queued by
    /// [`enqueue`](PacketSocket::enqueue) are flushed first, so the order is kept; those the
    /// kernel refuses then are counted in [`refused_frames`](PacketSocket::refused_frames).
    ///
    /// # Errors
    /// The kernel's error: `WouldBlock` or `ENOBUFS` when the interface cannot take more,
    /// `EINVAL` for a bad virtio header, `ENETDOWN` when the interface is down.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if !self.tx.is_empty() {
            // Refusals are counted in `self.refused`; this caller did not track positions.
            let _ = self.flush_with(&mut |_, _| {});
        }
        self.send_now(frame)
    }

    /// One `send(MSG_DONTWAIT)` of `frame`.
    fn send_now(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `frame` is a live buffer of `frame.len()` bytes that send() only reads.
            let rc = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            cost::syscall(Syscall::Send);
            if rc >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Queues `frame` (virtio header + Ethernet) for the next
    /// [`flush_with`](PacketSocket::flush_with): copies it into the transmit buffer and returns
    /// its position among the frames queued since the last flush ([`Sent::Queued`]). When the
    /// buffer cannot take it, the queued frames are flushed first, each one the kernel refuses
    /// reported to `failed` as by `flush_with`. A frame longer than [`TX_COPY_MAX`] is not
    /// copied: the queued frames are flushed, then it is sent at once ([`Sent::Now`]). Frames
    /// leave in the order given either way, and none is dropped for want of room.
    ///
    /// # Errors
    /// For a frame sent at once, the kernel's error (as [`send`](PacketSocket::send)).
    pub fn enqueue(
        &mut self,
        frame: &[u8],
        failed: &mut impl FnMut(usize, &io::Error),
    ) -> io::Result<Sent> {
        if frame.len() > TX_COPY_MAX {
            // Every refused frame was reported to `failed`.
            let _ = self.flush_with(failed);
            return self.send_now(frame).map(|()| Sent::Now);
        }
        if !self.tx.fits(frame.len()) {
            // As above.
            let _ = self.flush_with(failed);
        }
        match self.tx.push(frame) {
            Some(position) => Ok(Sent::Queued(position)),
            // Cannot happen: an empty buffer takes any frame up to TX_COPY_MAX. Never lose it.
            None => self.send_now(frame).map(|()| Sent::Now),
        }
    }

    /// Sends every frame queued by [`enqueue`](PacketSocket::enqueue) with `sendmmsg` (again
    /// for the rest when the kernel takes only part of them), then empties the queue. Each
    /// frame the kernel refuses is reported to `failed` with its position (the one
    /// [`Sent::Queued`] gave) and the error, and counted in
    /// [`refused_frames`](PacketSocket::refused_frames): `WouldBlock` or `ENOBUFS` (the
    /// socket or the device queue is full) refuses that frame and every one after it, which
    /// would fail alike; another error (a bad virtio header, a frame too long) refuses that
    /// frame only, and the rest are sent.
    ///
    /// # Errors
    /// The first error, when not one queued frame could be sent (each was reported to
    /// `failed` all the same).
    pub fn flush_with(&mut self, failed: &mut impl FnMut(usize, &io::Error)) -> io::Result<()> {
        let queued = self.tx.queued;
        let mut next = 0;
        let mut sent_any = false;
        let mut first_error: Option<io::Error> = None;
        while next < queued {
            let (refused, error) = match self.send_queued(next, queued) {
                Ok(sent) if sent > 0 => {
                    next += sent;
                    sent_any = true;
                    continue;
                }
                // sendmmsg takes at least one message or fails; never spin.
                Ok(_) => (queued - next, io::Error::from(io::ErrorKind::WriteZero)),
                Err(error) if is_queue_full(&error) => (queued - next, error),
                Err(error) => (1, error),
            };
            for position in next..next + refused {
                failed(position, &error);
            }
            self.refused = self
                .refused
                .saturating_add(u64::try_from(refused).unwrap_or(u64::MAX));
            next += refused;
            first_error.get_or_insert(error);
        }
        self.tx.clear();
        match first_error {
            Some(error) if !sent_any => Err(error),
            _ => Ok(()),
        }
    }

    /// Pushes out the queued frames: [`flush_with`](PacketSocket::flush_with) for a
    /// caller that does not track positions.
    ///
    /// # Errors
    /// The first error, when not one queued frame could be sent.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_with(&mut |_, _| {})
    }

    /// Frames queued by [`enqueue`](PacketSocket::enqueue) that the kernel refused when they
    /// were flushed, since the socket opened.
    pub fn refused_frames(&self) -> u64 {
        self.refused
    }

    /// One `sendmmsg` of queued frames `from..to` (at most [`TX_FRAMES`] of them); returns how
    /// many the kernel took, in order.
    fn send_queued(&self, from: usize, to: usize) -> io::Result<usize> {
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; TX_FRAMES];
        let mut count = 0;
        for (iovec, position) in iovecs.iter_mut().zip(from..to) {
            let frame = self.tx.frame(position);
            // sendmmsg only reads through `iov_base`; the field is `*mut` for both calls.
            *iovec = libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // No address (the socket is bound to its interface) and no control data: only the
        // iovec of each header is set. Built here, in the call that uses them.
        let mut headers = [empty_mmsghdr(); TX_FRAMES];
        // Taken once, after the last write through a reference to `iovecs`.
        let base = iovecs.as_mut_ptr();
        for (i, header) in headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_iov = base.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
        }
        let vlen = libc::c_uint::try_from(count).unwrap_or(libc::c_uint::MAX);
        loop {
            // SAFETY: `headers[..count]` are live mmsghdrs on this stack frame with no name
            // and no control buffer; each points to one live iovec of `iovecs` (also on this
            // stack frame, `count <= TX_FRAMES` of them), which points to one queued frame:
            // `iov_len` bytes inside `self.tx.buffer`, borrowed shared through `&self` for the
            // whole call, which the kernel only reads. The kernel writes only the headers'
            // `msg_len`, and `vlen` is at most the number of headers. Nothing here outlives
            // the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                )
            };
            cost::syscall(Syscall::Sendmmsg);
            if let Ok(sent) = usize::try_from(rc) {
                return Ok(sent.min(count));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_network_order() {
        assert_eq!(eth_p_all(), 0x0003u16.to_be());
    }

    /// The running kernel's (major, minor) version.
    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    }

    #[test]
    #[ignore = "needs root: opens AF_PACKET sockets (CAP_NET_RAW)"]
    fn fanout_group_ignores_outgoing_frames_where_the_kernel_can() {
        let sockets = PacketSocket::open_group(1, 2, RingLayout::v2_for_mtu(1500))
            .expect("AF_PACKET sockets on lo (the tests must run as root)");
        let mut value: u32 = 0;
        let mut len = libc::socklen_t::try_from(size_of::<u32>()).unwrap();
        // SAFETY: getsockopt writes at most `len` (4) bytes into `value`, a live u32, and
        // updates `len`, a live socklen_t.
        let rc = unsafe {
            libc::getsockopt(
                sockets[1].raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // The kernel answers id | mode << 16 | (type_flags >> 8) << 24.
        assert_eq!(value >> 16 & 0xff, libc::PACKET_FANOUT_HASH);
        let ignores_outgoing = value & (FANOUT_IGNORE_OUTGOING << 16) != 0;
        assert_eq!(
            ignores_outgoing,
            kernel_version() >= (6, 5),
            "fanout value {value:#x} on kernel {:?}",
            kernel_version()
        );
    }

    #[test]
    #[ignore = "needs root: opens AF_PACKET sockets (CAP_NET_RAW)"]
    fn open_on_loopback_and_fanout() {
        // Loopback (ifindex 1) exists in every namespace; needs CAP_NET_RAW.
        let sockets = PacketSocket::open_group(1, 2, RingLayout::v2_for_mtu(1500))
            .expect("AF_PACKET sockets on lo (the tests must run as root)");
        assert_eq!(sockets.len(), 2);
        let mut batch = RxBatch::new(4);
        let mut socket = sockets.into_iter().next().unwrap();
        // Nothing may be pending for a fresh socket on an idle lo, and it must not block.
        let _ = socket.recv_batch(&mut batch).unwrap();
    }

    #[test]
    fn tx_queue_packs_frames_back_to_back() {
        let mut queue = TxQueue::new();
        assert!(queue.is_empty());
        assert_eq!(queue.push(&[1, 2, 3]), Some(0));
        assert_eq!(queue.push(&[4]), Some(1));
        assert_eq!(queue.used(), 4);
        assert_eq!(queue.frame(0), &[1, 2, 3]);
        assert_eq!(queue.frame(1), &[4]);
        assert!(queue.frame(2).is_empty(), "past the last frame");
        for position in 2..TX_FRAMES {
            assert_eq!(queue.push(&[0; 60]), Some(position));
        }
        assert!(!queue.fits(1), "every frame slot is taken");
        assert_eq!(queue.push(&[9]), None);
        assert_eq!(queue.frame(TX_FRAMES - 1), &[0; 60]);
        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.used(), 0);
        // Large frames run out of bytes before slots; any frame up to TX_COPY_MAX fits an
        // empty buffer.
        let big = vec![7u8; TX_COPY_MAX];
        let mut pushed = 0;
        while queue.push(&big).is_some() {
            pushed += 1;
        }
        assert_eq!(pushed, TX_BUFFER_BYTES / TX_COPY_MAX);
        assert!(pushed < TX_FRAMES);
        assert_eq!(queue.frame(pushed - 1), &big[..]);
        queue.clear();
        assert_eq!(queue.push(&big), Some(0));
    }

    /// A frame of `len` bytes after the virtio header (all zero: no offload), of a local
    /// experimental EtherType, carrying `marker` and `seq`.
    fn test_frame(marker: u32, seq: u16, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; crate::wire::VNET_HDR_LEN + len];
        let ethernet = &mut frame[crate::wire::VNET_HDR_LEN..];
        ethernet[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        ethernet[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        ethernet[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        ethernet[14..18].copy_from_slice(&marker.to_be_bytes());
        ethernet[18..20].copy_from_slice(&seq.to_be_bytes());
        frame
    }

    #[test]
    #[ignore = "needs root: AF_PACKET on lo"]
    fn queued_frames_leave_in_batches_and_all_arrive() {
        let layout = RingLayout::v2_for_mtu(1500);
        let mut sender = PacketSocket::open(1, layout).expect("AF_PACKET socket on lo");
        let mut receiver = PacketSocket::open(1, layout).expect("AF_PACKET socket on lo");
        // Tells our frames from anything else on lo.
        let marker = std::process::id();
        let count: u16 = 150;
        // More than a queue holds (implicit flushes), and one frame too long to copy.
        let big: u16 = 100;
        let len = |seq: u16| if seq == big { TX_COPY_MAX + 1_000 } else { 60 };
        let mut refused: Vec<(usize, String)> = Vec::new();
        for seq in 0..count {
            let sent = sender
                .enqueue(
                    &test_frame(marker, seq, len(seq)),
                    &mut |position, error| {
                        refused.push((position, error.to_string()));
                    },
                )
                .expect("enqueue");
            if seq == big {
                assert_eq!(sent, Sent::Now, "frame {seq}");
            } else if usize::from(seq) < TX_FRAMES {
                assert_eq!(sent, Sent::Queued(usize::from(seq)), "frame {seq}");
            } else {
                assert!(matches!(sent, Sent::Queued(_)), "frame {seq}: {sent:?}");
            }
        }
        sender
            .flush_with(&mut |position, error| refused.push((position, error.to_string())))
            .expect("flush");
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(sender.refused_frames(), 0);
        assert!(sender.tx.is_empty());

        let mut batch = RxBatch::new(64);
        let mut seen: Vec<(u16, usize)> = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.len() < usize::from(count) && std::time::Instant::now() < deadline {
            batch.clear();
            receiver.recv_batch(&mut batch).expect("recv_batch");
            for i in 0..batch.len() {
                let Some(ethernet) = batch.frame(i).get(crate::wire::VNET_HDR_LEN..) else {
                    continue;
                };
                let ours = ethernet.len() >= 20
                    && ethernet[12..14] == 0x88b5u16.to_be_bytes()
                    && ethernet[14..18] == marker.to_be_bytes();
                if ours {
                    seen.push((
                        u16::from_be_bytes([ethernet[18], ethernet[19]]),
                        ethernet.len(),
                    ));
                }
            }
            if batch.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // Loopback may deliver frames sent from two CPUs out of order: compare as sets.
        seen.sort_unstable();
        let expected: Vec<(u16, usize)> = (0..count).map(|seq| (seq, len(seq))).collect();
        assert_eq!(seen, expected);
    }
}
