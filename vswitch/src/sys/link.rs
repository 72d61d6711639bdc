//! The sockets a bond monitor uses (`port::bond`): link notifications over rtnetlink, and a
//! member's raw packet socket for the Slow Protocols (LACP).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The Slow Protocols EtherType (LACP, markers).
const ETH_P_SLOW: u16 = 0x8809;

/// One `send(MSG_DONTWAIT)` of `bytes` on `fd`.
fn send_dontwait(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: `bytes` is a live buffer of its length that send() only reads.
    let rc = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recv(MSG_DONTWAIT)` into `buffer`: the length read, `None` when nothing waits (or
/// the socket reported an error, which the caller's next read or dump makes up for).
fn recv_dontwait(fd: &OwnedFd, buffer: &mut [u8]) -> Option<usize> {
    // SAFETY: `buffer` is a live, writable buffer of its length.
    let rc = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(rc).ok().filter(|len| *len > 0)
}

/// Waits until one of `fds` is readable or `timeout_ms` passed.
///
/// # Errors
/// The kernel's (`Interrupted` by a signal).
pub fn poll_readable(fds: &[RawFd], timeout_ms: u64) -> io::Result<usize> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polled` is a live array of `polled.len()` pollfd structs.
    let rc = unsafe {
        libc::poll(
            polled.as_mut_ptr(),
            libc::nfds_t::try_from(polled.len()).unwrap_or(0),
            i32::try_from(timeout_ms).unwrap_or(i32::MAX),
        )
    };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// A netlink socket that hears of every link change (`RTNLGRP_LINK`).
#[derive(Debug)]
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    /// Opens the socket and joins `RTNLGRP_LINK`.
    ///
    /// # Errors
    /// The kernel's.
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: socket() with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(16);
        address.nl_groups = u32::try_from(libc::RTMGRP_LINK).unwrap_or(1);
        // SAFETY: `address` is a live sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                u32::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(12),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkWatch { fd })
    }

    /// Asks for every link's state (`RTM_GETLINK` dump); the answers arrive as
    /// notifications do.
    ///
    /// # Errors
    /// The kernel's.
    pub fn request_dump(&self) -> io::Result<()> {
        let mut request = [0u8; 32];
        request[0..4].copy_from_slice(&32u32.to_ne_bytes());
        request[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).unwrap_or(0x301);
        request[6..8].copy_from_slice(&flags.to_ne_bytes());
        request[16] = u8::try_from(libc::AF_UNSPEC).unwrap_or(0);
        send_dontwait(&self.fd, &request)?;
        Ok(())
    }

    /// Reads every waiting message and reports each link's carrier to `f` (index, carrier:
    /// up and `IFF_LOWER_UP`; a deleted link has none).
    pub fn drain(&self, buffer: &mut [u8], mut f: impl FnMut(u32, bool)) {
        // Until EAGAIN (drained) or ENOBUFS (messages were lost; the next dump makes up).
        while let Some(len) = recv_dontwait(&self.fd, buffer) {
            let mut messages = buffer.get(..len).unwrap_or_default();
            while messages.len() >= 16 {
                let field = |at: usize| {
                    messages
                        .get(at..at + 4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u32::from_ne_bytes)
                };
                let length = field(0) as usize;
                let kind = messages
                    .get(4..6)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u16::from_ne_bytes);
                if length < 16 || length > messages.len() {
                    break;
                }
                if (kind == libc::RTM_NEWLINK || kind == libc::RTM_DELLINK) && length >= 32 {
                    let index = field(20);
                    let flags = field(24);
                    let up = flags & u32::try_from(libc::IFF_UP).unwrap_or(1) != 0;
                    let lower = flags & u32::try_from(libc::IFF_LOWER_UP).unwrap_or(0x10000) != 0;
                    f(index, kind == libc::RTM_NEWLINK && up && lower);
                }
                let aligned = (length + 3) & !3;
                messages = messages.get(aligned..).unwrap_or_default();
            }
        }
    }
}

/// A member's AF_PACKET socket for Slow Protocols frames (LACPDUs), which also sends the
/// bond monitor's ARP probes and announcements (a raw packet socket sends any frame).
#[derive(Debug)]
pub struct SlowSocket {
    fd: OwnedFd,
}

impl SlowSocket {
    /// Opens the socket on interface `ifindex` for EtherType `ETH_P_SLOW` and joins
    /// multicast `group` there.
    ///
    /// # Errors
    /// The kernel's.
    pub fn open(ifindex: u32, group: [u8; 6]) -> io::Result<SlowSocket> {
        let protocol = ETH_P_SLOW.to_be();
        // SAFETY: socket() with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let index = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        // SAFETY: sockaddr_ll is plain data; zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
        address.sll_protocol = protocol;
        address.sll_ifindex = index;
        // SAFETY: `address` is a live sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(20),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut mr_address = [0u8; 8];
        mr_address[..6].copy_from_slice(&group);
        let request = libc::packet_mreq {
            mr_ifindex: index,
            mr_type: u16::try_from(libc::PACKET_MR_MULTICAST).unwrap_or(0),
            mr_alen: 6,
            mr_address,
        };
        // SAFETY: `request` is a live packet_mreq of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                std::ptr::from_ref(&request).cast(),
                u32::try_from(size_of::<libc::packet_mreq>()).unwrap_or(16),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SlowSocket { fd })
    }

    /// Reads one waiting frame into `buffer`; `None` when there is none.
    pub fn recv(&self, buffer: &mut [u8]) -> Option<usize> {
        recv_dontwait(&self.fd, buffer)
    }

    /// Sends one whole Ethernet frame, never blocking.
    ///
    /// # Errors
    /// The kernel's.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send_dontwait(&self.fd, frame)
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for SlowSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
