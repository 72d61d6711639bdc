//! The VTEP's sockets: a UDP socket per worker that receives VXLAN datagrams, and a raw IPv4
//! socket per worker that sends packets whose IP header we built ourselves.
//!
//! - [`UdpSocket::bind`]: `SOCK_DGRAM`, non-blocking, close-on-exec, `SO_REUSEPORT` (every
//!   worker binds the same address and port and the kernel hashes flows across the group)
//!   and a large receive buffer (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
//! - [`RawIpv4Socket::open`]: `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`. For `IPPROTO_RAW` the
//!   kernel implies `IP_HDRINCL` (raw(7)): we hand it the whole IPv4 packet, so the outer UDP
//!   source port can be hashed from the inner flow (a UDP socket would always send from its
//!   bound port). The kernel fills in the IPv4 checksum (and the identification when zero),
//!   routes by the destination address and resolves the next hop; it does not fragment:
//!   a packet larger than the route's MTU fails with `EMSGSIZE`.
//! - [`Receiver`] and [`Sender`]: `recvmmsg`/`sendmmsg` with their `mmsghdr`, `iovec` and
//!   `sockaddr_in` arrays allocated once; only the pointers are rebuilt per call, so the hot
//!   path allocates nothing.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// Creates an `AF_INET` socket of `kind` (non-blocking, close-on-exec).
fn socket(kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
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

/// `address` as the kernel's `sockaddr_in` (port and address in network order).
fn to_sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The address in a `sockaddr_in` the kernel filled in, when it is one (`len` bytes long,
/// family `AF_INET`).
fn from_sockaddr(address: &libc::sockaddr_in, len: libc::socklen_t) -> Option<SocketAddrV4> {
    let full = usize::try_from(len).ok()? >= size_of::<libc::sockaddr_in>();
    let inet = i32::from(address.sin_family) == libc::AF_INET;
    (full && inet).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
            u16::from_be(address.sin_port),
        )
    })
}

/// `size_of::<sockaddr_in>()` as a `socklen_t` (16).
fn sockaddr_len() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16)
}

/// A non-blocking UDP socket bound to one IPv4 address and port.
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
        local: SocketAddrV4,
        reuse_port: bool,
        receive_buffer: Option<u32>,
    ) -> Result<UdpSocket, SocketError> {
        let fd = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP).map_err(fail("socket"))?;
        if reuse_port {
            let one: libc::c_int = 1;
            set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)
                .map_err(fail("SO_REUSEPORT"))?;
        }
        if let Some(bytes) = receive_buffer {
            set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
                .map_err(fail("SO_RCVBUF"))?;
        }
        let address = to_sockaddr(local);
        // SAFETY: `address` is a live `sockaddr_in` of `sockaddr_len()` bytes that bind()
        // only reads.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                sockaddr_len(),
            )
        };
        if rc < 0 {
            return Err(fail("bind")(io::Error::last_os_error()));
        }
        Ok(UdpSocket { fd })
    }

    /// The address and port the socket is bound to (the port the kernel chose when bound to
    /// port 0).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        let mut address = to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut len = sockaddr_len();
        // SAFETY: getsockname writes at most `len` bytes into `address`, a live sockaddr_in
        // of that size, and updates `len`, a live socklen_t.
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
        from_sockaddr(&address, len).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A non-blocking `IPPROTO_RAW` socket: it sends whole IPv4 packets (header included) and
/// receives nothing.
#[derive(Debug)]
pub struct RawIpv4Socket {
    fd: OwnedFd,
}

impl RawIpv4Socket {
    /// Opens the socket, with an `SO_SNDBUF` of `send_buffer` bytes when given (forced past
    /// `net.core.wmem_max` where allowed).
    ///
    /// # Errors
    /// [`SocketError`]; `socket` fails with `EPERM` without CAP_NET_RAW.
    pub fn open(send_buffer: Option<u32>) -> Result<RawIpv4Socket, SocketError> {
        let fd = socket(libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(fail("raw socket"))?;
        if let Some(bytes) = send_buffer {
            set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
                .map_err(fail("SO_SNDBUF"))?;
        }
        Ok(RawIpv4Socket { fd })
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
    /// The sender, when the kernel reported an IPv4 address.
    pub peer: Option<SocketAddrV4>,
}

/// `recvmmsg` with preallocated message arrays.
pub struct Receiver {
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    addresses: Box<[libc::sockaddr_in]>,
}

// SAFETY: the raw pointers inside `headers` and `iovecs` are written and read only within
// one call of `Receiver::recv`, where they point into `iovecs`, `addresses` (owned by the
// same `Receiver`, which that call borrows mutably) and the slots borrowed for that call.
// Between calls they are stale and never dereferenced, so moving the `Receiver` to another
// thread cannot let two threads use the memory they point to.
unsafe impl Send for Receiver {}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Arrays for up to `capacity` datagrams per call.
    pub fn new(capacity: usize) -> Receiver {
        let unspecified = to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Receiver {
            headers: (0..capacity).map(|_| empty_header()).collect(),
            iovecs: (0..capacity).map(|_| empty_iovec()).collect(),
            addresses: vec![unspecified; capacity].into_boxed_slice(),
        }
    }

    /// The most datagrams one call receives.
    pub fn capacity(&self) -> usize {
        self.headers.len()
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
        let mut count = 0;
        for (iovec, slot) in self.iovecs.iter_mut().zip(slots) {
            *iovec = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // Base pointers taken once, after the last write through a reference to the arrays,
        // so no later borrow invalidates them before the call.
        let iovecs = self.iovecs.as_mut_ptr();
        let addresses = self.addresses.as_mut_ptr();
        for (i, header) in self.headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_name = addresses.wrapping_add(i).cast();
            header.msg_hdr.msg_namelen = sockaddr_len();
            header.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        let vlen = libc::c_uint::try_from(count).unwrap_or(libc::c_uint::MAX);
        loop {
            // SAFETY: `headers[..count]` are live mmsghdrs; each points to one live iovec of
            // `iovecs` (a slot: a live, writable buffer of `iov_len` bytes, borrowed mutably
            // for this call through `slots`) and to one live sockaddr_in of `addresses` with
            // `msg_namelen` its size. The kernel writes at most those lengths, and the
            // message count and lengths into the headers. No timeout pointer is passed.
            let rc = unsafe {
                libc::recvmmsg(
                    socket.raw_fd(),
                    self.headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if let Ok(received) = usize::try_from(rc) {
                return Ok(received.min(count));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(error),
            }
        }
    }

    /// Datagram `i` of the last [`recv`](Receiver::recv) (`i` below what it returned); `None`
    /// when `i` is out of range.
    pub fn datagram(&self, i: usize) -> Option<Datagram> {
        let header = self.headers.get(i)?;
        let address = self.addresses.get(i)?;
        let slot_len = self.iovecs.get(i)?.iov_len;
        let len = usize::try_from(header.msg_len).unwrap_or(usize::MAX);
        Some(Datagram {
            len: len.min(slot_len),
            truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > slot_len,
            peer: from_sockaddr(address, header.msg_hdr.msg_namelen),
        })
    }
}

/// `sendmmsg` with preallocated message arrays, for a [`RawIpv4Socket`].
pub struct Sender {
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    addresses: Box<[libc::sockaddr_in]>,
}

// SAFETY: as for `Receiver`: the raw pointers are set and used only within one call of
// `Sender::send`, pointing into the `Sender`'s own arrays and the packets borrowed for that
// call; between calls they are never dereferenced.
unsafe impl Send for Sender {}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Arrays for up to `capacity` packets per call.
    pub fn new(capacity: usize) -> Sender {
        let unspecified = to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Sender {
            headers: (0..capacity).map(|_| empty_header()).collect(),
            iovecs: (0..capacity).map(|_| empty_iovec()).collect(),
            addresses: vec![unspecified; capacity].into_boxed_slice(),
        }
    }

    /// The most packets one call sends.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Sends up to [`capacity`](Sender::capacity) of `packets` (each a whole IPv4 packet and
    /// the address to route it to) without blocking, in order; returns how many the kernel
    /// took (at least one, unless `packets` is empty). The first packet not taken is the one
    /// the kernel refused: a later call starting with it reports why.
    ///
    /// # Errors
    /// The kernel's error for the first packet when it took none (`EAGAIN`/`ENOBUFS` when
    /// the socket or the device queue is full, `EMSGSIZE` beyond the route's MTU, ...).
    pub fn send<'a>(
        &mut self,
        socket: &RawIpv4Socket,
        packets: impl Iterator<Item = (&'a [u8], Ipv4Addr)>,
    ) -> io::Result<usize> {
        let mut count = 0;
        for ((iovec, address), (packet, destination)) in self
            .iovecs
            .iter_mut()
            .zip(self.addresses.iter_mut())
            .zip(packets)
        {
            // sendmmsg only reads through `iov_base`; the field is `*mut` for both calls.
            *iovec = libc::iovec {
                iov_base: packet.as_ptr().cast_mut().cast(),
                iov_len: packet.len(),
            };
            // For IPPROTO_RAW the port is meaningless; the kernel routes by the address.
            *address = to_sockaddr(SocketAddrV4::new(destination, 0));
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let iovecs = self.iovecs.as_mut_ptr();
        let addresses = self.addresses.as_mut_ptr();
        for (i, header) in self.headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_name = addresses.wrapping_add(i).cast();
            header.msg_hdr.msg_namelen = sockaddr_len();
            header.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        let vlen = libc::c_uint::try_from(count).unwrap_or(libc::c_uint::MAX);
        loop {
            // SAFETY: `headers[..count]` are live mmsghdrs; each points to one live iovec of
            // `iovecs` (a packet: a live buffer of `iov_len` bytes borrowed for this call,
            // which the kernel only reads) and to one live sockaddr_in of `addresses` of
            // `msg_namelen` bytes. The kernel writes only the headers' `msg_len`.
            let rc = unsafe {
                libc::sendmmsg(
                    socket.raw_fd(),
                    self.headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                )
            };
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

    #[test]
    fn sockaddr_round_trip() {
        let address = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 4789);
        let raw = to_sockaddr(address);
        assert_eq!(raw.sin_port, 4789u16.to_be());
        assert_eq!(from_sockaddr(&raw, sockaddr_len()), Some(address));
        assert_eq!(from_sockaddr(&raw, 4), None, "short address");
        let mut other = raw;
        other.sin_family = 10; // AF_INET6
        assert_eq!(from_sockaddr(&other, sockaddr_len()), None);
    }

    #[test]
    fn empty_calls_do_nothing() {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true, None)
            .expect("UDP socket on loopback");
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
        let raw = RawIpv4Socket::open(None).expect("raw socket (the tests must run as root)");
        let mut sender = Sender::new(4);
        assert_eq!(sender.send(&raw, std::iter::empty()).unwrap(), 0);
    }

    #[test]
    fn receive_records_length_peer_and_truncation() {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true, None)
            .expect("UDP socket on loopback");
        let local = socket.local_addr().unwrap();
        assert_ne!(local.port(), 0);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&[1, 2, 3], local).unwrap();
        client.send_to(&[7; 40], local).unwrap();
        let peer = match client.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            std::net::SocketAddr::V6(v6) => panic!("IPv6 client {v6}"),
        };
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
                    peer: Some(peer)
                },
                Datagram {
                    len: 16,
                    truncated: true,
                    peer: Some(peer)
                },
            ]
        );
        assert_eq!(&slots[0][..3], &[1, 2, 3]);
        assert_eq!(slots[1], [7; 16]);
    }
}
