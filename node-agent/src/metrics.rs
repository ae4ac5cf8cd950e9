//! The agent's Prometheus metrics (`tartan_agent_*`). Labels are bounded:
//! kind, backend, state, result; never addresses or pod names (NetworkPolicy
//! drops carry the policy's namespace and name: bounded by the policies).

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub netlink_changes: IntCounterVec,
    pub drift_repairs: IntCounterVec,
    pub apply_duration: Histogram,
    pub apply_errors: IntCounterVec,
    pub kernel_objects: IntGaugeVec,
    pub peers: IntGaugeVec,
    pub backend_info: IntGaugeVec,
    pub applies: IntCounterVec,
    pub convergence_lag: Histogram,
    pub watch_errors: IntCounterVec,
    pub status_writes: IntCounterVec,
    pub udp: crate::udp::metrics::UdpMetrics,
    pub wireguard: crate::wireguard::metrics::WireguardMetrics,
    pub netpol: crate::netpol::metrics::NetpolMetrics,
    pub bgp_sessions: IntGaugeVec,
    pub bgp_routes_learned: IntGauge,
    pub pod_source_drops: prometheus::IntCounter,
    pub pod_bindings: IntGauge,
    /// What the udp and wireguard datapaths and the keeper did (see
    /// [`crate::keeper::Event`]).
    pub datapath_keeper: IntCounterVec,
}

/// Builds a metric and registers it in one step, so each field of
/// [`Metrics`] is one expression.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: Collector + Clone + 'static>(&self, metric: M) -> prometheus::Result<M> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counters(&self, name: &str, help: &str, label: &str) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), &[label])?)
    }

    fn gauges(&self, name: &str, help: &str, label: &str) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), &[label])?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> prometheus::Result<Histogram> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let m = Self {
            netlink_changes: r.counters(
                "tartan_agent_netlink_changes_total",
                "Kernel objects added, replaced or removed, by kind.",
                "kind",
            )?,
            drift_repairs: r.counters(
                "tartan_agent_drift_repairs_total",
                "Tartan objects changed by someone else and restored, by kind.",
                "kind",
            )?,
            apply_duration: r.histogram(
                "tartan_agent_apply_duration_seconds",
                "Time to diff and apply the desired kernel state.",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )?,
            apply_errors: r.counters(
                "tartan_agent_apply_errors_total",
                "Applies that failed, by kind of failure.",
                "kind",
            )?,
            kernel_objects: r.gauges(
                "tartan_agent_kernel_objects",
                "Kernel objects in the desired state, by kind.",
                "kind",
            )?,
            peers: r.gauges("tartan_agent_peers", "Peers by state.", "state")?,
            backend_info: r.gauges(
                "tartan_agent_backend_info",
                "1 for the backend this node sends with.",
                "backend",
            )?,
            applies: r.counters(
                "tartan_agent_applies_total",
                "Applies of the desired state, by result.",
                "result",
            )?,
            convergence_lag: r.histogram(
                "tartan_agent_convergence_lag_seconds",
                "Seconds from a peer NodeSubnet's creation to its being programmed on this node.",
                vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            watch_errors: r.counters(
                "tartan_agent_watch_errors_total",
                "Errors of the API watches, by resource.",
                "resource",
            )?,
            status_writes: r.counters(
                "tartan_agent_status_writes_total",
                "NodeSubnet status writes, by result.",
                "result",
            )?,
            udp: crate::udp::metrics::UdpMetrics::register(&registry)?,
            wireguard: crate::wireguard::metrics::WireguardMetrics::register(&registry)?,
            netpol: crate::netpol::metrics::NetpolMetrics::register(&registry)?,
            bgp_sessions: r.gauges(
                "tartan_agent_bgp_sessions",
                "This node's BGP sessions by BIRD state (established, active, connect, idle, opensent, openconfirm, unknown).",
                "state",
            )?,
            bgp_routes_learned: r.add(IntGauge::new(
                "tartan_agent_bgp_routes_learned",
                "Routes BGP peers sent this node that passed the import filter.",
            )?)?,
            pod_source_drops: r.add(prometheus::IntCounter::new(
                "tartan_agent_pod_source_drops_total",
                "Frames from a local pod's port whose source is not that pod's address (the pod source check).",
            )?)?,
            pod_bindings: r.add(IntGauge::new(
                "tartan_agent_pod_source_bindings",
                "Local pod ports bound to their addresses by the pod source check.",
            )?)?,
            datapath_keeper: r.counters(
                "tartan_agent_datapath_keeper_total",
                "What the TUN datapaths and the datapath keeper did: taken_back (a restart kept the queues), nothing_kept, refused, handed_over, unreachable.",
                "event",
            )?,
            registry,
        };
        m.create_series();
        Ok(m)
    }

    /// Creates every series of the bounded label sets up front: a series
    /// that does not exist yet is missing from the exposition, not 0, and
    /// alerts and `rate()` over it see nothing.
    fn create_series(&self) {
        for state in ["programmed", "pending", "problem"] {
            self.peers.with_label_values(&[state]);
        }
        for result in ["ok", "error"] {
            self.applies.with_label_values(&[result]);
            self.status_writes.with_label_values(&[result]);
        }
        for resource in ["nodes", "nodesubnets", "overlaynetworks"] {
            self.watch_errors.with_label_values(&[resource]);
        }
        self.apply_errors.with_label_values(&["netlink"]);
        for event in crate::keeper::Event::ALL {
            self.datapath_keeper.with_label_values(&[event.label()]);
        }
        self.record_bgp(&crate::plan::BgpObserved::default());
        for kind in ["link", "address", "route", "neighbour", "fdb", "offload"] {
            self.netlink_changes.with_label_values(&[kind]);
            self.drift_repairs.with_label_values(&[kind]);
        }
    }

    /// The BGP gauges from what BIRD reports.
    pub fn record_bgp(&self, observed: &crate::plan::BgpObserved) {
        const STATES: [&str; 6] = [
            "established",
            "active",
            "connect",
            "idle",
            "opensent",
            "openconfirm",
        ];
        let mut counts: std::collections::BTreeMap<String, i64> =
            STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for session in observed.sessions.values() {
            let state = session.state.to_ascii_lowercase();
            let key = if STATES.contains(&state.as_str()) {
                state
            } else {
                "unknown".into()
            };
            *counts.entry(key).or_default() += 1;
        }
        for (state, n) in counts {
            self.bgp_sessions.with_label_values(&[&state]).set(n);
        }
        self.bgp_routes_learned
            .set(i64::from(observed.routes_learned));
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
