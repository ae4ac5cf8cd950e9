//! The nftables table `inet tartan`: masquerade for pod traffic leaving the
//! cluster CIDR, forward-accept for the cluster CIDR, and the bound on what
//! the VXLAN device may deliver. Replaced whole in one `nft` transaction
//! (add, delete, re-create), so there is never a moment without rules and
//! never a half-written table.
//!
//! The VXLAN bound: once the kernel has decapsulated a packet, nothing says
//! which VTEP sent it, so a peer's inner source cannot be checked against
//! that peer (the udp backend checks exactly that). What can be refused is a
//! source no peer may use: this node's own subnets (a peer passing for one
//! of our pods), and, with masquerade on, anything outside the cluster CIDR
//! (a peer forwards outside traffic masqueraded, so it arrives with a pod
//! network source). Dropped packets count in the named counter
//! `vxlan_spoofed`.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{NftablesError, apply_ruleset_with_args};
use nftables::schema::{Chain, Counter as NftCounter, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Match, NAT, NATFlag, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::netns::NetNs;
use crate::plan::MasqueradeSpec;

pub const TABLE: &str = "tartan";

fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: u32::from(net.prefix_len()),
    }))
}

fn field(net: IpNet, field: &'static str) -> Expression<'static> {
    let protocol = if matches!(net, IpNet::V4(_)) {
        "ip"
    } else {
        "ip6"
    };
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn matches(net: IpNet, which: &'static str, value: IpNet) -> Statement<'static> {
    Statement::Match(Match {
        left: field(net, which),
        right: prefix(value),
        op: Operator::EQ,
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        ..Default::default()
    })
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

/// The named counter of packets the VXLAN bound drops.
pub const VXLAN_SPOOFED: &str = "vxlan_spoofed";

fn matches_not(net: IpNet, which: &'static str, value: IpNet) -> Statement<'static> {
    Statement::Match(Match {
        left: field(net, which),
        right: prefix(value),
        op: Operator::NEQ,
    })
}

fn from_device(device: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Iifname,
        })),
        right: Expression::String(Cow::Owned(device.to_string())),
        op: Operator::EQ,
    })
}

fn count_and_drop() -> [Statement<'static>; 2] {
    [
        Statement::Counter(Counter::Named(Cow::Borrowed(VXLAN_SPOOFED))),
        Statement::Drop(None),
    ]
}

/// Drops what arrives on `device` from this node's own subnets, and (with
/// masquerade) from outside the cluster; IPv6 link-local control traffic
/// between the VTEPs is left alone (it cannot be forwarded to a pod).
fn vxlan_bound(batch: &mut Batch<'static>, spec: &MasqueradeSpec, device: &str) {
    batch.add(NfListObject::Counter(NftCounter {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(VXLAN_SPOOFED),
        ..Default::default()
    }));
    batch.add(base_chain(
        "prerouting",
        NfChainType::Filter,
        NfHook::Prerouting,
        -300,
    ));
    for own in &spec.own {
        let mut expr = vec![from_device(device), matches(*own, "saddr", *own)];
        expr.extend(count_and_drop());
        batch.add(rule("prerouting", expr));
    }
    if !spec.masquerade {
        return;
    }
    let link_local: IpNet = "fe80::/10".parse().unwrap_or(IpNet::V6(Default::default()));
    let clusters = [
        Some(IpNet::V4(spec.cluster)),
        spec.cluster_v6.map(IpNet::V6),
    ];
    for cluster in clusters.into_iter().flatten() {
        let mut expr = vec![from_device(device), matches_not(cluster, "saddr", cluster)];
        if matches!(cluster, IpNet::V6(_)) {
            expr.push(matches_not(cluster, "saddr", link_local));
        }
        expr.extend(count_and_drop());
        batch.add(rule("prerouting", expr));
    }
}

/// The transaction that replaces the table with `spec`'s rules, or removes it
/// when `spec` is `None` (network gone), or when masquerade is off and no
/// VXLAN device receives.
pub fn ruleset(spec: Option<&MasqueradeSpec>) -> Nftables<'static> {
    let mut batch = Batch::new();
    // "add" then "delete" removes the table whether or not it existed.
    batch.add(table());
    batch.delete(table());
    let Some(spec) = spec.filter(|s| s.masquerade || s.vxlan_device.is_some()) else {
        return batch.to_nftables();
    };
    batch.add(table());
    if let Some(device) = &spec.vxlan_device {
        vxlan_bound(&mut batch, spec, device);
    }
    if !spec.masquerade {
        return batch.to_nftables();
    }
    batch.add(base_chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    batch.add(base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    ));
    let clusters: Vec<IpNet> = std::iter::once(IpNet::V4(spec.cluster))
        .chain(spec.cluster_v6.map(IpNet::V6))
        .collect();
    for cluster in clusters {
        let multicast: IpNet = match cluster {
            IpNet::V4(_) => "224.0.0.0/4".parse().unwrap_or(cluster),
            IpNet::V6(_) => "ff00::/8".parse().unwrap_or(cluster),
        };
        // Pod to pod: untouched. Pod to multicast: untouched. Pod to anywhere else: masquerade.
        batch.add(rule(
            "postrouting",
            vec![
                matches(cluster, "saddr", cluster),
                matches(cluster, "daddr", cluster),
                Statement::Return(None),
            ],
        ));
        batch.add(rule(
            "postrouting",
            vec![
                matches(cluster, "saddr", cluster),
                matches(cluster, "daddr", multicast),
                Statement::Return(None),
            ],
        ));
        let nat = NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        };
        batch.add(rule(
            "postrouting",
            vec![
                matches(cluster, "saddr", cluster),
                Statement::Masquerade(Some(nat)),
            ],
        ));
        batch.add(rule(
            "forward",
            vec![matches(cluster, "saddr", cluster), Statement::Accept(None)],
        ));
        batch.add(rule(
            "forward",
            vec![matches(cluster, "daddr", cluster), Statement::Accept(None)],
        ));
    }
    batch.to_nftables()
}

/// Applies the table in `netns` with one `nft -j -f -`.
pub fn apply(netns: &NetNs, spec: Option<&MasqueradeSpec>) -> Result<(), NftablesError> {
    let ruleset = ruleset(spec);
    match netns.path() {
        None => apply_ruleset_with_args(&ruleset, None::<&str>, &[] as &[&str]),
        Some(path) => {
            let net = format!("--net={}", path.display());
            apply_ruleset_with_args(
                &ruleset,
                Some("nsenter"),
                [net.as_str(), "nft"].iter().copied(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_replaced_in_one_transaction() {
        let spec = MasqueradeSpec {
            cluster: "10.244.0.0/16".parse().expect("cidr"),
            cluster_v6: None,
            masquerade: true,
            own: vec!["10.244.1.0/24".parse().expect("cidr")],
            vxlan_device: None,
        };
        let json = serde_json::to_value(ruleset(Some(&spec))).expect("json");
        let commands = json["nftables"].as_array().expect("commands");
        assert!(commands[0].get("add").is_some() && commands[1].get("delete").is_some());
        let text = json.to_string();
        assert!(text.contains("\"masquerade\""), "{text}");
        assert!(text.contains("fully-random"));
        assert!(text.contains("10.244.0.0"));
        assert_eq!(commands.len(), 3 + 2 + 5);
    }

    #[test]
    fn masquerade_off_removes_the_table() {
        let spec = MasqueradeSpec {
            cluster: "10.244.0.0/16".parse().expect("cidr"),
            cluster_v6: None,
            masquerade: false,
            own: vec!["10.244.1.0/24".parse().expect("cidr")],
            vxlan_device: None,
        };
        let json = serde_json::to_value(ruleset(Some(&spec))).expect("json");
        assert_eq!(json["nftables"].as_array().map(Vec::len), Some(2));
        assert_eq!(serde_json::to_value(ruleset(None)).expect("json"), json);
    }

    fn vxlan_rules(masquerade: bool) -> Vec<String> {
        let spec = MasqueradeSpec {
            cluster: "10.244.0.0/16".parse().expect("cidr"),
            cluster_v6: Some("fd00:10:244::/48".parse().expect("cidr")),
            masquerade,
            own: vec![
                "10.244.1.0/24".parse().expect("cidr"),
                "fd00:10:244:1::/64".parse().expect("cidr"),
            ],
            vxlan_device: Some("tartan.1".into()),
        };
        let json = serde_json::to_value(ruleset(Some(&spec))).expect("json");
        json["nftables"]
            .as_array()
            .expect("commands")
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "prerouting")
            .map(|c| c["add"]["rule"]["expr"].to_string())
            .collect()
    }

    #[test]
    fn vxlan_refuses_our_own_subnets_and_with_masquerade_what_is_outside_the_cluster() {
        let rules = vxlan_rules(true);
        assert_eq!(rules.len(), 4, "{rules:#?}");
        for rule in &rules {
            assert!(rule.contains(r#""tartan.1""#), "{rule}");
            assert!(rule.contains(VXLAN_SPOOFED), "{rule}");
            assert!(rule.contains(r#""drop""#), "{rule}");
        }
        assert!(rules[0].contains(r#""==""#) && rules[0].contains("10.244.1.0"));
        assert!(rules[1].contains("fd00:10:244:1::"));
        assert!(rules[2].contains(r#""!=""#) && rules[2].contains("10.244.0.0"));
        assert!(rules[3].contains("fd00:10:244::") && rules[3].contains("fe80::"));
    }

    #[test]
    fn without_masquerade_vxlan_takes_outside_sources_but_not_our_own() {
        let rules = vxlan_rules(false);
        assert_eq!(rules.len(), 2, "{rules:#?}");
        assert!(rules.iter().all(|r| r.contains(r#""==""#)));
    }
}
