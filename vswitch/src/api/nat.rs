//! Handlers for the NAT view of the node: the conntrack table (list, count, flush) and the
//! NAT summary (uplink addresses and their users, ports in use, counters, drops).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::{ConntrackRow, Controller, NatReport};

/// The query of `GET /v1/conntrack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConntrackQuery {
    /// Only connections with a side in this Network.
    network: Option<String>,
    /// Answer `{"count": N}` instead of the entries.
    #[serde(default)]
    count: bool,
}

/// The query of `DELETE /v1/conntrack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlushQuery {
    /// Only connections with a side in this Network.
    network: Option<String>,
}

/// `GET /v1/conntrack[?network=N][&count=true]`: the live connections (both keys, state,
/// age, time left), or how many there are.
pub(super) async fn list(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<ConntrackQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    if query.count {
        let count = blocking(&controller, move |c| {
            c.conntrack_count(query.network.as_deref())
        })
        .await?;
        return Ok(Json(serde_json::json!({ "count": count })));
    }
    let rows: Vec<ConntrackRow> =
        blocking(&controller, move |c| c.conntrack(query.network.as_deref())).await?;
    // Through `Value`, so keys come out sorted like every other answer.
    Ok(Json(super::node::answer(&rows)?))
}

/// `DELETE /v1/conntrack[?network=N]`: removes the connections (and their masquerade
/// mappings); answers `{"flushed": N}`.
pub(super) async fn flush(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<FlushQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    let flushed = blocking(&controller, move |c| {
        c.flush_conntrack(query.network.as_deref())
    })
    .await?;
    Ok(Json(serde_json::json!({ "flushed": flushed })))
}

/// `GET /v1/nat`: the Uplink, its addresses and who uses each, masquerade ports in use per
/// interface, conntrack counters, NAT and conntrack drops by reason.
pub(super) async fn summary(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let report: NatReport = blocking(&controller, |c| Ok(c.nat())).await?;
    Ok(Json(super::node::answer(&report)?))
}
