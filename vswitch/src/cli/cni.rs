//! `vswitch-cni`: the CNI plugin. Each operation is a few control API requests to vswitchd
//! over [`client`](super::client); the protocol side (environment, stdin, results, error
//! codes, names and labels) is the `cni` crate's.
//!
//! - ADD creates the NetworkInterface `cni-<container>` (namespaced, labelled with the
//!   container, network and ifname) in the conf's Subnet, with its address from vswitchd's
//!   IPAM, then one PortForward per `runtimeConfig.portMappings` entry (on the Uplink;
//!   refused with code 101 when there is none). A failure part way removes what this ADD
//!   made. An ADD repeated for the same attachment answers the existing one (or replaces it
//!   when `CNI_NETNS` changed: a restarted sandbox).
//! - DEL finds the attachment by its labels (in every namespace: DEL may come without
//!   `CNI_ARGS`, and without a namespace), deletes its PortForwards, then the interface;
//!   nothing found is success.
//! - CHECK compares the interface with `prevResult`: present, `Up`, same addresses and MAC.
//! - STATUS asks vswitchd for its version and the Subnet; GC deletes this network's
//!   attachments that `cni.dev/valid-attachments` does not list.
//!
//! vswitchd not answering is code 11 (try again later; 50 for STATUS), a refusal is 100
//! with vswitchd's message in `details`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use cni::conf::{self, InterfaceKind, PortPublish};
use cni::error::{self as codes, custom};
use cni::invocation::{Failure, Parsed};
use cni::naming::{self, LABEL_CONTAINER, LABEL_IFNAME, LABEL_NETWORK, LABEL_POD_NAME};
use cni::result::{Attached, HostEnd};
use cni::rscni_types::ipnet::Ipv4Net;
use cni::{CNIResult, Cmd, CniError, Invocation, Reply};
use hyper::Method;
use serde_json::{Value, json};

use super::client::{Body, Client, ClientError, encode_segment};
use crate::control::resource::API_VERSION;

/// Reads the environment and stdin, runs the operation, prints the answer; exit code 0 on
/// success, 1 with an error document on stdout otherwise (as the spec asks).
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(error) = io::stdin().read_to_end(&mut stdin) {
        let failure = Failure {
            version: cni::invocation::CURRENT,
            error: CniError::IOFailure(format!("cannot read stdin: {error}")),
        };
        let _ = writeln!(io::stdout(), "{}", failure.to_json());
        return ExitCode::FAILURE;
    }
    let env = |name: &str| std::env::var(name).ok();
    let (text, ok) = run(&env, &stdin);
    let mut stdout = io::stdout().lock();
    if !text.is_empty() {
        let _ = writeln!(stdout, "{text}");
    }
    let _ = stdout.flush();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one invocation: the document to print, and whether it succeeded.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, bool) {
    let invocation = match Invocation::parse(env, stdin) {
        Ok(Parsed::Version(text)) => return (text, true),
        Ok(Parsed::Run(invocation)) => invocation,
        Err(failure) => return (failure.to_json(), false),
    };
    let version = invocation.version;
    match Plugin::new(*invocation).and_then(|plugin| plugin.dispatch()) {
        Ok(reply) => (reply.to_json(version), true),
        Err(error) => (Failure { version, error }.to_json(), false),
    }
}

/// One invocation and a client for vswitchd.
struct Plugin {
    invocation: Invocation,
    client: Client,
}

/// An attachment this plugin made, as found in vswitchd.
struct Found {
    name: String,
    namespace: String,
    resource: Value,
}

impl Plugin {
    fn new(invocation: Invocation) -> Result<Plugin, CniError> {
        let timeout = Duration::from_secs(invocation.plugin.timeout_seconds);
        let client = Client::new(&invocation.plugin.socket, timeout)
            .map_err(|e| CniError::IOFailure(e.to_string()))?;
        Ok(Plugin { invocation, client })
    }

    fn dispatch(&self) -> Result<Reply, CniError> {
        match self.invocation.command {
            Cmd::Add => self.add().map(Reply::Result),
            Cmd::Del => self.del().map(|()| Reply::Nothing),
            Cmd::Check => self.check().map(|()| Reply::Nothing),
            Cmd::Status => self.status().map(|()| Reply::Nothing),
            Cmd::Gc => self.gc().map(|()| Reply::Nothing),
            // Answered by `Invocation::parse` without a client.
            Cmd::Version => Ok(Reply::Nothing),
        }
    }

    // ---- requests ----

    /// One request; `Ok(None)` for a 404, the JSON body for a 2xx, code 100 otherwise.
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let bytes = body.map(Value::to_string);
        let response = self
            .client
            .request(
                method.clone(),
                path,
                bytes.as_ref().map(|b| Body {
                    content_type: "application/json",
                    bytes: b.as_bytes(),
                }),
            )
            .map_err(|e| self.unreachable(&e))?;
        if response.status == 404 {
            return Ok(None);
        }
        if !response.is_success() {
            let message = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
            return Err(custom(
                codes::DAEMON_REFUSED,
                "vswitchd refused the request",
                format!("{method} {path}: {} {message}", response.status),
            ));
        }
        if response.body.is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&response.body)
            .map(Some)
            .map_err(|e| {
                custom(
                    codes::UNEXPECTED_ANSWER,
                    "unexpected answer from vswitchd",
                    format!("{method} {path}: {e}"),
                )
            })
    }

    fn unreachable(&self, error: &ClientError) -> CniError {
        let details = format!(
            "{error}; is vswitchd running (systemctl status vswitchd), and is `socket` in the \
             network config its --socket?"
        );
        match (self.invocation.command, error) {
            (_, ClientError::Runtime(_)) => CniError::IOFailure(details),
            (Cmd::Status, _) => CniError::PluginNotAvailable(details),
            _ => CniError::TryAgainLater(details),
        }
    }

    fn get(&self, path: &str) -> Result<Option<Value>, CniError> {
        self.call(Method::GET, path, None)
    }

    fn list(&self, kind: &str) -> Result<Vec<Value>, CniError> {
        match self.get(&format!("/v1/{kind}"))? {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(custom(
                codes::UNEXPECTED_ANSWER,
                "unexpected answer from vswitchd",
                format!("GET /v1/{kind} is not a list"),
            )),
        }
    }

    fn delete_interface(&self, name: &str, namespace: &str) -> Result<(), CniError> {
        self.call(
            Method::DELETE,
            &format!(
                "/v1/networkinterfaces/{}?namespace={}",
                encode_segment(name),
                encode_segment(namespace)
            ),
            None,
        )
        .map(drop)
    }

    fn delete_port_forward(&self, name: &str) -> Result<(), CniError> {
        self.call(
            Method::DELETE,
            &format!("/v1/portforwards/{}", encode_segment(name)),
            None,
        )
        .map(drop)
    }

    // ---- what this plugin made ----

    fn owned(&self, item: &Value, container_id: &str, ifname: &str) -> bool {
        naming::is_owned_by(
            &labels_of(item),
            container_id,
            &self.invocation.conf.name,
            ifname,
        )
    }

    /// This invocation's NetworkInterface, looked up by its labels in every namespace.
    fn find_interface(&self) -> Result<Option<Found>, CniError> {
        let inv = &self.invocation;
        Ok(self
            .list("networkinterfaces")?
            .into_iter()
            .find(|item| self.owned(item, &inv.container_id, &inv.ifname))
            .map(found))
    }

    /// Deletes the PortForwards and the interface of (`container_id`, `ifname`).
    fn remove_attachment(
        &self,
        container_id: &str,
        ifname: &str,
        interface: Option<&Found>,
    ) -> Result<(), CniError> {
        for forward in self.list("portforwards")? {
            if self.owned(&forward, container_id, ifname) {
                self.delete_port_forward(&name_of(&forward))?;
            }
        }
        if let Some(interface) = interface {
            self.delete_interface(&interface.name, &interface.namespace)?;
        }
        Ok(())
    }

    // ---- ADD ----

    fn add(&self) -> Result<CNIResult, CniError> {
        let inv = &self.invocation;
        let plugin = &inv.plugin;
        let namespace = naming::namespace(
            inv.args.pod_namespace.as_deref(),
            plugin.namespace.as_deref(),
        )?;
        let name = naming::interface_name(&inv.container_id, &inv.ifname);
        let ports = conf::port_mappings(&inv.conf)?;
        let subnet = self
            .get(&format!("/v1/subnets/{}", encode_segment(&plugin.subnet)))?
            .ok_or_else(|| {
                CniError::InvalidNetworkConfig(format!(
                    "network {:?}: Subnet {:?} does not exist in vswitchd; create it (vswitchctl \
                     apply) or name an existing one in `subnet` (vswitchctl get subnets)",
                    inv.conf.name, plugin.subnet
                ))
            })?;
        let uplink_ip = if ports.is_empty() {
            None
        } else {
            Some(self.uplink_address()?)
        };
        let path = format!(
            "/v1/networkinterfaces/{}?namespace={}",
            encode_segment(&name),
            encode_segment(&namespace)
        );
        let mut existing = self.get(&path)?;
        if let Some(old) = &existing
            && self.owned(old, &inv.container_id, &inv.ifname)
            && old.pointer("/spec/netns").and_then(Value::as_str) != Some(netns_text(inv).as_str())
        {
            // The same container ID in a new namespace (a restarted sandbox): the old
            // interface is stale; replace it.
            let stale = found(old.clone());
            self.remove_attachment(&inv.container_id, &inv.ifname, Some(&stale))?;
            existing = None;
        }
        let (interface, created) = match existing {
            Some(existing) if self.owned(&existing, &inv.container_id, &inv.ifname) => {
                (existing, false)
            }
            Some(existing) => {
                return Err(custom(
                    codes::NAME_TAKEN,
                    "interface name in use",
                    format!(
                        "NetworkInterface {namespace}/{name} exists and is not this plugin's \
                         attachment of container {} ({} on network {:?}); its labels: {:?}",
                        inv.container_id,
                        inv.ifname,
                        inv.conf.name,
                        labels_of(&existing)
                    ),
                ));
            }
            None => {
                let body = self.interface_body(&name, &namespace)?;
                let created = self
                    .call(Method::POST, "/v1/networkinterfaces", Some(&body))?
                    .unwrap_or(Value::Null);
                (created, true)
            }
        };
        let target = if namespace == "default" {
            name.clone()
        } else {
            format!("{namespace}/{name}")
        };
        if let Err(error) = self.publish(&ports, uplink_ip, &name, &target) {
            // Leave nothing half made: the runtime will not DEL a failed ADD's leftovers
            // reliably (podman does, containerd does not always).
            let leftover = Found {
                name: name.clone(),
                namespace: namespace.clone(),
                resource: Value::Null,
            };
            let _ = self.remove_attachment(
                &inv.container_id,
                &inv.ifname,
                created.then_some(&leftover),
            );
            return Err(error);
        }
        self.result(&interface, &subnet)
    }

    fn interface_body(&self, name: &str, namespace: &str) -> Result<Value, CniError> {
        let inv = &self.invocation;
        let plugin = &inv.plugin;
        let mut labels: BTreeMap<String, String> = plugin.labels.clone();
        labels.extend(conf::extra_labels(&inv.conf)?);
        if let Some(pod) = &inv.args.pod_name {
            labels.insert(LABEL_POD_NAME.to_string(), naming::label_value(pod));
        }
        labels.extend(naming::ownership_labels(
            &inv.container_id,
            &inv.conf.name,
            &inv.ifname,
        ));
        let mut spec = json!({
            "subnet": plugin.subnet,
            "netns": netns_text(inv),
            "ifname": inv.ifname,
            "kind": plugin.kind,
        });
        if let Some(mtu) = plugin.mtu {
            spec["mtu"] = json!(mtu);
        }
        if let Some(mac) = &inv.args.mac {
            spec["mac"] = json!(mac);
        }
        if !inv.args.ips.is_empty() {
            spec["ips"] = json!(inv.args.ips);
        }
        if !plugin.default_route {
            spec["defaultRoute"] = json!(false);
        }
        if !plugin.routes.is_empty() {
            spec["routes"] = json!(plugin.routes);
        }
        Ok(json!({
            "apiVersion": API_VERSION,
            "kind": "NetworkInterface",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec,
        }))
    }

    /// The Uplink's first address: where port mappings without `hostIP` are published.
    fn uplink_address(&self) -> Result<Ipv4Addr, CniError> {
        let uplinks = self.list("uplinks")?;
        let address = uplinks
            .first()
            .and_then(|u| u.pointer("/spec/addresses/0")?.as_str())
            .and_then(|a| a.split('/').next()?.parse().ok());
        address.ok_or_else(|| {
            custom(
                codes::NO_UPLINK,
                "port mappings need an Uplink",
                format!(
                    "the runtime asked to publish ports (runtimeConfig.portMappings) on network \
                     {:?}, but vswitchd has no Uplink to publish them on; apply an Uplink \
                     (docs/api.md#uplink), or run the container without published ports",
                    self.invocation.conf.name
                ),
            )
        })
    }

    /// One PortForward per port mapping.
    fn publish(
        &self,
        ports: &[PortPublish],
        uplink_ip: Option<Ipv4Addr>,
        interface: &str,
        target: &str,
    ) -> Result<(), CniError> {
        let inv = &self.invocation;
        for port in ports {
            let name = naming::port_forward_name(interface, port.protocol, port.host_port);
            let existing = self.get(&format!("/v1/portforwards/{}", encode_segment(&name)))?;
            if existing.is_some_and(|e| self.owned(&e, &inv.container_id, &inv.ifname)) {
                continue;
            }
            let ip = port.host_ip.or(uplink_ip).map(|ip| ip.to_string());
            let body = json!({
                "apiVersion": API_VERSION,
                "kind": "PortForward",
                "metadata": {
                    "name": name,
                    "labels": naming::ownership_labels(&inv.container_id, &inv.conf.name, &inv.ifname),
                },
                "spec": {
                    "ip": ip,
                    "protocol": port.protocol,
                    "port": port.host_port,
                    "target": {"interface": target, "port": port.container_port},
                },
            });
            self.call(Method::POST, "/v1/portforwards", Some(&body))?;
        }
        Ok(())
    }

    /// The ADD result from vswitchd's interface and Subnet (see `cni::result`).
    fn result(&self, interface: &Value, subnet: &Value) -> Result<CNIResult, CniError> {
        let inv = &self.invocation;
        let unexpected = |what: &str| {
            custom(
                codes::UNEXPECTED_ANSWER,
                "unexpected answer from vswitchd",
                format!("{what} missing in {interface} / {subnet}"),
            )
        };
        let gateway: Ipv4Addr = subnet
            .pointer("/spec/gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| unexpected("the Subnet's spec.gateway"))?;
        let host = interface
            .pointer("/status/hostIfname")
            .and_then(Value::as_str)
            .filter(|_| inv.plugin.kind == InterfaceKind::Veth)
            .map(|name| HostEnd {
                name: name.to_string(),
                // The host end lives in vswitchd's namespace, which is the plugin's when
                // both run on the host; the MAC is left out otherwise.
                mac: std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
                    .map(|m| m.trim().to_string())
                    .unwrap_or_default(),
            });
        let ips = interface
            .pointer("/status/ips")
            .and_then(Value::as_array)
            .ok_or_else(|| unexpected("the interface's status.ips"))?
            .iter()
            .map(|ip| ip.as_str().and_then(|a| a.parse::<Ipv4Net>().ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| unexpected("an address in status.ips"))?;
        let attached = Attached {
            host,
            mac: interface
                .pointer("/status/mac")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            mtu: interface
                .pointer("/spec/mtu")
                .or_else(|| subnet.pointer("/spec/mtu"))
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok()),
            ips,
            gateway,
            dns: subnet_dns(subnet),
        };
        Ok(inv.add_result(&attached))
    }

    // ---- DEL, CHECK, STATUS, GC ----

    fn del(&self) -> Result<(), CniError> {
        let inv = &self.invocation;
        let interface = self.find_interface()?;
        self.remove_attachment(&inv.container_id, &inv.ifname, interface.as_ref())
    }

    fn check(&self) -> Result<(), CniError> {
        let inv = &self.invocation;
        let mismatch =
            |details: String| custom(codes::INTERFACE_MISMATCH, "interface differs", details);
        let Some(found) = self.find_interface()? else {
            return Err(custom(
                codes::INTERFACE_MISSING,
                "interface missing",
                format!(
                    "vswitchd has no NetworkInterface for container {} ({} on network {:?}); \
                     it was deleted: re-create the container's network (DEL, then ADD)",
                    inv.container_id, inv.ifname, inv.conf.name
                ),
            ));
        };
        let status = found.resource.get("status").cloned().unwrap_or(Value::Null);
        let state = status.get("state").and_then(Value::as_str).unwrap_or("");
        if state != "Up" {
            return Err(mismatch(format!(
                "NetworkInterface {}/{} is {state}: {}",
                found.namespace,
                found.name,
                status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
            )));
        }
        if let Some(netns) = &inv.netns {
            let spec_netns = found
                .resource
                .pointer("/spec/netns")
                .and_then(Value::as_str)
                .unwrap_or("");
            if spec_netns != netns.display().to_string() {
                return Err(mismatch(format!(
                    "NetworkInterface {}/{} is in netns {spec_netns}, not {}",
                    found.namespace,
                    found.name,
                    netns.display()
                )));
            }
        }
        let Some(prev) = &inv.conf.prev_result else {
            return Ok(());
        };
        let ours: Vec<usize> = prev
            .interfaces
            .iter()
            .enumerate()
            .filter(|(_, i)| i.name == inv.ifname && i.sandbox.is_some())
            .map(|(n, _)| n)
            .collect();
        let mac = status.get("mac").and_then(Value::as_str).unwrap_or("");
        for &n in &ours {
            let want = &prev.interfaces[n].mac;
            if !want.is_empty() && !want.eq_ignore_ascii_case(mac) {
                return Err(mismatch(format!(
                    "{} has MAC {mac}, the previous result says {want}",
                    inv.ifname
                )));
            }
        }
        let have: Vec<&str> = status
            .get("ips")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for ip in &prev.ips {
            let is_ours = ip
                .interface
                .and_then(|i| usize::try_from(i).ok())
                .is_some_and(|i| ours.contains(&i));
            if is_ours && !have.contains(&ip.address.to_string().as_str()) {
                return Err(mismatch(format!(
                    "{} does not have {} (vswitchd lists {:?})",
                    inv.ifname, ip.address, have
                )));
            }
        }
        Ok(())
    }

    fn status(&self) -> Result<(), CniError> {
        self.get("/v1/version")?;
        let subnet = &self.invocation.plugin.subnet;
        if self
            .get(&format!("/v1/subnets/{}", encode_segment(subnet)))?
            .is_none()
        {
            return Err(CniError::PluginNotAvailable(format!(
                "vswitchd answers, but Subnet {subnet:?} does not exist: ADD would fail"
            )));
        }
        Ok(())
    }

    fn gc(&self) -> Result<(), CniError> {
        let inv = &self.invocation;
        let Some(valid) = &inv.conf.valid_attachments else {
            return Err(CniError::InvalidNetworkConfig(
                "GC without cni.dev/valid-attachments: refusing to guess which attachments are \
                 still in use"
                    .to_string(),
            ));
        };
        let network = naming::label_value(&inv.conf.name);
        let keep = |item: &Value| {
            let labels = labels_of(item);
            labels.get(LABEL_NETWORK) != Some(&network)
                || valid.iter().any(|a| {
                    labels.get(LABEL_CONTAINER) == Some(&naming::label_value(&a.container_id))
                        && labels.get(LABEL_IFNAME) == Some(&naming::label_value(&a.ifname))
                })
        };
        let mut failures = Vec::new();
        for forward in self.list("portforwards")? {
            if !keep(&forward)
                && let Err(e) = self.delete_port_forward(&name_of(&forward))
            {
                failures.push(e.to_string());
            }
        }
        for interface in self.list("networkinterfaces")? {
            if !keep(&interface) {
                let found = found(interface);
                if let Err(e) = self.delete_interface(&found.name, &found.namespace) {
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(custom(
                codes::DAEMON_REFUSED,
                "some stale attachments could not be removed",
                failures.join("; "),
            ))
        }
    }
}

/// `CNI_NETNS` as the NetworkInterface's `spec.netns` writes it.
/// The Subnet's `spec.dns` as the CNI result carries it (`None` when it has none).
fn subnet_dns(subnet: &Value) -> Option<cni::Dns> {
    let dns = subnet.pointer("/spec/dns")?;
    let list = |key: &str| -> Vec<String> {
        dns.get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let nonempty = |items: Vec<String>| (!items.is_empty()).then_some(items);
    let search = list("search");
    Some(cni::Dns {
        nameservers: list("nameservers"),
        domain: search.first().cloned(),
        search: nonempty(search),
        options: nonempty(list("options")),
    })
}

fn netns_text(invocation: &Invocation) -> String {
    invocation
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn labels_of(item: &Value) -> BTreeMap<String, String> {
    item.pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

fn name_of(item: &Value) -> String {
    item.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn found(resource: Value) -> Found {
    Found {
        name: name_of(&resource),
        namespace: resource
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn daemon_down_is_try_again_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let conf = json!({"cniVersion": "1.0.0", "name": "vs", "type": "vswitch-cni",
                          "socket": socket})
        .to_string();
        let env = env(vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", "/run/netns/c1".into()),
            ("CNI_IFNAME", "eth0".into()),
        ]);
        let (text, ok) = run(&env, conf.as_bytes());
        assert!(!ok);
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["code"], 11, "{value}");
        assert_eq!(value["cniVersion"], "1.0.0");
        assert!(
            value["details"].as_str().unwrap().contains("none.sock"),
            "{value}"
        );
    }

    #[test]
    fn status_with_daemon_down_is_not_available() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = json!({"cniVersion": "1.1.0", "name": "vs", "type": "vswitch-cni",
                          "socket": dir.path().join("none.sock")})
        .to_string();
        let (text, ok) = run(
            &env(vec![("CNI_COMMAND", "STATUS".into())]),
            conf.as_bytes(),
        );
        assert!(!ok);
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["code"], 50, "{value}");
    }
}
