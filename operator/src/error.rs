//! The operator's errors. Each variant has a fixed metric label.

use tartan_crds::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("not the leader: writes are fenced until the lease is held again")]
    NotLeader,
    #[error("the NodeSubnets have not been listed yet")]
    NotSynced,
    #[error("invalid object: {0}")]
    Invalid(#[from] ValidationError),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl Error {
    /// A bounded label for `tartan_operator_reconcile_errors_total{error=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NotLeader => "not_leader",
            Error::NotSynced => "not_synced",
            Error::Invalid(_) => "invalid",
            Error::Serialize { .. } => "serialize",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
