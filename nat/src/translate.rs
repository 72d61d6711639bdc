//! Rewriting a packet's addresses and ports in place, with incremental checksum updates
//! (RFC 1624), including ICMP errors and the packet they quote (RFC 5508, RFC 5382), for
//! IPv4 and IPv6 (NAT44 and NAT66; never between families).
//!
//! [`translate`] makes a packet carry a *target* tuple: conntrack hands out, for each
//! direction of a NATed connection, the tuple the packet must leave with
//! ([`Tracked::target`](crate::Tracked::target)).
//!
//! # What is rewritten
//! - TCP/UDP: source and destination address (IP header) and port (transport header).
//! - ICMP echo: addresses, and the identifier: a request takes `target.src_port`, a reply
//!   `target.dst_port` (see the tuple convention in `tuple.rs`).
//! - ICMP error (the packet's tuple is the *reversed* quoted tuple, as [`parse`](crate::parse) returns it):
//!   the outer destination becomes `target.dst`; the outer source becomes `target.src` only
//!   when the error came from the endpoint the quoted packet was sent to (outer source ==
//!   quoted destination), so a router's address in a time-exceeded message stays visible; the
//!   quoted packet becomes `target.reversed()` (addresses, ports or echo identifier), so the
//!   receiver recognises the packet it sent.
//!
//! # Which checksums are adjusted, per [`ChecksumMode`]
//! | field | `Full` | `Partial` |
//! |---|---|---|
//! | IPv4 header checksum (IPv6 has none) | addresses | addresses |
//! | TCP checksum | pseudo-header addresses + ports | pseudo-header addresses only |
//! | UDP checksum | pseudo-header addresses + ports; zero stays zero | pseudo-header addresses only |
//! | ICMP echo checksum | identifier | untouched |
//! | ICMPv6 echo checksum | pseudo-header addresses + identifier | pseudo-header addresses only |
//! | ICMP error checksum | every word changed in the quote | untouched |
//! | ICMPv6 error checksum | pseudo-header addresses + every word changed in the quote | pseudo-header addresses only |
//! | quoted IPv4 header checksum | quoted addresses | quoted addresses |
//! | quoted TCP/UDP/ICMPv6 checksum | quoted addresses (pseudo-header) + ports or identifier, when the quote contains the field; a zero UDP checksum stays zero | same as `Full` |
//! | quoted ICMP checksum | identifier | same as `Full` |
//!
//! `Partial` is for packets whose transport checksum the sender left to offload (Linux
//! `CHECKSUM_PARTIAL`, virtio-net `VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field then holds only the
//! folded, uncomplemented pseudo-header sum, and whoever completes it sums the transport header
//! and payload as they are on the wire, rewritten ports included. So only the pseudo-header
//! part (the addresses) is adjusted, exactly as Linux `inet_proto_csum_replace4` (and
//! `inet_proto_csum_replace16` for IPv6) does for such packets. ICMP over IPv4 has no
//! pseudo-header, so its field is left for the offload entirely; ICMPv6 has one (RFC 4443
//! section 2.3) and is treated like TCP. The quoted packet in an ICMP error is plain payload
//! whose checksums were complete when it was sent, so it is updated the same way in both modes.
//!
//! Nothing is written when the packet is refused, so a failed translation never leaves a
//! half-rewritten packet.

use std::net::IpAddr;
use std::ops::Range;

use crate::checksum::Delta;
use crate::packet::{self, EchoKind, PacketKind, ParseError};
use crate::tuple::{Protocol, Tuple};
use crate::wire::{self, icmp, ipv4, ipv6, ports, tcp, udp};

/// How the transport checksum of a packet arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ChecksumMode {
    /// Complete checksums (or checksums the receiver validated and left complete).
    #[default]
    Full,
    /// The transport checksum field holds only the pseudo-header sum, to be completed by
    /// offload (see the module doc for the fields adjusted).
    Partial,
}

/// Why a packet was not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TranslateError {
    /// The packet is not one conntrack can follow.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The target tuple is not of the packet's family (no NAT46 or NAT64 here).
    #[error("target addresses are not of the packet's family")]
    AddressFamily,
    /// The target tuple's protocol is not the packet's.
    #[error("target protocol differs from the packet's")]
    ProtocolMismatch,
}

impl TranslateError {
    /// The stable counter key (`nat.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            TranslateError::Parse(error) => error.key(),
            TranslateError::AddressFamily => "nat.address_family",
            TranslateError::ProtocolMismatch => "nat.protocol_mismatch",
        }
    }
}

/// Where an IP header of one family keeps its addresses and checksum.
struct IpFields {
    src: Range<usize>,
    dst: Range<usize>,
    checksum: Option<Range<usize>>,
}

const fn ip_fields(v6: bool) -> IpFields {
    if v6 {
        IpFields {
            src: ipv6::SRC,
            dst: ipv6::DST,
            checksum: None,
        }
    } else {
        IpFields {
            src: ipv4::SRC,
            dst: ipv4::DST,
            checksum: Some(ipv4::CHECKSUM),
        }
    }
}

/// Rewrites `packet` (an IPv4 or IPv6 packet starting at its header) to carry `target`,
/// updating every checksum incrementally according to `mode` (see the module doc).
///
/// # Errors
/// [`TranslateError`] when the packet cannot be parsed (see [`packet::parse`]), when
/// `target` is not of the packet's family, or when its protocol differs from the packet's
/// flow protocol. The packet is left untouched then.
pub fn translate(
    packet: &mut [u8],
    target: &Tuple,
    mode: ChecksumMode,
) -> Result<(), TranslateError> {
    let info = packet::parse(packet)?;
    // `parse` validated the layout; this cannot fail, but stays checked.
    let layout = packet::layout(packet)?;
    let v6 = layout.v6;
    if target.src.is_ipv6() != v6 || target.dst.is_ipv6() != v6 {
        return Err(TranslateError::AddressFamily);
    }
    if info.tuple.protocol != target.protocol {
        return Err(TranslateError::ProtocolMismatch);
    }
    let packet = packet.get_mut(..layout.end).ok_or(ParseError::Truncated)?;
    let (header, l4) = packet.split_at_mut(layout.l4_offset);
    match info.kind {
        PacketKind::Tcp(_) | PacketKind::Udp => {
            let addresses = rewrite_ip(header, v6, Some(target.src), target.dst);
            let is_udp = layout.protocol == Protocol::Udp;
            let field = if is_udp { udp::CHECKSUM } else { tcp::CHECKSUM };
            let mut ports = Delta::ZERO;
            set_u16(l4, ports::SRC, target.src_port, &mut ports);
            set_u16(l4, ports::DST, target.dst_port, &mut ports);
            update_transport_checksum(l4, field, is_udp, addresses, ports, mode);
        }
        PacketKind::IcmpEcho(echo) => {
            let addresses = rewrite_ip(header, v6, Some(target.src), target.dst);
            let ident = match echo {
                EchoKind::Request => target.src_port,
                EchoKind::Reply => target.dst_port,
            };
            let mut delta = Delta::ZERO;
            set_u16(l4, icmp::IDENT, ident, &mut delta);
            if v6 {
                // ICMPv6's checksum covers the pseudo-header, like TCP's.
                update_transport_checksum(l4, icmp::CHECKSUM, false, addresses, delta, mode);
            } else if mode == ChecksumMode::Full {
                apply_to_field(l4, icmp::CHECKSUM, delta);
            }
        }
        PacketKind::IcmpError => translate_error(header, l4, target, v6, mode)?,
    }
    Ok(())
}

fn translate_error(
    header: &mut [u8],
    l4: &mut [u8],
    target: &Tuple,
    v6: bool,
    mode: ChecksumMode,
) -> Result<(), TranslateError> {
    let bad = ParseError::MalformedIcmpError;
    let (icmp_header, quote) = l4.split_at_mut(icmp::HEADER_LEN.min(l4.len()));
    let quoted = packet::quoted(quote, v6)?;
    let outer_src = read_ip(header, ip_fields(v6).src, v6).ok_or(bad)?;
    let from_endpoint = outer_src == quoted.tuple.dst;
    let outer = rewrite_ip(header, v6, from_endpoint.then_some(target.src), target.dst);

    // The quoted packet goes back to what its sender sent: the reversed target.
    let inner = target.reversed();
    let fields = ip_fields(v6);
    let mut icmp_delta = Delta::ZERO;
    let (quoted_header, quoted_l4) = quote.split_at_mut(quoted.header_len.min(quote.len()));
    let mut addresses = Delta::ZERO;
    set_ip(quoted_header, fields.src, inner.src, &mut addresses);
    set_ip(quoted_header, fields.dst, inner.dst, &mut addresses);
    icmp_delta.add(addresses);
    if let Some(checksum) = fields.checksum {
        icmp_delta.add(apply_to_field(quoted_header, checksum, addresses));
    }

    match (quoted.tuple.protocol, quoted.echo) {
        (Protocol::Icmp, Some(echo)) => {
            let ident = match echo {
                EchoKind::Request => inner.src_port,
                EchoKind::Reply => inner.dst_port,
            };
            let mut delta = Delta::ZERO;
            set_u16(quoted_l4, icmp::IDENT, ident, &mut delta);
            icmp_delta.add(delta);
            if v6 {
                // The quoted ICMPv6 checksum covers the quoted pseudo-header too.
                delta.add(addresses);
            }
            icmp_delta.add(apply_to_field(quoted_l4, icmp::CHECKSUM, delta));
        }
        (Protocol::Tcp | Protocol::Udp, _) => {
            let is_udp = quoted.tuple.protocol == Protocol::Udp;
            let mut ports = Delta::ZERO;
            set_u16(quoted_l4, ports::SRC, inner.src_port, &mut ports);
            set_u16(quoted_l4, ports::DST, inner.dst_port, &mut ports);
            icmp_delta.add(ports);
            let field = if is_udp { udp::CHECKSUM } else { tcp::CHECKSUM };
            // A quote of only 8 bytes does not contain the TCP checksum: nothing to keep.
            icmp_delta.add(update_transport_checksum(
                quoted_l4,
                field,
                is_udp,
                addresses,
                ports,
                ChecksumMode::Full,
            ));
        }
        (Protocol::Icmp, None) => return Err(bad.into()),
    }
    match (mode, v6) {
        (ChecksumMode::Full, false) => {
            apply_to_field(icmp_header, icmp::CHECKSUM, icmp_delta);
        }
        (ChecksumMode::Full, true) => {
            icmp_delta.add(outer);
            apply_to_field(icmp_header, icmp::CHECKSUM, icmp_delta);
        }
        (ChecksumMode::Partial, false) => {}
        (ChecksumMode::Partial, true) => {
            update_transport_checksum(icmp_header, icmp::CHECKSUM, false, outer, Delta::ZERO, mode);
        }
    }
    Ok(())
}

/// Sets the source (when given) and destination addresses of an IP header and updates the
/// IPv4 header checksum. Returns the address delta (the pseudo-header change for the
/// transport checksum).
fn rewrite_ip(header: &mut [u8], v6: bool, src: Option<IpAddr>, dst: IpAddr) -> Delta {
    let fields = ip_fields(v6);
    let mut delta = Delta::ZERO;
    if let Some(src) = src {
        set_ip(header, fields.src, src, &mut delta);
    }
    set_ip(header, fields.dst, dst, &mut delta);
    if let Some(checksum) = fields.checksum {
        apply_to_field(header, checksum, delta);
    }
    delta
}

/// Updates a TCP, UDP or ICMPv6 checksum field for an address (pseudo-header) and a port
/// (or identifier) change. Returns the change to the field itself (for a checksum that
/// covers this header, as an ICMP error's covers the quote).
fn update_transport_checksum(
    l4: &mut [u8],
    field: Range<usize>,
    is_udp: bool,
    addresses: Delta,
    ports: Delta,
    mode: ChecksumMode,
) -> Delta {
    let Some(old) = wire::read_u16(l4, field.clone()) else {
        return Delta::ZERO;
    };
    let new = match mode {
        // RFC 768: zero means "no checksum"; keep it so.
        ChecksumMode::Full if is_udp && old == 0 => 0,
        ChecksumMode::Full => {
            let mut delta = addresses;
            delta.add(ports);
            match delta.apply(old) {
                // RFC 768: a computed zero is sent as all ones.
                0 if is_udp => 0xffff,
                sum => sum,
            }
        }
        ChecksumMode::Partial => addresses.apply_partial(old),
    };
    let mut change = Delta::ZERO;
    set_u16(l4, field, new, &mut change);
    change
}

/// Applies `delta` to the complete checksum at `field`; returns the change to the field.
fn apply_to_field(buf: &mut [u8], field: Range<usize>, delta: Delta) -> Delta {
    let mut change = Delta::ZERO;
    if let Some(old) = wire::read_u16(buf, field.clone()) {
        set_u16(buf, field, delta.apply(old), &mut change);
    }
    change
}

/// Writes a 16-bit field and records the change.
fn set_u16(buf: &mut [u8], field: Range<usize>, new: u16, delta: &mut Delta) {
    if let Some(old) = wire::read_u16(buf, field.clone()) {
        if old != new && wire::write_u16(buf, field, new) {
            delta.word(old, new);
        }
    }
}

/// The address of `v6`'s family at `field`.
fn read_ip(buf: &[u8], field: Range<usize>, v6: bool) -> Option<IpAddr> {
    if v6 {
        wire::read_addr6(buf, field).map(IpAddr::V6)
    } else {
        wire::read_addr(buf, field).map(IpAddr::V4)
    }
}

/// Writes an address field (4 or 16 bytes, by the address) and records the change.
fn set_ip(buf: &mut [u8], field: Range<usize>, new: IpAddr, delta: &mut Delta) {
    match new {
        IpAddr::V4(new) => {
            if let Some(old) = wire::read_addr(buf, field.clone()) {
                if old != new && wire::write_addr(buf, field, new) {
                    delta.addr(old, new);
                }
            }
        }
        IpAddr::V6(new) => {
            if let Some(old) = wire::read_addr6(buf, field.clone()) {
                if old != new && wire::write_addr6(buf, field, new) {
                    delta.addr6(old, new);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use crate::packet::fixtures::*;
    use crate::packet::parse;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const N: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const R: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

    fn tuple(
        protocol: Protocol,
        src: impl Into<IpAddr>,
        sp: u16,
        dst: impl Into<IpAddr>,
        dp: u16,
    ) -> Tuple {
        Tuple {
            protocol,
            src: src.into(),
            dst: dst.into(),
            src_port: sp,
            dst_port: dp,
        }
    }

    /// The IPv4 header checksum is valid (IPv6 has none: always true).
    fn ip_checksum_ok(packet: &[u8]) -> bool {
        if packet[0] >> 4 == 6 {
            return true;
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        checksum::checksum(&packet[..ihl]) == 0
    }

    /// Expected bytes: a fresh fixture built with the translated values.
    #[test]
    fn snat_tcp_matches_a_packet_built_with_the_new_source() {
        let mut p = tcp(A, 40000, B, 80, 0x02, b"hello");
        translate(
            &mut p,
            &tuple(Protocol::Tcp, N, 1024, B, 80),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(p, tcp(N, 1024, B, 80, 0x02, b"hello"));
    }

    #[test]
    fn dnat_udp_matches_a_packet_built_with_the_new_destination() {
        let mut p = udp(B, 5000, N, 8080, b"data", true);
        translate(
            &mut p,
            &tuple(Protocol::Udp, B, 5000, A, 80),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(p, udp(B, 5000, A, 80, b"data", true));
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut p = udp(A, 5000, B, 53, b"q", false);
        translate(
            &mut p,
            &tuple(Protocol::Udp, N, 6000, B, 53),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(p, udp(N, 6000, B, 53, b"q", false));
        assert_eq!(l4_field(&p), 0);
    }

    #[test]
    fn echo_request_identifier_and_reply_identifier() {
        let mut p = echo(A, B, true, 0x1111, b"abc");
        translate(
            &mut p,
            &tuple(Protocol::Icmp, N, 0x2222, B, 0),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(p, echo(N, B, true, 0x2222, b"abc"));

        let mut reply = echo(B, N, false, 0x2222, b"abc");
        translate(
            &mut reply,
            &tuple(Protocol::Icmp, B, 0, A, 0x1111),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(reply, echo(B, A, false, 0x1111, b"abc"));
    }

    #[test]
    fn port_unreachable_is_translated_back_to_the_container() {
        // A:5353 was masqueraded to N:1024 and sent to B:53; B answers port unreachable.
        let sent = udp(N, 1024, B, 53, b"query", true);
        let mut error = icmp_error(B, N, 3, 3, &sent, sent.len());
        // Conntrack: reply direction of (A:5353 -> B:53); target = reverse of the original.
        let target = tuple(Protocol::Udp, B, 53, A, 5353);
        assert_eq!(
            parse(&error).expect("parses").tuple,
            tuple(Protocol::Udp, B, 53, N, 1024)
        );
        translate(&mut error, &target, ChecksumMode::Full).expect("translates");
        let original = udp(A, 5353, B, 53, b"query", true);
        assert_eq!(error, icmp_error(B, A, 3, 3, &original, original.len()));
    }

    #[test]
    fn time_exceeded_from_a_router_keeps_the_router_address() {
        let sent = tcp(N, 1024, B, 443, 0x02, b"");
        let mut error = icmp_error(R, N, 11, 0, &sent, 28);
        translate(
            &mut error,
            &tuple(Protocol::Tcp, B, 443, A, 40000),
            ChecksumMode::Full,
        )
        .expect("translates");
        let original = tcp(A, 40000, B, 443, 0x02, b"");
        assert_eq!(error, icmp_error(R, A, 11, 0, &original, 28));
    }

    #[test]
    fn error_about_a_port_forwarded_flow_hides_the_container() {
        // Outside B:5000 -> N:8080 forwarded to A:80. A answers port unreachable about the
        // DNATed packet; the error must look as if N sent it, quoting B -> N:8080.
        let delivered = udp(B, 5000, A, 80, b"x", true);
        let mut error = icmp_error(A, B, 3, 3, &delivered, delivered.len());
        translate(
            &mut error,
            &tuple(Protocol::Udp, N, 8080, B, 5000),
            ChecksumMode::Full,
        )
        .expect("translates");
        let sent = udp(B, 5000, N, 8080, b"x", true);
        assert_eq!(error, icmp_error(N, B, 3, 3, &sent, sent.len()));
    }

    #[test]
    fn error_quoting_an_echo_request() {
        let sent = echo(N, B, true, 0x2222, b"ping");
        let mut error = icmp_error(R, N, 11, 0, &sent, 28);
        translate(
            &mut error,
            &tuple(Protocol::Icmp, B, 0, A, 0x1111),
            ChecksumMode::Full,
        )
        .expect("translates");
        let original = echo(A, B, true, 0x1111, b"ping");
        assert_eq!(error, icmp_error(R, A, 11, 0, &original, 28));
    }

    #[test]
    fn partial_tcp_adjusts_only_the_pseudo_header() {
        let mut p = tcp(A, 40000, B, 80, 0x18, b"payload");
        let length = u32::try_from(p.len() - 20).expect("fits");
        let partial = checksum::fold(checksum::pseudo_header_v4(A, B, 6, length));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        translate(
            &mut p,
            &tuple(Protocol::Tcp, N, 1024, B, 80),
            ChecksumMode::Partial,
        )
        .expect("translates");
        let expected = checksum::fold(checksum::pseudo_header_v4(N, B, 6, length));
        assert_eq!(l4_field(&p), expected);
        assert!(ip_checksum_ok(&p));
        // What the offload does: sum the segment from the transport header on, seeded by the
        // field. The result must equal a complete checksum of the translated segment.
        let completed = !checksum::fold(checksum::add_bytes(0, &p[20..]));
        assert_eq!(completed, l4_checksum(&p));
    }

    #[test]
    fn partial_icmp_echo_leaves_the_checksum_to_the_offload() {
        let mut p = echo(A, B, true, 7, b"abc");
        let before = l4_field(&p);
        translate(
            &mut p,
            &tuple(Protocol::Icmp, N, 9, B, 0),
            ChecksumMode::Partial,
        )
        .expect("translates");
        assert_eq!(l4_field(&p), before);
        assert!(ip_checksum_ok(&p));
    }

    #[test]
    fn partial_icmp_error_updates_the_quote_but_not_the_outer_checksum() {
        let sent = udp(N, 1024, B, 53, b"query", true);
        let mut error = icmp_error(B, N, 3, 3, &sent, sent.len());
        let outer_before = l4_field(&error);
        translate(
            &mut error,
            &tuple(Protocol::Udp, B, 53, A, 5353),
            ChecksumMode::Partial,
        )
        .expect("translates");
        assert_eq!(l4_field(&error), outer_before);
        assert!(ip_checksum_ok(&error));
        let original = udp(A, 5353, B, 53, b"query", true);
        assert_eq!(&error[28..], &original[..]);
    }

    #[test]
    fn refusals_leave_the_packet_untouched() {
        let original = tcp(A, 1, B, 2, 0x02, b"");
        let mut p = original.clone();
        let v6 = Tuple {
            src: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ..tuple(Protocol::Tcp, N, 1, B, 2)
        };
        assert_eq!(
            translate(&mut p, &v6, ChecksumMode::Full),
            Err(TranslateError::AddressFamily)
        );
        assert_eq!(
            translate(
                &mut p,
                &tuple(Protocol::Udp, N, 1, B, 2),
                ChecksumMode::Full
            ),
            Err(TranslateError::ProtocolMismatch)
        );
        let mut short = original[..30].to_vec();
        assert_eq!(
            translate(
                &mut short,
                &tuple(Protocol::Tcp, N, 1, B, 2),
                ChecksumMode::Full
            ),
            Err(TranslateError::Parse(ParseError::Truncated))
        );
        assert_eq!(p, original);
    }

    #[test]
    fn padding_after_the_packet_is_not_touched() {
        let mut p = udp(A, 1, B, 2, b"abc", true);
        p.extend_from_slice(&[0xaa; 10]);
        translate(
            &mut p,
            &tuple(Protocol::Udp, N, 3, B, 2),
            ChecksumMode::Full,
        )
        .expect("translates");
        assert_eq!(&p[p.len() - 10..], &[0xaa; 10]);
    }

    /// An address of the family `v6` from 16 arbitrary bytes.
    fn ip_of(v6: bool, bytes: [u8; 16]) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    }

    /// Four addresses of one family (either).
    fn addrs() -> impl Strategy<Value = (IpAddr, IpAddr, IpAddr, IpAddr)> {
        (any::<bool>(), any::<[[u8; 16]; 4]>())
            .prop_map(|(v6, [a, b, c, d])| (ip_of(v6, a), ip_of(v6, b), ip_of(v6, c), ip_of(v6, d)))
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Tcp(u8),
        Udp(bool),
        Echo(bool),
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            any::<u8>().prop_map(Kind::Tcp),
            any::<bool>().prop_map(Kind::Udp),
            any::<bool>().prop_map(Kind::Echo),
        ]
    }

    fn build(kind: Kind, t: &Tuple, payload: &[u8]) -> Vec<u8> {
        let (s, d) = (t.src, t.dst);
        match kind {
            Kind::Tcp(flags) => tcp(s, t.src_port, d, t.dst_port, flags, payload),
            Kind::Udp(sum) => udp(s, t.src_port, d, t.dst_port, payload, sum),
            Kind::Echo(true) => echo(s, d, true, t.src_port, payload),
            Kind::Echo(false) => echo(s, d, false, t.dst_port, payload),
        }
    }

    fn flow(kind: Kind, s: IpAddr, sp: u16, d: IpAddr, dp: u16) -> Tuple {
        match kind {
            Kind::Tcp(_) => tuple(Protocol::Tcp, s, sp, d, dp),
            Kind::Udp(_) => tuple(Protocol::Udp, s, sp, d, dp),
            Kind::Echo(true) => tuple(Protocol::Icmp, s, sp, d, 0),
            Kind::Echo(false) => tuple(Protocol::Icmp, s, 0, d, dp),
        }
    }

    proptest! {
        #[test]
        fn incremental_update_equals_full_recompute(
            kind in kind(),
            (s, d, ns, nd) in addrs(),
            (sp, dp, nsp, ndp) in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let original = flow(kind, s, sp, d, dp);
            let target = flow(kind, ns, nsp, nd, ndp);
            let mut p = build(kind, &original, &payload);
            translate(&mut p, &target, ChecksumMode::Full).expect("translates");
            prop_assert!(ip_checksum_ok(&p));
            let expected = match kind {
                Kind::Udp(false) => 0,
                _ => l4_checksum(&p),
            };
            prop_assert_eq!(l4_field(&p), expected);
            // And the whole packet is what a fresh build with the target gives.
            prop_assert_eq!(p, build(kind, &target, &payload));
        }

        #[test]
        fn translate_then_untranslate_is_identity(
            kind in kind(),
            (s, d, ns, nd) in addrs(),
            (sp, dp, nsp, ndp) in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            partial in any::<bool>(),
        ) {
            let original = flow(kind, s, sp, d, dp);
            let target = flow(kind, ns, nsp, nd, ndp);
            let before = build(kind, &original, &payload);
            let mode = if partial { ChecksumMode::Partial } else { ChecksumMode::Full };
            // A partial field holds a folded non-zero pseudo-header sum, never 0x0000 (whose
            // one's-complement twin 0xffff is what arithmetic gives back).
            let echo4 = matches!(kind, Kind::Echo(_)) && s.is_ipv4();
            prop_assume!(!partial || echo4 || l4_field(&before) != 0);
            let mut p = before.clone();
            translate(&mut p, &target, mode).expect("translates");
            translate(&mut p, &original, mode).expect("translates back");
            prop_assert_eq!(p, before);
        }

        #[test]
        fn partial_checksum_completes_to_the_full_one(
            tcp_not_udp in any::<bool>(),
            (s, d, ns, nd) in addrs(),
            (sp, dp, nsp, ndp) in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            echo6 in any::<bool>(),
        ) {
            // TCP, UDP, or (IPv6 only, whose ICMP has a pseudo-header) an echo request.
            let kind = match (tcp_not_udp, echo6 && s.is_ipv6()) {
                (_, true) => Kind::Echo(true),
                (true, false) => Kind::Tcp(0x18),
                (false, false) => Kind::Udp(true),
            };
            let mut p = build(kind, &flow(kind, s, sp, d, dp), &payload);
            // Turn the complete checksum into a partial one, as a sender with offload would.
            let (start, _, protocol, pseudo) = transport(&p);
            let seed = checksum::fold(pseudo.expect("has a pseudo-header"));
            let at = start + checksum_field(protocol);
            p[at..at + 2].copy_from_slice(&seed.to_be_bytes());
            translate(&mut p, &flow(kind, ns, nsp, nd, ndp), ChecksumMode::Partial)
                .expect("translates");
            prop_assert!(ip_checksum_ok(&p));
            let completed = !checksum::fold(checksum::add_bytes(0, &p[start..]));
            let full = l4_checksum(&p);
            // The offload's result and a full computation agree (UDP maps 0 to 0xffff).
            prop_assert!(completed == full || (completed == 0 && full == 0xffff));
        }

        #[test]
        fn icmp_errors_translate_consistently_and_round_trip(
            kind in kind(),
            (s, d, ns, nd) in addrs(),
            (sp, dp, nsp, ndp) in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
            from_endpoint in any::<bool>(),
            full_quote in any::<bool>(),
            router_bytes in any::<[u8; 16]>(),
        ) {
            let v6 = s.is_ipv6();
            let router = ip_of(v6, router_bytes);
            let header = if v6 { 40 } else { 20 };
            // Port unreachable: ICMP 3/3, ICMPv6 1/4.
            let (error_type, error_code) = if v6 { (1, 4) } else { (3, 3) };
            // The offending packet went d <- s (as translated); the error comes back to s.
            let offending_flow = flow(kind, s, sp, d, dp);
            let offending = build(kind, &offending_flow, &payload);
            let quote_len = if full_quote { offending.len() } else { header + 8 };
            let error_src = if from_endpoint { d } else { router };
            prop_assume!(from_endpoint || (router != d && router != nd && router != s));
            let before = icmp_error(error_src, s, error_type, error_code, &offending, quote_len);
            // Same shape as the error's lookup tuple (d -> s): new addresses and ports.
            let target = flow(kind, ns, nsp, nd, ndp).reversed();
            let mut p = before.clone();
            translate(&mut p, &target, ChecksumMode::Full).expect("translates");
            prop_assert!(ip_checksum_ok(&p));
            prop_assert_eq!(l4_field(&p), l4_checksum(&p));
            // The quote is now the reversed target, with a valid header checksum.
            let quote = &p[header + 8..];
            prop_assert!(ip_checksum_ok(quote));
            let quoted = crate::packet::quoted(quote, v6).expect("quote parses");
            prop_assert_eq!(quoted.tuple, target.reversed());
            if full_quote {
                prop_assert_eq!(l4_field(quote), match kind {
                    Kind::Udp(false) => 0,
                    _ => l4_checksum(quote),
                });
            }
            // Back again: the reversal of the original quoted flow.
            translate(&mut p, &offending_flow.reversed(), ChecksumMode::Full)
                .expect("translates back");
            prop_assert_eq!(p, before);
        }
    }
}
