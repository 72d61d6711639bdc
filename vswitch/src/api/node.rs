//! Handlers for the node itself rather than a resource: version, learned MACs, counters, the
//! computed routing tables and the neighbour table.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::{Controller, RoutingTableRow};

/// The query of `GET /v1/routing-table`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutingTableQuery {
    /// Only this Network's table.
    network: Option<String>,
    /// Answer the counts by origin instead of the routes.
    #[serde(default)]
    count: bool,
}

/// The query of `GET /v1/fdb`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FdbQuery {
    /// Answer `{"count", "remote"}` instead of the MACs.
    #[serde(default)]
    count: bool,
}

/// `GET /v1/loadbalancers/{name}/backends`: a LoadBalancer's backends (state, table slots, connections); 404
/// when there is no such LoadBalancer.
pub(super) async fn load_balancer(
    State(controller): State<Arc<Controller>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    query: Result<Query<super::resources::NamespaceQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    let key = query.key(&name);
    let view = blocking(&controller, move |c| c.load_balancer_view(&key)).await?;
    Ok(Json(answer(&view)?))
}

/// The query of `GET /v1/policy/explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    /// The source: `NAME`, `NAMESPACE/NAME` (an attached interface) or an address.
    from: String,
    /// The destination, written the same way.
    to: String,
    /// `PORT[/PROTOCOL]` (TCP when left out) or `ICMP`.
    port: String,
}

/// `GET /v1/policy/explain?from=..&to=..&port=80/TCP`: what the NetworkPolicies in force
/// do with that connection, and which policy and rule decided.
pub(super) async fn explain_policy(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    let explanation = blocking(&controller, move |c| {
        c.explain_policy(&query.from, &query.to, &query.port)
    })
    .await?;
    Ok(Json(answer(&explanation)?))
}

/// `GET /v1/version`: the daemon's version and the resource API version.
pub(super) async fn version() -> Json<Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "apiVersion": super::API_VERSION,
    }))
}

/// An answer as JSON, through `Value` so that keys come out sorted like every other answer;
/// a value that cannot be serialised is a 500, never a silent `null`.
pub(super) fn answer<T: serde::Serialize>(value: &T) -> Result<Value, ErrorResponse> {
    serde_json::to_value(value).map_err(|err| {
        ErrorResponse::from(crate::control::ApiError::Internal {
            message: format!("cannot serialise the answer: {err}"),
        })
    })
}

/// `GET /v1/fdb[?count=true]`: learned MACs, per subnet, or how many there are.
pub(super) async fn fdb(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<FdbQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    if query.count {
        let count = blocking(&controller, |c| Ok(c.fdb_count())).await?;
        return Ok(Json(answer(&count)?));
    }
    let rows = blocking(&controller, |c| Ok(c.fdb())).await?;
    Ok(Json(answer(&rows)?))
}

/// `GET /v1/stats`: per-port counters, drops by reason, events.
pub(super) async fn stats(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let stats = blocking(&controller, |c| Ok(c.stats())).await?;
    Ok(Json(answer(&stats)?))
}

/// `GET /v1/routing-table[?network=N][&count=true]`: the routing tables the workers use
/// (connected, peering and static routes), of one Network or all, or how many routes they
/// hold by origin. Not `/v1/routes`: that lists the Route resources.
pub(super) async fn routing_table(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<RoutingTableQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Query(query) = query?;
    if query.count {
        let count = blocking(&controller, move |c| {
            c.routing_table_count(query.network.as_deref())
        })
        .await?;
        return Ok(Json(answer(&count)?));
    }
    let rows: Vec<RoutingTableRow> = blocking(&controller, move |c| {
        c.routing_table(query.network.as_deref())
    })
    .await?;
    Ok(Json(answer(&rows)?))
}

/// `GET /v1/neighbors`: the neighbour (ARP) table: subnet, address, MAC, state, age.
pub(super) async fn neighbors(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let rows = blocking(&controller, |c| Ok(c.neighbors())).await?;
    Ok(Json(answer(&rows)?))
}
