//! The command table of `vswitchctl` (clap derive) and the parsers of its argument values.
//!
//! Everything that can be checked without the daemon is checked here, so a malformed value is
//! a usage error (exit 2) that names the option and says what is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

use crate::api::DEFAULT_SOCKET_PATH;
use crate::control::kinds::Kind;

/// Text shown after `--help`: the exit codes, documented once.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the request failed: vswitchd refused it (the message says why), or the input file could not be read
  2  usage error: bad command line or argument value
  3  cannot reach vswitchd: no socket, connection refused, permission denied or no answer";

/// `vswitchctl`: controls a running vswitchd through its control socket.
#[derive(Debug, Parser)]
#[command(
    name = "vswitchctl",
    version,
    about = "Control vswitchd, the userspace virtual switch, through its control socket.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// The control socket of vswitchd.
    #[arg(
        long,
        global = true,
        env = "VSWITCH_SOCKET",
        default_value = DEFAULT_SOCKET_PATH,
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    /// Give up when vswitchd has not answered within this many seconds.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from a YAML or JSON file (several documents allowed). All
    /// documents are validated first; if one is wrong, nothing changes.
    Apply(ApplyArgs),
    /// List resources of a kind, or show one. KIND is any case, singular or plural, or a
    /// short form (the kinds are listed below).
    #[command(after_help = Kind::help())]
    Get(GetArgs),
    /// Show every field of one resource, for people.
    #[command(after_help = Kind::help())]
    Describe(DescribeArgs),
    /// Delete one resource.
    #[command(after_help = Kind::help())]
    Delete(DeleteArgs),
    /// Attach a network namespace: create a NetworkInterface (TAP or veth) in it, with an
    /// address from the subnet's IPAM unless --ip gives one.
    Attach(AttachArgs),
    /// Detach an interface: delete the NetworkInterface NAME, its device and its addresses.
    Detach(DetachArgs),
    /// Show the learned MAC addresses: subnet, MAC, port, remote VTEP (overlay), age; or
    /// count them.
    Fdb(FdbArgs),
    /// Show counters: per-port packets and bytes, drops by reason, events (non-zero ones;
    /// -o wide shows all).
    Stats(OutputArgs),
    /// Show the routing tables the switch uses: connected, peering and static routes of each
    /// Network (`get routes` lists the Route resources instead).
    Routes(RoutesArgs),
    /// Show the neighbour (ARP) table: subnet, address, MAC, state, age.
    Neighbors(OutputArgs),
    /// Show the connection-tracking table (protocol, original and reply tuples, state, time
    /// left and age, zone), count its entries, or flush it.
    Conntrack(ConntrackArgs),
    /// Show NAT: the Uplink's addresses and who uses them, masquerade ports in use per
    /// interface, conntrack counters, drops by reason (non-zero ones; -o wide shows all).
    Nat(OutputArgs),
    /// Show the VXLAN overlay: on a hub one row per runner (ID, name, address, VNI, subnet,
    /// last seen, state); on a runner its ID, subnet, VNI, gateway, hub and state; on a mesh
    /// node its peers.
    Overlay(OutputArgs),
    /// Show the Uplink: its interfaces and, for a bond, each member (carrier, whether it
    /// carries traffic, the active one, ARP probes, LACP state and partner, frames), and the
    /// Subnets on its VLANs.
    Uplink(OutputArgs),
    /// Show a LoadBalancer's backends: state (Healthy, Unhealthy, Draining), their share of
    /// the Maglev table (the share of new connections each gets) and tracked connections.
    Lb(LbArgs),
    /// Change a resource's labels in place: KEY=VALUE sets, KEY- removes. Selectors
    /// (NetworkPolicies, LoadBalancers) follow within a second; established connections
    /// continue.
    #[command(after_help = Kind::help())]
    Label(LabelArgs),
    /// NetworkPolicies: `policy explain --from A --to B --port 80/TCP` says whether a
    /// connection would pass and which policy and rule decide.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Trace a packet through the switch's stages, as ovs-appctl ofproto/trace: what each
    /// stage decides (with the table entries it uses) and the verdict, or the drop reason.
    /// A synthetic packet is never sent and changes no table; with --live, the next real
    /// frames that match --match are traced as they are forwarded.
    Trace(TraceArgs),
    /// Capture a port's frames (a NetworkInterface, the Uplink, or `vxlan`: the VTEP's outer
    /// packets) as a pcap stream, to stdout or --write FILE, for `tcpdump -r -` or
    /// Wireshark. Received frames are taken as they arrive, sent ones as they leave (after
    /// routing rewrote them). Runs until --count frames or Ctrl-C.
    #[command(after_help = CAPTURE_HELP)]
    Capture(CaptureArgs),
    /// Show the versions of vswitchctl and of the running vswitchd.
    Version,
}

/// The filter language, shown after `capture --help`.
pub const CAPTURE_HELP: &str = "\
Filter (a subset of tcpdump's): ip, arp, icmp, tcp, udp, [src|dst] host IPV4, [src|dst] port N,
combined with and (&&), or (||), not (!) and parentheses; adjacent words are joined by and.
Examples:
  vswitchctl capture c1 | tcpdump -n -r -
  vswitchctl capture c1 -w c1.pcap --count 100 icmp and host 10.0.0.2
  vswitchctl capture vxlan --direction tx udp port 4789";

/// `capture PORT [-w FILE] [--direction rx|tx|both] [--count N] [--snaplen N] [FILTER...]`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The port, as `vswitchctl stats` lists it.
    pub port: String,
    /// Write the pcap to FILE (created or truncated) instead of stdout.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Which frames: received (rx), sent (tx) or both.
    #[arg(long, value_enum, default_value_t = CaptureDirection::Both)]
    pub direction: CaptureDirection,
    /// Stop after N frames.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Keep at most this many bytes of each frame [default: 65535, whole frames].
    #[arg(short = 's', long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub snaplen: Option<u32>,
    /// Only the frames this expression matches (see below); words are joined with spaces.
    #[arg(value_name = "FILTER", trailing_var_arg = true)]
    pub filter: Vec<String>,
}

/// `capture --direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureDirection {
    /// Frames received on the port.
    Rx,
    /// Frames sent to the port.
    Tx,
    /// Both.
    Both,
}

impl CaptureDirection {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureDirection::Rx => "rx",
            CaptureDirection::Tx => "tx",
            CaptureDirection::Both => "both",
        }
    }
}

/// `-n NAMESPACE`: the namespace of a namespaced kind's resource (NetworkInterface,
/// LoadBalancer, NetworkPolicy); ignored for cluster-wide kinds.
#[derive(Debug, Args, Clone, Default)]
pub struct NamespaceArgs {
    /// The namespace [default: default].
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

impl NamespaceArgs {
    /// The query string selecting the namespace (`?namespace=NS`, `default` when none).
    pub fn query(&self) -> String {
        format!(
            "?namespace={}",
            crate::cli::client::encode_segment(self.namespace.as_deref().unwrap_or("default"))
        )
    }
}

/// `label KIND NAME [-n NS] KEY=VALUE... KEY-...`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Resource kind.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// Changes: KEY=VALUE sets a label, KEY- removes one.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-", value_parser = parse_label_change)]
    pub changes: Vec<LabelChange>,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// One change of `label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set KEY to VALUE.
    Set(Label),
    /// Remove KEY.
    Remove(String),
}

/// Parses a `label` change: `KEY=VALUE` or `KEY-`.
///
/// # Errors
/// A message with an example.
pub fn parse_label_change(text: &str) -> Result<LabelChange, String> {
    if !text.contains('=') {
        if let Some(key) = text.strip_suffix('-').filter(|k| !k.is_empty()) {
            return Ok(LabelChange::Remove(key.to_owned()));
        }
        return Err(format!(
            "{text:?}: expected KEY=VALUE to set a label or KEY- to remove one, e.g. app=web or app-"
        ));
    }
    parse_label(text).map(LabelChange::Set)
}

/// `policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Whether a connection from --from to --to on --port would pass, and which
    /// NetworkPolicy and rule decide (or why the default applies).
    Explain(ExplainArgs),
}

/// `policy explain --from A --to B --port P`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The source: an attached NetworkInterface (NAME, or NAMESPACE/NAME) or an IP address.
    #[arg(long, value_name = "NS/NAME|IP")]
    pub from: String,
    /// The destination, written the same way.
    #[arg(long, value_name = "NS/NAME|IP")]
    pub to: String,
    /// The destination port and protocol: PORT[/TCP|UDP|SCTP] (TCP when left out), or ICMP.
    #[arg(long, value_name = "PORT/PROTO", default_value = "80/TCP")]
    pub port: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `trace --in PORT PACKET`, `trace --in PORT --hex FRAME`, `trace --live --match EXPR`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The packet, in tcpdump's words: `tcp A:P > B:Q [flags S]`, `udp A:P > B:Q`,
    /// `icmp A > B` (an echo request), `arp who-has B tell A`; TCP, UDP and ICMP take
    /// `ttl N` at the end. IPv6: `tcp [fd00::2]:1 > [fd00:9::2]:80`, `icmp6 A > B`.
    #[arg(value_name = "PACKET", conflicts_with_all = ["hex", "live"])]
    pub packet: Option<String>,
    /// The NetworkInterface (NAME or NAMESPACE/NAME) or Uplink the frame is received on
    /// (with --live: only frames received there).
    #[arg(long = "in", value_name = "PORT")]
    pub ingress: Option<String>,
    /// The Ethernet frame in hex instead of PACKET (spaces and colons allowed).
    #[arg(long, value_name = "HEX", conflicts_with = "live")]
    pub hex: Option<String>,
    /// The source MAC [default: the port's].
    #[arg(long, value_name = "MAC", conflicts_with = "live")]
    pub src_mac: Option<String>,
    /// The destination MAC [default: the gateway's when the destination is off the subnet,
    /// else the destination's when known, else broadcast].
    #[arg(long, value_name = "MAC", conflicts_with = "live")]
    pub dst_mac: Option<String>,
    /// Trace real frames as they are forwarded instead of a synthetic one.
    #[arg(long, requires = "filter")]
    pub live: bool,
    /// With --live: which frames, e.g. `icmp`, `tcp and host 172.30.0.3`, `udp and dst port
    /// 53` (terms: tcp udp icmp icmp6 arp ip ip6, [src|dst] host A, [src|dst] port N,
    /// joined by and).
    #[arg(long = "match", value_name = "EXPR", requires = "live")]
    pub filter: Option<String>,
    /// With --live: how many frames to trace (1 to 100).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "live")]
    pub count: usize,
    /// With --live: how long to wait for them, in seconds (1 to 300).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", requires = "live")]
    pub wait: u64,
    /// Output format: the readable trace (table, wide) or the structured record (json,
    /// yaml).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `lb NAME [-n NS] [-o FORMAT]`.
#[derive(Debug, Args)]
pub struct LbArgs {
    /// The LoadBalancer.
    pub name: String,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `apply -f FILE|-`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The resource file (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
}

/// How to print resources or reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table (the default).
    Table,
    /// A table with more columns.
    Wide,
    /// JSON, as the API returns it.
    Json,
    /// YAML; a list is printed as several documents, ready for `apply -f`.
    Yaml,
}

/// `get KIND [NAME] [-o FORMAT]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Resource kind, e.g. networkinterfaces, subnet, Network.
    pub kind: String,
    /// Resource name; without it, all resources of the kind are listed.
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// List the resources of every namespace (with a NAMESPACE column).
    #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// `describe KIND NAME [-n NS]`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Resource kind.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// `delete KIND NAME [-n NS]`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource kind.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// `detach NAME [-n NS]`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// NetworkInterface name (see `vswitchctl get networkinterfaces`).
    pub name: String,
    /// The namespace.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// `fdb`, `stats`, `neighbors`, `nat` and `overlay`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `fdb [--count] [-o FORMAT]`.
#[derive(Debug, Args)]
pub struct FdbArgs {
    /// Print how many MACs are learned instead of listing them (`-o json` adds how many are
    /// behind remote VTEPs).
    #[arg(long)]
    pub count: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `routes [--network N] [--count] [-o FORMAT]`.
#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// Only this Network's table.
    #[arg(long, short = 'n', value_name = "NETWORK")]
    pub network: Option<String>,
    /// Print how many routes the tables hold instead of listing them (`-o json` splits them
    /// by origin: connected, peering, static).
    #[arg(long)]
    pub count: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `conntrack [--network N] [--count | --flush] [-o FORMAT]`.
#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// Only connections with a side in this Network.
    #[arg(long, short = 'n', value_name = "NETWORK")]
    pub network: Option<String>,
    /// Print how many connections there are instead of listing them.
    #[arg(long, conflicts_with = "flush")]
    pub count: bool,
    /// Remove the connections (and their masquerade mappings); flows that go on are tracked
    /// again from their next packet.
    #[arg(long)]
    pub flush: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The interface type `attach` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PortKind {
    /// A TAP device moved into the namespace.
    Tap,
    /// A veth pair with one end in the namespace.
    Veth,
}

impl PortKind {
    /// The value of `spec.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Veth => "veth",
        }
    }
}

/// `attach NETNS [options]`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The namespace: a name under /run/netns, a path (e.g. /proc/1234/ns/net), or pid:N.
    #[arg(value_parser = parse_netns)]
    pub netns: Netns,
    /// The Subnet to attach to [default: the one bound to --vlan, else default].
    #[arg(long, value_name = "SUBNET")]
    pub subnet: Option<String>,
    /// An access port of this VLAN (1..=4094): joins the Subnet bound to it.
    #[arg(long, value_name = "VLAN", value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub vlan: Option<u16>,
    /// The address: `auto` (allocated by IPAM), A.B.C.D/N (A.B.C.D alone takes the
    /// subnet's prefix length), or `dhcp`: allocated by IPAM and leased by the switch's
    /// DHCP server to the container's own client (the interface is left unaddressed; the
    /// Subnet must have dhcp enabled).
    #[arg(long, value_name = "auto|dhcp|A.B.C.D/N", value_parser = parse_ip, default_value = "auto")]
    pub ip: IpRequest,
    /// The interface type.
    #[arg(long, value_enum, default_value_t = PortKind::Tap)]
    pub kind: PortKind,
    /// The interface name inside the namespace.
    #[arg(long, value_parser = parse_ifname, default_value = "eth0")]
    pub ifname: String,
    /// The NetworkInterface name [default: the namespace name (pid-N for pid:N, the last
    /// path component for a path), plus -IFNAME unless IFNAME is eth0].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The MAC address, aa:bb:cc:dd:ee:ff [default: chosen by vswitchd].
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub mac: Option<String>,
    /// The MTU [default: the subnet's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(68..))]
    pub mtu: Option<u16>,
    /// A label, KEY=VALUE; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    /// A named port the container serves, NAME=PORT[/TCP|UDP|SCTP]; repeat for several
    /// (NetworkPolicies' named ports resolve on them).
    #[arg(long = "port", value_name = "NAME=PORT/PROTO", value_parser = parse_named_port)]
    pub ports: Vec<NamedPortArg>,
    /// The namespace the NetworkInterface is in (NetworkPolicies select by it).
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `--port NAME=PORT/PROTO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPortArg {
    /// The port's name.
    pub name: String,
    /// The number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Parses `--port NAME=PORT[/PROTO]`.
///
/// # Errors
/// A message with an example.
pub fn parse_named_port(text: &str) -> Result<NamedPortArg, String> {
    let bad = || format!("{text:?}: expected NAME=PORT[/TCP|UDP|SCTP], e.g. http=80/TCP");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (port, protocol) = rest.split_once('/').unwrap_or((rest, "TCP"));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let protocol = protocol.to_ascii_uppercase();
    if name.is_empty() || !["TCP", "UDP", "SCTP"].contains(&protocol.as_str()) {
        return Err(bad());
    }
    Ok(NamedPortArg {
        name: name.to_owned(),
        port,
        protocol,
    })
}

/// Where `attach` puts the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// A name under /run/netns (`ip netns add NAME`).
    Named(String),
    /// An absolute path to a namespace file.
    Path(PathBuf),
    /// The network namespace of a process.
    Pid(u32),
}

impl fmt::Display for Netns {
    /// The value of `spec.netns`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Named(name) => f.write_str(name),
            Netns::Path(path) => write!(f, "{}", path.display()),
            Netns::Pid(pid) => write!(f, "pid:{pid}"),
        }
    }
}

/// Parses NETNS: `pid:N`, a path (anything with a `/`; made absolute against the current
/// directory, since vswitchd does not share it), or a name.
///
/// # Errors
/// A message saying which form was expected.
pub fn parse_netns(text: &str) -> Result<Netns, String> {
    if let Some(pid) = text.strip_prefix("pid:") {
        return match pid.parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(Netns::Pid(pid)),
            _ => Err(format!(
                "{pid:?} is not a process id; expected pid:N with N a positive integer"
            )),
        };
    }
    if text.contains('/') {
        let path = std::path::absolute(text)
            .map_err(|error| format!("cannot make {text:?} an absolute path: {error}"))?;
        return Ok(Netns::Path(path));
    }
    if text.is_empty() || text == "." || text == ".." {
        return Err("expected a namespace name under /run/netns, a path, or pid:N".to_owned());
    }
    Ok(Netns::Named(text.to_owned()))
}

/// What `--ip` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRequest {
    /// Allocate from the subnet's range.
    Auto,
    /// Allocate from the subnet's range; the container's DHCP client takes it.
    Dhcp,
    /// This address; the prefix length, when given, must be the subnet's.
    Static(Ipv4Addr, Option<u8>),
}

impl fmt::Display for IpRequest {
    /// `auto`, `A.B.C.D` or `A.B.C.D/N`: the value of a `spec.ips` item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpRequest::Auto => f.write_str("auto"),
            IpRequest::Dhcp => f.write_str("dhcp"),
            IpRequest::Static(addr, None) => write!(f, "{addr}"),
            IpRequest::Static(addr, Some(len)) => write!(f, "{addr}/{len}"),
        }
    }
}

/// Parses `--ip`: `auto`, `A.B.C.D/N` or `A.B.C.D` (the subnet's prefix length).
///
/// # Errors
/// A message with an example of a valid value.
pub fn parse_ip(text: &str) -> Result<IpRequest, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(IpRequest::Auto);
    }
    if text.eq_ignore_ascii_case("dhcp") {
        return Ok(IpRequest::Dhcp);
    }
    let bad = || {
        format!(
            "{text:?} is not an IPv4 address; expected auto, dhcp or A.B.C.D/N, e.g. 172.30.0.10/16"
        )
    };
    let (addr, prefix_len) = match text.split_once('/') {
        Some((addr, _)) => {
            let net: Ipv4Net = text.parse().map_err(|_| bad())?;
            (addr, Some(net.prefix_len()))
        }
        None => (text, None),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    Ok(IpRequest::Static(addr, prefix_len))
}

/// Linux limit on interface names (`IFNAMSIZ` = 16 including the NUL, `include/uapi/linux/if.h`).
const IFNAME_MAX_BYTES: usize = 15;

/// Parses `--ifname` with the kernel's rules (`dev_valid_name` in `net/core/dev.c`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or whitespace.
///
/// # Errors
/// A message naming the rule broken.
pub fn parse_ifname(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > IFNAME_MAX_BYTES {
        return Err(format!(
            "{text:?} must be 1 to {IFNAME_MAX_BYTES} bytes long (Linux IFNAMSIZ)"
        ));
    }
    if text == "." || text == ".." {
        return Err(format!("{text:?} is not a valid interface name"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "{text:?} contains {bad:?}; interface names cannot contain '/', ':' or whitespace"
        ));
    }
    Ok(text.to_owned())
}

/// Parses `--mac`: six hexadecimal octets separated by `:`; returned in lower case.
///
/// # Errors
/// A message with an example.
pub fn parse_mac(text: &str) -> Result<String, String> {
    let octets: Vec<&str> = text.split(':').collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|octet| octet.len() == 2 && octet.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err(format!(
            "{text:?} is not a MAC address; expected six hex octets, e.g. 02:00:ac:1e:00:05"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// One `--label KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The key (not empty).
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

/// Parses `--label KEY=VALUE`: the key is not empty and has no whitespace; the value may be
/// empty.
///
/// # Errors
/// A message with an example.
pub fn parse_label(text: &str) -> Result<Label, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} has no '='; expected KEY=VALUE, e.g. app=web"
        ));
    };
    if key.is_empty() {
        return Err(format!(
            "{text:?} has an empty key; expected KEY=VALUE, e.g. app=web"
        ));
    }
    if key.chars().any(char::is_whitespace) || value.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} contains whitespace; labels cannot"));
    }
    Ok(Label {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// The labels as a map.
///
/// # Errors
/// A message naming a key given twice.
pub fn labels_map(labels: &[Label]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for label in labels {
        if map.insert(label.key.clone(), label.value.clone()).is_some() {
            return Err(format!(
                "label {:?} is given more than once; give each key once",
                label.key
            ));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_table_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn netns_forms() {
        assert_eq!(parse_netns("c1"), Ok(Netns::Named("c1".into())));
        assert_eq!(parse_netns("pid:42"), Ok(Netns::Pid(42)));
        assert_eq!(
            parse_netns("/run/netns/c1"),
            Ok(Netns::Path("/run/netns/c1".into()))
        );
        let relative = parse_netns("ns/c1").expect("relative path");
        let Netns::Path(path) = relative else {
            panic!("expected a path, got {relative:?}");
        };
        assert!(path.is_absolute() && path.ends_with("ns/c1"), "{path:?}");
        for bad in ["pid:", "pid:x", "pid:0", "pid:-3", "", ".."] {
            assert!(parse_netns(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Netns::Pid(7).to_string(), "pid:7");
    }

    #[test]
    fn ip_values() {
        assert_eq!(parse_ip("auto"), Ok(IpRequest::Auto));
        assert_eq!(parse_ip("AUTO"), Ok(IpRequest::Auto));
        assert_eq!(
            parse_ip("172.30.0.10/16"),
            Ok(IpRequest::Static(Ipv4Addr::new(172, 30, 0, 10), Some(16)))
        );
        assert_eq!(
            parse_ip("172.30.0.10"),
            Ok(IpRequest::Static(Ipv4Addr::new(172, 30, 0, 10), None))
        );
        assert_eq!(
            parse_ip("172.30.0.10/16").map(|ip| ip.to_string()),
            Ok("172.30.0.10/16".to_owned())
        );
        for bad in [
            "172.30.0.10/33",
            "172.30.0.10/",
            "300.1.1.1/8",
            "fe80::1/64",
            "x/8",
            "10.0.0",
            "",
        ] {
            let error = parse_ip(bad).expect_err(bad);
            assert!(error.contains("A.B.C.D/N"), "{bad}: {error}");
        }
    }

    #[test]
    fn ifname_rules() {
        assert_eq!(parse_ifname("eth1"), Ok("eth1".into()));
        assert!(
            parse_ifname("abcdefghijklmno").is_ok(),
            "15 bytes is the limit"
        );
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a b", "eth0:1"] {
            assert!(parse_ifname(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn mac_values() {
        assert_eq!(
            parse_mac("02:AB:cd:00:00:01"),
            Ok("02:ab:cd:00:00:01".into())
        );
        for bad in [
            "02:ab:cd:00:00",
            "02:ab:cd:00:00:01:02",
            "02-ab-cd-00-00-01",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("app=web"),
            Ok(Label {
                key: "app".into(),
                value: "web".into()
            })
        );
        assert_eq!(
            parse_label("a=b=c"),
            Ok(Label {
                key: "a".into(),
                value: "b=c".into()
            })
        );
        assert_eq!(parse_label("empty=").map(|l| l.value), Ok(String::new()));
        for bad in ["app", "=web", "a b=c", "a=b c"] {
            assert!(parse_label(bad).is_err(), "{bad:?} must be refused");
        }
        let twice = [
            parse_label("a=1").expect("label"),
            parse_label("a=2").expect("label"),
        ];
        assert!(labels_map(&twice).expect_err("duplicate").contains("\"a\""));
    }

    #[test]
    fn attach_command_line() {
        let cli = Cli::try_parse_from([
            "vswitchctl",
            "--socket",
            "/tmp/x.sock",
            "attach",
            "pid:12",
            "--kind",
            "veth",
            "--ip",
            "10.0.0.5/24",
            "--label",
            "a=1",
            "--label",
            "b=2",
        ])
        .expect("parse");
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        let Command::Attach(args) = cli.command else {
            panic!("expected attach");
        };
        assert_eq!(args.netns, Netns::Pid(12));
        assert_eq!(args.kind, PortKind::Veth);
        assert_eq!(args.ifname, "eth0");
        assert_eq!(args.labels.len(), 2);
        assert!(matches!(args.ip, IpRequest::Static(_, Some(24))));
    }

    #[test]
    fn routes_and_neighbors_command_lines() {
        let cli = Cli::try_parse_from(["vswitchctl", "routes", "--network", "blue", "-o", "json"])
            .expect("parse");
        let Command::Routes(args) = cli.command else {
            panic!("expected routes");
        };
        assert_eq!(args.network.as_deref(), Some("blue"));
        assert_eq!(args.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["vswitchctl", "routes"]).expect("parse");
        let Command::Routes(args) = cli.command else {
            panic!("expected routes");
        };
        assert_eq!(args.network, None);
        assert_eq!(args.output, OutputFormat::Table);
        let cli = Cli::try_parse_from(["vswitchctl", "neighbors", "-o", "yaml"]).expect("parse");
        let Command::Neighbors(args) = cli.command else {
            panic!("expected neighbors");
        };
        assert_eq!(args.output, OutputFormat::Yaml);
    }

    #[test]
    fn conntrack_and_nat_command_lines() {
        let cli = Cli::try_parse_from([
            "vswitchctl",
            "conntrack",
            "--network",
            "blue",
            "--count",
            "-o",
            "json",
        ])
        .expect("parse");
        let Command::Conntrack(args) = cli.command else {
            panic!("expected conntrack");
        };
        assert_eq!(args.network.as_deref(), Some("blue"));
        assert!(args.count && !args.flush);
        assert_eq!(args.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["vswitchctl", "conntrack", "--flush"]).expect("parse");
        let Command::Conntrack(args) = cli.command else {
            panic!("expected conntrack");
        };
        assert!(args.flush && !args.count && args.network.is_none());
        let cli = Cli::try_parse_from(["vswitchctl", "nat", "-o", "wide"]).expect("parse");
        let Command::Nat(args) = cli.command else {
            panic!("expected nat");
        };
        assert_eq!(args.output, OutputFormat::Wide);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["vswitchctl", "attach", "c1", "--ip", "10.0.0.5/40"][..],
            &["vswitchctl", "attach", "c1", "--label", "nokey"][..],
            &["vswitchctl", "attach", "c1", "--kind", "macvlan"][..],
            &["vswitchctl", "attach", "c1", "--mtu", "20"][..],
            &["vswitchctl", "get", "subnets", "-o", "xml"][..],
            &["vswitchctl", "routes", "--network"][..],
            &["vswitchctl", "neighbors", "-o", "csv"][..],
            &["vswitchctl", "conntrack", "--count", "--flush"][..],
            &["vswitchctl", "conntrack", "--network"][..],
            &["vswitchctl", "nat", "--network", "x"][..],
            &["vswitchctl", "apply"][..],
        ] {
            let error = Cli::try_parse_from(argv).expect_err(&argv.join(" "));
            assert_eq!(error.exit_code(), 2, "{}: {error}", argv.join(" "));
        }
    }
}
