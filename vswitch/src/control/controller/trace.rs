//! The packet tracer's entry points (`POST /v1/trace`, `POST /v1/trace/live`): requests are
//! checked against the snapshot the workers use, then handed to [`crate::trace`].

use std::sync::Arc;

use super::Controller;
use crate::control::ApiError;
use crate::trace::live::Session;
use crate::trace::{TraceRecord, TraceRequest};

/// Most frames one live trace may ask for.
pub const MAX_LIVE_FRAMES: usize = 100;

impl Controller {
    /// Traces the synthetic frame `request` describes through the stages, in a dry run.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] naming the field at fault (see [`crate::trace::synthetic`]).
    pub fn trace(&self, request: &TraceRequest) -> Result<TraceRecord, ApiError> {
        self.engine
            .read()
            .with_tables(|ctx| crate::trace::synthetic(ctx, request))
    }

    /// Arms a live trace of the next `count` frames matching `filter`, received on the port
    /// (or uplink) named `ingress` when given.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for an unparsable filter (`match`), an unknown port (`in`) or a
    /// count out of range (`count`); [`ApiError::Conflict`] while another live trace runs.
    pub fn start_live_trace(
        &self,
        filter: &str,
        ingress: Option<&str>,
        count: usize,
    ) -> Result<Arc<Session>, ApiError> {
        let mut errors = Vec::new();
        let filter = crate::trace::expr::Filter::parse(filter)
            .map_err(|error| errors.push(ApiError::invalid("match", error.to_string())))
            .ok();
        if !(1..=MAX_LIVE_FRAMES).contains(&count) {
            errors.push(ApiError::invalid(
                "count",
                format!("{count} frames: a live trace takes 1 to {MAX_LIVE_FRAMES}"),
            ));
        }
        let engine = self.engine.read();
        let port = match ingress {
            None => None,
            Some(name) => {
                let snapshot = engine.current();
                let id = snapshot
                    .ports()
                    .iter()
                    .find(|port| port.name == name && port.io().is_some())
                    .map(|port| port.id)
                    .or_else(|| {
                        snapshot
                            .uplink
                            .as_ref()
                            .filter(|uplink| uplink.name == name)
                            .map(|uplink| uplink.id)
                    });
                if id.is_none() {
                    errors.push(ApiError::invalid(
                        "in",
                        format!("{name:?} is no attached NetworkInterface or Uplink"),
                    ));
                }
                id
            }
        };
        if let Some(error) = ApiError::aggregate(errors) {
            return Err(error);
        }
        let Some(filter) = filter else {
            return Err(ApiError::invalid("match", "no filter"));
        };
        engine
            .live_trace()
            .start(filter, port, count)
            .map_err(|busy| ApiError::Conflict {
                message: busy.to_string(),
                field: None,
            })
    }

    /// Disarms a live trace started by [`start_live_trace`](Controller::start_live_trace).
    pub fn stop_live_trace(&self, session: &Arc<Session>) {
        self.engine.read().live_trace().stop(session);
    }
}
