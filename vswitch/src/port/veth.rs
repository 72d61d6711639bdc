//! veth ports (being written).

use super::{AttachRequest, PortError, PortIo};

/// See [`super::attach`].
pub fn attach(req: &AttachRequest) -> Result<PortIo, PortError> {
    Err(PortError::Gone {
        ifname: req.ifname.clone(),
        netns: req.netns.to_string(),
    })
}

/// See [`super::reopen`].
pub fn reopen(req: &AttachRequest) -> Result<PortIo, PortError> {
    Err(PortError::Gone {
        ifname: req.ifname.clone(),
        netns: req.netns.to_string(),
    })
}

/// See [`super::detach`].
pub fn detach(_req: &AttachRequest, _io: Option<PortIo>) -> Result<(), PortError> {
    Ok(())
}
