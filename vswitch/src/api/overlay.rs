//! The overlay view of the node (`GET /v1/overlay`): on a hub the runners it knows, on a
//! runner its ID, plan and registration state, on a mesh node its peers. The Overlay
//! resource itself is read and written at `/v1/overlays`.
//!
//! [`OverlayView`] is the answer's type: the controller builds it, this handler serialises
//! it, and `vswitchctl overlay` reads it back.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;

pub use crate::control::overlay::{HubRunner, HubView, MeshView, OverlayView, RunnerView};

/// `GET /v1/overlay`: the overlay as `vswitchctl overlay` shows it; 404 without an Overlay.
pub(super) async fn view(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let view: OverlayView = blocking(&controller, |c| c.overlay_view()).await?;
    // Through `Value`, so keys come out sorted like every other answer.
    Ok(Json(super::node::answer(&view)?))
}
