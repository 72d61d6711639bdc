//! The control plane: resources, validation, IPAM, persistence, and the controller that turns
//! desired state into ports and engine snapshots.
//!
//! Handlers never touch worker state: the controller compiles resources into a
//! [`Snapshot`](crate::tables::snapshot::Snapshot) and publishes it.

pub mod controller;
pub mod error;
pub mod ipam;
pub mod kinds;
pub mod nat_rules;
pub mod node;
pub mod overlay;
pub mod overlay_store;
pub mod resource;
pub mod routing;
pub mod selector;
pub mod store;
#[cfg(test)]
mod testing;
pub mod validate;

pub use controller::{
    ConntrackCounters, ConntrackKey, ConntrackRow, Controller, HUB_TLS_DIRECTORY, HubTlsConfig,
    MetricsSnapshot, NatAddress, NatPortsInUse, NatReport, NatUplink, OverlayAgentConfig,
    PolicyExplanation, RoutingTableCount, RoutingTableRow, UplinkDevice, UplinkOps,
};
pub use error::ApiError;
pub use validate::AppliedResource;

/// The resources every new node starts with when no `--config` is given: Network `default`
/// and Subnet `default` (172.30.0.0/16, gateway 172.30.0.1, MTU 1500).
pub const EMBEDDED_DEFAULT_CONFIG: &str = include_str!("default.yaml");
