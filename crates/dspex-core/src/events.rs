//! A typed in-process event bus.
//!
//! Publishers call [`EventBus::publish`], which never blocks and never waits on a
//! subscriber. Each subscriber chooses its [`Delivery`]:
//!
//! - [`Delivery::Lossless`]: every event is queued for it, however slow it is.
//!   Nothing is ever dropped; the queue length is visible in
//!   [`Subscription::pending`] so a stalled consumer shows up in metrics.
//! - [`Delivery::Bounded`]: at most `capacity` events wait; when the queue is full
//!   the newest event is dropped and counted in [`Subscription::dropped`] (and in
//!   the bus-wide [`EventBus::dropped`]). Use it for consumers that prefer fresh
//!   data to complete data, such as a live dashboard.
//! - [`Delivery::Batched`]: lossless, for consumers that work in batches (a
//!   database writer). A publish does not wake the subscriber for each event —
//!   on a busy bus that cross-thread wake-up would be most of a publish's cost —
//!   but only when a batch is full, or when the subscriber had gone idle; it
//!   collects the rest on its own schedule. Past a high-water mark the bus is
//!   *congested*, and publishers that await [`EventBus::congestion`] wait until
//!   the subscriber catches up: back-pressure without dropping anything.
//!
//! Either way an event is delivered or its loss is counted: nothing disappears
//! silently.
//!
//! ```
//! # tokio_test_block_on(async {
//! use dspex_core::events::{Delivery, EventBus};
//! let bus: EventBus<String> = EventBus::new();
//! let mut sub = bus.subscribe("printer", Delivery::Lossless);
//! bus.publish("hello".to_owned());
//! assert_eq!(sub.recv().await.as_deref().map(String::as_str), Some("hello"));
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// How a subscriber receives events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every event, queued without bound.
    Lossless,
    /// At most `capacity` queued events; overflow is dropped and counted.
    Bounded {
        /// The queue length.
        capacity: usize,
    },
    /// Every event, queued without bound, collected in batches.
    ///
    /// The subscriber's `recv*` calls return once `batch` events wait, or once
    /// the oldest waiting event has waited about `max_wait`. A publish wakes
    /// the subscriber only when it fills a batch or finds the subscriber idle
    /// (it had found the queue empty), so a steady stream costs one wake-up per
    /// batch instead of one per event.
    ///
    /// While more than `high_water` events wait, [`EventBus::congestion`]
    /// waits; publishers that await it are slowed to the subscriber's pace. A
    /// subscriber must not await its own bus's congestion, or it waits for
    /// itself.
    Batched {
        /// Events that make a batch (and a wake-up).
        batch: usize,
        /// Longest time an event waits for its batch to fill.
        max_wait: Duration,
        /// Queue length above which the bus reports congestion.
        high_water: usize,
    },
}

type Filter<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

enum Sender<E> {
    Lossless(mpsc::UnboundedSender<Arc<E>>),
    Bounded(mpsc::Sender<Arc<E>>),
    Batched(BatchSender<E>),
}

enum Receiver<E> {
    Lossless(mpsc::UnboundedReceiver<Arc<E>>),
    Bounded(mpsc::Receiver<Arc<E>>),
    Batched(Arc<BatchQueue<E>>),
}

/// Bus-wide congestion: how many batched subscribers are above their
/// high-water mark, and a signal for publishers waiting on them.
#[derive(Default)]
struct Pressure {
    congested: AtomicUsize,
    relieved: Notify,
}

impl Pressure {
    fn relieve(&self) {
        self.congested.fetch_sub(1, Ordering::AcqRel);
        self.relieved.notify_waiters();
    }
}

/// The queue behind a [`Delivery::Batched`] subscription.
///
/// Hand-written rather than an mpsc channel because the point is *when* the
/// consumer is woken: tokio's channels wake the receiver on every send that
/// finds it waiting, which for a consumer that keeps up is every send.
struct BatchQueue<E> {
    state: Mutex<BatchState<E>>,
    batch: usize,
    max_wait: Duration,
    high_water: usize,
    ready: Notify,
    closed: AtomicBool,
    congested: AtomicBool,
    pressure: Arc<Pressure>,
    // Counted here, before congestion is relieved, so `pending` never shows
    // events that have already left the queue.
    stats: Arc<SlotStats>,
}

struct BatchState<E> {
    events: VecDeque<Arc<E>>,
    /// The consumer found the queue empty and waits for the next publish.
    idle: bool,
}

impl<E> BatchQueue<E> {
    fn push(&self, event: Arc<E>) {
        let (len, wake) = {
            let mut state = self.state.lock();
            state.events.push_back(event);
            let len = state.events.len();
            (len, std::mem::take(&mut state.idle) || len == self.batch)
        };
        if wake {
            self.ready.notify_one();
        }
        if len > self.high_water && !self.congested.swap(true, Ordering::AcqRel) {
            self.pressure.congested.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Moves up to `max` events into `out`; relieves congestion once the
    /// queue is back under the high-water mark.
    fn take(&self, out: &mut Vec<Arc<E>>, max: usize) -> usize {
        let (n, remaining) = {
            let mut state = self.state.lock();
            let n = state.events.len().min(max);
            out.extend(state.events.drain(..n));
            (n, state.events.len())
        };
        self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
        if remaining <= self.high_water && self.congested.swap(false, Ordering::AcqRel) {
            self.pressure.relieve();
        }
        n
    }

    /// Waits for a batch (or the oldest event's `max_wait`), then takes up to
    /// `max` events. Cancel-safe: events move only in the synchronous `take`.
    async fn recv_many(&self, out: &mut Vec<Arc<E>>, max: usize) -> usize {
        let max = max.max(1);
        let mut deadline = Instant::now() + self.max_wait;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiting = {
                let mut state = self.state.lock();
                let n = state.events.len();
                let due = n > 0 && Instant::now() >= deadline;
                if n >= self.batch || due || self.closed.load(Ordering::Acquire) {
                    None
                } else {
                    state.idle = n == 0;
                    Some(state.idle)
                }
            };
            match waiting {
                None => return self.take(out, max),
                // Idle: the next publish wakes us, and starts the clock.
                Some(true) => {
                    notified.await;
                    deadline = Instant::now() + self.max_wait;
                }
                Some(false) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
        }
    }
}

/// The bus's end of a batched queue; dropping it (the bus going away) closes
/// the queue, so the subscriber drains what is left and then sees the end.
struct BatchSender<E>(Arc<BatchQueue<E>>);

impl<E> Drop for BatchSender<E> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

#[derive(Default)]
struct SlotStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
}

struct Slot<E> {
    id: u64,
    name: Arc<str>,
    sender: Sender<E>,
    filter: Option<Filter<E>>,
    stats: Arc<SlotStats>,
}

struct Inner<E> {
    slots: RwLock<Vec<Slot<E>>>,
    next_id: AtomicU64,
    published: AtomicU64,
    // Drops of subscribers that have since gone away stay counted here.
    dropped_gone: AtomicU64,
    pressure: Arc<Pressure>,
}

/// A cheap-to-clone handle to a bus of events of type `E`.
pub struct EventBus<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for EventBus<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E> Default for EventBus<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> fmt::Debug for EventBus<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<Arc<str>> = self
            .inner
            .slots
            .read()
            .iter()
            .map(|s| Arc::clone(&s.name))
            .collect();
        f.debug_struct("EventBus")
            .field("subscribers", &names)
            .field("published", &self.published())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<E> EventBus<E> {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(0),
                published: AtomicU64::new(0),
                dropped_gone: AtomicU64::new(0),
                pressure: Arc::default(),
            }),
        }
    }

    /// Subscribes to every event.
    pub fn subscribe(&self, name: &str, delivery: Delivery) -> Subscription<E> {
        self.add(name, delivery, None)
    }

    /// Subscribes to the events for which `filter` returns true.
    pub fn subscribe_filtered(
        &self,
        name: &str,
        delivery: Delivery,
        filter: impl Fn(&E) -> bool + Send + Sync + 'static,
    ) -> Subscription<E> {
        self.add(name, delivery, Some(Arc::new(filter)))
    }

    fn add(&self, name: &str, delivery: Delivery, filter: Option<Filter<E>>) -> Subscription<E> {
        let stats = Arc::new(SlotStats::default());
        let (sender, receiver) = match delivery {
            Delivery::Lossless => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Sender::Lossless(tx), Receiver::Lossless(rx))
            }
            Delivery::Bounded { capacity } => {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (Sender::Bounded(tx), Receiver::Bounded(rx))
            }
            Delivery::Batched {
                batch,
                max_wait,
                high_water,
            } => {
                let batch = batch.max(1);
                let queue = Arc::new(BatchQueue {
                    state: Mutex::new(BatchState {
                        events: VecDeque::with_capacity(batch),
                        idle: false,
                    }),
                    batch,
                    max_wait,
                    high_water: high_water.max(batch),
                    ready: Notify::new(),
                    closed: AtomicBool::new(false),
                    congested: AtomicBool::new(false),
                    pressure: Arc::clone(&self.inner.pressure),
                    stats: Arc::clone(&stats),
                });
                (
                    Sender::Batched(BatchSender(Arc::clone(&queue))),
                    Receiver::Batched(queue),
                )
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = Arc::from(name);
        self.inner.slots.write().push(Slot {
            id,
            name: Arc::clone(&name),
            sender,
            filter,
            stats: Arc::clone(&stats),
        });
        Subscription {
            id,
            name,
            receiver,
            stats,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Whether anyone is listening; publishers may skip building costly events.
    pub fn has_subscribers(&self) -> bool {
        !self.inner.slots.read().is_empty()
    }

    /// Sends `event` to every subscriber. Never blocks.
    pub fn publish(&self, event: E) {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        let slots = self.inner.slots.read();
        if slots.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for slot in slots.iter() {
            if let Some(filter) = &slot.filter
                && !filter(&event)
            {
                continue;
            }
            let sent = match &slot.sender {
                Sender::Lossless(tx) => tx.send(Arc::clone(&event)).is_ok(),
                Sender::Bounded(tx) => tx.try_send(Arc::clone(&event)).is_ok(),
                Sender::Batched(queue) => {
                    queue.0.push(Arc::clone(&event));
                    true
                }
            };
            if sent {
                slot.stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                // Full bounded queue, or a receiver being dropped right now.
                slot.stats.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("dspex_events_dropped_total", "subscriber" => slot.name.to_string())
                    .increment(1);
            }
        }
    }

    /// Whether a [`Delivery::Batched`] subscriber is above its high-water mark.
    pub fn is_congested(&self) -> bool {
        self.inner.pressure.congested.load(Ordering::Acquire) > 0
    }

    /// Waits while a [`Delivery::Batched`] subscriber is above its high-water
    /// mark: publishers that can wait (the client, before each call) await
    /// this to apply back-pressure. Ready at once, for the cost of one
    /// atomic load, when nobody is behind.
    pub async fn congestion(&self) {
        let pressure = &self.inner.pressure;
        while pressure.congested.load(Ordering::Acquire) > 0 {
            let relieved = pressure.relieved.notified();
            tokio::pin!(relieved);
            relieved.as_mut().enable();
            if pressure.congested.load(Ordering::Acquire) == 0 {
                return;
            }
            relieved.await;
        }
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Events dropped so far, over all subscribers (present and gone).
    pub fn dropped(&self) -> u64 {
        let live: u64 = self
            .inner
            .slots
            .read()
            .iter()
            .map(|s| s.stats.dropped.load(Ordering::Relaxed))
            .sum();
        live + self.inner.dropped_gone.load(Ordering::Relaxed)
    }

    /// Per-subscriber counts, for diagnostics and metrics.
    pub fn subscriber_stats(&self) -> Vec<SubscriberStats> {
        self.inner
            .slots
            .read()
            .iter()
            .map(|s| SubscriberStats::from_slot(&s.name, &s.stats))
            .collect()
    }
}

/// Counts for one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberStats {
    /// The subscriber's name.
    pub name: String,
    /// Events put in its queue.
    pub delivered: u64,
    /// Events it lost to a full queue.
    pub dropped: u64,
    /// Events queued and not yet received.
    pub pending: u64,
}

impl SubscriberStats {
    fn from_slot(name: &str, stats: &SlotStats) -> Self {
        let delivered = stats.delivered.load(Ordering::Relaxed);
        Self {
            name: name.to_owned(),
            delivered,
            dropped: stats.dropped.load(Ordering::Relaxed),
            pending: delivered.saturating_sub(stats.received.load(Ordering::Relaxed)),
        }
    }
}

/// A subscriber's end of the bus. Dropping it unsubscribes.
pub struct Subscription<E> {
    id: u64,
    name: Arc<str>,
    receiver: Receiver<E>,
    stats: Arc<SlotStats>,
    bus: Weak<Inner<E>>,
}

impl<E> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("dropped", &self.dropped())
            .field("pending", &self.pending())
            .finish()
    }
}

impl<E> Subscription<E> {
    /// The next event; `None` once the bus is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Arc<E>> {
        let event = match &mut self.receiver {
            Receiver::Lossless(rx) => rx.recv().await,
            Receiver::Bounded(rx) => rx.recv().await,
            // The queue counts what it hands over.
            Receiver::Batched(queue) => {
                let mut one = Vec::with_capacity(1);
                queue.recv_many(&mut one, 1).await;
                return one.pop();
            }
        };
        if event.is_some() {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        event
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Arc<E>> {
        let event = match &mut self.receiver {
            Receiver::Lossless(rx) => rx.try_recv().ok(),
            Receiver::Bounded(rx) => rx.try_recv().ok(),
            Receiver::Batched(queue) => {
                let mut one = Vec::with_capacity(1);
                queue.take(&mut one, 1);
                return one.pop();
            }
        };
        if event.is_some() {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        event
    }

    /// Receives up to `max` queued events into `out` at once, waiting for at
    /// least one (for [`Delivery::Batched`], for a batch or its `max_wait`);
    /// returns how many were added (0 once the bus is gone and the queue is
    /// empty).
    pub async fn recv_many(&mut self, out: &mut Vec<Arc<E>>, max: usize) -> usize {
        let n = match &mut self.receiver {
            Receiver::Lossless(rx) => rx.recv_many(out, max).await,
            Receiver::Bounded(rx) => rx.recv_many(out, max).await,
            Receiver::Batched(queue) => return queue.recv_many(out, max).await,
        };
        self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Events this subscriber lost to a full queue.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting in this subscriber's queue.
    pub fn pending(&self) -> u64 {
        SubscriberStats::from_slot(&self.name, &self.stats).pending
    }
}

impl<E> Drop for Subscription<E> {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            let mut slots = bus.slots.write();
            if let Some(pos) = slots.iter().position(|s| s.id == self.id) {
                let slot = slots.swap_remove(pos);
                bus.dropped_gone.fetch_add(
                    slot.stats.dropped.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
        }
        // A subscriber that goes away no longer holds anyone back. Relieved
        // only after its slot is gone: a publish still holding the slot list
        // could otherwise mark the queue congested again, for good.
        if let Receiver::Batched(queue) = &self.receiver
            && queue.congested.swap(false, Ordering::AcqRel)
        {
            queue.pressure.relieve();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lossless_slow_subscriber_gets_all_100_000_events() {
        const N: u64 = 100_000;
        let bus: EventBus<u64> = EventBus::new();
        let mut slow = bus.subscribe("slow", Delivery::Lossless);
        let consumer = tokio::spawn(async move {
            let mut expected = 0;
            while expected < N {
                let event = slow.recv().await.expect("bus alive");
                assert_eq!(*event, expected, "events arrive in order");
                expected += 1;
                // A slow consumer: yields to the scheduler and sleeps now and then,
                // so the publisher runs far ahead of it.
                if expected % 10_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (expected, slow.dropped())
        });
        let publisher = bus.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..N {
                publisher.publish(i);
            }
        })
        .await
        .unwrap();
        let (received, dropped) = consumer.await.unwrap();
        assert_eq!(received, N);
        assert_eq!(dropped, 0);
        assert_eq!(bus.published(), N);
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn bounded_subscriber_counts_every_loss() {
        let bus: EventBus<u32> = EventBus::new();
        let mut sub = bus.subscribe("dashboard", Delivery::Bounded { capacity: 10 });
        for i in 0..100 {
            bus.publish(i);
        }
        let mut received = 0;
        while sub.try_recv().is_some() {
            received += 1;
        }
        assert_eq!(received, 10);
        assert_eq!(sub.dropped(), 90);
        assert_eq!(bus.dropped(), 90);
        let stats = bus.subscriber_stats();
        assert_eq!(stats[0].delivered + stats[0].dropped, 100);
        // Losses stay counted after the subscriber goes away.
        drop(sub);
        assert_eq!(bus.dropped(), 90);
        assert!(!bus.has_subscribers());
    }

    #[tokio::test]
    async fn filters_and_fan_out() {
        let bus: EventBus<u32> = EventBus::new();
        let mut all = bus.subscribe("all", Delivery::Lossless);
        let mut even = bus.subscribe_filtered("even", Delivery::Lossless, |e| e % 2 == 0);
        for i in 0..10 {
            bus.publish(i);
        }
        let mut batch = Vec::new();
        assert_eq!(all.recv_many(&mut batch, 100).await, 10);
        let mut evens = Vec::new();
        while let Some(e) = even.try_recv() {
            evens.push(*e);
        }
        assert_eq!(evens, vec![0, 2, 4, 6, 8]);
        assert_eq!(all.pending(), 0);
    }
    fn batched(batch: usize, max_wait_ms: u64, high_water: usize) -> Delivery {
        Delivery::Batched {
            batch,
            max_wait: Duration::from_millis(max_wait_ms),
            high_water,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_slow_subscriber_gets_all_100_000_events_in_order() {
        const N: u64 = 100_000;
        let bus: EventBus<u64> = EventBus::new();
        let mut slow = bus.subscribe("writer", batched(1_000, 5, usize::MAX));
        let consumer = tokio::spawn(async move {
            let mut expected = 0;
            let mut batch = Vec::new();
            while expected < N {
                batch.clear();
                let n = slow.recv_many(&mut batch, 700).await;
                assert!(n > 0 && n <= 700, "{n}");
                for event in &batch {
                    assert_eq!(**event, expected, "events arrive in order");
                    expected += 1;
                }
                if expected % 7_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (expected, slow.dropped(), slow.pending())
        });
        let publisher = bus.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..N {
                publisher.publish(i);
            }
        })
        .await
        .unwrap();
        let (received, dropped, pending) = consumer.await.unwrap();
        assert_eq!((received, dropped, pending), (N, 0, 0));
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn batched_lone_event_arrives_after_max_wait_and_full_batch_at_once() {
        let bus: EventBus<u32> = EventBus::new();
        let mut sub = bus.subscribe("writer", batched(3, 30, 100));
        // The subscriber goes idle on an empty queue; one publish wakes it,
        // and the lone event is handed over once it has waited `max_wait`.
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let started = Instant::now();
            let n = sub.recv_many(&mut out, 10).await;
            (n, started.elapsed(), sub)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let published = Instant::now();
        bus.publish(1);
        let (n, _, mut sub) = waiter.await.unwrap();
        assert_eq!(n, 1);
        assert!(published.elapsed() >= Duration::from_millis(30));
        // A full batch is handed over without waiting for `max_wait`.
        for i in 0..3 {
            bus.publish(i);
        }
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_millis(25), sub.recv_many(&mut out, 10))
            .await
            .expect("a full batch does not wait for max_wait");
        assert_eq!(n, 3);
        // `try_recv` takes one at a time.
        bus.publish(7);
        assert_eq!(sub.try_recv().as_deref(), Some(&7));
        assert_eq!(sub.try_recv(), None);
        // The bus going away ends the subscription after what is queued.
        bus.publish(8);
        drop(bus);
        assert_eq!(sub.recv().await.as_deref(), Some(&8));
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn batched_congestion_holds_publishers_until_the_subscriber_catches_up() {
        let bus: EventBus<u32> = EventBus::new();
        let mut sub = bus.subscribe("writer", batched(10, 1_000, 20));
        for i in 0..20 {
            bus.publish(i);
        }
        assert!(!bus.is_congested(), "at the high-water mark, not above");
        bus.congestion().await;
        bus.publish(20);
        assert!(bus.is_congested());
        let waiting = bus.clone();
        let mut held = tokio::spawn(async move { waiting.congestion().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished(), "a congested bus holds publishers");
        // Taking one batch brings the queue back to the mark: relieved.
        let mut out = Vec::new();
        assert_eq!(sub.recv_many(&mut out, 10).await, 10);
        tokio::time::timeout(Duration::from_secs(5), &mut held)
            .await
            .expect("relieved")
            .unwrap();
        assert!(!bus.is_congested());
        // A subscriber that goes away stops holding anyone back.
        for i in 0..100 {
            bus.publish(i);
        }
        assert!(bus.is_congested());
        drop(sub);
        assert!(!bus.is_congested());
        bus.congestion().await;
    }
}
