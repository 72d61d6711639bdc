//! VXLAN (RFC 7348) for vswitch, with no I/O: the header codec, encap/decap helpers, the
//! remote FDB (VTEP table) and the hub's overlay membership (runner IDs and address plan).
//!
//! Nothing here opens a socket, starts a thread or reads a clock: packets are byte slices,
//! time is a `u64` of milliseconds passed in by the caller, and every table is a plain value
//! the caller owns (and locks, if it shares it), except [`fdb::SharedFdb`], the remote MAC
//! table sharded behind its own locks for workers that share it. So each part is tested, and
//! fuzzable, alone.
//!
//! - [`header`]: the 8-byte VXLAN header as a smoltcp-style view, validated as Linux does.
//! - [`encap`]: outer Ethernet/IP/UDP/VXLAN headers written into headroom; the UDP source
//!   port hashed from the inner flow; decap validation with per-reason drop keys.
//! - [`fdb`]: inner MAC -> remote VTEP per VNI, learned with ageing and a limit, static
//!   entries, and the flood list for head-end replication; [`fdb::SharedFdb`] is the same MAC
//!   table sharded for concurrent workers.
//! - [`membership`]: the hub's runner-ID pool (1..=255, stable per name, LRU reclaim),
//!   heartbeats, the configurable address plan, and registration checks.

#![forbid(unsafe_code)]

pub mod encap;
pub mod fdb;
pub mod header;
pub mod membership;

pub use encap::{
    DecapError as VxlanDecapError, Decapsulated as VxlanDecapsulated,
    EncapConfig as VxlanEncapConfig, EncapError as VxlanEncapError,
    EncapParams as VxlanEncapParams,
};
pub use fdb::{Fdb as VxlanFdb, FdbEntry as VxlanFdbEntry, SharedFdb as VxlanSharedFdb, Vtep};
pub use header::{
    Error as VxlanHeaderError, HEADER_LEN as VXLAN_HEADER_LEN, Packet as VxlanPacket,
    RemoteChecksum as VxlanRemoteChecksum, Repr as VxlanRepr, UDP_PORT as VXLAN_UDP_PORT, Vni,
};
pub use membership::{
    AddressPlan, AddressPlan6, Encapsulation, MembershipError, OverlayPeers, OverlaySettings, Peer,
    RegistrationRequest, RunnerId, RunnerPlan, RunnerPlan6, RunnerPool,
};
