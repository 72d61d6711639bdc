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
    /// Several problems in one request (each an `Invalid` or a `Conflict`), all reported
    /// at once, as Kubernetes aggregates validation errors. Nothing was changed.
    #[error("{}", aggregate_message(.0))]
    Aggregate(Vec<ApiError>),
    /// The request was valid but the system refused it (500), e.g. a netlink call failed.
    /// The running state was rolled back.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

/// `N problems (nothing was changed):` then one line per problem.
fn aggregate_message(errors: &[ApiError]) -> String {
    let mut text = format!("{} problems (nothing was changed):", errors.len());
    for error in errors {
        text.push_str("\n- ");
        text.push_str(&error.to_string());
    }
    text
}

impl ApiError {
    /// A 400 error on a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// `None` for no errors, the error itself for one, else an [`ApiError::Aggregate`] of
    /// them all (nested aggregates flattened).
    pub fn aggregate(errors: Vec<ApiError>) -> Option<ApiError> {
        let mut flat = Vec::with_capacity(errors.len());
        for error in errors {
            match error {
                ApiError::Aggregate(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(ApiError::Aggregate(flat)),
        }
    }

    /// The same error with its messages prefixed by `source` (the file an input came from).
    #[must_use]
    pub fn within(self, source: &str) -> ApiError {
        let prefix = |message: String| format!("{source}: {message}");
        match self {
            ApiError::Invalid { message, field } => ApiError::Invalid {
                message: prefix(message),
                field,
            },
            ApiError::Conflict { message, field } => ApiError::Conflict {
                message: prefix(message),
                field,
            },
            ApiError::Internal { message } => ApiError::Internal {
                message: prefix(message),
            },
            ApiError::Aggregate(errors) => {
                ApiError::Aggregate(errors.into_iter().map(|e| e.within(source)).collect())
            }
            not_found @ ApiError::NotFound { .. } => ApiError::Invalid {
                message: prefix(not_found.to_string()),
                field: None,
            },
        }
    }

    /// The errors this one stands for: itself, or each of an aggregate.
    pub fn causes(&self) -> &[ApiError] {
        match self {
            ApiError::Aggregate(errors) => errors,
            other => std::slice::from_ref(other),
        }
    }

    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            // 400 when any problem is in the request itself, else the first one's status.
            ApiError::Aggregate(errors) => {
                if errors.iter().any(|e| e.status() == 400) {
                    400
                } else {
                    errors.first().map_or(400, ApiError::status)
                }
            }
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
            ApiError::Aggregate(errors) => errors.first().and_then(ApiError::field),
            ApiError::NotFound { .. } | ApiError::Internal { .. } => None,
        }
    }

    /// The JSON body: `{"error": {"message": ..., "field": ...}}`.
    /// With several problems, `causes` lists each: `[{"message": ..., "field": ...}]`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "message": self.to_string(),
            "field": self.field(),
        });
        if let ApiError::Aggregate(errors) = self {
            error["causes"] = errors
                .iter()
                .map(|e| serde_json::json!({"message": e.to_string(), "field": e.field()}))
                .collect();
        }
        serde_json::json!({ "error": error })
    }
}
