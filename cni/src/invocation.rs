//! One invocation of the plugin: the `CNI_*` variables and stdin in, one JSON document out
//! (CNI spec 1.1.0 section 2 "Execution protocol" and section 5 "Result types").
//!
//! [`Invocation::parse`] checks, in this order: `CNI_COMMAND`; for VERSION nothing else
//! (its answer is [`version_reply`]); stdin as a network config (6 when it is not one), its
//! name (7), its `cniVersion` against [`SUPPORTED`] and the command (1: CHECK needs 0.4.0,
//! STATUS and GC 1.1.0); the variables the command needs (4); the plugin's keys (7). Errors
//! are answered in the config's `cniVersion` when it was read ([`Failure::to_json`]).

use std::path::PathBuf;

use rscni_types::types::{
    CNI_ARGS, CNI_COMMAND, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNIResult, CNIResultWithVersion,
    Cmd, ContainerId, ErrorResult, InterfaceName, NetConf,
};
use rscni_types::version::{PluginInfo, SpecVersion};
use serde_json::json;

use crate::{CniArgs, CniError, PluginConf};

/// The spec versions this plugin speaks (0.1.0 and 0.2.0 have another result layout).
pub const SUPPORTED: &[SpecVersion] = &[
    SpecVersion::new(0, 3, 0),
    SpecVersion::new(0, 3, 1),
    SpecVersion::new(0, 4, 0),
    SpecVersion::new(1, 0, 0),
    SpecVersion::new(1, 1, 0),
];

/// The newest version this plugin speaks.
pub const CURRENT: SpecVersion = SpecVersion::new(1, 1, 0);

/// A failed invocation: the error, and the version to answer it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The config's `cniVersion` when it could be read, else [`CURRENT`].
    pub version: SpecVersion,
    /// What went wrong.
    pub error: CniError,
}

impl Failure {
    /// The error document for stdout: `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self) -> String {
        // ErrorResult holds strings and numbers only: serializing it cannot fail.
        serde_json::to_string(&ErrorResult::new(self.version, &self.error))
            .unwrap_or_else(|_| String::from("{}"))
    }
}

/// What a command answers on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// ADD: the result.
    Result(CNIResult),
    /// DEL, CHECK, STATUS, GC: nothing on stdout.
    Nothing,
}

impl Reply {
    /// The document to print for this reply in `version` (empty for [`Reply::Nothing`]);
    /// 0.3.x and 0.4.0 get their own result layout.
    pub fn to_json(self, version: SpecVersion) -> String {
        let Reply::Result(result) = self else {
            return String::new();
        };
        let text = if version.is_legacy() {
            serde_json::to_string(&rscni_types::legacy::CNIResult::new(version, result))
        } else {
            serde_json::to_string(&CNIResultWithVersion::new(version, result))
        };
        // Results are plain data (strings, numbers, addresses): serializing cannot fail.
        text.unwrap_or_else(|_| String::from("{}"))
    }
}

/// A parsed invocation of ADD, DEL, CHECK, STATUS or GC.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The operation.
    pub command: Cmd,
    /// The config's `cniVersion`, the version of the answer.
    pub version: SpecVersion,
    /// The network configuration (with `prevResult`, `runtimeConfig`, ...).
    pub conf: NetConf,
    /// The plugin's keys of it.
    pub plugin: PluginConf,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; DEL may come without it).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for STATUS and GC).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

/// What parsing found to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// VERSION: print this document and exit.
    Version(String),
    /// Another command: run it.
    Run(Box<Invocation>),
}

/// The VERSION answer: the version asked about (stdin's `cniVersion`, else [`CURRENT`])
/// and [`SUPPORTED`].
pub fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CURRENT.to_string());
    let info = PluginInfo::new(CURRENT, SUPPORTED.to_vec());
    json!({"cniVersion": asked, "supportedVersions": info.supported_versions()}).to_string()
}

impl Invocation {
    /// Parses one invocation from the environment (`env(name)`, `None` when unset) and
    /// stdin.
    ///
    /// # Errors
    /// A [`Failure`] with the spec's code: see the module doc for the order of the checks.
    pub fn parse(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Parsed, Failure> {
        let fail = |version, error| Failure { version, error };
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let command: Cmd = match var(CNI_COMMAND) {
            Some(text) => text.parse().map_err(|e| fail(CURRENT, e))?,
            None => {
                return Err(fail(
                    CURRENT,
                    CniError::InvalidEnvValue(
                        "CNI_COMMAND is not set: vswitch-cni is a CNI plugin, run by a container \
                         runtime with CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION (docs/cni.md)"
                            .to_string(),
                    ),
                ));
            }
        };
        if command == Cmd::Version {
            return Ok(Parsed::Version(version_reply(stdin)));
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            fail(
                CURRENT,
                CniError::FailedToDecode(format!("stdin is not a CNI network configuration: {e}")),
            )
        })?;
        let version = conf.version().map_err(|e| fail(CURRENT, e))?;
        let fail = |error| Failure { version, error };
        conf.validate_name().map_err(fail)?;
        if !SUPPORTED.contains(&version) {
            return Err(fail(CniError::IncompatibleVersion(format!(
                "cniVersion {version} is not supported; vswitch-cni speaks {}",
                SUPPORTED
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))));
        }
        version.allows(command).map_err(fail)?;
        let needs_container = matches!(command, Cmd::Add | Cmd::Del | Cmd::Check);
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                fail(CniError::InvalidEnvValue(format!(
                    "{name} is not set; {} needs it",
                    <&str>::from(command)
                )))
            })
        };
        let (container_id, ifname) = if needs_container {
            let id: ContainerId = required(CNI_CONTAINERID)?.parse().map_err(fail)?;
            let ifname: InterfaceName = required(CNI_IFNAME)?.parse().map_err(fail)?;
            (id.to_string(), ifname.to_string())
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Cmd::Add | Cmd::Check => Some(PathBuf::from(required(CNI_NETNS)?)),
            _ => var(CNI_NETNS).map(PathBuf::from),
        };
        if let Some(path) = &netns
            && !path.is_absolute()
        {
            return Err(fail(CniError::InvalidNetNS(format!(
                "CNI_NETNS={} is not an absolute path",
                path.display()
            ))));
        }
        let args = CniArgs::parse(&var(CNI_ARGS).unwrap_or_default()).map_err(fail)?;
        let plugin = PluginConf::from_netconf(&conf).map_err(fail)?;
        Ok(Parsed::Run(Box::new(Invocation {
            command,
            version,
            conf,
            plugin,
            container_id,
            netns,
            ifname,
            args,
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","subnet":"web"}"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn run(pairs: &[(&str, &str)], stdin: &str) -> Result<Invocation, Failure> {
        match Invocation::parse(&env(pairs), stdin.as_bytes())? {
            Parsed::Run(invocation) => Ok(*invocation),
            Parsed::Version(v) => panic!("unexpected VERSION answer {v}"),
        }
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];

    #[test]
    fn add_parses() {
        let invocation = run(ADD, CONF).expect("valid");
        assert_eq!(invocation.command, Cmd::Add);
        assert_eq!(invocation.version, SpecVersion::new(1, 0, 0));
        assert_eq!(invocation.container_id, "abc123");
        assert_eq!(invocation.ifname, "eth0");
        assert_eq!(invocation.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(invocation.plugin.subnet, "web");
        assert_eq!(invocation.args.pod_name.as_deref(), Some("web"));
    }

    #[test]
    fn version_answers_the_asked_version() {
        let Parsed::Version(text) = Invocation::parse(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
        )
        .expect("valid") else {
            panic!("not a version answer");
        };
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(
            value["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert!(version_reply(b"").contains("\"cniVersion\":\"1.1.0\""));
    }

    #[test]
    fn missing_command_and_unknown_command_are_code_4() {
        let error = run(&[], CONF).expect_err("no command");
        assert_eq!(u32::from(&error.error), 4);
        let error = run(&[("CNI_COMMAND", "FROB")], CONF).expect_err("bad command");
        assert_eq!(u32::from(&error.error), 4);
    }

    #[test]
    fn add_needs_netns_container_and_ifname() {
        for missing in ["CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let error = run(&pairs, CONF).expect_err("missing variable");
            assert_eq!(u32::from(&error.error), 4, "{missing}: {error:?}");
            assert!(error.error.details().contains(missing), "{error:?}");
            assert_eq!(error.version, SpecVersion::new(1, 0, 0));
        }
    }

    #[test]
    fn del_works_without_netns() {
        let pairs: Vec<_> = ADD
            .iter()
            .map(|(k, v)| {
                if *k == "CNI_COMMAND" {
                    (*k, "DEL")
                } else {
                    (*k, *v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        let invocation = run(&pairs, CONF).expect("DEL without netns");
        assert_eq!(invocation.netns, None);
    }

    #[test]
    fn status_and_gc_need_1_1_0() {
        let error = run(&[("CNI_COMMAND", "STATUS")], CONF).expect_err("1.0.0 has no STATUS");
        assert_eq!(u32::from(&error.error), 1);
        let conf = CONF.replace("1.0.0", "1.1.0");
        let invocation = run(&[("CNI_COMMAND", "GC")], &conf).expect("GC in 1.1.0");
        assert_eq!(invocation.command, Cmd::Gc);
        assert!(invocation.container_id.is_empty());
    }

    #[test]
    fn bad_stdin_and_versions() {
        let error = run(ADD, "{not json").expect_err("not JSON");
        assert_eq!(u32::from(&error.error), 6);
        let error = run(ADD, &CONF.replace("1.0.0", "0.2.0")).expect_err("too old");
        assert_eq!(u32::from(&error.error), 1);
        assert!(error.error.details().contains("0.2.0"), "{error:?}");
        let error = run(ADD, &CONF.replace("\"vs\"", "\"bad name\"")).expect_err("bad name");
        assert_eq!(u32::from(&error.error), 7);
    }

    #[test]
    fn relative_netns_is_code_8() {
        let pairs: Vec<_> = ADD
            .iter()
            .map(|(k, v)| {
                if *k == "CNI_NETNS" {
                    (*k, "x")
                } else {
                    (*k, *v)
                }
            })
            .collect();
        assert_eq!(
            u32::from(&run(&pairs, CONF).expect_err("relative").error),
            8
        );
    }

    #[test]
    fn error_document_uses_the_config_version() {
        let error = run(ADD, &CONF.replace("\"subnet\"", "\"subent\"")).expect_err("typo");
        let value: serde_json::Value = serde_json::from_str(&error.to_json()).expect("JSON");
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(value["code"], 7);
        assert_eq!(value["msg"], "Invalid network config");
        assert!(
            value["details"].as_str().unwrap().contains("subent"),
            "{value}"
        );
    }

    #[test]
    fn results_in_current_and_legacy_layouts() {
        let result: CNIResult = serde_json::from_value(json!({
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
            "ips": [{"interface": 0, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.0.0.53"]}
        }))
        .expect("result");
        let current: serde_json::Value =
            serde_json::from_str(&Reply::Result(result.clone()).to_json(CURRENT)).expect("JSON");
        assert_eq!(current["cniVersion"], "1.1.0");
        assert_eq!(current["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(current["dns"]["nameservers"][0], "10.0.0.53");
        let legacy: serde_json::Value =
            serde_json::from_str(&Reply::Result(result).to_json(SpecVersion::new(0, 4, 0)))
                .expect("JSON");
        assert_eq!(legacy["cniVersion"], "0.4.0");
        assert_eq!(legacy["ips"][0]["version"], "4");
        assert_eq!(Reply::Nothing.to_json(CURRENT), "");
    }
}
