//! At most N calls in flight: the connection pool's bound.
//!
//! Unlike tower's `ConcurrencyLimit`, which frees its slot when the response
//! future completes, this layer hands the slot to the response
//! ([`ProtectedResponse::hold`]), so a streamed response keeps its slot until the
//! stream ends.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

use super::{ProtectedError, ProtectedRequest, ProtectedResponse};
use crate::error::CoreError;

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
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
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
                response.hold(Box::new(permit));
            }
            Ok(response)
        })
    }
}
