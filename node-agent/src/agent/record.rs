//! The agent's peer metrics: programmed, pending and problem peers, the
//! backend, and the convergence lag of peers that joined after the start.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tartan_crds::BackendType;

use super::{Agent, Programmer};
use crate::plan::{DesiredState, PeerProblem};
use crate::watch::{PeerChange, ReadyInputs};

impl<P: Programmer> Agent<P> {
    /// After a full plan: the gauges, and the lag of every newly programmed peer.
    pub(super) fn record_all(
        &mut self,
        ready: &ReadyInputs,
        desired: &DesiredState,
        applied: bool,
    ) {
        record_gauges(&self.metrics, desired);
        if !applied {
            return;
        }
        for peer in desired.peer_backends.keys() {
            let created = ready.peer_created.get(peer);
            self.observe_programmed(peer, created);
        }
        self.programmed
            .retain(|p| desired.peer_backends.contains_key(p));
    }

    /// After peer changes: the gauges, and the lag of the changed peers only.
    pub(super) fn record_peers(&mut self, changes: &[PeerChange]) {
        let Some(current) = &self.current else { return };
        record_gauges(&self.metrics, &current.desired);
        let sent: Vec<bool> = (changes.iter())
            .map(|c| {
                (c.peer.as_ref())
                    .is_some_and(|p| current.desired.peer_backends.contains_key(&p.name))
            })
            .collect();
        for (change, sent) in changes.iter().zip(sent) {
            if sent {
                self.observe_programmed(&change.name, change.created.as_ref());
            } else {
                self.programmed.remove(&change.name);
            }
        }
    }

    /// The first time `peer` is programmed, how long after its NodeSubnet
    /// was created (only for peers that joined after this agent started).
    fn observe_programmed(&mut self, peer: &str, created: Option<&Time>) {
        if self.programmed.insert(peer.to_string())
            && let Some(created) = created
            && created.0 > self.started
        {
            let now = Timestamp::now();
            self.metrics
                .convergence_lag
                .observe(now.duration_since(created.0).as_secs_f64().max(0.0));
        }
    }
}

fn record_gauges(m: &crate::metrics::Metrics, desired: &DesiredState) {
    let peers_with = |pending: bool| {
        (desired.peer_problems.iter())
            .filter(|p| matches!(p, PeerProblem::Pending { .. }) == pending)
            .map(|p| p.peer())
            .collect::<BTreeSet<_>>()
    };
    let pending = peers_with(true);
    let problem = peers_with(false);
    let problem = problem.difference(&pending).count();
    m.peers
        .with_label_values(&["programmed"])
        .set(desired.peer_backends.len() as i64);
    m.peers
        .with_label_values(&["pending"])
        .set(pending.len() as i64);
    m.peers.with_label_values(&["problem"]).set(problem as i64);
    for backend in BackendType::ALL {
        m.backend_info
            .with_label_values(&[backend.as_str()])
            .set(i64::from(backend == desired.backend));
    }
}
