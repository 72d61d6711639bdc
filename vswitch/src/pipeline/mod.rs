//! The packet stages, one file each, with their drop reasons (being written).
