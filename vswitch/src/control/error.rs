//! The one error type of the control API. Every variant maps to one HTTP status; the body is
//! `{"error": {"message": ..., "field": ...}}`.

/// A refused or failed control request. Messages name the resource, the field and the value,
/// and say what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request or a resource in it is invalid (400). Nothing was changed.
    #[error("{message}")]
    Invalid {
        /// What is wrong and what would be valid.
        message: String,
        /// Path of the offending field, e.g. `documents[1].spec.cidr`.
        field: Option<String>,
    },
    /// The named resource does not exist (404).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
    },
    /// The request conflicts with existing state (409), e.g. the name is taken or the
    /// address is in use. Nothing was changed.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// Path of the offending field, if one.
        field: Option<String>,
    },
    /// The request was valid but the system refused it (500), e.g. a netlink call failed.
    /// The running state was rolled back.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl ApiError {
    /// A 400 error on a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Invalid { .. } => 400,
            ApiError::NotFound { .. } => 404,
            ApiError::Conflict { .. } => 409,
            ApiError::Internal { .. } => 500,
        }
    }

    /// The offending field, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { field, .. } | ApiError::Conflict { field, .. } => field.as_deref(),
            ApiError::NotFound { .. } | ApiError::Internal { .. } => None,
        }
    }

    /// The JSON body: `{"error": {"message": ..., "field": ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "field": self.field(),
            }
        })
    }
}
