//! `dspex run`: run a workflow file.

use std::path::{Path, PathBuf};

use dspex::workflow::{Context, RunOptions, Workflow, WorkflowError, declarative};
use serde_json::Value;

use crate::common::{self, Failure};

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The provider for steps that name none (default: the config's default).
    #[arg(long)]
    pub(crate) provider: Option<String>,
    /// Print the outputs and the run report (per step: duration, attempts,
    /// LM calls, tokens) as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// The workflow file (TOML).
    pub(crate) file: PathBuf,
    /// Inputs as name=value (text), or name:=value with a JSON value.
    #[arg(short = 'i', long = "input", value_name = "NAME=VALUE")]
    pub(crate) inputs: Vec<String>,
}

/// Parses `name=text` and `name:=json` pairs.
pub(crate) fn parse_inputs(pairs: &[String]) -> Result<Context, Failure> {
    let mut context = Context::new();
    for pair in pairs {
        let (name, value) = match (pair.split_once(":="), pair.split_once('=')) {
            (Some((name, json)), Some((plain, _))) if name.len() < plain.len() + 1 => {
                let value = serde_json::from_str(json).map_err(|e| {
                    Failure::usage(anyhow::anyhow!("input `{name}`: `{json}` is not JSON: {e}"))
                })?;
                (name, value)
            }
            (_, Some((name, text))) => (name, Value::String(text.to_owned())),
            _ => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "input `{pair}` is not NAME=VALUE or NAME:=JSON"
                )));
            }
        };
        context.insert(name.to_owned(), value);
    }
    Ok(context)
}

pub(crate) async fn run(config: Option<&Path>, args: RunArgs) -> Result<(), Failure> {
    let runtime = common::runtime(config).await?;
    let result = async {
        // The agent steps' tools: the config's MCP servers.
        let tools = runtime.tools().await?;
        match declarative::load_file_with_tools(
            &args.file,
            runtime.client(),
            args.provider.as_deref(),
            &tools,
        ) {
            Ok(workflow) => run_loaded(&workflow, &args.inputs, args.json).await,
            Err(error) => Err(Failure::usage(error)),
        }
    }
    .await;
    common::finish(runtime, result).await
}

/// Runs a loaded workflow and prints its outputs (the demo uses it too).
pub(crate) async fn run_loaded(
    workflow: &Workflow,
    inputs: &[String],
    json: bool,
) -> Result<(), Failure> {
    let initial = parse_inputs(inputs)?;
    // Refused before any call: a missing input is the caller's mistake
    // (exit 2), not a step failing after earlier steps were paid for.
    let missing = workflow.missing_inputs(&initial);
    if !missing.is_empty() {
        let given = |key: &&str| format!("-i {key}=...");
        return Err(Failure::usage(anyhow::anyhow!(
            "the workflow `{}` needs the input{} {}: pass {}",
            workflow.name(),
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            missing.iter().map(given).collect::<Vec<_>>().join(" ")
        )));
    }
    match workflow.run(initial, RunOptions::default()).await {
        Ok(output) => {
            if json {
                let body = serde_json::json!({
                    "outputs": output.context,
                    "report": output.report,
                });
                common::out(&serde_json::to_string_pretty(&body).map_err(Failure::usage)?);
            } else {
                for (key, value) in &output.context {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    common::out(&format!("{key}: {text}"));
                }
                common::out(&format!(
                    "({} steps, {} LM calls, {} tokens in, {} out, {:.1} ms, correlation id {})",
                    output.report.steps.len(),
                    output.report.lm_calls,
                    output.report.input_tokens,
                    output.report.output_tokens,
                    output.report.duration.as_secs_f64() * 1e3,
                    output.report.correlation_id
                ));
            }
            Ok(())
        }
        Err(error) => {
            if let WorkflowError::StepFailed { breadcrumbs, .. } = &error {
                for record in error.history() {
                    common::err(&format!(
                        "  step {}: {:?} after {} attempt(s){}",
                        record.step,
                        record.status,
                        record.attempts,
                        record
                            .error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
                for crumb in breadcrumbs {
                    common::err(&format!("  {crumb}"));
                }
            }
            Err(Failure::Workflow(error))
        }
    }
}
