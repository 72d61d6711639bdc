//! `vswitchctl`: the command-line client of the control API.
//!
//! [`args`] holds the command table (clap derive), [`client`] the HTTP/1.1 client over the
//! Unix socket, [`attach`] the NetworkInterface builder, [`output`] the tables and dumps, and
//! [`error`] the messages and exit codes (0 ok, 1 refused, 2 usage, 3 unreachable); [`cni`] is
//! the `vswitch-cni` plugin, another client of the same API. This
//! module runs one command: it never prints except through the writers it is given, so the
//! whole flow is testable.

pub mod args;
pub mod attach;
pub mod client;
pub mod cni;
pub mod error;
pub mod output;

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyper::Method;
use serde_json::Value;

use crate::api::OverlayView;
use crate::control::kinds::Kind;
use crate::control::resource::LoadBalancerView;
use crate::control::{ConntrackRow, NatReport, RoutingTableRow};
use crate::runtime::{FdbRow, NeighborRow, StatsReport};
use args::{
    ApplyArgs, AttachArgs, CaptureArgs, Cli, Command, ConntrackArgs, DeleteArgs, DescribeArgs,
    DetachArgs, ExplainArgs, FdbArgs, GetArgs, LabelArgs, LabelChange, LbArgs, OutputArgs,
    OutputFormat, PolicyCommand, RoutesArgs, TraceArgs,
};
use client::{Body, Client, HttpResponse, StreamEnd, encode_segment};
use error::{ApiFailure, CliError};

/// The collection path of NetworkInterfaces.
const INTERFACES: &str = "networkinterfaces";

/// Parses the command line, runs the command, prints errors, and returns the exit code.
pub fn main() -> ExitCode {
    // Exits with clap's codes: 2 on a usage error, 0 for --help and --version.
    let cli = Cli::parse();
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    let mut stdin = io::stdin().lock();
    match run(&cli, &mut stdout, &mut stderr, &mut stdin) {
        Ok(()) => ExitCode::SUCCESS,
        // `vswitchctl get ... | head`: the reader left; that is not a failure.
        Err(CliError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = stderr.write_all(error.render().as_bytes());
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs one parsed command: results go to `out`, notes (such as "no resources") to `err`,
/// and `apply -f -` reads `stdin`.
///
/// # Errors
/// [`CliError`]; its [`exit_code`](CliError::exit_code) is the process's.
pub fn run(
    cli: &Cli,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stdin: &mut dyn Read,
) -> Result<(), CliError> {
    let api = Api {
        client: Client::new(&cli.socket, Duration::from_secs(cli.timeout))?,
    };
    match &cli.command {
        Command::Apply(args) => apply(&api, args, out, stdin),
        Command::Get(args) => get(&api, args, out, err),
        Command::Describe(args) => describe(&api, args, out),
        Command::Delete(args) => delete(&api, args, out),
        Command::Attach(args) => attach(&api, args, out),
        Command::Detach(args) => detach(&api, args, out),
        Command::Fdb(args) => fdb(&api, args, out, err),
        Command::Stats(args) => stats(&api, args, out),
        Command::Routes(args) => routes(&api, args, out, err),
        Command::Neighbors(args) => neighbors(&api, args, out, err),
        Command::Conntrack(args) => conntrack(&api, args, out, err),
        Command::Nat(args) => nat(&api, args, out),
        Command::Overlay(args) => overlay(&api, args, out, err),
        Command::Lb(args) => load_balancer(&api, args, out),
        Command::Uplink(args) => uplink(&api, args, out),
        Command::Label(args) => label(&api, args, out),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&api, args, out),
        Command::Trace(args) => trace(&api, cli, args, out),
        Command::Capture(args) => capture(&api, args, out),
        Command::Version => version(&api, out),
    }
}

/// The client plus the API's conventions: 2xx is success, anything else is a refusal with
/// the `{"error": ...}` body.
struct Api {
    client: Client,
}

impl Api {
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> Result<HttpResponse, CliError> {
        let response = self.client.request(method, path, body)?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(CliError::Api {
                failure: ApiFailure::from_response(response.status, &response.body),
                hint: None,
            })
        }
    }

    fn json(&self, method: Method, path: &str, body: Option<Body<'_>>) -> Result<Value, CliError> {
        let response = self.call(method, path, body)?;
        serde_json::from_slice(&response.body)
            .map_err(|error| CliError::BadResponse(format!("{path} did not answer JSON: {error}")))
    }

    fn get(&self, path: &str) -> Result<Value, CliError> {
        self.json(Method::GET, path, None)
    }
}

fn write(out: &mut dyn Write, text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// A kind as typed by the user, for messages: lower case and singular.
fn display_kind(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix("ies") {
        format!("{stem}y")
    } else if lower.ends_with('s') && !lower.ends_with("ss") {
        lower[..lower.len() - 1].to_owned()
    } else {
        lower
    }
}

/// The path segment that lists a kind: the kind as typed, encoded, except `overlay`, whose
/// singular path is the overlay view (`GET /v1/overlay`), not the list of Overlays.
fn list_segment(kind: &str) -> String {
    if kind.eq_ignore_ascii_case("overlay") {
        "overlays".to_owned()
    } else {
        encode_segment(kind)
    }
}

fn not_found_hint(error: CliError, kind: &str) -> CliError {
    match error.status() {
        Some(404) => error.with_hint(format!(
            "try: vswitchctl get {kind}   (lists the existing ones)"
        )),
        _ => error,
    }
}

/// A next step for a refused `attach`, chosen by the field the API named.
fn attach_hint(error: CliError, name: &str) -> CliError {
    let field = match &error {
        CliError::Api { failure, .. } => failure.field.clone().unwrap_or_default(),
        _ => return error,
    };
    if field.ends_with("metadata.name") {
        error.with_hint(format!(
            "try: --name NAME to choose another name, or vswitchctl detach {name} first"
        ))
    } else if field.ends_with("spec.ifname") {
        error.with_hint("try: --ifname NAME to add another interface to the namespace")
    } else if field.contains("spec.ips") {
        error.with_hint("try: --ip auto to let IPAM choose a free address")
    } else if field.ends_with("spec.subnet") {
        error.with_hint("try: vswitchctl get subnets   (lists the existing ones)")
    } else if error.status() == Some(409) {
        error.with_hint("try: vswitchctl get networkinterfaces   (what is attached)")
    } else {
        error
    }
}

fn apply(
    api: &Api,
    args: &ApplyArgs,
    out: &mut dyn Write,
    stdin: &mut dyn Read,
) -> Result<(), CliError> {
    let input_error = |source| CliError::Input {
        path: args.file.clone(),
        source,
    };
    let text = if args.file == Path::new("-") {
        let mut text = String::new();
        stdin.read_to_string(&mut text).map_err(input_error)?;
        text
    } else {
        std::fs::read_to_string(&args.file).map_err(input_error)?
    };
    let trimmed = text.trim_start();
    let content_type = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "application/json"
    } else {
        "application/yaml"
    };
    let applied = api
        .json(
            Method::POST,
            "/v1/apply",
            Some(Body {
                content_type,
                bytes: text.as_bytes(),
            }),
        )
        .map_err(|error| match error.status() {
            Some(400 | 409) => {
                error.with_hint("nothing was changed; fix the document and apply again")
            }
            _ => error,
        })?;
    let Some(items) = applied.as_array() else {
        return Err(CliError::BadResponse(format!(
            "/v1/apply answered {applied} instead of a list"
        )));
    };
    let mut text = String::new();
    for item in items {
        let kind = item.get("kind").and_then(Value::as_str).unwrap_or("?");
        let name = item.get("name").and_then(Value::as_str).unwrap_or("?");
        let action = item.get("action").and_then(Value::as_str).unwrap_or("?");
        text.push_str(&format!("{}/{name} {action}\n", kind.to_ascii_lowercase()));
    }
    write(out, &text)
}

fn print_value(out: &mut dyn Write, value: &Value, format: OutputFormat) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => write(out, &output::to_json(value)),
        OutputFormat::Yaml => {
            let text = output::to_yaml(value)
                .map_err(|error| CliError::BadResponse(format!("cannot print as YAML: {error}")))?;
            write(out, &text)
        }
        OutputFormat::Table | OutputFormat::Wide => Ok(()),
    }
}

fn get(
    api: &Api,
    args: &GetArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let kind = encode_segment(&args.kind);
    let (value, items) = match &args.name {
        Some(name) => {
            let path = format!(
                "/v1/{kind}/{}{}",
                encode_segment(name),
                args.namespace.query()
            );
            let value = api
                .get(&path)
                .map_err(|error| not_found_hint(error, &args.kind))?;
            let items = vec![value.clone()];
            (value, items)
        }
        None => {
            let kind = list_segment(&args.kind);
            let query = if args.all_namespaces {
                String::new()
            } else {
                args.namespace.query()
            };
            let value = api.get(&format!("/v1/{kind}{query}"))?;
            let Some(items) = value.as_array().cloned() else {
                return Err(CliError::BadResponse(format!(
                    "/v1/{kind} answered {value} instead of a list"
                )));
            };
            (value, items)
        }
    };
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    if items.is_empty() {
        return err
            .write_all(format!("no {} found\n", display_kind(&args.kind)).as_bytes())
            .map_err(CliError::Output);
    }
    let kind = items
        .first()
        .and_then(|item| item.get("kind"))
        .and_then(Value::as_str)
        .map_or_else(|| Kind::parse(&args.kind), Kind::parse)
        .map_err(|error| CliError::BadResponse(error.to_string()))?;
    let wide = args.output == OutputFormat::Wide;
    let mut table = output::resource_table(kind, &items, wide).map_err(CliError::BadResponse)?;
    if args.all_namespaces && kind.is_namespaced() {
        let namespaces = items
            .iter()
            .map(|item| {
                item.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_owned()
            })
            .collect();
        table.insert_column(0, "NAMESPACE", namespaces);
    }
    write(out, &table.render())
}

fn describe(api: &Api, args: &DescribeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/{}/{}{}",
        encode_segment(&args.kind),
        encode_segment(&args.name),
        args.namespace.query()
    );
    let resource = api
        .get(&path)
        .map_err(|error| not_found_hint(error, &args.kind))?;
    let mut text = output::describe(&resource).map_err(CliError::BadResponse)?;
    let kind = resource
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if kind == "network" {
        // The Network's computed table, when the daemon serves it; describe works without.
        let path = format!("/v1/routing-table?network={}", encode_segment(&args.name));
        if let Ok(rows) = api.get(&path) {
            let rows: Vec<RoutingTableRow> = output::parse_answer(&format!("GET {path}"), rows)?;
            let mut table = output::routing_table(&rows);
            table.drop_column("NETWORK");
            text.push_str(&output::table_section("Routes", &table));
        }
    }
    if kind == "networkinterface" {
        // The port's counters, when the daemon has them; describe works without them.
        if let Ok(stats) = api.get("/v1/stats") {
            let stats: StatsReport = output::parse_answer("GET /v1/stats", stats)?;
            let key = crate::control::resource::object_key(
                args.namespace.namespace.as_deref().unwrap_or("default"),
                &args.name,
            );
            if let Some(port) = stats.ports.iter().find(|port| port.name == key) {
                text.push_str(&output::port_counters(port));
            }
        }
    }
    write(out, &text)
}

fn delete(api: &Api, args: &DeleteArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/{}/{}{}",
        encode_segment(&args.kind),
        encode_segment(&args.name),
        args.namespace.query()
    );
    api.call(Method::DELETE, &path, None)
        .map_err(|error| not_found_hint(error, &args.kind))?;
    write(
        out,
        &format!("{}/{} deleted\n", display_kind(&args.kind), args.name),
    )
}

fn attach(api: &Api, args: &AttachArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let resource = attach::build_interface(args).map_err(CliError::Usage)?;
    let body = resource.to_string();
    let created = api
        .json(
            Method::POST,
            &format!("/v1/{INTERFACES}"),
            Some(Body {
                content_type: "application/json",
                bytes: body.as_bytes(),
            }),
        )
        .map_err(|error| {
            let name = resource
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("NAME");
            attach_hint(error, name)
        })?;
    let field = |pointers: &[&str]| {
        pointers
            .iter()
            .find_map(|pointer| {
                created
                    .pointer(pointer)
                    .filter(|v| output::cell(Some(v)) != "-")
            })
            .map_or_else(|| "-".to_owned(), |value| output::cell(Some(value)))
    };
    let name = field(&["/metadata/name"]);
    let mac = field(&["/status/mac", "/spec/mac"]);
    let ips = field(&["/status/ips", "/spec/ips"]);
    let ipv6 = match field(&["/status/ipv6"]).as_str() {
        "-" => String::new(),
        ipv6 => format!(", ipv6 {ipv6}"),
    };
    write(
        out,
        &format!("networkinterface/{name} attached: mac {mac}, ips {ips}{ipv6}\n"),
    )
}

fn detach(api: &Api, args: &DetachArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/{INTERFACES}/{}{}",
        encode_segment(&args.name),
        args.namespace.query()
    );
    api.call(Method::DELETE, &path, None)
        .map_err(|error| not_found_hint(error, INTERFACES))?;
    write(out, &format!("networkinterface/{} detached\n", args.name))
}

fn fdb(
    api: &Api,
    args: &FdbArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let path = if args.count {
        "/v1/fdb?count=true"
    } else {
        "/v1/fdb"
    };
    let value = api.get(path)?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    if args.count {
        // Typed, so that an answer of another shape (a vswitchd without counts lists the
        // MACs) is an error, not a `-`.
        let count: crate::runtime::FdbCount = output::parse_answer(&format!("GET {path}"), value)?;
        return write(out, &format!("{}\n", count.count));
    }
    let rows: Vec<FdbRow> = output::parse_answer("GET /v1/fdb", value)?;
    let table = output::fdb_table(&rows);
    if table.is_empty() {
        return err
            .write_all(b"no learned MAC addresses\n")
            .map_err(CliError::Output);
    }
    write(out, &table.render())
}

fn routes(
    api: &Api,
    args: &RoutesArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let mut path = match &args.network {
        Some(network) => format!("/v1/routing-table?network={}", encode_segment(network)),
        None => "/v1/routing-table".to_owned(),
    };
    if args.count {
        path.push_str(if args.network.is_some() {
            "&count=true"
        } else {
            "?count=true"
        });
    }
    let value = api.get(&path).map_err(network_hint)?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    if args.count {
        let count: crate::control::RoutingTableCount =
            output::parse_answer(&format!("GET {path}"), value)?;
        return write(out, &format!("{}\n", count.count));
    }
    let rows: Vec<RoutingTableRow> = output::parse_answer(&format!("GET {path}"), value)?;
    let table = output::routing_table(&rows);
    if table.is_empty() {
        return err.write_all(b"no routes\n").map_err(CliError::Output);
    }
    write(out, &table.render())
}

fn neighbors(
    api: &Api,
    args: &OutputArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let value = api.get("/v1/neighbors")?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let rows: Vec<NeighborRow> = output::parse_answer("GET /v1/neighbors", value)?;
    let table = output::neighbors_table(&rows);
    if table.is_empty() {
        return err.write_all(b"no neighbors\n").map_err(CliError::Output);
    }
    write(out, &table.render())
}

/// A hint for an unknown `--network`.
fn network_hint(error: CliError) -> CliError {
    match error.status() {
        Some(404) => error.with_hint("try: vswitchctl get networks   (lists the existing ones)"),
        _ => error,
    }
}

fn conntrack(
    api: &Api,
    args: &ConntrackArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(network) = &args.network {
        query.push(format!("network={}", encode_segment(network)));
    }
    if args.count {
        query.push("count=true".to_owned());
    }
    let path = if query.is_empty() {
        "/v1/conntrack".to_owned()
    } else {
        format!("/v1/conntrack?{}", query.join("&"))
    };
    if args.flush {
        let value = api
            .json(Method::DELETE, &path, None)
            .map_err(network_hint)?;
        if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
            return print_value(out, &value, args.output);
        }
        let flushed = value.get("flushed").and_then(Value::as_u64).unwrap_or(0);
        let noun = if flushed == 1 {
            "connection"
        } else {
            "connections"
        };
        return write(out, &format!("flushed {flushed} {noun}\n"));
    }
    let value = api.get(&path).map_err(network_hint)?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    if args.count {
        return write(out, &format!("{}\n", output::cell(value.get("count"))));
    }
    let entries: Vec<ConntrackRow> = output::parse_answer(&format!("GET {path}"), value)?;
    let table = output::conntrack_table(&entries, args.output == OutputFormat::Wide);
    if table.is_empty() {
        return err
            .write_all(b"no tracked connections\n")
            .map_err(CliError::Output);
    }
    write(out, &table.render())
}

fn nat(api: &Api, args: &OutputArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let value = api.get("/v1/nat")?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let report: NatReport = output::parse_answer("GET /v1/nat", value)?;
    write(
        out,
        &output::nat_report(&report, args.output == OutputFormat::Wide),
    )
}

fn load_balancer(api: &Api, args: &LbArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/loadbalancers/{}/backends{}",
        encode_segment(&args.name),
        args.namespace.query()
    );
    let value = api.get(&path)?;
    if matches!(args.output.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output.output);
    }
    let view: LoadBalancerView = output::parse_answer(&format!("GET {path}"), value)?;
    write(out, &output::load_balancer_view(&view))
}

/// `label`: reads the resource, changes its labels, applies it back (through the same
/// validation as any apply; a label the switch owns is refused there).
fn label(api: &Api, args: &LabelArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/{}/{}{}",
        encode_segment(&args.kind),
        encode_segment(&args.name),
        args.namespace.query()
    );
    let mut resource = api
        .get(&path)
        .map_err(|error| not_found_hint(error, &args.kind))?;
    let Some(object) = resource.as_object_mut() else {
        return Err(CliError::BadResponse(format!(
            "{path} did not answer a resource"
        )));
    };
    object.remove("status");
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(CliError::BadResponse(format!(
            "{path} answered no metadata"
        )));
    };
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(labels) = labels.as_object_mut() else {
        return Err(CliError::BadResponse(format!(
            "{path} answered labels that are not a map"
        )));
    };
    for change in &args.changes {
        match change {
            LabelChange::Set(label) => {
                labels.insert(label.key.clone(), Value::String(label.value.clone()));
            }
            LabelChange::Remove(key) => {
                labels.remove(key);
            }
        }
    }
    let body = resource.to_string();
    let applied = api.json(
        Method::POST,
        "/v1/apply",
        Some(Body {
            content_type: "application/json",
            bytes: body.as_bytes(),
        }),
    )?;
    let action = applied
        .pointer("/0/action")
        .and_then(Value::as_str)
        .unwrap_or("labeled");
    let action = if action == "configured" {
        "labeled"
    } else {
        action
    };
    write(
        out,
        &format!("{}/{} {action}\n", display_kind(&args.kind), args.name),
    )
}

/// `policy explain`.
fn explain(api: &Api, args: &ExplainArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!(
        "/v1/policy/explain?from={}&to={}&port={}",
        encode_segment(&args.from),
        encode_segment(&args.to),
        encode_segment(&args.port)
    );
    let value = api.get(&path)?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let lines: Vec<&str> = value
        .get("lines")
        .and_then(Value::as_array)
        .map(|lines| lines.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut text = lines.join("\n");
    text.push('\n');
    write(out, &text)
}

/// `trace`: a synthetic frame (`POST /v1/trace`) or live frames (`POST /v1/trace/live`).
fn trace(api: &Api, cli: &Cli, args: &TraceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let value = if args.live {
        let body = serde_json::json!({
            "match": args.filter,
            "count": args.count,
            "in": args.ingress,
            "timeoutSeconds": args.wait,
        });
        // The daemon answers after the wait: the client must wait longer.
        let live = Api {
            client: Client::new(
                &cli.socket,
                Duration::from_secs(cli.timeout.max(args.wait.saturating_add(10))),
            )?,
        };
        live.json(
            Method::POST,
            "/v1/trace/live",
            Some(Body {
                content_type: "application/json",
                bytes: body.to_string().as_bytes(),
            }),
        )?
    } else {
        let Some(ingress) = &args.ingress else {
            return Err(CliError::Usage(
                "trace needs --in PORT: the NetworkInterface or Uplink the frame is received on"
                    .into(),
            ));
        };
        if args.packet.is_none() && args.hex.is_none() {
            return Err(CliError::Usage(
                "trace needs a PACKET (e.g. 'icmp 172.30.0.2 > 172.30.0.3') or --hex FRAME".into(),
            ));
        }
        let body = serde_json::json!({
            "in": ingress,
            "packet": args.packet,
            "hex": args.hex,
            "srcMac": args.src_mac,
            "dstMac": args.dst_mac,
        });
        api.json(
            Method::POST,
            "/v1/trace",
            Some(Body {
                content_type: "application/json",
                bytes: body.to_string().as_bytes(),
            }),
        )?
    };
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let bad = |error: serde_json::Error| {
        CliError::BadResponse(format!("the trace answer is not a trace record: {error}"))
    };
    let mut text = String::new();
    if args.live {
        let records: Vec<crate::trace::TraceRecord> = value
            .get("records")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(bad)?
            .unwrap_or_default();
        for (index, record) in records.iter().enumerate() {
            if index > 0 {
                text.push_str("\n\n");
            }
            text.push_str(&record.to_string());
        }
        let lost = value.get("lost").and_then(Value::as_u64).unwrap_or(0);
        if records.len() < args.count {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&format!(
                "{} of {} frames matched within {} s{}",
                records.len(),
                args.count,
                args.wait,
                if lost > 0 {
                    format!(" ({lost} traced but not kept)")
                } else {
                    String::new()
                }
            ));
        }
    } else {
        let record: crate::trace::TraceRecord = serde_json::from_value(value).map_err(bad)?;
        text.push_str(&record.to_string());
    }
    text.push('\n');
    write(out, &text)
}

/// A hint for a node without an Overlay.
fn overlay_hint(error: CliError) -> CliError {
    match error.status() {
        Some(404) => error.with_hint(
            "try: vswitchctl apply -f FILE with an Overlay (role hub, runner or mesh) to join \
             an overlay",
        ),
        _ => error,
    }
}

fn overlay(
    api: &Api,
    args: &OutputArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let value = api.get("/v1/overlay").map_err(overlay_hint)?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let view: OverlayView = output::parse_answer("GET /v1/overlay", value)?;
    match output::overlay_report(&view) {
        output::OverlayReport::Text(text) => write(out, &text),
        output::OverlayReport::NoRunners { text, note } => {
            write(out, &text)?;
            err.write_all(format!("{note}\n").as_bytes())
                .map_err(CliError::Output)
        }
    }
}

/// `uplink`: the Uplink, its bond's members with their counters, its VLANs.
fn uplink(api: &Api, args: &OutputArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let value = api.get("/v1/uplinks")?;
    let Some(uplink) = value.as_array().and_then(|items| items.first()).cloned() else {
        return Err(CliError::Usage(
            "this node has no Uplink; try: vswitchctl apply -f FILE with kind: Uplink".into(),
        ));
    };
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &uplink, args.output);
    }
    let stats: StatsReport = output::parse_answer("GET /v1/stats", api.get("/v1/stats")?)?;
    write(out, &output::uplink_report(&uplink, &stats))
}

fn stats(api: &Api, args: &OutputArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let value = api.get("/v1/stats")?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_value(out, &value, args.output);
    }
    let stats: StatsReport = output::parse_answer("GET /v1/stats", value)?;
    write(
        out,
        &output::stats_report(&stats, args.output == OutputFormat::Wide),
    )
}

/// The request path of a capture.
fn capture_path(args: &CaptureArgs) -> String {
    let mut path = format!(
        "/v1/capture?port={}&direction={}",
        encode_segment(&args.port),
        args.direction.as_str()
    );
    if let Some(count) = args.count {
        path.push_str(&format!("&count={count}"));
    }
    if let Some(snaplen) = args.snaplen {
        path.push_str(&format!("&snaplen={snaplen}"));
    }
    if !args.filter.is_empty() {
        path.push_str(&format!(
            "&filter={}",
            encode_segment(&args.filter.join(" "))
        ));
    }
    path
}

fn capture(api: &Api, args: &CaptureArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut file = match &args.write {
        Some(path) => Some(std::fs::File::create(path).map_err(|error| {
            CliError::Output(io::Error::new(
                error.kind(),
                format!("cannot create {}: {error}", path.display()),
            ))
        })?),
        None => None,
    };
    let sink: &mut dyn Write = match &mut file {
        Some(file) => file,
        None => out,
    };
    // Each chunk is flushed at once: a reader (`tcpdump -r -`) sees frames as they come.
    let mut write_chunk = |chunk: &[u8]| {
        sink.write_all(chunk)?;
        sink.flush()
    };
    match api.client.stream(&capture_path(args), &mut write_chunk)? {
        StreamEnd::Finished => Ok(()),
        StreamEnd::Sink(error) => Err(CliError::Output(error)),
        StreamEnd::Refused(response) => {
            let error = CliError::Api {
                failure: ApiFailure::from_response(response.status, &response.body),
                hint: None,
            };
            Err(match error.status() {
                Some(404) => error.with_hint("try: vswitchctl stats   (lists the ports)"),
                _ => error,
            })
        }
    }
}

fn version(api: &Api, out: &mut dyn Write) -> Result<(), CliError> {
    write(out, &format!("vswitchctl {}\n", env!("CARGO_PKG_VERSION")))?;
    let value = api.get("/v1/version")?;
    write(
        out,
        &format!(
            "vswitchd {} (API {})\n",
            output::cell(value.get("version")),
            output::cell(value.get("apiVersion"))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_for_messages() {
        assert_eq!(display_kind("NetworkInterfaces"), "networkinterface");
        assert_eq!(display_kind("subnet"), "subnet");
        assert_eq!(display_kind("Networks"), "network");
        assert_eq!(display_kind("networkpolicies"), "networkpolicy");
        assert_eq!(display_kind("address"), "address");
    }

    #[test]
    fn overlay_lists_at_the_plural_path() {
        assert_eq!(list_segment("overlay"), "overlays");
        assert_eq!(list_segment("Overlay"), "overlays");
        assert_eq!(list_segment("overlays"), "overlays");
        assert_eq!(list_segment("subnet"), "subnet");
        assert_eq!(list_segment("a/b"), "a%2Fb");
    }

    fn refusal(status: u16, field: Option<&str>) -> CliError {
        CliError::Api {
            failure: ApiFailure {
                status,
                message: "refused".into(),
                field: field.map(str::to_owned),
            },
            hint: None,
        }
    }

    #[test]
    fn attach_hints_follow_the_field() {
        let cases = [
            (
                409,
                Some("metadata.name"),
                Some("try: --name NAME to choose another name, or vswitchctl detach c1 first"),
            ),
            (
                409,
                Some("spec.ifname"),
                Some("try: --ifname NAME to add another interface to the namespace"),
            ),
            (
                409,
                Some("spec.ips[0]"),
                Some("try: --ip auto to let IPAM choose a free address"),
            ),
            (
                409,
                Some("spec.ips"),
                Some("try: --ip auto to let IPAM choose a free address"),
            ),
            (
                400,
                Some("spec.subnet"),
                Some("try: vswitchctl get subnets   (lists the existing ones)"),
            ),
            (
                409,
                None,
                Some("try: vswitchctl get networkinterfaces   (what is attached)"),
            ),
            (400, Some("spec.netns"), None),
        ];
        for (status, field, expected) in cases {
            let rendered = attach_hint(refusal(status, field), "c1").render();
            match expected {
                Some(hint) => assert!(
                    rendered.ends_with(&format!("\n  {hint}\n")),
                    "{field:?}: {rendered}"
                ),
                None => assert_eq!(rendered.lines().count(), 1, "{field:?}: {rendered}"),
            }
        }
    }

    #[test]
    fn unreachable_daemon_is_exit_3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let cli = Cli::try_parse_from([
            "vswitchctl",
            "--socket",
            socket.to_str().expect("utf-8 path"),
            "get",
            "subnets",
        ])
        .expect("parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let error = run(&cli, &mut out, &mut err, &mut io::empty()).expect_err("no daemon");
        assert_eq!(error.exit_code(), error::EXIT_UNREACHABLE);
        assert!(out.is_empty());
    }

    #[test]
    fn unreadable_file_is_exit_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cli = Cli::try_parse_from([
            "vswitchctl",
            "--socket",
            dir.path().join("none.sock").to_str().expect("utf-8 path"),
            "apply",
            "-f",
            dir.path()
                .join("missing.yaml")
                .to_str()
                .expect("utf-8 path"),
        ])
        .expect("parse");
        let error = run(&cli, &mut Vec::new(), &mut Vec::new(), &mut io::empty())
            .expect_err("missing file");
        assert!(matches!(error, CliError::Input { .. }), "{error:?}");
        assert_eq!(error.exit_code(), error::EXIT_REFUSED);
    }
}
