//! A watch stream folded into deltas, relists included.
//!
//! kube's watcher reports a (re)list as `Init`, `InitApply(o)`..., `InitDone`
//! and everything else as `Apply(o)` / `Delete(o)`. An index cannot apply the
//! listed objects one by one: whatever was deleted while the watch was down
//! would never be removed. So the listed objects are buffered and handed over
//! whole, as one [`Delta::Reset`], once the list is complete:
//!
//! ```text
//!   Init ─ InitApply(a) ─ InitApply(b) ─ InitDone ─ Apply(c) ─ Delete(a)
//!    ·          ·               ·        Reset([a, b]) Apply(c)  Delete(a)
//! ```
//!
//! A relist interrupted by a new `Init` starts over: only the last list counts.

use kube::runtime::watcher;

/// What an index does with one watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta<K> {
    /// The object was added or changed.
    Apply(K),
    /// The object was deleted.
    Delete(K),
    /// A relist finished: these are all the objects; any other is gone.
    Reset(Vec<K>),
}

/// Buffers a relist until it is complete; passes every other event through.
#[derive(Debug)]
pub struct Relist<K> {
    buffer: Vec<K>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self { buffer: Vec::new() }
    }
}

impl<K> Relist<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The delta `event` amounts to; `None` while a relist is still arriving.
    pub fn feed(&mut self, event: watcher::Event<K>) -> Option<Delta<K>> {
        match event {
            watcher::Event::Init => {
                self.buffer.clear();
                None
            }
            watcher::Event::InitApply(object) => {
                self.buffer.push(object);
                None
            }
            watcher::Event::InitDone => Some(Delta::Reset(std::mem::take(&mut self.buffer))),
            watcher::Event::Apply(object) => Some(Delta::Apply(object)),
            watcher::Event::Delete(object) => Some(Delta::Delete(object)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn feed_all(
        relist: &mut Relist<&'static str>,
        events: Vec<Event<&'static str>>,
    ) -> Vec<Delta<&'static str>> {
        events.into_iter().filter_map(|e| relist.feed(e)).collect()
    }

    #[test]
    fn a_relist_is_one_reset_when_done() {
        let mut relist = Relist::new();
        let deltas = feed_all(
            &mut relist,
            vec![Event::Init, Event::InitApply("a"), Event::InitApply("b")],
        );
        assert_eq!(deltas, vec![], "nothing before InitDone");
        assert_eq!(
            relist.feed(Event::InitDone),
            Some(Delta::Reset(vec!["a", "b"]))
        );
    }

    #[test]
    fn apply_and_delete_pass_through() {
        let mut relist = Relist::new();
        let deltas = feed_all(&mut relist, vec![Event::Apply("a"), Event::Delete("b")]);
        assert_eq!(deltas, vec![Delta::Apply("a"), Delta::Delete("b")]);
    }

    #[test]
    fn an_interrupted_relist_starts_over() {
        let mut relist = Relist::new();
        let deltas = feed_all(
            &mut relist,
            vec![
                Event::Init,
                Event::InitApply("stale"),
                Event::Init,
                Event::InitApply("fresh"),
                Event::InitDone,
            ],
        );
        assert_eq!(deltas, vec![Delta::Reset(vec!["fresh"])]);
    }

    #[test]
    fn each_relist_resets_only_its_own_objects() {
        let mut relist = Relist::new();
        let deltas = feed_all(
            &mut relist,
            vec![
                Event::Init,
                Event::InitApply("a"),
                Event::InitDone,
                Event::Apply("b"),
                Event::Init,
                Event::InitDone,
            ],
        );
        assert_eq!(
            deltas,
            vec![
                Delta::Reset(vec!["a"]),
                Delta::Apply("b"),
                Delta::Reset(vec![])
            ]
        );
    }
}
