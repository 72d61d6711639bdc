//! The HTTP+JSON control API on a Unix socket (being written).
