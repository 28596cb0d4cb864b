//! A circuit breaker as a tower layer.
//!
//! Written by hand because the crates on offer either are not tower layers or
//! cannot be told which errors count (an upstream 429 or a 400 means the upstream
//! is alive and must not open the circuit).
//!
//! - **Closed**: calls pass. `failure_threshold` consecutive failures open it.
//! - **Open**: calls fail at once with [`CoreError::CircuitOpen`], which says when
//!   the next probe is allowed. After `open_for` it half-opens.
//! - **Half-open**: up to `half_open_probes` calls pass as probes. A probe that
//!   succeeds closes the circuit; one that fails opens it again.
//!
//! Outcomes of calls admitted in an earlier state are ignored, so a slow call that
//! started before the circuit opened cannot close it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::ProtectedError;
use crate::error::CoreError;

/// The breaker's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before letting probes through.
    #[serde(with = "crate::serde_duration")]
    pub open_for: Duration,
    /// How many calls may probe at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls pass.
    HalfOpen,
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        })
    }
}

/// A change of state, given to the transition callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Consecutive failures seen when it opened.
    pub failures: u32,
}

enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

impl State {
    fn kind(&self) -> CircuitState {
        match self {
            Self::Closed { .. } => CircuitState::Closed,
            Self::Open { .. } => CircuitState::Open,
            Self::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

struct Inner {
    state: State,
    generation: u64,
}

type TransitionHook = Arc<dyn Fn(&Transition) + Send + Sync>;

/// A circuit breaker, shared by every call to one upstream.
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    on_transition: Option<TransitionHook>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("config", &self.config)
            .finish()
    }
}

/// A call's pass through the breaker. Report its outcome with
/// [`BreakerPermit::record`]; a permit dropped unreported (a cancelled call)
/// changes nothing but frees its probe slot.
#[must_use]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    /// A closed breaker. `on_transition` is called on every change of state.
    pub fn new(
        name: impl Into<Arc<str>>,
        config: BreakerConfig,
        on_transition: Option<TransitionHook>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                generation: 0,
            }),
            on_transition,
        })
    }

    /// The current state (an open breaker whose wait is over reports half-open).
    pub fn state(&self) -> CircuitState {
        let inner = self.inner.lock();
        match inner.state {
            State::Open { until } if until <= Instant::now() => CircuitState::HalfOpen,
            ref state => state.kind(),
        }
    }

    /// Lets a call through, or fails fast with [`CoreError::CircuitOpen`].
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, CoreError> {
        let mut transition = None;
        let result = {
            let mut inner = self.inner.lock();
            let now = Instant::now();
            match inner.state {
                State::Closed { .. } => Ok(false),
                State::Open { until } if until > now => Err(until - now),
                State::Open { .. } => {
                    inner.state = State::HalfOpen { in_flight: 1 };
                    inner.generation += 1;
                    transition = Some((CircuitState::Open, CircuitState::HalfOpen, 0));
                    Ok(true)
                }
                State::HalfOpen { ref mut in_flight } => {
                    if *in_flight < self.config.half_open_probes {
                        *in_flight += 1;
                        Ok(true)
                    } else {
                        // Probes are out; their results decide. Suggest a short wait.
                        Err(self.config.open_for.min(Duration::from_secs(1)))
                    }
                }
            }
            .map(|probe| (probe, inner.generation))
        };
        self.announce(transition);
        match result {
            Ok((probe, generation)) => Ok(BreakerPermit {
                breaker: Arc::clone(self),
                generation,
                probe,
                reported: false,
            }),
            Err(retry_in) => Err(CoreError::CircuitOpen {
                name: self.name.to_string(),
                retry_in,
            }),
        }
    }

    fn record(&self, generation: u64, probe: bool, failed: bool) {
        let mut transition = None;
        {
            let mut inner = self.inner.lock();
            if inner.generation != generation {
                return;
            }
            match (&mut inner.state, failed) {
                (State::Closed { failures }, false) => *failures = 0,
                (State::Closed { failures }, true) => {
                    *failures += 1;
                    if *failures >= self.config.failure_threshold {
                        let failures = *failures;
                        inner.state = State::Open {
                            until: Instant::now() + self.config.open_for,
                        };
                        inner.generation += 1;
                        transition = Some((CircuitState::Closed, CircuitState::Open, failures));
                    }
                }
                (State::HalfOpen { .. }, false) if probe => {
                    inner.state = State::Closed { failures: 0 };
                    inner.generation += 1;
                    transition = Some((CircuitState::HalfOpen, CircuitState::Closed, 0));
                }
                (State::HalfOpen { .. }, true) if probe => {
                    inner.state = State::Open {
                        until: Instant::now() + self.config.open_for,
                    };
                    inner.generation += 1;
                    transition = Some((CircuitState::HalfOpen, CircuitState::Open, 1));
                }
                _ => {}
            }
        }
        self.announce(transition);
    }

    fn release_probe(&self, generation: u64) {
        let mut inner = self.inner.lock();
        if inner.generation == generation
            && let State::HalfOpen { in_flight } = &mut inner.state
        {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn announce(&self, transition: Option<(CircuitState, CircuitState, u32)>) {
        if let Some((from, to, failures)) = transition {
            tracing::info!(circuit = %self.name, %from, %to, "circuit breaker changed state");
            metrics::counter!("dspex_circuit_transitions_total", "circuit" => self.name.to_string(), "to" => to.to_string())
                .increment(1);
            if let Some(hook) = &self.on_transition {
                hook(&Transition {
                    name: Arc::clone(&self.name),
                    from,
                    to,
                    failures,
                });
            }
        }
    }
}

impl BreakerPermit {
    /// Reports the call's outcome: `failed` when the upstream failed (not for
    /// rate limits or client errors).
    pub fn record(mut self, failed: bool) {
        self.reported = true;
        self.breaker.record(self.generation, self.probe, failed);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

/// Applies a [`CircuitBreaker`] to a service.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    /// A layer around `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: Arc::clone(&self.breaker),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S, Req> Service<Req> for CircuitBreakerService<S>
where
    S: Service<Req>,
    S::Error: ProtectedError,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BreakerFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let state = match self.breaker.try_acquire() {
            Ok(permit) => BreakerState::Running {
                inner: self.inner.call(req),
                permit: Some(permit),
            },
            Err(error) => BreakerState::Refused {
                error: Some(error.into()),
            },
        };
        BreakerFuture { state }
    }
}

pin_project! {
    /// The future of a [`CircuitBreakerService`] call: the inner call holding
    /// its permit, or the refusal of an open circuit.
    pub struct BreakerFuture<F, E> {
        #[pin]
        state: BreakerState<F, E>,
    }
}

pin_project! {
    #[project = BreakerStateProj]
    enum BreakerState<F, E> {
        Running { #[pin] inner: F, permit: Option<BreakerPermit> },
        Refused { error: Option<E> },
    }
}

impl<F, T, E> Future for BreakerFuture<F, E>
where
    F: Future<Output = Result<T, E>>,
    E: ProtectedError,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            BreakerStateProj::Running { inner, permit } => {
                let result = std::task::ready!(inner.poll(cx));
                if let Some(permit) = permit.take() {
                    match &result {
                        Ok(_) => permit.record(false),
                        Err(error) if error.reached_upstream() => {
                            permit.record(error.trips_breaker());
                        }
                        // Neutral: frees a probe slot, changes nothing else.
                        Err(_) => drop(permit),
                    }
                }
                Poll::Ready(result)
            }
            // Polled again after it finished: never resolves a second time.
            BreakerStateProj::Refused { error } => {
                error.take().map_or(Poll::Pending, |e| Poll::Ready(Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type TransitionLog = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

    fn breaker(threshold: u32, probes: u32) -> (Arc<CircuitBreaker>, TransitionLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let breaker = CircuitBreaker::new(
            "upstream",
            BreakerConfig {
                failure_threshold: threshold,
                open_for: Duration::from_secs(10),
                half_open_probes: probes,
            },
            Some(Arc::new(move |t: &Transition| {
                sink.lock().push((t.from, t.to));
            })),
        );
        (breaker, log)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_half_opens_and_closes() {
        let (breaker, log) = breaker(3, 2);
        for _ in 0..2 {
            breaker.try_acquire().unwrap().record(true);
        }
        // A success resets the consecutive count.
        breaker.try_acquire().unwrap().record(false);
        for _ in 0..3 {
            breaker.try_acquire().unwrap().record(true);
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        let err = breaker.try_acquire().err().unwrap();
        let CoreError::CircuitOpen { retry_in, .. } = err else {
            panic!()
        };
        assert_eq!(retry_in, Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe1 = breaker.try_acquire().unwrap();
        let probe2 = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err(), "only two probes at once");
        probe1.record(true);
        assert_eq!(breaker.state(), CircuitState::Open);
        // The second probe's late success belongs to the old half-open period.
        probe2.record(false);
        assert_eq!(breaker.state(), CircuitState::Open);

        tokio::time::advance(Duration::from_secs(10)).await;
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.state(), CircuitState::Closed);
        let (closed, open, half) = (
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        );
        assert_eq!(
            *log.lock(),
            vec![
                (closed, open),
                (open, half),
                (half, open),
                (open, half),
                (half, closed)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot() {
        let (breaker, _) = breaker(1, 1);
        breaker.try_acquire().unwrap().record(true);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        drop(probe);
        assert!(breaker.try_acquire().is_ok());
    }

    #[derive(Debug)]
    enum TestError {
        Server,
        Client,
        Core(CoreError),
    }
    impl From<CoreError> for TestError {
        fn from(e: CoreError) -> Self {
            Self::Core(e)
        }
    }
    impl ProtectedError for TestError {
        fn trips_breaker(&self) -> bool {
            matches!(self, Self::Server)
        }
        fn is_retryable(&self) -> bool {
            false
        }
        fn retry_after(&self) -> Option<Duration> {
            None
        }
        fn timed_out(_: Duration) -> Self {
            Self::Server
        }
    }

    #[tokio::test]
    async fn layer_counts_only_upstream_failures() {
        use tower::{ServiceExt, service_fn};
        let (breaker, _) = breaker(2, 1);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let svc = CircuitBreakerLayer::new(Arc::clone(&breaker)).layer(service_fn(
            move |server: bool| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    Err::<(), _>(if server {
                        TestError::Server
                    } else {
                        TestError::Client
                    })
                }
            },
        ));
        for _ in 0..5 {
            let _ = svc.clone().oneshot(false).await;
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "client errors never open it"
        );
        for _ in 0..2 {
            let _ = svc.clone().oneshot(true).await;
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        let err = svc.clone().oneshot(true).await.unwrap_err();
        assert!(matches!(
            err,
            TestError::Core(CoreError::CircuitOpen { .. })
        ));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            7,
            "the open circuit failed fast"
        );
    }
}
