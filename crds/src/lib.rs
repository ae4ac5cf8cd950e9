//! Tartan's API: the `OverlayNetwork` and `NodeSubnet` custom resources
//! (group `tartan.dev`, version `v1alpha1`, both cluster-scoped), their
//! schemas with server-side validation, and the helpers both binaries share
//! to parse them (strict CIDRs, conditions, validation with named fields),
//! and the strict reading of `networking.k8s.io/v1` NetworkPolicy that the
//! agent enforces and the operator reports on.
//!
//! ```text
//!   OverlayNetwork "default"          NodeSubnet "node-a"           (one per Node)
//!   spec.cidr 10.244.0.0/16   ──IPAM──▶ spec.cidr 10.244.3.0/24      ← operator
//!   spec.backend.type vxlan            status.nodeIP / vtepMAC /     ← node-a's agent
//!   status.allocated / ready           backend / Ready
//! ```
//!
//! This crate holds types only: no controller logic, no I/O.

pub mod cidr;
pub mod condition;
pub mod error;
pub mod generate;
pub mod network_policy;
pub mod node_subnet;
pub mod overlay_network;
pub mod selector;
pub mod validate;

pub use condition::{Condition, ConditionStatus};
pub use error::ValidationError;
pub use node_subnet::{NodeSubnet, NodeSubnetSpec, NodeSubnetStatus};
pub use overlay_network::{
    Backend, BackendType, BgpConfig, BgpPeer, OverlayNetwork, OverlayNetworkSpec,
    OverlayNetworkStatus, SecretKeyRef, UdpConfig, VxlanConfig, WireguardConfig,
};
pub use validate::{ValidBackend, ValidNetwork, ValidNodeSubnet};

/// The API group of every Tartan kind.
pub const GROUP: &str = "tartan.dev";
/// The API version served.
pub const VERSION: &str = "v1alpha1";
/// The condition type every Tartan object reports.
pub const CONDITION_READY: &str = "Ready";
/// The label on every NodeSubnet naming its OverlayNetwork, so an agent
/// watches only its own network's NodeSubnets.
pub const NETWORK_LABEL: &str = "tartan.dev/network";
