//! The control API: HTTP/1.1 + JSON on a Unix socket (default `/run/vswitch/vswitchd.sock`,
//! mode 0600), as Docker and Firecracker do. `curl --unix-socket PATH http://localhost/v1/...`
//! works; `docs/api.md` has one example per endpoint.
//!
//! | method | path | success |
//! |---|---|---|
//! | GET | `/v1/version` | 200 `{"version", "apiVersion"}` |
//! | POST | `/v1/apply` | 200 `[{"kind", "name", "action"}]` (body: YAML or JSON documents) |
//! | GET | `/v1/fdb[?count=true]` | 200 learned MACs, or how many |
//! | GET | `/v1/stats` | 200 counters |
//! | GET | `/v1/routing-table[?network=N][&count=true]` | 200 the computed routing tables, or how many routes by origin |
//! | GET | `/v1/neighbors` | 200 the neighbour (ARP) table |
//! | GET | `/v1/conntrack[?network=N][&count=true]` | 200 connections, or `{"count"}` |
//! | DELETE | `/v1/conntrack[?network=N]` | 200 `{"flushed"}` |
//! | GET | `/v1/nat` | 200 uplink addresses, ports in use, counters, drops |
//! | GET | `/v1/capture?port=P[&direction=rx\|tx\|both][&count=N][&snaplen=N][&filter=F]` | 200 a pcap stream (chunked) of the port's frames |
//! | GET | `/v1/captures` | 200 the captures running |
//! | GET | `/v1/overlay` | 200 the overlay: runners (hub), ID and plan (runner), peers (mesh) |
//! | POST | `/v1/trace` | 200 what each stage does with a synthetic frame (dry run) |
//! | POST | `/v1/trace/live` | 200 `{"records", "lost", "complete"}` for the next matching frames |
//! | GET | `/v1/{kind}` | 200 array of resources |
//! | POST | `/v1/{kind}` | 201 the created resource (body: one JSON resource) |
//! | GET | `/v1/{kind}/{name}` | 200 the resource |
//! | DELETE | `/v1/{kind}/{name}` | 204 |
//!
//! Invariants:
//! - Handlers never touch worker state: they parse the request and call the
//!   [`Controller`] on the blocking pool; the API thread is never on the packet path.
//! - Every error, from the controller or from HTTP itself (unknown route, wrong method, bad or
//!   oversized body), has one shape: a status code and
//!   `{"error": {"message": ..., "field": ...}}` ([`ErrorResponse`]).
//! - Request bodies are limited to [`MAX_BODY_BYTES`].

mod capture;
mod error;
pub mod hub;
pub mod metrics;
mod nat;
mod node;
mod overlay;
mod resources;
mod socket;
mod trace;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ErrorResponse;
pub use overlay::{HubRunner, HubView, MeshView, OverlayView, RunnerView};
pub use socket::{ApiServeError, MAX_SOCKET_PATH_BYTES};

use crate::control::Controller;

/// The resources' `apiVersion` (defined with the resource model).
pub use crate::control::resource::API_VERSION;

/// Largest accepted request body: 32 MiB, room for 10,000 NetworkPolicies in one apply.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The default control socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/run/vswitch/vswitchd.sock";

/// The routes of the API, bound to a controller.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/version", get(node::version))
        .route("/v1/apply", post(resources::apply))
        .route("/v1/fdb", get(node::fdb))
        .route("/v1/stats", get(node::stats))
        .route("/v1/routing-table", get(node::routing_table))
        .route("/v1/neighbors", get(node::neighbors))
        .route("/v1/conntrack", get(nat::list).delete(nat::flush))
        .route("/v1/nat", get(nat::summary))
        .route("/v1/capture", get(capture::capture))
        .route("/v1/captures", get(capture::list))
        // A static segment wins over `/v1/{kind}`: the Overlay resources themselves are at
        // `/v1/overlays`.
        .route("/v1/overlay", get(overlay::view))
        .route(
            "/v1/loadbalancers/{name}/backends",
            get(node::load_balancer),
        )
        .route("/v1/policy/explain", get(node::explain_policy))
        .route("/v1/trace", post(trace::synthetic))
        .route("/v1/trace/live", post(trace::live))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/{kind}", get(resources::list).post(resources::create))
        .route(
            "/v1/{kind}/{name}",
            get(resources::get).delete(resources::delete),
        )
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .with_state(controller)
}

async fn not_found(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {method} {}; the API serves /v1/version, /v1/apply, /v1/fdb, \
             /v1/stats, /v1/routing-table, /v1/neighbors, /v1/conntrack, /v1/nat, /v1/capture, \
             /v1/captures, /v1/overlay, /v1/trace, /v1/trace/live, \
             /v1/{{kind}} and /v1/{{kind}}/{{name}}",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; see the Allow header",
            uri.path()
        ),
    )
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros(),
        "api request"
    );
    response
}

/// The control socket, bound and published, not yet serving.
///
/// Binding first lets `vswitchd` refuse to start (before it touches its state directory)
/// when another daemon already answers on the path. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ApiListener {
    listener: std::os::unix::net::UnixListener,
    guard: socket::SocketFileGuard,
}

impl ApiListener {
    /// Creates the control socket at `path` with mode 0600: creates the parent directory
    /// (mode 0755) if missing, removes a stale socket file left by a killed daemon, and
    /// refuses when another daemon answers on the path. Blocking; needs no runtime.
    ///
    /// # Errors
    /// [`ApiServeError::AlreadyRunning`] when another process answers on `path`;
    /// [`ApiServeError::NotASocket`] when `path` exists and is not a socket;
    /// [`ApiServeError::PathTooLong`]; [`ApiServeError::Io`] when a filesystem call fails.
    pub fn bind(path: &Path) -> Result<ApiListener, ApiServeError> {
        let (listener, guard) = socket::bind(path)?;
        Ok(ApiListener { listener, guard })
    }

    /// The path the socket is published at.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }

    /// Serves the API until `shutdown` completes, then waits for requests in flight, closes
    /// the socket and removes its file. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ApiServeError::Serve`] when the listener cannot be registered with the runtime or
    /// the server fails.
    pub async fn serve(
        self,
        controller: Arc<Controller>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiServeError> {
        let ApiListener { listener, guard } = self;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|source| ApiServeError::Serve { source })?;
        tracing::info!(path = %guard.path().display(), "control API listening");
        // A graceful shutdown waits for the responses in flight: capture streams, which
        // would run on, are ended first.
        let closer = Arc::clone(&controller);
        let shutdown = async move {
            shutdown.await;
            closer.close_captures();
        };
        let result = axum::serve(listener, router(controller))
            .with_graceful_shutdown(shutdown)
            .await;
        drop(guard);
        result.map_err(|source| ApiServeError::Serve { source })
    }
}

/// Binds the control socket at `socket_path` ([`ApiListener::bind`]) and serves the API until
/// `shutdown` completes ([`ApiListener::serve`]); the socket file is removed on return.
///
/// # Errors
/// See [`ApiListener::bind`] and [`ApiListener::serve`].
pub async fn serve(
    socket_path: &Path,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServeError> {
    ApiListener::bind(socket_path)?
        .serve(controller, shutdown)
        .await
}
