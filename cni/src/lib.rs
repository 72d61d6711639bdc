//! The CNI protocol as `vswitch-cni` speaks it: invocations, network config, CNI_ARGS,
//! names, results and errors; no I/O.
//!
//! A container runtime runs a CNI plugin with the operation and the container in `CNI_*`
//! environment variables and the network configuration on stdin, and reads one JSON
//! document (a result, a version report, or an error) from its stdout (CNI spec 1.1.0,
//! sections 2 and 5). This crate turns the environment and stdin into a typed
//! [`Invocation`], and the plugin's answers into the documents the spec defines; the
//! `vswitch` crate's `vswitch-cni` binary does the talking to vswitchd in between.
//!
//! The spec's types (NetConf, results, error codes, version negotiation, the 0.3/0.4
//! result layout) come from [`rscni_types`]; this crate adds what is vswitch's:
//! - [`conf`]: the plugin's own keys (`socket`, `subnet`, `kind`, ...) and where labels,
//!   the namespace and port mappings come from;
//! - [`args`]: `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `IP`, `MAC`,
//!   `IgnoreUnknown`);
//! - [`naming`]: the NetworkInterface name and labels derived from the container, so that
//!   DEL, CHECK and GC find what ADD made;
//! - [`invocation`]: parsing one invocation, and rendering answers and errors;
//! - [`result`]: the ADD result from what vswitchd attached, after `prevResult`;
//! - [`error`]: the plugin-specific error codes (100 and up).
//!
//! Invariant: nothing here reads the process environment, stdin or a socket; every function
//! takes its input as arguments, so all of it is unit-tested.

#![forbid(unsafe_code)]

pub mod args;
pub mod conf;
pub mod error;
pub mod invocation;
pub mod naming;
pub mod result;

pub use args::CniArgs;
pub use conf::PluginConf;
pub use invocation::{Invocation, Reply};
pub use rscni_types;
pub use rscni_types::error::Error as CniError;
pub use rscni_types::types::{CNIResult, Cmd, Dns, Interface, IpConfig, PortMapping, Route};
pub use rscni_types::version::SpecVersion;
