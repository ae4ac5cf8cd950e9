//! Fake nodes: Node objects with no machine behind them, addressed in
//! 198.18.0.0/15 (RFC 2544's benchmark range: no traffic ever goes there),
//! created with bounded concurrency, as kubelets register nodes: one POST
//! carrying the status.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

/// Every fake node's name starts with this; the simulated agent writes the
/// status of these NodeSubnets and of no other.
pub const PREFIX: &str = "fake-";

/// Addresses in 198.18.0.0/15, after its network address.
pub const CAPACITY: usize = (1 << 17) - 2;

/// The name of fake node `index` (0-based).
pub fn name(index: usize) -> String {
    format!("{PREFIX}{index:05}")
}

/// The index of a fake node's name (None: not a fake node).
pub fn index_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Fake node `index`'s InternalIP: 198.18.0.1, 198.18.0.2, ... 198.19.255.254.
pub fn ip(index: usize) -> Ipv4Addr {
    assert!(index < CAPACITY, "fake node {index}: 198.18.0.0/15 is full");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 1 + index as u32)
}

/// The VTEP MAC a real agent would derive from `ip`: locally administered
/// `0e:2a` and the four address bytes.
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0e:2a:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The Node object of fake node `index`.
pub fn node(index: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name(index)),
            labels: Some([("tartan.dev/bench".to_string(), "fake".to_string())].into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip(index).to_string(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates fake nodes `range`, at most `in_flight` at a time; each create is
/// retried a few times (the API server may shed load with a 429 or 5xx).
pub async fn create(
    client: &Client,
    range: std::ops::Range<usize>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(range)
        .map(|i| create_one(&nodes, i))
        .buffer_unordered(in_flight.max(1))
        .try_collect::<()>()
        .await
}

async fn create_one(nodes: &Api<Node>, index: usize) -> anyhow::Result<()> {
    let node = node(index);
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => return Ok(()),
            // Already there: a retry of a create that did go through.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt > 1 => return Ok(()),
            Err(e) if attempt < 5 => {
                tracing::debug!(index, attempt, "creating a fake node: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating Node {}", name(index)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_walk_the_benchmark_range() {
        assert_eq!(ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ip(254), Ipv4Addr::new(198, 18, 0, 255));
        assert_eq!(ip(255), Ipv4Addr::new(198, 18, 1, 0));
        assert_eq!(ip(CAPACITY - 1), Ipv4Addr::new(198, 19, 255, 254));
        let range: ipnet::Ipv4Net = "198.18.0.0/15".parse().expect("cidr");
        assert!(range.contains(&ip(4_999)));
    }

    #[test]
    fn the_mac_is_the_agents_derivation() {
        assert_eq!(vtep_mac(ip(0)), "0e:2a:c6:12:00:01");
        // Same rule as the real agent's (see tests/e2e/tests/agent.rs).
        assert_eq!(
            vtep_mac(Ipv4Addr::new(192, 168, 100, 11)),
            "0e:2a:c0:a8:64:0b"
        );
    }

    #[test]
    fn names_round_trip_and_others_are_not_fake() {
        assert_eq!(name(42), "fake-00042");
        assert_eq!(index_of(&name(42)), Some(42));
        assert_eq!(index_of(&name(123_456)), Some(123_456));
        for other in ["n1", "fake-", "fake-12a", "fake--1", "xfake-00001"] {
            assert_eq!(index_of(other), None, "{other}");
        }
    }

    #[test]
    fn a_node_carries_its_address_in_the_create() {
        let node = node(7);
        let addresses = node.status.and_then(|s| s.addresses).expect("addresses");
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "198.18.0.8");
    }
}
