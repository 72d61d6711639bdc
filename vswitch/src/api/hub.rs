//! The hub's registration API: HTTP/1.1 + JSON on TCP, for runners on other nodes.
//!
//! | method | path | body | success |
//! |---|---|---|---|
//! | POST | `/v1/overlay/register` | `RegistrationRequest` (`name`, `localAddress`, `vniBase`, `port`, `mtu`) | 200 `RunnerPlan` |
//! | POST | `/v1/overlay/heartbeat` | `{"name"}` | 200 `{"id"}` |
//!
//! Invariants:
//! - Nothing else is exposed on TCP: the control API stays on the Unix socket.
//! - Every request, including one to an unknown path, must carry
//!   `Authorization: Bearer <token>`; the token is compared in constant time. Without it, or
//!   with a wrong one, the answer is 401 with `WWW-Authenticate: Bearer` before anything else
//!   (the body is not read).
//! - Errors have the control API's shape and status mapping ([`ErrorResponse`]): a refused
//!   registration (mismatched MTU, say) is a 400 whose message names the setting and both
//!   values; a heartbeat from an unknown runner is a 404 (the runner must register again).
//! - Bodies are limited to [`MAX_HUB_BODY_BYTES`]; controller calls run on the blocking pool.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;

/// Largest accepted request body on the hub API: 64 KiB, far above a registration.
pub const MAX_HUB_BODY_BYTES: usize = 64 * 1024;

/// Path of the registration endpoint.
pub const REGISTER_PATH: &str = "/v1/overlay/register";

/// Path of the heartbeat endpoint.
pub const HEARTBEAT_PATH: &str = "/v1/overlay/heartbeat";

/// The body of `POST /v1/overlay/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The runner's name, as it registered.
    pub name: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatResponse {
    /// The runner's ID.
    pub id: vxlan::RunnerId,
}

/// The state of the hub router: the controller and the expected bearer token.
#[derive(Debug, Clone)]
struct HubState {
    controller: Arc<Controller>,
    token: Arc<str>,
}

/// The routes of the hub API, bound to a controller and a token.
///
/// # Errors
/// An [`io::ErrorKind::InvalidInput`] error when `token` is empty: a hub that accepted an
/// empty token would accept anyone.
pub fn hub_router(controller: Arc<Controller>, token: &str) -> io::Result<Router> {
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the hub API needs a non-empty token: set spec.token of the hub's Overlay",
        ));
    }
    let state = HubState {
        controller,
        token: Arc::from(token),
    };
    Ok(Router::new()
        .route(REGISTER_PATH, post(register))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_HUB_BODY_BYTES))
        // Outermost, so it also guards unknown paths and runs before the body is read.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer_token,
        ))
        .with_state(state))
}

/// Serves the hub API on `listener` until `shutdown` completes, then waits for requests in
/// flight. Must run inside a tokio runtime.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for an empty `token`; the server's I/O error otherwise.
pub async fn serve_hub(
    controller: Arc<Controller>,
    listener: tokio::net::TcpListener,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = hub_router(controller, &token)?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "hub registration API listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Compares two byte strings in time that depends only on `expected`'s length, not on where
/// they first differ (nor on `given`'s length), so a client cannot guess the token byte by
/// byte from response times.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, expected_byte) in expected.iter().enumerate() {
        // Past the end of `given`, compare against 0; the length check above already failed.
        let given_byte = given.get(index).copied().unwrap_or(0);
        difference |= given_byte ^ expected_byte;
    }
    std::hint::black_box(difference) == 0
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 section 2.1; the scheme
/// is case-insensitive), or `None` when the header is missing or has another scheme.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = b"bearer ";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    Some(value[scheme.len()..].trim_ascii())
}

/// Whether `headers` carry the bearer token `expected`.
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    match bearer_token(headers) {
        Some(given) => constant_time_eq(given, expected.as_bytes()),
        // Still spend the comparison's time, so a missing header looks like a wrong one.
        None => {
            constant_time_eq(b"", expected.as_bytes());
            false
        }
    }
}

/// The 401 answer: the API's error shape plus `WWW-Authenticate: Bearer`.
fn unauthorized(had_header: bool) -> Response {
    let message = if had_header {
        "the bearer token is wrong: send Authorization: Bearer <token> with the token of the \
         hub's Overlay (spec.token on the hub, spec.hub.token on the runner)"
    } else {
        "authorization required: send Authorization: Bearer <token> with the token of the \
         hub's Overlay (spec.token on the hub, spec.hub.token on the runner)"
    };
    let mut response = ErrorResponse::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn require_bearer_token(
    State(state): State<HubState>,
    request: Request,
    next: Next,
) -> Response {
    if authorized(request.headers(), &state.token) {
        return next.run(request).await;
    }
    let had_header = request.headers().contains_key(header::AUTHORIZATION);
    tracing::debug!(
        method = %request.method(),
        path = %request.uri().path(),
        had_header,
        "hub API request refused: bad or missing bearer token"
    );
    unauthorized(had_header)
}

/// Reads a JSON body, refusing an oversized, unreadable or malformed one with a message that
/// names the offending field.
fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ErrorResponse> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorResponse::new(
                status,
                format!("request body is larger than {MAX_HUB_BODY_BYTES} bytes"),
            )
        } else {
            ErrorResponse::new(
                status,
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        }
    })?;
    let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let mut response = ErrorResponse::new(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}: {}", error.inner()),
        );
        if path != "." {
            response.field = Some(path);
        }
        response
    })
}

/// `POST /v1/overlay/register`: admits a runner and answers its plan.
async fn register(
    State(state): State<HubState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ErrorResponse> {
    let request: vxlan::RegistrationRequest = json_body(body, "registration request")?;
    let name = request.name.clone();
    let plan = blocking(&state.controller, move |c| c.hub_register(&request))
        .await
        .inspect_err(|error| {
            tracing::info!(runner = %name, message = %error.message, "registration refused");
        })?;
    // Through `Value`, so keys come out sorted like every other answer of the API.
    let plan = serde_json::to_value(plan).map_err(|error| {
        ErrorResponse::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the runner's plan: {error}"),
        )
    })?;
    Ok(axum::Json(plan).into_response())
}

/// `POST /v1/overlay/heartbeat`: records that a runner is alive; answers its ID, or 404 when
/// the hub does not know it (it must register again).
async fn heartbeat(
    State(state): State<HubState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ErrorResponse> {
    let request: HeartbeatRequest = json_body(body, "heartbeat")?;
    let id = blocking(&state.controller, move |c| c.hub_heartbeat(&request.name)).await?;
    Ok(axum::Json(HeartbeatResponse { id }).into_response())
}

async fn not_found(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {method} {}; the hub API serves POST {REGISTER_PATH} and POST \
             {HEARTBEAT_PATH}",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; the hub API takes POST only",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::engine::{Engine, EngineConfig};

    const TOKEN: &str = "hub-test-token";

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // A prefix padded with NULs must not pass: the lengths differ.
        assert!(!constant_time_eq(b"secret\0", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = authorization {
            map.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(
            bearer_token(&headers(Some("Bearer abc"))),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer_token(&headers(Some("bearer  abc "))),
            Some(&b"abc"[..])
        );
        assert_eq!(bearer_token(&headers(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&headers(Some("Bearer"))), None);
        assert_eq!(bearer_token(&headers(None)), None);
        assert!(authorized(&headers(Some("Bearer hub-test-token")), TOKEN));
        assert!(authorized(&headers(Some("BEARER hub-test-token")), TOKEN));
        assert!(!authorized(&headers(Some("Bearer hub-test-tokeN")), TOKEN));
        assert!(!authorized(&headers(Some("hub-test-token")), TOKEN));
        assert!(!authorized(&headers(Some("Bearer ")), TOKEN));
        assert!(!authorized(&headers(None), TOKEN));
    }

    /// A hub API on loopback with a real controller (no Overlay: the controller refuses
    /// hub calls, which is enough to see its errors mapped), stopped on drop.
    struct Hub {
        address: SocketAddr,
        controller: Arc<Controller>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<io::Result<()>>>,
        _dir: tempfile::TempDir,
    }

    impl Hub {
        fn start() -> Hub {
            let dir = tempfile::Builder::new()
                .prefix("vshub")
                .tempdir()
                .expect("tempdir");
            let engine = Engine::start(EngineConfig::new(1)).expect("engine starts");
            let controller =
                Arc::new(Controller::open(&dir.path().join("state"), engine).expect("controller"));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            listener.set_nonblocking(true).expect("non-blocking");
            let address = listener.local_addr().expect("address");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let served = Arc::clone(&controller);
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serve_hub(served, listener, TOKEN.to_owned(), async {
                        let _ = stopped.await;
                    })
                    .await
                })
            });
            Hub {
                address,
                controller,
                stop: Some(stop),
                thread: Some(thread),
                _dir: dir,
            }
        }

        /// Sends a raw HTTP/1.1 request; answers (status, headers in lower case, body).
        fn send(
            &self,
            method: &str,
            path: &str,
            authorization: Option<&str>,
            body: &[u8],
        ) -> (u16, String, serde_json::Value) {
            let mut stream = std::net::TcpStream::connect(self.address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nhost: hub\r\nconnection: close\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            );
            if let Some(value) = authorization {
                head.push_str(&format!("authorization: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).expect("write head");
            // The hub may answer (401, 413) before reading the whole body and close; a
            // failed write of the body is then expected.
            let _ = stream.write_all(body);
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            let text = String::from_utf8_lossy(&answer).to_string();
            let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .expect("a status line");
            let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
            (status, head.to_ascii_lowercase(), json)
        }
    }

    impl Drop for Hub {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            self.controller.shutdown();
        }
    }

    #[test]
    fn every_request_needs_the_token() {
        let hub = Hub::start();
        let body = br#"{"name": "runner-a"}"#;
        for (path, authorization, wrong) in [
            (HEARTBEAT_PATH, None, false),
            (REGISTER_PATH, Some("Bearer nope"), true),
            (REGISTER_PATH, Some("Basic aHViOnRva2Vu"), true),
            ("/v1/apply", None, false),
            ("/v1/overlay", Some("Bearer hub-test-token2"), true),
        ] {
            let (status, head, json) = hub.send("POST", path, authorization, body);
            assert_eq!(status, 401, "{path} {authorization:?}");
            assert!(
                head.contains("\r\nwww-authenticate: bearer"),
                "{path}: {head}"
            );
            let message = json["error"]["message"].as_str().unwrap_or_default();
            let expected = if wrong { "wrong" } else { "required" };
            assert!(message.contains(expected), "{path}: {json}");
            assert!(!message.contains(TOKEN), "the token must never be echoed");
            assert_eq!(json["error"]["field"], serde_json::Value::Null);
        }
    }

    #[test]
    fn only_the_two_endpoints_are_served() {
        let hub = Hub::start();
        let auth = Some("Bearer hub-test-token");
        let (status, _, json) = hub.send("GET", "/v1/overlays", auth, b"");
        assert_eq!(status, 404);
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(REGISTER_PATH), "{json}");
        let (status, _, json) = hub.send("GET", REGISTER_PATH, auth, b"");
        assert_eq!(status, 405, "{json}");
    }

    #[test]
    fn bodies_are_checked() {
        let hub = Hub::start();
        let auth = Some("Bearer hub-test-token");
        let (status, _, json) = hub.send("POST", HEARTBEAT_PATH, auth, br#"{"name": 5}"#);
        assert_eq!(status, 400, "{json}");
        assert_eq!(json["error"]["field"], "name", "{json}");
        let (status, _, json) = hub.send("POST", HEARTBEAT_PATH, auth, br#"{"nme": "a"}"#);
        assert_eq!(status, 400, "{json}");
        let (status, _, json) = hub.send("POST", REGISTER_PATH, auth, b"not json");
        assert_eq!(status, 400, "{json}");
        let large = format!(r#"{{"name": "{}"}}"#, "a".repeat(MAX_HUB_BODY_BYTES + 1));
        let (status, _, json) = hub.send("POST", HEARTBEAT_PATH, auth, large.as_bytes());
        assert_eq!(status, 413, "{json}");
    }

    #[test]
    fn controller_errors_keep_the_api_mapping() {
        let hub = Hub::start();
        let auth = Some("Bearer hub-test-token");
        let expected = ErrorResponse::from(
            hub.controller
                .hub_heartbeat("runner-a")
                .expect_err("a node without an Overlay is no hub"),
        );
        let (status, _, json) = hub.send("POST", HEARTBEAT_PATH, auth, br#"{"name": "runner-a"}"#);
        assert_eq!(status, expected.status.as_u16(), "{json}");
        assert_eq!(json, expected.to_json());
        let request = br#"{"name": "runner-a", "localAddress": "192.168.50.2", "vniBase": 100,
                          "port": 4789, "mtu": 1450}"#;
        let (status, _, json) = hub.send("POST", REGISTER_PATH, auth, request);
        assert!((400..500).contains(&status), "{status} {json}");
        assert!(json["error"]["message"].is_string(), "{json}");
    }

    #[test]
    fn an_empty_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::start(EngineConfig::new(1)).expect("engine starts");
        let controller =
            Arc::new(Controller::open(&dir.path().join("state"), engine).expect("controller"));
        let error = hub_router(Arc::clone(&controller), "").expect_err("empty token");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        controller.shutdown();
    }
}
