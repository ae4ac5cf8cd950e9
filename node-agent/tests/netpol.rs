//! NetworkPolicy on the real kernel: three vxlan nodes, pods in two
//! namespaces attached by the real CNI plugins, each serving TCP 80 and 8080
//! and UDP 53; the compiled policy applied to each node's `inet
//! tartan-policy` table; real connections probed before and after each
//! policy, and held to what the compiled state says (which the property test
//! holds to the API's reference).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use serde_json::json;
use tartan_agent::netns::NetNs;
use tartan_agent::netpol::apply::PolicyTable;
use tartan_agent::netpol::compile::{Compiled, Inputs, compile};
use tartan_agent::netpol::model::{Key, Labels, NamedPort, Pod, Policy, Protocol};
use tartan_crds::BackendType;

const TIMEOUT: Duration = Duration::from_millis(300);
const TCP_PORTS: [u16; 2] = [80, 8080];
const UDP_PORT: u16 = 53;

struct Lab {
    _fixture: Fixture,
    /// Pod name → (its netns, the model of it).
    pods: BTreeMap<String, (String, Pod)>,
    tables: Vec<PolicyTable>,
}

fn serve(netns: &str, ip: Ipv4Addr) {
    let ns = NetNs::named(netns);
    for port in TCP_PORTS {
        let listener = ns
            .run(|| TcpListener::bind((ip, port)))
            .expect("netns")
            .expect("bind");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo(stream));
            }
        });
    }
    let udp = ns
        .run(|| UdpSocket::bind((ip, UDP_PORT)))
        .expect("netns")
        .expect("bind");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn connect(netns: &str, to: SocketAddr) -> Option<TcpStream> {
    let stream = NetNs::named(netns)
        .run(|| TcpStream::connect_timeout(&to, TIMEOUT))
        .ok()?
        .ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    Some(stream)
}

/// One byte there and back on `stream`.
fn round_trip(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    stream.write_all(b"x").is_ok() && stream.read_exact(&mut buf).is_ok()
}

fn probe(netns: &str, to: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
    let addr = SocketAddr::from((to, port));
    match protocol {
        Protocol::Tcp => connect(netns, addr).is_some_and(|mut s| round_trip(&mut s)),
        _ => {
            let Ok(Ok(socket)) = NetNs::named(netns).run(|| UdpSocket::bind("0.0.0.0:0")) else {
                return false;
            };
            let mut buf = [0u8; 8];
            socket.set_read_timeout(Some(TIMEOUT)).is_ok()
                && socket.send_to(b"ping", addr).is_ok()
                && socket.recv_from(&mut buf).is_ok()
        }
    }
}

fn policy(value: serde_json::Value) -> Policy {
    Policy::from_kube(&serde_json::from_value(value).expect("a NetworkPolicy")).expect("valid")
}

impl Lab {
    fn new(tag: &str) -> Self {
        let fixture = Fixture::new(tag, 3, BackendType::Vxlan, false);
        fixture.program_all();
        let layout = [
            (0, "a", "web", "app", "web"),
            (0, "a", "db", "app", "db"),
            (1, "b", "client", "role", "client"),
            (1, "b", "other", "role", "other"),
            (2, "a", "web2", "app", "web"),
        ];
        let mut pods = BTreeMap::new();
        for (node, namespace, name, label, value) in layout {
            let (netns, ip) = fixture.add_pod(node, name);
            serve(&netns, ip);
            let pod = Pod {
                key: Key {
                    namespace: namespace.into(),
                    name: name.into(),
                },
                node: format!("n{}", node + 1),
                ips: vec![IpAddr::V4(ip)],
                labels: Labels::from([(label.to_string(), value.to_string())]),
                ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                }],
            };
            pods.insert(name.to_string(), (netns, pod));
        }
        let tables = fixture
            .topo
            .nodes
            .iter()
            .map(|n| PolicyTable::new(NetNs::named(&n.netns)))
            .collect();
        Lab {
            _fixture: fixture,
            pods,
            tables,
        }
    }

    fn namespaces() -> BTreeMap<String, Labels> {
        ["a", "b"]
            .iter()
            .map(|ns| {
                (
                    ns.to_string(),
                    Labels::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]),
                )
            })
            .collect()
    }

    /// Each node's compiled state for `policies`, by node name.
    fn compiled(&self, policies: &[Policy]) -> BTreeMap<String, Compiled> {
        let policies: BTreeMap<Key, Policy> = policies
            .iter()
            .map(|p| (p.key.clone(), p.clone()))
            .collect();
        let pods: BTreeMap<Key, Pod> = self
            .pods
            .values()
            .map(|(_, p)| (p.key.clone(), p.clone()))
            .collect();
        let namespaces = Self::namespaces();
        (1..=self.tables.len())
            .map(|i| {
                let node = format!("n{i}");
                let c = compile(&Inputs {
                    node: &node,
                    policies: &policies,
                    pods: &pods,
                    namespaces: &namespaces,
                });
                (node, c)
            })
            .collect()
    }

    /// Compiles `policies` for every node and applies each node's table.
    fn enforce(&mut self, policies: &[Policy]) -> Duration {
        let started = Instant::now();
        let compiled = self.compiled(policies);
        for (table, state) in self.tables.iter_mut().zip(compiled.values()) {
            table.apply(state).expect("nft accepts the table");
        }
        started.elapsed()
    }

    /// Every (from, to, protocol, port): what the kernel did, next to what
    /// the compiled states say it must do.
    fn matrix(&self, policies: &[Policy]) -> Vec<(String, bool, bool)> {
        let compiled = self.compiled(policies);
        let mut cases = Vec::new();
        for (from, (netns, from_pod)) in &self.pods {
            for (to, (_, to_pod)) in &self.pods {
                if from == to {
                    continue;
                }
                let probes = TCP_PORTS
                    .iter()
                    .map(|p| (Protocol::Tcp, *p))
                    .chain([(Protocol::Udp, UDP_PORT)]);
                for (protocol, port) in probes {
                    cases.push((
                        from.clone(),
                        netns.clone(),
                        from_pod,
                        to.clone(),
                        to_pod,
                        protocol,
                        port,
                    ));
                }
            }
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = cases
                .iter()
                .map(|(from, netns, from_pod, to, to_pod, protocol, port)| {
                    let compiled = &compiled;
                    scope.spawn(move || {
                        let IpAddr::V4(dst) = to_pod.ips[0] else {
                            unreachable!("IPv4 pods")
                        };
                        let expected = [&from_pod.node, &to_pod.node].iter().all(|node| {
                            compiled[node.as_str()].admits(
                                from_pod.ips[0],
                                to_pod.ips[0],
                                *protocol,
                                *port,
                            )
                        });
                        let seen = probe(netns, dst, *protocol, *port);
                        (
                            format!("{from} -> {to} {protocol:?}/{port}"),
                            seen,
                            expected,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }

    fn assert_matrix(&self, policies: &[Policy], what: &str) -> usize {
        let matrix = self.matrix(policies);
        let wrong: Vec<String> = matrix
            .iter()
            .filter(|(_, seen, expected)| seen != expected)
            .map(|(case, seen, expected)| format!("{case}: kernel {seen}, policy {expected}"))
            .collect();
        assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
        let open = matrix.iter().filter(|(_, seen, _)| *seen).count();
        eprintln!("{what}: {open} of {} probes pass", matrix.len());
        open
    }
}

fn default_deny_a() -> Policy {
    policy(json!({
        "metadata": {"namespace": "a", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }))
}

fn allow_b_to_web_http() -> Policy {
    policy(json!({
        "metadata": {"namespace": "a", "name": "web-from-b"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}],
                "ports": [{"port": "http"}],
            }],
        },
    }))
}

fn client_egress_web_only() -> Policy {
    policy(json!({
        "metadata": {"namespace": "b", "name": "client-out"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"protocol": "TCP", "port": 80, "endPort": 8080}],
            }],
        },
    }))
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn the_probe_matrix_follows_each_policy_across_nodes() {
    let mut lab = Lab::new("np");
    let all = lab.assert_matrix(&[], "no policy");
    assert_eq!(all, 5 * 4 * 3, "everything is open without a policy");
    let mut policies = vec![default_deny_a()];
    lab.enforce(&policies);
    let denied = lab.assert_matrix(&policies, "default deny in a");
    assert_eq!(
        denied,
        all - 4 * 3 * 3,
        "nothing reaches the three pods of a"
    );
    policies.push(allow_b_to_web_http());
    lab.enforce(&policies);
    lab.assert_matrix(&policies, "b may reach web on its http port");
    assert!(probe(
        &lab.pods["client"].0,
        ip(&lab, "web2"),
        Protocol::Tcp,
        8080
    ));
    assert!(!probe(
        &lab.pods["client"].0,
        ip(&lab, "web2"),
        Protocol::Tcp,
        80
    ));
    policies.push(client_egress_web_only());
    lab.enforce(&policies);
    lab.assert_matrix(&policies, "client may send only to web, TCP 80-8080");
    assert!(
        !probe(&lab.pods["client"].0, ip(&lab, "other"), Protocol::Tcp, 80),
        "same node, egress"
    );
    lab.enforce(&[]);
    assert_eq!(lab.assert_matrix(&[], "policies removed"), all);
    // Their chains and sets were deleted with them: applied again, they come back.
    let again = [default_deny_a(), allow_b_to_web_http()];
    lab.enforce(&again);
    lab.assert_matrix(&again, "the first two again");
}

fn ip(lab: &Lab, pod: &str) -> Ipv4Addr {
    match lab.pods[pod].1.ips[0] {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("IPv4 pods"),
    }
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn an_established_connection_is_cut_by_a_denying_policy_and_restored_when_it_goes() {
    let mut lab = Lab::new("nc");
    let to = SocketAddr::from((ip(&lab, "web"), 80));
    let mut stream = connect(&lab.pods["client"].0, to).expect("connected before any policy");
    assert!(round_trip(&mut stream));
    let took = lab.enforce(&[default_deny_a()]);
    let applied = Instant::now();
    let mut cut = None;
    while applied.elapsed() < Duration::from_secs(1) {
        if !round_trip(&mut stream) {
            cut = Some(applied.elapsed());
            break;
        }
    }
    let cut = cut.expect("the established connection is cut within 1 s");
    eprintln!(
        "policy applied to 3 nodes in {took:?}; the established connection was cut {cut:?} after"
    );
    assert!(
        connect(&lab.pods["client"].0, to).is_none(),
        "new connections are refused too"
    );
    lab.enforce(&[]);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let restored = Instant::now();
    assert!(
        round_trip(&mut stream),
        "the same connection carries on once the policy is gone"
    );
    eprintln!("restored {:?} after the policy went", restored.elapsed());
}
