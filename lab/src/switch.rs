//! `switch`: changes the lab's backend the way a live cluster does, while a
//! ping flow at 100 packets a second runs between pods on different nodes.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tartan_crds::BackendType;

use crate::lifecycle::wait_converged;
use crate::state::LabState;

#[derive(Debug, Clone)]
pub struct SwitchResult {
    pub from: BackendType,
    pub to: BackendType,
    pub sent: u64,
    pub received: u64,
    pub longest_gap: Duration,
    pub rounds: u64,
}

impl SwitchResult {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

const INTERVAL: Duration = Duration::from_millis(10);
/// Requests of the flow that may be unanswered when it is stopped.
const IN_FLIGHT_AT_STOP: u64 = 3;

pub fn switch(
    name: &str,
    to: BackendType,
    direct_routing: Option<bool>,
) -> anyhow::Result<SwitchResult> {
    let mut lab = LabState::load(name)?;
    // With a control plane, someone may have switched with kubectl: ask the nodes.
    let reported = crate::state::AgentsReport::load(name).ok().and_then(|r| {
        r.subnets
            .first()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.backend)
    });
    let from = if lab.control_plane {
        reported.unwrap_or(lab.network.backend.type_)
    } else {
        lab.network.backend.type_
    };
    let rounds_before = crate::state::AgentsReport::load(name)
        .map(|r| r.rounds)
        .unwrap_or(0);
    let flow = PingFlow::start(&lab)?;
    lab.network.backend.type_ = to;
    if let Some(direct) = direct_routing {
        lab.network.backend.vxlan.direct_routing = direct;
    }
    lab.network.validate().context("the new backend")?;
    lab.generation += 1;
    lab.save()?;
    let report = wait_converged(name, lab.generation, Duration::from_secs(30));
    let (sent, received, longest_gap) = flow.finish()?;
    let report = report?;
    Ok(SwitchResult {
        from,
        to,
        sent,
        received,
        longest_gap,
        rounds: report.rounds - rounds_before,
    })
}

/// A ping at 100/s from the lab's first pod to a pod on another node.
pub struct PingFlow {
    ping: std::process::Child,
}

impl PingFlow {
    /// Starts the flow and lets it run half a second.
    pub fn start(lab: &LabState) -> anyhow::Result<PingFlow> {
        let (Some(a), Some(b)) = (
            lab.pods.first(),
            lab.pods.iter().find(|p| p.node != lab.pods[0].node),
        ) else {
            bail!("the lab needs pods on two nodes for a flow");
        };
        let ping = Command::new("ip")
            .args(["netns", "exec", &a.netns, "ping", "-i", "0.01", "-W", "1"])
            .arg(b.ip.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the ping flow")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(PingFlow { ping })
    }

    /// Lets it run half a second more, stops it: sent, received, longest gap.
    pub fn finish(mut self) -> anyhow::Result<(u64, u64, Duration)> {
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.ping.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let mut output = String::new();
        self.ping
            .stdout
            .take()
            .context("ping output")?
            .read_to_string(&mut output)?;
        let _ = self.ping.wait();
        parse_ping(&output)
    }
}

/// Transmitted, received, and the longest run of missing sequence numbers as time.
pub fn parse_ping(output: &str) -> anyhow::Result<(u64, u64, Duration)> {
    let mut seqs: Vec<u64> = output
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let summary = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("ping printed no summary")?;
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (mut sent, received) = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
    );
    // The flow is stopped with SIGINT; requests still in flight then (a few
    // on a busy machine) are not lost: a path broken at the end loses the 50
    // sent in the last 500 ms, and shows.
    let last = seqs.last().copied().unwrap_or(0);
    if sent > last && sent - last <= IN_FLIGHT_AT_STOP {
        sent = last;
    }
    let mut gap = 0;
    let mut previous = 0;
    for seq in seqs.iter().copied().chain(std::iter::once(sent + 1)) {
        gap = gap.max(seq.saturating_sub(previous).saturating_sub(1));
        previous = seq;
    }
    Ok((
        sent,
        received,
        INTERVAL * u32::try_from(gap).unwrap_or(u32::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loss_and_the_longest_gap() {
        let out = "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
                   64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.1 ms\n\
                   64 bytes from 10.244.2.2: icmp_seq=6 ttl=62 time=0.1 ms\n\
                   \n--- 10.244.2.2 ping statistics ---\n\
                   6 packets transmitted, 3 received, 50% packet loss, time 50ms\n";
        let (sent, received, gap) = parse_ping(out).expect("parses");
        assert_eq!((sent, received), (6, 3));
        assert_eq!(gap, Duration::from_millis(30));
    }

    #[test]
    fn the_request_in_flight_at_the_stop_is_not_a_loss() {
        let out = "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
                   64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.1 ms\n\
                   \n--- 10.244.2.2 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33% packet loss, time 20ms\n";
        let (sent, received, gap) = parse_ping(out).expect("parses");
        assert_eq!((sent, received, gap), (2, 2, Duration::ZERO));
    }
}
