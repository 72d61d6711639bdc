//! The VTEP: the node's VXLAN tunnel endpoint on `localAddress:port` (UDP 4789 by default).
//!
//! CONTRACT (lead): [`open`] returns a [`PortIo`] of kind [`PortKind::Vxlan`] with one
//! [`VtepQueue`] per worker. Receive: one UDP socket per worker, `SO_REUSEPORT`, bound to the
//! local address and port, read with `recvmmsg`. Transmit: outer IPv4/UDP/VXLAN headers built
//! by the `vxlan` crate, sent with `sendmmsg` on a raw `IPPROTO_RAW` socket, so the UDP source
//! port can be hashed from the inner flow (a UDP socket would always send from 4789).
//!
//! # Receive
//! Datagrams are received straight into the batch's free slots at offset [`RX_PAD`] (no
//! copy); the [`RX_PAD`] bytes in front are zeroed. A datagram longer than a slot
//! (impossible with [`RxBatch`]'s 64 KiB slots, kept for safety) is dropped and counted in
//! [`VtepQueue::truncated`].
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
//! Only an IPv4 underlay is supported: the local address is an IPv4 address.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use ::vxlan::encap::{EncapParams, Underlay, encapsulate};
use ::vxlan::{Vni, VxlanEncapConfig};
use smoltcp::wire::{IPV4_HEADER_LEN, UDP_HEADER_LEN};

use super::{Capabilities, PortIo, PortKind, PortQueue, RxBatch};
use crate::port::batch::MAX_FRAME_LEN;
use crate::sys::udp::{RawIpv4Socket, Receiver, Sender, SocketError, UdpSocket};

/// Bytes in front of the VXLAN header in a received frame: the frame handed to the pipeline
/// is `[PAD][VXLAN header][inner Ethernet]`, so that once the 8-byte VXLAN header is
/// validated, the pipeline overwrites `frame[..VNET_HDR_LEN]` with a virtio header and the
/// frame becomes `[virtio_net_hdr][inner Ethernet]` in place (10 = 2 + 8).
pub const RX_PAD: usize = crate::wire::VNET_HDR_LEN - ::vxlan::VXLAN_HEADER_LEN;

/// Outer headers the VTEP writes in front of an inner frame: IPv4 + UDP + VXLAN = 36 bytes.
pub const OUTER_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + ::vxlan::VXLAN_HEADER_LEN;

/// The longest inner Ethernet frame [`VtepQueue::send_encap`] takes: a 9216-byte jumbo
/// frame (more than a 9000-byte underlay can carry anyway).
pub const MAX_INNER_LEN: usize = 9216;

/// Packets queued for one `sendmmsg`.
pub const TX_SLOTS: usize = 64;

/// Datagrams received by one `recvmmsg`.
const RX_BURST: usize = 64;

const TX_SLOT_LEN: usize = OUTER_LEN + MAX_INNER_LEN;

/// Receive buffer per queue socket: room for bursts of jumbo datagrams.
const RCVBUF_BYTES: u32 = 4 << 20;

/// Send buffer of the raw socket: a full ring of jumbo packets several times over.
const SNDBUF_BYTES: u32 = 4 << 20;

/// One worker's queue of the VTEP.
pub struct VtepQueue {
    local: SocketAddrV4,
    socket: UdpSocket,
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
            .finish_non_exhaustive()
    }
}

impl AsFd for VtepQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
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
        Ok(VtepQueue {
            local,
            socket,
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

    /// The receiving socket's fd (registered with epoll; readable when datagrams wait).
    pub fn raw_fd(&self) -> RawFd {
        self.socket.raw_fd()
    }

    /// Receives waiting datagrams (`recvmmsg`, up to the batch's free slots) without
    /// blocking. Each one is committed with [`RxBatch::commit_from`] (the sender's address)
    /// as `[RX_PAD zero bytes][UDP payload]`, i.e. written at offset [`RX_PAD`] of the slot
    /// and committed with length `RX_PAD + payload length`. Datagrams are not validated here
    /// (the pipeline's VXLAN stage does it and counts every drop).
    ///
    /// # Errors
    /// The kernel's error, other than "nothing to read" (then `Ok(0)`).
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut added = 0;
        while !batch.is_full() {
            let received = match self.receiver.recv(
                &self.socket,
                batch
                    .free_slots()
                    .map(|slot| slot.get_mut(RX_PAD..).unwrap_or_default()),
            ) {
                Ok(received) => received,
                // Hand over what this call already added; a lasting error shows next call.
                Err(_) if added > 0 => break,
                Err(error) => return Err(error),
            };
            // Datagram `i` sits in the `i`-th free slot as of the call; `kept` of them have
            // been committed since, so it is now the `(i - kept)`-th free slot.
            let mut kept = 0;
            for i in 0..received {
                let Some(datagram) = self.receiver.datagram(i) else {
                    break;
                };
                if datagram.truncated || RX_PAD + datagram.len > MAX_FRAME_LEN {
                    self.truncated += 1;
                    continue;
                }
                if !place(batch, i - kept, datagram.len) {
                    break;
                }
                let peer = datagram
                    .peer
                    .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
                batch.commit_from(RX_PAD + datagram.len, peer);
                kept += 1;
            }
            added += kept;
            if received < self.receiver.capacity() {
                break;
            }
        }
        Ok(added)
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

/// Moves a datagram of `len` bytes that was received into free slot `from` (counted from the
/// first free slot) into the first free slot, and zeroes that slot's [`RX_PAD`] bytes, so it
/// can be committed. Returns false when the slots are not there (cannot happen: the
/// datagram was received into them).
fn place(batch: &mut RxBatch, from: usize, len: usize) -> bool {
    let mut slots = batch.free_slots();
    let Some(target) = slots.next() else {
        return false;
    };
    if from > 0 {
        let Some(source) = slots.nth(from - 1) else {
            return false;
        };
        let (Some(from), Some(to)) = (
            source.get(RX_PAD..RX_PAD + len),
            target.get_mut(RX_PAD..RX_PAD + len),
        ) else {
            return false;
        };
        to.copy_from_slice(from);
    }
    match target.get_mut(..RX_PAD) {
        Some(pad) => {
            pad.fill(0);
            true
        }
        None => false,
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
    use smoltcp::wire::{Ipv4Packet, UdpPacket};

    use super::*;

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
}
