//! NetworkPolicy at size: 1,000 pods (143 on this node) in 10 namespaces and
//! 200 policies, compiled and applied to a real `inet tartan-policy` table in
//! a fresh namespace; then one pod change and one policy change, each
//! compiled whole and applied as the difference, timed end to end (compile,
//! diff, one `nft` transaction), best of 5.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tartan_agent::netns::NetNs;
use tartan_agent::netpol::apply::{Applied, PolicyTable};
use tartan_agent::netpol::compile::{Compiled, Inputs, compile};
use tartan_agent::netpol::model::{
    Key, Labels, NamedPort, Namespaces, Peer, Pod, Policy, PortSpec, Protocol, Rule,
};

pub struct NetpolFigures {
    pub pods: usize,
    pub policies: usize,
    pub groups: usize,
    pub elements: usize,
    pub compile: Duration,
    pub full: Duration,
    pub pod_change: Duration,
    pub policy_change: Duration,
    /// Of the pod change, the compile alone.
    pub pod_compile: Duration,
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn pod(i: usize) -> Pod {
    let node = if i.is_multiple_of(7) {
        "n1".to_string()
    } else {
        format!("n{}", 2 + i % 9)
    };
    Pod {
        key: Key {
            namespace: format!("ns{}", i % 10),
            name: format!("pod{i}"),
        },
        node,
        ips: vec![
            format!(
                "10.{}.{}.{}",
                244 + i / 60_000,
                (i / 250) % 256,
                2 + i % 250
            )
            .parse()
            .expect("ip"),
        ],
        labels: labels(&[
            ("app", format!("a{}", i % 50)),
            ("tier", format!("t{}", i % 5)),
        ]),
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8000 + (i % 3) as u16,
        }],
    }
}

fn policy(j: usize) -> Policy {
    let selector = |pairs: &[(&str, String)]| LabelSelector {
        match_labels: Some(labels(pairs)),
        ..Default::default()
    };
    let ingress = Rule {
        peers: Some(vec![
            Peer::Pods {
                namespaces: Namespaces::Matching(selector(&[(
                    "team",
                    format!("t{}", (j + 1) % 10),
                )])),
                pods: selector(&[("tier", format!("t{}", j % 5))]),
            },
            Peer::Block {
                cidr: "192.168.0.0/16".parse().expect("cidr"),
                except: vec!["192.168.7.0/24".parse().expect("cidr")],
            },
        ]),
        ports: Some(vec![
            PortSpec::Range(Protocol::Tcp, 80, 80),
            PortSpec::Named(Protocol::Tcp, "http".into()),
        ]),
    };
    let egress = Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: Namespaces::Same(format!("ns{}", j % 10)),
            pods: LabelSelector::default(),
        }]),
        ports: Some(vec![
            PortSpec::Named(Protocol::Tcp, "http".into()),
            PortSpec::Range(Protocol::Udp, 53, 53),
        ]),
    };
    Policy {
        key: Key {
            namespace: format!("ns{}", j % 10),
            name: format!("p{j}"),
        },
        pod_selector: selector(&[("app", format!("a{}", j % 50))]),
        ingress: Some(vec![ingress]),
        egress: j.is_multiple_of(4).then(|| vec![egress]),
    }
}

struct World {
    pods: BTreeMap<Key, Pod>,
    policies: BTreeMap<Key, Policy>,
    namespaces: BTreeMap<String, Labels>,
}

impl World {
    /// 1,000 pods in 10 namespaces and 200 policies.
    fn at_size() -> Self {
        World {
            pods: (0..1_000).map(pod).map(|p| (p.key.clone(), p)).collect(),
            policies: (0..200).map(policy).map(|p| (p.key.clone(), p)).collect(),
            namespaces: (0..10)
                .map(|k| (format!("ns{k}"), labels(&[("team", format!("t{k}"))])))
                .collect(),
        }
    }

    /// Round `round`'s changes: a pod starts on this node (it joins
    /// selectors, groups and peer sets), and a policy selecting some of
    /// this node's pods is added.
    fn start_pod(&mut self, round: usize) {
        let new = pod(7_000 + round * 7);
        self.pods.insert(new.key.clone(), new);
    }

    fn add_policy(&mut self, round: usize) {
        let new = policy(1_000 + round * 7);
        self.policies.insert(new.key.clone(), new);
    }

    fn compile(&self) -> Compiled {
        compile(&Inputs {
            node: "n1",
            policies: &self.policies,
            pods: &self.pods,
            namespaces: &self.namespaces,
        })
    }
}

/// Compile + apply, timed (and the compile alone).
fn change(
    table: &mut PolicyTable,
    world: &World,
    what: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let compiled = world.compile();
    let compiled_in = started.elapsed();
    let applied = table.apply(&compiled)?;
    anyhow::ensure!(
        applied == Applied::Incremental,
        "{what}: expected an incremental update, got {applied:?} ({} isolated, {} groups)",
        compiled.ingress.len(),
        compiled.groups.len()
    );
    Ok((started.elapsed(), compiled_in))
}

pub fn run(prefix: &str) -> anyhow::Result<NetpolFigures> {
    let netns_name = format!("{prefix}-np");
    let _ = tartan_testbed::ip(&["netns", "del", &netns_name]);
    tartan_testbed::add_netns(&netns_name)?;
    let result = measure(&netns_name);
    tartan_testbed::ip(&["netns", "del", &netns_name])?;
    result
}

fn measure(netns_name: &str) -> anyhow::Result<NetpolFigures> {
    let mut world = World::at_size();
    let mut table = PolicyTable::new(NetNs::named(netns_name));
    let started = Instant::now();
    let compiled = world.compile();
    let compile_time = started.elapsed();
    table.apply(&compiled)?;
    let full = started.elapsed();
    let elements = compiled
        .sets
        .values()
        .map(|s| match s {
            tartan_agent::netpol::compile::SetElements::Hosts(h) => h.len(),
            tartan_agent::netpol::compile::SetElements::Nets(n) => n.len(),
            tartan_agent::netpol::compile::SetElements::PeerPorts(t) => t.len(),
        })
        .sum::<usize>()
        + compiled.ingress.len()
        + compiled.egress.len();
    let (mut pod_change, mut policy_change) = (Duration::MAX, Duration::MAX);
    let mut pod_compile = Duration::MAX;
    for round in 0..5 {
        world.start_pod(round);
        let (took, compiling) = change(&mut table, &world, "a pod")?;
        if took < pod_change {
            (pod_change, pod_compile) = (took, compiling);
        }
        world.add_policy(round);
        policy_change = policy_change.min(change(&mut table, &world, "a policy")?.0);
    }
    Ok(NetpolFigures {
        pods: 1_000,
        policies: 200,
        groups: compiled.groups.len(),
        elements,
        compile: compile_time,
        full,
        pod_change,
        policy_change,
        pod_compile,
    })
}

/// On a bench lab of two nodes with one pod each: every pod of `default`
/// isolated for ingress and egress, and an allow for the iperf pair (port
/// 5201 both ways), enforced on both nodes' tables.
pub fn enforce_default_deny_and_allow(lab: &crate::state::LabState) -> anyhow::Result<()> {
    let pods: BTreeMap<Key, Pod> = lab
        .pods
        .iter()
        .map(|p| Pod {
            key: Key {
                namespace: "default".into(),
                name: format!("{}-{}", p.node, p.name),
            },
            node: p.node.clone(),
            ips: vec![std::net::IpAddr::V4(p.ip)],
            labels: labels(&[("app", "iperf".to_string())]),
            ports: vec![],
        })
        .map(|p| (p.key.clone(), p))
        .collect();
    let iperf = LabelSelector {
        match_labels: Some(labels(&[("app", "iperf".to_string())])),
        ..Default::default()
    };
    let allow = Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: Namespaces::Same("default".into()),
            pods: iperf.clone(),
        }]),
        ports: Some(vec![PortSpec::Range(Protocol::Tcp, 5201, 5201)]),
    };
    let policies: BTreeMap<Key, Policy> = [
        Policy {
            key: Key {
                namespace: "default".into(),
                name: "deny".into(),
            },
            pod_selector: LabelSelector::default(),
            ingress: Some(vec![]),
            egress: Some(vec![]),
        },
        Policy {
            key: Key {
                namespace: "default".into(),
                name: "iperf".into(),
            },
            pod_selector: iperf,
            ingress: Some(vec![allow.clone()]),
            egress: Some(vec![allow]),
        },
    ]
    .into_iter()
    .map(|p| (p.key.clone(), p))
    .collect();
    let namespaces = BTreeMap::from([("default".to_string(), Labels::new())]);
    for node in &lab.nodes {
        let compiled = compile(&Inputs {
            node: &node.name,
            policies: &policies,
            pods: &pods,
            namespaces: &namespaces,
        });
        anyhow::ensure!(
            !compiled.ingress.is_empty(),
            "{}: the pod is isolated",
            node.name
        );
        PolicyTable::new(NetNs::named(&node.netns)).apply(&compiled)?;
    }
    Ok(())
}

/// Removes the policy table from every node of `lab`.
pub fn remove_all(lab: &crate::state::LabState) -> anyhow::Result<()> {
    for node in &lab.nodes {
        tartan_agent::netpol::apply::remove(&NetNs::named(&node.netns))?;
    }
    Ok(())
}

pub fn section(f: &NetpolFigures) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "\n## NetworkPolicy at size ({} pods, {} policies; compile + diff + one nft transaction)\n\n\
| what | time |\n|---|---:|\n\
| compile for this node | {:.1} ms |\n| whole table from empty ({} groups, {} set and map elements) | {:.1} ms |\n\
| one pod starting (best of 5; compile {:.1} ms of it) | {:.1} ms |\n| one policy added (best of 5) | {:.1} ms |\n\
\nA change costs {:.2} and {:.2} of a whole-table apply.\n",
        f.pods,
        f.policies,
        ms(f.compile),
        f.groups,
        f.elements,
        ms(f.full),
        ms(f.pod_compile),
        ms(f.pod_change),
        ms(f.policy_change),
        f.pod_change.as_secs_f64() / f.full.as_secs_f64(),
        f.policy_change.as_secs_f64() / f.full.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_the_bench_makes_changes_the_compiled_state() {
        let mut world = World::at_size();
        let mut last = world.compile();
        for round in 0..5 {
            world.start_pod(round);
            let now = world.compile();
            assert_ne!(last, now, "pod round {round}");
            last = now;
            world.add_policy(round);
            let now = world.compile();
            assert_ne!(last, now, "policy round {round}");
            last = now;
        }
    }
}
