//! A runner's client of the hub's registration API ([`crate::api::hub`]): one HTTP/1.1
//! connection per request (hyper's client connection over a tokio `TcpStream`, in TLS unless
//! plain HTTP was asked for), from the runner's own underlay address when it has one, a
//! bearer token, a deadline on the whole exchange, and a bounded answer. A hub whose
//! certificate this runner does not trust is [`HubCallError::Untrusted`], told apart from a
//! hub that cannot be reached.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::api::hub::{
    HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse, MAX_HUB_BODY_BYTES, PEERS_PATH,
    REGISTER_PATH,
};

/// Largest answer read from the hub's runner list: 32 MiB, room for 65,535 runners (a /24
/// per runner out of a /8) with names of the longest, 253 bytes (about 320 bytes each).
pub const MAX_PEERS_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// What this runner tells the hub it supports ([`vxlan::membership::FEATURES_HEADER`]).
const FEATURES: &str = "runner-id-u32, peers";

/// How long one exchange with the hub (connect, request, whole answer) may take.
pub const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest error text from the hub that is repeated in a status message.
const MAX_QUOTED_CHARS: usize = 300;

/// Why a call to the hub failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubCallError {
    /// No answer: connecting failed, the connection broke, or the deadline passed.
    Unreachable(String),
    /// The hub answered with an error status; `message` is its error message.
    Status {
        /// The HTTP status.
        status: u16,
        /// The hub's message (from its `{"error": {"message"}}` body).
        message: String,
    },
    /// The hub answered 2xx with a body this runner does not understand.
    BadAnswer(String),
    /// The request could not be built (e.g. a token that cannot go in an HTTP header).
    Request(String),
    /// The TLS handshake failed because the hub's certificate is not the one this runner
    /// trusts (another fingerprint, or not signed by the CA); nothing was sent.
    Untrusted(String),
}

impl fmt::Display for HubCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubCallError::Unreachable(error) => f.write_str(error),
            HubCallError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            HubCallError::BadAnswer(error) => write!(f, "unexpected answer: {error}"),
            HubCallError::Request(error) => write!(f, "cannot build the request: {error}"),
            HubCallError::Untrusted(error) => f.write_str(error),
        }
    }
}

impl std::error::Error for HubCallError {}

/// Talks to one hub.
#[derive(Clone)]
pub struct HubClient {
    address: SocketAddr,
    token: String,
    timeout: Duration,
    /// The TLS connector and the name asked of the hub; `None` for plain HTTP.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The address connections are made from (the runner's `localAddress`).
    source: Option<IpAddr>,
}

impl fmt::Debug for HubClient {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A plain-HTTP client of the hub API at `address:port`, authenticating with `token`;
    /// each exchange must complete within [`HUB_TIMEOUT`]. [`HubClient::with_tls`] makes it
    /// speak TLS.
    pub fn new(address: IpAddr, port: u16, token: &str) -> HubClient {
        HubClient {
            address: SocketAddr::new(address, port),
            token: token.to_owned(),
            timeout: HUB_TIMEOUT,
            tls: None,
            source: None,
        }
    }

    /// The same client speaking TLS with `config`, asking the hub for `server_name`.
    pub fn with_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    ) -> HubClient {
        self.tls = Some((TlsConnector::from(config), server_name));
        self
    }

    /// The same client connecting from `source` (the runner's `localAddress`: the address
    /// the hub knows it by, and serves from the runners' pool of connections).
    pub fn with_source(mut self, source: IpAddr) -> HubClient {
        self.source = Some(source);
        self
    }

    /// Whether it speaks TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The same client with another deadline per exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> HubClient {
        self.timeout = timeout;
        self
    }

    /// The hub API's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Registers with the hub: `POST /v1/overlay/register`.
    ///
    /// # Errors
    /// [`HubCallError`]: unreachable, refused (a 4xx with the hub's message, e.g. a
    /// mismatched MTU), or an answer that is not a plan.
    pub async fn register(
        &self,
        request: &vxlan::RegistrationRequest,
    ) -> Result<vxlan::RunnerPlan, HubCallError> {
        self.call(
            Method::POST,
            REGISTER_PATH,
            Some(request),
            MAX_HUB_BODY_BYTES,
        )
        .await
    }

    /// Sends a heartbeat: `POST /v1/overlay/heartbeat`; answers the ID the hub holds for
    /// `name`.
    ///
    /// # Errors
    /// [`HubCallError`]; a [`HubCallError::Status`] 404 means the hub does not know `name`
    /// (register again).
    pub async fn heartbeat(&self, name: &str) -> Result<HeartbeatResponse, HubCallError> {
        let request = HeartbeatRequest {
            name: name.to_owned(),
        };
        self.call(
            Method::POST,
            HEARTBEAT_PATH,
            Some(&request),
            MAX_HUB_BODY_BYTES,
        )
        .await
    }

    /// Reads the hub's runner list: `GET /v1/overlay/peers`.
    ///
    /// # Errors
    /// [`HubCallError`]; a [`HubCallError::Status`] 409 means the hub's runners reach each
    /// other through it.
    pub async fn peers(&self) -> Result<vxlan::OverlayPeers, HubCallError> {
        self.call::<(), _>(Method::GET, PEERS_PATH, None, MAX_PEERS_ANSWER_BYTES)
            .await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        answer_limit: usize,
    ) -> Result<T, HubCallError> {
        let body = match body {
            Some(body) => serde_json::to_vec(body).map_err(|error| {
                HubCallError::Request(format!("cannot encode the body: {error}"))
            })?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.address.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json")
            .header(vxlan::membership::FEATURES_HEADER, FEATURES);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| {
                // Never quote the header values: one of them is the token.
                HubCallError::Request(format!(
                    "{error} (is the token printable ASCII without line breaks?)"
                ))
            })?;
        let exchange = self.exchange(request, answer_limit);
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(HubCallError::Unreachable(format!(
                    "no answer within {} s",
                    self.timeout.as_secs_f64()
                )));
            }
        };
        if !(200..300).contains(&status) {
            return Err(HubCallError::Status {
                status,
                message: error_message(status, &bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            HubCallError::BadAnswer(format!(
                "{path} answered {}: {error}",
                quote(&String::from_utf8_lossy(&bytes))
            ))
        })
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(u16, Bytes), HubCallError> {
        let unreachable = |error: io::Error| HubCallError::Unreachable(error.to_string());
        let stream = match self.source {
            Some(source) => {
                let socket = if source.is_ipv6() {
                    TcpSocket::new_v6()
                } else {
                    TcpSocket::new_v4()
                }
                .map_err(unreachable)?;
                socket.bind(SocketAddr::new(source, 0)).map_err(|error| {
                    HubCallError::Unreachable(format!(
                        "cannot connect from localAddress {source}: {error}"
                    ))
                })?;
                socket.connect(self.address).await
            }
            None => TcpStream::connect(self.address).await,
        }
        .map_err(unreachable)?;
        // Heartbeats are small and latency matters more than batching.
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => exchange_on(stream, request, limit).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(handshake_error)?;
                exchange_on(stream, request, limit).await
            }
        }
    }
}

/// Sends `request` on an established connection and reads the whole answer.
async fn exchange_on<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, Bytes), HubCallError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |error: hyper::Error| HubCallError::Unreachable(error.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    // The connection future does the I/O; aborted once the answer is read. Its error, if
    // any, also surfaces through `send_request` or the body.
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|error| HubCallError::Unreachable(format!("cannot read the answer: {error}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// A failed TLS handshake: [`HubCallError::Untrusted`] when the hub's certificate was
/// refused, else unreachable (with a hint when the hub seems to speak plain HTTP).
fn handshake_error(error: io::Error) -> HubCallError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            let text = match reason {
                rustls::CertificateError::Other(other) => other.to_string(),
                reason => format!("its certificate is refused: {reason:?}"),
            };
            HubCallError::Untrusted(text)
        }
        Some(rustls::Error::InvalidMessage(_)) => HubCallError::Unreachable(format!(
            "TLS handshake failed: {error} (does the hub serve plain HTTP? see its \
             spec.tls.mode)"
        )),
        _ => HubCallError::Unreachable(format!("TLS handshake failed: {error}")),
    }
}

/// The hub's error message from its `{"error": {"message"}}` body, or the status and the
/// start of the body when it has another shape.
fn error_message(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(message) = parsed
        .as_ref()
        .and_then(|value| value.pointer("/error/message"))
        .and_then(serde_json::Value::as_str)
    {
        return quote(message);
    }
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("error");
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {}", quote(text))
    }
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, so a hostile or broken hub cannot flood
/// the status and the log.
fn quote(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::Ipv4Addr;

    #[test]
    fn error_messages_come_from_the_hub_body() {
        assert_eq!(
            error_message(
                400,
                br#"{"error": {"message": "mtu differs: hub 1450, runner 1400", "field": null}}"#
            ),
            "mtu differs: hub 1450, runner 1400"
        );
        assert_eq!(error_message(502, b""), "Bad Gateway");
        assert_eq!(error_message(418, b"  teapot\n"), "I'm a teapot: teapot");
        let long = "x".repeat(1000);
        let quoted = error_message(400, long.as_bytes());
        assert!(quoted.ends_with("..."), "{quoted}");
        assert!(quoted.len() < 400, "{}", quoted.len());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let client = HubClient::new(Ipv4Addr::new(192, 168, 50, 1).into(), 4799, "s3cret-token");
        let text = format!("{client:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("192.168.50.1:4799"), "{text}");
    }

    /// A one-shot TCP server on loopback answering `answer`; returns the request it read.
    fn serve_once(answer: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local address").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let request = crate::testing::read_http_request(&mut stream);
            stream.write_all(&answer).expect("write");
            request
        });
        (port, server)
    }

    /// An HTTP/1.1 answer with a JSON body and its Content-Length.
    fn answer(status_line: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn heartbeat_sends_the_token_and_reads_the_id() {
        let (port, server) = serve_once(answer("200 OK", r#"{"id":7}"#));
        let client = HubClient::new(Ipv4Addr::LOCALHOST.into(), port, "tok");
        let id = runtime()
            .block_on(client.heartbeat("runner-a"))
            .expect("heartbeat answered");
        assert_eq!(id.id.get(), 7);
        assert_eq!(id.peers, None);
        let request = String::from_utf8(server.join().expect("server")).expect("utf-8");
        assert!(
            request.starts_with("POST /v1/overlay/heartbeat HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer tok\r\n"), "{request}");
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n{\"name\":\"runner-a\"}"),
            "{request}"
        );
    }

    #[test]
    fn a_refusal_carries_the_hub_message() {
        let (port, server) = serve_once(answer(
            "400 Bad Request",
            r#"{"error":{"message":"mtu differs: hub 1450, runner 1400","field":null}}"#,
        ));
        let client = HubClient::new(Ipv4Addr::LOCALHOST.into(), port, "tok");
        let request = vxlan::RegistrationRequest {
            encapsulation: vxlan::Encapsulation::Vxlan,
            name: "runner-a".into(),
            local_address: Ipv4Addr::new(192, 168, 50, 2).into(),
            vni_base: 100,
            port: 4789,
            mtu: 1400,
            remote_checksum_offload: false,
        };
        let error = runtime()
            .block_on(client.register(&request))
            .expect_err("refused");
        server.join().expect("server");
        assert_eq!(
            error,
            HubCallError::Status {
                status: 400,
                message: "mtu differs: hub 1450, runner 1400".into()
            }
        );
    }

    #[test]
    fn a_body_that_is_not_the_answer_is_a_bad_answer() {
        let (port, server) = serve_once(answer("200 OK", r#"{"id":"x"}"#));
        let client = HubClient::new(Ipv4Addr::LOCALHOST.into(), port, "tok");
        let error = runtime()
            .block_on(client.heartbeat("a"))
            .expect_err("bad answer");
        server.join().expect("server");
        assert!(matches!(error, HubCallError::BadAnswer(_)), "{error:?}");
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        // Bind then drop: the port is (almost certainly) closed right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind loopback")
            .local_addr()
            .expect("local address")
            .port();
        let client = HubClient::new(Ipv4Addr::LOCALHOST.into(), port, "tok");
        let error = runtime()
            .block_on(client.heartbeat("a"))
            .expect_err("nothing listens");
        let HubCallError::Unreachable(text) = &error else {
            panic!("expected unreachable, got {error:?}");
        };
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn a_silent_hub_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local address").port();
        let client = HubClient::new(Ipv4Addr::LOCALHOST.into(), port, "tok")
            .with_timeout(Duration::from_millis(200));
        // The kernel completes the handshake (backlog) but nobody ever answers.
        let error = runtime()
            .block_on(client.heartbeat("a"))
            .expect_err("no answer");
        drop(listener);
        assert_eq!(
            error,
            HubCallError::Unreachable("no answer within 0.2 s".into())
        );
    }
}
