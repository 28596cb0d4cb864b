//! Usage telemetry of each call: one tracing span with the OpenTelemetry GenAI
//! attribute names, metrics, and exactly one completion event.
//!
//! Span fields: `gen_ai.operation.name`, `gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.request.max_tokens`, `gen_ai.request.temperature`,
//! `gen_ai.request.top_p`, `gen_ai.response.model`, `gen_ai.response.id`,
//! `gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `server.address`, `error.type`, plus
//! `dspex.provider`, `dspex.correlation_id` and `dspex.attempts`.
//!
//! Metrics (Prometheus names after the dots become underscores):
//! `gen_ai.client.operation.duration` (seconds) and `gen_ai.client.token.usage`
//! (by `gen_ai.token.type` = input or output) as histograms, and
//! `dspex_requests_total` by provider, model and outcome.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use dspex_core::CorrelationId;
use parking_lot::RwLock;
use tokio::time::Instant;
use tracing::Span;
use tracing::field::Empty;

use crate::call::Call;
use crate::events::{CacheServed, CallInfo, Completion, Event, EventBus, EventKind, Outcome};
use crate::guard::CallGuard;
use crate::journal::{CompletionJournal, JournalTicket};
use crate::types::{ChatParams, FinishReason, Usage};

/// How a call ended, for [`Recorder::finish`].
pub(crate) struct Ending {
    pub(crate) outcome: Outcome,
    pub(crate) usage: Usage,
    pub(crate) finish_reason: Option<FinishReason>,
    pub(crate) response_model: Option<String>,
    pub(crate) response_id: Option<String>,
    pub(crate) request_id: Option<String>,
    /// Set when a cache tier answered.
    pub(crate) cache: Option<Box<CacheServed>>,
}

impl Ending {
    pub(crate) fn failed(error: &crate::ClientError) -> Self {
        Self {
            outcome: Outcome::Failed {
                error_kind: error.kind().as_str(),
                http_status: error.status(),
            },
            usage: Usage::default(),
            finish_reason: None,
            response_model: None,
            response_id: None,
            request_id: error.request_id().map(str::to_owned),
            cache: None,
        }
    }
}

/// Records one call from start to end. Dropping it before [`Recorder::finish`]
/// (the caller abandoned the call) records a cancellation, so every call gets
/// exactly one completion event.
pub(crate) struct Recorder {
    events: EventBus,
    metrics: Arc<CallMetrics>,
    info: CallInfo,
    correlation_id: CorrelationId,
    call: Option<Call>,
    started: Instant,
    span: Span,
    finished: bool,
    /// The guard that admitted the call, settled when it ends.
    guard: Option<Arc<dyn CallGuard>>,
    /// Where the completion is made durable, when the client has a journal.
    journal: Option<Arc<dyn CompletionJournal>>,
    /// The journal's answer for this call's completion.
    durable: Option<JournalTicket>,
}

impl Recorder {
    pub(crate) fn start(
        events: &EventBus,
        metrics: &Arc<CallMetrics>,
        host: &str,
        info: CallInfo,
        correlation_id: CorrelationId,
        params: Option<&ChatParams>,
    ) -> Self {
        let span = tracing::info_span!(
            "gen_ai.client",
            otel.name = Empty,
            otel.kind = "client",
            gen_ai.operation.name = info.operation.otel_name(),
            gen_ai.system = info.system,
            gen_ai.request.model = &*info.model,
            gen_ai.request.max_tokens = Empty,
            gen_ai.request.temperature = Empty,
            gen_ai.request.top_p = Empty,
            gen_ai.response.model = Empty,
            gen_ai.response.id = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            server.address = host,
            "error.type" = Empty,
            dspex.provider = &*info.provider,
            dspex.correlation_id = correlation_id.as_str(),
            dspex.attempts = Empty,
        );
        if !span.is_disabled() {
            span.record(
                "otel.name",
                format!("{} {}", info.operation.otel_name(), info.model),
            );
            if let Some(params) = params {
                if let Some(v) = params.max_tokens {
                    span.record("gen_ai.request.max_tokens", v);
                }
                if let Some(v) = params.temperature {
                    span.record("gen_ai.request.temperature", f64::from(v));
                }
                if let Some(v) = params.top_p {
                    span.record("gen_ai.request.top_p", f64::from(v));
                }
            }
        }
        if events.has_subscribers() {
            events.publish(Event::now(
                Some(correlation_id.clone()),
                EventKind::RequestStarted(info.clone()),
            ));
        }
        Self {
            events: events.clone(),
            metrics: Arc::clone(metrics),
            info,
            correlation_id,
            call: None,
            started: Instant::now(),
            span,
            finished: false,
            guard: None,
            journal: None,
            durable: None,
        }
    }

    pub(crate) fn info(&self) -> &CallInfo {
        &self.info
    }

    /// Appends the call's completion to `journal` when it ends.
    pub(crate) fn journal_to(&mut self, journal: Option<&Arc<dyn CompletionJournal>>) {
        self.journal = journal.map(Arc::clone);
    }

    /// Settles the call with `guard` when it ends.
    pub(crate) fn settle_with(&mut self, guard: Arc<dyn CallGuard>) {
        self.guard = Some(guard);
    }

    /// Attaches the call, so a cancellation can report its attempts.
    pub(crate) fn attach(&mut self, call: Call) {
        self.call = Some(call);
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Measures the call's latency from `start` instead of from
    /// [`Recorder::start`]: for a call refused before it was sent, whose
    /// latency is the refusal's own time.
    pub(crate) fn time_from(&mut self, start: Instant) {
        self.started = start;
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.call.as_ref().map_or(0, Call::attempts)
    }

    /// Records the end. A journal's append is not awaited: for calls that
    /// end before anything was sent (nothing was paid for).
    pub(crate) fn finish(mut self, ending: Ending) {
        self.record(ending);
    }

    /// Records the end; the ticket resolves once the completion is durable
    /// (at once without a journal). The client awaits it before answering
    /// the caller of a call that reached its provider.
    pub(crate) fn finish_durably(mut self, ending: Ending) -> JournalTicket {
        self.record(ending);
        self.durable.take().unwrap_or_else(JournalTicket::ready)
    }

    fn record(&mut self, ending: Ending) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let latency = self.started.elapsed();
        let attempts = self.attempts();
        let span = &self.span;
        if !span.is_disabled() {
            span.record("gen_ai.usage.input_tokens", ending.usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", ending.usage.output_tokens);
            span.record("dspex.attempts", attempts);
            if let Some(model) = &ending.response_model {
                span.record("gen_ai.response.model", model.as_str());
            }
            if let Some(id) = &ending.response_id {
                span.record("gen_ai.response.id", id.as_str());
            }
            if let Some(reason) = &ending.finish_reason {
                span.record("gen_ai.response.finish_reasons", reason.as_str());
            }
            match &ending.outcome {
                Outcome::Success => {}
                Outcome::Failed { error_kind, .. } => {
                    span.record("error.type", *error_kind);
                }
                Outcome::Cancelled => {
                    span.record("error.type", "cancelled");
                }
            }
        }
        let error_type = match &ending.outcome {
            Outcome::Success => "",
            Outcome::Failed { error_kind, .. } => *error_kind,
            Outcome::Cancelled => "cancelled",
        };
        let handles = self
            .metrics
            .handles(&self.info, error_type, ending.outcome.as_str());
        handles.duration.record(latency.as_secs_f64());
        if ending.usage.total_tokens() > 0 {
            handles
                .input_tokens
                .record(ending.usage.input_tokens as f64);
            handles
                .output_tokens
                .record(ending.usage.output_tokens as f64);
        }
        handles.requests.increment(1);
        log_completion(&self.info, &self.correlation_id, &ending, latency);
        if let Some(guard) = &self.guard {
            guard.settle(&self.info, &self.correlation_id, &ending.usage);
        }
        let subscribed = self.events.has_subscribers();
        if !subscribed && self.journal.is_none() {
            return;
        }
        let event = Event::now(
            Some(self.correlation_id.clone()),
            EventKind::RequestCompleted(Completion {
                call_id: uuid::Uuid::now_v7(),
                call: self.info.clone(),
                response_model: ending.response_model,
                outcome: ending.outcome,
                usage: ending.usage,
                latency,
                attempts,
                finish_reason: ending.finish_reason,
                request_id: ending.request_id,
                cache: ending.cache,
            }),
        );
        match &self.journal {
            None => self.events.publish(event),
            Some(journal) => {
                // Published before it is journaled: a journal checkpoint
                // relies on every journaled call's event being on the bus
                // already (dspex-analytics' `wal` module).
                if subscribed {
                    self.events.publish(event.clone());
                }
                self.durable = Some(journal.append(&event));
            }
        }
    }
}

/// One concise line per call at `info`: what a person watching `--log info`
/// wants to know about it. A root event (no parent span), so the span's
/// many GenAI fields are not repeated on the line; the span (and its
/// timings) is there at `debug`. Nothing here is secret: no key, no URL,
/// no message text.
fn log_completion(
    info: &CallInfo,
    correlation_id: &CorrelationId,
    ending: &Ending,
    latency: Duration,
) {
    if !tracing::enabled!(target: "dspex::call", tracing::Level::INFO) {
        return;
    }
    let status = match &ending.outcome {
        Outcome::Success => "ok".to_owned(),
        Outcome::Failed {
            error_kind,
            http_status: Some(code),
        } => format!("{error_kind} (HTTP {code})"),
        Outcome::Failed { error_kind, .. } => (*error_kind).to_owned(),
        Outcome::Cancelled => "cancelled".to_owned(),
    };
    let cache = ending.cache.as_ref().map_or("none", |c| c.tier);
    tracing::info!(
        target: "dspex::call",
        parent: None,
        provider = %info.provider,
        model = %info.model,
        operation = %info.operation.otel_name(),
        status = %status,
        input_tokens = ending.usage.input_tokens,
        output_tokens = ending.usage.output_tokens,
        latency_ms = (latency.as_secs_f64() * 1e4).round() / 10.0,
        cache = %cache,
        correlation_id = %correlation_id,
        "call"
    );
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Ending {
                outcome: Outcome::Cancelled,
                usage: Usage::default(),
                finish_reason: None,
                response_model: None,
                response_id: None,
                request_id: None,
                cache: None,
            });
        }
    }
}

/// Provider, model, operation, error type and outcome.
type HandleKey = (Arc<str>, Arc<str>, &'static str, &'static str, &'static str);

/// The metric handles of one (model, outcome) pair.
pub(crate) struct Handles {
    duration: metrics::Histogram,
    input_tokens: metrics::Histogram,
    output_tokens: metrics::Histogram,
    requests: metrics::Counter,
}

/// Metric handles by model and outcome, registered once and reused: building
/// labels allocates, and a call should not pay for that each time.
///
/// Handles bind to the metrics recorder installed when they are first used, so
/// install a recorder (for example with
/// [`install_prometheus`](dspex_core::telemetry::install_prometheus)) before
/// the first call.
#[derive(Default)]
pub(crate) struct CallMetrics {
    // foldhash rather than SipHash: the key is hashed on every call, and the
    // keys come from configuration, not from an attacker.
    handles: RwLock<HashMap<HandleKey, Arc<Handles>, foldhash::fast::RandomState>>,
}

impl CallMetrics {
    fn handles(
        &self,
        info: &CallInfo,
        error_type: &'static str,
        outcome: &'static str,
    ) -> Arc<Handles> {
        let key = (
            Arc::clone(&info.provider),
            Arc::clone(&info.model),
            info.operation.otel_name(),
            error_type,
            outcome,
        );
        if let Some(handles) = self.handles.read().get(&key) {
            return Arc::clone(handles);
        }
        let system = info.system;
        let operation = info.operation.otel_name();
        let model = info.model.to_string();
        let token = |kind: &'static str| {
            metrics::histogram!(
                "gen_ai.client.token.usage",
                "gen_ai.system" => system,
                "gen_ai.operation.name" => operation,
                "gen_ai.request.model" => model.clone(),
                "gen_ai.token.type" => kind,
            )
        };
        let handles = Arc::new(Handles {
            duration: metrics::histogram!(
                "gen_ai.client.operation.duration",
                "gen_ai.system" => system,
                "gen_ai.operation.name" => operation,
                "gen_ai.request.model" => model.clone(),
                "error.type" => error_type,
            ),
            input_tokens: token("input"),
            output_tokens: token("output"),
            requests: metrics::counter!(
                "dspex_requests_total",
                "provider" => info.provider.to_string(),
                "model" => model.clone(),
                "outcome" => outcome,
            ),
        });
        self.handles.write().insert(key, Arc::clone(&handles));
        handles
    }
}
