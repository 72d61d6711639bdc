//! The controller (being written).

use std::path::Path;

use serde::Serialize;

use super::ApiError;
use crate::engine::Engine;

/// What `apply` did to one document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppliedResource {
    /// Canonical kind (`Subnet`).
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
}

/// Owns desired state, allocations, ports and the engine. All methods are blocking and
/// serialised by an internal lock; call them from a blocking context.
#[derive(Debug)]
pub struct Controller {
    engine: Engine,
}

impl Controller {
    /// Opens (creating if needed) the state directory, restores persisted resources and
    /// allocations, and re-opens the ports that still exist.
    ///
    /// # Errors
    /// When the state directory cannot be created or its files cannot be read.
    pub fn open(_state_dir: &Path, engine: Engine) -> Result<Controller, ApiError> {
        Ok(Controller { engine })
    }

    /// True when the state directory held no resources (first boot).
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Applies one or more YAML or JSON documents (`---`-separated, or a JSON array). All are
    /// validated before any is applied; if one is wrong nothing changes.
    ///
    /// # Errors
    /// [`ApiError`] naming the document, kind/name and field.
    pub fn apply(&self, _text: &str) -> Result<Vec<AppliedResource>, ApiError> {
        Ok(Vec::new())
    }

    /// Creates one resource of `kind` from a JSON body; refuses a name that exists (409).
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn create(&self, _kind: &str, _body: &str) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::Internal {
            message: "not ready".into(),
        })
    }

    /// Lists resources of `kind` (any case, singular or plural).
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for an unknown kind.
    pub fn list(&self, _kind: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(Vec::new())
    }

    /// One resource.
    ///
    /// # Errors
    /// [`ApiError::NotFound`].
    pub fn get(&self, kind: &str, name: &str) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::NotFound {
            kind: kind.into(),
            name: name.into(),
        })
    }

    /// Deletes one resource (for a NetworkInterface: removes the device, releases its IPs).
    ///
    /// # Errors
    /// [`ApiError::NotFound`], or [`ApiError::Conflict`] when others depend on it.
    pub fn delete(&self, kind: &str, name: &str) -> Result<(), ApiError> {
        Err(ApiError::NotFound {
            kind: kind.into(),
            name: name.into(),
        })
    }

    /// Learned MACs.
    pub fn fdb(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.fdb()).unwrap_or_default()
    }

    /// Counters.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.stats()).unwrap_or_default()
    }

    /// Stops the engine. Ports are left in place so a restarted daemon re-opens them.
    pub fn shutdown(&self) {}
}
