//! `VirtualIP`: a public uplink address mapped 1:1 to the NetworkInterface that uses it.

#[allow(unused_imports)]
use super::prelude::*;

/// The type of a VirtualIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VirtualIpType {
    /// An address of the Uplink, reachable from outside.
    #[default]
    Public,
}

/// Spec of a VirtualIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIpSpec {
    /// `Public`.
    #[serde(rename = "type")]
    pub ip_type: VirtualIpType,
    /// The address: one of the Uplink's, not used by a NATGateway, PortForward or another
    /// VirtualIP. When absent, one such address is allocated (and kept).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<Ipv4Addr>,
}

/// Status of a VirtualIP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIpStatus {
    /// The address (the spec's, or the allocated one; persisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The NetworkInterface that references it (computed when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// A public address mapped 1:1 to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIp {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `VirtualIP`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: VirtualIpSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: VirtualIpStatus,
}

impl ResourceKind for VirtualIp {
    type Spec = VirtualIpSpec;
    type Status = VirtualIpStatus;

    const INFO: KindInfo = KindInfo {
        name: "VirtualIP",
        plural: "virtualips",
        aliases: &["vip"],
        summary: "a public Uplink address mapped 1:1 to the NetworkInterface that references it",
        example: "\
apiVersion: vswitch/v1alpha1
kind: VirtualIP
metadata:
  name: db-public
spec:
  type: Public
",
    };

    fn spec(&self) -> &VirtualIpSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut VirtualIpStatus {
        &mut self.status
    }

    /// The allocated address is kept; the user is computed when read.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status.ip = old.and_then(|o| o.status.ip);
        self.status.interface = None;
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_virtual_ip(cx.origin, cx.next, cx.batch, self));
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![(
            "NetworkInterfaces using it",
            state
                .network_interfaces
                .values()
                .filter(|n| n.spec.virtual_ip.as_deref() == Some(name))
                .map(|n| n.metadata.key())
                .collect(),
        )]
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status.ip = nat_rules::virtual_ip_address(self);
        self.status.interface =
            nat_rules::virtual_ip_user(state, &self.metadata.name).map(|nic| nic.metadata.key());
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "TYPE", "IP", "INTERFACE"];
        if wide {
            columns.push("LABELS");
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.metadata.name.clone(),
            json_text(&self.spec.ip_type),
            cells(self.status.ip.or(self.spec.ip).iter()),
            cell(self.status.interface.as_deref().unwrap_or_default()),
        ];
        if wide {
            row.push(labels_cell(&self.metadata));
        }
        row
    }
}

/// A VirtualIP: its address, when given, is the Uplink's and used by nothing else.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_virtual_ip(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    vip: &VirtualIp,
) -> Result<(), ApiError> {
    nat_rules::owned_by_uplink(origin, next, "spec.ip", vip.spec.ip.map(IpAddr::V4))?;
    if let Some(ip) = vip.spec.ip {
        if let Some(user) = nat_rules::blocking_user(
            next,
            batch,
            origin,
            (Kind::VirtualIp, &vip.metadata.name),
            IpAddr::V4(ip),
            &[
                Kind::NatGateway,
                Kind::PortForward,
                Kind::VirtualIp,
                Kind::LoadBalancer,
            ],
        ) {
            return Err(origin.conflict(
                "spec.ip",
                format!(
                    "{ip} is already used by {user}; a VirtualIP's address serves nothing else: choose another address of the Uplink, or leave ip out to allocate one"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, forward, gateway, nat_base, refused, vip};

    #[test]
    fn virtual_ip_checks() {
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.12", "tcp", 8080, "c1")
            ),
        );
        refused(
            &state,
            &vip("v", Some("203.0.113.7")),
            400,
            "documents[0].spec.ip",
            &["203.0.113.7 is not an address of Uplink \"wan\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.10")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.10 is already used by NATGateway \"gw\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.12")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.12 is already used by PortForward \"web\""],
        );
        let state = apply(&state, &vip("v", Some("198.51.100.11")));
        refused(
            &state,
            &vip("w", Some("198.51.100.11")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.11 is already used by VirtualIP \"v\""],
        );
        // Every address is taken now: an allocation fails, naming the Uplink.
        refused(
            &state,
            &vip("w", None),
            409,
            "documents[0].spec.ip",
            &["no free address left on Uplink \"wan\""],
        );
        let without_uplink = apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n",
        );
        refused(
            &without_uplink,
            &vip("v", None),
            400,
            "documents[0].spec.ip",
            &["no Uplink exists"],
        );
    }
}
