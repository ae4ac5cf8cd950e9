//! Random policies and pods: the compiled state of every node and the
//! reference evaluator agree on every (from, to, protocol, port).

use super::*;
use proptest::prelude::*;

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::default()),
        (0..3usize).prop_map(|i| selector(&[("app", ["a", "b", "c"][i])])),
        (0..2usize).prop_map(|i| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "role".into(),
                operator: ["Exists", "DoesNotExist"][i].into(),
                values: None,
            }]),
            ..Default::default()
        }),
        (0..2usize).prop_map(|i| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: ["In", "NotIn"][i].into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
            ..Default::default()
        }),
    ]
}

const BLOCKS: [&str; 5] = [
    "10.244.0.0/16",
    "10.244.1.0/24",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "10.244.1.3/32",
];

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (any::<bool>(), 0..2usize, arb_selector(), arb_selector()).prop_map(
            |(same, ns, nsel, psel)| {
                Peer::Pods {
                    namespaces: if same {
                        Namespaces::Same(["x", "y"][ns].into())
                    } else {
                        Namespaces::Matching(nsel)
                    },
                    pods: psel,
                }
            }
        ),
        (
            0..BLOCKS.len(),
            proptest::collection::vec(0..BLOCKS.len(), 0..2)
        )
            .prop_map(|(b, ex)| {
                let cidr: IpNet = BLOCKS[b].parse().expect("cidr");
                let except = ex
                    .into_iter()
                    .map(|e| BLOCKS[e].parse::<IpNet>().expect("cidr"))
                    .filter(|e| cidr.contains(e) && *e != cidr)
                    .collect();
                Peer::Block { cidr, except }
            }),
    ]
}

fn arb_port() -> impl Strategy<Value = PortSpec> {
    let protocol = (0..3usize).prop_map(|i| Protocol::ALL[i]);
    prop_oneof![
        protocol.clone().prop_map(PortSpec::All),
        (protocol.clone(), 0..3usize, 0..3u16).prop_map(|(p, i, span)| {
            let low = [53, 80, 8080][i];
            PortSpec::Range(p, low, low + span)
        }),
        (protocol, 0..2usize).prop_map(|(p, i)| PortSpec::Named(p, ["http", "dns"][i].into())),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::collection::vec(arb_peer(), 1..3)),
        proptest::option::of(proptest::collection::vec(arb_port(), 1..3)),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn arb_policy(i: usize) -> impl Strategy<Value = Policy> {
    let rules = || proptest::option::of(proptest::collection::vec(arb_rule(), 0..3));
    (0..2usize, arb_selector(), rules(), rules()).prop_map(move |(ns, sel, ingress, egress)| {
        Policy {
            key: key(["x", "y"][ns], &format!("p{i}")),
            pod_selector: sel,
            ingress,
            egress,
        }
    })
}

fn arb_pod(i: usize) -> impl Strategy<Value = Pod> {
    (
        0..2usize,
        0..2usize,
        0..3usize,
        proptest::option::of(0..2usize),
        0..4usize,
    )
        .prop_map(move |(ns, node, app, role, ports)| {
            let mut pairs = vec![("app", ["a", "b", "c"][app])];
            if let Some(r) = role {
                pairs.push(("role", ["x", "y"][r]));
            }
            let mut p = pod(
                ["x", "y"][ns],
                &format!("pod{i}"),
                NODES[node],
                &format!("10.244.{}.{}", node + 1, i + 2),
                &pairs,
            );
            // 0: none; 1: http on 80; 2: http on 8080; 3: http 8080 and dns 53 over UDP.
            if ports >= 1 {
                p = with_port(p, "http", if ports == 1 { 80 } else { 8080 });
            }
            if ports == 3 {
                p.ports.push(NamedPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                });
            }
            p
        })
}

fn arb_cluster() -> impl Strategy<Value = Cluster> {
    let pods = (0..6usize).map(arb_pod).collect::<Vec<_>>();
    let policies = (0..4usize).map(arb_policy).collect::<Vec<_>>();
    (pods, policies, 0..4usize, any::<bool>()).prop_map(|(pods, policies, n, label_y)| {
        let mut c = Cluster::new(pods, policies.into_iter().take(n).collect());
        if label_y {
            c.namespaces.insert(
                "y".into(),
                labels(&[("kubernetes.io/metadata.name", "y"), ("app", "a")]),
            );
        }
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn compiled_state_and_reference_agree_on_every_connection(c in arb_cluster()) {
        let externals: Vec<IpAddr> = ["10.0.0.5", "192.168.1.1", "10.244.3.9"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let mut ends: Vec<End<'_>> = c.pods.values().map(End::Pod).collect();
        ends.extend(externals.iter().map(|ip| End::External(*ip)));
        for from in &ends {
            for to in &ends {
                if matches!((from, to), (End::External(_), End::External(_))) {
                    continue;
                }
                for protocol in Protocol::ALL {
                    for port in [53, 80, 81, 8080, 8082, 9000] {
                        let compiled = c.compiled_admits(*from, *to, protocol, port);
                        let reference = c.reference(*from, *to, protocol, port);
                        prop_assert_eq!(compiled, reference, "{:?} -> {:?} {:?}/{}", from, to, protocol, port);
                    }
                }
            }
        }
    }
}
