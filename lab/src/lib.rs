//! tartan-lab: a whole cluster's data plane on one machine, in network
//! namespaces, driven by the operator's IPAM and the agent's planner, applier
//! and drift repair; also the benchmark driver.
//!
//! ```text
//!   up ──▶ namespaces (testbed) ──▶ IPAM → NodeSubnets ──▶ agents daemon (one
//!          process, a data plane per node) ──▶ pods via CNI ──▶ matrix
//!   switch ──▶ state.json generation+1 ──▶ agents roll out make-before-break
//! ```

pub mod agents;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod control_plane;
pub mod keeper;
pub mod lifecycle;
pub mod matrix;
pub mod restart;
pub mod sigterm;
pub mod state;
pub mod switch;
pub mod tor;
