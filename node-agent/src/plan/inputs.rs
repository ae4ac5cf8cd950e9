//! From API objects to planner inputs: parse once, report what does not parse.

use std::collections::BTreeSet;

use tartan_crds::{NodeSubnet, NodeSubnetSpec, NodeSubnetStatus, ValidNodeSubnet, ValidationError};

use super::Peer;

impl Peer {
    /// A peer from its NodeSubnet. A malformed spec is an error (the peer is
    /// left out); a malformed status becomes `endpoint: Err` and a reported problem.
    pub fn from_node_subnet(subnet: &NodeSubnet) -> Result<Peer, ValidationError> {
        Self::from_parts(&subnet.spec, subnet.status.as_ref())
    }

    /// A peer from a NodeSubnet's spec and status, as the index keeps them.
    pub fn from_parts(
        spec: &NodeSubnetSpec,
        status: Option<&NodeSubnetStatus>,
    ) -> Result<Peer, ValidationError> {
        let spec: ValidNodeSubnet = spec.validate()?;
        let (endpoint, backend, receive) = match status {
            Some(status) => (
                status.endpoint().map_err(|e| e.to_string()),
                status.backend,
                status.receive_backends.iter().copied().collect(),
            ),
            None => (Ok(Default::default()), None, BTreeSet::new()),
        };
        Ok(Peer {
            name: spec.node_name.clone(),
            subnet: spec,
            endpoint,
            backend,
            receive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tartan_crds::{BackendType, NodeSubnetSpec, NodeSubnetStatus};

    fn subnet(status: Option<NodeSubnetStatus>) -> NodeSubnet {
        let mut s = NodeSubnet::new(
            "b",
            NodeSubnetSpec {
                node_name: "b".into(),
                network: "default".into(),
                cidr: "10.244.2.0/24".into(),
                ipv6_cidr: None,
            },
        );
        s.status = status;
        s
    }

    #[test]
    fn parses_spec_and_status() {
        let peer = Peer::from_node_subnet(&subnet(Some(NodeSubnetStatus {
            node_ip: Some("192.168.0.2".into()),
            vtep_mac: Some("0e:2a:c0:a8:00:02".into()),
            backend: Some(BackendType::Vxlan),
            receive_backends: vec![BackendType::Vxlan, BackendType::HostGw],
            ..Default::default()
        })))
        .expect("valid");
        assert_eq!(peer.subnet.cidr.to_string(), "10.244.2.0/24");
        assert_eq!(
            peer.endpoint
                .expect("endpoint")
                .node_ip
                .map(|i| i.to_string()),
            Some("192.168.0.2".into())
        );
        assert_eq!(peer.receive.len(), 2);
    }

    #[test]
    fn a_bad_status_is_kept_as_a_problem_and_a_bad_spec_refused() {
        let peer = Peer::from_node_subnet(&subnet(Some(NodeSubnetStatus {
            node_ip: Some("nope".into()),
            ..Default::default()
        })))
        .expect("spec is fine");
        assert!(peer.endpoint.unwrap_err().starts_with("status.nodeIP"));
        let mut bad = subnet(None);
        bad.spec.cidr = "10.244.2.1/24".into();
        assert_eq!(Peer::from_node_subnet(&bad).unwrap_err().field, "spec.cidr");
    }
}
