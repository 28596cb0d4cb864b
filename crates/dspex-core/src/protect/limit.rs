//! Multi-bucket rate limiting with atomic admission and settlement.
//!
//! Written by hand because no crate does what metered LM APIs need: a call must
//! reserve in *several* buckets at once (requests per minute, tokens per minute,
//! requests per day...) or in none of them, the token cost is only an estimate
//! until the response arrives, so the reservation must be settled afterwards
//! (refund or extra charge), and an upstream 429 must pause all buckets.
//! `governor` and tower's `RateLimit` handle one bucket with a fixed cost.
//!
//! Each bucket is a *sliding log*: the amounts admitted with their admission
//! times. A cost fits if the sum of the amounts admitted within the last window,
//! plus the cost, stays within the limit. This is exact ("never more than `limit`
//! in any window"), unlike token buckets that allow a double burst at a window
//! edge. Admissions less than a slot apart (a 1,024th of the window) share one
//! entry, which takes the later admission's time: the log holds at most about
//! 1,025 entries however fast calls come (one per admission made it grow with
//! the rate: two million entries per bucket at 33k calls/s over a minute), and
//! the merging errs on the safe side, since an amount can only expire later
//! than exactly, never earlier. A call may wait up to one slot longer for room
//! than an entry-per-admission log would make it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{ProtectedError, ProtectedRequest, ProtectedResponse};
use crate::context::format_duration;
use crate::error::{CoreError, Result};

/// What a bucket counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Requests (each call costs 1).
    Requests,
    /// Tokens in and out together.
    Tokens,
    /// Input (prompt) tokens only.
    InputTokens,
    /// Output (completion) tokens only.
    OutputTokens,
}

impl Unit {
    /// The unit's name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
        }
    }
}

/// What one call costs in each unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Requests, normally 1.
    pub requests: u64,
    /// Input plus output tokens.
    pub tokens: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

impl Cost {
    /// Costs nothing.
    pub const ZERO: Self = Self {
        requests: 0,
        tokens: 0,
        input_tokens: 0,
        output_tokens: 0,
    };

    /// One request with these input and output tokens.
    pub fn call(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            requests: 1,
            tokens: input_tokens.saturating_add(output_tokens),
            input_tokens,
            output_tokens,
        }
    }

    /// The amount in `unit`.
    pub fn of(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Requests => self.requests,
            Unit::Tokens => self.tokens,
            Unit::InputTokens => self.input_tokens,
            Unit::OutputTokens => self.output_tokens,
        }
    }
}

/// One bucket: at most `limit` units in any window of length `window`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// What it counts.
    pub unit: Unit,
    /// The most it admits in one window.
    pub limit: u64,
    /// The window.
    #[serde(with = "crate::serde_duration")]
    pub window: Duration,
}

impl BucketSpec {
    /// A bucket of `limit` units of `unit` per `window`.
    pub fn new(unit: Unit, limit: u64, window: Duration) -> Self {
        Self {
            unit,
            limit,
            window,
        }
    }

    /// A name for errors and events, such as `tokens/1m`.
    pub fn name(&self) -> String {
        format!(
            "{}/{}",
            self.unit.as_str(),
            humantime::format_duration(self.window)
        )
    }
}

/// Takes a settlement for a reservation; implemented by each limiter backend.
pub(crate) trait Settler: Send + Sync + 'static {
    /// The units this limiter has buckets for; settlement only matters there.
    fn units(&self) -> &[Unit];
    fn adjust(self: Arc<Self>, id: u64, reserved: Cost, actual: Cost);
}

/// A cost held in every bucket of a limiter.
///
/// Call [`Reservation::settle`] with what the call really cost; the difference is
/// refunded or charged. A reservation dropped unsettled keeps the estimate, which
/// errs on the side of never exceeding a limit.
#[must_use = "settle a reservation with the real cost, or it keeps the estimate"]
pub struct Reservation {
    id: u64,
    reserved: Cost,
    waited: Duration,
    full_bucket: Option<String>,
    admitted_at_micros: u64,
    settler: Option<Arc<dyn Settler>>,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("reserved", &self.reserved)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    pub(crate) fn new(
        id: u64,
        reserved: Cost,
        waited: Duration,
        full_bucket: Option<String>,
        admitted_at_micros: u64,
        settler: Arc<dyn Settler>,
    ) -> Self {
        Self {
            id,
            reserved,
            waited,
            full_bucket,
            admitted_at_micros,
            settler: Some(settler),
        }
    }

    /// What was reserved.
    pub fn reserved(&self) -> Cost {
        self.reserved
    }

    /// How long admission waited for room.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The bucket that made admission wait, if it waited.
    pub fn waited_for(&self) -> Option<&str> {
        self.full_bucket.as_deref()
    }

    /// When the reservation was admitted, in microseconds on the limiter's clock
    /// (process-relative for the local limiter, Redis server time for Redis).
    pub fn admitted_at_micros(&self) -> u64 {
        self.admitted_at_micros
    }

    /// Settles with the real cost: refunds what was over-reserved, charges what
    /// was under-reserved.
    pub fn settle(mut self, actual: Cost) {
        if let Some(settler) = self.settler.take()
            && settler
                .units()
                .iter()
                .any(|&unit| actual.of(unit) != self.reserved.of(unit))
        {
            settler.adjust(self.id, self.reserved, actual);
        }
    }
}

/// A limiter that admits costs into a set of buckets.
pub trait Admission: Send + Sync + 'static {
    /// Reserves `cost` in every bucket at once (all or none), waiting up to
    /// `max_wait` for room. Fails with [`CoreError::RateLimited`] naming the full
    /// bucket and when it will have room, or [`CoreError::OverCapacity`] when the
    /// cost exceeds a bucket's whole limit.
    fn reserve(&self, cost: Cost, max_wait: Duration) -> BoxFuture<'_, Result<Reservation>>;

    /// Reserves `cost` at once when that needs no waiting and no I/O; `None`
    /// means "ask [`reserve`](Self::reserve)", which also reports any error.
    /// Lets the common, uncontended call skip a boxed future.
    fn reserve_now(&self, _cost: Cost) -> Option<Reservation> {
        None
    }

    /// Admits nothing for `pause` (the upstream said so, with a 429).
    fn pause(&self, pause: Duration);

    /// The buckets.
    fn buckets(&self) -> &[BucketSpec];

    /// What each bucket holds now, as `(name, used, limit)`, when the
    /// limiter can tell without I/O (the in-process one); empty otherwise.
    fn usage_now(&self) -> Vec<(String, u64, u64)> {
        Vec::new()
    }
}

/// Admissions `first_id..=last_id` (ids grow with time), the latest at `at`.
struct Entry {
    first_id: u64,
    last_id: u64,
    at: Instant,
    amount: u64,
}

/// Entries per window: the log's size bound.
const SLOTS_PER_WINDOW: u32 = 1_024;

struct Log {
    spec: BucketSpec,
    name: String,
    entries: VecDeque<Entry>,
    used: u64,
    /// Admissions closer together than this share an entry.
    slot: Duration,
}

impl Log {
    /// Adds `amount` for admission `id` at `now`: into the last entry when
    /// it is less than a slot old (moving its time to `now`, so what it
    /// holds expires later, never earlier), else as a new entry.
    fn add(&mut self, id: u64, amount: u64, now: Instant) {
        self.used = self.used.saturating_add(amount);
        if let Some(last) = self.entries.back_mut()
            && now.saturating_duration_since(last.at) < self.slot
        {
            last.at = now;
            last.last_id = last.last_id.max(id);
            last.amount = last.amount.saturating_add(amount);
            return;
        }
        self.entries.push_back(Entry {
            first_id: id,
            last_id: id,
            at: now,
            amount,
        });
    }

    fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            if front
                .at
                .checked_add(self.spec.window)
                .is_none_or(|end| end > now)
            {
                break;
            }
            self.used = self.used.saturating_sub(front.amount);
            self.entries.pop_front();
        }
    }

    /// How long until `amount` more fits, assuming nothing is refunded.
    fn wait_for(&self, amount: u64, now: Instant) -> Duration {
        let excess = self
            .used
            .saturating_add(amount)
            .saturating_sub(self.spec.limit);
        let mut freed: u64 = 0;
        for entry in &self.entries {
            freed = freed.saturating_add(entry.amount);
            if freed >= excess {
                return entry
                    .at
                    .checked_add(self.spec.window)
                    .map_or(self.spec.window, |end| end.saturating_duration_since(now));
            }
        }
        // Unreachable when amount <= limit; a full window is a safe answer anyway.
        self.spec.window
    }
}

struct State {
    logs: Vec<Log>,
    paused_until: Option<Instant>,
    next_id: u64,
}

enum Verdict {
    Admitted(u64),
    Wait { bucket: String, wait: Duration },
}

struct Shared {
    state: Mutex<State>,
    room: Notify,
    epoch: Instant,
    units: Vec<Unit>,
    /// Set once any pause has been requested (lets a bucketless limiter skip
    /// the lock until then).
    paused: std::sync::atomic::AtomicBool,
}

/// The in-process limiter: exact sliding logs behind one mutex.
///
/// Admission across two buckets costs well under a microsecond (see
/// `benches/admission.rs`).
#[derive(Clone)]
pub struct LocalLimiter {
    shared: Arc<Shared>,
    specs: Arc<[BucketSpec]>,
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("buckets", &self.specs)
            .finish()
    }
}

impl LocalLimiter {
    /// A limiter over these buckets (an empty list admits everything).
    pub fn new(buckets: Vec<BucketSpec>) -> Self {
        let logs = buckets
            .iter()
            .map(|spec| Log {
                name: spec.name(),
                spec: spec.clone(),
                entries: VecDeque::new(),
                used: 0,
                slot: (spec.window / SLOTS_PER_WINDOW).max(Duration::from_micros(1)),
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    logs,
                    paused_until: None,
                    next_id: 0,
                }),
                room: Notify::new(),
                epoch: Instant::now(),
                units: buckets.iter().map(|b| b.unit).collect(),
                paused: std::sync::atomic::AtomicBool::new(false),
            }),
            specs: buckets.into(),
        }
    }

    /// Tries to admit `cost` now, without waiting.
    pub fn try_reserve(&self, cost: Cost) -> Result<Reservation> {
        match self.admit(cost)? {
            (Verdict::Admitted(id), now) => {
                Ok(self.reservation(id, cost, Duration::ZERO, None, now))
            }
            (Verdict::Wait { bucket, wait }, _) => Err(CoreError::RateLimited {
                bucket,
                retry_after: wait,
            }),
        }
    }

    /// What each bucket holds now, as `(name, used, limit)`.
    pub fn usage(&self) -> Vec<(String, u64, u64)> {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        state
            .logs
            .iter_mut()
            .map(|log| {
                log.expire(now);
                (log.name.clone(), log.used, log.spec.limit)
            })
            .collect()
    }

    fn reservation(
        &self,
        id: u64,
        cost: Cost,
        waited: Duration,
        full_bucket: Option<String>,
        now: Instant,
    ) -> Reservation {
        let at = now.saturating_duration_since(self.shared.epoch).as_micros();
        Reservation::new(
            id,
            cost,
            waited,
            full_bucket,
            u64::try_from(at).unwrap_or(u64::MAX),
            Arc::clone(&self.shared) as Arc<dyn Settler>,
        )
    }

    /// Checks and commits under the lock. The clock is read under the lock too,
    /// so entries enter each log in time order.
    fn admit(&self, cost: Cost) -> Result<(Verdict, Instant)> {
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        let mut longest: Option<(Duration, usize)> = None;
        if let Some(until) = state.paused_until {
            if until > now {
                longest = Some((until - now, usize::MAX));
            } else {
                state.paused_until = None;
            }
        }
        for (index, log) in state.logs.iter_mut().enumerate() {
            let amount = cost.of(log.spec.unit);
            if amount == 0 {
                continue;
            }
            if amount > log.spec.limit {
                return Err(CoreError::OverCapacity {
                    bucket: log.name.clone(),
                    requested: amount,
                    limit: log.spec.limit,
                });
            }
            log.expire(now);
            if log.used.saturating_add(amount) > log.spec.limit {
                let wait = log.wait_for(amount, now);
                if longest.is_none_or(|(w, _)| wait > w) {
                    longest = Some((wait, index));
                }
            }
        }
        if let Some((wait, index)) = longest {
            let bucket = state
                .logs
                .get(index)
                .map_or_else(|| "paused by upstream 429".to_owned(), |l| l.name.clone());
            // A zero wait would spin: the entry expires at exactly `now + 0`.
            return Ok((
                Verdict::Wait {
                    bucket,
                    wait: wait.max(Duration::from_micros(100)),
                },
                now,
            ));
        }
        let id = state.next_id;
        state.next_id += 1;
        for log in &mut state.logs {
            let amount = cost.of(log.spec.unit);
            if amount > 0 {
                log.add(id, amount, now);
            }
        }
        Ok((Verdict::Admitted(id), now))
    }
}

impl Settler for Shared {
    fn units(&self) -> &[Unit] {
        &self.units
    }

    fn adjust(self: Arc<Self>, id: u64, reserved: Cost, actual: Cost) {
        let mut refunded = false;
        let mut state = self.state.lock();
        let now = Instant::now();
        for log in &mut state.logs {
            let unit = log.spec.unit;
            let (before, after) = (reserved.of(unit), actual.of(unit));
            if before == after {
                continue;
            }
            // Settlement follows admission closely, so the entry is near the
            // back. It may hold other admissions too: take out what this one
            // reserved and put in what it used.
            if let Some(entry) = log
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.first_id <= id && id <= e.last_id)
            {
                let held = before.min(entry.amount);
                entry.amount = entry.amount.saturating_sub(held).saturating_add(after);
                log.used = log.used.saturating_sub(held).saturating_add(after);
            } else if before == 0 {
                log.add(id, after, now);
            }
            // Otherwise the entry has expired: nothing left to adjust.
            refunded |= after < before;
        }
        drop(state);
        if refunded {
            self.room.notify_waiters();
        }
    }
}

impl Admission for LocalLimiter {
    fn usage_now(&self) -> Vec<(String, u64, u64)> {
        self.usage()
    }

    fn reserve_now(&self, cost: Cost) -> Option<Reservation> {
        // No buckets and never paused: nothing to check or record.
        if self.specs.is_empty()
            && !self
                .shared
                .paused
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Some(Reservation::new(
                0,
                cost,
                Duration::ZERO,
                None,
                0,
                Arc::clone(&self.shared) as Arc<dyn Settler>,
            ));
        }
        match self.admit(cost) {
            Ok((Verdict::Admitted(id), now)) => {
                Some(self.reservation(id, cost, Duration::ZERO, None, now))
            }
            _ => None,
        }
    }

    fn reserve(&self, cost: Cost, max_wait: Duration) -> BoxFuture<'_, Result<Reservation>> {
        Box::pin(async move {
            if let Some(reservation) = self.reserve_now(cost) {
                return Ok(reservation);
            }
            let start = Instant::now();
            // No deadline at all for a wait too long to represent.
            let deadline = start.checked_add(max_wait);
            let mut full_bucket = None;
            loop {
                let room = self.shared.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                match self.admit(cost)? {
                    (Verdict::Admitted(id), now) => {
                        return Ok(self.reservation(id, cost, now - start, full_bucket, now));
                    }
                    (Verdict::Wait { bucket, wait }, now) => {
                        let remaining = deadline.map(|d| d.saturating_duration_since(now));
                        if remaining.is_some_and(|r| r.is_zero()) {
                            return Err(CoreError::RateLimited {
                                bucket,
                                retry_after: wait,
                            });
                        }
                        // When room only comes after the deadline, a refund (a
                        // call settling below its estimate) may still open it
                        // sooner: wait for one until the deadline.
                        let sleep = remaining.map_or(wait, |r| wait.min(r));
                        full_bucket = Some(bucket);
                        tokio::select! {
                            () = tokio::time::sleep(sleep) => {}
                            () = room => {}
                        }
                    }
                }
            }
        })
    }

    fn pause(&self, pause: Duration) {
        let Some(until) = Instant::now().checked_add(pause) else {
            return;
        };
        self.shared
            .paused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.shared.state.lock();
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }

    fn buckets(&self) -> &[BucketSpec] {
        &self.specs
    }
}

/// Called when admission had to wait: `(request, bucket, waited)`.
pub type WaitObserver<Req> = Arc<dyn Fn(&Req, &str, Duration) + Send + Sync>;

/// Reserves each request's [`Cost`] before the inner service sees it.
pub struct RateLimitLayer<Req> {
    limiter: Arc<dyn Admission>,
    max_wait: Duration,
    observer: Option<WaitObserver<Req>>,
}

impl<Req> Clone for RateLimitLayer<Req> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            max_wait: self.max_wait,
            observer: self.observer.clone(),
        }
    }
}

impl<Req> RateLimitLayer<Req> {
    /// Admits through `limiter`, waiting at most `max_wait` for room.
    pub fn new(limiter: Arc<dyn Admission>, max_wait: Duration) -> Self {
        Self {
            limiter,
            max_wait,
            observer: None,
        }
    }

    /// Calls `observer` whenever admission had to wait.
    #[must_use]
    pub fn with_observer(mut self, observer: WaitObserver<Req>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl<S, Req> Layer<S> for RateLimitLayer<Req> {
    type Service = RateLimitService<S, Req>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
pub struct RateLimitService<S, Req> {
    inner: S,
    layer: RateLimitLayer<Req>,
}

impl<S: Clone, Req> Clone for RateLimitService<S, Req> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, Req> Service<Req> for RateLimitService<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: ProtectedResponse,
    S::Error: ProtectedError,
    Req: ProtectedRequest,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cost = req.cost();
        // The fast path: room at once, so no boxed future and no clone.
        if let Some(reservation) = self.layer.limiter.reserve_now(cost) {
            return RateLimitFuture {
                state: AdmitState::Admitted {
                    inner: self.inner.call(req),
                    reservation: Some(reservation),
                    cost,
                },
            };
        }
        // Waiting (or a shared limiter's round trip): the readied inner service
        // moves into the future and a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let waiting = Box::pin(async move {
            let max_wait = req.max_wait().unwrap_or(layer.max_wait);
            let reservation = match layer.limiter.reserve(cost, max_wait).await {
                Ok(reservation) => reservation,
                Err(error) => {
                    req.trail().push("rate_limit", error.to_string());
                    return Err(error.into());
                }
            };
            if let Some(bucket) = reservation.waited_for() {
                req.trail().push(
                    "wait",
                    format!(
                        "rate limit {bucket}: waited {}",
                        format_duration(reservation.waited())
                    ),
                );
                if let Some(observer) = &layer.observer {
                    observer(&req, bucket, reservation.waited());
                }
            }
            futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            settle(inner.call(req).await, reservation, cost)
        });
        RateLimitFuture {
            state: AdmitState::Waiting { waiting },
        }
    }
}

/// Hands the reservation to a response, or settles it with what a failed call
/// still costs.
fn settle<T: ProtectedResponse, E: ProtectedError>(
    result: std::result::Result<T, E>,
    reservation: Reservation,
    cost: Cost,
) -> std::result::Result<T, E> {
    match result {
        Ok(mut response) => {
            response.settle(reservation);
            Ok(response)
        }
        Err(error) => {
            reservation.settle(error.charged(cost));
            Err(error)
        }
    }
}

pin_project! {
    /// The future of a [`RateLimitService`] call.
    pub struct RateLimitFuture<F, T, E> {
        #[pin]
        state: AdmitState<F, T, E>,
    }
}

pin_project! {
    #[project = AdmitStateProj]
    enum AdmitState<F, T, E> {
        Admitted { #[pin] inner: F, reservation: Option<Reservation>, cost: Cost },
        Waiting { waiting: BoxFuture<'static, std::result::Result<T, E>> },
    }
}

impl<F, T, E> Future for RateLimitFuture<F, T, E>
where
    F: Future<Output = std::result::Result<T, E>>,
    T: ProtectedResponse,
    E: ProtectedError,
{
    type Output = std::result::Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            AdmitStateProj::Admitted {
                inner,
                reservation,
                cost,
            } => {
                let result = std::task::ready!(inner.poll(cx));
                Poll::Ready(match reservation.take() {
                    Some(reservation) => settle(result, reservation, *cost),
                    None => result,
                })
            }
            AdmitStateProj::Waiting { waiting } => waiting.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u64, window_ms: u64) -> LocalLimiter {
        LocalLimiter::new(vec![
            BucketSpec::new(Unit::Requests, limit, Duration::from_millis(window_ms)),
            BucketSpec::new(Unit::Tokens, limit * 100, Duration::from_millis(window_ms)),
        ])
    }

    #[tokio::test]
    async fn all_or_nothing_across_buckets() {
        let limiter = limiter(10, 60_000);
        // Tokens bucket (1000) is the binding one here.
        limiter
            .try_reserve(Cost::call(900, 0))
            .unwrap()
            .settle(Cost::call(900, 0));
        let err = limiter.try_reserve(Cost::call(200, 0)).unwrap_err();
        assert!(err.to_string().contains("tokens/1m"), "{err}");
        // The failed attempt reserved nothing in the request bucket.
        let usage = limiter.usage();
        assert_eq!(usage[0], ("requests/1m".to_owned(), 1, 10));
        assert_eq!(usage[1], ("tokens/1m".to_owned(), 900, 1000));
    }

    #[test]
    fn the_log_stays_small_however_fast_calls_come_and_still_settles() {
        let limiter = limiter(1_000_000, 60_000);
        let mut reservations = Vec::new();
        for _ in 0..50_000 {
            reservations.push(limiter.try_reserve(Cost::call(3, 2)).unwrap());
        }
        let entries = |l: &LocalLimiter| {
            l.shared
                .state
                .lock()
                .logs
                .iter()
                .map(|log| log.entries.len())
                .max()
                .unwrap_or(0)
        };
        // 50,000 admissions within one slot or a few: a handful of entries,
        // never more than a window's worth of slots.
        assert!(
            entries(&limiter) <= SLOTS_PER_WINDOW as usize + 1,
            "{}",
            entries(&limiter)
        );
        assert_eq!(limiter.usage()[0].1, 50_000);
        assert_eq!(limiter.usage()[1].1, 250_000);
        // Settling merged admissions refunds and charges each one's own part.
        let mut all = reservations.into_iter();
        all.next().unwrap().settle(Cost::call(1, 0));
        all.next().unwrap().settle(Cost::call(10, 10));
        assert_eq!(limiter.usage()[1].1, 250_000 - 5 + 1 - 5 + 20);
        for r in all {
            r.settle(Cost::call(0, 0));
        }
        assert_eq!(limiter.usage()[1].1, 1 + 20);
        assert_eq!(limiter.usage()[0].1, 50_000);
    }

    #[tokio::test]
    async fn settlement_refunds_and_charges() {
        let limiter = limiter(10, 60_000);
        let r = limiter.try_reserve(Cost::call(500, 300)).unwrap();
        r.settle(Cost::call(100, 50));
        assert_eq!(limiter.usage()[1].1, 150);
        let r = limiter.try_reserve(Cost::call(10, 10)).unwrap();
        r.settle(Cost::call(300, 200));
        assert_eq!(limiter.usage()[1].1, 650);
    }

    #[tokio::test]
    async fn over_capacity_is_not_a_wait() {
        let limiter = limiter(1, 1_000);
        let err = limiter
            .reserve(Cost::call(5_000, 0), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            CoreError::OverCapacity {
                requested: 5_000,
                limit: 100,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_room_then_admits() {
        let limiter = limiter(2, 1_000);
        for _ in 0..2 {
            limiter
                .try_reserve(Cost::call(1, 0))
                .unwrap()
                .settle(Cost::call(1, 0));
        }
        let start = Instant::now();
        let r = limiter
            .reserve(Cost::call(1, 0), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.waited_for(), Some("requests/1s"));
        assert!(start.elapsed() >= Duration::from_secs(1));
        r.settle(Cost::call(1, 0));
        limiter
            .try_reserve(Cost::call(1, 0))
            .unwrap()
            .settle(Cost::call(1, 0));
        let err = limiter
            .reserve(Cost::call(1, 0), Duration::from_millis(10))
            .await
            .unwrap_err();
        let CoreError::RateLimited {
            bucket,
            retry_after,
        } = err
        else {
            panic!()
        };
        assert_eq!(bucket, "requests/1s");
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_blocks_every_bucket() {
        let limiter = limiter(100, 1_000);
        limiter.pause(Duration::from_secs(2));
        let err = limiter.try_reserve(Cost::call(1, 0)).unwrap_err();
        assert!(err.to_string().contains("paused by upstream 429"), "{err}");
        let start = Instant::now();
        let _r = limiter
            .reserve(Cost::call(1, 0), Duration::from_secs(3))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn refund_wakes_a_waiter_early() {
        let limiter = LocalLimiter::new(vec![BucketSpec::new(
            Unit::Tokens,
            100,
            Duration::from_secs(60),
        )]);
        let held = limiter.try_reserve(Cost::call(100, 0)).unwrap();
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let r = limiter
                    .reserve(Cost::call(50, 0), Duration::from_secs(120))
                    .await
                    .unwrap();
                (start.elapsed(), r)
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        held.settle(Cost::call(20, 0));
        let (waited, _r) = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
