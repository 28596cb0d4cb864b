//! The recorder: completion events in, batched rows out, off the call path.
//!
//! The call path pays only for the event publish the client already does (one
//! `Arc` and one queue push under an uncontended lock). The recorder subscribes
//! with [`Delivery::Batched`]: losslessly, so the bus never drops an event for
//! it, and without a wake-up per event — the background task is woken when a
//! batch ([`RecorderOptions::batch_size`] events) is waiting, and otherwise
//! collects what arrived within [`RecorderOptions::flush_interval`]. It prices
//! each completion and writes one transaction per batch.
//!
//! Back-pressure: the task awaits each write before taking more events, so a
//! slow store makes events wait in the subscription queue (visible as
//! `pending`, and in the `dspex_analytics_pending_events` gauge) and the next
//! batches grow to `batch_size`, amortising the store's per-transaction cost.
//! Once more than [`RecorderOptions::max_pending`] events wait, the client's
//! calls wait to start until the writer catches up ([`EventBus::congestion`]);
//! nothing is dropped. A failed write is retried with backoff, the batch kept,
//! until [`RecorderOptions::max_write_attempts`]; only then are its rows
//! counted as lost (and logged). [`RecorderHandle::shutdown`] writes everything
//! queued before it returns.
//!
//! What a crash can lose depends on the durability mode. Batched (the
//! default): the calls not yet written, at most `max_pending` events and in
//! practice what completed in the last `flush_interval` plus the batch being
//! written. Journaled ([`Recorder::attach_journaled`], `durability = "wal"`):
//! nothing a caller saw complete; the client waits for each call's journal
//! append (see [`crate::wal`]), and the next start replays the journal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dspex_client::{Client, Event, EventBus, EventKind};
use dspex_core::events::{Delivery, Subscription};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{AnalyticsError, Result};
use crate::prices::PriceTable;
use crate::record::CallRecord;
use crate::store::CallSink;
use crate::wal::Journal;

/// How often a journaled recorder checkpoints: seals the journal's segment,
/// writes what the bus holds, and deletes the sealed segments.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How the recorder batches and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RecorderOptions {
    /// Most rows per transaction.
    pub batch_size: usize,
    /// Longest time a row waits for its batch to fill.
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub flush_interval: Duration,
    /// Events allowed to wait before new calls wait for the writer (the
    /// bus reports congestion above this).
    pub max_pending: usize,
    /// Attempts to write one batch before its rows are counted as lost.
    pub max_write_attempts: u32,
    /// First wait after a failed write (doubled each time, at most 5 s).
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub retry_backoff: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            flush_interval: Duration::from_millis(50),
            max_pending: 10_000,
            max_write_attempts: 10,
            retry_backoff: Duration::from_millis(50),
        }
    }
}

/// What a recorder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecorderStats {
    /// Completion events received.
    pub events: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows whose model had no price.
    pub unpriced: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Failed write attempts (each retried).
    pub write_errors: u64,
    /// Rows given up after `max_write_attempts` failed writes (with a
    /// journal they are not lost: the next start replays them).
    pub rows_lost: u64,
    /// Rows replayed from the journals of processes that ended without
    /// writing them (journaled recorders only).
    pub rows_replayed: u64,
    /// Events waiting in the subscription queue.
    pub pending: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    rows_written: AtomicU64,
    unpriced: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    rows_lost: AtomicU64,
    rows_replayed: AtomicU64,
    pending: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RecorderStats {
        RecorderStats {
            events: self.events.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            unpriced: self.unpriced.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            rows_lost: self.rows_lost.load(Ordering::Relaxed),
            rows_replayed: self.rows_replayed.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

enum Control {
    Flush(oneshot::Sender<()>),
    Shutdown,
}

/// Records every LM call the client completes into a store.
///
/// ```no_run
/// # async fn demo(client: dspex_client::Client) -> Result<(), dspex_analytics::AnalyticsError> {
/// use std::sync::Arc;
/// use dspex_analytics::{PriceTable, Recorder, RecorderOptions, Store};
/// let store = Store::open("dspex-analytics.sqlite", None).await?;
/// let recorder = Recorder::attach(
///     client.events(),
///     store.clone(),
///     Arc::new(PriceTable::bundled()?),
///     RecorderOptions::default(),
/// );
/// // ... calls ...
/// let stats = recorder.shutdown().await?;
/// assert_eq!(stats.rows_lost, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Recorder;

impl Recorder {
    /// A lossless, batched subscription to the completion events of `bus`,
    /// shaped by `options` (batch size, flush interval, most pending events).
    pub fn subscribe(bus: &EventBus, options: &RecorderOptions) -> Subscription<Event> {
        let delivery = Delivery::Batched {
            batch: options.batch_size.max(1),
            max_wait: options.flush_interval,
            high_water: options.max_pending,
        };
        bus.subscribe_filtered("analytics-recorder", delivery, |event: &Event| {
            matches!(event.kind, EventKind::RequestCompleted(_))
        })
    }

    /// Subscribes to `bus` and starts recording into `sink`.
    pub fn attach<S: CallSink>(
        bus: &EventBus,
        sink: S,
        prices: Arc<PriceTable>,
        options: RecorderOptions,
    ) -> RecorderHandle {
        Self::spawn(sink, Self::subscribe(bus, &options), prices, options)
    }

    /// `durability = "wal"`: opens a journal in a new folder under
    /// `journal_root`, replays into `sink` what processes that are gone left
    /// in theirs, makes `client` wait for each completion's journal append
    /// before it answers, and records from `client`'s bus, checkpointing the
    /// journal every second.
    pub async fn attach_journaled<S: CallSink>(
        client: &Client,
        sink: S,
        prices: Arc<PriceTable>,
        options: RecorderOptions,
        journal_root: &Path,
    ) -> Result<RecorderHandle> {
        let (journal, leftovers) = Journal::open(journal_root, Arc::clone(&prices))?;
        let (records, torn) = leftovers.read()?;
        let replayed = records.len() as u64;
        for chunk in records.chunks(options.batch_size.max(1)) {
            sink.write(Arc::new(chunk.to_vec())).await?;
        }
        leftovers.remove()?;
        if replayed > 0 || torn > 0 {
            tracing::info!(
                rows = replayed,
                torn_lines = torn,
                "replayed the analytics journal of a process that ended before writing its rows"
            );
        }
        // Subscribe before the journal is installed: every journaled call's
        // event must reach this recorder (the checkpoint relies on it).
        let subscription = Self::subscribe(client.events(), &options);
        client
            .set_journal(Arc::new(journal.clone()))
            .map_err(|e| AnalyticsError::Journal {
                path: journal.folder().display().to_string(),
                message: e.to_string(),
            })?;
        let handle = Self::start(sink, subscription, prices, options, Some(journal));
        handle
            .counters
            .rows_replayed
            .store(replayed, Ordering::Relaxed);
        Ok(handle)
    }

    /// Starts recording the completions `subscription` receives into `sink`, on
    /// a background task of the current Tokio runtime.
    pub fn spawn<S: CallSink>(
        sink: S,
        subscription: Subscription<Event>,
        prices: Arc<PriceTable>,
        options: RecorderOptions,
    ) -> RecorderHandle {
        Self::start(sink, subscription, prices, options, None)
    }

    fn start<S: CallSink>(
        sink: S,
        subscription: Subscription<Event>,
        prices: Arc<PriceTable>,
        options: RecorderOptions,
        journal: Option<Journal>,
    ) -> RecorderHandle {
        let counters = Arc::new(Counters::default());
        let (control, control_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            sink,
            subscription,
            prices,
            options: RecorderOptions {
                batch_size: options.batch_size.max(1),
                max_write_attempts: options.max_write_attempts.max(1),
                ..options
            },
            counters: Arc::clone(&counters),
            rows: Vec::new(),
            journal,
            last_checkpoint: tokio::time::Instant::now(),
        };
        let task = tokio::spawn(worker.run(control_rx));
        RecorderHandle {
            control,
            task,
            counters,
        }
    }
}

/// A running recorder. Dropping it without [`RecorderHandle::shutdown`] lets
/// the task run until the bus goes away, then write what it holds.
pub struct RecorderHandle {
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for RecorderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RecorderHandle {
    /// Counts so far.
    pub fn stats(&self) -> RecorderStats {
        self.counters.snapshot()
    }

    /// Writes every event queued so far, then returns.
    pub async fn flush(&self) -> Result<RecorderStats> {
        let (ack, done) = oneshot::channel();
        self.control
            .send(Control::Flush(ack))
            .map_err(|_| stopped("the task has ended"))?;
        done.await
            .map_err(|_| stopped("the task ended during a flush"))?;
        Ok(self.stats())
    }

    /// Writes every event queued so far, stops the task and returns the final
    /// counts.
    pub async fn shutdown(self) -> Result<RecorderStats> {
        // An error means the task already ended (the bus went away): joining
        // it is all that is left.
        let _ = self.control.send(Control::Shutdown);
        self.task.await.map_err(|e| stopped(&e.to_string()))?;
        Ok(self.counters.snapshot())
    }
}

fn stopped(message: &str) -> AnalyticsError {
    AnalyticsError::RecorderStopped {
        message: message.to_owned(),
    }
}

struct Worker<S> {
    sink: S,
    subscription: Subscription<Event>,
    prices: Arc<PriceTable>,
    options: RecorderOptions,
    counters: Arc<Counters>,
    rows: Vec<CallRecord>,
    journal: Option<Journal>,
    last_checkpoint: tokio::time::Instant,
}

impl<S: CallSink> Worker<S> {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut events: Vec<Arc<Event>> = Vec::with_capacity(self.options.batch_size);
        let mut control_open = true;
        loop {
            tokio::select! {
                biased;
                message = control.recv(), if control_open => match message {
                    Some(Control::Flush(ack)) => {
                        self.drain();
                        self.write_all().await;
                        let _ = ack.send(());
                    }
                    Some(Control::Shutdown) => break,
                    // The handle was dropped: keep recording until the bus goes.
                    None => control_open = false,
                },
                // A batched subscription returns a full batch, or what has
                // waited `flush_interval`: either way, time to write.
                received = self.subscription.recv_many(&mut events, self.options.batch_size) => {
                    if received == 0 {
                        break;
                    }
                    self.take(&mut events);
                    self.write_all().await;
                    if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                        self.checkpoint().await;
                    }
                }
            }
        }
        self.drain();
        let lost_before = self.counters.rows_lost.load(Ordering::Relaxed);
        self.write_all().await;
        if let Some(journal) = &self.journal {
            if self.counters.rows_lost.load(Ordering::Relaxed) == lost_before {
                // Every row is in the store: the journal has nothing left
                // to protect.
                if let Err(error) = journal.close() {
                    tracing::warn!(%error, "could not remove the analytics journal; the next start replays it (rows are not duplicated)");
                }
            } else {
                tracing::error!(folder = %journal.folder().display(), "analytics rows could not be written; they stay in the journal and the next start replays them");
            }
        }
    }

    /// Seals the journal's segment, writes everything the bus holds (which
    /// includes every sealed call), then deletes the sealed segments, unless
    /// a write gave up: then they stay for the next start to replay.
    async fn checkpoint(&mut self) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        self.last_checkpoint = tokio::time::Instant::now();
        let sealed = journal.seal().await;
        let lost_before = self.counters.rows_lost.load(Ordering::Relaxed);
        self.drain();
        self.write_all().await;
        if self.counters.rows_lost.load(Ordering::Relaxed) == lost_before
            && let Err(error) = journal.remove(&sealed)
        {
            tracing::warn!(%error, "could not remove a sealed analytics journal segment");
        }
    }

    fn take(&mut self, events: &mut Vec<Arc<Event>>) {
        for event in events.drain(..) {
            if let Some(row) = CallRecord::from_event(&event, &self.prices) {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                if row.is_unpriced() {
                    self.counters.unpriced.fetch_add(1, Ordering::Relaxed);
                }
                self.rows.push(row);
            }
        }
        let pending = self.subscription.pending();
        self.counters.pending.store(pending, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("dspex_analytics_pending_events").set(pending as f64);
    }

    /// Moves everything queued in the subscription into `rows`.
    fn drain(&mut self) {
        let mut events = Vec::new();
        while let Some(event) = self.subscription.try_recv() {
            events.push(event);
        }
        self.take(&mut events);
    }

    async fn write_all(&mut self) {
        while !self.rows.is_empty() {
            self.write_batch().await;
        }
    }

    /// Writes up to `batch_size` rows from the front of `rows`.
    async fn write_batch(&mut self) {
        let take = self.rows.len().min(self.options.batch_size);
        if take == 0 {
            return;
        }
        let batch: Arc<Vec<CallRecord>> = Arc::new(self.rows.drain(..take).collect());
        let mut backoff = self.options.retry_backoff;
        for attempt in 1..=self.options.max_write_attempts {
            match self.sink.write(Arc::clone(&batch)).await {
                Ok(()) => {
                    let n = batch.len() as u64;
                    self.counters.rows_written.fetch_add(n, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("dspex_analytics_rows_written_total").increment(n);
                    return;
                }
                Err(error) => {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("dspex_analytics_write_errors_total").increment(1);
                    if attempt == self.options.max_write_attempts {
                        let n = batch.len() as u64;
                        self.counters.rows_lost.fetch_add(n, Ordering::Relaxed);
                        metrics::counter!("dspex_analytics_rows_lost_total").increment(n);
                        tracing::error!(%error, rows = n, attempts = attempt, "analytics rows could not be written and are lost");
                        return;
                    }
                    tracing::warn!(%error, attempt, "analytics write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
