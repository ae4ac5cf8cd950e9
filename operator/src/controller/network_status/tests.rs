//! The coalesced writer under tokio's paused clock: what it writes, and when.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::*;

/// Records when each write happened (ms since `start`); fails the first `fail`.
#[derive(Clone)]
struct Writes {
    start: Instant,
    at: Arc<Mutex<Vec<u128>>>,
    fail: Arc<Mutex<u32>>,
}

impl Writes {
    fn new(fail: u32) -> Self {
        Self {
            start: Instant::now(),
            at: Arc::default(),
            fail: Arc::new(Mutex::new(fail)),
        }
    }

    fn write(&self) -> impl Future<Output = bool> + use<> {
        let this = self.clone();
        async move {
            this.at
                .lock()
                .expect("lock")
                .push((Instant::now() - this.start).as_millis());
            let mut fail = this.fail.lock().expect("lock");
            let ok = *fail == 0;
            *fail = fail.saturating_sub(1);
            ok
        }
    }

    fn at(&self) -> Vec<u128> {
        self.at.lock().expect("lock").clone()
    }
}

const NO_JITTER: Backoff = Backoff {
    jitter: 0.0,
    ..Backoff::DEFAULT
};

/// One second of gathering, whatever comes: the simplest pacing.
const EVERY_SECOND: Pacing = Pacing {
    quiet: Duration::from_secs(1),
    max: Duration::from_secs(1),
};

fn spawn_writer(writes: &Writes) -> (StatusSignal, tokio::task::JoinHandle<()>) {
    spawn_paced(writes, EVERY_SECOND)
}

fn spawn_paced(writes: &Writes, pacing: Pacing) -> (StatusSignal, tokio::task::JoinHandle<()>) {
    let (signal, changes) = StatusSignal::new();
    let writes = writes.clone();
    let task = tokio::spawn(coalesce(changes, pacing, NO_JITTER, move || writes.write()));
    (signal, task)
}

#[tokio::test(start_paused = true)]
async fn a_joins_two_changes_seconds_apart_are_one_write() {
    let writes = Writes::new(0);
    let (signal, _task) = spawn_paced(&writes, PACING);
    // Allocated, then ready when the node's agent writes its status 2 s later.
    signal.mark();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal.mark();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(writes.at(), [7_000], "5 s after the last change");
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_is_written_at_least_every_thirty_seconds() {
    let writes = Writes::new(0);
    let (signal, _task) = spawn_paced(&writes, PACING);
    // A change every 100 ms for 100 s: never quiet.
    for _ in 0..1_000 {
        signal.mark();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let at = writes.at();
    assert_eq!(
        at.len(),
        4,
        "three full rounds, then 5 s after the stream: {at:?}"
    );
    assert!(at[..3].windows(2).all(|w| w[1] - w[0] >= 30_000), "{at:?}");
    assert!(at[3] >= 104_000, "5 s after the last change: {at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_thousand_changes_within_a_second_are_one_write() {
    let writes = Writes::new(0);
    let (signal, task) = spawn_writer(&writes);
    for _ in 0..1_000 {
        signal.mark();
        tokio::time::sleep(Duration::from_micros(900)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(writes.at(), [1_000]);
    drop(signal);
    task.await.expect("the writer ends with its last signal");
}

#[tokio::test(start_paused = true)]
async fn no_change_is_no_write() {
    let writes = Writes::new(0);
    let (_signal, _task) = spawn_writer(&writes);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(writes.at(), Vec::<u128>::new());
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_of_changes_is_about_one_write_a_second() {
    let writes = Writes::new(0);
    let (signal, _task) = spawn_writer(&writes);
    // 5,000 changes over 5 s.
    for _ in 0..5_000 {
        signal.mark();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let at = writes.at();
    assert!((5..=6).contains(&at.len()), "{at:?}");
    assert!(at.windows(2).all(|w| w[1] - w[0] >= 1_000), "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_growing_delays_until_it_succeeds() {
    let writes = Writes::new(3);
    let (signal, _task) = spawn_writer(&writes);
    signal.mark();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Each retry: the backoff (1 s, 2 s, 4 s) then the coalescing second.
    assert_eq!(writes.at(), [1_000, 3_000, 6_000, 11_000]);
    // Success resets: the next change is written a second later.
    signal.mark();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(writes.at().last(), Some(&61_000));
}
