//! Handlers for the node itself rather than a resource: version, learned MACs, counters.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;

/// `GET /v1/version`: the daemon's version and the resource API version.
pub(super) async fn version() -> Json<Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "apiVersion": super::API_VERSION,
    }))
}

/// `GET /v1/fdb`: learned MACs, per subnet.
pub(super) async fn fdb(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    Ok(Json(blocking(&controller, |c| Ok(c.fdb())).await?))
}

/// `GET /v1/stats`: per-port counters, drops by reason, events.
pub(super) async fn stats(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    Ok(Json(blocking(&controller, |c| Ok(c.stats())).await?))
}
