//! What can go wrong in `vswitchctl`, how it is printed, and which exit code it gives.
//!
//! Printed as `vswitchctl: <message>` (plus `  (field: X)` when the API named a field), then
//! the causes, then a `try ...` hint where one helps.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use super::client::ClientError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the request failed (refused by vswitchd, or the input could not be read).
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: usage error (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: vswitchd cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// A refusal as the API reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// The API's message.
    pub message: String,
    /// The offending field, if the API named one.
    pub field: Option<String>,
}

/// Longest part of an unexpected body quoted in a message.
const QUOTED_BODY_CHARS: usize = 300;

impl ApiFailure {
    /// Reads an error answer: `{"error": {"message": ..., "field": ...}}`. Anything else (a
    /// proxy's page, an empty body) still gives a message with the status and the text.
    pub fn from_response(status: u16, body: &[u8]) -> ApiFailure {
        let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
        let error = parsed.as_ref().and_then(|value| value.get("error"));
        if let Some(message) = error
            .and_then(|error| error.get("message"))
            .and_then(serde_json::Value::as_str)
        {
            let field = error
                .and_then(|error| error.get("field"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            return ApiFailure {
                status,
                message: message.to_owned(),
                field,
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("vswitchd answered HTTP {status} with no explanation")
        } else {
            let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
            let ellipsis = if text.chars().count() > QUOTED_BODY_CHARS {
                "..."
            } else {
                ""
            };
            format!("vswitchd answered HTTP {status}: {quoted}{ellipsis}")
        };
        ApiFailure {
            status,
            message,
            field: None,
        }
    }
}

/// A failed `vswitchctl` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// vswitchd refused the request.
    #[error("{}", .failure.message)]
    Api {
        /// What the API said.
        failure: ApiFailure,
        /// A next step for the user, if one is known.
        hint: Option<String>,
    },
    /// vswitchd could not be reached or did not answer.
    #[error(transparent)]
    Unreachable(#[from] ClientError),
    /// vswitchd answered 2xx with a body that is not what the API promises.
    #[error("unexpected answer from vswitchd: {0}")]
    BadResponse(String),
    /// The input file could not be read.
    #[error("cannot read {path:?}: {source}")]
    Input {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A value that parses but cannot be used (found after argument parsing).
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

impl CliError {
    /// The exit code, as documented in `--help`.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { .. }
            | CliError::BadResponse(_)
            | CliError::Input { .. }
            | CliError::Output(_) => EXIT_REFUSED,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }

    /// Adds a hint to an API refusal (other errors carry their own).
    pub fn with_hint(self, hint: impl Into<String>) -> CliError {
        match self {
            CliError::Api { failure, .. } => CliError::Api {
                failure,
                hint: Some(hint.into()),
            },
            other => other,
        }
    }

    /// The API status, for an API refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            CliError::Api { failure, .. } => Some(failure.status),
            _ => None,
        }
    }

    /// The full text for standard error, ending in a newline.
    pub fn render(&self) -> String {
        let mut text = format!("vswitchctl: {self}");
        if let CliError::Api {
            failure: ApiFailure {
                field: Some(field), ..
            },
            ..
        } = self
        {
            let _ = write!(text, "  (field: {field})");
        }
        // The error chain, skipping causes already in the message.
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                let _ = write!(text, ": {cause_text}");
            }
            source = cause.source();
        }
        text.push('\n');
        if let Some(hint) = self.hint() {
            let _ = writeln!(text, "  {hint}");
        }
        text
    }

    fn hint(&self) -> Option<String> {
        match self {
            CliError::Api { hint, .. } => hint.clone(),
            CliError::Unreachable(ClientError::Connect { source, .. }) => {
                Some(connect_hint(source.kind()).to_owned())
            }
            CliError::Unreachable(ClientError::Timeout { .. }) => Some(
                "vswitchd may be busy or stuck; check its log, or pass a larger --timeout"
                    .to_owned(),
            ),
            CliError::Unreachable(ClientError::Http { .. }) => {
                Some("did vswitchd stop? check its log and try again".to_owned())
            }
            _ => None,
        }
    }
}

fn connect_hint(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::NotFound => {
            "is vswitchd running? start it with: sudo vswitchd, or pass --socket PATH \
             (or set VSWITCH_SOCKET)"
        }
        io::ErrorKind::ConnectionRefused => {
            "the socket file exists but nothing listens on it (vswitchd stopped?); \
             start it with: sudo vswitchd"
        }
        io::ErrorKind::PermissionDenied => {
            "the socket is mode 0600 and owned by the user running vswitchd; \
             try: sudo vswitchctl ..."
        }
        _ => "check that vswitchd is running and that --socket names its socket",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_error_shape() {
        let failure = ApiFailure::from_response(
            400,
            br#"{"error":{"message":"invalid CIDR \"x\"","field":"documents[0].spec.cidr"}}"#,
        );
        assert_eq!(
            failure,
            ApiFailure {
                status: 400,
                message: "invalid CIDR \"x\"".into(),
                field: Some("documents[0].spec.cidr".into()),
            }
        );
        let failure =
            ApiFailure::from_response(404, br#"{"error":{"message":"gone","field":null}}"#);
        assert_eq!(failure.field, None);
        assert_eq!(failure.message, "gone");
    }

    #[test]
    fn other_bodies_still_give_a_message() {
        assert_eq!(
            ApiFailure::from_response(502, b"").message,
            "vswitchd answered HTTP 502 with no explanation"
        );
        assert_eq!(
            ApiFailure::from_response(500, b"<html>oops</html>\n").message,
            "vswitchd answered HTTP 500: <html>oops</html>"
        );
        assert_eq!(
            ApiFailure::from_response(400, br#"{"error":"flat"}"#).message,
            r#"vswitchd answered HTTP 400: {"error":"flat"}"#
        );
        let long = "x".repeat(1000);
        let message = ApiFailure::from_response(500, long.as_bytes()).message;
        assert!(message.ends_with("x..."), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn render_prints_prefix_field_and_hint() {
        let error = CliError::Api {
            failure: ApiFailure {
                status: 409,
                message: "NetworkInterface \"c1\" exists".into(),
                field: Some("metadata.name".into()),
            },
            hint: None,
        }
        .with_hint("try: vswitchctl attach c1 --name c1-b");
        assert_eq!(
            error.render(),
            "vswitchctl: NetworkInterface \"c1\" exists  (field: metadata.name)\n  try: vswitchctl attach c1 --name c1-b\n"
        );
        assert_eq!(error.exit_code(), EXIT_REFUSED);
        assert_eq!(error.status(), Some(409));
    }

    #[test]
    fn unreachable_errors_exit_3_with_a_hint() {
        let error = CliError::from(ClientError::Connect {
            socket: "/run/vswitch/vswitchd.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(error.exit_code(), EXIT_UNREACHABLE);
        let text = error.render();
        assert!(
            text.starts_with(
                "vswitchctl: cannot connect to vswitchd at \"/run/vswitch/vswitchd.sock\""
            ),
            "{text}"
        );
        assert!(
            text.contains("is vswitchd running? start it with: sudo vswitchd"),
            "{text}"
        );
        // The OS error appears once.
        assert_eq!(text.matches("entity not found").count(), 1, "{text}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(CliError::BadResponse("x".into()).exit_code(), EXIT_REFUSED);
        assert_eq!(
            CliError::Input {
                path: "f".into(),
                source: io::Error::from(io::ErrorKind::NotFound)
            }
            .exit_code(),
            EXIT_REFUSED
        );
        assert_eq!(EXIT_OK, 0);
    }
}
