//! The uplink port: an existing host interface (a NIC, or in tests a veth end) in the daemon's
//! namespace, read and written with one AF_PACKET socket per worker, on which the switch owns
//! its own MAC address (chosen by the controller) while the host keeps its MAC and addresses.
//!
//! What [`open`] does, and does not, do to the interface:
//! - It changes none of its configuration: no address, no MTU, no up/down, no rename. A
//!   missing, non-Ethernet or down interface is an error that says what to fix.
//! - It makes the interface accept frames for the switch's MAC with a `PACKET_ADD_MEMBERSHIP`
//!   on every socket: `PACKET_MR_UNICAST` (the MAC joins the device's unicast filter; a
//!   device without one, such as veth, turns promiscuous by itself), or `PACKET_MR_PROMISC`
//!   when the kernel refuses that. A membership, unlike the `IFF_PROMISC` flag, is counted by
//!   the kernel and dropped when the socket closes, so [`close`] (or a crash) leaves the
//!   interface as it was. The host's stack sees our frames as `PACKET_OTHERHOST` and ignores
//!   them. Each socket also joins `PACKET_MR_ALLMULTI` (counted the same way), so neighbour
//!   solicitations for the switch's IPv6 addresses reach it on a NIC that filters multicast.
//! - Each socket carries a classic BPF filter ([`uplink_program`]) that keeps only frames for
//!   the switch's MAC, broadcast ARP and IPv6 to solicited-node multicast MACs, so the host's
//!   own traffic is never copied. If the
//!   kernel refuses it, the port still works (logged; [`UplinkInfo::filtered`] is false) and
//!   the datapath's own check does the job.
//!
//! Socket choices (see [`crate::sys::af_packet`]): `PACKET_VNET_HDR` (GSO frames from the
//! wire or the host side arrive whole, with their virtio header; a kernel that has
//! `PACKET_IGNORE_OUTGOING`, which the socket requires, has had `PACKET_VNET_HDR` for years),
//! `PACKET_IGNORE_OUTGOING` (and its fanout-group form), a fanout group when there are
//! several workers, no qdisc bypass (the host's traffic control stays in force and `tcpdump`
//! on the interface shows our frames) and a larger send buffer (frames may wait in the qdisc).

use parking_lot::Mutex;
use serde::Serialize;

use super::{Capabilities, PortError, PortIo, PortKind, PortQueue};
use crate::sys::af_packet::filter::uplink_program;
use crate::sys::af_packet::{Membership, PacketError, PacketSocket, RingLayout, SocketOptions};
use crate::sys::netlink::{self, NetlinkError};

/// Send buffer of each socket: room for a few dozen 64 KiB super-frames waiting in the
/// interface's qdisc before sends fail with `EAGAIN`/`ENOBUFS` (counted as drops).
const SEND_BUFFER_BYTES: u32 = 4 << 20;

/// What the controller needs to know about the uplink interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UplinkInfo {
    /// The interface index.
    pub ifindex: u32,
    /// The interface's MTU (frames the switch sends, other than GSO frames, must fit in it).
    pub mtu: u16,
    /// The interface's own MAC (the host's; the switch uses its own).
    pub host_mac: [u8; 6],
    /// Whether every socket has the receive filter; when false, every frame on the interface
    /// reaches the switch and the datapath must drop those not addressed to it.
    pub filtered: bool,
}

fn mac_text(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// An error about the uplink interface `ifname`: `what` says what is wrong and what to do.
fn refuse(ifname: &str, what: String, errno: i32) -> PortError {
    PortError::Sys {
        what,
        name: ifname.to_string(),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn netlink_error(ifname: &str, error: NetlinkError) -> PortError {
    PortError::Sys {
        what: error.what,
        name: ifname.to_string(),
        source: error.source,
    }
}

fn packet_error(ifname: &str, error: PacketError) -> PortError {
    PortError::Sys {
        what: format!("uplink {} (ifindex {})", error.what, error.ifindex),
        name: ifname.to_string(),
        source: error.source,
    }
}

/// Checks the switch's own MAC: a unicast address that is not the interface's.
fn check_mac(ifname: &str, mac: [u8; 6], host_mac: [u8; 6]) -> Result<(), PortError> {
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(refuse(
            ifname,
            format!(
                "the switch's uplink MAC {} is not a unicast address; use a locally \
                 administered unicast MAC (first byte 02, 06, 0a, ...)",
                mac_text(mac)
            ),
            libc::EINVAL,
        ));
    }
    if mac == host_mac {
        return Err(refuse(
            ifname,
            format!(
                "the switch's uplink MAC {} is the interface's own; the switch needs a MAC of \
                 its own so the host keeps its traffic",
                mac_text(mac)
            ),
            libc::EINVAL,
        ));
    }
    Ok(())
}

/// Opens the uplink on host interface `ifname`, where the switch owns `mac`: one AF_PACKET
/// socket per worker (`queues`, at least one), as described in the module doc. Returns the
/// queues and what the controller needs to know about the interface.
///
/// The [`PortIo`] has kind [`PortKind::Veth`] (AF_PACKET queues, like a veth host end) and
/// `host_ifname` = `ifname`; it must be closed with [`close`], never with
/// [`super::detach`] (which deletes devices).
///
/// # Errors
/// [`PortError::Sys`] naming the interface: it does not exist in the daemon's namespace, is
/// not Ethernet, is down (bring it up: the switch does not change host interfaces), `mac` is
/// not unicast or is the interface's own, or a socket could not be opened.
pub fn open(ifname: &str, mac: [u8; 6], queues: usize) -> Result<(PortIo, UplinkInfo), PortError> {
    let interface =
        netlink::run(|nl| nl.interface(ifname)).map_err(|e| netlink_error(ifname, e))?;
    let Some(interface) = interface else {
        return Err(refuse(
            ifname,
            "uplink interface not found in the daemon's network namespace; check the \
             Uplink's spec.interface (`ip link show`)"
                .into(),
            libc::ENODEV,
        ));
    };
    let (true, Some(host_mac)) = (interface.ethernet, interface.mac) else {
        return Err(refuse(
            ifname,
            "uplink interface is not an Ethernet interface; the switch reads and writes \
             Ethernet frames on it (choose a NIC, bond, VLAN or veth)"
                .into(),
            libc::EINVAL,
        ));
    };
    if !interface.up {
        return Err(refuse(
            ifname,
            format!(
                "uplink interface is down; bring it up (`ip link set {ifname} up`): the \
                 switch does not change the host's interfaces"
            ),
            libc::ENETDOWN,
        ));
    }
    if !interface.lower_up {
        tracing::warn!(uplink = %ifname, "uplink interface has no carrier (yet)");
    }
    check_mac(ifname, mac, host_mac)?;
    // An Ethernet MTU above 65535 does not exist; clamp rather than refuse.
    let mtu = interface
        .mtu
        .map_or(1500, |mtu| u16::try_from(mtu).unwrap_or(u16::MAX));
    let index = interface.index;

    let program = uplink_program(mac, false);
    let options = SocketOptions {
        qdisc_bypass: false,
        send_buffer: Some(SEND_BUFFER_BYTES),
        filter: Some(&program),
    };
    let sockets =
        PacketSocket::open_group_with(index, queues.max(1), RingLayout::v2_for_mtu(mtu), &options)
            .map_err(|e| packet_error(ifname, e))?;
    let mut promiscuous = false;
    for socket in &sockets {
        join(socket, index, mac, &mut promiscuous).map_err(|source| PortError::Sys {
            what: format!("uplink PACKET_ADD_MEMBERSHIP (ifindex {index})"),
            name: ifname.to_string(),
            source,
        })?;
        // Neighbour solicitations for the switch's IPv6 addresses go to solicited-node
        // multicast MACs that only the switch knows; a NIC that filters multicast would drop
        // them. Without it IPv6 on the uplink depends on the NIC (veth does not filter).
        if let Err(error) = socket.add_membership(index, Membership::AllMulticast) {
            tracing::warn!(uplink = %ifname, %error,
                "PACKET_MR_ALLMULTI refused: neighbour solicitations for the switch's IPv6 \
                 addresses may not reach it");
        }
    }
    let filtered = sockets.iter().all(PacketSocket::filtered);
    let info = UplinkInfo {
        ifindex: index,
        mtu,
        host_mac,
        filtered,
    };
    // The kernel completes partial checksums and segments GSO frames in software for a
    // device that cannot (validate_xmit_skb()), so any Ethernet device takes both.
    let capabilities = Capabilities {
        vnet_hdr: true,
        tx_partial_csum: true,
        tx_gso: true,
        tun_offload_flags: 0,
    };
    tracing::info!(uplink = %ifname, ifindex = index, mtu, mac = %mac_text(mac),
        host_mac = %mac_text(host_mac), queues = sockets.len(), filtered, promiscuous,
        ?capabilities, "uplink open");
    let io = PortIo {
        kind: PortKind::Veth,
        queues: sockets
            .into_iter()
            .map(|s| Mutex::new(PortQueue::Packet(s)))
            .collect(),
        capabilities,
        host_ifname: Some(ifname.to_string()),
    };
    Ok((io, info))
}

/// Makes the interface accept frames for `mac` on behalf of `socket`: the MAC joins the
/// unicast filter, or, if the kernel refuses that, the interface goes promiscuous (once
/// refused, `promiscuous` is set and the other sockets go straight to it).
fn join(
    socket: &PacketSocket,
    ifindex: u32,
    mac: [u8; 6],
    promiscuous: &mut bool,
) -> std::io::Result<()> {
    if !*promiscuous {
        match socket.add_membership(ifindex, Membership::Unicast(mac)) {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(ifindex, %error,
                    "PACKET_MR_UNICAST refused; putting the uplink in promiscuous mode instead");
                *promiscuous = true;
            }
        }
    }
    socket.add_membership(ifindex, Membership::Promiscuous)
}

/// Makes the uplink on interface `ifindex` (opened by [`open`] for `mac`) a trunk or not: a
/// trunk's sockets keep every tagged frame (the Subnets bound to its VLANs) and the
/// interface is promiscuous (frames for those Subnets' containers carry their MACs); a
/// plain uplink keeps only untagged frames for the switch. Call it only when the trunk state
/// changes (each promiscuous membership is counted by the kernel).
///
/// # Errors
/// The kernel's, when a filter or membership is refused (the rest is still applied).
pub fn set_trunk(io: &PortIo, ifindex: u32, mac: [u8; 6], trunk: bool) -> std::io::Result<()> {
    let program = uplink_program(mac, trunk);
    let mut first_error = None;
    for queue in &io.queues {
        let mut queue = queue.lock();
        let PortQueue::Packet(socket) = &mut *queue else {
            continue;
        };
        let membership = if trunk {
            socket.add_membership(ifindex, Membership::Promiscuous)
        } else {
            socket.drop_membership(ifindex, Membership::Promiscuous)
        };
        if let Err(error) = membership.and_then(|()| socket.set_filter(&program)) {
            first_error.get_or_insert(error);
        }
    }
    tracing::info!(ifindex, trunk, "uplink VLAN trunk set");
    first_error.map_or(Ok(()), Err)
}

/// Closes the uplink's sockets; the kernel drops their memberships, so the interface accepts
/// frames for the switch's MAC no more (and leaves promiscuous mode if it entered it for us).
pub fn close(io: PortIo) {
    let ifname = io.host_ifname.clone().unwrap_or_default();
    drop(io);
    tracing::debug!(uplink = %ifname, "uplink closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn message(result: Result<(), PortError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn switch_mac_must_be_unicast_and_not_the_hosts() {
        assert!(check_mac("eth0", [0x02, 0, 0x5e, 0, 0, 1], HOST).is_ok());
        let multicast = message(check_mac("eth0", [0x01, 0, 0x5e, 0, 0, 1], HOST));
        assert!(multicast.contains("not a unicast address"), "{multicast}");
        assert!(multicast.contains("eth0"), "{multicast}");
        let zero = message(check_mac("eth0", [0; 6], HOST));
        assert!(zero.contains("not a unicast address"), "{zero}");
        let same = message(check_mac("eth0", HOST, HOST));
        assert!(same.contains("interface's own"), "{same}");
    }

    #[test]
    fn missing_interface_is_refused_with_a_hint() {
        let error = open("vst-no-such-if", [0x02, 0, 0x5e, 0, 0, 1], 1)
            .map(|_| ())
            .expect_err("no such interface");
        let text = error.to_string();
        assert!(text.contains("not found"), "{text}");
        assert!(text.contains("vst-no-such-if"), "{text}");
    }

    #[test]
    fn loopback_is_not_ethernet() {
        let text = open("lo", [0x02, 0, 0x5e, 0, 0, 1], 1)
            .map(|_| ())
            .expect_err("lo is not Ethernet")
            .to_string();
        assert!(text.contains("not an Ethernet interface"), "{text}");
    }

    #[test]
    fn mac_is_printed_as_usual() {
        assert_eq!(mac_text(HOST), "52:54:00:12:34:56");
    }
}
