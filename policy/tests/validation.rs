//! Bad policies are refused whole, with every problem at its field path (as Kubernetes'
//! `field.ErrorList`): one test per kind of bad field, and one policy with many problems
//! to show that validation goes on after the first.

#![allow(clippy::tests_outside_test_module)] // Integration tests are test modules already.

use policy::NetworkPolicy;

fn parse(yaml: &str) -> NetworkPolicy {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The (path, message) pairs of a refused policy.
fn problems(yaml: &str) -> Vec<(String, String)> {
    let errors = parse(yaml)
        .to_policy()
        .expect_err("the policy must be refused");
    errors.0.into_iter().map(|e| (e.path, e.message)).collect()
}

#[track_caller]
fn assert_paths(yaml: &str, expected: &[&str]) -> Vec<(String, String)> {
    let found = problems(yaml);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, expected, "{found:#?}");
    found
}

fn kubernetes(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}"
    )
}

#[test]
fn invalid_cidr() {
    let found = assert_paths(
        &kubernetes("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n"),
        &["spec.ingress[0].from[0].ipBlock.cidr"],
    );
    assert!(found[0].1.contains("10.0.0.0/33"), "{found:?}");
    assert_paths(
        &kubernetes("  ingress:\n  - from:\n    - ipBlock: {cidr: ''}\n"),
        &["spec.ingress[0].from[0].ipBlock.cidr"],
    );
    let found = assert_paths(
        &kubernetes("  egress:\n  - to:\n    - ipBlock: {cidr: 10.1.2.3/16}\n"),
        &["spec.egress[0].to[0].ipBlock.cidr"],
    );
    assert!(
        found[0].1.contains("10.1.0.0/16"),
        "names the block: {found:?}"
    );
}

#[test]
fn except_outside_its_cidr() {
    let found = assert_paths(
        &kubernetes(
            "  ingress:\n  - {}\n  - from:\n    - podSelector: {}\n    - ipBlock:\n        cidr: 10.0.0.0/16\n        except: [10.0.1.0/24, 10.1.0.0/24, 10.0.0.0/16, fd00::/64, nonsense]\n",
        ),
        &[
            "spec.ingress[1].from[1].ipBlock.except[1]",
            "spec.ingress[1].from[1].ipBlock.except[2]",
            "spec.ingress[1].from[1].ipBlock.except[3]",
            "spec.ingress[1].from[1].ipBlock.except[4]",
        ],
    );
    assert!(found[0].1.contains("strict subset"), "{found:?}");
    assert!(
        found[1].1.contains("strict subset"),
        "equal is not strict: {found:?}"
    );
}

#[test]
fn end_port_below_port_or_with_a_named_port() {
    let found = assert_paths(
        &kubernetes(
            "  ingress:\n  - ports:\n    - {port: 80, endPort: 79}\n    - {port: http, endPort: 90}\n    - {endPort: 90}\n    - {port: 0}\n    - {port: 70000}\n    - {port: 80, endPort: 65536}\n    - {port: '80'}\n",
        ),
        &[
            "spec.ingress[0].ports[0].endPort",
            "spec.ingress[0].ports[1].endPort",
            "spec.ingress[0].ports[2].endPort",
            "spec.ingress[0].ports[3].port",
            "spec.ingress[0].ports[4].port",
            "spec.ingress[0].ports[5].endPort",
            "spec.ingress[0].ports[6].port",
        ],
    );
    assert!(
        found[0].1.contains("greater than or equal to port (80)"),
        "{found:?}"
    );
    assert!(found[1].1.contains("non-numeric"), "{found:?}");
    assert!(found[2].1.contains("port is not specified"), "{found:?}");
    assert!(
        found[6].1.contains("at least one letter"),
        "a quoted number is a name: {found:?}"
    );
}

#[test]
fn unknown_protocol() {
    let found = assert_paths(
        &kubernetes(
            "  egress:\n  - ports:\n    - {protocol: ICMP}\n    - {protocol: tcp, port: 80}\n",
        ),
        &[
            "spec.egress[0].ports[0].protocol",
            "spec.egress[0].ports[1].protocol",
        ],
    );
    assert!(
        found[0].1.contains("\"TCP\", \"UDP\", \"SCTP\""),
        "{found:?}"
    );
}

#[test]
fn bad_selector_operators_keys_and_values() {
    assert_paths(
        &kubernetes(
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Equals, values: [web]}\n    - {key: app, operator: In}\n    - {key: app, operator: Exists, values: [web]}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {'bad key': x, good: 'bad value'}\n      podSelector:\n        matchExpressions: [{key: tier, operator: notin, values: [a]}]\n",
        ),
        &[
            "spec.podSelector.matchExpressions[0].operator",
            "spec.podSelector.matchExpressions[1].values",
            "spec.podSelector.matchExpressions[2].values",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            "spec.ingress[0].from[0].namespaceSelector.matchLabels[bad key]",
            "spec.ingress[0].from[0].namespaceSelector.matchLabels[good]",
        ],
    );
}

#[test]
fn peers_need_a_field_and_ip_block_stands_alone() {
    let found = assert_paths(
        &kubernetes(
            "  ingress:\n  - from:\n    - {}\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
        ),
        &["spec.ingress[0].from[0]", "spec.ingress[0].from[1]"],
    );
    assert!(
        found[1].1.contains("both ipBlock and another peer"),
        "{found:?}"
    );
}

#[test]
fn policy_types() {
    assert_paths(
        &kubernetes("  policyTypes: [Ingress, Egress, Ingress]\n"),
        &["spec.policyTypes"],
    );
    assert_paths(
        &kubernetes("  policyTypes: [ingress]\n"),
        &["spec.policyTypes[0]"],
    );
    // Repeated types are accepted, as Kubernetes does.
    parse(&kubernetes("  policyTypes: [Ingress, Ingress]\n"))
        .to_policy()
        .expect("valid");
}

#[test]
fn metadata_and_kind() {
    assert_paths(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: Bad_Name, namespace: X}\nspec: {}\n",
        &["kind", "metadata.name", "metadata.namespace"],
    );
    assert_paths(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {}\n",
        &["metadata.name"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    assert_paths(
        &kubernetes(
            "  podSelector: {matchExpressions: [{key: a, operator: Like}]}\n  ingress:\n  - ports: [{protocol: ICMP}]\n    from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n  egress:\n  - ports: [{port: 90, endPort: 80}]\n    to: [{}]\n  policyTypes: [Both]\n",
        ),
        &[
            "spec.podSelector.matchExpressions[0].operator",
            "spec.ingress[0].ports[0].protocol",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "spec.egress[0].ports[0].endPort",
            "spec.egress[0].to[0]",
            "spec.policyTypes[0]",
        ],
    );
    let text = parse(&kubernetes(
        "  policyTypes: [Both]\n  ingress: [{ports: [{protocol: ICMP}]}]\n",
    ))
    .to_policy()
    .expect_err("refused")
    .to_string();
    assert!(
        text.starts_with(
            "2 problems:\n  spec.ingress[0].ports[0].protocol: unsupported value \"ICMP\""
        ),
        "{text}"
    );
}

#[test]
fn seed_form_validation() {
    assert_paths(
        "apiVersion: vswitch/v1alpha1
kind: NetworkPolicy
metadata: {name: p}
spec:
  networkInterfaceSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - objectSelector: {kind: VirtualIP, matchLabels: {app: web}}
    - objectSelector: {matchLabels: {app: web}}
    - {}
    - objectSelector: {kind: NetworkInterface}
      ipBlock: {cidr: 10.0.0.0/8}
    ports: [{port: 5432, endPort: 5000}]
",
        &[
            "spec.network",
            "spec.ingress[0].from[0].objectSelector.kind",
            "spec.ingress[0].from[1].objectSelector.kind",
            "spec.ingress[0].from[2]",
            "spec.ingress[0].from[3]",
            "spec.ingress[0].ports[0].endPort",
        ],
    );
    assert_paths(
        "apiVersion: vswitch/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  network: Not_A_Name\n  egress:\n  - to: [{objectSelector: {kind: LoadBalancer, matchExpressions: [{key: a, operator: Bogus}]}}]\n",
        &[
            "spec.network",
            "spec.egress[0].to[0].objectSelector.matchExpressions[0].operator",
        ],
    );
}
