//! tartan-operator: per-node pod subnet allocation into `NodeSubnet` objects.
//!
//! ```text
//!  ipam/    pure: pools as bitmaps, dual-stack pairs          (no kube, no I/O)
//!  index/   pure: NodeSubnets seen → IPAM state, conflicts    (fed by the watch)
//!  status   pure: OverlayNetwork status from the index
//!  controller/  thin: Node, NodeSubnet and OverlayNetwork reconcilers (kube)
//!  lease    leader election with fencing; run: wiring, probes via tartan-runtime
//! ```

pub mod cli;
pub mod controller;
pub mod error;
pub mod index;
pub mod ipam;
pub mod lease;
pub mod metrics;
pub mod rbac;
pub mod run;
pub mod status;
pub mod uninstall;

#[cfg(test)]
pub mod fixtures;

pub use error::{Error, Result};
