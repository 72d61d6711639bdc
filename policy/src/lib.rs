//! Network policy model, compiler and classifier (Kubernetes NetworkPolicy semantics); no I/O.
//!
//! Empty for now: the crate is a placeholder. It will hold the network policy model, its
//! compiler and the classifier the datapath runs.

#![forbid(unsafe_code)]
