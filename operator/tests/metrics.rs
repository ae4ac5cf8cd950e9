//! The operator's /metrics text passes `promtool check metrics` and has every
//! metric the README promises.

use tartan_operator::metrics::Metrics;

fn exposition() -> String {
    let m = Metrics::new().expect("metrics");
    m.subnets_capacity.with_label_values(&["ipv4"]).set(256.0);
    m.subnets_allocated.with_label_values(&["ipv4"]).set(3.0);
    m.reconcile_duration
        .with_label_values(&["node"])
        .observe(0.002);
    m.reconcile_errors
        .with_label_values(&["node", "kube"])
        .inc();
    m.is_leader.set(1.0);
    m.render()
}

#[test]
fn every_promised_metric_is_exposed() {
    let text = exposition();
    for name in [
        "tartan_operator_subnets_capacity",
        "tartan_operator_subnets_allocated",
        "tartan_operator_nodes_waiting_for_subnet",
        "tartan_operator_subnet_conflicts",
        "tartan_operator_allocations_total",
        "tartan_operator_reconcile_duration_seconds",
        "tartan_operator_reconcile_errors_total",
        "tartan_operator_is_leader",
        "tartan_operator_leader_transitions_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
#[ignore = "needs promtool (Debian package prometheus; make test installs it)"]
fn exposition_passes_promtool() {
    tartan_testbed::require_tools(&["promtool"]);
    if let Err(complaint) = tartan_testbed::promtool::check(&exposition()) {
        panic!("promtool check metrics: {complaint}");
    }
}
