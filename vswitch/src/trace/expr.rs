//! The packet tracer's two small languages, in tcpdump's words:
//!
//! - a packet to synthesise: `tcp 172.30.0.2:40000 > 172.30.0.3:80 flags S`,
//!   `udp A:p > B:q`, `icmp A > B` (an echo request), `arp who-has B tell A`; TCP, UDP and
//!   ICMP take an optional `ttl N` at the end (64 by default). Over IPv6 the addresses are
//!   IPv6, in brackets before a port (`tcp [fd00::2]:40000 > [fd00:9::2]:80`); `icmp A > B`
//!   (or `icmp6`) is then an ICMPv6 echo request and `ttl` the hop limit;
//! - a filter for live traces: terms joined by `and`: a protocol (`tcp`, `udp`, `icmp`,
//!   `icmp6`, `arp`, `ip`, `ip6`), `host A`, `src host A`, `dst host A` (either family),
//!   `port N`, `src port N`, `dst port N`.
//!
//! Errors say which word was wrong and what was expected there.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::wire::VNET_HDR_LEN;

/// A packet to synthesise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketSpec {
    /// A TCP segment with these flags (`SYN` when none is given).
    Tcp {
        /// Source address and port.
        src: (IpAddr, u16),
        /// Destination address and port (of the source's family).
        dst: (IpAddr, u16),
        /// The flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20).
        flags: u8,
        /// IPv4 TTL or IPv6 hop limit.
        ttl: u8,
    },
    /// A UDP datagram.
    Udp {
        /// Source address and port.
        src: (IpAddr, u16),
        /// Destination address and port (of the source's family).
        dst: (IpAddr, u16),
        /// IPv4 TTL or IPv6 hop limit.
        ttl: u8,
    },
    /// An echo request: ICMP, or ICMPv6 between IPv6 addresses.
    Icmp {
        /// Source address.
        src: IpAddr,
        /// Destination address (of the source's family).
        dst: IpAddr,
        /// IPv4 TTL or IPv6 hop limit.
        ttl: u8,
    },
    /// An ARP request: who has `target`, tell `sender`.
    Arp {
        /// The address asked for.
        target: Ipv4Addr,
        /// The asking address.
        sender: Ipv4Addr,
    },
}

impl PacketSpec {
    /// The source address.
    pub fn src(&self) -> IpAddr {
        match *self {
            PacketSpec::Tcp { src, .. } | PacketSpec::Udp { src, .. } => src.0,
            PacketSpec::Icmp { src, .. } => src,
            PacketSpec::Arp { sender, .. } => IpAddr::V4(sender),
        }
    }

    /// The destination address (the ARP target).
    pub fn dst(&self) -> IpAddr {
        match *self {
            PacketSpec::Tcp { dst, .. } | PacketSpec::Udp { dst, .. } => dst.0,
            PacketSpec::Icmp { dst, .. } => dst,
            PacketSpec::Arp { target, .. } => IpAddr::V4(target),
        }
    }
}

/// Default TTL of a synthetic packet (Linux's `ip_default_ttl`).
const DEFAULT_TTL: u8 = 64;

/// A word that is not what the grammar expects there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(String);

fn error(message: impl Into<String>) -> ExprError {
    ExprError(message.into())
}

fn address4(word: Option<&str>, what: &str) -> Result<Ipv4Addr, ExprError> {
    let word = word.ok_or_else(|| error(format!("{what} is missing")))?;
    word.parse()
        .map_err(|_| error(format!("{what} {word:?} is not an IPv4 address")))
}

fn address(word: Option<&str>, what: &str) -> Result<IpAddr, ExprError> {
    let word = word.ok_or_else(|| error(format!("{what} is missing")))?;
    word.parse()
        .map_err(|_| error(format!("{what} {word:?} is not an IPv4 or IPv6 address")))
}

/// `A.B.C.D:PORT` or `[X:X::X]:PORT`.
fn endpoint(word: Option<&str>, what: &str) -> Result<(IpAddr, u16), ExprError> {
    let word = word.ok_or_else(|| error(format!("{what} (ADDRESS:PORT) is missing")))?;
    let (addr, port) = word
        .rsplit_once(':')
        .ok_or_else(|| error(format!("{what} {word:?} is not ADDRESS:PORT")))?;
    let port = port.parse().map_err(|_| {
        error(format!(
            "{what} port {port:?} is not a number from 0 to 65535"
        ))
    })?;
    let addr = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(
            v6.parse()
                .map_err(|_| error(format!("{what} {word:?}: {v6:?} is not an IPv6 address")))?,
        ),
        None if addr.contains(':') => {
            return Err(error(format!(
                "{what} {word:?}: write an IPv6 address in brackets before its port, [X:X::X]:PORT"
            )));
        }
        None => IpAddr::V4(address4(Some(addr), what)?),
    };
    Ok((addr, port))
}

/// Refuses a source and a destination of different families.
fn same_family(src: IpAddr, dst: IpAddr) -> Result<(), ExprError> {
    if src.is_ipv4() == dst.is_ipv4() {
        return Ok(());
    }
    let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    Err(error(format!(
        "the source {src} is {} but the destination {dst} is {}; use one family",
        family(src),
        family(dst)
    )))
}

fn expect(word: Option<&str>, wanted: &str, after: &str) -> Result<(), ExprError> {
    match word {
        Some(word) if word == wanted => Ok(()),
        Some(word) => Err(error(format!(
            "expected {wanted:?} after {after}, not {word:?}"
        ))),
        None => Err(error(format!("expected {wanted:?} after {after}"))),
    }
}

/// `S`, `SA`, `S.`, `[S.]`, `FA`, `R`, ... (tcpdump's letters; `.` and `A` are ACK).
fn tcp_flags(word: &str) -> Result<u8, ExprError> {
    let letters = word.trim_start_matches('[').trim_end_matches(']');
    if letters.is_empty() {
        return Err(error(
            "TCP flags are empty (write letters among S, A or ., F, R, P, U)",
        ));
    }
    letters.chars().try_fold(0u8, |flags, letter| {
        let bit = match letter.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' | '.' => 0x10,
            'U' => 0x20,
            _ => {
                return Err(error(format!(
                    "TCP flag {letter:?} in {word:?} is unknown (S, A or ., F, R, P, U)"
                )));
            }
        };
        Ok(flags | bit)
    })
}

/// Parses a packet to synthesise (see the module doc).
///
/// # Errors
/// The first word that does not fit, with what was expected.
pub fn parse_packet(text: &str) -> Result<PacketSpec, ExprError> {
    let mut words = text.split_whitespace();
    let protocol = words
        .next()
        .ok_or_else(|| error("the packet is empty (start with tcp, udp, icmp or arp)"))?;
    let spec = match protocol {
        "tcp" | "udp" => {
            let src = endpoint(words.next(), "the source")?;
            expect(words.next(), ">", "the source")?;
            let dst = endpoint(words.next(), "the destination")?;
            same_family(src.0, dst.0)?;
            let mut flags = None;
            let mut ttl = DEFAULT_TTL;
            while let Some(word) = words.next() {
                match word {
                    "flags" if protocol == "tcp" => {
                        let value = words.next().ok_or_else(|| error("flags needs a value"))?;
                        flags = Some(tcp_flags(value)?);
                    }
                    "ttl" => ttl = self::ttl(words.next())?,
                    other => {
                        let allowed = if protocol == "tcp" {
                            "flags or ttl"
                        } else {
                            "ttl"
                        };
                        return Err(error(format!(
                            "unexpected {other:?} after the destination (expected {allowed})"
                        )));
                    }
                }
            }
            if protocol == "tcp" {
                PacketSpec::Tcp {
                    src,
                    dst,
                    flags: flags.unwrap_or(0x02),
                    ttl,
                }
            } else {
                PacketSpec::Udp { src, dst, ttl }
            }
        }
        "icmp" | "icmp6" => {
            let src = address(words.next(), "the source")?;
            expect(words.next(), ">", "the source")?;
            let dst = address(words.next(), "the destination")?;
            same_family(src, dst)?;
            if protocol == "icmp6" && src.is_ipv4() {
                return Err(error(format!(
                    "icmp6 is between IPv6 addresses; {src} is IPv4 (write icmp)"
                )));
            }
            let ttl = match words.next() {
                None => DEFAULT_TTL,
                Some("ttl") => ttl(words.next())?,
                Some(other) => {
                    return Err(error(format!(
                        "unexpected {other:?} after the destination (expected ttl)"
                    )));
                }
            };
            PacketSpec::Icmp { src, dst, ttl }
        }
        "arp" => {
            expect(words.next(), "who-has", "arp")?;
            let target = address4(words.next(), "the address asked for")?;
            expect(words.next(), "tell", "the address asked for")?;
            let sender = address4(words.next(), "the asking address")?;
            PacketSpec::Arp { target, sender }
        }
        other => {
            return Err(error(format!(
                "unknown protocol {other:?} (tcp, udp, icmp, icmp6 or arp)"
            )));
        }
    };
    if let Some(extra) = words.next() {
        return Err(error(format!("unexpected {extra:?} at the end")));
    }
    Ok(spec)
}

fn ttl(word: Option<&str>) -> Result<u8, ExprError> {
    let word = word.ok_or_else(|| error("ttl needs a value"))?;
    word.parse()
        .map_err(|_| error(format!("ttl {word:?} is not a number from 0 to 255")))
}

/// One term of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Arp,
    Ip,
    Ip6,
    Host(IpAddr),
    SrcHost(IpAddr),
    DstHost(IpAddr),
    Port(u16),
    SrcPort(u16),
    DstPort(u16),
}

/// A filter for live traces: every term must match (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

/// What a filter looks at, read once from a frame.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    arp: bool,
    ipv4: bool,
    ipv6: bool,
    protocol: Option<IpProtocol>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    ports: Option<(u16, u16)>,
}

impl Filter {
    /// Parses a filter.
    ///
    /// # Errors
    /// The first word that does not fit, with what was expected.
    pub fn parse(text: &str) -> Result<Filter, ExprError> {
        let mut terms = Vec::new();
        let mut words = text.split_whitespace().peekable();
        if words.peek().is_none() {
            return Err(error(
                "the filter is empty (e.g. icmp, tcp and host 172.30.0.3, udp and dst port 53)",
            ));
        }
        loop {
            let word = words
                .next()
                .ok_or_else(|| error("a term is missing after \"and\""))?;
            let term = match word {
                "tcp" => Term::Tcp,
                "udp" => Term::Udp,
                "icmp" => Term::Icmp,
                "icmp6" => Term::Icmp6,
                "arp" => Term::Arp,
                "ip" => Term::Ip,
                "ip6" => Term::Ip6,
                "host" => Term::Host(address(words.next(), "host")?),
                "port" => Term::Port(port(words.next(), "port")?),
                "src" | "dst" => {
                    let what = words.next();
                    let src = word == "src";
                    match what {
                        Some("host") => {
                            let addr = address(words.next(), word)?;
                            if src {
                                Term::SrcHost(addr)
                            } else {
                                Term::DstHost(addr)
                            }
                        }
                        Some("port") => {
                            let number = port(words.next(), word)?;
                            if src {
                                Term::SrcPort(number)
                            } else {
                                Term::DstPort(number)
                            }
                        }
                        other => {
                            let addr = address(other, word).map_err(|_| {
                                error(format!(
                                    "expected host, port or an address after {word:?}, not {:?}",
                                    other.unwrap_or("nothing")
                                ))
                            })?;
                            if src {
                                Term::SrcHost(addr)
                            } else {
                                Term::DstHost(addr)
                            }
                        }
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown term {other:?} (tcp, udp, icmp, icmp6, arp, ip, ip6, host A, src host A, dst host A, port N, src port N, dst port N, joined by and)"
                    )));
                }
            };
            terms.push(term);
            match words.next() {
                None => break,
                Some("and") => {}
                Some(other) => {
                    return Err(error(format!(
                        "expected \"and\" between terms, not {other:?}"
                    )));
                }
            }
        }
        let icmp = terms.contains(&Term::Icmp);
        let host6 = terms.iter().any(|term| {
            matches!(term, Term::Host(a) | Term::SrcHost(a) | Term::DstHost(a) if a.is_ipv6())
        });
        if icmp && host6 {
            return Err(error(
                "icmp matches ICMPv4 only (as tcpdump's); with an IPv6 host write icmp6",
            ));
        }
        Ok(Filter { terms })
    }

    /// True when `frame` (`virtio_net_hdr` then Ethernet) matches every term. Reads headers
    /// only; never allocates or panics.
    pub fn matches(&self, frame: &[u8]) -> bool {
        let facts = facts(frame);
        self.terms.iter().all(|term| match *term {
            Term::Tcp => facts.protocol == Some(IpProtocol::Tcp),
            Term::Udp => facts.protocol == Some(IpProtocol::Udp),
            Term::Icmp => facts.protocol == Some(IpProtocol::Icmp),
            Term::Icmp6 => facts.protocol == Some(IpProtocol::Icmpv6),
            Term::Arp => facts.arp,
            Term::Ip => facts.ipv4,
            Term::Ip6 => facts.ipv6,
            Term::Host(addr) => facts.src == Some(addr) || facts.dst == Some(addr),
            Term::SrcHost(addr) => facts.src == Some(addr),
            Term::DstHost(addr) => facts.dst == Some(addr),
            Term::Port(number) => facts
                .ports
                .is_some_and(|(src, dst)| src == number || dst == number),
            Term::SrcPort(number) => facts.ports.is_some_and(|(src, _)| src == number),
            Term::DstPort(number) => facts.ports.is_some_and(|(_, dst)| dst == number),
        })
    }
}

fn port(word: Option<&str>, what: &str) -> Result<u16, ExprError> {
    let word = word.ok_or_else(|| error(format!("{what} needs a port number")))?;
    word.parse()
        .map_err(|_| error(format!("{what} {word:?} is not a number from 0 to 65535")))
}

fn facts(frame: &[u8]) -> Facts {
    let mut facts = Facts::default();
    let Some(Ok(ethernet)) = frame.get(VNET_HDR_LEN..).map(EthernetFrame::new_checked) else {
        return facts;
    };
    match ethernet.ethertype() {
        EthernetProtocol::Arp => {
            facts.arp = true;
            if let Ok(arp) = ArpPacket::new_checked(ethernet.payload()) {
                let ip = |bytes: &[u8]| {
                    <[u8; 4]>::try_from(bytes)
                        .ok()
                        .map(|octets| IpAddr::V4(Ipv4Addr::from(octets)))
                };
                facts.src = ip(arp.source_protocol_addr());
                facts.dst = ip(arp.target_protocol_addr());
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(ethernet.payload()) else {
                return facts;
            };
            facts.ipv4 = true;
            facts.protocol = Some(ip.next_header());
            facts.src = Some(ip.src_addr().into());
            facts.dst = Some(ip.dst_addr().into());
            if ip.frag_offset() == 0 {
                facts.ports = match ip.next_header() {
                    IpProtocol::Tcp => TcpPacket::new_checked(ip.payload())
                        .ok()
                        .map(|tcp| (tcp.src_port(), tcp.dst_port())),
                    IpProtocol::Udp => UdpPacket::new_checked(ip.payload())
                        .ok()
                        .map(|udp| (udp.src_port(), udp.dst_port())),
                    _ => None,
                };
            }
        }
        EthernetProtocol::Ipv6 => {
            let packet = ethernet.payload();
            let Ok(info) = crate::wire::ipv6::parse(packet) else {
                return facts;
            };
            facts.ipv6 = true;
            facts.protocol = Some(IpProtocol::from(info.next_header));
            facts.src = Some(info.src.into());
            facts.dst = Some(info.dst.into());
            let first = info.fragment.is_none_or(|fragment| fragment.offset == 0);
            let l4 = packet
                .get(info.l4_offset..info.packet_len)
                .unwrap_or_default();
            if first {
                facts.ports = match info.next_header {
                    6 => TcpPacket::new_checked(l4)
                        .ok()
                        .map(|tcp| (tcp.src_port(), tcp.dst_port())),
                    17 => UdpPacket::new_checked(l4)
                        .ok()
                        .map(|udp| (udp.src_port(), udp.dst_port())),
                    _ => None,
                };
            }
        }
        _ => {}
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;

    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
    const IA: IpAddr = IpAddr::V4(A);
    const IB: IpAddr = IpAddr::V4(B);

    #[test]
    fn packets_in_tcpdump_words() {
        assert_eq!(
            parse_packet("tcp 172.30.0.2:40000 > 172.30.0.3:80 flags S"),
            Ok(PacketSpec::Tcp {
                src: (IA, 40000),
                dst: (IB, 80),
                flags: 0x02,
                ttl: 64
            })
        );
        assert_eq!(
            parse_packet("tcp 172.30.0.2:1 > 172.30.0.3:2 flags [S.] ttl 1"),
            Ok(PacketSpec::Tcp {
                src: (IA, 1),
                dst: (IB, 2),
                flags: 0x12,
                ttl: 1
            })
        );
        assert_eq!(
            parse_packet("udp 172.30.0.2:5000 > 172.30.0.3:53"),
            Ok(PacketSpec::Udp {
                src: (IA, 5000),
                dst: (IB, 53),
                ttl: 64
            })
        );
        assert_eq!(
            parse_packet("icmp 172.30.0.2 > 172.30.0.3"),
            Ok(PacketSpec::Icmp {
                src: IA,
                dst: IB,
                ttl: 64
            })
        );
        assert_eq!(
            parse_packet("arp who-has 172.30.0.3 tell 172.30.0.2"),
            Ok(PacketSpec::Arp {
                target: B,
                sender: A
            })
        );
    }

    #[test]
    fn bad_packets_name_the_word() {
        for (text, said) in [
            ("", "empty"),
            ("sctp 1.2.3.4:1 > 1.2.3.4:2", "\"sctp\""),
            ("tcp 1.2.3.4 > 1.2.3.4:2", "ADDRESS:PORT"),
            ("tcp 1.2.3.4:99999 > 1.2.3.4:2", "\"99999\""),
            ("tcp 1.2.3.4:1 to 1.2.3.4:2", "\">\""),
            ("tcp 1.2.3.4:1 > 1.2.3.4:2 flags X", "'X'"),
            ("udp 1.2.3.4:1 > 1.2.3.4:2 flags S", "\"flags\""),
            ("icmp 1.2.3 > 1.2.3.4", "\"1.2.3\""),
            ("arp who-has 1.2.3.4", "\"tell\""),
            ("icmp 1.2.3.4 > 1.2.3.5 ttl 300", "\"300\""),
        ] {
            let message = parse_packet(text).expect_err(text).to_string();
            assert!(message.contains(said), "{text:?}: {message}");
        }
    }

    #[test]
    fn ipv6_packets_and_filters() {
        let a: IpAddr = "fd00::a".parse().unwrap();
        let b: IpAddr = "fd00:9::d".parse().unwrap();
        assert_eq!(
            parse_packet("tcp [fd00::a]:40000 > [fd00:9::d]:80 flags S ttl 3"),
            Ok(PacketSpec::Tcp {
                src: (a, 40000),
                dst: (b, 80),
                flags: 0x02,
                ttl: 3
            })
        );
        let echo = PacketSpec::Icmp {
            src: a,
            dst: b,
            ttl: 64,
        };
        assert_eq!(parse_packet("icmp fd00::a > fd00:9::d"), Ok(echo.clone()));
        assert_eq!(parse_packet("icmp6 fd00::a > fd00:9::d"), Ok(echo.clone()));
        for (text, said) in [
            (
                "tcp fd00::a:1 > [fd00:9::d]:80",
                "write an IPv6 address in brackets before its port",
            ),
            (
                "udp [fd00::a]:1 > 10.9.0.2:53",
                "the source fd00::a is IPv6 but the destination 10.9.0.2 is IPv4",
            ),
            (
                "icmp6 172.30.0.2 > 172.30.0.3",
                "icmp6 is between IPv6 addresses",
            ),
            (
                "tcp [fd00::zz]:1 > [fd00::1]:2",
                "\"fd00::zz\" is not an IPv6 address",
            ),
        ] {
            let message = parse_packet(text).expect_err(text).to_string();
            assert!(message.contains(said), "{text:?}: {message}");
        }
        let frame = super::super::build::frame(&echo, MAC_A, MAC_B);
        for (filter, wanted) in [
            ("ip6", true),
            ("ip", false),
            ("icmp6 and host fd00:9::d", true),
            ("icmp", false),
            ("src host fd00::a and dst fd00:9::d", true),
            ("dst host fd00::a", false),
        ] {
            let parsed = Filter::parse(filter).expect(filter);
            assert_eq!(parsed.matches(&frame), wanted, "{filter}");
        }
        let tcp = super::super::build::frame(
            &parse_packet("tcp [fd00::a]:40000 > [fd00:9::d]:80").unwrap(),
            MAC_A,
            MAC_B,
        );
        let mixed = Filter::parse("icmp and host fd00:9::d").expect_err("icmp is ICMPv4");
        assert!(mixed.to_string().contains("write icmp6"), "{mixed}");
        let web = Filter::parse("tcp and ip6 and dst port 80").unwrap();
        assert!(web.matches(&tcp));
        assert!(!web.matches(&frame));
    }

    #[test]
    fn filters_match_headers() {
        let icmp = Filter::parse("icmp").expect("parses");
        assert!(icmp.matches(&ICMP_ECHO));
        assert!(!icmp.matches(&ARP_REQUEST));
        let arp = Filter::parse("arp and host 172.30.0.3").expect("parses");
        assert!(arp.matches(&ARP_REQUEST));
        let tcp = tcp_frame(MAC_A, MAC_B, (A, 40000), (B, 80), 0x02);
        let web = Filter::parse("tcp and dst host 172.30.0.3 and dst port 80").expect("parses");
        assert!(web.matches(&tcp));
        assert!(!web.matches(&ICMP_ECHO));
        assert!(!Filter::parse("src port 80").expect("parses").matches(&tcp));
        assert!(
            Filter::parse("src 172.30.0.2 and port 40000")
                .expect("parses")
                .matches(&tcp)
        );
        assert!(
            !Filter::parse("udp")
                .expect("parses")
                .matches(&ICMP_ECHO[..20])
        );
    }

    #[test]
    fn bad_filters_name_the_word() {
        for (text, said) in [
            ("", "empty"),
            ("icmp or tcp", "\"or\""),
            ("host", "host"),
            ("port http", "\"http\""),
            ("tcp and", "missing"),
            ("src foo", "\"foo\""),
            ("vlan", "\"vlan\""),
        ] {
            let message = Filter::parse(text).expect_err(text).to_string();
            assert!(message.contains(said), "{text:?}: {message}");
        }
    }
}
