//! NetworkPolicies the agents cannot enforce, reported once, by the operator.
//!
//! Every agent reads NetworkPolicies with the same strict reader
//! ([`tartan_crds::network_policy`]) and fails closed on one it cannot read:
//! the pods it selects are isolated in its directions and it allows nothing.
//! The user has to hear why, and from one writer: 5,000 agents each writing
//! the same Event would be 5,000 writes per policy. So the operator reads
//! each policy when its spec changes and posts one Warning Event on it.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource as _, ResourceExt as _};
use tartan_crds::network_policy::{Policy, PolicyError};

use super::{Context, error_policy, tracked};
use crate::error::Result;

/// The Event's reason: `kubectl get events --field-selector reason=Unenforceable`.
pub const REASON: &str = "Unenforceable";

/// What the Event says: the field, its value, and what the agents do instead.
pub fn note(error: &PolicyError) -> String {
    format!(
        "Tartan cannot enforce this NetworkPolicy: {error}. The agents fail closed: \
         the pods it selects are isolated in its policyTypes and it allows them nothing \
         until the field is fixed."
    )
}

/// Why `policy` cannot be enforced, if it cannot.
pub fn unenforceable(policy: &NetworkPolicy) -> Option<PolicyError> {
    Policy::from_kube(policy).err()
}

/// Reads every NetworkPolicy of the cluster, and each again when it changes.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let policies: Api<NetworkPolicy> = Api::all(ctx.client.clone());
    Controller::new(policies, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            |o, c| tracked("policy_check", o, c, reconcile),
            |o, e, c| error_policy("policy_check", &o.name_any(), e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

pub async fn reconcile(policy: Arc<NetworkPolicy>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ensure_leader()?;
    let _timer = ctx.metrics.time("policy_check");
    if let Some(error) = unenforceable(&policy) {
        let reference = policy.object_ref(&());
        tracing::warn!(
            namespace = policy.metadata.namespace.as_deref().unwrap_or_default(),
            name = policy.metadata.name.as_deref().unwrap_or_default(),
            %error,
            "NetworkPolicy cannot be enforced"
        );
        ctx.event_for(
            &reference,
            EventType::Warning,
            REASON,
            "Check",
            note(&error),
        )
        .await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_says_what_the_agents_do_instead() {
        let error = PolicyError {
            field: "spec.ingress[0].ports[0].protocol".into(),
            value: "ICMP".into(),
            reason: "is not TCP, UDP or SCTP",
        };
        let note = note(&error);
        assert!(
            note.starts_with(
                r#"Tartan cannot enforce this NetworkPolicy: spec.ingress[0].ports[0].protocol: "ICMP" is not TCP, UDP or SCTP."#
            ),
            "{note}"
        );
        assert!(note.contains("fail closed"), "{note}");
    }
}
