//! Request statistics (lock-free counters) and recorded requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A snapshot of what the mock has served since it started or was last reset.
///
/// Maps only hold non-zero entries, so a fresh or reset server's stats equal
/// `Stats::default()`. `GET /stats` returns this as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests to a model route: chat completions, messages and embeddings.
    pub requests: u64,
    /// Requests per route: `"chat_completions"`, `"messages"`, `"embeddings"`, `"models"`.
    pub by_route: BTreeMap<String, u64>,
    /// Responses per status code, over the routes counted in `by_route`.
    pub by_status: BTreeMap<u16, u64>,
    /// Replies sent as a stream (including malformed and truncated streams).
    pub streamed: u64,
    /// Input (prompt) tokens reported in the usage of complete successful replies.
    pub input_tokens: u64,
    /// Output (completion) tokens reported in the usage of complete successful replies.
    pub output_tokens: u64,
    /// Peak number of concurrent requests.
    pub max_in_flight: u64,
    /// Injected faults by kind: a status code (`"429"`, `"500"`, `"401"`, ...) for
    /// error answers, `"limit_429"` for server-side limits, and `"hang"`, `"delay"`,
    /// `"malformed"`, `"truncate"`, `"reply"`.
    pub injected: BTreeMap<String, u64>,
}

/// One request kept by the mock when `record_requests` is set.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    /// The route name, as in [`Stats::by_route`].
    pub route: String,
    /// Request headers, names lower-cased; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or `null` when the body was not JSON.
    pub body: serde_json::Value,
}

/// The routes counted in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    ChatCompletions,
    Messages,
    Embeddings,
    Models,
}

impl Route {
    const ALL: [Self; 4] = [
        Self::ChatCompletions,
        Self::Messages,
        Self::Embeddings,
        Self::Models,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Messages => "messages",
            Self::Embeddings => "embeddings",
            Self::Models => "models",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Injected fault kinds that are not a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    Hang,
    Delay,
    Malformed,
    Truncate,
    Limit429,
    Reply,
}

impl Injected {
    const ALL: [Self; 6] = [
        Self::Hang,
        Self::Delay,
        Self::Malformed,
        Self::Truncate,
        Self::Limit429,
        Self::Reply,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Hang => "hang",
            Self::Delay => "delay",
            Self::Malformed => "malformed",
            Self::Truncate => "truncate",
            Self::Limit429 => "limit_429",
            Self::Reply => "reply",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Status codes are 100..=999 in HTTP; one counter each.
const STATUS_SLOTS: usize = 1000;

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn bump(counters: &[AtomicU64], index: usize) {
    if let Some(counter) = counters.get(index) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The live counters behind [`Stats`]: atomics only, no lock.
#[derive(Debug)]
pub(crate) struct StatsCollector {
    requests: AtomicU64,
    by_route: Box<[AtomicU64]>,
    by_status: Box<[AtomicU64]>,
    streamed: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    injected_status: Box<[AtomicU64]>,
    injected_kind: Box<[AtomicU64]>,
}

impl Default for StatsCollector {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            by_route: counters(Route::ALL.len()),
            by_status: counters(STATUS_SLOTS),
            streamed: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            injected_status: counters(STATUS_SLOTS),
            injected_kind: counters(Injected::ALL.len()),
        }
    }
}

/// Decrements the in-flight gauge when the request is done (or dropped).
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StatsCollector {
    /// Counts a request to `route` and enters the in-flight gauge.
    pub(crate) fn begin(&self, route: Route) -> InFlight<'_> {
        if route != Route::Models {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        bump(&self.by_route, route.index());
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    pub(crate) fn status(&self, code: u16) {
        bump(&self.by_status, usize::from(code));
    }

    pub(crate) fn streamed(&self) {
        self.streamed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tokens(&self, input: u64, output: u64) {
        self.input_tokens.fetch_add(input, Ordering::Relaxed);
        self.output_tokens.fetch_add(output, Ordering::Relaxed);
    }

    pub(crate) fn injected_status(&self, code: u16) {
        bump(&self.injected_status, usize::from(code));
    }

    pub(crate) fn injected(&self, kind: Injected) {
        bump(&self.injected_kind, kind.index());
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let nonzero_codes = |counters: &[AtomicU64]| {
            counters
                .iter()
                .enumerate()
                .filter_map(|(code, counter)| {
                    let n = load(counter);
                    let code = u16::try_from(code).ok()?;
                    (n > 0).then_some((code, n))
                })
                .collect::<BTreeMap<u16, u64>>()
        };
        let by_route = Route::ALL
            .iter()
            .filter_map(|route| {
                let n = self.by_route.get(route.index()).map_or(0, load);
                (n > 0).then(|| (route.name().to_owned(), n))
            })
            .collect();
        let mut injected: BTreeMap<String, u64> = nonzero_codes(&self.injected_status)
            .into_iter()
            .map(|(code, n)| (code.to_string(), n))
            .collect();
        for kind in Injected::ALL {
            let n = self.injected_kind.get(kind.index()).map_or(0, load);
            if n > 0 {
                injected.insert(kind.name().to_owned(), n);
            }
        }
        Stats {
            requests: load(&self.requests),
            by_route,
            by_status: nonzero_codes(&self.by_status),
            streamed: load(&self.streamed),
            input_tokens: load(&self.input_tokens),
            output_tokens: load(&self.output_tokens),
            max_in_flight: load(&self.max_in_flight),
            injected,
        }
    }

    /// Zeroes every counter; the peak restarts from the requests now in flight.
    pub(crate) fn reset(&self) {
        let zero = |counter: &AtomicU64| counter.store(0, Ordering::Relaxed);
        zero(&self.requests);
        zero(&self.streamed);
        zero(&self.input_tokens);
        zero(&self.output_tokens);
        for counter in self
            .by_route
            .iter()
            .chain(self.by_status.iter())
            .chain(self.injected_status.iter())
            .chain(self.injected_kind.iter())
        {
            zero(counter);
        }
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The last N recorded requests.
#[derive(Debug)]
pub(crate) struct Recorder {
    capacity: usize,
    requests: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub(crate) fn new(capacity: usize) -> Option<Self> {
        (capacity > 0).then(|| Self {
            capacity,
            requests: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        })
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        let mut requests = self.requests.lock();
        while requests.len() >= self.capacity {
            requests.pop_front();
        }
        requests.push_back(request);
    }

    pub(crate) fn all(&self) -> Vec<RecordedRequest> {
        self.requests.lock().iter().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.requests.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_reset() {
        let stats = StatsCollector::default();
        assert_eq!(stats.snapshot(), Stats::default());
        {
            let _a = stats.begin(Route::ChatCompletions);
            let _b = stats.begin(Route::Models);
            stats.status(200);
            stats.status(429);
            stats.injected_status(429);
            stats.injected(Injected::Limit429);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.requests, 1);
        assert_eq!(snap.by_route.get("models"), Some(&1));
        assert_eq!(snap.by_status.get(&429), Some(&1));
        assert_eq!(snap.injected.get("429"), Some(&1));
        assert_eq!(snap.injected.get("limit_429"), Some(&1));
        assert_eq!(snap.max_in_flight, 2);
        stats.reset();
        assert_eq!(stats.snapshot(), Stats::default());
    }

    #[test]
    fn stats_json_round_trip() {
        let mut stats = Stats::default();
        stats.by_status.insert(200, 3);
        let json = serde_json::to_string(&stats).unwrap();
        let back: Stats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stats);
    }
}
