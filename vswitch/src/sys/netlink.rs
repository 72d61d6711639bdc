//! Netlink (rtnetlink): the link, address and route operations that attaching a port needs,
//! as blocking calls.
//!
//! The `rtnetlink` crate is asynchronous; each [`run`]/[`run_in`] call spawns a dedicated
//! thread with a current-thread tokio runtime, opens the netlink socket there and hands the
//! closure a [`Netlink`] whose methods block on that runtime. The dedicated thread matters
//! twice: a netlink socket talks to the namespace of the thread that *opened* it (so
//! [`run_in`] opens it after `setns()`), and blocking on a runtime from inside another runtime
//! (the API server's) would panic.
//!
//! Nothing here shells out to `ip`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::runtime::Runtime;

use super::netns;

/// A netlink request that failed: what was asked, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    /// The request, e.g. `RTM_NEWLINK veth vs1234abcd`.
    pub what: String,
    /// The kernel's error (`ENODEV`, `EEXIST`, ...).
    pub source: io::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError {
            what: what.into(),
            source,
        }
    }

    /// The errno the kernel answered, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// What [`Netlink::link`] reports about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSummary {
    /// The interface index.
    pub index: u32,
    /// The link kind (`IFLA_INFO_KIND`: `tun`, `veth`, ...), when the driver reports one.
    pub kind: Option<String>,
    /// The MTU.
    pub mtu: Option<u32>,
}

/// What [`Netlink::interface`] reports about a host interface (for the uplink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSummary {
    /// The interface index.
    pub index: u32,
    /// The MTU.
    pub mtu: Option<u32>,
    /// Its own hardware address, when it is 6 bytes long.
    pub mac: Option<[u8; 6]>,
    /// The link type is Ethernet (`ARPHRD_ETHER`): frames carry a 14-byte Ethernet header.
    pub ethernet: bool,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
}

/// How the container's end of a port is configured once it is inside the container's
/// namespace.
#[derive(Clone, Copy, Debug)]
pub struct ContainerLinkConfig<'a> {
    /// The final interface name (`eth0`).
    pub ifname: &'a str,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u16,
    /// Addresses to add, with their prefix length.
    pub addresses: &'a [Ipv4Net],
    /// The default route's gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Further routes: destination via gateway.
    pub routes: &'a [(Ipv4Net, Ipv4Addr)],
    /// The IPv6 address to add (without duplicate address detection), if any.
    pub address6: Option<Ipv6Net>,
    /// The IPv6 default route's gateway, if any.
    pub gateway6: Option<Ipv6Addr>,
    /// Further IPv6 routes: destination via gateway.
    pub routes6: &'a [(Ipv6Net, Ipv6Addr)],
}

/// Why [`Netlink::configure_container_link`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkSetupError {
    /// The final name is already used by another interface in the namespace.
    #[error("interface name {0} is already taken")]
    IfnameTaken(String),
    /// A request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// A netlink connection bound to the namespace of the thread that opened it. Only reachable
/// through [`run`] and [`run_in`], which own the thread.
pub struct Netlink {
    runtime: Runtime,
    handle: Handle,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

/// Runs `f` with a netlink connection in the caller's network namespace, on a dedicated
/// thread (new threads start in the namespace of the thread that spawns them).
///
/// # Errors
/// `f`'s error, or a [`NetlinkError`] when the netlink socket cannot be opened.
///
/// # Panics
/// Re-raises a panic of `f`.
pub fn run<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce(&Netlink) -> Result<T, E> + Send,
    T: Send,
    E: From<NetlinkError> + Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vs-netlink".into())
            .spawn_scoped(scope, || f(&Netlink::open()?))
            .map_err(|e| NetlinkError::new("spawn netlink thread", e))?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `f` with a netlink connection opened inside the namespace `ns` (see
/// [`netns::open`]).
///
/// # Errors
/// The outer error: the namespace cannot be entered. The inner one: `f`'s error, or the
/// netlink socket could not be opened.
pub fn run_in<T, E, F>(ns: &OwnedFd, f: F) -> io::Result<Result<T, E>>
where
    F: FnOnce(&Netlink) -> Result<T, E> + Send,
    T: Send,
    E: From<NetlinkError> + Send,
{
    pin_process_globals_here();
    netns::run_in_fd(ns, || f(&Netlink::open()?))
}

/// Builds one throw-away runtime in the caller's namespace the first time a namespace is
/// entered. Tokio creates process-wide resources with its first I/O runtime (the signal
/// driver's socket pair); a socket belongs to, and keeps alive, the namespace it was
/// created in, so if that first runtime were built on a thread inside a container's
/// namespace, the namespace (and a persistent TAP in it) would outlive the container.
fn pin_process_globals_here() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(error) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        {
            tracing::warn!(%error, "cannot start a tokio runtime");
        }
    });
}

/// Maps an `rtnetlink` error to the kernel's errno where there is one.
fn to_io(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace.
    fn open() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetlinkError::new("start netlink runtime", e))?;
        let (connection, handle, _) = runtime
            .block_on(async { rtnetlink::new_connection() })
            .map_err(|e| NetlinkError::new("open netlink socket", e))?;
        // The connection task runs whenever `block_on` drives this runtime.
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    /// The interface called `name`, or `None` when there is none.
    ///
    /// # Errors
    /// The kernel's error other than "no such device".
    pub fn link(&self, name: &str) -> Result<Option<LinkSummary>, NetlinkError> {
        let Some(message) = self.get_link(name)? else {
            return Ok(None);
        };
        let mut summary = LinkSummary {
            index: message.header.index,
            kind: None,
            mtu: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::LinkInfo(infos) => {
                    summary.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                LinkAttribute::Mtu(mtu) => summary.mtu = Some(*mtu),
                _ => {}
            }
        }
        Ok(Some(summary))
    }

    /// The `RTM_NEWLINK` answer for the interface called `name`, or `None` when there is none.
    fn get_link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let request = self.handle.link().get().match_name(name.to_string());
        let answer = self
            .runtime
            .block_on(async { request.execute().try_next().await });
        match answer {
            Ok(message) => Ok(message),
            Err(error) => {
                let error = to_io(error);
                if error.raw_os_error() == Some(libc::ENODEV) {
                    return Ok(None);
                }
                Err(NetlinkError::new(format!("RTM_GETLINK {name}"), error))
            }
        }
    }

    /// State, MTU and address of the interface called `name`, or `None` when there is none.
    ///
    /// # Errors
    /// The kernel's error other than "no such device".
    pub fn interface(&self, name: &str) -> Result<Option<InterfaceSummary>, NetlinkError> {
        let Some(message) = self.get_link(name)? else {
            return Ok(None);
        };
        let flags = message.header.flags;
        let mut summary = InterfaceSummary {
            index: message.header.index,
            mtu: None,
            mac: None,
            ethernet: message.header.link_layer_type == LinkLayerType::Ether,
            up: flags.contains(LinkFlags::Up),
            lower_up: flags.contains(LinkFlags::LowerUp),
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) => summary.mtu = Some(*mtu),
                LinkAttribute::Address(bytes) => summary.mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                _ => {}
            }
        }
        Ok(Some(summary))
    }

    /// The index of the interface called `name`.
    ///
    /// # Errors
    /// `ENODEV` when there is none, or the kernel's error.
    pub fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.link(name)?.map(|link| link.index).ok_or_else(|| {
            NetlinkError::new(
                format!("RTM_GETLINK {name}"),
                io::Error::from_raw_os_error(libc::ENODEV),
            )
        })
    }

    /// Creates a veth pair `name` <-> `peer`, both down, `name` with the given MTU.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when a name is taken).
    pub fn create_veth(&self, name: &str, peer: &str, mtu: u16) -> Result<(), NetlinkError> {
        let message = LinkVeth::new(name, peer).mtu(u32::from(mtu)).build();
        let request = self.handle.link().add(message);
        self.runtime.block_on(request.execute()).map_err(|e| {
            NetlinkError::new(format!("RTM_NEWLINK veth {name} peer {peer}"), to_io(e))
        })
    }

    /// Moves interface `index` into the namespace `ns` (`IFLA_NET_NS_FD`). Its fds (TAP
    /// queues) keep working.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when the name is taken in the target).
    pub fn move_to_netns(&self, index: u32, ns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        self.set_link(message, || format!("RTM_SETLINK {index} netns"))
    }

    /// Renames interface `index` (it must be down).
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when the name is taken, `EBUSY` when the link is up).
    pub fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).name(name).build();
        self.set_link(message, || format!("RTM_SETLINK {index} name {name}"))
    }

    /// Sets the MAC address of interface `index`.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(message, || {
            format!(
                "RTM_SETLINK {index} address {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
            )
        })
    }

    /// Sets the MTU of interface `index`.
    ///
    /// # Errors
    /// The kernel's error (`EINVAL` outside the device's range).
    pub fn set_mtu(&self, index: u32, mtu: u16) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .mtu(u32::from(mtu))
            .build();
        self.set_link(message, || format!("RTM_SETLINK {index} mtu {mtu}"))
    }

    /// Brings interface `index` up.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.set_link(message, || format!("RTM_SETLINK {index} up"))
    }

    /// Turns ARP off (`IFF_NOARP`) on interface `index`, so the local stack neither answers
    /// nor sends ARP on it.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn set_noarp(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).arp(false).build();
        self.set_link(message, || format!("RTM_SETLINK {index} arp off"))
    }

    fn set_link(
        &self,
        message: rtnetlink::packet_route::link::LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<(), NetlinkError> {
        let request = self.handle.link().set(message);
        self.runtime
            .block_on(request.execute())
            .map_err(|e| NetlinkError::new(what(), to_io(e)))
    }

    /// Adds an IPv4 address to interface `index`.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when it is already there).
    pub fn add_address(&self, index: u32, address: Ipv4Net) -> Result<(), NetlinkError> {
        let request =
            self.handle
                .address()
                .add(index, IpAddr::V4(address.addr()), address.prefix_len());
        self.runtime
            .block_on(request.execute())
            .map_err(|e| NetlinkError::new(format!("RTM_NEWADDR {address} dev {index}"), to_io(e)))
    }

    /// Adds an IPv6 address to interface `index` with `IFA_F_NODAD`: the switch hands out
    /// each address once, and a tentative address would fail `bind()` for a second.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when it is already there).
    pub fn add_address6(&self, index: u32, address: Ipv6Net) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags,
        };
        let mut request =
            self.handle
                .address()
                .add(index, IpAddr::V6(address.addr()), address.prefix_len());
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.runtime.block_on(request.execute()).map_err(|e| {
            NetlinkError::new(format!("RTM_NEWADDR {address} nodad dev {index}"), to_io(e))
        })
    }

    /// Adds the IPv6 default route via `gateway` out of interface `index`.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn add_default_route6(&self, index: u32, gateway: Ipv6Addr) -> Result<(), NetlinkError> {
        self.add_route6(index, Ipv6Net::default(), gateway)
    }

    /// Adds the IPv6 route to `destination` via `gateway` out of interface `index`.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when the route exists).
    pub fn add_route6(
        &self,
        index: u32,
        destination: Ipv6Net,
        gateway: Ipv6Addr,
    ) -> Result<(), NetlinkError> {
        let message = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .gateway(gateway)
            .output_interface(index)
            .build();
        let request = self.handle.route().add(message);
        self.runtime.block_on(request.execute()).map_err(|e| {
            NetlinkError::new(
                format!("RTM_NEWROUTE {destination} via {gateway} dev {index}"),
                to_io(e),
            )
        })
    }

    /// Adds the IPv4 default route via `gateway` out of interface `index`.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when a default route exists, `ENETUNREACH` when the
    /// gateway is not on a connected subnet).
    pub fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.add_route(index, Ipv4Net::default(), gateway)
    }

    /// Adds the IPv4 route to `destination` via `gateway` out of interface `index`.
    ///
    /// # Errors
    /// The kernel's error (`EEXIST` when the route exists).
    pub fn add_route(
        &self,
        index: u32,
        destination: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .gateway(gateway)
            .output_interface(index)
            .build();
        let request = self.handle.route().add(message);
        self.runtime.block_on(request.execute()).map_err(|e| {
            NetlinkError::new(
                format!("RTM_NEWROUTE {destination} via {gateway} dev {index}"),
                to_io(e),
            )
        })
    }

    /// Deletes interface `index` (for a veth, the pair). A link that is already gone is not
    /// an error.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn delete(&self, index: u32) -> Result<(), NetlinkError> {
        let request = self.handle.link().del(index);
        match self.runtime.block_on(request.execute()).map_err(to_io) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(NetlinkError::new(format!("RTM_DELLINK {index}"), e)),
        }
    }

    /// Deletes the interface called `name` if it exists; returns whether it did.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn delete_by_name(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link(name)? {
            Some(link) => self.delete(link.index).map(|()| true),
            None => Ok(false),
        }
    }

    /// Configures a link that was just moved into this connection's namespace under the
    /// temporary name `temporary`: renames it to `config.ifname`, sets MAC and MTU, brings it
    /// and `lo` up, adds the addresses and the default route. Returns the link's index.
    ///
    /// # Errors
    /// [`LinkSetupError::IfnameTaken`] when the final name is used; otherwise the failed
    /// request.
    pub fn configure_container_link(
        &self,
        temporary: &str,
        config: &ContainerLinkConfig<'_>,
    ) -> Result<u32, LinkSetupError> {
        let index = self.index(temporary)?;
        if temporary != config.ifname {
            self.rename(index, config.ifname).map_err(|e| {
                if e.errno() == Some(libc::EEXIST) {
                    LinkSetupError::IfnameTaken(config.ifname.to_string())
                } else {
                    LinkSetupError::Netlink(e)
                }
            })?;
        }
        self.set_mac(index, config.mac)?;
        self.set_mtu(index, config.mtu)?;
        // Up before addresses, so the kernel installs the connected routes the default
        // route's gateway needs.
        self.set_up(index)?;
        let loopback = self.index("lo")?;
        self.set_up(loopback)?;
        for address in config.addresses {
            self.add_address(index, *address)?;
        }
        if let Some(gateway) = config.gateway {
            self.add_default_route(index, gateway)?;
        }
        for (destination, gateway) in config.routes {
            self.add_route(index, *destination, *gateway)?;
        }
        if let Some(address) = config.address6 {
            self.add_address6(index, address)?;
        }
        if let Some(gateway) = config.gateway6 {
            self.add_default_route6(index, gateway)?;
        }
        for (destination, gateway) in config.routes6 {
            self.add_route6(index, *destination, *gateway)?;
        }
        Ok(index)
    }
}

/// The kind string the kernel reports for TAP/TUN devices.
pub fn tun_kind() -> String {
    InfoKind::Tun.to_string()
}

/// Writes `value` to `/proc/sys/net/<family>/conf/<ifname>/<key>` (per-interface settings
/// netlink does not carry), in the calling thread's namespace.
///
/// # Errors
/// The kernel's error; `NotFound` when the family is compiled out or disabled at boot.
pub fn set_interface_sysctl(
    family: &str,
    ifname: &str,
    key: &str,
    value: &str,
) -> Result<(), NetlinkError> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    std::fs::write(&path, value).map_err(|e| NetlinkError::new(format!("write {path}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_through() {
        let error = NetlinkError::new("x", io::Error::from_raw_os_error(libc::EEXIST));
        assert_eq!(error.errno(), Some(libc::EEXIST));
        assert_eq!(tun_kind(), "tun");
    }

    #[test]
    fn loopback_is_found_and_missing_link_is_none() {
        let (lo, missing) = run(|netlink| -> Result<_, NetlinkError> {
            Ok((netlink.link("lo")?, netlink.link("vst-nl-missing")?))
        })
        .expect("netlink in our own namespace");
        let lo = lo.expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert_eq!(missing, None);
    }

    #[test]
    fn loopback_interface_summary() {
        let (lo, missing) = run(|netlink| -> Result<_, NetlinkError> {
            Ok((
                netlink.interface("lo")?,
                netlink.interface("vst-nl-missing")?,
            ))
        })
        .expect("netlink in our own namespace");
        let lo = lo.expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        // Loopback has a 6-byte all-zero address but is not Ethernet (ARPHRD_LOOPBACK).
        assert_eq!(lo.mac, Some([0; 6]));
        assert!(!lo.ethernet);
        assert!(lo.mtu.is_some());
        assert_eq!(missing, None);
    }
}
