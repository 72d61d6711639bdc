//! TAP devices from /dev/net/tun (being written).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::port::RxBatch;

/// One queue of a TAP device.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
}

impl TapQueue {
    /// The queue's fd.
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
}
