//! A client-side limit on requests to the API server, like client-go's
//! `--kube-api-qps` / `--kube-api-burst`: a token bucket as a tower layer on
//! the kube client's service stack.
//!
//! ```text
//!   Api ─▶ Client (Buffer) ─▶ RateLimited ─▶ auth, TLS, HTTP ─▶ API server
//!                               └ poll_ready waits for a token
//! ```
//!
//! kube's `Client` drives its stack from one buffer worker, so waiting in
//! `poll_ready` holds back every request of the client (watch starts included)
//! while callers queue in the buffer. At 5,000 nodes a relist or a burst of
//! joins would otherwise hit the API server as fast as it answers.
//!
//! The bucket is kept as a theoretical arrival time (GCRA): integer time
//! arithmetic, no float drift, and a refused request knows exactly when its
//! token is due.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `--kube-api-qps` and `--kube-api-burst`, shared by both binaries.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second to the Kubernetes API (as kubelet's --kube-api-qps).
    #[arg(long = "kube-api-qps", env = "TARTAN_KUBE_API_QPS",
          default_value_t = RateLimit::DEFAULT.qps, value_parser = positive_qps)]
    pub qps: f32,

    /// Requests allowed at once above the sustained rate (as kubelet's --kube-api-burst).
    #[arg(long = "kube-api-burst", env = "TARTAN_KUBE_API_BURST",
          default_value_t = RateLimit::DEFAULT.burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
}

impl RateLimit {
    /// kubelet's defaults.
    pub const DEFAULT: RateLimit = RateLimit {
        qps: 50.0,
        burst: 100,
    };
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn positive_qps(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(qps) if qps.is_finite() && qps > 0.0 => Ok(qps),
        Ok(_) => Err("must be a positive number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A token bucket of `burst` tokens refilled at `qps`. Pure: the caller passes
/// the time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time one token takes to refill.
    interval: Duration,
    /// How far ahead of now the arrival time may run: the burst beyond one.
    tolerance: Duration,
    /// When the bucket would be empty again if nothing more were taken.
    arrival: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        // Positive by construction from the flag; a hand-built zero is clamped
        // to a very slow rate rather than dividing by zero.
        let qps = f64::from(limit.qps).max(1e-3);
        let interval = Duration::from_secs_f64(1.0 / qps);
        Self {
            interval,
            tolerance: interval * limit.burst.max(1).saturating_sub(1),
            arrival: now,
        }
    }

    /// Takes a token, or says when the next one is due.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let arrival = self.arrival.max(now);
        if arrival > now + self.tolerance {
            return Err(arrival - self.tolerance);
        }
        self.arrival = arrival + self.interval;
        Ok(())
    }
}

/// The tower layer: wraps a service in [`RateLimited`].
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer(RateLimit);

impl RateLimitLayer {
    pub fn new(limit: RateLimit) -> Self {
        Self(limit)
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            bucket: TokenBucket::new(self.0, Instant::now()),
            has_token: false,
            wait: None,
        }
    }
}

/// A service that is ready only when the bucket holds a token for its next call.
pub struct RateLimited<S> {
    inner: S,
    bucket: TokenBucket,
    /// A token taken in `poll_ready`, spent by the next `call`.
    has_token: bool,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S, R> tower_service::Service<R> for RateLimited<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.has_token {
            if let Some(wait) = self.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.bucket.try_take(Instant::now()) {
                Ok(()) => self.has_token = true,
                Err(due) => self.wait = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.has_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests;
