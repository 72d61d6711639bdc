//! NAT and connection tracking on arbitrary packets, as the datapath's `nat` stage drives
//! them: parse, look up, plan and create on a miss, translate. Checked on every packet:
//! - a packet that does not parse is not translated either, and stays untouched;
//! - a translated TCP/UDP packet parses again and carries the connection's target tuple;
//! - a connection just created is found by its reply, in the reply direction, and the
//!   reply's translation gives back the original tuple reversed (unless the flow goes to
//!   itself: then the reply is the very same tuple);
//! - the table never holds more than its limit.
//!
//! At the end, once every timeout has passed, a sweep empties the table and frees every
//! masquerade port.
//!
//! Input: records of `[control][length][length bytes of IPv4 or IPv6 packet]`. Control bits: 0 the
//! packet comes from the outside (else from interface `bits 6-7` of Network 1), 1-3 the
//! clock advances by that many 7-second steps first, 4 a sweep first, 5 partial (offloaded)
//! checksums.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use nat::{
    Attachments, ChecksumMode, Conntrack, ConntrackConfig, Direction, Endpoint, FlowKey,
    Gateway, InterfaceId, NatRules, PacketInfo, PacketKind, Protocol, TcpFlags, Zone,
    rules::{Egress, PortForward, VirtualIp},
    translate,
};

/// The inside Network: 172.30.0.0/16 and fd00:30::/32.
const INSIDE: Zone = Zone(1);
/// The uplink's masquerade and port-forward address.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The uplink's IPv6 masquerade and port-forward address.
const PUBLIC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// A VirtualIP for 172.30.0.9.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// A small table, so that eviction and refusal are reached.
const MAX_ENTRIES: usize = 24;

fn rules() -> NatRules {
    let mut rules = NatRules::new();
    let mut gateway = Gateway::new(vec![PUBLIC.into(), PUBLIC6.into()]);
    // 8 blocks of 4 ports: both an interface's quota and the whole range run out.
    gateway.ports_per_interface = 4;
    gateway.blocks_per_interface = 2;
    gateway.port_range = 20_000..=20_031;
    rules.add_gateway(INSIDE, gateway).expect("gateway");
    for (protocol, port, host, target_port) in [
        (Protocol::Tcp, 8080, 5, 80),
        (Protocol::Udp, 8053, 6, 53),
    ] {
        let targets = [
            (IpAddr::V4(PUBLIC), IpAddr::V4(Ipv4Addr::new(172, 30, 0, host))),
            (
                IpAddr::V6(PUBLIC6),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, u16::from(host))),
            ),
        ];
        for (address, addr) in targets {
            rules
                .add_port_forward(PortForward {
                    address,
                    protocol,
                    port,
                    zone: INSIDE,
                    target: Endpoint {
                        addr,
                        port: target_port,
                    },
                })
                .expect("forward");
        }
    }
    rules
        .add_virtual_ip(VirtualIp {
            public: VIP.into(),
            zone: INSIDE,
            private: Ipv4Addr::new(172, 30, 0, 9).into(),
        })
        .expect("virtual ip");
    rules
}

/// The routing stage: 172.30.0.0/16 is the inside Network, everything else the uplink.
fn route(key: &FlowKey) -> Egress {
    match key.tuple.dst {
        IpAddr::V4(dst) if dst.octets()[..2] == [172, 30] => Egress::Zone(INSIDE),
        IpAddr::V6(dst) if dst.segments()[..2] == [0xfd00, 0x30] => Egress::Zone(INSIDE),
        _ => Egress::External,
    }
}

fuzz_target!(|data: &[u8]| {
    let rules = rules();
    let ct = Conntrack::new(ConntrackConfig {
        max_entries: MAX_ENTRIES,
        ..ConntrackConfig::default()
    });
    let mut now = 0u64;
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let control = *control;
        now += u64::from((control >> 1) & 7) * 7_000;
        if control & 0x10 != 0 {
            let report = ct.sweep(now, 16);
            assert!(report.scanned <= 16);
        }
        let zone = if control & 1 != 0 { Zone::EXTERNAL } else { INSIDE };
        let interface = InterfaceId(u32::from(control >> 6));
        let mode = if control & 0x20 != 0 {
            ChecksumMode::Partial
        } else {
            ChecksumMode::Full
        };
        packet(&ct, &rules, zone, interface, bytes, mode, now);
        assert!(ct.len() <= MAX_ENTRIES);
    }
    ct.sweep(now + 6 * 24 * 3600 * 1000, usize::MAX);
    assert!(ct.is_empty(), "{} connections outlived every timeout", ct.len());
    assert_eq!(ct.stats().nat_mappings, 0);
    assert!(ct.nat_usage().is_empty());
});

fn packet(
    ct: &Conntrack,
    rules: &NatRules,
    zone: Zone,
    interface: InterfaceId,
    bytes: &[u8],
    mode: ChecksumMode,
    now: u64,
) {
    let info = match nat::parse(std::hint::black_box(bytes)) {
        Ok(info) => info,
        Err(error) => {
            assert!(!error.key().is_empty());
            let mut copy = bytes.to_vec();
            let any = nat::Tuple {
                protocol: Protocol::Udp,
                src: IpAddr::V4(PUBLIC),
                dst: IpAddr::V4(VIP),
                src_port: 1,
                dst_port: 2,
            };
            assert!(translate(&mut copy, &any, mode).is_err());
            assert_eq!(copy, bytes, "a refused packet is left untouched");
            return;
        }
    };
    let tracked = match ct.lookup(zone, &info, now) {
        Some(tracked) => tracked,
        None if info.kind == PacketKind::IcmpError => return,
        None => {
            let Ok(plan) = rules.plan(&FlowKey::new(zone, info.tuple), interface, route) else {
                return;
            };
            match ct.create(zone, &info, &plan, Attachments::default(), now) {
                Ok(tracked) => tracked,
                Err(error) => {
                    assert!(!error.key().is_empty());
                    return;
                }
            }
        }
    };
    if let Some(target) = tracked.target {
        let mut copy = bytes.to_vec();
        if translate(&mut copy, &target, mode).is_ok() && info.kind != PacketKind::IcmpError {
            let after = nat::parse(&copy).expect("a translated packet parses");
            assert_eq!(after.tuple, target);
        }
    }
    // The reply of a connection just created finds it and is translated back.
    let reply_kind = match info.kind {
        PacketKind::Udp => PacketKind::Udp,
        PacketKind::Tcp(flags) if flags == TcpFlags::SYN => PacketKind::Tcp(TcpFlags::SYN_ACK),
        _ => return,
    };
    if !tracked.new {
        return;
    }
    let sent = tracked.target.unwrap_or(info.tuple);
    if sent.reversed() == info.tuple {
        // A flow to itself (same address and port at both ends): its reply is the same
        // tuple, which conntrack, like the kernel's, can only read as the original direction.
        return;
    }
    let reply = PacketInfo {
        tuple: sent.reversed(),
        kind: reply_kind,
    };
    let back = ct
        .lookup(tracked.egress_zone, &reply, now)
        .expect("the reply finds the connection just created");
    assert_eq!(back.direction, Direction::Reply);
    assert_eq!(back.target.unwrap_or(reply.tuple), info.tuple.reversed());
}
