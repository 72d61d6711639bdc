//! The engine: worker threads, the published snapshot, learned MACs and counters (being
//! written).

pub mod snapshot;

use std::io;
use std::sync::Arc;

use serde::Serialize;

use crate::port::PortId;
pub use snapshot::{PortEntry, Snapshot, SubnetEntry, SubnetId};

/// How the engine is started.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of worker threads (each port has one queue per worker).
    pub workers: usize,
}

/// Counters of one port, summed over workers.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PortStats {
    /// NetworkInterface name.
    pub name: String,
    /// Frames received from the container.
    pub rx_packets: u64,
    /// Bytes received from the container.
    pub rx_bytes: u64,
    /// Frames sent to the container.
    pub tx_packets: u64,
    /// Bytes sent to the container.
    pub tx_bytes: u64,
    /// Frames dropped, by stable reason key (`port_security.src_mac`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// Counters of the whole switch.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StatsReport {
    /// Number of workers.
    pub workers: usize,
    /// Per-port counters.
    pub ports: Vec<PortStats>,
    /// Drops by reason summed over all ports.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Events that are not drops (`l2.mac_limit_reached`, ...).
    pub events: std::collections::BTreeMap<String, u64>,
}

/// One learned MAC.
#[derive(Debug, Clone, Serialize)]
pub struct FdbRow {
    /// Subnet name.
    pub subnet: String,
    /// The MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// NetworkInterface name of the port it was learned on.
    pub port: String,
    /// Seconds since a frame from it was last seen.
    pub age_seconds: u64,
}

/// The running datapath.
#[derive(Debug)]
pub struct Engine {
    workers: usize,
    current: Arc<arc_swap::ArcSwap<Snapshot>>,
}

impl Engine {
    /// Starts the workers with an empty snapshot.
    ///
    /// # Errors
    /// When a worker thread or its epoll cannot be created.
    pub fn start(config: EngineConfig) -> io::Result<Engine> {
        Ok(Engine {
            workers: config.workers,
            current: Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::default())),
        })
    }

    /// Number of workers (ports open this many queues).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Publishes a new configuration; workers pick it up at their next batch.
    pub fn publish(&self, mut snapshot: Snapshot) {
        snapshot.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(snapshot));
    }

    /// The snapshot workers currently use.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Forgets everything about a port id before it is (re)used: counters and learned MACs.
    pub fn reset_port(&self, _id: PortId) {}

    /// Counters, summed over workers.
    pub fn stats(&self) -> StatsReport {
        StatsReport::default()
    }

    /// Learned MACs.
    pub fn fdb(&self) -> Vec<FdbRow> {
        Vec::new()
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(&mut self) {}
}
