use super::*;
use proptest::prelude::*;
use tartan_crds::OverlayNetworkSpec;

fn network(cidr: &str, prefix: u8, ipv6: Option<(&str, u8)>) -> ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr(cidr);
    spec.node_prefix_length = prefix;
    if let Some((v6, p6)) = ipv6 {
        spec.ipv6_cidr = Some(v6.into());
        spec.ipv6_node_prefix_length = p6;
    }
    spec.validate().expect("valid test network")
}

fn v4(s: &str) -> Ipv4Net {
    s.parse().expect("test CIDR")
}

fn v6(s: &str) -> Ipv6Net {
    s.parse().expect("test CIDR")
}

#[test]
fn dual_stack_hands_out_pairs() {
    let mut ipam = Ipam::new(&network(
        "10.244.0.0/16",
        24,
        Some(("fd00:10:244::/56", 64)),
    ));
    let a = ipam.allocate("a", Preference::default()).expect("room");
    assert_eq!(
        a,
        Allocation {
            ipv4: v4("10.244.0.0/24"),
            ipv6: Some(v6("fd00:10:244::/64"))
        }
    );
    assert_eq!(
        ipam.allocate("a", Preference::default()),
        Ok(a),
        "idempotent per node"
    );
    let b = ipam.allocate("b", Preference::default()).expect("room");
    assert_eq!(b.ipv6, Some(v6("fd00:10:244:1::/64")));
}

#[test]
fn dual_stack_rolls_back_ipv4_when_ipv6_is_exhausted() {
    let mut ipam = Ipam::new(&network("10.244.0.0/16", 24, Some(("fd00::/63", 64))));
    ipam.allocate("a", Preference::default()).expect("room");
    ipam.allocate("b", Preference::default()).expect("room");
    let err = ipam.allocate("c", Preference::default()).unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::Exhausted {
                family: 6,
                capacity: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(ipam.ipv4_usage().allocated, 2, "no half pair left behind");
}

#[test]
fn place_detects_conflicts_and_misfits() {
    let mut ipam = Ipam::new(&network("10.244.0.0/16", 24, None));
    let alloc = Allocation {
        ipv4: v4("10.244.3.0/24"),
        ipv6: None,
    };
    ipam.place("a", alloc).expect("free");
    ipam.place("a", alloc)
        .expect("same node, same subnet: no-op");
    let err = ipam.place("b", alloc).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.244.3.0/24 of node b is already allocated to node a"
    );
    let outside = Allocation {
        ipv4: v4("10.9.3.0/24"),
        ipv6: None,
    };
    assert!(matches!(
        ipam.place("c", outside),
        Err(IpamError::Misfit { .. })
    ));
    assert_eq!(ipam.ipv4_usage().allocated, 1);
    assert_eq!(ipam.get("b"), None);
}

#[test]
fn place_requires_ipv6_on_dual_stack() {
    let mut ipam = Ipam::new(&network("10.244.0.0/16", 24, Some(("fd00::/56", 64))));
    let err = ipam
        .place(
            "a",
            Allocation {
                ipv4: v4("10.244.3.0/24"),
                ipv6: None,
            },
        )
        .unwrap_err();
    assert_eq!(err, IpamError::MissingIpv6 { node: "a".into() });
    assert_eq!(ipam.ipv4_usage().allocated, 0);
}

#[test]
fn preference_is_honoured_when_free() {
    let mut ipam = Ipam::new(&network("10.244.0.0/16", 24, None));
    let pref = Preference {
        ipv4: Some(v4("10.244.42.0/24")),
        ipv6: None,
    };
    assert_eq!(
        ipam.allocate("a", pref).map(|a| a.ipv4),
        Ok(v4("10.244.42.0/24"))
    );
    assert_eq!(
        ipam.allocate("b", pref).map(|a| a.ipv4),
        Ok(v4("10.244.0.0/24"))
    );
}

#[test]
fn release_frees_for_the_next_node() {
    let mut ipam = Ipam::new(&network("10.244.0.0/23", 24, None));
    ipam.allocate("a", Preference::default()).expect("room");
    ipam.allocate("b", Preference::default()).expect("room");
    assert!(!ipam.has_room());
    assert!(ipam.allocate("c", Preference::default()).is_err());
    assert_eq!(ipam.release("a").map(|a| a.ipv4), Some(v4("10.244.0.0/24")));
    assert_eq!(
        ipam.allocate("c", Preference::default()).map(|a| a.ipv4),
        Ok(v4("10.244.0.0/24"))
    );
}

#[test]
fn a_slash_8_holds_65536_nodes() {
    let mut ipam = Ipam::new(&network("10.0.0.0/8", 24, None));
    for i in 0..65_536u32 {
        ipam.allocate(&format!("n{i}"), Preference::default())
            .expect("room");
    }
    assert_eq!(
        ipam.ipv4_usage(),
        Usage {
            capacity: 65_536,
            allocated: 65_536
        }
    );
    assert!(
        ipam.allocate("one-too-many", Preference::default())
            .is_err()
    );
}

/// What a random history does; a restart rebuilds from the allocations so far.
#[derive(Debug, Clone)]
enum Op {
    Allocate(u8, Option<u8>),
    Release(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), proptest::option::of(0u8..40)).prop_map(|(n, p)| Op::Allocate(n % 48, p)),
        2 => any::<u8>().prop_map(|n| Op::Release(n % 48)),
        1 => Just(Op::Restart),
    ]
}

/// The naive model: a set of taken slot numbers, lowest free first.
#[derive(Default)]
struct Model {
    owners: BTreeMap<u8, u32>,
}

impl Model {
    fn allocate(&mut self, node: u8, preferred: Option<u32>, capacity: u32) -> Option<u32> {
        if let Some(slot) = self.owners.get(&node) {
            return Some(*slot);
        }
        let taken: Vec<u32> = self.owners.values().copied().collect();
        let slot = preferred
            .filter(|p| *p < capacity && !taken.contains(p))
            .or_else(|| (0..capacity).find(|s| !taken.contains(s)))?;
        self.owners.insert(node, slot);
        Some(slot)
    }
}

proptest! {
    #[test]
    fn random_histories_never_overlap_and_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        // A /19 cut into /24s: 32 slots, fewer than the 48 node names, so exhaustion happens.
        let net = network("10.96.0.0/19", 24, Some(("fd00:96::/59", 64)));
        let mut ipam = Ipam::new(&net);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Allocate(node, preferred) => {
                    // Preferences 32..40 fall outside the pool and must be ignored.
                    let pref = preferred.map(|p| {
                        let base = if p < 32 { u32::from(net.cidr.network()) } else { u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) };
                        Ipv4Net::new((base + u32::from(p) * 256).into(), 24).expect("prefix")
                    });
                    let got = ipam.allocate(&format!("n{node}"), Preference { ipv4: pref, ipv6: None });
                    let want = model.allocate(node, preferred.map(u32::from), 32);
                    let got_slot = got.as_ref().ok().map(|a| (u32::from(a.ipv4.network()) - u32::from(net.cidr.network())) / 256);
                    prop_assert_eq!(got_slot, want);
                }
                Op::Release(node) => {
                    let got = ipam.release(&format!("n{node}")).is_some();
                    prop_assert_eq!(got, model.owners.remove(&node).is_some());
                }
                Op::Restart => {
                    let existing: Vec<(String, Allocation)> = ipam.nodes().map(|(n, a)| (n.to_string(), *a)).collect();
                    ipam = Ipam::new(&net);
                    for (node, alloc) in existing {
                        prop_assert!(ipam.place(&node, alloc).is_ok());
                    }
                }
            }
            // Invariants: inside the pool, pairwise disjoint, counts agree.
            let allocs: Vec<Allocation> = ipam.nodes().map(|(_, a)| *a).collect();
            for (i, a) in allocs.iter().enumerate() {
                prop_assert!(net.cidr.contains(&a.ipv4));
                prop_assert_eq!(a.ipv4.prefix_len(), 24);
                let v6 = a.ipv6.expect("dual-stack pair");
                prop_assert!(net.ipv6.expect("v6 pool").cidr.contains(&v6));
                for b in &allocs[i + 1..] {
                    prop_assert!(!a.ipv4.contains(&b.ipv4.network()));
                    prop_assert_ne!(Some(v6), b.ipv6);
                }
            }
            prop_assert_eq!(ipam.ipv4_usage().allocated as usize, allocs.len());
            prop_assert_eq!(ipam.ipv6_usage().map(|u| u.allocated as usize), Some(allocs.len()));
        }
    }
}
