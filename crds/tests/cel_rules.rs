//! Evaluates every `x-kubernetes-validations` rule of both CRDs with the `cel`
//! crate (see [`evaluator`]), against good and bad objects, including
//! transition rules (`oldSelf`): each rule must pass a good object and refuse
//! a bad one.

mod evaluator;

use std::collections::BTreeMap;

use cel::{Program, Value};
use evaluator::{
    Coverage, Refusal, assert_every_rule_passed_and_refused, check,
    context_with_kubernetes_ip_library, run, schema_of,
};
use kube::CustomResourceExt;
use serde_json::{Value as Json, json};
use tartan_crds::{
    BackendType, BgpPeer, NodeSubnet, NodeSubnetSpec, NodeSubnetStatus, OverlayNetwork,
    OverlayNetworkSpec,
};
fn network(spec: OverlayNetworkSpec) -> Json {
    serde_json::to_value(OverlayNetwork::new("default", spec)).expect("serializes")
}

fn subnet(spec: NodeSubnetSpec, status: Option<NodeSubnetStatus>) -> Json {
    let mut object = NodeSubnet::new(&spec.node_name.clone(), spec);
    object.status = status;
    serde_json::to_value(object).expect("serializes")
}

fn dual_stack() -> OverlayNetworkSpec {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.ipv6_cidr = Some("fd00:10:244::/56".into());
    spec
}

fn node_subnet_spec() -> NodeSubnetSpec {
    NodeSubnetSpec {
        node_name: "node-a".into(),
        network: "default".into(),
        cidr: "10.244.3.0/24".into(),
        ipv6_cidr: Some("fd00:10:244:3::/64".into()),
    }
}

#[test]
fn overlay_network_rules_accept_good_and_refuse_bad_objects() {
    let schema = schema_of(&OverlayNetwork::crd());
    let base = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    let with = |f: &dyn Fn(&mut OverlayNetworkSpec)| {
        let mut spec = dual_stack();
        f(&mut spec);
        network(spec)
    };
    let cases = vec![
        ("defaults", network(base.clone()), None, vec![]),
        ("dual-stack", network(dual_stack()), None, vec![]),
        (
            "/8 into /24",
            with(&|s| {
                s.cidr = "10.0.0.0/8".into();
            }),
            None,
            vec![],
        ),
        (
            "host bits",
            with(&|s| s.cidr = "10.244.1.0/16".into()),
            None,
            vec![".spec.cidr"],
        ),
        (
            "prefix 33",
            with(&|s| s.cidr = "10.244.0.0/33".into()),
            None,
            vec![".spec.cidr"],
        ),
        (
            "ipv6 as cidr",
            with(&|s| s.cidr = "fd00::/48".into()),
            None,
            vec![".spec.cidr"],
        ),
        (
            "garbage",
            with(&|s| s.cidr = "ten.dot/16".into()),
            None,
            vec![".spec.cidr"],
        ),
        (
            "ipv4 as ipv6Cidr",
            with(&|s| s.ipv6_cidr = Some("10.0.0.0/8".into())),
            None,
            vec![".spec.ipv6Cidr"],
        ),
        (
            "ipv6 host bits",
            with(&|s| s.ipv6_cidr = Some("fd00::1/56".into())),
            None,
            vec![".spec.ipv6Cidr"],
        ),
        (
            "node prefix shorter than pool",
            with(&|s| s.node_prefix_length = 12),
            None,
            vec![".spec.nodePrefixLength"],
        ),
        (
            "more than 2^16 subnets",
            with(&|s| {
                s.cidr = "10.0.0.0/8".into();
                s.node_prefix_length = 25;
            }),
            None,
            vec![".spec.nodePrefixLength"],
        ),
        (
            "ipv6 node prefix shorter than pool",
            with(&|s| s.ipv6_node_prefix_length = 48),
            None,
            vec![".spec.ipv6NodePrefixLength"],
        ),
        (
            "bgp peer not an IP",
            with(&|s| s.backend.bgp.peers = vec![BgpPeer::new("router", 65000)]),
            None,
            vec![".spec.backend.bgp.peers[0].address"],
        ),
        (
            "bgp peer",
            with(&|s| s.backend.bgp.peers = vec![BgpPeer::new("192.0.2.1", 65000)]),
            None,
            vec![],
        ),
        // Transition rules.
        (
            "backend.type change",
            with(&|s| s.backend.type_ = BackendType::HostGw),
            Some(network(dual_stack())),
            vec![],
        ),
        (
            "directRouting change",
            with(&|s| s.backend.vxlan.direct_routing = true),
            Some(network(dual_stack())),
            vec![],
        ),
        (
            "cidr change",
            with(&|s| s.cidr = "10.245.0.0/16".into()),
            Some(network(dual_stack())),
            vec![".spec.cidr"],
        ),
        (
            "ipv6Cidr change",
            with(&|s| s.ipv6_cidr = Some("fd00:10:245::/56".into())),
            Some(network(dual_stack())),
            vec![".spec.ipv6Cidr"],
        ),
        (
            "ipv6Cidr added",
            network(dual_stack()),
            Some(network(base.clone())),
            vec![".spec.ipv6Cidr"],
        ),
        (
            "ipv6Cidr removed",
            network(base.clone()),
            Some(network(dual_stack())),
            vec![".spec.ipv6Cidr"],
        ),
        (
            "nodePrefixLength change",
            with(&|s| s.node_prefix_length = 25),
            Some(network(dual_stack())),
            vec![".spec.nodePrefixLength"],
        ),
        (
            "ipv6NodePrefixLength change",
            with(&|s| s.ipv6_node_prefix_length = 72),
            Some(network(dual_stack())),
            vec![".spec.ipv6NodePrefixLength"],
        ),
    ];
    let coverage = run(&schema, cases);
    assert_every_rule_passed_and_refused(&schema, &coverage);
}

#[test]
fn node_subnet_rules_accept_good_and_refuse_bad_objects() {
    let schema = schema_of(&NodeSubnet::crd());
    let ready = NodeSubnetStatus {
        node_ip: Some("192.168.0.3".into()),
        node_ipv6: Some("fd00:192:168::3".into()),
        vtep_mac: Some("0e:2a:c0:a8:00:03".into()),
        backend: Some(BackendType::Vxlan),
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut NodeSubnetSpec)| {
        let mut spec = node_subnet_spec();
        f(&mut spec);
        subnet(spec, Some(ready.clone()))
    };
    let status = |f: &dyn Fn(&mut NodeSubnetStatus)| {
        let mut status = ready.clone();
        f(&mut status);
        subnet(node_subnet_spec(), Some(status))
    };
    let cases = vec![
        (
            "good",
            subnet(node_subnet_spec(), Some(ready.clone())),
            None,
            vec![],
        ),
        (
            "no status yet",
            subnet(node_subnet_spec(), None),
            None,
            vec![],
        ),
        (
            "host bits",
            with(&|s| s.cidr = "10.244.3.7/24".into()),
            None,
            vec![".spec.cidr"],
        ),
        (
            "ipv6 host bits",
            with(&|s| s.ipv6_cidr = Some("fd00:10:244:3::9/64".into())),
            None,
            vec![".spec.ipv6Cidr"],
        ),
        (
            "nodeIP not IPv4",
            status(&|s| s.node_ip = Some("fd00::3".into())),
            None,
            vec![".status.nodeIP"],
        ),
        (
            "nodeIPv6 not IPv6",
            status(&|s| s.node_ipv6 = Some("192.168.0.3".into())),
            None,
            vec![".status.nodeIPv6"],
        ),
        (
            "nodeIP garbage",
            status(&|s| s.node_ip = Some("node-a".into())),
            None,
            vec![".status.nodeIP"],
        ),
        (
            "status update",
            status(&|s| s.mtu = Some(1400)),
            Some(subnet(node_subnet_spec(), Some(ready.clone()))),
            vec![],
        ),
        (
            "spec change",
            with(&|s| s.cidr = "10.244.4.0/24".into()),
            Some(subnet(node_subnet_spec(), Some(ready.clone()))),
            vec![".spec"],
        ),
    ];
    let coverage = run(&schema, cases);
    assert_every_rule_passed_and_refused(&schema, &coverage);
}

#[test]
fn refusal_messages_name_the_field() {
    let schema = schema_of(&OverlayNetwork::crd());
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    let old = network(spec.clone());
    spec.cidr = "10.1.0.0/16".into();
    let refusals = check(
        &schema,
        &network(spec),
        Some(&old),
        "",
        &mut Coverage::default(),
    );
    assert_eq!(
        refusals,
        vec![Refusal {
            path: ".spec.cidr".into(),
            message: "cidr is immutable".into()
        }]
    );
    // The stand-in library itself: what the rules rely on.
    let ctx = context_with_kubernetes_ip_library();
    let eval = |src: &str| Program::compile(src).expect("compiles").execute(&ctx);
    let expect: BTreeMap<&str, Value> = BTreeMap::from([
        (
            "cidr('10.244.1.0/16').masked() == cidr('10.244.0.0/16')",
            Value::Bool(true),
        ),
        ("cidr('10.244.1.0/16').prefixLength()", Value::Int(16)),
        ("cidr('fd00::/48').ip().family()", Value::Int(6)),
        ("isCIDR('10.0.0.0')", Value::Bool(false)),
        (
            "isIP('10.0.0.1') && ip('10.0.0.1').family() == 4",
            Value::Bool(true),
        ),
    ]);
    for (src, want) in expect {
        assert_eq!(eval(src).expect(src), want, "{src}");
    }
    assert!(eval("cidr('nope')").is_err());
    let _ = json!({});
}
