use std::convert::Infallible;
use std::future::poll_fn;
use std::task::{Context, Poll};

use clap::Parser;
use tower_layer::Layer as _;
use tower_service::Service;

use super::*;

fn limit(qps: f32, burst: u32) -> RateLimit {
    RateLimit { qps, burst }
}

#[test]
fn a_full_bucket_serves_a_burst_then_one_token_per_interval() {
    let start = Instant::now();
    let mut bucket = TokenBucket::new(limit(2.0, 3), start);
    for _ in 0..3 {
        assert_eq!(bucket.try_take(start), Ok(()));
    }
    let due = bucket.try_take(start).expect_err("empty");
    assert_eq!(due - start, Duration::from_millis(500));
    assert_eq!(bucket.try_take(due), Ok(()));
    assert_eq!(
        bucket.try_take(due).expect_err("empty again") - due,
        Duration::from_millis(500)
    );
}

#[test]
fn an_idle_bucket_refills_only_up_to_its_burst() {
    let start = Instant::now();
    let mut bucket = TokenBucket::new(limit(10.0, 2), start);
    let later = start + Duration::from_secs(3600);
    assert_eq!(bucket.try_take(later), Ok(()));
    assert_eq!(bucket.try_take(later), Ok(()));
    assert!(
        bucket.try_take(later).is_err(),
        "an hour idle is still a burst of 2"
    );
}

/// Always ready; counts its calls.
struct Counter(u32);

impl Service<()> for Counter {
    type Response = u32;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        self.0 += 1;
        std::future::ready(Ok(self.0))
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_holds_requests_back_to_the_configured_rate() {
    let start = Instant::now();
    let mut service = RateLimitLayer::new(limit(10.0, 5)).layer(Counter(0));
    let mut sent_at = Vec::new();
    for _ in 0..10 {
        poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
        service.call(()).await.expect("called");
        sent_at.push((Instant::now() - start).as_millis());
    }
    assert_eq!(sent_at, [0, 0, 0, 0, 0, 100, 200, 300, 400, 500]);
}

#[tokio::test(start_paused = true)]
async fn a_token_taken_while_waiting_is_kept_for_the_next_call() {
    let mut service = RateLimitLayer::new(limit(1.0, 1)).layer(Counter(0));
    poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
    // Polled again before calling: still the one token, none wasted.
    poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
    let start = Instant::now();
    service.call(()).await.expect("called");
    poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
}

#[derive(Parser, Debug)]
struct Flags {
    #[command(flatten)]
    limit: RateLimit,
}

#[test]
fn flags_default_to_kubelets_and_refuse_a_zero_rate() {
    let flags = Flags::try_parse_from(["x"]).expect("defaults");
    assert_eq!(flags.limit, limit(50.0, 100));
    let flags = Flags::try_parse_from(["x", "--kube-api-qps", "5.5", "--kube-api-burst", "7"])
        .expect("set");
    assert_eq!(flags.limit, limit(5.5, 7));
    for bad in [["--kube-api-qps", "0"], ["--kube-api-burst", "0"]] {
        let error = Flags::try_parse_from(["x", bad[0], bad[1]]).expect_err("refused");
        assert!(error.to_string().contains(bad[0]), "{error}");
    }
}
