//! Classic BPF socket filters (`SO_ATTACH_FILTER`) for AF_PACKET sockets: the instruction
//! encoding of include/uapi/linux/filter.h and include/uapi/linux/bpf_common.h, and the
//! programs the ports attach.
//!
//! On a `SOCK_RAW` packet socket the kernel runs the filter on the frame from its Ethernet
//! header (`packet_rcv()`/`tpacket_rcv()` push the MAC header back before `run_filter()`), once
//! per frame and socket, before anything is copied to the ring. The value the program returns
//! is the number of bytes to keep: 0 drops the frame, `u32::MAX` keeps it whole. A load past
//! the end of the frame ends the program with 0 (drop), so short frames are rejected for free.

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInstruction {
    /// Opcode: class | size | mode (loads), class | op | source (jumps).
    pub code: u16,
    /// Jump offset when the comparison holds (instructions to skip).
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// The constant operand (offset for loads, value for comparisons and returns).
    pub k: u32,
}

/// Opcodes: combinations of the `BPF_*` constants of include/uapi/linux/bpf_common.h (the
/// tests check them against libc's).
mod op {
    /// `BPF_LD | BPF_W | BPF_ABS`: `A = u32 at k` (big-endian), or an ancillary value when k
    /// is `SKF_AD_OFF + n`.
    pub const LD_W_ABS: u16 = 0x20;
    /// `BPF_LD | BPF_H | BPF_ABS`: `A = u16 at k` (big-endian).
    pub const LD_H_ABS: u16 = 0x28;
    /// `BPF_ALU | BPF_AND | BPF_K`: `A &= k`.
    pub const AND_K: u16 = 0x54;
    /// `BPF_JMP | BPF_JEQ | BPF_K`: `pc += (A == k) ? jt : jf`.
    pub const JEQ_K: u16 = 0x15;
    /// `BPF_RET | BPF_K`: `return k`.
    pub const RET_K: u16 = 0x06;
}

/// `SKF_AD_OFF` (-0x1000) as the kernel reads `k` of an ancillary load: a negative offset
/// in two's complement.
const SKF_AD_OFF: u32 = 0u32.wrapping_sub(0x1000);
/// Ancillary load `SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT`: 1 when the frame arrived with a
/// VLAN tag taken off by the NIC or driver (`skb_vlan_tag_present`), else 0.
const AD_VLAN_TAG_PRESENT: u32 = SKF_AD_OFF + 48;
/// Ancillary load `SKF_AD_OFF + SKF_AD_PKTTYPE`: the frame's `pkt_type` (`PACKET_HOST`,
/// `PACKET_OUTGOING`, ...).
const AD_PKTTYPE: u32 = SKF_AD_OFF + 4;
/// `PACKET_OUTGOING` (include/uapi/linux/if_packet.h): a frame the host is transmitting.
const PACKET_OUTGOING: u32 = 4;
/// The ARP EtherType.
const ETHERTYPE_ARP: u32 = 0x0806;
/// The IPv6 EtherType.
const ETHERTYPE_IPV6: u32 = 0x86dd;
/// The first three bytes of every solicited-node multicast MAC (33:33:ff:xx:xx:xx, RFC 2464
/// section 7 applied to ff02::1:ffxx:xxxx), as the high word of a destination masked by
/// [`SOLICITED_MASK`].
const SOLICITED_NODE_MAC: u32 = 0x3333_ff00;
const SOLICITED_MASK: u32 = 0xffff_ff00;
/// Offset of the EtherType in an untagged Ethernet header.
const ETHERTYPE_OFFSET: u32 = 12;
/// Return value that keeps the whole frame.
pub const ACCEPT: u32 = u32::MAX;
/// Return value that drops the frame.
pub const REJECT: u32 = 0;

/// Instruction indexes of [`uplink_program`], so jumps are computed rather than counted.
mod at {
    // 0: load pkt_type.
    pub const NOT_OUTGOING: usize = 1;
    pub const VLAN: usize = 2;
    pub const UNTAGGED: usize = 3;
    pub const DST_HIGH: usize = 4;
    pub const IS_OURS_HIGH: usize = 5;
    pub const DST_LOW: usize = 6;
    pub const IS_OURS_LOW: usize = 7;
    pub const IS_BROADCAST_HIGH: usize = 8;
    pub const BROADCAST_LOW: usize = 9;
    pub const IS_BROADCAST_LOW: usize = 10;
    pub const ETHERTYPE: usize = 11;
    pub const IS_ARP: usize = 12;
    pub const SOLICITED_MASK: usize = 13;
    pub const IS_SOLICITED: usize = 14;
    pub const ETHERTYPE6: usize = 15;
    pub const IS_IPV6: usize = 16;
    pub const ACCEPT: usize = 17;
    pub const REJECT: usize = 18;
    pub const LEN: usize = 19;
}

/// The jump offset from instruction `from` to instruction `to` (`to` comes after `from`;
/// the programs here are far shorter than the 255 instructions a jump can skip, and the
/// tests walk every jump).
#[allow(clippy::cast_possible_truncation)]
const fn jump(from: usize, to: usize) -> u8 {
    (to - from - 1) as u8
}

const fn load(code: u16, k: u32) -> BpfInstruction {
    BpfInstruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `if A == k goto yes else goto no`, for the instruction at index `here`.
const fn branch(here: usize, k: u32, yes: usize, no: usize) -> BpfInstruction {
    BpfInstruction {
        code: op::JEQ_K,
        jt: jump(here, yes),
        jf: jump(here, no),
        k,
    }
}

/// The receive filter of an uplink socket where the switch owns `mac`. It keeps a frame only
/// when all of these hold:
/// - the host is not transmitting it (`pkt_type != PACKET_OUTGOING`): a fanout group's hook
///   ignores the sockets' `PACKET_IGNORE_OUTGOING` on kernels without
///   `PACKET_FANOUT_FLAG_IGNORE_OUTGOING`, and the host's own ARP broadcasts must not look like
///   requests from the wire;
/// - it carries no VLAN tag that the NIC took off (the uplink is the untagged network; tagged
///   frames belong to the host's VLAN interfaces and would otherwise look untagged), unless
///   the uplink is a `trunk` (Subnets are bound to its VLANs): then every tagged frame is
///   kept, whatever its destination (the switch's VLANs extend its Subnets, so frames for
///   their containers' MACs, broadcast and multicast all concern it; it counts and drops
///   the VLANs it does not serve);
/// - its destination is `mac`, or it is a broadcast ARP frame (requests for the switch's
///   addresses), or an IPv6 frame to a solicited-node multicast MAC (33:33:ff:..: neighbour
///   solicitations, for the switch's IPv6 addresses among others; the datapath keeps those
///   whose target it owns); every other broadcast and multicast is for the host.
///
/// Frames for the host's own MAC, other hosts' unicast (seen in promiscuous mode) and short
/// frames are dropped in the kernel before any copy.
pub fn uplink_program(mac: [u8; 6], trunk: bool) -> [BpfInstruction; at::LEN] {
    let high = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let low = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    [
        load(op::LD_W_ABS, AD_PKTTYPE),
        branch(at::NOT_OUTGOING, PACKET_OUTGOING, at::REJECT, at::VLAN),
        load(op::LD_W_ABS, AD_VLAN_TAG_PRESENT),
        branch(
            at::UNTAGGED,
            0,
            at::DST_HIGH,
            if trunk { at::ACCEPT } else { at::REJECT },
        ),
        load(op::LD_W_ABS, 0),
        branch(at::IS_OURS_HIGH, high, at::DST_LOW, at::IS_BROADCAST_HIGH),
        load(op::LD_H_ABS, 4),
        branch(at::IS_OURS_LOW, low, at::ACCEPT, at::REJECT),
        branch(
            at::IS_BROADCAST_HIGH,
            u32::MAX,
            at::BROADCAST_LOW,
            at::SOLICITED_MASK,
        ),
        load(op::LD_H_ABS, 4),
        branch(at::IS_BROADCAST_LOW, 0xffff, at::ETHERTYPE, at::REJECT),
        load(op::LD_H_ABS, ETHERTYPE_OFFSET),
        branch(at::IS_ARP, ETHERTYPE_ARP, at::ACCEPT, at::REJECT),
        // A still holds the destination's first four bytes.
        load(op::AND_K, SOLICITED_MASK),
        branch(
            at::IS_SOLICITED,
            SOLICITED_NODE_MAC,
            at::ETHERTYPE6,
            at::REJECT,
        ),
        load(op::LD_H_ABS, ETHERTYPE_OFFSET),
        branch(at::IS_IPV6, ETHERTYPE_IPV6, at::ACCEPT, at::REJECT),
        load(op::RET_K, ACCEPT),
        load(op::RET_K, REJECT),
    ]
}

/// The program in the kernel's layout, for `SO_ATTACH_FILTER`.
pub(super) fn to_kernel(program: &[BpfInstruction]) -> Vec<libc::sock_filter> {
    program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel knows about a frame besides its bytes.
    #[derive(Clone, Copy)]
    struct Meta {
        pkt_type: u32,
        vlan_tag_present: bool,
    }

    const RECEIVED: Meta = Meta {
        pkt_type: 3, // PACKET_OTHERHOST
        vlan_tag_present: false,
    };

    /// Runs `program` on `frame` the way the kernel's classic BPF interpreter does for the
    /// instructions we use; `None` when the program uses anything else.
    fn interpret(program: &[BpfInstruction], frame: &[u8], meta: Meta) -> Option<u32> {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        loop {
            let instruction = program.get(pc)?;
            pc += 1;
            match instruction.code {
                op::LD_W_ABS if instruction.k == AD_PKTTYPE => a = meta.pkt_type,
                op::LD_W_ABS if instruction.k == AD_VLAN_TAG_PRESENT => {
                    a = u32::from(meta.vlan_tag_present);
                }
                op::LD_W_ABS => {
                    let at = instruction.k as usize;
                    let Some(bytes) = frame.get(at..at + 4) else {
                        return Some(0);
                    };
                    a = u32::from_be_bytes(bytes.try_into().ok()?);
                }
                op::LD_H_ABS => {
                    let at = instruction.k as usize;
                    let Some(bytes) = frame.get(at..at + 2) else {
                        return Some(0);
                    };
                    a = u32::from(u16::from_be_bytes(bytes.try_into().ok()?));
                }
                op::AND_K => a &= instruction.k,
                op::JEQ_K => {
                    let skip = if a == instruction.k {
                        instruction.jt
                    } else {
                        instruction.jf
                    };
                    pc += usize::from(skip);
                }
                op::RET_K => return Some(instruction.k),
                _ => return None,
            }
        }
    }

    const OURS: [u8; 6] = [0x02, 0x00, 0x5e, 0x77, 0x01, 0x03];
    const HOST: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

    fn frame(destination: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&destination);
        frame.extend_from_slice(&PEER);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&[0u8; 46]);
        frame
    }

    fn verdict(destination: [u8; 6], ethertype: u16, meta: Meta) -> u32 {
        interpret(
            &uplink_program(OURS, false),
            &frame(destination, ethertype),
            meta,
        )
        .expect("the program uses only instructions the interpreter knows")
    }

    #[test]
    fn accepts_frames_for_our_mac_whole() {
        assert_eq!(verdict(OURS, 0x0800, RECEIVED), ACCEPT);
        assert_eq!(verdict(OURS, 0x0806, RECEIVED), ACCEPT);
        // IPv6 to our MAC is kept (the switch's IPv6 addresses on the uplink).
        assert_eq!(verdict(OURS, 0x86dd, RECEIVED), ACCEPT);
    }

    #[test]
    fn accepts_broadcast_arp_only() {
        let broadcast = [0xff; 6];
        let meta = Meta {
            pkt_type: 1, // PACKET_BROADCAST
            ..RECEIVED
        };
        assert_eq!(verdict(broadcast, 0x0806, meta), ACCEPT);
        assert_eq!(verdict(broadcast, 0x0800, meta), REJECT);
        assert_eq!(verdict(broadcast, 0x8100, meta), REJECT);
    }

    #[test]
    fn accepts_ipv6_to_solicited_node_macs_only() {
        let meta = Meta {
            pkt_type: 2, // PACKET_MULTICAST
            ..RECEIVED
        };
        let solicited = [0x33, 0x33, 0xff, 0x00, 0x00, 0x0a];
        assert_eq!(verdict(solicited, 0x86dd, meta), ACCEPT);
        assert_eq!(verdict(solicited, 0x0800, meta), REJECT);
        // All-nodes and all-routers multicast (RAs, RSs): the host's.
        assert_eq!(verdict([0x33, 0x33, 0, 0, 0, 1], 0x86dd, meta), REJECT);
        assert_eq!(verdict([0x33, 0x33, 0, 0, 0, 2], 0x86dd, meta), REJECT);
        assert_eq!(
            verdict([0x33, 0x33, 0xfe, 0, 0, 0x0a], 0x86dd, meta),
            REJECT
        );
    }

    #[test]
    fn rejects_the_hosts_and_other_unicast_and_multicast() {
        let host = Meta {
            pkt_type: 0, // PACKET_HOST
            ..RECEIVED
        };
        assert_eq!(verdict(HOST, 0x0800, host), REJECT);
        assert_eq!(verdict(HOST, 0x0806, host), REJECT);
        assert_eq!(verdict(PEER, 0x0800, RECEIVED), REJECT);
        // Same first four bytes as ours, different last two; and the reverse.
        assert_eq!(
            verdict([0x02, 0x00, 0x5e, 0x77, 0x01, 0x04], 0x0800, RECEIVED),
            REJECT
        );
        assert_eq!(
            verdict([0x02, 0x00, 0x5e, 0x78, 0x01, 0x03], 0x0800, RECEIVED),
            REJECT
        );
        // Half broadcast.
        assert_eq!(
            verdict([0xff, 0xff, 0xff, 0xff, 0x00, 0x00], 0x0806, RECEIVED),
            REJECT
        );
        assert_eq!(
            verdict([0x33, 0x33, 0x00, 0x00, 0x00, 0x01], 0x86dd, RECEIVED),
            REJECT
        );
        assert_eq!(
            verdict([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01], 0x0800, RECEIVED),
            REJECT
        );
    }

    #[test]
    fn rejects_outgoing_and_vlan_tagged_frames() {
        let outgoing = Meta {
            pkt_type: 4,
            ..RECEIVED
        };
        assert_eq!(verdict([0xff; 6], 0x0806, outgoing), REJECT);
        assert_eq!(verdict(OURS, 0x0800, outgoing), REJECT);
        let tagged = Meta {
            vlan_tag_present: true,
            ..RECEIVED
        };
        assert_eq!(verdict(OURS, 0x0800, tagged), REJECT);
        assert_eq!(verdict([0xff; 6], 0x0806, tagged), REJECT);
        // A trunk keeps every tagged frame (a container's MAC, multicast), and still only
        // the untagged frames for the switch.
        let trunk = |destination: [u8; 6], meta| {
            interpret(
                &uplink_program(OURS, true),
                &frame(destination, 0x0800),
                meta,
            )
        };
        assert_eq!(trunk([0x02, 9, 9, 9, 9, 9], tagged), Some(ACCEPT));
        assert_eq!(trunk([0x01, 0, 0x5e, 0, 0, 1], tagged), Some(ACCEPT));
        assert_eq!(trunk([0x02, 9, 9, 9, 9, 9], RECEIVED), Some(REJECT));
        assert_eq!(trunk(OURS, RECEIVED), Some(ACCEPT));
    }

    #[test]
    fn rejects_short_frames() {
        let program = uplink_program(OURS, false);
        assert_eq!(interpret(&program, &[], RECEIVED), Some(REJECT));
        assert_eq!(interpret(&program, &OURS[..5], RECEIVED), Some(REJECT));
        // Broadcast destination but no EtherType.
        assert_eq!(interpret(&program, &[0xff; 12], RECEIVED), Some(REJECT));
    }

    #[test]
    fn every_path_ends_in_a_return() {
        let program = uplink_program(OURS, false);
        assert_eq!(program.last().map(|i| i.code), Some(op::RET_K));
        for (index, instruction) in program.iter().enumerate() {
            if instruction.code == op::JEQ_K {
                for skip in [instruction.jt, instruction.jf] {
                    assert!(index + 1 + usize::from(skip) < program.len());
                }
            }
        }
    }

    #[test]
    fn opcodes_and_ancillary_offsets_match_the_uapi() {
        // include/uapi/linux/filter.h: BPF_LD|BPF_W|BPF_ABS = 0x20, BPF_LD|BPF_H|BPF_ABS =
        // 0x28, BPF_JMP|BPF_JEQ|BPF_K = 0x15, BPF_RET|BPF_K = 0x06; SKF_AD_OFF = -0x1000.
        let code = |value: u32| u16::try_from(value).unwrap();
        assert_eq!(
            op::LD_W_ABS,
            code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS)
        );
        assert_eq!(
            op::LD_H_ABS,
            code(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS)
        );
        assert_eq!(op::JEQ_K, code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K));
        assert_eq!(op::AND_K, code(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K));
        assert_eq!(op::RET_K, code(libc::BPF_RET | libc::BPF_K));
        let signed = |k: u32| i64::from(k) - (1i64 << 32);
        assert_eq!(
            signed(AD_PKTTYPE),
            i64::from(libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE)
        );
        assert_eq!(
            signed(AD_VLAN_TAG_PRESENT),
            i64::from(libc::SKF_AD_OFF + libc::SKF_AD_VLAN_TAG_PRESENT)
        );
        assert_eq!(PACKET_OUTGOING, u32::from(libc::PACKET_OUTGOING));
        assert_eq!(size_of::<libc::sock_filter>(), 8);
        let kernel = to_kernel(&uplink_program(OURS, false));
        assert_eq!(kernel.len(), at::LEN);
        assert_eq!(kernel[0].code, op::LD_W_ABS);
    }
}
