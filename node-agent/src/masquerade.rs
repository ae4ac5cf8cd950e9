//! The nftables table `inet tartan`: masquerade for pod traffic leaving the
//! cluster CIDR, and forward-accept for the cluster CIDR. Replaced whole in one
//! `nft` transaction (add, delete, re-create), so there is never a moment
//! without rules and never a half-written table.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{NftablesError, apply_ruleset_with_args};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NAT, NATFlag, Operator, Statement};
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

/// The transaction that replaces the table with `spec`'s rules, or removes it
/// when `spec` is `None` (network gone, masquerade off) .
pub fn ruleset(spec: Option<&MasqueradeSpec>) -> Nftables<'static> {
    let mut batch = Batch::new();
    // "add" then "delete" removes the table whether or not it existed.
    batch.add(table());
    batch.delete(table());
    let Some(spec) = spec.filter(|s| s.masquerade) else {
        return batch.to_nftables();
    };
    batch.add(table());
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
        };
        let json = serde_json::to_value(ruleset(Some(&spec))).expect("json");
        assert_eq!(json["nftables"].as_array().map(Vec::len), Some(2));
        assert_eq!(serde_json::to_value(ruleset(None)).expect("json"), json);
    }
}
