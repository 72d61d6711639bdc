//! Receive: `recvmmsg` into the batch, `UDP_GRO` buffers merged in place and spread one
//! datagram per slot, the stash for what does not fit.
//!
//! Datagrams are received straight into the batch's free slots at offset [`RX_PAD`]; the
//! [`RX_PAD`] bytes in front are zeroed. A datagram longer than a slot (impossible with
//! [`RxBatch`]'s 64 KiB slots, kept for safety) is dropped and counted in
//! [`VtepQueue::truncated`].
//!
//! With `UDP_GRO` on, one received buffer may hold several datagrams of one flow (the kernel
//! coalesces them, or a sender's `UDP_SEGMENT` super-datagram reaches us whole), all of the
//! size its `UDP_GRO` control message gives but the last. When its leading datagrams carry
//! the same VXLAN header and consecutive TCP segments of one flow (the rules of
//! [`crate::wire::gro`], checksums verified), they are first merged in place into one
//! datagram whose inner frame is the super-frame: each payload moves once toward the front,
//! and the run's MSS goes in the datagram's [`RX_PAD`] bytes for
//! `pipeline::vxlan_input::decap`. A bulk TCP flow then costs one slot, one pass of
//! the pipeline and one TAP write per buffer instead of one per segment, and nothing is
//! copied between slots. What is left of the buffer is split into its datagrams,
//! every one committed to its own slot as `[RX_PAD][datagram]` with the buffer's peer, in
//! order: the first stays where it was received (or moves down), the others are copied to the
//! slots after it. The queue asks `recvmmsg` for only as many buffers as are expected to fit
//! once split (from the most datagrams per buffer seen in the previous call), and stops
//! receiving when the rest of the batch would likely not hold the next buffer. What does not
//! fit anyway is kept in a per-queue stash (room for one `recvmmsg` worth of buffers,
//! allocated once; its pages are only touched when used) and handed over, in order, at the
//! start of the next [`VtepQueue::recv_batch`], before anything new is received.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use super::{RX_BURST, RX_DATAGRAM_MAX, RX_PAD, VtepQueue};
use crate::port::RxBatch;
use crate::sys::batch::MAX_FRAME_LEN;
use crate::wire::VNET_HDR_LEN;
use crate::wire::gro;

/// One received buffer: `len` bytes at `start` (in the stash; unused for the batch), holding
/// datagrams of `segment` bytes (the last may be shorter). When its first `merged` datagrams
/// were merged in place into one ([`gro::merge_in_place`]), that one is `merged_len` bytes
/// long and carries `mss` in its pad; the others are where they were received.
#[derive(Clone, Copy, Debug)]
pub(super) struct Coalesced {
    start: usize,
    len: usize,
    segment: usize,
    peer: SocketAddr,
    merged: usize,
    merged_len: usize,
    mss: u16,
}

impl Coalesced {
    pub(super) const EMPTY: Coalesced = Coalesced {
        start: 0,
        len: 0,
        segment: 0,
        peer: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        merged: 0,
        merged_len: 0,
        mss: 0,
    };

    /// A buffer as received: nothing merged.
    fn received(len: usize, segment: usize, peer: SocketAddr) -> Coalesced {
        Coalesced {
            len,
            segment,
            peer,
            ..Coalesced::EMPTY
        }
    }

    /// How many datagrams it holds (an empty datagram is one; merged ones count as one).
    fn count(&self) -> usize {
        datagram_count(self.len, self.segment) - self.merged.saturating_sub(1)
    }

    /// Where datagram `index` lies, relative to the buffer's start.
    fn datagram(&self, index: usize) -> Range<usize> {
        if self.merged < 2 {
            datagram_range(self.len, self.segment, index)
        } else if index == 0 {
            0..self.merged_len
        } else {
            datagram_range(self.len, self.segment, index + self.merged - 1)
        }
    }

    /// The [`RX_PAD`] bytes of datagram `index`.
    fn pad(&self, index: usize) -> [u8; RX_PAD] {
        if index == 0 && self.merged >= 2 {
            self.mss.to_be_bytes()
        } else {
            [0; RX_PAD]
        }
    }

    /// The datagrams from `index` on, as a buffer of their own (for the stash).
    fn rest(&self, index: usize) -> Coalesced {
        if index == 0 {
            *self
        } else {
            Coalesced::received(
                self.len - self.datagram(index).start,
                self.segment,
                self.peer,
            )
        }
    }
}

/// How many datagrams a received buffer of `len` bytes holds when each is `segment` bytes
/// (the last may be shorter); `segment` 0 (no `UDP_GRO` message) means one datagram.
fn datagram_count(len: usize, segment: usize) -> usize {
    if segment == 0 || len <= segment {
        1
    } else {
        len.div_ceil(segment)
    }
}

/// Where datagram `index` lies in a buffer of `len` bytes of `segment`-byte datagrams.
fn datagram_range(len: usize, segment: usize, index: usize) -> Range<usize> {
    if segment == 0 || len <= segment {
        return 0..len;
    }
    let start = (index * segment).min(len);
    start..(start + segment).min(len)
}

/// Received buffers that did not fit in the batch, kept for the next call.
pub(super) struct RxStash {
    /// Room for [`RX_BURST`] buffers of [`RX_DATAGRAM_MAX`] bytes (what one `recvmmsg` can
    /// return), allocated zeroed once: pages are only touched when used.
    bytes: Box<[u8]>,
    buffers: Box<[Coalesced]>,
    /// Buffers stashed.
    count: usize,
    /// Bytes of `bytes` used.
    used: usize,
    /// The first buffer not yet handed over completely, and its next datagram.
    next: usize,
    next_datagram: usize,
}

impl fmt::Debug for RxStash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxStash")
            .field("count", &self.count)
            .field("used", &self.used)
            .field("next", &self.next)
            .field("next_datagram", &self.next_datagram)
            .finish_non_exhaustive()
    }
}

impl RxStash {
    pub(super) fn new() -> RxStash {
        RxStash {
            bytes: vec![0u8; RX_BURST * RX_DATAGRAM_MAX].into_boxed_slice(),
            buffers: vec![Coalesced::EMPTY; RX_BURST].into_boxed_slice(),
            count: 0,
            used: 0,
            next: 0,
            next_datagram: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.next >= self.count
    }

    /// Datagrams not yet handed over.
    pub(super) fn pending(&self) -> usize {
        let mut pending = 0;
        for (index, buffer) in self
            .buffers
            .iter()
            .enumerate()
            .take(self.count)
            .skip(self.next)
        {
            pending += buffer.count();
            if index == self.next {
                pending -= self.next_datagram.min(buffer.count());
            }
        }
        pending
    }

    /// Keeps `data` (datagrams of `segment` bytes from `peer`); false when there is no room
    /// (cannot happen: the stash is filled only when empty, from one `recvmmsg`).
    fn push(&mut self, data: &[u8], layout: Coalesced) -> bool {
        let start = self.used;
        let (Some(slot), Some(target)) = (
            self.buffers.get_mut(self.count),
            self.bytes.get_mut(start..start + data.len()),
        ) else {
            return false;
        };
        target.copy_from_slice(data);
        *slot = Coalesced {
            start,
            len: data.len(),
            ..layout
        };
        self.count += 1;
        self.used += data.len();
        true
    }

    /// Hands stashed datagrams over to `batch`, in order, until it is full or the stash
    /// empty; returns how many.
    fn drain(&mut self, batch: &mut RxBatch) -> usize {
        let mut added = 0;
        while !self.is_empty() {
            let Some(buffer) = self.buffers.get(self.next).copied() else {
                break;
            };
            while self.next_datagram < buffer.count() {
                let Some(slot) = batch.next_slot() else {
                    return added;
                };
                let range = buffer.datagram(self.next_datagram);
                let len = range.len();
                let source = self
                    .bytes
                    .get(buffer.start + range.start..buffer.start + range.end);
                if let (Some(source), Some(target)) = (source, slot.get_mut(RX_PAD..RX_PAD + len)) {
                    target.copy_from_slice(source);
                    slot[..RX_PAD].copy_from_slice(&buffer.pad(self.next_datagram));
                    batch.commit_from(RX_PAD + len, buffer.peer);
                    added += 1;
                }
                self.next_datagram += 1;
            }
            self.next += 1;
            self.next_datagram = 0;
        }
        self.count = 0;
        self.used = 0;
        self.next = 0;
        added
    }
}

/// Copies `len` bytes at `RX_PAD + offset` of free slot `from` to `RX_PAD` of free slot
/// `to` (`from != to`) and writes `pad` in the target's [`RX_PAD`] bytes. False when the
/// slots or ranges are not there (cannot happen for ranges of a received buffer).
fn copy_between(
    batch: &mut RxBatch,
    from: usize,
    offset: usize,
    len: usize,
    to: usize,
    pad: [u8; RX_PAD],
) -> bool {
    let mut slots = batch.free_slots();
    let (source, target) = if from < to {
        let source = slots.nth(from);
        (source, slots.nth(to - from - 1))
    } else {
        let target = slots.nth(to);
        (slots.nth(from - to - 1), target)
    };
    let (Some(source), Some(target)) = (source, target) else {
        return false;
    };
    let (Some(source), Some(target)) = (
        source.get(RX_PAD + offset..RX_PAD + offset + len),
        target.get_mut(..RX_PAD + len),
    ) else {
        return false;
    };
    target[RX_PAD..].copy_from_slice(source);
    target[..RX_PAD].copy_from_slice(&pad);
    true
}

/// Writes `pad` in the [`RX_PAD`] bytes of free slot `index`.
fn write_pad(batch: &mut RxBatch, index: usize, pad: [u8; RX_PAD]) {
    if let Some(target) = batch
        .free_slots()
        .nth(index)
        .and_then(|slot| slot.get_mut(..RX_PAD))
    {
        target.copy_from_slice(&pad);
    }
}

/// Merges in place the leading run of TCP segments of the received buffer in free slot
/// `index` ([`gro::merge_in_place`]: the VXLAN headers must be equal too) and records it in
/// `buffer`. The datagrams after the run stay where they are.
fn merge_buffer(batch: &mut RxBatch, index: usize, buffer: &mut Coalesced) {
    let count = buffer.count();
    let Some(slot) = batch.free_slots().nth(index) else {
        return;
    };
    // Datagram `j` is at `RX_PAD + range.start`: its view (virtio-header-sized prefix, then
    // the inner Ethernet frame) starts RX_PAD bytes earlier, where the VXLAN header fills
    // the prefix but its first RX_PAD bytes.
    let (len, segment) = (buffer.len, buffer.segment);
    let view = |j: usize| {
        let range = datagram_range(len, segment, j);
        range.start..RX_PAD + range.end
    };
    // Segments sent with remote checksum offload carry partial TCP checksums, which the
    // outer UDP checksum (verified by the kernel) vouches for: merged without verifying them.
    // A VTEP that does not take the option drops the merged datagram as it would each one.
    let rco = slot
        .get(RX_PAD..VNET_HDR_LEN)
        .and_then(|header| ::vxlan::VxlanPacket::new_checked(header).ok())
        .is_some_and(|header| header.reserved_after_flags() & ::vxlan::header::RCO_FLAG != 0);
    if let Some(merged) = gro::merge_in_place(slot, count, view, RX_PAD..VNET_HDR_LEN, rco) {
        buffer.merged = merged.segments;
        buffer.merged_len = merged.len - RX_PAD;
        buffer.mss = merged.mss;
    }
}

impl VtepQueue {
    /// Receives waiting datagrams (`recvmmsg`, up to the batch's free slots) without
    /// blocking. Each one is committed with [`RxBatch::commit_from`] (the sender's address)
    /// as `[RX_PAD zero bytes][UDP payload]`, i.e. written at offset [`RX_PAD`] of the slot
    /// and committed with length `RX_PAD + payload length`. A `UDP_GRO` buffer is split into
    /// its datagrams, one per slot; datagrams that do not fit are kept, in order, for the
    /// next call (see the module docs). Datagrams are not validated here (the pipeline's
    /// VXLAN stage does it and counts every drop).
    ///
    /// Datagrams still waiting in the queue's stash are handed over first; the socket is
    /// read only once the stash is empty. While the stash holds datagrams the queue's fd
    /// stays readable (its doorbell rings), so a worker that polls the fd comes back for
    /// them even when nothing new arrives.
    ///
    /// # Errors
    /// The kernel's error, other than "nothing to read" (then `Ok(0)`).
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut added = self.gro.stash.drain(batch);
        while !batch.is_full() && self.gro.stash.is_empty() {
            let free = batch.capacity() - batch.len();
            let expected = self.gro.expected.max(1);
            if added > 0 && free < expected {
                // The next buffer would likely not fit: leave it in the socket.
                break;
            }
            let want = (free / expected).clamp(1, self.receiver.capacity());
            let received = match self.receiver.recv(
                &self.socket,
                batch
                    .free_slots()
                    .take(want)
                    .map(|slot| slot.get_mut(RX_PAD..).unwrap_or_default()),
            ) {
                Ok(received) => received,
                // Hand over what this call already added; a lasting error shows next call.
                Err(_) if added > 0 => break,
                Err(error) => return Err(error),
            };
            if received == 0 {
                break;
            }
            added += self.spread(batch, received);
            if received < want {
                break;
            }
        }
        // An eventfd write or read of 1 cannot fail (no overflow, the fd is ours): the
        // error, if any, is the kernel's to report next call.
        let _ = if self.gro.stash.is_empty() {
            self.ready.silence()
        } else {
            self.ready.ring()
        };
        Ok(added)
    }

    /// Splits the `received` buffers of the last `recvmmsg` (in the first free slots of
    /// `batch`) into datagrams, one per slot, commits those that fit and stashes the rest;
    /// returns how many were committed.
    fn spread(&mut self, batch: &mut RxBatch, received: usize) -> usize {
        // 1. Describe the buffers (source slot and layout); drop truncated ones.
        let mut kept = 0;
        let mut most = 1;
        for i in 0..received {
            let Some(datagram) = self.receiver.datagram(i) else {
                break;
            };
            if datagram.truncated || RX_PAD + datagram.len > MAX_FRAME_LEN {
                self.truncated += 1;
                continue;
            }
            let mut buffer = Coalesced::received(
                datagram.len,
                datagram.segment_size.map_or(0, usize::from),
                datagram.peer.unwrap_or(Coalesced::EMPTY.peer),
            );
            if buffer.count() > 1 {
                self.gro.coalesced += 1;
                merge_buffer(batch, i, &mut buffer);
                if buffer.merged >= 2 {
                    self.gro.merged += 1;
                }
            }
            most = most.max(buffer.count());
            if let Some(entry) = self.gro.buffers.get_mut(kept) {
                *entry = (i, buffer);
                kept += 1;
            }
        }
        self.gro.expected = most;
        // 2. Close the gaps left by dropped buffers: buffer `k` moves down to slot `k`
        // (in order, so no buffer is overwritten before it moved).
        for k in 0..kept {
            let Some(&(source, buffer)) = self.gro.buffers.get(k) else {
                break;
            };
            if source != k {
                copy_between(batch, source, 0, buffer.len, k, [0; RX_PAD]);
                if let Some(entry) = self.gro.buffers.get_mut(k) {
                    entry.0 = k;
                }
            }
        }
        // 3. Which datagrams fit: buffers before `full` entirely, buffer `full` (if any) its
        // first `partial` datagrams.
        let free = batch.capacity() - batch.len();
        let mut placed = 0;
        let mut full = kept;
        let mut partial = 0;
        for (k, (_, buffer)) in self.gro.buffers.iter().take(kept).enumerate() {
            let count = buffer.count();
            if placed + count > free {
                full = k;
                partial = free - placed;
                break;
            }
            placed += count;
        }
        // 4. Stash what does not fit, before anything is overwritten.
        for (k, (_, buffer)) in self.gro.buffers.iter().enumerate().take(kept).skip(full) {
            let skip = if k == full { partial } else { 0 };
            let from = buffer.datagram(skip).start;
            let Some(data) = batch
                .free_slots()
                .nth(k)
                .and_then(|slot| slot.get(RX_PAD + from..RX_PAD + buffer.len))
            else {
                continue;
            };
            // The rest of a split buffer is still datagrams of `segment` bytes.
            if !self.gro.stash.push(data, buffer.rest(skip)) {
                self.truncated += 1;
            }
        }
        // 5. Spread the datagrams that fit, last buffer first: buffer `k` (in slot `k`) goes
        // to slots `first[k]..first[k] + n` with `first[k] >= k`, so every target slot is
        // either free already or the buffer's own slot (its first datagram, which stays).
        let fitting = if partial > 0 { full + 1 } else { full };
        let mut end = placed + partial;
        for k in (0..fitting).rev() {
            let Some(&(_, buffer)) = self.gro.buffers.get(k) else {
                continue;
            };
            let count = if k == full { partial } else { buffer.count() };
            let first = end - count;
            for j in (1..count).rev() {
                let range = buffer.datagram(j);
                copy_between(batch, k, range.start, range.len(), first + j, buffer.pad(j));
            }
            if first == k {
                write_pad(batch, k, buffer.pad(0));
            } else {
                copy_between(batch, k, 0, buffer.datagram(0).len(), first, buffer.pad(0));
            }
            end = first;
        }
        // 6. Commit them in order.
        let mut committed = 0;
        for k in 0..fitting {
            let Some(&(_, buffer)) = self.gro.buffers.get(k) else {
                continue;
            };
            let count = if k == full { partial } else { buffer.count() };
            for j in 0..count {
                batch.commit_from(RX_PAD + buffer.datagram(j).len(), buffer.peer);
                committed += 1;
            }
        }
        committed
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use ::vxlan::Vni;

    use super::super::testing::*;
    use super::*;
    use crate::sys::udp::UdpSocket;
    use crate::wire::gso::Segmenter;

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn receives_datagrams_with_pad_and_peer() {
        let io = loopback_vtep(2);
        let local = queue(&io, 0).local();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload: Vec<u8> = (0u8..68).collect();
        client.send_to(&payload, local).unwrap();
        let mut batch = RxBatch::new(4);
        // Dirty the pad bytes: they must come back zero.
        batch.next_slot().unwrap()[..RX_PAD].fill(0xee);
        receive(&io, &mut batch, 1);
        let frame = batch.frame(0);
        assert_eq!(frame.len(), RX_PAD + payload.len());
        assert_eq!(&frame[..RX_PAD], &[0; RX_PAD]);
        assert_eq!(&frame[RX_PAD..], &payload[..]);
        assert_eq!(batch.peer(0), client.local_addr().unwrap());
    }

    #[test]
    fn datagram_count_and_ranges() {
        // No UDP_GRO message: one datagram, whatever its length (an empty one too).
        assert_eq!(datagram_count(1500, 0), 1);
        assert_eq!(datagram_count(0, 0), 1);
        assert_eq!(datagram_range(1500, 0, 0), 0..1500);
        // A buffer no longer than its segment size is one datagram.
        assert_eq!(datagram_count(1000, 1000), 1);
        assert_eq!(datagram_count(999, 1000), 1);
        // Several: all of the segment size but the last.
        assert_eq!(datagram_count(2500, 1000), 3);
        assert_eq!(datagram_range(2500, 1000, 0), 0..1000);
        assert_eq!(datagram_range(2500, 1000, 1), 1000..2000);
        assert_eq!(datagram_range(2500, 1000, 2), 2000..2500);
        assert_eq!(datagram_count(3000, 1000), 3);
        assert_eq!(datagram_range(3000, 1000, 2), 2000..3000);
        // Out of range: empty, never a panic.
        assert_eq!(datagram_range(2500, 1000, 9), 2500..2500);
    }

    /// Sends `datagrams` (all of `size` bytes but the last) from `socket` to `to` in one
    /// `UDP_SEGMENT` send; datagram `i` is filled with `tag + i`.
    fn send_coalesced(socket: &UdpSocket, to: SocketAddr, sizes: &[usize], tag: u8) {
        let mut payload = Vec::new();
        for (index, &size) in sizes.iter().enumerate() {
            payload.extend(std::iter::repeat_n(
                tag.wrapping_add(u8::try_from(index).unwrap()),
                size,
            ));
        }
        let segment = sizes.first().copied().unwrap_or(0);
        let segment = (sizes.len() > 1).then(|| u16::try_from(segment).unwrap());
        assert_eq!(
            socket.send_to(&payload, to, segment).unwrap(),
            payload.len()
        );
    }

    /// Checks that frame `index` of `batch` is `[RX_PAD zeros][len bytes of fill]`.
    fn check_frame(batch: &RxBatch, index: usize, len: usize, fill: u8, peer: SocketAddr) {
        let frame = batch.frame(index);
        assert_eq!(frame.len(), RX_PAD + len, "frame {index}");
        assert_eq!(&frame[..RX_PAD], &[0; RX_PAD], "frame {index}");
        assert!(
            frame[RX_PAD..].iter().all(|&byte| byte == fill),
            "frame {index} should be filled with {fill}"
        );
        assert_eq!(batch.peer(index), peer, "frame {index}");
    }

    fn readable(queue: &VtepQueue) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn gro_buffers_are_split_one_datagram_per_slot() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        assert!(q.udp_gro(), "UDP_GRO on this kernel");
        let local = q.local();
        let sender = loopback_sender();
        let peer = sender.local_addr().unwrap();
        // A super-datagram of 10 (the last shorter), a single datagram, one of 5.
        send_coalesced(
            &sender,
            local,
            &[100; 9].iter().copied().chain([50]).collect::<Vec<_>>(),
            1,
        );
        send_coalesced(&sender, local, &[77], 20);
        send_coalesced(&sender, local, &[200; 5], 30);
        let mut batch = RxBatch::new(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        while batch.len() < 16 && Instant::now() < deadline {
            q.recv_batch(&mut batch).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(batch.len(), 16);
        for i in 0..9 {
            check_frame(&batch, i, 100, 1 + u8::try_from(i).unwrap(), peer);
        }
        check_frame(&batch, 9, 50, 10, peer);
        check_frame(&batch, 10, 77, 20, peer);
        for i in 0..5 {
            check_frame(&batch, 11 + i, 200, 30 + u8::try_from(i).unwrap(), peer);
        }
        assert!(
            q.gro_coalesced() >= 2,
            "the kernel handed over coalesced buffers"
        );
        assert_eq!(q.pending(), 0);
        assert_eq!(q.truncated(), 0);
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn datagrams_that_do_not_fit_wait_for_the_next_call_and_keep_the_fd_readable() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        let local = q.local();
        let sender = loopback_sender();
        let peer = sender.local_addr().unwrap();
        send_coalesced(&sender, local, &[64; 10], 0);
        send_coalesced(&sender, local, &[32; 3], 100);
        send_coalesced(&sender, local, &[16], 200);
        // Both are waiting before the first read, so one recvmmsg takes them all.
        std::thread::sleep(Duration::from_millis(50));
        let mut sizes = Vec::new();
        let mut batch = RxBatch::new(4);
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < 14 && Instant::now() < deadline {
            batch.clear();
            let added = q.recv_batch(&mut batch).unwrap();
            assert_eq!(added, batch.len());
            sizes.push(added);
            for i in 0..batch.len() {
                assert_eq!(batch.peer(i), peer);
                received.push(batch.frame(i).to_vec());
            }
            // The fd is readable exactly while datagrams wait in the socket or the stash.
            if q.pending() > 0 {
                assert!(
                    readable(&q),
                    "the doorbell rings while {} wait",
                    q.pending()
                );
            }
        }
        assert_eq!(received.len(), 14, "calls handed over {sizes:?}");
        assert_eq!(q.pending(), 0);
        assert!(!readable(&q), "nothing left: the fd is quiet");
        let mut expected: Vec<Vec<u8>> = (0..10u8)
            .map(|i| [vec![0; RX_PAD], vec![i; 64]].concat())
            .collect();
        expected.extend((0..3u8).map(|i| [vec![0; RX_PAD], vec![100 + i; 32]].concat()));
        expected.push([vec![0; RX_PAD], vec![200; 16]].concat());
        assert_eq!(received, expected, "every datagram, in order");
        assert!(sizes.iter().all(|&size| size <= 4));
    }

    /// 10 VXLAN datagrams of equal size: the segments of one TCP flow (MSS 1000), the first
    /// `same_vni` with VNI 5 and the rest with VNI 6.
    fn tcp_datagrams(same_vni: usize, seq: u32) -> Vec<Vec<u8>> {
        let frame = tcp_super_frame(10_000, 1000, seq);
        let mut segments = Vec::new();
        Segmenter::new()
            .segment(&frame, |segment| {
                segments.push(segment[VNET_HDR_LEN..].to_vec())
            })
            .unwrap();
        segments
            .into_iter()
            .enumerate()
            .map(|(index, inner)| {
                let vni = if index < same_vni { 5 } else { 6 };
                [vec![0x08, 0, 0, 0, 0, 0, vni, 0], inner].concat()
            })
            .collect()
    }

    #[test]
    #[ignore = "needs root: opens a VTEP (raw IPv4 socket, CAP_NET_RAW)"]
    fn merged_buffers_keep_their_layout_through_the_stash() {
        let io = loopback_vtep(1);
        let mut q = queue(&io, 0);
        let local = q.local();
        let sender = loopback_sender();
        // Two buffers: 6 segments that merge then 4 that do not (another VNI), twice.
        let buffers = [tcp_datagrams(6, 1), tcp_datagrams(6, 20_001)];
        for datagrams in &buffers {
            let size = u16::try_from(datagrams[0].len()).unwrap();
            sender
                .send_to(&datagrams.concat(), local, Some(size))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        // Room for 4 frames a call: each buffer is 5 frames once merged, so part of the
        // first and the whole second (merged) go through the stash.
        let mut batch = RxBatch::new(4);
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < 10 && Instant::now() < deadline {
            batch.clear();
            q.recv_batch(&mut batch).unwrap();
            received.extend((0..batch.len()).map(|i| batch.frame(i).to_vec()));
        }
        assert_eq!(received.len(), 10, "2 merged datagrams and 8 single ones");
        assert_eq!(q.gro_merged(), 2);
        for (buffer, datagrams) in buffers.iter().enumerate() {
            let frames = &received[buffer * 5..buffer * 5 + 5];
            // The merged one: MSS in the pad, VNI 5, the 6 payloads in order.
            check_tcp_segments(
                &frames[..1],
                Vni::new(5).unwrap(),
                6000,
                1000,
                [1, 20_001][buffer],
            );
            // The others: as sent, zero pad.
            for (frame, datagram) in frames[1..].iter().zip(&datagrams[6..]) {
                assert_eq!(frame[..RX_PAD], [0; RX_PAD]);
                assert_eq!(&frame[RX_PAD..], &datagram[..]);
            }
        }
    }
}
