//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! Empty for now: the crate is a placeholder. It will hold the Maglev lookup tables and the
//! backend sets of virtual IPs.

#![forbid(unsafe_code)]
