//! VXLAN (RFC 7348) header codec, VTEP tables and overlay membership; no I/O.
//!
//! Nothing lives here yet: the issue that builds this crate has not been taken.

#![forbid(unsafe_code)]
