//! The enforcement loop: once the three watches have listed, compile on each
//! change (a burst is one apply), apply the difference in one transaction,
//! count drops, and now and then replace the table whole (drift repair).
//!
//! Nothing is applied before every watch has listed: an agent restarting
//! with policies in force keeps the kernel's table until it knows them all,
//! rather than opening isolated pods with a half-empty one.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::apply::{Applied, NftError, PolicyTable};
use super::compile::Compiled;
use super::index::PolicyIndex;
use super::metrics::{DropTally, NetpolMetrics};
use crate::netns::NetNs;
use crate::sysctl::Sysctls;
use crate::watch::Sink;

/// Changes this close together are one apply.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often the kernel's drop counters are read into the metrics.
const COUNTERS_EVERY: Duration = Duration::from_secs(10);

/// Bridged pod-to-pod traffic (same node) reaches the inet hooks only with these.
pub const BRIDGE_SYSCTLS: [(&str, &str); 2] = [
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
];

pub struct EnforcerConfig {
    pub netns: NetNs,
    pub sysctls: Sysctls,
    pub resync: Duration,
}

/// Runs until `stop` resolves.
pub async fn run(
    sink: Sink<PolicyIndex>,
    mut changes: watch::Receiver<u64>,
    config: EnforcerConfig,
    metrics: NetpolMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    if let Err(e) = config.sysctls.ensure(&config.netns, &BRIDGE_SYSCTLS) {
        tracing::warn!(error = %e, "cannot make bridged traffic visible to nftables; same-node policy is not enforced");
    }
    let netns = config.netns.clone();
    let Ok(table) = tokio::task::spawn_blocking(move || PolicyTable::new(netns)).await else {
        return;
    };
    let mut enforcer = Enforcer {
        table: Some(table),
        tally: DropTally::default(),
        applied: Compiled::default(),
        metrics,
    };
    // The first apply (once synced) is whole anyway: the first resync waits a period.
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + config.resync, config.resync);
    let mut counters = tokio::time::interval(COUNTERS_EVERY);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                changes.borrow_and_update();
            }
            _ = resync.tick() => enforcer.resync(),
            _ = counters.tick() => {
                enforcer.count_drops().await;
                continue;
            }
            () = &mut stop => return,
        }
        let Some(compiled) = compile_when_synced(&sink) else {
            continue;
        };
        enforcer.apply(compiled).await;
    }
}

fn compile_when_synced(sink: &Sink<PolicyIndex>) -> Option<(Compiled, usize, usize)> {
    let index = sink.index.lock().unwrap_or_else(|e| e.into_inner());
    if !index.synced() {
        return None;
    }
    let errors = index.errors.len();
    Some((index.compile(), index.policies.len() - errors, errors))
}

struct Enforcer {
    /// Taken while a blocking nft call runs.
    table: Option<PolicyTable>,
    tally: DropTally,
    applied: Compiled,
    metrics: NetpolMetrics,
}

impl Enforcer {
    fn resync(&mut self) {
        if let Some(table) = &mut self.table {
            table.resync();
        }
    }

    /// Runs `f` on the table off the async threads (nft is a process).
    async fn with_table<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut PolicyTable) -> T + Send + 'static,
    ) -> Option<T> {
        let mut table = self.table.take()?;
        let joined = tokio::task::spawn_blocking(move || {
            let out = f(&mut table);
            (table, out)
        })
        .await;
        let (table, out) = joined.ok()?;
        self.table = Some(table);
        Some(out)
    }

    async fn apply(&mut self, (compiled, enforced, unenforceable): (Compiled, usize, usize)) {
        let started = Instant::now();
        let target = compiled.clone();
        let result: Option<Result<Applied, NftError>> =
            self.with_table(move |table| table.apply(&target)).await;
        let label = match result {
            Some(Ok(Applied::Full)) => "full",
            Some(Ok(Applied::Incremental)) => "incremental",
            Some(Ok(Applied::Unchanged)) => "unchanged",
            Some(Err(e)) => {
                tracing::error!(error = %e, "NetworkPolicy table not applied; retrying at the next change or resync");
                "error"
            }
            None => "error",
        };
        self.metrics.applies.with_label_values(&[label]).inc();
        if label == "full" || label == "incremental" {
            tracing::info!(
                update = label,
                enforced,
                unenforceable,
                isolated_ingress = compiled.ingress.len(),
                isolated_egress = compiled.egress.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "NetworkPolicy table applied"
            );
        }
        if label != "error" {
            self.metrics
                .apply_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .record_state(&compiled, enforced, unenforceable);
            self.applied = compiled;
        }
    }

    async fn count_drops(&mut self) {
        let Some(Ok(drops)) = self.with_table(|table| table.drops()).await else {
            return;
        };
        self.tally.record(&self.metrics, &self.applied, drops);
    }
}
