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
    /// for masquerade).
    #[serde(deserialize_with = "de_ipv4")]
    pub ip: Ipv4Addr,
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
        errors.check(nat_rules::check_port_forward(
            cx.origin, cx.next, cx.batch, self,
        ));
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
