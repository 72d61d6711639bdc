//! What the datapath spends, tallied where it is spent: system calls by kind, reads that
//! found nothing, bytes checksummed in software, super-frames segmented in software, segments
//! merged in software, and `UDP_SEGMENT` sends. Not counted: the futex calls of a contended
//! lock, log writes, and the sleep after a failed `epoll_wait` (rare by design). With the workers' load counters (busy and idle
//! time, batch sizes) and their context switches, these account for where a worker's cycles
//! go per GB moved (`perf` divides them by the bytes delivered).
//!
//! Each thread keeps its own tally in thread-local cells: an add is a plain load and store in
//! the thread's own memory (no atomic, no lock, nothing shared), so the `sys` wrappers and the
//! `wire` functions can count without taking a counters argument. A worker moves its tally
//! into its [`WorkerCounters`](crate::runtime::counters::WorkerCounters) once per loop
//! iteration ([`take`]), which the API reads. Other threads (the API, monitors, tests) tally
//! too, and nobody reads theirs.

use std::cell::Cell;

/// A system call of the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// `read` of a TAP queue (one frame each).
    Read,
    /// `write` to a TAP queue (one frame each).
    Write,
    /// `recv` of a whole frame from an AF_PACKET socket (frames the ring could not hold).
    Recv,
    /// `send` on an AF_PACKET socket (one frame sent at once).
    Send,
    /// `recvmmsg` on the VTEP's UDP socket.
    Recvmmsg,
    /// `sendmmsg` on an AF_PACKET socket or the VTEP's sockets.
    Sendmmsg,
    /// `sendmsg` on the VTEP's sockets (one datagram, or a `UDP_SEGMENT` super-datagram).
    Sendmsg,
    /// `getsockopt(SO_ERROR)` of an AF_PACKET socket read with nothing taken from its ring
    /// (empty, or every frame in it dropped: the interface may be gone).
    Getsockopt,
    /// `epoll_ctl` of a worker (a queue added or removed: a new snapshot, a back-off).
    EpollCtl,
    /// `epoll_wait` of a worker (whether it slept or not).
    EpollWait,
    /// `read` or `write` of an eventfd (a worker's waker, a queue's doorbell).
    Eventfd,
}

impl Syscall {
    /// How many kinds there are.
    pub const COUNT: usize = 11;

    /// Every kind, in [`Syscall::index`] order.
    pub const ALL: [Syscall; Syscall::COUNT] = [
        Syscall::Read,
        Syscall::Write,
        Syscall::Recv,
        Syscall::Send,
        Syscall::Recvmmsg,
        Syscall::Sendmmsg,
        Syscall::Sendmsg,
        Syscall::Getsockopt,
        Syscall::EpollCtl,
        Syscall::EpollWait,
        Syscall::Eventfd,
    ];

    /// Stable key (API, metrics label).
    pub fn key(self) -> &'static str {
        match self {
            Syscall::Read => "read",
            Syscall::Write => "write",
            Syscall::Recv => "recv",
            Syscall::Send => "send",
            Syscall::Recvmmsg => "recvmmsg",
            Syscall::Sendmmsg => "sendmmsg",
            Syscall::Sendmsg => "sendmsg",
            Syscall::Getsockopt => "getsockopt",
            Syscall::EpollCtl => "epoll_ctl",
            Syscall::EpollWait => "epoll_wait",
            Syscall::Eventfd => "eventfd",
        }
    }

    /// Position in [`Syscall::ALL`] and in [`Costs::syscalls`].
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A tally's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Costs {
    /// System calls, by [`Syscall::index`].
    pub syscalls: [u64; Syscall::COUNT],
    /// Reads of a queue that took nothing: a TAP `read` or the VTEP's `recvmmsg` that
    /// found nothing (the call that ends each TAP batch, mostly), an AF_PACKET ring read
    /// that took no frame.
    pub empty_reads: u64,
    /// Bytes summed by the software Internet checksum (headers and payloads).
    pub checksum_bytes: u64,
    /// Bytes written by software segmentation (the segments' total length): super-frames
    /// split before encapsulation, or toward a port that takes no super-frames.
    pub segmented_bytes: u64,
    /// Segments those splits produced.
    pub segments: u64,
    /// Segments merged in software into another (GRO toward a port that takes
    /// super-frames; in-place merges of the VTEP's `UDP_GRO` buffers).
    pub coalesced_segments: u64,
    /// `sendmsg` calls that carried a `UDP_SEGMENT` super-datagram (many datagrams each).
    pub udp_gso_sends: u64,
}

impl Costs {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Costs) {
        for (sum, value) in self.syscalls.iter_mut().zip(other.syscalls) {
            *sum = sum.wrapping_add(value);
        }
        self.empty_reads = self.empty_reads.wrapping_add(other.empty_reads);
        self.checksum_bytes = self.checksum_bytes.wrapping_add(other.checksum_bytes);
        self.segmented_bytes = self.segmented_bytes.wrapping_add(other.segmented_bytes);
        self.segments = self.segments.wrapping_add(other.segments);
        self.coalesced_segments = self
            .coalesced_segments
            .wrapping_add(other.coalesced_segments);
        self.udp_gso_sends = self.udp_gso_sends.wrapping_add(other.udp_gso_sends);
    }

    /// Every system call counted.
    pub fn total_syscalls(&self) -> u64 {
        self.syscalls.iter().sum()
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Costs::default()
    }
}

/// One thread's tally.
struct Tally {
    syscalls: [Cell<u64>; Syscall::COUNT],
    empty_reads: Cell<u64>,
    checksum_bytes: Cell<u64>,
    segmented_bytes: Cell<u64>,
    segments: Cell<u64>,
    coalesced_segments: Cell<u64>,
    udp_gso_sends: Cell<u64>,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            syscalls: [const { Cell::new(0) }; Syscall::COUNT],
            empty_reads: Cell::new(0),
            checksum_bytes: Cell::new(0),
            segmented_bytes: Cell::new(0),
            segments: Cell::new(0),
            coalesced_segments: Cell::new(0),
            udp_gso_sends: Cell::new(0),
        }
    }
}

thread_local! {
    static TALLY: Tally = const { Tally::new() };
}

#[inline]
fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

#[inline]
fn widen(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Counts one system call of `kind`.
#[inline]
pub fn syscall(kind: Syscall) {
    TALLY.with(|tally| bump(&tally.syscalls[kind.index()], 1));
}

/// Counts a read that found nothing (its system call is counted by [`syscall`]).
#[inline]
pub fn empty_read() {
    TALLY.with(|tally| bump(&tally.empty_reads, 1));
}

/// Counts `bytes` summed by the software checksum.
#[inline]
pub fn checksummed(bytes: usize) {
    TALLY.with(|tally| bump(&tally.checksum_bytes, widen(bytes)));
}

/// Counts a super-frame of `bytes` split in software into `segments` segments.
#[inline]
pub fn segmented(bytes: usize, segments: usize) {
    TALLY.with(|tally| {
        bump(&tally.segmented_bytes, widen(bytes));
        bump(&tally.segments, widen(segments));
    });
}

/// Counts `segments` segments merged in software into another.
#[inline]
pub fn coalesced(segments: usize) {
    TALLY.with(|tally| bump(&tally.coalesced_segments, widen(segments)));
}

/// Counts a `sendmsg` carrying a `UDP_SEGMENT` super-datagram (its system call is counted
/// by [`syscall`]).
#[inline]
pub fn udp_gso_send() {
    TALLY.with(|tally| bump(&tally.udp_gso_sends, 1));
}

/// This thread's tally since the last call, which is zeroed.
pub fn take() -> Costs {
    TALLY.with(|tally| Costs {
        syscalls: std::array::from_fn(|i| tally.syscalls[i].take()),
        empty_reads: tally.empty_reads.take(),
        checksum_bytes: tally.checksum_bytes.take(),
        segmented_bytes: tally.segmented_bytes.take(),
        segments: tally.segments.take(),
        coalesced_segments: tally.coalesced_segments.take(),
        udp_gso_sends: tally.udp_gso_sends.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_in_index_order_with_distinct_keys() {
        for (i, kind) in Syscall::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        let mut keys: Vec<_> = Syscall::ALL.iter().map(|kind| kind.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Syscall::COUNT);
    }

    #[test]
    fn a_thread_takes_its_own_tally_once() {
        let _ = take();
        syscall(Syscall::Read);
        syscall(Syscall::Read);
        syscall(Syscall::EpollWait);
        empty_read();
        checksummed(1500);
        segmented(64_000, 45);
        coalesced(3);
        udp_gso_send();
        // Another thread's tally is its own.
        std::thread::spawn(|| {
            syscall(Syscall::Write);
            assert_eq!(take().syscalls[Syscall::Write.index()], 1);
        })
        .join()
        .unwrap();
        let costs = take();
        assert_eq!(costs.syscalls[Syscall::Read.index()], 2);
        assert_eq!(costs.syscalls[Syscall::EpollWait.index()], 1);
        assert_eq!(costs.syscalls[Syscall::Write.index()], 0);
        assert_eq!(costs.total_syscalls(), 3);
        assert_eq!(
            (costs.empty_reads, costs.checksum_bytes, costs.udp_gso_sends),
            (1, 1500, 1)
        );
        assert_eq!((costs.segmented_bytes, costs.segments), (64_000, 45));
        assert_eq!(costs.coalesced_segments, 3);
        assert!(take().is_zero(), "taken once");
        let mut sum = Costs::default();
        sum.add(&costs);
        sum.add(&costs);
        assert_eq!(sum.syscalls[Syscall::Read.index()], 4);
        assert_eq!(sum.checksum_bytes, 3000);
    }
}
