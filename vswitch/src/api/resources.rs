//! Handlers for resources of every kind: `apply`, list, get, create and delete.
//!
//! The controller owns kinds: it normalises the kind as the user wrote it (any case, singular
//! or plural), validates, and refuses unknown kinds. These handlers only read the request,
//! check what HTTP alone can check (the body is UTF-8, not empty, and valid JSON where JSON
//! is required), and run the controller call on the blocking pool.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ErrorResponse;
use crate::control::kinds::Kind;
use crate::control::resource::{DEFAULT_NAMESPACE, object_key};
use crate::control::{ApiError, AppliedResource, Controller};

/// Runs a blocking controller call on tokio's blocking pool.
pub(super) async fn blocking<T, F>(
    controller: &Arc<Controller>,
    call: F,
) -> Result<T, ErrorResponse>
where
    T: Send + 'static,
    F: FnOnce(&Controller) -> Result<T, ApiError> + Send + 'static,
{
    let controller = Arc::clone(controller);
    match tokio::task::spawn_blocking(move || call(&controller)).await {
        Ok(result) => result.map_err(ErrorResponse::from),
        Err(error) => {
            tracing::error!(%error, "a controller call panicked or was cancelled");
            Err(ErrorResponse::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the controller failed while handling the request; see the vswitchd log",
            ))
        }
    }
}

/// The body as text, refusing an empty one.
fn non_empty_body(
    body: Result<String, StringRejection>,
    what: &str,
) -> Result<String, ErrorResponse> {
    let body = body?;
    if body.trim().is_empty() {
        return Err(ErrorResponse::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is empty; send {what}"),
        ));
    }
    Ok(body)
}

/// `POST /v1/apply`: one or more YAML or JSON documents; all are validated before any is
/// applied.
pub(super) async fn apply(
    State(controller): State<Arc<Controller>>,
    body: Result<String, StringRejection>,
) -> Result<Json<Vec<AppliedResource>>, ErrorResponse> {
    let text = non_empty_body(body, "one or more YAML or JSON resource documents")?;
    let applied = blocking(&controller, move |c| c.apply(&text)).await?;
    Ok(Json(applied))
}

/// `?namespace=NS`: the namespace of a namespaced kind's resources (ignored for cluster-wide
/// kinds). Without it, a list covers every namespace and a name is looked up in `default`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NamespaceQuery {
    namespace: Option<String>,
}

impl NamespaceQuery {
    /// The table key of `name` in the query's namespace.
    pub(super) fn key(&self, name: &str) -> String {
        object_key(self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), name)
    }

    /// The table key of `name` of `kind` (as the user wrote the kind): in the query's
    /// namespace for a namespaced kind, the name itself for a cluster-wide one.
    fn key_of(&self, kind: &str, name: &str) -> String {
        match Kind::parse(kind) {
            Ok(kind) if !kind.is_namespaced() => name.to_owned(),
            _ => self.key(name),
        }
    }
}

/// `GET /v1/{kind}[?namespace=NS]`: all resources of a kind (in one namespace).
pub(super) async fn list(
    State(controller): State<Arc<Controller>>,
    kind: Result<Path<String>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<Vec<Value>>, ErrorResponse> {
    let Path(kind) = kind?;
    let Query(query) = query?;
    let items = blocking(&controller, move |c| {
        c.list_in(&kind, query.namespace.as_deref())
    })
    .await?;
    Ok(Json(items))
}

/// `GET /v1/{kind}/{name}[?namespace=NS]`: one resource.
pub(super) async fn get(
    State(controller): State<Arc<Controller>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<Value>, ErrorResponse> {
    let Path((kind, name)) = path?;
    let Query(query) = query?;
    let key = query.key_of(&kind, &name);
    let item = blocking(&controller, move |c| c.get(&kind, &key)).await?;
    Ok(Json(item))
}

/// `POST /v1/{kind}`: creates one resource from a JSON body; 201 with the created resource
/// and a `Location` header, 409 when the name is taken.
pub(super) async fn create(
    State(controller): State<Arc<Controller>>,
    kind: Result<Path<String>, PathRejection>,
    body: Result<String, StringRejection>,
) -> Result<Response, ErrorResponse> {
    let Path(kind) = kind?;
    let text = non_empty_body(body, "one resource as a JSON object")?;
    // Checked here so every kind gets the same message for a syntax error; the controller
    // parses the text again into its typed resource and reports field errors.
    if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        return Err(ErrorResponse::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {error}"),
        ));
    }
    let location_kind = kind.clone();
    let created = blocking(&controller, move |c| c.create(&kind, &text)).await?;
    let mut response = (StatusCode::CREATED, Json(&created)).into_response();
    if let Some(name) = created.pointer("/metadata/name").and_then(Value::as_str) {
        let location = match created
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            Some(namespace) => format!("/v1/{location_kind}/{name}?namespace={namespace}"),
            None => format!("/v1/{location_kind}/{name}"),
        };
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

/// `DELETE /v1/{kind}/{name}[?namespace=NS]`: 204 on success.
pub(super) async fn delete(
    State(controller): State<Arc<Controller>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<StatusCode, ErrorResponse> {
    let Path((kind, name)) = path?;
    let Query(query) = query?;
    let key = query.key_of(&kind, &name);
    blocking(&controller, move |c| c.delete(&kind, &key)).await?;
    Ok(StatusCode::NO_CONTENT)
}
