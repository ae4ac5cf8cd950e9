//! IPAM: which node holds which subnet of the pool. Pure: no kube, no I/O.
//!
//! The NodeSubnet objects are the only record of allocations; the controller
//! rebuilds an [`Ipam`] from them with [`Ipam::place`] and then allocates and
//! releases as Nodes come and go. Dual-stack networks hand each node one subnet
//! of each family, or none: an allocation never leaves half a pair behind.

mod pool;

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tartan_crds::ValidNetwork;

pub use pool::{PlaceError, SubnetPool};

/// The subnets a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

/// What a node asks for: the subnets it already uses (Node `spec.podCIDRs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preference {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("the IPv{family} pool {pool} is exhausted ({capacity} node subnets, all allocated)")]
    Exhausted {
        family: u8,
        pool: IpNet,
        capacity: u32,
    },
    #[error("{subnet} of node {node} is already allocated to node {holder}")]
    Conflict {
        node: String,
        subnet: IpNet,
        holder: String,
    },
    #[error("{subnet} of node {node} does not fit the pool: {source}")]
    Misfit {
        node: String,
        subnet: IpNet,
        source: PlaceError,
    },
    #[error("node {node} has no IPv6 subnet but the network is dual-stack")]
    MissingIpv6 { node: String },
}

/// Use of one family's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub capacity: u32,
    pub allocated: u32,
}

#[derive(Debug, Clone)]
pub struct Ipam {
    v4: SubnetPool,
    v6: Option<SubnetPool>,
    owners: BTreeMap<String, Allocation>,
    /// Subnet → node, to name the holder in a conflict.
    holders: BTreeMap<IpNet, String>,
}

impl Ipam {
    pub fn new(network: &ValidNetwork) -> Self {
        Self {
            v4: SubnetPool::new(IpNet::V4(network.cidr), network.node_prefix_length),
            v6: network
                .ipv6
                .map(|p| SubnetPool::new(IpNet::V6(p.cidr), p.node_prefix_length)),
            owners: BTreeMap::new(),
            holders: BTreeMap::new(),
        }
    }

    /// The node's subnets: the ones it holds, else new ones (its preference when free).
    pub fn allocate(
        &mut self,
        node: &str,
        preference: Preference,
    ) -> Result<Allocation, IpamError> {
        if let Some(existing) = self.owners.get(node) {
            return Ok(*existing);
        }
        let ipv4 = self
            .v4
            .allocate(preference.ipv4.map(IpNet::V4))
            .ok_or_else(|| exhausted(&self.v4))?;
        let ipv6 = match self.v6.as_mut() {
            None => None,
            Some(v6) => match v6.allocate(preference.ipv6.map(IpNet::V6)) {
                Some(subnet) => Some(subnet),
                None => {
                    self.v4.release(ipv4);
                    return Err(exhausted(v6));
                }
            },
        };
        let allocation = Allocation {
            ipv4: as_v4(ipv4),
            ipv6: ipv6.map(as_v6),
        };
        self.record(node, allocation);
        Ok(allocation)
    }

    /// Records an allocation that already exists (a NodeSubnet read from the API).
    /// Refuses, and records nothing, when the subnet is held by another node or
    /// does not fit the pool.
    pub fn place(&mut self, node: &str, allocation: Allocation) -> Result<(), IpamError> {
        if self.owners.get(node) == Some(&allocation) {
            return Ok(());
        }
        if self.owners.contains_key(node) {
            self.release(node);
        }
        let v4 = IpNet::V4(allocation.ipv4);
        if let Some(holder) = self.holders.get(&v4) {
            return Err(IpamError::Conflict {
                node: node.into(),
                subnet: v4,
                holder: holder.clone(),
            });
        }
        let v6 = allocation.ipv6.map(IpNet::V6);
        if let (Some(v6), Some(holder)) = (v6, v6.and_then(|n| self.holders.get(&n))) {
            return Err(IpamError::Conflict {
                node: node.into(),
                subnet: v6,
                holder: holder.clone(),
            });
        }
        let misfit = |subnet, source| IpamError::Misfit {
            node: node.into(),
            subnet,
            source,
        };
        self.v4.place(v4).map_err(|e| misfit(v4, e))?;
        match (self.v6.as_mut(), v6) {
            (Some(pool), Some(v6)) => {
                if let Err(e) = pool.place(v6) {
                    self.v4.release(v4);
                    return Err(misfit(v6, e));
                }
            }
            (Some(_), None) => {
                self.v4.release(v4);
                return Err(IpamError::MissingIpv6 { node: node.into() });
            }
            // An IPv6 subnet on a single-stack network is ignored, not an error:
            // the IPv4 allocation is what this network hands out.
            (None, _) => {}
        }
        let allocation = Allocation {
            ipv4: allocation.ipv4,
            ipv6: self.v6.as_ref().and(allocation.ipv6),
        };
        self.record(node, allocation);
        Ok(())
    }

    /// Returns the node's subnets to the pool.
    pub fn release(&mut self, node: &str) -> Option<Allocation> {
        let allocation = self.owners.remove(node)?;
        self.v4.release(IpNet::V4(allocation.ipv4));
        self.holders.remove(&IpNet::V4(allocation.ipv4));
        if let (Some(pool), Some(v6)) = (self.v6.as_mut(), allocation.ipv6) {
            pool.release(IpNet::V6(v6));
            self.holders.remove(&IpNet::V6(v6));
        }
        Some(allocation)
    }

    pub fn get(&self, node: &str) -> Option<Allocation> {
        self.owners.get(node).copied()
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Allocation)> {
        self.owners.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn ipv4_usage(&self) -> Usage {
        usage(&self.v4)
    }

    pub fn ipv6_usage(&self) -> Option<Usage> {
        self.v6.as_ref().map(usage)
    }

    /// Whether a node without subnets could get one now.
    pub fn has_room(&self) -> bool {
        self.v4.allocated() < self.v4.capacity()
            && self
                .v6
                .as_ref()
                .is_none_or(|p| p.allocated() < p.capacity())
    }

    fn record(&mut self, node: &str, allocation: Allocation) {
        self.holders
            .insert(IpNet::V4(allocation.ipv4), node.to_string());
        if let Some(v6) = allocation.ipv6 {
            self.holders.insert(IpNet::V6(v6), node.to_string());
        }
        self.owners.insert(node.to_string(), allocation);
    }
}

fn usage(pool: &SubnetPool) -> Usage {
    Usage {
        capacity: pool.capacity(),
        allocated: pool.allocated(),
    }
}

fn exhausted(pool: &SubnetPool) -> IpamError {
    IpamError::Exhausted {
        family: if pool.pool().max_prefix_len() == 32 {
            4
        } else {
            6
        },
        pool: pool.pool(),
        capacity: pool.capacity(),
    }
}

fn as_v4(net: IpNet) -> Ipv4Net {
    match net {
        IpNet::V4(v4) => v4,
        IpNet::V6(_) => unreachable!("the IPv4 pool hands out IPv4 subnets"),
    }
}

fn as_v6(net: IpNet) -> Ipv6Net {
    match net {
        IpNet::V6(v6) => v6,
        IpNet::V4(_) => unreachable!("the IPv6 pool hands out IPv6 subnets"),
    }
}

#[cfg(test)]
mod tests;
