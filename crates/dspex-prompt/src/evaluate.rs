//! Evaluation: score a module over a dataset with a [`Metric`].
//!
//! [`Evaluate`] runs a module over labelled [`Example`]s with bounded
//! concurrency (and a progress bar on a terminal) and returns an
//! [`EvalReport`]: the mean score, how many passed, every example's score,
//! outputs, error and usage, the total usage and the LM call rate. One
//! example's failure is that example's result (scored 0); it never aborts the
//! run. Datasets are JSONL files read by [`load_dataset`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::evaluate::{Evaluate, Metric, parse_dataset};
//! use dspex_prompt::{Lm, Predict, Signature};
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", ScriptedLm::replies(["[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"])).await?;
//! let signature = Signature::parse("question -> answer")?;
//! let predict = Predict::new(signature.clone(), Lm::new(&client, "dummy"));
//! let data = "{\"question\": \"Capital of France?\", \"answer\": \"Paris\"}\n\
//!             {\"question\": \"Capital of Italy?\", \"answer\": \"Rome\"}\n";
//! let examples = parse_dataset(data, "inline", &signature)?;
//! let report = Evaluate::new(Metric::exact_match()).run(&predict, &examples).await;
//! assert_eq!((report.passed, report.total), (1, 2));
//! assert_eq!(report.score, 0.5);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_client::Usage;
use dspex_core::config::SourceLocation;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::adapter::Example;
use crate::error::{PromptError, Result};
use crate::module::{Module, Prediction, RunContext};
use crate::signature::Signature;

/// A user metric: a score for one example's prediction, usually in `0..=1`.
pub type MetricFn = dyn Fn(&Example, &Prediction) -> f64 + Send + Sync;

/// A user metric that may fail, and may explain its score in words (GEPA's
/// reflection reads the feedback).
pub type JudgeFn =
    dyn Fn(&Example, &Prediction) -> std::result::Result<Judgement, String> + Send + Sync;

/// A metric's verdict on one prediction: a score, and optionally feedback
/// in words for an optimiser that reflects on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The score, usually in `0..=1`.
    pub score: f64,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

impl Judgement {
    /// A score with feedback.
    pub fn new(score: f64, feedback: impl Into<String>) -> Self {
        Self {
            score,
            feedback: Some(feedback.into()),
        }
    }
}

#[derive(Clone)]
enum Kind {
    ExactMatch,
    Contains,
    TokenF1,
    Custom(Arc<MetricFn>),
    Judge(Arc<JudgeFn>),
}

/// How a prediction is scored against an example's labels.
///
/// The built-in metrics compare text after SQuAD-style normalisation
/// (lowercase, ASCII punctuation removed, the articles `a`, `an`, `the`
/// dropped, whitespace-separated tokens); non-string values are compared as
/// their JSON text. Each scores one named output field ([`Metric::field`]) or,
/// with no field, the mean over the example's labelled output fields (a field
/// the prediction lacks scores 0; an example with no labels scores 0). As in
/// DSPy's `answer_exact_match`, a label that is a list of alternatives (when
/// the prediction's value is not itself a list) scores its best alternative.
///
/// [`Metric::passes`] turns a score into pass or fail for optimisers and the
/// report's `passed` count: by default a score of at least 1.0 passes, for
/// every metric; change it with [`Metric::with_threshold`]. (DSPy's truthiness
/// test, "any non-zero score passes", is `with_threshold(f64::MIN_POSITIVE)`.)
#[derive(Clone)]
pub struct Metric {
    name: String,
    kind: Kind,
    field: Option<String>,
    threshold: f64,
}

impl fmt::Debug for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metric")
            .field("name", &self.name)
            .field("field", &self.field)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl Metric {
    fn builtin(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            field: None,
            threshold: 1.0,
        }
    }

    /// 1.0 when the normalised prediction equals the normalised label, else 0.
    pub fn exact_match() -> Self {
        Self::builtin("exact_match", Kind::ExactMatch)
    }

    /// 1.0 when the normalised label occurs in the normalised prediction as a
    /// whole-token run ("4" is not found in "42"), else 0.
    pub fn contains() -> Self {
        Self::builtin("contains", Kind::Contains)
    }

    /// SQuAD's token F1 between the normalised prediction and label: the
    /// harmonic mean of token precision and recall (1.0 when both are empty).
    pub fn token_f1() -> Self {
        Self::builtin("token_f1", Kind::TokenF1)
    }

    /// A metric computed by `score` (threshold 1.0 unless changed).
    pub fn custom(
        name: impl Into<String>,
        score: impl Fn(&Example, &Prediction) -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Custom(Arc::new(score)),
            field: None,
            threshold: 1.0,
        }
    }

    /// A metric that may fail (an error scores 0 and is reported) and may
    /// give feedback in words with its score (threshold 1.0 unless changed).
    pub fn judge(
        name: impl Into<String>,
        judge: impl Fn(&Example, &Prediction) -> std::result::Result<Judgement, String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Judge(Arc::new(judge)),
            field: None,
            threshold: 1.0,
        }
    }

    /// The verdict on `prediction`: the score and, when the metric gives
    /// one, feedback. Built-in metrics explain a miss by naming the expected
    /// and the predicted values. A failing judge metric is an error.
    pub fn verdict(
        &self,
        example: &Example,
        prediction: &Prediction,
    ) -> std::result::Result<Judgement, String> {
        match &self.kind {
            Kind::Judge(judge) => judge(example, prediction).map(|mut judgement| {
                if !judgement.score.is_finite() {
                    judgement.score = 0.0;
                }
                judgement
            }),
            Kind::Custom(_) => Ok(Judgement {
                score: self.score(example, prediction),
                feedback: None,
            }),
            _ => {
                let score = self.score(example, prediction);
                let feedback = (!self.passes(score)).then(|| {
                    let fields: Vec<String> = example
                        .outputs
                        .iter()
                        .filter(|(name, _)| self.field.as_deref().is_none_or(|f| f == *name))
                        .map(|(name, label)| {
                            let predicted = prediction
                                .outputs
                                .get(name)
                                .map_or_else(|| "nothing".to_owned(), |v| format!("`{}`", text(v)));
                            format!(
                                "`{name}` should be `{}`; the program answered {predicted}",
                                text(label)
                            )
                        })
                        .collect();
                    format!(
                        "Scored {score:.2} by {}: {}.",
                        self.name(),
                        fields.join("; ")
                    )
                });
                Ok(Judgement { score, feedback })
            }
        }
    }

    /// A built-in metric by its command-line name: `exact` (or `exact_match`,
    /// `em`), `contains`, `f1` (or `token_f1`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "exact" | "exact_match" | "em" => Ok(Self::exact_match()),
            "contains" => Ok(Self::contains()),
            "f1" | "token_f1" => Ok(Self::token_f1()),
            other => Err(PromptError::InvalidInputs {
                problems: vec![format!(
                    "unknown metric `{other}` (known: exact, contains, f1)"
                )],
            }),
        }
    }

    /// Scores only output `field` (built-in metrics; a custom metric sees the
    /// whole example and prediction and ignores it).
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Passes scores of at least `threshold`.
    #[must_use]
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The metric's name (`exact_match`, `contains`, `token_f1` or the custom
    /// name), with `:field` when it scores one field.
    pub fn name(&self) -> String {
        match &self.field {
            Some(field) if !matches!(self.kind, Kind::Custom(_) | Kind::Judge(_)) => {
                format!("{}:{field}", self.name)
            }
            _ => self.name.clone(),
        }
    }

    /// The scored field, if one.
    pub fn scored_field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The pass threshold.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether `score` passes.
    pub fn passes(&self, score: f64) -> bool {
        score >= self.threshold
    }

    /// Scores `prediction` against `example`'s labels. A non-finite custom
    /// score counts as 0, so one bad value cannot poison a mean.
    pub fn score(&self, example: &Example, prediction: &Prediction) -> f64 {
        let compare: fn(&str, &str) -> f64 = match &self.kind {
            Kind::Custom(score) => {
                let value = score(example, prediction);
                return if value.is_finite() { value } else { 0.0 };
            }
            Kind::Judge(judge) => {
                return judge(example, prediction)
                    .ok()
                    .map(|j| j.score)
                    .filter(|s| s.is_finite())
                    .unwrap_or(0.0);
            }
            Kind::ExactMatch => exact_match,
            Kind::Contains => contains,
            Kind::TokenF1 => token_f1,
        };
        let field_score = |name: &str, label: &Value| -> f64 {
            prediction
                .outputs
                .get(name)
                .map_or(0.0, |predicted| score_value(compare, predicted, label))
        };
        match &self.field {
            Some(name) => example
                .outputs
                .get(name)
                .map_or(0.0, |label| field_score(name, label)),
            None => {
                if example.outputs.is_empty() {
                    return 0.0;
                }
                let total: f64 = example
                    .outputs
                    .iter()
                    .map(|(name, label)| field_score(name, label))
                    .sum();
                total / example.outputs.len() as f64
            }
        }
    }
}

fn score_value(compare: fn(&str, &str) -> f64, predicted: &Value, label: &Value) -> f64 {
    match (predicted, label) {
        (Value::Array(_), _) | (_, Value::String(_)) => compare(&text(predicted), &text(label)),
        (_, Value::Array(alternatives)) if !alternatives.is_empty() => {
            let predicted = text(predicted);
            alternatives
                .iter()
                .map(|alternative| compare(&predicted, &text(alternative)))
                .fold(0.0, f64::max)
        }
        _ => compare(&text(predicted), &text(label)),
    }
}

fn text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(text) => Cow::Borrowed(text),
        other => Cow::Owned(other.to_string()),
    }
}

/// SQuAD's answer normalisation, as tokens: lowercase, ASCII punctuation
/// removed (not replaced: "don't" is "dont"), articles dropped, split on
/// whitespace.
pub fn normalize_tokens(text: &str) -> Vec<String> {
    tokens(text).map(Cow::into_owned).collect()
}

/// [`normalize_tokens`] without the copies: a word that is already
/// lower-case ASCII without punctuation is borrowed. Splitting on whitespace
/// first gives the same tokens as cleaning the whole text first, since
/// neither lower-casing nor removing ASCII punctuation makes or removes
/// whitespace; a word that was all punctuation vanishes either way.
fn tokens(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    text.split_whitespace()
        .map(|word| {
            let clean = word
                .bytes()
                .all(|b| b.is_ascii() && !b.is_ascii_uppercase() && !b.is_ascii_punctuation());
            if clean {
                Cow::Borrowed(word)
            } else {
                Cow::Owned(
                    word.to_lowercase()
                        .chars()
                        .filter(|c| !c.is_ascii_punctuation())
                        .collect(),
                )
            }
        })
        .filter(|token| !token.is_empty() && !matches!(&**token, "a" | "an" | "the"))
}

/// [`Metric::exact_match`] on two texts.
pub fn exact_match(prediction: &str, label: &str) -> f64 {
    // Equal texts normalise equally, and a right answer is often written
    // exactly as labelled: one comparison instead of a normalisation.
    let equal = if prediction == label {
        true
    } else if prediction.is_ascii() && label.is_ascii() {
        // Evaluation scores every example: compare ASCII texts word by word
        // through a cleaning view, without building a token.
        let (mut predicted, mut wanted) = (ascii_words(prediction), ascii_words(label));
        loop {
            match (predicted.next(), wanted.next()) {
                (None, None) => break true,
                (Some(a), Some(b)) if cleaned(a).eq(cleaned(b)) => {}
                _ => break false,
            }
        }
    } else {
        tokens(prediction).eq(tokens(label))
    };
    if equal { 1.0 } else { 0.0 }
}

/// The words of an ASCII text that survive normalisation (not all
/// punctuation, not an article), uncleaned.
fn ascii_words(text: &str) -> impl Iterator<Item = &[u8]> {
    // Unicode's White_Space within ASCII: tab, line feed, vertical tab, form
    // feed, carriage return and space (`split_whitespace` splits on these).
    text.as_bytes()
        .split(|b| matches!(b, b'\t'..=b'\r' | b' '))
        .filter(|word| {
            let mut clean = cleaned(word);
            // Empty once cleaned, or an article: dropped.
            !matches!(
                (clean.next(), clean.next(), clean.next(), clean.next()),
                (None, ..)
                    | (Some(b'a'), None, ..)
                    | (Some(b'a'), Some(b'n'), None, _)
                    | (Some(b't'), Some(b'h'), Some(b'e'), None)
            )
        })
}

/// An ASCII word lower-cased, its punctuation removed.
fn cleaned(word: &[u8]) -> impl Iterator<Item = u8> + '_ {
    word.iter()
        .filter(|b| !b.is_ascii_punctuation())
        .map(u8::to_ascii_lowercase)
}

/// [`Metric::contains`] on two texts.
pub fn contains(prediction: &str, label: &str) -> f64 {
    let predicted: Vec<_> = tokens(prediction).collect();
    let wanted: Vec<_> = tokens(label).collect();
    let found = wanted.is_empty()
        || predicted
            .windows(wanted.len())
            .any(|window| window == wanted.as_slice());
    if found { 1.0 } else { 0.0 }
}

/// [`Metric::token_f1`] on two texts.
pub fn token_f1(prediction: &str, label: &str) -> f64 {
    let predicted: Vec<_> = tokens(prediction).collect();
    let wanted: Vec<_> = tokens(label).collect();
    if predicted.is_empty() || wanted.is_empty() {
        return if predicted.is_empty() && wanted.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    // Multiset intersection: each label token can be matched once.
    let mut remaining: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for token in &wanted {
        *remaining.entry(&**token).or_default() += 1;
    }
    let mut common = 0usize;
    for token in &predicted {
        if let Some(count) = remaining.get_mut(&**token)
            && *count > 0
        {
            *count -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / predicted.len() as f64;
    let recall = common as f64 / wanted.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Reads a JSONL dataset: one JSON object per line (blank lines skipped).
/// Keys that are `signature` inputs become the example's inputs; every other
/// key becomes a labelled output. A line that is not an object, or lacks an
/// input or has one of the wrong type, is an error naming the file and line.
pub fn load_dataset(path: &Path, signature: &Signature) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| PromptError::Dataset {
        path: path.display().to_string(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_dataset(&text, &path.display().to_string(), signature)
}

/// [`load_dataset`] on text already read; `source` names it in errors.
///
/// An error names the line and quotes it, with the bad token underlined
/// (`--> data.jsonl:3:17`, the column counted in bytes from 1, as in the
/// JSON parser's message) and its byte offset in the file.
pub fn parse_dataset(text: &str, source: &str, signature: &Signature) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    let mut line_start = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        let start = line_start;
        line_start += line.len();
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        // `column` is the byte offset in the line, from 0.
        let error = |message: String, column: usize, width: usize| {
            let at = start + column;
            let location = SourceLocation::from_span(source, text, at..at + width);
            PromptError::Dataset {
                path: source.to_owned(),
                line: Some(number),
                message: format!("{message} (byte {at} of the file)\n{location}"),
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let first = line.len() - line.trim_start().len();
        let whole = line.trim().len();
        let value: Value = serde_json::from_str(line).map_err(|e| {
            // serde_json counts the line's own lines and columns (from 1);
            // a JSON Lines record is one line, so the column is the offset.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            let column = if e.line() > 1 {
                line.len()
            } else {
                e.column().saturating_sub(1).min(line.len())
            };
            error(format!("not valid JSON: {message}"), column, 1)
        })?;
        let Value::Object(object) = value else {
            return Err(error(
                format!("expected a JSON object, found {}", kind_of(&value)),
                first,
                whole,
            ));
        };
        let mut example = Example::default();
        for (key, value) in object {
            if signature.inputs().iter().any(|f| f.name == key) {
                example.inputs.insert(key, value);
            } else {
                example.outputs.insert(key, value);
            }
        }
        if let Err(PromptError::InvalidInputs { problems }) =
            signature.validate_inputs(&example.inputs)
        {
            return Err(error(problems.join("; "), first, whole));
        }
        examples.push(example);
    }
    Ok(examples)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs a module over examples and scores it. Build with [`Evaluate::new`].
#[derive(Clone, Debug)]
pub struct Evaluate {
    /// The metric.
    pub metric: Metric,
    /// Examples in flight at once (at least 1).
    pub concurrency: usize,
    /// Draw a progress bar with the running score (only on a terminal).
    pub progress: bool,
    /// The context of every example's run: tags for analytics; a correlation
    /// id here would be shared by every example, so leave it `None` for one
    /// per example.
    pub context: RunContext,
}

impl Evaluate {
    /// Evaluates with `metric`, 16 examples at a time, without a progress bar.
    pub fn new(metric: Metric) -> Self {
        Self {
            metric,
            concurrency: 16,
            progress: false,
            context: RunContext::default(),
        }
    }

    /// Runs `concurrency` examples at a time.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Draws a progress bar on a terminal.
    #[must_use]
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Runs `module` over `examples` and reports. Results are in example
    /// order whatever order they finish in.
    pub async fn run<M: Module + ?Sized>(&self, module: &M, examples: &[Example]) -> EvalReport {
        let started = Instant::now();
        let bar = if self.progress && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(examples.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} examples  {msg}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut slots: Vec<Option<ExampleResult>> = vec![None; examples.len()];
        let mut running = 0.0;
        let mut done = 0usize;
        let mut finished = futures::stream::iter(examples.iter().enumerate().map(|(index, ex)| {
            let context = self.context.clone();
            async move {
                let call_started = Instant::now();
                let outcome = module.forward_with(&ex.inputs, context).await;
                (index, self.score_one(index, ex, outcome, call_started))
            }
        }))
        .buffer_unordered(self.concurrency.max(1));
        while let Some((index, result)) = finished.next().await {
            done += 1;
            running += result.score;
            if !bar.is_hidden() {
                bar.set_message(format!("score {:.1}%", 100.0 * running / done as f64));
                bar.inc(1);
            }
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(result);
            }
        }
        bar.finish_and_clear();
        let results: Vec<ExampleResult> = slots.into_iter().flatten().collect();
        EvalReport::new(self.metric.name(), results, started.elapsed())
    }

    /// [`run`](Self::run) spread over spawned tasks, one per two runtime
    /// worker threads, so formatting, parsing and scoring use several cores
    /// (`run` polls all its examples from the calling task). The
    /// `concurrency` examples in flight are shared out between the tasks.
    /// Why half the workers: a call's own work is small beside its HTTP
    /// exchange, whose connection tasks need the other workers. Against the
    /// in-process mock on two cores, 1,000 examples at concurrency 32 ran at
    /// about 25k calls/s from one task, 22.5k from two and 20k from 32 (one
    /// per example). Needs an owned module and dataset, and a Tokio runtime;
    /// the report is the same as `run`'s.
    pub async fn run_shared<M: Module + 'static>(
        &self,
        module: Arc<M>,
        examples: Arc<[Example]>,
    ) -> EvalReport {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bar = if self.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(examples.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let concurrency = self.concurrency.max(1).min(examples.len().max(1));
        let tasks = tokio::runtime::Handle::try_current()
            .map_or(1, |runtime| runtime.metrics().num_workers() / 2)
            .clamp(1, concurrency);
        let workers: Vec<_> = (0..tasks)
            .map(|task| {
                // `concurrency` split as evenly as it goes.
                let in_flight = concurrency / tasks + usize::from(task < concurrency % tasks);
                let (module, examples, next, bar) = (
                    Arc::clone(&module),
                    Arc::clone(&examples),
                    Arc::clone(&next),
                    bar.clone(),
                );
                let evaluate = Arc::new(self.clone());
                tokio::spawn(async move {
                    let count = examples.len();
                    let pulled = std::iter::from_fn(move || {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        (index < count).then_some(index)
                    });
                    // Owned futures (an `Arc` each): futures borrowing the
                    // task's own locals fail the compiler's `Send` proof
                    // for `tokio::spawn` (a higher-ranked lifetime limit).
                    let mut finished = futures::stream::iter(pulled)
                        .map(|index| {
                            let (module, examples, evaluate) = (
                                Arc::clone(&module),
                                Arc::clone(&examples),
                                Arc::clone(&evaluate),
                            );
                            async move {
                                let example = examples.get(index)?;
                                let call_started = Instant::now();
                                let outcome = module
                                    .forward_with(&example.inputs, evaluate.context.clone())
                                    .await;
                                Some(evaluate.score_one(index, example, outcome, call_started))
                            }
                        })
                        .buffer_unordered(in_flight);
                    let mut done = Vec::new();
                    while let Some(result) = finished.next().await {
                        done.extend(result);
                        if !bar.is_hidden() {
                            bar.inc(1);
                        }
                    }
                    done
                })
            })
            .collect();
        let mut slots: Vec<Option<ExampleResult>> = vec![None; examples.len()];
        for worker in workers {
            match worker.await {
                Ok(done) => {
                    for result in done {
                        let index = result.index;
                        if let Some(slot) = slots.get_mut(index) {
                            *slot = Some(result);
                        }
                    }
                }
                // A worker that panicked loses the examples it held; they
                // are reported as failed below rather than lost.
                Err(error) => tracing::error!(%error, "an evaluation worker failed"),
            }
        }
        bar.finish_and_clear();
        let results = slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| {
                slot.unwrap_or_else(|| ExampleResult {
                    index,
                    score: 0.0,
                    passed: false,
                    outputs: Map::new(),
                    error: Some("the evaluation worker running it failed".to_owned()),
                    usage: Usage::default(),
                    calls: 0,
                    latency: Duration::ZERO,
                })
            })
            .collect();
        EvalReport::new(self.metric.name(), results, started.elapsed())
    }

    fn score_one(
        &self,
        index: usize,
        example: &Example,
        outcome: Result<Prediction>,
        started: Instant,
    ) -> ExampleResult {
        match outcome {
            Ok(prediction) => {
                let score = self.metric.score(example, &prediction);
                ExampleResult {
                    index,
                    score,
                    passed: self.metric.passes(score),
                    calls: prediction.trace.len() as u64,
                    usage: prediction.usage,
                    latency: prediction.latency,
                    outputs: prediction.outputs,
                    error: None,
                }
            }
            Err(error) => ExampleResult {
                index,
                score: 0.0,
                passed: false,
                calls: calls_behind(&error),
                usage: Usage::default(),
                latency: started.elapsed(),
                outputs: Map::new(),
                error: Some(error.to_string()),
            },
        }
    }
}

/// The LM calls a failed run made before failing: an error carries no trace,
/// so this is inferred from its kind (a provider error ends the call it
/// happened in; a parse error follows the call and its re-ask).
fn calls_behind(error: &PromptError) -> u64 {
    match error {
        PromptError::Client(_) => 1,
        PromptError::Parse { .. } => 2,
        _ => 0,
    }
}

/// One example's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    /// Its position in the dataset (0-based).
    pub index: usize,
    /// Its score (0 when it failed).
    pub score: f64,
    /// Whether the score passes the metric's threshold.
    pub passed: bool,
    /// The prediction's outputs (empty when it failed).
    pub outputs: Map<String, Value>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// LM calls made.
    pub calls: u64,
    /// Time from start to end.
    #[serde(rename = "latency_ms", with = "dspex_client::duration_ms")]
    pub latency: Duration,
}

/// What an evaluation found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The metric's name.
    pub metric: String,
    /// The mean score over every example; failed ones count as 0.
    pub score: f64,
    /// Examples whose score passed.
    pub passed: usize,
    /// Examples run.
    pub total: usize,
    /// The 95% Wilson score interval of the pass rate `passed / total`, so a
    /// gain can be told from noise: `[low, high]`, both in `0..=1`.
    #[serde(default)]
    pub pass_rate_ci95: [f64; 2],
    /// Examples that failed with an error.
    pub errors: usize,
    /// Every example's result, in dataset order.
    pub results: Vec<ExampleResult>,
    /// Tokens used by all examples.
    pub usage: Usage,
    /// LM calls made.
    pub calls: u64,
    /// Wall-clock time of the run.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
    /// LM calls per second of wall-clock time.
    pub calls_per_second: f64,
}

impl EvalReport {
    fn new(metric: String, results: Vec<ExampleResult>, duration: Duration) -> Self {
        let usage: Usage = results.iter().map(|r| r.usage).sum();
        let (mut sum, mut passed, mut errors, mut calls) = (0.0, 0, 0, 0u64);
        for result in &results {
            sum += result.score;
            passed += usize::from(result.passed);
            errors += usize::from(result.error.is_some());
            calls = calls.saturating_add(result.calls);
        }
        let total = results.len();
        Self {
            metric,
            score: if total == 0 { 0.0 } else { sum / total as f64 },
            passed,
            total,
            pass_rate_ci95: wilson_interval(passed, total),
            errors,
            results,
            usage,
            calls,
            duration,
            calls_per_second: calls as f64 / duration.as_secs_f64().max(f64::EPSILON),
        }
    }
}

/// The 95% Wilson score interval of `passed` successes in `total` trials.
/// Unlike the normal approximation it stays inside `[0, 1]` and is honest
/// for small samples and rates near 0 or 1 (the usual case for small
/// evaluation sets).
pub fn wilson_interval(passed: usize, total: usize) -> [f64; 2] {
    if total == 0 {
        return [0.0, 1.0];
    }
    const Z: f64 = 1.959_963_984_540_054; // the 97.5th percentile of N(0, 1)
    let n = total as f64;
    let p = passed as f64 / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:.1}% ({}/{} passed, {} errors) [95% CI {:.1}-{:.1}%] in {:.2}s; {} calls ({:.0}/s), {} tokens",
            self.metric,
            100.0 * self.score,
            self.passed,
            self.total,
            self.errors,
            100.0 * self.pass_rate_ci95[0],
            100.0 * self.pass_rate_ci95[1],
            self.duration.as_secs_f64(),
            self.calls,
            self.calls_per_second,
            self.usage.total_tokens()
        )
    }
}
