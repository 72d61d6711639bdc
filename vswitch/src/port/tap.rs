//! TAP ports: a multi-queue TAP device created in the daemon's namespace, moved into the
//! container's and configured there; the daemon keeps one queue fd per worker.
//!
//! Lifecycle:
//! - [`attach`]: check that the namespace exists and `ifname` is free in it; open all queues
//!   under the temporary name `host_ifname(name)` in the daemon's namespace (the first
//!   `TUNSETIFF` creates the device); make it persistent (it must survive a `kill -9` of the
//!   daemon); move it into the container's namespace; there rename it, set MAC and MTU,
//!   bring it and `lo` up, add the addresses and the default route. On any error the device
//!   is made non-persistent and its fds closed, which destroys it wherever it is.
//! - [`reopen`]: from a thread inside the container's namespace, re-attach one queue per
//!   worker to the (persistent) device by its final name; the container's configuration is
//!   not touched.
//! - [`detach`]: close the queues and delete the device inside the container's namespace.
//!
//! Frames the container sends may carry partial checksums and TCP super-frames (see
//! [`OffloadSupport::PIPELINE`]); frames we write may too.

use std::os::fd::{AsFd, OwnedFd};

use parking_lot::Mutex;

use super::{AttachRequest, Capabilities, PortError, PortIo, PortKind, PortQueue, host_ifname};
use crate::sys::netlink::{self, ContainerLinkConfig, LinkSetupError, NetlinkError};
use crate::sys::netns;
use crate::sys::tap::{self, OffloadSupport, TapError, TapQueue, tun_offload_flags};

/// Wraps a netlink failure for `req`.
pub(super) fn netlink_error(req: &AttachRequest, error: NetlinkError) -> PortError {
    PortError::Sys {
        what: error.what,
        name: req.name.clone(),
        source: error.source,
    }
}

/// Wraps a namespace that cannot be opened or entered.
pub(super) fn netns_error(req: &AttachRequest, source: std::io::Error) -> PortError {
    PortError::Netns {
        netns: req.netns.to_string(),
        source,
    }
}

fn tap_error(req: &AttachRequest, error: TapError) -> PortError {
    PortError::Sys {
        what: format!("{} on {}", error.what, error.ifname),
        name: req.name.clone(),
        source: error.source,
    }
}

fn gone(req: &AttachRequest) -> PortError {
    PortError::Gone {
        ifname: req.ifname.clone(),
        netns: req.netns.to_string(),
    }
}

fn ifname_taken(req: &AttachRequest) -> PortError {
    PortError::IfnameTaken {
        ifname: req.ifname.clone(),
        netns: req.netns.to_string(),
    }
}

/// Opens the namespace and checks that `req.ifname` is free in it.
pub(super) fn open_target(req: &AttachRequest) -> Result<OwnedFd, PortError> {
    let ns = netns::open(&req.netns).map_err(|e| netns_error(req, e))?;
    let existing = netlink::run_in(&ns, |nl| nl.link(&req.ifname))
        .map_err(|e| netns_error(req, e))?
        .map_err(|e| netlink_error(req, e))?;
    if existing.is_some() {
        return Err(ifname_taken(req));
    }
    Ok(ns)
}

/// Configures the link called `temporary`, just moved into `ns`, as `req` asks.
pub(super) fn configure_in_container(
    req: &AttachRequest,
    ns: &OwnedFd,
    temporary: &str,
) -> Result<(), PortError> {
    let config = ContainerLinkConfig {
        ifname: &req.ifname,
        mac: req.mac,
        mtu: req.mtu,
        addresses: &req.addresses,
        gateway: req.gateway,
        routes: &req.routes,
        routes6: &req.routes6,
        address6: req.address6,
        gateway6: req.gateway6,
    };
    netlink::run_in(ns, |nl| nl.configure_container_link(temporary, &config))
        .map_err(|e| netns_error(req, e))?
        .map_err(|e| match e {
            LinkSetupError::IfnameTaken(_) => ifname_taken(req),
            LinkSetupError::Netlink(e) => netlink_error(req, e),
        })?;
    Ok(())
}

/// Opens `req.queues` queues of the TAP `ifname` in the calling thread's namespace and
/// negotiates offloads; returns them with the offload bits that apply.
fn open_queues(req: &AttachRequest, ifname: &str) -> Result<(Vec<TapQueue>, u32), PortError> {
    let features = tap::features().map_err(|e| tap_error(req, e))?;
    tracing::debug!(port = %req.name, features = format_args!("{features:#x}"), "tun features");
    let mut queues = Vec::with_capacity(req.queues);
    for _ in 0..req.queues.max(1) {
        queues.push(TapQueue::open(ifname).map_err(|e| tap_error(req, e))?);
    }
    let wanted = tun_offload_flags(OffloadSupport::PIPELINE);
    let mut offloads = wanted;
    for queue in &queues {
        if let Err(error) = queue.set_offload(offloads, ifname) {
            if offloads != 0 && error.source.raw_os_error() == Some(libc::EINVAL) {
                // An older kernel that does not know a bit: fall back to no offloads (the
                // container then checksums and segments in software) and say so once.
                tracing::warn!(port = %req.name, wanted = format_args!("{wanted:#x}"), %error,
                    "TAP offloads refused; the container will checksum and segment itself");
                offloads = 0;
                queue
                    .set_offload(0, ifname)
                    .map_err(|e| tap_error(req, e))?;
            } else {
                return Err(tap_error(req, error));
            }
        }
    }
    tracing::debug!(port = %req.name, queues = queues.len(),
        offloads = format_args!("{offloads:#x}"), "TAP queues open");
    Ok((queues, offloads))
}

fn port_io(queues: Vec<TapQueue>, offloads: u32) -> PortIo {
    PortIo {
        kind: PortKind::Tap,
        queues: queues
            .into_iter()
            .map(|q| Mutex::new(PortQueue::Tap(q)))
            .collect(),
        capabilities: Capabilities {
            vnet_hdr: true,
            // tun_get_user() applies the virtio header of every frame we write: partial
            // checksums and TCP/UDP super-frames are handed to the container as such.
            tx_partial_csum: true,
            tx_gso: true,
            tun_offload_flags: offloads,
        },
        host_ifname: None,
    }
}

/// Destroys a device whose queues we hold: not persistent any more, and no fd left.
fn destroy(queues: Vec<TapQueue>, ifname: &str) {
    if let Some(first) = queues.first() {
        if let Err(error) = first.set_persist(false, ifname) {
            tracing::warn!(%error, "cleaning up a TAP that failed to attach");
        }
    }
    drop(queues);
}

/// See [`super::attach`].
pub fn attach(req: &AttachRequest) -> Result<PortIo, PortError> {
    let ns = open_target(req)?;
    let temporary = host_ifname(&req.name);
    // A device left under the temporary name by an attach that died half-way.
    if netlink::run(|nl| nl.delete_by_name(&temporary)).map_err(|e| netlink_error(req, e))? {
        tracing::warn!(port = %req.name, device = %temporary, "removed a stale device");
    }
    let (queues, offloads) = open_queues(req, &temporary)?;
    let result = queues
        .first()
        .map_or(Ok(()), |q| q.set_persist(true, &temporary))
        .map_err(|e| tap_error(req, e))
        .and_then(|()| {
            netlink::run(|nl| {
                let index = nl.index(&temporary)?;
                nl.move_to_netns(index, ns.as_fd())
            })
            .map_err(|e| netlink_error(req, e))
        })
        .and_then(|()| configure_in_container(req, &ns, &temporary));
    match result {
        Ok(()) => {
            tracing::debug!(port = %req.name, ifname = %req.ifname, netns = %req.netns,
                "TAP attached");
            Ok(port_io(queues, offloads))
        }
        Err(error) => {
            destroy(queues, &temporary);
            Err(error)
        }
    }
}

/// What stops a re-open inside the namespace.
enum ReopenError {
    Gone,
    Port(PortError),
    Netlink(NetlinkError),
}

impl From<NetlinkError> for ReopenError {
    fn from(error: NetlinkError) -> ReopenError {
        ReopenError::Netlink(error)
    }
}

/// See [`super::reopen`].
pub fn reopen(req: &AttachRequest) -> Result<PortIo, PortError> {
    // A namespace that is gone took the device with it.
    let ns = netns::open(&req.netns).map_err(|_| gone(req))?;
    let opened = netlink::run_in(&ns, |nl| {
        // Check first: TUNSETIFF on a missing name would create a fresh, empty device.
        match nl.link(&req.ifname)? {
            Some(link) if link.kind.as_deref() == Some(netlink::tun_kind().as_str()) => {}
            _ => return Err(ReopenError::Gone),
        }
        // This thread is inside the container's namespace, so /dev/net/tun is opened there
        // and TUNSETIFF finds the device by its final name.
        open_queues(req, &req.ifname).map_err(ReopenError::Port)
    })
    .map_err(|_| gone(req))?;
    match opened {
        Ok((queues, offloads)) => {
            tracing::debug!(port = %req.name, ifname = %req.ifname, netns = %req.netns,
                "TAP re-opened");
            Ok(port_io(queues, offloads))
        }
        Err(ReopenError::Gone) => Err(gone(req)),
        Err(ReopenError::Port(error)) => Err(error),
        Err(ReopenError::Netlink(error)) => Err(netlink_error(req, error)),
    }
}

/// See [`super::detach`].
pub fn detach(req: &AttachRequest, io: Option<PortIo>) -> Result<(), PortError> {
    drop(io);
    // Leftover of an attach that died before the move.
    netlink::run(|nl| nl.delete_by_name(&host_ifname(&req.name)))
        .map_err(|e| netlink_error(req, e))?;
    let Ok(ns) = netns::open(&req.netns) else {
        // The namespace is gone, and its devices with it.
        return Ok(());
    };
    let temporary = host_ifname(&req.name);
    let deleted = netlink::run_in(&ns, |nl| {
        // Moved in but not yet renamed by an attach that died half-way.
        if let Some(link) = nl.link(&temporary)?
            && link.kind.as_deref() == Some(netlink::tun_kind().as_str())
        {
            nl.delete(link.index)?;
        }
        match nl.link(&req.ifname)? {
            Some(link) if link.kind.as_deref() == Some(netlink::tun_kind().as_str()) => {
                nl.delete(link.index)
            }
            Some(link) => {
                tracing::warn!(port = %req.name, ifname = %req.ifname, kind = ?link.kind,
                    "not removing an interface that is not a TAP");
                Ok(())
            }
            None => Ok(()),
        }
    });
    match deleted {
        // The namespace could not be entered: it is going away.
        Err(_) => Ok(()),
        Ok(result) => result.map_err(|e| netlink_error(req, e)),
    }
}
