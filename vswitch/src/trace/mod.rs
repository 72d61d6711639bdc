//! The packet tracer (`vswitchctl trace`), as Open vSwitch's `ofproto/trace` and VPP's `show
//! trace`: what each stage of the real pipeline decided for one frame, with the table
//! entries it used, and the verdict.
//!
//! - A synthetic frame ([`synthetic`]) is built from a tcpdump-like description ([`expr`],
//!   [`build`]) or hex, and run through [`pipeline::input`] with the current snapshot and
//!   shared tables in a dry run (see [`pipeline::trace`]): nothing is sent, no shared table
//!   changes, no counter moves.
//! - A live trace ([`live`]) records the same for the next real frames that match a filter,
//!   as the workers forward them.
//!
//! The stages write the notes themselves; this module adds what happens after the ingress
//! stages (the egress port, the VXLAN encapsulation the transmit path will do, the frames
//! the switch generated) and the verdict.

pub mod build;
pub mod expr;
pub mod live;

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::control::ApiError;
use crate::pipeline::generated::Generated;
use crate::pipeline::trace::{Mac, Step, Trace, TraceStep, describe_frame};
use crate::pipeline::vxlan_encap::{TunnelTx, learned_remote};
use crate::pipeline::{self, Context, Local, Verdict};
use crate::port::PortId;
use crate::tables::snapshot::{Egress, Ingress, SubnetId};
use crate::wire::VNET_HDR_LEN;

/// The body of `POST /v1/trace`: where the frame enters, and the frame.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceRequest {
    /// The NetworkInterface (or the Uplink) the frame is received on.
    #[serde(rename = "in")]
    pub ingress: String,
    /// The packet, e.g. `tcp 172.30.0.2:40000 > 172.30.0.3:80 flags S` (see [`expr`]).
    pub packet: Option<String>,
    /// Or the Ethernet frame in hex.
    pub hex: Option<String>,
    /// The source MAC (default: the port's).
    pub src_mac: Option<String>,
    /// The destination MAC (default: the gateway's for an off-subnet destination, else the
    /// destination's when known, else broadcast).
    pub dst_mac: Option<String>,
}

/// What the stages did with one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceRecord {
    /// The port (or uplink) the frame was received on.
    pub ingress: String,
    /// The frame as received, in one line.
    pub packet: String,
    /// True for a synthetic frame: not sent, no table changed.
    pub synthetic: bool,
    /// What each stage decided, in order.
    pub steps: Vec<TraceStep>,
    /// `forward`, `flood`, `consumed` or `drop`.
    pub verdict: String,
    /// The ports (or uplink, or tunnels) the frame leaves by.
    pub outputs: Vec<String>,
    /// The drop's stable key (`port_security.src_mac`, ...), for a dropped frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<String>,
    /// Why, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
}

impl fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Frame received on {}{}",
            self.ingress,
            if self.synthetic {
                " (synthetic: not sent, no table changed)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  {}", self.packet)?;
        writeln!(f)?;
        let width = self
            .steps
            .iter()
            .map(|step| step.stage.name().len())
            .max()
            .unwrap_or(0);
        for (index, step) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "{:>3}. {:<width$}  {}",
                index + 1,
                step.stage.name(),
                step.detail
            )?;
        }
        writeln!(f)?;
        match (&self.drop, &self.drop_reason) {
            (Some(key), Some(reason)) => write!(f, "Verdict: drop {key} ({reason})"),
            _ if self.outputs.is_empty() => write!(f, "Verdict: {}", self.verdict),
            _ => write!(
                f,
                "Verdict: {} to {}",
                self.verdict,
                self.outputs.join(", ")
            ),
        }
    }
}

/// Runs `frame` (`virtio_net_hdr` then Ethernet) through the stages as received on
/// `ingress`, in a dry run (see [`pipeline::trace`]); `ctx` is the current snapshot and shared
/// tables (its `trace` is ignored).
pub fn run_synthetic(ctx: &Context<'_>, ingress: Ingress<'_>, mut frame: Vec<u8>) -> TraceRecord {
    let trace = Trace::dry_run();
    let traced = Context {
        trace: Some(&trace),
        ..*ctx
    };
    let mut local = Local::new(0);
    let packet = describe_frame(&frame);
    let peer = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let outcome = pipeline::input(&traced, ingress, &mut frame, peer, 0, &mut local);
    finish(
        &traced,
        ingress,
        packet,
        outcome.verdict,
        &frame,
        &local.out.generated,
        0,
    )
}

/// The record of a frame the stages have run on with `ctx.trace` set: adds the egress, the
/// encapsulation and the frames generated from index `first_generated` on to the trace, then
/// the verdict. `frame` is the frame as the stages left it (rewritten when routed).
pub fn finish(
    ctx: &Context<'_>,
    ingress: Ingress<'_>,
    packet: String,
    verdict: Verdict,
    frame: &[u8],
    generated: &Generated,
    first_generated: usize,
) -> TraceRecord {
    let Some(trace) = ctx.trace else {
        // Not traced: nothing was recorded.
        return record(ingress, packet, false, Vec::new(), verdict, Vec::new());
    };
    let outputs = destinations(ctx, ingress.id(), ingress.segment(), verdict);
    match verdict {
        Verdict::Forward(port) => note_egress(ctx, trace, port, frame, true),
        Verdict::Flood | Verdict::FloodSubnet { .. } => {
            let names: Vec<String> = outputs.iter().map(|&port| name(ctx, port)).collect();
            trace.note(
                Step::Egress,
                format_args!("flooded to {}: {}", names.join(", "), describe_frame(frame)),
            );
            for &port in &outputs {
                note_egress(ctx, trace, port, frame, false);
            }
        }
        Verdict::Consumed | Verdict::Drop(_) => {}
    }
    let would = if trace.is_dry_run() {
        "would send"
    } else {
        "sends"
    };
    for index in first_generated..generated.len() {
        if let (Some(meta), Some(bytes)) = (generated.meta(index), generated.frame(index)) {
            let to = destinations(ctx, ingress.id(), ingress.segment(), meta.verdict);
            let to: Vec<String> = to.iter().map(|&port| name(ctx, port)).collect();
            trace.note(
                Step::Generated,
                format_args!(
                    "the switch {would} {} to {}",
                    describe_frame(bytes),
                    if to.is_empty() {
                        "nobody".to_owned()
                    } else {
                        to.join(", ")
                    }
                ),
            );
        }
    }
    let names = outputs.iter().map(|&port| name(ctx, port)).collect();
    record(
        ingress,
        packet,
        trace.is_dry_run(),
        trace.steps(),
        verdict,
        names,
    )
}

fn record(
    ingress: Ingress<'_>,
    packet: String,
    synthetic: bool,
    steps: Vec<TraceStep>,
    verdict: Verdict,
    outputs: Vec<String>,
) -> TraceRecord {
    let (kind, drop, drop_reason) = match verdict {
        Verdict::Forward(_) => ("forward", None, None),
        Verdict::Flood | Verdict::FloodSubnet { .. } => ("flood", None, None),
        Verdict::Consumed => ("consumed", None, None),
        Verdict::Drop(cause) => (
            "drop",
            Some(cause.key().to_owned()),
            Some(cause.description().to_owned()),
        ),
    };
    TraceRecord {
        ingress: ingress.name().to_owned(),
        packet,
        synthetic,
        steps,
        verdict: kind.to_owned(),
        outputs,
        drop,
        drop_reason,
    }
}

/// The ports a verdict sends to (the flood of `segment` leaves `ingress` out).
fn destinations(
    ctx: &Context<'_>,
    ingress: PortId,
    segment: SubnetId,
    verdict: Verdict,
) -> Vec<PortId> {
    let flood = |subnet: SubnetId, except: Option<PortId>| {
        ctx.snapshot.subnet(subnet).map_or_else(Vec::new, |subnet| {
            subnet
                .ports
                .iter()
                .copied()
                .filter(|&port| Some(port) != except)
                .collect()
        })
    };
    match verdict {
        Verdict::Forward(port) => vec![port],
        Verdict::Flood => flood(segment, Some(ingress)),
        Verdict::FloodSubnet { subnet, except } => flood(subnet, except),
        Verdict::Consumed | Verdict::Drop(_) => Vec::new(),
    }
}

fn name(ctx: &Context<'_>, port: PortId) -> String {
    ctx.snapshot.adjacency(port).map_or_else(
        || format!("#{}", port.0),
        |adjacency| adjacency.name.to_owned(),
    )
}

/// Notes how `frame` leaves by `port`: a device's queue or the uplink (`describe`: with the
/// frame as it leaves), or a subnet's tunnel: the VNI and the remote VTEPs the
/// `vxlan-encap` stage picks.
fn note_egress(ctx: &Context<'_>, trace: &Trace, port: PortId, frame: &[u8], describe: bool) {
    let Some(adjacency) = ctx.snapshot.adjacency(port) else {
        trace.note(
            Step::Egress,
            format_args!("port #{} is no longer configured", port.0),
        );
        return;
    };
    match adjacency.egress {
        Egress::Queue(_) if describe => trace.note(
            Step::Egress,
            format_args!("port {}: {}", adjacency.name, describe_frame(frame)),
        ),
        Egress::Uplink { vlan: None, .. } if describe => trace.note(
            Step::Egress,
            format_args!("uplink {}: {}", adjacency.name, describe_frame(frame)),
        ),
        Egress::Uplink {
            vlan: Some(vid), ..
        } if describe => trace.note(
            Step::Egress,
            format_args!(
                "uplink VLAN {vid} ({}): {}",
                adjacency.name,
                describe_frame(frame)
            ),
        ),
        Egress::Tagged { vlan, .. } if describe => trace.note(
            Step::Egress,
            format_args!(
                "port {} (VLAN {vlan} of a trunk): {}",
                adjacency.name,
                describe_frame(frame)
            ),
        ),
        Egress::Queue(_) | Egress::Uplink { .. } | Egress::Tagged { .. } => {}
        Egress::Tunnel(tunnel) => {
            let Some(vtep) = ctx.snapshot.vtep.as_ref() else {
                trace.note(
                    Step::VxlanEncap,
                    format_args!("tunnel {}: the node has no VTEP", adjacency.name),
                );
                return;
            };
            let tx = TunnelTx {
                tunnel,
                config: &vtep.encap,
                remote_fdb: ctx.remote_fdb,
                now_ms: ctx.now_ms,
            };
            let dst = frame
                .get(VNET_HDR_LEN..VNET_HDR_LEN + 6)
                .and_then(|mac| <[u8; 6]>::try_from(mac).ok())
                .unwrap_or([0xff; 6]);
            let remotes = match learned_remote(&tx, dst) {
                Some(remote) => format!("remote VTEP {remote} (learned for {})", Mac(dst)),
                None if tunnel.remotes.is_empty() => {
                    "no remote VTEP: dropped (vxlan.no_remote)".to_owned()
                }
                None => format!(
                    "{} unknown or a group address: head-end replication to remote VTEPs {:?}",
                    Mac(dst),
                    tunnel.remotes
                ),
            };
            trace.note(
                Step::VxlanEncap,
                format_args!(
                    "tunnel {}: VXLAN VNI {} from local VTEP {}: {remotes}",
                    adjacency.name, tunnel.vni, vtep.local
                ),
            );
            if describe {
                trace.note(
                    Step::Egress,
                    format_args!("overlay, inner frame {}", describe_frame(frame)),
                );
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
fn parse_mac(text: &str, field: &str) -> Result<[u8; 6], ApiError> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|part| {
                    (part.len() == 2)
                        .then(|| u8::from_str_radix(part, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    bytes
        .and_then(|bytes| <[u8; 6]>::try_from(bytes).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{text:?} is not a MAC address (write six hex bytes: 02:00:00:00:00:0a)"),
            )
        })
}

/// Builds the frame a request describes and traces it (see [`run_synthetic`]). `ctx` is the
/// current snapshot and shared tables.
///
/// # Errors
/// [`ApiError::Invalid`] naming the field: an unknown port, an unparsable packet or hex, a
/// bad MAC, neither or both of `packet` and `hex`.
pub fn synthetic(ctx: &Context<'_>, request: &TraceRequest) -> Result<TraceRecord, ApiError> {
    let snapshot = ctx.snapshot;
    let port = snapshot
        .ports()
        .iter()
        .find(|port| port.name == request.ingress);
    let uplink = snapshot
        .uplink
        .as_ref()
        .filter(|uplink| uplink.name == request.ingress);
    let ingress = match (port, uplink) {
        (Some(port), _) => match port.io() {
            Some(io) => Ingress::Port(port, io),
            None => {
                return Err(ApiError::invalid(
                    "in",
                    format!(
                        "{:?} is a subnet's tunnel, not a port frames are received on",
                        request.ingress
                    ),
                ));
            }
        },
        (None, Some(uplink)) => match uplink.io.members.first() {
            Some(member) => Ingress::Uplink(uplink, member, 0),
            None => {
                return Err(ApiError::invalid(
                    "in",
                    format!("the Uplink {:?} has no interface open", uplink.name),
                ));
            }
        },
        (None, None) => {
            let mut known: Vec<&str> = snapshot
                .ports()
                .iter()
                .filter(|port| port.io().is_some())
                .map(|port| port.name.as_str())
                .collect();
            known.extend(snapshot.uplink.as_ref().map(|uplink| uplink.name.as_str()));
            return Err(ApiError::invalid(
                "in",
                format!(
                    "{:?} is no attached NetworkInterface or Uplink (attached: {})",
                    request.ingress,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    };
    let src_mac = request
        .src_mac
        .as_deref()
        .map(|text| parse_mac(text, "srcMac"))
        .transpose()?;
    let dst_mac = request
        .dst_mac
        .as_deref()
        .map(|text| parse_mac(text, "dstMac"))
        .transpose()?;
    let mut frame = match (&request.packet, &request.hex) {
        (Some(text), None) => {
            let spec = expr::parse_packet(text)
                .map_err(|error| ApiError::invalid("packet", error.to_string()))?;
            let src_mac = src_mac.unwrap_or_else(|| default_src_mac(ingress));
            let dst_mac = dst_mac.unwrap_or_else(|| default_dst_mac(ctx, ingress, &spec));
            build::frame(&spec, src_mac, dst_mac)
        }
        (None, Some(hex)) => {
            build::from_hex(hex).map_err(|message| ApiError::invalid("hex", message))?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "packet",
                "give the packet or its hex, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "packet",
                "a packet is needed: packet (e.g. \"icmp 172.30.0.2 > 172.30.0.3\") or hex",
            ));
        }
    };
    if request.hex.is_some() {
        // A raw frame keeps its own MACs unless told otherwise.
        if let Some(mac) = dst_mac {
            frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac);
        }
        if let Some(mac) = src_mac {
            frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&mac);
        }
    }
    Ok(run_synthetic(ctx, ingress, frame))
}

/// A frame from a port comes from the port's MAC; from the uplink, from a locally
/// administered placeholder (the outside router's MAC is not known to the switch).
fn default_src_mac(ingress: Ingress<'_>) -> [u8; 6] {
    match ingress {
        Ingress::Port(port, _) => port.mac,
        Ingress::Uplink(..) | Ingress::Vtep(_) => [0x02, 0, 0, 0, 0, 0x01],
    }
}

/// Where a host would send the packet: an ARP request is broadcast; from the uplink, to the
/// uplink's MAC; off the ingress subnet (or to its gateway; for IPv6, off its prefix), to the
/// gateway's MAC; else to the destination's MAC (a neighbour entry, a port of the subnet with
/// that address), else broadcast.
fn default_dst_mac(ctx: &Context<'_>, ingress: Ingress<'_>, spec: &expr::PacketSpec) -> [u8; 6] {
    const BROADCAST: [u8; 6] = [0xff; 6];
    if let expr::PacketSpec::Arp { .. } = spec {
        return BROADCAST;
    }
    let port = match ingress {
        Ingress::Port(port, _) => port,
        Ingress::Uplink(uplink, ..) => return uplink.mac,
        Ingress::Vtep(_) => return BROADCAST,
    };
    let Some(subnet) = ctx.snapshot.subnet(port.subnet) else {
        return BROADCAST;
    };
    let dst = spec.dst();
    if let IpAddr::V6(group) = dst {
        // A host sends to a multicast group at its 33:33 MAC.
        if group.is_multicast() {
            return crate::wire::ipv6::multicast_mac(group);
        }
    }
    let on_link = match dst {
        IpAddr::V4(dst) => subnet.cidr.contains(&dst) && dst != subnet.gateway,
        // A Subnet without IPv6 switches IPv6 on the link only.
        IpAddr::V6(dst) if crate::wire::ipv6::is_link_local(dst) => {
            subnet.v6.as_ref().is_none_or(|v6| !v6.is_gateway(dst))
        }
        IpAddr::V6(dst) => subnet
            .v6
            .as_ref()
            .is_none_or(|v6| v6.cidr.contains(&dst) && !v6.is_gateway(dst)),
    };
    if !on_link {
        return subnet.gateway_mac;
    }
    if let Some(mac) = ctx.neighbors.lookup(subnet.id, dst) {
        return mac;
    }
    ctx.snapshot
        .ports()
        .iter()
        .find(|other| {
            other.subnet == subnet.id
                && match dst {
                    IpAddr::V4(dst) => other.ips.contains(&dst),
                    IpAddr::V6(dst) => other.ips6.contains(&dst),
                }
        })
        .map_or(BROADCAST, |other| other.mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;

    fn request(ingress: &str, packet: &str) -> TraceRequest {
        TraceRequest {
            ingress: ingress.into(),
            packet: Some(packet.into()),
            ..TraceRequest::default()
        }
    }

    fn field(error: ApiError) -> Option<String> {
        match error {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn a_request_gets_the_macs_a_host_would_use() {
        let bench = Bench::with(routed_snapshot());
        let ctx = bench.ctx(5);
        // Off the subnet: to the gateway, from the port's MAC.
        let routed = synthetic(&ctx, &request("port1", "icmp 172.30.0.2 > 10.9.0.2")).unwrap();
        assert!(
            routed
                .packet
                .starts_with("02:00:00:00:00:0a > 02:00:00:00:ee:01"),
            "{routed}"
        );
        // On the subnet: to the port that has the address.
        let switched =
            synthetic(&ctx, &request("port1", "udp 172.30.0.2:1 > 172.30.0.3:2")).unwrap();
        assert!(
            switched
                .packet
                .starts_with("02:00:00:00:00:0a > 02:00:00:00:00:0b"),
            "{switched}"
        );
        // IPv6: off the prefix to the gateway, routed to the port with the address; on the
        // prefix to the port that has it.
        let routed6 = synthetic(
            &ctx,
            &request("port1", "tcp [fd00::a]:40000 > [fd00:9::d]:80 flags S"),
        )
        .unwrap();
        assert!(
            routed6
                .packet
                .starts_with("02:00:00:00:00:0a > 02:00:00:00:ee:01, IPv6 fd00::a.40000"),
            "{routed6}"
        );
        // Its neighbour is not known yet: held while the switch solicits it.
        assert_eq!(routed6.verdict, "consumed", "{routed6}");
        let said = routed6.to_string();
        assert!(said.contains("fd00:9::d via subnet red"), "{said}");
        assert!(said.contains("ff02::1:ff00:d ICMPv6 type 135"), "{said}");
        let switched6 = synthetic(&ctx, &request("port1", "icmp6 fd00::a > fd00::b")).unwrap();
        assert!(
            switched6
                .packet
                .starts_with("02:00:00:00:00:0a > 02:00:00:00:00:0b"),
            "{switched6}"
        );
        // Link-local on the link, multicast to its group's MAC.
        let local = synthetic(&ctx, &request("port1", "icmp6 fd00::a > fe80::77")).unwrap();
        assert!(local.packet.contains("> ff:ff:ff:ff:ff:ff"), "{local}");
        let group = synthetic(&ctx, &request("port1", "icmp6 fd00::a > ff02::1")).unwrap();
        assert!(group.packet.contains("> 33:33:00:00:00:01"), "{group}");
        // Nobody has it: broadcast; an ARP request always is.
        let unknown = synthetic(&ctx, &request("port1", "icmp 172.30.0.2 > 172.30.0.77")).unwrap();
        assert!(unknown.packet.contains("> ff:ff:ff:ff:ff:ff"), "{unknown}");
        let arp = synthetic(
            &ctx,
            &request("port1", "arp who-has 172.30.0.3 tell 172.30.0.2"),
        )
        .unwrap();
        assert_eq!(arp.verdict, "flood");
        // Given MACs win; hex frames keep their own.
        let spoofed = synthetic(
            &ctx,
            &TraceRequest {
                src_mac: Some("02:00:00:00:12:34".into()),
                ..request("port1", "icmp 172.30.0.2 > 10.9.0.2")
            },
        )
        .unwrap();
        assert_eq!(spoofed.drop.as_deref(), Some("port_security.src_mac"));
        let hex = synthetic(
            &ctx,
            &TraceRequest {
                ingress: "port1".into(),
                hex: Some("ffffffffffff 02000000000a 0806".into()),
                ..TraceRequest::default()
            },
        )
        .unwrap();
        assert_eq!(hex.drop.as_deref(), Some("parse.arp_truncated"), "{hex}");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let bench = Bench::new();
        let ctx = bench.ctx(5);
        let error = |request: TraceRequest| field(synthetic(&ctx, &request).unwrap_err());
        assert_eq!(
            error(request("nope", "icmp 1.2.3.4 > 1.2.3.5")).as_deref(),
            Some("in")
        );
        assert_eq!(
            error(request("port1", "icmp 1.2.3.4")).as_deref(),
            Some("packet")
        );
        assert_eq!(
            error(
                TraceRequest {
                    hex: Some("zz".into()),
                    ..TraceRequest::default()
                }
                .with_ingress("port1")
            )
            .as_deref(),
            Some("hex")
        );
        assert_eq!(
            error(TraceRequest {
                dst_mac: Some("02:00".into()),
                ..request("port1", "icmp 1.2.3.4 > 1.2.3.5")
            })
            .as_deref(),
            Some("dstMac")
        );
        assert_eq!(
            error(TraceRequest {
                ingress: "port1".into(),
                ..TraceRequest::default()
            })
            .as_deref(),
            Some("packet")
        );
    }

    impl TraceRequest {
        fn with_ingress(mut self, ingress: &str) -> TraceRequest {
            self.ingress = ingress.into();
            self
        }
    }

    #[test]
    fn a_live_session_traces_what_matches_and_stops_at_its_count() {
        let bench = Bench::new();
        let live = live::LiveTrace::default();
        assert!(live.session().is_none(), "nothing armed");
        let filter = expr::Filter::parse("icmp").unwrap();
        let session = live.start(filter.clone(), None, 2).unwrap();
        assert!(live.start(filter, None, 1).is_err(), "one at a time");
        let armed = live.session().expect("armed");
        let port = bench.snapshot.port(PortId(1)).unwrap();
        let ingress = Ingress::Port(port, port.io().unwrap());
        let ctx = bench.ctx(5);
        let mut local = bench.local.borrow_mut();
        let peer = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        assert!(!armed.wants(ingress, &ARP_REQUEST), "not icmp");
        for _ in 0..3 {
            let mut frame = ICMP_ECHO.to_vec();
            if armed.wants(ingress, &frame) {
                armed.trace(&ctx, ingress, &mut frame, peer, 0, &mut local);
            }
        }
        assert!(session.is_done());
        live.stop(&session);
        assert!(live.session().is_none());
        let (records, lost) = session.take();
        assert_eq!((records.len(), lost), (2, 0));
        assert!(!records[0].synthetic);
        assert_eq!(records[0].verdict, "flood");
        assert_eq!(bench.fdb.len(), 1, "live frames learn");
    }
}
