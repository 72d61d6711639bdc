//! The harness's only `unsafe` code: the raw system calls no safe wrapper we depend on
//! offers in the shape we need. The rest of the crate denies `unsafe_code`; this module
//! allows it, gives every block a SAFETY comment, and exports only safe functions.
//!
//! - [`MessageBatch`]: `sendmmsg`/`recvmmsg` over buffers it owns, for the UDP load
//!   generator (`udp`), whose speed must not depend on per-call header building.
//! - [`install_interrupt_handler`]: the SIGINT/SIGTERM handler behind `cmd::interrupted`
//!   (`sigaction` is `unsafe` even through nix, since a handler must be async-signal-safe).

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the SIGINT/SIGTERM handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs a SIGINT and SIGTERM handler that only records the signal (see
/// [`interrupted`]); `SA_RESTART`, so interrupted system calls resume.
///
/// # Errors
/// The signal whose `sigaction` failed (it does not for these signals), and the error.
pub fn install_interrupt_handler() -> Result<(), (nix::sys::signal::Signal, nix::Error)> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and it
        // does not replace a handler that Rust's runtime relies on (std installs none for
        // SIGINT or SIGTERM).
        unsafe { sigaction(signal, &action) }.map_err(|error| (signal, error))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM has arrived (after [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A batch of `mmsghdr` over buffers it owns, one buffer per message: the headers point
/// into `iovecs`, and the iovecs into `buffers`, both boxed slices that never move or grow
/// after construction. Not `Send` (it holds raw pointers), and it needs not be: each tool
/// uses its batch on the thread that made it.
pub struct MessageBatch {
    headers: Vec<libc::mmsghdr>,
    /// What the headers point into; kept alive, never touched after construction.
    _iovecs: Box<[libc::iovec]>,
    _buffers: Box<[u8]>,
}

impl std::fmt::Debug for MessageBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBatch")
            .field("messages", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl MessageBatch {
    /// `count` messages of `size` bytes each (zeros), every one with its own buffer.
    pub fn new(count: usize, size: usize) -> MessageBatch {
        let mut buffers = vec![0u8; count * size].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = buffers
            .chunks_mut(size.max(1))
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let headers = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: mmsghdr is a plain C struct of integers and pointers; all-zero is
                // a valid value (null name and control, no iovecs) that we then fill in.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        MessageBatch {
            headers,
            _iovecs: iovecs,
            _buffers: buffers,
        }
    }

    fn len_c(&self) -> libc::c_uint {
        // The batches are small (hundreds of messages), far below c_uint::MAX.
        libc::c_uint::try_from(self.headers.len()).unwrap_or(libc::c_uint::MAX)
    }

    /// One `sendmmsg` of every message on the connected `socket`; returns how many the
    /// kernel took.
    ///
    /// # Errors
    /// The kernel's error (`ENOBUFS`, `ECONNREFUSED` after an ICMP error, ...).
    pub fn send(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: the fd is an open UDP socket owned by `socket`, alive for the call;
        // `self.headers` holds `len_c()` initialised mmsghdrs whose iovecs point into
        // buffers owned by `self`, which outlives the call. msg_name is null: the socket is
        // connected (or the kernel refuses the call with an error, nothing unsound).
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.len_c(),
                0,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }

    /// One `recvmmsg` with `MSG_WAITFORONE` (blocks for the first message, up to the
    /// socket's `SO_RCVTIMEO`); returns the messages and the payload bytes received.
    ///
    /// # Errors
    /// The kernel's error: `EAGAIN` when the receive timeout passes, `EINTR`, ...
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<(usize, u64)> {
        // SAFETY: the fd is the bound socket owned by `socket`; `self.headers` holds
        // `len_c()` mmsghdrs whose iovecs point into buffers owned by `self`, alive and
        // writable for the call. A null timeout is allowed (SO_RCVTIMEO bounds the wait).
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.len_c(),
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
        let bytes = self
            .headers
            .iter()
            .take(count)
            .map(|header| u64::from(header.msg_len))
            .sum();
        Ok((count, bytes))
    }

    /// The length of each message's buffer.
    #[cfg(test)]
    fn buffer_lengths(&self) -> Vec<usize> {
        self._iovecs.iter().map(|iovec| iovec.iov_len).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_points_into_its_own_buffers() {
        let batch = MessageBatch::new(4, 18);
        assert_eq!(batch.len_c(), 4);
        assert_eq!(batch.buffer_lengths(), [18; 4]);
        for (header, iovec) in batch.headers.iter().zip(batch._iovecs.iter()) {
            assert_eq!(header.msg_hdr.msg_iovlen, 1);
            assert_eq!(
                header.msg_hdr.msg_iov.cast_const(),
                std::ptr::from_ref(iovec)
            );
        }
    }

    /// A batch over loopback in this process's namespace (no root needed).
    #[test]
    fn loopback_round() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(receiver.local_addr().unwrap()).unwrap();
        assert_eq!(MessageBatch::new(8, 18).send(&socket).unwrap(), 8);
        let mut batch = MessageBatch::new(16, 64);
        let mut got = (0, 0);
        while got.0 < 8 {
            let (count, bytes) = batch.recv(&receiver).unwrap();
            got = (got.0 + count, got.1 + bytes);
        }
        assert_eq!(got, (8, 8 * 18));
    }
}
