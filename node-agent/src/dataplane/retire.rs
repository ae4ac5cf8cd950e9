//! Make-before-break inside the TUN datapaths. When an apply moves routes
//! off a TUN, packets the kernel had already queued into it still wait for
//! its datapath, which on a busy node reads them a moment later. So:
//! - a peer whose routes left a TUN stays in its datapath's table for
//!   [`RETIRE_AFTER`];
//! - a TUN whose backend left the state stays, datapath and device, serving
//!   its last peers, for as long; the next apply after that removes it.

use std::time::{Duration, Instant};

/// How long a TUN datapath outlives its backend.
pub const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// One deadline per TUN datapath on its way out, and when the tables narrow.
#[derive(Debug, Default)]
pub struct Retiring {
    pub udp: Deadline,
    pub wireguard: Deadline,
    narrow: Option<Instant>,
}

impl Retiring {
    /// When the worker must act next: narrow the tables, or apply again to
    /// remove a retired datapath.
    pub fn next(&self) -> Option<Instant> {
        [self.udp.0, self.wireguard.0, self.narrow]
            .into_iter()
            .flatten()
            .min()
    }

    /// The tables narrow [`RETIRE_AFTER`] from `now` (a later apply moves it on).
    pub fn narrow_later(&mut self, now: Instant) {
        self.narrow = Some(now + RETIRE_AFTER);
    }

    /// Whether the tables are due to narrow at `now`; then it is no longer pending.
    pub fn narrow_now(&mut self, now: Instant) -> bool {
        let due = self.narrow.is_some_and(|t| t <= now);
        if due {
            self.narrow = None;
        }
        due
    }

    /// Whether a retired datapath is due for removal at `now`.
    pub fn removal_due(&self, now: Instant) -> bool {
        [self.udp.0, self.wireguard.0]
            .into_iter()
            .flatten()
            .any(|t| t <= now)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// Whether a datapath stays for now: it runs but its backend `left` the
    /// state. The first time starts the grace; once it is over the deadline
    /// clears, so a removal that fails gets another grace instead of a busy
    /// retry.
    pub fn keep(&mut self, left: bool, now: Instant) -> bool {
        if !left {
            self.0 = None;
            return false;
        }
        let until = *self.0.get_or_insert(now + RETIRE_AFTER);
        if now < until {
            true
        } else {
            self.0 = None;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_datapath_stays_for_the_grace_then_goes() {
        let t0 = Instant::now();
        let mut d = Deadline::default();
        assert!(d.keep(true, t0), "kept when its backend leaves");
        assert!(d.keep(true, t0 + RETIRE_AFTER / 2), "kept within the grace");
        assert_eq!(
            d,
            Deadline(Some(t0 + RETIRE_AFTER)),
            "the grace is not renewed"
        );
        assert!(!d.keep(true, t0 + RETIRE_AFTER), "removed once it is over");
        assert_eq!(d, Deadline(None), "and the deadline is cleared");
    }

    #[test]
    fn a_datapath_still_wanted_has_no_deadline() {
        let t0 = Instant::now();
        let mut d = Deadline::default();
        assert!(d.keep(true, t0));
        assert!(!d.keep(false, t0), "the backend came back");
        assert_eq!(d, Deadline(None));
        assert!(
            d.keep(true, t0 + RETIRE_AFTER),
            "a new departure, a new grace"
        );
    }

    #[test]
    fn the_worker_wakes_for_the_earliest_deadline() {
        let t0 = Instant::now();
        let mut r = Retiring::default();
        assert_eq!(r.next(), None);
        r.wireguard.keep(true, t0 + Duration::from_millis(300));
        r.udp.keep(true, t0);
        assert_eq!(r.next(), Some(t0 + RETIRE_AFTER));
        r.narrow_later(t0 - Duration::from_millis(500));
        assert_eq!(r.next(), Some(t0 + RETIRE_AFTER / 2));
        assert!(!r.removal_due(t0 + RETIRE_AFTER / 2));
        assert!(r.removal_due(t0 + RETIRE_AFTER));
    }

    #[test]
    fn tables_narrow_once_when_due_and_a_later_apply_postpones_it() {
        let t0 = Instant::now();
        let mut r = Retiring::default();
        assert!(!r.narrow_now(t0), "nothing pending");
        r.narrow_later(t0);
        r.narrow_later(t0 + RETIRE_AFTER / 2);
        assert!(
            !r.narrow_now(t0 + RETIRE_AFTER),
            "moved on by the later apply"
        );
        assert!(r.narrow_now(t0 + RETIRE_AFTER * 3 / 2));
        assert!(!r.narrow_now(t0 + RETIRE_AFTER * 2), "only once");
        assert_eq!(r.next(), None);
    }
}
