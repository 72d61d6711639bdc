//! The capture filter: a small subset of tcpdump's expressions, parsed once when a capture
//! starts and evaluated on each frame a capture is offered.
//!
//! Grammar (keywords are case-insensitive; `&&`, `||` and `!` may replace `and`, `or`, `not`):
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*          adjacent primaries are joined by "and", as tcpdump does
//! not     := "not" not | primary
//! primary := "(" expr ")"
//!          | "ip" | "ip6" | "arp" | "icmp" | "icmp6" | "tcp" | "udp"
//!          | ["src" | "dst"] "host" IPV4-OR-IPV6
//!          | ["src" | "dst"] "port" N
//! ```
//!
//! As in tcpdump, `ip` is IPv4 and `ip6` IPv6, `icmp` ICMP over IPv4 and `icmp6` ICMPv6,
//! while `tcp`, `udp` and `port` match either family. `host` matches an IP packet's source
//! or destination address and an ARP packet's sender or target protocol address; `port`
//! matches a TCP or UDP source or destination port (never in a fragment after the first).
//! IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are skipped
//! to find the transport. One 802.1Q tag is skipped. The frame is read leniently: a header
//! that does not fit the bytes given simply does not match, and nothing panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN, IPV6_HEADER_LEN, IpProtocol,
    Ipv4Packet, TcpPacket, UdpPacket,
};

/// Longest filter accepted, in bytes: a filter is typed by a person.
pub const MAX_FILTER_LEN: usize = 1024;

/// Deepest nesting of `not` and parentheses accepted (the parser recurses).
const MAX_DEPTH: usize = 32;

/// The 802.1Q tag's EtherType, its length, and where in it the inner EtherType is.
const VLAN_ETHERTYPE: u16 = 0x8100;
const VLAN_TAG_LEN: usize = 4;
const VLAN_INNER_ETHERTYPE: std::ops::Range<usize> = 2..4;

/// The bytes of a TCP or UDP header that hold its two ports.
const PORTS_LEN: usize = 4;

/// Which address or port of a packet a primary looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Either.
    Any,
    /// The source.
    Src,
    /// The destination.
    Dst,
}

impl Side {
    /// True when `value` is this side of `(source, destination)`.
    fn matches<T: PartialEq>(self, (source, destination): (T, T), value: T) -> bool {
        match self {
            Side::Any => source == value || destination == value,
            Side::Src => source == value,
            Side::Dst => destination == value,
        }
    }
}

/// A protocol primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// IPv4.
    Ip,
    /// IPv6.
    Ip6,
    /// ARP.
    Arp,
    /// ICMP over IPv4.
    Icmp,
    /// ICMPv6.
    Icmp6,
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// UDP over IPv4 or IPv6.
    Udp,
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Frames of a protocol.
    Protocol(Protocol),
    /// Packets from or to an address.
    Host(Side, IpAddr),
    /// TCP or UDP segments from or to a port.
    Port(Side, u16),
    /// The expression does not match.
    Not(Box<Filter>),
    /// Both match.
    And(Box<Filter>, Box<Filter>),
    /// Either matches.
    Or(Box<Filter>, Box<Filter>),
}

/// Why a filter expression was refused: what was wrong, where, and what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{message} (at word {position} of the filter; valid: ip, ip6, arp, icmp, icmp6, tcp, udp, [src|dst] host ADDRESS, [src|dst] port N, combined with and, or, not and parentheses)"
)]
pub struct FilterError {
    /// What is wrong.
    pub message: String,
    /// The 1-based position of the word at fault.
    pub position: usize,
}

/// What a frame carries, as far as the filter needs it.
#[derive(Debug, Default, Clone, Copy)]
struct Facts {
    arp: Option<(IpAddr, IpAddr)>,
    /// Source, destination and transport (after IPv6's extension headers).
    ip: Option<(IpAddr, IpAddr, IpProtocol)>,
    ports: Option<(u16, u16)>,
}

/// IPv6 extension headers the filter skips to find the transport (RFC 8200).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION: u8 = 60;
/// Most extension headers walked before giving up on the transport.
const MAX_EXTENSION_HEADERS: usize = 8;

impl Facts {
    /// Reads `frame` (an Ethernet frame, perhaps cut short).
    fn of(frame: &[u8]) -> Facts {
        let mut facts = Facts::default();
        let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
            return facts;
        };
        let mut ethertype = ethernet.ethertype();
        let mut payload = ethernet.payload();
        if u16::from(ethertype) == VLAN_ETHERTYPE {
            let Some(inner) = payload
                .get(VLAN_INNER_ETHERTYPE)
                .and_then(|bytes| <[u8; 2]>::try_from(bytes).ok())
            else {
                return facts;
            };
            ethertype = EthernetProtocol::from(u16::from_be_bytes(inner));
            payload = &payload[VLAN_TAG_LEN..];
        }
        match ethertype {
            EthernetProtocol::Arp => {
                if let Ok(arp) = ArpPacket::new_checked(payload) {
                    let address = |bytes: &[u8]| {
                        <[u8; 4]>::try_from(bytes)
                            .ok()
                            .map(|octets| IpAddr::V4(Ipv4Addr::from(octets)))
                    };
                    if let (Some(sender), Some(target)) = (
                        address(arp.source_protocol_addr()),
                        address(arp.target_protocol_addr()),
                    ) {
                        facts.arp = Some((sender, target));
                    }
                }
            }
            EthernetProtocol::Ipv4 => facts.read_ipv4(payload),
            EthernetProtocol::Ipv6 => facts.read_ipv6(payload),
            _ => {}
        }
        facts
    }

    /// Reads an IPv6 header and the extension headers after it, as far as the bytes go
    /// (the payload length is not required to fit: a snapped or GSO frame).
    fn read_ipv6(&mut self, bytes: &[u8]) {
        let Some(header) = bytes.get(..IPV6_HEADER_LEN) else {
            return;
        };
        if header[0] >> 4 != 6 {
            return;
        }
        let address = |range: std::ops::Range<usize>| {
            <[u8; 16]>::try_from(&header[range])
                .ok()
                .map(|octets| IpAddr::V6(Ipv6Addr::from(octets)))
        };
        let (Some(src), Some(dst)) = (address(8..24), address(24..40)) else {
            return;
        };
        let mut next = header[6];
        let mut offset = IPV6_HEADER_LEN;
        let mut later_fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            match next {
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION => {
                    let (Some(&following), Some(&len)) = (bytes.get(offset), bytes.get(offset + 1))
                    else {
                        return;
                    };
                    next = following;
                    offset += (usize::from(len) + 1) * 8;
                }
                IPV6_FRAGMENT => {
                    let Some(fragment) = bytes.get(offset..offset + 8) else {
                        return;
                    };
                    next = fragment[0];
                    later_fragment = u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 != 0;
                    offset += 8;
                }
                _ => break,
            }
        }
        let protocol = IpProtocol::from(next);
        self.ip = Some((src, dst, protocol));
        if later_fragment {
            return;
        }
        self.ports = read_ports(protocol, bytes.get(offset..).unwrap_or_default());
    }

    /// Reads an IPv4 header without requiring the whole packet (a snapped or a GSO frame's
    /// total length may exceed the bytes at hand).
    fn read_ipv4(&mut self, bytes: &[u8]) {
        if bytes.len() < IPV4_HEADER_LEN {
            return;
        }
        let packet = Ipv4Packet::new_unchecked(bytes);
        let header_len = usize::from(packet.header_len());
        if packet.version() != 4 || header_len < IPV4_HEADER_LEN || bytes.len() < header_len {
            return;
        }
        let protocol = packet.next_header();
        self.ip = Some((
            IpAddr::V4(packet.src_addr()),
            IpAddr::V4(packet.dst_addr()),
            protocol,
        ));
        if packet.frag_offset() != 0 {
            return;
        }
        self.ports = read_ports(protocol, &bytes[header_len..]);
    }
}

/// The ports of a TCP or UDP header at the start of `l4`, when they fit.
fn read_ports(protocol: IpProtocol, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        IpProtocol::Tcp if l4.len() >= PORTS_LEN => {
            let tcp = TcpPacket::new_unchecked(l4);
            Some((tcp.src_port(), tcp.dst_port()))
        }
        IpProtocol::Udp if l4.len() >= PORTS_LEN => {
            let udp = UdpPacket::new_unchecked(l4);
            Some((udp.src_port(), udp.dst_port()))
        }
        _ => None,
    }
}

impl Filter {
    /// Parses `text`; an empty text is `None` (every frame matches).
    ///
    /// # Errors
    /// A [`FilterError`] naming the word at fault and what was expected there.
    pub fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                message: format!("the filter is longer than {MAX_FILTER_LEN} bytes"),
                position: 1,
            });
        }
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut parser = Parser {
            tokens: &tokens,
            next: 0,
            depth: 0,
        };
        let filter = parser.or()?;
        if let Some(word) = parser.peek() {
            return Err(parser.error(format!("unexpected {word:?}")));
        }
        Ok(Some(filter))
    }

    /// True when `frame` (an Ethernet frame, perhaps cut short) matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.eval(&Facts::of(frame))
    }

    fn eval(&self, facts: &Facts) -> bool {
        match self {
            Filter::Protocol(protocol) => match protocol {
                Protocol::Arp => facts.arp.is_some(),
                Protocol::Ip => facts.ip.is_some_and(|ip| ip.0.is_ipv4()),
                Protocol::Ip6 => facts.ip.is_some_and(|ip| ip.0.is_ipv6()),
                Protocol::Icmp => facts
                    .ip
                    .is_some_and(|ip| ip.0.is_ipv4() && ip.2 == IpProtocol::Icmp),
                Protocol::Icmp6 => facts
                    .ip
                    .is_some_and(|ip| ip.0.is_ipv6() && ip.2 == IpProtocol::Icmpv6),
                Protocol::Tcp => facts.ip.is_some_and(|ip| ip.2 == IpProtocol::Tcp),
                Protocol::Udp => facts.ip.is_some_and(|ip| ip.2 == IpProtocol::Udp),
            },
            Filter::Host(side, address) => {
                let pair = facts.ip.map(|(src, dst, _)| (src, dst)).or(facts.arp);
                pair.is_some_and(|pair| side.matches(pair, *address))
            }
            Filter::Port(side, port) => facts.ports.is_some_and(|pair| side.matches(pair, *port)),
            Filter::Not(inner) => !inner.eval(facts),
            Filter::And(a, b) => a.eval(facts) && b.eval(facts),
            Filter::Or(a, b) => a.eval(facts) || b.eval(facts),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |side: &Side| match side {
            Side::Any => "",
            Side::Src => "src ",
            Side::Dst => "dst ",
        };
        match self {
            Filter::Protocol(protocol) => {
                let name = match protocol {
                    Protocol::Ip => "ip",
                    Protocol::Ip6 => "ip6",
                    Protocol::Arp => "arp",
                    Protocol::Icmp => "icmp",
                    Protocol::Icmp6 => "icmp6",
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                f.write_str(name)
            }
            Filter::Host(s, address) => write!(f, "{}host {address}", side(s)),
            Filter::Port(s, port) => write!(f, "{}port {port}", side(s)),
            Filter::Not(inner) => write!(f, "not {inner}"),
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
        }
    }
}

/// Splits on white space, with parentheses and `!` as words of their own.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c == '(' || c == ')' || c == '!' {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

struct Parser<'a> {
    tokens: &'a [String],
    next: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.next).map(String::as_str)
    }

    fn peek_is(&self, words: &[&str]) -> bool {
        self.peek()
            .is_some_and(|word| words.iter().any(|w| word.eq_ignore_ascii_case(w)))
    }

    fn take(&mut self) -> Option<&str> {
        let word = self.tokens.get(self.next).map(String::as_str);
        if word.is_some() {
            self.next += 1;
        }
        word
    }

    /// An error at the next word (or just past the end).
    fn error(&self, message: String) -> FilterError {
        FilterError {
            message,
            position: self.next + 1,
        }
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.peek_is(&["or", "||"]) {
            self.next += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.not()?;
        loop {
            if self.peek_is(&["and", "&&"]) {
                self.next += 1;
            } else if self.peek().is_none() || self.peek_is(&["or", "||", ")"]) {
                return Ok(left);
            }
            let right = self.not()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
    }

    fn not(&mut self) -> Result<Filter, FilterError> {
        if self.peek_is(&["not", "!"]) {
            self.next += 1;
            self.descend()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn descend(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let Some(word) = self.take().map(str::to_ascii_lowercase) else {
            return Err(self.error("the filter ends where a primary was expected".to_owned()));
        };
        let protocol = match word.as_str() {
            "ip" => Some(Protocol::Ip),
            "ip6" => Some(Protocol::Ip6),
            "arp" => Some(Protocol::Arp),
            "icmp" => Some(Protocol::Icmp),
            "icmp6" => Some(Protocol::Icmp6),
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        };
        if let Some(protocol) = protocol {
            return Ok(Filter::Protocol(protocol));
        }
        match word.as_str() {
            "(" => {
                self.descend()?;
                let inner = self.or()?;
                self.depth -= 1;
                if self.take() != Some(")") {
                    self.next = self.next.saturating_sub(1);
                    return Err(self.error("missing \")\"".to_owned()));
                }
                Ok(inner)
            }
            "src" | "dst" => {
                let side = if word == "src" { Side::Src } else { Side::Dst };
                let Some(next) = self.take().map(str::to_ascii_lowercase) else {
                    return Err(self.error(format!("{word:?} must be followed by host or port")));
                };
                self.qualified(side, &next)
            }
            "host" | "port" => self.qualified(Side::Any, &word),
            _ => {
                self.next -= 1;
                Err(self.error(format!("unknown word {word:?}")))
            }
        }
    }

    /// The value of a `host` or `port` primary.
    fn qualified(&mut self, side: Side, keyword: &str) -> Result<Filter, FilterError> {
        let at = self.next;
        let value = self.take().map(str::to_owned);
        let fail = |message: String| FilterError {
            message,
            position: at + 1,
        };
        match keyword {
            "host" => {
                let value = value.ok_or_else(|| fail("host needs an IP address".to_owned()))?;
                let address = value.parse::<IpAddr>().map_err(|_| {
                    fail(format!(
                        "host {value:?}: expected an IPv4 or IPv6 address, e.g. 10.0.0.1 or fd00::1"
                    ))
                })?;
                Ok(Filter::Host(side, address))
            }
            "port" => {
                let value = value.ok_or_else(|| fail("port needs a number".to_owned()))?;
                let port = value.parse::<u16>().map_err(|_| {
                    fail(format!("port {value:?}: expected a number from 0 to 65535"))
                })?;
                Ok(Filter::Port(side, port))
            }
            other => Err(fail(format!(
                "expected host or port after src or dst, got {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + ICMP echo request, 10.0.0.1 -> 10.0.0.2.
    static ICMP: [u8; 42] = [
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // Ethernet
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
        8, 0, 0, 0, 0, 1, 0, 1, // ICMP echo
    ];

    /// An Ethernet + IPv4 + UDP datagram, 10.0.0.1:5000 -> 10.0.0.3:4789.
    static UDP: [u8; 42] = [
        0x02, 0, 0, 0, 0, 3, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // Ethernet
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 3, // IPv4
        0x13, 0x88, 0x12, 0xb5, 0, 8, 0, 0, // UDP
    ];

    /// An ARP request: who has 10.0.0.2, tell 10.0.0.1.
    static ARP: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06, // Ethernet
        0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];

    /// An Ethernet + IPv6 + hop-by-hop options + TCP SYN, [fd00::1]:40000 -> [fd00::2]:443.
    fn tcp6() -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&28u16.to_be_bytes());
        ip[6] = 0; // hop-by-hop options first
        ip[7] = 64;
        ip[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        ip[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // -> TCP, 8 bytes of padding
        frame.extend_from_slice(&40000u16.to_be_bytes());
        frame.extend_from_slice(&443u16.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 1, 0, 0, 0, 0, 0]);
        frame
    }

    #[test]
    fn ipv6_is_ip6_and_tcp_and_udp_are_both_families() {
        let frame = tcp6();
        assert!(matches("ip6", &frame) && !matches("ip", &frame));
        assert!(matches("tcp", &frame) && matches("ip6 and tcp port 443", &frame));
        assert!(matches("src host fd00::1", &frame) && !matches("dst host fd00::1", &frame));
        assert!(matches("dst port 443 and src port 40000", &frame));
        assert!(!matches("icmp6", &frame) && !matches("host 10.0.0.1", &frame));
        assert!(!matches("ip6", &ICMP) && matches("ip", &ICMP));
        // A later fragment has no ports.
        let mut fragment = frame.clone();
        fragment[14 + 6] = 44;
        fragment[54..62].copy_from_slice(&[6, 0, 0x05, 0x00, 0, 0, 0, 1]); // offset 160
        assert!(matches("tcp", &fragment) && !matches("port 443", &fragment));
        for len in 0..frame.len() {
            let _ = matches("ip6 or port 443 or host fd00::2", &frame[..len]);
        }
        let filter = Filter::parse("icmp6 or host fd00::2").unwrap().unwrap();
        assert_eq!(Filter::parse(&filter.to_string()).unwrap().unwrap(), filter);
    }

    fn matches(filter: &str, frame: &[u8]) -> bool {
        Filter::parse(filter)
            .expect("valid filter")
            .expect("not empty")
            .matches(frame)
    }

    #[test]
    fn protocols() {
        assert!(matches("icmp", &ICMP) && !matches("icmp", &UDP) && !matches("icmp", &ARP));
        assert!(matches("udp", &UDP) && !matches("tcp", &UDP));
        assert!(matches("arp", &ARP) && !matches("ip", &ARP) && matches("ip", &ICMP));
    }

    #[test]
    fn hosts_and_ports() {
        assert!(matches("host 10.0.0.2", &ICMP));
        assert!(matches("dst host 10.0.0.2", &ICMP) && !matches("src host 10.0.0.2", &ICMP));
        assert!(matches("host 10.0.0.2", &ARP), "ARP's target address");
        assert!(matches("port 4789", &UDP) && matches("src port 5000", &UDP));
        assert!(!matches("dst port 5000", &UDP) && !matches("port 4789", &ICMP));
    }

    #[test]
    fn combinations() {
        assert!(matches("icmp and host 10.0.0.1", &ICMP));
        assert!(matches("icmp host 10.0.0.1", &ICMP), "juxtaposition is and");
        assert!(!matches("icmp and not host 10.0.0.1", &ICMP));
        assert!(matches("arp or (udp && port 4789)", &UDP));
        assert!(matches("! tcp", &UDP) && matches("not (tcp or icmp)", &ARP));
        assert!(
            matches("icmp or udp and port 1", &ICMP),
            "and binds tighter than or"
        );
    }

    #[test]
    fn empty_is_everything() {
        assert_eq!(Filter::parse("  ").unwrap(), None);
    }

    #[test]
    fn truncated_frames_do_not_match_and_do_not_panic() {
        for len in 0..ICMP.len() {
            assert!(!matches("port 1", &ICMP[..len]));
            let _ = matches("icmp or arp or host 10.0.0.1", &ICMP[..len]);
            let _ = matches("arp or host 10.0.0.1", &ARP[..len]);
        }
    }

    #[test]
    fn errors_name_the_word() {
        let error = Filter::parse("icmp and hots 10.0.0.1").unwrap_err();
        assert_eq!(error.position, 3, "{error}");
        assert!(
            error.to_string().contains("unknown word \"hots\""),
            "{error}"
        );
        let error = Filter::parse("host 10.0.0.300").unwrap_err();
        assert_eq!(error.position, 2, "{error}");
        assert!(Filter::parse("port 70000").is_err());
        assert!(
            Filter::parse("(icmp")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(Filter::parse("icmp and").is_err());
        assert!(Filter::parse("icmp )").is_err());
        assert!(Filter::parse(&"not ".repeat(100)).is_err());
    }

    #[test]
    fn display_round_trips() {
        let filter = Filter::parse("icmp and not (src host 10.0.0.1 or dst port 53)")
            .unwrap()
            .unwrap();
        let again = Filter::parse(&filter.to_string()).unwrap().unwrap();
        assert_eq!(filter, again);
    }
}
