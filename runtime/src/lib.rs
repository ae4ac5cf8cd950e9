//! Plumbing both binaries need and neither should own: a Kubernetes client
//! from `--kubeconfig` or the environment, structured logging, a shutdown
//! signal, the `/metrics` `/healthz` `/readyz` server, RBAC rule builders,
//! atomic file writes (`atomic_file`), the folding of a watch's relists
//! into deltas (`relist`), the client-side API rate limit (`ratelimit`) and
//! retry delays (`backoff`). No Tartan logic lives here.

pub mod atomic_file;
pub mod backoff;
pub mod ratelimit;
pub mod relist;

pub use ratelimit::RateLimit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::client::ClientBuilder;
use kube::{Client, Config};
use tokio::sync::watch;

/// `--log-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the `tracing` subscriber (RUST_LOG, default `info,kube=warn`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A client from an explicit kubeconfig, else KUBECONFIG / ~/.kube/config /
/// in-cluster, limited to kubelet's default rate ([`RateLimit::DEFAULT`]).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    client_with(kubeconfig, RateLimit::DEFAULT).await
}

/// [`client`] with the rate limit from `--kube-api-qps` / `--kube-api-burst`.
pub async fn client_with(kubeconfig: Option<&Path>, limit: RateLimit) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("finding a kubeconfig or in-cluster config")?,
    };
    let builder = ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    Ok(builder
        .with_layer(&ratelimit::RateLimitLayer::new(limit))
        .build())
}

/// Flips to true on SIGTERM or SIGINT.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Installs the signal handlers.
    pub fn on_signals() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once shutdown was asked for.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// What the probes server reports.
pub struct Probes {
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Probes {
    pub fn new(
        metrics: impl Fn() -> String + Send + Sync + 'static,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            metrics: Arc::new(metrics),
            ready: Arc::new(ready),
        }
    }
}

pub fn router(probes: Probes) -> Router {
    let Probes { metrics, ready } = probes;
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// Serves `/metrics`, `/healthz`, `/readyz` until `shutdown` resolves.
pub async fn serve_probes(
    addr: SocketAddr,
    probes: Probes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(probes))
        .with_graceful_shutdown(shutdown)
        .await
}

/// One RBAC rule.
pub fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}
