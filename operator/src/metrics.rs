//! The operator's Prometheus metrics. Labels are bounded: controller, family,
//! error kind, reason; never names, CIDRs or messages.

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
        let m = Self {
            subnets_capacity: GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnets_capacity",
                    "Node subnets the pool holds, by IP family.",
                ),
                &["family"],
            )?,
            subnets_allocated: GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnets_allocated",
                    "Node subnets allocated, by IP family.",
                ),
                &["family"],
            )?,
            nodes_waiting: Gauge::new(
                "tartan_operator_nodes_waiting_for_subnet",
                "Nodes without a NodeSubnet because the pool is exhausted.",
            )?,
            subnet_conflicts: GaugeVec::new(
                Opts::new(
                    "tartan_operator_subnet_conflicts",
                    "NodeSubnets that are not valid allocations (duplicate CIDR, outside the pool, invalid spec).",
                ),
                &["reason"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "tartan_operator_reconcile_duration_seconds",
                    "Time spent in one reconcile.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                &["controller"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "tartan_operator_reconcile_errors_total",
                    "Reconciles that failed, by error kind.",
                ),
                &["controller", "error"],
            )?,
            allocations: IntCounterVec::new(
                Opts::new(
                    "tartan_operator_allocations_total",
                    "Allocation attempts by result.",
                ),
                &["result"],
            )?,
            is_leader: Gauge::new(
                "tartan_operator_is_leader",
                "1 while this replica holds the leader lease.",
            )?,
            leader_transitions: IntCounterVec::new(
                Opts::new(
                    "tartan_operator_leader_transitions_total",
                    "Times this replica gained or lost the lease.",
                ),
                &["direction"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.subnets_capacity.clone()))?;
        m.registry.register(Box::new(m.subnets_allocated.clone()))?;
        m.registry.register(Box::new(m.nodes_waiting.clone()))?;
        m.registry.register(Box::new(m.subnet_conflicts.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.reconcile_errors.clone()))?;
        m.registry.register(Box::new(m.allocations.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        m.registry
            .register(Box::new(m.leader_transitions.clone()))?;
        // Series that exist from the start, so dashboards and alerts see zeros.
        for family in ["ipv4", "ipv6"] {
            m.subnets_capacity.with_label_values(&[family]);
            m.subnets_allocated.with_label_values(&[family]);
        }
        for reason in ["DuplicateCIDR", "OutsidePool", "InvalidSpec"] {
            m.subnet_conflicts.with_label_values(&[reason]);
        }
        for result in ["allocated", "exhausted"] {
            m.allocations.with_label_values(&[result]);
        }
        for direction in ["acquired", "lost"] {
            m.leader_transitions.with_label_values(&[direction]);
        }
        Ok(m)
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
