//! The lab's datapath keepers: one process beside the agents daemon, serving
//! a keeper socket per node, as the keeper container beside each agent does
//! on a cluster. `restart` stops and starts the agents daemon and leaves
//! this process running, so the TUN datapaths' queues and sockets stay open
//! in between; `down` stops it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tartan_agent::keeper::{Keeper, Serving};

use crate::state::{self, LabState, node_dir};

/// Node `node`'s keeper socket.
pub fn socket(name: &str, node: &str) -> PathBuf {
    node_dir(name, node).join("keeper.sock")
}

pub fn client(name: &str, node: &str) -> Keeper {
    Keeper::at(socket(name, node))
}

fn pid_file(name: &str) -> PathBuf {
    state::dir(name).join("keeper.pid")
}

/// Starts the keepers' process and waits until every node's socket is there.
pub fn start(name: &str, nodes: &[String]) -> anyhow::Result<()> {
    let pid =
        crate::lifecycle::spawn_daemon(name, "keeper").context("starting the datapath keepers")?;
    std::fs::write(pid_file(name), pid.to_string())?;
    let start = Instant::now();
    while !nodes.iter().all(|n| socket(name, n).exists()) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the datapath keepers did not listen within 10 s (see keeper.log)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// SIGTERM to the keepers' process, if it runs, and a wait (2 s at most)
/// until it is gone: what it held is closed.
pub fn stop(name: &str) {
    let Ok(pid) = std::fs::read_to_string(pid_file(name)) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    let start = Instant::now();
    while nix::sys::signal::kill(pid, None).is_ok() && start.elapsed() < Duration::from_secs(2) {
        // The keeper is our child only when `up` ran in this process.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The hidden `keeper` command: a keeper per node until SIGTERM.
pub fn run(name: &str) -> anyhow::Result<()> {
    let lab = LabState::load(name)?;
    let serving = (lab.nodes.iter())
        .map(|node| {
            std::fs::create_dir_all(node_dir(name, &node.name))?;
            Serving::start(&socket(name, &node.name)).context("a node's datapath keeper")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::sigterm::wait();
    for keeper in serving {
        keeper.stop().context("a node's datapath keeper")?;
    }
    Ok(())
}
