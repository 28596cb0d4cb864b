//! At most N calls in flight: the connection pool's bound.
//!
//! Unlike tower's `ConcurrencyLimit`, which frees its slot when the response
//! future completes, this layer hands the slot to the response
//! ([`ProtectedResponse::hold`]), so a streamed response keeps its slot until the
//! stream ends.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

use super::{ProtectedError, ProtectedResponse};

/// Bounds the calls in flight through a shared semaphore.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    slots: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
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
            slots: Arc::clone(&self.slots),
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S, Req> Service<Req> for ConcurrencyLimitService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: ProtectedResponse,
    S::Error: ProtectedError,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = self.inner.clone();
        let slots = Arc::clone(&self.slots);
        Box::pin(async move {
            // The semaphore is never closed, so acquiring cannot fail; if it ever
            // did, running without the bound beats failing the call.
            let permit = slots.acquire_owned().await.ok();
            futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let mut response = inner.call(req).await?;
            if let Some(permit) = permit {
                response.hold(Box::new(permit));
            }
            Ok(response)
        })
    }
}
