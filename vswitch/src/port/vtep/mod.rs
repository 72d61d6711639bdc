//! The VTEP: the node's VXLAN tunnel endpoint on `localAddress:port` (UDP 4789 by default).
//!
//! [`open`] returns a [`Vtep`] with one [`VtepQueue`] per worker. The VTEP is not a port:
//! nothing attaches it, and frames reach it only through the `vxlan-encap` stage (a stretched
//! subnet's tunnel port has it as its egress) and leave it through `vxlan-input`.
//! Receive: one UDP socket per worker, `SO_REUSEPORT`, bound to the local address and
//! port, read with `recvmmsg`, with `UDP_GRO` where the kernel has it.
//! Transmit: single frames get outer IP/UDP/VXLAN headers built by the `vxlan` crate and
//! go out with `sendmmsg` on a raw `IPPROTO_RAW` socket, so the UDP source port can be hashed
//! from the inner flow (a UDP socket would always send from 4789); GSO super-frames are
//! segmented and sent with `UDP_SEGMENT` from a UDP socket bound to that hashed port.
//!
//! The queue is split along its seams: `rx.rs` (receive, `UDP_GRO` buffers split and merged
//! in place, the stash), `tx.rs` (encapsulation into the raw socket's ring, `sendmmsg`) and
//! `gso.rs` (super-frames segmented and sent with `UDP_SEGMENT` from per-source-port
//! sockets).
//!
//! The underlay is the local address's family: every socket of the VTEP is `AF_INET` or
//! `AF_INET6`, and its peers are of that family. Over IPv6 the outer UDP checksum is always
//! computed (RFC 6935 allows a zero one only where the receiver opted in, and Linux drops
//! them unless `udp6zerocsumrx` is set).

mod gso;
mod rx;
mod tx;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use smoltcp::wire::{IPV4_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN};

pub use self::gso::GsoSent;
use self::gso::{PortSockets, open_current_namespace};
use self::rx::{Coalesced, RxStash};
use parking_lot::Mutex;

use crate::sys::batch::MAX_FRAME_LEN;
use crate::sys::udp::{RawIpSocket, ReadySet, Receiver, Sender, SocketError, UdpSocket};

/// Bytes in front of the VXLAN header in a received frame: the frame handed to the pipeline
/// is `[PAD][VXLAN header][inner Ethernet]`, so that once the 8-byte VXLAN header is
/// validated, the pipeline overwrites `frame[..VNET_HDR_LEN]` with a virtio header and the
/// frame becomes `[virtio_net_hdr][inner Ethernet]` in place (10 = 2 + 8).
///
/// The pad is zero, except in a datagram that the queue merged in place from the TCP
/// segments of one `UDP_GRO` buffer (see the module docs): there it holds the run's MSS,
/// big-endian, which `pipeline::vxlan_input::decap` turns into the super-frame's virtio
/// header. The pad is outside the datagram: no peer can set it.
pub const RX_PAD: usize = crate::wire::VNET_HDR_LEN - ::vxlan::VXLAN_HEADER_LEN;

/// Room for the outer headers the VTEP writes in front of an inner frame: IPv6 + UDP +
/// VXLAN = 56 bytes (over IPv4 they take 36, the first 20 bytes are left unused).
pub const OUTER_LEN: usize = IPV6_HEADER_LEN + UDP_HEADER_LEN + ::vxlan::VXLAN_HEADER_LEN;

/// The longest inner Ethernet frame [`VtepQueue::send_encap`] takes: a 9216-byte jumbo
/// frame (more than a 9000-byte underlay can carry anyway).
pub const MAX_INNER_LEN: usize = 9216;

/// Packets queued for one `sendmmsg`.
pub const TX_SLOTS: usize = 64;
const _: () = assert!(
    TX_SLOTS <= crate::sys::udp::MAX_MESSAGES,
    "one sendmmsg sends them all"
);

/// The most UDP payload one `UDP_SEGMENT` send carries: an IPv4 packet's 65535 bytes minus
/// the IPv4 and UDP headers (`udp_sendmsg` refuses more with `EMSGSIZE`; over IPv6 the
/// limit is the payload length's 65535 minus the UDP header, which this respects too). A
/// super-frame whose segments need more goes out in several sends.
pub const MAX_GSO_PAYLOAD: usize = 65_535 - IPV4_HEADER_LEN - UDP_HEADER_LEN;

/// The most datagrams one `UDP_SEGMENT` send carries: the kernel's `UDP_MAX_SEGMENTS` (64 on
/// older kernels, 128 on recent ones; the smaller works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Send-only UDP sockets a queue keeps open, one per outer source port in use.
pub const SOURCE_PORT_SOCKETS: usize = 64;

/// Datagrams received by one `recvmmsg`.
const RX_BURST: usize = 64;
const _: () = assert!(
    RX_BURST <= crate::sys::udp::MAX_MESSAGES,
    "one recvmmsg fills a burst"
);

/// The longest datagram (or GRO buffer) a receive slot holds: the slot after [`RX_PAD`].
const RX_DATAGRAM_MAX: usize = MAX_FRAME_LEN - RX_PAD;

const TX_SLOT_LEN: usize = OUTER_LEN + MAX_INNER_LEN;

/// Receive buffer per queue socket: room for bursts of jumbo datagrams.
const RCVBUF_BYTES: u32 = 4 << 20;

/// Send buffer of the raw socket: a full ring of jumbo packets several times over.
const SNDBUF_BYTES: u32 = 4 << 20;

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
    local: SocketAddr,
    socket: UdpSocket,
    /// What the worker polls: the socket, or the doorbell while the stash holds datagrams.
    ready: ReadySet,
    raw: RawIpSocket,
    receiver: Receiver,
    sender: Sender,
    /// `TX_SLOTS` slots of `TX_SLOT_LEN` bytes.
    tx_buffer: Box<[u8]>,
    /// Where the finished packet lies in each queued slot (slot-relative).
    tx_frames: Box<[(usize, usize)]>,
    /// The remote VTEP of each queued packet.
    tx_remotes: Box<[IpAddr]>,
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

impl VtepQueue {
    /// Opens one queue: a UDP socket bound to `local` (which must be free for this
    /// process's `SO_REUSEPORT` group) and a raw send socket. `ident_start` is the first
    /// outer IPv4 identification (unused over IPv6).
    fn open(local: SocketAddr, ident_start: u16) -> io::Result<VtepQueue> {
        let socket = UdpSocket::bind(local, true, Some(RCVBUF_BYTES))
            .map_err(|error| describe(local, error))?;
        let raw = RawIpSocket::open(local.is_ipv6(), Some(SNDBUF_BYTES))
            .map_err(|error| describe(local, error))?;
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
            tx_remotes: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED); TX_SLOTS].into_boxed_slice(),
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
    pub fn local(&self) -> SocketAddr {
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
}

/// How long an IPv6 local address may stay tentative (duplicate address detection: one
/// neighbour solicitation and a second by default) before opening the VTEP gives up.
const TENTATIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds the probe socket of [`open`]. An IPv6 address added moments ago (vswitchd started
/// at boot with the network) is tentative until duplicate address detection ends, and
/// binding it fails with `EADDRNOTAVAIL` meanwhile: that is retried for up to
/// [`TENTATIVE_WAIT`].
fn bind_probe(local: SocketAddr) -> io::Result<UdpSocket> {
    let deadline = std::time::Instant::now() + TENTATIVE_WAIT;
    loop {
        match UdpSocket::bind(local, false, None) {
            Err(error)
                if local.is_ipv6()
                    && error.source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result.map_err(|error| describe(local, error)),
        }
    }
}

/// An error of opening the VTEP on `local`, saying what to check.
fn describe(local: SocketAddr, error: SocketError) -> io::Error {
    let address = local.ip();
    let port = local.port();
    let message = match error.source.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) if local.is_ipv6() => format!(
            "cannot open the VTEP on {local}: address {address} is not configured on any \
             interface in vswitchd's network namespace, or is still tentative (duplicate \
             address detection) or failed it; set localAddress to an address of this node"
        ),
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

/// The opened VTEP: one queue per worker, each used by exactly one worker (its `Mutex` is
/// taken once per batch, never contended).
#[derive(Debug)]
pub struct Vtep {
    /// The address and UDP port every queue is bound to.
    pub local: SocketAddr,
    /// One queue per worker, index = worker index.
    pub queues: Vec<Mutex<VtepQueue>>,
}

/// Opens the VTEP on `local:port` with `queues` queues (one per worker).
///
/// Port 0 makes the kernel choose a free port (every queue then binds that port; see
/// [`VtepQueue::local`]).
///
/// # Errors
/// An error that names the address and says what to check (address not configured on any
/// interface of the daemon's namespace, port in use, no permission).
pub fn open(local: SocketAddr, queues: usize) -> io::Result<Vtep> {
    let address = local.ip();
    let unusable = match address {
        IpAddr::V4(v4) => v4.is_broadcast(),
        // Link-local needs a scope (an interface) on every packet; a mapped address is IPv4.
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some(),
    };
    if address.is_unspecified() || address.is_multicast() || unusable {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot open the VTEP on {local}: the local address must be a unicast address \
                 of this node (the one other nodes reach; not link-local)"
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
    let probe = bind_probe(local)?;
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
        io_queues.push(Mutex::new(queue));
    }
    tracing::debug!(%local, queues, "VTEP open (recvmmsg on SO_REUSEPORT UDP sockets, sendmmsg on IPPROTO_RAW)");
    Ok(Vtep {
        local,
        queues: io_queues,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the VTEP's tests: a VTEP on loopback, frames, receive loops.

    use std::time::{Duration, Instant};

    use ::vxlan::Vni;
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket};

    use super::*;
    use crate::port::RxBatch;
    use crate::sys::udp::SendOptions;
    use crate::wire::VNET_HDR_LEN;
    use crate::wire::checksum::pseudo_header_ipv4;
    use crate::wire::vnet_hdr;

    /// Serialises the loopback VTEP tests: `open` learns a free port with a probe socket and
    /// binds the queues' SO_REUSEPORT sockets right after; two tests opening at once may land
    /// on one port, and their queues would then share a reuseport group and each other's
    /// datagrams.
    static LOOPBACK_VTEPS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    /// A VTEP on 127.0.0.1, held alone for the test's duration.
    pub(crate) struct TestVtep {
        vtep: Vtep,
        _alone: parking_lot::MutexGuard<'static, ()>,
    }

    impl std::ops::Deref for TestVtep {
        type Target = Vtep;
        fn deref(&self) -> &Vtep {
            &self.vtep
        }
    }

    pub(crate) fn loopback_vtep(queues: usize) -> TestVtep {
        loopback_vtep_on(IpAddr::V4(Ipv4Addr::LOCALHOST), queues)
    }

    /// A VTEP on ::1 (an IPv6 underlay), held alone for the test's duration.
    pub(crate) fn loopback_vtep6(queues: usize) -> TestVtep {
        loopback_vtep_on(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), queues)
    }

    fn loopback_vtep_on(address: IpAddr, queues: usize) -> TestVtep {
        let alone = LOOPBACK_VTEPS.lock();
        // Port 0: `open` learns a free port with a probe socket, closes it and binds the
        // queues to it; a socket of a test running at the same time may take the port in
        // between (seen in CI). Another free port is then as good.
        let mut attempt = 0;
        let vtep = loop {
            match open(SocketAddr::new(address, 0), queues) {
                Err(error) if error.kind() == io::ErrorKind::AddrInUse && attempt < 5 => {
                    attempt += 1;
                }
                result => break result.expect("VTEP on loopback (the tests must run as root)"),
            }
        };
        TestVtep {
            vtep,
            _alone: alone,
        }
    }

    pub(crate) fn queue(io: &Vtep, index: usize) -> parking_lot::MutexGuard<'_, VtepQueue> {
        io.queues[index].lock()
    }

    /// Receives on every queue of `io` until `want` frames arrived or 5 s passed.
    pub(crate) fn receive(io: &Vtep, batch: &mut RxBatch, want: usize) {
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
    pub(crate) fn inner_frame(port: u16) -> Vec<u8> {
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

    pub(crate) fn loopback_sender() -> UdpSocket {
        let options = SendOptions {
            ttl: 64,
            dont_fragment: false,
            send_buffer: None,
        };
        UdpSocket::bind_sender(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), options)
            .expect("send-only socket on loopback")
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
    pub(crate) fn merged_mss(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[0], frame[1]])
    }

    /// How many wire segments a received frame stands for (merged ones stand for several).
    pub(crate) fn segments_in(frame: &[u8]) -> usize {
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
    pub(crate) fn check_tcp_segments(
        frames: &[Vec<u8>],
        vni: Vni,
        payload_len: usize,
        mss: usize,
        seq: u32,
    ) {
        let mut next_seq = seq;
        let mut payload = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            let (_, decap) =
                ::vxlan::encap::decapsulate_with_rco(&frame[RX_PAD..], true, |_| Some(()))
                    .expect("valid VXLAN");
            assert_eq!(decap.vni, vni);
            let mut inner = frame[RX_PAD..][decap.inner].to_vec();
            let merged = merged_mss(frame);
            if merged != 0 {
                assert_eq!(usize::from(merged), mss, "segment {index}: the run's MSS");
                crate::wire::checksum::complete_partial_checksum(&mut inner, 34, 16).unwrap();
            } else if let Some(rco) = decap.remote_checksum {
                // Left partial by the sender (remote checksum offload): completed here.
                let (start, offset) = (usize::from(rco.start()), usize::from(rco.offset()));
                crate::wire::checksum::complete_partial_checksum(&mut inner, start, offset)
                    .unwrap();
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
    pub(crate) fn receive_frames(io: &Vtep, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
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
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn queues_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<VtepQueue>();
        assert_send::<Vtep>();
        fn assert_sync<T: Sync>() {}
        assert_sync::<Vtep>();
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn open_gives_one_queue_per_worker_on_one_port() {
        let io = loopback_vtep(3);
        assert_eq!(io.queues.len(), 3);
        let port = queue(&io, 0).local().port();
        assert_ne!(port, 0);
        assert_eq!(io.local, queue(&io, 0).local());
        for index in 1..3 {
            assert_eq!(queue(&io, index).local().port(), port);
            assert_ne!(queue(&io, index).raw_fd(), queue(&io, 0).raw_fd());
        }
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn refuses_bad_addresses_and_busy_ports() {
        let error = open("192.0.2.123:0".parse().unwrap(), 1).unwrap_err();
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
        for unusable in [
            "0.0.0.0:4789",
            "[::]:4789",
            "[fe80::1]:4789",
            "[::ffff:10.0.0.1]:4789",
        ] {
            let error = open(unusable.parse().unwrap(), 1).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{unusable}");
        }
        assert!(open("127.0.0.1:0".parse().unwrap(), 0).is_err());
        let error = open("[2001:db8::123]:0".parse().unwrap(), 1).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("address 2001:db8::123 is not configured on any interface"),
            "{error}"
        );
    }
}
