//! The compiled state as nftables (JSON commands for one `nft -j -f -`
//! transaction): the whole table, or only what changed since the last one.
//!
//! ```text
//! table inet tartan-policy
//!   chain forward  (hook forward, priority -10, policy accept)
//!     ct mark @generation return                # admitted under the current rules
//!     jump check
//!     ct mark set meta nfproto map @generation_mark   # remember: admitted now
//!   chain check
//!     ct original ip saddr vmap @egress4        # the sending local pod's group
//!     ct reply ip saddr vmap @ingress4          # the receiving local pod's group
//!   chain <group>: one rule per allow → return; last: counter, drop
//! ```
//!
//! Every packet of a connection, both directions, is judged by the
//! connection's original tuple after DNAT (`ct original` source, `ct reply`
//! source and source port, which are the destination kube-proxy chose): a
//! reply is admitted exactly when its request is. A conntrack mark records
//! the rules' generation that last admitted the connection; a change bumps
//! the generation, so each established connection is judged again at its
//! next packet, and one that the new rules deny is cut there. We chose the
//! mark over deleting conntrack entries (ctnetlink): it needs no scan of the
//! conntrack table, has no window between the rule change and the deletion,
//! and a connection a later change allows again simply carries on. The table
//! owns the conntrack mark of forwarded connections (kube-proxy uses the
//! packet mark, not this one).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::compile::{Allow, Compiled, Direction, GroupId, SetElements, SetId};

pub const TABLE: &str = "tartan-policy";
/// Generations wrap within 24 bits (marks above the low byte); 0 means
/// "never judged".
pub const GENERATIONS: u32 = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }
    fn ct(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn nfproto(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

fn base(object: Value) -> Value {
    let mut object = object;
    object["family"] = "inet".into();
    object["table"] = TABLE.into();
    object
}

fn map_name(direction: Direction, family: Family) -> String {
    let d = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    format!("{d}{}", family.suffix())
}

fn set_name(id: &SetId, family: Family) -> String {
    format!("{}-{}", id.0, family.suffix())
}

/// The generation's mark value.
pub fn mark(generation: u32) -> u32 {
    (generation % GENERATIONS) << 8
}

fn ct(key: &str, dir: Option<&str>, family: Option<Family>) -> Value {
    // An address key names its family: "ip saddr", "ip6 saddr".
    let key = match family {
        Some(family) => format!("{} {key}", family.ct()),
        None => key.to_string(),
    };
    let mut ct = json!({"key": key});
    if let Some(dir) = dir {
        ct["dir"] = dir.into();
    }
    json!({"ct": ct})
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn nfproto(family: Family) -> Value {
    matches(json!({"meta": {"key": "nfproto"}}), family.nfproto().into())
}

/// Who the rule is about: the sender for ingress, the receiver for egress.
fn peer(direction: Direction, family: Family) -> Value {
    match direction {
        Direction::Ingress => ct("saddr", Some("original"), Some(family)),
        Direction::Egress => ct("saddr", Some("reply"), Some(family)),
    }
}

fn destination_port() -> Value {
    ct("proto-src", Some("reply"), None)
}

fn l4proto() -> Value {
    json!({"meta": {"key": "l4proto"}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"rule": base(json!({"chain": chain, "expr": expr}))})
}

fn add(object: Value) -> Value {
    json!({"add": object})
}

fn delete(object: Value) -> Value {
    json!({"delete": object})
}

/// The base chain's rules: they read the generation from a set and a map,
/// so a change swaps two elements instead of rewriting rules (nft reads every
/// rule of the table for a rule change, not for an element change).
fn forward_rules() -> Vec<Value> {
    let ct_mark = || ct("mark", None, None);
    vec![
        add(rule(
            "forward",
            vec![
                matches(ct_mark(), "@generation".into()),
                json!({"return": null}),
            ],
        )),
        add(rule("forward", vec![json!({"jump": {"target": "check"}})])),
        add(rule(
            "forward",
            vec![json!({"mangle": {
                "key": ct_mark(),
                "value": {"map": {"key": {"meta": {"key": "nfproto"}}, "data": "@generation_mark"}},
            }})],
        )),
    ]
}

/// The current generation: the one mark the fast path accepts, and the
/// mark a judged connection gets.
fn generation_elements(generation: u32) -> Vec<Value> {
    let value = mark(generation);
    vec![
        add(json!({"element": base(json!({"name": "generation", "elem": [value]}))})),
        add(json!({"element": base(json!({
            "name": "generation_mark",
            "elem": [["ipv4", value], ["ipv6", value]],
        }))})),
    ]
}

/// The rules of a group's chain, for both families.
/// Whether a set has a table object in `family`: pod sets always (pods
/// come and go), an ipBlock set only when it holds a prefix of that family,
/// so an IPv4-only block costs no IPv6 set and no rule.
fn exists(content: &SetElements, family: Family) -> bool {
    match content {
        SetElements::Nets(nets) => nets.iter().any(|n| Family::of(n.addr()) == family),
        SetElements::Hosts(_) | SetElements::PeerPorts(_) => true,
    }
}

fn group_rules(
    id: &GroupId,
    direction: Direction,
    allows: &[Allow],
    sets: &BTreeMap<SetId, SetElements>,
) -> Vec<Value> {
    let mut rules = Vec::new();
    for family in Family::BOTH {
        let peer = || peer(direction, family);
        let usable = |set: &&SetId| sets.get(*set).is_none_or(|c| exists(c, family));
        for allow in allows {
            let mut exprs: Vec<Vec<Value>> = Vec::new();
            match allow {
                Allow::Everything => exprs.push(vec![]),
                Allow::Peers(sets) => {
                    let sets = sets.ids().filter(usable);
                    exprs.extend(sets.map(|set| vec![in_set(peer(), set, family)]));
                }
                Allow::Ports(sets, ranges) => {
                    for (protocol, low, high) in ranges {
                        let ports = vec![
                            matches(l4proto(), protocol.number().into()),
                            matches(destination_port(), json!({"range": [low, high]})),
                        ];
                        match sets {
                            None => exprs.push(ports),
                            Some(sets) => exprs.extend(sets.ids().filter(usable).map(|set| {
                                let mut e = ports.clone();
                                e.push(in_set(peer(), set, family));
                                e
                            })),
                        }
                    }
                }
                // `ct reply proto-src` has no fixed size, so it cannot be
                // concatenated: the packet's own port instead, the destination
                // port of a request, the source port of a reply.
                Allow::PeerPorts(set) => {
                    for (dir, field) in [("original", "dport"), ("reply", "sport")] {
                        let port = json!({"payload": {"protocol": "th", "field": field}});
                        let key = json!({"concat": [peer(), l4proto(), port]});
                        let direction = matches(ct("direction", None, None), dir.into());
                        exprs.push(vec![direction, in_set(key, set, family)]);
                    }
                }
            }
            for mut e in exprs {
                e.insert(0, nfproto(family));
                e.push(json!({"return": null}));
                rules.push(add(rule(&id.0, e)));
            }
        }
    }
    rules.push(add(rule(
        &id.0,
        vec![json!({"counter": id.0}), json!({"drop": null})],
    )));
    rules
}

fn in_set(key: Value, set: &SetId, family: Family) -> Value {
    matches(key, format!("@{}", set_name(set, family)).into())
}

fn element(net: &IpNet) -> Value {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string().into()
    } else {
        json!({"prefix": {"addr": net.addr().to_string(), "len": net.prefix_len()}})
    }
}

/// A set's elements of one family, as nft JSON values (comparable, for diffs).
fn elements(content: &SetElements, family: Family) -> BTreeSet<String> {
    match content {
        SetElements::Hosts(ips) => ips
            .iter()
            .filter(|ip| Family::of(**ip) == family)
            .map(|ip| Value::from(ip.to_string()).to_string())
            .collect(),
        SetElements::Nets(nets) => nets
            .iter()
            .filter(|n| Family::of(n.addr()) == family)
            .map(|n| element(n).to_string())
            .collect(),
        SetElements::PeerPorts(tuples) => tuples
            .iter()
            .filter(|(ip, _, _)| Family::of(*ip) == family)
            .map(|(ip, p, port)| json!({"concat": [ip.to_string(), p.number(), port]}).to_string())
            .collect(),
    }
}

fn set_object(id: &SetId, content: &SetElements, family: Family) -> Value {
    let name = set_name(id, family);
    match content {
        SetElements::Hosts(_) => base(json!({"name": name, "type": family.addr_type()})),
        SetElements::Nets(_) => {
            base(json!({"name": name, "type": family.addr_type(), "flags": ["interval"]}))
        }
        SetElements::PeerPorts(_) => {
            base(json!({"name": name, "type": [family.addr_type(), "inet_proto", "inet_service"]}))
        }
    }
}

fn element_command(
    verb: fn(Value) -> Value,
    set: &str,
    elements: &BTreeSet<String>,
) -> Option<Value> {
    if elements.is_empty() {
        return None;
    }
    let elem: Vec<Value> = elements
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    Some(verb(
        json!({"element": base(json!({"name": set, "elem": elem}))}),
    ))
}

fn map_entries(
    compiled: &Compiled,
    direction: Direction,
    family: Family,
) -> BTreeSet<(String, String)> {
    let map = match direction {
        Direction::Ingress => &compiled.ingress,
        Direction::Egress => &compiled.egress,
    };
    map.iter()
        .filter(|(ip, _)| Family::of(**ip) == family)
        .map(|(ip, g)| (ip.to_string(), g.0.clone()))
        .collect()
}

fn map_command(
    verb: fn(Value) -> Value,
    map: &str,
    entries: &BTreeSet<(String, String)>,
) -> Option<Value> {
    if entries.is_empty() {
        return None;
    }
    let elem: Vec<Value> = entries
        .iter()
        .map(|(ip, group)| json!([ip, {"jump": {"target": group}}]))
        .collect();
    Some(verb(
        json!({"element": base(json!({"name": map, "elem": elem}))}),
    ))
}

#[cfg(test)]
mod tests;

mod commands;
pub use commands::{full, incremental};
