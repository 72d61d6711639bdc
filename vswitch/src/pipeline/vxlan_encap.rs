//! Stage `vxlan-encap`: a frame forwarded to a stretched subnet's tunnel goes into the
//! overlay.
//!
//! The worker's transmit reaches this stage through the tunnel port's egress adjacency
//! ([`Egress::Tunnel`](crate::tables::snapshot::Egress::Tunnel)). [`send`] then, for each
//! frame:
//! 1. chooses the remote VTEPs: the one learned for the destination MAC in the remote FDB
//!    (written by [`super::vxlan_input`]), else, for broadcast, multicast and unknown
//!    unicast, every remote VTEP of the subnet (head-end replication). Frames received from
//!    the overlay never come here: they are flooded to the subnet's local ports only (split
//!    horizon, [`super::process_tunnel`]);
//! 2. a GSO super-frame is handed over whole, once per remote VTEP: the VTEP's queue cuts it
//!    into segments ([`crate::wire::gso::Segmenter`], the only software segmentation on the
//!    way) and sends them with one `UDP_SEGMENT` send (see [`crate::port::vtep`]);
//! 3. any other frame gets its partial checksum completed (the overlay carries complete
//!    frames: counted as `tx.checksum_completed`), must fit the overlay MTU once
//!    encapsulated (else `vxlan.too_big`; [`super::process`] already answered a DF sender
//!    with "fragmentation needed"), and is handed to the VTEP's queue once per remote VTEP,
//!    which writes the outer IPv4, UDP and VXLAN headers into its ring (one copy of the
//!    inner frame per remote) and sends the ring with one `sendmmsg` when the worker flushes
//!    it.
//!
//! The stage decides and counts; the VTEP's queue does the I/O, behind [`Encapsulate`] (so
//! the stage is tested without sockets). Nothing allocates per packet.

use std::io;
use std::net::IpAddr;

use ::vxlan::{Vni, VxlanEncapConfig, VxlanSharedFdb};

use super::DropCause;
use super::tx::{self, Prepared};
use crate::port::Capabilities;
use crate::port::vtep::{GsoSent, VtepQueue};
use crate::tables::counters::keyed_enum;
use crate::tables::snapshot::Tunnel;
use crate::wire::gso::{GsoError, Segmenter};
use crate::wire::{VNET_HDR_LEN, VnetPacket};

keyed_enum! {
    /// Why `vxlan-encap` dropped a frame sent into the overlay.
    pub enum DropReason {
        TooBig = "vxlan.too_big":
            "frame larger than the overlay MTU allows once encapsulated",
        NoRemote = "vxlan.no_remote":
            "frame for the overlay, but the subnet has no remote VTEP to send it to",
        Encap = "vxlan.encap":
            "frame that could not be encapsulated (too short, or too long for a datagram)",
        Segment = "vxlan.segment":
            "GSO super-frame that could not be segmented before encapsulation",
    }
}

/// What the stage needs of the VTEP's queue: outer headers and the system calls are the
/// port layer's ([`VtepQueue`]).
pub trait Encapsulate {
    /// Encapsulates `inner` (an Ethernet frame, checksums complete, not GSO) for `vni`
    /// toward `remote` and queues it for the next flush.
    ///
    /// # Errors
    /// The frame cannot be encapsulated, or the queue refused it.
    fn encap(
        &mut self,
        inner: &[u8],
        vni: Vni,
        remote: IpAddr,
        config: &VxlanEncapConfig,
    ) -> io::Result<()>;

    /// Segments the GSO super-frame `frame` (`virtio_net_hdr` + Ethernet) with `segmenter`
    /// and sends the segments, encapsulated for `vni`, toward `remote`.
    ///
    /// # Errors
    /// Why `frame` cannot be segmented; nothing was sent then.
    fn encap_gso(
        &mut self,
        frame: &[u8],
        segmenter: &mut Segmenter,
        vni: Vni,
        remote: IpAddr,
        config: &VxlanEncapConfig,
    ) -> Result<GsoSent, GsoError>;
}

impl Encapsulate for VtepQueue {
    #[inline]
    fn encap(
        &mut self,
        inner: &[u8],
        vni: Vni,
        remote: IpAddr,
        config: &VxlanEncapConfig,
    ) -> io::Result<()> {
        self.send_encap(inner, vni, remote, config)
    }

    #[inline]
    fn encap_gso(
        &mut self,
        frame: &[u8],
        segmenter: &mut Segmenter,
        vni: Vni,
        remote: IpAddr,
        config: &VxlanEncapConfig,
    ) -> Result<GsoSent, GsoError> {
        self.send_encap_gso(frame, segmenter, vni, remote, config)
    }
}

/// A subnet's tunnel as the stage sends into it: its adjacency, the VTEP's outer-header
/// settings and the remote FDB at `now_ms`.
#[derive(Debug, Clone, Copy)]
pub struct TunnelTx<'a> {
    /// The tunnel: VNI, remote VTEPs, overlay MTU.
    pub tunnel: &'a Tunnel,
    /// How the VTEP builds outer headers.
    pub config: &'a VxlanEncapConfig,
    /// Remote MACs behind the overlay (learned by `vxlan-input`).
    pub remote_fdb: &'a VxlanSharedFdb,
    /// The engine's clock, milliseconds.
    pub now_ms: u64,
}

/// What became of one frame sent into the overlay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Packets the VTEP's queue took (one per remote VTEP, and per segment of a
    /// super-frame).
    pub packets: u64,
    /// Bytes of their inner Ethernet frames.
    pub bytes: u64,
    /// The frame's partial checksum was completed (`tx.checksum_completed`).
    pub checksum_completed: bool,
    /// Why the frame was dropped, when it was (it then went to no remote VTEP, or only to
    /// those before the failure).
    pub dropped: Option<DropCause>,
    /// Packets the VTEP's queue refused (`vxlan.encap`, one each).
    pub refused: u64,
}

/// The remote VTEP learned for unicast `dst` in the tunnel's VNI; `None` for a group or
/// unknown address, which goes to every remote VTEP (head-end replication). A VTEP learned
/// of the other family than the tunnel's remotes (before the underlay changed family) is
/// stale: the frame is flooded instead of refused.
#[inline]
pub fn learned_remote(tx: &TunnelTx<'_>, dst: [u8; 6]) -> Option<IpAddr> {
    if dst[0] & 1 != 0 {
        return None;
    }
    let ip = tx.remote_fdb.lookup(tx.tunnel.vni, dst, tx.now_ms)?.ip;
    match tx.tunnel.remotes.first() {
        Some(remote) if remote.is_ipv6() != ip.is_ipv6() => None,
        _ => Some(ip),
    }
}

/// Sends `frame` (`virtio_net_hdr` + Ethernet, forwarded to the tunnel of `tx`) into the
/// overlay through `queue` (see the module docs). The frame's checksum may be completed in
/// place. Never panics.
pub fn send(
    tx: &TunnelTx<'_>,
    frame: &mut [u8],
    segmenter: &mut Segmenter,
    queue: &mut impl Encapsulate,
) -> Sent {
    let mut sent = Sent::default();
    let Some(dst) = frame
        .get(VNET_HDR_LEN..VNET_HDR_LEN + 6)
        .and_then(|mac| <[u8; 6]>::try_from(mac).ok())
    else {
        sent.dropped = Some(tx::DropReason::Truncated.into());
        return sent;
    };
    let vni = tx.tunnel.vni;
    let learned = learned_remote(tx, dst);
    let single;
    let targets: &[IpAddr] = match learned {
        Some(ip) => {
            single = [ip];
            &single
        }
        None => &tx.tunnel.remotes,
    };
    if targets.is_empty() {
        sent.dropped = Some(DropReason::NoRemote.into());
        return sent;
    }
    if VnetPacket::new_checked(&*frame).is_ok_and(|packet| packet.is_gso()) {
        // One UDP_SEGMENT send per remote: the super-frame crosses the stack as one packet
        // per 64 KB instead of one per segment.
        for &remote in targets {
            match queue.encap_gso(frame, segmenter, vni, remote, tx.config) {
                Ok(gso) => {
                    sent.packets += u64::try_from(gso.segments).unwrap_or(u64::MAX);
                    sent.bytes += gso.bytes;
                    sent.refused += u64::try_from(gso.failed).unwrap_or(u64::MAX);
                }
                Err(_) => {
                    // Refused before anything was sent (the segmenter checks the frame
                    // first), so at the first remote.
                    sent.dropped = Some(DropReason::Segment.into());
                    return sent;
                }
            }
        }
        return sent;
    }
    // The overlay carries complete frames: a VTEP takes no partial checksum.
    match tx::prepare(frame, &Capabilities::default()) {
        Ok(prepared) => sent.checksum_completed = prepared == Prepared::ChecksumCompleted,
        Err(reason) => {
            sent.dropped = Some(reason.into());
            return sent;
        }
    }
    let inner = frame.get(VNET_HDR_LEN..).unwrap_or_default();
    if exceeds_mtu(inner, tx.tunnel.mtu) {
        sent.dropped = Some(DropReason::TooBig.into());
        return sent;
    }
    let bytes = u64::try_from(inner.len()).unwrap_or(u64::MAX);
    for &remote in targets {
        match queue.encap(inner, vni, remote, tx.config) {
            Ok(()) => {
                sent.packets += 1;
                sent.bytes += bytes;
            }
            Err(_) => sent.refused += 1,
        }
    }
    sent
}

/// True when the Ethernet frame `inner` (no virtio header) exceeds `mtu` at L3.
pub fn exceeds_mtu(inner: &[u8], mtu: u16) -> bool {
    inner.len().saturating_sub(ETHERNET_HEADER_LEN) > usize::from(mtu)
}

const ETHERNET_HEADER_LEN: usize = 14;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::{
        BLUE_VNI, Bench, OTHER_VTEP, REMOTE_VTEP, TUNNEL, overlay_snapshot,
    };
    use crate::port::PortId;
    use crate::port::vtep::testing::tcp_super_frame;
    use crate::wire::VNET_HDR_LEN;

    /// The VTEP's queue as the stage sees it: what it was given, refusing when told to.
    #[derive(Default)]
    struct Recorder {
        /// Single packets: remote, VNI, inner frame.
        packets: Vec<(IpAddr, Vni, Vec<u8>)>,
        /// Super-frames: remote, segments.
        super_frames: Vec<(IpAddr, usize)>,
        refuse: bool,
    }

    impl Encapsulate for Recorder {
        fn encap(
            &mut self,
            inner: &[u8],
            vni: Vni,
            remote: IpAddr,
            _: &VxlanEncapConfig,
        ) -> io::Result<()> {
            if self.refuse {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.packets.push((remote, vni, inner.to_vec()));
            Ok(())
        }

        fn encap_gso(
            &mut self,
            frame: &[u8],
            segmenter: &mut Segmenter,
            _: Vni,
            remote: IpAddr,
            _: &VxlanEncapConfig,
        ) -> Result<GsoSent, GsoError> {
            let mut sent = GsoSent::default();
            segmenter.segment(frame, |segment| {
                sent.segments += 1;
                sent.bytes += u64::try_from(segment.len() - VNET_HDR_LEN).unwrap();
            })?;
            if self.refuse {
                sent.failed = sent.segments;
                sent.segments = 0;
                sent.bytes = 0;
            }
            self.super_frames.push((remote, sent.segments));
            Ok(sent)
        }
    }

    /// Sends `frame` into the fixture's tunnel at `now`.
    fn send_into(bench: &Bench, frame: &mut [u8], queue: &mut Recorder) -> Sent {
        let vtep = bench.snapshot.vtep.as_ref().expect("the VTEP");
        let tunnel = bench
            .snapshot
            .port(TUNNEL)
            .and_then(crate::tables::snapshot::PortEntry::tunnel)
            .expect("the tunnel");
        let tx = TunnelTx {
            tunnel,
            config: &vtep.encap,
            remote_fdb: &bench.remote_fdb,
            now_ms: 10,
        };
        send(&tx, frame, &mut Segmenter::new(), queue)
    }

    const REMOTE_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];

    #[test]
    fn unknown_and_broadcast_go_to_every_remote_and_learned_unicast_to_one() {
        let bench = Bench::with(overlay_snapshot());
        let vni = Vni::new(BLUE_VNI).unwrap();
        for dst in [REMOTE_MAC, [0xff; 6]] {
            let mut queue = Recorder::default();
            let mut frame = big_frame(&bench, dst, 100, true);
            let sent = send_into(&bench, &mut frame, &mut queue);
            assert_eq!((sent.packets, sent.bytes), (2, 2 * (14 + 100)));
            assert_eq!((sent.dropped, sent.refused), (None, 0));
            let remotes: Vec<IpAddr> = queue.packets.iter().map(|p| p.0).collect();
            assert_eq!(
                remotes,
                vec![REMOTE_VTEP, OTHER_VTEP],
                "head-end replication"
            );
            assert!(queue.packets.iter().all(|p| p.1 == vni));
            assert!(queue.packets.iter().all(|p| p.2 == frame[VNET_HDR_LEN..]));
        }
        // Once learned behind one VTEP, unicast goes there only; broadcast still everywhere.
        bench.remote_fdb.learn(vni, REMOTE_MAC, OTHER_VTEP, 5);
        let mut queue = Recorder::default();
        let sent = send_into(
            &bench,
            &mut big_frame(&bench, REMOTE_MAC, 100, true),
            &mut queue,
        );
        assert_eq!(sent.packets, 1);
        assert_eq!(queue.packets[0].0, OTHER_VTEP);
        let sent = send_into(
            &bench,
            &mut big_frame(&bench, [0xff; 6], 100, true),
            &mut queue,
        );
        assert_eq!(sent.packets, 2);
    }

    #[test]
    fn what_cannot_go_is_counted_under_its_reason() {
        let bench = Bench::with(overlay_snapshot());
        let mut queue = Recorder::default();
        // Over the overlay MTU (1450): dropped, nothing sent.
        let sent = send_into(
            &bench,
            &mut big_frame(&bench, REMOTE_MAC, 1451, false),
            &mut queue,
        );
        assert_eq!(sent.dropped, Some(DropReason::TooBig.into()));
        assert_eq!(sent.packets, 0);
        assert!(queue.packets.is_empty());
        // Shorter than an Ethernet destination.
        let sent = send_into(&bench, &mut [0u8; 12], &mut queue);
        assert_eq!(sent.dropped, Some(tx::DropReason::Truncated.into()));
        // Refused by the VTEP's queue: one `vxlan.encap` per remote.
        queue.refuse = true;
        let sent = send_into(
            &bench,
            &mut big_frame(&bench, REMOTE_MAC, 100, true),
            &mut queue,
        );
        assert_eq!((sent.packets, sent.refused, sent.dropped), (0, 2, None));
        // A subnet without remote VTEPs.
        let mut tunnel = bench
            .snapshot
            .port(TUNNEL)
            .and_then(crate::tables::snapshot::PortEntry::tunnel)
            .unwrap()
            .clone();
        tunnel.remotes.clear();
        let vtep = bench.snapshot.vtep.as_ref().unwrap();
        let tx = TunnelTx {
            tunnel: &tunnel,
            config: &vtep.encap,
            remote_fdb: &bench.remote_fdb,
            now_ms: 0,
        };
        let mut frame = big_frame(&bench, [0xff; 6], 100, true);
        let sent = send(&tx, &mut frame, &mut Segmenter::new(), &mut queue);
        assert_eq!(sent.dropped, Some(DropReason::NoRemote.into()));
    }

    #[test]
    fn partial_checksums_are_completed_before_encapsulation() {
        let bench = Bench::with(overlay_snapshot());
        let mut frame = big_frame(&bench, REMOTE_MAC, 100, true);
        // A UDP checksum left partial (NEEDS_CSUM, start 34, offset 6), as a TAP hands it.
        frame[0] = crate::wire::vnet_hdr::flags::NEEDS_CSUM;
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&6u16.to_le_bytes());
        let mut queue = Recorder::default();
        let sent = send_into(&bench, &mut frame, &mut queue);
        assert!(sent.checksum_completed);
        assert_eq!(sent.packets, 2);
        let packet = VnetPacket::new_checked(&frame[..]).unwrap();
        assert!(!packet.needs_csum(), "complete once, for every remote");
    }

    #[test]
    fn super_frames_are_segmented_once_per_remote() {
        let bench = Bench::with(overlay_snapshot());
        let mut queue = Recorder::default();
        let mut frame = tcp_super_frame(4000, 1000, 1);
        let sent = send_into(&bench, &mut frame, &mut queue);
        assert_eq!(queue.super_frames, vec![(REMOTE_VTEP, 4), (OTHER_VTEP, 4)]);
        assert_eq!(sent.packets, 8);
        assert_eq!(sent.bytes, 2 * (4000 + 4 * 54));
        assert!(queue.packets.is_empty());
        // Refused segments are counted; a frame that cannot be segmented is one drop.
        queue.refuse = true;
        let sent = send_into(&bench, &mut frame, &mut queue);
        assert_eq!((sent.packets, sent.refused), (0, 8));
        let mut bad = frame.clone();
        bad[4..6].copy_from_slice(&0u16.to_le_bytes());
        let sent = send_into(&bench, &mut bad, &mut queue);
        assert_eq!(sent.dropped, Some(DropReason::Segment.into()));
        assert_eq!(sent.packets, 0);
    }

    /// An IPv4 packet of `total` bytes from port 1 (blue, 172.30.0.2) to `dst_mac`, with DF
    /// as given and a valid header checksum.
    fn big_frame(
        bench: &crate::pipeline::fixtures::Bench,
        dst_mac: [u8; 6],
        total: u16,
        df: bool,
    ) -> Vec<u8> {
        let mut frame = bench.frame_from(1, dst_mac);
        let ip = VNET_HDR_LEN + 14;
        frame.truncate(ip + 20);
        frame.resize(ip + usize::from(total), 0xab);
        frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        frame[ip + 6] = if df { 0x40 } else { 0 };
        frame[ip + 9] = 17;
        frame[ip + 10..ip + 12].fill(0);
        let sum = crate::wire::checksum::checksum(&frame[ip..ip + 20]);
        frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
        frame
    }

    #[test]
    fn a_frame_too_big_for_the_tunnel_gets_fragmentation_needed() {
        use crate::pipeline::fixtures::{Bench, ICMP_ECHO, with_src_mac};
        use crate::pipeline::{Verdict, process_tunnel};
        let bench = Bench::with(overlay_snapshot());
        let remote_mac = [0x02, 0xaa, 0, 0, 0, 1];
        // The remote MAC is learned on the tunnel.
        let tunnel = bench.snapshot.port(TUNNEL).unwrap().clone();
        let mut from_remote = with_src_mac(&ICMP_ECHO, remote_mac);
        {
            let mut local = bench.local.borrow_mut();
            let _ = process_tunnel(&bench.ctx(0), &tunnel, &mut from_remote, &mut local);
        }
        // 1450 bytes fit; 1451 with DF get an ICMP error, 1451 without DF a drop only.
        let fits = big_frame(&bench, remote_mac, 1450, true);
        assert_eq!(bench.send(1, &fits, 1).verdict, Verdict::Forward(TUNNEL));
        let too_big = big_frame(&bench, remote_mac, 1451, true);
        assert_eq!(
            bench.send(1, &too_big, 2).verdict,
            Verdict::drop(DropReason::TooBig)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1, "one ICMP error");
        let (verdict, _, icmp) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(PortId(1)));
        let at = VNET_HDR_LEN + 14 + 20;
        assert_eq!((icmp[at], icmp[at + 1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[at + 6], icmp[at + 7]]), 1450);
        let no_df = big_frame(&bench, remote_mac, 1451, false);
        assert_eq!(
            bench.send(1, &no_df, 3).verdict,
            Verdict::drop(DropReason::TooBig)
        );
        assert!(bench.generated().is_empty());
    }

    #[test]
    fn mtu_is_measured_at_l3() {
        assert!(!exceeds_mtu(&[0; 14 + 1450], 1450));
        assert!(exceeds_mtu(&[0; 14 + 1451], 1450));
    }
}
