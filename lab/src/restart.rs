//! `restart`: stops the lab's agents and starts them again, as an upgrade
//! restarts an agent, while a ping flow at 100 packets a second runs between
//! pods on different nodes: what a restart costs the pods.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::lifecycle::{agents_alive, start_agents, wait_converged};
use crate::state::{AgentsReport, LabState};
use crate::switch::PingFlow;

#[derive(Debug, Clone)]
pub struct RestartResult {
    pub sent: u64,
    pub received: u64,
    pub longest_gap: Duration,
    /// From the stop signal to the new agents' first convergence.
    pub down_for: Duration,
}

pub fn restart(name: &str) -> anyhow::Result<RestartResult> {
    let lab = LabState::load(name)?;
    anyhow::ensure!(
        !lab.control_plane,
        "a control-plane lab's agents are real agents: restart one with kill"
    );
    let flow = PingFlow::start(&lab)?;
    let started = Instant::now();
    stop_agents(name)?;
    // The new agents plan and apply everything once, as a restarted agent does.
    let mut report = AgentsReport::load(name)?;
    report.converged_generation = None;
    report.save(name)?;
    start_agents(name)?;
    let converged = wait_converged(name, lab.generation, Duration::from_secs(30));
    let down_for = started.elapsed();
    let (sent, received, longest_gap) = flow.finish()?;
    converged?;
    Ok(RestartResult {
        sent,
        received,
        longest_gap,
        down_for,
    })
}

/// SIGTERM to the agents, then waits until they are gone.
fn stop_agents(name: &str) -> anyhow::Result<()> {
    let pid: i32 = std::fs::read_to_string(crate::state::dir(name).join("agents.pid"))
        .context("the lab's agents.pid")?
        .trim()
        .parse()
        .context("agents.pid holds no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .context("signalling the agents")?;
    let start = Instant::now();
    while agents_alive(name) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the agents did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
