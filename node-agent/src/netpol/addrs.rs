//! Address sets as an nft interval set holds them: disjoint prefixes. An
//! ipBlock's `except` is taken out here, so the kernel only ever sees what
//! matches.

use std::net::IpAddr;

use ipnet::IpNet;

/// `net` without the addresses in `except`, as the fewest prefixes.
pub fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    subtract_into(net, except, &mut out);
    out
}

fn subtract_into(net: IpNet, except: &[IpNet], out: &mut Vec<IpNet>) {
    let overlapping: Vec<IpNet> = except
        .iter()
        .copied()
        .filter(|e| e.contains(&net) || net.contains(e))
        .collect();
    if overlapping.is_empty() {
        out.push(net);
        return;
    }
    if overlapping.iter().any(|e| e.contains(&net)) {
        return;
    }
    // Some except lies strictly inside: split in halves and look again.
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else {
        return;
    };
    for half in halves {
        subtract_into(half, &overlapping, out);
    }
}

/// Disjoint, sorted, merged: what an interval set accepts without overlaps.
pub fn normalize(nets: Vec<IpNet>) -> Vec<IpNet> {
    let nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    IpNet::aggregate(&nets)
}

/// Whether `ip` is in any of `nets`.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn except_blocks_are_cut_out_exactly() {
        let out = subtract(
            "10.0.0.0/8".parse().expect("cidr"),
            &nets(&["10.1.0.0/16", "10.200.3.0/24"]),
        );
        for ip in ["10.1.0.1", "10.1.255.255", "10.200.3.7"] {
            assert!(!contains(&out, ip.parse().expect("ip")), "{ip} excepted");
        }
        for ip in [
            "10.0.0.1",
            "10.2.0.0",
            "10.200.2.255",
            "10.200.4.0",
            "10.255.255.255",
        ] {
            assert!(contains(&out, ip.parse().expect("ip")), "{ip} kept");
        }
        assert_eq!(normalize(out.clone()), {
            let mut sorted = out;
            sorted.sort();
            sorted
        });
    }

    #[test]
    fn an_except_covering_the_block_leaves_nothing_and_one_outside_changes_nothing() {
        let block: IpNet = "192.168.1.0/24".parse().expect("cidr");
        assert!(subtract(block, &nets(&["192.168.0.0/16"])).is_empty());
        assert_eq!(subtract(block, &nets(&["10.0.0.0/8"])), vec![block]);
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge() {
        let merged = normalize(nets(&[
            "10.244.1.4/32",
            "10.244.1.5/32",
            "10.244.0.0/16",
            "fd00::1/128",
            "fd00::/127",
        ]));
        assert_eq!(merged, nets(&["10.244.0.0/16", "fd00::/127"]));
    }
}
