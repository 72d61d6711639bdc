//! The runtime: the [`Engine`] that starts the worker threads, publishes snapshots to them and
//! sums their counters.
//!
//! [`Engine::start`] spawns `workers` threads (`vswitch-w0`, ...). The control plane compiles
//! the configuration into a [`Snapshot`] and [`publish`](Engine::publish)es it: one atomic
//! pointer swap plus a wake-up of each worker. Workers re-sync their queues when they see a
//! new generation; [`Engine::wait_synced`] tells when all of them have (and so have released
//! every port that left the snapshot). Each worker runs the [`pipeline`](crate::pipeline)
//! over the batches it reads from its queues.
//!
//! Shared mutable state is the [`Fdb`], the [`Neighbors`] table and the remote (overlay) MAC
//! table, `vxlan::VxlanSharedFdb` (all sharded, read-mostly), and the per-worker
//! [`counters::WorkerCounters`] (one writer each). The API reads them through
//! [`Engine::stats`], [`Engine::fdb`] and [`Engine::neighbors`].
//!
//! The runtime is the top of the datapath: it uses the pipeline, the tables, the ports and
//! `sys`; only the control plane uses it.

pub mod affinity;
pub mod capture;
pub mod counters;
mod share;
mod worker;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::pipeline::DropCause;
use crate::port::PortId;
use crate::tables::clock::{Clock, MonotonicClock};
use crate::tables::counters::Event;
use crate::tables::fdb::Fdb;
use crate::tables::neigh::{NeighborEntry, Neighbors};
use crate::tables::snapshot::{Snapshot, VtepEntry};
pub use affinity::WorkerCpus;
use counters::{PortTotals, WorkerCounters};
use worker::{Shared, Worker};

/// How the engine is started.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of worker threads (each port has one queue per worker).
    pub workers: usize,
    /// Adaptive busy-polling: how long a worker keeps polling its queues without sleeping
    /// after it last found work. Zero (the default) makes every idle worker sleep in
    /// `epoll_wait` at once.
    ///
    /// A sleeping worker costs the sender a wake-up per batch and the packet the scheduler's
    /// latency; polling trades that for CPU time while traffic flows (an idle worker sleeps
    /// `busy_poll` after its last packet). It pays when the worker has a core to itself, and
    /// costs when the host's cores are oversubscribed: the polling worker then takes CPU time
    /// from the containers whose packets it waits for (see the README's performance section).
    pub busy_poll: Duration,
    /// Where the workers run: pinned one to a CPU, or moved by the scheduler
    /// ([`WorkerCpus`]). `vswitchd` pins them by default; [`EngineConfig::new`] does not.
    pub cpus: WorkerCpus,
    /// The most connections conntrack holds (the one table of the run, shared by NAT,
    /// LoadBalancers and policy); a new one on a full table evicts an unassured entry or is
    /// dropped (`conntrack.table_full`).
    pub conntrack_max_entries: usize,
    /// Broadcast and multicast frames one container port may have flooded per second, per
    /// worker (storm control; beyond it `l2.storm_control`); 0 turns storm control off.
    pub storm_control_pps: u64,
    /// The workers' nice value (`None`: the process's). The kernel switches a frame in a
    /// softirq, ahead of any process; a worker at a favoured nice value comes close: a busy
    /// container on the worker's core slows the traffic of the others less.
    pub worker_nice: Option<i32>,
}

impl EngineConfig {
    /// The default busy-poll window: none. Polling burns a core for as long as traffic
    /// trickles in, which a container host should opt into, not find.
    pub const DEFAULT_BUSY_POLL: Duration = Duration::ZERO;

    /// `workers` floating workers with the default busy-poll window.
    pub fn new(workers: usize) -> EngineConfig {
        EngineConfig {
            workers,
            busy_poll: EngineConfig::DEFAULT_BUSY_POLL,
            cpus: WorkerCpus::Floating,
            conntrack_max_entries: nat::ConntrackConfig::default().max_entries,
            storm_control_pps: crate::pipeline::STORM_CONTROL_PPS,
            worker_nice: None,
        }
    }
}

/// Counters of one port (or of the uplink), summed over workers.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortStats {
    /// NetworkInterface name (or Uplink name).
    pub name: String,
    /// Frames received from the container.
    pub rx_packets: u64,
    /// Bytes received from the container.
    pub rx_bytes: u64,
    /// Frames switched or routed to the container.
    pub tx_packets: u64,
    /// Bytes switched or routed to the container.
    pub tx_bytes: u64,
    /// Frames the switch itself sent to the container (ARP, ICMP), not in `tx_packets`.
    pub tx_generated_packets: u64,
    /// Bytes of those frames.
    pub tx_generated_bytes: u64,
    /// Frames dropped, by stable reason key (`port_security.src_mac`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Failed reads of the port's queues (the kernel's errors, not frames).
    pub rx_errors: u64,
    /// Times the port's queue was left unread for a while because nearly every frame it
    /// sent fast was dropped (the kernel drops what overflows meanwhile, at the sender).
    #[serde(default)]
    pub rx_backoffs: u64,
}

/// What the workers spent since the engine started, summed over them: with the bytes moved,
/// where their cycles go (`perf` reports each per GB).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStats {
    /// Nanoseconds spent working (outside `epoll_wait`).
    pub busy_ns: u64,
    /// Nanoseconds spent in `epoll_wait`.
    pub idle_ns: u64,
    /// Batches received from queues.
    pub batches: u64,
    /// Frames in those batches.
    pub batch_frames: u64,
    /// System calls by kind (`read`, `write`, `recv`, `send`, `recvmmsg`, `sendmmsg`,
    /// `sendmsg`, `getsockopt`, `epoll_wait`, `eventfd`), every kind listed.
    pub syscalls: BTreeMap<String, u64>,
    /// Reads that found nothing (the call that ends each TAP batch, mostly).
    pub empty_reads: u64,
    /// Bytes summed by the software checksum.
    pub checksum_bytes: u64,
    /// Bytes written by software segmentation (the segments' total length).
    pub segmented_bytes: u64,
    /// Segments it produced.
    pub segments: u64,
    /// Segments merged in software into another (GRO).
    pub coalesced_segments: u64,
    /// `sendmsg` calls carrying a `UDP_SEGMENT` super-datagram.
    pub udp_gso_sends: u64,
    /// Times a worker slept and was woken (the kernel's voluntary context switches of the
    /// worker threads).
    pub wakeups: u64,
    /// Times a worker was preempted (their nonvoluntary context switches).
    pub preemptions: u64,
}

impl DatapathStats {
    /// Every system call counted.
    pub fn total_syscalls(&self) -> u64 {
        self.syscalls.values().sum()
    }
}

/// One worker's costs (see [`Engine::worker_costs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerCosts {
    /// What it tallied.
    pub costs: crate::cost::Costs,
    /// Its thread's context switches (`None` before it started, or when unreadable).
    pub switches: Option<crate::sys::sched::Switches>,
}

/// Counters of the whole switch.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// Number of workers.
    pub workers: usize,
    /// The CPU each worker is pinned to, by worker index; `None` when they float
    /// ([`WorkerCpus`]).
    pub worker_cpus: Option<Vec<usize>>,
    /// Per-port counters.
    pub ports: Vec<PortStats>,
    /// Drops by reason summed over all ports.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Events that are not drops (`l2.mac_limit_reached`, ...).
    pub events: std::collections::BTreeMap<String, u64>,
    /// The packet captures running (`vswitchctl capture`).
    #[serde(default)]
    pub captures: Vec<capture::CaptureInfo>,
    /// What the workers spent (system calls, software checksums and segmentation, wake-ups).
    #[serde(default)]
    pub datapath: DatapathStats,
}

/// One entry of the neighbour (ARP) table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeighborRow {
    /// Subnet name.
    pub subnet: String,
    /// The neighbour's IPv4 address.
    pub ip: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff` (empty while unresolved).
    pub mac: String,
    /// `reachable`, `stale` or `incomplete` (ARP sent, no answer yet).
    pub state: String,
    /// Seconds since it was last confirmed.
    pub age_seconds: u64,
}

/// One learned MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbRow {
    /// Subnet name.
    pub subnet: String,
    /// The MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// NetworkInterface name of the port it was learned on.
    pub port: String,
    /// Seconds since a frame from it was last seen.
    pub age_seconds: u64,
    /// For a MAC learned on a subnet's tunnel: the remote VTEP it is behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep: Option<String>,
}

/// How many MACs are learned (`GET /v1/fdb?count=true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbCount {
    /// Every learned MAC.
    pub count: usize,
    /// Those learned on a stretched Subnet's tunnel port (behind a remote VTEP).
    pub remote: usize,
}

/// The running datapath.
#[derive(Debug)]
pub struct Engine {
    workers: usize,
    /// The CPU each worker is pinned to (`None`: floating).
    cpus: Option<Vec<usize>>,
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

impl Engine {
    /// Starts the workers with an empty snapshot.
    ///
    /// # Errors
    /// When a worker thread or its epoll cannot be created, or `workers` is 0.
    pub fn start(config: EngineConfig) -> io::Result<Engine> {
        Engine::start_with_clock(config, Arc::new(MonotonicClock::new()))
    }

    /// [`start`](Engine::start) with the given clock (tests drive MAC ageing with a
    /// [`FakeClock`](crate::tables::clock::FakeClock)).
    ///
    /// # Errors
    /// As [`start`](Engine::start).
    pub fn start_with_clock(config: EngineConfig, clock: Arc<dyn Clock>) -> io::Result<Engine> {
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the engine needs at least one worker (--workers 1 or more)",
            ));
        }
        let cpus = match config.cpus {
            WorkerCpus::Floating => None,
            ref pinned => pinned
                .resolve(config.workers, &affinity::allowed_cpus()?)
                .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?,
        };
        let wakers = (0..config.workers)
            .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC))
            .collect::<Result<Box<[EventFd]>, _>>()?;
        let shared = Arc::new(Shared {
            // The conntrack table of the whole run: every later snapshot carries it over.
            current: Arc::new(arc_swap::ArcSwap::from_pointee(
                Snapshot::default().with_nat(
                    Arc::new(nat::NatRules::new()),
                    Arc::new(nat::Conntrack::new(nat::ConntrackConfig {
                        max_entries: config.conntrack_max_entries.max(1),
                        ..nat::ConntrackConfig::default()
                    })),
                ),
            )),
            fdb: Fdb::new(),
            neighbors: Neighbors::new(),
            remote_fdb: vxlan::VxlanSharedFdb::new(Default::default()),
            counters: (0..config.workers).map(|_| WorkerCounters::new()).collect(),
            outside_events: (0..Event::COUNT).map(|_| AtomicU64::new(0)).collect(),
            synced: (0..config.workers).map(|_| AtomicU64::new(0)).collect(),
            busy_poll: config.busy_poll,
            storm_control_pps: config.storm_control_pps,
            stop: AtomicBool::new(false),
            wakers,
            clock,
            live_trace: crate::trace::live::LiveTrace::default(),
            captures: Arc::new(capture::Captures::new()),
        });
        let engine = Engine {
            workers: config.workers,
            cpus: cpus.clone(),
            shared: Arc::clone(&shared),
            handles: Mutex::new(Vec::with_capacity(config.workers)),
        };
        for index in 0..config.workers {
            // On error, `engine` is dropped here, which stops the workers already started.
            let worker = Worker::new(index, Arc::clone(&shared))?;
            let cpu = cpus.as_ref().map(|cpus| cpus[index]);
            let worker_nice = config.worker_nice;
            let handle = std::thread::Builder::new()
                .name(format!("vswitch-w{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        // The set was checked against the allowed CPUs just before; a cpuset
                        // changed since then leaves this worker floating, which still works.
                        if let Err(e) = affinity::pin_current_thread(cpu) {
                            warn!(worker = index, cpu, error = %e, "cannot pin the worker; it floats");
                        }
                    }
                    if let Some(nice) = worker_nice {
                        if let Err(e) = crate::sys::sched::set_thread_nice(nice) {
                            warn!(worker = index, nice, error = %e, "cannot set the worker's nice value (CAP_SYS_NICE?); it keeps the process's");
                        }
                    }
                    worker.run()
                })?;
            engine.handles.lock().push(handle);
        }
        info!(
            workers = config.workers,
            busy_poll_us = config.busy_poll.as_micros(),
            cpus = %cpus.as_deref().map_or_else(|| "floating".to_owned(), |cpus| format!("{cpus:?}")),
            nice = %config.worker_nice.map_or_else(|| "kept".to_owned(), |nice| nice.to_string()),
            storm_control_pps = config.storm_control_pps,
            "engine started"
        );
        Ok(engine)
    }

    /// Number of workers (ports open this many queues).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Publishes a new configuration; workers pick it up at their next batch (they are woken
    /// at once). Calls must not race each other (the controller serialises them).
    pub fn publish(&self, mut snapshot: Snapshot) {
        snapshot.generation = self.shared.current.load().generation + 1;
        self.shared.current.store(Arc::new(snapshot));
        self.shared.wake_all();
    }

    /// The snapshot workers currently use.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// Waits until every worker has re-synced to `generation` or later (or stopped), so that
    /// none holds a port absent from that snapshot any more (its `Arc<PortIo>` is released);
    /// returns false on timeout.
    pub fn wait_synced(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self
                .shared
                .synced
                .iter()
                .all(|synced| synced.load(Ordering::Acquire) >= generation);
            if all {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs `f` on the current snapshot and the shared tables at the datapath's time, as a
    /// worker's stages see them (no frame is traced: `trace` is `None`).
    pub fn with_tables<R>(&self, f: impl FnOnce(&crate::pipeline::Context<'_>) -> R) -> R {
        let snapshot = self.shared.current.load_full();
        let ctx = crate::pipeline::Context {
            snapshot: &snapshot,
            fdb: &self.shared.fdb,
            neighbors: &self.shared.neighbors,
            remote_fdb: &self.shared.remote_fdb,
            now_ms: self.shared.clock.now_ms(),
            trace: None,
        };
        f(&ctx)
    }

    /// The datapath's clock (what the workers stamp frames with).
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.shared.clock)
    }

    /// Counts events from outside the workers (a bond monitor) in counters of their own
    /// (a worker's are written by that worker alone), which the totals add.
    pub fn event_sink(&self) -> crate::port::bond::EventSink {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |event, n| {
            if let Some(counter) = shared.outside_events.get(event.index()) {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    }

    /// The live packet trace the workers serve.
    pub fn live_trace(&self) -> &crate::trace::live::LiveTrace {
        &self.shared.live_trace
    }

    /// Forgets the remote MACs learned behind the VTEP at `ip` (a runner that moved or lost
    /// its ID); returns how many. Frames to them are flooded until they are learned again.
    pub fn forget_remote_vtep(&self, ip: std::net::IpAddr) -> usize {
        self.shared.remote_fdb.forget_vtep(ip)
    }

    /// Forgets everything about a port id before it is (re)used: counters and learned MACs.
    pub fn reset_port(&self, id: PortId) {
        for counters in self.shared.counters.iter() {
            counters.reset_port(id);
        }
        self.shared.fdb.forget_port(id);
    }

    /// Counters, summed over workers, for the ports of the current snapshot (by name), its
    /// uplink (under the Uplink's name) and its VTEP (under `vxlan`).
    pub fn stats(&self) -> StatsReport {
        self.stats_with_costs(&self.worker_costs())
    }

    /// [`Engine::stats`], its `datapath` summed from `costs` (what
    /// [`Engine::worker_costs`] returned), for a caller that needs both: the threads'
    /// status files are read once.
    pub fn stats_with_costs(&self, costs: &[WorkerCosts]) -> StatsReport {
        let snapshot = self.current();
        let mut all_drops = [0u64; DropCause::COUNT];
        let mut ports = Vec::with_capacity(snapshot.ports().len() + 1);
        // A bond's members are listed each under `uplink/interface`; the uplink's own line
        // is then their sum (its id counts the frames sent that no member took).
        let members: Vec<(PortId, &String)> = snapshot
            .uplink
            .iter()
            .filter(|uplink| uplink.io.bond.is_some())
            .flat_map(|uplink| uplink.io.members.iter().map(|m| (m.id, &m.name)))
            .collect();
        let devices = snapshot
            .ports()
            .iter()
            .map(|port| (port.id, &port.name))
            .chain(
                snapshot
                    .uplink
                    .iter()
                    .map(|uplink| (uplink.id, &uplink.name)),
            )
            .chain(members.iter().copied());
        // The VTEP is not a port, but its counters (datagrams received, drops of vxlan-input
        // and of what followed) are listed like a port's, under its name.
        let vtep_name = String::from(VtepEntry::NAME);
        let vtep = snapshot.vtep.iter().map(|vtep| (vtep.id, &vtep_name));
        for (id, name) in devices.chain(vtep) {
            let mut totals = PortTotals::default();
            let bonded = snapshot
                .uplink
                .as_ref()
                .filter(|uplink| uplink.id == id && uplink.io.bond.is_some());
            for counters in self.shared.counters.iter() {
                totals.add(&counters.totals(id));
            }
            let own_drops = totals.drops;
            // What a bond's members received (and dropped) is the uplink's too; what they
            // sent is already counted on the uplink.
            for member in bonded.iter().flat_map(|uplink| uplink.io.members.iter()) {
                for counters in self.shared.counters.iter() {
                    let part = counters.totals(member.id);
                    totals.rx_packets += part.rx_packets;
                    totals.rx_bytes += part.rx_bytes;
                    totals.rx_errors += part.rx_errors;
                    for (sum, value) in totals.drops.iter_mut().zip(part.drops.iter()) {
                        *sum += value;
                    }
                }
            }
            // A bonded uplink's line adds its members', which are counted on their own.
            for (sum, value) in all_drops.iter_mut().zip(own_drops.iter()) {
                *sum += value;
            }
            ports.push(PortStats {
                name: name.clone(),
                rx_packets: totals.rx_packets,
                rx_bytes: totals.rx_bytes,
                tx_packets: totals.tx_packets,
                tx_bytes: totals.tx_bytes,
                tx_generated_packets: totals.tx_generated_packets,
                tx_generated_bytes: totals.tx_generated_bytes,
                drops: DropCause::all()
                    .filter(|cause| totals.drop_count(*cause) > 0)
                    .map(|cause| (cause.key().to_string(), totals.drop_count(cause)))
                    .collect(),
                rx_errors: totals.rx_errors,
                rx_backoffs: totals.rx_backoffs,
            });
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        StatsReport {
            workers: self.workers,
            worker_cpus: self.cpus.clone(),
            ports,
            drops: DropCause::all()
                .map(|cause| (cause.key().to_string(), all_drops[cause.index()]))
                .collect(),
            events: Event::ALL
                .iter()
                .map(|&event| {
                    let outside = self
                        .shared
                        .outside_events
                        .get(event.index())
                        .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed));
                    let sum = self
                        .shared
                        .counters
                        .iter()
                        .map(|c| c.event(event))
                        .sum::<u64>()
                        + outside;
                    (event.key().to_string(), sum)
                })
                .collect(),
            captures: self.shared.captures.infos(),
            datapath: self.datapath_stats(costs),
        }
    }

    /// Each worker's costs and context switches, by worker index.
    pub fn worker_costs(&self) -> Vec<WorkerCosts> {
        self.shared
            .counters
            .iter()
            .map(|counters| WorkerCosts {
                costs: counters.costs(),
                switches: counters.tid().and_then(crate::sys::sched::thread_switches),
            })
            .collect()
    }

    /// The workers' load and costs (`workers`, from [`Engine::worker_costs`]), summed.
    pub fn datapath_stats(&self, workers: &[WorkerCosts]) -> DatapathStats {
        let mut costs = crate::cost::Costs::default();
        let mut stats = DatapathStats::default();
        for worker in workers {
            costs.add(&worker.costs);
            if let Some(switches) = worker.switches {
                stats.wakeups += switches.voluntary;
                stats.preemptions += switches.involuntary;
            }
        }
        for load in self.worker_loads() {
            stats.busy_ns += load.busy_ns;
            stats.idle_ns += load.idle_ns;
            stats.batches += load.batches.iter().sum::<u64>();
            stats.batch_frames += load.batch_frames;
        }
        stats.syscalls = crate::cost::Syscall::ALL
            .iter()
            .map(|kind| (kind.key().to_owned(), costs.syscalls[kind.index()]))
            .collect();
        stats.empty_reads = costs.empty_reads;
        stats.checksum_bytes = costs.checksum_bytes;
        stats.segmented_bytes = costs.segmented_bytes;
        stats.segments = costs.segments;
        stats.coalesced_segments = costs.coalesced_segments;
        stats.udp_gso_sends = costs.udp_gso_sends;
        stats
    }

    /// Starts capturing on the port, uplink or VTEP (`vxlan`) named `spec.port`; the capture
    /// runs until the returned stream is dropped.
    ///
    /// # Errors
    /// [`CaptureError`](capture::CaptureError) when no such port can be captured on.
    pub fn start_capture(
        &self,
        spec: capture::CaptureSpec,
    ) -> Result<capture::CaptureStream, capture::CaptureError> {
        let snapshot = self.current();
        let port = snapshot.ports().iter().find(|port| port.name == spec.port);
        if let Some(port) = port {
            if port.tunnel().is_some() {
                return Err(capture::CaptureError::TunnelPort { port: spec.port });
            }
        }
        let uplink = snapshot.uplink.as_ref();
        // A bonded uplink receives on its members: its capture takes what each one reads.
        let rx_also: Vec<PortId> = uplink
            .filter(|u| u.name == spec.port && u.io.bond.is_some())
            .map(|u| u.io.members.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let members = || uplink.into_iter().flat_map(|u| u.io.members.iter());
        let id = port
            .map(|port| port.id)
            .or_else(|| uplink.filter(|u| u.name == spec.port).map(|u| u.id))
            .or_else(|| {
                members()
                    .find(|m| m.name == spec.port && m.id != uplink.map_or(m.id, |u| u.id))
                    .map(|m| m.id)
            })
            .or_else(|| {
                let vtep = snapshot.vtep.as_ref();
                vtep.filter(|_| spec.port == VtepEntry::NAME).map(|v| v.id)
            });
        let Some(id) = id else {
            let mut known: Vec<String> = snapshot
                .ports()
                .iter()
                .filter(|port| port.tunnel().is_none())
                .map(|port| port.name.clone())
                .chain(uplink.map(|uplink| uplink.name.clone()))
                .chain(
                    members()
                        .filter(|_| uplink.is_some_and(|u| u.io.bond.is_some()))
                        .map(|m| m.name.clone()),
                )
                .chain(snapshot.vtep.iter().map(|_| VtepEntry::NAME.to_owned()))
                .collect();
            known.sort();
            return Err(capture::CaptureError::UnknownPort {
                port: spec.port,
                known,
            });
        };
        info!(port = %spec.port, direction = spec.direction.as_str(), "capture started");
        Ok(self.shared.captures.start(spec, id, rx_also, self.workers))
    }

    /// Each worker's load counters (busy and idle time, batch sizes), by worker index.
    pub fn worker_loads(&self) -> Vec<counters::WorkerLoad> {
        self.shared
            .counters
            .iter()
            .map(WorkerCounters::load)
            .collect()
    }

    /// The running captures.
    pub fn captures(&self) -> Vec<capture::CaptureInfo> {
        self.shared.captures.infos()
    }

    /// Ends every capture's stream (the daemon is stopping).
    pub fn close_captures(&self) {
        self.shared.captures.close_all();
    }

    /// Every drop reason and event key with its one-line description (for `vswitchctl stats`
    /// help and the docs).
    pub fn counter_descriptions() -> BTreeMap<&'static str, &'static str> {
        DropCause::all()
            .map(|cause| (cause.key(), cause.description()))
            .chain(Event::ALL.iter().map(|e| (e.key(), e.description())))
            .collect()
    }

    /// The neighbour (ARP) table, with subnet names from the current snapshot (the uplink's
    /// name for its segment), sorted by subnet and address.
    pub fn neighbors(&self) -> Vec<NeighborRow> {
        let snapshot = self.current();
        let now = self.shared.clock.now_ms();
        let mut entries: Vec<(String, NeighborEntry)> = self
            .shared
            .neighbors
            .entries(now)
            .into_iter()
            .filter_map(|entry| {
                let name = match snapshot.subnet(entry.subnet) {
                    Some(subnet) => subnet.name.clone(),
                    // Neighbours on the uplink are listed under the uplink's name.
                    None => snapshot
                        .uplink
                        .as_ref()
                        .filter(|uplink| uplink.segment == entry.subnet)?
                        .name
                        .clone(),
                };
                Some((name, entry))
            })
            .collect();
        entries.sort_by(|(a_name, a), (b_name, b)| (a_name, a.ip).cmp(&(b_name, b.ip)));
        entries
            .into_iter()
            .map(|(subnet, entry)| NeighborRow {
                subnet,
                ip: entry.ip.to_string(),
                mac: entry.mac.map(format_mac).unwrap_or_default(),
                state: entry.state.as_str().to_string(),
                age_seconds: entry.age_ms / 1_000,
            })
            .collect()
    }

    /// Sizes of the shared tables: learned MACs and neighbours (expired entries not yet
    /// swept included), for metrics.
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.shared.fdb.len(), self.shared.neighbors.len())
    }

    /// Learned MACs that have not aged out, with subnet and port names from the current
    /// snapshot, sorted by subnet and MAC.
    pub fn fdb(&self) -> Vec<FdbRow> {
        let snapshot = self.current();
        let now = self.shared.clock.now_ms();
        let mut rows: Vec<FdbRow> = self
            .shared
            .fdb
            .entries(&snapshot, now)
            .into_iter()
            .filter_map(|entry| {
                let subnet = snapshot.subnet(entry.subnet)?;
                let port = snapshot.port(entry.port)?;
                let vtep = port.tunnel().and_then(|tunnel| {
                    let remote = self.shared.remote_fdb.lookup(tunnel.vni, entry.mac, now)?;
                    Some(remote.ip.to_string())
                });
                Some(FdbRow {
                    subnet: subnet.name.clone(),
                    mac: format_mac(entry.mac),
                    port: port.name.clone(),
                    age_seconds: entry.age_ms / 1_000,
                    vtep,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.subnet, &a.mac).cmp(&(&b.subnet, &b.mac)));
        rows
    }

    /// How many MACs [`Engine::fdb`] would list, without listing them.
    pub fn fdb_count(&self) -> FdbCount {
        let snapshot = self.current();
        let now = self.shared.clock.now_ms();
        let mut count = FdbCount::default();
        for entry in self.shared.fdb.entries(&snapshot, now) {
            if snapshot.subnet(entry.subnet).is_none() {
                continue;
            }
            let Some(port) = snapshot.port(entry.port) else {
                continue;
            };
            count.count += 1;
            if port.tunnel().is_some() {
                count.remote += 1;
            }
        }
        count
    }

    /// Stops the workers and waits for them (also done on drop). Idempotent.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_all();
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.handles.lock());
        for handle in handles {
            let name = handle.thread().name().unwrap_or("worker").to_string();
            if handle.join().is_err() {
                error!(thread = %name, "worker thread panicked");
            }
        }
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(&mut self) {
        self.stop();
    }

    #[cfg(test)]
    pub(crate) fn learned(&self) -> &Fdb {
        &self.shared.fdb
    }

    #[cfg(test)]
    pub(crate) fn neighbor_table(&self) -> &Neighbors {
        &self.shared.neighbors
    }

    #[cfg(test)]
    pub(crate) fn worker_counters(&self, worker: usize) -> &WorkerCounters {
        &self.shared.counters[worker]
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::{MAC_A, MAC_B, snapshot};
    use crate::pipeline::{parse, port_security};
    use crate::tables::clock::FakeClock;
    use crate::tables::snapshot::{
        DEFAULT_MAC_AGEING, DEFAULT_MAC_LIMIT, Egress, NetworkId, PortEntry, SubnetEntry, SubnetId,
    };

    fn engine(workers: usize, clock: Arc<FakeClock>) -> Engine {
        Engine::start_with_clock(EngineConfig::new(workers), clock).expect("engine starts")
    }

    #[test]
    fn zero_workers_is_refused() {
        let error = Engine::start(EngineConfig::new(0)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn starts_publishes_syncs_and_stops() {
        let mut engine = engine(2, Arc::new(FakeClock::new(0)));
        assert_eq!(engine.workers(), 2);
        assert_eq!(engine.current().generation, 0);
        engine.publish(snapshot());
        let generation = engine.current().generation;
        assert_eq!(generation, 1);
        assert!(engine.wait_synced(generation, Duration::from_secs(10)));
        engine.publish(Snapshot::default());
        assert!(engine.wait_synced(2, Duration::from_secs(10)));
        assert!(
            !engine.wait_synced(3, Duration::from_millis(20)),
            "not yet published"
        );
        engine.shutdown();
        engine.stop();
        assert!(
            engine.wait_synced(u64::MAX, Duration::ZERO),
            "stopped workers hold nothing"
        );
    }

    #[test]
    fn worker_threads_are_named() {
        let engine = engine(1, Arc::new(FakeClock::new(0)));
        let names: Vec<String> = engine
            .handles
            .lock()
            .iter()
            .map(|h| h.thread().name().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, vec!["vswitch-w0".to_string()]);
    }

    #[test]
    fn stats_are_keyed_by_port_name_and_summed() {
        let engine = engine(2, Arc::new(FakeClock::new(0)));
        engine.publish(snapshot());
        let runt = DropCause::Parse(parse::DropReason::Runt);
        let spoof = DropCause::PortSecurity(port_security::DropReason::SrcMac);
        engine.worker_counters(0).add_rx(PortId(1), 2, 120);
        engine.worker_counters(1).add_rx(PortId(1), 3, 180);
        engine.worker_counters(1).add_tx(PortId(2), 1, 60);
        engine.worker_counters(0).add_drop(PortId(1), runt, 1);
        engine.worker_counters(1).add_drop(PortId(2), spoof, 4);
        engine
            .worker_counters(0)
            .add_event(Event::MacLimitReached, 1);
        let stats = engine.stats();
        assert_eq!(stats.workers, 2);
        let names: Vec<&str> = stats.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["port1", "port2", "port3", "port4", "port5"]);
        let port1 = &stats.ports[0];
        assert_eq!((port1.rx_packets, port1.rx_bytes), (5, 300));
        assert_eq!(port1.drops.get("parse.runt"), Some(&1));
        assert_eq!(port1.drops.len(), 1, "only non-zero reasons per port");
        assert_eq!(stats.ports[1].tx_packets, 1);
        assert_eq!(stats.drops.get("parse.runt"), Some(&1));
        assert_eq!(stats.drops.get("port_security.src_mac"), Some(&4));
        assert_eq!(
            stats.drops.len(),
            DropCause::COUNT,
            "every key, zeros included"
        );
        assert_eq!(stats.events.get("l2.mac_limit_reached"), Some(&1));
        engine.reset_port(PortId(1));
        let stats = engine.stats();
        assert_eq!(stats.ports[0].rx_packets, 0);
        assert!(stats.ports[0].drops.is_empty());
        assert_eq!(stats.ports[1].drops.get("port_security.src_mac"), Some(&4));
    }

    #[test]
    fn the_uplink_has_stats_under_its_name_and_nat_drops_add_up() {
        use crate::pipeline::fixtures::{UPLINK, uplink_snapshot};
        use crate::pipeline::{nat, uplink};
        let engine = engine(1, Arc::new(FakeClock::new(0)));
        engine.publish(uplink_snapshot());
        let counters = engine.worker_counters(0);
        counters.add_rx(UPLINK, 3, 180);
        counters.add_drop(UPLINK, DropCause::Uplink(uplink::DropReason::NotOurs), 2);
        counters.add_drop(UPLINK, DropCause::Nat(nat::DropReason::Unsolicited), 1);
        counters.add_drop(
            PortId(1),
            DropCause::Conntrack(nat::ConntrackReason::TableFull),
            5,
        );
        counters.add_event(Event::NatTranslated, 7);
        let stats = engine.stats();
        let up = stats
            .ports
            .iter()
            .find(|port| port.name == "up")
            .expect("the uplink is listed by its name");
        assert_eq!((up.rx_packets, up.rx_bytes), (3, 180));
        assert_eq!(up.drops.get("uplink.not_ours"), Some(&2));
        assert_eq!(stats.drops.get("nat.unsolicited"), Some(&1));
        assert_eq!(stats.drops.get("conntrack.table_full"), Some(&5));
        assert_eq!(stats.events.get("nat.translated"), Some(&7));
        assert_eq!(stats.events.get("nat.connections_created"), Some(&0));
        let descriptions = Engine::counter_descriptions();
        for key in [
            "uplink.not_ours",
            "uplink.not_owned",
            "nat.fragment",
            "nat.no_gateway_mac",
            "nat.interface_ports_exhausted",
            "conntrack.not_a_start",
        ] {
            assert!(descriptions.contains_key(key), "{key}");
        }
    }

    #[test]
    fn fdb_lists_names_and_ages_and_forgets_reset_ports() {
        let clock = Arc::new(FakeClock::new(10_000));
        let engine = engine(1, Arc::clone(&clock));
        engine.publish(snapshot());
        let current = engine.current();
        let blue = current.subnet(SubnetId(1)).unwrap();
        engine
            .learned()
            .learn(blue, MAC_A, PortId(1), clock.now_ms());
        clock.advance(Duration::from_millis(2_500));
        engine
            .learned()
            .learn(blue, MAC_B, PortId(2), clock.now_ms());
        let rows = engine.fdb();
        let view: Vec<(&str, &str, &str, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.subnet.as_str(),
                    r.mac.as_str(),
                    r.port.as_str(),
                    r.age_seconds,
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                ("blue", "02:00:00:00:00:0a", "port1", 2),
                ("blue", "02:00:00:00:00:0b", "port2", 0),
            ]
        );
        assert_eq!(
            engine.fdb_count(),
            FdbCount {
                count: 2,
                remote: 0
            }
        );
        engine.reset_port(PortId(1));
        assert_eq!(engine.fdb().len(), 1);
        assert_eq!(engine.fdb_count().count, 1);
        clock.advance(Duration::from_secs(300));
        assert!(engine.fdb().is_empty(), "aged out");
    }

    #[test]
    fn descriptions_cover_every_key() {
        let descriptions = Engine::counter_descriptions();
        assert_eq!(descriptions.len(), DropCause::COUNT + Event::COUNT);
        assert!(descriptions.contains_key("l2.mac_limit_reached"));
        assert!(descriptions.contains_key("tx.queue_full"));
    }

    #[test]
    fn engine_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }

    /// Runs a command; its stdout, or an error naming it with its stderr.
    fn run(args: &[&str]) -> Result<String, String> {
        let output = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .map_err(|e| format!("{}: {e} (is it installed?)", args[0]))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{:?} failed: {}{}",
                args,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A network namespace, deleted on drop.
    struct Netns(String);

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = run(&["ip", "netns", "del", &self.0]);
        }
    }

    /// Real devices: two multi-queue TAPs, each moved into its own namespace, switched by a
    /// two-worker engine, without the control plane. Needs root, /dev/net/tun, iproute2, ping
    /// and iperf3 (CI runs as root; without them the test fails and says what is missing).
    #[test]
    #[ignore = "needs root: creates namespaces and TAP devices"]
    fn datapath_switches_between_two_taps() {
        use std::process::Command;

        use crate::port::{Capabilities, PortIo, PortKind, PortQueue};
        use crate::sys::tap::TapQueue;

        /// `TUN_F_CSUM` (include/uapi/linux/if_tun.h).
        const TUN_F_CSUM: u32 = 0x01;

        assert!(
            nix::unistd::geteuid().is_root(),
            "datapath_switches_between_two_taps needs root (CAP_NET_ADMIN) to create TAPs and namespaces"
        );
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "datapath_switches_between_two_taps needs /dev/net/tun"
        );
        let tag = std::process::id() % 100_000;
        let workers = 2;
        let mut namespaces = Vec::new();
        let mut ports = Vec::new();
        for (id, side, mac, ip) in [
            (1u32, 'a', [0x02, 0, 0, 0xdd, 0, 1], "10.213.0.1"),
            (2u32, 'b', [0x02, 0, 0, 0xdd, 0, 2], "10.213.0.2"),
        ] {
            let ifname = format!("vdp{tag}{side}");
            let netns = Netns(format!("vswdp{tag}{side}"));
            run(&["ip", "netns", "add", &netns.0]).unwrap();
            namespaces.push(netns);
            let netns = &namespaces.last().unwrap().0;
            // Side a lets its kernel hand us partial checksums (TUN_F_CSUM, no TSO); side b
            // says it cannot take them, so the switch must complete them on the way to b.
            let offload = if side == 'a' { TUN_F_CSUM } else { 0 };
            let queues = (0..workers)
                .map(|_| {
                    let queue = TapQueue::open(&ifname)?;
                    queue.set_offload(offload, &ifname)?;
                    Ok(Mutex::new(PortQueue::Tap(queue)))
                })
                .collect::<Result<Vec<_>, crate::sys::tap::TapError>>()
                .unwrap();
            run(&["ip", "link", "set", &ifname, "netns", netns]).unwrap();
            let mac_text = format_mac(mac);
            let address = format!("{ip}/24");
            run(&[
                "ip", "-n", netns, "link", "set", &ifname, "address", &mac_text,
            ])
            .unwrap();
            run(&["ip", "-n", netns, "addr", "add", &address, "dev", &ifname]).unwrap();
            run(&["ip", "-n", netns, "link", "set", &ifname, "up"]).unwrap();
            ports.push(PortEntry {
                id: PortId(id),
                name: format!("dp-{side}"),
                subnet: SubnetId(7),
                mac,
                ips: vec![ip.parse().unwrap()],
                mtu: 1500,
                allowed_sources: Vec::new(),
                allowed_sources6: Vec::new(),
                ips6: Vec::new(),
                proxy_arp: false,
                egress: Egress::Queue(Arc::new(PortIo {
                    kind: PortKind::Tap,
                    queues,
                    capabilities: Capabilities {
                        vnet_hdr: true,
                        tx_partial_csum: side == 'a',
                        tx_gso: false,
                        tun_offload_flags: 0,
                    },
                    host_ifname: None,
                })),
            });
        }
        let subnet = SubnetEntry {
            id: SubnetId(7),
            name: "dp".to_string(),
            network: "default".to_string(),
            network_id: NetworkId(0),
            cidr: "10.199.0.0/24".parse().unwrap(),
            gateway: "10.199.0.1".parse().unwrap(),
            gateway_mac: [0x02, 0, 0, 0, 0xdd, 0x01],
            shared_gateway: false,
            mtu: 1500,
            ports: vec![PortId(1), PortId(2)],
            mac_ageing: DEFAULT_MAC_AGEING,
            mac_limit: DEFAULT_MAC_LIMIT,
            dhcp: None,
            v6: None,
        };
        // Workers busy-poll and are pinned here (the routing test below has them float and
        // sleep between batches).
        let engine = Engine::start(EngineConfig {
            workers,
            busy_poll: Duration::from_micros(200),
            cpus: WorkerCpus::Auto,
            ..EngineConfig::new(workers)
        })
        .unwrap();
        engine.publish(Snapshot::new(ports, vec![subnet]));
        assert!(engine.wait_synced(1, Duration::from_secs(5)));
        let ns_a = namespaces[0].0.clone();
        let ping = |source: Option<&str>| {
            let mut args = vec!["ip", "netns", "exec", &ns_a, "ping", "-c", "3", "-i", "0.2"];
            args.extend(["-W", "2"]);
            if let Some(source) = source {
                args.extend(["-I", source]);
            }
            args.push("10.213.0.2");
            run(&args)
        };
        ping(None).expect("ping through the switch");
        let stats = engine.stats();
        let (a, b) = (&stats.ports[0], &stats.ports[1]);
        assert!(a.rx_packets >= 4 && b.tx_packets >= 4, "{stats:?}");
        assert!(b.rx_packets >= 4 && a.tx_packets >= 4, "{stats:?}");
        let learned: Vec<String> = engine.fdb().into_iter().map(|row| row.port).collect();
        assert_eq!(learned, vec!["dp-a".to_string(), "dp-b".to_string()]);

        // TCP from a: its checksums arrive partial and are completed for b, whose kernel
        // verifies them (a bad checksum would stall the transfer).
        let ns_b = namespaces[1].0.clone();
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns_b, "iperf3", "-s", "-1", "-p", "5299"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 is installed");
        std::thread::sleep(Duration::from_millis(500));
        let client = run(&[
            "ip",
            "netns",
            "exec",
            &ns_a,
            "iperf3",
            "-c",
            "10.213.0.2",
            "-p",
            "5299",
            "-n",
            "2M",
        ]);
        let _ = server.kill();
        let _ = server.wait();
        client.expect("TCP through the switch with completed checksums");
        let stats = engine.stats();
        assert!(
            stats.events["tx.checksum_completed"] > 0,
            "partial checksums were completed: {stats:?}"
        );

        // A spoofed source address is dropped and counted.
        run(&[
            "ip",
            "-n",
            &ns_a,
            "addr",
            "add",
            "10.213.0.9/24",
            "dev",
            &format!("vdp{tag}a"),
        ])
        .unwrap();
        assert!(
            ping(Some("10.213.0.9")).is_err(),
            "spoofed source must not pass"
        );
        let stats = engine.stats();
        assert!(
            stats.ports[0]
                .drops
                .get("port_security.ipv4_src")
                .copied()
                .unwrap_or(0)
                >= 1
                || stats.ports[0]
                    .drops
                    .get("port_security.arp_spa")
                    .copied()
                    .unwrap_or(0)
                    >= 1,
            "{stats:?}"
        );
        drop(engine);
    }

    #[test]
    fn neighbors_lists_subnet_names_states_and_ages() {
        let clock = Arc::new(FakeClock::new(1_000));
        let engine = engine(1, Arc::clone(&clock));
        engine.publish(snapshot());
        let table = engine.neighbor_table();
        let blue = SubnetId(1);
        table.confirm(
            blue,
            "172.30.0.3".parse::<std::net::Ipv4Addr>().unwrap(),
            MAC_B,
            1_000,
            true,
        );
        table.confirm(
            blue,
            "172.30.0.2".parse::<std::net::Ipv4Addr>().unwrap(),
            MAC_A,
            1_000,
            true,
        );
        table.resolve(
            SubnetId(2),
            "10.9.0.7".parse::<std::net::Ipv4Addr>().unwrap(),
            1_000,
        );
        // A subnet that is not in the snapshot is not listed.
        table.confirm(
            SubnetId(42),
            "10.0.0.1".parse::<std::net::Ipv4Addr>().unwrap(),
            MAC_A,
            1_000,
            true,
        );
        clock.advance(Duration::from_secs(31));
        let rows: Vec<(String, String, String, String, u64)> = engine
            .neighbors()
            .into_iter()
            .map(|r| (r.subnet, r.ip, r.mac, r.state, r.age_seconds))
            .collect();
        let row = |subnet: &str, ip: &str, mac: &str, state: &str, age| {
            (subnet.into(), ip.into(), mac.into(), state.into(), age)
        };
        assert_eq!(
            rows,
            vec![
                row("blue", "172.30.0.2", "02:00:00:00:00:0a", "Stale", 31),
                row("blue", "172.30.0.3", "02:00:00:00:00:0b", "Stale", 31),
                row("red", "10.9.0.7", "", "Incomplete", 31),
            ]
        );
    }

    /// Real devices: two TAPs in two subnets of one Network, routed by a two-worker engine
    /// without the control plane: the gateway answers ping, traffic is routed both ways (the
    /// switch resolves the next hop with ARP while holding the first packet), TTL 1 gets
    /// "time exceeded" from the gateway, DF over the smaller MTU gets "fragmentation needed"
    /// with it, larger pings without DF are fragmented, and TCP with TSO crosses. Needs root,
    /// /dev/net/tun, iproute2, ping and iperf3 (without them the test fails and says so).
    #[test]
    #[ignore = "needs root: creates namespaces and TAP devices"]
    fn datapath_routes_between_two_subnets() {
        use crate::port::{Capabilities, PortIo, PortKind, PortQueue};
        use crate::sys::tap::TapQueue;
        use crate::tables::snapshot::{NetworkEntry, NextHop, RouteEntry, RouteOrigin};

        /// `TUN_F_CSUM | TUN_F_TSO4` (include/uapi/linux/if_tun.h).
        const TUN_F_CSUM_TSO4: u32 = 0x01 | 0x02;

        assert!(
            nix::unistd::geteuid().is_root(),
            "datapath_routes_between_two_subnets needs root (CAP_NET_ADMIN) to create TAPs and namespaces"
        );
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "datapath_routes_between_two_subnets needs /dev/net/tun"
        );
        let tag = std::process::id() % 100_000;
        let workers = 2;
        let mut namespaces = Vec::new();
        let mut ports = Vec::new();
        let mut subnets = Vec::new();
        let mut routes = Vec::new();
        for (id, side, mtu) in [(1u32, 'a', 1500u16), (2u32, 'b', 1400u16)] {
            let byte = u8::try_from(id).unwrap();
            let mac = [0x02, 0, 0, 0xdd, 0x10, byte];
            let ifname = format!("vrt{tag}{side}");
            let netns = Netns(format!("vswrt{tag}{side}"));
            run(&["ip", "netns", "add", &netns.0]).unwrap();
            namespaces.push(netns);
            let netns = &namespaces.last().unwrap().0;
            let queues = (0..workers)
                .map(|_| {
                    let queue = TapQueue::open(&ifname)?;
                    queue.set_offload(TUN_F_CSUM_TSO4, &ifname)?;
                    Ok(Mutex::new(PortQueue::Tap(queue)))
                })
                .collect::<Result<Vec<_>, crate::sys::tap::TapError>>()
                .unwrap();
            run(&["ip", "link", "set", &ifname, "netns", netns]).unwrap();
            let ip = format!("10.214.{id}.2");
            let gateway = format!("10.214.{id}.1");
            let mtu_text = mtu.to_string();
            for args in [
                vec!["link", "set", &ifname, "address", &format_mac(mac)],
                vec!["link", "set", &ifname, "mtu", &mtu_text],
                vec!["addr", "add", &format!("{ip}/24"), "dev", &ifname],
                vec!["link", "set", &ifname, "up"],
                vec!["route", "add", "default", "via", &gateway],
            ] {
                let mut command = vec!["ip", "-n", netns.as_str()];
                command.extend(args.iter().copied());
                run(&command).unwrap();
            }
            ports.push(PortEntry {
                id: PortId(id),
                name: format!("rt-{side}"),
                subnet: SubnetId(id),
                mac,
                ips: vec![ip.parse().unwrap()],
                mtu,
                allowed_sources: Vec::new(),
                allowed_sources6: Vec::new(),
                ips6: Vec::new(),
                proxy_arp: false,
                egress: Egress::Queue(Arc::new(PortIo {
                    kind: PortKind::Tap,
                    queues,
                    capabilities: Capabilities {
                        vnet_hdr: true,
                        tx_partial_csum: true,
                        tx_gso: true,
                        tun_offload_flags: TUN_F_CSUM_TSO4,
                    },
                    host_ifname: None,
                })),
            });
            let cidr = format!("10.214.{id}.0/24");
            subnets.push(SubnetEntry {
                id: SubnetId(id),
                name: format!("rt-{side}"),
                network: "rt".to_string(),
                network_id: NetworkId(0),
                cidr: cidr.parse().unwrap(),
                gateway: gateway.parse().unwrap(),
                gateway_mac: [0x02, 0, 0, 0xdd, 0xee, byte],
                shared_gateway: false,
                mtu,
                ports: vec![PortId(id)],
                mac_ageing: DEFAULT_MAC_AGEING,
                mac_limit: DEFAULT_MAC_LIMIT,
                dhcp: None,
                v6: None,
            });
            routes.push(RouteEntry {
                prefix: cidr.parse().unwrap(),
                subnet: SubnetId(id),
                next_hop: NextHop::Direct,
                origin: RouteOrigin::Connected,
            });
        }
        let network = NetworkEntry::new(NetworkId(0), "rt".into(), routes);
        let engine = Engine::start(EngineConfig::new(workers)).unwrap();
        engine.publish(Snapshot::new(ports, subnets).with_networks(vec![network]));
        assert!(engine.wait_synced(1, Duration::from_secs(5)));
        let (ns_a, ns_b) = (namespaces[0].0.clone(), namespaces[1].0.clone());
        let ping = |netns: &str, extra: &[&str], to: &str| {
            let mut args = vec!["ip", "netns", "exec", netns, "ping", "-c", "2", "-i", "0.2"];
            args.extend(["-W", "2"]);
            args.extend(extra);
            args.push(to);
            run(&args)
        };

        ping(&ns_a, &[], "10.214.1.1").expect("the gateway answers ping");
        ping(&ns_a, &[], "10.214.2.2").expect("routed a -> b");
        ping(&ns_b, &[], "10.214.1.2").expect("routed b -> a");
        let neighbors: Vec<(String, String, String)> = engine
            .neighbors()
            .into_iter()
            .map(|r| (r.subnet, r.ip, r.state))
            .collect();
        assert!(
            neighbors.contains(&("rt-b".into(), "10.214.2.2".into(), "Reachable".into()))
                && neighbors.contains(&("rt-a".into(), "10.214.1.2".into(), "Reachable".into())),
            "{neighbors:?}"
        );

        let expired = ping(&ns_a, &["-t", "1"], "10.214.2.2").expect_err("TTL 1 cannot cross");
        assert!(
            expired.contains("From 10.214.1.1") && expired.contains("Time to live exceeded"),
            "{expired}"
        );
        // Before PMTU discovery teaches a the smaller MTU: its 1500-byte fragments are
        // fragmented again by the switch.
        ping(&ns_a, &["-M", "dont", "-s", "3000"], "10.214.2.2")
            .expect("large pings without DF are fragmented");
        let too_big = ping(&ns_a, &["-M", "do", "-s", "1400"], "10.214.2.2")
            .expect_err("DF over a 1400 MTU cannot cross");
        assert!(
            too_big.contains("mtu = 1400") || too_big.contains("mtu=1400"),
            "{too_big}"
        );

        let mut server = std::process::Command::new("ip")
            .args(["netns", "exec", &ns_b, "iperf3", "-s", "-1", "-p", "5298"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 is installed");
        std::thread::sleep(Duration::from_millis(500));
        let client = run(&[
            "ip",
            "netns",
            "exec",
            &ns_a,
            "iperf3",
            "-c",
            "10.214.2.2",
            "-p",
            "5298",
            "-n",
            "4M",
        ]);
        let _ = server.kill();
        let _ = server.wait();
        client.expect("TCP with TSO routed a -> b");

        let stats = engine.stats();
        for (key, at_least) in [
            ("l3.routed", 8),
            ("l3.echo_replied", 2),
            ("l3.fragmented", 1),
            ("l3.icmp_sent", 2),
            ("l3.gratuitous_arp_sent", 2),
        ] {
            assert!(stats.events[key] >= at_least, "{key}: {stats:?}");
        }
        assert!(stats.drops["l3.ttl_expired"] >= 1, "{stats:?}");
        assert!(stats.drops["l3.mtu_exceeded"] >= 1, "{stats:?}");
        assert!(stats.ports[0].tx_generated_packets >= 4, "{stats:?}");
        drop(engine);
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac([0x02, 0, 0xab, 0xcd, 0xef, 0x01]),
            "02:00:ab:cd:ef:01"
        );
    }
}
