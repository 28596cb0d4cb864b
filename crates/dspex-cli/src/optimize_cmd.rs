//! `dspex optimize`: compile a program's prompts over a JSONL trainset and
//! write the compiled program as JSON.
//!
//! ```text
//! dspex optimize --train train.jsonl --out p.json "question -> answer"           # BootstrapFewShot
//! dspex optimize --optimizer mipro --auto light --train t.jsonl --val v.jsonl \
//!     --prompt-model openai/gpt-4o --seed 7 --max-usd 2 --checkpoint run.ckpt --out p.json "q -> a"
//! dspex optimize --optimizer gepa --reflection-model anthropic --resume --checkpoint run.ckpt ...
//! ```
//!
//! Optimisers: `bootstrap` (with `--labeled-only`, LabeledFewShot),
//! `random-search`, `knn`, `copro`, `mipro`, `gepa`. Settings come from
//! the flags, else from `[optimize]` in `dspex.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dspex::prompt::evaluate::load_dataset;
use dspex::prompt::optimize::config::{
    OptimizeConfig, OptimizerKind, parse_duration, usd_to_nanos,
};
use dspex::prompt::optimize::engine::{Engine, EngineConfig, Pricer};
use dspex::prompt::optimize::{
    AutoLevel, BootstrapFewShot, CompileReport, Copro, Gepa, GepaBudget, KnnFewShot,
    LabeledFewShot, MiproV2, OptimizeReport, RandomSearch,
};
use dspex::prompt::{Lm, Module, RunContext, program_state, save_program};

use crate::common::{self, Failure};
use crate::eval_cmd::{
    AnyProgram, MetricArgs, ProgramArgs, build_module, metric_from, program_failure,
};

#[derive(clap::Args, Debug)]
pub(crate) struct OptimizeArgs {
    #[command(flatten)]
    pub(crate) program: ProgramArgs,
    /// The trainset: JSONL, one object per line; the signature's inputs are
    /// inputs, every other key a label.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) train: PathBuf,
    /// The valset candidates are scored on (default: the trainset).
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) val: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) metric: MetricArgs,
    /// The optimiser: bootstrap, random-search, knn, copro, mipro, gepa
    /// (default: `[optimize] optimizer`, else bootstrap).
    #[arg(long)]
    pub(crate) optimizer: Option<String>,
    /// A preset for mipro and gepa: light, medium, heavy (default light).
    #[arg(long)]
    pub(crate) auto: Option<String>,
    /// The model proposing instructions (copro, mipro): a provider, or
    /// provider/model (default: the program's provider).
    #[arg(long, value_name = "PROVIDER[/MODEL]")]
    pub(crate) prompt_model: Option<String>,
    /// The model reflecting (gepa): a provider, or provider/model (default:
    /// the prompt model).
    #[arg(long, value_name = "PROVIDER[/MODEL]")]
    pub(crate) reflection_model: Option<String>,
    /// Bootstrapped demos per predictor.
    #[arg(long)]
    pub(crate) max_bootstrapped: Option<usize>,
    /// Demos per predictor in all, labelled ones filling up.
    #[arg(long)]
    pub(crate) max_labeled: Option<usize>,
    /// Tries per trainset example when bootstrapping (later ones at temperature 1.0).
    #[arg(long, default_value_t = 1)]
    pub(crate) max_rounds: usize,
    /// Failed teacher runs after which `bootstrap` stops with an error (0: never).
    #[arg(long, default_value_t = 10)]
    pub(crate) max_errors: usize,
    /// `bootstrap` only: attach labelled examples (LabeledFewShot); no LM calls.
    #[arg(long)]
    pub(crate) labeled_only: bool,
    /// Candidate programs (random-search, default 16) or instructions and
    /// demo sets per predictor (mipro without --auto).
    #[arg(long)]
    pub(crate) num_candidates: Option<usize>,
    /// Search trials (mipro without --auto).
    #[arg(long)]
    pub(crate) num_trials: Option<usize>,
    /// COPRO's proposals per round (default 10) and rounds (default 3).
    #[arg(long)]
    pub(crate) breadth: Option<usize>,
    /// COPRO's rounds.
    #[arg(long)]
    pub(crate) depth: Option<usize>,
    /// GEPA's budget in metric calls (instead of --auto).
    #[arg(long)]
    pub(crate) max_metric_calls: Option<u64>,
    /// KNN: neighbours per call (default 3).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    /// The seed of every random choice (default 0).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// LM work in flight at once (default 8).
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Stop at this spend, in dollars (priced with the analytics price table).
    #[arg(long, value_name = "USD")]
    pub(crate) max_usd: Option<f64>,
    /// Stop after this many LM calls.
    #[arg(long)]
    pub(crate) max_calls: Option<u64>,
    /// Stop after this many tokens.
    #[arg(long)]
    pub(crate) max_tokens: Option<u64>,
    /// Stop after this long (`90m`, `2h`).
    #[arg(long, value_name = "DURATION")]
    pub(crate) max_duration: Option<String>,
    /// Write a checkpoint here after every trial.
    #[arg(long, value_name = "FILE")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Continue the run the checkpoint file holds.
    #[arg(long, requires = "checkpoint")]
    pub(crate) resume: bool,
    /// Where to write the compiled program.
    #[arg(long, value_name = "PROGRAM.json")]
    pub(crate) out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A provider, or `provider/model`, as an [`Lm`].
fn lm_of(client: &dspex::Client, text: &str) -> Result<Lm, Failure> {
    let (provider, model) = match text.split_once('/') {
        Some((provider, model)) if client.provider(provider).is_ok() => (provider, Some(model)),
        _ => (text, None),
    };
    client.provider(provider).map_err(Failure::from)?;
    let lm = Lm::new(client, provider);
    Ok(match model {
        Some(model) => lm.with_model(model),
        None => lm,
    })
}

pub(crate) async fn run(config: Option<&Path>, args: OptimizeArgs) -> Result<(), Failure> {
    let loader = common::loader(config)?;
    let settings = OptimizeConfig::load(&loader).map_err(Failure::usage)?;
    let kind = match &args.optimizer {
        Some(text) => OptimizerKind::parse(text).ok_or_else(|| {
            Failure::usage(anyhow::anyhow!(
                "--optimizer `{text}` is not one of {}",
                OptimizerKind::NAMES
            ))
        })?,
        None => settings.optimizer.unwrap_or(OptimizerKind::Bootstrap),
    };
    let concurrency = args.concurrency.or(settings.concurrency).unwrap_or(8);
    if concurrency == 0 || args.max_rounds == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--concurrency and --max-rounds must be at least 1"
        )));
    }
    let (runtime, provider) =
        common::runtime_for(config, args.program.module.provider.as_deref()).await?;
    let client = runtime.client().clone();
    let prices = runtime.prices().cloned();
    let result: Result<(), Failure> = async {
        let built = build_module(&runtime, &provider, &args.program).await?;
        let trainset = load_dataset(&args.train, &built.signature).map_err(program_failure)?;
        if kind == OptimizerKind::Bootstrap {
            return bootstrap(&args, built.module, &trainset, &built.signature).await;
        }
        if kind == OptimizerKind::Knn {
            let metric = metric_from(&args.metric, &built.signature)?;
            let valset = match &args.val {
                Some(path) => load_dataset(path, &built.signature).map_err(program_failure)?,
                None => trainset.clone(),
            };
            let embedder = common::embedder_for(config, &runtime).await?;
            return knn(
                &args,
                built.module,
                &trainset,
                &valset,
                metric,
                concurrency,
                embedder,
            )
            .await;
        }
        let valset = match &args.val {
            Some(path) => load_dataset(path, &built.signature).map_err(program_failure)?,
            None => trainset.clone(),
        };
        let metric = metric_from(&args.metric, &built.signature)?;
        let mut budget = settings.budget.clone();
        if let Some(usd) = args.max_usd {
            budget.max_cost_nanos = Some(usd_to_nanos("--max-usd", usd).map_err(Failure::usage)?);
        }
        if args.max_calls.is_some() {
            budget.max_calls = args.max_calls;
        }
        if args.max_tokens.is_some() {
            budget.max_tokens = args.max_tokens;
        }
        if let Some(text) = &args.max_duration {
            budget.max_duration =
                Some(parse_duration("--max-duration", text).map_err(Failure::usage)?);
        }
        let pricer: Option<Pricer> = prices.map(|prices| {
            let client = client.clone();
            let pricer: Pricer =
                Arc::new(move |provider: &str, model: &str, usage: &dspex::Usage| {
                    let system = client.provider(provider).map_or("", |p| p.system());
                    prices
                        .cost_of_call(
                            system,
                            provider,
                            model,
                            Some(model),
                            dspex::analytics::time::unix_ms(std::time::SystemTime::now()),
                            &usage.into(),
                        )
                        .map(|cost| cost.nanos)
                });
            pricer
        });
        let name = match kind {
            OptimizerKind::RandomSearch => "random-search",
            OptimizerKind::Knn => "knn",
            OptimizerKind::Copro => "copro",
            OptimizerKind::Mipro => "mipro",
            OptimizerKind::Gepa => "gepa",
            OptimizerKind::Bootstrap => "bootstrap",
        };
        let mut context = RunContext::default();
        context.tags.insert("optimizer".into(), name.into());
        let engine = Engine::new(
            built.module,
            metric,
            trainset,
            valset,
            EngineConfig {
                seed: args.seed.or(settings.seed).unwrap_or(0),
                concurrency,
                budget,
                checkpoint: args.checkpoint.clone().or(settings.checkpoint.clone()),
                resume: args.resume,
                progress: !args.json,
                context,
                pricer,
            },
        )
        .map_err(program_failure)?;
        let auto = match args.auto.as_deref() {
            Some(text) => Some(AutoLevel::parse(text).ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "--auto `{text}` is not light, medium or heavy"
                ))
            })?),
            None => settings.auto,
        };
        let prompt_lm = match args
            .prompt_model
            .as_deref()
            .or(settings.prompt_model.as_deref())
        {
            Some(text) => lm_of(&client, text)?,
            None => Lm::new(&client, &provider),
        };
        let reflection_lm = match args
            .reflection_model
            .as_deref()
            .or(settings.reflection_model.as_deref())
        {
            Some(text) => lm_of(&client, text)?,
            None => prompt_lm.clone(),
        };
        let (compiled, report) = match kind {
            OptimizerKind::RandomSearch => {
                let mut search = RandomSearch::default();
                if let Some(n) = args.max_bootstrapped {
                    search.max_bootstrapped_demos = n;
                }
                if let Some(n) = args.max_labeled {
                    search.max_labeled_demos = n;
                }
                if let Some(n) = args.num_candidates {
                    search.num_candidate_programs = n;
                }
                search.max_rounds = args.max_rounds;
                search.compile(&engine).await.map_err(program_failure)?
            }
            OptimizerKind::Copro => {
                let mut copro = Copro::default();
                if let Some(n) = args.breadth {
                    copro.breadth = n;
                }
                if let Some(n) = args.depth {
                    copro.depth = n;
                }
                copro
                    .compile(&engine, &prompt_lm)
                    .await
                    .map_err(program_failure)?
            }
            OptimizerKind::Mipro => {
                let mut mipro = MiproV2::default();
                if args.num_candidates.is_some() || args.num_trials.is_some() {
                    mipro.auto = None;
                    mipro.num_candidates = args.num_candidates;
                    mipro.num_trials = args.num_trials;
                } else if let Some(level) = auto {
                    mipro.auto = Some(level);
                }
                if let Some(n) = args.max_bootstrapped {
                    mipro.max_bootstrapped_demos = n;
                }
                if let Some(n) = args.max_labeled {
                    mipro.max_labeled_demos = n;
                }
                mipro
                    .compile(&engine, &prompt_lm)
                    .await
                    .map_err(program_failure)?
            }
            OptimizerKind::Gepa => {
                let mut gepa = Gepa::default();
                if let Some(calls) = args.max_metric_calls {
                    gepa.budget = GepaBudget::MaxMetricCalls(calls);
                } else if let Some(level) = auto {
                    gepa.budget = GepaBudget::Auto(level);
                }
                gepa.compile(&engine, &reflection_lm)
                    .await
                    .map_err(program_failure)?
            }
            OptimizerKind::Bootstrap | OptimizerKind::Knn => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{name} runs without the search engine (handled above)"
                )));
            }
        };
        let task = &report.spend.task;
        nothing_succeeded(
            task.runs,
            task.failed_runs,
            "program runs",
            "see the log for the calls' errors",
        )?;
        save_program(&compiled, &args.out).map_err(program_failure)?;
        print_optimize_report(&args, &report)
    }
    .await;
    common::finish(runtime, result).await
}

/// Refuses to save the result of an optimisation none of whose `runs`
/// succeeded (every call refused, say): its "best" program is the starting
/// one scored on errors, not something learnt.
fn nothing_succeeded(runs: u64, failed: u64, what: &str, detail: &str) -> Result<(), Failure> {
    if runs > 0 && failed == runs {
        return Err(Failure::Calls(anyhow::anyhow!(
            "every one of the {runs} {what} failed, so nothing was learnt and no program was \
             written; {detail}"
        )));
    }
    Ok(())
}

/// KNNFewShot: embeds the trainset and saves the program with its `knn`
/// section; reports the valset score before and after.
async fn knn(
    args: &OptimizeArgs,
    module: AnyProgram,
    trainset: &[dspex::prompt::Example],
    valset: &[dspex::prompt::Example],
    metric: dspex::prompt::Metric,
    concurrency: usize,
    embedder: Arc<dyn dspex::cache::Embedder>,
) -> Result<(), Failure> {
    let k = args.k.unwrap_or(3);
    let compiled = KnnFewShot::compile(&module, trainset, k, embedder)
        .await
        .map_err(program_failure)?;
    let evaluate = dspex::prompt::Evaluate::new(metric).with_concurrency(concurrency);
    let before = evaluate.run(&module, valset).await;
    let after = evaluate.run(&compiled, valset).await;
    let mut value =
        serde_json::to_value(program_state(compiled.program())).map_err(Failure::usage)?;
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "knn".into(),
            serde_json::to_value(compiled.state()).map_err(Failure::usage)?,
        );
    }
    let text = serde_json::to_string_pretty(&value).map_err(Failure::usage)?;
    let temporary = args.out.with_extension("json.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, &args.out))
        .map_err(|e| Failure::usage(anyhow::anyhow!("cannot write {}: {e}", args.out.display())))?;
    if args.json {
        let report = serde_json::json!({
            "optimizer": "knn",
            "k": k,
            "baseline": {"score": before.score, "ci95": before.pass_rate_ci95, "examples": before.total},
            "best": {"score": after.score, "ci95": after.pass_rate_ci95, "examples": after.total},
            "out": args.out.display().to_string(),
        });
        common::out(&serde_json::to_string_pretty(&report).map_err(Failure::usage)?);
    } else {
        common::out(&format!(
            "KNNFewShot (k = {k}): valset {:.1}% -> {:.1}% (95% CI {:.1}-{:.1}%)",
            100.0 * before.score,
            100.0 * after.score,
            100.0 * after.pass_rate_ci95[0],
            100.0 * after.pass_rate_ci95[1]
        ));
        common::out(&format!("wrote {}", args.out.display()));
    }
    Ok(())
}

fn print_optimize_report(args: &OptimizeArgs, report: &OptimizeReport) -> Result<(), Failure> {
    if args.json {
        common::out(&serde_json::to_string_pretty(report).map_err(Failure::usage)?);
        return Ok(());
    }
    let show = |label: &str, score: &Option<dspex::prompt::optimize::ValScore>| match score {
        Some(s) => common::out(&format!(
            "{label}: {:.1}% on {} valset examples (95% CI {:.1}-{:.1}%), candidate {}",
            100.0 * s.score,
            s.examples,
            100.0 * s.ci95[0],
            100.0 * s.ci95[1],
            s.candidate
        )),
        None => common::out(&format!("{label}: not scored")),
    };
    show("the program as given", &report.baseline);
    show("the best program", &report.best);
    let total = report.spend.total();
    common::out(&format!(
        "{} trials in {:.1}s; {} calls ({} task, {} proposal, {} reflection), {} tokens, ${:.6}{}",
        report.trials.len(),
        report.duration.as_secs_f64(),
        total.calls,
        report.spend.task.calls,
        report.spend.proposal.calls,
        report.spend.reflection.calls,
        total.tokens(),
        total.cost_nanos as f64 / 1e9,
        match &report.stopped {
            dspex::prompt::optimize::engine::StopReason::Finished => String::new(),
            dspex::prompt::optimize::engine::StopReason::Budget(why) => format!("; stopped: {why}"),
        }
    ));
    common::out(&format!("wrote {}", args.out.display()));
    Ok(())
}

/// BootstrapFewShot (or LabeledFewShot), as before the search optimisers.
async fn bootstrap(
    args: &OptimizeArgs,
    module: AnyProgram,
    trainset: &[dspex::prompt::Example],
    signature: &dspex::prompt::Signature,
) -> Result<(), Failure> {
    let max_labeled = args.max_labeled.unwrap_or(16);
    let (compiled, report) = if args.labeled_only {
        let mut labeled = LabeledFewShot::new(max_labeled);
        labeled.seed = args.seed;
        (labeled.compile(&module, trainset), None)
    } else {
        let metric = metric_from(&args.metric, signature)?;
        let optimizer = BootstrapFewShot {
            max_errors: (args.max_errors > 0).then_some(args.max_errors),
            seed: args.seed,
            progress: !args.json,
            ..BootstrapFewShot::new(metric)
                .max_bootstrapped_demos(args.max_bootstrapped.unwrap_or(4))
                .max_labeled_demos(max_labeled)
                .max_rounds(args.max_rounds)
                .with_concurrency(args.concurrency.unwrap_or(8))
        };
        let (compiled, report) = optimizer
            .compile(&module, None, trainset)
            .await
            .map_err(program_failure)?;
        (compiled, Some(report))
    };
    if let Some(report) = &report {
        let first = report.errors.first().map_or("", |e| e.error.as_str());
        nothing_succeeded(
            report.tried as u64,
            report.errored as u64,
            "teacher runs",
            &format!("the first error: {first}"),
        )?;
    }
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
