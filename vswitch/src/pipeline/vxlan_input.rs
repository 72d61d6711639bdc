//! Stage `vxlan-input`: a datagram received by the VTEP becomes a frame of a stretched
//! subnet.
//!
//! The VTEP's queue ([`crate::port::vtep`]) hands every datagram over as
//! `[RX_PAD][VXLAN header][inner Ethernet]` with the address of the VTEP that sent it.
//! [`receive`] runs, for each one:
//! 1. [`decap`]: validation in the Linux kernel's order (length, I flag, VNI, inner Ethernet
//!    header, reserved bits: `vxlan_rcv` drops frames with reserved bits set or an unknown
//!    VNI, and so do we), the tunnel port of the Subnet with that VNI, and the buffer turned
//!    into `[virtio_net_hdr][inner Ethernet]` in place. Nothing is copied. A datagram that the
//!    VTEP merged in place from a run of TCP segments (its pad holds the run's MSS) becomes
//!    the GSO super-frame it is, as a TAP would have handed it over;
//! 2. remote learning ([`learn_remote`]): the inner source MAC is learned behind the sending
//!    VTEP in the remote FDB, which `vxlan-encap` reads to send unicast to one VTEP;
//! 3. [`adopt_super_frame`] (a TCP burst, over IPv4 or IPv6, that a Linux peer on a veth
//!    sent unsegmented becomes a super-frame cut to the tunnel's MTU), else
//!    [`complete_inner_checksum`] (a peer's partial TCP or UDP checksum, over IPv4 or IPv6,
//!    is completed; counted as `tx.checksum_completed`);
//! 4. the ingress stages as if the frame came from the tunnel port
//!    ([`super::process_tunnel`]): learning, ARP for the gateway, routing, switching, without
//!    port security (the remote side has its own), and never flooded back into the overlay
//!    (split horizon).
//!
//! A datagram that fails validation is dropped under one of this stage's reasons (counted on
//! the VTEP, under the name `vxlan` in the stats). The stage is a function of the snapshot,
//! the shared tables (the remote FDB among them), the frame, its peer and the worker's
//! [`Local`] state; it does no I/O.

use std::net::SocketAddr;

use vxlan::VxlanDecapError;

use super::{Context, Local, Outcome};
use crate::port::vtep::RX_PAD;
use crate::tables::counters::{Event, keyed_enum};
use crate::tables::snapshot::{PortEntry, Snapshot, VtepEntry};
use crate::wire::VNET_HDR_LEN;

keyed_enum! {
    /// Why `vxlan-input` dropped a datagram received by the VTEP.
    pub enum DropReason {
        Truncated = "vxlan.truncated":
            "datagram on the VXLAN port shorter than a VXLAN header",
        BadFlags = "vxlan.bad_flags":
            "VXLAN header without the I flag (the VNI is not valid)",
        ReservedBits = "vxlan.reserved_bits":
            "VXLAN header with reserved bits set (Linux drops these too)",
        UnknownVni = "vxlan.unknown_vni":
            "VXLAN packet for a VNI that no stretched Subnet of this node has",
        InnerTruncated = "vxlan.inner_truncated":
            "VXLAN packet whose inner frame is shorter than an Ethernet header",
    }
}

impl From<VxlanDecapError> for DropReason {
    fn from(error: VxlanDecapError) -> DropReason {
        match error {
            VxlanDecapError::Truncated => DropReason::Truncated,
            VxlanDecapError::BadFlags => DropReason::BadFlags,
            VxlanDecapError::ReservedBitsSet => DropReason::ReservedBits,
            VxlanDecapError::UnknownVni => DropReason::UnknownVni,
            VxlanDecapError::InnerFrameTruncated => DropReason::InnerTruncated,
        }
    }
}

/// Runs `vxlan-input` and then the ingress stages for one datagram `frame`
/// (`[RX_PAD][VXLAN][inner]`) that the VTEP `vtep` received from `peer`. The frame is
/// rewritten in place into `[virtio_net_hdr][inner Ethernet]` (and by routing, if routed);
/// frames the switch sends in answer go to `local.out.generated`. Never panics.
pub fn receive(
    ctx: &Context<'_>,
    vtep: &VtepEntry,
    frame: &mut [u8],
    peer: SocketAddr,
    local: &mut Local,
) -> Outcome {
    let tunnel = match decap(ctx.snapshot, vtep, frame) {
        Ok(tunnel) => tunnel,
        Err(reason) => return Outcome::dropped(reason),
    };
    let limit = ctx
        .snapshot
        .subnet(tunnel.subnet)
        .map_or(crate::tables::snapshot::DEFAULT_MAC_LIMIT, |s| s.mac_limit);
    // A MAC the remote table leaves out is counted once, by the Subnet's own table, which
    // holds the same MACs (learned on the tunnel port) under the same limit.
    let _ = learn_remote(ctx.remote_fdb, tunnel, frame, peer, ctx.now_ms, limit);
    if !adopt_super_frame(frame, tunnel.mtu) && complete_inner_checksum(frame) {
        local.out.events.add(Event::ChecksumCompleted);
    }
    super::process_tunnel(ctx, tunnel, frame, local)
}

/// Validates the datagram in `frame` (`[RX_PAD][VXLAN][inner]`), finds its tunnel port and
/// rewrites the buffer to `[virtio_net_hdr][inner Ethernet]`. Never panics.
///
/// # Errors
/// The reason the datagram is dropped; the buffer is unchanged then.
pub fn decap<'a>(
    snapshot: &'a Snapshot,
    vtep: &VtepEntry,
    frame: &mut [u8],
) -> Result<&'a PortEntry, DropReason> {
    let payload = frame.get(RX_PAD..).ok_or(DropReason::Truncated)?;
    let accept_rco = vtep.encap.remote_checksum_offload;
    let (port, decapsulated) = vxlan::encap::decapsulate_with_rco(payload, accept_rco, |vni| {
        vtep.tunnels.get(&u32::from(vni)).copied()
    })?;
    let tunnel = snapshot.port(port).ok_or(DropReason::UnknownVni)?;
    // A datagram the VTEP merged from a run of TCP segments carries the run's MSS in its pad.
    let merged_mss = u16::from_be_bytes([frame[0], frame[1]]);
    // The 2 pad bytes and the 8 header bytes become a virtio header with no flags: the
    // inner frame's checksums are whatever the sender put on the wire; or, for a merged
    // datagram, the header of the GSO super-frame it now is.
    frame[..VNET_HDR_LEN].fill(0);
    if merged_mss != 0 {
        crate::wire::gro::write_super_frame_vnet_header(frame, merged_mss);
    } else if let Some(rco) = decapsulated.remote_checksum {
        // Remote checksum offload: the sender left the inner checksum partial and said
        // where; the frame goes on partial, as Linux hands it on (`remcsum_nopartial` off).
        // `decapsulate_with_rco` checked that the field lies inside the frame.
        let mut vnet = crate::wire::VnetPacket::new_unchecked(&mut frame[..]);
        vnet.set_flags(crate::wire::vnet_hdr::flags::NEEDS_CSUM);
        vnet.set_csum_start(rco.start());
        vnet.set_csum_offset(rco.offset());
    }
    Ok(tunnel)
}

/// Learns the inner source MAC of `frame` (`[virtio_net_hdr][inner Ethernet]`, decapsulated
/// on `tunnel`) behind `peer`, the VTEP that sent it: a shard's read lock and an in-place
/// refresh when known, the shard's write lock only when new or moved. Multicast, broadcast
/// and all-zero sources are not learned. At most `limit` MACs are learned behind the
/// tunnel's VNI: the stretched Subnet's `macTableLimit`, which bounds its remote MACs as it
/// bounds its local ones. Returns what learning did, `None` when the MAC was known or not to
/// be learned.
pub fn learn_remote(
    remote_fdb: &vxlan::VxlanSharedFdb,
    tunnel: &PortEntry,
    frame: &[u8],
    peer: SocketAddr,
    now: u64,
    limit: usize,
) -> Option<vxlan::fdb::Learn> {
    let vni = tunnel.tunnel().map(|t| t.vni)?;
    let src = frame
        .get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12)
        .and_then(|mac| <[u8; 6]>::try_from(mac).ok())?;
    if !vxlan::fdb::is_valid_unicast(src) {
        return None;
    }
    let remote = peer.ip();
    // A link-local sender names no interface once learned: every send to it would fail.
    if matches!(remote, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        return None;
    }
    if remote_fdb.refresh(vni, src, remote, now) {
        return None;
    }
    Some(remote_fdb.learn_within(vni, src, remote, now, limit))
}

/// The transport of an unfragmented inner IPv4 or IPv6 packet, from an Ethernet frame.
struct Transport {
    /// Offset of the TCP or UDP header in the Ethernet frame.
    start: usize,
    /// Length of the TCP or UDP header and payload (padding excluded).
    len: usize,
    /// 6 (TCP) or 17 (UDP).
    protocol: u8,
    /// The pseudo-header sum of the packet's family.
    pseudo: u16,
    /// IPv6.
    v6: bool,
}

/// The TCP or UDP transport of the IPv4 or IPv6 packet in `eth` (IPv6 after its extension
/// headers), unless it is a fragment or malformed.
fn transport(eth: &[u8]) -> Option<Transport> {
    use crate::wire::checksum;
    let ip = eth.get(ETHERNET_HEADER_LEN..)?;
    let (start, len, protocol, pseudo, v6) = match eth.get(12..14)? {
        [0x08, 0x00] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || fragment {
                return None;
            }
            let protocol = ip[9];
            let len = total - ihl;
            let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let pseudo = checksum::pseudo_header_ipv4(src, dst, protocol, u16::try_from(len).ok()?);
            (ihl, len, protocol, pseudo, false)
        }
        [0x86, 0xdd] => {
            let info = crate::wire::ipv6::parse(ip).ok()?;
            if info.fragment.is_some() {
                return None;
            }
            let len = info.packet_len.checked_sub(info.l4_offset)?;
            let pseudo = checksum::pseudo_header_ipv6(
                info.src,
                info.dst,
                info.next_header,
                u32::try_from(len).ok()?,
            );
            (info.l4_offset, len, info.next_header, pseudo, true)
        }
        _ => return None,
    };
    matches!(protocol, 6 | 17).then_some(Transport {
        start: ETHERNET_HEADER_LEN + start,
        len,
        protocol,
        pseudo,
        v6,
    })
}

/// Completes the inner TCP or UDP checksum of a decapsulated IPv4 or IPv6 frame
/// (`[virtio_net_hdr][Ethernet]`) when the sender left it partial: a Linux peer whose VXLAN
/// device sits on a veth (or any device with checksum offload that never computes it) puts
/// the packet on the wire with the pseudo-header sum in the checksum field, and the
/// receiving container would drop it. A complete checksum is recognised in O(1) (its field
/// differs from the pseudo-header sum) and left alone; only a field that holds exactly the
/// pseudo-header sum and does not verify is completed. Returns true when it completed one.
/// Never panics.
pub fn complete_inner_checksum(frame: &mut [u8]) -> bool {
    use crate::wire::VnetPacket;
    use crate::wire::checksum;
    if VnetPacket::new_checked(&*frame).is_ok_and(|vnet| vnet.needs_csum()) {
        // A super-frame the VTEP merged: its partial checksum is meant to stay partial.
        return false;
    }
    let Some(eth) = frame.get_mut(VNET_HDR_LEN..) else {
        return false;
    };
    let Some(t) = transport(eth) else {
        return false;
    };
    let offset = if t.protocol == 6 { 16 } else { 6 };
    if t.len < offset + 2 {
        return false;
    }
    let field = u16::from_be_bytes([eth[t.start + offset], eth[t.start + offset + 1]]);
    if field != t.pseudo || field == 0 && t.protocol == 17 {
        return false;
    }
    let l4 = &eth[t.start..t.start + t.len];
    if checksum::combine(&[t.pseudo, checksum::sum(l4)]) == 0xffff {
        // It verifies after all (1 in 65536).
        return false;
    }
    // `complete_partial_checksum` sums from `start` to the end of its slice: give it the
    // IP packet's end, not the frame's (which may carry Ethernet padding).
    checksum::complete_partial_checksum(&mut eth[..t.start + t.len], t.start, offset).is_ok()
}

/// Turns a decapsulated IPv4 or IPv6 TCP frame larger than the tunnel's `mtu` back into the
/// GSO super-frame it is. A Linux peer whose VXLAN device sends over a veth (or any device
/// with UDP-tunnel segmentation offload that never segments) puts whole TCP bursts on the
/// "wire" as one datagram, and the kernel hands them to our UDP socket unsegmented. Over a
/// real wire they would have been segments of at most `mtu`, so the switch cuts them to that
/// size: the virtio header says TCPv4 (or TCPv6) GSO with the MSS that fits `mtu` and a
/// partial checksum, and every later stage treats the frame as the super-frame a TAP would
/// hand over (routing measures it by segment, the TAP takes it whole, `vxlan-encap`
/// segments it). Returns true when it did. Never panics.
pub fn adopt_super_frame(frame: &mut [u8], mtu: u16) -> bool {
    use crate::wire::VnetPacket;
    use crate::wire::vnet_hdr::{flags, gso};
    if VnetPacket::new_checked(&*frame).is_ok_and(|vnet| vnet.is_gso()) {
        // Already a super-frame (the VTEP merged it from segments of their own size).
        return false;
    }
    let Some(eth) = frame.get(VNET_HDR_LEN..) else {
        return false;
    };
    if !super::vxlan_encap::exceeds_mtu(eth, mtu) {
        return false;
    }
    let Some(t) = transport(eth).filter(|t| t.protocol == 6) else {
        return false;
    };
    let Some(tcp) = eth.get(t.start..t.start + t.len) else {
        return false;
    };
    let thl = usize::from(tcp.get(12).map_or(0, |b| b >> 4)) * 4;
    if thl < 20 || tcp.len() < thl {
        return false;
    }
    let l3 = t.start - ETHERNET_HEADER_LEN;
    let (Ok(mss), Ok(start), Ok(headers)) = (
        u16::try_from(usize::from(mtu).saturating_sub(l3 + thl)),
        u16::try_from(t.start),
        u16::try_from(t.start + thl),
    ) else {
        return false;
    };
    if mss == 0 {
        return false;
    }
    let field = VNET_HDR_LEN + t.start + 16;
    frame[field..field + 2].copy_from_slice(&t.pseudo.to_be_bytes());
    let mut vnet = VnetPacket::new_unchecked(&mut frame[..]);
    vnet.set_flags(flags::NEEDS_CSUM);
    vnet.set_gso_type(if t.v6 { gso::TCPV6 } else { gso::TCPV4 });
    vnet.set_hdr_len(headers);
    vnet.set_gso_size(mss);
    vnet.set_csum_start(start);
    vnet.set_csum_offset(16);
    true
}

const ETHERNET_HEADER_LEN: usize = 14;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::pipeline::fixtures::{
        ARP_REQUEST, BLUE_VNI, Bench, REMOTE_VTEP, TUNNEL, overlay_snapshot, with_src_mac,
    };
    use crate::pipeline::{Outcome, Verdict};
    use crate::tables::fdb::Learn;
    use crate::tables::snapshot::SubnetId;

    /// `[pad][VXLAN flags, reserved, vni, reserved][inner]` with the inner ARP request.
    fn datagram(flags: u8, vni: u32, reserved_last: u8) -> Vec<u8> {
        datagram_with(flags, vni, reserved_last, &ARP_REQUEST[VNET_HDR_LEN..])
    }

    /// `[pad][VXLAN flags, reserved, vni, reserved][inner]`.
    fn datagram_with(flags: u8, vni: u32, reserved_last: u8, inner: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; RX_PAD];
        bytes.extend_from_slice(&[flags, 0, 0, 0]);
        bytes.extend_from_slice(&vni.to_be_bytes()[1..]);
        bytes.push(reserved_last);
        bytes.extend_from_slice(inner);
        bytes
    }

    #[test]
    fn a_valid_datagram_becomes_a_frame_in_place() {
        let snapshot = overlay_snapshot();
        let vtep = snapshot.vtep.as_ref().expect("the VTEP");
        let mut frame = datagram(0x08, 42, 0);
        let tunnel = decap(&snapshot, vtep, &mut frame).expect("valid");
        assert_eq!(tunnel.id, TUNNEL);
        assert_eq!(&frame[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&frame[VNET_HDR_LEN..], &ARP_REQUEST[VNET_HDR_LEN..]);
    }

    /// A datagram with the remote checksum offload option: dropped (reserved bits) by a VTEP
    /// without it, as Linux without `remcsumrx` drops it; taken by one with it, the inner
    /// frame handed on with its checksum partial where the option says.
    #[test]
    fn remote_checksum_offload_is_taken_only_when_configured() {
        let mut frame = udp_frame(None);
        let inner = frame.split_off(VNET_HDR_LEN);
        let mut datagram = datagram_with(0x08, 42, 17 | 0x80, &inner);
        datagram[RX_PAD + 1] = 0x20; // the C flag
        let snapshot = overlay_snapshot();
        let vtep = snapshot.vtep.as_ref().expect("the VTEP");
        let mut refused = datagram.clone();
        assert_eq!(
            decap(&snapshot, vtep, &mut refused).map(|p| p.id),
            Err(DropReason::ReservedBits)
        );
        let mut rco = vtep.clone();
        rco.encap.remote_checksum_offload = true;
        let tunnel = decap(&snapshot, &rco, &mut datagram).expect("taken");
        assert_eq!(tunnel.id, TUNNEL);
        let vnet = crate::wire::VnetPacket::new_checked(&datagram[..]).unwrap();
        assert!(vnet.needs_csum() && !vnet.is_gso());
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (34, 6));
        assert_eq!(&datagram[VNET_HDR_LEN..], &inner[..]);
        // An option pointing past the frame is refused.
        let mut beyond = datagram_with(0x08, 42, 0x7f, &inner);
        beyond[RX_PAD + 1] = 0x20;
        assert_eq!(
            decap(&snapshot, &rco, &mut beyond).map(|p| p.id),
            Err(DropReason::InnerTruncated)
        );
    }

    #[test]
    fn malformed_datagrams_are_refused_with_their_reason() {
        let snapshot = overlay_snapshot();
        let vtep = snapshot.vtep.as_ref().expect("the VTEP");
        let cases: [(Vec<u8>, DropReason); 5] = [
            (
                datagram(0x08, 42, 0)[..RX_PAD + 5].to_vec(),
                DropReason::Truncated,
            ),
            (datagram(0x00, 42, 0), DropReason::BadFlags),
            (datagram(0x08, 43, 0), DropReason::UnknownVni),
            (datagram(0x08, 42, 1), DropReason::ReservedBits),
            (datagram(0x0c, 42, 0), DropReason::ReservedBits),
        ];
        for (mut frame, want) in cases {
            let before = frame.clone();
            assert_eq!(decap(&snapshot, vtep, &mut frame).map(|p| p.id), Err(want));
            assert_eq!(frame, before, "unchanged on {want}");
        }
        let mut short_inner = datagram(0x08, 42, 0)[..RX_PAD + 8 + 10].to_vec();
        assert_eq!(
            decap(&snapshot, vtep, &mut short_inner).map(|p| p.id),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(
            decap(&snapshot, vtep, &mut []).map(|p| p.id),
            Err(DropReason::Truncated)
        );
    }

    /// vnet + Ethernet + IPv4 10.0.0.1 -> 10.0.0.2 + UDP 1000 -> 2000 "hello!" with the UDP
    /// checksum field as given.
    fn udp_frame(field: Option<u16>) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let ip = [
            0x45, 0, 0, 34, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 14, 0, 0]);
        frame.extend_from_slice(b"hello!");
        let pseudo = crate::wire::checksum::pseudo_header_ipv4(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            17,
            14,
        );
        let full = !crate::wire::checksum::combine(&[
            pseudo,
            crate::wire::checksum::sum(&frame[VNET_HDR_LEN + 34..]),
        ]);
        let value = field.unwrap_or(pseudo);
        let value = if field == Some(u16::MAX) { full } else { value };
        frame[VNET_HDR_LEN + 34 + 6..VNET_HDR_LEN + 34 + 8].copy_from_slice(&value.to_be_bytes());
        frame
    }

    #[test]
    fn partial_inner_checksums_are_completed_and_complete_ones_left() {
        let complete = udp_frame(Some(u16::MAX));
        let mut partial = udp_frame(None);
        assert!(complete_inner_checksum(&mut partial), "completed");
        assert_eq!(partial, complete);
        let mut again = complete.clone();
        assert!(!complete_inner_checksum(&mut again));
        assert_eq!(again, complete);
        let mut zero = udp_frame(Some(0));
        assert!(
            !complete_inner_checksum(&mut zero),
            "UDP without checksum stays so"
        );
        let mut corrupt = udp_frame(Some(0x1234));
        assert!(
            !complete_inner_checksum(&mut corrupt),
            "a wrong checksum is not repaired"
        );
    }

    /// Appends an Ethernet frame 02:..:01 -> 02:..:02 carrying TCP over IPv4 10.0.0.1 ->
    /// 10.0.0.2 (DF): a `tcp_header_len`-byte header with `flags`, checksum field zero, and
    /// `payload` bytes of 0x5a.
    fn push_tcp_packet(frame: &mut Vec<u8>, tcp_header_len: usize, flags: u8, payload: usize) {
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let total = u16::try_from(20 + tcp_header_len + payload).unwrap();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&ip);
        let mut tcp = vec![0u8; tcp_header_len];
        tcp[12] = u8::try_from(tcp_header_len / 4).unwrap() << 4;
        tcp[13] = flags;
        frame.extend_from_slice(&tcp);
        frame.extend(std::iter::repeat_n(0x5a, payload));
    }

    #[test]
    fn an_oversize_tcp_frame_from_the_overlay_becomes_a_gso_frame() {
        // 10.0.0.1 -> 10.0.0.2 TCP, 20-byte header, 4000 bytes of payload, checksum left
        // as a kernel would on a veth (the pseudo-header sum), through a 1450-byte tunnel.
        let mut frame = vec![0u8; VNET_HDR_LEN];
        push_tcp_packet(&mut frame, 20, 0x18, 4000);
        assert!(adopt_super_frame(&mut frame, 1450));
        let vnet = crate::wire::VnetPacket::new_checked(&frame[..]).unwrap();
        assert!(vnet.is_gso() && vnet.needs_csum());
        assert_eq!(vnet.gso_size(), 1450 - 40);
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (34, 16));
        // The segmenter cuts it into valid segments that fit the tunnel.
        let mut segments = Vec::new();
        crate::wire::gso::Segmenter::new()
            .segment(&frame, |segment| segments.push(segment.len()))
            .expect("segments");
        assert_eq!(segments.len(), 4000usize.div_ceil(1410));
        assert!(segments.iter().all(|len| len - VNET_HDR_LEN - 14 <= 1450));
        // A frame that fits, or that is not TCP, is left alone.
        let mut small = udp_frame(Some(u16::MAX));
        assert!(!adopt_super_frame(&mut small, 1450));
    }

    /// `[virtio_net_hdr]` and an Ethernet frame carrying TCP over IPv6 fd00::1 -> fd00::2
    /// (behind a destination options header when `options`): a 20-byte header with the
    /// pseudo-header sum in its checksum field (as a Linux peer on a veth leaves it) and
    /// `payload` bytes of 0x5a.
    fn tcp6_partial(payload: usize, options: bool) -> Vec<u8> {
        use crate::wire::checksum;
        let src: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        let ext = if options { 8 } else { 0 };
        let l4_len = 20 + payload;
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&u16::try_from(ext + l4_len).unwrap().to_be_bytes());
        frame.extend_from_slice(&[if options { 60 } else { 6 }, 64]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        if options {
            // Destination options: next header TCP, length 0 (8 bytes), PadN.
            frame.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        }
        let mut tcp = vec![0u8; 20];
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        let pseudo = checksum::pseudo_header_ipv6(src, dst, 6, u32::try_from(l4_len).unwrap());
        tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
        frame.extend_from_slice(&tcp);
        frame.extend(std::iter::repeat_n(0x5a, payload));
        frame
    }

    #[test]
    fn ipv6_inner_checksums_and_bursts_from_a_linux_peer_are_made_whole() {
        use smoltcp::wire::{IpAddress, TcpPacket};
        let src = IpAddress::from("fd00::1".parse::<std::net::Ipv6Addr>().unwrap());
        let dst = IpAddress::from("fd00::2".parse::<std::net::Ipv6Addr>().unwrap());
        for options in [false, true] {
            // A partial checksum is completed and then verifies; done twice, nothing moves.
            let mut frame = tcp6_partial(100, options);
            assert!(complete_inner_checksum(&mut frame), "options {options}");
            let l4 = VNET_HDR_LEN + 14 + 40 + if options { 8 } else { 0 };
            let tcp = TcpPacket::new_checked(&frame[l4..]).unwrap();
            assert!(tcp.verify_checksum(&src, &dst), "options {options}");
            let done = frame.clone();
            assert!(!complete_inner_checksum(&mut frame));
            assert_eq!(frame, done);
            // An unsegmented burst becomes a TCPv6 super-frame cut to the tunnel's MTU.
            let mut burst = tcp6_partial(4000, options);
            assert!(adopt_super_frame(&mut burst, 1450), "options {options}");
            let vnet = crate::wire::VnetPacket::new_checked(&burst[..]).unwrap();
            assert!(vnet.is_gso() && vnet.needs_csum());
            assert_eq!(vnet.gso_type(), crate::wire::vnet_hdr::gso::TCPV6);
            let headers = 40 + if options { 8 } else { 0 } + 20;
            assert_eq!(usize::from(vnet.gso_size()), 1450 - headers);
            assert_eq!(usize::from(vnet.csum_start()), 14 + headers - 20);
            let mut segments = Vec::new();
            crate::wire::gso::Segmenter::new()
                .segment(&burst, |segment| segments.push(segment.to_vec()))
                .expect("segments");
            assert_eq!(segments.len(), 4000usize.div_ceil(1450 - headers));
            for segment in &segments {
                assert!(segment.len() - VNET_HDR_LEN - 14 <= 1450);
                let tcp = TcpPacket::new_checked(&segment[l4..]).unwrap();
                assert!(tcp.verify_checksum(&src, &dst), "a segment's checksum");
            }
        }
    }

    #[test]
    fn a_datagram_merged_by_the_vtep_becomes_a_super_frame() {
        // What the VTEP leaves after merging a run with MSS 1398: the MSS in the pad, the
        // VXLAN header, then the merged TCP packet (12-byte options, checksum partial).
        let snapshot = overlay_snapshot();
        let vtep = snapshot.vtep.as_ref().expect("the VTEP");
        let mut frame = datagram(0x08, 42, 0);
        frame.truncate(VNET_HDR_LEN);
        frame[..RX_PAD].copy_from_slice(&1398u16.to_be_bytes());
        push_tcp_packet(&mut frame, 32, 0x10, 5 * 1398);
        decap(&snapshot, vtep, &mut frame).expect("valid");
        let vnet = crate::wire::VnetPacket::new_checked(&frame[..]).unwrap();
        assert!(vnet.is_gso() && vnet.needs_csum());
        assert_eq!(vnet.gso_size(), 1398, "the run's own MSS, not the tunnel's");
        assert_eq!(vnet.hdr_len(), 14 + 20 + 32);
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (34, 16));
        // Neither the super-frame adoption nor checksum completion touch it again.
        let before = frame.clone();
        assert!(!adopt_super_frame(&mut frame, 1450));
        assert!(!complete_inner_checksum(&mut frame));
        assert_eq!(frame, before);
        // An unmerged datagram (zero pad) gets the all-zero header.
        let mut plain = datagram(0x08, 42, 0);
        decap(&snapshot, vtep, &mut plain).expect("valid");
        assert_eq!(&plain[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    }

    #[test]
    fn receive_learns_the_remote_mac_and_runs_the_tunnel_stages() {
        let bench = Bench::with(overlay_snapshot());
        let vtep = bench.snapshot.vtep.clone().expect("the VTEP");
        let peer = SocketAddr::new(REMOTE_VTEP, 40_000);
        let remote_mac = [0x02, 0xaa, 0, 0, 0, 1];
        let arp = with_src_mac(&ARP_REQUEST, remote_mac);
        let mut frame = datagram_with(0x08, BLUE_VNI, 0, &arp[VNET_HDR_LEN..]);
        let mut local = bench.local.borrow_mut();
        let outcome = receive(&bench.ctx(5), &vtep, &mut frame, peer, &mut local);
        // Broadcast from the overlay floods the subnet's local ports, never the overlay.
        assert_eq!(
            outcome.verdict,
            Verdict::FloodSubnet {
                subnet: SubnetId(1),
                except: Some(TUNNEL),
            }
        );
        assert_eq!(outcome.learn, Some(Learn::Learned));
        assert_eq!(&frame[..], &arp[..], "decapsulated in place");
        let vni = vxlan::Vni::new(BLUE_VNI).expect("vni");
        assert_eq!(
            bench.remote_fdb.lookup(vni, remote_mac, 5).map(|v| v.ip),
            Some(REMOTE_VTEP),
            "learned behind the VTEP that sent it"
        );
        let blue = bench.snapshot.subnet(SubnetId(1)).expect("blue");
        assert_eq!(bench.fdb.lookup(blue, remote_mac, 5), Some(TUNNEL));
        // A datagram for a VNI nobody has: dropped under its reason, nothing learned.
        let mut unknown = datagram_with(
            0x08,
            43,
            0,
            &with_src_mac(&arp, [2, 0xbb, 0, 0, 0, 2])[VNET_HDR_LEN..],
        );
        let outcome = receive(&bench.ctx(6), &vtep, &mut unknown, peer, &mut local);
        assert_eq!(outcome, Outcome::dropped(DropReason::UnknownVni));
        assert_eq!(bench.remote_fdb.lookup(vni, [2, 0xbb, 0, 0, 0, 2], 6), None);
        // A peer's partial inner checksum is completed, and counted.
        let mut partial = datagram_with(0x08, BLUE_VNI, 0, &udp_frame(None)[VNET_HDR_LEN..]);
        let _ = receive(&bench.ctx(7), &vtep, &mut partial, peer, &mut local);
        assert_eq!(&partial[..], &udp_frame(Some(u16::MAX))[..]);
        assert_eq!(local.out.events.get(Event::ChecksumCompleted), 1);
    }

    #[test]
    fn remote_macs_are_bounded_by_the_subnet_s_limit() {
        let base = overlay_snapshot();
        let mut subnets = base.subnets().to_vec();
        for subnet in &mut subnets {
            subnet.mac_limit = 1;
        }
        let snapshot = Snapshot::new(base.ports().to_vec(), subnets).with_vtep(base.vtep.clone());
        let bench = Bench::with(snapshot);
        let vtep = bench.snapshot.vtep.clone().expect("the VTEP");
        let peer = SocketAddr::new(REMOTE_VTEP, 40_000);
        let vni = vxlan::Vni::new(BLUE_VNI).expect("vni");
        let mut local = bench.local.borrow_mut();
        let mut learned = Vec::new();
        for (n, now) in [(1u8, 5u64), (2, 6)] {
            let arp = with_src_mac(&ARP_REQUEST, [0x02, 0xaa, 0, 0, 0, n]);
            let mut frame = datagram_with(0x08, BLUE_VNI, 0, &arp[VNET_HDR_LEN..]);
            learned.push(receive(&bench.ctx(now), &vtep, &mut frame, peer, &mut local).learn);
        }
        assert!(
            bench
                .remote_fdb
                .lookup(vni, [0x02, 0xaa, 0, 0, 0, 1], 7)
                .is_some()
        );
        assert!(
            bench
                .remote_fdb
                .lookup(vni, [0x02, 0xaa, 0, 0, 0, 2], 7)
                .is_none(),
            "the Subnet's macTableLimit (1) bounds the MACs behind its VNI"
        );
        // Counted once, by the Subnet's table (the worker counts `learn`), not again here.
        assert_eq!(learned, [Some(Learn::Learned), Some(Learn::LimitReached)]);
        assert_eq!(local.out.events.get(Event::MacLimitReached), 0);
    }

    proptest::proptest! {
        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let snapshot = overlay_snapshot();
            let vtep = snapshot.vtep.as_ref().expect("the VTEP");
            let mut frame = bytes;
            let _ = decap(&snapshot, vtep, &mut frame);
            let _ = complete_inner_checksum(&mut frame);
            let _ = adopt_super_frame(&mut frame, 68);
        }
    }
}
