//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (spec section 2, and the reference
//! plugins' `types.LoadArgs`).
//!
//! Known keys: `K8S_POD_NAMESPACE`, `K8S_POD_NAME` (what kubelet's CRI runtimes pass, and
//! podman passes `K8S_POD_NAME=<container name>`), `K8S_POD_INFRA_CONTAINER_ID` and
//! `K8S_POD_UID` (accepted, unused), `IP` (podman `--ip`; several separated by `,`) and `MAC`
//! (podman `--mac-address`). An unknown key is an error unless `IgnoreUnknown=1` (or
//! `true`) is among the pairs, as the reference plugins do it; podman always sends it.

use std::collections::BTreeMap;

use crate::CniError;

/// The parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `IP`: static addresses asked for (as written; vswitchd validates them).
    pub ips: Vec<String>,
    /// `MAC`: the MAC asked for (as written; vswitchd validates it).
    pub mac: Option<String>,
    /// Every pair, as given (later pairs win).
    pub all: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`; an empty string gives no arguments.
    ///
    /// # Errors
    /// [`CniError::InvalidEnvValue`] (code 4) for a pair without `=`, or an unknown key
    /// without `IgnoreUnknown`.
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut all = BTreeMap::new();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::InvalidEnvValue(format!(
                    "CNI_ARGS: {pair:?} is not KEY=VALUE; write pairs separated by ';', e.g. \
                     K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1"
                )));
            };
            all.insert(key.to_string(), value.to_string());
        }
        let ignore_unknown = all
            .get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        const KNOWN: &[&str] = &[
            "IgnoreUnknown",
            "K8S_POD_NAMESPACE",
            "K8S_POD_NAME",
            "K8S_POD_INFRA_CONTAINER_ID",
            "K8S_POD_UID",
            "IP",
            "MAC",
        ];
        if !ignore_unknown && let Some(key) = all.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(CniError::InvalidEnvValue(format!(
                "CNI_ARGS: unknown key {key:?}; vswitch-cni knows {}; add IgnoreUnknown=1 to \
                 pass others",
                KNOWN.join(", ")
            )));
        }
        let non_empty = |key: &str| all.get(key).filter(|v| !v.is_empty()).cloned();
        Ok(CniArgs {
            pod_namespace: non_empty("K8S_POD_NAMESPACE"),
            pod_name: non_empty("K8S_POD_NAME"),
            ips: non_empty("IP")
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            mac: non_empty("MAC"),
            all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_args() {
        let args = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;MAC=02:00:00:00:00:05")
            .expect("parses");
        assert_eq!(args.pod_name.as_deref(), Some("web"));
        assert_eq!(args.mac.as_deref(), Some("02:00:00:00:00:05"));
        assert_eq!(args.pod_namespace, None);
        assert!(args.ips.is_empty());
    }

    #[test]
    fn kubernetes_args_and_ips() {
        let args = CniArgs::parse(
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;IP=10.1.0.5,10.1.0.6",
        )
        .expect("parses");
        assert_eq!(args.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(args.ips, vec!["10.1.0.5", "10.1.0.6"]);
    }

    #[test]
    fn empty_is_nothing() {
        assert_eq!(CniArgs::parse("").expect("parses"), CniArgs::default());
    }

    #[test]
    fn unknown_key_needs_ignore_unknown() {
        let error = CniArgs::parse("FOO=bar").expect_err("unknown key");
        assert_eq!(u32::from(&error), 4);
        assert!(error.details().contains("\"FOO\""), "{error}");
        assert!(error.details().contains("IgnoreUnknown=1"), "{error}");
        CniArgs::parse("FOO=bar;IgnoreUnknown=true").expect("ignored");
    }

    #[test]
    fn pair_without_equals_is_refused() {
        let error = CniArgs::parse("K8S_POD_NAME").expect_err("no =");
        assert_eq!(u32::from(&error), 4);
    }
}
