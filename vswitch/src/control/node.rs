//! This node's identity.

use std::fmt;
use std::fs::File;
use std::io::Read;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A random RFC 4122 version-4 UUID (`2020dcf9-e030-427e-b0fc-4fec2016e73a`), for the
/// identities the switch gives resources (a NetworkInterface's `uid`).
pub fn random_uuid() -> String {
    let mut bytes = NodeId::generate().0;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// This node's identity: 128 random bits, generated on first boot and kept in the state file.
/// Gateway MACs are derived from it, so they survive restarts and differ between nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A new random id, from the kernel's random source (`/dev/urandom`); should that be
    /// unreadable, from std's per-process random hash keys mixed with the clock and the pid.
    pub fn generate() -> NodeId {
        let mut bytes = [0u8; 16];
        let from_kernel = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if let Err(err) = from_kernel {
            tracing::warn!("cannot read /dev/urandom ({err}); deriving the node id from the clock");
            use std::hash::{BuildHasher, Hasher};
            for (index, chunk) in bytes.chunks_mut(8).enumerate() {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_usize(index);
                hasher.write_u32(std::process::id());
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                hasher.write_u128(nanos);
                chunk.copy_from_slice(&hasher.finish().to_be_bytes());
            }
        }
        NodeId(bytes)
    }
}

impl fmt::Display for NodeId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid node id {s:?}: expected 32 hex digits");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            let pair = s.get(2 * index..2 * index + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(NodeId(bytes))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(D::Error::custom)
    }
}
