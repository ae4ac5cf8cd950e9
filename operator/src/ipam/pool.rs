//! One family's pool of equal-sized node subnets, kept as a bitmap.
//!
//! ```text
//!  pool 10.0.0.0/8, node prefix /24  →  2^16 slots
//!  slot i  =  10.0.0.0 + i·2^8        bitmap word i/64, bit i%64 (1 = taken)
//!  `lowest_free` starts at `hint`, the lowest slot that may be free, so
//!  allocation scans from there and release just lowers the hint.
//! ```
//!
//! Addresses of both families are handled as `u128` with the family's width.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a subnet cannot be placed in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("{0} is not inside the pool {1}")]
    OutsidePool(IpNet, IpNet),
    #[error("{0} is not a /{1} node subnet")]
    WrongSize(IpNet, u8),
    #[error("{0} is already allocated")]
    Taken(IpNet),
}

#[derive(Debug, Clone)]
pub struct SubnetPool {
    pool: IpNet,
    node_prefix: u8,
    /// Address width of the family: 32 or 128.
    width: u8,
    slots: u32,
    words: Vec<u64>,
    hint: u32,
    taken: u32,
}

impl SubnetPool {
    /// A pool cutting `pool` into `/node_prefix` subnets. The caller has
    /// validated the sizes (tartan-crds' `check_node_prefix`): at most 2^16 slots.
    pub fn new(pool: IpNet, node_prefix: u8) -> Self {
        let width = pool.max_prefix_len();
        let bits = u32::from(node_prefix.saturating_sub(pool.prefix_len()));
        debug_assert!(bits <= 16, "validated pools have at most 2^16 subnets");
        let slots = 1u32 << bits.min(16);
        Self {
            pool: pool.trunc(),
            node_prefix,
            width,
            slots,
            words: vec![0; slots.div_ceil(64) as usize],
            hint: 0,
            taken: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.slots
    }

    pub fn allocated(&self) -> u32 {
        self.taken
    }

    pub fn pool(&self) -> IpNet {
        self.pool
    }

    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    /// Takes `preferred` when it is a free node subnet of this pool, else the lowest free one.
    pub fn allocate(&mut self, preferred: Option<IpNet>) -> Option<IpNet> {
        if let Some(slot) = preferred.and_then(|p| self.slot_of(p).ok())
            && !self.is_taken(slot)
        {
            self.mark(slot);
            return Some(self.subnet_of(slot));
        }
        let slot = self.lowest_free()?;
        self.mark(slot);
        Some(self.subnet_of(slot))
    }

    /// Records `subnet` as taken (rebuilding from existing allocations).
    pub fn place(&mut self, subnet: IpNet) -> Result<(), PlaceError> {
        let slot = self.slot_of(subnet)?;
        if self.is_taken(slot) {
            return Err(PlaceError::Taken(subnet));
        }
        self.mark(slot);
        Ok(())
    }

    /// Frees `subnet`; returns whether it was taken.
    pub fn release(&mut self, subnet: IpNet) -> bool {
        let Ok(slot) = self.slot_of(subnet) else {
            return false;
        };
        if !self.is_taken(slot) {
            return false;
        }
        self.words[(slot / 64) as usize] &= !(1u64 << (slot % 64));
        self.taken -= 1;
        self.hint = self.hint.min(slot);
        true
    }

    pub fn contains(&self, subnet: IpNet) -> bool {
        self.slot_of(subnet).is_ok()
    }

    fn is_taken(&self, slot: u32) -> bool {
        self.words[(slot / 64) as usize] & (1u64 << (slot % 64)) != 0
    }

    fn mark(&mut self, slot: u32) {
        self.words[(slot / 64) as usize] |= 1u64 << (slot % 64);
        self.taken += 1;
        if slot == self.hint {
            self.hint += 1;
        }
    }

    fn lowest_free(&mut self) -> Option<u32> {
        let start = (self.hint / 64) as usize;
        for (i, word) in self.words.iter().enumerate().skip(start) {
            if *word != u64::MAX {
                let slot = i as u32 * 64 + (!*word).trailing_zeros();
                if slot >= self.slots {
                    break;
                }
                self.hint = slot;
                return Some(slot);
            }
        }
        self.hint = self.slots;
        None
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.width - self.node_prefix)
    }

    fn subnet_of(&self, slot: u32) -> IpNet {
        let base = to_u128(self.pool.network()) + (u128::from(slot) << self.host_bits());
        IpNet::new(from_u128(base, self.width), self.node_prefix)
            .unwrap_or_else(|_| unreachable!("node prefix is within the family width"))
    }

    fn slot_of(&self, subnet: IpNet) -> Result<u32, PlaceError> {
        if subnet.prefix_len() != self.node_prefix || subnet.trunc() != subnet {
            return Err(PlaceError::WrongSize(subnet, self.node_prefix));
        }
        if subnet.max_prefix_len() != self.width || !self.pool.contains(&subnet) {
            return Err(PlaceError::OutsidePool(subnet, self.pool));
        }
        let offset = to_u128(subnet.network()) - to_u128(self.pool.network());
        Ok((offset >> self.host_bits()) as u32)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(value: u128, width: u8) -> IpAddr {
    if width == 32 {
        IpAddr::V4((value as u32).into())
    } else {
        IpAddr::V6(value.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn allocates_lowest_first_and_reuses_freed_space() {
        let mut pool = SubnetPool::new(net("10.244.0.0/16"), 24);
        assert_eq!(pool.capacity(), 256);
        assert_eq!(pool.allocate(None), Some(net("10.244.0.0/24")));
        assert_eq!(pool.allocate(None), Some(net("10.244.1.0/24")));
        assert_eq!(pool.allocate(None), Some(net("10.244.2.0/24")));
        assert!(pool.release(net("10.244.1.0/24")));
        assert_eq!(pool.allocate(None), Some(net("10.244.1.0/24")));
        assert_eq!(pool.allocated(), 3);
    }

    #[test]
    fn honours_a_free_preferred_subnet_and_ignores_a_bad_one() {
        let mut pool = SubnetPool::new(net("10.244.0.0/16"), 24);
        assert_eq!(
            pool.allocate(Some(net("10.244.7.0/24"))),
            Some(net("10.244.7.0/24"))
        );
        assert_eq!(
            pool.allocate(Some(net("10.244.7.0/24"))),
            Some(net("10.244.0.0/24"))
        );
        assert_eq!(
            pool.allocate(Some(net("10.9.0.0/24"))),
            Some(net("10.244.1.0/24"))
        );
        assert_eq!(
            pool.allocate(Some(net("10.244.9.0/25"))),
            Some(net("10.244.2.0/24"))
        );
    }

    #[test]
    fn place_refuses_taken_foreign_and_misaligned_subnets() {
        let mut pool = SubnetPool::new(net("10.244.0.0/16"), 24);
        assert_eq!(pool.place(net("10.244.5.0/24")), Ok(()));
        assert_eq!(
            pool.place(net("10.244.5.0/24")),
            Err(PlaceError::Taken(net("10.244.5.0/24")))
        );
        assert!(matches!(
            pool.place(net("10.245.5.0/24")),
            Err(PlaceError::OutsidePool(..))
        ));
        assert!(matches!(
            pool.place(net("10.244.5.0/25")),
            Err(PlaceError::WrongSize(..))
        ));
        assert!(matches!(
            pool.place(net("fd00::/64")),
            Err(PlaceError::WrongSize(..))
        ));
    }

    #[test]
    fn exhausts_exactly_at_capacity() {
        let mut pool = SubnetPool::new(net("10.244.0.0/22"), 24);
        let got: Vec<_> = std::iter::from_fn(|| pool.allocate(None)).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], net("10.244.3.0/24"));
        assert_eq!(pool.allocate(None), None);
        assert!(pool.release(net("10.244.2.0/24")));
        assert_eq!(pool.allocate(None), Some(net("10.244.2.0/24")));
    }

    #[test]
    fn ipv6_48_into_64s() {
        let mut pool = SubnetPool::new(net("fd00:10:244::/48"), 64);
        assert_eq!(pool.capacity(), 65_536);
        assert_eq!(pool.allocate(None), Some(net("fd00:10:244::/64")));
        assert_eq!(pool.allocate(None), Some(net("fd00:10:244:1::/64")));
        assert_eq!(
            pool.allocate(Some(net("fd00:10:244:ffff::/64"))),
            Some(net("fd00:10:244:ffff::/64"))
        );
    }

    #[test]
    fn whole_pool_as_one_subnet() {
        let mut pool = SubnetPool::new(net("10.244.0.0/24"), 24);
        assert_eq!(pool.capacity(), 1);
        assert_eq!(pool.allocate(None), Some(net("10.244.0.0/24")));
        assert_eq!(pool.allocate(None), None);
    }
}
