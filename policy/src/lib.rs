//! Network policy model, compiler and classifier (Kubernetes NetworkPolicy semantics); no I/O.
//!
//! The switch stores NetworkPolicies as users write them, compiles them with the
//! interfaces, namespaces and load balancers it knows into per-interface tables, and asks
//! those tables about the first packet of every new connection. This crate is all of that
//! except the switch: plain data and pure functions, no sockets, threads or clock.
//!
//! # Pieces
//! - [`model`]: [`NetworkPolicy`] in its two written forms (`networking.k8s.io/v1`
//!   verbatim, and the seed form `vswitch/v1alpha1` with `network`,
//!   `networkInterfaceSelector` and `objectSelector` peers), [`Namespace`], [`NamedPort`],
//!   validation with field paths, and the normalized [`Policy`] both forms map onto.
//! - [`selector`]: [`LabelSelector`] (`matchLabels`, `matchExpressions` with `In`,
//!   `NotIn`, `Exists`, `DoesNotExist`).
//! - [`validation`]: [`ValidationErrors`], every problem as (field path, message).
//! - [`compile`]: [`World`] in, [`Compiled`] out.
//! - [`classify`]: [`Compiled::check`] on a [`Connection`] gives a [`Decision`].
//! - [`explain`]: [`Compiled::explain`] puts a decision in words.
//!
//! # Semantics, and where they come from
//! Kubernetes' (the `NetworkPolicy` API reference and concepts page, `k8s.io/api`
//! `networking/v1/types.go`, and the e2e suite `test/e2e/network/netpol`, whose cases
//! `tests/e2e_truth_table.rs` replays):
//! - An interface is *isolated* for ingress (egress) when at least one policy of that type
//!   selects it; then a connection is allowed only if some rule of some selecting policy
//!   allows it. Policies only allow, and add up. Not isolated: everything is allowed.
//! - A connection passes only if the source's egress *and* the destination's ingress allow
//!   it. A side outside the switch has no policies.
//! - `policyTypes` absent or empty: Ingress, plus Egress when there are egress rules. A
//!   policy of a type with no rules of it allows nothing of that direction (default deny).
//! - A rule matches when the remote end matches one of its peers (none listed: any remote
//!   end, inside or outside the switch) and the protocol and destination port match one
//!   of its ports (none listed: any protocol and port). A port without `protocol` is TCP;
//!   `endPort` makes a range; SCTP is its own protocol (132), never TCP.
//! - Peers: `podSelector` alone picks interfaces of the policy's namespace;
//!   `namespaceSelector` alone, every interface of the matching namespaces (`{}`: all);
//!   both in one peer, the interfaces matching both (AND); separate peers add up (OR).
//!   Every namespace carries `kubernetes.io/metadata.name: <name>`.
//! - Selectors never match an address outside the switch; `ipBlock` matches addresses,
//!   *including interfaces' own addresses* (upstream's e2e expects it; Cilium does not,
//!   cilium/cilium#9209, and SIG-network called Terway's copy of that a bug,
//!   AliyunContainerService/terway#904). An address in an `except` is not in the block,
//!   but another peer or policy may still allow it.
//! - A named port resolves on the *destination* interface, with the rule's protocol: for
//!   ingress the selected interface, for egress the remote one, also when the peer is an
//!   `ipBlock` covering an interface's address or when `to` is empty. It matches nothing on
//!   a destination outside the switch. (AWS's controller resolved it on the source,
//!   amazon-network-policy-controller-k8s#52, and not for `ipBlock` peers, #81;
//!   kube-router missed the empty-`to` case, cloudnativelabs/kube-router#1036.)
//! - The seed form maps onto the same model: its policy selects interfaces of its
//!   namespace *and* Network; an `objectSelector` of kind NetworkInterface is a pod
//!   selector in the policy's namespace and Network, one of kind LoadBalancer matches
//!   those load balancers' addresses.
//!
//! What the switch does around it (not this crate): only the first packet of a
//! connection is classified (replies and later packets follow the connection's state),
//! ARP is never filtered, classification happens after load-balancer DNAT, so that ports
//! are the interface's real ports (amazon-network-policy-controller-k8s#210 enforced
//! before DNAT and let Service ports through), and whether the node's own traffic to an
//! interface bypasses policy (kube-router accepts it explicitly) is the switch's call.
//!
//! # Cost
//! [`Compiled::check`] allocates nothing and never walks the policies: a handful of binary
//! searches over the tables of the two interfaces involved, O(log n) in their sizes (see
//! [`classify`]). Selector matches, named ports and address sets are all resolved by
//! [`Compiled::compile`] (see [`compile`]). `perf/benches/policy.rs` measures both at 0 to
//! 10,000 policies.
//!
//! # Example
//! ```
//! use std::collections::BTreeMap;
//! use policy::{
//!     Compiled, Connection, Endpoint, EndpointId, Namespace, NetworkPolicy, Peer, Verdict,
//!     World,
//! };
//!
//! // Allow ingress to app=db, port 5432, only from app=web of the same namespace.
//! let written: NetworkPolicy = serde_json::from_str(r#"{
//!     "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
//!     "metadata": {"name": "db-from-web", "namespace": "shop"},
//!     "spec": {
//!         "podSelector": {"matchLabels": {"app": "db"}},
//!         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
//!                      "ports": [{"port": 5432}]}]
//!     }
//! }"#).unwrap();
//! let policy = written.to_policy().unwrap(); // refused whole, with field paths, if invalid
//!
//! let endpoint = |id, name: &str, app: &str, addr: &str| Endpoint {
//!     id: EndpointId(id),
//!     name: name.into(),
//!     namespace: "shop".into(),
//!     network: "default".into(),
//!     labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
//!     addresses: vec![addr.parse().unwrap()],
//!     ports: vec![],
//! };
//! let compiled = Compiled::compile(World {
//!     namespaces: vec![Namespace::new("shop", BTreeMap::new())],
//!     endpoints: vec![
//!         endpoint(1, "web-0", "web", "10.0.0.1"),
//!         endpoint(2, "db-0", "db", "10.0.0.2"),
//!     ],
//!     load_balancers: vec![],
//!     policies: vec![policy],
//! })
//! .unwrap();
//!
//! let web = Peer::Endpoint { id: EndpointId(1), addr: "10.0.0.1".parse().unwrap() };
//! let db = Peer::Endpoint { id: EndpointId(2), addr: "10.0.0.2".parse().unwrap() };
//! let outside = Peer::External("192.0.2.9".parse().unwrap());
//!
//! let ok = Connection { src: web, dst: db, protocol: 6, dst_port: 5432 };
//! let decision = compiled.check(&ok);
//! assert!(decision.allowed);
//! assert_eq!(decision.egress, Verdict::NotIsolated); // no Egress policy selects web-0
//! let Verdict::Allowed(rule) = decision.ingress else { panic!() };
//! assert_eq!((compiled.policy(rule.policy).name.as_str(), rule.index), ("db-from-web", 0));
//!
//! // From outside: pod selectors never match it, and db-0 is isolated for ingress.
//! let denied = Connection { src: outside, dst: db, protocol: 6, dst_port: 5432 };
//! let decision = compiled.check(&denied);
//! assert!(!decision.allowed);
//! let text = compiled.explain(&denied, &decision).to_string();
//! assert!(text.contains("denied: isolated for ingress by 1 policy (shop/db-from-web)"), "{text}");
//! ```

#![forbid(unsafe_code)]

pub mod classify;
pub mod compile;
pub mod explain;
pub mod model;
pub mod selector;
pub mod validation;

pub use classify::{Connection, Decision, Isolation, Peer, Verdict};
pub use compile::{
    CompileError, CompileStats, Compiled, Endpoint, EndpointId, LoadBalancer, PolicyId, RuleRef,
    World,
};
pub use explain::Explanation;
pub use model::{
    DEFAULT_NAMESPACE, Direction, KUBERNETES_API_VERSION, METADATA_NAME_LABEL, NamedPort,
    Namespace, NamespaceScope, NetworkPolicy, PeerSelector, Policy, PortMatch, PortSpec, Protocol,
    Rule, VSWITCH_API_VERSION,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};
pub use validation::{FieldError, ValidationErrors, check_port_name};
