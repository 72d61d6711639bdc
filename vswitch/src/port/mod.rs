//! Ports: interfaces the switch attaches to containers, and the other devices the workers
//! read and write (the uplink, the VTEP).
//!
//! A port is opened by [`attach`] (create the device, move it into the container's namespace,
//! configure it) or [`reopen`] (after a daemon restart, find the device the container still
//! has). It yields a [`PortIo`]: one [`PortQueue`] per worker, each used by exactly one worker,
//! so the per-queue `Mutex` is never contended (it is taken once per batch). The uplink
//! ([`uplink`]) is a [`PortIo`] of AF_PACKET queues too.
//!
//! The VTEP ([`vtep`]) is not a port: it has its own queues ([`vtep::Vtep`]), which take
//! frames only with a VNI and remote VTEPs (from the `vxlan-encap` stage). What the workers
//! poll, devices and VTEP alike, they read through [`RxQueues`].
//!
//! Every frame crossing a device's queue is a 10-byte `virtio_net_hdr` followed by the
//! Ethernet frame.

pub mod bond;
pub mod lacp;
pub mod tap;
pub mod uplink;
pub mod veth;
pub mod vtep;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::Arc;

use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use self::vtep::{Vtep, VtepQueue};
use crate::sys::af_packet::PacketSocket;
pub use crate::sys::batch::{RxBatch, Sent};
use crate::sys::netns::NetnsRef;
use crate::sys::tap::TapQueue;

/// Identifies a port inside one daemon run. Small and dense (ids are reused after detach) so
/// that per-port state can live in flat arrays indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u32);

/// The most ports one daemon serves; per-worker counter arrays are sized by it.
pub const MAX_PORTS: usize = 4096;

/// How a container is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A TAP device from /dev/net/tun, moved into the container; we hold its queues.
    #[default]
    Tap,
    /// A veth pair: one end in the container, the host end read with AF_PACKET.
    Veth,
}

/// Everything needed to create, re-open or remove a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    /// The NetworkInterface resource name (unique per daemon).
    pub name: String,
    /// The container's namespace.
    pub netns: NetnsRef,
    /// Interface name inside the container (`eth0`).
    pub ifname: String,
    /// TAP or veth.
    pub kind: PortKind,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    /// MTU of the container's interface.
    pub mtu: u16,
    /// Addresses to configure on the container's interface, with their prefix length.
    pub addresses: Vec<Ipv4Net>,
    /// Default route installed in the container, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Further routes installed in the container: destination via gateway.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Further IPv6 routes: destination via the Subnet's IPv6 gateway.
    pub routes6: Vec<(ipnet::Ipv6Net, std::net::Ipv6Addr)>,
    /// The IPv6 address to configure (without duplicate address detection), if any.
    pub address6: Option<ipnet::Ipv6Net>,
    /// The IPv6 default route's gateway, if any.
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Number of queues to open: one per worker.
    pub queues: usize,
    /// The resolver configuration for a named namespace (`ip netns` binds
    /// `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`), when its Subnet has DNS.
    pub resolv_conf: Option<String>,
}

/// Kernel features a port's queues were opened with (logged at start, shown by `describe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Frames carry a `virtio_net_hdr` (TAP IFF_VNET_HDR, AF_PACKET PACKET_VNET_HDR).
    pub vnet_hdr: bool,
    /// The port accepts frames with a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub tx_partial_csum: bool,
    /// The port accepts TCP GSO super-frames (TSO4/TSO6) on transmit.
    pub tx_gso: bool,
    /// `TUN_F_*` bits given to TUNSETOFFLOAD (TAP only): what the container may send us.
    pub tun_offload_flags: u32,
}

/// One queue of a port: owned by one worker.
#[derive(Debug)]
pub enum PortQueue {
    /// A TAP queue (one fd of an IFF_MULTI_QUEUE device).
    Tap(TapQueue),
    /// An AF_PACKET socket bound to the veth host end (a PACKET_FANOUT member).
    Packet(PacketSocket),
}

impl AsFd for PortQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            PortQueue::Tap(q) => q.as_fd(),
            PortQueue::Packet(s) => s.as_fd(),
        }
    }
}

impl PortQueue {
    /// The fd to register with epoll (readable when frames wait).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            PortQueue::Tap(q) => q.raw_fd(),
            PortQueue::Packet(s) => s.raw_fd(),
        }
    }

    /// Moves waiting frames into `batch` until it is full or the queue is empty; returns how
    /// many were added. Never blocks.
    ///
    /// # Errors
    /// The kernel's error, other than "nothing to read".
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        match self {
            PortQueue::Tap(q) => q.recv_batch(batch),
            PortQueue::Packet(s) => s.recv_batch(batch),
        }
    }

    /// Sends one frame (`virtio_net_hdr` + Ethernet) at once. Never blocks: a full queue is
    /// an error (`WouldBlock`) that the caller counts as a drop.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            PortQueue::Tap(q) => q.send(frame),
            PortQueue::Packet(s) => s.send(frame),
        }
    }

    /// Hands one frame (`virtio_net_hdr` + Ethernet) over for transmission, after the frames
    /// given before it. A queue that batches (AF_PACKET: one `sendmmsg` per flush) copies it
    /// for the next [`flush_with`](PortQueue::flush_with) and says where it waits
    /// ([`Sent::Queued`]); a full one flushes first, reporting each frame the kernel refuses
    /// to `failed` as `flush_with` does. The others send it at once ([`Sent::Now`]). Never
    /// blocks.
    ///
    /// # Errors
    /// The kernel's error for a frame sent at once (`WouldBlock` for a full queue, counted as a
    /// drop by the caller).
    pub fn enqueue(
        &mut self,
        frame: &[u8],
        failed: &mut impl FnMut(usize, &io::Error),
    ) -> io::Result<Sent> {
        match self {
            PortQueue::Tap(q) => q.send(frame).map(|()| Sent::Now),
            PortQueue::Packet(s) => s.enqueue(frame, failed),
        }
    }

    /// Pushes out frames queued by [`enqueue`](PortQueue::enqueue) (an AF_PACKET queue); a
    /// no-op for a TAP queue. For a caller that does not need to know which frames the kernel
    /// refused (see [`flush_with`](PortQueue::flush_with)).
    ///
    /// # Errors
    /// The kernel's error, when not one queued frame could be sent.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            PortQueue::Tap(_) => Ok(()),
            PortQueue::Packet(s) => s.flush(),
        }
    }

    /// Pushes out the frames queued by [`enqueue`](PortQueue::enqueue) (one `sendmmsg` for an
    /// AF_PACKET queue); each one the kernel refuses is reported to `failed` with the position
    /// [`Sent::Queued`] gave and the kernel's error, so the caller counts it as it counts a
    /// failed send. A TAP queue has nothing queued.
    ///
    /// # Errors
    /// None today: every refused frame goes to `failed`. (The `Result` keeps the caller's
    /// flush-error path for a queue that cannot say which frames failed.)
    pub fn flush_with(&mut self, failed: &mut impl FnMut(usize, &io::Error)) -> io::Result<()> {
        match self {
            PortQueue::Tap(_) => Ok(()),
            PortQueue::Packet(s) => {
                // Its error (no frame sent) repeats what `failed` heard for each frame.
                let _ = s.flush_with(failed);
                Ok(())
            }
        }
    }
}

/// The opened device behind a port.
#[derive(Debug)]
pub struct PortIo {
    /// TAP or veth.
    pub kind: PortKind,
    /// One queue per worker, index = worker index.
    pub queues: Vec<Mutex<PortQueue>>,
    /// What the queues were opened with.
    pub capabilities: Capabilities,
    /// Name of the device in the daemon's namespace (the veth host end), if any.
    pub host_ifname: Option<String>,
}

/// Why a port could not be attached, re-opened or removed. Each message names the interface
/// and says what to check.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The target namespace does not exist or cannot be entered.
    #[error(
        "network namespace {netns} not found or not enterable ({source}); create it first (ip netns add NAME) or check the path/pid"
    )]
    Netns {
        /// The namespace as given.
        netns: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// An interface of that name already exists in the container.
    #[error("interface {ifname} already exists in netns {netns}; choose another --ifname")]
    IfnameTaken {
        /// The interface name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// The device is gone (re-open after restart found nothing).
    #[error("interface {ifname} no longer exists in netns {netns}")]
    Gone {
        /// The interface name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// A system call failed.
    #[error("{what} for interface {name}: {source}")]
    Sys {
        /// The operation that failed, e.g. "TUNSETIFF".
        what: String,
        /// The NetworkInterface name.
        name: String,
        /// The kernel's error.
        source: io::Error,
    },
}

/// The name of a port's device in the daemon's namespace (`vs` + 8 hex digits of a hash of
/// the resource name): stable across restarts, within IFNAMSIZ, unlikely to collide.
pub fn host_ifname(name: &str) -> String {
    // FNV-1a: stable across releases, unlike std's DefaultHasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("vs{hash:08x}")
}

/// Creates the device for `req`, moves it into the container's namespace, configures it
/// (name, MAC, MTU, addresses, default route, up) and opens one queue per worker.
///
/// # Errors
/// [`PortError`] naming the interface and what to check; nothing is left behind on error.
pub fn attach(req: &AttachRequest) -> Result<PortIo, PortError> {
    let written = write_resolv_conf(req)?;
    let attached = match req.kind {
        PortKind::Tap => tap::attach(req),
        PortKind::Veth => veth::attach(req),
    };
    if attached.is_err() && written {
        remove_resolv_conf(req);
    }
    attached
}

/// The first line of the resolv.conf files the switch writes; only those it removes.
pub const RESOLV_CONF_HEADER: &str = "written by vswitchd for NetworkInterface";

/// Where `ip netns exec NAME` finds the namespace's resolv.conf; `None` for a namespace
/// given by path or pid (a container runtime writes its own from the CNI result).
fn resolv_conf_path(req: &AttachRequest) -> Option<std::path::PathBuf> {
    match &req.netns {
        NetnsRef::Name(name) => Some(
            std::path::Path::new("/etc/netns")
                .join(name)
                .join("resolv.conf"),
        ),
        _ => None,
    }
}

/// Writes the request's resolv.conf for a named namespace; true when it did.
fn write_resolv_conf(req: &AttachRequest) -> Result<bool, PortError> {
    let (Some(text), Some(path)) = (&req.resolv_conf, resolv_conf_path(req)) else {
        return Ok(false);
    };
    let sys = |what: &str, source: io::Error| PortError::Sys {
        what: format!("{what} {}", path.display()),
        name: req.name.clone(),
        source,
    };
    // A file the administrator wrote is theirs: left as it is.
    let foreign = std::fs::read_to_string(&path).is_ok_and(|text| {
        !text
            .lines()
            .next()
            .is_some_and(|line| line.contains(RESOLV_CONF_HEADER))
    });
    if foreign {
        tracing::info!(interface = %req.name, path = %path.display(), "resolv.conf exists and was not written by vswitchd: left as it is");
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| sys("create the directory of", e))?;
    }
    // Written aside and renamed, so a reader never sees half a file.
    let temporary = path.with_extension("vswitchd.tmp");
    std::fs::write(&temporary, text).map_err(|e| sys("write", e))?;
    std::fs::rename(&temporary, &path).map_err(|e| sys("rename to", e))?;
    Ok(true)
}

/// Removes the namespace's resolv.conf if the switch wrote it (and its directory, when
/// empty); anything else is left alone.
fn remove_resolv_conf(req: &AttachRequest) {
    let Some(path) = resolv_conf_path(req) else {
        return;
    };
    let ours = std::fs::read_to_string(&path).is_ok_and(|text| {
        text.lines().next().is_some_and(|line| {
            line.contains(RESOLV_CONF_HEADER) && line.contains(&format!("{:?}", req.name))
        })
    });
    if ours {
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Re-opens the queues of a port that survived a daemon restart (persistent TAP inside the
/// container, or veth host end), without touching the container's configuration.
///
/// # Errors
/// [`PortError::Gone`] when the device or namespace no longer exists.
pub fn reopen(req: &AttachRequest) -> Result<PortIo, PortError> {
    match req.kind {
        PortKind::Tap => tap::reopen(req),
        PortKind::Veth => veth::reopen(req),
    }
}

/// Removes the port's device (the TAP, or the veth pair). `io`, when given, is closed first.
/// A device that is already gone is not an error.
///
/// # Errors
/// [`PortError`] when the device exists but cannot be removed.
pub fn detach(req: &AttachRequest, io: Option<PortIo>) -> Result<(), PortError> {
    remove_resolv_conf(req);
    match req.kind {
        PortKind::Tap => tap::detach(req, io),
        PortKind::Veth => veth::detach(req, io),
    }
}

/// The receive queues of something the workers poll, borrowed from the snapshot: a device's
/// (a port's or the uplink's [`PortIo`]) or the VTEP's. Both are read the same way, into an
/// [`RxBatch`]; where their frames go next is the pipeline's business.
#[derive(Debug, Clone, Copy)]
pub enum RxQueues<'a> {
    /// A TAP's or an AF_PACKET socket's queues.
    Device(&'a Arc<PortIo>),
    /// The VTEP's UDP sockets.
    Vtep(&'a Arc<Vtep>),
}

impl RxQueues<'_> {
    /// How many queues there are (one per worker).
    pub fn count(&self) -> usize {
        match self {
            RxQueues::Device(io) => io.queues.len(),
            RxQueues::Vtep(vtep) => vtep.queues.len(),
        }
    }

    /// Moves the frames waiting in worker `index`'s queue into `batch` (see
    /// [`PortQueue::recv_batch`], [`VtepQueue::recv_batch`]); `None` when there is no such
    /// queue. Never blocks.
    pub fn recv_batch(&self, index: usize, batch: &mut RxBatch) -> Option<io::Result<usize>> {
        match self {
            RxQueues::Device(io) => Some(io.queues.get(index)?.lock().recv_batch(batch)),
            RxQueues::Vtep(vtep) => Some(vtep.queues.get(index)?.lock().recv_batch(batch)),
        }
    }

    /// Calls `f` with the fd of worker `index`'s queue, readable when frames wait (to add it
    /// to an epoll set, or remove it); `None` when there is no such queue.
    pub fn with_fd<R>(&self, index: usize, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        match self {
            RxQueues::Device(io) => Some(f(io.queues.get(index)?.lock().as_fd())),
            RxQueues::Vtep(vtep) => Some(f(vtep.queues.get(index)?.lock().as_fd())),
        }
    }

    /// Keeps the queues open (a reference) for as long as the handle lives.
    pub fn hold(&self) -> RxHandle {
        match self {
            RxQueues::Device(io) => RxHandle::Device(Arc::clone(io)),
            RxQueues::Vtep(vtep) => RxHandle::Vtep(Arc::clone(vtep)),
        }
    }

    /// True when `handle` holds these very queues (not merely equal ones).
    pub fn is(&self, handle: &RxHandle) -> bool {
        match (self, handle) {
            (RxQueues::Device(io), RxHandle::Device(held)) => Arc::ptr_eq(io, held),
            (RxQueues::Vtep(vtep), RxHandle::Vtep(held)) => Arc::ptr_eq(vtep, held),
            _ => false,
        }
    }
}

/// Receive queues kept open by whoever polls them (see [`RxQueues::hold`]): a worker holds
/// one while the queue's fd is in its epoll set, so the fd is never closed while registered.
#[derive(Debug, Clone)]
pub enum RxHandle {
    /// A device's queues.
    Device(Arc<PortIo>),
    /// The VTEP's queues.
    Vtep(Arc<Vtep>),
}

impl RxHandle {
    /// The queues held.
    pub fn queues(&self) -> RxQueues<'_> {
        match self {
            RxHandle::Device(io) => RxQueues::Device(io),
            RxHandle::Vtep(vtep) => RxQueues::Vtep(vtep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_and_short() {
        assert_eq!(host_ifname("c1"), host_ifname("c1"));
        assert_ne!(host_ifname("c1"), host_ifname("c2"));
        assert!(host_ifname("a-very-long-interface-name-indeed").len() <= 15);
    }
}
