//! Running BIRD: started and watched by the agent (`--bird managed`, what
//! the lab and the chart use) or one already running (`--bird-socket`). The
//! configuration is rendered, parsed by `bird -p`, written atomically, and
//! BIRD reconfigured only when it changed.
//!
//! A managed BIRD dies with the agent by SIGKILL (`PR_SET_PDEATHSIG`), so the
//! routes it installed stay while the agent restarts, and is started with
//! `-R` (graceful restart recovery): it keeps them until its sessions are back.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::{self, ConfigError};
use super::control::BirdControl;
use crate::netns::NetNs;
use crate::plan::BgpSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirdMode {
    /// The agent runs `bird` with its files in this directory.
    Managed { dir: PathBuf },
    /// A BIRD started by someone else from `config`, listening on `socket`.
    External { socket: PathBuf, config: PathBuf },
}

impl BirdMode {
    pub fn socket(&self) -> PathBuf {
        match self {
            BirdMode::Managed { dir } => dir.join("bird.ctl"),
            BirdMode::External { socket, .. } => socket.clone(),
        }
    }

    pub fn config(&self) -> PathBuf {
        match self {
            BirdMode::Managed { dir } => dir.join("bird.conf"),
            BirdMode::External { config, .. } => config.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("BIRD does not accept the rendered configuration: {0}")]
    Parse(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> BirdError {
    let context = context.into();
    move |source| BirdError::Io { context, source }
}

/// Checks a configuration with `bird -p` (parse only) before it is installed.
pub fn check(text: &str, scratch_dir: &Path) -> Result<(), BirdError> {
    std::fs::create_dir_all(scratch_dir).map_err(io_error("creating the BIRD directory"))?;
    let path = scratch_dir.join(format!(".bird.conf.check-{}", std::process::id()));
    // The configuration may hold BGP passwords: readable by root only.
    tartan_runtime::atomic_file::write_atomic_mode(&path, text.as_bytes(), 0o600)
        .map_err(io_error("writing the BIRD config for checking"))?;
    let out = std::process::Command::new("bird")
        .args(["-p", "-c"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(io_error("running bird -p"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BirdError::Parse(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

struct Managed {
    child: Option<Child>,
    started: Option<Instant>,
    restarts: u32,
}

/// This node's BIRD.
pub struct Bird {
    mode: BirdMode,
    netns: NetNs,
    installed: Option<String>,
    managed: Arc<Mutex<Managed>>,
    running: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl Bird {
    pub fn new(mode: BirdMode, netns: NetNs) -> Self {
        Self {
            mode,
            netns,
            installed: None,
            managed: Arc::new(Mutex::new(Managed {
                child: None,
                started: None,
                restarts: 0,
            })),
            running: Arc::new(AtomicBool::new(false)),
            supervisor: None,
        }
    }

    pub fn mode(&self) -> &BirdMode {
        &self.mode
    }

    /// Makes BIRD run `spec`. A configuration BIRD would refuse is never written.
    pub fn ensure(&mut self, spec: &BgpSpec) -> Result<(), BirdError> {
        let text = config::render(spec)?;
        let config_path = self.mode.config();
        let dir = config_path
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .to_path_buf();
        let changed = self.installed.as_deref() != Some(text.as_str())
            || std::fs::read_to_string(&config_path).ok().as_deref() != Some(text.as_str());
        if changed {
            check(&text, &dir)?;
            tartan_runtime::atomic_file::write_atomic_mode(&config_path, text.as_bytes(), 0o600)
                .map_err(io_error(format!("writing {}", config_path.display())))?;
        }
        match &self.mode {
            BirdMode::Managed { .. } => {
                let was_running = self.running.swap(true, Ordering::SeqCst);
                if !was_running {
                    self.start_supervisor()?;
                } else if changed {
                    self.reconfigure()?;
                }
            }
            BirdMode::External { .. } => {
                if changed {
                    self.reconfigure()?;
                }
            }
        }
        self.installed = Some(text);
        Ok(())
    }

    fn reconfigure(&self) -> Result<(), BirdError> {
        let socket = self.mode.socket();
        BirdControl::connect(&socket)
            .and_then(|mut c| c.configure())
            .map_err(io_error(format!(
                "birdc configure via {}",
                socket.display()
            )))
    }

    fn start_supervisor(&mut self) -> Result<(), BirdError> {
        spawn_bird(&self.mode, &self.netns, &self.managed)?;
        let (mode, netns) = (self.mode.clone(), self.netns.clone());
        let (managed, running) = (self.managed.clone(), self.running.clone());
        let handle = std::thread::Builder::new()
            .name("tartan-bird".into())
            .spawn(move || supervise(&mode, &netns, &managed, &running))
            .map_err(io_error("starting the BIRD supervisor"))?;
        self.supervisor = Some(handle);
        Ok(())
    }

    /// Stops BGP here: a managed BIRD is terminated (it withdraws its routes
    /// and closes its sessions); an external one gets a configuration without sessions.
    pub fn stop(&mut self) -> Result<(), BirdError> {
        self.installed = None;
        match &self.mode {
            BirdMode::Managed { .. } => {
                self.running.store(false, Ordering::SeqCst);
                if let Some(handle) = self.supervisor.take() {
                    let _ = handle.join();
                }
                let mut managed = self.managed.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(mut child) = managed.child.take() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Ok(())
            }
            BirdMode::External { config, .. } => {
                let idle =
                    "# tartan-agent: the bgp backend is off on this node.\nprotocol device {}\n";
                tartan_runtime::atomic_file::write_atomic(config, idle.as_bytes())
                    .map_err(io_error(format!("writing {}", config.display())))?;
                self.reconfigure()
            }
        }
    }

    /// The managed BIRD's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let managed = self.managed.lock().unwrap_or_else(|e| e.into_inner());
        managed.child.as_ref().map(Child::id)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // The agent stops: BIRD goes with it by SIGKILL, leaving the kernel as it is.
        self.running.store(false, Ordering::SeqCst);
        if let Some(handle) = self.supervisor.take() {
            let _ = handle.join();
        }
        let mut managed = self.managed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = managed.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_bird(mode: &BirdMode, netns: &NetNs, managed: &Mutex<Managed>) -> Result<(), BirdError> {
    let mut command = netns
        .command("bird")
        .map_err(io_error("entering the namespace"))?;
    command
        .args(["-f", "-R", "-c"])
        .arg(mode.config())
        .arg("-s")
        .arg(mode.socket())
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)
        });
    }
    let child = command.spawn().map_err(io_error("starting bird"))?;
    tracing::info!(pid = child.id(), config = %mode.config().display(), "BIRD started");
    let mut m = managed.lock().unwrap_or_else(|e| e.into_inner());
    m.child = Some(child);
    m.started = Some(Instant::now());
    Ok(())
}

/// Restarts BIRD when it exits, with a backoff from 2 s to 30 s.
fn supervise(mode: &BirdMode, netns: &NetNs, managed: &Mutex<Managed>, running: &AtomicBool) {
    let mut exited_at: Option<Instant> = None;
    while running.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let backoff = {
            let mut m = managed.lock().unwrap_or_else(|e| e.into_inner());
            let status = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = status {
                tracing::warn!(%status, "BIRD exited; restarting it");
                m.child = None;
                // A BIRD that ran for a minute starts over at the shortest backoff.
                if m.started
                    .is_some_and(|s| s.elapsed() > Duration::from_secs(60))
                {
                    m.restarts = 0;
                }
                m.restarts += 1;
                exited_at = Some(Instant::now());
            }
            if m.child.is_some() {
                continue;
            }
            Duration::from_secs(2u64.saturating_pow(m.restarts.min(5)).min(30))
        };
        if exited_at.is_none_or(|t| t.elapsed() >= backoff) {
            if let Err(e) = spawn_bird(mode, netns, managed) {
                tracing::warn!(error = %e, "starting BIRD failed; retrying");
            }
            exited_at = Some(Instant::now());
        }
    }
}
