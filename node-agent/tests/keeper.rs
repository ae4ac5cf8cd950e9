//! The datapath keeper on the real kernel, when it is itself replaced: the
//! running agent hands the udp datapath to the new keeper within seconds, and
//! an agent that stops before then hands it over on its way out, so a
//! restart right after a keeper replacement loses nothing either. Needs root,
//! iproute2, nft, ping, iperf3 and the CNI plugins.

mod common;

use std::time::Duration;

use common::fixture::{pings, udp_fixture};
use common::{eventually, ping_flow};
use tartan_agent::plan::TUN;

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn a_replaced_keeper_is_handed_the_datapath_so_a_restart_after_it_loses_nothing() {
    let mut f = udp_fixture("ur", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    f.replace_keeper(0);
    assert!(
        f.keepers[0].get(TUN).expect("get").is_none(),
        "a new keeper holds nothing"
    );
    // Within seconds, not at the next resync (300 s here).
    eventually("the running agent hands over to the new keeper", || {
        f.keepers[0].get(TUN).expect("get").is_some()
    });
    let (sent, lost) = ping_flow(&a, b_ip, || f.restart_plane(0, Duration::from_millis(300)));
    eprintln!("udp restart after a keeper replacement: {sent} sent, {lost} lost");
    assert_eq!(lost, 0, "{sent} sent, {lost} lost");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn an_agent_restarted_right_after_a_keeper_replacement_hands_over_on_its_way_out() {
    let mut f = udp_fixture("uk", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    let (sent, lost) = ping_flow(&a, b_ip, || {
        // No wait for the running agent's 2 s check: it stops at once.
        f.replace_keeper(0);
        f.restart_plane(0, Duration::from_millis(300));
    });
    eprintln!("udp restart right after a keeper replacement: {sent} sent, {lost} lost");
    assert!(sent >= 50, "the flow ran: {sent}");
    assert_eq!(lost, 0, "{sent} sent, {lost} lost");
    let taken_back = (f.metrics.datapath_keeper)
        .with_label_values(&["taken_back"])
        .get();
    assert_eq!(
        taken_back, 1,
        "the new agent took the queues from the new keeper"
    );
}
