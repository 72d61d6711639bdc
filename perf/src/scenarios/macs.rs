//! `macs`: the `vxlan` topology with N other MACs learned behind the remote node while
//! c1 -> c2 is measured: what a MAC lookup among many entries costs a flow that has nothing
//! to do with them.
//!
//! Before the measurement, node2's namespace sends node1's VTEP one VXLAN frame from each of
//! N source MACs ([`macs`]), from node2's underlay address, in rounds until node1's table
//! holds them (at most [`ROUNDS`]). Both switches learn them as behind node2: the kernel's
//! `vxlan0` and its bridge `br0` (learning on, no limit), vswitchd's FDB of the stretched
//! Subnet, whose `macTableLimit` is raised to fit (default 8,192). Learned MACs age out after
//! 300 s in both, longer than the runs that follow; the `Table entries` row (node1's MACs
//! behind the remote VTEP after each run) shows they held. Only TCP is measured.

use std::net::Ipv4Addr;

use super::{Context, PrepareError, Prepared, TableProbe, Variant, progress_line, vxlan};
use crate::tools::macs;

/// The MAC counts measured by default (`--macs`).
pub const COUNTS: [u32; 4] = [0, 1_000, 10_000, 100_000];

/// The most `--macs` takes: vswitchd's `macTableLimit` tops out at 1,048,576 (room is left
/// for the headroom).
pub const MAX: i64 = 1_000_000;

/// Rounds of frames at most.
const ROUNDS: u32 = 6;

/// Room above the count in vswitchd's limit (the containers' own MACs).
const HEADROOM: u32 = 1_000;

/// The table must hold this share of the count before measuring, in percent.
const FILLED_PERCENT: u64 = 99;

/// Builds one variant of `macs-<count>`.
///
/// # Errors
/// As `vxlan`'s, or the table cannot be filled.
pub fn prepare(variant: Variant, context: &Context, count: u32) -> Result<Prepared, PrepareError> {
    let limit = count.saturating_add(HEADROOM).max(8_192);
    let mut prepared = vxlan::prepare_with(variant, context, Some(limit))?;
    prepared.datagrams = false;
    let node1 = prepared
        .topology
        .find("node1")
        .ok_or_else(|| anyhow::anyhow!("vxlan has no node1"))?;
    let node2 = prepared
        .topology
        .find("node2")
        .ok_or_else(|| anyhow::anyhow!("vxlan has no node2"))?;
    prepared.table = Some(if prepared.daemons.is_empty() {
        TableProbe::KernelRemoteMacs { netns: node1 }
    } else {
        TableProbe::VswitchdRemoteMacs
    });
    if count == 0 {
        return Ok(prepared);
    }
    let inner_dst =
        prepared
            .topology
            .exec(&prepared.client_ns, "cat", &["/sys/class/net/eth0/address"])?;
    let [vtep, src] = vxlan::UNDERLAY.map(|a| a.parse::<Ipv4Addr>().expect("literal"));
    let wanted = u64::from(count) * FILLED_PERCENT / 100;
    let mut held = 0;
    for round in 1..=ROUNDS {
        let (report, took) = macs::run(&node2, src, vtep, vxlan::VNI, inner_dst.trim(), count)?;
        held = prepared.table_entries()?.unwrap_or(0);
        progress_line(&format!(
            "macs-{count}: round {round}: {} frames in {:.1} s ({} failed), node1 holds {held} remote MACs",
            report.sent,
            took.as_secs_f64(),
            report.errors
        ));
        if held >= wanted {
            return Ok(prepared);
        }
    }
    Err(PrepareError::Fail(anyhow::anyhow!(
        "node1 holds {held} remote MACs after {ROUNDS} rounds of {count} frames (want {wanted})"
    )))
}
