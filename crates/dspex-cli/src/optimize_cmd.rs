//! `dspex optimize`: compile a program with BootstrapFewShot (or, with
//! `--labeled-only`, LabeledFewShot) over a JSONL trainset and write the
//! compiled program as JSON.

use std::path::{Path, PathBuf};

use dspex::prompt::evaluate::load_dataset;
use dspex::prompt::optimize::{BootstrapFewShot, CompileReport, LabeledFewShot};
use dspex::prompt::{Module, save_program};

use crate::common::{self, Failure};
use crate::eval_cmd::{MetricArgs, ProgramArgs, build_module, metric_from, program_failure};

#[derive(clap::Args, Debug)]
pub(crate) struct OptimizeArgs {
    #[command(flatten)]
    pub(crate) program: ProgramArgs,
    /// The trainset: JSONL, one object per line; the signature's inputs are
    /// inputs, every other key a label.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) train: PathBuf,
    #[command(flatten)]
    pub(crate) metric: MetricArgs,
    /// Bootstrapped demos per predictor.
    #[arg(long, default_value_t = 4)]
    pub(crate) max_bootstrapped: usize,
    /// Demos per predictor in all, labelled ones filling up.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_labeled: usize,
    /// Tries per trainset example (later ones at temperature 1.0).
    #[arg(long, default_value_t = 1)]
    pub(crate) max_rounds: usize,
    /// Failed teacher runs after which optimisation stops with an error (0: never).
    #[arg(long, default_value_t = 10)]
    pub(crate) max_errors: usize,
    /// Only attach labelled examples (LabeledFewShot, `--max-labeled` of them); no LM calls.
    #[arg(long)]
    pub(crate) labeled_only: bool,
    /// Draw labelled demos by a shuffle with this seed (default: trainset order).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Teacher runs in flight at once.
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
    /// Where to write the compiled program.
    #[arg(long, value_name = "PROGRAM.json")]
    pub(crate) out: PathBuf,
    /// Print the compile report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: OptimizeArgs) -> Result<(), Failure> {
    if args.concurrency == 0 || args.max_rounds == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--concurrency and --max-rounds must be at least 1"
        )));
    }
    let (runtime, provider) =
        common::runtime_for(config, args.program.module.provider.as_deref()).await?;
    let client = runtime.client().clone();
    let result: Result<(), Failure> = async {
        let built = build_module(&client, &provider, &args.program)?;
        let trainset = load_dataset(&args.train, &built.signature).map_err(program_failure)?;
        let (compiled, report) = if args.labeled_only {
            let mut labeled = LabeledFewShot::new(args.max_labeled);
            labeled.seed = args.seed;
            (labeled.compile(&built.module, &trainset), None)
        } else {
            let metric = metric_from(&args.metric, &built.signature)?;
            let optimizer = BootstrapFewShot {
                max_errors: (args.max_errors > 0).then_some(args.max_errors),
                seed: args.seed,
                progress: !args.json,
                ..BootstrapFewShot::new(metric)
                    .max_bootstrapped_demos(args.max_bootstrapped)
                    .max_labeled_demos(args.max_labeled)
                    .max_rounds(args.max_rounds)
                    .with_concurrency(args.concurrency)
            };
            let (compiled, report) = optimizer
                .compile(&built.module, None, &trainset)
                .await
                .map_err(program_failure)?;
            (compiled, Some(report))
        };
        save_program(&compiled, &args.out).map_err(program_failure)?;
        if args.json {
            let value = serde_json::json!({
                "out": args.out.display().to_string(),
                "demos": compiled
                    .predictors()
                    .into_iter()
                    .map(|(name, predict)| (name, predict.demos().len()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
                "report": report,
            });
            common::out(&serde_json::to_string_pretty(&value).map_err(Failure::usage)?);
        } else {
            if let Some(report) = &report {
                print_report(report);
            }
            for (name, predict) in compiled.predictors() {
                common::out(&format!(
                    "predictor `{name}`: {} demos",
                    predict.demos().len()
                ));
            }
            common::out(&format!("wrote {}", args.out.display()));
        }
        Ok(())
    }
    .await;
    common::finish(runtime, result).await
}

fn print_report(report: &CompileReport) {
    common::out(&format!(
        "bootstrapped from {} of {} examples tried ({} failed the metric, {} errors{}) in {:.2}s; {} calls, {} tokens",
        report.passed,
        report.tried,
        report.failed,
        report.errored,
        if report.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        report.duration.as_secs_f64(),
        report.calls,
        report.usage.total_tokens()
    ));
    for (name, demos) in &report.predictors {
        common::out(&format!(
            "  `{name}`: bootstrapped from examples {:?}, labelled {:?} (0-based)",
            demos.bootstrapped, demos.labeled
        ));
    }
    for error in report.errors.iter().take(5) {
        common::out(&format!(
            "  example #{} failed: {}",
            error.index + 1,
            error.error
        ));
    }
}
