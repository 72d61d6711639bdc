//! Stage `tx`: adapts a frame to the egress port, and the drop reasons of sending.
//!
//! A frame keeps the `virtio_net_hdr` it was received with. Before it goes to a port:
//! - a GSO super-frame to a port that cannot take GSO is dropped (`tx.gso_unsupported`). No
//!   port reaches this today: TAP, veth and uplink ports all take super-frames (the kernel
//!   hands them whole to the container's stack, or segments them for a NIC that cannot), and
//!   a super-frame to a subnet's tunnel never comes here: its egress is
//!   [`vxlan_encap`](super::vxlan_encap), whose VTEP queue cuts it into segments
//!   ([`crate::wire::gso::Segmenter`]) and sends them with `UDP_SEGMENT` or one by one. The
//!   check guards a port that would declare no GSO;
//! - a frame with a partial checksum (`NEEDS_CSUM`) to a port that cannot take one gets its
//!   checksum completed in place, and the flag cleared. The completed frame is valid for every
//!   port, so when a flood reaches several ports the work is done once.
//!
//! The worker counts the queue's own refusals here too: `tx.queue_full` (the queue would
//! block, or the kernel is out of buffers) and `tx.error`.

use crate::port::Capabilities;
use crate::tables::counters::keyed_enum;
use crate::wire::checksum::complete_partial_checksum;
use crate::wire::vnet_hdr::flags;
use crate::wire::{VNET_HDR_LEN, VnetPacket};

keyed_enum! {
    /// Why a frame was not sent to an egress port.
    pub enum DropReason {
        QueueFull = "tx.queue_full":
            "the egress queue was full (the receiver is not keeping up)",
        Error = "tx.error":
            "the kernel refused the frame on the egress queue",
        GsoUnsupported = "tx.gso_unsupported":
            "GSO super-frame toward a port that cannot take GSO (only frames into the overlay are segmented in software)",
        Checksum = "tx.checksum":
            "the partial checksum could not be completed (it lies outside the frame)",
        Truncated = "tx.truncated":
            "frame shorter than its virtio_net_hdr at egress",
        NoQueue = "tx.no_queue":
            "the egress port has no queue for this worker or left the configuration",
        BondDown = "tx.bond_down":
            "frame for a bonded uplink none of whose members carries traffic (all down, or LACP has aggregated none)",
    }
}

/// The 802.1Q Tag Protocol Identifier.
pub const TPID_8021Q: u16 = 0x8100;

/// The 802.1ad (service tag) Tag Protocol Identifier.
pub const TPID_8021AD: u16 = 0x88a8;

/// Writes `frame` (virtio header + untagged Ethernet frame) into `out` with a tag of VLAN
/// `vid` after the MAC addresses, as a trunk sends it (`tpid` 0x8100 for 802.1Q, 0x88a8 for
/// an 802.1ad service tag). The virtio header's offsets, which
/// count from the Ethernet header, move with what follows the tag: `csum_start` when a
/// checksum is left to complete, `hdr_len` for a GSO super-frame (the kernel accepts both
/// tagged and completes or segments them past the tag). `out` is reused; after its first
/// use it does not allocate.
pub fn push_vlan(frame: &[u8], tpid: u16, vid: u16, out: &mut Vec<u8>) {
    out.clear();
    let split = VNET_HDR_LEN + 12;
    let (Some(head), Some(rest)) = (frame.get(..split), frame.get(split..)) else {
        out.extend_from_slice(frame);
        return;
    };
    out.extend_from_slice(head);
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(rest);
    let header = VnetPacket::new_unchecked(&frame[..VNET_HDR_LEN]);
    let moved = |field: std::ops::Range<usize>, out: &mut Vec<u8>| {
        if let Some(bytes) = out.get_mut(field) {
            let value = u16::from_le_bytes([bytes[0], bytes[1]]).saturating_add(4);
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    };
    if header.needs_csum() {
        moved(crate::wire::vnet_hdr::field::CSUM_START, out);
    }
    if header.is_gso() {
        moved(crate::wire::vnet_hdr::field::HDR_LEN, out);
    }
}

/// What [`prepare`] did to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The frame goes as it is.
    Unchanged,
    /// The partial checksum was completed and `NEEDS_CSUM` cleared.
    ChecksumCompleted,
}

/// Makes `frame` (`virtio_net_hdr` + Ethernet) acceptable to a port with `capabilities`.
///
/// # Errors
/// The reason the frame cannot go to that port.
pub fn prepare(frame: &mut [u8], capabilities: &Capabilities) -> Result<Prepared, DropReason> {
    let mut packet = VnetPacket::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    let is_gso = packet.is_gso();
    if is_gso && !capabilities.tx_gso {
        return Err(DropReason::GsoUnsupported);
    }
    // A GSO frame to a GSO-capable port keeps its partial checksum: each segment's checksum is
    // computed when the receiver segments it.
    if !packet.needs_csum() || capabilities.tx_partial_csum || is_gso {
        return Ok(Prepared::Unchanged);
    }
    let start = usize::from(packet.csum_start());
    let offset = usize::from(packet.csum_offset());
    complete_partial_checksum(packet.payload_mut(), start, offset)
        .map_err(|_| DropReason::Checksum)?;
    packet.set_flags(packet.flags() & !flags::NEEDS_CSUM);
    packet.set_csum_start(0);
    packet.set_csum_offset(0);
    Ok(Prepared::ChecksumCompleted)
}

/// Whether consecutive TCP segments of a flow are coalesced into a super-frame
/// ([`crate::wire::gro`]) before they are written to a device with `capabilities`: it must
/// take super-frames with their partial checksum. Then a bulk flow (from the overlay,
/// typically) costs one write and one pass of the container's TCP stack per 64 KB instead
/// of per segment, as GRO does in the kernel.
#[inline]
pub fn coalesces(capabilities: &Capabilities) -> bool {
    capabilities.vnet_hdr && capabilities.tx_gso && capabilities.tx_partial_csum
}

/// Bytes counted for a frame: the Ethernet frame, without the `virtio_net_hdr`.
#[inline]
pub fn wire_len(frame: &[u8]) -> u64 {
    u64::try_from(frame.len().saturating_sub(VNET_HDR_LEN)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use smoltcp::wire::{IpAddress, UdpPacket};

    use super::*;
    use crate::wire::checksum::pseudo_header_ipv4;
    use crate::wire::vnet_hdr::gso;

    const SRC: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);

    /// vnet(NEEDS_CSUM, start 34, offset 6) + Ethernet + IPv4 + UDP 1000 -> 2000 "hello!",
    /// with the pseudo-header sum in the UDP checksum field, as a TAP delivers it.
    fn partial_udp() -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN + 14 + 20 + 8 + 6];
        frame[0] = flags::NEEDS_CSUM;
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&6u16.to_le_bytes());
        let udp_start = VNET_HDR_LEN + 34;
        frame[udp_start + 8..].copy_from_slice(b"hello!");
        let mut udp = UdpPacket::new_unchecked(&mut frame[udp_start..]);
        udp.set_src_port(1000);
        udp.set_dst_port(2000);
        udp.set_len(14);
        udp.set_checksum(pseudo_header_ipv4(SRC, DST, 17, 14));
        frame
    }

    fn caps(tx_partial_csum: bool, tx_gso: bool) -> Capabilities {
        Capabilities {
            vnet_hdr: true,
            tx_partial_csum,
            tx_gso,
            tun_offload_flags: 0,
        }
    }

    #[test]
    fn partial_checksum_passes_to_a_capable_port() {
        let mut frame = partial_udp();
        let before = frame.clone();
        assert_eq!(
            prepare(&mut frame, &caps(true, false)),
            Ok(Prepared::Unchanged)
        );
        assert_eq!(frame, before);
    }

    #[test]
    fn partial_checksum_is_completed_for_an_incapable_port() {
        let mut frame = partial_udp();
        assert_eq!(
            prepare(&mut frame, &caps(false, false)),
            Ok(Prepared::ChecksumCompleted)
        );
        let vnet = VnetPacket::new_checked(&frame[..]).unwrap();
        assert!(!vnet.needs_csum());
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (0, 0));
        let udp = UdpPacket::new_checked(&frame[VNET_HDR_LEN + 34..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)));
        // A second port sees a complete frame: nothing more to do.
        let done = frame.clone();
        assert_eq!(
            prepare(&mut frame, &caps(false, false)),
            Ok(Prepared::Unchanged)
        );
        assert_eq!(frame, done);
    }

    #[test]
    fn gso_needs_a_gso_port() {
        let mut frame = partial_udp();
        frame[1] = gso::UDP_L4;
        frame[4] = 2;
        assert_eq!(
            prepare(&mut frame, &caps(true, false)),
            Err(DropReason::GsoUnsupported)
        );
        let before = frame.clone();
        assert_eq!(
            prepare(&mut frame, &caps(false, true)),
            Ok(Prepared::Unchanged)
        );
        assert_eq!(frame, before, "a GSO frame keeps its partial checksum");
    }

    #[test]
    fn bad_offsets_are_a_drop_not_a_panic() {
        let mut frame = partial_udp();
        frame[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            prepare(&mut frame, &caps(false, false)),
            Err(DropReason::Checksum)
        );
        assert_eq!(
            prepare(&mut frame[..4], &caps(false, false)),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn wire_len_excludes_the_vnet_header() {
        assert_eq!(wire_len(&partial_udp()), 14 + 20 + 8 + 6);
        assert_eq!(wire_len(&[0; 3]), 0);
    }

    #[test]
    fn push_vlan_inserts_the_tag_and_moves_the_offsets() {
        // NEEDS_CSUM, GSO TCPv4: csum_start 34, hdr_len 66.
        let mut frame = vec![1u8, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0];
        frame.extend_from_slice(&[0xcc; 12]);
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
        let mut out = Vec::new();
        push_vlan(&frame, TPID_8021Q, 20, &mut out);
        assert_eq!(out.len(), frame.len() + 4);
        assert_eq!(&out[VNET_HDR_LEN..VNET_HDR_LEN + 12], &[0xcc; 12]);
        assert_eq!(
            &out[VNET_HDR_LEN + 12..VNET_HDR_LEN + 18],
            &[0x81, 0, 0, 20, 0x08, 0]
        );
        assert_eq!(&out[2..4], &[70, 0], "hdr_len");
        assert_eq!(&out[6..8], &[38, 0], "csum_start");
        assert_eq!(&out[4..6], &[0xa8, 5], "gso_size unchanged");
        // Only the VLAN ID's 12 bits are written; a short frame is copied as is.
        push_vlan(&frame, TPID_8021AD, 0xf014, &mut out);
        assert_eq!(
            &out[VNET_HDR_LEN + 12..VNET_HDR_LEN + 16],
            &[0x88, 0xa8, 0x00, 0x14]
        );
        push_vlan(&[1, 2, 3], TPID_8021Q, 5, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
    }
}
