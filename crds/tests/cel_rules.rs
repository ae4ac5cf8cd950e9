//! Evaluates every `x-kubernetes-validations` rule of both CRDs with the `cel`
//! crate, against good and bad objects, including transition rules (`oldSelf`).
//!
//! Kubernetes adds an IP/CIDR library to CEL (`isCIDR`, `cidr()`, `isIP`,
//! `ip()`, `.family()`, `.masked()`, `.prefixLength()`) that the `cel` crate
//! does not have. This test provides those functions from `tartan_crds::cidr`,
//! the same parsing code the operator and agent use, representing a CIDR or IP
//! value by its canonical text (CEL compares them by value; canonical text
//! compares the same way).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::Key;
use cel::{Context, ExecutionError, Program, ResolveResult, Value};
use kube::CustomResourceExt;
use serde_json::{Value as Json, json};
use tartan_crds::cidr::{canonical, family_of, parse_cidr, parse_ip};
use tartan_crds::{
    BackendType, BgpPeer, NodeSubnet, NodeSubnetSpec, NodeSubnetStatus, OverlayNetwork,
    OverlayNetworkSpec,
};

fn k8s_error(function: &str, value: &str) -> ExecutionError {
    ExecutionError::function_error(function, format!("invalid value {value:?}"))
}

/// `ip(s)` and `<cidr>.ip()`: an address, by its canonical text.
fn ip(This(s): This<Arc<String>>) -> ResolveResult {
    if let Some(net) = parse_cidr(&s) {
        return Ok(Value::String(Arc::new(net.addr().to_string())));
    }
    parse_ip(&s)
        .map(|a| Value::String(Arc::new(a.to_string())))
        .ok_or_else(|| k8s_error("ip", &s))
}

fn family(This(s): This<Arc<String>>) -> ResolveResult {
    let family = match parse_ip(&s) {
        Some(std::net::IpAddr::V4(_)) => 4,
        Some(std::net::IpAddr::V6(_)) => 6,
        None => return Err(k8s_error("family", &s)),
    };
    Ok(Value::Int(family))
}

fn cidr(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::String(Arc::new(canonical(&n))))
        .ok_or_else(|| k8s_error("cidr", &s))
}

fn masked(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::String(Arc::new(canonical(&n.trunc()))))
        .ok_or_else(|| k8s_error("masked", &s))
}

fn prefix_length(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::Int(i64::from(n.prefix_len())))
        .ok_or_else(|| k8s_error("prefixLength", &s))
}

fn context_with_kubernetes_ip_library() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    let declared = [
        ctx.add_function("isCIDR", |s: Arc<String>| parse_cidr(&s).is_some()),
        ctx.add_function("isIP", |s: Arc<String>| parse_ip(&s).is_some()),
        ctx.add_function("cidr", cidr),
        ctx.add_function("ip", ip),
        ctx.add_function("family", family),
        ctx.add_function("masked", masked),
        ctx.add_function("prefixLength", prefix_length),
    ];
    for result in declared {
        result.expect("no clash with the cel crate's own functions");
    }
    // Unused here but keeps `family_of` honest: it is the function CEL's family() mirrors.
    let _ = family_of;
    ctx
}

/// Kubernetes hands CEL integers as `int`, maps and lists as they are.
fn to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let map: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

/// A rule that refused the object.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    path: String,
    message: String,
}

/// Which rules ran, and whether each one passed or refused at least once.
#[derive(Default)]
struct Coverage {
    passed: BTreeSet<(String, String)>,
    refused: BTreeSet<(String, String)>,
}

/// Walks `schema` like the API server's CEL validator: each rule runs with
/// `self` bound to the value at its node; transition rules run only on update.
fn check(
    schema: &Json,
    value: &Json,
    old: Option<&Json>,
    path: &str,
    coverage: &mut Coverage,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Json::as_array)
    {
        for rule in rules {
            let text = rule["rule"].as_str().expect("rule is a string");
            let transition = text.contains("oldSelf");
            if transition && old.is_none() {
                continue;
            }
            let program = Program::compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let mut ctx = context_with_kubernetes_ip_library();
            ctx.add_variable_from_value("self", to_cel(value));
            if let Some(old) = old {
                ctx.add_variable_from_value("oldSelf", to_cel(old));
            }
            let key = (path.to_string(), text.to_string());
            match program.execute(&ctx) {
                Ok(Value::Bool(true)) => {
                    coverage.passed.insert(key);
                }
                outcome => {
                    assert!(
                        matches!(outcome, Ok(Value::Bool(false)) | Err(_)),
                        "{text} returned {outcome:?}"
                    );
                    coverage.refused.insert(key);
                    let field = rule.get("fieldPath").and_then(Json::as_str).unwrap_or("");
                    refusals.push(Refusal {
                        path: format!("{path}{field}"),
                        message: rule["message"].as_str().unwrap_or(text).to_string(),
                    });
                }
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties"), value.as_object()) {
        for (name, sub) in props.as_object().expect("properties is a map") {
            if let Some(child) = obj.get(name).filter(|v| !v.is_null()) {
                let old_child = old.and_then(|o| o.get(name)).filter(|v| !v.is_null());
                let child_path = format!("{path}.{name}");
                refusals.extend(check(sub, child, old_child, &child_path, coverage));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            refusals.extend(check(items, item, None, &format!("{path}[{i}]"), coverage));
        }
    }
    refusals
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Json {
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .expect("schema")
            .open_api_v3_schema,
    )
    .expect("schema is JSON")
}

/// Every rule (by path and text) in a schema.
fn all_rules(schema: &Json, path: &str, out: &mut BTreeSet<(String, String)>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Json::as_array)
    {
        for rule in rules {
            out.insert((
                path.to_string(),
                rule["rule"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Json::as_object) {
        for (name, sub) in props {
            all_rules(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        all_rules(items, &format!("{path}[0]"), out);
    }
}

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

/// Runs `cases` (name, new object, old object, expected refusal paths) against
/// `schema`, returning what each rule did.
fn run(schema: &Json, cases: Vec<(&str, Json, Option<Json>, Vec<&str>)>) -> Coverage {
    let mut coverage = Coverage::default();
    for (name, new, old, expected) in cases {
        let refusals = check(schema, &new, old.as_ref(), "", &mut coverage);
        let paths: Vec<&str> = refusals.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, expected, "case {name:?}: {refusals:#?}");
    }
    coverage
}

fn assert_every_rule_passed_and_refused(schema: &Json, coverage: &Coverage) {
    let mut rules = BTreeSet::new();
    all_rules(schema, "", &mut rules);
    // List items are reported with their index; fold them onto the schema path.
    let fold = |set: &BTreeSet<(String, String)>| -> BTreeSet<(String, String)> {
        set.iter()
            .map(|(p, r)| (regex_free_index_fold(p), r.clone()))
            .collect()
    };
    let (passed, refused) = (fold(&coverage.passed), fold(&coverage.refused));
    for rule in &rules {
        assert!(
            passed.contains(rule),
            "rule never passed a good object: {rule:?}"
        );
        assert!(
            refused.contains(rule),
            "rule never refused a bad object: {rule:?}"
        );
    }
}

fn regex_free_index_fold(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[0");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
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
