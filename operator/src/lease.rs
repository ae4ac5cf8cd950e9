//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! ```text
//!   standby ──(holder gone, or record unchanged for a lease duration)──▶ apply
//!   apply: server-side apply carrying the last seen resourceVersion, so of two
//!          replicas racing for one record exactly one wins; the other gets 409
//!   leader ──renew every `renew_every`──▶ claim valid until start-of-renew + duration
//! ```
//!
//! Expiry is judged by when *this* replica last saw the record change, never by
//! comparing another node's `renewTime` with our clock (clock skew). Every write
//! the operator makes first checks [`Leadership::is_leader`], which turns false
//! as soon as the claim could have lapsed, before a standby can take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
    pub field_manager: &'static str,
}

/// Until when this replica may write (None: it may not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    until: Option<Instant>,
}

/// A handle every writer checks before writing.
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<Claim>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.rx.borrow().until.is_some_and(|t| Instant::now() < t)
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            if self.rx.changed().await.is_err() {
                // The lease task ended; `is_leader` is false from now on.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A handle that always leads: single-replica runs and tests.
    pub fn always() -> Self {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(Claim { until: Some(far) });
        // Keep the sender alive so `changed()` never reports closed.
        std::mem::forget(tx);
        Self { rx }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lost the lease {0}: could not renew before it expired")]
    Lost(String),
    #[error("lease API: {0}")]
    Kube(#[from] kube::Error),
}

/// What this replica last saw of the record, and when.
struct Seen {
    resource_version: Option<String>,
    holder: Option<String>,
    at: Instant,
}

pub struct LeaseManager {
    api: Api<Lease>,
    config: LeaseConfig,
    tx: watch::Sender<Claim>,
    metrics: Arc<Metrics>,
}

impl LeaseManager {
    pub fn new(api: Api<Lease>, config: LeaseConfig, metrics: Arc<Metrics>) -> (Self, Leadership) {
        let (tx, rx) = watch::channel(Claim { until: None });
        (
            Self {
                api,
                config,
                tx,
                metrics,
            },
            Leadership { rx },
        )
    }

    /// Campaigns and renews until `shutdown` resolves (then releases the lease)
    /// or the lease is lost (then returns an error: the process should exit).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), LeaseError> {
        tokio::pin!(shutdown);
        let mut seen: Option<Seen> = None;
        loop {
            let attempt_started = Instant::now();
            let outcome = self.try_acquire_or_renew(&mut seen).await;
            let leading = match outcome {
                Ok(true) => {
                    self.set_claim(Some(attempt_started + self.config.duration));
                    true
                }
                Ok(false) => {
                    self.set_claim(None);
                    false
                }
                Err(e) => {
                    let was_leading = self.tx.borrow().until.is_some();
                    let lapsed = self.tx.borrow().until.is_none_or(|t| Instant::now() >= t);
                    tracing::warn!(error = %e, lease = %self.config.name, "lease request failed");
                    if was_leading && lapsed {
                        self.set_claim(None);
                        return Err(LeaseError::Lost(self.config.name.clone()));
                    }
                    was_leading
                }
            };
            let wait = if leading {
                self.config.renew_every
            } else {
                self.config.retry_every
            };
            tokio::select! {
                _ = &mut shutdown => {
                    if leading {
                        self.release().await;
                    }
                    self.set_claim(None);
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn set_claim(&self, until: Option<Instant>) {
        let was = self.tx.borrow().until.is_some();
        let now = until.is_some();
        if was != now {
            let direction = if now { "acquired" } else { "lost" };
            tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leadership {direction}");
            self.metrics
                .leader_transitions
                .with_label_values(&[direction])
                .inc();
        }
        self.metrics.is_leader.set(if now { 1.0 } else { 0.0 });
        self.tx.send_replace(Claim { until });
    }

    /// Returns whether this replica holds the lease after the attempt.
    async fn try_acquire_or_renew(&self, seen: &mut Option<Seen>) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            return self.create().await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let rv = current.resource_version();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = seen
            .as_ref()
            .is_none_or(|s| s.resource_version != rv || s.holder != holder);
        if changed {
            *seen = Some(Seen {
                resource_version: rv.clone(),
                holder: holder.clone(),
                at: now,
            });
        }
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(self.config.duration);
        let expired = seen
            .as_ref()
            .is_some_and(|s| now.duration_since(s.at) >= duration);
        if !(mine || holder.is_none() || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire_time = if mine {
            spec.acquire_time.clone()
        } else {
            Some(micro_now())
        };
        let lease = self.record(rv, acquire_time, transitions);
        let params = PatchParams::apply(self.config.field_manager).force();
        match self
            .api
            .patch(&self.config.name, &params, &Patch::Apply(&lease))
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote the record since we read it: they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn create(&self) -> Result<bool, kube::Error> {
        let lease = self.record(None, Some(micro_now()), 0);
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn record(
        &self,
        resource_version: Option<String>,
        acquire_time: Option<MicroTime>,
        transitions: i32,
    ) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time,
                renew_time: Some(micro_now()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// Hands the lease over at once on a clean shutdown (the standby need not wait it out).
    async fn release(&self) {
        let Ok(Some(current)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        let mut lease = self.record(
            current.resource_version(),
            spec.acquire_time,
            spec.lease_transitions.unwrap_or(0),
        );
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
        }
        let params = PatchParams::apply(self.config.field_manager).force();
        if let Err(e) = self
            .api
            .patch(&self.config.name, &params, &Patch::Apply(&lease))
            .await
        {
            tracing::warn!(error = %e, "releasing the lease");
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

#[cfg(test)]
mod tests;
