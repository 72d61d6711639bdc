//! `conntrack`: the `nat` topology (c1 to an outside server through masquerade) with N
//! other connections in the connection-tracking table while the flow is measured: what a
//! lookup among many entries, and the table's memory, cost a flow that has nothing to do
//! with them.
//!
//! Before the measurement, c1 sends one UDP datagram on each of N flows to the server
//! ([`flows`]: distinct source and destination ports), in rounds until the table holds
//! them (a round refreshes what the last made and adds what a full queue lost; at most
//! [`ROUNDS`]). Each flow is a masqueraded UDP connection, unreplied: it lives 30 s in both
//! switches (Linux's `nf_conntrack_udp_timeout`, vswitchd's default), longer than the runs
//! that follow, and the `Table entries` row (the table's count after each run) shows
//! it held. The kernel's table limit is host-wide: `nf_conntrack_max` is raised to fit for
//! the run and put back after; vswitchd gets `--conntrack-max` to fit (its default is
//! 1,000,000). Only TCP is measured (no UDP or RTT rows: their datagrams would be flows too).

use super::{Context, Family, PrepareError, Prepared, TableProbe, Variant, nat, progress_line};
use crate::tools::flows;
use crate::tools::vswitchd::DaemonSettings;

/// The connection counts measured by default (`--connections`).
pub const COUNTS: [u32; 4] = [0, 1_000, 100_000, 1_000_000];

/// Rounds of flows at most.
const ROUNDS: u32 = 6;

/// Room above the count in each table's limit (the measured flows, the checks).
const HEADROOM: u32 = 50_000;

/// The table must hold this share of the count before measuring, in percent.
const FILLED_PERCENT: u64 = 99;

/// Builds one variant of `conntrack-<count>`.
///
/// # Errors
/// As `nat`'s, or the table cannot be filled.
pub fn prepare(variant: Variant, context: &Context, count: u32) -> Result<Prepared, PrepareError> {
    let limit = count.saturating_add(HEADROOM).max(1_000_000);
    let variant = match variant {
        Variant::Vswitch { kind, settings } => Variant::Vswitch {
            kind,
            settings: DaemonSettings {
                conntrack_max: Some(limit),
                ..settings
            },
        },
        other => other,
    };
    let mut prepared = nat::prepare(variant, context, Family::V4)?;
    prepared.datagrams = false;
    prepared.table = Some(if prepared.daemons.is_empty() {
        prepared
            .topology
            .raise_host_sysctl("net/netfilter/nf_conntrack_max", u64::from(limit))?;
        TableProbe::KernelConntrack {
            netns: prepared
                .topology
                .find("gw")
                .ok_or_else(|| anyhow::anyhow!("nat has no gateway namespace"))?,
        }
    } else {
        TableProbe::VswitchdConntrack
    });
    if count == 0 {
        return Ok(prepared);
    }
    let wanted = u64::from(count) * FILLED_PERCENT / 100;
    let mut held = 0;
    for round in 1..=ROUNDS {
        let (report, took) = flows::run(&prepared.client_ns, prepared.server_ip, count)?;
        held = prepared.table_entries()?.unwrap_or(0);
        progress_line(&format!(
            "conntrack-{count}: round {round}: {} datagrams in {:.1} s ({} failed), the table holds {held}",
            report.sent,
            took.as_secs_f64(),
            report.errors
        ));
        if held >= wanted {
            return Ok(prepared);
        }
    }
    Err(PrepareError::Fail(anyhow::anyhow!(
        "the table holds {held} connections after {ROUNDS} rounds of {count} flows (want {wanted})"
    )))
}
