//! The one mapping from a refused request to an HTTP response.
//!
//! Every error the API sends, whether it comes from the controller ([`ApiError`]) or from the
//! HTTP layer (unknown route, wrong method, unreadable or oversized body), goes through
//! [`ErrorResponse`] and has the same body:
//! `{"error": {"message": "...", "field": "spec.cidr" | null}}`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::control::ApiError;

/// An error response: a status code and a message, optionally naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong, written for a person.
    pub message: String,
    /// Path of the offending field (`documents[1].spec.cidr`), if the error is about one.
    pub field: Option<String>,
}

impl ErrorResponse {
    /// An error with a status and a message and no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// The JSON body: `{"error": {"message": ..., "field": ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "field": self.field,
            }
        })
    }
}

impl From<ApiError> for ErrorResponse {
    fn from(error: ApiError) -> ErrorResponse {
        // `ApiError::status` only yields the four codes of its variants; 500 covers a value
        // that `StatusCode` would refuse, which cannot happen today.
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ErrorResponse {
            status,
            message: error.to_string(),
            field: error.field().map(str::to_owned),
        }
    }
}

impl From<StringRejection> for ErrorResponse {
    fn from(rejection: StringRejection) -> ErrorResponse {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "request body is larger than {} bytes; split the documents into several requests",
                super::MAX_BODY_BYTES
            )
        } else {
            format!("cannot read the request body: {}", rejection.body_text())
        };
        ErrorResponse::new(status, message)
    }
}

impl From<PathRejection> for ErrorResponse {
    fn from(rejection: PathRejection) -> ErrorResponse {
        let status = if rejection.status().is_server_error() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ErrorResponse::new(status, format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ErrorResponse {
    fn from(rejection: QueryRejection) -> ErrorResponse {
        ErrorResponse::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid query: {}; /v1/routing-table takes network=NAME, GET /v1/conntrack \
                 network=NAME and count=true, DELETE /v1/conntrack network=NAME",
                rejection.body_text()
            ),
        )
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        (self.status, Json(self.to_json())).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ErrorResponse::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_maps_status_message_and_field() {
        let response = ErrorResponse::from(ApiError::invalid(
            "documents[0].spec.cidr",
            "invalid CIDR \"10.0.0.0/33\"",
        ));
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            response.to_json(),
            serde_json::json!({"error": {
                "message": "invalid CIDR \"10.0.0.0/33\"",
                "field": "documents[0].spec.cidr",
            }})
        );
    }

    #[test]
    fn each_api_error_variant_keeps_its_status() {
        let cases = [
            (
                ApiError::NotFound {
                    kind: "Subnet".into(),
                    name: "a".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                ApiError::Conflict {
                    message: "taken".into(),
                    field: None,
                },
                StatusCode::CONFLICT,
            ),
            (
                ApiError::Internal {
                    message: "netlink".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in cases {
            let response = ErrorResponse::from(error.clone());
            assert_eq!(response.status, status, "{error:?}");
            assert_eq!(response.message, error.to_string());
            assert_eq!(
                response.to_json()["error"]["field"],
                serde_json::Value::Null
            );
        }
    }
}
