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
use std::ops::Range;
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
        let needed = v2_mac_offset() + ETH_HLEN + 4 + usize::from(mtu);
        let frame_size = needed.next_power_of_two().max(2048);
        let frame_count = ((1 << 20) / frame_size).max(256);
        RingLayout::V2 {
            frame_size: u32::try_from(frame_size).unwrap_or(u32::MAX),
            frame_count: u32::try_from(frame_count).unwrap_or(256),
        }
    }

    /// The checked geometry of this layout on a system with pages of `page_size` bytes: the
    /// `tpacket_req3` derived from it, checked as the kernel checks it and as the reader
    /// relies on it (see [`Geometry::check`]).
    ///
    /// # Errors
    /// [`GeometryError`] naming the value that does not fit.
    pub fn geometry(self, page_size: usize) -> Result<Geometry, GeometryError> {
        let page = u32::try_from(page_size).unwrap_or(u32::MAX);
        let request = match self {
            RingLayout::V2 {
                frame_size,
                frame_count,
            } => {
                // Blocks of at least a page holding whole frames. A frame size of zero or
                // one that does not divide the block is left for `check` to name.
                let block_size = frame_size.max(page);
                let frames_per_block = block_size.checked_div(frame_size).unwrap_or(0);
                libc::tpacket_req3 {
                    tp_block_size: block_size,
                    tp_block_nr: frame_count.checked_div(frames_per_block).unwrap_or(0),
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
                // V3 packs frames of any size into the blocks, but the kernel still checks
                // that this nominal frame geometry tiles them.
                let frame_size = V3_NOMINAL_FRAME;
                libc::tpacket_req3 {
                    tp_block_size: block_size,
                    tp_block_nr: block_count,
                    tp_frame_size: frame_size,
                    tp_frame_nr: (block_size / frame_size).saturating_mul(block_count),
                    tp_retire_blk_tov: retire_ms,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                }
            }
        };
        Geometry::check(self.version(), &request, page_size)
    }

    /// The `PACKET_VERSION` value.
    pub(super) fn version(self) -> libc::c_int {
        match self {
            RingLayout::V2 { .. } => TPACKET_V2,
            RingLayout::V3 { .. } => TPACKET_V3,
        }
    }
}

/// The frame size a V3 request names: V3 ignores it, but the kernel checks that it tiles
/// the blocks.
const V3_NOMINAL_FRAME: u32 = 2048;

/// The length of an Ethernet header: the least a V2 slot must hold after its `tp_mac`.
const ETH_HLEN: usize = 14;

/// `BLK_HDR_LEN` (net/packet/af_packet.c): the block descriptor a V3 block starts with,
/// rounded up to 8 bytes; the kernel refuses a block that cannot hold it.
const V3_BLOCK_HEADER_LEN: usize = size_of::<libc::tpacket_block_desc>().next_multiple_of(8);

/// Offset of `tp_status` in a V2 slot (the slot starts with its `tpacket2_hdr`).
const V2_STATUS: usize = std::mem::offset_of!(libc::tpacket2_hdr, tp_status);

/// Offset of the block header (`tpacket_hdr_v1`, the only member of the descriptor's union)
/// in a V3 block.
const V3_HEADER: usize = std::mem::offset_of!(libc::tpacket_block_desc, hdr);

/// Offset of `block_status` in a V3 block.
const V3_STATUS: usize = V3_HEADER + std::mem::offset_of!(libc::tpacket_hdr_v1, block_status);

/// A ring geometry the kernel or the reader would not accept, with the value at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The system's page size is not a power of two (it always is on Linux).
    #[error("page size {page_size} is not a power of two")]
    PageSize {
        /// What `sysconf(_SC_PAGESIZE)` answered.
        page_size: usize,
    },
    /// `tp_block_size` is zero, not a multiple of the page size, or above `INT_MAX`
    /// (`packet_set_ring()` refuses all three).
    #[error(
        "ring block size {block_size} is not a positive multiple of the page size \
         ({page_size}) up to INT_MAX"
    )]
    BlockSize {
        /// `tp_block_size`.
        block_size: u32,
        /// The system's page size.
        page_size: usize,
    },
    /// `tp_frame_size` is not a multiple of `TPACKET_ALIGNMENT`.
    #[error("ring frame size {frame_size} is not a multiple of TPACKET_ALIGNMENT ({ALIGNMENT})")]
    FrameAlignment {
        /// `tp_frame_size`.
        frame_size: u32,
    },
    /// A frame cannot hold its TPACKET header (and, for V2, the address and virtio header
    /// before an Ethernet header).
    #[error("ring frame size {frame_size} is below the {needed} bytes of a frame's headers")]
    FrameTooSmall {
        /// `tp_frame_size`.
        frame_size: u32,
        /// The least frame size that holds the headers.
        needed: usize,
    },
    /// A V3 block cannot hold its block descriptor.
    #[error("ring block size {block_size} is below the {needed} bytes of a block's header")]
    BlockTooSmall {
        /// `tp_block_size`.
        block_size: u32,
        /// The least block size that holds the descriptor.
        needed: usize,
    },
    /// Frames do not tile a block exactly: the reader addresses slot `i` at
    /// `i * tp_frame_size`, which holds only without a gap at the end of each block.
    #[error("ring frame size {frame_size} does not divide the block size {block_size}")]
    FramesDoNotTile {
        /// `tp_frame_size`.
        frame_size: u32,
        /// `tp_block_size`.
        block_size: u32,
    },
    /// `tp_block_nr` is zero (a request without blocks tears the ring down).
    #[error("ring block count is zero")]
    NoBlocks,
    /// `tp_frame_nr` is not `tp_block_nr` times the frames per block.
    #[error(
        "ring frame count {frame_count} is not the block count {block_count} times \
         {frames_per_block} frames per block"
    )]
    FrameCount {
        /// `tp_frame_nr`.
        frame_count: u32,
        /// `tp_block_nr`.
        block_count: u32,
        /// `tp_block_size / tp_frame_size`.
        frames_per_block: u32,
    },
    /// The frame count or the mapping length overflows.
    #[error("ring of {block_count} blocks of {block_size} bytes is too large to map")]
    TooLarge {
        /// `tp_block_nr`.
        block_count: u32,
        /// `tp_block_size`.
        block_size: u32,
    },
}

/// A ring geometry checked by [`Geometry::check`]: the request to hand the kernel and the
/// sizes the reader indexes the mapping with. Every frame `i < frame_count` lies at
/// `i * frame_size` and every block `i < block_count` at `i * block_size`, wholly inside
/// the first [`mapping_len`](Geometry::mapping_len) bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    block_size: u32,
    block_count: u32,
    frame_size: u32,
    frame_count: u32,
    retire_ms: u32,
    /// `block_size * block_count`, the mapping's length.
    len: usize,
}

impl Geometry {
    /// Checks `request` for a ring of `version` (`TPACKET_V2` or `TPACKET_V3`) on a system
    /// with pages of `page_size` bytes, with the rules of `packet_set_ring()`
    /// (net/packet/af_packet.c) and those the reader adds:
    /// - the block size is a positive multiple of the page size, at most `INT_MAX`, and
    ///   (V3) holds the block descriptor;
    /// - the frame size is a multiple of `TPACKET_ALIGNMENT`, holds the frame's headers
    ///   (V2: the header, the address and the virtio header before an Ethernet header; V3:
    ///   `TPACKET3_HDRLEN`), is at most the block size and (the reader's rule) divides it;
    /// - there is at least one block, and the frame count is the block count times the
    ///   frames per block, without overflow;
    /// - the mapping's length, the block size times the block count, fits the address space.
    ///
    /// # Errors
    /// [`GeometryError`] for the first rule broken, naming the value at fault.
    pub fn check(
        version: libc::c_int,
        request: &libc::tpacket_req3,
        page_size: usize,
    ) -> Result<Geometry, GeometryError> {
        if !page_size.is_power_of_two() {
            return Err(GeometryError::PageSize { page_size });
        }
        let block_size = request.tp_block_size;
        let block_bytes = block_size as usize;
        if block_size == 0 || block_size > i32::MAX.unsigned_abs() || block_bytes % page_size != 0 {
            return Err(GeometryError::BlockSize {
                block_size,
                page_size,
            });
        }
        if version == TPACKET_V3 && block_bytes < V3_BLOCK_HEADER_LEN {
            return Err(GeometryError::BlockTooSmall {
                block_size,
                needed: V3_BLOCK_HEADER_LEN,
            });
        }
        let frame_size = request.tp_frame_size;
        if frame_size as usize % ALIGNMENT != 0 {
            return Err(GeometryError::FrameAlignment { frame_size });
        }
        let needed = if version == TPACKET_V3 {
            libc::TPACKET3_HDRLEN
        } else {
            v2_mac_offset() + ETH_HLEN
        };
        if (frame_size as usize) < needed {
            return Err(GeometryError::FrameTooSmall { frame_size, needed });
        }
        // frame_size >= needed > 0, so the division is defined.
        let frames_per_block = block_size / frame_size;
        if frames_per_block == 0 || block_size % frame_size != 0 {
            return Err(GeometryError::FramesDoNotTile {
                frame_size,
                block_size,
            });
        }
        let block_count = request.tp_block_nr;
        if block_count == 0 {
            return Err(GeometryError::NoBlocks);
        }
        let too_large = GeometryError::TooLarge {
            block_count,
            block_size,
        };
        let frame_count = frames_per_block.checked_mul(block_count).ok_or(too_large)?;
        if frame_count != request.tp_frame_nr {
            return Err(GeometryError::FrameCount {
                frame_count: request.tp_frame_nr,
                block_count,
                frames_per_block,
            });
        }
        let len = block_bytes
            .checked_mul(block_count as usize)
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or(too_large)?;
        Ok(Geometry {
            block_size,
            block_count,
            frame_size,
            frame_count,
            retire_ms: request.tp_retire_blk_tov,
            len,
        })
    }

    /// The `tpacket_req3` for `PACKET_RX_RING` (a V2 ring reads only the first four fields).
    pub(super) fn request(&self) -> libc::tpacket_req3 {
        libc::tpacket_req3 {
            tp_block_size: self.block_size,
            tp_block_nr: self.block_count,
            tp_frame_size: self.frame_size,
            tp_frame_nr: self.frame_count,
            tp_retire_blk_tov: self.retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        }
    }

    /// The mapping's length in bytes.
    pub fn mapping_len(&self) -> usize {
        self.len
    }

    /// Bytes per frame (V2 slot).
    pub fn frame_size(&self) -> usize {
        self.frame_size as usize
    }

    /// Frames (V2 slots) in the ring.
    pub fn frame_count(&self) -> usize {
        self.frame_count as usize
    }

    /// Bytes per block.
    pub fn block_size(&self) -> usize {
        self.block_size as usize
    }

    /// Blocks in the ring.
    pub fn block_count(&self) -> usize {
        self.block_count as usize
    }

    /// Where frame `index` starts in the mapping: `Some` for `index < frame_count`, and
    /// then the frame's `frame_size` bytes lie inside the mapping (frames tile the blocks,
    /// which are back to back).
    fn frame_offset(&self, index: usize) -> Option<usize> {
        (index < self.frame_count()).then(|| index * self.frame_size())
    }

    /// Where block `index` starts in the mapping: `Some` for `index < block_count`, and
    /// then the block's `block_size` bytes lie inside the mapping.
    fn block_offset(&self, index: usize) -> Option<usize> {
        (index < self.block_count()).then(|| index * self.block_size())
    }
}

/// The VLAN tag a `tpacket2_hdr` reports (`TPID << 16 | TCI`), 0 when the frame had none.
/// A kernel that reports no TPID used 802.1Q's.
fn vlan_tag(status: u32, header: &libc::tpacket2_hdr) -> u32 {
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return 0;
    }
    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
        header.tp_vlan_tpid
    } else {
        0x8100
    };
    (u32::from(tpid) << 16) | u32::from(header.tp_vlan_tci)
}

/// `start..start + len` when it ends at or before `limit`.
fn span(start: usize, len: usize, limit: usize) -> Option<Range<usize>> {
    let end = start.checked_add(len)?;
    (end <= limit).then_some(start..end)
}

/// The system's page size (`sysconf(_SC_PAGESIZE)`; 4096 should it fail).
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The shared mapping of a ring: `len` bytes from `base`, page-aligned, unmapped when
/// dropped. Every access checks its bounds against `len`.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this `Mapping` alone (nothing else keeps its address), so
// moving it to another thread moves exclusive access with it; the kernel's side is
// synchronised through the status words (atomics), not through thread identity. `Mapping`
// is not `Sync`: two threads cannot read the ring at once.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping created in `Mapping::new` and not
        // unmapped since; every borrow of it borrows `self`, so none is left.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl Mapping {
    /// Maps the receive ring configured on `fd` with `geometry.request()`.
    fn new(fd: &OwnedFd, geometry: &Geometry) -> io::Result<Mapping> {
        let len = geometry.mapping_len();
        // SAFETY: a fresh shared mapping of the socket's ring; no existing memory is
        // affected (address hint null). `len` is the ring's size as set up with this
        // checked geometry (the kernel refuses any other length).
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
        Ok(Mapping { base, len })
    }

    /// The status word at `offset`; `None` unless it is a 4-byte-aligned word inside the
    /// mapping.
    fn status(&self, offset: usize) -> Option<&AtomicU32> {
        let range = span(offset, size_of::<AtomicU32>(), self.len)?;
        if range.start % align_of::<AtomicU32>() != 0 {
            return None;
        }
        // SAFETY: the word lies inside the mapping (checked above), which lives as long as
        // the borrow of `self`; it is aligned (the mapping starts on a page, `offset` is a
        // multiple of 4) and initialised (mapped socket memory). The kernel writes it
        // concurrently, which is why it is accessed only as an atomic.
        Some(unsafe { &*self.base.as_ptr().add(range.start).cast::<AtomicU32>() })
    }

    /// A copy of the `T` at `offset`; `None` unless its bytes lie inside the mapping.
    ///
    /// # Safety
    /// Userspace owns the bytes (the slot or block status has `TP_STATUS_USER`, read with
    /// acquire ordering), so the kernel does not write them during the read; any bit
    /// pattern is a valid `T` (a kernel header of integers).
    unsafe fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let range = span(offset, size_of::<T>(), self.len)?;
        // SAFETY: the bytes lie inside the live mapping (checked above) and, per the
        // caller, are not written meanwhile and form a valid `T`; read unaligned, since
        // nothing but the kernel's layout aligns `offset`.
        Some(unsafe {
            self.base
                .as_ptr()
                .add(range.start)
                .cast::<T>()
                .read_unaligned()
        })
    }

    /// The bytes of `range`; `None` unless they lie inside the mapping.
    ///
    /// # Safety
    /// Userspace owns the bytes (as for [`Mapping::read`]) for as long as the slice lives.
    unsafe fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        let range = span(range.start, range.len(), self.len)?;
        // SAFETY: the bytes lie inside the live mapping (checked above), borrowed with
        // `self`, and per the caller the kernel does not write them while the slice lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(range.start), range.len())
        })
    }
}

/// A mapped receive ring and the reader's position in it.
#[derive(Debug)]
pub(super) struct Ring {
    mapping: Mapping,
    layout: RingLayout,
    geometry: Geometry,
    /// V2: the next slot. V3: the current block. Always below the frame (block) count.
    head: usize,
    /// V3: packets of the current block already consumed, and the offset of the next one.
    block_done: u32,
    block_offset: usize,
    /// Frames dropped because they were cut to the slot size and no full copy was queued.
    pub(super) truncated: u64,
}

impl Ring {
    /// Maps the ring configured on `fd` with `geometry.request()`, which was checked for
    /// `layout` ([`RingLayout::geometry`]).
    pub(super) fn map(fd: &OwnedFd, layout: RingLayout, geometry: Geometry) -> io::Result<Ring> {
        Ok(Ring {
            mapping: Mapping::new(fd, &geometry)?,
            layout,
            geometry,
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
            RingLayout::V2 { .. } => self.receive_v2(batch, copy),
            RingLayout::V3 { .. } => self.receive_v3(batch),
        }
    }

    fn receive_v2(
        &mut self,
        batch: &mut RxBatch,
        copy: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> usize {
        let frame_size = self.geometry.frame_size();
        let frame_count = self.geometry.frame_count();
        let mut received = 0;
        // `head < frame_count` always, so the offset is always there.
        while let Some(frame) = self.geometry.frame_offset(self.head) {
            let Some(status_word) = self.mapping.status(frame + V2_STATUS) else {
                break;
            };
            let status = status_word.load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let Some(slot) = batch.next_slot() else {
                break;
            };
            // SAFETY: the slot is ours (TP_STATUS_USER, acquired above) and starts with a
            // `tpacket2_hdr`, a struct of integers.
            let header = unsafe { self.mapping.read::<libc::tpacket2_hdr>(frame) };
            // The kernel took the 802.1Q tag off before the taps ran; it is only here (for a
            // copied frame too: the ring's header describes it).
            let tag = header.as_ref().map_or(0, |header| vlan_tag(status, header));
            let length = match header {
                _ if status & libc::TP_STATUS_COPY != 0 => {
                    // The ring holds a truncated copy; the whole frame waits on the socket.
                    copy(slot).ok()
                }
                Some(header) if header.tp_snaplen >= header.tp_len => {
                    let total = VNET_HDR_LEN + header.tp_snaplen as usize;
                    // The virtio header and the frame, inside this slot.
                    let range = usize::from(header.tp_mac)
                        .checked_sub(VNET_HDR_LEN)
                        .and_then(|start| span(start, total, frame_size))
                        .map(|range| frame + range.start..frame + range.end);
                    // SAFETY: the slot is ours (above), and `range` lies inside it.
                    let bytes = range.and_then(|range| unsafe { self.mapping.bytes(range) });
                    match (bytes, slot.get_mut(..total)) {
                        (Some(bytes), Some(slot)) => {
                            slot.copy_from_slice(bytes);
                            Some(total)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match length {
                Some(length) => {
                    batch.commit_tagged(length, tag);
                    received += 1;
                }
                None => self.truncated += 1,
            }
            // We are done with the slot: hand it back.
            status_word.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.head = (self.head + 1) % frame_count;
        }
        received
    }

    fn receive_v3(&mut self, batch: &mut RxBatch) -> usize {
        let block_size = self.geometry.block_size();
        let block_count = self.geometry.block_count();
        let mut received = 0;
        // `head < block_count` always, so the offset is always there.
        'blocks: while let Some(block) = self.geometry.block_offset(self.head) {
            let Some(status_word) = self.mapping.status(block + V3_STATUS) else {
                break;
            };
            let status = status_word.load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the block is ours (TP_STATUS_USER, acquired above) and starts with a
            // `tpacket_block_desc` (its block size was checked to hold one), whose header
            // is a struct of integers.
            let Some(bh1) =
                (unsafe { self.mapping.read::<libc::tpacket_hdr_v1>(block + V3_HEADER) })
            else {
                break;
            };
            if self.block_done == 0 {
                self.block_offset = bh1.offset_to_first_pkt as usize;
            }
            while self.block_done < bh1.num_pkts {
                let Some(slot) = batch.next_slot() else {
                    break 'blocks;
                };
                let at = self.block_offset;
                if span(at, size_of::<libc::tpacket3_hdr>(), block_size).is_none() {
                    // A corrupt chain: give the block back rather than read outside it.
                    self.truncated += 1;
                    break;
                }
                // SAFETY: the block is ours (above); the header lies inside it (checked
                // above) and is a struct of integers.
                let Some(header) = (unsafe { self.mapping.read::<libc::tpacket3_hdr>(block + at) })
                else {
                    self.truncated += 1;
                    break;
                };
                let total = VNET_HDR_LEN + header.tp_snaplen as usize;
                let range = (header.tp_snaplen == header.tp_len)
                    .then(|| at.checked_add(usize::from(header.tp_mac)))
                    .flatten()
                    .and_then(|mac| mac.checked_sub(VNET_HDR_LEN))
                    .and_then(|start| span(start, total, block_size))
                    .map(|range| block + range.start..block + range.end);
                // SAFETY: the block is ours (above), and `range` lies inside it.
                let bytes = range.and_then(|range| unsafe { self.mapping.bytes(range) });
                match (bytes, slot.get_mut(..total)) {
                    (Some(bytes), Some(slot)) => {
                        slot.copy_from_slice(bytes);
                        batch.commit(total);
                        received += 1;
                    }
                    _ => self.truncated += 1,
                }
                self.block_done += 1;
                self.block_offset = at.saturating_add(header.tp_next_offset as usize);
            }
            // Every packet of the block was consumed: hand it back.
            status_word.store(libc::TP_STATUS_KERNEL, Ordering::Release);
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

    const PAGE: usize = 4096;

    /// A request with these sizes (no retire timeout, no private area).
    fn request(
        block_size: u32,
        block_nr: u32,
        frame_size: u32,
        frame_nr: u32,
    ) -> libc::tpacket_req3 {
        libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: block_nr,
            tp_frame_size: frame_size,
            tp_frame_nr: frame_nr,
            tp_retire_blk_tov: 0,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        }
    }

    fn check_v2(
        block_size: u32,
        block_nr: u32,
        frame_size: u32,
        frame_nr: u32,
    ) -> Result<Geometry, GeometryError> {
        Geometry::check(
            TPACKET_V2,
            &request(block_size, block_nr, frame_size, frame_nr),
            PAGE,
        )
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
        let geometry = RingLayout::v2_for_mtu(1500).geometry(PAGE).unwrap();
        assert_eq!(geometry.frame_size(), 2048);
        assert_eq!(geometry.frame_count(), 512);
        assert_eq!(geometry.block_size(), 4096);
        assert_eq!(geometry.block_count(), 256);
        assert_eq!(geometry.mapping_len(), 1 << 20);
        let RingLayout::V2 { frame_size, .. } = RingLayout::v2_for_mtu(9000) else {
            panic!("v2");
        };
        assert_eq!(frame_size, 16384);
        let geometry = RingLayout::v2_for_mtu(9000).geometry(PAGE).unwrap();
        let request = geometry.request();
        assert_eq!(
            request.tp_block_nr * (request.tp_block_size / request.tp_frame_size),
            request.tp_frame_nr
        );
        assert_eq!(geometry.mapping_len(), 256 * 16384);
        // Every MTU gives a geometry the kernel and the reader accept, on 4 KiB and 64 KiB
        // pages.
        for mtu in [68, 576, 1280, 1500, 4000, 9000, 9216, 16000, u16::MAX] {
            for page in [PAGE, 1 << 16] {
                let layout = RingLayout::v2_for_mtu(mtu);
                assert!(
                    layout.geometry(page).is_ok(),
                    "MTU {mtu}, page {page}: {layout:?}"
                );
            }
        }
    }

    #[test]
    fn v3_request_tiles_blocks() {
        let geometry = RingLayout::V3 {
            block_size: 1 << 17,
            block_count: 8,
            retire_ms: 1,
        }
        .geometry(PAGE)
        .unwrap();
        let request = geometry.request();
        assert_eq!(request.tp_frame_nr, 8 * 64);
        assert_eq!(request.tp_retire_blk_tov, 1);
        assert_eq!(geometry.mapping_len(), 8 << 17);
    }

    #[test]
    fn frames_and_blocks_lie_inside_the_mapping() {
        let geometry = check_v2(8192, 3, 2048, 12).unwrap();
        assert_eq!(geometry.mapping_len(), 3 * 8192);
        for index in 0..geometry.frame_count() {
            let offset = geometry.frame_offset(index).unwrap();
            assert!(offset + geometry.frame_size() <= geometry.mapping_len());
        }
        assert_eq!(geometry.frame_offset(11), Some(11 * 2048));
        assert_eq!(geometry.frame_offset(12), None);
        assert_eq!(geometry.block_offset(2), Some(2 * 8192));
        assert_eq!(geometry.block_offset(3), None);
    }

    #[test]
    fn bad_page_and_block_sizes_are_named() {
        assert_eq!(
            Geometry::check(TPACKET_V2, &request(4096, 1, 2048, 2), 3000),
            Err(GeometryError::PageSize { page_size: 3000 })
        );
        for block_size in [0, 2048, 4096 + 16, 0x8000_1000] {
            assert_eq!(
                check_v2(block_size, 1, 2048, 2),
                Err(GeometryError::BlockSize {
                    block_size,
                    page_size: PAGE
                }),
                "block size {block_size}"
            );
        }
        // A V3 block must hold its descriptor: only reachable with tiny pages.
        assert_eq!(
            Geometry::check(TPACKET_V3, &request(32, 1, 16, 2), 16),
            Err(GeometryError::BlockTooSmall {
                block_size: 32,
                needed: 48
            })
        );
    }

    #[test]
    fn bad_frame_sizes_are_named() {
        assert_eq!(
            check_v2(4096, 1, 2040, 2),
            Err(GeometryError::FrameAlignment { frame_size: 2040 })
        );
        // V2: header, address and virtio header (76 bytes up to tp_mac) and an Ethernet
        // header.
        assert_eq!(
            check_v2(4096, 64, 64, 4096),
            Err(GeometryError::FrameTooSmall {
                frame_size: 64,
                needed: 90
            })
        );
        assert_eq!(
            check_v2(4096, 1, 0, 0),
            Err(GeometryError::FrameTooSmall {
                frame_size: 0,
                needed: 90
            })
        );
        assert_eq!(
            Geometry::check(TPACKET_V3, &request(4096, 1, 64, 64), PAGE),
            Err(GeometryError::FrameTooSmall {
                frame_size: 64,
                needed: libc::TPACKET3_HDRLEN
            })
        );
        assert_eq!(
            check_v2(4096, 1, 8192, 1),
            Err(GeometryError::FramesDoNotTile {
                frame_size: 8192,
                block_size: 4096
            })
        );
        // 4096 / 1536 leaves a 1024-byte gap at the end of each block.
        assert_eq!(
            check_v2(4096, 2, 1536, 4),
            Err(GeometryError::FramesDoNotTile {
                frame_size: 1536,
                block_size: 4096
            })
        );
    }

    #[test]
    fn bad_counts_are_named() {
        assert_eq!(check_v2(4096, 0, 2048, 0), Err(GeometryError::NoBlocks));
        assert_eq!(
            check_v2(4096, 4, 2048, 7),
            Err(GeometryError::FrameCount {
                frame_count: 7,
                block_count: 4,
                frames_per_block: 2
            })
        );
        assert_eq!(
            check_v2(1 << 30, 512, 128, 0),
            Err(GeometryError::TooLarge {
                block_count: 512,
                block_size: 1 << 30
            }),
            "2^23 frames per block times 512 blocks overflows a u32"
        );
    }

    #[test]
    fn bad_layouts_are_refused_not_divided_by() {
        // A zero frame size would divide by zero when the request is derived.
        assert_eq!(
            RingLayout::V2 {
                frame_size: 0,
                frame_count: 256
            }
            .geometry(PAGE),
            Err(GeometryError::FrameTooSmall {
                frame_size: 0,
                needed: 90
            })
        );
        assert_eq!(
            RingLayout::V2 {
                frame_size: 2048,
                frame_count: 0
            }
            .geometry(PAGE),
            Err(GeometryError::NoBlocks)
        );
        assert_eq!(
            RingLayout::V2 {
                frame_size: 3072,
                frame_count: 256
            }
            .geometry(PAGE),
            Err(GeometryError::FramesDoNotTile {
                frame_size: 3072,
                block_size: 4096
            })
        );
        assert_eq!(
            RingLayout::V3 {
                block_size: 1000,
                block_count: 4,
                retire_ms: 0
            }
            .geometry(PAGE),
            Err(GeometryError::BlockSize {
                block_size: 1000,
                page_size: PAGE
            })
        );
        let message = GeometryError::FrameAlignment { frame_size: 2040 }.to_string();
        assert_eq!(
            message,
            "ring frame size 2040 is not a multiple of TPACKET_ALIGNMENT (16)"
        );
    }

    #[test]
    fn spans_stop_at_the_limit() {
        assert_eq!(span(10, 6, 16), Some(10..16));
        assert_eq!(span(10, 7, 16), None);
        assert_eq!(span(usize::MAX, 1, usize::MAX), None);
    }
}
