//! The bgp backend on the real kernel with real BIRD: three nodes on one
//! segment in a full mesh, each agent data plane running its own BIRD; pods
//! reach each other over plain routes (no tunnel device anywhere), a node
//! whose NodeSubnet goes away is withdrawn, and a killed BIRD is reported by
//! its peers and comes back. Needs root, iproute2, nft, ping, bird and the CNI
//! plugins; skips with a reason outside CI, fails under CI=true.

mod common;

use tartan_agent::netns::NetNs;

use std::time::{Duration, Instant};

use common::fixture::{Fixture, pings};
use tartan_agent::bgp::learned_routes;
use tartan_agent::plan::{DesiredState, LocalProblem, Peer};
use tartan_agent::status::node_status;
use tartan_crds::{BackendType, CONDITION_READY};
use tartan_testbed::ip;

fn bgp_fixture(tag: &str) -> Fixture {
    tartan_testbed::require(&["bird"]);
    Fixture::new(tag, 3, BackendType::Bgp, false)
}

/// Plans and applies every node in `nodes` with observed BGP until `done`.
fn converge(
    f: &Fixture,
    nodes: &[usize],
    peers_of: impl Fn(usize) -> Vec<Peer>,
    what: &str,
    done: impl Fn(&[DesiredState]) -> bool,
) -> Vec<DesiredState> {
    let start = Instant::now();
    loop {
        let states: Vec<DesiredState> = nodes
            .iter()
            .map(|&i| {
                let target = f.target_with(i, &peers_of(i), f.observed_facts(i));
                f.planes[i].set(target.clone()).expect("apply");
                target.state
            })
            .collect();
        if done(&states) {
            return states;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{what}: {states:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn all_on_bgp(states: &[DesiredState], peers: usize) -> bool {
    states.iter().all(|s| {
        s.backend == BackendType::Bgp
            && s.peer_backends.len() == peers
            && s.local_problems.is_empty()
            && s.peer_problems.is_empty()
    })
}

fn meshed(f: &Fixture) {
    converge(
        f,
        &[0, 1, 2],
        |i| f.peers(i, None),
        "the mesh comes up",
        |s| all_on_bgp(s, 2),
    );
}

fn output(args: &[&str]) -> String {
    String::from_utf8_lossy(&ip(args).expect("ip").stdout).into_owned()
}

#[test]
#[ignore = "kernel test: needs root, network namespaces and BIRD (make test runs it)"]
fn pods_reach_each_other_over_plain_routes_learned_by_bgp() {
    let f = bgp_fixture("bm");
    meshed(&f);
    let pods: Vec<_> = (0..3).map(|i| f.add_pod(i, "p")).collect();
    for (from, _) in &pods {
        for (to, to_ip) in &pods {
            assert!(from == to || pings(from, *to_ip), "{from} -> {to} {to_ip}");
        }
    }
    for node in &f.topo.nodes {
        let links = output(&["-n", &node.netns, "-o", "link", "show"]);
        assert!(!links.contains("tartan"), "no tunnel device: {links}");
        let routes = output(&["-n", &node.netns, "route", "show", "proto", "bird"]);
        assert_eq!(routes.lines().count(), 2, "{}: {routes}", node.name);
        assert!(
            routes.contains("metric 4096") && routes.contains("dev eth0"),
            "{routes}"
        );
    }
}

#[test]
#[ignore = "kernel test: needs root, network namespaces and BIRD (make test runs it)"]
fn a_node_whose_subnet_goes_away_is_withdrawn() {
    let f = bgp_fixture("bw");
    meshed(&f);
    let gone = f.subnets[2].cidr.into();
    assert!(
        learned_routes(&NetNs::named(&f.topo.nodes[0].netns))
            .expect("routes")
            .contains(&gone)
    );
    converge(
        &f,
        &[0, 1],
        |i| f.peers(i, Some(&[0, 1])),
        "n3's route is withdrawn",
        |_| {
            (0..2).all(|i| {
                !learned_routes(&NetNs::named(&f.topo.nodes[i].netns))
                    .expect("routes")
                    .contains(&gone)
            })
        },
    );
}

/// The process id of node `i`'s BIRD, from its command line.
fn bird_pid(f: &Fixture, i: usize) -> Option<i32> {
    let config = f.bird(i).config();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let state = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = state.split_whitespace().nth(2) == Some("Z");
            (cmdline.starts_with("bird ")
                && cmdline.contains(&*config.to_string_lossy())
                && !zombie)
                .then_some(pid)
        })
}

#[test]
#[ignore = "kernel test: needs root, network namespaces and BIRD (make test runs it)"]
fn a_killed_bird_is_reported_by_its_peers_and_comes_back() {
    let f = bgp_fixture("bk");
    meshed(&f);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    let pid = bird_pid(&f, 1).expect("n2's BIRD runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let states = converge(
        &f,
        &[0],
        |i| f.peers(i, None),
        "n1 notices",
        |s| {
            s[0].local_problems
                .iter()
                .any(|p| matches!(p, LocalProblem::BgpSessionsDown { .. }))
        },
    );
    let status = node_status(None, &states[0], &f.observed_facts(0), None, None);
    let ready = tartan_crds::condition::find(&status.conditions, CONDITION_READY).expect("Ready");
    assert_eq!(ready.reason, "BGPSessionsDown");
    assert!(
        ready.message.contains("n2 192.168.100.12"),
        "{}",
        ready.message
    );
    assert!(
        pings(&a, b_ip),
        "graceful restart: the routes stay while BIRD is away"
    );
    converge(
        &f,
        &[0, 1, 2],
        |i| f.peers(i, None),
        "n2's BIRD is back",
        |s| all_on_bgp(s, 2),
    );
    assert!(
        bird_pid(&f, 1).is_some_and(|p| p != pid),
        "restarted by the agent"
    );
    let facts = f.observed_facts(0);
    let status = node_status(
        None,
        &converge(&f, &[0], |i| f.peers(i, None), "ready", |_| true)[0],
        &facts,
        None,
        None,
    );
    let ready = tartan_crds::condition::find(&status.conditions, CONDITION_READY).expect("Ready");
    assert_eq!(ready.reason, "Programmed");
    let established = (facts.bgp.sessions.values())
        .filter(|s| s.established())
        .count();
    assert_eq!(
        (established, facts.bgp.sessions.len()),
        (2, 2),
        "both mesh sessions up (a metric now, not the status)"
    );
}

#[test]
#[ignore = "kernel test: needs root, network namespaces and BIRD (make test runs it)"]
fn a_bird_already_running_is_reconfigured_through_its_socket() {
    use tartan_agent::bgp::{Bird, BirdMode, observe};
    use tartan_agent::plan::{BgpNeighbor, BgpSpec};
    tartan_testbed::require(&["bird"]);
    let prefix = format!("tt{}xb", std::process::id() % 10_000);
    let topo = tartan_testbed::Topology::l2(&prefix, 1).expect("namespace");
    let node = &topo.nodes[0];
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).expect("dir");
    let (config, socket) = (dir.join("bird.conf"), dir.join("bird.ctl"));
    std::fs::write(&config, "protocol device {}\n").expect("config");
    let mut daemon = tartan_testbed::command_in(&node.netns, "bird")
        .args(["-f", "-c"])
        .arg(&config)
        .arg("-s")
        .arg(&socket)
        .spawn()
        .expect("bird");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "BIRD made no socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bird = Bird::new(
        BirdMode::External {
            socket: socket.clone(),
            config: config.clone(),
        },
        NetNs::named(&node.netns),
    );
    let spec = BgpSpec {
        router_id: node.ip,
        asn: 64512,
        underlay: node.iface.clone(),
        announce: vec!["10.244.1.0/24".parse().expect("cidr")],
        accept: vec![("10.244.0.0/16".parse().expect("cidr"), 24)],
        neighbors: vec![BgpNeighbor {
            name: "mesh_192_168_100_12".into(),
            label: "n2".into(),
            address: "192.168.100.12".parse().expect("ip"),
            asn: 64512,
            direct: true,
            external: false,
            password: None,
            keep_next_hop: false,
        }],
    };
    bird.ensure(&spec).expect("configured");
    let observed = observe(&NetNs::named(&node.netns), &socket);
    assert!(
        observed.sessions.contains_key("mesh_192_168_100_12"),
        "{observed:?}"
    );
    assert!(
        std::fs::read_to_string(&config)
            .expect("config")
            .contains("neighbor 192.168.100.12 as 64512")
    );
    bird.stop().expect("idle config");
    assert!(
        observe(&NetNs::named(&node.netns), &socket)
            .sessions
            .is_empty()
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "kernel test: needs root, network namespaces and BIRD (make test runs it)"]
fn an_agent_restart_keeps_bgp_routes_and_changes_nothing() {
    let mut f = bgp_fixture("br");
    meshed(&f);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    assert!(pings(&a, b_ip));
    // The agent stops (an upgrade): its BIRD goes with it, the routes stay,
    // and the peers keep theirs to this node through graceful restart.
    f.planes.remove(0).stop();
    assert!(bird_pid(&f, 0).is_none(), "BIRD went with the agent");
    assert!(
        pings(&a, b_ip),
        "pods keep their network while the agent is down"
    );
    let restarted = f.start_plane(0);
    let report = restarted
        .set(f.target_with(0, &f.peers(0, None), f.observed_facts(0)))
        .expect("apply after restart");
    f.planes.insert(0, restarted);
    assert_eq!(report.total(), 0, "nothing of Tartan's changed: {report:?}");
    assert!(pings(&a, b_ip));
    converge(
        &f,
        &[0, 1, 2],
        |i| f.peers(i, None),
        "sessions back",
        |s| all_on_bgp(s, 2),
    );
}
