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
//! # Transmit path
//! One `send(MSG_DONTWAIT)` per frame; [`PacketSocket::flush`] has nothing to do.
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

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use ring::Ring;
pub use ring::RingLayout;

use crate::port::RxBatch;

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
        let request = layout.request();
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &request)
            .map_err(fail("PACKET_RX_RING"))?;
        let ring = Ring::map(&fd, layout).map_err(fail("mmap rx ring"))?;
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
        Ok(PacketSocket { fd, ring, filtered })
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

    /// Joins `membership` on interface `ifindex` (the one the socket is bound to).
    ///
    /// # Errors
    /// The kernel's error (`EINVAL` for an interface whose addresses are not 6 bytes long).
    pub fn add_membership(&self, ifindex: u32, membership: Membership) -> io::Result<()> {
        let (kind, address) = match membership {
            Membership::Promiscuous => (libc::PACKET_MR_PROMISC, [0u8; 6]),
            Membership::Unicast(mac) => (libc::PACKET_MR_UNICAST, mac),
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
        set_option(
            &self.fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &request,
        )
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

    /// See [`crate::port::PortQueue::recv_batch`]. Reads the ring; frames flagged
    /// `TP_STATUS_COPY` are read whole from the socket. When there is nothing to read, the
    /// socket's pending error (if any) is returned, once.
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
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(())
    }

    /// See [`crate::port::PortQueue::send`].
    ///
    /// # Errors
    /// The kernel's error: `WouldBlock` or `ENOBUFS` when the interface cannot take more,
    /// `EINVAL` for a bad virtio header, `ENETDOWN` when the interface is down.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
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
            if rc >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// See [`crate::port::PortQueue::flush`]: sends are immediate, nothing is queued.
    ///
    /// # Errors
    /// Never.
    pub fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
}
