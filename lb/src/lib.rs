//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! Nothing lives here yet: the issue that builds this crate has not been taken.

#![forbid(unsafe_code)]
