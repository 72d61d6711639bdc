//! One worker's ring of captured frames: a byte arena and a list of records, both allocated
//! once. The worker appends; the reader swaps the filled arena and list for its empty ones
//! (same capacity), so neither side allocates once the capture runs.

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    /// When it was captured, nanoseconds since the Unix epoch.
    pub(super) unix_nanos: u64,
    /// Where its captured bytes are in the arena.
    pub(super) start: usize,
    /// How many bytes were captured.
    pub(super) len: usize,
    /// The frame's length on the wire.
    pub(super) original: u32,
}

/// A bounded arena of captured frames.
#[derive(Debug)]
pub(super) struct Ring {
    data: Vec<u8>,
    records: Vec<Record>,
    /// Frames appended since the capture started (not reset by swaps).
    captured: u64,
    /// Frames refused because the arena or the list was full.
    dropped: u64,
}

impl Ring {
    /// An empty ring of `bytes` bytes and `records` records.
    pub(super) fn new(bytes: usize, records: usize) -> Ring {
        Ring {
            data: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records),
            captured: 0,
            dropped: 0,
        }
    }

    /// Appends `head` + `body`, cut at `snaplen` bytes; a frame that does not fit is dropped
    /// and counted. Never allocates.
    pub(super) fn push(&mut self, unix_nanos: u64, head: &[u8], body: &[u8], snaplen: usize) {
        let original = head.len() + body.len();
        let len = original.min(snaplen);
        if self.records.len() == self.records.capacity()
            || self.data.capacity() - self.data.len() < len
        {
            self.dropped += 1;
            return;
        }
        let start = self.data.len();
        let from_head = head.len().min(len);
        self.data.extend_from_slice(&head[..from_head]);
        self.data.extend_from_slice(&body[..len - from_head]);
        self.records.push(Record {
            unix_nanos,
            start,
            len,
            original: u32::try_from(original).unwrap_or(u32::MAX),
        });
        self.captured += 1;
    }

    /// Exchanges this ring's frames with `other`'s (which the reader has emptied); the
    /// counters stay.
    pub(super) fn swap_frames(&mut self, other: &mut Ring) {
        std::mem::swap(&mut self.data, &mut other.data);
        std::mem::swap(&mut self.records, &mut other.records);
    }

    /// Empties the ring, keeping its capacity.
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
    }

    /// The frames held.
    pub(super) fn records(&self) -> &[Record] {
        &self.records
    }

    /// The captured bytes of `record`.
    pub(super) fn bytes(&self, record: &Record) -> &[u8] {
        self.data
            .get(record.start..record.start + record.len)
            .unwrap_or_default()
    }

    pub(super) fn captured(&self) -> u64 {
        self.captured
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_cuts_at_the_snap_length_across_head_and_body() {
        let mut ring = Ring::new(64, 4);
        ring.push(1, &[1, 2, 3], &[4, 5, 6], 4);
        ring.push(2, &[], &[7, 8], 100);
        let records = ring.records();
        assert_eq!(ring.bytes(&records[0]), &[1, 2, 3, 4]);
        assert_eq!(records[0].original, 6);
        assert_eq!(ring.bytes(&records[1]), &[7, 8]);
        assert_eq!(ring.captured(), 2);
    }

    #[test]
    fn swap_keeps_counters_and_capacity() {
        let mut ring = Ring::new(8, 2);
        let mut spare = Ring::new(8, 2);
        ring.push(1, &[], &[0; 6], 100);
        ring.push(2, &[], &[0; 6], 100);
        assert_eq!(ring.dropped(), 1, "no room for 6 more bytes");
        ring.swap_frames(&mut spare);
        assert!(ring.records().is_empty());
        assert_eq!(spare.records().len(), 1);
        assert_eq!((ring.captured(), ring.dropped()), (1, 1));
        spare.clear();
        ring.swap_frames(&mut spare);
        ring.push(3, &[], &[0; 8], 100);
        assert_eq!(ring.captured(), 2);
    }
}
