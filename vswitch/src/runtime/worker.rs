//! A worker thread: the I/O scheduler that runs the pipeline to completion over the queues
//! it owns. It polls, batches, runs the stages and transmits; what happens to a frame is the
//! pipeline's ([`pipeline::input`] on the way in, the `tx` and `vxlan-encap` stages on the way
//! out), and where a frame goes is the snapshot's egress adjacency.
//!
//! Worker `i` serves queue `i` of everything the snapshot has to poll
//! ([`Snapshot::ingresses`]: the ports' devices, the uplink, the VTEP), so no queue is shared
//! and each queue's `Mutex` is uncontended; it is taken once per batch. Each loop iteration:
//! 1. `epoll_wait` on the worker's queues and its waker (an eventfd that `Engine::publish` and
//!    `Engine::stop` signal), with a timeout so the stop flag and the ageing sweep are seen even
//!    when idle. For [`EngineConfig::busy_poll`](super::EngineConfig::busy_poll) after the
//!    last wait that found work, the timeout is zero: the worker keeps polling instead of
//!    sleeping, so a busy port does not pay a wake-up (an IPI and a context switch on both
//!    sides) for every batch, and its latency does not include the scheduler's;
//! 2. load the snapshot (an arc-swap guard: no reference count is bumped, and it is dropped
//!    before the next wait); when its generation changed, re-sync the epoll
//!    registrations: queues that left are deregistered (and the worker's reference to them
//!    dropped only then, so an fd is never closed while registered), new ones registered;
//! 3. for each ready queue within its share of the worker's time ([`share`](super::share):
//!    a queue far ahead of the least served ready one waits a loop; a container port whose
//!    frames are nearly all dropped, fast, leaves the epoll set for a while): receive a
//!    batch of up to [`BATCH_SIZE`] frames and run
//!    [`pipeline::input`] on each: a port's frames go through `parse` onward, the uplink's
//!    through `uplink`, the VTEP's datagrams through `vxlan-input` (decapsulation, remote
//!    learning) and then the tunnel's stages. A stage may rewrite a frame in place, and emit
//!    frames of its own into the worker's generated-frames arena (ARP and ICMP answers,
//!    fragments). Then transmit the batch and the generated frames grouped by destination:
//!    each destination's egress adjacency ([`Snapshot::adjacency`]) says where they go, a
//!    device's queue ([`tx::prepare`] for what it takes, GRO when it takes super-frames) or,
//!    for a stretched subnet's tunnel, the VTEP's queue through the `vxlan-encap` stage
//!    (VTEP choice, head-end replication, segmentation). Each destination queue is locked
//!    once per batch and flushed once (an AF_PACKET queue sends its frames with one
//!    `sendmmsg`, the VTEP its ring with one), and frames keep their order (a frame generated
//!    while processing frame `i` leaves right after `i`). A frame the kernel refuses at an
//!    AF_PACKET flush is counted exactly as a failed send would have been (a drop, not a
//!    transmitted frame);
//! 4. when packets wait for ARP, or new ports for their gratuitous ARP (worker 0 announces
//!    the gateway to each port that appears), [`l3::service_held`] releases, retransmits or
//!    times them out, and the result is transmitted the same way; the epoll timeout is then
//!    short ([`HELD_POLL_MS`]). A worker whose ARP answer resolved a neighbour wakes the
//!    others, which may hold packets for it;
//! 5. worker 0 sweeps aged MACs, remote MACs and neighbours once a second; every worker frees
//!    expired connections from conntrack, a bounded number of slots at a time.
//!
//! Nothing here allocates per packet (the batch, the verdicts, the generated frames, the held
//! packets, the transmit plan and the segmenter are allocated once), and no packet content
//! can make it panic: every failure is a counted drop. Per-packet conditions are logged at
//! most once per [`LOG_INTERVAL_MS`] per kind.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;
use tracing::{debug, error, warn};

use super::capture::{self, Capture, Captures};
use super::counters::WorkerCounters;
use super::share::{QueueShare, SHARED_WEIGHT, Share};
use crate::cost::{self, Syscall};
use crate::pipeline::generated::{Generated, Origin};
use crate::pipeline::tx::{self, Prepared};
use crate::pipeline::vxlan_encap::Encapsulate;
use crate::pipeline::{self, Context, DropCause, Local, Verdict, arp, l3, nd, parse, vxlan_encap};
use crate::port::vtep::{GsoSent, RX_PAD};
use crate::port::{
    Capabilities, MAX_PORTS, PortId, PortQueue, RxBatch, RxHandle, RxQueues, Sent, VtepQueue,
};
use crate::sys::af_packet::TX_FRAMES;
use crate::sys::batch::BATCH_SIZE;
use crate::tables::clock::Clock;
use crate::tables::counters::Event;
use crate::tables::fdb::{Fdb, Learn};
use crate::tables::neigh::Neighbors;
use crate::tables::ratelimit::{LogLimiter, PortBuckets};
use crate::tables::snapshot::{Egress, Ingress, PortEntry, Snapshot, Subnet6, SubnetId, UplinkIo};
use crate::wire::VNET_HDR_LEN;
use crate::wire::gro::Coalescer;
use crate::wire::gso::{GsoError, Segmenter};

/// Longest `epoll_wait` (ms): bounds how late an idle worker sees the stop flag if a wake-up
/// were lost, and how late worker 0 runs the ageing sweep.
const WAIT_TIMEOUT_MS: u16 = 500;

/// How often worker 0 removes aged MACs and neighbours.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// The `epoll_wait` timeout (ms) while packets wait for ARP or ports for their gratuitous
/// ARP: retransmissions and timeouts are due on the second, and an answer another worker
/// received wakes this one anyway.
const HELD_POLL_MS: u16 = 10;

/// How many unsolicited router advertisements a new port gets in its first seconds, and
/// the gap before the second (the third comes twice as long after: 4 s and 12 s, within RFC
/// 4861's 16 s).
const INITIAL_RAS: u8 = 3;
const INITIAL_RA_GAP_MS: u64 = 4_000;

/// At most one log line per kind of per-packet problem in this interval (ms).
pub const LOG_INTERVAL_MS: u64 = 10_000;

/// Conntrack slots a worker visits per sweep (see `nat::Conntrack::sweep`): at most one sweep
/// a millisecond, so a worker reclaims up to 256,000 slots a second while busy, and at
/// least two sweeps a second while idle (the epoll timeout).
const CONNTRACK_SWEEP_BUDGET: usize = 256;

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
    /// The neighbour (ARP) table.
    pub(crate) neighbors: Neighbors,
    /// Remote MACs behind the overlay: (VNI, MAC) -> remote VTEP, learned from decapsulated
    /// frames. Sharded by (VNI, MAC) like [`Fdb`]: hits take one shard's read lock and refresh
    /// in place; only new or moved MACs take a shard's write lock.
    pub(crate) remote_fdb: vxlan::VxlanSharedFdb,
    /// One set of counters per worker, written only by that worker.
    pub(crate) counters: Box<[WorkerCounters]>,
    /// Events counted outside the workers (bond monitors), by [`Event::index`]; several
    /// threads may add, so each add is an atomic `fetch_add`.
    pub(crate) outside_events: Box<[AtomicU64]>,
    /// The snapshot generation each worker has re-synced to (`u64::MAX` once it stopped).
    pub(crate) synced: Box<[AtomicU64]>,
    /// How long a worker keeps polling without sleeping after the last wait that found work
    /// (zero: it always sleeps in `epoll_wait`).
    pub(crate) busy_poll: Duration,
    /// Storm control's rate per container port (0: off).
    pub(crate) storm_control_pps: u64,
    /// Set to stop the workers.
    pub(crate) stop: AtomicBool,
    /// One eventfd per worker, signalled on publish and stop.
    pub(crate) wakers: Box<[EventFd]>,
    /// The datapath's time.
    pub(crate) clock: Arc<dyn Clock>,
    /// The live packet trace, armed from the API.
    pub(crate) live_trace: crate::trace::live::LiveTrace,
    /// The running packet captures (checked once per batch).
    pub(crate) captures: Arc<Captures>,
}

impl Shared {
    /// Wakes every worker from `epoll_wait`.
    pub(crate) fn wake_all(&self) {
        for waker in self.wakers.iter() {
            // EAGAIN means the counter is already non-zero: the worker will wake anyway.
            let _ = waker.write(1);
        }
    }

    /// Wakes every worker but `index` (which is awake).
    fn wake_others(&self, index: usize) {
        for (other, waker) in self.wakers.iter().enumerate() {
            if other != index {
                cost::syscall(Syscall::Eventfd);
                let _ = waker.write(1);
            }
        }
    }
}

/// The port a batch was received on, as the transmit plan needs it (`None` for frames the
/// worker sends outside a batch: released held packets, gratuitous ARP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) port: PortId,
    pub(crate) subnet: SubnetId,
}

/// A destination of one batch: a port, and its subnet (for flood verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) port: PortId,
    pub(crate) subnet: Option<SubnetId>,
}

impl Destination {
    /// True when a frame with `verdict`, in a batch from `ingress`, goes to this destination.
    #[inline]
    pub(crate) fn wants(self, verdict: Verdict, ingress: Option<Source>) -> bool {
        match verdict {
            Verdict::Forward(port) => port == self.port,
            Verdict::Flood => ingress.is_some_and(|ingress| {
                self.subnet == Some(ingress.subnet) && self.port != ingress.port
            }),
            Verdict::FloodSubnet { subnet, except } => {
                self.subnet == Some(subnet) && Some(self.port) != except
            }
            Verdict::Consumed | Verdict::Drop(_) => false,
        }
    }
}

/// The distinct destinations of a batch, each once, built without allocating in steady state.
#[derive(Debug)]
pub(crate) struct TxPlan {
    destinations: Vec<Destination>,
    /// The subnets flooded in this batch, each with the port it leaves out.
    floods: Vec<(SubnetId, Option<PortId>)>,
    /// Per port id: the epoch (batch) in which it was last added.
    stamp: Vec<u64>,
    epoch: u64,
}

impl TxPlan {
    pub(crate) fn new() -> TxPlan {
        TxPlan {
            destinations: Vec::with_capacity(MAX_PORTS),
            floods: Vec::with_capacity(64),
            stamp: vec![0; MAX_PORTS],
            epoch: 0,
        }
    }

    /// Collects the destinations of `verdicts` (the batch's and the generated frames') for a
    /// batch from `ingress`.
    pub(crate) fn build(
        &mut self,
        snapshot: &Snapshot,
        ingress: Option<Source>,
        verdicts: impl Iterator<Item = Verdict>,
    ) {
        self.epoch += 1;
        self.destinations.clear();
        self.floods.clear();
        for verdict in verdicts {
            let flood = match verdict {
                Verdict::Forward(port) => {
                    self.add(snapshot, port);
                    continue;
                }
                Verdict::Flood => match ingress {
                    Some(ingress) => (ingress.subnet, Some(ingress.port)),
                    None => continue,
                },
                Verdict::FloodSubnet { subnet, except } => (subnet, except),
                Verdict::Consumed | Verdict::Drop(_) => continue,
            };
            if !self.floods.contains(&flood) {
                self.floods.push(flood);
            }
        }
        for f in 0..self.floods.len() {
            let (subnet, except) = self.floods[f];
            let Some(entry) = snapshot.subnet(subnet) else {
                continue;
            };
            for &port in &entry.ports {
                if Some(port) != except {
                    self.add(snapshot, port);
                }
            }
        }
    }

    fn add(&mut self, snapshot: &Snapshot, port: PortId) {
        let index = usize::try_from(port.0).ok().filter(|&i| i < MAX_PORTS);
        let existing = match index {
            Some(i) => self.stamp[i] == self.epoch,
            // Ids beyond MAX_PORTS (a controller bug) still work, by a linear search.
            None => self.destinations.iter().any(|d| d.port == port),
        };
        if existing {
            return;
        }
        if let Some(i) = index {
            self.stamp[i] = self.epoch;
        }
        let subnet = snapshot.port(port).map(|entry| entry.subnet);
        self.destinations.push(Destination { port, subnet });
    }

    pub(crate) fn destinations(&self) -> &[Destination] {
        &self.destinations
    }
}

/// A registered queue: the worker keeps its queues open (a port's, the uplink's or the
/// VTEP's) until the fd is removed from its epoll set.
#[derive(Debug)]
struct Registration {
    queues: RxHandle,
    /// False once the queue failed hard (its device is gone): it is out of the epoll set, or
    /// its level-triggered error would wake the worker forever. A new snapshot with a new
    /// `PortIo` for the port (re-attach) replaces the registration.
    polled: bool,
    /// True while the queue is out of the epoll set because its port backs off (see
    /// [`share`](super::share)); [`Worker::resume`] adds it back at `resume_at` (ms).
    backing_off: bool,
    resume_at: u64,
    /// Its share of the worker's time.
    share: QueueShare,
}

impl Registration {
    /// True when the queue's fd is in the epoll set.
    fn in_epoll(&self) -> bool {
        self.polled && !self.backing_off
    }
}

/// What serving one queue did, for its share.
#[derive(Debug, Clone, Copy, Default)]
struct Served {
    frames: u64,
    dropped: u64,
    /// A container's port (only those back off).
    port: bool,
}

/// Adds worker `index`'s queue of `rx` to `epoll`. The fd stays open while registered: the
/// `Registration` holds the queues.
fn epoll_add(epoll: &Epoll, rx: RxQueues<'_>, index: usize, token: u64) -> nix::Result<()> {
    cost::syscall(Syscall::EpollCtl);
    rx.with_fd(index, |fd| {
        epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
    })
    .unwrap_or(Err(Errno::ENOENT))
}

/// Removes worker `index`'s queue of `rx` from `epoll`.
fn epoll_delete(epoll: &Epoll, rx: RxQueues<'_>, index: usize) -> nix::Result<()> {
    cost::syscall(Syscall::EpollCtl);
    rx.with_fd(index, |fd| epoll.delete(fd))
        .unwrap_or(Err(Errno::ENOENT))
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
    nat_exhausted: LogLimiter,
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
    /// Generated frames, held packets, ICMP limiter, event tallies.
    local: Local,
    /// Ports that appeared and still need their gratuitous ARP (worker 0 only).
    garp_pending: Vec<PortId>,
    /// Ports owed an unsolicited router advertisement (worker 0: new ports, and every
    /// port at each round, see [`nd::advertise_unsolicited`]).
    ra_pending: Vec<PortId>,
    /// When the next round of unsolicited router advertisements is due (worker 0).
    next_ra_ms: u64,
    /// Rounds of unsolicited advertisements so far (seeds the next interval's draw).
    ra_rounds: u64,
    /// New ports' further initial advertisements (worker 0): when the next is due, and how
    /// many remain (RFC 4861 6.2.4: the first few at most 16 s apart).
    ra_initial: Vec<(u64, PortId, u8)>,
    /// What each advertising Subnet advertised at the last snapshot (worker 0): a Subnet
    /// whose prefix, gateway, SLAAC flag or MTU changes, or that starts advertising, is
    /// advertised again at once.
    advertised: Vec<(SubnetId, Subnet6, u16)>,
    logs: Logs,
    next_sweep_ms: u64,
    last_conntrack_sweep_ms: u64,
    /// Splits GSO super-frames before they enter the overlay.
    segmenter: Segmenter,
    /// Merges consecutive TCP segments of a flow toward a port that takes super-frames.
    coalescer: Coalescer,
    /// What the tally counted for each frame the destination queue holds for its next flush
    /// (see [`Counted`]), by position.
    ledger: Box<[Counted]>,
    /// Where a frame is copied with a VLAN tag pushed (toward a Subnet's VLAN on the uplink).
    scratch: Vec<u8>,
    /// The virtual clock of the queues' shares of this worker's time.
    share: Share,
    /// The queues ready in this loop.
    ready: Vec<PortId>,
    /// Ports backing off, with when (ms) they are read again.
    backing_off: Vec<(PortId, u64)>,
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
        let mut local = Local::new(index);
        local.out.flood_limiter = (shared.storm_control_pps > 0)
            .then(|| PortBuckets::new(shared.storm_control_pps, shared.storm_control_pps));
        Ok(Worker {
            index,
            shared,
            epoll,
            registered: HashMap::new(),
            generation: None,
            batch: RxBatch::new(BATCH_SIZE),
            verdicts: Vec::with_capacity(BATCH_SIZE),
            plan: TxPlan::new(),
            local,
            garp_pending: Vec::with_capacity(MAX_PORTS),
            ra_pending: Vec::with_capacity(MAX_PORTS),
            next_ra_ms: 0,
            ra_rounds: 0,
            ra_initial: Vec::new(),
            advertised: Vec::new(),
            logs: Logs {
                tx_error: LogLimiter::new(LOG_INTERVAL_MS),
                flush_error: LogLimiter::new(LOG_INTERVAL_MS),
                epoll_error: LogLimiter::new(LOG_INTERVAL_MS),
                nat_exhausted: LogLimiter::new(LOG_INTERVAL_MS),
            },
            next_sweep_ms: 0,
            last_conntrack_sweep_ms: 0,
            segmenter: Segmenter::new(),
            coalescer: Coalescer::new(),
            ledger: vec![None; TX_FRAMES].into_boxed_slice(),
            scratch: Vec::with_capacity(crate::sys::batch::MAX_FRAME_LEN + 4),
            share: Share::default(),
            ready: Vec::with_capacity(MAX_EVENTS),
            backing_off: Vec::new(),
        })
    }

    /// The worker loop; returns when the engine's stop flag is set.
    pub(crate) fn run(mut self) {
        debug!(worker = self.index, "worker started");
        self.counters().set_tid(nix::unistd::gettid().as_raw());
        // Whatever the thread tallied before the loop is not the worker's.
        let _ = cost::take();
        let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
        let snapshot = self.shared.current.load_full();
        self.resync(&snapshot);
        drop(snapshot);
        let busy_poll = self.shared.busy_poll;
        // When the last wait that found work returned (None: not since the worker started).
        let mut last_work: Option<Instant> = None;
        // Where the current stretch of work began (the end of the last wait): the load
        // counters take two clock reads per iteration, none per packet.
        let mut working_since = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let polling = last_work.is_some_and(|at| at.elapsed() < busy_poll);
            let timeout = if polling {
                0
            } else if self.local.held.is_empty()
                && self.garp_pending.is_empty()
                && self.ra_pending.is_empty()
            {
                WAIT_TIMEOUT_MS
            } else {
                HELD_POLL_MS
            };
            let timeout = self.resume_timeout(timeout);
            let waiting_since = Instant::now();
            let waited = self.epoll.wait(&mut events, EpollTimeout::from(timeout));
            cost::syscall(Syscall::EpollWait);
            let woke = Instant::now();
            self.counters().add_time(
                woke.duration_since(waiting_since),
                waiting_since.duration_since(working_since),
            );
            working_since = woke;
            let ready = match waited {
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
            if ready > 0 {
                if !busy_poll.is_zero() {
                    last_work = Some(woke);
                }
            } else if polling {
                // Nothing yet: poll again (maintenance waits for a wait that finds work, or
                // for the first sleeping wait, at most `busy_poll` from now).
                continue;
            }
            // A guard, not an owned `Arc`: no reference-count write on the shared snapshot
            // per iteration. It lives for this iteration only (one batch per ready queue and
            // the maintenance after them) and is dropped before the next `epoll_wait`, as
            // arc-swap wants guards short-lived (each thread has few cheap debt slots; a
            // publish meanwhile turns the guard into an owned reference, paid by the writer).
            let snapshot = self.shared.current.load();
            if self.generation != Some(snapshot.generation) {
                self.resync(&snapshot);
            }
            let now = self.shared.clock.now_ms();
            if !self.backing_off.is_empty() {
                self.resume(now);
            }
            self.ready.clear();
            for event in &events[..ready] {
                match event.data() {
                    WAKER_TOKEN => self.drain_waker(),
                    token => {
                        if let Ok(raw) = u32::try_from(token) {
                            self.ready.push(PortId(raw));
                        }
                    }
                }
            }
            self.serve_ready(&snapshot, now);
            if !self.local.held.is_empty()
                || !self.garp_pending.is_empty()
                || !self.ra_pending.is_empty()
            {
                self.maintain(&snapshot, now);
            }
            // Expired connections are freed a little at a time, at most once a millisecond
            // per worker (concurrent sweeps give way to each other).
            if now != self.last_conntrack_sweep_ms && !snapshot.conntrack.is_empty() {
                snapshot.conntrack.sweep(now, CONNTRACK_SWEEP_BUDGET);
                self.last_conntrack_sweep_ms = now;
            }
            if self.index == 0 && now >= self.next_sweep_ms {
                let aged = self.shared.fdb.sweep(&snapshot, now);
                if aged > 0 {
                    self.counters().add_event(Event::MacAged, count(aged));
                    debug!(aged, "removed aged MACs");
                }
                let remote = self.shared.remote_fdb.sweep(now);
                if remote > 0 {
                    debug!(remote, "removed aged remote (overlay) MACs");
                }
                let neighbors = self.shared.neighbors.sweep(&snapshot, now);
                if neighbors > 0 {
                    self.counters()
                        .add_event(Event::NeighborAged, count(neighbors));
                    debug!(neighbors, "removed aged or failed neighbours");
                }
                self.next_sweep_ms = now.saturating_add(SWEEP_INTERVAL_MS);
                self.schedule_advertisements(&snapshot, now);
            }
            // What this iteration spent (system calls, software checksums, ...), moved from
            // the thread's tally into counters the API can read.
            self.counters().add_costs(&cost::take());
        }
        self.deregister_all();
        self.counters().add_costs(&cost::take());
        // The id may go to another thread now.
        self.counters().set_tid(0);
        self.shared.synced[self.index].store(u64::MAX, Ordering::Release);
        debug!(worker = self.index, "worker stopped");
    }

    /// Worker 0, from the sweep: moves the initial advertisements that are due, and at each
    /// round (every 200 to 600 s) every port, to the ports owed an advertisement.
    fn schedule_advertisements(&mut self, snapshot: &Snapshot, now: u64) {
        let mut index = 0;
        while index < self.ra_initial.len() {
            let (due, port, left) = self.ra_initial[index];
            if now < due {
                index += 1;
                continue;
            }
            self.ra_pending.push(port);
            if left > 1 {
                self.ra_initial[index] =
                    (now.saturating_add(2 * INITIAL_RA_GAP_MS), port, left - 1);
                index += 1;
            } else {
                self.ra_initial.swap_remove(index);
            }
        }
        if self.next_ra_ms == 0 {
            // Ports present at start get theirs as they are registered: the first round
            // comes one interval later.
            self.next_ra_ms = now.saturating_add(nd::next_advertisement_in_ms(now));
        } else if now >= self.next_ra_ms {
            self.ra_pending.clear();
            let registered = &self.registered;
            self.ra_pending.extend(
                snapshot
                    .ports()
                    .iter()
                    .map(|port| port.id)
                    .filter(|id| registered.contains_key(id)),
            );
            self.next_ra_ms =
                now.saturating_add(nd::next_advertisement_in_ms(now ^ self.ra_rounds));
            self.ra_rounds += 1;
        }
        self.ra_pending.sort_unstable();
        self.ra_pending.dedup();
    }

    /// Worker 0, at each snapshot: the ports of Subnets whose advertisement changed (or
    /// that began advertising) are owed one now.
    fn readvertise_changed(&mut self, snapshot: &Snapshot) {
        let advertised: Vec<(SubnetId, Subnet6, u16)> = snapshot
            .subnets()
            .iter()
            .filter_map(|subnet| {
                let v6 = subnet.v6.clone().filter(|v6| v6.router_advertisements)?;
                Some((subnet.id, v6, subnet.mtu))
            })
            .collect();
        let changed: Vec<SubnetId> = advertised
            .iter()
            .filter(|entry| !self.advertised.contains(entry))
            .map(|entry| entry.0)
            .collect();
        if !changed.is_empty() {
            // Ports this worker serves (a port without a queue here has no device to
            // advertise through).
            let registered = &self.registered;
            self.ra_pending.extend(
                snapshot
                    .ports()
                    .iter()
                    .filter(|port| changed.contains(&port.subnet))
                    .map(|port| port.id)
                    .filter(|id| registered.contains_key(id)),
            );
        }
        self.ra_pending.sort_unstable();
        self.ra_pending.dedup();
        self.advertised = advertised;
    }

    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.index]
    }

    fn drain_waker(&self) {
        // Non-blocking: EAGAIN when another wake-up already drained it.
        cost::syscall(Syscall::Eventfd);
        let _ = self.shared.wakers[self.index].read();
    }

    /// Makes the epoll set match what `snapshot` has to poll: its ports' devices, the uplink
    /// and the VTEP.
    fn resync(&mut self, snapshot: &Snapshot) {
        let stale: Vec<PortId> = self
            .registered
            .iter()
            .filter(|(id, registration)| {
                !snapshot
                    .ingress(**id)
                    .is_some_and(|ingress| ingress.rx().is(&registration.queues))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(registration) = self.registered.remove(&id) {
                if registration.in_epoll() {
                    if let Err(errno) =
                        epoll_delete(&self.epoll, registration.queues.queues(), self.index)
                    {
                        warn!(worker = self.index, port = id.0, error = %errno, "removing a queue from epoll failed");
                    }
                }
                // `registration.queues` is dropped here, after the fd left the epoll set.
            }
        }
        for ingress in snapshot.ingresses() {
            let (id, name, rx) = (ingress.id(), ingress.name(), ingress.rx());
            if self.registered.contains_key(&id) {
                continue;
            }
            if rx.count() <= self.index {
                warn!(
                    worker = self.index,
                    port = %name,
                    queues = rx.count(),
                    "port has no queue for this worker; this worker does not serve it"
                );
                continue;
            };
            if let Err(errno) = epoll_add(&self.epoll, rx, self.index, u64::from(id.0)) {
                warn!(worker = self.index, port = %name, error = %errno, "adding a queue to epoll failed");
                continue;
            }
            self.registered.insert(
                id,
                Registration {
                    queues: rx.hold(),
                    polled: true,
                    backing_off: false,
                    resume_at: 0,
                    share: QueueShare::default(),
                },
            );
            // A port that appeared (or was re-attached) learns its gateway's MAC and, on a
            // dual-stack Subnet, its IPv6 router at once (then twice more within 16 s).
            let announce = matches!(ingress, Ingress::Port(..));
            if announce && self.index == 0 {
                self.ra_pending.push(id);
                let now = self.shared.clock.now_ms();
                self.ra_initial.retain(|(_, port, _)| *port != id);
                self.ra_initial
                    .push((now.saturating_add(INITIAL_RA_GAP_MS), id, INITIAL_RAS - 1));
            }
            if announce && self.index == 0 && !self.garp_pending.contains(&id) {
                self.garp_pending.push(id);
            }
        }
        if self.index == 0 {
            self.readvertise_changed(snapshot);
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
            if registration.in_epoll() {
                let _ = epoll_delete(&self.epoll, registration.queues.queues(), self.index);
            }
        }
    }

    /// Takes a failed queue out of the epoll set (see [`Registration::polled`]).
    fn park(&mut self, id: PortId) {
        if let Some(registration) = self.registered.get_mut(&id) {
            if registration.in_epoll() {
                let _ = epoll_delete(&self.epoll, registration.queues.queues(), self.index);
            }
            registration.polled = false;
        }
    }

    /// Serves the loop's ready queues, each within its share of the worker's time (see
    /// [`share`](super::share)): a queue too far ahead of the least served one waits for
    /// the next loop, and a port whose frames were nearly all dropped backs off.
    fn serve_ready(&mut self, snapshot: &Snapshot, now: u64) {
        let mut pass = self.share.start();
        for id in &self.ready {
            if let Some(registration) = self.registered.get_mut(id) {
                pass.ready(&mut registration.share);
            }
        }
        let floor = self.share.settle(pass);
        for i in 0..self.ready.len() {
            let id = self.ready[i];
            if !self
                .registered
                .get(&id)
                .is_some_and(|registration| registration.share.may_run(floor))
            {
                continue;
            }
            let started = Instant::now();
            let served = self.service(snapshot, id, now);
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let Some(registration) = self.registered.get_mut(&id) else {
                continue;
            };
            let weight = if served.port { 1 } else { SHARED_WEIGHT };
            registration.share.charge(ns, weight);
            if !served.port || !registration.in_epoll() {
                continue;
            }
            if let Some(ms) = registration
                .share
                .observe(now, served.frames, served.dropped)
            {
                if epoll_delete(&self.epoll, registration.queues.queues(), self.index).is_err() {
                    continue;
                }
                // Read the clock again: a batch may have taken this loop past `now`, and a
                // back-off of `ms` must last at least `ms`.
                let until = self.shared.clock.now_ms().saturating_add(ms + 1);
                registration.backing_off = true;
                registration.resume_at = until;
                self.backing_off.push((id, until));
                let counters = &self.shared.counters[self.index];
                counters.add_rx_backoff(id);
                counters.add_event(Event::RxBackoff, 1);
            }
        }
    }

    /// Puts the ports whose back-off is over back in the epoll set.
    fn resume(&mut self, now: u64) {
        let mut i = 0;
        while i < self.backing_off.len() {
            let (id, until) = self.backing_off[i];
            if until > now {
                i += 1;
                continue;
            }
            self.backing_off.swap_remove(i);
            let Some(registration) = self.registered.get_mut(&id) else {
                continue;
            };
            // A port that left and came back under the same id has its own entry.
            if !registration.backing_off || registration.resume_at != until {
                continue;
            }
            registration.backing_off = false;
            if registration.polled {
                if let Err(errno) = epoll_add(
                    &self.epoll,
                    registration.queues.queues(),
                    self.index,
                    u64::from(id.0),
                ) {
                    warn!(worker = self.index, port = id.0, error = %errno, "re-adding a backed-off queue to epoll failed");
                    registration.polled = false;
                }
            }
        }
    }

    /// The `epoll_wait` timeout (ms): `timeout`, or sooner when a back-off ends sooner.
    fn resume_timeout(&self, timeout: u16) -> u16 {
        let Some(until) = self.backing_off.iter().map(|(_, until)| *until).min() else {
            return timeout;
        };
        let left = until.saturating_sub(self.shared.clock.now_ms());
        u16::try_from(left).map_or(timeout, |left| timeout.min(left))
    }

    /// Receives one batch from `id`'s queue (a port's, the uplink's or the VTEP's), runs the
    /// pipeline and transmits.
    fn service(&mut self, snapshot: &Snapshot, id: PortId, now: u64) -> Served {
        let Some(ingress) = snapshot.ingress(id) else {
            // An event from a port that left before this iteration's re-sync.
            return Served::default();
        };
        self.batch.clear();
        let Some(received) = ingress.rx().recv_batch(self.index, &mut self.batch) else {
            return Served::default();
        };
        if let Err(error) = received {
            let counters = &self.shared.counters[self.index];
            if error.raw_os_error() == Some(libc::ENETDOWN) {
                // An AF_PACKET socket's interface went down (a bond member's link pulled):
                // the kernel reports it once and reattaches the socket when the link comes
                // back, so the queue stays polled.
                counters.add_rx_error(id);
                counters.add_event(Event::RxError, 1);
                debug!(worker = self.index, port = %ingress.name(), "interface down; its queue stays polled for when it comes back");
            } else if !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                counters.add_rx_error(id);
                counters.add_event(Event::RxError, 1);
                warn!(
                    worker = self.index,
                    port = %ingress.name(),
                    %error,
                    "reading a port queue failed; the queue is no longer polled until the port is re-attached"
                );
                self.park(id);
            }
        }
        let frames = self.batch.len();
        if frames == 0 {
            return Served::default();
        }
        // The one check a capture costs while none runs.
        if self.shared.captures.armed() {
            self.capture_rx(ingress);
        }
        let shared = &self.shared;
        let counters = &shared.counters[self.index];
        let ctx = Context {
            snapshot,
            fdb: &shared.fdb,
            neighbors: &shared.neighbors,
            remote_fdb: &shared.remote_fdb,
            now_ms: now,
            trace: None,
        };
        self.verdicts.clear();
        self.local.out.generated.clear();
        let live_trace = shared.live_trace.session();
        let mut rx_bytes = 0u64;
        let (mut learned, mut moved, mut limited, mut dropped) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..frames {
            // Frames generated while processing frame i leave right after it.
            self.local.out.generated.set_position(i + 1);
            let peer = self.batch.peer(i);
            let mut tag = self.batch.tag(i);
            let mut frame_ingress = ingress;
            if let Ingress::Port(port, io) = ingress {
                match trunk_vlan(snapshot, port.id, tag, &mut self.batch, i) {
                    TrunkFrame::Untagged => {}
                    TrunkFrame::Vlan(vlan_port) => frame_ingress = Ingress::Port(vlan_port, io),
                    TrunkFrame::Refused => {
                        count_drop(counters, id, parse::DropReason::VlanTagged.into(), 1);
                        dropped += 1;
                        self.verdicts
                            .push(Verdict::drop(parse::DropReason::VlanTagged));
                        rx_bytes += tx::wire_len(self.batch.frame(i));
                        continue;
                    }
                }
                tag = 0;
            }
            let ingress = frame_ingress;
            let frame = self.batch.frame_mut(i);
            rx_bytes += tx::wire_len(frame);
            let outcome = match live_trace.as_deref() {
                Some(session) if session.wants(ingress, frame) => {
                    session.trace(&ctx, ingress, frame, peer, tag, &mut self.local)
                }
                _ => pipeline::input(&ctx, ingress, frame, peer, tag, &mut self.local),
            };
            match outcome.learn {
                Some(Learn::Learned) => learned += 1,
                Some(Learn::Moved { .. }) => moved += 1,
                Some(Learn::LimitReached) => limited += 1,
                Some(Learn::Refreshed | Learn::NotUnicast) | None => {}
            }
            if let Verdict::Drop(cause) = outcome.verdict {
                count_drop(counters, id, cause, 1);
                dropped += 1;
            }
            self.verdicts.push(outcome.verdict);
        }
        counters.add_rx(id, count(frames), rx_bytes);
        counters.add_batch(frames);
        if let Ingress::Uplink(uplink, _, member) = ingress {
            if let Some(bond) = &uplink.io.bond {
                bond.note_rx(member, now);
            }
        }
        for (event, n) in [
            (Event::MacLearned, learned),
            (Event::MacMoved, moved),
            (Event::MacLimitReached, limited),
        ] {
            if n > 0 {
                counters.add_event(event, n);
            }
        }
        let from = Source {
            port: id,
            subnet: ingress.segment(),
        };
        self.transmit(snapshot, Some(from), now);
        self.finish_batch(now);
        Served {
            frames: count(frames),
            dropped,
            port: matches!(ingress, Ingress::Port(..)),
        }
    }

    /// Copies the batch just received on `ingress` into the captures that want it, before
    /// any stage rewrites a frame (a VTEP datagram behind synthesized outer headers).
    #[cold]
    fn capture_rx(&self, ingress: Ingress<'_>) {
        let list = self.shared.captures.list();
        let id = ingress.id();
        for capture in list.iter().filter(|capture| capture.wants_rx(id)) {
            for i in 0..self.batch.len() {
                let frame = self.batch.frame(i);
                match ingress {
                    Ingress::Vtep(vtep) => {
                        let datagram = frame.get(RX_PAD..).unwrap_or_default();
                        let head =
                            capture::outer_headers(self.batch.peer(i), vtep.local, datagram.len());
                        capture.offer(self.index, head.outer(), datagram);
                    }
                    Ingress::Port(..) | Ingress::Uplink(..) => {
                        let ethernet = frame.get(VNET_HDR_LEN..).unwrap_or_default();
                        capture.offer(self.index, &[], ethernet);
                    }
                }
            }
        }
    }

    /// Outside a batch: gratuitous ARP for new ports (worker 0), and the held packets
    /// (released, retransmitted for, or timed out); what that generates is sent at once.
    fn maintain(&mut self, snapshot: &Snapshot, now: u64) {
        self.batch.clear();
        self.verdicts.clear();
        self.local.out.generated.clear();
        while let Some(&port) = self.garp_pending.last() {
            let subnet = snapshot
                .port(port)
                .and_then(|entry| snapshot.subnet(entry.subnet));
            if let Some(subnet) = subnet {
                if !arp::announce(&mut self.local.out, subnet, port) {
                    // Full: the rest go with the next round.
                    break;
                }
            }
            self.garp_pending.pop();
        }
        while let Some(&port) = self.ra_pending.last() {
            if !nd::advertise_unsolicited(snapshot, port, &mut self.local.out) {
                // Full: the rest go with the next round.
                break;
            }
            self.ra_pending.pop();
        }
        if !self.local.held.is_empty() {
            let shared = &self.shared;
            let counters = &shared.counters[self.index];
            let ctx = Context {
                snapshot,
                fdb: &shared.fdb,
                neighbors: &shared.neighbors,
                remote_fdb: &shared.remote_fdb,
                now_ms: now,
                trace: None,
            };
            l3::service_held(&ctx, &mut self.local, |port, cause| {
                count_drop(counters, port, cause, 1);
            });
        }
        if !self.local.out.generated.is_empty() {
            self.transmit(snapshot, None, now);
        }
        self.finish_batch(now);
    }

    /// Adds the batch's event tallies to the counters, wakes the other workers when an ARP
    /// answer resolved a neighbour they may hold packets for, and warns (rate-limited) when
    /// NAT ran out of ports.
    fn finish_batch(&mut self, now: u64) {
        self.shared.counters[self.index].add_events(&mut self.local.out.events);
        if std::mem::take(&mut self.local.out.neighbor_resolved) {
            self.shared.wake_others(self.index);
        }
        if std::mem::take(&mut self.local.out.nat_exhausted) {
            if let Some(suppressed) = self.logs.nat_exhausted.check(now) {
                warn!(
                    worker = self.index,
                    suppressed,
                    "NAT ports exhausted: new connections are dropped (nat.pool_exhausted, nat.interface_ports_exhausted); add NAT addresses or raise portsPerNetworkInterface"
                );
            }
        }
    }

    /// Sends the batch's frames (`self.verdicts`, one per frame of `self.batch`) and the
    /// generated frames to their destinations, one lock per destination queue, in order.
    fn transmit(&mut self, snapshot: &Snapshot, ingress: Option<Source>, now: u64) {
        let Worker {
            index,
            shared,
            batch,
            verdicts,
            plan,
            local,
            logs,
            segmenter,
            coalescer,
            ledger,
            scratch,
            ..
        } = self;
        let generated = &mut local.out.generated;
        plan.build(
            snapshot,
            ingress,
            verdicts
                .iter()
                .copied()
                .chain(generated.metas().iter().map(|meta| meta.verdict)),
        );
        let counters = &shared.counters[*index];
        // The one check a capture costs while none runs; the list only when one does.
        let captures = shared.captures.armed().then(|| shared.captures.list());
        let captures: &[Arc<Capture>] = captures.as_deref().map_or(&[], |list| list.as_slice());
        for destination in plan.destinations() {
            let wants = |verdict: Verdict| destination.wants(verdict, ingress);
            // The egress adjacency says where this worker writes: a device's queue, or (a
            // tunnel) the VTEP's, through the vxlan-encap stage.
            let adjacency = snapshot.adjacency(destination.port);
            let target = adjacency.and_then(|adjacency| {
                let target = match adjacency.egress {
                    Egress::Queue(io) => {
                        Target::Queue(io.queues.get(*index)?, io.capabilities, None)
                    }
                    Egress::Tagged { io, vlan } => {
                        Target::Queue(io.queues.get(*index)?, io.capabilities, Some(*vlan))
                    }
                    Egress::Uplink { io, vlan } => Target::Uplink(io, *vlan),
                    Egress::Tunnel(tunnel) => {
                        let vtep = snapshot.vtep.as_ref()?;
                        let tx = vxlan_encap::TunnelTx {
                            tunnel,
                            config: &vtep.encap,
                            remote_fdb: &shared.remote_fdb,
                            now_ms: now,
                        };
                        Target::Tunnel(vtep.io.queues.get(*index)?, tx, (vtep.id, vtep.local))
                    }
                };
                Some((adjacency, target))
            });
            let Some((adjacency, target)) = target else {
                // Counted on the egress port when it exists, else on the ingress port (for
                // frames outside a batch: on the egress port id, if it is still counted).
                let on = adjacency
                    .map(|adjacency| adjacency.id)
                    .or(ingress.map(|ingress| ingress.port))
                    .unwrap_or(destination.port);
                let wanted = verdicts.iter().filter(|v| wants(**v)).count()
                    + generated
                        .metas()
                        .iter()
                        .filter(|m| wants(m.verdict))
                        .count();
                count_drop(counters, on, tx::DropReason::NoQueue.into(), count(wanted));
                continue;
            };
            let taps = taps_for(captures, adjacency.id);
            let mut account = TxAccount {
                counters,
                port: adjacency.id,
                name: adjacency.name,
                log: &mut logs.tx_error,
                worker: *index,
                now,
                tally: TxTally::default(),
                ledger: &mut ledger[..],
                taps,
            };
            let flushed = match target {
                Target::Queue(queue, capabilities, vlan) => {
                    // TCP segments (from the overlay, typically) are merged into super-frames
                    // for a device that takes them (untagged: a tagged copy is written as is).
                    let gro =
                        (vlan.is_none() && tx::coalesces(&capabilities)).then_some(&mut *coalescer);
                    let mut guard = queue.lock();
                    let mut sender = Sender {
                        capabilities,
                        queue: &mut guard,
                        account: &mut account,
                        gro,
                        vlan,
                        tpid: tx::TPID_8021Q,
                        scratch: &mut *scratch,
                    };
                    in_order(batch, verdicts, generated, wants, |frame, origin| {
                        sender.send(frame, origin);
                    });
                    sender.finish();
                    // After the flush: frames the kernel refused there are taken off the tally.
                    sender.flush()
                }
                Target::Uplink(io, vlan) => send_uplink(
                    UplinkTx {
                        io,
                        vlan,
                        worker: *index,
                        counters,
                        coalescer: &mut *coalescer,
                        scratch: &mut *scratch,
                    },
                    &mut account,
                    batch,
                    verdicts,
                    generated,
                    &wants,
                ),
                Target::Tunnel(queue, tunnel, vtep_entry) => {
                    let mut vtep = queue.lock();
                    let mut encap = CapturingVtep {
                        queue: &mut vtep,
                        taps: taps_for(captures, vtep_entry.0),
                        vtep: vtep_entry.0,
                        local: vtep_entry.1,
                        worker: *index,
                    };
                    in_order(batch, verdicts, generated, wants, |frame, origin| {
                        let sent = vxlan_encap::send(&tunnel, frame, segmenter, &mut encap);
                        account.encapsulated(origin, &sent);
                    });
                    // Packets the kernel refuses here are counted by the VTEP (`send_errors`).
                    vtep.flush()
                }
            };
            let tally = account.tally;
            if let Err(error) = flushed {
                counters.add_event(Event::FlushError, 1);
                if let Some(suppressed) = logs.flush_error.check(now) {
                    warn!(worker = *index, port = %adjacency.name, %error, suppressed, "flushing a port queue failed");
                }
            }
            counters.add_tx(adjacency.id, tally.packets, tally.bytes);
            if tally.generated_packets > 0 {
                counters.add_tx_generated(
                    adjacency.id,
                    tally.generated_packets,
                    tally.generated_bytes,
                );
            }
            if tally.completed > 0 {
                counters.add_event(Event::ChecksumCompleted, tally.completed);
            }
        }
    }
}

/// What was sent to one destination.
#[derive(Debug, Default, Clone, Copy)]
struct TxTally {
    packets: u64,
    bytes: u64,
    generated_packets: u64,
    generated_bytes: u64,
    completed: u64,
}

impl TxTally {
    /// Counts `packets` sent of `bytes`, as routed frames or as the switch's own.
    fn add(&mut self, origin: Origin, packets: u64, bytes: u64) {
        match origin {
            Origin::Routed => {
                self.packets += packets;
                self.bytes += bytes;
            }
            Origin::Switch => {
                self.generated_packets += packets;
                self.generated_bytes += bytes;
            }
        }
    }

    /// Takes back what [`add`](TxTally::add) counted for frames the kernel refused after all
    /// (at a flush of a queue that batches).
    fn remove(&mut self, origin: Origin, packets: u64, bytes: u64) {
        match origin {
            Origin::Routed => {
                self.packets = self.packets.saturating_sub(packets);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
            Origin::Switch => {
                self.generated_packets = self.generated_packets.saturating_sub(packets);
                self.generated_bytes = self.generated_bytes.saturating_sub(bytes);
            }
        }
    }
}

/// What the tally counted for a frame that a batching queue (AF_PACKET) holds for its next
/// flush: `Some((origin, bytes))` for a frame counted as sent when queued, `None` for one
/// counted when it was offered (segments merged into it) or not at all. If the kernel refuses
/// the frame at the flush, that much is taken back and the frame is counted as a drop, so the
/// counters are what they would be had the frame been sent on its own.
type Counted = Option<(Origin, u64)>;

/// Where the outcomes of one destination's frames are counted.
struct TxAccount<'a> {
    counters: &'a WorkerCounters,
    port: PortId,
    name: &'a str,
    log: &'a mut LogLimiter,
    worker: usize,
    now: u64,
    tally: TxTally,
    /// By position in the destination queue, for the frames it holds (see [`Counted`]).
    ledger: &'a mut [Counted],
    /// The running captures when one takes this port's transmitted frames, else empty.
    taps: &'a [Arc<Capture>],
}

impl TxAccount<'_> {
    /// Counts a frame the kernel refused as a drop on the port: `QueueFull` when the queue was
    /// full, else `Error` (and a log line, rate-limited).
    fn refused(&mut self, error: &io::Error) {
        if is_queue_full(error) {
            count_drop(
                self.counters,
                self.port,
                tx::DropReason::QueueFull.into(),
                1,
            );
        } else {
            count_drop(self.counters, self.port, tx::DropReason::Error.into(), 1);
            if let Some(suppressed) = self.log.check(self.now) {
                warn!(worker = self.worker, port = %self.name, %error, suppressed, "sending to a port queue failed");
            }
        }
    }

    /// Counts what `vxlan-encap` did with one frame of `origin`: the packets the VTEP took,
    /// a completed checksum, the frame's drop and the packets the VTEP refused.
    fn encapsulated(&mut self, origin: Origin, sent: &vxlan_encap::Sent) {
        self.tally.add(origin, sent.packets, sent.bytes);
        if sent.checksum_completed {
            self.tally.completed += 1;
        }
        if let Some(cause) = sent.dropped {
            count_drop(self.counters, self.port, cause, 1);
        }
        if sent.refused > 0 {
            count_drop(
                self.counters,
                self.port,
                vxlan_encap::DropReason::Encap.into(),
                sent.refused,
            );
        }
    }

    /// The frame queued at `position`, refused by the kernel at a flush: what the tally
    /// counted for it is taken back and it is counted as a drop.
    fn refused_queued(&mut self, position: usize, error: &io::Error) {
        if let Some((origin, bytes)) = self.ledger.get_mut(position).and_then(Option::take) {
            self.tally.remove(origin, 1, bytes);
        }
        self.refused(error);
    }
}

/// Where one worker writes a destination's frames, from its egress adjacency.
enum Target<'a> {
    /// A device's queue, what the device takes, and the VLAN tag to push (a trunk's).
    Queue(&'a Mutex<PortQueue>, Capabilities, Option<u16>),
    /// The uplink: the queue of the member the bond picks per flow, with the VLAN tag to
    /// push.
    Uplink(&'a Arc<UplinkIo>, Option<u16>),
    /// The VTEP's queue, for the `vxlan-encap` stage into this tunnel, and the VTEP's id
    /// and address (for its captures).
    Tunnel(
        &'a Mutex<VtepQueue>,
        vxlan_encap::TunnelTx<'a>,
        (PortId, SocketAddr),
    ),
}

/// Hands `send` the frames that a destination `wants` (by verdict), in order: the generated
/// frames positioned before batch frame `i`, then `i`; those positioned past the batch
/// (outside a batch: all of them) at the end.
fn in_order(
    batch: &mut RxBatch,
    verdicts: &[Verdict],
    generated: &mut Generated,
    wants: impl Fn(Verdict) -> bool,
    mut send: impl FnMut(&mut [u8], Origin),
) {
    let frames = verdicts.len();
    let mut g = 0;
    for position in 0..=frames {
        while let Some(meta) = generated.meta(g).copied() {
            if meta.after > position && position < frames {
                break;
            }
            if wants(meta.verdict) {
                if let Some(frame) = generated.frame_mut(g) {
                    send(frame, meta.origin);
                }
            }
            g += 1;
        }
        if let Some(&verdict) = verdicts.get(position) {
            if wants(verdict) {
                send(batch.frame_mut(position), Origin::Routed);
            }
        }
    }
}

/// `captures` when one of them takes what is sent to `port`, else nothing (the caller still
/// picks the ones that want `port`: the list holds every port's).
fn taps_for(captures: &[Arc<Capture>], port: PortId) -> &[Arc<Capture>] {
    if captures.iter().any(|capture| capture.wants_tx(port)) {
        captures
    } else {
        &[]
    }
}

/// The VTEP's queue, with its captures: each packet the queue takes is offered to them as
/// the outer packet it becomes (synthesized outer headers, see [`capture`]).
struct CapturingVtep<'q> {
    queue: &'q mut VtepQueue,
    /// Captures on some port, among them the VTEP's transmit captures (empty while none is).
    taps: &'q [Arc<Capture>],
    vtep: PortId,
    local: SocketAddr,
    worker: usize,
}

impl CapturingVtep<'_> {
    #[cold]
    fn offer(
        &self,
        inner: &[u8],
        vni: ::vxlan::Vni,
        remote: IpAddr,
        config: &::vxlan::VxlanEncapConfig,
    ) {
        let src = SocketAddr::new(self.local.ip(), ::vxlan::encap::source_port(inner, config));
        let dst = SocketAddr::new(remote, self.local.port());
        let mut head = capture::outer_headers(src, dst, ::vxlan::header::HEADER_LEN + inner.len());
        let head = head.with_vxlan(vni);
        for tap in self.taps.iter().filter(|tap| tap.wants_tx(self.vtep)) {
            tap.offer(self.worker, head, inner);
        }
    }
}

impl Encapsulate for CapturingVtep<'_> {
    #[inline]
    fn encap(
        &mut self,
        inner: &[u8],
        vni: ::vxlan::Vni,
        remote: IpAddr,
        config: &::vxlan::VxlanEncapConfig,
    ) -> io::Result<()> {
        self.queue.encap(inner, vni, remote, config)?;
        if !self.taps.is_empty() {
            self.offer(inner, vni, remote, config);
        }
        Ok(())
    }

    #[inline]
    fn encap_gso(
        &mut self,
        frame: &[u8],
        segmenter: &mut Segmenter,
        vni: ::vxlan::Vni,
        remote: IpAddr,
        config: &::vxlan::VxlanEncapConfig,
    ) -> Result<GsoSent, GsoError> {
        let sent = self
            .queue
            .encap_gso(frame, segmenter, vni, remote, config)?;
        if !self.taps.is_empty() {
            self.offer(
                frame.get(VNET_HDR_LEN..).unwrap_or_default(),
                vni,
                remote,
                config,
            );
        }
        Ok(sent)
    }
}

/// Sends frames to one device queue (locked once for the batch) and counts them.
struct Sender<'q, 'a> {
    capabilities: Capabilities,
    queue: &'q mut PortQueue,
    /// Where what happens to the frames is counted.
    account: &'q mut TxAccount<'a>,
    /// Set when the destination takes TCP super-frames: routed frames go through it.
    gro: Option<&'q mut Coalescer>,
    /// The VLAN frames are tagged with (a Subnet's VLAN on the uplink, a trunk's VLAN).
    vlan: Option<u16>,
    /// The tag's protocol identifier (0x8100, or 0x88a8 on an 802.1ad uplink).
    tpid: u16,
    /// Where a tagged copy is built.
    scratch: &'q mut Vec<u8>,
}

/// A frame from a port, as its VLAN tag makes it.
enum TrunkFrame<'a> {
    /// No tag: the port's own.
    Untagged,
    /// Tagged with a VLAN the port is a trunk of: that VLAN's port (the tag is off).
    Vlan(&'a PortEntry),
    /// Tagged otherwise (the kernel reported the tag beside the frame, or the port is no
    /// trunk of that VLAN).
    Refused,
}

/// Sorts out frame `i` of `batch`, from `port`: a tag the kernel reported (`tag`, veth
/// ports) or an inline one (TAP ports) of a VLAN the port is a trunk of makes it that
/// VLAN's port's, with the inline tag popped; any other reported tag refuses it (an inline
/// one is left to `parse`, which refuses tagged frames).
fn trunk_vlan<'a>(
    snapshot: &'a Snapshot,
    port: PortId,
    tag: u32,
    batch: &mut RxBatch,
    i: usize,
) -> TrunkFrame<'a> {
    if tag != 0 {
        let vlan = u16::try_from(tag & 0x0fff).unwrap_or(0);
        return match snapshot.trunk_port(port, vlan) {
            Some(vlan_port) if tag >> 16 == 0x8100 => TrunkFrame::Vlan(vlan_port),
            _ => TrunkFrame::Refused,
        };
    }
    if !snapshot.has_trunks() {
        return TrunkFrame::Untagged;
    }
    let Some(tci) = batch.inline_vlan(i) else {
        return TrunkFrame::Untagged;
    };
    match snapshot.trunk_port(port, tci & 0x0fff) {
        Some(vlan_port) => match batch.pop_vlan(i) {
            Some(_) => TrunkFrame::Vlan(vlan_port),
            None => TrunkFrame::Refused,
        },
        None => TrunkFrame::Untagged,
    }
}

/// What sending to the uplink needs besides the account and the frames.
struct UplinkTx<'a> {
    io: &'a UplinkIo,
    vlan: Option<u16>,
    worker: usize,
    counters: &'a WorkerCounters,
    coalescer: &'a mut Coalescer,
    scratch: &'a mut Vec<u8>,
}

/// Sends the frames a destination on the uplink wants: without a bond, to the one member's
/// queue; with one, each frame to the member its flow hashes to (one pass and one lock per
/// member that carries traffic, so a flow's frames keep their order), and what no member
/// takes is counted (`tx.bond_down`). A bond's members count what they sent besides the
/// destination.
fn send_uplink(
    tx: UplinkTx<'_>,
    account: &mut TxAccount<'_>,
    batch: &mut RxBatch,
    verdicts: &[Verdict],
    generated: &mut Generated,
    wants: &impl Fn(Verdict) -> bool,
) -> io::Result<()> {
    let UplinkTx {
        io,
        vlan,
        worker,
        counters,
        coalescer,
        scratch,
    } = tx;
    let mut result = Ok(());
    // One choice for the whole destination: the monitor may publish meanwhile.
    let view = io.bond.as_deref().map(crate::tables::bond::Bond::view);
    let bond = view.as_ref();
    for (m, member) in io.members.iter().enumerate() {
        if bond.is_some_and(|bond| !bond.carries(m)) {
            continue;
        }
        let Some(queue) = member.io.queues.get(worker) else {
            continue;
        };
        let capabilities = member.io.capabilities;
        // A tagged copy is written as is: the coalescer works on untagged frames.
        let gro = (vlan.is_none() && tx::coalesces(&capabilities)).then_some(&mut *coalescer);
        let before = account.tally;
        let mut guard = queue.lock();
        let mut sender = Sender {
            capabilities,
            queue: &mut guard,
            account: &mut *account,
            gro,
            vlan,
            tpid: io.tpid,
            scratch: &mut *scratch,
        };
        in_order(batch, verdicts, generated, wants, |frame, origin| {
            if bond.is_none_or(|bond| bond.member_for(frame) == Some(m)) {
                sender.send(frame, origin);
            }
        });
        sender.finish();
        if let Err(error) = sender.flush() {
            result = Err(error);
        }
        drop(guard);
        if bond.is_some() {
            let after = account.tally;
            counters.add_tx(
                member.id,
                (after.packets + after.generated_packets)
                    .saturating_sub(before.packets + before.generated_packets),
                (after.bytes + after.generated_bytes)
                    .saturating_sub(before.bytes + before.generated_bytes),
            );
        }
    }
    if let Some(bond) = bond {
        let mut stranded = 0u64;
        in_order(batch, verdicts, generated, wants, |frame, _| {
            if bond.member_for(frame).is_none() {
                stranded += 1;
            }
        });
        if stranded > 0 {
            count_drop(
                counters,
                account.port,
                tx::DropReason::BondDown.into(),
                stranded,
            );
        }
    }
    result
}

/// Writes one frame to `queue` (sent at once, or queued for the flush at the end of the
/// destination), adding `counted` to the tally; a failure is counted as a drop on the port
/// (and logged, rate-limited) instead. A queued frame's `counted` goes into the ledger, so
/// that a refusal at the flush is counted the same way.
fn write_frame(queue: &mut PortQueue, account: &mut TxAccount<'_>, frame: &[u8], counted: Counted) {
    if !account.taps.is_empty() {
        let ethernet = frame.get(VNET_HDR_LEN..).unwrap_or_default();
        let port = account.port;
        for tap in account.taps.iter().filter(|tap| tap.wants_tx(port)) {
            tap.offer(account.worker, &[], ethernet);
        }
    }
    let result = queue.enqueue(frame, &mut |position, error| {
        account.refused_queued(position, error);
    });
    match result {
        Ok(sent) => {
            if let Some((origin, bytes)) = counted {
                account.tally.add(origin, 1, bytes);
            }
            if let Sent::Queued(position) = sent {
                if let Some(slot) = account.ledger.get_mut(position) {
                    *slot = counted;
                }
            }
        }
        Err(error) => account.refused(&error),
    }
}

impl Sender<'_, '_> {
    /// Adapts `frame` to the port and sends it; every failure is a counted drop.
    fn send(&mut self, frame: &mut [u8], origin: Origin) {
        match tx::prepare(frame, &self.capabilities) {
            Ok(Prepared::Unchanged) => {}
            Ok(Prepared::ChecksumCompleted) => self.account.tally.completed += 1,
            Err(reason) => {
                count_drop(self.account.counters, self.account.port, reason.into(), 1);
                return;
            }
        }
        let bytes = tx::wire_len(frame);
        let Sender {
            queue,
            account,
            gro,
            vlan,
            tpid,
            scratch,
            ..
        } = self;
        if let Some(vid) = *vlan {
            tx::push_vlan(frame, *tpid, vid, scratch);
            write_frame(queue, account, scratch, Some((origin, bytes + 4)));
            return;
        }
        match (origin, gro) {
            (Origin::Routed, Some(gro)) => {
                // Counted as sent when offered; a merged write that fails is one drop.
                gro.push(frame, &mut |frame| write_frame(queue, account, frame, None));
                account.tally.add(origin, 1, bytes);
            }
            (Origin::Routed, None) => write_frame(queue, account, frame, Some((origin, bytes))),
            (Origin::Switch, gro) => {
                // The switch's own frames keep their place after what was offered before.
                if let Some(gro) = gro {
                    gro.flush(&mut |frame| write_frame(queue, account, frame, None));
                }
                write_frame(queue, account, frame, Some((origin, bytes)));
            }
        }
    }

    /// Writes what the coalescer still holds (end of this destination's frames).
    fn finish(&mut self) {
        let Sender {
            queue,
            account,
            gro,
            ..
        } = self;
        if let Some(gro) = gro {
            gro.flush(&mut |frame| write_frame(queue, account, frame, None));
        }
    }

    /// Hands what the destination queue holds to the kernel (after [`finish`]); each frame
    /// it refuses is taken off the tally and counted as a drop.
    ///
    /// [`finish`]: Sender::finish
    fn flush(&mut self) -> io::Result<()> {
        let Sender { queue, account, .. } = self;
        queue.flush_with(&mut |position, error| account.refused_queued(position, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::snapshot;
    use crate::pipeline::l2;
    use crate::tables::snapshot::SubnetId;

    fn ids(plan: &TxPlan) -> Vec<u32> {
        plan.destinations().iter().map(|d| d.port.0).collect()
    }

    const FROM_ONE: Option<Source> = Some(Source {
        port: PortId(1),
        subnet: SubnetId(1),
    });

    #[test]
    fn plan_lists_each_destination_once() {
        let snapshot = snapshot();
        let mut plan = TxPlan::new();
        let hairpin = Verdict::Drop(DropCause::L2(l2::DropReason::Hairpin));
        let verdicts = [
            Verdict::Forward(PortId(2)),
            Verdict::Forward(PortId(3)),
            hairpin,
            Verdict::Forward(PortId(2)),
            Verdict::Consumed,
        ];
        plan.build(&snapshot, FROM_ONE, verdicts.iter().copied());
        assert_eq!(ids(&plan), vec![2, 3]);
        // Port 2 gets frames 0 and 3, in order; nobody gets the dropped or consumed frame.
        let to_two = plan.destinations()[0];
        let frames: Vec<usize> = (0..verdicts.len())
            .filter(|&i| to_two.wants(verdicts[i], FROM_ONE))
            .collect();
        assert_eq!(frames, vec![0, 3]);
    }

    #[test]
    fn plan_floods_to_the_subnet_except_ingress() {
        let snapshot = snapshot();
        let mut plan = TxPlan::new();
        let verdicts = [Verdict::Forward(PortId(3)), Verdict::Flood];
        plan.build(&snapshot, FROM_ONE, verdicts.iter().copied());
        assert_eq!(ids(&plan), vec![3, 2]);
        // Port 3 gets both frames, port 2 only the flooded one.
        let to_three = plan.destinations()[0];
        let to_two = plan.destinations()[1];
        assert!(to_three.wants(verdicts[0], FROM_ONE) && to_three.wants(verdicts[1], FROM_ONE));
        assert!(!to_two.wants(verdicts[0], FROM_ONE) && to_two.wants(verdicts[1], FROM_ONE));
    }

    #[test]
    fn plan_floods_other_subnets_for_routed_and_generated_frames() {
        let snapshot = snapshot();
        let mut plan = TxPlan::new();
        // A routed frame flooded into red (ports 4, 5) except port 4, an ARP request flooded
        // into red without exception, and an answer back to the ingress port.
        let routed = Verdict::FloodSubnet {
            subnet: SubnetId(2),
            except: Some(PortId(4)),
        };
        let request = Verdict::FloodSubnet {
            subnet: SubnetId(2),
            except: None,
        };
        let answer = Verdict::Forward(PortId(1));
        plan.build(&snapshot, FROM_ONE, [routed, request, answer].into_iter());
        assert_eq!(ids(&plan), vec![1, 5, 4]);
        let [one, five, four] = [0, 1, 2].map(|i| plan.destinations()[i]);
        assert!(one.wants(answer, FROM_ONE) && !one.wants(routed, FROM_ONE));
        assert!(!four.wants(routed, FROM_ONE) && four.wants(request, FROM_ONE));
        assert!(five.wants(routed, FROM_ONE) && five.wants(request, FROM_ONE));
        // Outside a batch, an L2 flood has no subnet to go to.
        assert!(!five.wants(Verdict::Flood, None));
    }

    #[test]
    fn plan_resets_between_batches() {
        let snapshot = snapshot();
        let mut plan = TxPlan::new();
        plan.build(&snapshot, FROM_ONE, [Verdict::Flood].into_iter());
        assert_eq!(ids(&plan), vec![2, 3]);
        plan.build(
            &snapshot,
            FROM_ONE,
            [Verdict::Forward(PortId(2))].into_iter(),
        );
        assert_eq!(ids(&plan), vec![2], "the flood does not leak");
        plan.build(&snapshot, FROM_ONE, [].into_iter());
        assert!(plan.destinations().is_empty());
    }

    #[test]
    fn plan_handles_ids_beyond_max_ports() {
        let snapshot = snapshot();
        let mut plan = TxPlan::new();
        let far = PortId(u32::try_from(MAX_PORTS).unwrap() + 5);
        plan.build(
            &snapshot,
            FROM_ONE,
            [Verdict::Forward(far), Verdict::Forward(far)].into_iter(),
        );
        assert_eq!(ids(&plan), vec![far.0]);
        assert!(plan.destinations()[0].wants(Verdict::Forward(far), FROM_ONE));
    }

    #[test]
    fn queue_full_errors() {
        assert!(is_queue_full(&io::Error::from(io::ErrorKind::WouldBlock)));
        assert!(is_queue_full(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!is_queue_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
