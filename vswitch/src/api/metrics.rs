//! `GET /metrics`: the switch's counters in the Prometheus text format (OpenMetrics), read
//! at scrape time from the counters the workers keep anyway, so forwarding pays nothing for
//! them. Encoded with the `prometheus-client` crate (the Prometheus project's).
//!
//! Families (counters end in `_total`):
//! - `vswitch_port_{rx,tx}_{packets,bytes}_total{port}`, `vswitch_port_tx_generated_*`,
//!   `vswitch_port_rx_errors_total{port}`, `vswitch_port_rx_backoffs_total{port}`,
//!   `vswitch_port_drops_total{port,reason}`;
//! - `vswitch_events_total{event}`, `vswitch_workers`;
//! - `vswitch_worker_busy_seconds_total{worker}`, `vswitch_worker_idle_seconds_total{worker}`
//!   (time outside and inside `epoll_wait`), `vswitch_worker_batch_size{worker}` (a histogram
//!   of frames per received batch, buckets 1, 2, 4, ..., 64);
//! - what each worker spent: `vswitch_worker_syscalls_total{worker,call}`,
//!   `vswitch_worker_context_switches_total{worker,kind}` (`voluntary`: it slept and was
//!   woken; `involuntary`: preempted), `vswitch_worker_empty_reads_total{worker}`,
//!   `vswitch_worker_checksum_bytes_total{worker}`,
//!   `vswitch_worker_segmented_bytes_total{worker}`, `vswitch_worker_segments_total{worker}`,
//!   `vswitch_worker_coalesced_segments_total{worker}`,
//!   `vswitch_worker_udp_gso_sends_total{worker}`;
//! - `vswitch_fdb_entries`, `vswitch_neighbor_entries`;
//! - `vswitch_conntrack_entries`, `vswitch_conntrack_max_entries`,
//!   `vswitch_conntrack_{created,expired,evicted,refused_full,clashes}_total`,
//!   `vswitch_nat_mappings`;
//! - `vswitch_nat_ports_in_use{port,address,protocol}`, `vswitch_overlay_runners{state}`;
//! - `vswitch_loadbalancer_backends{namespace,loadbalancer,state}`;
//! - `vswitch_networkpolicy_connections_total{namespace,policy,direction,verdict}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::error::ErrorResponse;
use super::resources::blocking;
use crate::control::{Controller, MetricsSnapshot};
use crate::runtime::counters::{BATCH_BUCKETS, WorkerLoad};

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus' classic text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: OpenMetrics when the scraper asks for it (`Accept:
/// application/openmetrics-text`, as Prometheus does), else the classic text format
/// (`curl`, `promtool check metrics`).
pub(super) async fn metrics(
    State(controller): State<Arc<Controller>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ErrorResponse> {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let snapshot = blocking(&controller, |c| Ok(c.metrics())).await?;
    let text = render(snapshot).map_err(|_| {
        ErrorResponse::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
    })?;
    let (text, content_type) = if openmetrics {
        (text, OPENMETRICS)
    } else {
        (classic(&text), PROMETHEUS_TEXT)
    };
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// OpenMetrics text as Prometheus' classic text format: the two differ, for what this
/// endpoint emits, only in that a classic counter's `# HELP` and `# TYPE` name its samples'
/// name (with `_total`), and that there is no `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The router of the metrics listener on TCP (`vswitchd --metrics-address`): `GET /metrics`
/// only, never the control API (which stays on the 0600 Unix socket).
pub fn router(controller: Arc<Controller>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(controller)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    controller: Arc<Controller>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(controller))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The metrics of `snapshot` as text.
///
/// # Errors
/// When encoding fails (it does not for these values).
pub fn render(snapshot: MetricsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Switch(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The collector: one scrape's values.
#[derive(Debug)]
struct Switch(MetricsSnapshot);

/// A family of `kind` with one sample per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: prometheus_client::metrics::MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: prometheus_client::encoding::EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let samples = values.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(
        encoder,
        name,
        help,
        prometheus_client::metrics::MetricType::Counter,
        samples,
    )
}

fn gauge<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let samples = values.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(
        encoder,
        name,
        help,
        prometheus_client::metrics::MetricType::Gauge,
        samples,
    )
}

/// A counter without labels.
fn counter_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    ConstCounter::new(value).encode(family)
}

/// A gauge without labels.
fn gauge_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    ConstGauge::new(value).encode(family)
}

/// A histogram's values at scrape time: per-bucket counts (not cumulative; the encoder sums
/// them), their sum and count.
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    /// The batch-size histogram of one worker (the `+Inf` bucket is empty: no batch holds more
    /// than the last bound).
    fn batches(load: &WorkerLoad) -> ConstHistogram {
        let mut buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .iter()
            .zip(load.batches.iter())
            .map(|(&bound, &n)| (f64::from(u32::try_from(bound).unwrap_or(u32::MAX)), n))
            .collect();
        buckets.push((f64::MAX, 0));
        ConstHistogram {
            // Exact below 2^53 frames.
            sum: load.batch_frames as f64,
            count: load.batches.iter().sum(),
            buckets,
        }
    }
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Nanoseconds as seconds.
fn seconds(nanos: u64) -> f64 {
    // Exact enough: a double holds nanoseconds exactly for 104 days, microseconds for ages.
    nanos as f64 / 1e9
}

fn signed(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Switch {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let ports = &s.stats.ports;
        let per_port = |field: fn(&crate::runtime::PortStats) -> u64| {
            ports
                .iter()
                .map(move |p| ([("port", p.name.clone())], field(p)))
        };
        counter(
            &mut encoder,
            "vswitch_port_rx_packets",
            "Frames received on a port.",
            per_port(|p| p.rx_packets),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_rx_bytes",
            "Bytes received on a port.",
            per_port(|p| p.rx_bytes),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_tx_packets",
            "Frames switched or routed to a port.",
            per_port(|p| p.tx_packets),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_tx_bytes",
            "Bytes switched or routed to a port.",
            per_port(|p| p.tx_bytes),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_tx_generated_packets",
            "Frames the switch itself sent to a port (ARP, ICMP).",
            per_port(|p| p.tx_generated_packets),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_tx_generated_bytes",
            "Bytes of the frames the switch itself sent to a port.",
            per_port(|p| p.tx_generated_bytes),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_rx_errors",
            "Failed reads of a port's queues.",
            per_port(|p| p.rx_errors),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_rx_backoffs",
            "Times a port's queue was left unread for a while: it sent frames fast and nearly all were dropped.",
            per_port(|p| p.rx_backoffs),
        )?;
        counter(
            &mut encoder,
            "vswitch_port_drops",
            "Frames dropped, by port and stable reason key.",
            ports.iter().flat_map(|p| {
                p.drops.iter().map(move |(reason, n)| {
                    ([("port", p.name.clone()), ("reason", reason.clone())], *n)
                })
            }),
        )?;
        counter(
            &mut encoder,
            "vswitch_events",
            "Events that are not drops, by key.",
            s.stats
                .events
                .iter()
                .map(|(event, n)| ([("event", event.clone())], *n)),
        )?;
        gauge_one(
            &mut encoder,
            "vswitch_workers",
            "Worker threads.",
            signed(s.stats.workers),
        )?;
        let worker = |index: usize| [("worker", index.to_string())];
        for (name, help, pick) in [
            (
                "vswitch_worker_busy_seconds",
                "Time a worker spent working (outside epoll_wait): receiving, the stages, transmitting, upkeep.",
                (|load: &WorkerLoad| load.busy_ns) as fn(&WorkerLoad) -> u64,
            ),
            (
                "vswitch_worker_idle_seconds",
                "Time a worker spent waiting for work in epoll_wait (busy-poll rounds that found nothing included).",
                |load: &WorkerLoad| load.idle_ns,
            ),
        ] {
            family(
                &mut encoder,
                name,
                help,
                prometheus_client::metrics::MetricType::Counter,
                s.worker_loads
                    .iter()
                    .enumerate()
                    .map(|(index, load)| (worker(index), ConstCounter::new(seconds(pick(load))))),
            )?;
        }
        family(
            &mut encoder,
            "vswitch_worker_batch_size",
            "Frames per batch a worker received from a queue.",
            prometheus_client::metrics::MetricType::Histogram,
            s.worker_loads
                .iter()
                .enumerate()
                .map(|(index, load)| (worker(index), ConstHistogram::batches(load))),
        )?;
        counter(
            &mut encoder,
            "vswitch_worker_syscalls",
            "System calls a worker made, by call (read/write of TAP queues, recv/send/sendmmsg of packet sockets, recvmmsg/sendmmsg/sendmsg of the VTEP, epoll_wait, eventfd).",
            s.worker_costs.iter().enumerate().flat_map(|(index, w)| {
                crate::cost::Syscall::ALL.iter().map(move |kind| {
                    (
                        [
                            ("worker", index.to_string()),
                            ("call", kind.key().to_owned()),
                        ],
                        w.costs.syscalls[kind.index()],
                    )
                })
            }),
        )?;
        counter(
            &mut encoder,
            "vswitch_worker_context_switches",
            "A worker thread's context switches: voluntary (it slept and was woken), involuntary (preempted).",
            s.worker_costs.iter().enumerate().flat_map(|(index, w)| {
                w.switches.into_iter().flat_map(move |switches| {
                    [
                        ("voluntary", switches.voluntary),
                        ("involuntary", switches.involuntary),
                    ]
                    .map(|(kind, n)| {
                        (
                            [("worker", index.to_string()), ("kind", kind.to_owned())],
                            n,
                        )
                    })
                })
            }),
        )?;
        for (name, help, pick) in [
            (
                "vswitch_worker_empty_reads",
                "Reads of a queue that found nothing.",
                (|c: &crate::cost::Costs| c.empty_reads) as fn(&crate::cost::Costs) -> u64,
            ),
            (
                "vswitch_worker_checksum_bytes",
                "Bytes a worker summed with the software Internet checksum.",
                |c| c.checksum_bytes,
            ),
            (
                "vswitch_worker_segmented_bytes",
                "Bytes a worker wrote segmenting super-frames in software.",
                |c| c.segmented_bytes,
            ),
            (
                "vswitch_worker_segments",
                "Segments a worker made from super-frames in software.",
                |c| c.segments,
            ),
            (
                "vswitch_worker_coalesced_segments",
                "Segments a worker merged into another in software (GRO).",
                |c| c.coalesced_segments,
            ),
            (
                "vswitch_worker_udp_gso_sends",
                "VTEP sends carrying a UDP_SEGMENT super-datagram.",
                |c| c.udp_gso_sends,
            ),
        ] {
            counter(
                &mut encoder,
                name,
                help,
                s.worker_costs
                    .iter()
                    .enumerate()
                    .map(|(index, w)| (worker(index), pick(&w.costs))),
            )?;
        }
        gauge_one(
            &mut encoder,
            "vswitch_fdb_entries",
            "Learned MACs (expired ones not yet swept included).",
            signed(s.fdb_entries),
        )?;
        gauge_one(
            &mut encoder,
            "vswitch_neighbor_entries",
            "Neighbour (ARP) entries.",
            signed(s.neighbor_entries),
        )?;
        let ct = &s.conntrack;
        gauge_one(
            &mut encoder,
            "vswitch_conntrack_entries",
            "Tracked connections.",
            signed(ct.entries),
        )?;
        gauge_one(
            &mut encoder,
            "vswitch_conntrack_max_entries",
            "The conntrack table's limit.",
            signed(s.conntrack_max),
        )?;
        counter_one(
            &mut encoder,
            "vswitch_conntrack_created",
            "Connections created.",
            ct.created,
        )?;
        counter_one(
            &mut encoder,
            "vswitch_conntrack_expired",
            "Connections removed when they expired.",
            ct.expired,
        )?;
        counter_one(
            &mut encoder,
            "vswitch_conntrack_evicted",
            "Connections evicted to make room.",
            ct.evicted,
        )?;
        counter_one(
            &mut encoder,
            "vswitch_conntrack_refused_full",
            "New connections refused because the table was full.",
            ct.refused_full,
        )?;
        counter_one(
            &mut encoder,
            "vswitch_conntrack_clashes",
            "New connections refused because their reply tuple was taken.",
            ct.clashes,
        )?;
        gauge_one(
            &mut encoder,
            "vswitch_nat_mappings",
            "Live masquerade mappings.",
            signed(ct.nat_mappings),
        )?;
        gauge(
            &mut encoder,
            "vswitch_nat_ports_in_use",
            "Masquerade mappings in use, by interface, NAT address and protocol.",
            s.nat_ports.iter().map(|(port, ip, protocol, n)| {
                (
                    [
                        ("port", port.clone()),
                        ("address", ip.clone()),
                        ("protocol", (*protocol).to_owned()),
                    ],
                    i64::from(*n),
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "vswitch_overlay_runners",
            "A hub's runners by state.",
            s.runners
                .iter()
                .map(|(state, n)| ([("state", state.clone())], signed(*n))),
        )?;
        gauge(
            &mut encoder,
            "vswitch_loadbalancer_backends",
            "LoadBalancer backends by state (Healthy, Unhealthy, Draining).",
            s.load_balancers.iter().map(|(key, state, n)| {
                let (namespace, name) = crate::control::resource::split_key(key);
                (
                    [
                        ("namespace", namespace.to_owned()),
                        ("loadbalancer", name.to_owned()),
                        ("state", state.clone()),
                    ],
                    signed(*n),
                )
            }),
        )?;
        counter(
            &mut encoder,
            "vswitch_networkpolicy_connections",
            "Connections a NetworkPolicy's rules allowed, and packets of new connections denied while it isolated an end.",
            s.policies.iter().flat_map(|(key, counts)| {
                let (namespace, name) = crate::control::resource::split_key(key);
                let labels = |direction: &str, verdict: &str| {
                    [
                        ("namespace", namespace.to_owned()),
                        ("policy", name.to_owned()),
                        ("direction", direction.to_owned()),
                        ("verdict", verdict.to_owned()),
                    ]
                };
                [
                    (labels("ingress", "allowed"), counts.ingress_allowed),
                    (labels("egress", "allowed"), counts.egress_allowed),
                    (labels("ingress", "denied"), counts.ingress_denied),
                    (labels("egress", "denied"), counts.egress_denied),
                ]
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::{PortStats, StatsReport};
    use crate::tables::policy::PolicyCounts;

    /// A scrape with a sample in every family.
    fn sample() -> MetricsSnapshot {
        let port = PortStats {
            name: "shop/web-1".into(),
            rx_packets: 7,
            rx_bytes: 700,
            drops: BTreeMap::from([("policy.ingress_denied".into(), 3)]),
            ..PortStats::default()
        };
        MetricsSnapshot {
            stats: StatsReport {
                workers: 2,
                ports: vec![port],
                events: BTreeMap::from([("lb.connections_created".into(), 5)]),
                ..StatsReport::default()
            },
            fdb_entries: 4,
            neighbor_entries: 1,
            conntrack: nat::ConntrackStats::default(),
            conntrack_max: 1_000_000,
            load_balancers: vec![("shop/web".into(), "Healthy".into(), 2)],
            nat_ports: vec![("c1".into(), "203.0.113.10".into(), "tcp", 3)],
            runners: BTreeMap::from([("Online".to_owned(), 2)]),
            policies: BTreeMap::from([(
                "shop/db".to_owned(),
                PolicyCounts {
                    ingress_allowed: 9,
                    ..PolicyCounts::default()
                },
            )]),
            worker_loads: vec![WorkerLoad {
                busy_ns: 1_500_000_000,
                idle_ns: 250_000_000,
                batches: [3, 1, 0, 0, 0, 0, 2],
                batch_frames: 133,
            }],
            worker_costs: vec![crate::runtime::WorkerCosts {
                costs: crate::cost::Costs {
                    syscalls: std::array::from_fn(|i| if i == 1 { 40 } else { 0 }),
                    checksum_bytes: 9000,
                    ..crate::cost::Costs::default()
                },
                switches: Some(crate::sys::sched::Switches {
                    voluntary: 12,
                    involuntary: 2,
                }),
            }],
        }
    }

    #[test]
    fn families_and_labels_follow_prometheus_conventions() {
        let snapshot = sample();
        let text = render(snapshot).expect("renders");
        let classic_text = classic(&text);
        assert!(classic_text.contains("# TYPE vswitch_port_rx_packets_total counter\n"));
        assert!(classic_text.contains("# HELP vswitch_workers Worker threads.\n"));
        assert!(!classic_text.contains("# EOF"));
        for line in [
            "# TYPE vswitch_port_rx_packets counter",
            "vswitch_port_rx_packets_total{port=\"shop/web-1\"} 7",
            "vswitch_port_drops_total{port=\"shop/web-1\",reason=\"policy.ingress_denied\"} 3",
            "vswitch_events_total{event=\"lb.connections_created\"} 5",
            "vswitch_workers 2",
            "vswitch_worker_busy_seconds_total{worker=\"0\"} 1.5",
            "vswitch_worker_idle_seconds_total{worker=\"0\"} 0.25",
            "vswitch_worker_batch_size_bucket{le=\"1.0\",worker=\"0\"} 3",
            "vswitch_worker_batch_size_bucket{le=\"2.0\",worker=\"0\"} 4",
            "vswitch_worker_batch_size_bucket{le=\"64.0\",worker=\"0\"} 6",
            "vswitch_worker_batch_size_bucket{le=\"+Inf\",worker=\"0\"} 6",
            "vswitch_worker_batch_size_count{worker=\"0\"} 6",
            "vswitch_worker_batch_size_sum{worker=\"0\"} 133.0",
            "vswitch_worker_syscalls_total{worker=\"0\",call=\"write\"} 40",
            "vswitch_worker_syscalls_total{worker=\"0\",call=\"read\"} 0",
            "vswitch_worker_context_switches_total{worker=\"0\",kind=\"voluntary\"} 12",
            "vswitch_worker_checksum_bytes_total{worker=\"0\"} 9000",
            "vswitch_nat_ports_in_use{port=\"c1\",address=\"203.0.113.10\",protocol=\"tcp\"} 3",
            "vswitch_overlay_runners{state=\"Online\"} 2",
            "vswitch_conntrack_max_entries 1000000",
            "vswitch_loadbalancer_backends{namespace=\"shop\",loadbalancer=\"web\",state=\"Healthy\"} 2",
            "vswitch_networkpolicy_connections_total{namespace=\"shop\",policy=\"db\",direction=\"ingress\",verdict=\"allowed\"} 9",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    /// Every string under an `expr` key, anywhere in `value`.
    fn exprs<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner.as_str()) {
                        ("expr", Some(expr)) => found.push(expr),
                        _ => exprs(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, found)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_series() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana/vswitch.json"
        ));
        let dashboard: serde_json::Value =
            serde_json::from_str(text).expect("docs/grafana/vswitch.json is valid JSON");
        // The series names a scrape has, in the classic format Prometheus stores.
        let scrape = classic(&render(sample()).expect("renders"));
        let exported: std::collections::BTreeSet<&str> = scrape
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let mut found = Vec::new();
        exprs(&dashboard, &mut found);
        assert!(found.len() >= 20, "only {} queries", found.len());
        let mut named = std::collections::BTreeSet::new();
        for expr in found {
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for name in words.filter(|word| word.starts_with("vswitch_")) {
                assert!(
                    exported.contains(name),
                    "the dashboard queries {name}, which /metrics does not export ({expr})"
                );
                named.insert(name);
            }
        }
        // Each family the endpoint exports has a panel.
        for family in [
            "vswitch_port_rx_packets_total",
            "vswitch_port_drops_total",
            "vswitch_worker_busy_seconds_total",
            "vswitch_worker_batch_size_bucket",
            "vswitch_conntrack_entries",
            "vswitch_nat_ports_in_use",
            "vswitch_fdb_entries",
            "vswitch_neighbor_entries",
            "vswitch_overlay_runners",
            "vswitch_loadbalancer_backends",
            "vswitch_networkpolicy_connections_total",
        ] {
            assert!(named.contains(family), "no panel shows {family}");
        }
        // A Prometheus datasource variable, used by every query.
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("variables");
        assert!(variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"));
        for panel in dashboard["panels"].as_array().expect("panels") {
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "{}",
                    panel["title"]
                );
            }
        }
    }
}
