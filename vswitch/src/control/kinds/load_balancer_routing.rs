//! `LoadBalancerRouting`: where a LoadBalancer sends connections, written by the switch (seed
//! 004): one per LoadBalancer, with its name, listing the destinations (interface name, uid,
//! address) and the state of each (`Healthy`, `Unhealthy`, `Draining`).
//!
//! The stored object holds only what follows the LoadBalancer (its name, owner label and
//! Network); the destinations are computed when read, from the datapath's backend sets, so
//! that a health change or a drain shows at once without writing the state file. Users cannot
//! apply one, and delete one only by deleting its LoadBalancer.

use std::net::IpAddr;

use super::load_balancer::BackendStateView;
#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a LoadBalancerRouting (written by the switch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerRoutingSpec {
    /// The LoadBalancer's Network.
    pub network: String,
}

/// One destination of a LoadBalancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The NetworkInterface.
    pub name: String,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its address.
    pub ip: IpAddr,
    /// `Healthy`, `Unhealthy` or `Draining`.
    pub state: BackendStateView,
}

/// Status of a LoadBalancerRouting (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerRoutingStatus {
    /// The LoadBalancer's destinations, by interface name.
    #[serde(default)]
    pub destinations: Vec<Destination>,
}

/// Where a LoadBalancer sends connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerRouting {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `LoadBalancerRouting`.
    pub kind: String,
    /// Name (the LoadBalancer's) and the owner label.
    pub metadata: Metadata,
    /// Written by the switch.
    pub spec: LoadBalancerRoutingSpec,
    /// Computed when read.
    #[serde(default)]
    pub status: LoadBalancerRoutingStatus,
}

impl ResourceKind for LoadBalancerRouting {
    type Spec = LoadBalancerRoutingSpec;
    type Status = LoadBalancerRoutingStatus;

    const NAMESPACED: bool = true;

    const INFO: KindInfo = KindInfo {
        name: "LoadBalancerRouting",
        plural: "loadbalancerroutings",
        aliases: &["lbr"],
        summary: "where a LoadBalancer sends connections (read-only, written by the switch)",
        example: "\
apiVersion: vswitch/v1alpha1
kind: LoadBalancerRouting
metadata:
  name: web
  labels: {vswitch/owner: LoadBalancer/web}
spec:
  network: blue
status:
  destinations:
  - {name: b1, uid: 2020dcf9-e030-427e-b0fc-4fec2016e73a, ip: 10.1.0.2, state: Healthy}
",
    };

    fn spec(&self) -> &LoadBalancerRoutingSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut LoadBalancerRoutingStatus {
        &mut self.status
    }

    /// Only the switch writes them: every document a user sends is refused.
    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.push(cx.origin.invalid(
            "kind",
            "LoadBalancerRouting is written by the switch (one per LoadBalancer, with its name); read it with get, change the LoadBalancer instead",
        ));
    }

    fn observe(&mut self, state: &State, view: &StatusView) {
        let Some(live) = view.load_balancers.get(&self.metadata.name) else {
            return;
        };
        self.status.destinations = live
            .backends
            .iter()
            .map(|(name, ip, backend_state)| Destination {
                name: name.clone(),
                uid: state
                    .network_interfaces
                    .get(name)
                    .and_then(|nic| nic.status.uid.clone()),
                ip: *ip,
                state: *backend_state,
            })
            .collect();
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETWORK", "DESTINATIONS"];
        if wide {
            columns.push("STATES");
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.metadata.name.clone(),
            self.spec.network.clone(),
            cells(
                self.status
                    .destinations
                    .iter()
                    .map(|d| format!("{}={}", d.name, d.ip)),
            ),
        ];
        if wide {
            row.push(cells(
                self.status
                    .destinations
                    .iter()
                    .map(|d| format!("{}:{}", d.name, json_text(&d.state))),
            ));
        }
        row
    }

    fn describe_tables(&self) -> Vec<DescribeTable> {
        let mut listing = Listing {
            headers: vec!["NAME", "UID", "IP", "STATE"],
            rows: Vec::new(),
        };
        for destination in &self.status.destinations {
            listing.rows.push(vec![
                destination.name.clone(),
                cell(destination.uid.as_deref().unwrap_or_default()),
                destination.ip.to_string(),
                json_text(&destination.state),
            ]);
        }
        vec![DescribeTable {
            replaces: "destinations",
            title: "Destinations",
            listing,
        }]
    }
}

/// Makes the LoadBalancerRoutings of `state` follow its LoadBalancers: one per
/// LoadBalancer, with its name, owner label and Network; none for a name without one.
pub fn sync(state: &mut State) {
    let wanted: BTreeMap<String, LoadBalancerRouting> = state
        .load_balancers
        .values()
        .map(|balancer| {
            let name = balancer.metadata.name.clone();
            let routing = LoadBalancerRouting {
                api_version: API_VERSION.to_string(),
                kind: "LoadBalancerRouting".to_string(),
                metadata: Metadata {
                    name: name.clone(),
                    namespace: balancer.metadata.namespace.clone(),
                    labels: BTreeMap::from([(
                        OWNER_LABEL.to_string(),
                        format!("LoadBalancer/{name}"),
                    )]),
                },
                spec: LoadBalancerRoutingSpec {
                    network: balancer.spec.network.clone(),
                },
                status: LoadBalancerRoutingStatus::default(),
            };
            (routing.metadata.key(), routing)
        })
        .collect();
    state.load_balancer_routings = wanted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, refusal};

    const BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24}
---
apiVersion: vswitch/v1alpha1
kind: LoadBalancer
metadata: {name: front}
spec: {type: Internal, network: blue, ports: [{port: 80}]}
";

    #[test]
    fn one_per_load_balancer_written_by_the_switch() {
        let state = apply(&State::default(), BASE);
        let routing = &state.load_balancer_routings["front"];
        assert_eq!(routing.spec.network, "blue");
        assert_eq!(
            routing.metadata.labels.get(OWNER_LABEL).map(String::as_str),
            Some("LoadBalancer/front")
        );
        let err = refusal(
            &state,
            "apiVersion: vswitch/v1alpha1\nkind: LoadBalancerRouting\nmetadata: {name: mine}\nspec: {network: blue}\n",
        );
        assert_eq!(err.field(), Some("documents[0].kind"), "{err}");
        assert!(err.to_string().contains("written by the switch"), "{err}");
        // Its Network cannot go while it is there.
        let deps = state.dependants(Kind::Network, "blue");
        assert!(
            deps.contains(&("LoadBalancers", vec!["front".to_string()])),
            "{deps:?}"
        );
    }
}
