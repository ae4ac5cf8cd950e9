//! The bgp backend's BIRD side (as Calico does it): the agent renders one
//! BIRD 2 configuration per node from the plan, runs or reconfigures BIRD,
//! and reads back what it needs: session states and routes learned through
//! the control socket, and the BGP routes BIRD installed from the kernel (the
//! planner sends to a peer over bgp only once that peer's route is there).
//!
//! ```text
//!  config    pure: BgpSpec → bird.conf (every value typed or checked)
//!  control   the control socket protocol; `show protocols all` parsed
//!  daemon    managed BIRD (started, watched, restarted) or an external one
//! ```

pub mod config;
pub mod control;
pub mod daemon;

use std::collections::BTreeSet;
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::observe::route_destination;
use crate::netlink::socket::RouteSocket;
use crate::netns::NetNs;
use crate::plan::BgpObserved;
use control::{BirdControl, parse_protocols};

pub use daemon::{Bird, BirdError, BirdMode};

const MAIN_TABLE: u8 = 254;

/// The routes Tartan's BIRD installed: `proto bird`, the main table, its metric.
fn bird_routes(socket: &mut RouteSocket) -> std::io::Result<Vec<RouteMessage>> {
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let mut routes = Vec::new();
    for message in socket.dump(RouteNetlinkMessage::GetRoute(request))? {
        if let RouteNetlinkMessage::NewRoute(m) = message
            && m.header.protocol == RouteProtocol::Bird
            && m.header.table == MAIN_TABLE
            && m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Priority(p) if *p == config::KERNEL_METRIC))
        {
            routes.push(m);
        }
    }
    Ok(routes)
}

/// The pod subnets the kernel has BGP routes for.
pub fn learned_routes(netns: &NetNs) -> std::io::Result<BTreeSet<IpNet>> {
    let mut socket = RouteSocket::open(netns)?;
    Ok(bird_routes(&mut socket)?
        .iter()
        .filter_map(route_destination)
        .collect())
}

/// Removes the routes Tartan's BIRD left (uninstall: BIRD is gone by then).
pub fn remove_routes(netns: &NetNs) -> std::io::Result<usize> {
    let mut socket = RouteSocket::open(netns)?;
    let routes = bird_routes(&mut socket)?;
    let count = routes.len();
    if count > 0 {
        let requests = routes
            .into_iter()
            .map(|m| (RouteNetlinkMessage::DelRoute(m), 0))
            .collect();
        socket.batch(requests)?;
    }
    Ok(count)
}

/// BGP as BIRD and the kernel report it now. Never fails: what could not be
/// read is said in `error` (and shows as sessions down).
pub fn observe(netns: &NetNs, socket: &Path) -> BgpObserved {
    let mut observed = BgpObserved::default();
    match BirdControl::connect(socket).and_then(|mut c| c.protocols()) {
        Ok(reply) => {
            let (sessions, routes) = parse_protocols(&reply);
            observed.sessions = sessions;
            observed.routes_learned = routes;
        }
        Err(e) => observed.error = Some(format!("{}: {e}", socket.display())),
    }
    match learned_routes(netns) {
        Ok(learned) => observed.learned = learned,
        Err(e) => {
            observed
                .error
                .get_or_insert(format!("reading BGP routes: {e}"));
        }
    }
    observed
}
