//! Protection for calls to metered, failure-prone services, as tower layers.
//!
//! The layers compose in this order, outside in:
//!
//! 1. [`RetryLayer`]: retry transient failures with full-jitter backoff, honouring
//!    the upstream's Retry-After.
//! 2. [`CircuitBreakerLayer`]: fail fast while the upstream is known to be down.
//! 3. [`RateLimitLayer`]: reserve the attempt's cost in every bucket at once,
//!    waiting up to a bound for room; settle the reservation with the real cost
//!    afterwards.
//! 4. [`ConcurrencyLimitLayer`]: at most N attempts in flight (the connection pool).
//! 5. [`TimeoutLayer`]: bound each attempt.
//!
//! Retries go outermost because every attempt is a request of its own: each one
//! is counted by the breaker (a circuit that opens between attempts stops the
//! retries), takes rate-limit room (providers count failed requests too), and
//! holds a pool slot only while it is in flight, never during the backoff.
//!
//! The layers are generic: they know requests only through [`ProtectedRequest`],
//! responses through [`ProtectedResponse`] and errors through [`ProtectedError`].
//! Every service in the stack is always ready; waiting happens inside `call`, so a
//! stack can be cloned freely and shared by many tasks.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use dspex_core::protect::{BucketSpec, Cost, LocalLimiter, Admission, Unit};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let limiter = LocalLimiter::new(vec![
//!     BucketSpec::new(Unit::Requests, 2, Duration::from_secs(60)),
//!     BucketSpec::new(Unit::Tokens, 1_000, Duration::from_secs(60)),
//! ]);
//! let cost = Cost { requests: 1, tokens: 400, ..Cost::ZERO };
//! let first = limiter.reserve(cost, Duration::ZERO).await.unwrap();
//! // The call used fewer tokens than estimated: refund the difference.
//! first.settle(Cost { requests: 1, tokens: 100, ..Cost::ZERO });
//! limiter.reserve(cost, Duration::ZERO).await.unwrap().settle(cost);
//! // Both buckets are checked: the request bucket is now full.
//! assert!(limiter.reserve(cost, Duration::ZERO).await.is_err());
//! # });
//! ```

mod breaker;
mod concurrency;
mod limit;
mod redis_limit;
mod retry;
mod timeout;

use std::time::Duration;

pub use breaker::{
    BreakerConfig, BreakerFuture, BreakerPermit, CircuitBreaker, CircuitBreakerLayer,
    CircuitBreakerService, CircuitState, Transition,
};
pub use concurrency::{ConcurrencyLimitLayer, ConcurrencyLimitService, PoolFuture, PoolSlot};
pub use limit::{
    Admission, BucketSpec, Cost, LocalLimiter, RateLimitFuture, RateLimitLayer, RateLimitService,
    Reservation, Unit, WaitObserver,
};
pub use redis_limit::RedisLimiter;
pub use retry::{Backoff, RetryFuture, RetryLayer, RetryObserver, RetryService};
pub use timeout::{TimeoutFuture, TimeoutLayer, TimeoutService};

use crate::context::Trail;
use crate::error::CoreError;

/// What the protection layers need from a request.
pub trait ProtectedRequest: Clone + Send + 'static {
    /// What the call costs in each rate-limit unit (an estimate for tokens).
    fn cost(&self) -> Cost;
    /// The trail that attempts and waits are recorded on.
    fn trail(&self) -> &Trail;
    /// The longest this call may wait for rate-limit room, when it overrides the
    /// layer's bound.
    fn max_wait(&self) -> Option<Duration> {
        None
    }
}

/// What the protection layers need from a response.
pub trait ProtectedResponse: Send + 'static {
    /// Takes the call's rate-limit reservation. A complete response settles it at
    /// once with its real usage; a stream keeps it and settles when it ends.
    fn settle(&mut self, reservation: Reservation);
    /// Keeps `slot` alive for as long as the response is in use, which for a
    /// stream is until it ends.
    fn hold(&mut self, slot: PoolSlot);
}

/// What the protection layers need from an error.
pub trait ProtectedError: From<CoreError> + Send + 'static {
    /// Counts toward opening the circuit: server errors, timeouts, broken
    /// connections and garbled replies; never rate limits or client errors.
    fn trips_breaker(&self) -> bool;
    /// Whether the upstream took part in the outcome. Errors made locally (a
    /// full rate-limit bucket, an invalid request, a backend failure) say
    /// nothing about the upstream's health, so the breaker ignores them.
    fn reached_upstream(&self) -> bool {
        true
    }
    /// Trying again may succeed.
    fn is_retryable(&self) -> bool;
    /// The upstream asked for this wait before the next try.
    fn retry_after(&self) -> Option<Duration>;
    /// What a failed call still costs against the limits, given what was reserved.
    fn charged(&self, reserved: Cost) -> Cost {
        reserved
    }
    /// The error for an attempt that ran past `after`.
    fn timed_out(after: Duration) -> Self;
}
