//! TAP devices from /dev/net/tun: one [`TapQueue`] per queue of an `IFF_MULTI_QUEUE` device.
//!
//! Every queue is opened `O_RDWR | O_NONBLOCK | O_CLOEXEC` and attached with `TUNSETIFF`
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`); the virtio header size is then
//! set explicitly with `TUNSETVNETHDRSZ` to [`VNET_HDR_LEN`], so every read and write is a
//! 10-byte `virtio_net_hdr` followed by the Ethernet frame.
//!
//! `TUNSETIFF` finds or creates the device by name in the namespace the fd was *opened* in,
//! not the one the device lives in now: a device created here and moved into a container is
//! re-attached after a restart by opening /dev/net/tun from a thread inside the container's
//! namespace (see `port::tap::reopen`).
//!
//! What the container may hand us is negotiated with `TUNSETOFFLOAD`; the bits come from the
//! pure function [`tun_offload_flags`].

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::cost::{self, Syscall};
use crate::sys::batch::RxBatch;
use crate::wire::VNET_HDR_LEN;

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `IFNAMSIZ` (include/uapi/linux/if.h): interface names are at most 15 bytes plus the NUL.
pub const IFNAMSIZ: usize = 16;

/// The flags every queue of our TAP devices is attached with (include/uapi/linux/if_tun.h):
/// an Ethernet device, no packet-information prefix, a virtio header before each frame, and
/// one fd per queue.
const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// `struct ifreq` (include/uapi/linux/if.h) as `TUNSETIFF`/`TUNGETIFF` use it: the name,
/// then the union `ifr_ifru`, of which the tun driver reads only `short ifr_flags`. The
/// union's largest member is `struct ifmap` (24 bytes on 64-bit), so the struct is 40 bytes;
/// the kernel copies `sizeof(struct ifreq)` bytes, which the padding provides.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct IfreqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    padding: [u8; 22],
}

impl IfreqFlags {
    /// An `ifreq` naming `ifname` with `flags`; `None` when the name does not fit or holds
    /// a NUL, or the flags do not fit `ifr_flags`.
    fn new(ifname: &str, flags: libc::c_int) -> Option<IfreqFlags> {
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return None;
        }
        let mut name = [0u8; IFNAMSIZ];
        name[..bytes.len()].copy_from_slice(bytes);
        Some(IfreqFlags {
            name,
            flags: libc::c_short::try_from(flags).ok()?,
            padding: [0; 22],
        })
    }
}

/// What the switch's pipeline can take from a TAP, in terms the kernel understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffloadSupport {
    /// Frames whose L4 checksum is partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the switch
    /// completes it where the egress port cannot.
    pub partial_csum: bool,
    /// TCP/IPv4 super-frames (`VIRTIO_NET_HDR_GSO_TCPV4`), segmented where needed.
    pub tso4: bool,
    /// TCP/IPv6 super-frames (`VIRTIO_NET_HDR_GSO_TCPV6`).
    pub tso6: bool,
    /// Super-frames with the ECN flag (`VIRTIO_NET_HDR_GSO_ECN`: CWR set on the first
    /// segment only).
    pub tso_ecn: bool,
}

impl OffloadSupport {
    /// What our pipeline accepts today: partial checksums and TCP super-frames, so the
    /// container keeps its checksum and TSO offloads on.
    pub const PIPELINE: OffloadSupport = OffloadSupport {
        partial_csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
    };
}

/// Maps what the pipeline accepts to `TUNSETOFFLOAD` bits (include/uapi/linux/if_tun.h).
///
/// The kernel only honours the TSO bits together with `TUN_F_CSUM` (a super-frame's checksum
/// is always partial), and ECN only together with a TSO bit, so a request the kernel would
/// silently trim is trimmed here instead, and the returned value is what really applies.
pub fn tun_offload_flags(support: OffloadSupport) -> u32 {
    if !support.partial_csum {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if support.tso4 {
        flags |= libc::TUN_F_TSO4;
    }
    if support.tso6 {
        flags |= libc::TUN_F_TSO6;
    }
    if support.tso_ecn && (support.tso4 || support.tso6) {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// A TAP operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} on TAP {ifname}: {source}")]
pub struct TapError {
    /// The operation (`TUNSETIFF`, `open /dev/net/tun`, ...).
    pub what: &'static str,
    /// The device name.
    pub ifname: String,
    /// The kernel's error.
    pub source: io::Error,
}

/// One queue of a TAP device.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
}

/// Opens /dev/net/tun without attaching it to a device.
fn open_tun(ifname: &str) -> Result<OwnedFd, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        // std adds O_CLOEXEC itself.
        .custom_flags(libc::O_NONBLOCK)
        .open(TUN_PATH)
        .map(OwnedFd::from)
        .map_err(|source| TapError {
            what: "open /dev/net/tun",
            ifname: ifname.to_string(),
            source,
        })
}

/// The `IFF_*` features the tun driver supports (`TUNGETFEATURES`).
///
/// # Errors
/// When /dev/net/tun cannot be opened or the ioctl fails.
pub fn features() -> Result<u32, TapError> {
    let fd = open_tun("-")?;
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one `unsigned int` through the pointer, which points to a
    // live local of that type; `fd` is an open /dev/net/tun fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &mut features) };
    if rc < 0 {
        return Err(TapError {
            what: "TUNGETFEATURES",
            ifname: "-".to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(features)
}

impl TapQueue {
    /// Opens one queue of the TAP device `ifname` in the calling thread's namespace,
    /// creating the device if it does not exist there, and sets the virtio header size.
    ///
    /// # Errors
    /// [`TapError`] naming the failed step: `EINVAL` from `TUNSETIFF` when `ifname` exists
    /// but is not a TAP with the same flags, `EBUSY` when it already has all its queues.
    pub fn open(ifname: &str) -> Result<TapQueue, TapError> {
        let queue = TapQueue {
            fd: open_tun(ifname)?,
        };
        let mut request = IfreqFlags::new(ifname, TAP_FLAGS).ok_or_else(|| TapError {
            what: "TUNSETIFF",
            ifname: ifname.to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface names are 1 to 15 bytes without NUL",
            ),
        })?;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` through the pointer; `request`
        // is a live, 40-byte `#[repr(C)]` copy of its layout (see the size test).
        let rc = unsafe { libc::ioctl(queue.raw_fd(), libc::TUNSETIFF, &mut request) };
        queue.check(rc, "TUNSETIFF", ifname)?;
        // Cannot fail: the header is 10 bytes.
        let header_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(10);
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to a live
        // local of that type.
        let rc = unsafe { libc::ioctl(queue.raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        queue.check(rc, "TUNSETVNETHDRSZ", ifname)?;
        Ok(queue)
    }

    fn check(&self, rc: libc::c_int, what: &'static str, ifname: &str) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError {
                what,
                ifname: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the kernel which offloads it may leave to us (`TUNSETOFFLOAD`, bits from
    /// [`tun_offload_flags`]).
    ///
    /// # Errors
    /// `EINVAL` when the kernel does not know a bit.
    pub fn set_offload(&self, flags: u32, ifname: &str) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no pointer.
        let rc = unsafe {
            libc::ioctl(
                self.raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        self.check(rc, "TUNSETOFFLOAD", ifname)
    }

    /// Makes the device survive (or not) the closing of its last queue (`TUNSETPERSIST`).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn set_persist(&self, persist: bool, ifname: &str) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value (an unsigned long), no pointer.
        let rc = unsafe {
            libc::ioctl(
                self.raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persist),
            )
        };
        self.check(rc, "TUNSETPERSIST", ifname)
    }

    /// The queue's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Moves waiting frames into `batch` until it is full or the queue is empty; returns how
    /// many were added. Never blocks. One `read()` per frame: the tun driver has no batched
    /// read.
    ///
    /// # Errors
    /// The kernel's error (`EBADFD` once the device is gone), when no frame was read.
    pub fn recv_batch(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut received = 0;
        while let Some(slot) = batch.next_slot() {
            // SAFETY: `slot` is a live, writable buffer of `slot.len()` bytes; read() writes
            // at most that many bytes into it.
            let rc = unsafe { libc::read(self.raw_fd(), slot.as_mut_ptr().cast(), slot.len()) };
            cost::syscall(Syscall::Read);
            let Ok(len) = usize::try_from(rc) else {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => {
                        cost::empty_read();
                        break;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ if received > 0 => break,
                    _ => return Err(error),
                }
            };
            batch.commit(len);
            received += 1;
        }
        Ok(received)
    }

    /// Sends one frame (`virtio_net_hdr` + Ethernet) at once. Never blocks.
    ///
    /// # Errors
    /// The kernel's error; a full queue is `WouldBlock`.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `frame` is a live buffer of `frame.len()` bytes; write() only reads it.
            let rc = unsafe { libc::write(self.raw_fd(), frame.as_ptr().cast(), frame.len()) };
            cost::syscall(Syscall::Write);
            if rc >= 0 {
                // The tun driver takes a frame whole or not at all.
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(size_of::<IfreqFlags>(), 40);
        assert_eq!(size_of::<IfreqFlags>(), size_of::<libc::ifreq>());
        assert_eq!(std::mem::offset_of!(IfreqFlags, flags), IFNAMSIZ);
    }

    #[test]
    fn ifreq_name_rules() {
        let request = IfreqFlags::new("tap0", TAP_FLAGS).unwrap();
        assert_eq!(&request.name[..5], b"tap0\0");
        assert_eq!(i32::from(request.flags), TAP_FLAGS);
        assert!(IfreqFlags::new("", TAP_FLAGS).is_none());
        assert!(IfreqFlags::new("0123456789abcdef", TAP_FLAGS).is_none());
        assert!(IfreqFlags::new("0123456789abcde", TAP_FLAGS).is_some());
        assert!(IfreqFlags::new("a\0b", TAP_FLAGS).is_none());
    }

    #[test]
    fn tap_flags_are_the_uapi_values() {
        // include/uapi/linux/if_tun.h
        assert_eq!(TAP_FLAGS, 0x0002 | 0x1000 | 0x4000 | 0x0100);
        assert_eq!(libc::TUN_F_CSUM, 0x01);
        assert_eq!(libc::TUN_F_TSO4, 0x02);
        assert_eq!(libc::TUN_F_TSO6, 0x04);
        assert_eq!(libc::TUN_F_TSO_ECN, 0x08);
    }

    #[test]
    fn offload_flags_for_the_pipeline() {
        assert_eq!(tun_offload_flags(OffloadSupport::PIPELINE), 0x0f);
    }

    #[test]
    fn offload_flags_one_by_one() {
        let none = OffloadSupport::default();
        assert_eq!(tun_offload_flags(none), 0);
        let csum = OffloadSupport {
            partial_csum: true,
            ..none
        };
        assert_eq!(tun_offload_flags(csum), libc::TUN_F_CSUM);
        let tso4 = OffloadSupport { tso4: true, ..csum };
        assert_eq!(tun_offload_flags(tso4), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        let tso6 = OffloadSupport { tso6: true, ..csum };
        assert_eq!(tun_offload_flags(tso6), libc::TUN_F_CSUM | libc::TUN_F_TSO6);
        let ecn = OffloadSupport {
            tso_ecn: true,
            ..tso6
        };
        assert_eq!(
            tun_offload_flags(ecn),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
    }

    #[test]
    fn offload_flags_drop_what_the_kernel_would_ignore() {
        // TSO without partial checksums is meaningless: a super-frame's checksum is partial.
        let no_csum = OffloadSupport {
            partial_csum: false,
            ..OffloadSupport::PIPELINE
        };
        assert_eq!(tun_offload_flags(no_csum), 0);
        // ECN only qualifies TSO.
        let ecn_only = OffloadSupport {
            partial_csum: true,
            tso_ecn: true,
            ..OffloadSupport::default()
        };
        assert_eq!(tun_offload_flags(ecn_only), libc::TUN_F_CSUM);
    }

    #[test]
    #[ignore = "needs root: opens /dev/net/tun (often mode 0600)"]
    fn features_include_what_we_need() {
        let features = features().expect("/dev/net/tun must exist for the TAP port");
        let needed = u32::try_from(libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE).unwrap();
        assert_eq!(features & needed, needed, "features {features:#x}");
    }
}
