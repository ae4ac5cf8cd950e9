//! Every metric the agent promises appears on /metrics, and the text passes
//! `promtool check metrics`.

use tartan_agent::metrics::Metrics;

const PROMISED: &[&str] = &[
    "tartan_agent_peers",
    "tartan_agent_kernel_objects",
    "tartan_agent_applies_total",
    "tartan_agent_apply_duration_seconds",
    "tartan_agent_netlink_changes_total",
    "tartan_agent_drift_repairs_total",
    "tartan_agent_apply_errors_total",
    "tartan_agent_backend_info",
    "tartan_agent_convergence_lag_seconds",
    "tartan_agent_watch_errors_total",
    "tartan_agent_status_writes_total",
    "tartan_agent_wireguard_packets_total",
    "tartan_agent_wireguard_bytes_total",
    "tartan_agent_wireguard_drops_total",
    "tartan_agent_wireguard_handshakes_total",
    "tartan_agent_wireguard_peers",
    "tartan_agent_wireguard_oldest_handshake_age_seconds",
    "tartan_agent_datapath_keeper_total",
];

fn exposition() -> String {
    let m = Metrics::new().expect("metrics");
    m.kernel_objects.with_label_values(&["route"]).set(2);
    m.backend_info.with_label_values(&["vxlan"]).set(1);
    m.apply_duration.observe(0.004);
    m.convergence_lag.observe(0.3);
    m.render()
}

#[test]
fn every_promised_metric_is_exposed() {
    let text = exposition();
    for name in PROMISED {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
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
