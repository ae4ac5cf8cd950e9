//! Where the CPU goes while a TUN datapath (udp, wireguard) carries a TCP
//! stream: the datapath threads' own code (user time), the kernel work they
//! do in their system calls, everything else that was busy, and idle, from
//! `/proc`, over the iperf run. With both nodes on one 2-core host the path
//! is CPU-bound, so this says how far improving the agent's code could go:
//! the ceiling if the datapath's user time cost nothing at all.

use std::fs;
use std::io;

use super::scale::procfs::parse_times;

/// Thread names of the TUN datapaths' loops (see `udp::mod`, `wireguard::mod`).
const DATAPATH_THREADS: [&str; 2] = ["tartan-udp-", "tartan-wg-"];

/// Cumulative CPU ticks at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// All CPUs, every state but idle, iowait and steal.
    pub busy: u64,
    pub idle: u64,
    /// Time the hypervisor ran someone else on our CPUs.
    pub steal: u64,
    /// Datapath threads, in their own code.
    pub datapath_user: u64,
    /// Datapath threads, in the kernel (their system calls and the softirqs they ran).
    pub datapath_system: u64,
}

impl CpuTicks {
    pub fn now() -> io::Result<Self> {
        let mut ticks = parse_proc_stat(&fs::read_to_string("/proc/stat")?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: no cpu line"))?;
        for process in fs::read_dir("/proc")?.flatten() {
            let Ok(tasks) = fs::read_dir(process.path().join("task")) else {
                continue;
            };
            for task in tasks.flatten() {
                // Threads come and go while we walk: a vanished one is skipped.
                let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                if let Some((comm, user, system)) = parse_times(&stat)
                    && DATAPATH_THREADS.iter().any(|p| comm.starts_with(p))
                {
                    ticks.datapath_user += user;
                    ticks.datapath_system += system;
                }
            }
        }
        Ok(ticks)
    }
}

/// The aggregate `cpu` line of `/proc/stat`, datapath fields zero.
fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(CpuTicks {
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        idle: field(3) + field(4),
        steal: field(7),
        ..CpuTicks::default()
    })
}

/// Shares of the machine's CPU between two snapshots, as fractions of all
/// ticks that were not stolen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    pub datapath_user: f64,
    pub datapath_system: f64,
    /// Busy, but not a datapath thread: iperf3, the softirqs it ran, the rest.
    pub other_busy: f64,
    pub idle: f64,
    /// Stolen by the hypervisor, as a fraction of all ticks including it.
    pub steal: f64,
    /// CPU seconds the shares are of (both cores, not stolen).
    pub seconds: f64,
}

impl CpuShare {
    pub fn between(before: &CpuTicks, after: &CpuTicks, ticks_per_second: u64) -> Option<Self> {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
        let busy = d(before.busy, after.busy);
        let idle = d(before.idle, after.idle);
        let steal = d(before.steal, after.steal);
        let total = busy + idle;
        if total <= 0.0 {
            return None;
        }
        // Per-thread and per-CPU ticks are sampled apart: keep the split inside busy.
        let user = d(before.datapath_user, after.datapath_user).min(busy);
        let system = d(before.datapath_system, after.datapath_system).min(busy - user);
        Some(CpuShare {
            datapath_user: user / total,
            datapath_system: system / total,
            other_busy: (busy - user - system) / total,
            idle: idle / total,
            steal: steal / (total + steal),
            seconds: total / ticks_per_second.max(1) as f64,
        })
    }

    /// Throughput if the datapath's user time, except `kept` of it (the
    /// AEAD, which no datapath can skip), were free and the machine stayed as
    /// busy: the same bytes for less CPU.
    pub fn ceiling(&self, gbps: f64, kept: f64) -> f64 {
        let busy = 1.0 - self.idle;
        let without = busy - (self.datapath_user - kept).max(0.0);
        if without <= 0.0 {
            return f64::INFINITY;
        }
        gbps * busy / without
    }
}

/// One TUN path's run: its label, throughput and CPU split.
pub struct CpuRow {
    pub label: String,
    pub gbps: f64,
    pub share: CpuShare,
    /// Of the datapath's user time, what its AEAD takes (a share of all CPU),
    /// for the encrypted path.
    pub aead: Option<f64>,
}

/// The AEAD's share of the run's CPU: `bytes` of payload encrypted once and
/// decrypted once at `seconds_per_byte`, clamped to the datapath's user time.
pub fn aead_share(share: &CpuShare, bytes: f64, seconds_per_byte: f64) -> f64 {
    (bytes * seconds_per_byte / share.seconds.max(f64::MIN_POSITIVE)).min(share.datapath_user)
}

/// The Markdown section for the TUN paths' runs, their ceilings as ratios
/// to the same run's kernel VXLAN.
pub fn section(rows: &[CpuRow], kernel_vxlan: f64) -> String {
    let mut md = String::from(
        "\n## Where the CPU goes on the TUN paths (the runs above)\n\nShares of both cores during each run, from `/proc`. The AEAD is the encrypted path's ChaCha20-Poly1305 (boringtun), the run's bytes at the cost measured alone on this CPU. The ceiling is the throughput if the datapath threads' own code (user time) except the AEAD cost nothing and the CPU stayed as busy: what no change to the agent's code can beat while the kernel work (TUN and UDP system calls, both nodes' stacks) stays.\n\n| path | Gbit/s | datapath, own code | of it, the AEAD | datapath, in the kernel | rest busy (iperf3, its softirqs) | idle | steal | ceiling, Gbit/s | ceiling / kernel VXLAN |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let pct = |f: f64| format!("{:.0}%", f * 100.0);
    for row in rows {
        let s = &row.share;
        let ceiling = s.ceiling(row.gbps, row.aead.unwrap_or(0.0));
        md.push_str(&format!(
            "| {} | {:.2} | {} | {} | {} | {} | {} | {} | {ceiling:.2} | {:.2} |\n",
            row.label,
            row.gbps,
            pct(s.datapath_user),
            row.aead.map(pct).unwrap_or_else(|| "none".into()),
            pct(s.datapath_system),
            pct(s.other_busy),
            pct(s.idle),
            pct(s.steal),
            ceiling / kernel_vxlan,
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_splits_into_busy_idle_and_steal() {
        let stat = "cpu  100 5 50 800 20 3 7 9 0 0\ncpu0 50 2 25 400 10 1 3 4 0 0\n";
        let ticks = parse_proc_stat(stat).expect("parsed");
        assert_eq!(ticks.busy, 100 + 5 + 50 + 3 + 7);
        assert_eq!(ticks.idle, 820);
        assert_eq!(ticks.steal, 9);
    }

    #[test]
    fn shares_add_up_and_the_ceiling_removes_only_user_time() {
        let before = CpuTicks::default();
        let after = CpuTicks {
            busy: 900,
            idle: 100,
            steal: 0,
            datapath_user: 90,
            datapath_system: 400,
        };
        let share = CpuShare::between(&before, &after, 100).expect("ticks passed");
        assert!((share.seconds - 10.0).abs() < 1e-9);
        let sum = share.datapath_user + share.datapath_system + share.other_busy + share.idle;
        assert!((sum - 1.0).abs() < 1e-9, "{share:?}");
        assert!((share.datapath_user - 0.09).abs() < 1e-9);
        // 0.9 busy, 0.81 of it without the user time: 10 Gbit/s → 11.11.
        assert!((share.ceiling(10.0, 0.0) - 10.0 * 0.9 / 0.81).abs() < 1e-9);
        // The AEAD stays: only 0.04 of user time can go.
        assert!((share.ceiling(10.0, 0.05) - 10.0 * 0.9 / 0.86).abs() < 1e-9);
        // 2 GB at 1 ns a byte is 2 s of the run's 10 s, more than its user time.
        assert!((aead_share(&share, 2e9, 1e-9) - 0.09).abs() < 1e-9);
        assert!((aead_share(&share, 0.5e9, 1e-9) - 0.05).abs() < 1e-9);
    }

    #[test]
    fn thread_ticks_beyond_the_machines_are_clamped_and_no_time_is_none() {
        let after = CpuTicks {
            busy: 10,
            idle: 0,
            steal: 0,
            datapath_user: 30,
            datapath_system: 30,
        };
        let share = CpuShare::between(&CpuTicks::default(), &after, 100).expect("ticks passed");
        assert_eq!(share.datapath_user, 1.0);
        assert_eq!(share.datapath_system, 0.0);
        assert!(share.ceiling(1.0, 0.0).is_infinite());
        assert_eq!(CpuShare::between(&after, &after, 100), None);
    }
}
