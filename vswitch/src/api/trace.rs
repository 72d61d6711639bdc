//! Handlers of the packet tracer: `POST /v1/trace` (a synthetic frame, dry run) and
//! `POST /v1/trace/live` (the next real frames that match, waited for).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::StringRejection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::{ApiError, Controller};
use crate::trace::{TraceRecord, TraceRequest};

/// The JSON body as `T`; a missing, unknown or mistyped field is refused with its path.
fn parse_body<T: DeserializeOwned>(
    body: Result<String, StringRejection>,
    example: &str,
) -> Result<T, ErrorResponse> {
    let body = body?;
    if body.trim().is_empty() {
        return Err(ErrorResponse::from(ApiError::Invalid {
            message: format!("the request body is empty; send a JSON object such as {example}"),
            field: None,
        }));
    }
    let deserializer = &mut serde_json::Deserializer::from_str(&body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = (path != ".").then_some(path);
        ErrorResponse::from(ApiError::Invalid {
            message: format!("the request body is refused: {}", error.inner()),
            field,
        })
    })
}

/// `POST /v1/trace`: builds the frame the body describes and answers what each stage did
/// with it; nothing is sent and no table changes.
pub(super) async fn synthetic(
    State(controller): State<Arc<Controller>>,
    body: Result<String, StringRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let request: TraceRequest = parse_body(body, r#"{"in": "PORT", "packet": "icmp A > B"}"#)?;
    let record = blocking(&controller, move |c| c.trace(&request)).await?;
    Ok(Json(super::node::answer(&record)?))
}

/// Default wait of a live trace.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// Longest wait of a live trace.
const MAX_TIMEOUT_SECONDS: u64 = 300;

/// The body of `POST /v1/trace/live`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LiveRequest {
    /// The filter, e.g. `icmp` or `tcp and host 172.30.0.3`.
    #[serde(rename = "match")]
    filter: String,
    /// How many frames to trace.
    #[serde(default = "one")]
    count: usize,
    /// Only frames received on this port (or the Uplink).
    #[serde(rename = "in")]
    ingress: Option<String>,
    /// How long to wait for them (10 s by default, at most 300).
    timeout_seconds: Option<u64>,
}

fn one() -> usize {
    1
}

/// A live trace, disarmed when dropped.
struct Armed {
    controller: Arc<Controller>,
    session: Arc<crate::trace::live::Session>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.controller.stop_live_trace(&self.session);
    }
}

/// The answer of `POST /v1/trace/live`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveAnswer {
    /// The frames traced, in the order they were kept.
    records: Vec<TraceRecord>,
    /// Frames traced whose record could not be kept (the list was busy or full).
    lost: u64,
    /// False when the wait ended before `count` frames matched.
    complete: bool,
}

/// `POST /v1/trace/live`: arms a live trace, waits until `count` frames matched or the
/// timeout passed, disarms it and answers the records.
pub(super) async fn live(
    State(controller): State<Arc<Controller>>,
    body: Result<String, StringRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let request: LiveRequest = parse_body(body, r#"{"match": "icmp", "count": 2}"#)?;
    let timeout = request.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if timeout == 0 || timeout > MAX_TIMEOUT_SECONDS {
        return Err(ErrorResponse::from(ApiError::invalid(
            "timeoutSeconds",
            format!("{timeout} s: a live trace waits 1 to {MAX_TIMEOUT_SECONDS} s"),
        )));
    }
    let count = request.count;
    let session = blocking(&controller, move |c| {
        c.start_live_trace(&request.filter, request.ingress.as_deref(), count)
    })
    .await?;
    // Disarmed however the wait ends: done, timed out, or the client went away (axum then
    // drops this future).
    let armed = Armed {
        controller: Arc::clone(&controller),
        session,
    };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while !armed.session.is_done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (records, lost) = armed.session.take();
    drop(armed);
    let complete = records.len() >= count;
    Ok(Json(super::node::answer(&LiveAnswer {
        records,
        lost,
        complete,
    })?))
}
