//! The two transactions: the whole table (start, resync), or the difference
//! between the last applied state and the new one.

use serde_json::{Value, json};

use super::*;

const MAPS: [(Direction, Family); 4] = [
    (Direction::Egress, Family::V4),
    (Direction::Egress, Family::V6),
    (Direction::Ingress, Family::V4),
    (Direction::Ingress, Family::V6),
];

fn chain(name: &str) -> Value {
    json!({"chain": base(json!({"name": name}))})
}

fn skeleton() -> Vec<Value> {
    let table = json!({"table": {"family": "inet", "name": TABLE}});
    let mut out = vec![
        add(table.clone()),
        delete(table.clone()),
        add(table),
        add(json!({"chain": base(json!({
            "name": "forward", "type": "filter", "hook": "forward", "prio": -10, "policy": "accept",
        }))})),
        add(chain("check")),
        add(json!({"set": base(json!({"name": "generation", "type": "mark"}))})),
        add(
            json!({"map": base(json!({"name": "generation_mark", "type": "nf_proto", "map": "mark"}))}),
        ),
    ];
    out.extend(forward_rules());
    for (direction, family) in MAPS {
        out.push(add(json!({"map": base(json!({
            "name": map_name(direction, family), "type": family.addr_type(), "map": "verdict",
        }))})));
        // The local pod: the sender (egress) or the receiver after DNAT (ingress).
        let local = match direction {
            Direction::Egress => ct("saddr", Some("original"), Some(family)),
            Direction::Ingress => ct("saddr", Some("reply"), Some(family)),
        };
        let dispatch =
            json!({"vmap": {"key": local, "data": format!("@{}", map_name(direction, family))}});
        out.push(add(rule("check", vec![nfproto(family), dispatch])));
    }
    out
}

fn add_set(id: &SetId, content: &SetElements) -> Vec<Value> {
    let mut out = Vec::new();
    for family in Family::BOTH.into_iter().filter(|f| exists(content, *f)) {
        out.push(add(json!({"set": set_object(id, content, family)})));
        out.extend(element_command(
            add,
            &set_name(id, family),
            &elements(content, family),
        ));
    }
    out
}

fn add_group(
    id: &GroupId,
    direction: Direction,
    allows: &[Allow],
    sets: &BTreeMap<SetId, SetElements>,
) -> Vec<Value> {
    let mut out = vec![
        add(json!({"counter": base(json!({"name": id.0}))})),
        add(chain(&id.0)),
    ];
    out.extend(group_rules(id, direction, allows, sets));
    out
}

fn delete_set(id: &SetId, content: &SetElements) -> impl Iterator<Item = Value> {
    (Family::BOTH.into_iter())
        .filter(|family| exists(content, *family))
        .map(|family| delete(json!({"set": base(json!({"name": set_name(id, family)}))})))
}

/// The whole table, replacing whatever is there, in one transaction.
pub fn full(compiled: &Compiled, generation: u32) -> Value {
    let mut out = skeleton();
    for (id, content) in &compiled.sets {
        out.extend(add_set(id, content));
    }
    for (id, group) in &compiled.groups {
        out.extend(add_group(
            id,
            group.direction,
            &group.allows,
            &compiled.sets,
        ));
    }
    for (direction, family) in MAPS {
        let entries = map_entries(compiled, direction, family);
        out.extend(map_command(add, &map_name(direction, family), &entries));
    }
    out.extend(generation_elements(generation));
    json!({"nftables": out})
}

/// What turns the table for `old` into the table for `new`, in one
/// transaction: new sets and chains first, then set and map elements, the
/// generation, and last the chains and sets nothing refers to any more.
pub fn incremental(old: &Compiled, new: &Compiled, generation: u32) -> Value {
    let mut out = Vec::new();
    for (id, content) in &new.sets {
        match old.sets.get(id) {
            None => out.extend(add_set(id, content)),
            // An ipBlock set is named by its content, so only pod sets change
            // here, and those exist in both families.
            Some(before) if before != content => {
                for family in Family::BOTH {
                    let (was, is) = (elements(before, family), elements(content, family));
                    let name = set_name(id, family);
                    let gone = was.difference(&is).cloned().collect();
                    let came = is.difference(&was).cloned().collect();
                    out.extend(element_command(delete, &name, &gone));
                    out.extend(element_command(add, &name, &came));
                }
            }
            Some(_) => {}
        }
    }
    for (id, group) in &new.groups {
        if !old.groups.contains_key(id) {
            out.extend(add_group(id, group.direction, &group.allows, &new.sets));
        }
    }
    for (direction, family) in MAPS {
        let (was, is) = (
            map_entries(old, direction, family),
            map_entries(new, direction, family),
        );
        let name = map_name(direction, family);
        out.extend(map_command(
            delete,
            &name,
            &was.difference(&is).cloned().collect(),
        ));
        out.extend(map_command(
            add,
            &name,
            &is.difference(&was).cloned().collect(),
        ));
    }
    out.push(json!({"flush": {"set": base(json!({"name": "generation"}))}}));
    out.push(json!({"flush": {"map": base(json!({"name": "generation_mark"}))}}));
    out.extend(generation_elements(generation));
    for id in old.groups.keys().filter(|id| !new.groups.contains_key(*id)) {
        out.push(delete(chain(&id.0)));
        out.push(delete(json!({"counter": base(json!({"name": id.0}))})));
    }
    for (id, content) in old
        .sets
        .iter()
        .filter(|(id, _)| !new.sets.contains_key(*id))
    {
        out.extend(delete_set(id, content));
    }
    json!({"nftables": out})
}
