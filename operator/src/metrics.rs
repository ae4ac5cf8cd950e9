//! The operator's Prometheus metrics. Labels are bounded: controller, family,
//! error kind, reason; never names, CIDRs or messages.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub subnets_capacity: GaugeVec,
    pub subnets_allocated: GaugeVec,
    pub nodes_waiting: Gauge,
    pub subnet_conflicts: GaugeVec,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub allocations: IntCounterVec,
    pub is_leader: Gauge,
    pub leader_transitions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let registrar = Registrar(&registry);
        let m = Self {
            subnets_capacity: registrar.add(GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnets_capacity",
                    "Node subnets the pool holds, by IP family.",
                ),
                &["family"],
            )?)?,
            subnets_allocated: registrar.add(GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnets_allocated",
                    "Node subnets allocated, by IP family.",
                ),
                &["family"],
            )?)?,
            nodes_waiting: registrar.add(Gauge::new(
                "tartan_operator_nodes_waiting_for_subnet",
                "Nodes without a NodeSubnet because the pool is exhausted.",
            )?)?,
            subnet_conflicts: registrar.add(GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnet_conflicts",
                    "NodeSubnets that are not valid allocations (duplicate CIDR, outside the pool, invalid spec).",
                ),
                &["reason"],
            )?)?,
            reconcile_duration: registrar.add(HistogramVec::new(
                HistogramOpts::new(
                    "tartan_operator_reconcile_duration_seconds",
                    "Time spent in one reconcile.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                &["controller"],
            )?)?,
            reconcile_errors: registrar.add(IntCounterVec::new(
                Opts::new(
                    "tartan_operator_reconcile_errors_total",
                    "Reconciles that failed, by error kind.",
                ),
                &["controller", "error"],
            )?)?,
            allocations: registrar.add(IntCounterVec::new(
                Opts::new(
                    "tartan_operator_allocations_total",
                    "Allocation attempts by result.",
                ),
                &["result"],
            )?)?,
            is_leader: registrar.add(Gauge::new(
                "tartan_operator_is_leader",
                "1 while this replica holds the leader lease.",
            )?)?,
            leader_transitions: registrar.add(IntCounterVec::new(
                Opts::new(
                    "tartan_operator_leader_transitions_total",
                    "Times this replica gained or lost the lease.",
                ),
                &["direction"],
            )?)?,
            registry,
        };
        m.start_series_at_zero();
        Ok(m)
    }

    /// Creates the series of every known label value, so dashboards and
    /// alerts see zeros from the start instead of no data.
    fn start_series_at_zero(&self) {
        for family in ["ipv4", "ipv6"] {
            self.subnets_capacity.with_label_values(&[family]);
            self.subnets_allocated.with_label_values(&[family]);
        }
        for reason in ["DuplicateCIDR", "OutsidePool", "InvalidSpec"] {
            self.subnet_conflicts.with_label_values(&[reason]);
        }
        for result in ["allocated", "exhausted"] {
            self.allocations.with_label_values(&[result]);
        }
        for direction in ["acquired", "lost"] {
            self.leader_transitions.with_label_values(&[direction]);
        }
    }

    /// Starts a timer that records into the histogram when dropped.
    pub fn time(&self, controller: &'static str) -> prometheus::HistogramTimer {
        self.reconcile_duration
            .with_label_values(&[controller])
            .start_timer()
    }

    pub fn error(&self, controller: &'static str, error: &crate::Error) {
        self.reconcile_errors
            .with_label_values(&[controller, error.metric_label()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Registers each metric it is handed with its registry, and hands it back.
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn add<M: Collector + Clone + 'static>(&self, metric: M) -> prometheus::Result<M> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }
}
