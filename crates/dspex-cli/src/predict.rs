//! `dspex predict`: run Predict (or ChainOfThought) once.

use std::path::Path;

use dspex::prompt::{CallSettings, Inputs, RunContext};
use dspex::{Adapter, ChainOfThought, Lm, Module, Predict, Signature};
use serde_json::Value;

use crate::common::{self, Failure};
use crate::eval_cmd::AnyProgram;

/// How to build one predictor: the flags `predict`, `eval` and `optimize`
/// share.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ModuleArgs {
    /// The provider id (default: the config's default provider).
    #[arg(long)]
    pub(crate) provider: Option<String>,
    /// The model (default: the provider's, or a saved program's).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Chain of thought: add a `reasoning` output before the others.
    #[arg(long)]
    pub(crate) cot: bool,
    /// The adapter: `chat` (DSPy's format) or `json` (a saved program keeps its own).
    #[arg(long, default_value = "chat", value_parser = ["chat", "json"])]
    pub(crate) adapter: String,
    /// Instructions for the model.
    #[arg(long)]
    pub(crate) instructions: Option<String>,
}

impl ModuleArgs {
    /// Parses `text` and applies `--instructions`.
    pub(crate) fn signature(&self, text: &str) -> Result<Signature, Failure> {
        let signature = Signature::parse(text).map_err(Failure::usage)?;
        Ok(match &self.instructions {
            Some(instructions) => signature.with_instructions(instructions.clone()),
            None => signature,
        })
    }

    /// Predict (or ChainOfThought with `--cot`) over `signature` (from
    /// [`Self::signature`]), with the adapter and model the flags give.
    pub(crate) fn build(&self, signature: Signature, lm: Lm) -> AnyProgram {
        let adapter = if self.adapter == "json" {
            Adapter::Json
        } else {
            Adapter::Chat
        };
        let settings = CallSettings {
            model: self.model.clone(),
            ..CallSettings::default()
        };
        if self.cot {
            let mut cot = ChainOfThought::new(signature, lm);
            let predict = cot.predict_mut();
            *predict = predict
                .clone()
                .with_adapter(adapter)
                .with_settings(settings);
            AnyProgram::new(cot)
        } else {
            AnyProgram::new(
                Predict::new(signature, lm)
                    .with_adapter(adapter)
                    .with_settings(settings),
            )
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct PredictArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// Print the outputs with usage, latency and the LM calls as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// The signature, such as "question -> answer" or "text -> sentiment: Literal['pos', 'neg']".
    pub(crate) signature: String,
    /// Inputs as name=value; values of non-text fields are JSON (k=3, tags='["a"]').
    #[arg(short = 'i', long = "input", value_name = "NAME=VALUE")]
    pub(crate) inputs: Vec<String>,
}

/// Parses `name=value` pairs against the signature's input types.
fn parse_inputs(signature: &Signature, pairs: &[String]) -> Result<Inputs, Failure> {
    let mut inputs = Inputs::new();
    for pair in pairs {
        let (name, text) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(anyhow::anyhow!("input `{pair}` is not NAME=VALUE")))?;
        let field = signature
            .inputs()
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = signature.inputs().iter().map(|f| f.name.as_str()).collect();
                Failure::usage(anyhow::anyhow!(
                    "the signature has no input `{name}` (inputs: {})",
                    known.join(", ")
                ))
            })?;
        let value = match field.ty {
            dspex::prompt::FieldType::Str => Value::String(text.to_owned()),
            ref ty => serde_json::from_str(text).map_err(|e| {
                Failure::usage(anyhow::anyhow!(
                    "input `{name}` must be JSON for type {ty}: {e}"
                ))
            })?,
        };
        inputs.insert(name.to_owned(), value);
    }
    Ok(inputs)
}

pub(crate) async fn run(config: Option<&Path>, args: PredictArgs) -> Result<(), Failure> {
    let (runtime, provider) = common::runtime_for(config, args.module.provider.as_deref()).await?;
    let result = run_with(runtime.client(), &provider, args).await;
    common::finish(runtime, result).await
}

/// Runs the program against `provider` of an existing client (the demo uses it).
pub(crate) async fn run_with(
    client: &dspex::Client,
    provider: &str,
    args: PredictArgs,
) -> Result<(), Failure> {
    let signature = args.module.signature(&args.signature)?;
    let inputs = parse_inputs(&signature, &args.inputs)?;
    // Print outputs in signature order (reasoning first for chain of thought).
    let mut order: Vec<String> = signature.outputs().iter().map(|f| f.name.clone()).collect();
    if args.module.cot {
        order.insert(0, ChainOfThought::reasoning_field().name);
    }
    let program = args.module.build(signature, Lm::new(client, provider));
    let prediction = program
        .forward_with(&inputs, RunContext::default())
        .await
        .map_err(|e| match e {
            dspex::PromptError::Client(error) => Failure::from(error),
            dspex::PromptError::InvalidInputs { .. } | dspex::PromptError::Signature { .. } => {
                Failure::usage(e)
            }
            other => Failure::Program(other),
        })?;
    if args.json {
        common::out(&serde_json::to_string_pretty(&prediction).map_err(Failure::usage)?);
    } else {
        for (name, value) in order
            .iter()
            .filter_map(|n| prediction.outputs.get(n).map(|v| (n, v)))
        {
            match value {
                Value::String(text) => common::out(&format!("{name}: {text}")),
                other => common::out(&format!("{name}: {other}")),
            }
        }
    }
    Ok(())
}
