//! `bench`: in one run, pod-to-pod TCP throughput (iperf3) across two nodes
//! for each backend, next to the raw underlay and hand-programmed kernel
//! VXLAN; the time to program 1,000 and 5,000 peers from empty (Tartan against
//! `ip -batch`), one peer joining 5,000, the process RSS holding 5,000, and
//! where the CPU goes on the TUN paths ([`cpu`]).
//! Written as Markdown and an SVG bar chart. `--scale N` is another
//! benchmark: Tartan at N nodes on a real API server ([`scale`]).

mod aead;
pub mod busy_poll;
mod chart;
pub mod cpu;
pub mod guard;
pub mod netpol;
pub mod program;
pub mod scale;
mod streams;

use std::path::Path;

use anyhow::{Context as _, bail};
use tartan_crds::{BackendType, OverlayNetworkSpec};
use tartan_testbed::{Topology, ip};

use crate::lifecycle::{UpOptions, down, up};
use crate::state::UdpDatapath;
use program::best_of;

#[derive(Debug, Clone)]
pub struct Throughput {
    pub label: String,
    pub gbps: f64,
}

/// TCP throughput from `client` to `server_ip` (where `server_netns` listens), in Gbit/s.
pub fn iperf(
    client: &str,
    server_netns: &str,
    server_ip: &str,
    seconds: u32,
) -> anyhow::Result<f64> {
    Ok(
        tartan_testbed::iperf::tcp(client, server_netns, server_ip, seconds)
            .context("iperf3")?
            .gbps,
    )
}

type Toggle = fn(&crate::state::LabState) -> anyhow::Result<()>;

/// What the throughput rows measure on top of plain vxlan: how to turn it on, and off.
const FEATURES: [(&str, Toggle, Toggle); 2] = [
    (
        "NetworkPolicy (default deny + allow)",
        netpol::enforce_default_deny_and_allow,
        netpol::remove_all,
    ),
    ("pod source check", guard::bind_all, guard::unbind_all),
];

/// Pod-to-pod TCP on one vxlan lab, `rounds` times with `off` then `on`
/// applied, alternating: the best without and the best with.
fn paired_throughput(
    name: &str,
    seconds: u32,
    rounds: usize,
    on: Toggle,
    off: Toggle,
) -> anyhow::Result<(f64, f64)> {
    let _ = down(name);
    let lab = up(UpOptions {
        name: name.into(),
        nodes: 2,
        pods_per_node: 1,
        network: OverlayNetworkSpec::with_cidr("10.244.0.0/16"),
        routed: false,
        control_plane: false,
        udp: UdpDatapath::Batched,
    })?;
    let (client, server) = (&lab.pods[0], &lab.pods[1]);
    let run = || {
        iperf(
            &client.netns,
            &server.netns,
            &server.ip.to_string(),
            seconds,
        )
    };
    let (mut without, mut with) = (0f64, 0f64);
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..rounds {
            off(&lab)?;
            without = without.max(run()?);
            on(&lab)?;
            with = with.max(run()?);
        }
        Ok(())
    })();
    down(name)?;
    result.map(|()| (without, with))
}

pub(crate) fn lab_throughput(
    name: &str,
    backend: BackendType,
    direct: bool,
    udp: UdpDatapath,
    seconds: u32,
) -> anyhow::Result<f64> {
    lab_throughput_and_cpu(name, backend, direct, udp, seconds, 1).map(|(run, _)| run.gbps)
}

/// [`lab_throughput`] over `streams` streams, with how the machine's CPU
/// was spent during the run.
fn lab_throughput_and_cpu(
    name: &str,
    backend: BackendType,
    direct: bool,
    udp: UdpDatapath,
    seconds: u32,
    streams: u32,
) -> anyhow::Result<(tartan_testbed::iperf::Transfer, cpu::CpuShare)> {
    let mut network = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    network.backend.type_ = backend;
    network.backend.vxlan.direct_routing = direct;
    let _ = down(name);
    let lab = up(UpOptions {
        name: name.into(),
        nodes: 2,
        pods_per_node: 1,
        network,
        routed: false,
        control_plane: false,
        udp,
    })?;
    let result = (|| {
        let before = cpu::CpuTicks::now().context("reading CPU time from /proc")?;
        let run = tartan_testbed::iperf::tcp_streams(
            &lab.pods[0].netns,
            &lab.pods[1].netns,
            &lab.pods[1].ip.to_string(),
            seconds,
            streams,
        )
        .context("iperf3")?;
        let after = cpu::CpuTicks::now().context("reading CPU time from /proc")?;
        let ticks = scale::procfs::clock_ticks_per_second()? as u64;
        let share = cpu::CpuShare::between(&before, &after, ticks)
            .context("no CPU time passed during the iperf run")?;
        anyhow::Ok((run, share))
    })();
    down(name)?;
    result
}

/// The underlay alone, and a VXLAN tunnel set up by hand with iproute2 (one
/// stream, and [`streams::STREAMS`]).
fn baselines(prefix: &str, seconds: u32) -> anyhow::Result<(f64, f64, f64)> {
    let topo = Topology::l2(prefix, 2)?;
    let (a, b) = (&topo.nodes[0], &topo.nodes[1]);
    let raw = iperf(&a.netns, &b.netns, &b.ip.to_string(), seconds)?;
    for (me, other, addr) in [(a, b, "10.99.0.1/24"), (b, a, "10.99.0.2/24")] {
        let (local, remote) = (me.ip.to_string(), other.ip.to_string());
        ip(&[
            "-n", &me.netns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dev", "eth0",
            "local", &local, "remote", &remote, "dstport", "4789",
        ])?;
        ip(&["-n", &me.netns, "link", "set", "vx0", "mtu", "1450", "up"])?;
        ip(&["-n", &me.netns, "addr", "add", addr, "dev", "vx0"])?;
    }
    let vxlan = iperf(&a.netns, &b.netns, "10.99.0.2", seconds)?;
    let vxlan_streams = tartan_testbed::iperf::tcp_streams(
        &a.netns,
        &b.netns,
        "10.99.0.2",
        seconds,
        streams::STREAMS,
    )
    .context("iperf3")?
    .gbps;
    Ok((raw, vxlan, vxlan_streams))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

pub fn run(out_dir: &Path, seconds: u32) -> anyhow::Result<String> {
    crate::lifecycle::require_root()?;
    let missing = tartan_testbed::missing(&["iperf3", "ip", "bridge", "nft"]);
    if !missing.is_empty() {
        bail!(
            "bench needs {} (make bench installs them)",
            missing.join(", ")
        );
    }
    let prefix = format!("tbench{}", std::process::id() % 10_000);
    let (raw, kernel_vxlan, kernel_vxlan_streams) = baselines(&prefix, seconds)?;
    let mut rows = vec![
        Throughput {
            label: "raw underlay (node to node)".into(),
            gbps: raw,
        },
        Throughput {
            label: "kernel VXLAN by hand (ip link)".into(),
            gbps: kernel_vxlan,
        },
    ];
    let mut cpu_rows = Vec::new();
    let aead_cost = aead::seconds_per_payload_byte(std::time::Duration::from_millis(500))?;
    let batched = UdpDatapath::Batched;
    for (label, backend, direct, udp) in [
        ("tartan vxlan", BackendType::Vxlan, false, batched),
        ("tartan host-gw", BackendType::HostGw, false, batched),
        (
            "tartan vxlan + directRouting",
            BackendType::Vxlan,
            true,
            batched,
        ),
        (
            "tartan udp (userspace, batched)",
            BackendType::Udp,
            false,
            batched,
        ),
        (
            "tartan wireguard (userspace, encrypted)",
            BackendType::Wireguard,
            false,
            batched,
        ),
        (
            "tartan udp, datagrams authenticated",
            BackendType::Udp,
            false,
            UdpDatapath::Authenticated,
        ),
        (
            "udp relay, one packet per system call (baseline)",
            BackendType::Udp,
            false,
            UdpDatapath::Unbatched,
        ),
    ] {
        let (run, share) = lab_throughput_and_cpu(
            &format!("bench{}", std::process::id() % 1000),
            backend,
            direct,
            udp,
            seconds,
            1,
        )?;
        let gbps = run.gbps;
        if matches!(backend, BackendType::Udp | BackendType::Wireguard) {
            let aead = (backend == BackendType::Wireguard)
                .then(|| cpu::aead_share(&share, run.bytes, aead_cost));
            cpu_rows.push(cpu::CpuRow {
                label: label.into(),
                gbps,
                share,
                aead,
            });
        }
        rows.push(Throughput {
            label: label.into(),
            gbps,
        });
        if udp == batched && matches!(backend, BackendType::Udp | BackendType::Wireguard) {
            let name = format!("bench{}", std::process::id() % 1000);
            rows.push(busy_poll::row(&name, backend, seconds, 5)?);
            rows.push(streams::row(&name, backend, seconds, kernel_vxlan_streams)?);
        }
        if label == "tartan vxlan" {
            // The same path with NetworkPolicy, then with the pod source
            // check, on both nodes, measured now.
            // Each feature on one lab, off and on in turn, so both see the
            // same noise: the ratio of the bests.
            let name = format!("bench{}", std::process::id() % 1000);
            for (what, on, off) in FEATURES {
                let (without, with) = paired_throughput(&name, seconds, 3, on, off)?;
                rows.push(Throughput {
                    label: format!(
                        "tartan vxlan + {what}: {:.2} of the same lab without ({without:.2} Gbit/s; best of 3 each, alternating)",
                        with / without
                    ),
                    gbps: with,
                });
            }
        }
    }
    let rss_before = rss_kib();
    let p1000 = best_of(3, &prefix, 1_000)?;
    let p5000 = best_of(3, &prefix, 5_000)?;
    let rss_after = rss_kib();

    let machine = machine();
    let mut md = format!(
        "# tartan-lab bench\n\n{machine}\n\n## Pod-to-pod TCP throughput (iperf3, {seconds} s, one stream unless the row says more)\n\n| path | Gbit/s | ratio to raw underlay | ratio to kernel VXLAN |\n|---|---:|---:|---:|\n"
    );
    for row in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} |\n",
            row.label,
            row.gbps,
            row.gbps / raw,
            row.gbps / kernel_vxlan
        ));
    }
    md.push_str(&cpu::section(&cpu_rows, kernel_vxlan));
    md.push_str(&programming_section(&p1000, &p5000, rss_before, rss_after));
    md.push_str(&netpol::section(&netpol::run(&prefix)?));
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("bench.md"), &md)?;
    chart::bars(&out_dir.join("throughput.svg"), &rows)?;
    Ok(md)
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), Linux {kernel}; all namespaces on one host, so the \"network\" is veth and memory bandwidth."
    )
}

/// `bench --programming-only`: just the peer-programming comparison (root, iproute2).
pub fn run_programming() -> anyhow::Result<String> {
    crate::lifecycle::require_root()?;
    let missing = tartan_testbed::missing(&["ip", "bridge"]);
    if !missing.is_empty() {
        bail!(
            "bench needs {} (make bench installs them)",
            missing.join(", ")
        );
    }
    let prefix = format!("tbench{}", std::process::id() % 10_000);
    let rss_before = rss_kib();
    let p1000 = best_of(3, &prefix, 1_000)?;
    let p5000 = best_of(3, &prefix, 5_000)?;
    let rss_after = rss_kib();
    let policy = netpol::run(&prefix)?;
    Ok(programming_section(&p1000, &p5000, rss_before, rss_after) + &netpol::section(&policy))
}

fn programming_section(
    p1000: &program::ProgramFigures,
    p5000: &program::ProgramFigures,
    rss_before: u64,
    rss_after: u64,
) -> String {
    let mut md = String::from(
        "\n## Programming peers from empty (same objects both ways, best of 3)\n\n| peers | objects | tartan | iproute2 `ip -batch` + `bridge -batch` | ratio |\n|---:|---:|---:|---:|---:|\n",
    );
    for f in [p1000, p5000] {
        md.push_str(&format!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.2} |\n",
            f.peers,
            f.objects,
            f.tartan.as_secs_f64() * 1e3,
            f.iproute2.as_secs_f64() * 1e3,
            f.tartan.as_secs_f64() / f.iproute2.as_secs_f64()
        ));
    }
    md.push_str(&format!(
        "\n- one peer joining with 5,000 present, by a full dump and diff: {:.1} ms ({} kernel changes)\n- the same join as the agent programs it (planned alone, only its objects sent): {:.3} ms ({} kernel changes), {:.0}x less\n- a no-op full resync at 5,000 peers: {:.1} ms\n- process RSS holding the 5,000-peer state: {} KiB ({} KiB before programming)\n",
        p5000.one_join.as_secs_f64() * 1e3,
        p5000.join_changes,
        p5000.delta_join.as_secs_f64() * 1e3,
        p5000.delta_changes,
        p5000.one_join.as_secs_f64() / p5000.delta_join.as_secs_f64().max(1e-9),
        p5000.noop_resync.as_secs_f64() * 1e3,
        rss_after,
        rss_before
    ));
    md
}
