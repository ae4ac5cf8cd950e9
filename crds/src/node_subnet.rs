//! `NodeSubnet`: one node's pod subnet (spec, by the operator) and what that
//! node's agent has programmed (status, by the agent).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::overlay_network::{BackendType, RULE_IPV4_NETWORK, RULE_IPV6_NETWORK};

/// The allocation of a pod subnet to one node. Named after the node and owned
/// by the Node object, so the garbage collector removes it with the node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tartan.dev",
    version = "v1alpha1",
    kind = "NodeSubnet",
    plural = "nodesubnets",
    shortname = "nsub",
    category = "tartan",
    status = "NodeSubnetStatus",
    printcolumn = r#"{"name":"NODE","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"NODE-IP","type":"string","jsonPath":".status.nodeIP"}"#,
    printcolumn = r#"{"name":"BACKEND","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("NodeSubnet spec is immutable: delete the NodeSubnet to renumber the node"))]
#[serde(rename_all = "camelCase")]
pub struct NodeSubnetSpec {
    /// The Node this subnet belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// The OverlayNetwork the subnet was cut from.
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
    /// The node's IPv4 pod subnet, e.g. 10.244.3.0/24.
    #[schemars(length(max = 18))]
    #[x_kube(validation = Rule::new(RULE_IPV4_NETWORK)
        .message("cidr must be an IPv4 network in CIDR form with no host bits set, e.g. 10.244.3.0/24"))]
    pub cidr: String,
    /// The node's IPv6 pod subnet when the network is dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43))]
    #[x_kube(validation = Rule::new(RULE_IPV6_NETWORK)
        .message("ipv6Cidr must be an IPv6 network in CIDR form with no host bits set, e.g. fd00:10:244:3::/64"))]
    pub ipv6_cidr: Option<String>,
}

/// What peers need to reach this node, and whether its data plane is
/// programmed; written by that node's agent only.
///
/// Every agent watches every NodeSubnet, so nothing here may change when a
/// peer joins or leaves: no peer counts, no BGP session or route counts (those
/// are the agent's metrics). A join then costs O(1) writes cluster-wide.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeSubnetStatus {
    /// The node's underlay IPv4 address (VXLAN/UDP tunnel endpoint, host-gw next hop).
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4")
        .message("nodeIP must be an IPv4 address"))]
    pub node_ip: Option<String>,
    /// The node's underlay IPv6 address, when it has one.
    #[serde(rename = "nodeIPv6", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6")
        .message("nodeIPv6 must be an IPv6 address"))]
    pub node_ipv6: Option<String>,
    /// MAC address of the node's VXLAN device (peers' neighbour and FDB entries).
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"))]
    pub vtep_mac: Option<String>,
    /// The node's WireGuard public key (base64, as `wg` prints it), when it
    /// receives on the wireguard backend. The private key never leaves the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))]
    pub wireguard_public_key: Option<String>,
    /// The backend this node sends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendType>,
    /// The backends this node can receive on right now (make-before-break switch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub receive_backends: Vec<BackendType>,
    /// MTU of the node's pod interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
