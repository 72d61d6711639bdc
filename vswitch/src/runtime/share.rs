//! How a worker shares its time among the queues it serves, and when it stops reading a port
//! that floods it with frames it only drops.
//!
//! The kernel's bridge switches a frame in the sender's own `send()`, so a container that
//! floods pays for its flood with its own CPU time. Here a `send()` into a TAP or a veth is
//! cheap for the sender and the worker pays for every frame it reads, on the core it shares
//! with every other flow it serves. Two rules give that cost back to the sender:
//!
//! - **Fair share of time.** Each queue has a virtual run time: the worker's time spent on
//!   its batches (two clock reads per batch). Among the queues ready in one loop, a queue more
//!   than [`SLICE_NS`] ahead of the least served ready one waits (epoll is level-triggered:
//!   it is ready again at the next wait), so a busy flow's port gets its batch between the
//!   flood's. A queue that was idle comes back at most [`SLICE_NS`] behind the others, so it
//!   cannot bank idle time. When it is the only ready queue a flooding port is still served:
//!   the share costs nothing while nobody else wants the worker. The uplink and the VTEP
//!   carry many containers' traffic: they are charged a [`SHARED_WEIGHT`]th of their time.
//!   The time is wall-clock time, so a worker preempted in a batch charges the wait to that
//!   batch's queue: on a loaded host the shares are noisy, never starved.
//! - **Back-off of a wasteful port.** A container port whose last [`WINDOW_FRAMES`] frames
//!   came within [`WINDOW_MS`] and were nearly all dropped (port security, ARP and echo rate
//!   limits, frames to the gateway, policy) is left unread for a while: 1 ms, doubling at each
//!   wasteful window that follows, up to [`BACKOFF_MAX_MS`]. Its queue fills meanwhile and the
//!   kernel drops what overflows at the sender (a TAP's `tx_dropped` in the container, a
//!   veth's AF_PACKET ring on the switch's side), which is where the kernel's bridge would
//!   have charged the work. The first window that is not wasteful ends the back-off, and so
//!   does a quiet spell (no frame for twice [`BACKOFF_MAX_MS`]). Windows are timed when the
//!   worker reads the frames: after a back-off the queued frames are read at once, so a port
//!   once backed off stays so while it sends ~[`WINDOW_FRAMES`] frames per back-off period
//!   plus [`WINDOW_MS`] (~4,500 a second at the longest) that are nearly all dropped. The
//!   uplink and the VTEP are never backed off: what arrives there is not one container's
//!   doing.

/// How far (ns of worker time) a ready queue may run ahead of the least served ready queue
/// before it waits for it; also how much credit a queue that was idle keeps.
pub(crate) const SLICE_NS: u64 = 500_000;

/// Frames per back-off judgement.
pub(crate) const WINDOW_FRAMES: u64 = 256;

/// A window is wasteful only when its frames came faster than this (ms for
/// [`WINDOW_FRAMES`], ~10,000 frames/s): a slow sender of dropped frames costs little.
pub(crate) const WINDOW_MS: u64 = 25;

/// The longest back-off (ms): a flooding port is read at most ~[`WINDOW_FRAMES`] frames per
/// this interval.
pub(crate) const BACKOFF_MAX_MS: u64 = 32;

/// The uplink's and the VTEP's time counts for this much less than a container port's: they
/// carry the traffic of many.
pub(crate) const SHARED_WEIGHT: u64 = 4;

/// A window is wasteful when at least 7/8 of its frames were dropped.
const WASTE_NUMERATOR: u64 = 7;
const WASTE_DENOMINATOR: u64 = 8;

/// One queue's scheduling state, kept by the worker that serves it.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueShare {
    /// Worker time spent on this queue's batches (ns), adjusted by [`Floor::ready`].
    vruntime: u64,
    window_start_ms: u64,
    /// When the last frames were read (ms).
    last_ms: u64,
    window_frames: u64,
    window_dropped: u64,
    /// Consecutive wasteful windows (0: not backing off).
    level: u32,
}

impl QueueShare {
    /// Adds the worker time spent on one batch, divided by the queue's `weight` (1 for a
    /// container port, [`SHARED_WEIGHT`] for the uplink and the VTEP).
    pub(crate) fn charge(&mut self, ns: u64, weight: u64) {
        self.vruntime = self.vruntime.saturating_add(ns / weight.max(1));
    }

    /// True when the queue may be served in a loop whose least served ready queue is at
    /// `floor` (see [`Share`]).
    pub(crate) fn may_run(&self, floor: u64) -> bool {
        self.vruntime <= floor.saturating_add(SLICE_NS)
    }

    /// Accounts one batch of `frames`, `dropped` of them dropped, read at `now_ms`. Returns
    /// how long (ms) to leave the queue unread when a wasteful window just ended.
    pub(crate) fn observe(&mut self, now_ms: u64, frames: u64, dropped: u64) -> Option<u64> {
        if frames == 0 {
            return None;
        }
        if self.window_frames == 0 {
            if now_ms.saturating_sub(self.last_ms) > 2 * BACKOFF_MAX_MS {
                // A quiet spell: a new flood starts its back-off from the shortest.
                self.level = 0;
            }
            self.window_start_ms = now_ms;
        }
        self.last_ms = now_ms;
        self.window_frames += frames;
        self.window_dropped += dropped.min(frames);
        if self.window_frames < WINDOW_FRAMES {
            return None;
        }
        let fast = now_ms.saturating_sub(self.window_start_ms) < WINDOW_MS;
        let wasteful =
            fast && self.window_dropped * WASTE_DENOMINATOR >= self.window_frames * WASTE_NUMERATOR;
        self.window_frames = 0;
        self.window_dropped = 0;
        if !wasteful {
            self.level = 0;
            return None;
        }
        self.level = self.level.saturating_add(1);
        let ms = 1u64
            .checked_shl(self.level - 1)
            .unwrap_or(BACKOFF_MAX_MS)
            .min(BACKOFF_MAX_MS);
        Some(ms)
    }

    /// True while the queue is in a run of wasteful windows.
    #[cfg(test)]
    pub(crate) fn backing_off(&self) -> bool {
        self.level > 0
    }
}

/// The worker's clock of virtual time: never behind the least served ready queue.
///
/// A loop starts with [`Share::start`], passes each ready queue to [`Floor::ready`] (a queue
/// that fell more than [`SLICE_NS`] behind, because it was idle, is brought up to that
/// distance) and ends the pass with [`Share::settle`], which gives the least served ready
/// queue's virtual time: the loop's floor for [`QueueShare::may_run`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Share {
    vclock: u64,
}

/// One loop's pass over its ready queues (see [`Share`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    low: u64,
    floor: u64,
}

impl Floor {
    /// Accounts a ready queue.
    pub(crate) fn ready(&mut self, queue: &mut QueueShare) {
        queue.vruntime = queue.vruntime.max(self.low);
        self.floor = self.floor.min(queue.vruntime);
    }
}

impl Share {
    /// Starts a loop's pass over its ready queues.
    pub(crate) fn start(&self) -> Floor {
        Floor {
            low: self.vclock.saturating_sub(SLICE_NS),
            floor: u64::MAX,
        }
    }

    /// Ends the pass: the loop's floor.
    pub(crate) fn settle(&mut self, pass: Floor) -> u64 {
        if pass.floor == u64::MAX {
            return self.vclock;
        }
        self.vclock = self.vclock.max(pass.floor);
        pass.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves a loop where `ready` queues are ready, each batch costing `cost[i]` ns;
    /// returns which were served.
    fn round(
        share: &mut Share,
        queues: &mut [QueueShare],
        ready: &[usize],
        cost: &[u64],
    ) -> Vec<usize> {
        let mut pass = share.start();
        for &i in ready {
            pass.ready(&mut queues[i]);
        }
        let floor = share.settle(pass);
        let mut served = Vec::new();
        for &i in ready {
            if queues[i].may_run(floor) {
                queues[i].charge(cost[i], 1);
                served.push(i);
            }
        }
        served
    }

    #[test]
    fn busy_queues_share_time_not_batches() {
        // Queue 0's batches cost 10x queue 1's: both always ready, they get equal time.
        let mut share = Share::default();
        let mut queues = vec![QueueShare::default(); 2];
        let cost = [1_000_000, 100_000];
        let mut time = [0u64; 2];
        for _ in 0..10_000 {
            for i in round(&mut share, &mut queues, &[0, 1], &cost) {
                time[i] += cost[i];
            }
        }
        let ratio = time[0] as f64 / time[1] as f64;
        assert!((0.8..1.25).contains(&ratio), "{time:?}");
    }

    #[test]
    fn a_lone_queue_is_always_served() {
        let mut share = Share::default();
        let mut queues = vec![QueueShare::default(); 2];
        for _ in 0..1_000 {
            assert_eq!(
                round(&mut share, &mut queues, &[0], &[1_000_000, 0]),
                vec![0]
            );
        }
        // Queue 1 was idle all along: it comes back with one slice of credit, not a second's.
        let mut first_served = 0;
        for n in 0..100 {
            let served = round(&mut share, &mut queues, &[0, 1], &[1_000_000, 1_000_000]);
            if served.contains(&0) {
                first_served = n;
                break;
            }
        }
        assert!(first_served <= 2, "queue 0 waited {first_served} loops");
    }

    #[test]
    fn a_flood_of_drops_backs_off_and_doubles() {
        let mut q = QueueShare::default();
        // 256 frames within a millisecond, all dropped: back off 1 ms, then 2, 4, ... 32.
        let mut backoffs = Vec::new();
        for t in 0..8 {
            for _ in 0..3 {
                assert_eq!(q.observe(t * 10, 64, 64), None);
            }
            backoffs.push(q.observe(t * 10, 64, 64).expect("wasteful"));
        }
        assert_eq!(backoffs, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        // A window that is not wasteful ends it.
        for _ in 0..4 {
            assert_eq!(q.observe(900, 64, 8), None);
        }
        assert!(!q.backing_off());
        assert_eq!(
            (0..4)
                .filter_map(|_| q.observe(1_000, 64, 64))
                .collect::<Vec<_>>(),
            vec![1]
        );
        // Backing off again, then quiet for a while: the next flood starts from 1 ms.
        assert_eq!(
            (0..4)
                .filter_map(|_| q.observe(1_002, 64, 64))
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            (0..4)
                .filter_map(|_| q.observe(5_000, 64, 64))
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn the_uplink_weighs_less() {
        // Queue 0 (a container port) and queue 1 (the uplink, weight 4), equal batch costs:
        // the uplink gets about four times the time.
        let mut share = Share::default();
        let mut queues = vec![QueueShare::default(); 2];
        let mut served = [0u64; 2];
        for _ in 0..10_000 {
            let mut pass = share.start();
            for q in queues.iter_mut() {
                pass.ready(q);
            }
            let floor = share.settle(pass);
            for (i, weight) in [(0, 1), (1, SHARED_WEIGHT)] {
                if queues[i].may_run(floor) {
                    queues[i].charge(100_000, weight);
                    served[i] += 1;
                }
            }
        }
        let ratio = served[1] as f64 / served[0] as f64;
        assert!((3.0..5.0).contains(&ratio), "{served:?}");
    }

    #[test]
    fn slow_or_useful_traffic_is_never_backed_off() {
        let mut q = QueueShare::default();
        // All dropped but slow: 256 frames over 256 ms.
        for t in 0..2_560 {
            assert_eq!(q.observe(t, 1, 1), None);
        }
        // Fast, but half delivered.
        for _ in 0..1_000 {
            assert_eq!(q.observe(5_000, 64, 32), None);
        }
        assert!(!q.backing_off());
    }
}
