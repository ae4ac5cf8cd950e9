//! NetworkPolicy (`networking.k8s.io/v1`), enforced in the kernel with
//! nftables: no per-connection trip to userspace.
//!
//! ```text
//!  model     NetworkPolicy, Pod, Namespace → what enforcement reads (strict)
//!  index     what the watches keep, converted on arrival; changes only
//!  compile   pure: policies + pods + namespaces + this node → Compiled
//!  addrs     address sets as interval sets hold them (except blocks cut out)
//!  render    Compiled → nft JSON: the whole table, or the difference
//!  apply     one nft transaction per change, in the table inet tartan-policy
//!  watch     NetworkPolicies, Pods (field-selected), Namespaces (metadata) → index
//!  worker    compile on change once all three listed; apply; count drops; resync
//! ```

pub mod addrs;
pub mod apply;
pub mod compile;
pub mod index;
pub mod metrics;
/// The policy model lives with the API types: the operator reads
/// NetworkPolicies with the same strict reader, to report the ones the
/// agents cannot enforce.
pub use tartan_crds::network_policy as model;
#[cfg(test)]
mod reference;
pub mod render;
pub mod watch;
pub mod worker;
