//! SIGTERM as a flag, for the lab's background processes: they finish what
//! they do (an agent drains its datapaths) instead of dying mid-packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    TERMINATED.store(true, Ordering::Relaxed);
}

/// From now on SIGTERM and SIGINT set the flag instead of killing.
pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

pub fn received() -> bool {
    TERMINATED.load(Ordering::Relaxed)
}

/// Installs the handler, then sleeps until a signal came.
pub fn wait() {
    if let Err(e) = install() {
        tracing::warn!(error = %e, "no SIGTERM handler: stop with SIGKILL");
    }
    while !received() {
        std::thread::sleep(Duration::from_millis(20));
    }
}
