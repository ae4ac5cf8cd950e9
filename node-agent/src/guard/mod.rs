//! The pod source check: at each local pod's bridge port, a frame whose
//! source is not that pod's own address is dropped and counted (IPv4, IPv6,
//! ARP, and neighbour advertisements claiming another pod's address).
//!
//! ```text
//!  runtime ─CNI ADD─▶ bridge (veth on cni0, host-local IP) ─▶ tartan (this binary as a
//!                     CNI plugin) ─one JSON line on /run/tartan/cni/tartan.sock─▶ agent
//!                     ─▶ bind: port . address elements in bridge tartan-guard ─▶ reply ─▶ ADD done
//! ```
//!
//! The binding is in the kernel before CNI ADD returns, so before any of the
//! pod's containers start: no window. If the agent cannot bind, ADD fails
//! and the runtime retries: no pod runs unchecked. CNI DEL removes the
//! container's elements; ports that vanished without a DEL are swept at the
//! agent's start and each resync.

pub mod plugin;
pub mod server;
pub mod table;

use serde::{Deserialize, Serialize};

pub use table::Binding;

/// The CNI plugin type (and file name in the CNI bin directory).
pub const PLUGIN: &str = "tartan";
/// Where the agent listens for the plugin.
pub const DEFAULT_SOCKET: &str = "/run/tartan/cni/tartan.sock";

/// What the plugin asks of the agent: one JSON line per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum Request {
    Add {
        container: String,
        port: String,
        ips: Vec<std::net::IpAddr>,
    },
    Del {
        container: String,
    },
    Check {
        container: String,
    },
}

/// The agent's answer: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
