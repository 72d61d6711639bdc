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
//!   values; a name the hub holds online from another `localAddress` is a 409 naming both
//!   addresses and the runner timeout; a heartbeat from an unknown runner is a 404 (the
//!   runner must register again).
//! - Bodies are limited to [`MAX_HUB_BODY_BYTES`]; controller calls run on the blocking pool.
//! - The port is reachable by anyone on the underlay, so no peer may hold server resources
//!   for long without sending a complete, authorized request: the request head must arrive
//!   within [`HUB_HEADER_READ_TIMEOUT`] (this also bounds how long a kept-alive connection
//!   may wait for its next request), the body within [`HUB_BODY_READ_TIMEOUT`] (else 408), a
//!   connection on which no byte moves for [`HUB_IDLE_TIMEOUT`] outside a handler is closed,
//!   and at most [`HUB_MAX_CONNECTIONS`] connections are served at once: further ones wait
//!   in the kernel's accept queue, costing the daemon no file descriptor, until one ends.
//!   One peer address gets at most [`HUB_MAX_CONNECTIONS_PER_ADDRESS`] of them; a connection
//!   beyond that is closed as soon as it is accepted.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;

/// Largest accepted request body on the hub API: 64 KiB, far above a registration.
pub const MAX_HUB_BODY_BYTES: usize = 64 * 1024;

/// Longest a connection may take to send a whole request head (request line and headers),
/// counted from when the server starts waiting for it: when the connection is accepted, and
/// again each time a response has been written on a kept-alive connection. 10 s: a runner
/// sends its head (a few hundred bytes) in one write right after connecting, so even a lossy
/// underlay with several retransmits delivers it in well under a second; a slowloris client
/// must reconnect every 10 s to keep a slot, and because hyper re-arms the timer when a
/// connection turns idle, this is also the keep-alive idle timeout between requests.
pub const HUB_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the body of a request may take to arrive once its head has been read; a slower
/// one is answered 408 and the connection closed. 10 s: bodies are at most
/// [`MAX_HUB_BODY_BYTES`] of JSON and a runner sends its (about 150 bytes) together with the
/// head, so this only ever fires for a stalled or trickling sender.
pub const HUB_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on which no byte is read or written for this long, while no request is being
/// handled, is closed. This covers what hyper has no timer for, such as a client that
/// pipelines requests and never reads the answers, leaving the server blocked on a full
/// socket buffer. 30 s: longer than [`HUB_HEADER_READ_TIMEOUT`], so a silent connection is
/// normally closed by that one first; it never interrupts a handler waiting on the
/// controller, however long that takes.
pub const HUB_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections served at once. 256: one request in flight from each of the 255 runners
/// a hub can number, plus one, while staying far below the 1024 file descriptors of a
/// default soft `RLIMIT_NOFILE` that the daemon also needs for TAPs, sockets and state
/// files. Connections beyond it wait in the listen queue (not accepted, so they cost the
/// daemon no descriptor) until one ends, which the timeouts above guarantee happens soon.
pub const HUB_MAX_CONNECTIONS: usize = 256;

/// Most connections served at once from one peer address; a further one is closed as soon
/// as it is accepted. 16: a runner makes one request at a time on a connection of its own,
/// so even a few runners behind one NAT address stay far below it, while one address can no
/// longer take every one of the [`HUB_MAX_CONNECTIONS`] slots and lock the others out.
pub const HUB_MAX_CONNECTIONS_PER_ADDRESS: usize = 16;

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

/// The connection limits of the hub server; [`HubLimits::DEFAULT`] in production, shorter
/// in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HubLimits {
    /// See [`HUB_HEADER_READ_TIMEOUT`].
    header_read: Duration,
    /// See [`HUB_BODY_READ_TIMEOUT`].
    body_read: Duration,
    /// See [`HUB_IDLE_TIMEOUT`].
    idle: Duration,
    /// See [`HUB_MAX_CONNECTIONS`]; at least 1.
    max_connections: usize,
    /// See [`HUB_MAX_CONNECTIONS_PER_ADDRESS`]; at least 1.
    max_per_address: usize,
}

impl HubLimits {
    const DEFAULT: HubLimits = HubLimits {
        header_read: HUB_HEADER_READ_TIMEOUT,
        body_read: HUB_BODY_READ_TIMEOUT,
        idle: HUB_IDLE_TIMEOUT,
        max_connections: HUB_MAX_CONNECTIONS,
        max_per_address: HUB_MAX_CONNECTIONS_PER_ADDRESS,
    };
}

/// Connections being served per peer address; a [`PeerSlot`] holds one and gives it back
/// when dropped (when its connection task ends, however it ends).
#[derive(Debug, Default)]
struct PeerCounts(parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`PeerCounts`].
#[derive(Debug)]
struct PeerSlot {
    counts: Arc<PeerCounts>,
    address: std::net::IpAddr,
}

impl PeerCounts {
    /// Takes a slot for `address`, or `None` when it already has `limit` connections.
    fn take(self: &Arc<Self>, address: std::net::IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock();
        let count = counts.entry(address).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: Arc::clone(self),
            address,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The routes of the hub API, bound to a controller and a token. Request bodies must arrive
/// within [`HUB_BODY_READ_TIMEOUT`].
///
/// # Errors
/// An [`io::ErrorKind::InvalidInput`] error when `token` is empty: a hub that accepted an
/// empty token would accept anyone.
pub fn hub_router(controller: Arc<Controller>, token: &str) -> io::Result<Router> {
    hub_router_with(controller, token, HubLimits::DEFAULT.body_read)
}

/// [`hub_router`] with the given body read timeout.
fn hub_router_with(
    controller: Arc<Controller>,
    token: &str,
    body_read_timeout: Duration,
) -> io::Result<Router> {
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
        // Inside the token check, so an unauthorized request's body is never read.
        .layer(middleware::from_fn_with_state(
            body_read_timeout,
            read_body_in_time,
        ))
        // Outermost, so it also guards unknown paths and runs before the body is read.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer_token,
        ))
        .with_state(state))
}

/// Serves the hub API on `listener` until `shutdown` completes, then stops accepting, lets
/// each connection finish the request it is on, and returns once all are closed (the
/// timeouts bound how long that takes). Connections are limited as the module documentation
/// says: [`HUB_HEADER_READ_TIMEOUT`], [`HUB_BODY_READ_TIMEOUT`], [`HUB_IDLE_TIMEOUT`],
/// [`HUB_MAX_CONNECTIONS`]. Must run inside a tokio runtime.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for an empty `token`. Accept errors are not returned:
/// one that concerns a single connection is skipped, and any other (out of file
/// descriptors, say) is logged and retried after a second, as `axum::serve` does.
pub async fn serve_hub(
    controller: Arc<Controller>,
    listener: TcpListener,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_hub_with(controller, listener, &token, HubLimits::DEFAULT, shutdown).await
}

/// [`serve_hub`] with the given limits.
async fn serve_hub_with(
    controller: Arc<Controller>,
    listener: TcpListener,
    token: &str,
    limits: HubLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = hub_router_with(controller, token, limits.body_read)?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "hub registration API listening");
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header read timeout needs a timer: without one hyper panics when serving.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let max_connections = limits.max_connections.max(1);
    let max_per_address = limits.max_per_address.max(1);
    let peers = Arc::new(PeerCounts::default());
    let (closing, closing_seen) = watch::channel(false);
    // Dropping this (when the returned future is dropped) aborts every connection.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined
                    && error.is_panic()
                {
                    tracing::error!(%error, "a hub API connection panicked");
                }
            }
            // At the cap, stop accepting: further connections wait in the listen queue.
            accepted = listener.accept(), if connections.len() < max_connections => {
                match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = peers.take(peer.ip(), max_per_address) else {
                            tracing::debug!(%peer, "hub API: too many connections from this address; closed");
                            drop(stream);
                            continue;
                        };
                        let served = serve_connection(
                            stream,
                            peer,
                            router.clone(),
                            builder.clone(),
                            limits.idle,
                            closing_seen.clone(),
                        );
                        connections.spawn(async move {
                            served.await;
                            drop(slot);
                        });
                    }
                    Err(error) if is_connection_error(&error) => {
                        tracing::debug!(%error, "hub API: a connection failed while accepted");
                    }
                    Err(error) => {
                        tracing::error!(%error, "hub API cannot accept connections; retrying in 1 s");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        }
    }
    // New connections are refused from here on; the open ones finish their request.
    drop(listener);
    closing.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Whether an accept error concerns only the connection being accepted (the listener is
/// fine and the next accept may succeed at once).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, its peer stays idle for `idle`, or the server shuts
/// down (then the request in progress, if any, is finished first).
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let router = TowerToHyperService::new(router);
    let handlers = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request| {
        let handling = Handling::start(Arc::clone(&handlers));
        let response = hyper::service::Service::call(&router, request);
        async move {
            let response = response.await;
            drop(handling);
            response
        }
    });
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut idle_out = pin!(idle_out(&activity, idle));
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    // Debug only: a peer can cause these at will (the header timeout, say).
                    tracing::debug!(%peer, %error, "hub API connection ended with an error");
                }
                return;
            }
            () = &mut idle_out => {
                tracing::debug!(%peer, idle_s = idle.as_secs_f64(), "hub API: closing an idle connection");
                return;
            }
            // An error means the server future was dropped; draining is right then too.
            _ = closing.wait_for(|closing| *closing), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a connection last moved a byte, and whether a handler is running on it.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Milliseconds from `started` to the last read or write that moved a byte, or to the
    /// end of the last handler.
    last_ms: AtomicU64,
    handlers: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            handlers: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn handling(&self) -> bool {
        self.handlers.load(Ordering::Relaxed) > 0
    }
}

/// Marks a handler as running on a connection, from the request head to the response head;
/// the idle clock restarts when it ends.
#[derive(Debug)]
struct Handling(Arc<Activity>);

impl Handling {
    fn start(activity: Arc<Activity>) -> Handling {
        activity.handlers.fetch_add(1, Ordering::Relaxed);
        Handling(activity)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handlers.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Completes once no byte has moved on the connection for `idle` while no handler ran.
async fn idle_out(activity: &Activity, idle: Duration) {
    loop {
        let now = Instant::now();
        let deadline = if activity.handling() {
            now + idle
        } else {
            activity.last_active() + idle
        };
        if deadline <= now {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A TCP stream that records in its [`Activity`] each read or write that moves a byte.
#[derive(Debug)]
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Reads the whole request body, at most [`MAX_HUB_BODY_BYTES`], within `timeout`, and hands
/// the request on with the body in memory; answers 408 (and closes) when it is too slow,
/// 413 when it is too large.
async fn read_body_in_time(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, MAX_HUB_BODY_BYTES).collect();
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => {
            let request = Request::from_parts(parts, Body::from(collected.to_bytes()));
            next.run(request).await
        }
        Ok(Err(error)) if error.is::<LengthLimitError>() => body_too_large().into_response(),
        Ok(Err(error)) => ErrorResponse::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {error}"),
        )
        .into_response(),
        Err(_) => {
            tracing::debug!(
                method = %parts.method,
                path = %parts.uri.path(),
                "hub API request refused: its body did not arrive in time"
            );
            let mut response = ErrorResponse::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// The 413 answer.
fn body_too_large() -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {MAX_HUB_BODY_BYTES} bytes"),
    )
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
            body_too_large()
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

    use crate::runtime::{Engine, EngineConfig};

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
        /// Serves through [`serve_hub`], with the production limits.
        fn start() -> Hub {
            Hub::spawn(None)
        }

        /// Serves through [`serve_hub_with`] with `limits`.
        fn start_with(limits: HubLimits) -> Hub {
            Hub::spawn(Some(limits))
        }

        fn spawn(limits: Option<HubLimits>) -> Hub {
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
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    match limits {
                        None => serve_hub(served, listener, TOKEN.to_owned(), shutdown).await,
                        Some(limits) => {
                            serve_hub_with(served, listener, TOKEN, limits, shutdown).await
                        }
                    }
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

    impl Hub {
        /// A raw connection, its reads timing out after 100 ms.
        fn connect(&self) -> std::net::TcpStream {
            let stream = std::net::TcpStream::connect(self.address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            stream
        }

        /// Asks the server to stop; whether it returned (having closed every connection)
        /// within `bound`.
        fn stop_within(&mut self, bound: Duration) -> bool {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let started = std::time::Instant::now();
            while started.elapsed() < bound {
                if self
                    .thread
                    .as_ref()
                    .is_none_or(|thread| thread.is_finished())
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }
    }

    fn timed_out(error: &io::Error) -> bool {
        matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    }

    /// Reads until the server closes `stream`; answers what it sent before. Panics when it
    /// is still open after `bound`.
    fn read_until_closed(stream: &mut std::net::TcpStream, bound: Duration) -> Vec<u8> {
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return received,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
                Err(error) if timed_out(&error) => {
                    assert!(
                        started.elapsed() < bound,
                        "the server left the connection open for {bound:?}"
                    );
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return received,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    /// Whether `stream` is still open and silent: a read times out.
    fn open_and_silent(stream: &mut std::net::TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Err(error) if timed_out(&error))
    }

    /// Reads one response (head and `content-length` body) without waiting for the close.
    fn read_one_response(stream: &mut std::net::TcpStream, bound: Duration) -> String {
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        if name.eq_ignore_ascii_case("content-length") {
                            value.trim().parse::<usize>().ok()
                        } else {
                            None
                        }
                    })
                    .expect("a content-length");
                if body.len() >= length {
                    return text;
                }
            }
            assert!(
                started.elapsed() < bound,
                "no whole response within {bound:?}"
            );
            match stream.read(&mut buffer) {
                Ok(0) => panic!("closed before a whole response: {text:?}"),
                Ok(count) => received.extend_from_slice(&buffer[..count]),
                Err(error) if timed_out(&error) => {}
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    /// The head of an authorized heartbeat for `runner-a`, with `extra` header lines.
    fn heartbeat_head(extra: &str, body: &[u8]) -> String {
        format!(
            "POST {HEARTBEAT_PATH} HTTP/1.1\r\nhost: hub\r\n{extra}\
             content-type: application/json\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
    }

    /// A heartbeat with the right token, answered by the controller (a node without an
    /// Overlay refuses it): proof that a request is served normally.
    fn assert_served(hub: &Hub) {
        let expected = ErrorResponse::from(
            hub.controller
                .hub_heartbeat("runner-a")
                .expect_err("a node without an Overlay is no hub"),
        );
        let auth = Some("Bearer hub-test-token");
        let (status, _, json) = hub.send("POST", HEARTBEAT_PATH, auth, br#"{"name": "runner-a"}"#);
        assert_eq!(status, expected.status.as_u16(), "{json}");
        assert_eq!(json, expected.to_json());
    }

    const LONG: Duration = Duration::from_secs(60);
    const SHORT: Duration = Duration::from_millis(200);
    /// How long a test waits for the server to act on a SHORT timeout: generous, for a
    /// loaded machine.
    const BOUND: Duration = Duration::from_secs(10);

    fn limits(header_read: Duration, body_read: Duration, idle: Duration) -> HubLimits {
        HubLimits {
            header_read,
            body_read,
            idle,
            max_connections: HUB_MAX_CONNECTIONS,
            max_per_address: HUB_MAX_CONNECTIONS_PER_ADDRESS,
        }
    }

    #[test]
    fn the_production_limits() {
        assert_eq!(HubLimits::DEFAULT.header_read, Duration::from_secs(10));
        assert_eq!(HubLimits::DEFAULT.body_read, Duration::from_secs(10));
        assert_eq!(HubLimits::DEFAULT.idle, Duration::from_secs(30));
        assert_eq!(HubLimits::DEFAULT.max_connections, 256);
        assert_eq!(HubLimits::DEFAULT.max_per_address, 16);
        // A silent connection is closed by the header timeout, the tighter one.
        assert!(HUB_IDLE_TIMEOUT > HUB_HEADER_READ_TIMEOUT);
    }

    #[test]
    fn clients_that_do_not_send_a_request_head_in_time_are_disconnected() {
        // The idle timeout is long: only the header read timeout can close these.
        let hub = Hub::start_with(limits(SHORT, LONG, LONG));

        // Connects and sends nothing.
        let started = std::time::Instant::now();
        let mut silent = hub.connect();
        let answer = read_until_closed(&mut silent, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        assert!(started.elapsed() >= SHORT, "closed before the timeout");

        // Sends part of a request line and stalls.
        let mut partial = hub.connect();
        partial.write_all(b"POST /v1/overl").expect("write");
        let answer = read_until_closed(&mut partial, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));

        // Sends a head byte by byte, paced by the 100 ms read timeout, so bytes keep coming:
        // the header timeout is a deadline for the whole head, not per read.
        let mut trickle = hub.connect();
        let head = format!(
            "{}x-padding: {}\r\n\r\n",
            heartbeat_head("", b""),
            "a".repeat(200)
        );
        let started = std::time::Instant::now();
        let mut closed = false;
        for byte in head.as_bytes() {
            if trickle.write_all(std::slice::from_ref(byte)).is_err() {
                closed = true;
                break;
            }
            let mut buffer = [0u8; 64];
            match trickle.read(&mut buffer) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(count) => panic!("unexpected answer {:?}", &buffer[..count]),
                Err(error) if timed_out(&error) => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                Err(error) => panic!("read failed: {error}"),
            }
            assert!(
                started.elapsed() < BOUND,
                "the trickling client was never cut off"
            );
        }
        assert!(
            closed,
            "the whole head trickled in before the header timeout"
        );

        // A normal request is still served.
        assert_served(&hub);
    }

    #[test]
    fn a_kept_alive_connection_is_closed_when_idle_between_requests() {
        let hub = Hub::start_with(limits(SHORT, LONG, LONG));
        let mut stream = hub.connect();
        let body = br#"{"name": "runner-a"}"#;
        let head = heartbeat_head("", body);
        for _ in 0..2 {
            stream.write_all(head.as_bytes()).expect("write head");
            stream.write_all(body).expect("write body");
            let response = read_one_response(&mut stream, BOUND);
            assert!(response.starts_with("HTTP/1.1 4"), "{response}");
        }
        // Kept alive after the answers, then closed once silent for the header timeout.
        let answer = read_until_closed(&mut stream, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    }

    #[test]
    fn a_stalled_body_is_answered_408_and_closed() {
        let hub = Hub::start_with(limits(LONG, SHORT, LONG));
        let mut stream = hub.connect();
        let body = [b' '; 100];
        stream
            .write_all(heartbeat_head("", &body).as_bytes())
            .expect("write head");
        stream
            .write_all(br#"{"name": "#)
            .expect("write part of the body");
        let answer = read_until_closed(&mut stream, BOUND);
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 408 "), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.contains("did not arrive within"), "{answer}");
        assert_served(&hub);
    }

    #[test]
    fn a_connection_with_no_traffic_is_closed_by_the_idle_timeout() {
        // The header timeout is long: only the idle timeout can close this one.
        let hub = Hub::start_with(limits(LONG, LONG, SHORT));
        let started = std::time::Instant::now();
        let mut silent = hub.connect();
        let answer = read_until_closed(&mut silent, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        assert!(started.elapsed() >= SHORT, "closed before the timeout");
        assert_served(&hub);
    }

    #[test]
    fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let hub = Hub::start_with(HubLimits {
            max_connections: 2,
            max_per_address: 3,
            ..limits(LONG, LONG, LONG)
        });
        let mut held = [hub.connect(), hub.connect()];
        // A whole request on a third connection: not served while both slots are held.
        let mut third = hub.connect();
        let body = br#"{"name": "runner-a"}"#;
        third
            .write_all(heartbeat_head("connection: close\r\n", body).as_bytes())
            .expect("write head");
        third.write_all(body).expect("write body");
        std::thread::sleep(Duration::from_millis(500));
        assert!(open_and_silent(&mut third), "served beyond the cap");
        for stream in &mut held {
            assert!(open_and_silent(stream), "a held connection was closed");
        }
        // Closing one held connection frees a slot: the third is accepted and answered.
        let [first, mut second] = held;
        drop(first);
        let answer = read_until_closed(&mut third, BOUND);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        assert!(
            open_and_silent(&mut second),
            "the other held connection was closed"
        );
        drop(second);
        assert_served(&hub);
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_share() {
        let hub = Hub::start_with(HubLimits {
            max_per_address: 2,
            ..limits(LONG, LONG, LONG)
        });
        let mut held = [hub.connect(), hub.connect()];
        // The listen queue is first in, first out: the third is accepted after both.
        let mut third = hub.connect();
        let closed = read_until_closed(&mut third, BOUND);
        assert!(closed.is_empty(), "{:?}", String::from_utf8_lossy(&closed));
        for stream in &mut held {
            assert!(open_and_silent(stream), "a held connection was closed");
        }
        // One given back: the address is served again.
        let [first, second] = held;
        drop(first);
        std::thread::sleep(Duration::from_millis(200));
        assert_served(&hub);
        drop(second);
    }

    #[test]
    fn shutdown_closes_connections_that_have_not_sent_anything() {
        let mut hub = Hub::start_with(limits(LONG, LONG, LONG));
        let mut silent = hub.connect();
        // Once a later connection is served, the silent one has been accepted.
        assert_served(&hub);
        assert!(open_and_silent(&mut silent));
        assert!(hub.stop_within(BOUND), "the server did not stop");
        let answer = read_until_closed(&mut silent, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
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
