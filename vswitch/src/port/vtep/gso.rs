//! Super-frames into the overlay: segmented in software, then sent with `UDP_SEGMENT`
//! from a send-only socket per outer source port (kept in a bounded LRU).
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

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use ::vxlan::encap::source_port;
use ::vxlan::{
    VXLAN_HEADER_LEN, Vni, VxlanEncapConfig, VxlanPacket, VxlanRemoteChecksum, VxlanRepr,
};

use super::{MAX_GSO_PAYLOAD, MAX_GSO_SEGMENTS, SOURCE_PORT_SOCKETS, VtepQueue};
use crate::sys::udp::{SendOptions, UdpSocket};
use crate::wire::gso::{GsoError, Segmenter};
use crate::wire::{VNET_HDR_LEN, VnetPacket};

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
pub(super) struct PortSockets {
    entries: Vec<PortSocket>,
    clock: u64,
    options: Option<SendOptions>,
    pub(super) bind_failures: u64,
    /// The network namespace the VTEP was opened in (and its identity): sockets are created
    /// there even when the calling thread is elsewhere.
    home: Option<(OwnedFd, NamespaceId)>,
}

/// A network namespace's identity: the device and inode of its `ns/net` file.
pub(super) type NamespaceId = (u64, u64);

/// The calling thread's network namespace, when procfs tells.
fn current_namespace() -> Option<NamespaceId> {
    let metadata = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Opens the calling thread's network namespace (see [`PortSockets::home`]).
pub(super) fn open_current_namespace() -> Option<(OwnedFd, NamespaceId)> {
    let file = std::fs::File::open("/proc/thread-self/ns/net").ok()?;
    let metadata = file.metadata().ok()?;
    Some((OwnedFd::from(file), (metadata.dev(), metadata.ino())))
}

impl PortSockets {
    pub(super) fn new(home: Option<(OwnedFd, NamespaceId)>) -> PortSockets {
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
    fn bind(&self, address: SocketAddr, options: SendOptions) -> io::Result<UdpSocket> {
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
    fn lookup(&mut self, local: IpAddr, port: u16, options: SendOptions) -> usize {
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
        let address = SocketAddr::new(local, port);
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

/// The remote checksum offload option for `segment` (`virtio_net_hdr` + Ethernet): where
/// its partial checksum is, if it is partial and the option can say it.
fn remote_checksum(segment: &[u8]) -> Option<VxlanRemoteChecksum> {
    let vnet = VnetPacket::new_checked(segment).ok()?;
    if !vnet.needs_csum() {
        return None;
    }
    VxlanRemoteChecksum::new(vnet.csum_start(), vnet.csum_offset())
}

/// Completes the partial checksum that `rco` locates in `inner` (an Ethernet frame), for a
/// segment that leaves without the option after all.
fn complete_remote_checksum(inner: &mut [u8], rco: VxlanRemoteChecksum) {
    // Cannot fail: the segmenter made the segment, with its checksum field inside it.
    let _ = crate::wire::checksum::complete_partial_checksum(
        inner,
        usize::from(rco.start()),
        usize::from(rco.offset()),
    );
}

/// The options of the source-port sockets for `config`.
fn send_options(config: &VxlanEncapConfig) -> SendOptions {
    SendOptions {
        ttl: config.ttl,
        dont_fragment: config.dont_fragment,
        send_buffer: Some(GSO_SNDBUF_BYTES),
    }
}

impl VtepQueue {
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
        remote: IpAddr,
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
        // With remote checksum offload, segments sent with UDP_SEGMENT keep their inner
        // checksum partial (the outer UDP checksum, always computed on that path, covers
        // them); the raw path completes them.
        let partial = config.remote_checksum_offload && self.udp_segment;
        segmenter.segment_with(frame, partial, |segment| {
            let rco = remote_checksum(segment);
            let inner_view = segment.get(VNET_HDR_LEN..).unwrap_or_default();
            let route = *route.get_or_insert_with(|| self.route(inner_view, config, options));
            match route {
                Route::Socket(index) => {
                    let inner = segment.get(VNET_HDR_LEN..).unwrap_or_default();
                    self.push_segment(
                        inner, rco, index, vni, remote, config, &mut chunk, &mut sent,
                    );
                }
                Route::Raw => {
                    let inner = segment.get_mut(VNET_HDR_LEN..).unwrap_or_default();
                    if let Some(rco) = rco {
                        complete_remote_checksum(inner, rco);
                    }
                    self.send_raw(inner, vni, remote, config, &mut sent);
                }
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
        let index = self.gso.sockets.lookup(self.local.ip(), port, options);
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
        remote: IpAddr,
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
        rco: Option<VxlanRemoteChecksum>,
        socket: usize,
        vni: Vni,
        remote: IpAddr,
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
        let mut packet = VxlanPacket::new_unchecked(header);
        VxlanRepr { vni }.emit(&mut packet);
        if let Some(rco) = rco {
            packet.set_remote_checksum(rco);
        }
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
        remote: IpAddr,
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
        let to = SocketAddr::new(remote, self.local.port());
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
                    crate::cost::udp_gso_send();
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
        remote: IpAddr,
        config: &VxlanEncapConfig,
        sent: &mut GsoSent,
    ) {
        // Taken out for the loop, so that `send_encap` can borrow the queue; a boxed empty
        // slice takes no allocation.
        let mut buffer = std::mem::take(&mut self.gso.buffer);
        let block = VXLAN_HEADER_LEN + chunk.segment_len;
        for index in 0..chunk.count {
            let start = index * block + VXLAN_HEADER_LEN;
            let end = (start + chunk.segment_len).min(chunk.used);
            let rco = buffer
                .get(start - VXLAN_HEADER_LEN..start)
                .and_then(|header| VxlanPacket::new_checked(header).ok())
                .and_then(|header| VxlanRepr::parse_with_rco(&header).ok())
                .and_then(|(_, rco)| rco);
            match buffer.get_mut(start..end) {
                Some(inner) => {
                    if let Some(rco) = rco {
                        complete_remote_checksum(inner, rco);
                    }
                    self.send_raw(inner, vni, remote, config, sent);
                }
                None => {
                    self.send_errors += 1;
                    sent.failed += 1;
                }
            }
        }
        self.gso.buffer = buffer;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ::vxlan::encap::decapsulate;

    use super::super::RX_PAD;
    use super::super::testing::*;
    use super::*;
    use crate::sys::udp::Receiver;

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    use crate::wire::vnet_hdr;

    /// Sends [`tcp_super_frame`]`(payload_len, mss, seq)` through queue 0 with
    /// `send_encap_gso` toward loopback, checks every segment went out, and returns the
    /// datagrams received.
    fn send_and_receive(
        io: &super::super::Vtep,
        config: &VxlanEncapConfig,
        vni: Vni,
        payload_len: usize,
        mss: u16,
        seq: u32,
    ) -> Vec<Vec<u8>> {
        let frame = tcp_super_frame(payload_len, mss, seq);
        let sent = queue(io, 0)
            .send_encap_gso(&frame, &mut Segmenter::new(), vni, io.local.ip(), config)
            .unwrap();
        let count = payload_len.div_ceil(usize::from(mss));
        assert_eq!((sent.segments, sent.failed), (count, 0));
        receive_frames(io, count)
            .into_iter()
            .map(|(f, _)| f)
            .collect()
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
            q.send_encap(&single, vni, LOCALHOST, &config).unwrap();
            q.send_encap_gso(&frame, &mut segmenter, vni, LOCALHOST, &config)
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
            assert_eq!(*peer, SocketAddr::new(LOCALHOST, expected_port));
        }
        let segments: Vec<Vec<u8>> = frames[1..].iter().map(|(f, _)| f.clone()).collect();
        check_tcp_segments(&segments, vni, payload_len, usize::from(mss), 1000);
        let q = queue(&io, 0);
        assert_eq!(q.gso_sends(), 1, "one sendmsg for the whole super-frame");
        assert_eq!(q.send_errors(), 0);
        assert!(q.gro_coalesced() >= 1, "received whole over loopback");
        assert!(q.gro_merged() >= 1, "and its TCP segments merged in place");
    }

    /// With remote checksum offload the segments leave with their TCP checksums partial and
    /// the option saying where (start 34, TCP), under a computed outer UDP checksum; the
    /// receiving queue merges them without verifying those checksums, and completing them
    /// gives the segments of the super-frame.
    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn gso_send_with_remote_checksum_offload() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig {
            remote_checksum_offload: true,
            ..VxlanEncapConfig::default()
        };
        let vni = Vni::new(77).unwrap();
        let (payload_len, mss) = (20_000, 1398);
        let frames = send_and_receive(&io, &config, vni, payload_len, mss, 5);
        for frame in &frames {
            let header = &frame[RX_PAD..RX_PAD + VXLAN_HEADER_LEN];
            assert_eq!(header[1], 0x20, "the C flag: {header:02x?}");
            assert_eq!(header[7], 17, "start 34, TCP: {header:02x?}");
        }
        check_tcp_segments(&frames, vni, payload_len, usize::from(mss), 5);
        let q = queue(&io, 0);
        assert_eq!(q.gso_sends(), 1);
        assert!(
            q.gro_merged() >= 1,
            "partial segments under the option are merged"
        );
    }

    /// Over an IPv6 underlay: the segments go out with UDP_SEGMENT from an AF_INET6 socket,
    /// arrive whole (the kernel's outer checksum verified), merged again by the receiver.
    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv6 socket, CAP_NET_RAW)"]
    fn gso_send_over_ipv6_loopback() {
        let io = loopback_vtep6(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(66).unwrap();
        let (payload_len, mss) = (30_000, 1378);
        let frames = send_and_receive(&io, &config, vni, payload_len, mss, 11);
        check_tcp_segments(&frames, vni, payload_len, usize::from(mss), 11);
        let q = queue(&io, 0);
        assert!(q.udp_segment(), "UDP_SEGMENT over IPv6 on this kernel");
        assert_eq!(q.gso_sends(), 1);
        assert_eq!(q.send_errors(), 0);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn large_super_frames_take_several_sends() {
        let io = loopback_vtep(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(9).unwrap();
        // 64 KB of payload in 1448-byte segments: 46 datagrams of 1510 bytes > 65507.
        let (payload_len, mss) = (65_000, 1448);
        let frames = send_and_receive(&io, &config, vni, payload_len, mss, 7);
        check_tcp_segments(&frames, vni, payload_len, usize::from(mss), 7);
        assert_eq!(queue(&io, 0).gso_sends(), 2);
        // Tiny segments: the 64-datagram limit splits the sends.
        let frame = tcp_super_frame(100 * 20, 20, 1);
        let sent = queue(&io, 0)
            .send_encap_gso(&frame, &mut Segmenter::new(), vni, LOCALHOST, &config)
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
        let _holder = std::net::UdpSocket::bind((LOCALHOST, port)).ok();
        let sent = {
            let mut q = queue(&io, 0);
            let sent = q
                .send_encap_gso(&frame, &mut segmenter, vni, LOCALHOST, &config)
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
            .send_encap_gso(&not_gso, &mut Segmenter::new(), vni, LOCALHOST, &config)
            .unwrap_err();
        assert_eq!(error, GsoError::NotGso);
        let frame = tcp_super_frame(3000, 1000, 0);
        let error = q
            .send_encap_gso(&frame[..40], &mut Segmenter::new(), vni, LOCALHOST, &config)
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
            sockets.lookup(LOCALHOST, port, options);
        }
        // Touch the first port: the second becomes the least recently used.
        let first = sockets.lookup(LOCALHOST, base, options);
        assert_eq!(sockets.entries.len(), SOURCE_PORT_SOCKETS);
        let index = sockets.lookup(LOCALHOST, base + 1000, options);
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
        sockets.lookup(LOCALHOST, base, other);
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
