//! The plugin-specific error codes (the spec reserves 100 and up for plugins) and helpers
//! that build [`CniError`]s with a message and details.
//!
//! The spec's own codes are used where they fit: 4 (bad environment), 7 (invalid network
//! config), 11 (try again later: vswitchd is not reachable), 50 (STATUS: not available).

use crate::CniError;

/// vswitchd refused the request (a 4xx/5xx answer); details carry its message.
pub const DAEMON_REFUSED: u32 = 100;
/// `portMappings` were asked for but vswitchd has no Uplink to publish them on.
pub const NO_UPLINK: u32 = 101;
/// The interface name derived from the container is used by something this plugin did not
/// make for this container.
pub const NAME_TAKEN: u32 = 102;
/// CHECK: the container's NetworkInterface does not exist.
pub const INTERFACE_MISSING: u32 = 103;
/// CHECK: the NetworkInterface exists but is not as the previous result says (state,
/// address, MAC).
pub const INTERFACE_MISMATCH: u32 = 104;
/// vswitchd answered something this plugin cannot read.
pub const UNEXPECTED_ANSWER: u32 = 105;

/// A plugin-specific error: `code` (100+), a short `msg`, and `details`.
pub fn custom(code: u32, msg: &str, details: impl Into<String>) -> CniError {
    CniError::Custom(code, msg.to_string(), details.into())
}

/// The numeric code of an error, as written in the error document.
pub fn code_of(error: &CniError) -> u32 {
    u32::from(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_specs_and_ours() {
        assert_eq!(code_of(&CniError::InvalidNetworkConfig(String::new())), 7);
        assert_eq!(code_of(&CniError::TryAgainLater(String::new())), 11);
        assert_eq!(code_of(&CniError::InvalidEnvValue(String::new())), 4);
        assert_eq!(code_of(&CniError::PluginNotAvailable(String::new())), 50);
        assert_eq!(code_of(&custom(NO_UPLINK, "no uplink", "x")), 101);
    }
}
