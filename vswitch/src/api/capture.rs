//! `GET /v1/capture?port=NAME[&direction=rx|tx|both][&count=N][&snaplen=N][&filter=EXPR]`:
//! streams a port's frames as a pcap file (chunked), and `GET /v1/captures`: the captures
//! running.
//!
//! The query is validated whole before the capture starts; a refusal names the field. The
//! stream starts with the pcap file header at once, then carries records as the workers
//! capture them (polled every [`POLL_INTERVAL`]). It ends after `count` frames, or when the
//! daemon stops; when the client goes away, the response body is dropped, and with it the
//! capture (see `runtime::capture`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::error::ErrorResponse;
use super::node::answer;
use super::resources::blocking;
use crate::control::Controller;
use crate::runtime::capture::{
    CaptureError, CaptureSpec, CaptureStream, Direction, Filter, MAX_SNAPLEN,
};

/// How often the stream looks for new frames while the rings are empty.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Records per chunk at most, so a chunk stays a few megabytes.
const RECORDS_PER_CHUNK: usize = 1024;

/// The media type of a pcap file (IANA: `application/vnd.tcpdump.pcap`).
const PCAP: &str = "application/vnd.tcpdump.pcap";

/// The query of `GET /v1/capture`, as text: each value is checked here so that a refusal
/// can name its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaptureQuery {
    port: Option<String>,
    direction: Option<String>,
    count: Option<String>,
    snaplen: Option<String>,
    filter: Option<String>,
}

/// The query, validated.
#[derive(Debug)]
struct CaptureRequest {
    spec: CaptureSpec,
    count: Option<u64>,
}

fn invalid(field: &str, message: String) -> ErrorResponse {
    ErrorResponse {
        status: StatusCode::BAD_REQUEST,
        message,
        field: Some(field.to_owned()),
    }
}

impl CaptureQuery {
    /// Checks every field; the first problem is the answer.
    fn validate(self) -> Result<CaptureRequest, ErrorResponse> {
        let port = self.port.filter(|port| !port.is_empty()).ok_or_else(|| {
            invalid(
                "port",
                "port is required: the NetworkInterface, Uplink or `vxlan` (the VTEP) to \
                 capture on, as `vswitchctl stats` lists them"
                    .to_owned(),
            )
        })?;
        let direction = match self.direction.as_deref() {
            None => Direction::Both,
            Some(text) => Direction::parse(text).ok_or_else(|| {
                invalid(
                    "direction",
                    format!("direction {text:?} is not valid; use rx, tx or both"),
                )
            })?,
        };
        let count = match self.count.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                invalid(
                    "count",
                    format!("count {text:?} is not valid; use a number of frames, 1 or more"),
                )
            })?),
        };
        let snaplen = match self.snaplen.as_deref() {
            None => MAX_SNAPLEN,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SNAPLEN).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "snaplen",
                        format!(
                            "snaplen {text:?} is not valid; use a number of bytes from 1 to {MAX_SNAPLEN}"
                        ),
                    )
                })?,
        };
        let filter = Filter::parse(self.filter.as_deref().unwrap_or_default())
            .map_err(|error| invalid("filter", format!("filter: {error}")))?;
        Ok(CaptureRequest {
            spec: CaptureSpec {
                port,
                direction,
                snaplen,
                filter,
            },
            count,
        })
    }
}

/// `GET /v1/capture`: the pcap stream.
pub(super) async fn capture(
    State(controller): State<Arc<Controller>>,
    query: Result<Query<CaptureQuery>, QueryRejection>,
) -> Result<Response, ErrorResponse> {
    let query = query.map_err(|rejection| {
        invalid(
            "query",
            format!(
                "invalid query: {}; /v1/capture takes port, direction, count, snaplen and filter",
                rejection.body_text()
            ),
        )
    })?;
    let CaptureRequest { spec, count } = query.0.validate()?;
    let started = blocking(&controller, move |c| Ok(c.start_capture(spec))).await?;
    let stream = started.map_err(|error| match &error {
        CaptureError::UnknownPort { .. } => ErrorResponse {
            status: StatusCode::NOT_FOUND,
            message: error.to_string(),
            field: Some("port".to_owned()),
        },
        CaptureError::TunnelPort { .. } => invalid("port", error.to_string()),
    })?;
    let body = Body::from_stream(records(stream, count));
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PCAP));
    Ok(response)
}

/// The stream's state: the capture, the frames still to send (`None`: no limit), and
/// whether the file header went out.
struct Streaming {
    capture: CaptureStream,
    remaining: Option<u64>,
    header_sent: bool,
}

/// The pcap file: the header, then chunks of records until `count` frames were sent or the
/// daemon stops. Dropping the stream (the client left) drops the capture.
fn records(
    capture: CaptureStream,
    count: Option<u64>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let state = Streaming {
        capture,
        remaining: count,
        header_sent: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if !state.header_sent {
            state.header_sent = true;
            let header = Bytes::copy_from_slice(&state.capture.file_header());
            return Some((Ok(header), state));
        }
        loop {
            if state.remaining == Some(0) || state.capture.is_closed() {
                return None;
            }
            let limit = state.remaining.map_or(RECORDS_PER_CHUNK, |n| {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(RECORDS_PER_CHUNK)
            });
            let mut chunk = Vec::new();
            let written = state.capture.drain(&mut chunk, limit);
            if written > 0 {
                if let Some(remaining) = &mut state.remaining {
                    *remaining =
                        remaining.saturating_sub(u64::try_from(written).unwrap_or(u64::MAX));
                }
                return Some((Ok(Bytes::from(chunk)), state));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
}

/// `GET /v1/captures`: the captures running, with their counters.
pub(super) async fn list(
    State(controller): State<Arc<Controller>>,
) -> Result<Json<Value>, ErrorResponse> {
    let captures = blocking(&controller, |c| Ok(c.captures())).await?;
    Ok(Json(answer(&captures)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> CaptureQuery {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        };
        CaptureQuery {
            port: get("port"),
            direction: get("direction"),
            count: get("count"),
            snaplen: get("snaplen"),
            filter: get("filter"),
        }
    }

    fn refused_field(pairs: &[(&str, &str)]) -> String {
        let error = query(pairs).validate().expect_err("refused");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        error.field.expect("names a field")
    }

    #[test]
    fn defaults_and_values() {
        let request = query(&[("port", "c1")]).validate().unwrap();
        assert_eq!(request.spec.direction, Direction::Both);
        assert_eq!(request.spec.snaplen, MAX_SNAPLEN);
        assert!(request.spec.filter.is_none() && request.count.is_none());
        let request = query(&[
            ("port", "c1"),
            ("direction", "rx"),
            ("count", "4"),
            ("snaplen", "96"),
            ("filter", "icmp and host 10.0.0.1"),
        ])
        .validate()
        .unwrap();
        assert_eq!(request.spec.direction, Direction::Rx);
        assert_eq!((request.count, request.spec.snaplen), (Some(4), 96));
        assert!(request.spec.filter.is_some());
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(refused_field(&[]), "port");
        assert_eq!(
            refused_field(&[("port", "c1"), ("direction", "in")]),
            "direction"
        );
        assert_eq!(refused_field(&[("port", "c1"), ("count", "0")]), "count");
        assert_eq!(refused_field(&[("port", "c1"), ("count", "x")]), "count");
        assert_eq!(
            refused_field(&[("port", "c1"), ("snaplen", "70000")]),
            "snaplen"
        );
        assert_eq!(
            refused_field(&[("port", "c1"), ("filter", "icmp or")]),
            "filter"
        );
    }
}
