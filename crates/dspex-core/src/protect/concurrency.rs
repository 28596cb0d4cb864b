//! At most N calls in flight: the connection pool's bound.
//!
//! Unlike tower's `ConcurrencyLimit`, which frees its slot when the response
//! future completes, this layer hands the slot to the response
//! ([`ProtectedResponse::hold`]), so a streamed response keeps its slot until the
//! stream ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use super::{ProtectedError, ProtectedRequest, ProtectedResponse};
use crate::error::CoreError;

/// A held slot of a [`ConcurrencyLimitLayer`]: freed when dropped.
#[derive(Debug)]
pub struct PoolSlot(#[allow(dead_code, reason = "held only to be dropped")] OwnedSemaphorePermit);

/// Bounds the calls in flight through a shared semaphore.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    slots: Arc<Semaphore>,
    max: usize,
    max_wait: Duration,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once; a call waits at most `max_wait` for a slot
    /// (or its own [`ProtectedRequest::max_wait`]), then fails with
    /// [`CoreError::RateLimited`] naming the `pool` bucket.
    pub fn new(max: usize, max_wait: Duration) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            max_wait,
        }
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    layer: ConcurrencyLimitLayer,
}

impl<S, Req> Service<Req> for ConcurrencyLimitService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: ProtectedResponse,
    S::Error: ProtectedError,
    Req: ProtectedRequest,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PoolFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The fast path: a free slot, so no boxed future and no clone.
        if let Ok(permit) = Arc::clone(&self.layer.slots).try_acquire_owned() {
            return PoolFuture {
                state: PoolState::Holding {
                    inner: self.inner.call(req),
                    permit: Some(permit),
                },
            };
        }
        // Waiting for a slot: the readied inner service moves into the future
        // and a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let waiting = Box::pin(async move {
            let max_wait = req.max_wait().unwrap_or(layer.max_wait);
            let acquire = Arc::clone(&layer.slots).acquire_owned();
            // The semaphore is never closed, so acquiring cannot fail; if it ever
            // did, running without the bound beats failing the call.
            let permit = match tokio::time::timeout(max_wait, acquire).await {
                Ok(permit) => permit.ok(),
                Err(_) => {
                    let error = CoreError::RateLimited {
                        bucket: format!("pool/{}", layer.max),
                        retry_after: Duration::from_millis(100).min(max_wait),
                    };
                    req.trail().push("pool", error.to_string());
                    return Err(error.into());
                }
            };
            futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let mut response = inner.call(req).await?;
            if let Some(permit) = permit {
                response.hold(PoolSlot(permit));
            }
            Ok(response)
        });
        PoolFuture {
            state: PoolState::Waiting { waiting },
        }
    }
}

pin_project! {
    /// The future of a [`ConcurrencyLimitService`] call.
    pub struct PoolFuture<F, T, E> {
        #[pin]
        state: PoolState<F, T, E>,
    }
}

pin_project! {
    #[project = PoolStateProj]
    enum PoolState<F, T, E> {
        Holding { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        Waiting { waiting: BoxFuture<'static, Result<T, E>> },
    }
}

impl<F, T, E> Future for PoolFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
    T: ProtectedResponse,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            PoolStateProj::Holding { inner, permit } => {
                let mut response = std::task::ready!(inner.poll(cx))?;
                // The slot rides on the response (a stream keeps it until its end).
                if let Some(permit) = permit.take() {
                    response.hold(PoolSlot(permit));
                }
                Poll::Ready(Ok(response))
            }
            PoolStateProj::Waiting { waiting } => waiting.as_mut().poll(cx),
        }
    }
}
