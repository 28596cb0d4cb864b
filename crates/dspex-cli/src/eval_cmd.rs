//! `dspex eval`: score a program over a JSONL dataset with a metric. Also
//! home of what `eval` and `optimize` share: the program arguments and
//! [`build_module`], the one place a runnable program is made from them.

use std::path::{Path, PathBuf};

use dspex::prompt::evaluate::{Evaluate, Metric, load_dataset};
use dspex::prompt::{Inputs, Prediction, ProgramState, RunContext, load_program};
use dspex::{ChainOfThought, Lm, Module, Predict, PromptError, Runtime, Signature};
use futures::future::BoxFuture;

use crate::common::{self, Failure};
use crate::predict::ModuleArgs;

/// Which program to run: a signature (Predict, or ChainOfThought with
/// `--cot`), a saved program, or both (the saved state loaded onto the
/// signature's program).
#[derive(clap::Args, Debug)]
pub(crate) struct ProgramArgs {
    #[command(flatten)]
    pub(crate) module: ModuleArgs,
    /// A saved program (as written by `dspex optimize --out`): its demos,
    /// instructions and settings; alone, it also gives the signature.
    #[arg(long, value_name = "PROGRAM.json")]
    pub(crate) program: Option<PathBuf>,
    /// A workflow file (TOML) to run as the program: its declared `inputs`
    /// are read from the dataset and its `outputs` scored.
    #[arg(long, value_name = "WORKFLOW.toml", conflicts_with = "signature")]
    pub(crate) workflow: Option<PathBuf>,
    /// The signature, such as "question -> answer".
    pub(crate) signature: Option<String>,
}

/// A program the commands can run and copy: any module that is `Clone`.
pub(crate) trait Program: Module {
    fn clone_program(&self) -> Box<dyn Program>;
}

impl<T: Module + Clone + 'static> Program for T {
    fn clone_program(&self) -> Box<dyn Program> {
        Box::new(self.clone())
    }
}

/// A boxed [`Program`] that is itself a `Module + Clone`, so evaluation and
/// the optimisers take it like any module.
pub(crate) struct AnyProgram(Box<dyn Program>);

impl AnyProgram {
    pub(crate) fn new(program: impl Program + 'static) -> Self {
        Self(Box::new(program))
    }
}

impl Clone for AnyProgram {
    fn clone(&self) -> Self {
        Self(self.0.clone_program())
    }
}

impl Module for AnyProgram {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, dspex::prompt::Result<Prediction>> {
        self.0.forward_with(inputs, run)
    }

    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> futures::stream::BoxStream<'a, dspex::prompt::Result<dspex::ModuleEvent>> {
        self.0.stream_with(inputs, run)
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        self.0.predictors()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        self.0.predictors_mut()
    }
}

/// A runnable program and the signature its datasets are read with (its
/// inputs are a line's inputs; every other key is a label).
pub(crate) struct Built {
    pub(crate) module: AnyProgram,
    pub(crate) signature: Signature,
}

/// Builds the program `args` describe, calling `provider` through the runtime's client (a workflow's agent steps get the runtime's MCP tools).
///
/// This is the seam for other kinds of program: a workflow (`--workflow FILE`)
/// is one more branch here returning its `Module + Clone` in an
/// [`AnyProgram`], with a signature naming its inputs and outputs.
pub(crate) async fn build_module(
    runtime: &Runtime,
    provider: &str,
    args: &ProgramArgs,
) -> Result<Built, Failure> {
    let client = runtime.client();
    let lm = Lm::new(client, provider);
    if let Some(path) = &args.workflow {
        // The agent steps' tools: the config's MCP servers.
        let tools = runtime.tools().await?;
        let workflow = dspex::workflow::declarative::load_file_with_tools(
            path,
            client,
            Some(provider),
            &tools,
        )
        .map_err(Failure::usage)?;
        let Some(outputs) = workflow.output_keys().filter(|o| !o.is_empty()) else {
            return Err(Failure::usage(anyhow::anyhow!(
                "{}: declare `outputs = [...]` to evaluate or optimise the workflow",
                path.display()
            )));
        };
        let text = format!(
            "{} -> {}",
            workflow.input_keys().join(", "),
            outputs.join(", ")
        );
        let signature = Signature::parse(&text).map_err(Failure::usage)?;
        let mut module = AnyProgram::new(workflow);
        if let Some(program) = &args.program {
            load_program(&mut module, program).map_err(Failure::usage)?;
        }
        return Ok(Built { module, signature });
    }
    let signature = match &args.signature {
        Some(text) => Some(args.module.signature(text)?),
        None => None,
    };
    build_program(&args.module, signature, args.program.as_deref(), lm)
}

/// The program of a signature (Predict, or ChainOfThought with `--cot`), of
/// a saved program, or of both (the saved state loaded onto the
/// signature's program): what `predict`, `eval` and `optimize` run.
pub(crate) fn build_program(
    flags: &ModuleArgs,
    signature: Option<Signature>,
    program: Option<&Path>,
    lm: Lm,
) -> Result<Built, Failure> {
    let from_signature = signature.is_some();
    let mut built = match (signature, program) {
        (Some(signature), program) => {
            let mut module = flags.build(signature.clone(), lm);
            if let Some(path) = program {
                load_program(&mut module, path).map_err(Failure::usage)?;
            }
            Built { module, signature }
        }
        (None, Some(path)) => from_saved(path, lm)?,
        (None, None) => {
            return Err(Failure::usage(anyhow::anyhow!(
                "give a SIGNATURE (such as \"question -> answer\") or --program PROGRAM.json"
            )));
        }
    };
    if !from_signature {
        // Flags given next to a saved program override what it saved.
        for (_, predict) in built.module.predictors_mut() {
            let mut settings = predict.state().settings;
            if flags.model.is_some() {
                settings.model.clone_from(&flags.model);
            }
            let mut updated = predict.clone().with_settings(settings);
            if let Some(instructions) = &flags.instructions {
                updated.set_instructions(instructions.clone());
            }
            *predict = updated;
        }
    }
    Ok(built)
}

/// A program rebuilt from saved state alone: one predictor, a
/// ChainOfThought when its first output is ChainOfThought's `reasoning`.
fn from_saved(path: &Path, lm: Lm) -> Result<Built, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
    let state: ProgramState = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(anyhow::anyhow!(
            "{} is not a saved program: {e}",
            path.display()
        ))
    })?;
    let mut saved = state.predictors.values();
    let (Some(only), None) = (saved.next(), saved.next()) else {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} has {} predictors; without a SIGNATURE only a one-predictor program can be rebuilt",
            path.display(),
            state.predictors.len()
        )));
    };
    let full = Signature::parse(&only.signature).map_err(Failure::usage)?;
    let reasoning = ChainOfThought::reasoning_field().name;
    let mut module = match full.outputs().split_first() {
        Some((first, rest)) if first.name == reasoning && !rest.is_empty() => {
            let base = Signature::new(full.inputs().to_vec(), rest.to_vec(), "")
                .map_err(Failure::usage)?;
            AnyProgram::new(ChainOfThought::new(base, lm))
        }
        _ => AnyProgram::new(Predict::new(full.clone(), lm)),
    };
    load_program(&mut module, path).map_err(Failure::usage)?;
    Ok(Built {
        module,
        signature: full,
    })
}

/// `module` wrapped as KNNFewShot when the saved program at `path` has a
/// `knn` section (`dspex optimize --optimizer knn` writes one), with the
/// embedder `[cache]` names; `module` as it is otherwise.
pub(crate) async fn with_knn(
    module: AnyProgram,
    path: &Path,
    config: Option<&Path>,
    runtime: &Runtime,
) -> Result<AnyProgram, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(anyhow::anyhow!(
            "{} is not a saved program: {e}",
            path.display()
        ))
    })?;
    let Some(knn) = value.get("knn") else {
        return Ok(module);
    };
    let state: dspex::prompt::optimize::KnnState =
        serde_json::from_value(knn.clone()).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "{}: invalid `knn` section: {e}",
                path.display()
            ))
        })?;
    let embedder = common::embedder_for(config, runtime).await?;
    let knn = dspex::prompt::optimize::KnnFewShot::from_state(module, state, embedder)
        .await
        .map_err(program_failure)?;
    Ok(AnyProgram::new(knn))
}

/// The exit code a program error deserves, as `dspex predict` decides it.
pub(crate) fn program_failure(error: PromptError) -> Failure {
    match error {
        PromptError::Client(error) => Failure::from(error),
        PromptError::InvalidInputs { .. }
        | PromptError::Signature { .. }
        | PromptError::Dataset { .. }
        | PromptError::State { .. } => Failure::usage(error),
        other => Failure::Program(other),
    }
}

/// The metric the flags name, checked against the signature's outputs.
/// The metric flags `eval` and `optimize` share.
#[derive(clap::Args, Debug)]
pub(crate) struct MetricArgs {
    /// The metric: exact match, contains, or SQuAD token F1.
    #[arg(long, default_value = "exact", value_parser = ["exact", "contains", "f1"])]
    pub(crate) metric: String,
    /// Score only this output field (default: the mean over labelled fields).
    #[arg(long)]
    pub(crate) field: Option<String>,
    /// The score an example needs to pass (default 1.0).
    #[arg(long)]
    pub(crate) threshold: Option<f64>,
}

pub(crate) fn metric_from(args: &MetricArgs, signature: &Signature) -> Result<Metric, Failure> {
    let (field, threshold) = (args.field.as_deref(), args.threshold);
    let mut metric = Metric::from_name(&args.metric).map_err(Failure::usage)?;
    if let Some(field) = field {
        if !signature.outputs().iter().any(|f| f.name == field) {
            let known: Vec<&str> = signature
                .outputs()
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            return Err(Failure::usage(anyhow::anyhow!(
                "--field `{field}` is not an output of the signature (outputs: {})",
                known.join(", ")
            )));
        }
        metric = metric.field(field);
    }
    if let Some(threshold) = threshold {
        metric = metric.with_threshold(threshold);
    }
    Ok(metric)
}

#[derive(clap::Args, Debug)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) program: ProgramArgs,
    /// The dataset: JSONL, one object per line; the signature's inputs are
    /// inputs, every other key a label.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) data: PathBuf,
    #[command(flatten)]
    pub(crate) metric: MetricArgs,
    /// Examples in flight at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Print the whole report (every example's result) as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: EvalArgs) -> Result<(), Failure> {
    if args.concurrency == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--concurrency must be at least 1"
        )));
    }
    let (runtime, provider) =
        common::runtime_for(config, args.program.module.provider.as_deref()).await?;
    let result: Result<(), Failure> = async {
        let mut built = build_module(&runtime, &provider, &args.program).await?;
        if let Some(path) = &args.program.program {
            built.module = with_knn(built.module, path, config, &runtime).await?;
        }
        let metric = metric_from(&args.metric, &built.signature)?;
        let examples = load_dataset(&args.data, &built.signature).map_err(program_failure)?;
        let evaluate = Evaluate::new(metric)
            .with_concurrency(args.concurrency)
            .with_progress(!args.json);
        // Spread over the runtime's workers rather than polled from the main
        // thread (`run`): formatting and parsing then share the cores with the
        // connections instead of competing with them from a third thread.
        let report = evaluate
            .run_shared(std::sync::Arc::new(built.module), examples.into())
            .await;
        if args.json {
            common::out(&serde_json::to_string_pretty(&report).map_err(Failure::usage)?);
        } else {
            common::out(&report.to_string());
            let failed: Vec<_> = report
                .results
                .iter()
                .filter(|r| r.error.is_some())
                .collect();
            for result in failed.iter().take(10) {
                common::out(&format!(
                    "  example #{} failed: {}",
                    result.index + 1,
                    result.error.as_deref().unwrap_or_default()
                ));
            }
            if failed.len() > 10 {
                common::out(&format!("  ... and {} more", failed.len() - 10));
            }
        }
        if report.total > 0 && report.errors == report.total {
            return Err(Failure::Calls(anyhow::anyhow!(
                "every example failed; the first: {}",
                report
                    .results
                    .first()
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }
    .await;
    common::finish(runtime, result).await
}
