//! A small client of etcd v3 through its JSON gateway (`/v3/*`, served by etcd 3.4 and
//! later on the client port): ranges, puts, compare-and-swap transactions, leases and
//! watches, which is all the overlay's shared store needs ([`crate::agent::store`]).
//!
//! Why the gateway rather than gRPC: the gRPC clients (`etcd-client`) bring tonic, prost and
//! a `protoc` binary at build time, for five calls; the gateway speaks JSON over the HTTP/1.1
//! and TLS stack this crate already has. Keys and values are base64 in the gateway's JSON,
//! and 64-bit integers are strings (the proto3 JSON mapping); a watch is one POST whose
//! answer streams one JSON message per batch of events for as long as the connection
//! lives.
//!
//! Each call goes to one endpoint; when that one cannot be reached the next is tried, and
//! the one that answered is tried first next time.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one call (connect, request, whole answer) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to one endpoint (TCP and TLS) may take before the next is tried: a
/// member that drops packets must not use up the whole call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Largest answer read from etcd (a range of the whole overlay prefix included: about
/// 200 bytes per runner).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Longest text of etcd's quoted in an error.
const MAX_QUOTED_CHARS: usize = 300;

/// Why a call to etcd failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint answered (each one's error is in the text).
    Unreachable(String),
    /// etcd answered with an error (`code` is the gRPC status code, e.g. 5 for a lease not
    /// found, 11 for a revision compacted).
    Refused {
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The answer is not what the gateway sends.
    BadAnswer(String),
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unreachable(why) => write!(f, "etcd cannot be reached: {why}"),
            EtcdError::Refused { code, message } => {
                write!(f, "etcd refused the call (code {code}): {message}")
            }
            EtcdError::BadAnswer(why) => write!(f, "unexpected answer from etcd: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// gRPC's `NOT_FOUND` (a lease that expired or was revoked).
pub const CODE_NOT_FOUND: i64 = 5;

/// One endpoint: where to connect, and for TLS the name to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub tls: bool,
    /// `host:port` as written (the HTTP `Host`, and what is resolved).
    pub authority: String,
    /// The host without the port (the TLS server name).
    pub host: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` or `https://HOST:PORT` (an IPv6 host in brackets); nothing
    /// after the port but an optional `/`.
    ///
    /// # Errors
    /// What is wrong with `url`, in words.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!(
                "{url:?} is not an etcd endpoint: write http://HOST:PORT or https://HOST:PORT \
                 (etcd's client URL, e.g. http://127.0.0.1:2379)"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(format!(
                "{url:?} is not an etcd endpoint: only scheme, host and port (no path or \
                 user), e.g. http://127.0.0.1:2379"
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, port) = bracketed
                .split_once("]:")
                .ok_or_else(|| format!("{url:?} has no port after the IPv6 address"))?;
            (host, port)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| format!("{url:?} has no port (etcd's client port is 2379)"))?
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        match port.parse::<u16>() {
            Ok(port) if port != 0 => {}
            _ => return Err(format!("{url:?}: {port:?} is not a port (1..=65535)")),
        }
        Ok(Endpoint {
            tls,
            authority: authority.to_owned(),
            host: host.to_owned(),
        })
    }
}

/// A key and its value as etcd holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a delete event).
    pub value: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision that last changed it.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (its create revision is 0).
    Absent(Vec<u8>),
    /// The key exists with this value.
    ValueIs(Vec<u8>, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, attached to `lease` (0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Deletes `key`.
    Delete(Vec<u8>),
    /// Reads `key`.
    Get(Vec<u8>),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every comparison held (the success operations ran).
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
    /// What each [`Op::Get`] of the branch that ran found, in order.
    pub found: Vec<Option<KeyValue>>,
}

/// A change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted (its value is empty); `mod_revision` is the deletion's.
    Delete(KeyValue),
}

/// What one message of a watch brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order, up to `revision`.
    Events {
        /// The store's revision when sent.
        revision: i64,
        /// The changes.
        events: Vec<Event>,
    },
    /// The start revision was compacted away: the watcher missed changes, and must read
    /// the whole range again and watch from there.
    Compacted {
        /// The oldest revision still held.
        compact_revision: i64,
    },
}

/// A client of one etcd cluster (its endpoints), cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Arc<Vec<Endpoint>>,
    /// The endpoint that answered last.
    preferred: Arc<AtomicUsize>,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The range end that makes a range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

impl EtcdClient {
    /// A client of `endpoints` (at least one); `tls` is the client configuration for the
    /// `https` ones (required if there are any).
    ///
    /// # Errors
    /// A message when an endpoint cannot be parsed, or is `https` without `tls`.
    pub fn new(
        endpoints: &[String],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<EtcdClient, String> {
        let parsed: Vec<Endpoint> = endpoints
            .iter()
            .map(|url| Endpoint::parse(url))
            .collect::<Result<_, _>>()?;
        if parsed.is_empty() {
            return Err("no etcd endpoint".into());
        }
        if tls.is_none() && parsed.iter().any(|endpoint| endpoint.tls) {
            return Err("an https endpoint needs the TLS configuration".into());
        }
        Ok(EtcdClient {
            endpoints: Arc::new(parsed),
            preferred: Arc::new(AtomicUsize::new(0)),
            tls: tls.map(TlsConnector::from),
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same client with another deadline per call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdClient {
        self.timeout = timeout;
        self
    }

    /// Every key starting with `prefix`, in key order, and the revision they were read at.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let body = serde_json::json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        let answer: RangeAnswer = self.call("/v3/kv/range", &body).await?;
        let kvs = answer
            .kvs
            .into_iter()
            .map(WireKv::decode)
            .collect::<Result<_, _>>()?;
        Ok((answer.header.revision, kvs))
    }

    /// The value of `key`, if it exists.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let body = serde_json::json!({ "key": B64.encode(key) });
        let answer: RangeAnswer = self.call("/v3/kv/range", &body).await?;
        answer
            .kvs
            .into_iter()
            .next()
            .map(WireKv::decode)
            .transpose()
    }

    /// Sets `key` to `value`, attached to `lease` (0: none); answers the new revision.
    ///
    /// # Errors
    /// [`EtcdError`] (a [`CODE_NOT_FOUND`] refusal when the lease is gone).
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let answer: HeaderOnly = self
            .call("/v3/kv/put", &put_body(key, value, lease))
            .await?;
        Ok(answer.header.revision)
    }

    /// Deletes every key starting with `prefix`; answers how many were deleted.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let body = serde_json::json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        let answer: DeleteAnswer = self.call("/v3/kv/deleterange", &body).await?;
        Ok(answer.deleted)
    }

    /// Runs `success` if every comparison holds, else `failure`, atomically.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnOutcome, EtcdError> {
        let compare: Vec<serde_json::Value> = compares
            .iter()
            .map(|compare| match compare {
                Compare::Absent(key) => serde_json::json!({
                    "key": B64.encode(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": "0",
                }),
                Compare::ValueIs(key, value) => serde_json::json!({
                    "key": B64.encode(key),
                    "target": "VALUE",
                    "result": "EQUAL",
                    "value": B64.encode(value),
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<serde_json::Value> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        serde_json::json!({ "request_put": put_body(key, value, *lease) })
                    }
                    Op::Delete(key) => {
                        serde_json::json!({ "request_delete_range": { "key": B64.encode(key) } })
                    }
                    Op::Get(key) => {
                        serde_json::json!({ "request_range": { "key": B64.encode(key) } })
                    }
                })
                .collect()
        };
        let body = serde_json::json!({
            "compare": compare,
            "success": ops(success),
            "failure": ops(failure),
        });
        let answer: TxnAnswer = self.call("/v3/kv/txn", &body).await?;
        let mut found = Vec::new();
        for response in answer.responses {
            if let Some(range) = response.response_range {
                found.push(
                    range
                        .kvs
                        .into_iter()
                        .next()
                        .map(WireKv::decode)
                        .transpose()?,
                );
            }
        }
        Ok(TxnOutcome {
            succeeded: answer.succeeded,
            revision: answer.header.revision,
            found,
        })
    }

    /// A new lease of `ttl_seconds`; answers its ID.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn grant(&self, ttl_seconds: u64) -> Result<i64, EtcdError> {
        let body = serde_json::json!({ "TTL": ttl_seconds.to_string() });
        let answer: LeaseAnswer = self.call("/v3/lease/grant", &body).await?;
        if !answer.error.is_empty() {
            return Err(EtcdError::Refused {
                code: 0,
                message: answer.error,
            });
        }
        Ok(answer.id)
    }

    /// Renews lease `id`; answers its TTL now, `None` when it has expired (its keys are
    /// gone: grant a new one).
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn keep_alive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let body = serde_json::json!({ "ID": id.to_string() });
        // The gateway streams the answers of a stream of requests: one request, one answer.
        let answer: StreamMessage<LeaseAnswer> = self.call("/v3/lease/keepalive", &body).await?;
        match answer {
            StreamMessage::Result { result } => Ok((result.ttl > 0).then_some(result.ttl)),
            StreamMessage::Error { error } => Err(error.into_error()),
        }
    }

    /// Revokes lease `id`: its keys are deleted now.
    ///
    /// # Errors
    /// [`EtcdError`].
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let body = serde_json::json!({ "ID": id.to_string() });
        let _: HeaderOnly = self.call("/v3/lease/revoke", &body).await?;
        Ok(())
    }

    /// Watches every key starting with `prefix` from `start_revision` on (changes after a
    /// read at revision R: R + 1).
    ///
    /// # Errors
    /// [`EtcdError`] when the watch cannot be opened.
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let body = serde_json::json!({
            "create_request": {
                "key": B64.encode(prefix),
                "range_end": B64.encode(prefix_end(prefix)),
                "start_revision": start_revision.to_string(),
            }
        });
        let body = serde_json::to_vec(&body)
            .map_err(|error| EtcdError::BadAnswer(format!("cannot encode: {error}")))?;
        match tokio::time::timeout(self.timeout, self.open_watch(body)).await {
            Ok(result) => result,
            Err(_) => Err(EtcdError::Unreachable(format!(
                "no watch opened within {} s",
                self.timeout.as_secs_f64()
            ))),
        }
    }

    async fn open_watch(&self, body: Vec<u8>) -> Result<Watch, EtcdError> {
        let (response, driver) = self.open("/v3/watch", Bytes::from(body)).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            driver.abort();
            return Err(EtcdError::Refused {
                code: 0,
                message: format!("HTTP {status} to a watch"),
            });
        }
        let mut watch = Watch {
            body: response.into_body(),
            buffer: Vec::new(),
            driver,
            created: false,
            pending: None,
        };
        // The first message says the watch is created, or (a compacted start revision)
        // that it is over already.
        if let RawWatch::Message(message) = watch.message().await? {
            watch.pending = Some(message);
        }
        watch.created = true;
        Ok(watch)
    }

    /// POSTs `body` to `path` and decodes the JSON answer, trying each endpoint in turn.
    async fn call<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, EtcdError> {
        let body = serde_json::to_vec(body)
            .map_err(|error| EtcdError::BadAnswer(format!("cannot encode: {error}")))?;
        let body = Bytes::from(body);
        let (status, bytes) = match tokio::time::timeout(self.timeout, async {
            let (response, driver) = self.open(path, body).await?;
            let status = response.status().as_u16();
            let collected = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            driver.abort();
            let bytes = collected
                .map_err(|error| EtcdError::Unreachable(format!("cannot read: {error}")))?
                .to_bytes();
            Ok::<_, EtcdError>((status, bytes))
        })
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(EtcdError::Unreachable(format!(
                    "no answer to {path} within {} s from {}",
                    self.timeout.as_secs_f64(),
                    self.endpoints
                        .iter()
                        .map(|endpoint| endpoint.authority.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<GatewayError>(&bytes) {
                Ok(error) => error.into_error(),
                Err(_) => EtcdError::Refused {
                    code: 0,
                    message: format!("HTTP {status}: {}", quote(&String::from_utf8_lossy(&bytes))),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            EtcdError::BadAnswer(format!(
                "{path} answered {}: {error}",
                quote(&String::from_utf8_lossy(&bytes))
            ))
        })
    }

    /// Sends the request to the first endpoint that takes it (the last one that answered
    /// first); answers the response head and the task driving the connection.
    async fn open(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<(Response<Incoming>, tokio::task::JoinHandle<()>), EtcdError> {
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut errors = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            let endpoint = &self.endpoints[index];
            match self.open_on(endpoint, path, body.clone()).await {
                Ok(opened) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(opened);
                }
                Err(error) => errors.push(format!("{}: {error}", endpoint.authority)),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    async fn open_on(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: Bytes,
    ) -> Result<(Response<Incoming>, tokio::task::JoinHandle<()>), String> {
        let address = resolve(&endpoint.authority).await?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("no connection within {} s", CONNECT_TIMEOUT.as_secs_f64()))?
            .map_err(|error| error.to_string())?;
        let _ = stream.set_nodelay(true);
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        if !endpoint.tls {
            return send_on(stream, request).await;
        }
        let Some(connector) = &self.tls else {
            return Err("https needs a TLS configuration".into());
        };
        let name = ServerName::try_from(endpoint.host.trim_matches(['[', ']']).to_owned())
            .map_err(|error| format!("{:?} is not a server name: {error}", endpoint.host))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| "no TLS handshake within the connect timeout".to_owned())?
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        send_on(stream, request).await
    }
}

async fn resolve(authority: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|error| format!("cannot resolve: {error}"))?
        .next()
        .ok_or_else(|| "resolves to no address".to_owned())
}

async fn send_on<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, tokio::task::JoinHandle<()>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    match sender.send_request(request).await {
        Ok(response) => Ok((response, driver)),
        Err(error) => {
            driver.abort();
            Err(error.to_string())
        }
    }
}

/// An open watch: [`Watch::next`] answers its messages as they come.
#[derive(Debug)]
pub struct Watch {
    body: Incoming,
    buffer: Vec<u8>,
    driver: tokio::task::JoinHandle<()>,
    created: bool,
    /// A message read while opening.
    pending: Option<WatchMessage>,
}

impl Watch {
    /// The next message: changes, or a compaction (then the watch is over: read again and
    /// watch anew).
    ///
    /// # Errors
    /// [`EtcdError`] when the connection ends or breaks (the watcher may watch anew from the
    /// last revision it saw, plus one, or read everything again).
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        if let Some(message) = self.pending.take() {
            return Ok(message);
        }
        loop {
            match self.message().await? {
                RawWatch::Created => continue,
                RawWatch::Message(message) => return Ok(message),
            }
        }
    }

    async fn message(&mut self) -> Result<RawWatch, EtcdError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => {
                    return Err(EtcdError::Unreachable(format!("the watch broke: {error}")));
                }
                None => return Err(EtcdError::Unreachable("the watch ended".into())),
            }
            if self.buffer.len() > MAX_ANSWER_BYTES {
                return Err(EtcdError::BadAnswer(
                    "a watch message larger than the limit".into(),
                ));
            }
        }
    }

    /// One complete JSON message from the front of the buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<RawWatch>, EtcdError> {
        let start = self
            .buffer
            .iter()
            .position(|byte| !byte.is_ascii_whitespace())
            .unwrap_or(self.buffer.len());
        if start == self.buffer.len() {
            self.buffer.clear();
            return Ok(None);
        }
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer[start..])
            .into_iter::<StreamMessage<WireWatch>>();
        let parsed = match stream.next() {
            None => return Ok(None),
            Some(Err(error)) if error.is_eof() => return Ok(None),
            Some(Err(error)) => {
                return Err(EtcdError::BadAnswer(format!(
                    "a watch message: {error}: {}",
                    quote(&String::from_utf8_lossy(&self.buffer[start..]))
                )));
            }
            Some(Ok(parsed)) => parsed,
        };
        let used = start + stream.byte_offset();
        self.buffer.drain(..used);
        let result = match parsed {
            StreamMessage::Result { result } => result,
            StreamMessage::Error { error } => return Err(error.into_error()),
        };
        if result.compact_revision > 0 {
            return Ok(Some(RawWatch::Message(WatchMessage::Compacted {
                compact_revision: result.compact_revision,
            })));
        }
        if result.canceled {
            return Err(EtcdError::Refused {
                code: 0,
                message: format!("the watch was cancelled: {}", result.cancel_reason),
            });
        }
        if result.created && !self.created && result.events.is_empty() {
            return Ok(Some(RawWatch::Created));
        }
        let events = result
            .events
            .into_iter()
            .map(|event| {
                let kv = WireKv::decode(event.kv)?;
                Ok(if event.kind == "DELETE" {
                    Event::Delete(kv)
                } else {
                    Event::Put(kv)
                })
            })
            .collect::<Result<Vec<Event>, EtcdError>>()?;
        Ok(Some(RawWatch::Message(WatchMessage::Events {
            revision: result.header.revision,
            events,
        })))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug)]
enum RawWatch {
    Created,
    Message(WatchMessage),
}

fn put_body(key: &[u8], value: &[u8], lease: i64) -> serde_json::Value {
    let mut body = serde_json::json!({
        "key": B64.encode(key),
        "value": B64.encode(value),
    });
    if lease != 0 {
        body["lease"] = serde_json::Value::String(lease.to_string());
    }
    body
}

fn quote(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_QUOTED_CHARS {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{cut}…")
    }
}

/// A 64-bit integer of the gateway's JSON: a string (the proto3 mapping) or a number;
/// absent is 0.
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(deserializer)? {
        Int::Number(number) => Ok(number),
        Int::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    B64.decode(text.as_bytes())
        .map_err(|error| serde::de::Error::custom(format!("not base64: {error}")))
}

#[derive(Debug, Default, Deserialize)]
struct WireHeader {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct WireKv {
    #[serde(default, deserialize_with = "base64_bytes")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "base64_bytes")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
}

impl WireKv {
    fn decode(self) -> Result<KeyValue, EtcdError> {
        Ok(KeyValue {
            key: self.key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: WireHeader,
    #[serde(default)]
    kvs: Vec<WireKv>,
}

#[derive(Debug, Deserialize)]
struct HeaderOnly {
    #[serde(default)]
    header: WireHeader,
}

#[derive(Debug, Deserialize)]
struct DeleteAnswer {
    #[serde(default, deserialize_with = "int64")]
    deleted: i64,
}

#[derive(Debug, Deserialize)]
struct TxnAnswer {
    #[serde(default)]
    header: WireHeader,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    response_range: Option<RangeAnswer>,
}

#[derive(Debug, Deserialize)]
struct LeaseAnswer {
    #[serde(default, rename = "ID", deserialize_with = "int64")]
    id: i64,
    #[serde(default, rename = "TTL", deserialize_with = "int64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Deserialize)]
struct WireWatch {
    #[serde(default)]
    header: WireHeader,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    events: Vec<WireEvent>,
}

#[derive(Debug, Deserialize)]
struct WireEvent {
    /// `PUT` is the default, and left out.
    #[serde(default, rename = "type")]
    kind: String,
    kv: WireKv,
}

/// A message of a streamed answer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StreamMessage<T> {
    Result { result: T },
    Error { error: GatewayError },
}

/// The gateway's error body (`{"error", "code", "message"}`).
#[derive(Debug, Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

impl GatewayError {
    fn into_error(self) -> EtcdError {
        let message = if self.message.is_empty() {
            self.error
        } else {
            self.message
        };
        EtcdError::Refused {
            code: self.code,
            message: quote(&message),
        }
    }
}

impl From<io::Error> for EtcdError {
    fn from(error: io::Error) -> EtcdError {
        EtcdError::Unreachable(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why() {
        let endpoint = Endpoint::parse("http://127.0.0.1:2379").unwrap();
        assert_eq!(endpoint.authority, "127.0.0.1:2379");
        assert!(!endpoint.tls);
        let endpoint = Endpoint::parse("https://[fd00::1]:2379/").unwrap();
        assert_eq!(endpoint.host, "fd00::1");
        assert!(endpoint.tls);
        assert_eq!(
            Endpoint::parse("https://etcd.example:2379").unwrap().host,
            "etcd.example"
        );
        for bad in [
            "127.0.0.1:2379",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "http://127.0.0.1:2379/v3",
            "http://:2379",
            "unix:///run/etcd.sock",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn the_prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn watch_messages_parse_across_frames() {
        let text = br#"{"result":{"header":{"revision":"7"},"events":[{"kv":{"key":"L2EvMQ==","value":"eA==","create_revision":"7","mod_revision":"7"}},{"type":"DELETE","kv":{"key":"L2EvMg==","mod_revision":"7"}}]}}
{"result":{"header":{"revision":"9"},"compact_revision":"8","canceled":true}}"#;
        // The parser works on the buffer; feed it in two pieces.
        let (first, second) = text.split_at(40);
        let mut buffer = first.to_vec();
        let parse = |buffer: &mut Vec<u8>| {
            let mut stream = serde_json::Deserializer::from_slice(buffer)
                .into_iter::<StreamMessage<WireWatch>>();
            match stream.next() {
                Some(Ok(message)) => {
                    let used = stream.byte_offset();
                    buffer.drain(..used);
                    Some(message)
                }
                _ => None,
            }
        };
        assert!(parse(&mut buffer).is_none(), "half a message waits");
        buffer.extend_from_slice(second);
        let Some(StreamMessage::Result { result }) = parse(&mut buffer) else {
            panic!("a result");
        };
        assert_eq!(result.header.revision, 7);
        assert_eq!(result.events.len(), 2);
        assert_eq!(result.events[1].kind, "DELETE");
        let kv = WireKv::decode(result.events.into_iter().next().unwrap().kv).unwrap();
        assert_eq!(kv.key, b"/a/1");
        assert_eq!(kv.value, b"x");
        let Some(StreamMessage::Result { result }) = parse(&mut buffer) else {
            panic!("a result");
        };
        assert_eq!(result.compact_revision, 8);
    }
}
