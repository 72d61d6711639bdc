//! Connection tracking and NAT on packet bytes; no I/O.
//!
//! Nothing lives here yet: the issue that builds this crate has not been taken.

#![forbid(unsafe_code)]
