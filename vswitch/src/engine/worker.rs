//! A worker thread: run to completion over the queues it owns.
//!
//! Worker `i` serves queue `i` of every port (`port.io.queues[i]`), so no queue is shared and
//! each queue's `Mutex` is uncontended; it is taken once per batch. Each loop iteration:
//! 1. `epoll_wait` on the worker's queues and its waker (an eventfd that `Engine::publish` and
//!    `Engine::stop` signal), with a timeout so the stop flag and the ageing sweep are seen even
//!    when idle;
//! 2. load the snapshot (one atomic load); when its generation changed, re-sync the epoll
//!    registrations: ports that left are deregistered (and the worker's `Arc<PortIo>` of them
//!    dropped only then, so an fd is never closed while registered), new ports registered;
//! 3. for each ready queue: receive a batch of up to [`BATCH_SIZE`] frames, run the pipeline
//!    on each, then transmit grouped by destination: each destination queue is locked once per
//!    batch, and frames keep their order;
//! 4. worker 0 sweeps aged MACs once a second.
//!
//! Nothing here allocates per packet (the batch, the verdicts and the transmit plan are
//! allocated once), and no packet content can make it panic: every failure is a counted drop.
//! Per-packet conditions are logged at most once per [`LOG_INTERVAL_MS`] per kind.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use tracing::{debug, error, warn};

use super::clock::Clock;
use super::counters::{Event, WorkerCounters};
use super::fdb::{Fdb, Learn};
use super::ratelimit::LogLimiter;
use super::snapshot::{PortEntry, Snapshot};
use crate::pipeline::tx::{self, Prepared};
use crate::pipeline::{self, Context, DropCause, Verdict};
use crate::port::{MAX_PORTS, PortId, PortIo, RxBatch};

/// Frames received from one queue per batch.
pub const BATCH_SIZE: usize = 64;

/// Longest `epoll_wait` (ms): bounds how late an idle worker sees the stop flag if a wake-up
/// were lost, and how late worker 0 runs the ageing sweep.
const WAIT_TIMEOUT_MS: u16 = 500;

/// How often worker 0 removes aged MACs.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// At most one log line per kind of per-packet problem in this interval (ms).
pub const LOG_INTERVAL_MS: u64 = 10_000;

/// Epoll events handled per wait.
const MAX_EVENTS: usize = 256;

/// Epoll token of the worker's waker (port tokens are port ids, which fit in 32 bits).
const WAKER_TOKEN: u64 = u64::MAX;

/// State shared by the engine and its workers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The published configuration.
    pub(crate) current: Arc<ArcSwap<Snapshot>>,
    /// Learned MACs.
    pub(crate) fdb: Fdb,
    /// One set of counters per worker, written only by that worker.
    pub(crate) counters: Box<[WorkerCounters]>,
    /// The snapshot generation each worker has re-synced to (`u64::MAX` once it stopped).
    pub(crate) synced: Box<[AtomicU64]>,
    /// Set to stop the workers.
    pub(crate) stop: AtomicBool,
    /// One eventfd per worker, signalled on publish and stop.
    pub(crate) wakers: Box<[EventFd]>,
    /// The datapath's time.
    pub(crate) clock: Arc<dyn Clock>,
}

impl Shared {
    /// Wakes every worker from `epoll_wait`.
    pub(crate) fn wake_all(&self) {
        for waker in self.wakers.iter() {
            // EAGAIN means the counter is already non-zero: the worker will wake anyway.
            let _ = waker.write(1);
        }
    }
}

/// A destination of one batch: a port, and whether it is in the flood set (the ingress
/// port's subnet minus the ingress port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) port: PortId,
    pub(crate) flood: bool,
}

impl Destination {
    /// True when the frame with `verdict` goes to this destination.
    #[inline]
    pub(crate) fn wants(self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Forward(port) => port == self.port,
            Verdict::Flood => self.flood,
            Verdict::Drop(_) => false,
        }
    }
}

/// The distinct destinations of a batch, each once, built without allocating.
#[derive(Debug)]
pub(crate) struct TxPlan {
    destinations: Vec<Destination>,
    /// Per port id: the epoch in which it was last added...
    stamp: Vec<u64>,
    /// ... and its index in `destinations` then.
    slot: Vec<usize>,
    epoch: u64,
}

impl TxPlan {
    pub(crate) fn new() -> TxPlan {
        TxPlan {
            destinations: Vec::with_capacity(MAX_PORTS),
            stamp: vec![0; MAX_PORTS],
            slot: vec![0; MAX_PORTS],
            epoch: 0,
        }
    }

    /// Collects the destinations of `verdicts` for frames from `ingress`, whose flood set is
    /// `flood_ports` without `ingress`.
    pub(crate) fn build(&mut self, verdicts: &[Verdict], ingress: PortId, flood_ports: &[PortId]) {
        self.epoch += 1;
        self.destinations.clear();
        let mut flood = false;
        for verdict in verdicts {
            match *verdict {
                Verdict::Forward(port) => self.add(port, false),
                Verdict::Flood => flood = true,
                Verdict::Drop(_) => {}
            }
        }
        if flood {
            for &port in flood_ports {
                if port != ingress {
                    self.add(port, true);
                }
            }
        }
    }

    fn add(&mut self, port: PortId, flood: bool) {
        let index = usize::try_from(port.0).ok().filter(|&i| i < MAX_PORTS);
        let existing = match index {
            Some(i) if self.stamp[i] == self.epoch => Some(self.slot[i]),
            Some(_) => None,
            // Ids beyond MAX_PORTS (a controller bug) still work, by a linear search.
            None => self.destinations.iter().position(|d| d.port == port),
        };
        match existing {
            Some(at) => self.destinations[at].flood |= flood,
            None => {
                if let Some(i) = index {
                    self.stamp[i] = self.epoch;
                    self.slot[i] = self.destinations.len();
                }
                self.destinations.push(Destination { port, flood });
            }
        }
    }

    pub(crate) fn destinations(&self) -> &[Destination] {
        &self.destinations
    }
}

/// A registered queue: the worker keeps the port's `PortIo` alive until the fd is removed
/// from its epoll set.
#[derive(Debug)]
struct Registration {
    io: Arc<PortIo>,
    /// False once the queue failed hard (its device is gone): it is out of the epoll set, or
    /// its level-triggered error would wake the worker forever. A new snapshot with a new
    /// `PortIo` for the port (re-attach) replaces the registration.
    polled: bool,
}

/// Adds worker `index`'s queue of `io` to `epoll`. The fd stays open while registered: the
/// `Registration` holds the `PortIo`.
fn epoll_add(epoll: &Epoll, io: &PortIo, index: usize, token: u64) -> nix::Result<()> {
    let Some(queue) = io.queues.get(index) else {
        return Err(nix::errno::Errno::ENOENT);
    };
    epoll.add(&*queue.lock(), EpollEvent::new(EpollFlags::EPOLLIN, token))
}

/// Removes worker `index`'s queue of `io` from `epoll`.
fn epoll_delete(epoll: &Epoll, io: &PortIo, index: usize) -> nix::Result<()> {
    let Some(queue) = io.queues.get(index) else {
        return Err(nix::errno::Errno::ENOENT);
    };
    epoll.delete(&*queue.lock())
}

#[inline]
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The single path by which every dropped frame is counted.
#[inline]
fn count_drop(counters: &WorkerCounters, port: PortId, cause: DropCause, n: u64) {
    counters.add_drop(port, cause, n);
}

/// True for send errors that mean "the queue is full": non-blocking sockets return
/// `WouldBlock`; AF_PACKET may also return ENOBUFS when the device queue is full.
fn is_queue_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock || error.raw_os_error() == Some(libc::ENOBUFS)
}

/// Rate limiters for the per-packet log lines.
#[derive(Debug)]
struct Logs {
    tx_error: LogLimiter,
    flush_error: LogLimiter,
    epoll_error: LogLimiter,
}

/// One worker thread's state.
#[derive(Debug)]
pub(crate) struct Worker {
    index: usize,
    shared: Arc<Shared>,
    epoll: Epoll,
    registered: HashMap<PortId, Registration>,
    generation: Option<u64>,
    batch: RxBatch,
    verdicts: Vec<Verdict>,
    plan: TxPlan,
    logs: Logs,
    next_sweep_ms: u64,
}

impl Worker {
    /// Creates worker `index`'s epoll instance and registers its waker.
    ///
    /// # Errors
    /// When the epoll instance cannot be created or the waker registered.
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> io::Result<Worker> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let waker = shared.wakers.get(index).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no waker for this worker")
        })?;
        epoll.add(waker, EpollEvent::new(EpollFlags::EPOLLIN, WAKER_TOKEN))?;
        Ok(Worker {
            index,
            shared,
            epoll,
            registered: HashMap::new(),
            generation: None,
            batch: RxBatch::new(BATCH_SIZE),
            verdicts: Vec::with_capacity(BATCH_SIZE),
            plan: TxPlan::new(),
            logs: Logs {
                tx_error: LogLimiter::new(LOG_INTERVAL_MS),
                flush_error: LogLimiter::new(LOG_INTERVAL_MS),
                epoll_error: LogLimiter::new(LOG_INTERVAL_MS),
            },
            next_sweep_ms: 0,
        })
    }

    /// The worker loop; returns when the engine's stop flag is set.
    pub(crate) fn run(mut self) {
        debug!(worker = self.index, "worker started");
        let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
        let snapshot = self.shared.current.load_full();
        self.resync(&snapshot);
        drop(snapshot);
        while !self.shared.stop.load(Ordering::Acquire) {
            let ready = match self
                .epoll
                .wait(&mut events, EpollTimeout::from(WAIT_TIMEOUT_MS))
            {
                Ok(ready) => ready,
                Err(Errno::EINTR) => 0,
                Err(errno) => {
                    let now = self.shared.clock.now_ms();
                    if let Some(suppressed) = self.logs.epoll_error.check(now) {
                        error!(worker = self.index, error = %errno, suppressed, "epoll_wait failed");
                    }
                    // Do not spin on a persistent error.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    0
                }
            };
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let snapshot = self.shared.current.load_full();
            if self.generation != Some(snapshot.generation) {
                self.resync(&snapshot);
            }
            let now = self.shared.clock.now_ms();
            for event in &events[..ready] {
                match event.data() {
                    WAKER_TOKEN => self.drain_waker(),
                    token => {
                        if let Ok(raw) = u32::try_from(token) {
                            self.service(&snapshot, PortId(raw), now);
                        }
                    }
                }
            }
            if self.index == 0 && now >= self.next_sweep_ms {
                let aged = self.shared.fdb.sweep(&snapshot, now);
                if aged > 0 {
                    self.counters().add_event(Event::MacAged, count(aged));
                    debug!(aged, "removed aged MACs");
                }
                self.next_sweep_ms = now.saturating_add(SWEEP_INTERVAL_MS);
            }
        }
        self.deregister_all();
        self.shared.synced[self.index].store(u64::MAX, Ordering::Release);
        debug!(worker = self.index, "worker stopped");
    }

    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.index]
    }

    fn drain_waker(&self) {
        // Non-blocking: EAGAIN when another wake-up already drained it.
        let _ = self.shared.wakers[self.index].read();
    }

    /// Makes the epoll set match the ports of `snapshot`.
    fn resync(&mut self, snapshot: &Snapshot) {
        let stale: Vec<PortId> = self
            .registered
            .iter()
            .filter(|(id, registration)| {
                !snapshot
                    .port(**id)
                    .is_some_and(|port| Arc::ptr_eq(&port.io, &registration.io))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(registration) = self.registered.remove(&id) {
                if registration.polled {
                    if let Err(errno) = epoll_delete(&self.epoll, &registration.io, self.index) {
                        warn!(worker = self.index, port = id.0, error = %errno, "removing a queue from epoll failed");
                    }
                }
                // `registration.io` is dropped here, after the fd left the epoll set.
            }
        }
        for port in snapshot.ports() {
            if self.registered.contains_key(&port.id) {
                continue;
            }
            if port.io.queues.get(self.index).is_none() {
                warn!(
                    worker = self.index,
                    port = %port.name,
                    queues = port.io.queues.len(),
                    "port has no queue for this worker; this worker does not serve it"
                );
                continue;
            };
            if let Err(errno) = epoll_add(&self.epoll, &port.io, self.index, u64::from(port.id.0)) {
                warn!(worker = self.index, port = %port.name, error = %errno, "adding a queue to epoll failed");
                continue;
            }
            self.registered.insert(
                port.id,
                Registration {
                    io: Arc::clone(&port.io),
                    polled: true,
                },
            );
        }
        self.generation = Some(snapshot.generation);
        self.shared.synced[self.index].store(snapshot.generation, Ordering::Release);
        debug!(
            worker = self.index,
            generation = snapshot.generation,
            queues = self.registered.len(),
            "synced to snapshot"
        );
    }

    fn deregister_all(&mut self) {
        for (_, registration) in self.registered.drain() {
            if registration.polled {
                let _ = epoll_delete(&self.epoll, &registration.io, self.index);
            }
        }
    }

    /// Takes a failed queue out of the epoll set (see [`Registration::polled`]).
    fn park(&mut self, id: PortId) {
        if let Some(registration) = self.registered.get_mut(&id) {
            if registration.polled {
                let _ = epoll_delete(&self.epoll, &registration.io, self.index);
                registration.polled = false;
            }
        }
    }

    /// Receives one batch from `id`'s queue, runs the pipeline and transmits.
    fn service(&mut self, snapshot: &Snapshot, id: PortId, now: u64) {
        let Some(ingress) = snapshot.port(id) else {
            // An event from a port that left before this iteration's re-sync.
            return;
        };
        let Some(queue) = ingress.io.queues.get(self.index) else {
            return;
        };
        self.batch.clear();
        let received = queue.lock().recv_batch(&mut self.batch);
        if let Err(error) = received {
            let counters = &self.shared.counters[self.index];
            if !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                counters.add_rx_error(id);
                counters.add_event(Event::RxError, 1);
                warn!(
                    worker = self.index,
                    port = %ingress.name,
                    %error,
                    "reading a port queue failed; the queue is no longer polled until the port is re-attached"
                );
                self.park(id);
            }
        }
        let frames = self.batch.len();
        if frames == 0 {
            return;
        }
        let counters = &self.shared.counters[self.index];
        let ctx = Context {
            snapshot,
            fdb: &self.shared.fdb,
            now_ms: now,
        };
        self.verdicts.clear();
        let mut rx_bytes = 0u64;
        let (mut learned, mut moved, mut limited) = (0u64, 0u64, 0u64);
        for i in 0..frames {
            let frame = self.batch.frame(i);
            rx_bytes += tx::wire_len(frame);
            let outcome = pipeline::process(&ctx, ingress, frame);
            match outcome.learn {
                Some(Learn::Learned) => learned += 1,
                Some(Learn::Moved { .. }) => moved += 1,
                Some(Learn::LimitReached) => limited += 1,
                Some(Learn::Refreshed | Learn::NotUnicast) | None => {}
            }
            if let Verdict::Drop(cause) = outcome.verdict {
                count_drop(counters, id, cause, 1);
            }
            self.verdicts.push(outcome.verdict);
        }
        counters.add_rx(id, count(frames), rx_bytes);
        for (event, n) in [
            (Event::MacLearned, learned),
            (Event::MacMoved, moved),
            (Event::MacLimitReached, limited),
        ] {
            if n > 0 {
                counters.add_event(event, n);
            }
        }
        self.transmit(snapshot, ingress, now);
    }

    /// Sends the batch's frames to their destinations, one lock per destination queue.
    fn transmit(&mut self, snapshot: &Snapshot, ingress: &PortEntry, now: u64) {
        let flood_ports = snapshot
            .subnet(ingress.subnet)
            .map_or(&[][..], |subnet| &subnet.ports[..]);
        self.plan.build(&self.verdicts, ingress.id, flood_ports);
        let counters = &self.shared.counters[self.index];
        for d in 0..self.plan.destinations().len() {
            let destination = self.plan.destinations()[d];
            let egress = snapshot.port(destination.port);
            let Some((port, queue)) =
                egress.and_then(|port| port.io.queues.get(self.index).map(|queue| (port, queue)))
            else {
                // Counted on the egress port when it exists, else on the ingress port.
                let on = egress.map_or(ingress.id, |port| port.id);
                let frames = self
                    .verdicts
                    .iter()
                    .filter(|v| destination.wants(**v))
                    .count();
                count_drop(counters, on, tx::DropReason::NoQueue.into(), count(frames));
                continue;
            };
            let capabilities = port.io.capabilities;
            let (mut packets, mut bytes, mut completed) = (0u64, 0u64, 0u64);
            let mut queue = queue.lock();
            for (i, verdict) in self.verdicts.iter().enumerate() {
                if !destination.wants(*verdict) {
                    continue;
                }
                let frame = self.batch.frame_mut(i);
                match tx::prepare(frame, &capabilities) {
                    Ok(Prepared::Unchanged) => {}
                    Ok(Prepared::ChecksumCompleted) => completed += 1,
                    Err(reason) => {
                        count_drop(counters, port.id, reason.into(), 1);
                        continue;
                    }
                }
                match queue.send(frame) {
                    Ok(()) => {
                        packets += 1;
                        bytes += tx::wire_len(frame);
                    }
                    Err(error) if is_queue_full(&error) => {
                        count_drop(counters, port.id, tx::DropReason::QueueFull.into(), 1);
                    }
                    Err(error) => {
                        count_drop(counters, port.id, tx::DropReason::Error.into(), 1);
                        if let Some(suppressed) = self.logs.tx_error.check(now) {
                            warn!(worker = self.index, port = %port.name, %error, suppressed, "sending to a port queue failed");
                        }
                    }
                }
            }
            if let Err(error) = queue.flush() {
                counters.add_event(Event::FlushError, 1);
                if let Some(suppressed) = self.logs.flush_error.check(now) {
                    warn!(worker = self.index, port = %port.name, %error, suppressed, "flushing a port queue failed");
                }
            }
            drop(queue);
            counters.add_tx(port.id, packets, bytes);
            if completed > 0 {
                counters.add_event(Event::ChecksumCompleted, completed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::l2;

    fn ids(plan: &TxPlan) -> Vec<(u32, bool)> {
        plan.destinations()
            .iter()
            .map(|d| (d.port.0, d.flood))
            .collect()
    }

    #[test]
    fn plan_lists_each_destination_once() {
        let mut plan = TxPlan::new();
        let hairpin = Verdict::Drop(DropCause::L2(l2::DropReason::Hairpin));
        let verdicts = [
            Verdict::Forward(PortId(2)),
            Verdict::Forward(PortId(3)),
            hairpin,
            Verdict::Forward(PortId(2)),
        ];
        plan.build(&verdicts, PortId(1), &[PortId(1), PortId(2), PortId(3)]);
        assert_eq!(ids(&plan), vec![(2, false), (3, false)]);
        // Port 2 gets frames 0 and 3, in order; nobody gets the dropped frame.
        let to_two = plan.destinations()[0];
        let frames: Vec<usize> = (0..verdicts.len())
            .filter(|&i| to_two.wants(verdicts[i]))
            .collect();
        assert_eq!(frames, vec![0, 3]);
    }

    #[test]
    fn plan_floods_to_the_subnet_except_ingress() {
        let mut plan = TxPlan::new();
        let verdicts = [Verdict::Forward(PortId(3)), Verdict::Flood];
        plan.build(&verdicts, PortId(1), &[PortId(1), PortId(2), PortId(3)]);
        assert_eq!(ids(&plan), vec![(3, true), (2, true)]);
        // Port 3 gets both frames, port 2 only the flooded one.
        let to_three = plan.destinations()[0];
        let to_two = plan.destinations()[1];
        assert!(to_three.wants(verdicts[0]) && to_three.wants(verdicts[1]));
        assert!(!to_two.wants(verdicts[0]) && to_two.wants(verdicts[1]));
    }

    #[test]
    fn plan_resets_between_batches() {
        let mut plan = TxPlan::new();
        plan.build(&[Verdict::Flood], PortId(1), &[PortId(1), PortId(2)]);
        assert_eq!(ids(&plan), vec![(2, true)]);
        plan.build(
            &[Verdict::Forward(PortId(2))],
            PortId(1),
            &[PortId(1), PortId(2)],
        );
        assert_eq!(ids(&plan), vec![(2, false)], "the flood flag does not leak");
        plan.build(&[], PortId(1), &[PortId(2)]);
        assert!(plan.destinations().is_empty());
    }

    #[test]
    fn plan_handles_ids_beyond_max_ports() {
        let mut plan = TxPlan::new();
        let far = PortId(u32::try_from(MAX_PORTS).unwrap() + 5);
        plan.build(
            &[Verdict::Forward(far), Verdict::Forward(far), Verdict::Flood],
            PortId(1),
            &[far],
        );
        assert_eq!(ids(&plan), vec![(far.0, true)]);
    }

    #[test]
    fn queue_full_errors() {
        assert!(is_queue_full(&io::Error::from(io::ErrorKind::WouldBlock)));
        assert!(is_queue_full(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!is_queue_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
