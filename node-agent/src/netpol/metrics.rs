//! `tartan_agent_netpol_*`. Drops are labelled by the policy (namespace and
//! name: bounded by the cluster's NetworkPolicies, never by pods or
//! addresses); a packet dropped at a pod that two policies isolate counts for
//! both, since either could have allowed it.

use std::collections::BTreeMap;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::compile::{Compiled, Direction};

#[derive(Clone)]
pub struct NetpolMetrics {
    pub drops: IntCounterVec,
    pub applies: IntCounterVec,
    pub apply_duration: Histogram,
    pub policies: IntGaugeVec,
    pub isolated_pods: IntGaugeVec,
}

fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

impl NetpolMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let add = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let drops = IntCounterVec::new(
            Opts::new(
                "tartan_agent_netpol_drops_total",
                "Packets dropped at this node's pods because no rule of the NetworkPolicies isolating them allowed them.",
            ),
            &["direction", "namespace", "policy"],
        )?;
        let applies = IntCounterVec::new(
            Opts::new(
                "tartan_agent_netpol_applies_total",
                "NetworkPolicy table updates: full, incremental, unchanged, or error.",
            ),
            &["result"],
        )?;
        let apply_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tartan_agent_netpol_apply_duration_seconds",
                "Seconds to compile the NetworkPolicies and apply the difference in one nft transaction.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let policies = IntGaugeVec::new(
            Opts::new(
                "tartan_agent_netpol_policies",
                "NetworkPolicies the agent knows: enforced, or unenforceable (they isolate what they select and allow nothing).",
            ),
            &["state"],
        )?;
        let isolated_pods = IntGaugeVec::new(
            Opts::new(
                "tartan_agent_netpol_isolated_pod_addresses",
                "Addresses of this node's pods isolated by NetworkPolicy, by direction.",
            ),
            &["direction"],
        )?;
        add(Box::new(drops.clone()))?;
        add(Box::new(applies.clone()))?;
        add(Box::new(apply_duration.clone()))?;
        add(Box::new(policies.clone()))?;
        add(Box::new(isolated_pods.clone()))?;
        for result in ["full", "incremental", "unchanged", "error"] {
            applies.with_label_values(&[result]);
        }
        for state in ["enforced", "unenforceable"] {
            policies.with_label_values(&[state]);
        }
        Ok(NetpolMetrics {
            drops,
            applies,
            apply_duration,
            policies,
            isolated_pods,
        })
    }

    pub fn record_state(&self, compiled: &Compiled, enforced: usize, unenforceable: usize) {
        self.policies
            .with_label_values(&["enforced"])
            .set(enforced as i64);
        self.policies
            .with_label_values(&["unenforceable"])
            .set(unenforceable as i64);
        for (direction, map) in [
            (Direction::Ingress, &compiled.ingress),
            (Direction::Egress, &compiled.egress),
        ] {
            self.isolated_pods
                .with_label_values(&[direction_label(direction)])
                .set(map.len() as i64);
        }
    }
}

/// Turns the kernel's per-group drop counters into per-policy increments,
/// across table replacements (a counter that went down was re-created).
#[derive(Default)]
pub struct DropTally {
    last: BTreeMap<String, u64>,
}

impl DropTally {
    pub fn record(
        &mut self,
        metrics: &NetpolMetrics,
        compiled: &Compiled,
        now: BTreeMap<String, u64>,
    ) {
        for (group_id, group) in &compiled.groups {
            let Some(&packets) = now.get(&group_id.0) else {
                continue;
            };
            let before = self.last.get(&group_id.0).copied().unwrap_or(0);
            let delta = if packets >= before {
                packets - before
            } else {
                packets
            };
            if delta == 0 {
                continue;
            }
            for policy in &group.policies {
                metrics
                    .drops
                    .with_label_values(&[
                        direction_label(group.direction),
                        &policy.namespace,
                        &policy.name,
                    ])
                    .inc_by(delta);
            }
        }
        self.last = now;
    }
}
