//! tartan-agent: turns NodeSubnet objects into this node's kernel state.
//!
//! ```text
//!  watch/      Node, NodeSubnets, OverlayNetwork → AgentIndex → planner inputs (on change)
//!  underlay    which interface carries the overlay → LocalFacts
//!  plan/       pure: NodeSubnets + OverlayNetwork + local facts → DesiredState
//!  netlink/    thin: observe (dump, parse) → diff (pure) → apply (batched netlink);
//!              repair (pure): a drift notification → the operation that undoes it
//!  dataplane   the worker thread: apply, repair, resync; cleanup
//!  masquerade  nftables table `inet tartan`;  cni: 10-tartan.conflist;  sysctl
//! ```

pub mod admission;
pub mod agent;
pub mod bgp;
pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod guard;
pub mod host;
pub mod keeper;
pub mod masquerade;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod netpol;
pub mod nft;
pub mod plan;
pub mod rbac;
pub mod run;
pub mod status;
pub mod sysctl;
pub mod udp;
pub mod underlay;
pub mod watch;
pub mod wireguard;
