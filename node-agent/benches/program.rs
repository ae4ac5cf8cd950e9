//! `cargo bench -p tartan-agent --bench program` (root): programming 1,000 and
//! 5,000 peers from empty, Tartan's batched netlink against iproute2's
//! `-batch`, measured in the same run.

use tartan_agent::testbed::bench::best_of;

fn main() {
    if !tartan_agent::testbed::kernel_tests_allowed(&["ip", "bridge"]) {
        return;
    }
    let prefix = format!("tb{}", std::process::id() % 10_000);
    println!(
        "| peers | objects | tartan | iproute2 -batch | tartan / iproute2 | one peer joins | no-op resync |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for peers in [1_000, 5_000] {
        let f = best_of(3, &prefix, peers).expect("benchmark");
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.2} | {:.2} ms ({} changes) | {:.1} ms |",
            f.peers,
            f.objects,
            f.tartan.as_secs_f64() * 1e3,
            f.iproute2.as_secs_f64() * 1e3,
            f.tartan.as_secs_f64() / f.iproute2.as_secs_f64(),
            f.one_join.as_secs_f64() * 1e3,
            f.join_changes,
            f.noop_resync.as_secs_f64() * 1e3,
        );
    }
}
