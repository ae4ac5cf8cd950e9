//! Validation errors that name the field and the value, so a person can fix the object.

use std::fmt;

/// A field of a Tartan object that holds a value Tartan cannot use.
///
/// The API server refuses most of these through the CRD schema; this type is
/// for the checks our binaries repeat before acting (objects created before a
/// schema change, or written with validation disabled) so that a malformed
/// object is reported, never half-applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// JSON path of the field, e.g. `spec.backend.vxlan.vni`.
    pub field: String,
    /// The offending value as the user wrote it.
    pub value: String,
    /// Why the value is refused.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: invalid value {:?}: {}",
            self.field, self.value, self.reason
        )
    }
}

pub type Result<T, E = ValidationError> = std::result::Result<T, E>;
