//! tartan-agent: turns NodeSubnet objects into this node's kernel state.
//!
//! ```text
//!  plan/       pure: NodeSubnets + OverlayNetwork + local facts → DesiredState
//!  netlink/    thin: observe (dump, parse) → diff (pure) → apply (batched netlink);
//!              repair (pure): a drift notification → the operation that undoes it
//!  dataplane   the worker thread: apply, repair, resync; cleanup
//!  masquerade  nftables table `inet tartan`;  cni: 10-tartan.conflist;  sysctl
//! ```

pub mod agent;
pub mod bgp;
pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod index;
pub mod masquerade;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod rbac;
pub mod run;
pub mod status;
pub mod sysctl;
pub mod testbed;
pub mod udp;
pub mod underlay;

#[cfg(test)]
mod agent_tests;
