//! veth ports: a veth pair whose container end is moved into the container's namespace and
//! configured there, and whose host end (`host_ifname(name)`, in the daemon's namespace) is
//! read and written by one AF_PACKET socket per worker.
//!
//! Lifecycle:
//! - [`attach`]: check the namespace and that `ifname` is free in it; create the pair (host
//!   end `vsXXXXXXXX`, container end under the temporary name `vpXXXXXXXX`); keep the host
//!   stack off the host end (IPv6 disabled, ARP off, strict reverse-path filter) and bring it
//!   up with the port's MTU; move the container end in and configure it like a TAP (name,
//!   MAC, MTU, up, `lo` up, addresses, default route); open the sockets. On error the host
//!   end is deleted, which removes the pair wherever its other end is.
//! - [`reopen`]: find the host end by name and open the sockets; the pair lives as long as
//!   both namespaces do, so a missing host end means the port is gone.
//! - [`detach`]: close the sockets and delete the host end (and with it the pair).
//!
//! The ring behind the sockets is a `TPACKET_V2` ring; see [`crate::sys::af_packet`] for why
//! not `TPACKET_V3`. Transmission is batched: the worker queues a batch's frames for a port
//! and sends them with one `sendmmsg` ([`PacketSocket::enqueue`],
//! [`PacketSocket::flush_with`]).

use std::os::fd::{AsFd, OwnedFd};

use parking_lot::Mutex;

use super::tap::{configure_in_container, netlink_error, open_target};
use super::{AttachRequest, Capabilities, PortError, PortIo, PortKind, PortQueue, host_ifname};
use crate::sys::af_packet::{PacketError, PacketSocket, RingLayout};
use crate::sys::netlink::{self, NetlinkError};

/// The temporary name of the container end while it is still in the daemon's namespace:
/// the host end's name with `vp` for `vs`.
fn peer_name(host: &str) -> String {
    format!("vp{}", host.get(2..).unwrap_or(host))
}

fn packet_error(req: &AttachRequest, error: PacketError) -> PortError {
    PortError::Sys {
        what: format!("{} (ifindex {})", error.what, error.ifindex),
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

/// Keeps the host's own stack from talking on the host end: no IPv6 (no link-local address,
/// router or neighbour solicitations), no ARP, and a strict reverse-path check so IPv4
/// frames a container addresses to the host itself are dropped (no route points back at
/// the host end).
fn isolate_host_end(nl: &netlink::Netlink, host: &str, index: u32) -> Result<(), NetlinkError> {
    match netlink::set_interface_sysctl("ipv6", host, "disable_ipv6", "1") {
        Ok(()) => {}
        // IPv6 disabled at boot or compiled out: nothing to turn off.
        Err(error) if error.source.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(%error, "no IPv6 on this host");
        }
        Err(error) => return Err(error),
    }
    netlink::set_interface_sysctl("ipv4", host, "rp_filter", "1")?;
    nl.set_noarp(index)
}

fn open_sockets(
    req: &AttachRequest,
    index: u32,
    mtu: u16,
    host: String,
) -> Result<PortIo, PortError> {
    let sockets = PacketSocket::open_group(index, req.queues.max(1), RingLayout::v2_for_mtu(mtu))
        .map_err(|e| packet_error(req, e))?;
    tracing::debug!(port = %req.name, host_end = %host, ifindex = index,
        queues = sockets.len(), "veth sockets open (vnet_hdr, partial csum and GSO both ways)");
    Ok(PortIo {
        kind: PortKind::Veth,
        queues: sockets
            .into_iter()
            .map(|s| Mutex::new(PortQueue::Packet(s)))
            .collect(),
        capabilities: Capabilities {
            vnet_hdr: true,
            // packet_snd() applies the virtio header of every frame we send: a partial
            // checksum or a TCP/UDP super-frame reaches the container as such.
            tx_partial_csum: true,
            tx_gso: true,
            tun_offload_flags: 0,
        },
        host_ifname: Some(host),
    })
}

/// See [`super::attach`].
pub fn attach(req: &AttachRequest) -> Result<PortIo, PortError> {
    let ns = open_target(req)?;
    let host = host_ifname(&req.name);
    let peer = peer_name(&host);
    netlink::run(|nl| {
        // Leftovers of an attach or a port that died half-way.
        for stale in [&host, &peer] {
            if nl.delete_by_name(stale)? {
                tracing::warn!(port = %req.name, device = %stale, "removed a stale device");
            }
        }
        nl.create_veth(&host, &peer, req.mtu)
    })
    .map_err(|e| netlink_error(req, e))?;
    let result = configure(req, &ns, &host, &peer);
    if result.is_err() {
        if let Err(error) = netlink::run(|nl| nl.delete_by_name(&host)) {
            tracing::warn!(port = %req.name, %error, "cleaning up a veth that failed to attach");
        }
    }
    result
}

fn configure(
    req: &AttachRequest,
    ns: &OwnedFd,
    host: &str,
    peer: &str,
) -> Result<PortIo, PortError> {
    let index = netlink::run(|nl| {
        let index = nl.index(host)?;
        isolate_host_end(nl, host, index)?;
        nl.set_up(index)?;
        let peer_index = nl.index(peer)?;
        nl.move_to_netns(peer_index, ns.as_fd())?;
        Ok(index)
    })
    .map_err(|e| netlink_error(req, e))?;
    configure_in_container(req, ns, peer)?;
    let io = open_sockets(req, index, req.mtu, host.to_string())?;
    tracing::debug!(port = %req.name, ifname = %req.ifname, netns = %req.netns, "veth attached");
    Ok(io)
}

/// See [`super::reopen`].
pub fn reopen(req: &AttachRequest) -> Result<PortIo, PortError> {
    let host = host_ifname(&req.name);
    let link = netlink::run(|nl| nl.link(&host)).map_err(|e| netlink_error(req, e))?;
    let Some(link) = link else {
        return Err(gone(req));
    };
    if link.kind.as_deref() != Some("veth") {
        return Err(gone(req));
    }
    let mtu = link
        .mtu
        .and_then(|mtu| u16::try_from(mtu).ok())
        .map_or(req.mtu, |mtu| mtu.max(req.mtu));
    let io = open_sockets(req, link.index, mtu, host)?;
    tracing::debug!(port = %req.name, ifname = %req.ifname, "veth re-opened");
    Ok(io)
}

/// See [`super::detach`].
pub fn detach(req: &AttachRequest, io: Option<PortIo>) -> Result<(), PortError> {
    drop(io);
    let host = host_ifname(&req.name);
    let peer = peer_name(&host);
    netlink::run(|nl| {
        nl.delete_by_name(&host)?;
        // Only there if an attach died before moving it.
        nl.delete_by_name(&peer)?;
        Ok(())
    })
    .map_err(|e: NetlinkError| netlink_error(req, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_name_mirrors_host_name() {
        let host = host_ifname("c1");
        let peer = peer_name(&host);
        assert_eq!(peer.len(), host.len());
        assert!(peer.starts_with("vp"));
        assert_eq!(&peer[2..], &host[2..]);
    }
}
