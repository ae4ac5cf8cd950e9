//! The table `bridge tartan-guard`: each bound pod port may send only from
//! its pod's own addresses. Bindings are set elements whose comment is the
//! pod's container ID, so the kernel holds the whole state: an agent restart
//! reads it back, and CNI DEL removes exactly that container's elements.
//!
//! ```text
//! chain prerouting (bridge, hook prerouting, priority -300, policy accept)
//!   iifname != @ports accept                      # not a pod port Tartan bound
//!   ip:  iifname . ip saddr @pods4 accept
//!   arp: sender 0.0.0.0 (a probe), or iifname . arp saddr ip @pods4 accept
//!   nd advert: target link-local, or iifname . target @targets6 accept; else drop
//!   ip6: saddr fe80::/10 or :: (link-local control, DAD), or iifname . ip6 saddr @pods6 accept
//!   counter spoofed, drop                         # anything else from a bound port
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::netns::NetNs;
use crate::nft::{NftError, nft};

pub const TABLE: &str = "tartan-guard";
/// The counter of frames dropped for a source that is not the port's pod.
pub const SPOOFED: &str = "spoofed";

/// One pod's port and addresses, as CNI ADD reported them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub container: String,
    /// The host side of the pod's veth, on the bridge.
    pub port: String,
    pub ips: BTreeSet<IpAddr>,
}

fn base(mut object: Value) -> Value {
    object["family"] = json!("bridge");
    object["table"] = json!(TABLE);
    object
}

/// The table in nft's own syntax: JSON cannot declare the NA target set
/// (`typeof` a raw payload; nft 1.0.6 has no `icmpv6 taddr`), and the
/// skeleton is fixed text, so nothing from the outside reaches it.
const SKELETON: &str = r#"table bridge tartan-guard {
  set ports { type ifname; }
  set pods4 { type ifname . ipv4_addr; }
  set pods6 { type ifname . ipv6_addr; }
  set targets6 { typeof iifname . @th,64,128; }
  counter spoofed {}
  chain prerouting {
    type filter hook prerouting priority -300; policy accept;
    iifname != @ports accept
    ether type ip iifname . ip saddr @pods4 accept
    ether type arp arp saddr ip 0.0.0.0 accept
    ether type arp iifname . arp saddr ip @pods4 accept
    icmpv6 type nd-neighbor-advert iifname . @th,64,128 @targets6 accept
    icmpv6 type nd-neighbor-advert @th,64,16 0xfe80 accept
    icmpv6 type nd-neighbor-advert counter name spoofed drop
    ether type ip6 ip6 saddr fe80::/10 accept
    ether type ip6 ip6 saddr :: accept
    ether type ip6 iifname . ip6 saddr @pods6 accept
    counter name spoofed drop
  }
}
"#;

/// What may go between quotes in the text: container IDs and interface
/// names as runtimes and the kernel make them.
pub fn safe(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && (text.bytes()).all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

/// One binding's elements as `add element` lines.
fn element_lines(binding: &Binding) -> String {
    let (id, port) = (&binding.container, &binding.port);
    let mut out = format!("add element bridge {TABLE} ports {{ \"{port}\" comment \"{id}\" }}\n");
    for ip in &binding.ips {
        match ip {
            IpAddr::V4(v4) => out.push_str(&format!(
                "add element bridge {TABLE} pods4 {{ \"{port}\" . {v4} comment \"{id}\" }}\n"
            )),
            IpAddr::V6(v6) => {
                out.push_str(&format!(
                    "add element bridge {TABLE} pods6 {{ \"{port}\" . {v6} comment \"{id}\" }}\n"
                ));
                out.push_str(&format!(
                    "add element bridge {TABLE} targets6 {{ \"{port}\" . 0x{:032x} comment \"{id}\" }}\n",
                    u128::from(*v6)
                ));
            }
        }
    }
    out
}

/// The text transaction replacing the table with `bindings` in it (those
/// whose names are not [`safe`] are left out).
fn replacement(bindings: &[Binding]) -> String {
    let mut text = format!("add table bridge {TABLE}\ndelete table bridge {TABLE}\n{SKELETON}");
    for binding in bindings
        .iter()
        .filter(|b| safe(&b.container) && safe(&b.port))
    {
        text.push_str(&element_lines(binding));
    }
    text
}

/// A binding's elements: (set, element) pairs.
fn elements(binding: &Binding) -> Vec<(&'static str, Value)> {
    let comment = &binding.container;
    let elem = |val: Value| json!({"elem": {"val": val, "comment": comment}});
    let mut out = vec![("ports", elem(json!(binding.port)))];
    for ip in &binding.ips {
        let concat = |v: Value| json!({"concat": [binding.port, v]});
        match ip {
            IpAddr::V4(v4) => out.push(("pods4", elem(concat(json!(v4.to_string()))))),
            IpAddr::V6(v6) => {
                out.push(("pods6", elem(concat(json!(v6.to_string())))));
                let target = format!("0x{:032x}", u128::from(*v6));
                out.push(("targets6", elem(concat(json!(target)))));
            }
        }
    }
    out
}

fn element_commands(verb: &str, bindings: &[Binding]) -> Vec<Value> {
    bindings
        .iter()
        .flat_map(elements)
        .map(|(set, elem)| json!({verb: {"element": base(json!({"name": set, "elem": [elem]}))}}))
        .collect()
}

fn run(netns: &NetNs, commands: Vec<Value>) -> Result<(), NftError> {
    let input = json!({"nftables": commands}).to_string();
    nft(netns, &["-j", "-f", "-"], Some(&input)).map(|_| ())
}

/// Replaces the table whole with `bindings` in it (start, drift repair):
/// one transaction, so no frame ever passes unchecked from a bound port.
pub fn replace(netns: &NetNs, bindings: &[Binding]) -> Result<(), NftError> {
    nft(netns, &["-f", "-"], Some(&replacement(bindings))).map(|_| ())
}

/// Adds `binding` (CNI ADD). `add` of an element already there is a no-op,
/// so a repeated ADD succeeds.
pub fn bind(netns: &NetNs, binding: &Binding) -> Result<(), NftError> {
    run(
        netns,
        element_commands("add", std::slice::from_ref(binding)),
    )
}

/// Removes `bindings` (CNI DEL, or ports that are gone).
pub fn unbind(netns: &NetNs, bindings: &[Binding]) -> Result<(), NftError> {
    if bindings.is_empty() {
        return Ok(());
    }
    run(netns, element_commands("delete", bindings))
}

/// The bindings the kernel holds (none when the table is absent).
pub fn bindings(netns: &NetNs) -> Result<Vec<Binding>, NftError> {
    let args = ["-j", "list", "table", "bridge", TABLE];
    let text = match nft(netns, &args, None) {
        Ok(text) => text,
        Err(NftError::Refused { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let value: Value = serde_json::from_str(&text).map_err(NftError::Output)?;
    Ok(parse_bindings(&value))
}

/// Bindings from `nft -j list table`: pods4/pods6 elements, grouped by
/// container (their comment); `ports` elements alone make a binding too.
fn parse_bindings(value: &Value) -> Vec<Binding> {
    let mut by_container: std::collections::BTreeMap<String, Binding> = Default::default();
    for set in value["nftables"].as_array().into_iter().flatten() {
        let set = &set["set"];
        let name = set["name"].as_str().unwrap_or_default();
        for elem in set["elem"].as_array().into_iter().flatten() {
            let (val, comment) = (&elem["elem"]["val"], elem["elem"]["comment"].as_str());
            let Some(container) = comment else { continue };
            let (port, ip) = match name {
                "ports" => (val.as_str(), None),
                "pods4" | "pods6" => (
                    val["concat"][0].as_str(),
                    val["concat"][1]
                        .as_str()
                        .and_then(|s| s.parse::<IpAddr>().ok()),
                ),
                _ => continue,
            };
            let Some(port) = port else { continue };
            let entry = by_container
                .entry(container.to_string())
                .or_insert_with(|| Binding {
                    container: container.to_string(),
                    port: port.to_string(),
                    ips: BTreeSet::new(),
                });
            entry.ips.extend(ip);
        }
    }
    by_container.into_values().collect()
}

/// Frames dropped so far for a forged source.
pub fn drops(netns: &NetNs) -> Result<u64, NftError> {
    let args = ["-j", "list", "counter", "bridge", TABLE, SPOOFED];
    let text = nft(netns, &args, None)?;
    let value: Value = serde_json::from_str(&text).map_err(NftError::Output)?;
    Ok((value["nftables"].as_array().into_iter().flatten())
        .find_map(|item| item["counter"]["packets"].as_u64())
        .unwrap_or(0))
}

/// Removes the table (cleanup, or the check turned off).
pub fn remove(netns: &NetNs) -> Result<(), NftError> {
    let table = json!({"table": {"family": "bridge", "name": TABLE}});
    run(
        netns,
        vec![json!({"add": table.clone()}), json!({"delete": table})],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            container: "c0ffee".into(),
            port: "veth1234".into(),
            ips: ["10.244.1.5", "fd00:10:244:1::5"]
                .iter()
                .map(|s| s.parse().expect("ip"))
                .collect(),
        }
    }

    #[test]
    fn a_binding_is_its_port_and_each_address_with_the_container_as_comment() {
        let elements = elements(&binding());
        let sets: Vec<&str> = elements.iter().map(|(s, _)| *s).collect();
        assert_eq!(sets, vec!["ports", "pods4", "pods6", "targets6"]);
        for (_, elem) in &elements {
            assert_eq!(elem["elem"]["comment"], "c0ffee");
        }
        assert_eq!(
            elements[3].1["elem"]["val"]["concat"][1],
            "0xfd000010024400010000000000000005"
        );
    }

    #[test]
    fn bindings_read_back_from_the_listing_are_the_ones_written() {
        let b = binding();
        let listing = json!({"nftables": [
            {"set": {"name": "ports", "elem": [{"elem": {"val": "veth1234", "comment": "c0ffee"}}]}},
            {"set": {"name": "pods4", "elem": [{"elem": {"val": {"concat": ["veth1234", "10.244.1.5"]}, "comment": "c0ffee"}}]}},
            {"set": {"name": "pods6", "elem": [{"elem": {"val": {"concat": ["veth1234", "fd00:10:244:1::5"]}, "comment": "c0ffee"}}]}},
            {"set": {"name": "targets6", "elem": [{"elem": {"val": {"concat": ["veth1234", "0xfd000010024400010000000000000005"]}, "comment": "c0ffee"}}]}},
            {"set": {"name": "pods4", "elem": [{"elem": {"val": {"concat": ["vethx", "10.244.1.9"]}}}]}},
        ]});
        assert_eq!(parse_bindings(&listing), vec![b]);
    }

    #[test]
    fn the_replacement_keeps_safe_bindings_and_ends_in_a_counted_drop() {
        let mut evil = binding();
        evil.container = "x\" }; flush ruleset; #".into();
        let text = replacement(&[binding(), evil]);
        assert!(text.starts_with("add table bridge tartan-guard\ndelete table"));
        assert!(
            text.contains(r#"pods4 { "veth1234" . 10.244.1.5 comment "c0ffee" }"#),
            "{text}"
        );
        assert!(
            text.contains("0xfd000010024400010000000000000005"),
            "{text}"
        );
        assert!(!text.contains("flush ruleset"), "{text}");
        let chain = SKELETON
            .lines()
            .filter(|l| l.contains("accept") || l.contains("drop"));
        let rules: Vec<&str> = chain.map(str::trim).collect();
        assert!(rules[1].starts_with("iifname != @ports"), "{rules:?}");
        assert_eq!(rules.last(), Some(&"counter name spoofed drop"));
    }
}
