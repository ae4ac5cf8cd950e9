//! The TUN datapaths (udp, wireguard) as the worker runs them: widened in
//! place while they serve the spec and their device is there, else retired
//! and started anew.

use std::io;

use super::DataplaneError;
use crate::netlink::Applier;
use crate::plan::{UdpSpec, WireguardSpec};

/// What the worker needs of a TUN datapath.
pub(super) trait TunEngine: Sized {
    type Spec;
    /// Whether it serves `spec` as it runs (same device and port).
    fn serves(&self, spec: &Self::Spec) -> bool;
    /// Its table for both the old and `spec`'s peers.
    fn widen(&mut self, spec: &Self::Spec);
    /// Stops for good, the keeper's copies closed.
    fn retire(self);
}

impl TunEngine for crate::udp::Engine {
    type Spec = UdpSpec;
    fn serves(&self, spec: &UdpSpec) -> bool {
        crate::udp::Engine::serves(self, spec)
    }
    fn widen(&mut self, spec: &UdpSpec) {
        crate::udp::Engine::widen(self, spec)
    }
    fn retire(self) {
        crate::udp::Engine::retire(self)
    }
}

impl TunEngine for crate::wireguard::Engine {
    type Spec = WireguardSpec;
    fn serves(&self, spec: &WireguardSpec) -> bool {
        crate::wireguard::Engine::serves(self, spec)
    }
    fn widen(&mut self, spec: &WireguardSpec) {
        crate::wireguard::Engine::widen(self, spec)
    }
    fn retire(self) {
        crate::wireguard::Engine::retire(self)
    }
}

/// Runs the datapath in `slot` for `spec` on `device`: the running one's
/// table widened to old and new peers, or (when there is none, it serves
/// another port, or it lost its device) a new one from `start`.
pub(super) fn ensure_tun<E: TunEngine>(
    slot: &mut Option<E>,
    applier: &mut Applier,
    device: &str,
    spec: &E::Spec,
    error: fn(io::Error) -> DataplaneError,
    start: impl Fn() -> io::Result<E>,
) -> Result<(), DataplaneError> {
    let present = tun_present(applier, device).map_err(error)?;
    if let Some(engine) = slot.as_mut()
        && present
        && engine.serves(spec)
    {
        engine.widen(spec);
        return Ok(());
    }
    if let Some(engine) = slot.take() {
        engine.retire();
    }
    *slot = Some(start_tun(applier, device, present, error, start)?);
    Ok(())
}

/// Whether the kernel has a link named `device`.
fn tun_present(applier: &mut Applier, device: &str) -> io::Result<bool> {
    Ok(applier.observe_links()?.links.contains_key(device))
}

/// Starts a TUN datapath with `start`. A device of that name with other
/// flags (not ours, or an older agent's) refuses the open with EINVAL: it is
/// deleted and the start tried once more.
fn start_tun<E>(
    applier: &mut Applier,
    device: &str,
    present: bool,
    error: fn(io::Error) -> DataplaneError,
    start: impl Fn() -> io::Result<E>,
) -> Result<E, DataplaneError> {
    match start() {
        Ok(engine) => Ok(engine),
        Err(e) if present && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(error = %e, device, "recreating the TUN device");
            let observed = applier.observe_links().map_err(error)?;
            let delete = crate::netlink::Op::DeleteLink {
                name: device.to_owned(),
            };
            applier.execute(vec![delete], observed)?;
            start().map_err(error)
        }
        Err(e) => Err(error(e)),
    }
}
