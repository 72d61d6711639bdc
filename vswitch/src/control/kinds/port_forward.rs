//! `PortForward`: an uplink address and port forwarded to a NetworkInterface's port.

#[allow(unused_imports)]
use super::prelude::*;

/// A forwarded protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ForwardProtocol {
    /// The conntrack protocol.
    pub fn to_nat(self) -> nat::Protocol {
        match self {
            ForwardProtocol::Tcp => nat::Protocol::Tcp,
            ForwardProtocol::Udp => nat::Protocol::Udp,
        }
    }
}

impl fmt::Display for ForwardProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardProtocol::Tcp => "tcp",
            ForwardProtocol::Udp => "udp",
        })
    }
}

/// Where a PortForward goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForwardTarget {
    /// The NetworkInterface (its first address).
    #[serde(deserialize_with = "de_name")]
    pub interface: String,
    /// The port on it (1..=65535).
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
}

/// Spec of a PortForward: connections from outside to `ip:port` reach the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForwardSpec {
    /// An address of the Uplink (it may also be a NATGateway's: the port is then never used
    /// for masquerade). An IPv6 address (from the Uplink's `ipv6.addresses`) forwards to the
    /// target interface's IPv6 address.
    #[serde(deserialize_with = "de_ip")]
    pub ip: IpAddr,
    /// `tcp` or `udp`.
    pub protocol: ForwardProtocol,
    /// The port on `ip` (1..=65535).
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// The NetworkInterface and port it reaches.
    pub target: PortForwardTarget,
}

/// Whether a PortForward carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ForwardState {
    /// Not in effect (see `message`).
    #[default]
    Pending,
    /// In effect: the Uplink and the target interface are up.
    Ready,
}

impl fmt::Display for ForwardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardState::Pending => "Pending",
            ForwardState::Ready => "Ready",
        })
    }
}

/// Status of a PortForward (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForwardStatus {
    /// `Ready` or `Pending`.
    #[serde(default)]
    pub state: ForwardState,
    /// The target's address and port, `A.B.C.D:P`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Why the state is `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An uplink address and port forwarded to a container's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForward {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `PortForward`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: PortForwardSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: PortForwardStatus,
}

impl ResourceKind for PortForward {
    type Spec = PortForwardSpec;
    type Status = PortForwardStatus;

    const INFO: KindInfo = KindInfo {
        name: "PortForward",
        plural: "portforwards",
        aliases: &["pf"],
        summary: "an Uplink address and port forwarded to a NetworkInterface's port",
        example: "\
apiVersion: vswitch/v1alpha1
kind: PortForward
metadata:
  name: web-http
spec:
  ip: 198.51.100.10
  protocol: tcp
  port: 8080
  target:
    interface: web-1
    port: 80
",
    };

    fn spec(&self) -> &PortForwardSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut PortForwardStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_port_forward(cx.origin, cx.next, cx.batch, self));
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status = nat_rules::port_forward_status(state, self);
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "IP", "PROTOCOL", "PORT", "TARGET", "STATE"];
        if wide {
            columns.extend(["DESTINATION", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = &self.spec;
        let mut row = vec![
            self.metadata.name.clone(),
            spec.ip.to_string(),
            spec.protocol.to_string(),
            spec.port.to_string(),
            format!("{}:{}", spec.target.interface, spec.target.port),
            self.status.state.to_string(),
        ];
        if wide {
            row.extend([
                cell(self.status.destination.as_deref().unwrap_or_default()),
                labels_cell(&self.metadata),
                cell(self.status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// A PortForward: its address is the Uplink's and no VirtualIP's, `(ip, protocol, port)` is
/// forwarded once, its target interface exists.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_port_forward(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    forward: &PortForward,
) -> Result<(), ApiError> {
    let name = &forward.metadata.name;
    let spec = &forward.spec;
    nat_rules::owned_by_uplink(origin, next, "spec.ip", Some(spec.ip))?;
    if let Some(user) = nat_rules::blocking_user(
        next,
        batch,
        origin,
        (Kind::PortForward, name),
        spec.ip,
        &[Kind::VirtualIp, Kind::LoadBalancer],
    ) {
        return Err(origin.conflict(
            "spec.ip",
            format!(
                "{} is the address of {user}, which takes every port of it; forward a port of another address of the Uplink",
                spec.ip
            ),
        ));
    }
    let twin = next.port_forwards.values().find(|other| {
        other.metadata.name != *name
            && other.spec.ip == spec.ip
            && other.spec.protocol == spec.protocol
            && other.spec.port == spec.port
            && batch.before(Kind::PortForward, &other.metadata.name, origin)
    });
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.port",
            format!(
                "{} {}:{} is already forwarded by PortForward {:?}; choose another port, or change that PortForward",
                spec.protocol, spec.ip, spec.port, twin.metadata.name
            ),
        ));
    }
    if !next.network_interfaces.contains_key(&spec.target.interface) {
        return Err(origin.invalid(
            "spec.target.interface",
            format!(
                "NetworkInterface {:?} does not exist; name an existing one (vswitchctl get networkinterfaces) or create it first",
                spec.target.interface
            ),
        ));
    }
    if spec.ip.is_ipv6() {
        let nic = &next.network_interfaces[&spec.target.interface];
        let dual_stack = next
            .subnets
            .get(&nic.spec.subnet)
            .is_some_and(|s| s.spec.ipv6.is_some());
        if !dual_stack {
            return Err(origin.invalid(
                "spec.target.interface",
                format!(
                    "spec.ip {} is IPv6 but NetworkInterface {:?} is on Subnet {:?}, which has no IPv6 prefix; forward an IPv4 address of the Uplink to it, or give the Subnet spec.ipv6",
                    spec.ip, spec.target.interface, nic.spec.subnet
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, doc, forward, nat_base, refused, vip};

    #[test]
    fn port_forward_checks() {
        let state = apply(&nat_base(), &vip("v", Some("198.51.100.11")));
        refused(
            &state,
            &forward("web", "203.0.113.7", "tcp", 8080, "c1"),
            400,
            "documents[0].spec.ip",
            &["203.0.113.7 is not an address of Uplink \"wan\""],
        );
        refused(
            &state,
            &forward("web", "198.51.100.11", "tcp", 8080, "c1"),
            409,
            "documents[0].spec.ip",
            &["198.51.100.11 is the address of VirtualIP \"v\""],
        );
        refused(
            &state,
            &forward("web", "198.51.100.10", "tcp", 8080, "nobody"),
            400,
            "documents[0].spec.target.interface",
            &["NetworkInterface \"nobody\" does not exist"],
        );
        let state = apply(&state, &forward("web", "198.51.100.10", "tcp", 8080, "c1"));
        refused(
            &state,
            &forward("web2", "198.51.100.10", "tcp", 8080, "c2"),
            409,
            "documents[0].spec.port",
            &["tcp 198.51.100.10:8080 is already forwarded by PortForward \"web\""],
        );
        // Another protocol, port or address is fine; so is changing the forward itself.
        let state = apply(
            &state,
            &format!(
                "{}{}{}",
                forward("dns", "198.51.100.10", "udp", 8080, "c2"),
                forward("web2", "198.51.100.12", "tcp", 8080, "c2"),
                forward("web", "198.51.100.10", "tcp", 8080, "d1"),
            ),
        );
        assert_eq!(state.port_forwards.len(), 3);
        let without_uplink = apply(
            &State::default(),
            &format!(
                "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: n}}\n{}{}",
                doc(
                    "Subnet",
                    "s",
                    "{network: n, cidr: 10.9.0.0/24, gateway: 10.9.0.1}"
                ),
                doc("NetworkInterface", "c", "{subnet: s, netns: c}")
            ),
        );
        refused(
            &without_uplink,
            &forward("web", "198.51.100.10", "tcp", 80, "c"),
            400,
            "documents[0].spec.ip",
            &["no Uplink exists"],
        );
    }
}
