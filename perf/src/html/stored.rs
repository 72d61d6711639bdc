//! The JSON results file (`results.json`, or any `--json` file) read back: the same document
//! [`crate::report::JsonReport`] writes, with owned strings so that old result directories
//! render as well as the run that just finished.
//!
//! Fields a future harness adds are ignored, and fields an older one lacked take their
//! defaults, so a report can always be drawn from what a directory holds.

use serde::Deserialize;

/// The whole results document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredResults {
    /// Harness name and version (`perf 0.1.0`).
    #[serde(default)]
    pub harness: String,
    /// Machine and run facts.
    #[serde(default)]
    pub run: StoredRun,
    /// Per-scenario figures, in the order they ran.
    pub scenarios: Vec<StoredScenario>,
    /// How the figures are taken.
    #[serde(default)]
    pub method: Vec<String>,
}

/// Machine and run facts, as the harness writes them.
pub use crate::report::RunInfo as StoredRun;

/// One scenario ([`crate::report::ScenarioSummary`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredScenario {
    /// Scenario key (`l2`, `policy-1000`).
    pub scenario: String,
    /// What the scenario is.
    #[serde(default)]
    pub description: String,
    /// Its variants, kernel first.
    pub variants: Vec<StoredVariant>,
}

/// One variant of one scenario ([`crate::report::VariantSummary`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredVariant {
    /// Variant label (`kernel`, `vswitch-tap-w1`, `ovs-netdev`).
    pub variant: String,
    /// `measured`, `skipped` or `failed`.
    pub status: String,
    /// Why it was skipped or failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The figures (none when skipped).
    #[serde(default)]
    pub metrics: Vec<StoredMetric>,
}

/// One metric of one variant ([`crate::report::MetricSummary`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredMetric {
    /// Metric key (`tcp_1stream`, ...), as [`crate::report::Metric::key`].
    pub metric: String,
    /// Table label.
    #[serde(default)]
    pub label: String,
    /// Unit.
    #[serde(default)]
    pub unit: String,
    /// Median over the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Number of runs.
    #[serde(default)]
    pub count: usize,
    /// Median over the kernel's median in the same invocation.
    #[serde(default)]
    pub ratio_to_kernel: Option<f64>,
    /// Sent and delivered, summed over the runs.
    #[serde(default)]
    pub check: Option<StoredCheck>,
}

/// The equivalence check ([`crate::report::Check`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredCheck {
    /// `bytes`, `packets`, `replies`, `connections` or `policies`.
    pub unit: String,
    /// Sent by the source.
    pub sent: u64,
    /// Delivered to the sink.
    pub delivered: u64,
}

impl StoredVariant {
    /// Whether the variant has figures to draw.
    pub fn is_measured(&self) -> bool {
        self.status == "measured"
    }

    /// The figures of `metric` (a [`crate::report::Metric::key`]), if measured.
    pub fn metric(&self, metric: &str) -> Option<&StoredMetric> {
        self.metrics.iter().find(|m| m.metric == metric)
    }
}

/// Parses a results document.
///
/// # Errors
/// The text is not JSON, or lacks `scenarios` or a field every figure needs.
pub fn parse(text: &str) -> serde_json::Result<StoredResults> {
    serde_json::from_str(text)
}
