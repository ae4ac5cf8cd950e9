//! The agent's side of the pod source check: the table at start (the
//! kernel's bindings kept, those of vanished ports swept), the socket the
//! CNI plugin talks to, and the drop counter as a metric. Every table change
//! goes through one lock, so a DEL's read-then-delete never races an ADD.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::table::{self, Binding};
use super::{Reply, Request};
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::nft::NftError;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the pod source check table: {0}")]
    Nft(#[from] NftError),
    #[error("listening on {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a table task stopped: {0}")]
    Task(String),
    #[error("{field} {value:?}: only letters, digits and ._:@- (at most 128)")]
    Invalid { field: &'static str, value: String },
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub netns: NetNs,
    pub socket: PathBuf,
    /// How often vanished ports are swept.
    pub sweep: Duration,
}

struct Guard {
    netns: NetNs,
    lock: Mutex<()>,
    metrics: Arc<Metrics>,
}

/// Whether a link named `port` exists in `netns`.
fn port_exists(netns: &NetNs, port: &str) -> bool {
    netns
        .run(|| nix::net::if_::if_nametoindex(port).is_ok())
        .unwrap_or(true)
}

impl Guard {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NetNs) -> Result<T, NftError> + Send + 'static,
    ) -> Result<T, GuardError> {
        let netns = self.netns.clone();
        let _held = self.lock.lock().await;
        tokio::task::spawn_blocking(move || f(&netns))
            .await
            .map_err(|e| GuardError::Task(e.to_string()))?
            .map_err(GuardError::from)
    }

    /// Drops the bindings of ports that no longer exist; with `replace`,
    /// rewrites the table whole around the rest (start: drift repaired).
    async fn sweep(&self, replace: bool) -> Result<usize, GuardError> {
        self.blocking(move |netns| {
            let (alive, gone): (Vec<Binding>, Vec<Binding>) = table::bindings(netns)?
                .into_iter()
                .partition(|b| port_exists(netns, &b.port));
            if replace {
                table::replace(netns, &alive)?;
            } else {
                table::unbind(netns, &gone)?;
            }
            Ok(alive.len())
        })
        .await
    }

    async fn handle(&self, request: Request) -> Result<(), GuardError> {
        match request {
            Request::Add {
                container,
                port,
                ips,
            } => {
                for (field, value) in [("container", &container), ("port", &port)] {
                    if !table::safe(value) {
                        let value = value.clone();
                        return Err(GuardError::Invalid { field, value });
                    }
                }
                let binding = Binding {
                    container,
                    port,
                    ips: ips.into_iter().collect(),
                };
                self.blocking(move |netns| table::bind(netns, &binding))
                    .await?;
                self.metrics.pod_bindings.inc();
                Ok(())
            }
            Request::Del { container } => {
                let removed = self
                    .blocking(move |netns| {
                        let mine: Vec<Binding> = (table::bindings(netns)?.into_iter())
                            .filter(|b| b.container == container)
                            .collect();
                        table::unbind(netns, &mine)?;
                        Ok(mine.len())
                    })
                    .await?;
                self.metrics.pod_bindings.sub(removed as i64);
                Ok(())
            }
            Request::Check { container } => {
                let bound = self
                    .blocking(move |netns| {
                        Ok(table::bindings(netns)?
                            .iter()
                            .any(|b| b.container == container))
                    })
                    .await?;
                bound
                    .then_some(())
                    .ok_or_else(|| GuardError::Task("the container's port is not bound".into()))
            }
        }
    }
}

/// Sets the table up (bindings kept across an agent restart) and serves the
/// plugin on `config.socket` until the runtime stops.
pub async fn start(config: GuardConfig, metrics: Arc<Metrics>) -> Result<(), GuardError> {
    let guard = Arc::new(Guard {
        netns: config.netns.clone(),
        lock: Mutex::new(()),
        metrics,
    });
    let bound = guard.sweep(true).await?;
    guard.metrics.pod_bindings.set(bound as i64);
    let listener = listen(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), bound, "pod source check on");
    tokio::spawn(serve(listener, guard.clone()));
    tokio::spawn(count_and_sweep(guard, config.sweep));
    Ok(())
}

fn listen(path: &std::path::Path) -> Result<UnixListener, GuardError> {
    use std::os::unix::fs::PermissionsExt as _;
    let socket = |source| GuardError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(socket(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(socket)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket)?;
    Ok(listener)
}

async fn serve(listener: UnixListener, guard: Arc<Guard>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, guard.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a CNI plugin connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request line, one reply line.
async fn answer(stream: UnixStream, guard: Arc<Guard>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    let reply = match reader.read_line(&mut line).await {
        Err(e) => Reply {
            ok: false,
            error: Some(format!("reading the request: {e}")),
        },
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply {
                ok: false,
                error: Some(format!("not a request: {e}")),
            },
            Ok(request) => {
                let what = format!("{request:?}");
                match guard.handle(request).await {
                    Ok(()) => Reply {
                        ok: true,
                        error: None,
                    },
                    Err(e) => {
                        tracing::warn!(request = %what, error = %e, "pod source check");
                        Reply {
                            ok: false,
                            error: Some(e.to_string()),
                        }
                    }
                }
            }
        },
    };
    let text = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    let _ = write.write_all(format!("{text}\n").as_bytes()).await;
}

/// Every 10 s, the drop counter into the metric; every `sweep`, vanished ports.
async fn count_and_sweep(guard: Arc<Guard>, sweep: Duration) {
    let mut ticks = tokio::time::interval(Duration::from_secs(10));
    let mut last_sweep = tokio::time::Instant::now();
    let mut seen = 0u64;
    loop {
        ticks.tick().await;
        match guard.blocking(table::drops).await {
            Ok(total) => {
                guard
                    .metrics
                    .pod_source_drops
                    .inc_by(total.saturating_sub(seen));
                seen = total;
            }
            Err(e) => tracing::warn!(error = %e, "reading the pod source drop counter"),
        }
        if last_sweep.elapsed() >= sweep {
            last_sweep = tokio::time::Instant::now();
            match guard.sweep(false).await {
                Ok(bound) => guard.metrics.pod_bindings.set(bound as i64),
                Err(e) => tracing::warn!(error = %e, "sweeping vanished pod ports"),
            }
        }
    }
}
