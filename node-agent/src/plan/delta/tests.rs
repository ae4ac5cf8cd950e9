use std::collections::BTreeMap;

use super::*;
use crate::plan::plan;
use crate::plan::tests::{H, V, facts, network, peer};

fn local() -> ValidNodeSubnet {
    crate::plan::tests::subnet("a", 1, false)
}

fn full(network: &ValidNetwork, peers: &BTreeMap<String, Peer>) -> DesiredState {
    let peers: Vec<Peer> = peers.values().cloned().collect();
    plan(network, &local(), &peers, &facts())
}

#[test]
fn a_join_is_three_kernel_objects_and_what_a_full_plan_would_make() {
    let network = network(V, false, false);
    let mut peers: BTreeMap<String, Peer> = (2..50u8)
        .map(|i| {
            let name = format!("n{i}");
            (name.clone(), peer(&name, i, [10, 0, 0, i], &[V]))
        })
        .collect();
    let mut state = full(&network, &peers);
    let joined = peer("n77", 77, [10, 0, 0, 77], &[V]);
    let delta = plan_peer(&network, &local(), &facts(), &state, None, Some(&joined))
        .expect("a steady vxlan join is planned alone");
    assert_eq!((delta.add.len(), delta.remove.len()), (3, 0));
    state.apply_peer(&delta);
    peers.insert("n77".into(), joined);
    assert_eq!(state, full(&network, &peers));
}

#[test]
fn a_peer_that_left_takes_only_its_objects() {
    let network = network(V, false, false);
    let mut peers: BTreeMap<String, Peer> = (2..6u8)
        .map(|i| {
            (
                format!("n{i}"),
                peer(&format!("n{i}"), i, [10, 0, 0, i], &[V]),
            )
        })
        .collect();
    let mut state = full(&network, &peers);
    let gone = peers.remove("n3").expect("n3");
    let delta = plan_peer(&network, &local(), &facts(), &state, Some(&gone), None).expect("alone");
    assert_eq!((delta.add.len(), delta.remove.len()), (0, 3));
    state.apply_peer(&delta);
    assert_eq!(state, full(&network, &peers));
}

#[test]
fn what_reaches_beyond_the_peer_is_left_to_a_full_plan() {
    let local = local();
    let vxlan = network(V, false, false);
    let state = full(&vxlan, &BTreeMap::new());
    let on_host_gw = peer("b", 2, [192, 168, 0, 2], &[H, V]);
    assert_eq!(
        plan_peer(&vxlan, &local, &facts(), &state, None, Some(&on_host_gw)),
        None,
        "a peer still sending host-gw makes this node receive on host-gw"
    );
    let only_host_gw = peer("c", 3, [192, 168, 0, 3], &[H]);
    let mut fallback = only_host_gw.clone();
    fallback.backend = Some(V);
    assert_eq!(
        plan_peer(&vxlan, &local, &facts(), &state, None, Some(&fallback)),
        None,
        "sent over a fallback: what this node sends with may change"
    );
    let udp = network(BackendType::Udp, false, false);
    let state = full(&udp, &BTreeMap::new());
    let b = peer("b", 2, [192, 168, 0, 2], &[BackendType::Udp]);
    assert_eq!(
        plan_peer(&udp, &local, &facts(), &state, None, Some(&b)),
        None
    );
}

#[test]
fn a_new_address_replaces_in_place_and_removes_only_the_old_fdb_entry() {
    let network = network(V, false, false);
    let before = peer("b", 2, [10, 0, 0, 2], &[V]);
    let mut peers = BTreeMap::from([("b".to_string(), before.clone())]);
    let mut state = full(&network, &peers);
    let after = peer("b", 2, [10, 0, 0, 9], &[V]);
    let delta = plan_peer(
        &network,
        &local(),
        &facts(),
        &state,
        Some(&before),
        Some(&after),
    )
    .expect("alone");
    let ops = crate::netlink::diff::peer_ops(&delta);
    let kinds: Vec<String> = ops
        .iter()
        .map(|op| match op {
            crate::netlink::Op::AddFdb(f) => format!("add fdb {}", f.destination),
            crate::netlink::Op::DelFdb(f) => format!("del fdb {}", f.destination),
            crate::netlink::Op::AddNeighbour(_) => "replace neighbour".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["add fdb 10.0.0.9", "replace neighbour", "del fdb 10.0.0.2"],
        "the route's next hop is the peer's subnet: it stays; the neighbour is replaced"
    );
    state.apply_peer(&delta);
    peers.insert("b".into(), after);
    assert_eq!(state, full(&network, &peers));
}

/// A small deterministic generator, so the sequence is the same every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Joins, leaves, new addresses (some shared by two peers), peers losing and
/// regaining their VTEP MAC, on- and off-link: after every step the folded
/// state equals a full plan.
#[test]
fn any_sequence_of_peer_changes_folds_into_the_full_plan() {
    for (backend, direct) in [(V, false), (V, true), (H, false)] {
        let network = network(backend, direct, false);
        let mut rng = Lcg(7);
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        let mut state = full(&network, &peers);
        let mut alone = 0;
        let mut ips = NodeIps::default();
        for _ in 0..400 {
            let i = rng.below(40) as u8 + 2;
            let name = format!("n{i}");
            let old = peers.get(&name).cloned();
            let new = match rng.below(4) {
                0 => None,
                1 => {
                    let mut p = peer(&name, i, [192, 168, 0, i], &[backend]);
                    if let Ok(e) = p.endpoint.as_mut() {
                        e.vtep_mac = None;
                    }
                    Some(p)
                }
                2 => Some(peer(
                    &name,
                    i,
                    [10, 1, 0, rng.below(200) as u8 + 1],
                    &[backend],
                )),
                _ => Some(peer(&name, i, [192, 168, 0, i], &[backend])),
            };
            let shared = ips.update(old.as_ref(), new.as_ref());
            let delta = (!shared)
                .then(|| {
                    plan_peer(
                        &network,
                        &local(),
                        &facts(),
                        &state,
                        old.as_ref(),
                        new.as_ref(),
                    )
                })
                .flatten();
            match new {
                Some(p) => peers.insert(name, p),
                None => peers.remove(&name),
            };
            let reference = full(&network, &peers);
            match delta {
                Some(delta) => {
                    state.apply_peer(&delta);
                    alone += 1;
                    assert_eq!(state, reference, "{backend:?} direct={direct}");
                }
                // Only a full plan can say: it replaces the state.
                None => state = reference,
            }
        }
        assert!(
            alone > 300,
            "{backend:?} direct={direct}: only {alone} of 400 planned alone"
        );
    }
}
