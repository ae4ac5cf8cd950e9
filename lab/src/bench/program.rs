//! Programming many peers from empty: Tartan's batched applier against
//! iproute2's `ip -batch` + `bridge -batch` doing the same work, in fresh
//! namespaces, in one run.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tartan_crds::validate::{ValidEndpoint, format_mac};
use tartan_crds::{BackendType, OverlayNetworkSpec, ValidNetwork, ValidNodeSubnet};

use tartan_agent::netlink::Applier;
use tartan_agent::netlink::diff::peer_ops;
use tartan_agent::netns::NetNs;
use tartan_agent::plan::{DesiredState, LocalFacts, Peer, plan, plan_peer, vtep_mac};
use tartan_testbed::{add_netns, ip};

#[derive(Debug, Clone)]
pub struct ProgramFigures {
    pub peers: usize,
    pub objects: usize,
    pub tartan: Duration,
    pub iproute2: Duration,
    /// One more peer joining with `peers` present, by a full dump and diff.
    pub one_join: Duration,
    /// The same join as the agent programs it: planned alone, folded into
    /// the plan, only its objects sent (the links read for their indices).
    pub delta_join: Duration,
    pub delta_changes: usize,
    /// Observe + diff with nothing to change.
    pub noop_resync: Duration,
    pub join_changes: usize,
}

fn peer(i: usize) -> Peer {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + 2 + i as u32);
    let receive = BTreeSet::from([BackendType::Vxlan]);
    Peer {
        name: format!("p{i}"),
        subnet: ValidNodeSubnet {
            node_name: format!("p{i}"),
            network: "default".into(),
            cidr: format!("10.{}.{}.0/24", 1 + i / 256, i % 256)
                .parse()
                .expect("cidr"),
            ipv6_cidr: None,
        },
        endpoint: Ok(ValidEndpoint {
            node_ip: Some(ip),
            node_ipv6: None,
            vtep_mac: Some(vtep_mac(ip)),
            wireguard_key: None,
        }),
        backend: Some(BackendType::Vxlan),
        receive,
    }
}

fn desired(peers: usize) -> DesiredState {
    let (network, local, facts) = inputs();
    let all: Vec<Peer> = (0..peers).map(peer).collect();
    plan(&network, &local, &all, &facts)
}

fn inputs() -> (ValidNetwork, ValidNodeSubnet, LocalFacts) {
    let network = OverlayNetworkSpec::with_cidr("10.0.0.0/8")
        .validate()
        .expect("valid");
    let local = ValidNodeSubnet {
        node_name: "bench".into(),
        network: "default".into(),
        cidr: "10.0.0.0/24".parse().expect("cidr"),
        ipv6_cidr: None,
    };
    let facts = LocalFacts {
        underlay: "eth0".into(),
        node_ip: Ipv4Addr::new(192, 168, 0, 1),
        underlay_prefix: 16,
        node_ipv6: None,
        underlay_mtu: 1500,
        kernel: (6, 1),
        ..Default::default()
    };
    (network, local, facts)
}

/// One more peer joining `state`, as the agent's data plane does it.
fn join_as_delta(
    applier: &mut Applier,
    state: &mut DesiredState,
    joined: &Peer,
) -> io::Result<(Duration, usize)> {
    let (network, local, facts) = inputs();
    let started = Instant::now();
    let delta = plan_peer(&network, &local, &facts, state, None, Some(joined))
        .ok_or_else(|| io::Error::other("a steady vxlan join must be planned alone"))?;
    state.apply_peer(&delta);
    let observed = applier.observe_links()?;
    let report = applier
        .execute(peer_ops(&delta), observed)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((started.elapsed(), report.total()))
}

/// A namespace with an underlay `eth0` (a veth whose peer stays inside too).
fn node_namespace(name: &str) -> io::Result<()> {
    let _ = ip(&["netns", "del", name]);
    add_netns(name)?;
    ip(&[
        "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])?;
    ip(&["-n", name, "addr", "add", "192.168.0.1/16", "dev", "eth0"])?;
    ip(&["-n", name, "link", "set", "eth0", "up"])?;
    ip(&["-n", name, "link", "set", "eth0p", "up"])?;
    Ok(())
}

fn batch(program: &str, netns: &str, script: &str) -> io::Result<()> {
    let mut child = Command::new(program)
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} -batch: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The same objects Tartan installs, as iproute2 batch scripts.
fn iproute2_scripts(state: &DesiredState) -> (String, String) {
    let mut ip_script = String::new();
    let mut bridge_script = String::new();
    ip_script.push_str("link add cni0 type bridge\nlink set cni0 mtu 1450 up\n");
    for a in &state.bridge.addresses {
        ip_script.push_str(&format!("addr add {a} dev cni0\n"));
    }
    if let Some(v) = &state.vxlan {
        ip_script.push_str(&format!(
            "link add {} type vxlan id {} dev {} local {} dstport {} nolearning\nlink set {} address {} mtu {} up\n",
            v.name, v.vni, v.underlay, v.local, v.port, v.name, format_mac(&v.mac), v.mtu
        ));
        for a in &v.addresses {
            ip_script.push_str(&format!("addr add {a} dev {}\n", v.name));
        }
    }
    for n in &state.neighbours {
        ip_script.push_str(&format!(
            "neigh add {} lladdr {} dev {} nud permanent\n",
            n.address,
            format_mac(&n.mac),
            n.device
        ));
    }
    for r in &state.routes {
        let onlink = if r.onlink { " onlink" } else { "" };
        let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        ip_script.push_str(&format!(
            "route add {}{via} dev {}{onlink} proto 84 metric {}\n",
            r.destination,
            r.device.name(),
            r.metric
        ));
    }
    for f in &state.fdb {
        bridge_script.push_str(&format!(
            "fdb append {} dev {} dst {} self permanent\n",
            format_mac(&f.mac),
            f.device,
            f.destination
        ));
    }
    (ip_script, bridge_script)
}

/// Times programming `peers` peers from empty both ways, plus a join and a no-op resync.
pub fn program_from_empty(prefix: &str, peers: usize) -> io::Result<ProgramFigures> {
    let state = desired(peers);
    let objects = state.routes.len() + state.neighbours.len() + state.fdb.len();

    let ours = format!("{prefix}-bench-t");
    node_namespace(&ours)?;
    let mut applier = Applier::open(NetNs::named(&ours))?;
    let started = Instant::now();
    applier
        .apply(&state)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let tartan = started.elapsed();
    let started = Instant::now();
    let noop = applier
        .apply(&state)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let noop_resync = started.elapsed();
    assert_eq!(noop.total(), 0, "a second apply changes nothing");
    let mut bigger = desired(peers + 1);
    let started = Instant::now();
    let join = applier
        .apply(&bigger)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let one_join = started.elapsed();
    let (delta_join, delta_changes) = join_as_delta(&mut applier, &mut bigger, &peer(peers + 1))?;
    drop(applier);
    let _ = ip(&["netns", "del", &ours]);

    let theirs = format!("{prefix}-bench-i");
    node_namespace(&theirs)?;
    let (ip_script, bridge_script) = iproute2_scripts(&state);
    let started = Instant::now();
    batch("ip", &theirs, &ip_script)?;
    batch("bridge", &theirs, &bridge_script)?;
    let iproute2 = started.elapsed();
    let _ = ip(&["netns", "del", &theirs]);

    Ok(ProgramFigures {
        peers,
        objects,
        tartan,
        iproute2,
        one_join,
        delta_join,
        delta_changes,
        noop_resync,
        join_changes: join.total(),
    })
}

/// The best of `runs` runs (by the two programming times together): the
/// machine is shared and noisy, and the minimum is the least disturbed figure.
pub fn best_of(runs: usize, prefix: &str, peers: usize) -> io::Result<ProgramFigures> {
    let mut best: Option<ProgramFigures> = None;
    for _ in 0..runs.max(1) {
        let f = program_from_empty(prefix, peers)?;
        if best
            .as_ref()
            .is_none_or(|b| f.tartan + f.iproute2 < b.tartan + b.iproute2)
        {
            best = Some(f);
        }
    }
    best.ok_or_else(|| io::Error::other("no run"))
}
