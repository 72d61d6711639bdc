//! Frames the switch itself emits while processing a batch (ARP replies and requests, ICMP,
//! fragments, held packets released): one preallocated byte arena per worker, filled during
//! a batch, transmitted with it, then cleared. No allocation per frame.
//!
//! Every frame is a `virtio_net_hdr` followed by the Ethernet frame, like a received one.
//! Frames the switch builds get a zeroed header (no offload); a released held packet keeps
//! its own. Each frame carries its [`Verdict`] (where it goes), its [`Origin`] (counted as
//! switched/routed or as generated) and its position: the number of batch frames that go
//! before it, so a frame generated while processing batch frame `i` (the fragments of `i`,
//! say) leaves right after `i` and ordering within a flow is kept.

use super::Verdict;
use crate::wire::VNET_HDR_LEN;

/// Default arena size: room for the fragments of a whole batch of 1500-byte packets split at
/// 576, or 17 maximum-size ICMP errors per batch frame.
pub const DEFAULT_BYTES: usize = 1 << 20;

/// Default bound on the number of frames per batch.
pub const DEFAULT_FRAMES: usize = 1_024;

/// Whether a generated frame counts as traffic the switch forwarded or as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Routed traffic (fragments, released held packets): `tx_packets`.
    Routed,
    /// The switch's own (ARP, ICMP): `tx_generated_packets`.
    Switch,
}

/// One generated frame's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    start: usize,
    len: usize,
    /// Where it goes.
    pub verdict: Verdict,
    /// How it is counted.
    pub origin: Origin,
    /// The number of batch frames sent before it.
    pub after: usize,
}

/// One worker's generated frames.
#[derive(Debug)]
pub struct Generated {
    buf: Box<[u8]>,
    used: usize,
    frames: Vec<Meta>,
    max_frames: usize,
    position: usize,
}

impl Default for Generated {
    fn default() -> Generated {
        Generated::new()
    }
}

impl Generated {
    /// An arena of [`DEFAULT_BYTES`] for [`DEFAULT_FRAMES`] frames.
    pub fn new() -> Generated {
        Generated::with_capacity(DEFAULT_BYTES, DEFAULT_FRAMES)
    }

    /// An arena of `bytes` bytes for at most `frames` frames.
    pub fn with_capacity(bytes: usize, frames: usize) -> Generated {
        Generated {
            buf: vec![0u8; bytes].into_boxed_slice(),
            used: 0,
            frames: Vec::with_capacity(frames),
            max_frames: frames,
            position: 0,
        }
    }

    /// Forgets every frame (the memory stays).
    pub fn clear(&mut self) {
        self.used = 0;
        self.frames.clear();
        self.position = 0;
    }

    /// Frames pushed from now on go after the first `after` frames of the batch.
    pub fn set_position(&mut self, after: usize) {
        self.position = after;
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when there is no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True when `frames` more frames of `bytes` bytes in all (virtio headers included) fit.
    pub fn has_room(&self, frames: usize, bytes: usize) -> bool {
        self.frames.len() + frames <= self.max_frames
            && self.used.saturating_add(bytes) <= self.buf.len()
    }

    fn reserve(&mut self, len: usize, verdict: Verdict, origin: Origin) -> Option<&mut [u8]> {
        if !self.has_room(1, len) {
            return None;
        }
        let start = self.used;
        self.used += len;
        self.frames.push(Meta {
            start,
            len,
            verdict,
            origin,
            after: self.position,
        });
        Some(&mut self.buf[start..start + len])
    }

    /// Appends a frame of `ethernet_len` bytes after a zeroed virtio header and returns the
    /// Ethernet part for the caller to fill; `None` when the arena is full.
    pub fn push_ethernet(
        &mut self,
        ethernet_len: usize,
        verdict: Verdict,
        origin: Origin,
    ) -> Option<&mut [u8]> {
        let frame = self.reserve(VNET_HDR_LEN + ethernet_len, verdict, origin)?;
        let (header, ethernet) = frame.split_at_mut(VNET_HDR_LEN);
        header.fill(0);
        Some(ethernet)
    }

    /// Appends a frame of `ethernet_len` bytes that `emit` writes (returning the bytes it
    /// wrote, 0 when it could not); false, and nothing appended, when the arena is full or
    /// `emit` failed.
    pub fn push_built(
        &mut self,
        ethernet_len: usize,
        verdict: Verdict,
        origin: Origin,
        emit: impl FnOnce(&mut [u8]) -> usize,
    ) -> bool {
        let Some(buf) = self.push_ethernet(ethernet_len, verdict, origin) else {
            return false;
        };
        if emit(buf) == 0 {
            self.pop();
            return false;
        }
        true
    }

    /// Appends a copy of `frame` (virtio header + Ethernet); false when the arena is full.
    pub fn push_copy(&mut self, frame: &[u8], verdict: Verdict, origin: Origin) -> bool {
        match self.reserve(frame.len(), verdict, origin) {
            Some(slot) => {
                slot.copy_from_slice(frame);
                true
            }
            None => false,
        }
    }

    /// Removes the last frame (a writer that could not finish it).
    pub fn pop(&mut self) {
        if let Some(meta) = self.frames.pop() {
            self.used = meta.start;
        }
    }

    /// Frame `i`'s metadata.
    pub fn meta(&self, i: usize) -> Option<&Meta> {
        self.frames.get(i)
    }

    /// Every frame's metadata, in order.
    pub fn metas(&self) -> &[Meta] {
        &self.frames
    }

    /// Frame `i` (virtio header + Ethernet).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let meta = self.frames.get(i)?;
        self.buf.get(meta.start..meta.start + meta.len)
    }

    /// Frame `i`, writable.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let meta = *self.frames.get(i)?;
        self.buf.get_mut(meta.start..meta.start + meta.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortId;

    #[test]
    fn frames_keep_their_bytes_order_and_position() {
        let mut generated = Generated::with_capacity(64, 3);
        generated.set_position(2);
        let ethernet = generated
            .push_ethernet(4, Verdict::Forward(PortId(1)), Origin::Switch)
            .unwrap();
        ethernet.copy_from_slice(&[1, 2, 3, 4]);
        generated.set_position(5);
        assert!(generated.push_copy(&[9; 12], Verdict::Consumed, Origin::Routed));
        assert_eq!(generated.len(), 2);
        let first = generated.frame(0).unwrap();
        assert_eq!(&first[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&first[VNET_HDR_LEN..], &[1, 2, 3, 4]);
        assert_eq!(generated.meta(0).unwrap().after, 2);
        assert_eq!(generated.meta(1).unwrap().after, 5);
        assert_eq!(generated.meta(1).unwrap().origin, Origin::Routed);
        assert_eq!(generated.frame(1).unwrap(), &[9; 12]);
        generated.frame_mut(1).unwrap()[0] = 7;
        assert_eq!(generated.frame(1).unwrap()[0], 7);
        assert!(generated.frame(2).is_none());
    }

    #[test]
    fn bounded_by_bytes_and_frames() {
        let mut generated = Generated::with_capacity(30, 2);
        assert!(generated.has_room(2, 30));
        assert!(!generated.has_room(3, 3));
        assert!(!generated.has_room(1, 31));
        assert!(
            generated
                .push_ethernet(21, Verdict::Consumed, Origin::Switch)
                .is_none(),
            "31 bytes do not fit 30"
        );
        assert!(generated.push_copy(&[0; 20], Verdict::Consumed, Origin::Switch));
        assert!(!generated.push_copy(&[0; 11], Verdict::Consumed, Origin::Switch));
        assert!(generated.push_copy(&[0; 10], Verdict::Consumed, Origin::Switch));
        assert!(
            !generated.push_copy(&[], Verdict::Consumed, Origin::Switch),
            "2 frames max"
        );
        generated.pop();
        assert_eq!(generated.len(), 1);
        assert!(generated.has_room(1, 10));
        generated.clear();
        assert!(generated.is_empty());
        assert!(generated.has_room(2, 30));
    }
}
