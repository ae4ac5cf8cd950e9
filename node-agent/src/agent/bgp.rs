//! The agent's view of BGP while it runs: BIRD polled, and the grace a
//! newly expected session gets before Ready calls it down.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{Agent, Programmer};
use crate::plan::{BgpObserved, DesiredState};

impl<P: Programmer> Agent<P> {
    /// The expected BGP sessions still inside their grace period.
    pub(super) fn settling(&mut self, desired: &DesiredState) -> BTreeSet<String> {
        let now = Instant::now();
        let expected: BTreeSet<&str> = (desired.bgp.iter())
            .flat_map(|spec| spec.neighbors.iter().map(|n| n.name.as_str()))
            .collect();
        self.bgp_expected_since
            .retain(|name, _| expected.contains(name.as_str()));
        for name in expected {
            self.bgp_expected_since
                .entry(name.to_string())
                .or_insert(now);
        }
        (self.bgp_expected_since.iter())
            .filter(|(_, since)| now.duration_since(**since) < self.bgp_grace)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// BIRD's sessions and the BGP routes in the kernel.
    pub(super) async fn observe_bgp(&self) -> BgpObserved {
        let Some(socket) = self.bird_socket.clone() else {
            return BgpObserved::default();
        };
        let netns = self.netns.clone();
        let observed = tokio::task::spawn_blocking(move || crate::bgp::observe(&netns, &socket))
            .await
            .unwrap_or_default();
        self.metrics.record_bgp(&observed);
        observed
    }

    /// Whether BGP changed since the last reconcile (polled while BGP runs),
    /// or a session's grace period ran out.
    pub async fn bgp_changed(&mut self) -> bool {
        if !self.bgp_on {
            return false;
        }
        let observed = self.observe_bgp().await;
        let grace_over = self.current.as_ref().is_some_and(|c| {
            let now = Instant::now();
            (c.facts.bgp.settling.iter()).any(|name| {
                self.bgp_expected_since
                    .get(name)
                    .is_some_and(|since| now.duration_since(*since) >= self.bgp_grace)
            })
        });
        grace_over || observed != self.bgp
    }
}
