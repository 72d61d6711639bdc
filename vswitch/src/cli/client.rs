//! A minimal HTTP/1.1 client for the control socket: one connection per request, hyper's
//! HTTP/1 connection over a tokio `UnixStream`, driven by a current-thread runtime.
//!
//! hyper frames the request (Content-Length from the body) and the response (Content-Length
//! or chunked), so no length handling is written by hand here.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;

/// A failed exchange with vswitchd: it could not be reached or did not answer. Refusals
/// (4xx/5xx answers) are not errors at this level; see [`HttpResponse`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("cannot connect to vswitchd at {socket:?}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The OS error (not found, refused, permission denied...).
        #[source]
        source: io::Error,
    },
    /// The connection broke before a full answer arrived.
    #[error("lost the connection to vswitchd at {socket:?}: {source}")]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// No full answer within the timeout.
    #[error("vswitchd at {socket:?} did not answer within {seconds} s")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The timeout.
        seconds: u64,
    },
    /// The request could not be built (a path that is not a valid URI).
    #[error("cannot build the request for {path:?}: {source}")]
    Request {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// The I/O runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// A complete answer from vswitchd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How a streamed answer ended (see [`Client::stream`]).
#[derive(Debug)]
pub enum StreamEnd {
    /// The server ended the body; every chunk went to the sink.
    Finished,
    /// vswitchd refused the request: the whole answer.
    Refused(HttpResponse),
    /// The sink failed (the reader of a pipe left, a full disk); the stream was abandoned.
    Sink(io::Error),
}

/// A request body and its media type.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Talks to vswitchd on its control socket.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client for the socket at `socket`; each request must complete within `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Runtime`] when the runtime cannot be created.
    pub fn new(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client {
            socket: socket.to_owned(),
            timeout,
            runtime,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    /// [`ClientError`] when vswitchd cannot be reached or does not answer in time. An answer
    /// with an error status is an `Ok` [`HttpResponse`].
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<HttpResponse, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        let bytes = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, body.content_type);
                Bytes::copy_from_slice(body.bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        let exchange = self.exchange(request);
        self.runtime.block_on(async {
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    socket: self.socket.clone(),
                    seconds: self.timeout.as_secs(),
                }),
            }
        })
    }

    /// Sends a GET for `path` and hands each chunk of a 2xx answer's body to `sink` as it
    /// arrives, for as long as the server sends (the timeout applies to the answer's start
    /// only). A refusal is read whole.
    ///
    /// # Errors
    /// [`ClientError`] when vswitchd cannot be reached, does not answer in time, or the
    /// connection breaks mid-stream.
    pub fn stream(
        &self,
        path: &str,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<StreamEnd, ClientError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        self.runtime.block_on(async {
            let http_error = |source| ClientError::Http {
                socket: self.socket.clone(),
                source,
            };
            let start = async {
                let stream = tokio::net::UnixStream::connect(&self.socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    })?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(http_error)?;
                let driver = tokio::spawn(connection);
                let response = sender.send_request(request).await.map_err(http_error)?;
                Ok::<_, ClientError>((sender, driver, response))
            };
            let (sender, driver, response) = match tokio::time::timeout(self.timeout, start).await {
                Ok(started) => started?,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        socket: self.socket.clone(),
                        seconds: self.timeout.as_secs(),
                    });
                }
            };
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let end = if (200..300).contains(&status) {
                loop {
                    match body.frame().await {
                        None => break StreamEnd::Finished,
                        Some(frame) => {
                            let frame = frame.map_err(http_error)?;
                            if let Some(data) = frame.data_ref() {
                                if let Err(error) = sink(data) {
                                    break StreamEnd::Sink(error);
                                }
                            }
                        }
                    }
                }
            } else {
                let body = body
                    .collect()
                    .await
                    .map_err(http_error)?
                    .to_bytes()
                    .to_vec();
                StreamEnd::Refused(HttpResponse { status, body })
            };
            drop(sender);
            driver.abort();
            Ok(end)
        })
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<HttpResponse, ClientError> {
        let http_error = |source| ClientError::Http {
            socket: self.socket.clone(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection future does the I/O; it ends when the sender is dropped or the
        // server closes. Its error, if any, also surfaces through `send_request`.
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes()
            .to_vec();
        drop(sender);
        driver.abort();
        Ok(HttpResponse { status, body })
    }
}

/// Percent-encodes one path segment (RFC 3986 `unreserved` characters pass through), so a
/// kind or name typed by the user cannot change the request path.
pub fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("c1-eth1.x_y~"), "c1-eth1.x_y~");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
        assert_eq!(encode_segment("a b?c"), "a%20b%3Fc");
        assert_eq!(encode_segment(".."), "..");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client =
            Client::new(&dir.path().join("none.sock"), Duration::from_secs(5)).expect("client");
        let error = client
            .request(Method::GET, "/v1/version", None)
            .expect_err("no daemon");
        let ClientError::Connect { source, .. } = &error else {
            panic!("expected a connect error, got {error:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    /// A one-shot server that answers a fixed response and returns the request it read.
    fn serve_once(
        listener: std::os::unix::net::UnixListener,
        answer: &'static [u8],
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            use std::io::Write;
            let (mut stream, _) = listener.accept().expect("accept");
            let request = crate::testing::read_http_request(&mut stream);
            stream.write_all(answer).expect("write");
            request
        })
    }

    #[test]
    fn sends_content_length_and_reads_a_chunked_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = serve_once(
            listener,
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        );
        let client = Client::new(&path, Duration::from_secs(5)).expect("client");
        let response = client
            .request(
                Method::POST,
                "/v1/apply",
                Some(Body {
                    content_type: "application/yaml",
                    bytes: b"kind: Network\n",
                }),
            )
            .expect("answer");
        assert_eq!(response.status, 400);
        assert!(!response.is_success());
        assert_eq!(response.body, b"{\"a\":1}");
        let request = String::from_utf8(server.join().expect("server")).expect("utf-8");
        assert!(
            request.starts_with("POST /v1/apply HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-length: 14\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nkind: Network\n"), "{request}");
    }

    #[test]
    fn a_truncated_answer_is_an_http_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = serve_once(
            listener,
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"short\":",
        );
        let client = Client::new(&path, Duration::from_secs(5)).expect("client");
        let error = client
            .request(Method::GET, "/v1/version", None)
            .expect_err("truncated body");
        server.join().expect("server");
        assert!(matches!(error, ClientError::Http { .. }), "got {error:?}");
    }
}
