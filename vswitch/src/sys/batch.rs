//! Frames in batches: the per-worker receive buffers, preallocated once and reused for every
//! batch, and what queueing a frame for transmission did.
//!
//! Each receive buffer holds one frame: `HEADROOM` free bytes (so later stages can prepend
//! outer headers such as VXLAN without copying), then the 10-byte `virtio_net_hdr`, then the
//! Ethernet frame. Buffers are large enough for a 64 KiB GSO super-frame.
//!
//! These types live here, at the bottom with the kernel interfaces, because the TAP and
//! AF_PACKET queues read straight into an [`RxBatch`]; `port` re-exports them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The peer of a frame that came from no datagram: `0.0.0.0:0`.
const NO_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

use crate::wire::VNET_HDR_LEN;

/// Free bytes kept before every frame for encapsulation (Ethernet + IPv6 + UDP + VXLAN = 70).
pub const HEADROOM: usize = 128;

/// The largest frame a port may hand us: a 64 KiB GSO packet plus its Ethernet header and
/// virtio header (the kernel caps GSO packets at 64 KiB unless BIG TCP is enabled, which we
/// do not negotiate).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 14 + 65_536;

/// Frames received from one queue per batch: the capacity of a worker's [`RxBatch`], and the
/// frames an AF_PACKET socket queues for one `sendmmsg`.
pub const BATCH_SIZE: usize = 64;

/// What queueing a frame for transmission did with it (`PortQueue::enqueue` in `port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the kernel already.
    Now,
    /// Copied into the queue for the next flush, at this position among the frames queued
    /// since the last one: the position a flush reports the frame by if the kernel refuses it.
    Queued(usize),
}

/// A batch of received frames, backed by buffers allocated once per worker.
#[derive(Debug)]
pub struct RxBatch {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    /// The sender of each frame, for queues that receive datagrams (the VTEP's UDP socket):
    /// the remote VTEP. Unspecified (`0.0.0.0:0`) for frames from ports.
    peers: Vec<SocketAddr>,
    /// The 802.1Q tag the kernel took off each frame (AF_PACKET reports it beside the frame,
    /// never in it): `TPID << 16 | TCI`, 0 for an untagged frame.
    tags: Vec<u32>,
    /// Where each frame starts in its buffer: [`HEADROOM`], or later once a tag was popped.
    starts: Vec<usize>,
    count: usize,
}

impl RxBatch {
    /// Allocates `capacity` buffers of `HEADROOM + MAX_FRAME_LEN` bytes each.
    pub fn new(capacity: usize) -> RxBatch {
        RxBatch {
            bufs: (0..capacity)
                .map(|_| vec![0u8; HEADROOM + MAX_FRAME_LEN].into_boxed_slice())
                .collect(),
            lens: vec![0; capacity],
            peers: vec![NO_PEER; capacity],
            tags: vec![0; capacity],
            starts: vec![HEADROOM; capacity],
            count: 0,
        }
    }

    /// How many frames the batch can hold.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// How many frames are in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when no further frame fits.
    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    /// Empties the batch; the buffers stay allocated.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The writable region (after the headroom) of the next free buffer, or `None` when the
    /// batch is full. Write a frame (virtio header + Ethernet) there, then call [`commit`].
    ///
    /// [`commit`]: RxBatch::commit
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        let buf = self.bufs.get_mut(self.count)?;
        Some(&mut buf[HEADROOM..])
    }

    /// Records that `len` bytes were written into the slot returned by [`next_slot`].
    ///
    /// # Panics
    /// When the batch is full or `len` exceeds the slot: both are bugs in the caller.
    ///
    /// [`next_slot`]: RxBatch::next_slot
    pub fn commit(&mut self, len: usize) {
        assert!(self.count < self.bufs.len() && len <= MAX_FRAME_LEN);
        self.lens[self.count] = len;
        self.peers[self.count] = NO_PEER;
        self.tags[self.count] = 0;
        self.starts[self.count] = HEADROOM;
        self.count += 1;
    }

    /// The VLAN (TCI) of frame `i`'s inline 802.1Q tag, without changing the frame.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn inline_vlan(&self, i: usize) -> Option<u16> {
        let frame = self.frame(i);
        let at = VNET_HDR_LEN + 12;
        match frame.get(at..at + 4)? {
            [0x81, 0x00, high, low] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    /// Takes the inline 802.1Q tag off frame `i` (virtio header + tagged Ethernet frame): the
    /// header and MAC addresses move 4 bytes on and the frame starts there; the virtio
    /// header's offsets, which count from the Ethernet header, move back with what followed
    /// the tag. Returns the tag's TCI, `None` (nothing changed) when the frame has no 802.1Q
    /// tag.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn pop_vlan(&mut self, i: usize) -> Option<u16> {
        assert!(i < self.count);
        let (start, len) = (self.starts[i], self.lens[i]);
        let buf = &mut self.bufs[i];
        let frame = buf.get(start..start + len)?;
        let header = VNET_HDR_LEN + 12;
        if frame.len() < header + 6 || frame[header..header + 2] != [0x81, 0x00] {
            return None;
        }
        let tci = u16::from_be_bytes([frame[header + 2], frame[header + 3]]);
        buf.copy_within(start..start + header, start + 4);
        let start = start + 4;
        let moved = |buf: &mut [u8], at: usize| {
            let value = u16::from_le_bytes([buf[at], buf[at + 1]]).saturating_sub(4);
            buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
        };
        let flags = buf[start];
        let gso = buf[start + 1] & 0x7f;
        if flags & 1 != 0 {
            moved(buf, start + 6);
        }
        if gso != 0 {
            moved(buf, start + 2);
        }
        self.starts[i] = start;
        self.lens[i] = len - 4;
        Some(tci)
    }

    /// Like [`commit`](RxBatch::commit), for a frame the kernel received with the VLAN tag
    /// `tag` (`TPID << 16 | TCI`; 0: untagged).
    ///
    /// # Panics
    /// As [`commit`](RxBatch::commit).
    pub fn commit_tagged(&mut self, len: usize, tag: u32) {
        self.commit(len);
        self.tags[self.count - 1] = tag;
    }

    /// The VLAN tag of frame `i` (see [`commit_tagged`](RxBatch::commit_tagged)).
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn tag(&self, i: usize) -> u32 {
        assert!(i < self.count);
        self.tags[i]
    }

    /// Like [`commit`](RxBatch::commit), for a frame received from `peer` (a datagram).
    ///
    /// # Panics
    /// As [`commit`](RxBatch::commit).
    pub fn commit_from(&mut self, len: usize, peer: SocketAddr) {
        self.commit(len);
        self.peers[self.count - 1] = peer;
    }

    /// The writable regions (after the headroom) of every free buffer, in order: the first
    /// is the one [`next_slot`](RxBatch::next_slot) returns. For queues that receive several
    /// frames in one system call (`recvmmsg`); commit them in the same order.
    pub fn free_slots(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.bufs[self.count..]
            .iter_mut()
            .map(|buf| &mut buf[HEADROOM..])
    }

    /// The sender of frame `i` (see [`commit_from`](RxBatch::commit_from)); unspecified for
    /// frames from ports.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn peer(&self, i: usize) -> SocketAddr {
        assert!(i < self.count);
        self.peers[i]
    }

    /// Frame `i` (virtio header + Ethernet frame).
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(i < self.count);
        let start = self.starts[i];
        &self.bufs[i][start..start + self.lens[i]]
    }

    /// Frame `i`, writable.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.count);
        let (start, len) = (self.starts[i], self.lens[i]);
        &mut self.bufs[i][start..start + len]
    }

    /// The whole buffer of frame `i` with the frame's start offset and length, for stages
    /// that grow the frame into the headroom or shrink it.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn buffer_mut(&mut self, i: usize) -> (&mut [u8], usize, usize) {
        assert!(i < self.count);
        (&mut self.bufs[i], self.starts[i], self.lens[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_read_back() {
        let mut batch = RxBatch::new(2);
        assert!(batch.is_empty());
        batch.next_slot().unwrap()[..3].copy_from_slice(&[1, 2, 3]);
        batch.commit(3);
        batch.next_slot().unwrap()[..1].copy_from_slice(&[9]);
        batch.commit(1);
        assert!(batch.is_full());
        assert!(batch.next_slot().is_none());
        assert_eq!(batch.frame(0), &[1, 2, 3]);
        assert_eq!(batch.frame(1), &[9]);
        batch.clear();
        assert_eq!(batch.len(), 0);
    }

    #[test]
    fn pop_vlan_moves_the_header_and_the_offsets() {
        let mut batch = RxBatch::new(1);
        let mut frame = vec![1u8, 0, 0, 0, 0, 0, 40, 0, 16, 0]; // NEEDS_CSUM, csum_start 40
        frame.extend_from_slice(&[0xaa; 12]);
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x14, 0x08, 0x00, 0x45]);
        let len = frame.len();
        batch.next_slot().unwrap()[..len].copy_from_slice(&frame);
        batch.commit(len);
        assert_eq!(batch.pop_vlan(0), Some(20));
        let popped = batch.frame(0);
        assert_eq!(popped.len(), len - 4);
        assert_eq!(&popped[6..8], &[36, 0], "csum_start moved back");
        assert_eq!(&popped[VNET_HDR_LEN..VNET_HDR_LEN + 12], &[0xaa; 12]);
        assert_eq!(&popped[VNET_HDR_LEN + 12..], &[0x08, 0x00, 0x45]);
        assert_eq!(batch.pop_vlan(0), None, "no tag left");

        // A GSO super-frame's hdr_len moves too; a tag too short to pop is left.
        let mut batch = RxBatch::new(2);
        let mut gso = vec![1u8, 1, 70, 0, 0xa8, 5, 38, 0, 16, 0];
        gso.extend_from_slice(&[0xbb; 12]);
        gso.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00, 0x45]);
        batch.next_slot().unwrap()[..gso.len()].copy_from_slice(&gso);
        batch.commit(gso.len());
        let short = [0u8; VNET_HDR_LEN + 14];
        batch.next_slot().unwrap()[..short.len()].copy_from_slice(&short);
        batch.commit(short.len());
        assert_eq!(batch.pop_vlan(0), Some(10));
        assert_eq!(&batch.frame(0)[2..4], &[66, 0], "hdr_len moved back");
        assert_eq!(&batch.frame(0)[6..8], &[34, 0], "csum_start moved back");
        assert_eq!(batch.pop_vlan(1), None);
        assert_eq!(batch.frame(1).len(), short.len());
    }
}
