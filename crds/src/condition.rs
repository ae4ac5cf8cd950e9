//! Standard Kubernetes conditions (`metav1.Condition` shape) and builders.
//!
//! `lastTransitionTime` moves only when `status` flips, as `meta.SetStatusCondition`
//! does in Go, so re-applying an unchanged status is a no-op on the server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observation of an aspect of an object's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, CamelCase, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl Condition {
    /// A `True` condition of `type_` with `reason`, stamped now.
    pub fn truthy(type_: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::True, reason)
    }

    /// A `False` condition of `type_` with `reason`, stamped now.
    pub fn falsy(type_: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::False, reason)
    }

    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation: None,
        }
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    pub fn at(mut self, time: Time) -> Self {
        self.last_transition_time = time;
        self
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    /// Same meaning, ignoring when it was observed.
    pub fn same_as(&self, other: &Condition) -> bool {
        self.type_ == other.type_
            && self.status == other.status
            && self.reason == other.reason
            && self.message == other.message
            && self.observed_generation == other.observed_generation
    }
}

/// Finds the condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the `type_` condition is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

/// Inserts or updates `new`, keeping the old `lastTransitionTime` when the status
/// did not change. Returns whether anything other than timestamps changed.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) if old.same_as(&new) => false,
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Removes the condition of `type_`; returns whether one was there.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn set_keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = vec![Condition::falsy("Ready", "PeersPending").at(at(10))];
        let changed = set(
            &mut conditions,
            Condition::falsy("Ready", "WaitingForSubnet").at(at(20)),
        );
        assert!(changed);
        assert_eq!(conditions[0].reason, "WaitingForSubnet");
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn set_moves_transition_time_when_status_flips() {
        let mut conditions = vec![Condition::falsy("Ready", "PeersPending").at(at(10))];
        assert!(set(
            &mut conditions,
            Condition::truthy("Ready", "Programmed").at(at(20))
        ));
        assert_eq!(conditions[0].last_transition_time, at(20));
        assert!(is_true(&conditions, "Ready"));
    }

    #[test]
    fn set_reports_no_change_for_the_same_observation() {
        let mut conditions = vec![Condition::truthy("Ready", "Programmed").at(at(10))];
        assert!(!set(
            &mut conditions,
            Condition::truthy("Ready", "Programmed").at(at(30))
        ));
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn remove_and_find() {
        let mut conditions = vec![Condition::truthy("Ready", "Programmed")];
        assert!(find(&conditions, "Ready").is_some());
        assert!(remove(&mut conditions, "Ready"));
        assert!(!remove(&mut conditions, "Ready"));
        assert!(!is_true(&conditions, "Ready"));
    }
}
