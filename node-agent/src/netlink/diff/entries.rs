//! Entries that live on a Tartan device under a key (FDB: the peer's VTEP
//! MAC; neighbours: the next hop): added or replaced where they differ,
//! removed where no longer wanted. The entries of a recreated or retiring
//! device go with it, so they are neither removed nor kept for it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Gone, Op};

/// How one kind of entry is keyed and turned into operations.
pub(super) struct Kind<E, K> {
    pub key: fn(&E) -> (&str, K),
    pub add: fn(E) -> Op,
    pub delete: fn(E) -> Op,
}

/// `entries` as the kernel's would be keyed.
pub(super) fn keyed<E: Clone, K: Ord>(
    entries: &BTreeSet<E>,
    key: fn(&E) -> (&str, K),
) -> BTreeMap<(String, K), E> {
    (entries.iter())
        .map(|e| {
            let (device, k) = key(e);
            ((device.to_string(), k), e.clone())
        })
        .collect()
}

pub(super) fn diff<E, K>(
    desired: &BTreeSet<E>,
    observed: &BTreeMap<(String, K), E>,
    gone: &Gone,
    kind: Kind<E, K>,
) -> Vec<Op>
where
    E: Clone + PartialEq,
    K: Ord + Copy,
{
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    for entry in desired {
        let (device, key) = (kind.key)(entry);
        wanted.insert((device, key));
        let have = observed.get(&(device.to_string(), key));
        if gone.contains(device) || have != Some(entry) {
            ops.push((kind.add)(entry.clone()));
        }
    }
    for ((device, key), entry) in observed {
        if !gone.contains(device) && !wanted.contains(&(device.as_str(), *key)) {
            ops.push((kind.delete)(entry.clone()));
        }
    }
    ops
}
