//! Stage `l2`: MAC learning and forwarding within the ingress port's subnet.
//!
//! 1. Learn the source: `(subnet, source MAC) -> ingress port` in the shared [`Fdb`].
//! 2. Destination: a group address (broadcast, multicast) floods; a MAC learned on another
//!    port of the same subnet is forwarded there; a MAC learned on the ingress port itself is
//!    dropped (`l2.hairpin`, as a bridge never sends a frame back where it came from); anything
//!    else (unknown unicast) floods.
//!
//! Flooding reaches the ports of the ingress port's subnet only, except the ingress port, so
//! two subnets never see each other's broadcasts. A flood with nobody to reach is a drop
//! (`l2.no_destination`).
//!
//! Frames the router sends into a subnet (routed frames, the switch's own ARP and ICMP) get
//! the same decision in that subnet through [`destination`].
//!
//! [`Fdb`]: crate::tables::fdb::Fdb

use super::parse::Parsed;
use super::trace::{Mac, Step, Trace};
use super::{Context, Outcome, Verdict};
use crate::port::PortId;
use crate::tables::counters::keyed_enum;
use crate::tables::fdb::{Learn, is_group};
use crate::tables::snapshot::{PortEntry, SubnetEntry};

keyed_enum! {
    /// Why `l2` dropped a frame.
    pub enum DropReason {
        Hairpin = "l2.hairpin":
            "destination MAC was learned on the ingress port itself",
        NoSubnet = "l2.no_subnet":
            "the ingress port's subnet is not in the configuration",
        NoDestination = "l2.no_destination":
            "broadcast or unknown destination, but the subnet has no other port",
        StormControl = "l2.storm_control":
            "a broadcast or multicast frame to flood beyond its port's rate (vswitchd --storm-control-pps)",
    }
}

/// Learns the source of a frame that passed port security and decides where it goes.
pub fn switch(ctx: &Context<'_>, ingress: &PortEntry, parsed: &Parsed) -> Outcome {
    let Some(subnet) = ctx.snapshot.subnet(ingress.subnet) else {
        return Outcome::dropped(DropReason::NoSubnet);
    };
    let learn = learn(ctx, ingress, subnet, parsed);
    Outcome {
        verdict: forward(ctx, ingress, subnet, parsed),
        learn,
    }
}

/// Learns `(subnet, source MAC) -> ingress port`; `None` for group sources (never learned).
pub fn learn(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
) -> Option<Learn> {
    if let Some(trace) = ctx.trace {
        return learn_traced(ctx, trace, ingress, subnet, parsed);
    }
    let learn = ctx
        .fdb
        .learn(subnet, parsed.src_mac, ingress.id, ctx.now_ms);
    (learn != Learn::NotUnicast).then_some(learn)
}

/// [`learn`] for a traced frame: notes what learning did, or in a dry run what it would do
/// (the FDB is left as it is).
#[cold]
fn learn_traced(
    ctx: &Context<'_>,
    trace: &Trace,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
) -> Option<Learn> {
    let mac = parsed.src_mac;
    let learn = if !trace.is_dry_run() {
        ctx.fdb.learn(subnet, mac, ingress.id, ctx.now_ms)
    } else if is_group(mac) {
        Learn::NotUnicast
    } else {
        match ctx.fdb.lookup(subnet, mac, ctx.now_ms) {
            Some(port) if port == ingress.id => Learn::Refreshed,
            Some(from) => Learn::Moved { from },
            None if ctx.fdb.subnet_len(subnet.id) >= subnet.mac_limit => Learn::LimitReached,
            None => Learn::Learned,
        }
    };
    let would = if trace.is_dry_run() { "would be " } else { "" };
    let what = match learn {
        Learn::Learned => format!("{would}learned on port {} (new)", ingress.name),
        Learn::Refreshed => format!("known on port {} ({would}refreshed)", ingress.name),
        Learn::Moved { from } => format!(
            "{would}moved from port {} to port {}",
            port_name(ctx, from),
            ingress.name
        ),
        Learn::LimitReached => format!(
            "not learned: subnet {} holds its limit of {} MACs",
            subnet.name, subnet.mac_limit
        ),
        Learn::NotUnicast => "a group address: never learned".to_owned(),
    };
    trace.note(
        Step::L2,
        format_args!("source {} in subnet {}: {what}", Mac(mac), subnet.name),
    );
    (learn != Learn::NotUnicast).then_some(learn)
}

/// The name of port `id` for a trace (`#id` when it is gone).
fn port_name(ctx: &Context<'_>, id: PortId) -> String {
    ctx.snapshot.adjacency(id).map_or_else(
        || format!("#{}", id.0),
        |adjacency| adjacency.name.to_owned(),
    )
}

/// Where a frame from `ingress` goes inside its own `subnet` (the ingress port's).
pub fn forward(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
) -> Verdict {
    let flood = || {
        if subnet.ports.iter().any(|&port| port != ingress.id) {
            Verdict::Flood
        } else {
            Verdict::drop(DropReason::NoDestination)
        }
    };
    if is_group(parsed.dst_mac) {
        trace_note!(
            ctx,
            L2,
            "destination {} is a group address: flood subnet {}",
            Mac(parsed.dst_mac),
            subnet.name
        );
        return flood();
    }
    let learned = learned_port(ctx, subnet, parsed.dst_mac);
    trace_note!(
        ctx,
        L2,
        "destination {} in subnet {}: {}",
        Mac(parsed.dst_mac),
        subnet.name,
        learned.map_or_else(
            || "not learned: flood".to_owned(),
            |port| format!("FDB entry on port {}", port_name(ctx, port))
        )
    );
    match learned {
        Some(port) if port == ingress.id => Verdict::drop(DropReason::Hairpin),
        Some(port) => Verdict::Forward(port),
        None => flood(),
    }
}

/// The port `mac` was learned on in `subnet`, if that port is (still) in `subnet`: the FDB
/// is keyed by subnet, but the port may have left or moved since it was learned.
fn learned_port(ctx: &Context<'_>, subnet: &SubnetEntry, mac: [u8; 6]) -> Option<PortId> {
    ctx.fdb.lookup(subnet, mac, ctx.now_ms).filter(|&port| {
        ctx.snapshot
            .port(port)
            .is_some_and(|entry| entry.subnet == subnet.id)
    })
}

/// Where a frame the switch sends into `subnet` to `dst_mac` goes: a routed frame (after its
/// MACs were rewritten) or the switch's own frame. A learned port — even the port a routed
/// frame came from, as a router may send a packet back out of the interface it arrived on —
/// else every port of the subnet except `except`; a drop when nobody is left.
pub fn destination(
    ctx: &Context<'_>,
    subnet: &SubnetEntry,
    dst_mac: [u8; 6],
    except: Option<PortId>,
) -> Verdict {
    if !is_group(dst_mac) {
        if let Some(port) = learned_port(ctx, subnet, dst_mac) {
            trace_note!(
                ctx,
                L2,
                "destination {} in subnet {}: FDB entry on port {}",
                Mac(dst_mac),
                subnet.name,
                port_name(ctx, port)
            );
            return Verdict::Forward(port);
        }
    }
    trace_note!(
        ctx,
        L2,
        "destination {} in subnet {}: not learned: flood",
        Mac(dst_mac),
        subnet.name
    );
    if subnet.ports.iter().any(|&port| Some(port) != except) {
        Verdict::FloodSubnet {
            subnet: subnet.id,
            except,
        }
    } else {
        Verdict::drop(DropReason::NoDestination)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::DropCause;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::parse::parse;
    use crate::tables::clock::millis;
    use crate::tables::snapshot::{Snapshot, SubnetId};

    #[test]
    fn broadcast_floods() {
        let bench = Bench::new();
        let outcome = bench.send(1, &ARP_REQUEST, 0);
        assert_eq!(outcome.verdict, Verdict::Flood);
        assert_eq!(outcome.learn, Some(Learn::Learned));
    }

    #[test]
    fn multicast_floods() {
        let bench = Bench::new();
        bench.send(2, &bench.frame_from(2, MAC_A), 0);
        let frame = bench.frame_from(1, [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Flood);
    }

    #[test]
    fn unknown_unicast_floods_then_known_goes_unicast() {
        let bench = Bench::new();
        assert_eq!(
            bench.send(1, &bench.frame_from(1, MAC_B), 0).verdict,
            Verdict::Flood
        );
        bench.send(2, &bench.frame_from(2, MAC_A), 0);
        assert_eq!(
            bench.send(1, &bench.frame_from(1, MAC_B), 0).verdict,
            Verdict::Forward(PortId(2))
        );
    }

    #[test]
    fn hairpin() {
        let bench = Bench::new();
        // Port 1 sends to its own MAC: learned on the ingress port by this very frame.
        let outcome = bench.send(1, &bench.frame_from(1, MAC_A), 0);
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropCause::L2(DropReason::Hairpin))
        );
        assert_eq!(outcome.learn, Some(Learn::Learned));
    }

    #[test]
    fn subnets_are_isolated() {
        let bench = Bench::new();
        // Port 4 (red) announces its MAC; port 1 (blue) sends to it: blue has not learned it,
        // so it floods — within blue.
        bench.send(4, &bench.frame_from(4, [0xff; 6]), 0);
        assert_eq!(
            bench.send(1, &bench.frame_from(1, MAC_D), 0).verdict,
            Verdict::Flood
        );
        let blue = bench.snapshot.subnet(SubnetId(1)).unwrap();
        assert_eq!(bench.fdb.lookup(blue, MAC_D, 0), None);
        let red = bench.snapshot.subnet(SubnetId(2)).unwrap();
        assert_eq!(bench.fdb.lookup(red, MAC_A, 0), None);
        assert_eq!(bench.fdb.lookup(red, MAC_D, 0), Some(PortId(4)));
    }

    #[test]
    fn learned_port_in_another_subnet_is_not_a_destination() {
        // A stale entry (blue, MAC_D) -> port 4 must not leak a blue frame into red.
        let bench = Bench::new();
        let blue = bench.snapshot.subnet(SubnetId(1)).unwrap();
        bench.fdb.learn(blue, MAC_D, PortId(4), 0);
        assert_eq!(
            bench.send(1, &bench.frame_from(1, MAC_D), 0).verdict,
            Verdict::Flood
        );
    }

    #[test]
    fn aged_destination_floods_again() {
        let bench = Bench::new();
        bench.send(2, &bench.frame_from(2, MAC_A), 0);
        let ageing = millis(Duration::from_secs(300));
        assert_eq!(
            bench
                .send(1, &bench.frame_from(1, MAC_B), ageing - 1)
                .verdict,
            Verdict::Forward(PortId(2))
        );
        assert_eq!(
            bench.send(1, &bench.frame_from(1, MAC_B), ageing).verdict,
            Verdict::Flood
        );
    }

    #[test]
    fn moved_mac_follows() {
        let bench = Bench::new();
        let blue = bench.snapshot.subnet(SubnetId(1)).unwrap();
        bench.fdb.learn(blue, MAC_A, PortId(3), 0);
        let outcome = bench.send(1, &ARP_REQUEST, 1);
        assert_eq!(outcome.learn, Some(Learn::Moved { from: PortId(3) }));
        assert_eq!(bench.fdb.lookup(blue, MAC_A, 1), Some(PortId(1)));
    }

    #[test]
    fn limit_reached_is_reported_and_unknown_floods() {
        let bench = Bench::with(snapshot_with_limit(1));
        assert_eq!(
            bench.send(2, &bench.frame_from(2, MAC_C), 0).learn,
            Some(Learn::Learned)
        );
        let outcome = bench.send(1, &bench.frame_from(1, MAC_C), 0);
        assert_eq!(outcome.learn, Some(Learn::LimitReached));
        assert_eq!(outcome.verdict, Verdict::Flood);
        // Port 2 sends to port 1, never learned: it floods.
        assert_eq!(
            bench.send(2, &bench.frame_from(2, MAC_A), 0).verdict,
            Verdict::Flood
        );
    }

    #[test]
    fn lonely_port_has_no_destination() {
        let mut snapshot = snapshot();
        let ports: Vec<_> = snapshot.ports().to_vec();
        let mut subnets: Vec<_> = snapshot.subnets().to_vec();
        subnets[0].ports = vec![PortId(1)];
        snapshot = Snapshot::new(ports, subnets);
        let bench = Bench::with(snapshot);
        assert_eq!(
            bench.send(1, &ARP_REQUEST, 0).verdict,
            Verdict::Drop(DropCause::L2(DropReason::NoDestination))
        );
    }

    #[test]
    fn missing_subnet() {
        let snapshot = snapshot();
        let ports: Vec<_> = snapshot.ports().to_vec();
        let bench = Bench::with(Snapshot::new(ports, Vec::new()));
        let parsed = parse(&ARP_REQUEST).unwrap();
        let ctx = bench.ctx(0);
        let outcome = switch(&ctx, bench.snapshot.port(PortId(1)).unwrap(), &parsed);
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropCause::L2(DropReason::NoSubnet))
        );
        assert!(bench.fdb.is_empty());
    }
}
