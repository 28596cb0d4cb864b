//! `dspex predict`: run Predict (or ChainOfThought) once.

use std::path::{Path, PathBuf};

use dspex::prompt::{CallSettings, Inputs, RunContext};
use dspex::{Adapter, ChainOfThought, Lm, Module, Predict, Signature};
use futures::StreamExt;
use serde_json::Value;

use crate::common::{self, Failure};
use crate::eval_cmd::{AnyProgram, Built, program_failure};

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

/// `dspex predict`: the arguments the demo shares ([`PredictArgs`]) and a
/// saved program to run.
#[derive(clap::Args, Debug)]
pub(crate) struct PredictCommand {
    #[command(flatten)]
    pub(crate) args: PredictArgs,
    /// A saved program (as written by `dspex optimize --out`): its demos,
    /// instructions and settings, loaded as `dspex eval` loads them; alone,
    /// it also gives the signature.
    #[arg(long, value_name = "PROGRAM.json")]
    pub(crate) program: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PredictArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// Print the outputs with usage, latency and the LM calls as JSON.
    #[arg(long, conflicts_with = "stream")]
    pub(crate) json: bool,
    /// Print each output field as the model writes it.
    #[arg(long)]
    pub(crate) stream: bool,
    /// A conversation: read one input per line from stdin (the first text
    /// input not given with -i), answer, and keep the turns as the
    /// program's History (a `history: History` input is added when the
    /// signature has none). `/reset` forgets the turns; an empty line or
    /// end of input ends it.
    #[arg(long, conflicts_with = "json")]
    pub(crate) interactive: bool,
    /// The signature, such as "question -> answer" or "text -> sentiment: Literal['pos', 'neg']"
    /// (optional with --program, which saved its own).
    #[arg(
        default_value = "",
        hide_default_value = true,
        required_unless_present = "program"
    )]
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

/// Runs `program` once, streaming: each field's text is printed as it
/// arrives, after its name. Returns the prediction.
async fn stream_once(
    program: &dyn Module,
    inputs: &Inputs,
    run: RunContext,
) -> Result<dspex::Prediction, Failure> {
    use std::io::Write as _;
    let mut events = program.stream_with(inputs, run);
    let mut stdout = std::io::stdout().lock();
    let mut current: Option<String> = None;
    while let Some(event) = events.next().await {
        match event.map_err(program_failure)? {
            dspex::ModuleEvent::Field { field, text } => {
                if current.as_deref() != Some(field.as_str()) {
                    if current.is_some() {
                        let _ = writeln!(stdout);
                    }
                    let _ = write!(stdout, "{field}: ");
                    current = Some(field);
                }
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            dspex::ModuleEvent::Step(step) => {
                if current.take().is_some() {
                    let _ = writeln!(stdout);
                }
                for call in &step.calls {
                    let _ = writeln!(
                        stdout,
                        "[{}({}) -> {}]",
                        call.tool, call.arguments, call.observation
                    );
                }
            }
            dspex::ModuleEvent::Done(prediction) => {
                if current.is_some() {
                    let _ = writeln!(stdout);
                }
                let _ = stdout.flush();
                return Ok(prediction);
            }
            _ => {}
        }
    }
    Err(Failure::Program(dspex::PromptError::Composite {
        message: "the stream ended without a prediction".into(),
        retryable: true,
    }))
}

pub(crate) async fn run(config: Option<&Path>, command: PredictCommand) -> Result<(), Failure> {
    let PredictCommand { args, program } = command;
    let (runtime, provider) = common::runtime_for(config, args.module.provider.as_deref()).await?;
    let result = async {
        let mut built = build(runtime.client(), &provider, &args, program.as_deref())?;
        if let Some(path) = &program {
            // A KNNFewShot program (`optimize --optimizer knn`) picks its
            // demos per input, as under `dspex eval`.
            built.module = crate::eval_cmd::with_knn(built.module, path, config, &runtime).await?;
        }
        run_built(built, args).await
    }
    .await;
    common::finish(runtime, result).await
}

/// Runs the program against `provider` of an existing client (the demo uses it).
pub(crate) async fn run_with(
    client: &dspex::Client,
    provider: &str,
    args: PredictArgs,
) -> Result<(), Failure> {
    let built = build(client, provider, &args, None)?;
    run_built(built, args).await
}

/// The program `args` (and a saved `program`) describe, built the way
/// `dspex eval` builds it; `--interactive` adds a History input to a
/// signature that has none.
fn build(
    client: &dspex::Client,
    provider: &str,
    args: &PredictArgs,
    program: Option<&Path>,
) -> Result<Built, Failure> {
    let mut signature = if args.signature.trim().is_empty() {
        None
    } else {
        Some(args.module.signature(&args.signature)?)
    };
    if args.interactive
        && let Some(sig) = &signature
        && sig.history_input().is_none()
    {
        let mut inputs = sig.inputs().to_vec();
        inputs.push(dspex::prompt::Field::new(
            "history",
            dspex::prompt::FieldType::History,
        ));
        signature = Some(
            Signature::new(inputs, sig.outputs().to_vec(), sig.raw_instructions())
                .map_err(Failure::usage)?,
        );
    }
    let built = crate::eval_cmd::build_program(
        &args.module,
        signature,
        program,
        Lm::new(client, provider),
    )?;
    if args.interactive && built.signature.history_input().is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--interactive keeps the turns in a History input, which the saved program's \
             signature lacks: give the SIGNATURE too (with --program, its state is loaded onto it)"
        )));
    }
    Ok(built)
}

/// Runs a built program once (or as a conversation) and prints its outputs.
async fn run_built(built: Built, args: PredictArgs) -> Result<(), Failure> {
    let Built {
        module: program,
        signature,
    } = built;
    let inputs = parse_inputs(&signature, &args.inputs)?;
    // Print outputs in signature order (reasoning first for chain of thought;
    // a saved ChainOfThought's signature already starts with it).
    let mut order: Vec<String> = signature.outputs().iter().map(|f| f.name.clone()).collect();
    let reasoning = ChainOfThought::reasoning_field().name;
    if args.module.cot && !order.contains(&reasoning) {
        order.insert(0, reasoning);
    }
    if args.interactive {
        return converse(&program, &signature, inputs, &order, args.stream).await;
    }
    if args.stream {
        stream_once(&program, &inputs, RunContext::default()).await?;
        return Ok(());
    }
    let prediction = program
        .forward_with(&inputs, RunContext::default())
        .await
        .map_err(program_failure)?;
    if args.json {
        common::out(&serde_json::to_string_pretty(&prediction).map_err(Failure::usage)?);
    } else {
        print_outputs(&prediction, &order);
    }
    Ok(())
}

fn print_outputs(prediction: &dspex::Prediction, order: &[String]) {
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

/// The interactive loop of `--interactive`: one line, one turn; the turns so
/// far are the program's History input, so the model sees a real
/// conversation (and the cache scopes semantic hits to it).
async fn converse(
    program: &dyn Module,
    signature: &Signature,
    fixed: Inputs,
    order: &[String],
    stream: bool,
) -> Result<(), Failure> {
    use tokio::io::AsyncBufReadExt as _;
    let history_field = signature
        .history_input()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| "history".to_owned());
    let Some(asked) = signature
        .prompt_inputs()
        .find(|f| !fixed.contains_key(&f.name))
        .map(|f| f.name.clone())
    else {
        return Err(Failure::usage(anyhow::anyhow!(
            "--interactive reads one input per line, but -i gives every input"
        )));
    };
    let mut turns: Vec<Value> = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    common::err(&format!(
        "Type {asked}; an empty line ends, /reset forgets the conversation."
    ));
    while let Some(line) = lines.next_line().await.map_err(Failure::usage)? {
        let line = line.trim();
        if line.is_empty() || line == "/exit" {
            break;
        }
        if line == "/reset" {
            turns.clear();
            common::err("(conversation forgotten)");
            continue;
        }
        let mut inputs = fixed.clone();
        inputs.insert(asked.clone(), Value::String(line.to_owned()));
        inputs.insert(
            history_field.clone(),
            serde_json::json!({ "messages": turns }),
        );
        let prediction = if stream {
            stream_once(program, &inputs, RunContext::default()).await?
        } else {
            let prediction = program
                .forward_with(&inputs, RunContext::default())
                .await
                .map_err(program_failure)?;
            print_outputs(&prediction, order);
            prediction
        };
        let mut turn = serde_json::Map::new();
        turn.insert(asked.clone(), Value::String(line.to_owned()));
        for (name, value) in &fixed {
            turn.insert(name.clone(), value.clone());
        }
        turn.extend(prediction.outputs);
        turns.push(Value::Object(turn));
    }
    Ok(())
}
