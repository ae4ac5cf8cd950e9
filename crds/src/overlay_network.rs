//! `OverlayNetwork`: the cluster's pod network (CIDR, per-node prefix, backend).
//!
//! `cidr`, `ipv6Cidr` and both node prefix lengths are immutable because every
//! allocation recorded in a `NodeSubnet` depends on them; `backend` is mutable:
//! editing `backend.type` is Tartan's live backend switch.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::condition::Condition;

/// Kubernetes CEL: an IPv4 network in CIDR form with no host bits set.
pub const RULE_IPV4_NETWORK: &str =
    "isCIDR(self) && cidr(self).ip().family() == 4 && cidr(self) == cidr(self).masked()";
/// Kubernetes CEL: an IPv6 network in CIDR form with no host bits set.
pub const RULE_IPV6_NETWORK: &str =
    "isCIDR(self) && cidr(self).ip().family() == 6 && cidr(self) == cidr(self).masked()";

/// Spec of the cluster pod network managed by Tartan.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tartan.dev",
    version = "v1alpha1",
    kind = "OverlayNetwork",
    plural = "overlaynetworks",
    shortname = "onet",
    category = "tartan",
    status = "OverlayNetworkStatus",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"BACKEND","type":"string","jsonPath":".spec.backend.type"}"#,
    printcolumn = r#"{"name":"ALLOCATED","type":"integer","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"CAPACITY","type":"integer","jsonPath":".status.capacity"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!isCIDR(self.cidr) || cidr(self.cidr).ip().family() != 4 || (self.nodePrefixLength >= cidr(self.cidr).prefixLength() && self.nodePrefixLength - cidr(self.cidr).prefixLength() <= 16)")
        .message("nodePrefixLength must be at least the prefix length of cidr and at most 16 longer (65536 node subnets)")
        .field_path(".nodePrefixLength"),
    validation = Rule::new("!has(self.ipv6Cidr) || !isCIDR(self.ipv6Cidr) || cidr(self.ipv6Cidr).ip().family() != 6 || (self.ipv6NodePrefixLength >= cidr(self.ipv6Cidr).prefixLength() && self.ipv6NodePrefixLength - cidr(self.ipv6Cidr).prefixLength() <= 16)")
        .message("ipv6NodePrefixLength must be at least the prefix length of ipv6Cidr and at most 16 longer (65536 node subnets)")
        .field_path(".ipv6NodePrefixLength"),
    validation = Rule::new("has(self.ipv6Cidr) == has(oldSelf.ipv6Cidr)")
        .message("ipv6Cidr is immutable: it cannot be added or removed after creation")
        .field_path(".ipv6Cidr")
)]
#[serde(rename_all = "camelCase")]
pub struct OverlayNetworkSpec {
    /// IPv4 pool the node subnets are cut from, e.g. 10.244.0.0/16. Immutable.
    #[schemars(length(max = 18))]
    #[x_kube(
        validation = Rule::new(RULE_IPV4_NETWORK).message("cidr must be an IPv4 network in CIDR form with no host bits set, e.g. 10.244.0.0/16"),
        validation = Rule::new("self == oldSelf").message("cidr is immutable")
    )]
    pub cidr: String,

    /// Optional IPv6 pool for dual-stack, e.g. fd00:10:244::/56. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43))]
    #[x_kube(
        validation = Rule::new(RULE_IPV6_NETWORK).message("ipv6Cidr must be an IPv6 network in CIDR form with no host bits set, e.g. fd00:10:244::/56"),
        validation = Rule::new("self == oldSelf").message("ipv6Cidr is immutable")
    )]
    pub ipv6_cidr: Option<String>,

    /// Prefix length of each node's IPv4 subnet. Immutable.
    #[serde(default = "default_node_prefix_length")]
    #[schemars(range(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodePrefixLength is immutable"))]
    pub node_prefix_length: u8,

    /// Prefix length of each node's IPv6 subnet. Immutable.
    #[serde(default = "default_ipv6_node_prefix_length")]
    #[schemars(range(min = 1, max = 120))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipv6NodePrefixLength is immutable"))]
    pub ipv6_node_prefix_length: u8,

    /// How packets travel between nodes. Mutable: changing `type` switches the
    /// backend on the live cluster, make-before-break.
    #[serde(default)]
    pub backend: Backend,

    /// Pod interface MTU; derived from the underlay and the backend when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: Option<u32>,

    /// Masquerade traffic from pods to destinations outside the cluster CIDR.
    #[serde(default = "default_true")]
    pub masquerade: bool,
}

/// Which data plane carries pod traffic between nodes, with each one's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type", default)]
    pub type_: BackendType,
    #[serde(default)]
    pub vxlan: VxlanConfig,
    #[serde(default)]
    pub udp: UdpConfig,
    #[serde(default)]
    pub bgp: BgpConfig,
    #[serde(default)]
    pub wireguard: WireguardConfig,
}

/// The data plane a node sends with.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendType {
    /// Kernel VXLAN encapsulation (default).
    #[default]
    Vxlan,
    /// Plain routes via peers' node IPs; needs L2 adjacency.
    HostGw,
    /// Userspace UDP encapsulation through a TUN device.
    Udp,
    /// Routes exchanged over BGP (BIRD); works across L3.
    Bgp,
    /// The udp backend's TUN datapath speaking WireGuard: encrypted, no
    /// kernel module needed.
    Wireguard,
}

impl BackendType {
    pub const ALL: [BackendType; 5] = [
        Self::Vxlan,
        Self::HostGw,
        Self::Udp,
        Self::Bgp,
        Self::Wireguard,
    ];

    /// The name used in the API, metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
            Self::Udp => "udp",
            Self::Bgp => "bgp",
            Self::Wireguard => "wireguard",
        }
    }
}

impl std::fmt::Display for BackendType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendType {
    type Err = crate::ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                crate::ValidationError::new(
                    "spec.backend.type",
                    s,
                    "must be one of vxlan, host-gw, udp, bgp, wireguard",
                )
            })
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VxlanConfig {
    /// VXLAN network identifier; the device is named `tartan.<vni>`.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16777215))]
    pub vni: u32,
    /// UDP port of the VXLAN underlay (8472 is the Linux and flannel default).
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// Route directly (host-gw style) to peers on the same L2 segment.
    #[serde(default)]
    pub direct_routing: bool,
}

/// The wireguard backend. Keys are per node: each agent makes its own pair,
/// keeps the private key in a file on the node and publishes the public key
/// in its NodeSubnet status; nothing secret is in this object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireguardConfig {
    /// UDP port WireGuard listens on (51820 is WireGuard's default).
    #[serde(default = "default_wireguard_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UdpConfig {
    /// UDP port the userspace encapsulation listens on.
    #[serde(default = "default_udp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfig {
    /// AS number of every node.
    #[serde(default = "default_as_number")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub as_number: u32,
    /// Every node peers with every other node.
    #[serde(default = "default_true")]
    pub node_to_node_mesh: bool,
    /// External BGP peers (routers), e.g. each rack's top-of-rack router
    /// limited by `nodeSelector` to the nodes of its rack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["address".into()]))]
    pub peers: Vec<BgpPeer>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeer {
    /// The peer's IP address.
    #[schemars(length(max = 39))]
    #[x_kube(validation = Rule::new("isIP(self)").message("address must be an IP address"))]
    pub address: String,
    /// The peer's AS number.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub as_number: u32,
    /// The TCP MD5 password of the session: a key of a Secret in the
    /// namespace Tartan runs in (never the password itself: this object is
    /// readable by every agent and every viewer of the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Only nodes whose labels match peer with this router (every node when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Routes sent to this peer keep their next hop (a route reflector or a
    /// router that is not on the nodes' segment), instead of this node's address.
    #[serde(default)]
    pub keep_original_next_hop: bool,
}

/// A key of a Secret in Tartan's namespace.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl std::fmt::Display for SecretKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {} key {}", self.name, self.key)
    }
}

impl BgpPeer {
    /// A peer with only an address and an AS number.
    pub fn new(address: &str, as_number: u32) -> Self {
        Self {
            address: address.into(),
            as_number,
            password_secret_ref: None,
            node_selector: None,
            keep_original_next_hop: false,
        }
    }
}

/// Observed state of the pod network, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OverlayNetworkStatus {
    /// How many IPv4 node subnets the pool holds.
    #[serde(default)]
    pub capacity: u32,
    /// How many node subnets are allocated.
    #[serde(default)]
    pub allocated: u32,
    /// How many nodes report their NodeSubnet Ready.
    #[serde(default)]
    pub nodes_ready: u32,
    /// How many nodes send with each backend: the rollout of a backend switch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_by_backend: BTreeMap<BackendType, u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_node_prefix_length() -> u8 {
    24
}
fn default_ipv6_node_prefix_length() -> u8 {
    64
}
fn default_true() -> bool {
    true
}
fn default_vni() -> u32 {
    1
}
fn default_vxlan_port() -> u32 {
    8472
}
fn default_udp_port() -> u32 {
    8285
}
fn default_wireguard_port() -> u32 {
    51820
}
fn default_as_number() -> u32 {
    64512
}

impl Default for VxlanConfig {
    fn default() -> Self {
        Self {
            vni: default_vni(),
            port: default_vxlan_port(),
            direct_routing: false,
        }
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            port: default_udp_port(),
        }
    }
}

impl Default for WireguardConfig {
    fn default() -> Self {
        Self {
            port: default_wireguard_port(),
        }
    }
}

impl Default for BgpConfig {
    fn default() -> Self {
        Self {
            as_number: default_as_number(),
            node_to_node_mesh: true,
            peers: Vec::new(),
        }
    }
}

impl OverlayNetworkSpec {
    /// A spec with `cidr` and every other field at its default.
    pub fn with_cidr(cidr: impl Into<String>) -> Self {
        Self {
            cidr: cidr.into(),
            ipv6_cidr: None,
            node_prefix_length: default_node_prefix_length(),
            ipv6_node_prefix_length: default_ipv6_node_prefix_length(),
            backend: Backend::default(),
            mtu: None,
            masquerade: true,
        }
    }
}
