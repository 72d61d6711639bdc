//! Live traces: the next real frames that match a filter, traced as the workers forward them.
//!
//! Off the fast path when unused: a worker reads one relaxed atomic per batch
//! ([`LiveTrace::session`]). Armed, it checks each frame of the batch against the filter and
//! runs the matching ones with a live recorder (the stages act as always, and note). Records
//! go into the session's bounded list without ever blocking a worker: when the list is
//! locked by someone else or full, the record is dropped and counted (`lost`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::expr::Filter;
use super::{TraceRecord, finish};
use crate::pipeline::trace::{Trace, describe_frame};
use crate::pipeline::{self, Context, Local, Outcome};
use crate::port::PortId;
use crate::tables::snapshot::Ingress;

/// The engine's live trace: at most one session at a time.
#[derive(Debug, Default)]
pub struct LiveTrace {
    armed: AtomicBool,
    session: ArcSwapOption<Session>,
}

/// One live trace: which frames, how many, and the records so far.
#[derive(Debug)]
pub struct Session {
    filter: Filter,
    port: Option<PortId>,
    wanted: usize,
    claimed: AtomicUsize,
    records: Mutex<Vec<TraceRecord>>,
    lost: AtomicU64,
}

/// A live trace is already running (one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a live trace is already running; wait for it to end")]
pub struct Busy;

impl LiveTrace {
    /// The session the workers serve, if one is armed: one relaxed load when none is.
    #[inline]
    pub fn session(&self) -> Option<Arc<Session>> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        self.session.load_full()
    }

    /// Arms a session for `wanted` frames matching `filter` (received on `port` only, when
    /// given).
    ///
    /// # Errors
    /// [`Busy`] when another session is armed.
    pub fn start(
        &self,
        filter: Filter,
        port: Option<PortId>,
        wanted: usize,
    ) -> Result<Arc<Session>, Busy> {
        let session = Arc::new(Session {
            filter,
            port,
            wanted,
            claimed: AtomicUsize::new(0),
            records: Mutex::new(Vec::with_capacity(wanted)),
            lost: AtomicU64::new(0),
        });
        let previous = self
            .session
            .compare_and_swap(&None::<Arc<Session>>, Some(Arc::clone(&session)));
        if previous.is_some() {
            return Err(Busy);
        }
        self.armed.store(true, Ordering::Release);
        Ok(session)
    }

    /// Disarms `session` (when it is the one armed).
    pub fn stop(&self, session: &Arc<Session>) {
        let current = self.session.load();
        if current
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, session))
        {
            self.armed.store(false, Ordering::Release);
            self.session.store(None);
        }
    }
}

impl Session {
    /// True when the worker should trace `frame`, received on `ingress`: a port or the
    /// uplink (the VTEP's datagrams are not traced), the session's port if it has one, the
    /// filter matches, and the session still wants frames (the frame is then claimed).
    #[inline]
    pub fn wants(&self, ingress: Ingress<'_>, frame: &[u8]) -> bool {
        if matches!(ingress, Ingress::Vtep(_))
            || self.port.is_some_and(|port| {
                // A bond's frames are received on its members: `--in` the Uplink takes them all.
                port != ingress.id()
                    && !matches!(ingress, Ingress::Uplink(uplink, ..) if uplink.id == port)
            })
            || self.claimed.load(Ordering::Relaxed) >= self.wanted
            || !self.filter.matches(frame)
        {
            return false;
        }
        self.claimed.fetch_add(1, Ordering::AcqRel) < self.wanted
    }

    /// Runs the stages on a claimed frame with a live recorder, as [`pipeline::input`]
    /// would (same effects), and keeps the record.
    pub fn trace(
        &self,
        ctx: &Context<'_>,
        ingress: Ingress<'_>,
        frame: &mut [u8],
        peer: SocketAddr,
        tag: u32,
        local: &mut Local,
    ) -> Outcome {
        let trace = Trace::live();
        let traced = Context {
            trace: Some(&trace),
            ..*ctx
        };
        let packet = describe_frame(frame);
        let first_generated = local.out.generated.len();
        let outcome = pipeline::input(&traced, ingress, frame, peer, tag, local);
        let record = finish(
            &traced,
            ingress,
            packet,
            outcome.verdict,
            frame,
            &local.out.generated,
            first_generated,
        );
        match self.records.try_lock() {
            Some(mut records) if records.len() < self.wanted => records.push(record),
            _ => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    /// The records so far.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// True when no record was kept yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once every wanted frame was traced (kept or lost).
    pub fn is_done(&self) -> bool {
        let lost = usize::try_from(self.lost.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        self.len().saturating_add(lost) >= self.wanted
    }

    /// The records kept and how many were lost.
    pub fn take(&self) -> (Vec<TraceRecord>, u64) {
        (
            std::mem::take(&mut *self.records.lock()),
            self.lost.load(Ordering::Relaxed),
        )
    }
}
