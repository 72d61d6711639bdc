//! `routes`: the `routed` topology with N other static routes in the router's table while
//! c1 -> c2 is measured: what a longest-prefix match among many prefixes costs a flow to a
//! connected subnet, and what the table costs to load.
//!
//! The routes ([`prefix`]) are N distinct prefixes of lengths /24 to /28 (one per /24 from
//! 16.0.0.0 up, so none hides another), all through the router 10.78.2.200 on c2's subnet
//! (an address nobody answers for: no traffic goes there). The kernel gets them with one
//! `ip -batch`; vswitchd as Route resources, applied in requests of [`BATCH`] (its request
//! body limit is 32 MiB). The time either took is recorded (`Apply`), and the `Table
//! entries` row (the static routes in the table after each run) shows the table held them.
//! Only TCP is measured, as in `conntrack`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{Applied, Context, Family, PrepareError, Prepared, TableProbe, Variant, routed};
use crate::tools::cmd;

/// The route counts measured by default (`--routes`).
pub const COUNTS: [u32; 4] = [0, 1_000, 100_000, 1_000_000];

/// The most `--routes` takes: one /24 each from 16.0.0.0 stays below 32.0.0.0.
pub const MAX: i64 = 1 << 20;

/// Routes per vswitchd request (about 120 bytes of YAML each).
const BATCH: u32 = 100_000;

/// The router every route goes through: a host address on c2's subnet `perf-b`.
const NEXT_HOP: &str = "10.78.2.200";

/// The `index`-th route's destination: its own /24 from 16.0.0.0, /24 to /28 in turn.
pub fn prefix(index: u32) -> String {
    let base = u32::from(Ipv4Addr::new(16, 0, 0, 0)) + (index << 8);
    format!("{}/{}", Ipv4Addr::from(base), 24 + index % 5)
}

/// Routes `from..to` as Route resources of the default Network, one flow-style YAML
/// document each.
fn documents(from: u32, to: u32) -> String {
    let mut text = String::with_capacity((to - from) as usize * 150);
    for index in from..to {
        let _ = writeln!(
            text,
            "---\n{{apiVersion: vswitch/v1alpha1, kind: Route, metadata: {{name: r{index}}}, \
             spec: {{network: default, destination: {}, nextHop: {NEXT_HOP}}}}}",
            prefix(index)
        );
    }
    text
}

/// Builds one variant of `routes-<count>`.
///
/// # Errors
/// As `routed`'s, or the routes cannot be installed.
pub fn prepare(variant: Variant, context: &Context, count: u32) -> Result<Prepared, PrepareError> {
    let mut prepared = routed::prepare(variant, context, Family::V4)?;
    prepared.datagrams = false;
    let started = Instant::now();
    let mut requests = 0;
    if let Some(daemon) = prepared.daemons.first() {
        prepared.table = Some(TableProbe::VswitchdRoutes);
        let mut from = 0;
        while from < count {
            let to = count.min(from + BATCH);
            daemon.apply_within("routes", &documents(from, to), Duration::from_secs(600))?;
            requests += 1;
            from = to;
        }
    } else {
        let router = prepared
            .topology
            .find("router")
            .ok_or_else(|| anyhow::anyhow!("routed has no router namespace"))?;
        prepared.table = Some(TableProbe::KernelRoutes {
            netns: router.clone(),
        });
        if count > 0 {
            let mut batch = String::with_capacity(count as usize * 48);
            for index in 0..count {
                let _ = writeln!(batch, "route add {} via {NEXT_HOP}", prefix(index));
            }
            let path = prepared.topology.scratch("routes")?.join("routes.batch");
            std::fs::write(&path, batch).map_err(anyhow::Error::from)?;
            cmd::run(
                cmd::command("ip", &["-n", &router, "-batch", &path.to_string_lossy()]),
                Duration::from_secs(600),
            )?;
            requests = 1;
        }
    }
    if count == 0 {
        return Ok(prepared);
    }
    let seconds = started.elapsed().as_secs_f64();
    let listed = prepared.table_entries()?.unwrap_or(0);
    prepared.applied = Some(Applied {
        seconds,
        unit: "routes",
        resources: count as usize,
        listed: usize::try_from(listed).unwrap_or(usize::MAX),
        requests,
    });
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn prefixes_are_distinct_canonical_and_below_32() {
        let all: BTreeSet<String> = (0..1 << 20).step_by(997).map(prefix).collect();
        assert_eq!(all.len(), (0..1 << 20).step_by(997).count());
        assert_eq!(prefix(0), "16.0.0.0/24");
        assert_eq!(prefix(1), "16.0.1.0/25");
        assert_eq!(prefix(4), "16.0.4.0/28");
        assert_eq!(prefix((1 << 20) - 1), "31.255.255.0/24");
        for index in [0, 1, 2, 3, 4, 12_345, (1 << 20) - 1] {
            let net: ipnet::Ipv4Net = prefix(index).parse().unwrap();
            assert_eq!(net, net.trunc(), "{net} has host bits");
        }
    }

    #[test]
    fn documents_are_one_route_each() {
        let text = documents(3, 5);
        assert_eq!(text.matches("kind: Route").count(), 2);
        assert!(text.contains("name: r3}"), "{text}");
        assert!(
            text.contains("destination: 16.0.4.0/28, nextHop: 10.78.2.200}"),
            "{text}"
        );
    }
}
