//! Kubernetes' NetworkPolicy e2e suite (`kubernetes/kubernetes:test/e2e/network/netpol/
//! network_policy.go`), replayed on the compiled classifier: same model (x/y/z × a/b/c),
//! same policies (written here as YAML), same expected truth tables, all 81 pairs
//! asserted. Each test is named after its upstream `It(...)`; the ones that update a
//! policy or a label compile the changed world again, as the switch will. Upstream's
//! helpers set `policyTypes` to the directions they add rules for (`SetSpecIngressRules`,
//! `SetSpecEgressRules` in `policies.go`), so the egress-only policies here say
//! `policyTypes: [Egress]` (without it, Kubernetes' defaulting adds Ingress).
//!
//! Upstream ignores loopback (x/a → x/a) because CNIs differ on it; the switch never sees
//! a pod's traffic to itself, and the classifier simply applies the policies to it, which
//! is what the expected tables below already say, so the diagonal is asserted too.

#![allow(clippy::tests_outside_test_module)] // Integration tests are test modules already.

mod common;

use common::{
    Reachability, SCTP, TCP, UDP, all, compile, endpoints, namespaces, ns, pod, validate, world,
};
use policy::World;

const DENY_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

#[test]
fn default_deny_ingress() {
    let compiled = compile(world(DENY_INGRESS_X));
    let mut expected = Reachability::new(true);
    expected.expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 80, &expected);
    // The UDP and SCTP variants of the same test.
    validate(&compiled, UDP, 80, &expected);
    validate(&compiled, SCTP, 80, &expected);
}

#[test]
fn default_deny_all() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(all(), ns("x"), false)
        .expect_peer(ns("x"), all(), false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn allow_from_pods_within_server_namespace_by_pod_selector() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn allow_ingress_for_a_target() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {}
      namespaceSelector: {}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", true)
        .expect_all_ingress("x/b", false)
        .expect_all_ingress("x/c", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn allow_ingress_from_pods_in_all_namespaces() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-another-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {}}
",
    ));
    validate(&compiled, TCP, 80, &Reachability::new(true));
}

const ALLOW_FROM_Y_TO_XA: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
";

fn only_y_reaches_xa() -> Reachability {
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(ns("x"), pod("x/a"), false)
        .expect_peer(ns("z"), pod("x/a"), false);
    expected
}

#[test]
fn allow_only_from_a_different_namespace_by_namespace_selector() {
    let compiled = compile(world(ALLOW_FROM_Y_TO_XA));
    validate(&compiled, TCP, 80, &only_y_reaches_xa());
}

#[test]
fn pod_selector_with_match_expressions() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b]}]
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn namespace_selector_with_match_expressions() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
",
    ));
    validate(&compiled, TCP, 80, &only_y_reaches_xa());
}

#[test]
fn pod_selector_or_namespace_selector_as_separate_peers() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    - podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect("x/a", "x/a", false)
        .expect("x/c", "x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn pod_selector_and_namespace_selector_in_one_peer() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", false)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-z-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(ns("x"), pod("x/a"), false)
        .expect("y/a", "x/a", false)
        .expect("z/a", "x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn any_pod_selectors() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-x-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - podSelector: {matchLabels: {pod: c}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true)
        .expect("x/c", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
}

const ALLOW_Y_POD_A_TO_XA: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
";

#[test]
fn allow_only_from_a_pod_in_a_different_namespace() {
    let compiled = compile(world(ALLOW_Y_POD_A_TO_XA));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_ingress("x/a", false)
        .expect("y/a", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
    // The UDP and SCTP variants.
    validate(&compiled, UDP, 80, &expected);
    validate(&compiled, SCTP, 80, &expected);
}

fn allow_y_on_81(protocol: &str) -> String {
    format!(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-client-a-via-ns-selector, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}
    ports:
    - port: 81
      protocol: {protocol}
"
    )
}

#[test]
fn ports() {
    for (protocol, number) in [("TCP", TCP), ("UDP", UDP), ("SCTP", SCTP)] {
        let compiled = compile(world(&allow_y_on_81(protocol)));
        validate(&compiled, number, 81, &only_y_reaches_xa());
        let mut port_80 = Reachability::new(true);
        port_80.expect_all_ingress("x/a", false);
        validate(&compiled, number, 80, &port_80);
    }
}

#[test]
fn multiple_stacked_policies_with_overlapping_pod_selectors() {
    let first = allow_y_on_81("TCP");
    let compiled = compile(world(&first));
    validate(&compiled, TCP, 81, &only_y_reaches_xa());
    let mut deny = Reachability::new(true);
    deny.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &deny);

    let second = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    ports:
    - port: 80
      protocol: TCP
";
    let compiled = compile(world(&format!("{first}\n---\n{second}")));
    validate(&compiled, TCP, 80, &only_y_reaches_xa());
    validate(&compiled, TCP, 81, &only_y_reaches_xa());
}

const ALLOW_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress:
  - {}
";

#[test]
fn allow_all_policy() {
    let compiled = compile(world(ALLOW_ALL_INGRESS_X));
    validate(&compiled, TCP, 80, &Reachability::new(true));
    validate(&compiled, TCP, 81, &Reachability::new(true));
}

#[test]
fn ingress_on_one_named_port() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: serve-81-tcp
",
    ));
    validate(&compiled, TCP, 81, &Reachability::new(true));
    let mut port_80 = Reachability::new(true);
    port_80.expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 80, &port_80);
}

#[test]
fn ingress_from_namespace_on_one_named_port() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    ports:
    - port: serve-80-tcp
      protocol: TCP
",
    ));
    validate(&compiled, TCP, 80, &only_y_reaches_xa());
    let mut port_81 = Reachability::new(true);
    port_81.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 81, &port_81);
}

#[test]
fn egress_on_one_named_port_with_empty_to() {
    // kube-router#1036: the named port of a rule without `to` resolves on every destination.
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: serve-80-tcp
",
    ));
    validate(&compiled, TCP, 80, &Reachability::new(true));
    let mut port_81 = Reachability::new(true);
    port_81.expect_peer(ns("x"), all(), false);
    validate(&compiled, TCP, 81, &port_81);
}

#[test]
fn enforce_updated_policy() {
    // Allow all, then the same policy with `ingress: []`: deny all.
    let compiled = compile(world(ALLOW_ALL_INGRESS_X));
    validate(&compiled, TCP, 81, &Reachability::new(true));
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: []
",
    ));
    let mut deny = Reachability::new(true);
    deny.expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 81, &deny);
}

#[test]
fn ingress_from_updated_namespace() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns2: updated}}
";
    let compiled = compile(world(yaml));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &expected);

    let compiled = compile(World {
        namespaces: namespaces(&[("y", &[("ns2", "updated")])]),
        ..world(yaml)
    });
    expected.expect_peer(ns("y"), all(), true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn ingress_from_updated_pod() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b, pod2: updated}}
";
    let compiled = compile(world(yaml));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &expected);

    let compiled = compile(World {
        endpoints: endpoints(&[("x/b", &[("pod2", "updated")])]),
        ..world(yaml)
    });
    expected.expect("x/b", "x/a", true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn deny_ingress_from_pods_on_other_namespaces() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-empty-policy, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(ns("y"), ns("x"), false)
        .expect_peer(ns("z"), ns("x"), false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn deny_ingress_to_updated_pod() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-via-label-selector, namespace: x}
spec:
  podSelector: {matchLabels: {target: isolated}}
  policyTypes: [Ingress]
";
    let compiled = compile(world(yaml));
    validate(&compiled, TCP, 80, &Reachability::new(true));
    let compiled = compile(World {
        endpoints: endpoints(&[("x/a", &[("target", "isolated")])]),
        ..world(yaml)
    });
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn deny_egress_from_pods_by_pod_selector() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_all_egress("x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn deny_egress_from_all_pods_in_a_namespace() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-ns-x, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_peer(ns("x"), all(), false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn ingress_and_egress_together() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
  egress:
  - ports:
    - port: 80
",
    ));
    let mut port_80 = Reachability::new(true);
    port_80
        .expect_all_ingress("x/a", false)
        .expect("x/b", "x/a", true);
    validate(&compiled, TCP, 80, &port_80);
    let mut port_81 = Reachability::new(true);
    port_81
        .expect_all_ingress("x/a", false)
        .expect_all_egress("x/a", false)
        .expect("x/b", "x/a", true);
    validate(&compiled, TCP, 81, &port_81);
}

#[test]
fn egress_denied_on_the_client_side_even_if_the_server_allows() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-ya-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-yb-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(pod("x/a"), all(), false)
        .expect_peer(all(), pod("y/a"), false)
        .expect_peer(pod("x/a"), pod("y/a"), true)
        .expect_peer(all(), pod("y/b"), false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn egress_to_a_server_in_a_different_namespace_by_pod_and_namespace_selector() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_egress("x/a", false)
        .expect("x/a", "y/a", true);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn ingress_any_port_on_a_specific_protocol() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-by-proto, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - protocol: TCP
",
    ));
    validate(&compiled, TCP, 80, &Reachability::new(true));
    let mut udp = Reachability::new(true);
    udp.expect_peer(all(), pod("x/a"), false);
    validate(&compiled, UDP, 80, &udp);
}

#[test]
fn multiple_ingress_policies_with_allow_all_taking_precedence() {
    let only_80 = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-port-80, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
";
    let compiled = compile(world(only_80));
    let mut expected = Reachability::new(true);
    expected.expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 81, &expected);
    let compiled = compile(world(&format!(
        "{only_80}\n---\n{}",
        ALLOW_ALL_INGRESS_X.replace("allow-all,", "allow-ingress,")
    )));
    validate(&compiled, TCP, 81, &Reachability::new(true));
}

#[test]
fn multiple_egress_policies_with_allow_all_taking_precedence() {
    let only_80 = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-port-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: 80
";
    let compiled = compile(world(only_80));
    let mut expected = Reachability::new(true);
    expected.expect_peer(ns("x"), all(), false);
    validate(&compiled, TCP, 81, &expected);
    let allow_all = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - {}
";
    let compiled = compile(world(&format!("{only_80}\n---\n{allow_all}")));
    validate(&compiled, TCP, 81, &Reachability::new(true));
}

#[test]
fn stop_enforcing_policies_after_they_are_deleted() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_peer(ns("x"), all(), false)
        .expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 80, &expected);
    let compiled = compile(world(""));
    validate(&compiled, TCP, 80, &Reachability::new(true));
}

#[test]
fn egress_to_a_server_in_a_cidr_block() {
    // ipBlock matches pod addresses: y/b is 10.0.1.2.
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.1.2/32}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_egress("x/a", false)
        .expect("x/a", "y/b", true);
    validate(&compiled, TCP, 80, &expected);
}

const EXCEPT_XB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/4, except: [10.0.0.2/32]}
";

#[test]
fn except_clause_in_egress_to_a_cidr_block() {
    // Upstream writes `<x/a's IP>/4`; with x/a at 10.0.0.1 that block is 0.0.0.0/4.
    let compiled = compile(world(EXCEPT_XB));
    let mut expected = Reachability::new(true);
    expected.expect("x/a", "x/b", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn an_ip_in_both_cidr_and_except_is_allowed_by_another_rule() {
    let compiled = compile(world(EXCEPT_XB));
    let mut expected = Reachability::new(true);
    expected.expect("x/a", "x/b", false);
    validate(&compiled, TCP, 80, &expected);
    // Upstream then replaces the policy with one allowing exactly x/b's address.
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.2/32}
",
    ));
    let mut expected = Reachability::new(true);
    expected
        .expect_all_egress("x/a", false)
        .expect("x/a", "x/b", true);
    validate(&compiled, TCP, 80, &expected);
    // And both at once: the union allows what the except cut out (OVN-Kubernetes' trap).
    let both = format!(
        "{EXCEPT_XB}\n---\n{}",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-xb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.2/32}
"
    );
    let compiled = compile(world(&both));
    validate(&compiled, TCP, 80, &Reachability::new(true));
}

#[test]
fn ingress_and_egress_controlled_independently() {
    let allow_egress = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-for-target, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - {}
";
    let compiled = compile(world(allow_egress));
    validate(&compiled, TCP, 80, &Reachability::new(true));
    let deny_ingress = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-via-label-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
";
    let compiled = compile(world(&format!("{allow_egress}\n---\n{deny_ingress}")));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn sctp_is_not_mistaken_for_tcp() {
    let compiled = compile(world(&format!(
        "{DENY_INGRESS_X}\n---\n{}",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: 81
      protocol: SCTP
"
    )));
    let mut tcp = Reachability::new(true);
    tcp.expect_peer(all(), ns("x"), false);
    validate(&compiled, TCP, 81, &tcp);
    // And the SCTP connection (protocol 132) it does allow.
    let mut sctp = Reachability::new(true);
    sctp.expect_peer(all(), ns("x"), false)
        .expect_all_ingress("x/a", true);
    validate(&compiled, SCTP, 81, &sctp);
}

#[test]
fn pods_selected_by_an_sctp_policy_are_isolated() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: 80
      protocol: SCTP
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 81, &expected);
}

#[test]
fn tcp_is_not_allowed_by_a_udp_only_policy() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: 81
      protocol: UDP
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 81, &expected);
    validate(&compiled, UDP, 81, &Reachability::new(true));
}

#[test]
fn namespace_selector_with_match_labels_on_the_default_name_label() {
    let compiled = compile(world(ALLOW_FROM_Y_TO_XA));
    validate(&compiled, TCP, 80, &only_y_reaches_xa());
}

#[test]
fn namespace_selector_with_match_expressions_on_the_default_name_label() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector-for-immutable-ns-label, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_peer(pod("x/a"), ns("y"), false);
    validate(&compiled, TCP, 80, &expected);
}

// ---- Beyond the current upstream list: cases its older versions or the issue name.

#[test]
fn port_range_with_end_port() {
    // Upstream's former "should enforce policy based on Ports range [Feature:NetworkPolicyEndPort]".
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    ports:
    - port: 80
      endPort: 82
",
    ));
    for port in [80, 81, 82] {
        validate(&compiled, TCP, port, &only_y_reaches_xa());
    }
    let mut outside = Reachability::new(true);
    outside.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 83, &outside);
    validate(&compiled, TCP, 79, &outside);
    validate(&compiled, UDP, 81, &outside);
}

#[test]
fn explicit_policy_types_ignore_rules_of_the_other_direction() {
    // policyTypes: [Egress] with an ingress rule: the ingress rule is not in effect, and
    // the pods are not isolated for ingress.
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_all_egress("x/a", false);
    validate(&compiled, TCP, 80, &expected);
}

#[test]
fn egress_rules_without_policy_types_also_isolate_ingress() {
    // `egress` rules and no policyTypes: types Ingress (always) and Egress. The ingress
    // side thus denies all: Kubernetes' defaulting, not a guess.
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-rules-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - {}
",
    ));
    let mut expected = Reachability::new(true);
    expected.expect_all_ingress("x/a", false);
    validate(&compiled, TCP, 80, &expected);
}
