//! Every call records a span with the OpenTelemetry GenAI attribute names and
//! metrics with a Prometheus rendering. (Its own test binary: the metrics
//! recorder is process-global.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, Message, ProviderConfig, RequestOptions};
use dspex_mock::{Fault, MockConfig, MockServer};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

type Spans = Arc<Mutex<BTreeMap<u64, (String, BTreeMap<String, String>)>>>;

/// Keeps every span's name and fields.
struct SpanFields(Spans);

struct Collect<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Collect(&mut fields));
        self.0
            .lock()
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }
}

fn provider(base_url: &str) -> ProviderConfig {
    ProviderConfig::validate(
        "oa",
        &RawProvider {
            kind: Some("openai".into()),
            base_url: Some(base_url.into()),
            model: Some("gpt-4o-mini".into()),
            max_retries: Some(0),
            ..RawProvider::default()
        },
        None,
        &|_| None,
    )
    .unwrap()
}

#[tokio::test]
async fn spans_carry_gen_ai_attributes_and_metrics_render_as_prometheus() {
    let metrics = dspex_core::telemetry::install_prometheus().unwrap();
    let spans: Spans = Arc::default();
    let subscriber = tracing_subscriber::registry().with(SpanFields(Arc::clone(&spans)));
    let _guard = tracing::subscriber::set_default(subscriber);

    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider(&upstream.base_url()))
        .await
        .unwrap();
    let response = client
        .request(
            "oa",
            vec![Message::user("measure me")],
            RequestOptions::new()
                .max_tokens(50)
                .temperature(0.0)
                .correlation_id("trace-1".into()),
        )
        .await
        .unwrap();
    upstream.enqueue([Fault::server_error()]);
    client
        .request("oa", vec![Message::user("fail")], RequestOptions::new())
        .await
        .unwrap_err();

    let spans = spans.lock();
    let calls: Vec<&BTreeMap<String, String>> = spans
        .values()
        .filter(|(name, _)| name == "gen_ai.client")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(calls.len(), 2);
    let ok = calls
        .iter()
        .find(|f| f.get("dspex.correlation_id").map(String::as_str) == Some("trace-1"))
        .unwrap();
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.system", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.request.max_tokens", "50"),
        ("gen_ai.request.temperature", "0.0"),
        ("gen_ai.response.model", "gpt-4o-mini"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("server.address", "127.0.0.1"),
        ("otel.name", "chat gpt-4o-mini"),
        ("dspex.provider", "oa"),
        ("dspex.attempts", "1"),
    ] {
        assert_eq!(
            ok.get(key).map(String::as_str),
            Some(value),
            "{key} in {ok:?}"
        );
    }
    assert_eq!(
        ok["gen_ai.usage.input_tokens"],
        response.usage.input_tokens.to_string()
    );
    assert_eq!(
        ok["gen_ai.usage.output_tokens"],
        response.usage.output_tokens.to_string()
    );
    let failed = calls
        .iter()
        .find(|f| f.get("dspex.correlation_id").map(String::as_str) != Some("trace-1"))
        .unwrap();
    assert_eq!(
        failed.get("error.type").map(String::as_str),
        Some("server_error")
    );

    let text = metrics.render();
    assert!(
        text.contains("gen_ai_client_operation_duration_bucket"),
        "{text}"
    );
    assert!(text.contains("gen_ai_client_token_usage_bucket"), "{text}");
    assert!(text.contains(r#"gen_ai_token_type="input""#), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("dspex_requests_total")
            && l.contains(r#"outcome="success""#)
            && l.contains(r#"provider="oa""#)
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("dspex_requests_total") && l.contains(r#"outcome="failed""#)),
        "{text}"
    );
}
