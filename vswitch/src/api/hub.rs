//! The hub's registration API: HTTP/1.1 + JSON over TLS 1.3 on TCP, for runners on other
//! nodes.
//!
//! | method | path | body | success |
//! |---|---|---|---|
//! | POST | `/v1/overlay/register` | `RegistrationRequest` (`name`, `localAddress`, `vniBase`, `port`, `mtu`) | 200 `RunnerPlan` |
//! | POST | `/v1/overlay/heartbeat` | `{"name"}` | 200 `{"id"}`, with `runnerToRunner: Direct` and the `peers` feature also `"peers": VERSION` |
//! | GET | `/v1/overlay/peers` | | 200 `OverlayPeers` (every runner, the plan), 409 unless `runnerToRunner: Direct` |
//!
//! Invariants:
//! - Nothing else is exposed on TCP: the control API stays on the Unix socket.
//! - TLS unless the hub's Overlay asks for plain HTTP ([`HubServerConfig::tls`] is `None`):
//!   the bearer token never crosses the underlay in clear. A plain-HTTP request to a TLS hub
//!   is answered one 400 in plain HTTP that says so, and closed.
//! - Every request, including one to an unknown path, must carry
//!   `Authorization: Bearer <token>`. The token is compared in constant time: the SHA-256
//!   digests of the given and the expected token (fixed length, so the length of either
//!   leaks nothing) with `subtle`'s `ConstantTimeEq`. Without it, or with a wrong one, the
//!   answer is 401 with `WWW-Authenticate: Bearer` before anything else (the body is not
//!   read).
//! - Errors have the control API's shape and status mapping ([`ErrorResponse`]): a refused
//!   registration (mismatched MTU, say) is a 400 whose message names the setting and both
//!   values; a name the hub holds online from another `localAddress` is a 409 naming both
//!   addresses and the runner timeout; a heartbeat from an unknown runner is a 404 (the
//!   runner must register again).
//! - Bodies are limited to [`MAX_HUB_BODY_BYTES`]; controller calls run on the blocking pool.
//! - The port is reachable by anyone on the underlay, so no peer may hold server resources
//!   for long without sending a complete, authorized request: the TLS handshake must end
//!   within [`HUB_HEADER_READ_TIMEOUT`] of the accept, then the request head must arrive
//!   within it again (this also bounds how long a kept-alive connection may wait for its
//!   next request), the body within [`HUB_BODY_READ_TIMEOUT`] (else 408), and a connection on
//!   which no byte moves for [`HUB_IDLE_TIMEOUT`] outside a handler is closed.
//! - Connections are served from two pools, chosen by the peer address when accepted:
//!   addresses of runners the hub has given an ID (online or not, and static runners) use
//!   [`HUB_MAX_RUNNER_CONNECTIONS`]; every other address (a runner registering for the first
//!   time, or anyone else) shares [`HUB_MAX_OTHER_CONNECTIONS`]. In both, one address holds
//!   at most [`HUB_MAX_CONNECTIONS_PER_ADDRESS`]. A connection that finds its pool (or its
//!   address's share) full is closed as soon as it is accepted, so the listen queue never
//!   fills behind the holders: however many addresses hold the other pool, a registered
//!   runner's connection is accepted and served from its own. The runner client connects from
//!   its `localAddress`, the address the hub knows it by.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::Controller;
use crate::control::overlay_store::{SharedStore, StoreFailure};

/// Largest accepted request body on the hub API: 64 KiB, far above a registration.
pub const MAX_HUB_BODY_BYTES: usize = 64 * 1024;

/// Longest a connection may take to send a whole request head (request line and headers),
/// counted from when the server starts waiting for it: once the TLS handshake is done, and
/// again each time a response has been written on a kept-alive connection; also the
/// deadline of the TLS handshake, counted from the accept. 10 s: a runner sends its
/// handshake and then its head (a few hundred bytes each) right after connecting, so even a
/// lossy underlay with several retransmits delivers them in well under a second; a
/// slowloris client must reconnect every 20 s at most to keep a slot, and because hyper
/// re-arms the timer when a connection turns idle, this is also the keep-alive idle timeout
/// between requests.
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

/// Most connections served at once from the addresses of runners the hub knows. 256: a
/// runner makes one short request per connection (a registration, or a heartbeat every few
/// seconds), so the default plan's 255 runners each have one in flight; a wider plan's
/// thousands share them, and a runner whose connection is closed at accept tries again at
/// its next heartbeat.
pub const HUB_MAX_RUNNER_CONNECTIONS: usize = 256;

/// Most connections served at once from every other address: runners registering for the
/// first time, and anyone else on the underlay. 64: first registrations are rare and take
/// one request each, so even a fleet coming up at once waits little, while together with
/// [`HUB_MAX_RUNNER_CONNECTIONS`] the daemon stays far below the 1024 file descriptors of a
/// default soft `RLIMIT_NOFILE` that it also needs for TAPs, sockets and state files.
pub const HUB_MAX_OTHER_CONNECTIONS: usize = 64;

/// Most connections served at once from one peer address, in either pool. 16: a runner
/// makes one request at a time on a connection of its own, so even a few runners behind one
/// address stay far below it, while one address cannot take a whole pool.
pub const HUB_MAX_CONNECTIONS_PER_ADDRESS: usize = 16;

/// How often the server refreshes the addresses of the runners it knows from the controller.
pub const HUB_KNOWN_RUNNERS_REFRESH: Duration = Duration::from_secs(1);

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

/// Path of the runner list, for runners that reach each other directly.
pub const PEERS_PATH: &str = "/v1/overlay/peers";

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The runner's ID.
    pub id: vxlan::RunnerId,
    /// When runners reach each other directly (`spec.runnerToRunner: Direct`), the version
    /// of the runner list at [`PEERS_PATH`]; only to runners that list
    /// [`vxlan::membership::FEATURE_PEERS`] (older ones refuse unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
}

/// What the hub API serves with.
#[derive(Clone)]
pub struct HubServerConfig {
    /// The bearer token runners must present (non-empty).
    pub token: String,
    /// The TLS configuration; `None` serves plain HTTP (only when the Overlay asks for it).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The overlay's shared store, where registrations are committed before they are
    /// answered (`None`: the hub's state directory alone).
    pub store: Option<Arc<dyn SharedStore>>,
}

impl std::fmt::Debug for HubServerConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubServerConfig")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The state of the hub router: the controller and the digest of the expected token.
#[derive(Debug, Clone)]
struct HubState {
    controller: Arc<Controller>,
    token_digest: Arc<TokenDigest>,
    store: Option<Arc<dyn SharedStore>>,
}

/// The SHA-256 of a token: what tokens are compared as.
#[derive(Debug, Clone, Copy)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &[u8]) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }

    /// Whether `given` hashes to this digest, compared in constant time.
    fn matches(&self, given: &[u8]) -> bool {
        TokenDigest::of(given).0.ct_eq(&self.0).into()
    }
}

/// The connection limits of the hub server; [`HubLimits::DEFAULT`] in production, smaller
/// in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HubLimits {
    /// See [`HUB_HEADER_READ_TIMEOUT`].
    header_read: Duration,
    /// See [`HUB_BODY_READ_TIMEOUT`].
    body_read: Duration,
    /// See [`HUB_IDLE_TIMEOUT`].
    idle: Duration,
    /// See [`HUB_MAX_RUNNER_CONNECTIONS`]; at least 1.
    max_runner_connections: usize,
    /// See [`HUB_MAX_OTHER_CONNECTIONS`]; at least 1.
    max_other_connections: usize,
    /// See [`HUB_MAX_CONNECTIONS_PER_ADDRESS`]; at least 1.
    max_per_address: usize,
}

impl HubLimits {
    const DEFAULT: HubLimits = HubLimits {
        header_read: HUB_HEADER_READ_TIMEOUT,
        body_read: HUB_BODY_READ_TIMEOUT,
        idle: HUB_IDLE_TIMEOUT,
        max_runner_connections: HUB_MAX_RUNNER_CONNECTIONS,
        max_other_connections: HUB_MAX_OTHER_CONNECTIONS,
        max_per_address: HUB_MAX_CONNECTIONS_PER_ADDRESS,
    };
}

/// The addresses of the runners the hub knows, as a function of the controller.
type KnownRunners = Arc<dyn Fn(&Controller) -> HashSet<IpAddr> + Send + Sync>;

/// A pool of connection slots: at most `capacity` connections, at most `per_address` from
/// one address. A [`PoolSlot`] holds one and gives it back when dropped (when its
/// connection task ends, however it ends).
#[derive(Debug)]
struct Pool {
    /// For the log: which pool.
    name: &'static str,
    capacity: usize,
    per_address: usize,
    counts: parking_lot::Mutex<PoolCounts>,
}

#[derive(Debug, Default)]
struct PoolCounts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a pool refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolFull {
    /// Every slot of the pool is taken.
    Pool,
    /// The address holds its share.
    Address,
}

/// One connection's place in a [`Pool`].
#[derive(Debug)]
struct PoolSlot {
    pool: Arc<Pool>,
    address: IpAddr,
}

impl Pool {
    fn new(name: &'static str, capacity: usize, per_address: usize) -> Arc<Pool> {
        Arc::new(Pool {
            name,
            capacity: capacity.max(1),
            per_address: per_address.max(1),
            counts: parking_lot::Mutex::default(),
        })
    }

    /// Takes a slot for `address`, or says why there is none.
    fn take(self: &Arc<Self>, address: IpAddr) -> Result<PoolSlot, PoolFull> {
        let mut counts = self.counts.lock();
        if counts.total >= self.capacity {
            return Err(PoolFull::Pool);
        }
        let count = counts.by_address.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(PoolFull::Address);
        }
        *count += 1;
        counts.total += 1;
        Ok(PoolSlot {
            pool: Arc::clone(self),
            address,
        })
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        let mut counts = self.pool.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.by_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.by_address.remove(&self.address);
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
    hub_router_with(controller, token, None, HubLimits::DEFAULT.body_read)
}

/// [`hub_router`] with the given body read timeout.
fn hub_router_with(
    controller: Arc<Controller>,
    token: &str,
    store: Option<Arc<dyn SharedStore>>,
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
        token_digest: Arc::new(TokenDigest::of(token.as_bytes())),
        store,
    };
    Ok(Router::new()
        .route(REGISTER_PATH, post(register))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .route(PEERS_PATH, get(peers))
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
/// says: [`HUB_HEADER_READ_TIMEOUT`], [`HUB_BODY_READ_TIMEOUT`], [`HUB_IDLE_TIMEOUT`], and
/// the pools [`HUB_MAX_RUNNER_CONNECTIONS`] (for the addresses of the runners the controller
/// knows, refreshed every [`HUB_KNOWN_RUNNERS_REFRESH`]) and [`HUB_MAX_OTHER_CONNECTIONS`].
/// Must run inside a tokio runtime.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for an empty token. Accept errors are not returned:
/// one that concerns a single connection is skipped, and any other (out of file
/// descriptors, say) is logged and retried after a second, as `axum::serve` does.
pub async fn serve_hub(
    controller: Arc<Controller>,
    listener: TcpListener,
    config: HubServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let known: KnownRunners = Arc::new(Controller::hub_runner_addresses);
    serve_hub_with(
        controller,
        listener,
        &config,
        HubLimits::DEFAULT,
        known,
        shutdown,
    )
    .await
}

/// [`serve_hub`] with the given limits and source of known runner addresses.
async fn serve_hub_with(
    controller: Arc<Controller>,
    listener: TcpListener,
    config: &HubServerConfig,
    limits: HubLimits,
    known_runners: KnownRunners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = hub_router_with(
        Arc::clone(&controller),
        &config.token,
        config.store.clone(),
        limits.body_read,
    )?;
    let acceptor = config.tls.clone().map(TlsAcceptor::from);
    if let Ok(address) = listener.local_addr() {
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(%address, scheme, "hub registration API listening");
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header read timeout needs a timer: without one hyper panics when serving.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let runner_pool = Pool::new(
        "runners",
        limits.max_runner_connections,
        limits.max_per_address,
    );
    let other_pool = Pool::new(
        "other addresses",
        limits.max_other_connections,
        limits.max_per_address,
    );
    // The known runners: read once before the first accept, then refreshed in the
    // background (a task of its own, so a slow controller never delays an accept).
    let known = Arc::new(parking_lot::RwLock::new(
        read_known_runners(&controller, &known_runners).await,
    ));
    // Dropping this (when this function returns) stops the refresh.
    let mut refresher = JoinSet::new();
    {
        let (known, controller) = (Arc::clone(&known), Arc::clone(&controller));
        refresher.spawn(async move {
            let mut ticker = tokio::time::interval(HUB_KNOWN_RUNNERS_REFRESH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let fresh = read_known_runners(&controller, &known_runners).await;
                *known.write() = fresh;
            }
        });
    }
    let (closing, closing_seen) = watch::channel(false);
    // Dropping this (when the returned future is dropped) aborts every connection.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    // When a full pool was last logged at warn level: at most once a minute.
    let mut last_full_warning: Option<Instant> = None;
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
            // Always accepting: a connection with no slot is closed at once, so the listen
            // queue never fills up behind the connections holding the slots.
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let address = peer.ip().to_canonical();
                        let pool = if known.read().contains(&address) {
                            &runner_pool
                        } else {
                            &other_pool
                        };
                        let slot = match pool.take(address) {
                            Ok(slot) => slot,
                            Err(full) => {
                                refused(pool, full, peer, &mut last_full_warning);
                                drop(stream);
                                continue;
                            }
                        };
                        let served = serve_connection(
                            stream,
                            peer,
                            router.clone(),
                            builder.clone(),
                            acceptor.clone(),
                            limits,
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

/// The known runner addresses, read on the blocking pool (empty when the call fails).
async fn read_known_runners(
    controller: &Arc<Controller>,
    known_runners: &KnownRunners,
) -> HashSet<IpAddr> {
    let read = Arc::clone(known_runners);
    blocking(controller, move |c| Ok(read(c)))
        .await
        .unwrap_or_default()
}

/// Logs a connection closed for want of a slot: at debug level each time (a peer can cause
/// it at will), at warn level at most once a minute when a whole pool is full.
fn refused(pool: &Pool, full: PoolFull, peer: SocketAddr, last_warning: &mut Option<Instant>) {
    tracing::debug!(%peer, pool = pool.name, ?full, "hub API: no free slot; connection closed");
    if full == PoolFull::Pool
        && last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
    {
        *last_warning = Some(Instant::now());
        tracing::warn!(
            pool = pool.name,
            capacity = pool.capacity,
            "hub API: every connection slot for {} is taken; closing new connections from \
             them (registered runners have slots of their own)",
            pool.name
        );
    }
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

/// The answer to a plain-HTTP request on a TLS hub, in plain HTTP.
const PLAINTEXT_REFUSAL: &str = "{\"error\":{\"field\":null,\"message\":\"this hub serves its \
    registration API over TLS only: use https (a runner: set spec.hub.tls with the hub's \
    fingerprint or a caFile)\"}}";

/// Serves one connection until it ends, its peer stays idle for `limits.idle`, or the
/// server shuts down (then the request in progress, if any, is finished first). With TLS,
/// the handshake must end within `limits.header_read`; a peer that speaks plain HTTP
/// instead gets [`PLAINTEXT_REFUSAL`].
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    acceptor: Option<TlsAcceptor>,
    limits: HubLimits,
    mut closing: watch::Receiver<bool>,
) {
    // Each exchange is a few small writes (TLS session tickets, then the answer): with
    // Nagle's algorithm the answer waits for the ACK of the tickets, which the runner
    // delays by 40 ms. Heartbeats took 43 ms at the median with it.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let Some(acceptor) = acceptor else {
        let watched = Watched {
            stream,
            activity: Arc::clone(&activity),
        };
        serve_http(
            watched,
            peer,
            router,
            builder,
            activity,
            limits.idle,
            closing,
        )
        .await;
        return;
    };
    let deadline = Instant::now() + limits.header_read;
    let handshake = async {
        // A TLS client speaks first, with a handshake record (0x16); an HTTP client with the
        // letters of a method.
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Ok(None);
        }
        let watched = Watched {
            stream,
            activity: Arc::clone(&activity),
        };
        if first[0].is_ascii_alphabetic() {
            refuse_plaintext(watched, deadline).await;
            return Ok(None);
        }
        acceptor.accept(watched).await.map(Some)
    };
    let tls = tokio::select! {
        handshake = tokio::time::timeout_at(deadline, handshake) => handshake,
        _ = closing.wait_for(|closing| *closing) => return,
    };
    let tls = match tls {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            // Debug only: a peer can cause these at will.
            tracing::debug!(%peer, %error, "hub API: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "hub API: no TLS handshake in time; closed");
            return;
        }
    };
    serve_http(tls, peer, router, builder, activity, limits.idle, closing).await;
}

/// Answers [`PLAINTEXT_REFUSAL`] and closes, reading (and discarding) what the client sent
/// until it closes too or `deadline` passes, so that the close does not reset the connection
/// before the client has read the answer.
async fn refuse_plaintext(mut stream: Watched, deadline: Instant) {
    tracing::debug!("hub API: a plain-HTTP request on the TLS port; refused");
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{PLAINTEXT_REFUSAL}",
        PLAINTEXT_REFUSAL.len()
    );
    let drain = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

/// Serves HTTP/1.1 on an established connection (plain or TLS): see [`serve_connection`].
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    activity: Arc<Activity>,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
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

/// Whether `headers` carry the bearer token `expected`: the SHA-256 digests of both are
/// compared in constant time, so neither where they differ nor their lengths show in the
/// time taken. A missing header is hashed and compared like a wrong token.
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    authorized_digest(headers, &TokenDigest::of(expected.as_bytes()))
}

fn authorized_digest(headers: &HeaderMap, expected: &TokenDigest) -> bool {
    let given = bearer_token(headers);
    let matches = expected.matches(given.unwrap_or_default());
    given.is_some() && matches
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
    if authorized_digest(request.headers(), &state.token_digest) {
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ErrorResponse> {
    let request: vxlan::RegistrationRequest = json_body(body, "registration request")?;
    let name = request.name.clone();
    // A runner without the header reads its ID as a byte (see vxlan::membership).
    let features = headers
        .get(vxlan::membership::FEATURES_HEADER)
        .and_then(|value| value.to_str().ok());
    let width = vxlan::membership::IdWidth::from_features(features);
    let plan = admit(&state, request, width).await.inspect_err(|error| {
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

/// How many times a registration is admitted again after the shared store found the hub's
/// copy behind (another hub gave the same ID at the same time).
const STORE_ATTEMPTS: usize = 4;

/// Admits a registration, commits it to the shared store when there is one, and sets up
/// its Subnet; answers its plan.
async fn admit(
    state: &HubState,
    request: vxlan::RegistrationRequest,
    width: vxlan::membership::IdWidth,
) -> Result<vxlan::RunnerPlan, ErrorResponse> {
    let request = Arc::new(request);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let asked = Arc::clone(&request);
        let admitted = blocking(&state.controller, move |c| c.hub_admit(&asked, width)).await?;
        if let (Some(store), Some(commit)) = (&state.store, &admitted.commit) {
            // In a task of its own: a runner that hangs up must not leave its admission
            // neither committed nor undone.
            let outcome = {
                let store = Arc::clone(store);
                let commit = commit.clone();
                let controller = Arc::clone(&state.controller);
                tokio::spawn(async move {
                    let result = store.commit(&commit).await;
                    if let Err(StoreFailure::Unavailable(_)) = &result {
                        let _ = tokio::task::spawn_blocking(move || {
                            controller.hub_store_abort(&commit);
                        })
                        .await;
                    }
                    result
                })
                .await
                .unwrap_or_else(|error| {
                    Err(StoreFailure::Unavailable(format!(
                        "the commit failed: {error}"
                    )))
                })
            };
            match outcome {
                Ok(()) => {}
                Err(StoreFailure::Conflict(why)) if attempt < STORE_ATTEMPTS => {
                    tracing::info!(runner = %request.name, "{why}; admitting again");
                    continue;
                }
                Err(StoreFailure::Conflict(why)) => {
                    return Err(ErrorResponse::new(
                        StatusCode::CONFLICT,
                        format!(
                            "registration of runner {:?} refused: the overlay store changed \
                             under {STORE_ATTEMPTS} attempts ({why}); try again",
                            request.name
                        ),
                    ));
                }
                Err(StoreFailure::Unavailable(why)) => {
                    return Err(ErrorResponse::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "registration of runner {:?} not recorded: {why}",
                            request.name
                        ),
                    ));
                }
            }
        }
        let ticket = admitted.ticket;
        blocking(&state.controller, move |c| c.hub_settle(ticket)).await?;
        return Ok(admitted.plan);
    }
}

/// `POST /v1/overlay/heartbeat`: records that a runner is alive; answers its ID, or 404 when
/// the hub does not know it (it must register again).
async fn heartbeat(
    State(state): State<HubState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ErrorResponse> {
    let request: HeartbeatRequest = json_body(body, "heartbeat")?;
    let features = headers
        .get(vxlan::membership::FEATURES_HEADER)
        .and_then(|value| value.to_str().ok());
    let answer = if vxlan::membership::has_feature(features, vxlan::membership::FEATURE_PEERS) {
        let (id, peers) = blocking(&state.controller, move |c| {
            c.hub_heartbeat_peers(&request.name)
        })
        .await?;
        HeartbeatResponse { id, peers }
    } else {
        let id = blocking(&state.controller, move |c| c.hub_heartbeat(&request.name)).await?;
        HeartbeatResponse { id, peers: None }
    };
    Ok(axum::Json(answer).into_response())
}

/// `GET /v1/overlay/peers`: every runner with the hub's plan, for runners that reach each
/// other directly; a 409 when they reach each other through the hub.
async fn peers(State(state): State<HubState>) -> Result<Response, ErrorResponse> {
    let peers = blocking(&state.controller, Controller::hub_peers).await?;
    Ok(axum::Json(peers).into_response())
}

async fn not_found(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {method} {}; the hub API serves POST {REGISTER_PATH}, POST \
             {HEARTBEAT_PATH} and GET {PEERS_PATH}",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; the hub API takes POST on {REGISTER_PATH} \
             and {HEARTBEAT_PATH}, GET on {PEERS_PATH}",
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
        let expected = TokenDigest::of(b"secret");
        assert!(expected.matches(b"secret"));
        assert!(!expected.matches(b"secreT"));
        assert!(!expected.matches(b"secre"));
        assert!(!expected.matches(b"secret2"));
        assert!(!expected.matches(b""));
        // A prefix padded with NULs must not pass: the lengths differ.
        assert!(!expected.matches(b"secret\0"));
        assert!(TokenDigest::of(b"").matches(b""));
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
        /// Serves plain HTTP through [`serve_hub`], with the production limits.
        fn start() -> Hub {
            Hub::spawn(None, None, HashSet::new())
        }

        /// Serves plain HTTP through [`serve_hub_with`] with `limits`.
        fn start_with(limits: HubLimits) -> Hub {
            Hub::spawn(Some(limits), None, HashSet::new())
        }

        /// Serves `tls` through [`serve_hub_with`] with `limits`, the runners at `known`
        /// being known.
        fn spawn(
            limits: Option<HubLimits>,
            tls: Option<Arc<rustls::ServerConfig>>,
            known: HashSet<IpAddr>,
        ) -> Hub {
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
                    let config = HubServerConfig {
                        token: TOKEN.to_owned(),
                        tls,
                        store: None,
                    };
                    match limits {
                        None => serve_hub(served, listener, config, shutdown).await,
                        Some(limits) => {
                            let known: KnownRunners = Arc::new(move |_| known.clone());
                            serve_hub_with(served, listener, &config, limits, known, shutdown).await
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
            max_runner_connections: HUB_MAX_RUNNER_CONNECTIONS,
            max_other_connections: HUB_MAX_OTHER_CONNECTIONS,
            max_per_address: HUB_MAX_CONNECTIONS_PER_ADDRESS,
        }
    }

    #[test]
    fn the_production_limits() {
        assert_eq!(HubLimits::DEFAULT.header_read, Duration::from_secs(10));
        assert_eq!(HubLimits::DEFAULT.body_read, Duration::from_secs(10));
        assert_eq!(HubLimits::DEFAULT.idle, Duration::from_secs(30));
        assert_eq!(HubLimits::DEFAULT.max_runner_connections, 256);
        assert_eq!(HubLimits::DEFAULT.max_other_connections, 64);
        // Both pools full still leave most of a default RLIMIT_NOFILE of 1024 to the daemon.
        const { assert!(HUB_MAX_RUNNER_CONNECTIONS + HUB_MAX_OTHER_CONNECTIONS <= 512) };
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

    /// A raw connection to `hub` from `source` (an address of 127.0.0.0/8: all of it is on
    /// loopback), its reads timing out after 100 ms.
    fn connect_from(hub: &Hub, source: [u8; 4]) -> std::net::TcpStream {
        let stream = connect_bound(source, hub.address);
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        stream
    }

    /// A blocking TCP connection from `source` (port 0) to `to`.
    fn connect_bound(source: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let [a, b, c, d] = source;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(a, b, c, d, 0),
        )
        .expect("bind a loopback source address");
        let SocketAddr::V4(to) = to else {
            panic!("the hub listens on IPv4")
        };
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
        std::net::TcpStream::from(fd)
    }

    #[test]
    fn connections_beyond_a_full_pool_are_closed_at_once() {
        let hub = Hub::start_with(HubLimits {
            max_other_connections: 2,
            max_per_address: 3,
            ..limits(LONG, LONG, LONG)
        });
        let mut held = [hub.connect(), hub.connect()];
        // A third is accepted and closed at once, without an answer, even with a request.
        let mut third = hub.connect();
        let body = br#"{"name": "runner-a"}"#;
        let _ = third.write_all(heartbeat_head("connection: close\r\n", body).as_bytes());
        let answer = read_until_closed(&mut third, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        for stream in &mut held {
            assert!(open_and_silent(stream), "a held connection was closed");
        }
        // Closing one held connection frees a slot: the next is served.
        let [first, mut second] = held;
        drop(first);
        std::thread::sleep(Duration::from_millis(200));
        assert_served(&hub);
        assert!(
            open_and_silent(&mut second),
            "the other held connection was closed"
        );
    }

    /// However many addresses hold the pool of unknown addresses, a registered
    /// runner's address is served from its own pool.
    #[test]
    fn registered_runners_have_slots_of_their_own() {
        let runner = [127, 0, 0, 200];
        let hub = Hub::spawn(
            Some(HubLimits {
                max_other_connections: 8,
                max_runner_connections: 4,
                max_per_address: 2,
                ..limits(LONG, LONG, LONG)
            }),
            None,
            HashSet::from([IpAddr::from(runner)]),
        );
        // Eight addresses take two slots each: sixteen tries for eight slots.
        let mut holders = Vec::new();
        for host in 10..18u8 {
            for _ in 0..2 {
                holders.push(connect_from(&hub, [127, 0, 0, host]));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let open = holders
            .iter_mut()
            .filter_map(|stream| open_and_silent(stream).then_some(()))
            .count();
        assert_eq!(open, 8, "the other pool holds exactly its capacity");
        // A fresh unknown address finds no slot: closed at once.
        let mut late = connect_from(&hub, [127, 0, 0, 99]);
        let answer = read_until_closed(&mut late, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        // The registered runner is served, several times.
        for _ in 0..3 {
            let mut stream = connect_from(&hub, runner);
            let body = br#"{"name": "runner-a"}"#;
            stream
                .write_all(heartbeat_head("connection: close\r\n", body).as_bytes())
                .expect("write head");
            stream.write_all(body).expect("write body");
            let answer = read_until_closed(&mut stream, BOUND);
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 409 "), "{answer}");
        }
        drop(holders);
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

    /// A hub serving TLS with a generated certificate, and that certificate's fingerprint.
    fn tls_hub(limits: HubLimits) -> (Hub, crate::tls::Fingerprint, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = crate::tls::hub_identity_generated(dir.path(), IpAddr::from([127, 0, 0, 1]))
            .expect("identity");
        let hub = Hub::spawn(Some(limits), Some(identity.config), HashSet::new());
        (hub, identity.fingerprint, dir)
    }

    fn client_of(hub: &Hub) -> crate::agent::HubClient {
        crate::agent::HubClient::new(
            std::net::Ipv4Addr::LOCALHOST.into(),
            hub.address.port(),
            TOKEN,
        )
        .with_timeout(BOUND)
    }

    fn pinned(fingerprint: crate::tls::Fingerprint) -> crate::tls::HubTrust {
        crate::tls::HubTrust::Pinned(fingerprint)
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn tls_serves_a_runner_that_pins_the_certificate() {
        let (hub, fingerprint, _dir) = tls_hub(limits(LONG, LONG, LONG));
        let (config, name) =
            crate::tls::client_config(&pinned(fingerprint), IpAddr::from([127, 0, 0, 1]))
                .expect("client config");
        let client = client_of(&hub).with_tls(config, name);
        let expected = ErrorResponse::from(
            hub.controller
                .hub_heartbeat("runner-a")
                .expect_err("a node without an Overlay is no hub"),
        );
        // The controller's answer, through TLS: the request got through.
        let error = block_on(client.heartbeat("runner-a")).expect_err("no Overlay here");
        let crate::agent::HubCallError::Status { status, .. } = error else {
            panic!("expected the controller's answer, got {error:?}");
        };
        assert_eq!(status, expected.status.as_u16());
    }

    #[test]
    fn tls_refuses_nothing_but_names_a_wrong_fingerprint() {
        let (hub, fingerprint, _dir) = tls_hub(limits(LONG, LONG, LONG));
        let wrong = crate::tls::Fingerprint::of(b"another certificate");
        let (config, name) =
            crate::tls::client_config(&pinned(wrong), IpAddr::from([127, 0, 0, 1]))
                .expect("client config");
        let error = block_on(client_of(&hub).with_tls(config, name).heartbeat("runner-a"))
            .expect_err("untrusted");
        let crate::agent::HubCallError::Untrusted(text) = &error else {
            panic!("expected untrusted, got {error:?}");
        };
        assert!(text.contains(&fingerprint.to_string()), "{text}");
        assert!(text.contains(&wrong.to_string()), "{text}");
    }

    #[test]
    fn a_plaintext_request_to_a_tls_hub_is_told_to_use_tls() {
        let (hub, _, _dir) = tls_hub(limits(LONG, LONG, LONG));
        let error = block_on(client_of(&hub).heartbeat("runner-a")).expect_err("plain HTTP");
        assert_eq!(
            error,
            crate::agent::HubCallError::Status {
                status: 400,
                message: "this hub serves its registration API over TLS only: use https (a \
                          runner: set spec.hub.tls with the hub's fingerprint or a caFile)"
                    .into()
            }
        );
        // Raw bytes that are neither: closed without an answer.
        let mut stream = hub.connect();
        stream.write_all(&[0u8; 64]).expect("write");
        let answer = read_until_closed(&mut stream, BOUND);
        assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
    }

    #[test]
    fn a_tls_handshake_must_end_in_time() {
        let (hub, _, _dir) = tls_hub(limits(SHORT, LONG, LONG));
        let started = std::time::Instant::now();
        let mut silent = hub.connect();
        let answer = read_until_closed(&mut silent, BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        assert!(started.elapsed() >= SHORT, "closed before the timeout");
        // Starts a handshake (the record header of a ClientHello) and stalls.
        let mut stalled = hub.connect();
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
            .expect("write");
        let answer = read_until_closed(&mut stalled, BOUND);
        assert!(answer.is_empty(), "{answer:?}");
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
