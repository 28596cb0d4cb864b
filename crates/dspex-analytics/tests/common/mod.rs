#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    dead_code,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dspex_analytics::time::{from_unix_ms, parse_time, unix_ms};
use dspex_analytics::{CallRecord, PriceTable};
use dspex_client::events::{CacheServed, CallInfo, Completion, Operation, Outcome};
use dspex_client::{Event, EventKind, Usage};
use dspex_core::CorrelationId;

pub fn usage(input: u64, output: u64, cached: u64, write: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
        cache_write_tokens: write,
    }
}

pub fn call(provider: &str, model: &str, tags: &[(&str, &str)]) -> CallInfo {
    CallInfo {
        provider: Arc::from(provider),
        system: "openai",
        model: Arc::from(model),
        operation: Operation::Chat,
        estimated_input_tokens: None,
        tags: Arc::new(
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[derive(Clone)]
pub struct Spec {
    pub provider: &'static str,
    pub model: &'static str,
    pub usage: Usage,
    pub outcome: Outcome,
    pub latency: Duration,
    pub tags: Vec<(&'static str, &'static str)>,
    pub cache: Option<CacheServed>,
}

impl Spec {
    pub fn new(provider: &'static str, model: &'static str, usage: Usage) -> Self {
        Self {
            provider,
            model,
            usage,
            outcome: Outcome::Success,
            latency: Duration::from_millis(100),
            tags: Vec::new(),
            cache: None,
        }
    }

    pub fn latency_ms(mut self, ms: u64) -> Self {
        self.latency = Duration::from_millis(ms);
        self
    }

    pub fn failed(mut self, kind: &'static str, status: Option<u16>) -> Self {
        self.outcome = Outcome::Failed {
            error_kind: kind,
            http_status: status,
        };
        self
    }

    pub fn tag(mut self, key: &'static str, value: &'static str) -> Self {
        self.tags.push((key, value));
        self
    }

    pub fn cached(mut self, tier: &'static str, saved: Usage) -> Self {
        self.cache = Some(CacheServed {
            tier,
            similarity: None,
            saved,
        });
        self.usage = Usage::default();
        self
    }

    pub fn completion(&self) -> Completion {
        Completion {
            call_id: uuid::Uuid::now_v7(),
            call: call(self.provider, self.model, &self.tags),
            response_model: Some(self.model.to_owned()),
            outcome: self.outcome.clone(),
            usage: self.usage,
            latency: self.latency,
            attempts: 1,
            finish_reason: None,
            request_id: None,
            cache: self.cache.clone().map(Box::new),
        }
    }

    pub fn event(&self, at: SystemTime, correlation_id: &str) -> Event {
        Event {
            at,
            correlation_id: Some(CorrelationId::from(correlation_id)),
            kind: EventKind::RequestCompleted(self.completion()),
        }
    }

    pub fn record(&self, at: &str, prices: &PriceTable) -> CallRecord {
        self.record_ms(unix_ms(parse_time(at).unwrap()), prices)
    }

    pub fn record_ms(&self, at_ms: i64, prices: &PriceTable) -> CallRecord {
        CallRecord::from_completion(at_ms, Some("run-1".to_owned()), &self.completion(), prices)
    }
}

pub fn at(text: &str) -> SystemTime {
    parse_time(text).unwrap()
}

pub fn ms(text: &str) -> i64 {
    unix_ms(at(text))
}

pub fn time(ms: i64) -> SystemTime {
    from_unix_ms(ms)
}

pub fn prices() -> PriceTable {
    PriceTable::bundled().unwrap()
}

/// A day of traffic, 2026-11-24 (UTC):
/// - 10:xx: 4 × openai/gpt-4o-mini (team=search), 1,000 in / 100 out, latencies 100..400 ms
/// - 11:xx: 2 × anthropic/claude-sonnet-4-20250514 (team=ads), 1,000 in (400 cached) / 100 out, one failed
/// - 11:xx: 1 × local/my-finetune (unpriced), 500 in / 50 out
/// - 12:xx: 1 × openai/gpt-4o-mini served from the l1 cache (saved 1,000 in / 100 out)
/// - 2026-11-25 09:00: 1 × openai/gpt-4o-mini, 2,000 in / 0 out
pub fn traffic() -> Vec<CallRecord> {
    let p = prices();
    let mini = Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0)).tag("team", "search");
    let sonnet = Spec::new(
        "anthropic",
        "claude-sonnet-4-20250514",
        usage(1_000, 100, 400, 0),
    )
    .tag("team", "ads")
    .tag("workflow", "qa")
    .tag("step", "answer");
    let mut rows = vec![
        mini.clone()
            .latency_ms(100)
            .record("2026-11-24T10:00:00Z", &p),
        mini.clone()
            .latency_ms(200)
            .record("2026-11-24T10:15:00Z", &p),
        mini.clone()
            .latency_ms(300)
            .record("2026-11-24T10:30:00Z", &p),
        mini.latency_ms(400).record("2026-11-24T10:59:59Z", &p),
        sonnet
            .clone()
            .latency_ms(1000)
            .record("2026-11-24T11:00:00Z", &p),
        sonnet
            .latency_ms(50)
            .failed("server_error", Some(500))
            .record("2026-11-24T11:10:00Z", &p),
        Spec::new("local", "my-finetune", usage(500, 50, 0, 0))
            .latency_ms(20)
            .record("2026-11-24T11:20:00Z", &p),
        Spec::new("openai", "gpt-4o-mini", usage(0, 0, 0, 0))
            .cached("l1", usage(1_000, 100, 0, 0))
            .latency_ms(1)
            .record("2026-11-24T12:00:00Z", &p),
        Spec::new("openai", "gpt-4o-mini", usage(2_000, 0, 0, 0))
            .latency_ms(500)
            .record("2026-11-25T09:00:00Z", &p),
    ];
    // The failed call used no tokens.
    rows[5].usage = dspex_analytics::TokenUsage::default();
    rows[5].cost_nanos = Some(0);
    rows
}

// Costs by hand (nano-USD):
// gpt-4o-mini 1,000 in / 100 out: 1,000 × 150 + 100 × 600 (pico→ /1000) = 150,000 + 60,000 = 210,000
// sonnet 600 uncached + 400 cached in / 100 out: 600 × 3,000 + 400 × 300 + 100 × 15,000 = 1,800,000 + 120,000 + 1,500,000 = 3,420,000
// gpt-4o-mini 2,000 in: 300,000
pub const MINI: i64 = 210_000;
pub const SONNET: i64 = 3_420_000;
pub const MINI_2000: i64 = 300_000;

/// Writes `traffic()` twice (the second time with one new row among the
/// repeats, as a replayed journal would) and checks that every call is
/// stored, and counted in the rollups, once. `store` must answer from its
/// rollups (an exact limit of 0).
pub async fn rows_written_twice_are_stored_once(store: &dspex_analytics::Store) {
    use std::sync::Arc;
    let first = traffic();
    store.insert(Arc::new(first.clone())).await.unwrap();
    let mut again = first.clone();
    let mut fresh = first[0].clone();
    fresh.call_id = Some("fresh-call".to_owned());
    again.insert(3, fresh);
    store.insert(Arc::new(again)).await.unwrap();
    assert_eq!(store.count().await.unwrap(), first.len() as u64 + 1);
    let total = store
        .get_cost_analysis(dspex_analytics::TimeRange::All, &[])
        .await
        .unwrap();
    assert_eq!(
        total.iter().map(|r| r.requests).sum::<u64>(),
        first.len() as u64 + 1,
        "the rollups count each call once"
    );
}
