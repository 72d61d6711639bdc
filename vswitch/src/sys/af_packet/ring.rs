//! The memory-mapped receive ring of an AF_PACKET socket (`PACKET_RX_RING`), in its two
//! layouts (include/uapi/linux/if_packet.h, Documentation/networking/packet_mmap.rst):
//!
//! - `TPACKET_V2`: fixed-size frames, each with its own `tp_status`. The kernel wakes the
//!   reader for every frame. A frame larger than a slot is truncated in the ring; with
//!   `PACKET_COPY_THRESH` set the kernel also queues the whole frame on the socket and marks
//!   the slot `TP_STATUS_COPY`, and we read it with `recvmsg()`.
//! - `TPACKET_V3`: variable-size frames packed into blocks; a block is handed to userspace
//!   (and the reader woken) only when it is full or its retire timer fires.
//!
//! With `PACKET_VNET_HDR` the kernel writes the `virtio_net_hdr` right before the Ethernet
//! header (`tp_mac - 10`) in both layouts, so one copy moves header and frame into a slot.
//!
//! Ownership protocol: a slot (V2) or block (V3) belongs to userspace while its status has
//! `TP_STATUS_USER`; we read the status with acquire ordering before touching the data and
//! hand it back by storing `TP_STATUS_KERNEL` with release ordering after the copy.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys::batch::RxBatch;
use crate::wire::VNET_HDR_LEN;

/// `enum tpacket_versions` (include/uapi/linux/if_packet.h).
pub(super) const TPACKET_V2: libc::c_int = 1;
/// See [`TPACKET_V2`].
pub(super) const TPACKET_V3: libc::c_int = 2;

/// `TPACKET_ALIGNMENT`: frame sizes and header offsets are multiples of it.
const ALIGNMENT: usize = libc::TPACKET_ALIGNMENT;

/// Which ring layout, and how it is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingLayout {
    /// Per-frame slots of `frame_size` bytes (a power of two), `frame_count` of them.
    V2 {
        /// Bytes per slot.
        frame_size: u32,
        /// Number of slots.
        frame_count: u32,
    },
    /// `block_count` blocks of `block_size` bytes, retired after `retire_ms` at the latest.
    V3 {
        /// Bytes per block (a multiple of the page size, large enough for a GSO frame).
        block_size: u32,
        /// Number of blocks.
        block_count: u32,
        /// Block retire timeout in milliseconds (0: the kernel's default, from link speed).
        retire_ms: u32,
    },
}

/// Bytes the kernel puts before the Ethernet header in a V2 slot: the aligned header and
/// `sockaddr_ll`, padded so the network header is aligned, then the virtio header
/// (`tpacket_rcv()`: `netoff = TPACKET_ALIGN(tp_hdrlen + max(maclen, 16)) + vnet`,
/// `macoff = netoff - maclen`), for a 14-byte Ethernet header.
pub(super) const fn v2_mac_offset() -> usize {
    let hdrlen = libc::TPACKET2_HDRLEN;
    let netoff = (hdrlen + 16).div_ceil(ALIGNMENT) * ALIGNMENT + VNET_HDR_LEN;
    netoff - 14
}

impl RingLayout {
    /// A V2 ring whose slots hold a frame of `mtu` bytes plus Ethernet, VLAN and virtio
    /// headers; larger (GSO) frames take the copy path. About 1 MiB, at least 256 slots.
    pub fn v2_for_mtu(mtu: u16) -> RingLayout {
        let needed = v2_mac_offset() + 14 + 4 + usize::from(mtu);
        let frame_size = needed.next_power_of_two().max(2048);
        let frame_count = ((1 << 20) / frame_size).max(256);
        RingLayout::V2 {
            frame_size: u32::try_from(frame_size).unwrap_or(u32::MAX),
            frame_count: u32::try_from(frame_count).unwrap_or(256),
        }
    }

    /// The `tpacket_req3` for `PACKET_RX_RING` (a V2 ring reads only the first four fields).
    pub(super) fn request(self) -> libc::tpacket_req3 {
        match self {
            RingLayout::V2 {
                frame_size,
                frame_count,
            } => {
                // Blocks of at least a page holding whole frames; frames are powers of two.
                let block_size = frame_size.max(page_size());
                libc::tpacket_req3 {
                    tp_block_size: block_size,
                    tp_block_nr: frame_count / (block_size / frame_size),
                    tp_frame_size: frame_size,
                    tp_frame_nr: frame_count,
                    tp_retire_blk_tov: 0,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                }
            }
            RingLayout::V3 {
                block_size,
                block_count,
                retire_ms,
            } => {
                // V3 ignores the frame geometry but checks that it tiles the blocks.
                let frame_size = 2048;
                libc::tpacket_req3 {
                    tp_block_size: block_size,
                    tp_block_nr: block_count,
                    tp_frame_size: frame_size,
                    tp_frame_nr: block_size / frame_size * block_count,
                    tp_retire_blk_tov: retire_ms,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                }
            }
        }
    }

    /// The `PACKET_VERSION` value.
    pub(super) fn version(self) -> libc::c_int {
        match self {
            RingLayout::V2 { .. } => TPACKET_V2,
            RingLayout::V3 { .. } => TPACKET_V3,
        }
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

/// A mapped receive ring and the reader's position in it.
#[derive(Debug)]
pub(super) struct Ring {
    base: NonNull<u8>,
    len: usize,
    layout: RingLayout,
    /// V2: the next slot. V3: the current block.
    head: usize,
    /// V3: packets of the current block already consumed, and the offset of the next one.
    block_done: u32,
    block_offset: usize,
    /// Frames dropped because they were cut to the slot size and no full copy was queued.
    pub(super) truncated: u64,
}

// SAFETY: the mapping is owned by this `Ring` alone (nothing else keeps its address), so
// moving the `Ring` to another thread moves exclusive access with it; the kernel's side is
// synchronised through the status words, not through thread identity.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping created in `Ring::map` and not unmapped
        // since; nothing borrows from it once the `Ring` is dropped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The status word at `ptr`, read with acquire ordering.
///
/// # Safety
/// `ptr` must point to a 4-byte-aligned status word inside a live ring mapping.
unsafe fn load_status(ptr: *const u8) -> u32 {
    // SAFETY: per the caller, `ptr` is an aligned u32 inside the mapping; the kernel writes it
    // concurrently, which is why it is accessed atomically.
    unsafe { (*ptr.cast::<AtomicU32>()).load(Ordering::Acquire) }
}

/// Hands the slot or block whose status word is at `ptr` back to the kernel.
///
/// # Safety
/// As for [`load_status`].
unsafe fn release(ptr: *const u8) {
    // SAFETY: as in `load_status`.
    unsafe { (*ptr.cast::<AtomicU32>()).store(libc::TP_STATUS_KERNEL, Ordering::Release) }
}

impl Ring {
    /// Maps the ring configured on `fd` with `layout.request()`.
    pub(super) fn map(fd: &OwnedFd, layout: RingLayout) -> io::Result<Ring> {
        let request = layout.request();
        let len =
            usize::try_from(u64::from(request.tp_block_size) * u64::from(request.tp_block_nr))
                .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel validates `len`
        // against the ring it set up. No existing memory is affected (address hint null).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Ring {
            base,
            len,
            layout,
            head: 0,
            block_done: 0,
            block_offset: 0,
            truncated: 0,
        })
    }

    /// Moves ready frames into `batch`; `copy` reads a frame the kernel queued whole on the
    /// socket (V2 `TP_STATUS_COPY`) into a slot and returns its length.
    pub(super) fn receive(
        &mut self,
        batch: &mut RxBatch,
        copy: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> usize {
        match self.layout {
            RingLayout::V2 {
                frame_size,
                frame_count,
            } => self.receive_v2(batch, copy, frame_size as usize, frame_count as usize),
            RingLayout::V3 {
                block_size,
                block_count,
                ..
            } => self.receive_v3(batch, block_size as usize, block_count as usize),
        }
    }

    fn receive_v2(
        &mut self,
        batch: &mut RxBatch,
        copy: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
        frame_size: usize,
        frame_count: usize,
    ) -> usize {
        let mut received = 0;
        loop {
            // Frames are powers of two no larger than a block, so slot i starts at
            // i * frame_size: blocks are laid out back to back in the mapping.
            let offset = self.head * frame_size;
            // SAFETY: head < frame_count, so the slot lies inside the mapping.
            let frame = unsafe { self.base.as_ptr().add(offset) };
            // SAFETY: `tp_status` is the first, 4-byte-aligned field of `tpacket2_hdr`, at
            // the start of the slot (slots are 16-byte aligned).
            let status = unsafe { load_status(frame) };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let Some(slot) = batch.next_slot() else {
                break;
            };
            // SAFETY: the slot is ours (TP_STATUS_USER, acquired above) and starts with a
            // `tpacket2_hdr`; unaligned read not needed (slot start is 16-aligned) but cheap.
            let header = unsafe { frame.cast::<libc::tpacket2_hdr>().read() };
            let length = if status & libc::TP_STATUS_COPY != 0 {
                // The ring holds a truncated copy; the whole frame waits on the socket.
                copy(slot).ok()
            } else if header.tp_snaplen < header.tp_len {
                None
            } else {
                let start = usize::from(header.tp_mac).checked_sub(VNET_HDR_LEN);
                let snap = header.tp_snaplen as usize;
                match start {
                    Some(start)
                        if start + VNET_HDR_LEN + snap <= frame_size
                            && VNET_HDR_LEN + snap <= slot.len() =>
                    {
                        let total = VNET_HDR_LEN + snap;
                        // SAFETY: `start..start + total` lies inside this slot (checked
                        // above) and the kernel does not write it while we own the slot.
                        let bytes = unsafe { std::slice::from_raw_parts(frame.add(start), total) };
                        slot[..total].copy_from_slice(bytes);
                        Some(total)
                    }
                    _ => None,
                }
            };
            match length {
                Some(length) => {
                    batch.commit(length);
                    received += 1;
                }
                None => self.truncated += 1,
            }
            // SAFETY: as for `load_status` above; we are done with the slot.
            unsafe { release(frame) };
            self.head = (self.head + 1) % frame_count;
        }
        received
    }

    fn receive_v3(&mut self, batch: &mut RxBatch, block_size: usize, block_count: usize) -> usize {
        let mut received = 0;
        'blocks: loop {
            // SAFETY: head < block_count, so the block lies inside the mapping.
            let block = unsafe { self.base.as_ptr().add(self.head * block_size) };
            // SAFETY: the block starts with `tpacket_block_desc`; `block_status` is its
            // 4-byte-aligned field at offset 8 (version, offset_to_priv, then hdr.bh1).
            let status = unsafe { load_status(block.add(8)) };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the block is ours (TP_STATUS_USER, acquired above).
            let descriptor = unsafe { block.cast::<libc::tpacket_block_desc>().read() };
            // SAFETY: `bh1` is the only member of the union.
            let bh1 = unsafe { descriptor.hdr.bh1 };
            if self.block_done == 0 {
                self.block_offset = bh1.offset_to_first_pkt as usize;
            }
            while self.block_done < bh1.num_pkts {
                let Some(slot) = batch.next_slot() else {
                    break 'blocks;
                };
                let at = self.block_offset;
                if at + size_of::<libc::tpacket3_hdr>() > block_size {
                    // A corrupt chain: give the block back rather than read outside it.
                    self.truncated += 1;
                    break;
                }
                // SAFETY: `at` plus the header lies inside the block (checked above);
                // packets are 16-byte aligned (TPACKET_ALIGN).
                let header = unsafe { block.add(at).cast::<libc::tpacket3_hdr>().read() };
                let snap = header.tp_snaplen as usize;
                let start = (at + usize::from(header.tp_mac)).checked_sub(VNET_HDR_LEN);
                match start {
                    Some(start)
                        if header.tp_snaplen == header.tp_len
                            && start + VNET_HDR_LEN + snap <= block_size
                            && VNET_HDR_LEN + snap <= slot.len() =>
                    {
                        let total = VNET_HDR_LEN + snap;
                        // SAFETY: inside the block (checked above), owned by us.
                        let bytes = unsafe { std::slice::from_raw_parts(block.add(start), total) };
                        slot[..total].copy_from_slice(bytes);
                        batch.commit(total);
                        received += 1;
                    }
                    _ => self.truncated += 1,
                }
                self.block_done += 1;
                self.block_offset = at + header.tp_next_offset as usize;
            }
            // SAFETY: as for `load_status` above; every packet of the block was consumed.
            unsafe { release(block.add(8)) };
            self.block_done = 0;
            self.head = (self.head + 1) % block_count;
        }
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes() {
        // include/uapi/linux/if_packet.h; tpacket_rcv() BUILD_BUG_ONs the aligned sizes.
        assert_eq!(size_of::<libc::tpacket2_hdr>(), 32);
        assert_eq!(size_of::<libc::tpacket3_hdr>(), 48);
        assert_eq!(size_of::<libc::tpacket_req3>(), 28);
        assert_eq!(size_of::<libc::sockaddr_ll>(), 20);
        assert_eq!(libc::TPACKET2_HDRLEN, 52);
        assert_eq!(std::mem::offset_of!(libc::tpacket_block_desc, hdr), 8);
        assert_eq!(
            TPACKET_V2,
            libc::tpacket_versions::TPACKET_V2 as libc::c_int
        );
        assert_eq!(
            TPACKET_V3,
            libc::tpacket_versions::TPACKET_V3 as libc::c_int
        );
    }

    #[test]
    fn v2_mac_offset_matches_tpacket_rcv() {
        // TPACKET_ALIGN(52 + 16) = 80, + 10 (vnet) = 90 = netoff; macoff = 90 - 14.
        assert_eq!(v2_mac_offset(), 76);
    }

    #[test]
    fn v2_layout_for_mtus() {
        let RingLayout::V2 {
            frame_size,
            frame_count,
        } = RingLayout::v2_for_mtu(1500)
        else {
            panic!("v2");
        };
        assert_eq!(frame_size, 2048);
        assert_eq!(frame_count, 512);
        let RingLayout::V2 { frame_size, .. } = RingLayout::v2_for_mtu(9000) else {
            panic!("v2");
        };
        assert_eq!(frame_size, 16384);
        let request = RingLayout::v2_for_mtu(9000).request();
        assert_eq!(
            request.tp_block_nr * (request.tp_block_size / request.tp_frame_size),
            request.tp_frame_nr
        );
    }

    #[test]
    fn v3_request_tiles_blocks() {
        let request = RingLayout::V3 {
            block_size: 1 << 17,
            block_count: 8,
            retire_ms: 1,
        }
        .request();
        assert_eq!(request.tp_frame_nr, 8 * 64);
        assert_eq!(request.tp_retire_blk_tov, 1);
    }
}
