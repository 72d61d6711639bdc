//! Stage `vxlan`: frames into the overlay.
//!
//! A frame forwarded to a tunnel port goes to the VTEP learned for its destination MAC,
//! or, for broadcast and unknown unicast, to every remote VTEP of the subnet (head-end
//! replication). Frames received from the overlay are never sent back into it (they are
//! flooded to the subnet's local ports only: split horizon). A GSO super-frame is segmented
//! in software first; partial checksums are completed; a frame that exceeds the overlay MTU
//! is dropped and counted (`vxlan.too_big`). Receiving from the overlay is [`super::vxlan_input`].

use crate::tables::counters::keyed_enum;

keyed_enum! {
    /// Why `vxlan` dropped a frame sent into the overlay.
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

/// True when the Ethernet frame `inner` (no virtio header) exceeds `mtu` at L3.
pub fn exceeds_mtu(inner: &[u8], mtu: u16) -> bool {
    inner.len().saturating_sub(ETHERNET_HEADER_LEN) > usize::from(mtu)
}

const ETHERNET_HEADER_LEN: usize = 14;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::{TUNNEL, overlay_snapshot};
    use crate::port::PortId;
    use crate::wire::VNET_HDR_LEN;

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
