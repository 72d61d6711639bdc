//! AF_PACKET sockets (being written).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::port::RxBatch;

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// See [`crate::port::PortQueue::recv_batch`].
    ///
    /// # Errors
    /// The kernel's error.
    pub fn recv_batch(&mut self, _batch: &mut RxBatch) -> io::Result<usize> {
        Ok(0)
    }

    /// See [`crate::port::PortQueue::send`].
    ///
    /// # Errors
    /// The kernel's error.
    pub fn send(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }

    /// See [`crate::port::PortQueue::flush`].
    ///
    /// # Errors
    /// The kernel's error.
    pub fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
