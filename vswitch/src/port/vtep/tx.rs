//! Transmit: encapsulation into the raw socket's ring of preallocated slots, and the
//! `sendmmsg` that hands the ring to the kernel.
//!
//! [`VtepQueue::send_encap`] copies the inner frame into the next slot of a ring of
//! [`TX_SLOTS`] preallocated slots, behind room for the outer IP, UDP and VXLAN headers
//! ([`OUTER_LEN`] bytes), and writes those headers with [`::vxlan::encap::encapsulate`]
//! (no outer Ethernet header: the kernel routes the packet and resolves the next hop).
//! [`VtepQueue::flush`] hands the ring to the kernel in one `sendmmsg`. Each queue numbers
//! its outer IPv4 identifications from its own starting point, so that fragments of packets
//! from different queues (DF is clear by default) are unlikely to share an ID. Over IPv6
//! the outer UDP checksum is computed here, over the whole datagram (see the module docs).

use std::io;
use std::net::IpAddr;

use ::vxlan::encap::{EncapParams, Underlay, encapsulate};
use ::vxlan::{Vni, VxlanEncapConfig};

use super::{MAX_INNER_LEN, OUTER_LEN, TX_SLOT_LEN, TX_SLOTS, VtepQueue};

impl VtepQueue {
    /// Encapsulates `inner` (an Ethernet frame, without virtio header, checksums complete,
    /// not GSO) for VNI `vni` toward `remote` (its UDP port is the VTEP's port) and queues it
    /// for the next [`flush`](VtepQueue::flush); a full queue is flushed first.
    ///
    /// # Errors
    /// `InvalidInput` when the frame cannot be encapsulated (too short or too long) or
    /// `remote` is not of the underlay's family; the kernel's error when a flush forced by a
    /// full queue fails.
    pub fn send_encap(
        &mut self,
        inner: &[u8],
        vni: Vni,
        remote: IpAddr,
        config: &VxlanEncapConfig,
    ) -> io::Result<()> {
        let Some(underlay) = Underlay::new(self.local.ip(), remote) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "remote VTEP of the other address family than the underlay",
            ));
        };
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
            underlay,
            dst_port: self.local.port(),
            ethernet: None,
            ipv4_ident: self.ipv4_ident,
        };
        let frame = encapsulate(slot, inner_range, &params, config)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let summed = match underlay {
            Underlay::Ipv4 { .. } => config.udp_checksum_ipv4,
            Underlay::Ipv6 { .. } => config.udp_checksum_ipv6,
        };
        if summed {
            // `encapsulate` summed the whole outer datagram (the vxlan crate counts nothing).
            crate::cost::checksummed(frame.len().saturating_sub(underlay.ip_header_len()));
        }
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
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
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

#[cfg(test)]
mod tests {
    use ::vxlan::encap::decapsulate;
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket};

    use super::super::RX_PAD;
    use super::super::testing::*;
    use super::*;
    use crate::port::RxBatch;

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn encap_round_trip_over_loopback() {
        encap_round_trip(&loopback_vtep(1));
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv6 socket, CAP_NET_RAW)"]
    fn encap_round_trip_over_ipv6_loopback() {
        encap_round_trip(&loopback_vtep6(1));
    }

    /// Three frames out of queue 0 of `io` to itself, received whole, from the hashed port,
    /// with a valid outer UDP checksum over IPv6 (the kernel drops them otherwise).
    fn encap_round_trip(io: &super::super::Vtep) {
        let local = queue(io, 0).local();
        let remote = local.ip();
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(4242).unwrap();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| inner_frame(1000 + i)).collect();
        {
            let mut q = queue(io, 0);
            for frame in &frames {
                q.send_encap(frame, vni, remote, &config).unwrap();
            }
            q.flush().unwrap();
            assert_eq!(q.send_errors(), 0);
            // An empty flush is a no-op.
            q.flush().unwrap();
        }
        let mut batch = RxBatch::new(8);
        receive(io, &mut batch, 3);
        for (index, frame) in frames.iter().enumerate() {
            let received = batch.frame(index);
            assert_eq!(&received[..RX_PAD], &[0; RX_PAD]);
            let decap = decapsulate(&received[RX_PAD..]).expect("valid VXLAN");
            assert_eq!(decap.vni, vni);
            assert_eq!(&received[RX_PAD..][decap.inner], &frame[..]);
            let peer = batch.peer(index);
            assert_eq!(peer.ip(), remote);
            assert_eq!(
                peer.port(),
                ::vxlan::encap::source_port(frame, &config),
                "source port hashed from the inner flow"
            );
            assert!((32768..=60999).contains(&peer.port()));
        }
        assert_eq!(queue(io, 0).local(), local);
        // A remote of the other family is refused, not sent.
        let other = if remote.is_ipv6() {
            LOCALHOST
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        };
        let error = queue(io, 0)
            .send_encap(&frames[0], vni, other, &config)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
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
                q.send_encap(&frame, vni, LOCALHOST, &config).unwrap();
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
        let short = q.send_encap(&[0; 10], vni, LOCALHOST, &config);
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let long = vec![0u8; MAX_INNER_LEN + 1];
        let long = q.send_encap(&long, vni, LOCALHOST, &config);
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
        let remote = std::net::Ipv4Addr::new(192, 0, 2, 9);
        q.send_encap(&frame, vni, remote.into(), &config).unwrap();
        q.send_encap(&frame, vni, remote.into(), &config).unwrap();
        let (start, end) = q.tx_frames[0];
        assert_eq!(
            start,
            OUTER_LEN - 36,
            "the outer headers right before the frame"
        );
        let ip = Ipv4Packet::new_checked(&q.tx_buffer[start..end]).expect("IPv4");
        assert_eq!(ip.src_addr(), std::net::Ipv4Addr::LOCALHOST);
        assert_eq!(ip.dst_addr(), remote);
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
    #[ignore = "needs root: opens a VTEP (raw IPv6 socket, CAP_NET_RAW)"]
    fn outer_headers_are_ipv6_udp_vxlan_with_a_checksum() {
        let io = loopback_vtep6(1);
        let config = VxlanEncapConfig::default();
        let vni = Vni::new(99).unwrap();
        let frame = inner_frame(4000);
        let mut q = queue(&io, 0);
        let remote: std::net::Ipv6Addr = "2001:db8::9".parse().unwrap();
        q.send_encap(&frame, vni, remote.into(), &config).unwrap();
        let (start, end) = q.tx_frames[0];
        assert_eq!(start, 0, "56 bytes of outer headers");
        let ip = Ipv6Packet::new_checked(&q.tx_buffer[start..end]).expect("IPv6");
        assert_eq!(ip.src_addr(), std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(ip.dst_addr(), remote);
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        assert_eq!(usize::from(ip.payload_len()), 8 + 8 + frame.len());
        let udp = UdpPacket::new_checked(ip.payload()).expect("UDP");
        assert_eq!(udp.dst_port(), q.local().port());
        assert!(
            udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
            "the outer UDP checksum is mandatory over IPv6"
        );
        assert_ne!(udp.checksum(), 0);
        q.tx_queued = 0;
    }
}
