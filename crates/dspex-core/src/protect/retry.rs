//! Retries of transient failures with exponential backoff and full jitter.
//!
//! Written by hand (tower's `Retry` needs a policy object per call and knows
//! nothing of Retry-After) because the wait must honour the upstream: a 429 or
//! 503 that says `Retry-After: 2` waits two seconds, not a random backoff.
//!
//! Only errors whose [`ProtectedError::is_retryable`] is true are retried. A
//! streamed response is `Ok` as soon as it starts, so nothing that fails after
//! the first streamed byte reached the caller is ever retried here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use super::{ProtectedError, ProtectedRequest};
use crate::context::format_duration;

/// How many times to retry and how long to wait between tries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff's upper bound; each retry doubles it.
    #[serde(with = "crate::serde_duration")]
    pub base: Duration,
    /// The largest backoff.
    #[serde(with = "crate::serde_duration")]
    pub max: Duration,
    /// The longest upstream Retry-After honoured; a longer one fails the call at
    /// once, since waiting that long inside a call is rarely what anyone wants.
    #[serde(with = "crate::serde_duration")]
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base: Duration::from_millis(250),
            max: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (from 1), or `None` when the
    /// upstream's Retry-After is longer than allowed.
    ///
    /// Without Retry-After: uniform in `[0, min(max, base * 2^(retry-1))]` (full
    /// jitter, so many clients that failed together do not retry together).
    /// With it: the Retry-After plus up to 10% jitter.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let mut rng = rand::rng();
        if let Some(after) = retry_after {
            if after > self.max_retry_after {
                return None;
            }
            let jitter = after.as_secs_f64() * 0.1 * rng.random::<f64>();
            return Some(after + Duration::from_secs_f64(jitter));
        }
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        Some(ceiling.mul_f64(rng.random::<f64>()))
    }
}

/// Called before each retry: `(request, failed attempt number, wait)`.
pub type RetryObserver<Req> = Arc<dyn Fn(&Req, u32, Duration) + Send + Sync>;

/// Retries transient failures of the inner service.
pub struct RetryLayer<Req> {
    backoff: Backoff,
    observer: Option<RetryObserver<Req>>,
}

impl<Req> Clone for RetryLayer<Req> {
    fn clone(&self) -> Self {
        Self {
            backoff: self.backoff.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<Req> fmt::Debug for RetryLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl<Req> RetryLayer<Req> {
    /// Retries with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            observer: None,
        }
    }

    /// Calls `observer` before each retry.
    #[must_use]
    pub fn with_observer(mut self, observer: RetryObserver<Req>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl<S, Req> Layer<S> for RetryLayer<Req> {
    type Service = RetryService<S, Req>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RetryLayer`].
pub struct RetryService<S, Req> {
    inner: S,
    layer: RetryLayer<Req>,
}

impl<S: Clone, Req> Clone for RetryService<S, Req> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, Req> Service<Req> for RetryService<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: ProtectedError + fmt::Display,
    Req: ProtectedRequest,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RetryFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let first = self.inner.call(req.clone());
        RetryFuture {
            state: RetryState::Calling { attempt: first },
            inner: self.inner.clone(),
            req,
            layer: self.layer.clone(),
            attempt: 1,
            retries: 0,
        }
    }
}

pin_project! {
    /// The future of a [`RetryService`] call: an attempt, or the wait before
    /// the next one.
    pub struct RetryFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: RetryState<S::Future>,
        inner: S,
        req: Req,
        layer: RetryLayer<Req>,
        attempt: u32,
        retries: u32,
    }
}

pin_project! {
    #[project = RetryStateProj]
    enum RetryState<F> {
        Calling { #[pin] attempt: F },
        Waiting { #[pin] sleep: tokio::time::Sleep },
    }
}

impl<S, Req> Future for RetryFuture<S, Req>
where
    S: Service<Req>,
    S::Error: ProtectedError + fmt::Display,
    Req: ProtectedRequest,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                RetryStateProj::Calling { attempt } => {
                    let error = match ready!(attempt.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(error) => error,
                    };
                    let backoff = &this.layer.backoff;
                    let delay = if error.is_retryable() && *this.retries < backoff.max_retries {
                        backoff.delay(*this.retries + 1, error.retry_after())
                    } else {
                        None
                    };
                    let number = *this.attempt;
                    let Some(delay) = delay else {
                        this.req
                            .trail()
                            .push("attempt", format!("attempt {number} failed: {error}"));
                        return Poll::Ready(Err(error));
                    };
                    this.req.trail().push(
                        "attempt",
                        format!(
                            "attempt {number} failed: {error}; retrying in {}",
                            format_duration(delay)
                        ),
                    );
                    if let Some(observer) = &this.layer.observer {
                        observer(this.req, number, delay);
                    }
                    *this.retries += 1;
                    RetryState::Waiting {
                        sleep: tokio::time::sleep(delay),
                    }
                }
                RetryStateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    ready!(this.inner.poll_ready(cx))?;
                    *this.attempt += 1;
                    RetryState::Calling {
                        attempt: this.inner.call(this.req.clone()),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let backoff = Backoff {
            max_retries: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        };
        for _ in 0..1_000 {
            assert!(backoff.delay(1, None).unwrap() <= Duration::from_millis(100));
            assert!(backoff.delay(3, None).unwrap() <= Duration::from_millis(400));
            assert!(backoff.delay(20, None).unwrap() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let backoff = Backoff::default();
        for _ in 0..100 {
            let d = backoff.delay(1, Some(Duration::from_secs(2))).unwrap();
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2_200),
                "{d:?}"
            );
        }
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(3_600))), None);
    }
}
