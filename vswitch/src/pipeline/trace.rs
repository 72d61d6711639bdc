//! The packet tracer's recorder: what each stage decided for one frame, written by the stages
//! themselves (VPP's per-buffer trace, Open vSwitch's `ofproto/trace`).
//!
//! A traced frame runs with `Context::trace` set to a [`Trace`]; every stage notes its
//! decision with `trace_note!`, which formats nothing unless the frame is traced, so the fast
//! path pays one branch on a `None` per note.
//!
//! A trace is either live (a real frame: the stages do what they always do, and only record)
//! or a dry run (a synthetic frame the switch never sends). A dry run leaves every shared
//! table as it found it: learning only says what it would learn, neighbour resolution and
//! conntrack lookups peek, and a new connection is created in a scratch conntrack table of
//! the trace's own (its NAT port is therefore not reserved, and may differ from the one a
//! real packet would get). The worker's own state (frames generated, held packets, event
//! tallies) is a scratch [`Local`](super::Local) of the caller's.

use core::cell::{OnceCell, RefCell};
use core::fmt;

use serde::{Deserialize, Serialize};

/// The steps a trace names, in about the order a frame meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The frame as parsed: L2, L3 and L4 summary.
    Parse,
    /// The port's allowed source MAC and addresses.
    PortSecurity,
    /// Learning the source MAC, and the FDB lookup of the destination.
    L2,
    /// ARP answered, consumed or switched.
    Arp,
    /// The switch's DHCP server: the message answered, or why it was dropped.
    Dhcp,
    /// The longest-prefix match in the Network: prefix, next hop, egress subnet.
    Route,
    /// TTL and MTU checks, fragmentation, ICMP errors the switch sends.
    L3,
    /// The next hop's MAC: a neighbour entry, or a miss (ARP).
    Neighbor,
    /// A LoadBalancer: VIP, Maglev slot, backend.
    Lb,
    /// NAT: the rule, an existing connection or a new translation.
    Nat,
    /// Connection tracking.
    Conntrack,
    /// NetworkPolicies: who is isolated, which rule allowed.
    Policy,
    /// A frame received on the uplink, or sent out of it.
    Uplink,
    /// A datagram received from the overlay.
    VxlanInput,
    /// Encapsulation into the overlay: VNI, remote VTEPs.
    VxlanEncap,
    /// The egress port and the frame as it leaves.
    Egress,
    /// Frames the switch sends of its own because of this one (ARP requests, ICMP).
    Generated,
}

impl Step {
    /// The step's name as printed: `parse`, `port_security`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Step::Parse => "parse",
            Step::PortSecurity => "port_security",
            Step::L2 => "l2",
            Step::Arp => "arp",
            Step::Dhcp => "dhcp",
            Step::Route => "route",
            Step::L3 => "l3",
            Step::Neighbor => "neighbor",
            Step::Lb => "lb",
            Step::Nat => "nat",
            Step::Conntrack => "conntrack",
            Step::Policy => "policy",
            Step::Uplink => "uplink",
            Step::VxlanInput => "vxlan_input",
            Step::VxlanEncap => "vxlan_encap",
            Step::Egress => "egress",
            Step::Generated => "generated",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stage's note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// The stage.
    pub stage: Step,
    /// What it decided, with the table entries it used.
    pub detail: String,
}

/// The recorder of one traced frame. Lives on the stack of whoever traces (the API thread for
/// a synthetic frame, a worker for a live one); never shared between threads.
#[derive(Debug)]
pub struct Trace {
    dry_run: bool,
    steps: RefCell<Vec<TraceStep>>,
    scratch: OnceCell<::nat::Conntrack>,
}

impl Trace {
    /// A recorder for a real frame: the stages act as always and record.
    pub fn live() -> Trace {
        Trace::new(false)
    }

    /// A recorder for a synthetic frame: the stages record and change no shared table.
    pub fn dry_run() -> Trace {
        Trace::new(true)
    }

    fn new(dry_run: bool) -> Trace {
        Trace {
            dry_run,
            steps: RefCell::new(Vec::with_capacity(16)),
            scratch: OnceCell::new(),
        }
    }

    /// Whether the stages must leave the shared tables alone.
    #[inline]
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Records what `stage` decided.
    pub fn note(&self, stage: Step, detail: fmt::Arguments<'_>) {
        self.steps.borrow_mut().push(TraceStep {
            stage,
            detail: detail.to_string(),
        });
    }

    /// The conntrack table a dry run creates its connections in: empty at first, with the
    /// configuration of `real`.
    pub fn scratch_conntrack(&self, real: &::nat::Conntrack) -> &::nat::Conntrack {
        self.scratch
            .get_or_init(|| ::nat::Conntrack::new(*real.config()))
    }

    /// The steps recorded so far.
    pub fn steps(&self) -> Vec<TraceStep> {
        self.steps.borrow().clone()
    }

    /// The steps recorded.
    pub fn into_steps(self) -> Vec<TraceStep> {
        self.steps.into_inner()
    }
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`, formatted only when printed.
#[derive(Debug, Clone, Copy)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One line about a frame (`virtio_net_hdr` then Ethernet), as tcpdump would put it: MACs,
/// then ARP, or IPv4 addresses, protocol, ports or ICMP type, TCP flags, TTL and length.
/// Never panics: what cannot be read is said so.
pub fn describe_frame(frame: &[u8]) -> String {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpProtocol,
        Ipv4Packet, TcpPacket, UdpPacket,
    };
    use std::fmt::Write;

    let Some(Ok(ethernet)) = frame
        .get(crate::wire::VNET_HDR_LEN..)
        .map(EthernetFrame::new_checked)
    else {
        return format!("{} bytes, too short for Ethernet", frame.len());
    };
    let mut line = format!(
        "{} > {}",
        Mac(ethernet.src_addr().0),
        Mac(ethernet.dst_addr().0)
    );
    match ethernet.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(ethernet.payload()) {
            Ok(arp) if arp.operation() == ArpOperation::Request => {
                let _ = write!(
                    line,
                    ", ARP who-has {} tell {}",
                    fmt_ip(arp.target_protocol_addr()),
                    fmt_ip(arp.source_protocol_addr())
                );
            }
            Ok(arp) => {
                let _ = write!(
                    line,
                    ", ARP reply {} is-at {}",
                    fmt_ip(arp.source_protocol_addr()),
                    fmt_mac(arp.source_hardware_addr())
                );
            }
            Err(_) => line.push_str(", ARP (truncated)"),
        },
        EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(ethernet.payload()) {
            Ok(ip) => {
                let (src, dst) = (ip.src_addr(), ip.dst_addr());
                let payload = ip.payload();
                match ip.next_header() {
                    IpProtocol::Tcp => match TcpPacket::new_checked(payload) {
                        Ok(tcp) => {
                            let flags = tcp_flags(&tcp);
                            let _ = write!(
                                line,
                                ", IPv4 {src}:{} > {dst}:{} TCP flags [{flags}]",
                                tcp.src_port(),
                                tcp.dst_port()
                            );
                        }
                        Err(_) => {
                            let _ = write!(line, ", IPv4 {src} > {dst} TCP (truncated)");
                        }
                    },
                    IpProtocol::Udp => match UdpPacket::new_checked(payload) {
                        Ok(udp) => {
                            let _ = write!(
                                line,
                                ", IPv4 {src}:{} > {dst}:{} UDP",
                                udp.src_port(),
                                udp.dst_port()
                            );
                        }
                        Err(_) => {
                            let _ = write!(line, ", IPv4 {src} > {dst} UDP (truncated)");
                        }
                    },
                    IpProtocol::Icmp => match Icmpv4Packet::new_checked(payload) {
                        Ok(icmp) => {
                            let _ = write!(
                                line,
                                ", IPv4 {src} > {dst} ICMP type {} code {}",
                                u8::from(icmp.msg_type()),
                                icmp.msg_code()
                            );
                        }
                        Err(_) => {
                            let _ = write!(line, ", IPv4 {src} > {dst} ICMP (truncated)");
                        }
                    },
                    other => {
                        let _ = write!(line, ", IPv4 {src} > {dst} protocol {other}");
                    }
                }
                let _ = write!(line, ", ttl {}, length {}", ip.hop_limit(), ip.total_len());
            }
            Err(_) => line.push_str(", IPv4 (truncated)"),
        },
        EthernetProtocol::Ipv6 => describe_ipv6(&mut line, ethernet.payload()),
        other => {
            let _ = write!(line, ", ethertype {other}");
        }
    }
    line
}

/// `, IPv6 SRC.PORT > DST.PORT TCP flags [S], hop limit 64, length 60` (tcpdump's dots
/// between an IPv6 address and its port), ICMPv6 with its type and code.
fn describe_ipv6(line: &mut String, packet: &[u8]) {
    use smoltcp::wire::{TcpPacket, UdpPacket};
    use std::fmt::Write;

    let info = match crate::wire::ipv6::parse(packet) {
        Ok(info) => info,
        Err(err) => {
            let _ = write!(line, ", IPv6 (malformed: {err})");
            return;
        }
    };
    let (src, dst) = (info.src, info.dst);
    let l4 = packet
        .get(info.l4_offset..info.packet_len)
        .unwrap_or_default();
    let later_fragment = info.fragment.is_some_and(|fragment| fragment.offset != 0);
    match info.next_header {
        6 if !later_fragment => match TcpPacket::new_checked(l4) {
            Ok(tcp) => {
                let flags = tcp_flags(&tcp);
                let _ = write!(
                    line,
                    ", IPv6 {src}.{} > {dst}.{} TCP flags [{flags}]",
                    tcp.src_port(),
                    tcp.dst_port()
                );
            }
            Err(_) => {
                let _ = write!(line, ", IPv6 {src} > {dst} TCP (truncated)");
            }
        },
        17 if !later_fragment => match UdpPacket::new_checked(l4) {
            Ok(udp) => {
                let _ = write!(
                    line,
                    ", IPv6 {src}.{} > {dst}.{} UDP",
                    udp.src_port(),
                    udp.dst_port()
                );
            }
            Err(_) => {
                let _ = write!(line, ", IPv6 {src} > {dst} UDP (truncated)");
            }
        },
        58 if !later_fragment && l4.len() >= 4 => {
            let _ = write!(
                line,
                ", IPv6 {src} > {dst} ICMPv6 type {} code {}",
                l4[0], l4[1]
            );
        }
        other => {
            let _ = write!(line, ", IPv6 {src} > {dst} next header {other}");
        }
    }
    let _ = write!(
        line,
        ", hop limit {}, length {}",
        info.hop_limit, info.packet_len
    );
}

/// tcpdump's flag letters: `S`, `S.`, `F.`, `R`, ...
fn tcp_flags(tcp: &smoltcp::wire::TcpPacket<&[u8]>) -> String {
    [
        (tcp.syn(), 'S'),
        (tcp.fin(), 'F'),
        (tcp.rst(), 'R'),
        (tcp.psh(), 'P'),
        (tcp.urg(), 'U'),
        (tcp.ack(), '.'),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, flag)| *flag)
    .collect()
}

fn fmt_ip(bytes: &[u8]) -> String {
    <[u8; 4]>::try_from(bytes).map_or_else(
        |_| "?".to_owned(),
        |octets| std::net::Ipv4Addr::from(octets).to_string(),
    )
}

fn fmt_mac(bytes: &[u8]) -> String {
    <[u8; 6]>::try_from(bytes).map_or_else(|_| "?".to_owned(), |mac| Mac(mac).to_string())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use smoltcp::wire::IpProtocol;

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::port::PortId;
    use crate::tables::snapshot::{Ingress, SubnetId};
    use crate::trace::{TraceRecord, run_synthetic};

    const BLUE: SubnetId = SubnetId(1);
    const RED: SubnetId = SubnetId(2);

    fn ingress(bench: &Bench, port: u32) -> Ingress<'_> {
        let entry = bench.snapshot.port(PortId(port)).expect("fixture port");
        Ingress::Port(entry, entry.io().expect("a port with a device"))
    }

    fn traced(bench: &Bench, port: u32, frame: &[u8]) -> TraceRecord {
        run_synthetic(&bench.ctx(5), ingress(bench, port), frame.to_vec())
    }

    fn udp_from_a(dst_mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
        udp_frame(
            MAC_A,
            dst_mac,
            (IP_A, 40000),
            (dst, 53),
            64,
            false,
            b"query",
        )
    }

    /// The detail of the first step of `stage`.
    fn step(record: &TraceRecord, stage: Step) -> &str {
        record
            .steps
            .iter()
            .find(|step| step.stage == stage)
            .map_or_else(
                || panic!("no {stage} step in {record}"),
                |step| step.detail.as_str(),
            )
    }

    /// Table sizes a dry run must leave alone: FDB, neighbours, conntrack.
    fn sizes(bench: &Bench) -> (usize, usize, usize) {
        (
            bench.fdb.len(),
            bench.neighbors.len(),
            bench.snapshot.conntrack.len(),
        )
    }

    #[test]
    fn a_routed_frame_names_each_stage_and_the_entries_it_used() {
        let bench = Bench::with(routed_snapshot());
        bench.neighbors.confirm(RED, IP_D, MAC_D, 0, true);
        let red = bench.snapshot.subnet(RED).unwrap();
        bench.fdb.learn(red, MAC_D, PortId(4), 0);
        let record = traced(&bench, 1, &udp_from_a(GW_BLUE_MAC, IP_D));
        let stages: Vec<Step> = record.steps.iter().map(|step| step.stage).collect();
        assert_eq!(
            stages,
            [
                Step::Parse,
                Step::PortSecurity,
                Step::L2,
                Step::L2,
                Step::Route,
                Step::Neighbor,
                Step::L2,
                Step::Egress
            ],
            "{record}"
        );
        assert!(step(&record, Step::Parse).contains("172.30.0.2:40000 > 10.9.0.2:53 UDP"));
        assert!(step(&record, Step::PortSecurity).starts_with("passes: port port1"));
        assert!(
            record.steps[3]
                .detail
                .contains("to the gateway MAC of subnet blue")
        );
        let route = step(&record, Step::Route);
        assert!(route.contains("matches 10.9.0.0/24"), "{route}");
        assert!(route.contains("egress subnet red"), "{route}");
        assert!(
            step(&record, Step::Neighbor).contains("10.9.0.2 on subnet red: 02:00:00:00:00:0d")
        );
        let egress = step(&record, Step::Egress);
        assert!(
            egress.starts_with("port port4: 02:00:00:00:ee:02 > 02:00:00:00:00:0d"),
            "{egress}"
        );
        assert!(egress.contains("ttl 63"), "{egress}");
        assert_eq!(record.verdict, "forward");
        assert_eq!(record.outputs, ["port4"]);
        assert_eq!(record.drop, None);
        let text = record.to_string();
        assert!(text.contains("Verdict: forward to port4"), "{text}");
    }

    #[test]
    fn a_dropped_frame_ends_with_its_drop_key() {
        let bench = Bench::with(routed_snapshot());
        let spoofed = udp_frame(
            MAC_A,
            GW_BLUE_MAC,
            (Ipv4Addr::new(172, 30, 0, 99), 40000),
            (IP_D, 53),
            64,
            false,
            b"query",
        );
        let record = traced(&bench, 1, &spoofed);
        assert_eq!(record.verdict, "drop");
        assert_eq!(record.drop.as_deref(), Some("port_security.ipv4_src"));
        let last = record.steps.last().expect("steps");
        assert_eq!(last.stage, Step::PortSecurity);
        assert!(last.detail.starts_with("refused"), "{}", last.detail);
        assert!(last.detail.contains("[172.30.0.2]"), "{}", last.detail);
        assert!(
            record
                .to_string()
                .contains("Verdict: drop port_security.ipv4_src")
        );
        let ttl = traced(
            &bench,
            1,
            &ipv4_frame(
                MAC_A,
                GW_BLUE_MAC,
                IP_A,
                IP_D,
                1,
                IpProtocol::Udp,
                false,
                &[0; 8],
            ),
        );
        assert_eq!(ttl.drop.as_deref(), Some("l3.ttl_expired"));
        // The ICMP error the switch would send is named too.
        assert!(step(&ttl, Step::Generated).starts_with("the switch would send"));
    }

    #[test]
    fn a_dry_run_changes_no_table() {
        let bench = Bench::with(routed_snapshot());
        // Learning: the ARP request's sender would be learned, and is not.
        let arp = traced(&bench, 1, &ARP_REQUEST);
        assert!(step(&arp, Step::L2).contains("would be learned on port port1"));
        assert_eq!(arp.verdict, "flood");
        assert_eq!(arp.outputs, ["port2", "port3"]);
        // Routing to an unknown neighbour: it would be solicited and the packet held.
        let routed = traced(&bench, 1, &udp_from_a(GW_BLUE_MAC, IP_D));
        assert!(step(&routed, Step::Neighbor).contains("unresolved: ARP request sent"));
        assert!(step(&routed, Step::Generated).contains("ARP who-has 10.9.0.2 tell 10.9.0.1"));
        assert_eq!(routed.verdict, "consumed");
        assert_eq!(sizes(&bench), (0, 0, 0));
        assert!(bench.local.borrow().held.is_empty());
        // The same frames for real change the tables.
        bench.send(1, &udp_from_a(GW_BLUE_MAC, IP_D), 5);
        assert_eq!(sizes(&bench), (1, 2, 0));
    }

    #[test]
    fn a_dry_run_through_nat_creates_no_connection() {
        let bench = Bench::with(uplink_snapshot());
        bench
            .neighbors
            .confirm(UPLINK_SEGMENT, OUTSIDE_GW, OUTSIDE_GW_MAC, 0, true);
        let before = sizes(&bench);
        let frame = tcp_frame(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 80), 0x02);
        let record = traced(&bench, 1, &frame);
        let nat = record
            .steps
            .iter()
            .filter(|step| step.stage == Step::Nat)
            .map(|step| step.detail.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(nat.contains("would create new connection"), "{record}");
        assert!(nat.contains(&format!("{NAT_IP}")), "{record}");
        assert!(
            step(&record, Step::Egress).starts_with("uplink "),
            "{record}"
        );
        assert_eq!(record.verdict, "forward");
        assert_eq!(sizes(&bench), before, "no connection, no MAC, no neighbour");
        // Twice the same: a dry run keeps no NAT port either.
        assert_eq!(traced(&bench, 1, &frame).steps, record.steps);
    }

    #[test]
    fn a_frame_into_the_overlay_names_the_vni_and_the_remote_vtep() {
        let bench = Bench::with(overlay_snapshot());
        let remote_mac = [0x02, 0xbb, 0, 0, 0, 1];
        let vni = vxlan::Vni::new(BLUE_VNI).unwrap();
        bench.remote_fdb.learn(vni, remote_mac, OTHER_VTEP, 5);
        let blue = bench.snapshot.subnet(BLUE).unwrap();
        bench.fdb.learn(blue, remote_mac, TUNNEL, 5);
        let record = traced(&bench, 1, &bench.frame_from(1, remote_mac));
        let encap = step(&record, Step::VxlanEncap);
        assert!(encap.contains("VNI 42"), "{encap}");
        assert!(encap.contains("remote VTEP 192.168.50.3"), "{encap}");
        assert_eq!(record.outputs, ["vxlan/blue"]);
    }

    #[test]
    fn a_frame_from_outside_is_traced_into_a_network() {
        let bench = Bench::with(uplink_snapshot());
        bench.neighbors.confirm(BLUE, IP_B, MAC_B, 0, true);
        let blue = bench.snapshot.subnet(BLUE).unwrap();
        bench.fdb.learn(blue, MAC_B, PortId(2), 0);
        let uplink = bench.snapshot.uplink.as_ref().expect("fixture uplink");
        // The fixture's PortForward: 203.0.113.10:8080 -> 172.30.0.3:80.
        let frame = tcp_frame(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            (REMOTE, 5555),
            (NAT_IP, 8080),
            0x02,
        );
        let record = run_synthetic(
            &bench.ctx(5),
            Ingress::Uplink(uplink, &uplink.io.members[0], 0),
            frame,
        );
        assert_eq!(record.steps[0].stage, Step::Parse, "{record}");
        assert!(
            step(&record, Step::Uplink).contains("to the switch's MAC"),
            "{record}"
        );
        assert!(
            step(&record, Step::Nat).contains("destination NAT to 172.30.0.3:80"),
            "{record}"
        );
        assert_eq!(record.outputs, ["port2"], "{record}");
        assert_eq!(bench.snapshot.conntrack.len(), 0, "{record}");
    }

    #[test]
    fn a_connection_to_a_load_balancer_names_its_slot_and_backend() {
        use crate::pipeline::lb::tests::{one_backend, port};
        let vip = Ipv4Addr::new(172, 30, 0, 100);
        let balancer = one_backend(vip.into(), IP_B.into(), vec![port(6, 80, Some(8080))]);
        let bench = Bench::with(routed_snapshot().with_balancers(vec![balancer], &[PortId(2)]));
        bench.neighbors.confirm(BLUE, IP_B, MAC_B, 0, true);
        let blue = bench.snapshot.subnet(BLUE).unwrap();
        bench.fdb.learn(blue, MAC_B, PortId(2), 0);
        let syn = tcp_frame(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (vip, 80), 0x02);
        let record = traced(&bench, 1, &syn);
        let lb = record
            .steps
            .iter()
            .filter(|step| step.stage == Step::Lb)
            .map(|step| step.detail.as_str())
            .collect::<Vec<_>>();
        assert_eq!(lb.len(), 3, "{record}");
        assert_eq!(lb[0], "LoadBalancer web VIP 172.30.0.100");
        assert!(lb[1].contains(": Maglev slot "), "{record}");
        assert!(lb[2].starts_with("backend 0 (172.30.0.3:8080"), "{record}");
        assert!(
            step(&record, Step::Nat).contains("destination NAT to 172.30.0.3:8080"),
            "{record}"
        );
        assert_eq!(record.outputs, ["port2"], "{record}");
        assert!(bench.snapshot.conntrack.is_empty(), "{record}");
    }

    #[test]
    fn a_live_trace_records_and_acts() {
        let bench = Bench::new();
        let trace = Trace::live();
        let ctx = super::super::Context {
            trace: Some(&trace),
            ..bench.ctx(5)
        };
        let mut frame = ARP_REQUEST.to_vec();
        let mut local = bench.local.borrow_mut();
        let outcome = crate::pipeline::process(
            &ctx,
            bench.snapshot.port(PortId(1)).unwrap(),
            &mut frame,
            &mut local,
        );
        assert_eq!(outcome.verdict, crate::pipeline::Verdict::Flood);
        assert_eq!(bench.fdb.len(), 1, "a live frame learns");
        let steps = trace.into_steps();
        assert!(
            steps[2].detail.contains("learned on port port1 (new)"),
            "{steps:?}"
        );
    }

    #[test]
    fn notes_keep_their_order_and_text() {
        let trace = Trace::live();
        trace.note(
            Step::Parse,
            format_args!("{} > {}", Mac([2, 0, 0, 0, 0, 10]), 1),
        );
        trace.note(Step::L2, format_args!("flood"));
        let steps = trace.into_steps();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].stage, Step::Parse);
        assert_eq!(steps[0].detail, "02:00:00:00:00:0a > 1");
        assert_eq!(steps[1].stage.name(), "l2");
    }
}
