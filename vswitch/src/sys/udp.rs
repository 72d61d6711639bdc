//! The VTEP's sockets: a UDP socket per worker that receives VXLAN datagrams, UDP sockets
//! that send them with `UDP_SEGMENT`, and a raw IP socket per worker that sends packets
//! whose IP header we built ourselves. Every socket is of the family of the address it is
//! opened for: `AF_INET` over an IPv4 underlay, `AF_INET6` over an IPv6 one.
//!
//! - [`UdpSocket::bind`]: `SOCK_DGRAM`, non-blocking, close-on-exec, `SO_REUSEPORT` (every
//!   worker binds the same address and port and the kernel hashes flows across the group)
//!   and a large receive buffer (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
//!   [`UdpSocket::enable_gro`] turns on `UDP_GRO`: the kernel then hands over several
//!   datagrams of one flow in one buffer, all of the size reported in a `UDP_GRO` control
//!   message but the last (see [`Datagram::segment_size`]).
//! - [`UdpSocket::bind_sender`]: a send-only UDP socket bound to one source address and port
//!   (never `SO_REUSEPORT`/`SO_REUSEADDR`: it must not join anyone's group), with the outer
//!   TTL and DF wanted. It receives nothing: a classic BPF filter that accepts no packet is
//!   attached and its receive buffer is the kernel's minimum (a UDP socket ignores
//!   `shutdown(SHUT_RD)`: datagrams would still queue). [`UdpSocket::send_to`] sends many
//!   datagrams in one `sendmsg` with a `UDP_SEGMENT` control message (udp(7)): the payload
//!   is cut into datagrams of the given size, the last may be shorter.
//! - [`RawIpSocket::open`]: `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`. For `IPPROTO_RAW` the
//!   kernel implies `IP_HDRINCL` (raw(7)): we hand it the whole IPv4 packet, so the outer UDP
//!   source port can be hashed from the inner flow (a UDP socket would always send from its
//!   bound port). The kernel fills in the IPv4 checksum (and the identification when zero),
//!   routes by the destination address and resolves the next hop; it does not fragment:
//!   a packet larger than the route's MTU fails with `EMSGSIZE`. Over IPv6,
//!   `socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)` is the same (`inet6_create` sets `HDRINCL`
//!   for `IPPROTO_RAW`), except that `rawv6_send_hdrinc` hands the packet to `dst_output`
//!   as given: the payload length is ours to write (the `vxlan` crate does), and a packet
//!   above the path MTU but within the device's is dropped by `ip6_fragment` (with a packet
//!   too big to ourselves), not refused; the destination's port must be 0 or the protocol.
//! - [`Receiver`] and [`Sender`]: `recvmmsg`/`sendmmsg` of up to [`MAX_MESSAGES`] datagrams.
//!   The receiver's address and control-message buffers are allocated once; the `mmsghdr`
//!   and `iovec` arrays (and the sender's addresses) are built on the stack in each call, so
//!   no raw pointer is kept between calls (both types are `Send` without an `unsafe impl`)
//!   and the hot path allocates nothing.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::cost::{self, Syscall};

/// A socket operation of the VTEP that failed: which step, and the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SocketError {
    /// The step (`socket`, `SO_REUSEPORT`, `bind`, ...).
    pub what: &'static str,
    /// The kernel's error.
    pub source: io::Error,
}

fn fail(what: &'static str) -> impl Fn(io::Error) -> SocketError {
    move |source| SocketError { what, source }
}

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &impl Copy,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of_val(value))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `value` is a live, initialised value of `len` bytes that setsockopt only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a socket buffer size past the `net.core.{r,w}mem_max` limits with the `*FORCE`
/// option (needs CAP_NET_ADMIN), or as far as the limit allows with the plain one.
fn set_buffer(fd: &OwnedFd, force: libc::c_int, plain: libc::c_int, bytes: u32) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if let Err(error) = set_option(fd, libc::SOL_SOCKET, force, &bytes) {
        tracing::debug!(%error, option = force, "forced socket buffer size refused");
        set_option(fd, libc::SOL_SOCKET, plain, &bytes)?;
    }
    Ok(())
}

/// Creates a socket of `family` and `kind` (non-blocking, close-on-exec).
fn socket(family: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions.
    let raw = unsafe {
        libc::socket(
            family,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The socket family of `address`.
fn family_of(address: IpAddr) -> libc::c_int {
    match address {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// A socket address as the kernel takes and gives it: a `sockaddr_in6`, or a `sockaddr_in`
/// laid over its first 16 bytes. The two share their first four bytes (family, port); the
/// `sockaddr_in`'s address (network order) lies where `sin6_flowinfo` does, and its
/// `sin_zero` in the first half of `sin6_addr`. So one type holds either, with no union and
/// no cast, and [`RawAddress::len`] says how many bytes the kernel reads.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct RawAddress(libc::sockaddr_in6);

impl RawAddress {
    /// The room the kernel may fill (`sizeof(struct sockaddr_in6)`, 28 bytes; checked at
    /// compile time below).
    const CAPACITY: libc::socklen_t = 28;

    /// `address` in the kernel's layout (port and address in network order).
    fn new(address: SocketAddr) -> RawAddress {
        match address {
            SocketAddr::V4(v4) => RawAddress(libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                sin6_port: v4.port().to_be(),
                // `sin_addr`, in network order, where a sockaddr_in has it.
                sin6_flowinfo: u32::from(*v4.ip()).to_be(),
                // `sin_zero` and 8 bytes the kernel does not read.
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            }),
            SocketAddr::V6(v6) => RawAddress(libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(), // as std keeps it: the kernel's order
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            }),
        }
    }

    /// The unspecified address of `family` (`AF_INET` or `AF_INET6`), port 0.
    fn unspecified(family: libc::c_int) -> RawAddress {
        if family == libc::AF_INET6 {
            RawAddress::new(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::UNSPECIFIED,
                0,
                0,
                0,
            )))
        } else {
            RawAddress::new(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
        }
    }

    /// How many bytes the kernel reads: 16 for a `sockaddr_in`, 28 for a `sockaddr_in6`.
    fn len(&self) -> libc::socklen_t {
        if i32::from(self.0.sin6_family) == libc::AF_INET6 {
            RawAddress::CAPACITY
        } else {
            16
        }
    }

    /// The address the kernel filled in, when it is one (`len` bytes long, of a family we
    /// know).
    fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
        let port = u16::from_be(self.0.sin6_port);
        match i32::from(self.0.sin6_family) {
            libc::AF_INET if len >= 16 => Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(self.0.sin6_flowinfo)),
                port,
            ))),
            libc::AF_INET6 if len >= RawAddress::CAPACITY => {
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(self.0.sin6_addr.s6_addr),
                    port,
                    self.0.sin6_flowinfo,
                    self.0.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

// The kernel writes at most `RawAddress::CAPACITY` bytes into a `RawAddress`.
const _: () = assert!(size_of::<RawAddress>() == RawAddress::CAPACITY as usize);

/// A non-blocking UDP socket bound to one IPv4 or IPv6 address and port.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
}

impl UdpSocket {
    /// Opens a UDP socket and binds it to `local`. With `reuse_port`, `SO_REUSEPORT` is set
    /// first so that other sockets of this process may bind the same address and port (the
    /// kernel then spreads flows across them). `receive_buffer` is the `SO_RCVBUF` size
    /// wanted (forced past `net.core.rmem_max` where allowed).
    ///
    /// # Errors
    /// [`SocketError`] naming the step; `bind` fails with `EADDRNOTAVAIL` when `local` is not
    /// an address of this namespace and `EADDRINUSE` when the port is taken.
    pub fn bind(
        local: SocketAddr,
        reuse_port: bool,
        receive_buffer: Option<u32>,
    ) -> Result<UdpSocket, SocketError> {
        let fd = socket(family_of(local.ip()), libc::SOCK_DGRAM, libc::IPPROTO_UDP)
            .map_err(fail("socket"))?;
        if local.is_ipv6() {
            // Bound to one address anyway; never take IPv4-mapped traffic.
            let one: libc::c_int = 1;
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one)
                .map_err(fail("IPV6_V6ONLY"))?;
        }
        if reuse_port {
            let one: libc::c_int = 1;
            set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)
                .map_err(fail("SO_REUSEPORT"))?;
        }
        if let Some(bytes) = receive_buffer {
            set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
                .map_err(fail("SO_RCVBUF"))?;
        }
        bind(&fd, local)?;
        Ok(UdpSocket { fd })
    }

    /// The address and port the socket is bound to (the port the kernel chose when bound to
    /// port 0).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let mut address = RawAddress::unspecified(libc::AF_INET6);
        let mut len = RawAddress::CAPACITY;
        // SAFETY: getsockname writes at most `len` bytes into `address`, a live
        // sockaddr_in6 of that size, and updates `len`, a live socklen_t.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut address).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        address
            .get(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    /// Opens a send-only UDP socket bound to `local` (no `SO_REUSEPORT`, no `SO_REUSEADDR`:
    /// the bind fails with `EADDRINUSE` when anyone holds the port) with the outer TTL and
    /// DF of `options`. The socket receives nothing: a BPF filter that accepts no packet is
    /// attached before the bind and the receive buffer is the kernel's minimum.
    ///
    /// The outer UDP checksum is always computed: the kernel refuses `UDP_SEGMENT` on a
    /// socket with `SO_NO_CHECK` (`udp_send_skb` returns `EINVAL`).
    ///
    /// # Errors
    /// [`SocketError`] naming the step; `bind` fails with `EADDRINUSE` when the port is taken
    /// and `EADDRNOTAVAIL` when `local` is not an address of this namespace.
    pub fn bind_sender(local: SocketAddr, options: SendOptions) -> Result<UdpSocket, SocketError> {
        let fd = socket(family_of(local.ip()), libc::SOCK_DGRAM, libc::IPPROTO_UDP)
            .map_err(fail("socket"))?;
        attach_drop_all_filter(&fd).map_err(fail("SO_ATTACH_FILTER"))?;
        // The kernel raises a tiny value to its minimum (SOCK_MIN_RCVBUF).
        let one: libc::c_int = 1;
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &one).map_err(fail("SO_RCVBUF"))?;
        if let Some(bytes) = options.send_buffer {
            set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
                .map_err(fail("SO_SNDBUF"))?;
        }
        let ttl = libc::c_int::from(options.ttl);
        if local.is_ipv6() {
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one)
                .map_err(fail("IPV6_V6ONLY"))?;
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)
                .map_err(fail("IPV6_UNICAST_HOPS"))?;
            // IPv6 has no DF bit and routers never fragment. DO: this host does not fragment
            // either, and a datagram above the path MTU is refused (EMSGSIZE, counted), as
            // the raw path's packets cannot be fragmented (they are dropped there). Whatever
            // `dont_fragment` says: both paths of one flow behave alike.
            let discover = libc::IPV6_PMTUDISC_DO;
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, &discover)
                .map_err(fail("IPV6_MTU_DISCOVER"))?;
        } else {
            set_option(&fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl).map_err(fail("IP_TTL"))?;
            // DO: DF set, never fragment locally. DONT: DF clear, the kernel fragments a
            // datagram larger than the route's MTU (as it does for the raw socket's packets
            // with DF clear in transit); either way a UDP_SEGMENT datagram larger than the
            // MTU is refused.
            let discover = if options.dont_fragment {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            };
            set_option(&fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &discover)
                .map_err(fail("IP_MTU_DISCOVER"))?;
        }
        bind(&fd, local)?;
        Ok(UdpSocket { fd })
    }

    /// Turns on `UDP_GRO`: the kernel may then hand over several datagrams of one flow in
    /// one receive (see [`Datagram::segment_size`]).
    ///
    /// # Errors
    /// `ENOPROTOOPT` on kernels without UDP GRO (before 5.0).
    pub fn enable_gro(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        set_option(&self.fd, libc::SOL_UDP, libc::UDP_GRO, &one)
    }

    /// Sets the socket's default `UDP_SEGMENT` size (0: none). Setting 0 is the probe for
    /// `UDP_SEGMENT` support: it changes nothing where it is supported.
    ///
    /// # Errors
    /// `ENOPROTOOPT` on kernels without UDP GSO (before 4.18).
    pub fn set_segment_size(&self, size: u16) -> io::Result<()> {
        let size = libc::c_int::from(size);
        set_option(&self.fd, libc::SOL_UDP, libc::UDP_SEGMENT, &size)
    }

    /// Sends `payload` to `to` in one `sendmsg` without blocking. With `segment_size`, a
    /// `UDP_SEGMENT` control message makes the kernel cut it into datagrams of that many
    /// bytes (the last may be shorter; at most 64 of them on older kernels, 128 since 6.9,
    /// and `payload` at most 65507 bytes); without, `payload` is one datagram. Returns the
    /// bytes sent (all of `payload`).
    ///
    /// # Errors
    /// The kernel's error: `EAGAIN`/`ENOBUFS` when the socket or the device queue is full,
    /// `EMSGSIZE` for a payload over 65507 bytes, `EINVAL` when a segment does not fit the
    /// route's MTU, there are too many segments or the kernel refuses the offload, `EIO`
    /// when the route cannot take UDP GSO (an IPsec route), `ENETUNREACH`, ...
    pub fn send_to(
        &self,
        payload: &[u8],
        to: SocketAddr,
        segment_size: Option<u16>,
    ) -> io::Result<usize> {
        let mut address = RawAddress::new(to);
        let mut iovec = libc::iovec {
            // sendmsg only reads through `iov_base`; the field is `*mut` for both calls.
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        let mut control = SegmentControl::new(segment_size.unwrap_or(0));
        let mut message = empty_msghdr();
        message.msg_namelen = address.len();
        message.msg_name = std::ptr::from_mut(&mut address).cast();
        message.msg_iov = &mut iovec;
        message.msg_iovlen = 1;
        if segment_size.is_some() {
            message.msg_control = std::ptr::from_mut(&mut control).cast();
            message.msg_controllen = size_of::<SegmentControl>();
        }
        loop {
            // SAFETY: `message` points to one live iovec (`payload`, a live buffer of
            // `iov_len` bytes the kernel only reads), to `address` (a live sockaddr_in6 of
            // at least `msg_namelen` bytes) and, when set, to `control` (a live, initialised control
            // message of `msg_controllen` bytes); all outlive the call.
            let rc = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &message, libc::MSG_DONTWAIT) };
            cost::syscall(Syscall::Sendmsg);
            if let Ok(sent) = usize::try_from(rc) {
                return Ok(sent);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Binds `fd` to `local`.
fn bind(fd: &OwnedFd, local: SocketAddr) -> Result<(), SocketError> {
    let address = RawAddress::new(local);
    // SAFETY: `address` is a live sockaddr_in6 of at least `address.len()` bytes that bind()
    // only reads.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&address).cast(),
            address.len(),
        )
    };
    if rc < 0 {
        return Err(fail("bind")(io::Error::last_os_error()));
    }
    Ok(())
}

/// How a send-only socket ([`UdpSocket::bind_sender`]) builds the outer IP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// Outer TTL (`IP_TTL`) or hop limit (`IPV6_UNICAST_HOPS`).
    pub ttl: u8,
    /// Set DF (`IP_PMTUDISC_DO`; over IPv6, never fragment locally); clear it otherwise
    /// (`IP_PMTUDISC_DONT`).
    pub dont_fragment: bool,
    /// `SO_SNDBUF` wanted (forced past `net.core.wmem_max` where allowed).
    pub send_buffer: Option<u32>,
}

/// `SO_ATTACH_FILTER` (include/uapi/asm-generic/socket.h; the same value on x86, arm,
/// mips, sparc and powerpc); the `libc` crate does not define it for Linux.
const SO_ATTACH_FILTER: libc::c_int = 26;

/// `BPF_RET | BPF_K` (include/uapi/linux/bpf_common.h): return the constant `k`, the number
/// of bytes of the packet to keep; 0 drops it.
const BPF_RET_K: u16 = 0x06;

/// Attaches a classic BPF program that accepts no packet: nothing ever queues on the socket.
fn attach_drop_all_filter(fd: &OwnedFd) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let filter = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    // The kernel copies the program during the call (sk_attach_filter), so `program` need
    // only live until set_option returns.
    set_option(fd, libc::SOL_SOCKET, SO_ATTACH_FILTER, &filter)
}

/// A `UDP_SEGMENT` control message (udp(7)): a `cmsghdr` and the `u16` segment size, padded
/// to `CMSG_SPACE(2)` bytes, laid out as `CMSG_DATA` expects (the data right after the
/// header, whose size is already a multiple of the `cmsghdr` alignment).
#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    segment_size: u16,
    padding: [u8; 6],
}

impl SegmentControl {
    fn new(segment_size: u16) -> SegmentControl {
        // SAFETY: `cmsghdr` is a plain C struct of integers (and, on some libcs, private
        // padding) for which all-zero bytes are a valid value.
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        // CMSG_LEN(2): the header and the two data bytes, without the trailing padding.
        header.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
        header.cmsg_level = libc::SOL_UDP;
        header.cmsg_type = libc::UDP_SEGMENT;
        SegmentControl {
            header,
            segment_size,
            padding: [0; 6],
        }
    }
}

/// An empty `msghdr`.
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a plain C struct of integers and pointers (and, on some libcs,
    // private padding) for which all-zero bytes are a valid value (null pointers, zero
    // lengths).
    unsafe { std::mem::zeroed() }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a queue registers with the worker's epoll: its own epoll set holding the receiving
/// socket and a doorbell (an eventfd). The set is readable while the socket is, or while the
/// doorbell rings: a queue that keeps received datagrams for its next call (more than one
/// batch arrived in one `UDP_GRO` buffer) rings it so that the worker comes back even when
/// the socket has nothing new, and silences it once it has handed everything over. Both are
/// level-triggered, as the worker's own epoll.
#[derive(Debug)]
pub struct ReadySet {
    epoll: nix::sys::epoll::Epoll,
    doorbell: nix::sys::eventfd::EventFd,
    ringing: bool,
}

impl ReadySet {
    /// A set watching `socket` for input, with a silent doorbell.
    ///
    /// # Errors
    /// [`SocketError`] naming the step (`epoll_create1`, `eventfd`, `epoll_ctl`).
    pub fn new(socket: &UdpSocket) -> Result<ReadySet, SocketError> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| fail("epoll_create1")(e.into()))?;
        let doorbell = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| fail("eventfd")(e.into()))?;
        epoll
            .add(socket, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(|e| fail("epoll_ctl")(e.into()))?;
        epoll
            .add(&doorbell, EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .map_err(|e| fail("epoll_ctl")(e.into()))?;
        Ok(ReadySet {
            epoll,
            doorbell,
            ringing: false,
        })
    }

    /// Makes the set readable until [`silence`](ReadySet::silence) (no system call when it
    /// already rings).
    ///
    /// # Errors
    /// The kernel's error writing the eventfd.
    pub fn ring(&mut self) -> io::Result<()> {
        if !self.ringing {
            cost::syscall(Syscall::Eventfd);
            self.doorbell.write(1)?;
            self.ringing = true;
        }
        Ok(())
    }

    /// Stops the doorbell (no system call when it is silent).
    ///
    /// # Errors
    /// The kernel's error reading the eventfd.
    pub fn silence(&mut self) -> io::Result<()> {
        if self.ringing {
            cost::syscall(Syscall::Eventfd);
            match self.doorbell.read() {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(errno) => return Err(errno.into()),
            }
            self.ringing = false;
        }
        Ok(())
    }

    /// Whether the doorbell rings.
    pub fn ringing(&self) -> bool {
        self.ringing
    }

    /// The set's fd (an epoll fd).
    pub fn raw_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

impl AsFd for ReadySet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

/// A non-blocking `IPPROTO_RAW` socket of one family: it sends whole IPv4 or IPv6 packets
/// (header included) and receives nothing.
#[derive(Debug)]
pub struct RawIpSocket {
    fd: OwnedFd,
    v6: bool,
}

impl RawIpSocket {
    /// Opens the socket for packets of `family` (`AF_INET` for IPv4, else IPv6), with an
    /// `SO_SNDBUF` of `send_buffer` bytes when given (forced past `net.core.wmem_max` where
    /// allowed).
    ///
    /// # Errors
    /// [`SocketError`]; `socket` fails with `EPERM` without CAP_NET_RAW.
    pub fn open(v6: bool, send_buffer: Option<u32>) -> Result<RawIpSocket, SocketError> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let fd = socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(fail("raw socket"))?;
        if let Some(bytes) = send_buffer {
            set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
                .map_err(fail("SO_SNDBUF"))?;
        }
        Ok(RawIpSocket { fd, v6 })
    }

    /// Whether it sends IPv6 packets.
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An empty `mmsghdr`.
fn empty_header() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and pointers (and, on some libcs,
    // private padding) for which all-zero bytes are a valid value (null pointers, zero
    // lengths).
    unsafe { std::mem::zeroed() }
}

/// An empty `iovec`.
fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// What [`Receiver::recv`] learnt about one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes written into the slot (at most the slot's length).
    pub len: usize,
    /// The datagram was longer than the slot (`MSG_TRUNC`): its tail is lost.
    pub truncated: bool,
    /// The sender, when the kernel reported an IPv4 or IPv6 address.
    pub peer: Option<SocketAddr>,
    /// With `UDP_GRO` ([`UdpSocket::enable_gro`]): the size of each datagram the kernel
    /// coalesced into this buffer (all but the last, which may be shorter), from its
    /// `UDP_GRO` control message. `None` when the buffer holds one datagram as sent.
    pub segment_size: Option<u16>,
}

/// Control-message room per received datagram: one `UDP_GRO` message (`CMSG_SPACE(4)`, 24
/// bytes on 64-bit Linux) with room to spare; 8-byte aligned as `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ControlBuffer([u8; 64]);

/// The `UDP_GRO` segment size in the control messages of `message` (whose `msg_control`
/// and `msg_controllen` describe a buffer the kernel filled), if any.
fn gro_segment_size(message: &libc::msghdr) -> Option<u16> {
    if message.msg_control.is_null() {
        return None;
    }
    // SAFETY: `message.msg_control` points to a live control buffer of at least
    // `msg_controllen` bytes (the kernel shrinks the length to what it wrote) that nothing
    // writes during this function; CMSG_FIRSTHDR and CMSG_NXTHDR only return headers that
    // lie wholly within `msg_controllen` bytes (or null).
    let mut header = unsafe { libc::CMSG_FIRSTHDR(message) };
    while !header.is_null() {
        // SAFETY: `header` is non-null and lies within the control buffer (above); it may
        // be unaligned only if the kernel wrote an unaligned message, so it is read as such.
        let cmsg = unsafe { header.read_unaligned() };
        // `cmsg_len` is a `size_t` on glibc (a `socklen_t` on musl).
        #[allow(clippy::useless_conversion)]
        let data_len = usize::try_from(cmsg.cmsg_len)
            .unwrap_or(0)
            .saturating_sub(size_of::<libc::cmsghdr>());
        if cmsg.cmsg_level == libc::SOL_UDP
            && cmsg.cmsg_type == libc::UDP_GRO
            && data_len >= size_of::<libc::c_int>()
        {
            // SAFETY: the message holds at least a c_int of data (checked above) at
            // CMSG_DATA, inside the control buffer; read unaligned, as the kernel's
            // put_cmsg writes it byte by byte.
            let size = unsafe {
                libc::CMSG_DATA(header)
                    .cast::<libc::c_int>()
                    .read_unaligned()
            };
            return u16::try_from(size).ok().filter(|&size| size > 0);
        }
        // SAFETY: as for CMSG_FIRSTHDR: the result is null or a header within the buffer.
        header = unsafe { libc::CMSG_NXTHDR(message, header) };
    }
    None
}

/// The most messages one [`Receiver::recv`] or [`Sender::send`] hands the kernel: their
/// `mmsghdr` and `iovec` arrays are built on the stack of each call (about 5 KiB), so that no
/// pointer into a buffer outlives the call that uses it. The VTEP's bursts are this size.
pub const MAX_MESSAGES: usize = 64;

/// `recvmmsg` into the caller's slots, with room kept for each datagram's source address
/// and control messages (where `UDP_GRO` reports its segment size). The `mmsghdr` and
/// `iovec` arrays that point into these and into the slots are rebuilt on the stack in each
/// call; between calls the receiver holds only plain values, which is why it is `Send`.
pub struct Receiver {
    addresses: Box<[RawAddress]>,
    controls: Box<[ControlBuffer]>,
    /// What the last call learnt, datagram by datagram (`received` of them).
    datagrams: Box<[Datagram]>,
    received: usize,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.capacity())
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// A `Datagram` before any is received.
const NO_DATAGRAM: Datagram = Datagram {
    len: 0,
    truncated: false,
    peer: None,
    segment_size: None,
};

impl Receiver {
    /// Room for up to `capacity` datagrams per call (at most [`MAX_MESSAGES`]: a larger
    /// capacity is cut to it).
    pub fn new(capacity: usize) -> Receiver {
        let capacity = capacity.min(MAX_MESSAGES);
        let unspecified = RawAddress::unspecified(libc::AF_INET6);
        Receiver {
            addresses: vec![unspecified; capacity].into_boxed_slice(),
            controls: vec![ControlBuffer([0; 64]); capacity].into_boxed_slice(),
            datagrams: vec![NO_DATAGRAM; capacity].into_boxed_slice(),
            received: 0,
        }
    }

    /// The most datagrams one call receives.
    pub fn capacity(&self) -> usize {
        self.datagrams.len()
    }

    /// Receives up to [`capacity`](Receiver::capacity) waiting datagrams without blocking,
    /// datagram `i` into the `i`-th of `slots`; returns how many were received (0 when none
    /// was waiting). Describe each with [`datagram`](Receiver::datagram).
    ///
    /// # Errors
    /// The kernel's error other than `EAGAIN` (and `EINTR`, which is retried).
    pub fn recv<'a>(
        &mut self,
        socket: &UdpSocket,
        slots: impl Iterator<Item = &'a mut [u8]>,
    ) -> io::Result<usize> {
        self.received = 0;
        let mut iovecs = [empty_iovec(); MAX_MESSAGES];
        let mut count = 0;
        for (iovec, slot) in iovecs.iter_mut().take(self.capacity()).zip(slots) {
            *iovec = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // Built here, in the call that uses them. Base pointers taken once, after the last
        // write through a reference to each array, so no later borrow invalidates them
        // before the call; `addresses` and `controls` are not touched again until it returns.
        let mut headers = [empty_header(); MAX_MESSAGES];
        let iovec_base = iovecs.as_mut_ptr();
        let address_base = self.addresses.as_mut_ptr();
        let control_base = self.controls.as_mut_ptr();
        for (i, header) in headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_name = address_base.wrapping_add(i).cast();
            header.msg_hdr.msg_namelen = RawAddress::CAPACITY;
            header.msg_hdr.msg_iov = iovec_base.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = control_base.wrapping_add(i).cast();
            header.msg_hdr.msg_controllen = size_of::<ControlBuffer>();
        }
        let vlen = libc::c_uint::try_from(count).unwrap_or(libc::c_uint::MAX);
        let received = loop {
            // SAFETY: `headers[..count]` are live mmsghdrs on this stack frame, `count` at
            // most the capacity, so at most the lengths of `addresses` and `controls`. Each
            // points to one live iovec of `iovecs` (also on this stack frame), which points
            // to a slot (a live, writable buffer of `iov_len` bytes, borrowed mutably for
            // `'a` through `slots`), to one live sockaddr_in6 of `self.addresses` with
            // `msg_namelen` its size and to one live buffer of `self.controls` of
            // `msg_controllen` bytes, both borrowed mutably through `&mut self`. The kernel
            // writes at most those lengths, and the lengths and flags into the headers;
            // `vlen` is at most the number of headers. No timeout pointer is passed. Nothing
            // here outlives the call.
            let rc = unsafe {
                libc::recvmmsg(
                    socket.raw_fd(),
                    headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            cost::syscall(Syscall::Recvmmsg);
            if let Ok(received) = usize::try_from(rc) {
                break received.min(count);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    cost::empty_read();
                    return Ok(0);
                }
                _ => return Err(error),
            }
        };
        for (i, (header, iovec)) in headers.iter().zip(&iovecs).take(received).enumerate() {
            let (Some(datagram), Some(address), Some(control)) = (
                self.datagrams.get_mut(i),
                self.addresses.get(i),
                self.controls.get(i),
            ) else {
                break;
            };
            let len = usize::try_from(header.msg_len).unwrap_or(usize::MAX);
            // A header of our own pointing at the control buffer, now borrowed shared.
            let mut message = empty_msghdr();
            message.msg_control = std::ptr::from_ref(control).cast_mut().cast();
            message.msg_controllen = header
                .msg_hdr
                .msg_controllen
                .min(size_of::<ControlBuffer>());
            *datagram = Datagram {
                len: len.min(iovec.iov_len),
                truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > iovec.iov_len,
                peer: address.get(header.msg_hdr.msg_namelen),
                segment_size: gro_segment_size(&message),
            };
        }
        self.received = received;
        Ok(received)
    }

    /// Datagram `i` of the last [`recv`](Receiver::recv); `None` unless `i` is below what
    /// it returned.
    pub fn datagram(&self, i: usize) -> Option<Datagram> {
        self.datagrams.get(..self.received)?.get(i).copied()
    }
}

/// `sendmmsg` of whole IP packets on a [`RawIpSocket`]. The `mmsghdr`, `iovec` and
/// address arrays are built on the stack of each call, so the sender holds no pointer
/// between calls.
#[derive(Debug)]
pub struct Sender {
    capacity: usize,
}

impl Sender {
    /// Up to `capacity` packets per call (at most [`MAX_MESSAGES`]: a larger capacity is
    /// cut to it).
    pub fn new(capacity: usize) -> Sender {
        Sender {
            capacity: capacity.min(MAX_MESSAGES),
        }
    }

    /// The most packets one call sends.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sends up to [`capacity`](Sender::capacity) of `packets` (each a whole IP packet of the
    /// socket's family and the address to route it to) without blocking, in order; returns
    /// how many the kernel
    /// took (at least one, unless `packets` is empty). The first packet not taken is the one
    /// the kernel refused: a later call starting with it reports why.
    ///
    /// # Errors
    /// The kernel's error for the first packet when it took none (`EAGAIN`/`ENOBUFS` when
    /// the socket or the device queue is full, `EMSGSIZE` beyond the route's MTU, ...).
    pub fn send<'a>(
        &mut self,
        socket: &RawIpSocket,
        packets: impl Iterator<Item = (&'a [u8], IpAddr)>,
    ) -> io::Result<usize> {
        let unspecified = RawAddress::unspecified(libc::AF_INET6);
        let mut iovecs = [empty_iovec(); MAX_MESSAGES];
        let mut addresses = [unspecified; MAX_MESSAGES];
        let mut lengths: [libc::socklen_t; MAX_MESSAGES] = [0; MAX_MESSAGES];
        let mut count = 0;
        for (((iovec, address), length), (packet, destination)) in iovecs
            .iter_mut()
            .zip(addresses.iter_mut())
            .zip(lengths.iter_mut())
            .take(self.capacity)
            .zip(packets)
        {
            // sendmmsg only reads through `iov_base`; the field is `*mut` for both calls.
            *iovec = libc::iovec {
                iov_base: packet.as_ptr().cast_mut().cast(),
                iov_len: packet.len(),
            };
            // For IPPROTO_RAW the port is 0 (over IPv6 it would name the protocol); the
            // kernel routes by the address.
            *address = RawAddress::new(SocketAddr::new(destination, 0));
            *length = address.len();
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // Taken once, after the last write through a reference to either array.
        let mut headers = [empty_header(); MAX_MESSAGES];
        let iovec_base = iovecs.as_mut_ptr();
        let address_base = addresses.as_mut_ptr();
        for (i, header) in headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_name = address_base.wrapping_add(i).cast();
            header.msg_hdr.msg_namelen = lengths.get(i).copied().unwrap_or(0);
            header.msg_hdr.msg_iov = iovec_base.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
        }
        let vlen = libc::c_uint::try_from(count).unwrap_or(libc::c_uint::MAX);
        loop {
            // SAFETY: `headers[..count]` are live mmsghdrs on this stack frame with no
            // control buffer; each points to one live iovec of `iovecs` and one live
            // sockaddr_in6 of `addresses` of at least `msg_namelen` bytes (both on this stack frame,
            // `count <= MAX_MESSAGES` of each). Each iovec points to a packet: a live buffer
            // of `iov_len` bytes borrowed for `'a`, which the kernel only reads. The kernel
            // writes only the headers' `msg_len`, and `vlen` is at most the number of
            // headers. Nothing here outlives the call.
            let rc = unsafe {
                libc::sendmmsg(
                    socket.raw_fd(),
                    headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                )
            };
            cost::syscall(Syscall::Sendmmsg);
            if let Ok(sent) = usize::try_from(rc) {
                return Ok(sent.min(count));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    const LOOPBACK6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));

    #[test]
    fn sockaddr_round_trip() {
        let v4: SocketAddr = "192.0.2.7:4789".parse().unwrap();
        let raw = RawAddress::new(v4);
        assert_eq!(raw.0.sin6_port, 4789u16.to_be());
        assert_eq!(raw.len(), 16);
        assert_eq!(raw.get(16), Some(v4));
        assert_eq!(raw.get(4), None, "short address");
        // The bytes a sockaddr_in has: family, port, address in network order, zeros.
        let kernel = libc::sockaddr_in {
            sin_family: 2,
            sin_port: 4789u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(192, 0, 2, 7)).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: both are plain C structs; the view reads 16 initialised bytes of each.
        let (ours, theirs) = unsafe {
            (
                std::slice::from_raw_parts(std::ptr::from_ref(&raw).cast::<u8>(), 16),
                std::slice::from_raw_parts(std::ptr::from_ref(&kernel).cast::<u8>(), 16),
            )
        };
        assert_eq!(ours, theirs);
        let v6: SocketAddr = "[2001:db8::7]:4789".parse().unwrap();
        let raw = RawAddress::new(v6);
        assert_eq!(raw.len(), 28);
        assert_eq!(raw.get(28), Some(v6));
        assert_eq!(raw.get(16), None, "short address");
        let mut other = raw;
        other.0.sin6_family = 1; // AF_UNIX
        assert_eq!(other.get(28), None);
    }

    #[test]
    fn empty_receives_do_nothing() {
        let socket = UdpSocket::bind(LOOPBACK, true, None).expect("UDP socket on loopback");
        let mut receiver = Receiver::new(4);
        assert_eq!(receiver.recv(&socket, std::iter::empty()).unwrap(), 0);
        let mut slot = [0u8; 64];
        // Nothing waiting: Ok(0), not an error, and no blocking.
        assert_eq!(
            receiver
                .recv(&socket, std::iter::once(&mut slot[..]))
                .unwrap(),
            0
        );
        assert_eq!(receiver.datagram(4), None);
    }

    #[test]
    fn batch_structures_are_send_without_unsafe_impls() {
        fn send<T: Send>() {}
        send::<Receiver>();
        send::<Sender>();
        // The stack arrays bound the capacity.
        assert_eq!(Receiver::new(MAX_MESSAGES + 1).capacity(), MAX_MESSAGES);
        assert_eq!(Sender::new(MAX_MESSAGES + 1).capacity(), MAX_MESSAGES);
        assert_eq!(Receiver::new(3).capacity(), 3);
    }

    #[test]
    #[ignore = "needs root: opens a raw IPv4 socket (CAP_NET_RAW)"]
    fn empty_sends_do_nothing() {
        let raw = RawIpSocket::open(false, None).expect("raw socket (the tests must run as root)");
        let mut sender = Sender::new(4);
        assert_eq!(sender.send(&raw, std::iter::empty()).unwrap(), 0);
    }

    #[test]
    fn receive_records_length_peer_and_truncation() {
        let socket = UdpSocket::bind(LOOPBACK, true, None).expect("UDP socket on loopback");
        let local = socket.local_addr().unwrap();
        assert_ne!(local.port(), 0);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&[1, 2, 3], local).unwrap();
        client.send_to(&[7; 40], local).unwrap();
        let peer = client.local_addr().unwrap();
        let mut receiver = Receiver::new(4);
        let mut slots = [[0u8; 16]; 4];
        let mut seen = Vec::new();
        for _ in 0..200 {
            let received = receiver
                .recv(&socket, slots[seen.len()..].iter_mut().map(|s| &mut s[..]))
                .unwrap();
            seen.extend((0..received).map(|i| receiver.datagram(i).unwrap()));
            if seen.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            seen,
            [
                Datagram {
                    len: 3,
                    truncated: false,
                    peer: Some(peer),
                    segment_size: None,
                },
                Datagram {
                    len: 16,
                    truncated: true,
                    peer: Some(peer),
                    segment_size: None,
                },
            ]
        );
        assert_eq!(&slots[0][..3], &[1, 2, 3]);
        assert_eq!(slots[1], [7; 16]);
    }

    #[test]
    fn segment_control_has_the_kernel_layout() {
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(2), libc::CMSG_LEN(2)) };
        assert_eq!(size_of::<SegmentControl>(), usize::try_from(space).unwrap());
        let control = SegmentControl::new(1458);
        assert_eq!(control.header.cmsg_len, usize::try_from(len).unwrap());
        assert_eq!(control.header.cmsg_level, libc::SOL_UDP);
        assert_eq!(control.header.cmsg_type, libc::UDP_SEGMENT);
        let mut message = empty_msghdr();
        message.msg_control = std::ptr::from_ref(&control).cast_mut().cast();
        message.msg_controllen = size_of::<SegmentControl>();
        // SAFETY: `message` describes `control`, live for the whole block; CMSG_DATA of its
        // first header points at `segment_size`.
        let data = unsafe {
            let first = libc::CMSG_FIRSTHDR(&message);
            assert_eq!(first.cast_const(), std::ptr::from_ref(&control.header));
            libc::CMSG_DATA(first).cast::<u16>().read_unaligned()
        };
        assert_eq!(data, 1458);
    }

    /// A control buffer holding one message of `level`/`kind` with the c_int `value`.
    fn control_with(level: libc::c_int, kind: libc::c_int, value: libc::c_int) -> ControlBuffer {
        let mut buffer = ControlBuffer([0; 64]);
        let header_len = size_of::<libc::cmsghdr>();
        let cmsg_len = header_len + size_of::<libc::c_int>();
        buffer.0[..size_of::<usize>()].copy_from_slice(&cmsg_len.to_ne_bytes());
        buffer.0[8..12].copy_from_slice(&level.to_ne_bytes());
        buffer.0[12..16].copy_from_slice(&kind.to_ne_bytes());
        buffer.0[header_len..header_len + 4].copy_from_slice(&value.to_ne_bytes());
        buffer
    }

    #[test]
    fn gro_segment_size_is_read_from_the_udp_gro_message() {
        let parse = |buffer: &ControlBuffer, len: usize| {
            let mut message = empty_msghdr();
            message.msg_control = std::ptr::from_ref(buffer).cast_mut().cast();
            message.msg_controllen = len;
            gro_segment_size(&message)
        };
        let gro = control_with(libc::SOL_UDP, libc::UDP_GRO, 1450);
        assert_eq!(parse(&gro, 24), Some(1450));
        // No message, or a length too short for one.
        assert_eq!(parse(&gro, 0), None);
        assert_eq!(parse(&gro, 8), None);
        // Another message, a zero or out-of-range size.
        assert_eq!(
            parse(&control_with(libc::SOL_IP, libc::IP_TTL, 64), 24),
            None
        );
        assert_eq!(
            parse(&control_with(libc::SOL_UDP, libc::UDP_GRO, 0), 24),
            None
        );
        assert_eq!(
            parse(&control_with(libc::SOL_UDP, libc::UDP_GRO, 70_000), 24),
            None
        );
        assert_eq!(gro_segment_size(&empty_msghdr()), None, "no control buffer");
    }

    #[test]
    fn udp_segment_and_gro_between_two_sockets() {
        udp_segment_and_gro_on(LOOPBACK);
    }

    #[test]
    fn udp_segment_and_gro_between_two_ipv6_sockets() {
        udp_segment_and_gro_on(LOOPBACK6);
    }

    fn udp_segment_and_gro_on(loopback: SocketAddr) {
        let receiver_socket = UdpSocket::bind(loopback, true, None).unwrap();
        receiver_socket
            .enable_gro()
            .expect("UDP_GRO on this kernel");
        let to = receiver_socket.local_addr().unwrap();
        let options = SendOptions {
            ttl: 9,
            dont_fragment: true,
            send_buffer: Some(1 << 20),
        };
        let sender = UdpSocket::bind_sender(loopback, options).expect("send-only socket");
        sender
            .set_segment_size(0)
            .expect("UDP_SEGMENT on this kernel");
        let from = sender.local_addr().unwrap();
        // The port is ours alone: a second bind without SO_REUSEPORT fails.
        let error = UdpSocket::bind_sender(from, options).unwrap_err();
        assert_eq!(
            error.source.raw_os_error(),
            Some(libc::EADDRINUSE),
            "{error}"
        );
        let payload: Vec<u8> = (0..2500u32)
            .map(|i| u8::try_from(i % 256).unwrap())
            .collect();
        assert_eq!(sender.send_to(&payload, to, Some(1000)).unwrap(), 2500);
        assert_eq!(sender.send_to(&payload[..300], to, None).unwrap(), 300);
        let mut receiver = Receiver::new(4);
        let mut slots = vec![[0u8; 4096]; 4];
        let mut seen = Vec::new();
        for _ in 0..200 {
            let received = receiver
                .recv(
                    &receiver_socket,
                    slots[seen.len()..].iter_mut().map(|s| &mut s[..]),
                )
                .unwrap();
            seen.extend((0..received).map(|i| receiver.datagram(i).unwrap()));
            if seen.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            seen,
            [
                Datagram {
                    len: 2500,
                    truncated: false,
                    peer: Some(from),
                    segment_size: Some(1000),
                },
                Datagram {
                    len: 300,
                    truncated: false,
                    peer: Some(from),
                    segment_size: None,
                },
            ]
        );
        assert_eq!(&slots[0][..2500], &payload[..]);
    }
}
