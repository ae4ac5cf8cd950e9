//! The generated CRDs say what DESIGN §2 promises: names, scope, printer
//! columns, subresources, defaults, bounds and every validation rule; and full
//! objects survive a YAML round trip.

use kube::CustomResourceExt;
use serde_json::{Value as Json, json};
use tartan_crds::{
    BackendType, Condition, NodeSubnet, NodeSubnetStatus, OverlayNetwork, OverlayNetworkSpec,
};

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn columns(crd: &Crd) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.type_, c.json_path))
        .collect()
}

fn schema(crd: &Crd) -> Json {
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .expect("schema")
            .open_api_v3_schema,
    )
    .expect("json")
}

fn at<'a>(schema: &'a Json, path: &[&str]) -> &'a Json {
    path.iter().fold(schema, |node, key| {
        node.get("properties")
            .and_then(|p| p.get(*key))
            .unwrap_or_else(|| panic!("no property {key} in {path:?}"))
    })
}

fn rules(node: &Json) -> Vec<String> {
    node.get("x-kubernetes-validations")
        .and_then(Json::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

const READY: &str = r#".status.conditions[?(@.type=="Ready")].status"#;

#[test]
fn overlay_network_names_scope_and_columns() {
    let crd = OverlayNetwork::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("overlaynetworks.tartan.dev")
    );
    assert_eq!(crd.spec.group, "tartan.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["onet".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["tartan".to_string()]));
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    let status = crd.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref());
    assert!(status.is_some(), "status subresource");
    let expected = [
        ("CIDR", "string", ".spec.cidr"),
        ("BACKEND", "string", ".spec.backend.type"),
        ("ALLOCATED", "integer", ".status.allocated"),
        ("CAPACITY", "integer", ".status.capacity"),
        ("READY", "string", READY),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(columns(&crd), expected);
}

#[test]
fn node_subnet_names_scope_and_columns() {
    let crd = NodeSubnet::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("nodesubnets.tartan.dev"));
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["nsub".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["tartan".to_string()]));
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let expected = [
        ("NODE", "string", ".spec.nodeName"),
        ("CIDR", "string", ".spec.cidr"),
        ("NODE-IP", "string", ".status.nodeIP"),
        ("BACKEND", "string", ".status.backend"),
        ("READY", "string", READY),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(columns(&crd), expected);
}

/// Follows a printer column's JSONPath (`.a.b[?(filter)].c`) through the schema.
fn resolve<'a>(schema: &'a Json, json_path: &str) -> Option<&'a Json> {
    let mut node = schema;
    let mut rest = json_path;
    while let Some(stripped) = rest.strip_prefix('.') {
        let end = stripped.find(['.', '[']).unwrap_or(stripped.len());
        node = node.get("properties")?.get(&stripped[..end])?;
        rest = &stripped[end..];
        if rest.starts_with('[') {
            let close = rest
                .find(")]")
                .map(|i| i + 2)
                .or_else(|| rest.find(']').map(|i| i + 1))?;
            node = node.get("items")?;
            rest = &rest[close..];
        }
    }
    rest.is_empty().then_some(node)
}

#[test]
fn every_printer_column_points_at_a_schema_field() {
    for crd in [OverlayNetwork::crd(), NodeSubnet::crd()] {
        let schema = schema(&crd);
        for (name, ty, path) in columns(&crd) {
            if path == ".metadata.creationTimestamp" {
                continue;
            }
            let field = resolve(&schema, &path)
                .unwrap_or_else(|| panic!("column {name}: {path} is not in the schema"));
            let schema_type = field["type"].as_str().unwrap_or("string");
            assert_eq!(
                schema_type, ty,
                "column {name}: {path} has type {schema_type}"
            );
        }
    }
}

#[test]
fn overlay_network_defaults_and_bounds() {
    let schema = schema(&OverlayNetwork::crd());
    let spec = at(&schema, &["spec"]);
    assert_eq!(spec["required"], json!(["cidr"]));
    assert_eq!(
        at(&schema, &["spec", "nodePrefixLength"])["default"],
        json!(24)
    );
    assert_eq!(
        at(&schema, &["spec", "ipv6NodePrefixLength"])["default"],
        json!(64)
    );
    assert_eq!(at(&schema, &["spec", "masquerade"])["default"], json!(true));
    let backend = at(&schema, &["spec", "backend"]);
    assert_eq!(backend["default"]["type"], json!("vxlan"));
    assert_eq!(
        backend["default"]["vxlan"],
        json!({"vni": 1, "port": 8472, "directRouting": false})
    );
    assert_eq!(backend["default"]["udp"], json!({"port": 8285}));
    assert_eq!(backend["default"]["wireguard"], json!({"port": 51820}));
    let ty = at(&schema, &["spec", "backend", "type"]);
    assert_eq!(
        ty["enum"],
        json!(["vxlan", "host-gw", "udp", "bgp", "wireguard"])
    );
    let vni = at(&schema, &["spec", "backend", "vxlan", "vni"]);
    assert_eq!(
        (vni["minimum"].as_f64(), vni["maximum"].as_f64()),
        (Some(1.0), Some(16_777_215.0))
    );
    for port in [
        &["spec", "backend", "vxlan", "port"][..],
        &["spec", "backend", "udp", "port"][..],
        &["spec", "backend", "wireguard", "port"][..],
    ] {
        let port = at(&schema, port);
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0))
        );
    }
    let prefix = at(&schema, &["spec", "nodePrefixLength"]);
    assert_eq!(
        (prefix["minimum"].as_f64(), prefix["maximum"].as_f64()),
        (Some(1.0), Some(30.0))
    );
    let peers = at(&schema, &["spec", "backend", "bgp", "peers"]);
    assert_eq!(
        peers["x-kubernetes-list-type"],
        json!("map"),
        "no duplicate peers"
    );
    let conditions = at(&schema, &["status", "conditions"]);
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn every_validation_rule_is_in_the_schema() {
    let on = schema(&OverlayNetwork::crd());
    let ipv4 = tartan_crds::overlay_network::RULE_IPV4_NETWORK;
    let ipv6 = tartan_crds::overlay_network::RULE_IPV6_NETWORK;
    assert_eq!(
        rules(at(&on, &["spec", "cidr"])),
        vec![ipv4.to_string(), "self == oldSelf".into()]
    );
    assert_eq!(
        rules(at(&on, &["spec", "ipv6Cidr"])),
        vec![ipv6.to_string(), "self == oldSelf".into()]
    );
    assert_eq!(
        rules(at(&on, &["spec", "nodePrefixLength"])),
        vec!["self == oldSelf"]
    );
    assert_eq!(
        rules(at(&on, &["spec", "ipv6NodePrefixLength"])),
        vec!["self == oldSelf"]
    );
    assert_eq!(
        rules(at(&on, &["spec", "backend", "type"])),
        Vec::<String>::new(),
        "backend.type is mutable"
    );
    let spec_rules = rules(at(&on, &["spec"]));
    assert_eq!(spec_rules.len(), 3);
    assert!(spec_rules[0].contains("self.nodePrefixLength >= cidr(self.cidr).prefixLength()"));
    assert!(
        spec_rules[1].contains("self.ipv6NodePrefixLength >= cidr(self.ipv6Cidr).prefixLength()")
    );
    assert_eq!(spec_rules[2], "has(self.ipv6Cidr) == has(oldSelf.ipv6Cidr)");

    let ns = schema(&NodeSubnet::crd());
    assert_eq!(rules(at(&ns, &["spec"])), vec!["self == oldSelf"]);
    assert_eq!(rules(at(&ns, &["spec", "cidr"])), vec![ipv4.to_string()]);
    assert_eq!(
        rules(at(&ns, &["spec", "ipv6Cidr"])),
        vec![ipv6.to_string()]
    );
    assert_eq!(
        rules(at(&ns, &["status", "nodeIP"])),
        vec!["isIP(self) && ip(self).family() == 4"]
    );
    assert_eq!(
        rules(at(&ns, &["status", "nodeIPv6"])),
        vec!["isIP(self) && ip(self).family() == 6"]
    );
    assert!(at(&ns, &["status", "vtepMAC"])["pattern"].is_string());
}

#[test]
fn overlay_network_yaml_round_trip_and_defaults() {
    let yaml = r#"
apiVersion: tartan.dev/v1alpha1
kind: OverlayNetwork
metadata:
  name: default
spec:
  cidr: 10.244.0.0/16
  ipv6Cidr: fd00:10:244::/56
  backend:
    type: host-gw
    vxlan:
      directRouting: true
  mtu: 1450
status:
  capacity: 256
  allocated: 3
  nodesReady: 2
  nodesByBackend:
    vxlan: 1
    host-gw: 2
  conditions:
  - type: Ready
    status: "True"
    reason: AllNodesReady
    message: 3 of 3 nodes programmed
    lastTransitionTime: "2026-11-25T08:00:00Z"
    observedGeneration: 2
  observedGeneration: 2
"#;
    let on: OverlayNetwork = serde_yaml::from_str(yaml).expect("parses");
    assert_eq!(on.spec.node_prefix_length, 24);
    assert_eq!(on.spec.ipv6_node_prefix_length, 64);
    assert_eq!(on.spec.backend.type_, BackendType::HostGw);
    assert_eq!(on.spec.backend.vxlan.vni, 1);
    assert_eq!(on.spec.backend.vxlan.port, 8472);
    assert!(on.spec.backend.vxlan.direct_routing);
    assert_eq!(on.spec.backend.udp.port, 8285);
    assert!(on.spec.masquerade);
    let status = on.status.clone().expect("status");
    assert_eq!(status.nodes_by_backend.get(&BackendType::HostGw), Some(&2));
    assert!(tartan_crds::condition::is_true(&status.conditions, "Ready"));
    let again: OverlayNetwork =
        serde_yaml::from_str(&serde_yaml::to_string(&on).expect("writes")).expect("re-parses");
    assert_eq!(again.spec, on.spec);
    assert_eq!(again.status, on.status);
    on.spec.validate().expect("valid");
}

#[test]
fn node_subnet_yaml_round_trip_uses_the_promised_field_names() {
    let yaml = r#"
apiVersion: tartan.dev/v1alpha1
kind: NodeSubnet
metadata:
  name: node-a
spec:
  nodeName: node-a
  network: default
  cidr: 10.244.3.0/24
  ipv6Cidr: fd00:10:244:3::/64
status:
  nodeIP: 192.168.0.3
  nodeIPv6: fd00:192:168::3
  vtepMAC: 0e:2a:c0:a8:00:03
  backend: vxlan
  receiveBackends: [vxlan, host-gw]
  mtu: 1450
  conditions:
  - type: Ready
    status: "False"
    reason: ApplyFailed
    message: "netlink: 1 of 3 kernel changes failed; first: File exists"
    lastTransitionTime: "2026-11-25T08:00:00Z"
  observedGeneration: 1
"#;
    let ns: NodeSubnet = serde_yaml::from_str(yaml).expect("parses");
    let status: &NodeSubnetStatus = ns.status.as_ref().expect("status");
    assert_eq!(
        status.receive_backends,
        vec![BackendType::Vxlan, BackendType::HostGw]
    );
    let out: Json = serde_json::to_value(&ns).expect("json");
    let fields: Vec<&str> = out["status"]
        .as_object()
        .expect("map")
        .keys()
        .map(String::as_str)
        .collect();
    for f in [
        "nodeIP",
        "nodeIPv6",
        "vtepMAC",
        "backend",
        "receiveBackends",
        "mtu",
        "conditions",
        "observedGeneration",
    ] {
        assert!(fields.contains(&f), "status.{f} missing from {fields:?}");
    }
    let again: NodeSubnet =
        serde_yaml::from_str(&serde_yaml::to_string(&ns).expect("writes")).expect("re-parses");
    assert_eq!(again.spec, ns.spec);
    assert_eq!(again.status, ns.status);
    let valid = ns.spec.validate().expect("valid");
    assert_eq!(valid.cidr.to_string(), "10.244.3.0/24");
}

#[test]
fn crate_validation_refuses_what_the_schema_refuses() {
    let err = OverlayNetworkSpec::with_cidr("10.244.0.0/33")
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("spec.cidr"), "{err}");
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.vxlan.vni = 0x0100_0000;
    let err = spec.validate().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.backend.vxlan.vni: invalid value \"16777216\""),
        "{err}"
    );
    let _ = Condition::truthy("Ready", "Programmed");
}
