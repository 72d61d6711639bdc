//! `vswitchctl` (being written).
