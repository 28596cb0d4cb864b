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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use tokio::sync::mpsc;

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
}

type Filter<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

enum Sender<E> {
    Lossless(mpsc::UnboundedSender<Arc<E>>),
    Bounded(mpsc::Sender<Arc<E>>),
}

enum Receiver<E> {
    Lossless(mpsc::UnboundedReceiver<Arc<E>>),
    Bounded(mpsc::Receiver<Arc<E>>),
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
        let (sender, receiver) = match delivery {
            Delivery::Lossless => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Sender::Lossless(tx), Receiver::Lossless(rx))
            }
            Delivery::Bounded { capacity } => {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (Sender::Bounded(tx), Receiver::Bounded(rx))
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(SlotStats::default());
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
        };
        if event.is_some() {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        event
    }

    /// Receives up to `max` queued events into `out` at once, waiting for at
    /// least one; returns how many were added (0 once the bus is gone).
    pub async fn recv_many(&mut self, out: &mut Vec<Arc<E>>, max: usize) -> usize {
        let n = match &mut self.receiver {
            Receiver::Lossless(rx) => rx.recv_many(out, max).await,
            Receiver::Bounded(rx) => rx.recv_many(out, max).await,
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
}
