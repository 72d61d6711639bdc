//! `NetworkInterface`: a port, an interface in a container's namespace.

#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a NetworkInterface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceSpec {
    /// The Subnet it joins (default `default`).
    #[serde(default = "default_subnet", deserialize_with = "de_name")]
    pub subnet: String,
    /// The container's namespace: a name under /run/netns, a path, or `pid:N`.
    #[serde(deserialize_with = "de_netns", serialize_with = "ser_display")]
    pub netns: NetnsRef,
    /// Interface name inside the container (default `eth0`).
    #[serde(default = "default_ifname", deserialize_with = "de_ifname")]
    pub ifname: String,
    /// `tap` (default) or `veth`.
    #[serde(default)]
    pub kind: PortKind,
    /// MAC address; generated (random, locally administered) when absent.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<MacAddr>,
    /// Static addresses; empty means one address from IPAM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpRequest>,
    /// MTU (68..=65535); the subnet's when absent.
    #[serde(
        default,
        deserialize_with = "de_opt_mtu",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    /// The VirtualIP (by name) the interface is reachable on from outside, and whose address
    /// its traffic to the outside leaves with. One interface per VirtualIP.
    #[serde(
        rename = "virtualIP",
        default,
        deserialize_with = "de_opt_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub virtual_ip: Option<String>,
    /// Install a default route via the Subnet's gateway in the namespace (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub default_route: bool,
    /// Further routes installed in the namespace via the Subnet's gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Ipv4Net>,
}

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Lifecycle of a device: a NetworkInterface's, or the Uplink's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceState {
    /// Not attached yet.
    #[default]
    Pending,
    /// The device exists and its queues are open.
    Up,
    /// The device or its namespace is gone (see `message`); delete the resource to clean up.
    Lost,
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterfaceState::Pending => "pending",
            InterfaceState::Up => "up",
            InterfaceState::Lost => "lost",
        })
    }
}

/// Status of a NetworkInterface: what was allocated and how the device is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceStatus {
    /// Addresses with the subnet's prefix length (static or leased from IPAM).
    #[serde(default)]
    pub ips: Vec<Ipv4Net>,
    /// The MAC in use (given or generated).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// `pending`, `up` or `lost`.
    #[serde(default)]
    pub state: InterfaceState,
    /// Why the state is what it is, when not `up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The device's name in the daemon's namespace (veth host end), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
}

/// A port: an interface in a container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterface {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `NetworkInterface`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: NetworkInterfaceSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: NetworkInterfaceStatus,
}

impl NetworkInterface {
    /// The MTU the interface gets: its own, else its subnet's.
    pub fn effective_mtu(&self, subnet: &SubnetSpec) -> u16 {
        self.spec.mtu.unwrap_or(subnet.mtu)
    }
}

impl ResourceKind for NetworkInterface {
    type Spec = NetworkInterfaceSpec;
    type Status = NetworkInterfaceStatus;

    const INFO: KindInfo = KindInfo {
        name: "NetworkInterface",
        plural: "networkinterfaces",
        aliases: &["nic", "interface", "netif"],
        summary: "a port: a TAP or veth interface in a container's network namespace, with its MAC and addresses",
        example: "\
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata:
  name: web-1
  labels:
    app: web
spec:
  subnet: web
  netns: web-1
  ifname: eth0
  kind: tap
",
    };

    fn spec(&self) -> &NetworkInterfaceSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut NetworkInterfaceStatus {
        &mut self.status
    }

    /// The device's state and the allocated addresses and MAC are the controller's.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status = old.map(|o| o.status.clone()).unwrap_or_default();
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        if let Some(old) = cx.current.network_interfaces.get(&self.metadata.name) {
            errors.check(validate::check_interface_immutables(cx.origin, old, self));
        }
        errors.check(validate::check_interface(cx.origin, cx.next, self));
        errors.check(nat_rules::check_interface_virtual_ip(
            cx.origin, cx.next, cx.batch, self,
        ));
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![(
            "PortForwards to it",
            state
                .port_forwards
                .values()
                .filter(|f| f.spec.target.interface == name)
                .map(|f| f.metadata.name.clone())
                .collect(),
        )]
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETNS", "KIND", "IFNAME", "MAC", "IPS", "STATE"];
        if wide {
            columns.extend(["SUBNET", "MTU", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let (spec, status) = (&self.spec, &self.status);
        let mac = status.mac.or(spec.mac);
        let ips = if status.ips.is_empty() {
            cells(&spec.ips)
        } else {
            cells(&status.ips)
        };
        let mut row = vec![
            self.metadata.name.clone(),
            spec.netns.to_string(),
            json_text(&spec.kind),
            spec.ifname.clone(),
            cells(mac.iter()),
            ips,
            status.state.to_string(),
        ];
        if wide {
            row.extend([
                spec.subnet.clone(),
                cells(spec.mtu.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}
