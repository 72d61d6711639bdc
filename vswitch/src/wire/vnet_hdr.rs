//! `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), the 10-byte header that TAP
//! (IFF_VNET_HDR, TUNSETVNETHDRSZ = 10) and AF_PACKET (PACKET_VNET_HDR) put before every frame.
//!
//! Every frame inside the switch is stored as this header followed by the Ethernet frame, so a
//! frame read from a TAP can be written to a veth (and back) without conversion.

/// Length of `struct virtio_net_hdr` without the `num_buffers` field.
pub const HEADER_LEN: usize = 10;
