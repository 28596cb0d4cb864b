//! The demo on a real model in process: SmolLM2-135M-Instruct through
//! `kind = "local"`, with the response cache and the call recorder, as an
//! application would run it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dspex::analytics::{GroupBy, PriceTable, Recorder, RecorderOptions, Store, TimeRange};
use dspex::prompt::{CallSettings, Inputs};
use dspex::{
    ChainOfThought, Client, ClientConfig, Example, Lm, Message, Module, Predict, PromptError,
    ProviderConfig, RequestOptions, Signature, StreamEvent,
};
use futures::StreamExt;

use crate::common::{self, Failure};
use crate::demo::{DemoArgs, MULTI_HOP_QA, show};

/// Where `scripts/fetch-model smollm2` puts the model, under the checkout.
const DEFAULT_MODEL: &str = ".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The checkout this binary was built from (the demo runs from it with
/// `cargo run`; an installed binary uses `$DSPEX_MODEL`).
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model to run: `$DSPEX_MODEL`, else the fetched default, fetching it
/// when it is missing. The error says, in one line, why there is none.
pub(crate) fn find_model() -> Result<PathBuf, String> {
    if !cfg!(feature = "local-lm") {
        return Err("this dspex was built without the local-lm feature".into());
    }
    if let Some(path) = std::env::var_os("DSPEX_MODEL") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "$DSPEX_MODEL names {}, which does not exist",
                path.display()
            ))
        };
    }
    let default = checkout().join(DEFAULT_MODEL);
    if default.is_file() {
        return Ok(default);
    }
    let script = checkout().join("scripts/fetch-model");
    if !script.is_file() {
        return Err("no local model (set $DSPEX_MODEL to a GGUF file)".into());
    }
    common::err(
        "fetching the local model (SmolLM2-135M-Instruct, 98 MB) with scripts/fetch-model ...",
    );
    let fetched = std::process::Command::new(&script)
        .arg("smollm2")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run scripts/fetch-model: {e}"))?;
    let printed = String::from_utf8_lossy(&fetched.stdout).trim().to_owned();
    if fetched.status.success() && Path::new(&printed).is_file() {
        Ok(PathBuf::from(printed))
    } else {
        Err("the local model could not be fetched (is PyPI reachable?)".into())
    }
}

/// A labelled example, as a demo.
fn example(question: &str, outputs: &[(&str, &str)]) -> Example {
    let field = |(k, v): &(&str, &str)| ((*k).to_owned(), serde_json::Value::from(*v));
    Example {
        inputs: [("question", question)].iter().map(field).collect(),
        outputs: outputs.iter().map(field).collect(),
    }
}

/// Runs a program and prints its outputs; a reply the small model garbled is
/// shown as such rather than ending the demo.
async fn program(module: &dyn Module, question: &str) -> Result<(), Failure> {
    let inputs: Inputs = [("question".to_owned(), serde_json::Value::from(question))]
        .into_iter()
        .collect();
    match module.forward(&inputs).await {
        Ok(prediction) => {
            for (name, value) in &prediction.outputs {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                common::out(&format!("  {name}: {}", text.trim()));
            }
            common::out(&format!(
                "  ({} LM call(s), {} tokens, {:.0} ms)",
                prediction.trace.len(),
                prediction.usage.total_tokens(),
                prediction.latency.as_secs_f64() * 1_000.0
            ));
            Ok(())
        }
        Err(PromptError::Client(error)) => Err(Failure::from(error)),
        Err(error) => {
            common::out(&format!("  (the model's reply did not parse: {error})"));
            if let PromptError::Parse { reply, .. } = &error {
                common::out(&format!("  the reply was: {}", common::excerpt(reply, 300)));
            }
            Ok(())
        }
    }
}

pub(crate) async fn run(args: &DemoArgs, path: &Path) -> Result<(), Failure> {
    let started = Instant::now();
    let raw = dspex::config::RawProvider {
        kind: Some("local".into()),
        model_path: Some(path.display().to_string()),
        context_length: Some(4096),
        // Bounds a reply that never stops (small models ramble).
        default_max_tokens: Some(128),
        ..Default::default()
    };
    let config = ProviderConfig::validate("smollm2", &raw, None, &|_| None)?;
    let client = Client::from_config(&ClientConfig::default()).await?;
    client.add_provider(config).await?;
    let provider = "smollm2";
    common::out(&format!(
        "local model: {} loaded in {:.2} s (in process, no key, no server)",
        path.display(),
        started.elapsed().as_secs_f64()
    ));
    // A memory cache in front, and every call recorded, as `[cache]` and
    // `[analytics]` would set up.
    let cache = dspex::ResponseCache::builder()
        .l1(1_000, 16 << 20)
        .build()
        .await
        .map_err(|e| Failure::usage(anyhow::anyhow!("cache: {e}")))?;
    client.set_cache(cache)?;
    let store = Store::open(":memory:", None)
        .await
        .map_err(Failure::usage)?;
    let prices = Arc::new(PriceTable::bundled().map_err(Failure::usage)?);
    let recorder = Recorder::attach(
        client.events(),
        store.clone(),
        prices,
        RecorderOptions::default(),
    );

    // 1. A plain call.
    let mut greedy = RequestOptions::new().max_tokens(48);
    greedy.params.temperature = Some(0.0);
    let question = vec![
        Message::system("You are a helpful assistant. Answer in one sentence."),
        Message::user("What is the capital of France?"),
    ];
    let response = client
        .request(provider, question.clone(), greedy.clone())
        .await?;
    show(args, provider, &response)?;

    // 2. Programs: Predict, then ChainOfThought, each shown two labelled
    //    demos: a 135M model follows DSPy's field format from examples far
    //    better than from the instructions alone.
    let settings = CallSettings {
        temperature: Some(0.0),
        max_tokens: Some(96),
        ..CallSettings::default()
    };
    let lm = Lm::new(&client, provider);
    let signature = Signature::parse("question -> answer").map_err(Failure::usage)?;
    common::out("program: Predict(\"question -> answer\") with 2 demos");
    let predict = Predict::new(signature.clone(), lm.clone())
        .with_settings(settings.clone())
        .with_demos(vec![
            example("What is the capital of Italy?", &[("answer", "Rome")]),
            example(
                "Which ocean is the largest?",
                &[("answer", "The Pacific Ocean")],
            ),
        ]);
    program(&predict, "What is the largest planet in our solar system?").await?;
    common::out("program: ChainOfThought(\"question -> answer\") with 2 demos");
    let mut cot = ChainOfThought::new(signature, lm);
    let inner = cot.predict_mut();
    *inner = inner.clone().with_settings(settings).with_demos(vec![
        example(
            "Ann has 4 pens and gives away 1. How many pens does she have?",
            &[
                ("reasoning", "She had 4 and gave away 1, so 4 - 1 = 3."),
                ("answer", "3"),
            ],
        ),
        example(
            "A box holds 2 red and 5 blue balls. How many balls are in it?",
            &[
                (
                    "reasoning",
                    "There are 2 red and 5 blue balls, so 2 + 5 = 7.",
                ),
                ("answer", "7"),
            ],
        ),
    ]);
    program(
        &cot,
        "Tom has 3 apples and buys 2 more. How many apples does he have?",
    )
    .await?;

    // 3. A streamed reply, printed as it is generated.
    common::out("stream:");
    let mut stream = client
        .request_stream(
            provider,
            vec![Message::user("Name three colours of the rainbow.")],
            greedy.clone(),
        )
        .await?;
    let mut line = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(delta) => line.push_str(&delta.content),
            StreamEvent::Done(response) => common::out(&format!(
                "  {:?} ({} tokens)",
                line.trim(),
                response.usage.output_tokens
            )),
        }
    }

    // 4. The shipped workflow, on the local model.
    common::out("workflow: examples/multi_hop_qa.toml");
    let workflow = dspex::workflow::declarative::parse(
        MULTI_HOP_QA,
        "examples/multi_hop_qa.toml",
        Path::new("examples"),
        &client,
        Some(provider),
    )
    .map_err(Failure::usage)?;
    match crate::run_cmd::run_loaded(
        &workflow,
        &["question=Who painted the ceiling of the Sistine Chapel?".to_owned()],
        args.json,
    )
    .await
    {
        // A small model may garble a step's format: say which step, go on.
        Err(Failure::Workflow(error)) => common::out(&format!("  (the workflow stopped: {error})")),
        other => other?,
    }

    // 5. The first call again: the response cache answers.
    let repeat = client.request(provider, question, greedy).await?;
    common::out(&format!(
        "repeat: answered by the cache ({}) in {:.3} ms, {} tokens billed",
        repeat.cache.as_ref().map_or("none", |c| c.tier),
        repeat.latency.as_secs_f64() * 1_000.0,
        repeat.usage.total_tokens()
    ));
    if let Some(stats) = client.provider(provider)?.prefix_cache() {
        common::out(&format!(
            "prompt-prefix cache: {} of {} generations reused a prefix ({} prompt tokens not processed again)",
            stats.hits,
            stats.hits + stats.misses,
            stats.reused_tokens
        ));
    }

    // 6. What it cost: every call, recorded.
    recorder.shutdown().await.map_err(Failure::usage)?;
    let rows = store
        .get_cost_analysis(
            TimeRange::parse("1h").map_err(Failure::usage)?,
            &[GroupBy::Provider, GroupBy::Model],
        )
        .await
        .map_err(Failure::usage)?;
    common::out("costs (local calls cost nothing; the tokens are real):");
    common::out(&dspex::analytics::report::render_table(
        &rows,
        &[GroupBy::Provider, GroupBy::Model],
    ));
    Ok(())
}
