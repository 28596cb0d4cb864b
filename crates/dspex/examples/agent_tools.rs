//! A ReAct agent with two typed tools.
//!
//! ```text
//! cargo run -p dspex --example agent_tools                 # against the mock, no key
//! OPENAI_API_KEY=sk-... cargo run -p dspex --example agent_tools -- openai
//! ```
//!
//! Each tool is a plain async Rust function: its arguments are a
//! `Deserialize` struct whose JSON Schema `schemars` derives (doc comments
//! become descriptions), its result anything `Serialize`. A tool's error (or
//! panic, or timeout) is shown to the model as the observation; it never
//! crashes the program. Without an argument the example scripts the mock
//! upstream to play the model, so it runs offline: step 1 calls both tools
//! at once (they run concurrently), step 2 calls `finish` with the answer.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints its results

use std::time::Duration;

use dspex::mock::{MockConfig, MockServer, Script, ScriptRule, ScriptToolCall};
use dspex::{Client, ClientConfig, Lm, Module, ProviderConfig, ReAct, Signature, Tool};
use serde_json::json;

/// The arguments of `get_weather`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct WeatherArgs {
    /// The city, such as "Paris".
    city: String,
}

/// The arguments of `convert_temperature`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct ConvertArgs {
    /// Degrees Celsius.
    celsius: f64,
}

/// A stand-in for a weather API.
async fn get_weather(args: WeatherArgs) -> Result<serde_json::Value, String> {
    match args.city.as_str() {
        "Paris" => Ok(json!({"city": "Paris", "celsius": 21.0, "sky": "clear"})),
        other => Err(format!("no weather station in {other}")),
    }
}

async fn convert_temperature(args: ConvertArgs) -> Result<f64, String> {
    Ok(args.celsius * 9.0 / 5.0 + 32.0)
}

/// The mock playing the model: each rule answers one step of the episode.
fn scripted_model() -> Script {
    Script::default()
        .with_rule(
            ScriptRule::tool_calls(
                "weather in Paris",
                [
                    ScriptToolCall::new("get_weather", json!({"city": "Paris"})),
                    ScriptToolCall::new("convert_temperature", json!({"celsius": 21.0})),
                ],
            )
            .with_reply("I need the weather, and the temperature in Fahrenheit.")
            .last_turn(),
        )
        .with_rule(
            ScriptRule::tool_calls(
                "69.8",
                [ScriptToolCall::new(
                    "finish",
                    json!({"answer": "Clear and 21 °C (69.8 °F) in Paris."}),
                )],
            )
            .last_turn(),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::from_config(&ClientConfig::default()).await?;
    let mut mock = None;
    let provider = match std::env::args().nth(1).as_deref() {
        Some("openai") => {
            let raw = dspex::config::RawProvider {
                kind: Some("openai".into()),
                api_key_env: Some("OPENAI_API_KEY".into()),
                model: Some("gpt-4o-mini".into()),
                ..Default::default()
            };
            let env = |name: &str| std::env::var(name).ok();
            client
                .add_provider(ProviderConfig::validate("openai", &raw, None, &env)?)
                .await?;
            "openai"
        }
        _ => {
            let server =
                MockServer::start(MockConfig::default().with_script(scripted_model())).await?;
            client
                .add_provider(ProviderConfig::openai_compatible(
                    "mock",
                    &server.base_url(),
                    "gpt-4o-mini",
                )?)
                .await?;
            mock = Some(server);
            "mock"
        }
    };

    let tools = vec![
        Tool::typed("get_weather", "The current weather in a city.", get_weather)?,
        Tool::typed(
            "convert_temperature",
            "Converts degrees Celsius to Fahrenheit.",
            convert_temperature,
        )?
        .with_timeout(Duration::from_secs(5)),
    ];
    let agent = ReAct::new(
        Signature::parse("question -> answer")?,
        tools,
        Lm::new(&client, provider),
    )?
    .max_iters(5);

    let question = json!({"question": "What is the weather in Paris, in Fahrenheit?"});
    let prediction = agent
        .forward(question.as_object().ok_or("an object")?)
        .await?;
    if let Some(trajectory) = &prediction.trajectory {
        for (i, step) in trajectory.steps.iter().enumerate() {
            println!("step {i}: {}", step.thought);
            for call in &step.calls {
                println!(
                    "  {}({}) -> {}",
                    call.tool, call.arguments, call.observation
                );
            }
        }
    }
    println!("answer: {}", prediction.text("answer").unwrap_or_default());
    println!(
        "{} LM calls, {} tokens",
        prediction.trace.len(),
        prediction.usage.total_tokens()
    );
    if let Some(server) = mock {
        server.shutdown().await;
    }
    Ok(())
}
