//! Netlink: links, addresses, routes (being written).
