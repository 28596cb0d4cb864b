//! `dspex demo`: the main job on embedded defaults, with no key and no config
//! file.
//!
//! On a real model when it can: SmolLM2-135M-Instruct, run in process
//! (`kind = "local"`), from `$DSPEX_MODEL` or `.models/` (fetched with
//! `scripts/fetch-model` when missing and the registry is reachable). It
//! answers a `Predict` and a `ChainOfThought` program, streams a reply, runs
//! the example workflow, answers a repeat from the response cache and prints
//! the costs table of its calls (local calls cost nothing; the tokens are
//! real).
//!
//! Otherwise (or with `--mock`) on the mock upstream, started in process:
//! calls through the full client stack (circuit breaker, rate limits, pool,
//! retries, timeouts), a ChainOfThought program the way `dspex predict --cot`
//! runs one, and the workflow.

use std::collections::BTreeMap;

use dspex::core::events::Delivery;
use dspex::mock::{Fault, MockConfig, MockServer};
use dspex::{
    Client, ClientConfig, EventKind, Message, ProviderConfig, RequestOptions, StreamEvent,
};
use futures::StreamExt;

use crate::common::{self, Failure};

/// The example workflow, compiled in so the demo runs from any directory.
pub(crate) const MULTI_HOP_QA: &str = include_str!("../../../examples/multi_hop_qa.toml");

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Print each response as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Use the mock upstream even when a local model is available.
    #[arg(long)]
    mock: bool,
}

fn provider(id: &str, kind: &str, base_url: &str, model: &str) -> Result<ProviderConfig, Failure> {
    let raw = dspex::config::RawProvider {
        kind: Some(kind.to_owned()),
        base_url: Some(base_url.to_owned()),
        model: Some(model.to_owned()),
        rpm: Some(600),
        tpm: Some(100_000),
        max_retries: Some(3),
        retry_base_ms: Some(50),
        ..Default::default()
    };
    Ok(ProviderConfig::validate(id, &raw, None, &|_| None)?)
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    if !args.mock {
        match crate::demo_local::find_model() {
            Ok(path) => return crate::demo_local::run(&args, &path).await,
            Err(reason) => common::out(&format!(
                "note: {reason}; running the demo on the mock upstream instead"
            )),
        }
    }
    run_mock(&args).await
}

/// The demo on the mock upstream.
async fn run_mock(args: &DemoArgs) -> Result<(), Failure> {
    let upstream = MockServer::start(MockConfig::default())
        .await
        .map_err(|e| Failure::usage(anyhow::anyhow!("cannot start the mock upstream: {e}")))?;
    common::out(&format!("mock upstream on {}", upstream.base_url()));
    let client = Client::from_config(&ClientConfig::default()).await?;
    client
        .add_provider(provider(
            "openai-mock",
            "openai",
            &upstream.base_url(),
            "gpt-4o-mini",
        )?)
        .await?;
    client
        .add_provider(provider(
            "anthropic-mock",
            "anthropic",
            &upstream.anthropic_base_url(),
            "claude-3-5-haiku-latest",
        )?)
        .await?;
    let mut events = client.events().subscribe("demo", Delivery::Lossless);

    // 1. A plain call through the whole stack.
    let question = "What is DSPex?";
    let response = client
        .request(
            "openai-mock",
            vec![Message::system("You are concise."), Message::user(question)],
            RequestOptions::new().max_tokens(64).tag("demo", "plain"),
        )
        .await?;
    show(args, "openai-mock", &response)?;

    // 2. The upstream fails once with a 503; the retry layer recovers.
    upstream.enqueue([Fault::Status {
        code: 503,
        retry_after_secs: None,
        message: "upstream briefly unavailable".into(),
    }]);
    let response = client
        .request(
            "openai-mock",
            vec![Message::user("Retry me")],
            RequestOptions::new(),
        )
        .await?;
    show(args, "openai-mock after a 503", &response)?;

    // 3. Anthropic's Messages API, streamed.
    let mut stream = client
        .request_stream(
            "anthropic-mock",
            vec![Message::user("Stream a reply")],
            RequestOptions::new(),
        )
        .await?;
    let mut deltas = 0;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(_) => deltas += 1,
            StreamEvent::Done(response) => {
                common::out(&format!("streamed in {deltas} deltas:"));
                show(args, "anthropic-mock (stream)", &response)?;
            }
        }
    }

    // 4. A real program: ChainOfThought over a typed signature, through the
    //    same stack (the mock answers DSPy-formatted prompts field by field).
    common::out("program: ChainOfThought(\"question -> answer\")");
    crate::predict::run_with(
        &client,
        "openai-mock",
        crate::predict::PredictArgs {
            module: crate::predict::ModuleArgs {
                provider: None,
                model: None,
                cot: true,
                adapter: "chat".into(),
                instructions: None,
            },
            json: args.json,
            stream: false,
            interactive: false,
            signature: "question -> answer".into(),
            inputs: vec![format!("question={question}")],
        },
    )
    .await?;

    // The shipped example workflow, run against the mock as a user would run
    // it with `dspex run examples/multi_hop_qa.toml`.
    common::out("workflow: examples/multi_hop_qa.toml");
    let workflow = dspex::workflow::declarative::parse(
        MULTI_HOP_QA,
        "examples/multi_hop_qa.toml",
        std::path::Path::new("examples"),
        &client,
        Some("openai-mock"),
    )
    .map_err(Failure::usage)?;
    crate::run_cmd::run_loaded(
        &workflow,
        &["question=Who painted the ceiling of the chapel where popes are elected?".to_owned()],
        args.json,
    )
    .await?;

    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    while let Some(event) = events.try_recv() {
        let name = match &event.kind {
            EventKind::RequestStarted(_) => "request_started",
            EventKind::RequestCompleted(_) => "request_completed",
            EventKind::RateLimited(_) => "rate_limited",
            EventKind::Retrying(_) => "retrying",
            EventKind::CircuitChanged(_) => "circuit_changed",
            _ => "other",
        };
        *counts.entry(name).or_default() += 1;
    }
    let stats = upstream.stats();
    common::out(&format!(
        "events: {}",
        counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    common::out(&format!(
        "upstream saw {} requests ({} streamed), {} input and {} output tokens",
        stats.requests, stats.streamed, stats.input_tokens, stats.output_tokens
    ));
    upstream.shutdown().await;
    Ok(())
}

pub(crate) fn show(
    args: &DemoArgs,
    label: &str,
    response: &dspex::ChatResponse,
) -> Result<(), Failure> {
    if args.json {
        common::out(&serde_json::to_string_pretty(response).map_err(Failure::usage)?);
    } else {
        common::out(&format!(
            "[{label}] {:?} — {} in / {} out tokens, {:.2} ms, {} attempt(s), correlation id {}",
            response.text(),
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.latency.as_secs_f64() * 1_000.0,
            response.attempts,
            response.correlation_id
        ));
    }
    Ok(())
}
