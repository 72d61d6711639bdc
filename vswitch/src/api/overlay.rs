//! The overlay view of the node (`GET /v1/overlay`): on a hub the runners it knows, on a
//! runner its ID, plan and registration state, on a mesh node its peers. The Overlay
//! resource itself is read and written at `/v1/overlays`.
//!
//! [`OverlayView`] is the answer's type: the controller builds it, this handler serialises
//! it, and `vswitchctl overlay` reads it back.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vxlan::membership::RunnerState;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;
use crate::control::resource::OverlayState;

/// The answer of `GET /v1/overlay`, by the Overlay's role (`"role": "mesh"`, `"hub"` or
/// `"runner"` beside the role's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum OverlayView {
    /// A mesh node: its peers.
    Mesh(MeshView),
    /// A hub: the runners it knows.
    Hub(HubView),
    /// A runner: its ID, plan and registration state.
    Runner(RunnerView),
}

/// A mesh node's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    /// The Overlay's name.
    pub name: String,
    /// This node's VTEP address.
    pub local_address: Ipv4Addr,
    /// The other nodes' VTEP addresses.
    pub peers: Vec<Ipv4Addr>,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not up.
    pub message: Option<String>,
}

/// A hub's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubView {
    /// The Overlay's name.
    pub name: String,
    /// This node's VTEP (and registration API) address.
    pub local_address: Ipv4Addr,
    /// The hub's address in the overlay, with the overlay's prefix length.
    pub hub_address: Ipv4Net,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not up.
    pub message: Option<String>,
    /// The runners of the pool, by ID.
    pub runners: Vec<HubRunner>,
}

/// A runner as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRunner {
    /// Its runner ID.
    pub id: u8,
    /// Its name.
    pub name: String,
    /// Its VTEP address.
    pub address: IpAddr,
    /// Its VNI (`None` when the address plan has no room for its ID).
    pub vni: Option<u32>,
    /// Its subnet (`None` like `vni`).
    pub subnet: Option<Ipv4Net>,
    /// Seconds since it registered or sent a heartbeat.
    pub last_seen_seconds_ago: u64,
    /// Online or offline.
    pub state: RunnerState,
}

/// A runner's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    /// The Overlay's name (the runner's name at the hub).
    pub name: String,
    /// This node's VTEP address.
    pub local_address: Ipv4Addr,
    /// The runner ID the hub gave (`None` until it registered).
    pub id: Option<u8>,
    /// Its VNI.
    pub vni: Option<u32>,
    /// Its subnet.
    pub subnet: Option<Ipv4Net>,
    /// The subnet's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The hub's registration API.
    pub hub: Option<SocketAddrV4>,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not registered.
    pub message: Option<String>,
    /// When the hub last answered (seconds since the Unix epoch).
    pub last_contact: Option<u64>,
}

/// `GET /v1/overlay`: the overlay as `vswitchctl overlay` shows it; 404 without an Overlay.
pub(super) async fn view(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let view: OverlayView = blocking(&controller, |c| c.overlay_view()).await?;
    // Through `Value`, so keys come out sorted like every other answer.
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}
