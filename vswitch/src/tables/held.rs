//! Packets a worker holds while ARP resolves their next hop (Linux's `arp_queue`, per
//! neighbour; ours is per worker, so no lock).
//!
//! Bounded twice: [`PER_NEXT_HOP`] packets per next hop (Linux's `unres_qlen` was 3 packets
//! before it became a byte count) and [`SLOTS`] in all. Each packet is copied into a
//! preallocated slot of [`SLOT_LEN`] bytes, which fits a jumbo frame; larger frames (GSO
//! super-frames) are not held. Nothing allocates after [`HeldQueue::new`]: the arrival order
//! is a preallocated ring of slot indices.

use std::collections::VecDeque;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

use super::neigh::{MAX_PROBES, RETRANSMIT_MS};
use super::snapshot::SubnetId;
use crate::port::PortId;
use crate::wire::VNET_HDR_LEN;

/// Packets held per worker, in all.
pub const SLOTS: usize = 256;

/// Packets held per next hop.
pub const PER_NEXT_HOP: usize = 3;

/// Ethernet header length.
const ETHERNET_HEADER_LEN: usize = 14;

/// The largest IP packet a slot holds: a 9216-byte jumbo frame.
pub const MAX_HELD_IP_LEN: usize = 9_216;

/// Bytes per slot: the virtio header, the Ethernet header and a jumbo IP packet.
pub const SLOT_LEN: usize = VNET_HDR_LEN + ETHERNET_HEADER_LEN + MAX_HELD_IP_LEN;

/// How long a packet waits for its next hop: as long as the ARP retransmissions last.
pub const HOLD_MS: u64 = RETRANSMIT_MS * MAX_PROBES as u64;

/// Why a packet was not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    /// Larger than a slot.
    TooBig,
    /// [`PER_NEXT_HOP`] packets already wait for this next hop.
    NextHopFull,
    /// All [`SLOTS`] are taken.
    Full,
}

/// What is known about a held packet besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The egress subnet (or the uplink's segment).
    pub subnet: SubnetId,
    /// The next hop being resolved on it.
    pub next_hop: IpAddr,
    /// The port the packet came from (drops are counted there; ICMP errors go there).
    pub ingress: PortId,
    /// The sender's MAC (the held frame's source was already rewritten to the gateway's).
    pub sender_mac: [u8; 6],
    /// When the packet is given up.
    pub deadline_ms: u64,
    /// NAT rewrote the packet: an ICMP error quoting it would not be recognised by its
    /// sender, so none is sent when it times out.
    pub translated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    held: Option<Held>,
    len: usize,
    /// Which holding of this slot (a freed slot is reused; stale order entries must not
    /// match the new packet).
    seq: u64,
}

/// One worker's held packets.
#[derive(Debug)]
pub struct HeldQueue {
    buffers: Box<[u8]>,
    slots: Box<[Slot]>,
    /// `(slot index, seq)` in arrival order (may list freed slots until
    /// [`HeldQueue::compact`]).
    order: VecDeque<(usize, u64)>,
    /// Free slot indices.
    free: Vec<usize>,
    /// The seq of the next held packet.
    seq: u64,
}

impl Default for HeldQueue {
    fn default() -> HeldQueue {
        HeldQueue::new()
    }
}

impl HeldQueue {
    /// Allocates [`SLOTS`] slots of [`SLOT_LEN`] bytes.
    pub fn new() -> HeldQueue {
        HeldQueue {
            buffers: vec![0u8; SLOTS * SLOT_LEN].into_boxed_slice(),
            slots: vec![
                Slot {
                    held: None,
                    len: 0,
                    seq: 0,
                };
                SLOTS
            ]
            .into_boxed_slice(),
            order: VecDeque::with_capacity(SLOTS),
            free: (0..SLOTS).rev().collect(),
            seq: 0,
        }
    }

    /// True when the order entry `(index, seq)` is the packet now in its slot.
    fn live(&self, (index, seq): (usize, u64)) -> bool {
        self.slots
            .get(index)
            .is_some_and(|slot| slot.held.is_some() && slot.seq == seq)
    }

    /// Number of held packets.
    pub fn len(&self) -> usize {
        SLOTS - self.free.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.free.len() == SLOTS
    }

    /// Copies `frame` (virtio header + Ethernet) into a free slot.
    ///
    /// # Errors
    /// [`HoldError`] when the frame is too big or a bound is reached; nothing is held then.
    pub fn hold(&mut self, held: Held, frame: &[u8]) -> Result<(), HoldError> {
        if frame.len() > SLOT_LEN {
            return Err(HoldError::TooBig);
        }
        let waiting = self
            .slots
            .iter()
            .filter_map(|slot| slot.held)
            .filter(|other| other.subnet == held.subnet && other.next_hop == held.next_hop)
            .count();
        if waiting >= PER_NEXT_HOP {
            return Err(HoldError::NextHopFull);
        }
        let Some(index) = self.free.pop() else {
            return Err(HoldError::Full);
        };
        let start = index * SLOT_LEN;
        self.buffers[start..start + frame.len()].copy_from_slice(frame);
        self.seq += 1;
        self.slots[index] = Slot {
            held: Some(held),
            len: frame.len(),
            seq: self.seq,
        };
        // Capacity SLOTS, and fewer than SLOTS live entries besides this one: compacting
        // makes room without reallocating.
        if self.order.len() == SLOTS {
            self.compact();
        }
        self.order.push_back((index, self.seq));
        Ok(())
    }

    /// The held slots, oldest first, as indices for [`get`](HeldQueue::get) and
    /// [`release`](HeldQueue::release). Call [`compact`](HeldQueue::compact) after releasing.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.order
            .iter()
            .copied()
            .filter(|&entry| self.live(entry))
            .map(|(index, _)| index)
    }

    /// The `n`th held slot in arrival order (indices into the order ring, including freed
    /// ones: iterate `0..order_len()`).
    pub fn order_len(&self) -> usize {
        self.order.len()
    }

    /// The slot at position `n` of the arrival order, if it still holds a packet.
    pub fn nth(&self, n: usize) -> Option<usize> {
        let entry = *self.order.get(n)?;
        self.live(entry).then_some(entry.0)
    }

    /// The packet in slot `index` and its frame, writable.
    pub fn get(&mut self, index: usize) -> Option<(Held, &mut [u8])> {
        let slot = *self.slots.get(index)?;
        let held = slot.held?;
        let start = index * SLOT_LEN;
        Some((held, &mut self.buffers[start..start + slot.len]))
    }

    /// Frees slot `index`.
    pub fn release(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.held.take().is_some() {
                self.free.push(index);
            }
        }
    }

    /// Drops freed slots from the arrival order.
    pub fn compact(&mut self) {
        let slots = &self.slots;
        self.order.retain(|&(index, seq)| {
            slots
                .get(index)
                .is_some_and(|slot| slot.held.is_some() && slot.seq == seq)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(next_hop: u8) -> Held {
        Held {
            subnet: SubnetId(1),
            next_hop: Ipv4Addr::new(10, 0, 0, next_hop).into(),
            ingress: PortId(1),
            sender_mac: [2, 0, 0, 0, 0, 1],
            deadline_ms: 3_000,
            translated: false,
        }
    }

    #[test]
    fn holds_in_order_and_releases() {
        let mut queue = HeldQueue::new();
        assert!(queue.is_empty());
        queue.hold(held(1), &[1, 1]).unwrap();
        queue.hold(held(2), &[2]).unwrap();
        queue.hold(held(1), &[3, 3, 3]).unwrap();
        assert_eq!(queue.len(), 3);
        let frames: Vec<Vec<u8>> = queue
            .order()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| queue.get(i).unwrap().1.to_vec())
            .collect();
        assert_eq!(frames, vec![vec![1, 1], vec![2], vec![3, 3, 3]]);
        let first = queue.order().next().unwrap();
        queue.release(first);
        queue.release(first);
        assert_eq!(queue.len(), 2, "a double release frees once");
        queue.compact();
        assert_eq!(queue.order_len(), 2);
        let (meta, frame) = queue.get(queue.nth(0).unwrap()).unwrap();
        assert_eq!(
            (meta.next_hop, frame.to_vec()),
            (std::net::IpAddr::from([10, 0, 0, 2]), vec![2])
        );
    }

    #[test]
    fn bounds() {
        let mut queue = HeldQueue::new();
        for _ in 0..PER_NEXT_HOP {
            queue.hold(held(1), &[0]).unwrap();
        }
        assert_eq!(queue.hold(held(1), &[0]), Err(HoldError::NextHopFull));
        assert_eq!(
            queue.hold(held(2), &vec![0; SLOT_LEN + 1]),
            Err(HoldError::TooBig)
        );
        let mut hop = 2u8;
        while queue.len() < SLOTS {
            for _ in 0..PER_NEXT_HOP {
                if queue.len() < SLOTS {
                    queue.hold(held(hop), &[0]).unwrap();
                }
            }
            hop += 1;
        }
        assert_eq!(queue.hold(held(250), &[0]), Err(HoldError::Full));
        // Releasing the oldest and holding again, many times, never grows the order ring.
        for round in 0..1_000u32 {
            let oldest = queue.order().next().unwrap();
            queue.release(oldest);
            if round % 7 == 0 {
                queue.compact();
            }
            let mut fresh = held(1);
            fresh.subnet = SubnetId(1_000 + round);
            queue.hold(fresh, &[9]).unwrap();
            assert!(queue.order_len() <= SLOTS);
            assert_eq!(queue.len(), SLOTS);
            assert_eq!(queue.order().count(), SLOTS, "each packet listed once");
        }
        // The newest is last in the order, though it reuses the oldest's slot.
        let newest = queue.order().last().unwrap();
        assert_eq!(queue.get(newest).unwrap().0.subnet, SubnetId(1_999));
    }
}
