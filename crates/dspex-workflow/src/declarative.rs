//! Workflows written as TOML files.
//!
//! ```toml
//! name = "multi_hop_qa"
//! inputs = ["question"]          # what a run must be given
//! outputs = ["answer"]           # what it returns as a module (all keys if absent)
//!
//! [defaults]                     # for every step that does not say
//! provider = "mock"
//!
//! [[steps]]
//! name = "decompose"
//! module = "chain_of_thought"    # or "predict"
//! signature = "question -> sub_question"
//! instructions = "Ask one simpler question that helps answer the original."
//! retry = { attempts = 3, backoff = "200ms", never = ["parse"] }
//! timeout = "30s"
//!
//! [[steps]]
//! name = "answer_sub"
//! module = "predict"
//! signature = "question -> answer"
//! inputs = { question = "sub_question" }   # signature field = context key
//! outputs = { answer = "sub_answer" }
//! ```
//!
//! An agent step names its tools (registered by the application, or served
//! by MCP servers in the config; see [`load_file_with_tools`]):
//!
//! ```toml
//! [[steps]]
//! name = "research"
//! module = "react"                 # a ReAct agent
//! signature = "question -> answer"
//! tools = ["search", "fetch_page"]
//! max_iters = 8                    # 20 if absent
//! mode = "auto"                    # or "native" / "text"
//! ```
//!
//! A step may instead hold `parallel = [ {step}, ... ]` (with `merge =
//! "error" | "last_wins" | "collect"`), or `map = { over = "items", as =
//! "item", output = "answers", collect = "answer", concurrency = 4 }` next to
//! its module, to run the module once per element. `template = "file.j2"`
//! (relative to the workflow file) renders the instructions from a template
//! with `template_vars`.
//!
//! Loading checks the whole file before anything runs and reports every
//! problem with its line: unknown modules and providers, bad signatures,
//! inputs no earlier step provides, mappings of fields the signature lacks,
//! branches that would overwrite each other, durations that do not parse.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dspex_client::Client;
use dspex_core::config::{Focus, SourceLocation, toml_span};
use dspex_core::protect::Backoff;
use dspex_prompt::template::PromptTemplate;
use dspex_prompt::{
    AgentMode, CallSettings, ChainOfThought, Lm, Module, Predict, ReAct, Signature, Tool,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use crate::engine::{MergeRule, Node, RetryPolicy, StepModule, Workflow};
use crate::error::{FileProblem, WorkflowError};

#[derive(Debug, Deserialize)]
struct RawWorkflow {
    name: String,
    /// For people reading the file; accepted and not used.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted so files may describe themselves")]
    description: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    outputs: Option<Vec<String>>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDefaults {
    provider: Option<String>,
    model: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawStep {
    name: Spanned<String>,
    module: Option<String>,
    signature: Option<String>,
    instructions: Option<String>,
    template: Option<String>,
    #[serde(default)]
    template_vars: Map<String, Value>,
    provider: Option<String>,
    model: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    retry: Option<RawRetry>,
    timeout: Option<String>,
    parallel: Option<Vec<RawStep>>,
    merge: Option<String>,
    map: Option<RawMap>,
    tools: Option<Vec<String>>,
    max_iters: Option<usize>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRetry {
    attempts: u32,
    #[serde(default)]
    backoff: Option<String>,
    #[serde(default)]
    never: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawMap {
    over: String,
    #[serde(rename = "as", default)]
    item_as: Option<String>,
    output: String,
    collect: Option<String>,
    concurrency: Option<usize>,
}

/// Loads and checks the workflow file at `path`, building its modules on
/// `client` (whose providers the file may name). Steps that name no provider
/// (here or in `[defaults]`) use `default_provider`, else the client's.
pub fn load_file(
    path: &Path,
    client: &Client,
    default_provider: Option<&str>,
) -> Result<Workflow, WorkflowError> {
    load_file_with_tools(path, client, default_provider, &[])
}

/// Like [`load_file`], with `tools` that `module = "react"` steps may name.
pub fn load_file_with_tools(
    path: &Path,
    client: &Client,
    default_provider: Option<&str>,
    tools: &[Tool],
) -> Result<Workflow, WorkflowError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorkflowError::File {
        path: path.display().to_string(),
        problems: vec![FileProblem {
            line: None,
            column: None,
            location: "file".to_owned(),
            message: format!("cannot read it: {e}"),
            at: None,
        }],
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_with_tools(
        &text,
        &path.display().to_string(),
        &base,
        client,
        default_provider,
        tools,
    )
}

/// Parses and checks workflow `text` (`label` names it in errors; templates
/// are read relative to `base`). See [`load_file`] for `default_provider`.
pub fn parse(
    text: &str,
    label: &str,
    base: &Path,
    client: &Client,
    default_provider: Option<&str>,
) -> Result<Workflow, WorkflowError> {
    parse_with_tools(text, label, base, client, default_provider, &[])
}

/// Like [`parse`], with `tools` that `module = "react"` steps may name.
pub fn parse_with_tools(
    text: &str,
    label: &str,
    base: &Path,
    client: &Client,
    default_provider: Option<&str>,
    tools: &[Tool],
) -> Result<Workflow, WorkflowError> {
    let syntax = |e: toml::de::Error| WorkflowError::File {
        path: label.to_owned(),
        problems: vec![FileProblem::new(
            e.span()
                .map(|span| SourceLocation::from_span(label, text, span)),
            "document".to_owned(),
            e.message().trim_end().to_owned(),
        )],
    };
    let document = toml::de::DeTable::parse(text).map_err(syntax)?;
    // Unknown keys are collected, not refused one at a time: a file with
    // several gets them all reported at once, each at its own line.
    let mut unknown = Vec::new();
    let raw: RawWorkflow =
        serde_ignored::deserialize(toml::de::Deserializer::from(document.clone()), |path| {
            unknown.push(path_segments(&path));
        })
        .map_err(syntax)?;
    let unknown_keys: Vec<FileProblem> = unknown
        .iter()
        .map(|segments| {
            let location = segments.join(".");
            FileProblem::new(
                toml_span(text, &location, Focus::Key)
                    .map(|(span, _)| SourceLocation::from_span(label, text, span)),
                location,
                format!(
                    "unknown key `{}`",
                    segments.last().map_or("", String::as_str)
                ),
            )
        })
        .collect();
    let mut checker = Checker {
        text,
        label,
        base: base.to_path_buf(),
        client,
        default_provider,
        tools,
        problems: Vec::new(),
        names: BTreeSet::new(),
    };
    let workflow = checker.build(&raw);
    checker.problems.splice(0..0, unknown_keys);
    if checker.problems.is_empty()
        && let Some(workflow) = workflow
    {
        workflow.validate()?;
        return Ok(workflow);
    }
    Err(WorkflowError::File {
        path: label.to_owned(),
        problems: checker.problems,
    })
}

/// An ignored field's path as keys and indexes (`Option` and newtype
/// levels, which the document does not have, left out).
fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = path_segments(parent);
            segments.push(index.to_string());
            segments
        }
        Path::Map { parent, key } => {
            let mut segments = path_segments(parent);
            segments.push(key.clone());
            segments
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_segments(parent),
    }
}

impl FileProblem {
    fn new(at: Option<SourceLocation>, location: String, message: String) -> Self {
        Self {
            line: at.as_ref().map(|at| at.line),
            column: at.as_ref().map(|at| at.column),
            location,
            message,
            at,
        }
    }
}

/// Keys a step may take from `[defaults]`: a problem with one the step does
/// not set is in `[defaults]`.
const DEFAULTED: [&str; 4] = ["provider", "model", "temperature", "max_tokens"];

struct Checker<'a> {
    text: &'a str,
    label: &'a str,
    base: PathBuf,
    client: &'a Client,
    default_provider: Option<&'a str>,
    tools: &'a [Tool],
    problems: Vec<FileProblem>,
    names: BTreeSet<String>,
}

/// Where a problem is: the key path of its table in the document
/// (`steps.2`, empty for the top level) and its name in messages.
struct Place {
    path: String,
    location: String,
}

impl Checker<'_> {
    /// A problem with `key` of `place`'s table (the table itself when
    /// empty), pointed at in the file: the key's value, else (when the file
    /// does not set it) `[defaults]`'s, else the step's `name`.
    fn problem(&mut self, place: &Place, key: &str, message: impl Into<String>) {
        self.problem_at(place, key, key, message);
    }

    /// Like [`Checker::problem`], pointed at `at` (a key of the same table)
    /// when the file does not set `key`: a signature field with no
    /// `inputs` mapping is the signature's.
    fn problem_at(&mut self, place: &Place, key: &str, at: &str, message: impl Into<String>) {
        let location = if key.is_empty() {
            place.location.clone()
        } else {
            format!("{}.{key}", place.location)
        };
        let within = |key: &str| match (place.path.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => place.path.clone(),
            (false, false) => format!("{}.{key}", place.path),
        };
        let mut candidates = vec![within(key), within(at)];
        if !place.path.is_empty() && DEFAULTED.contains(&key) {
            candidates.push(format!("defaults.{key}"));
        }
        if !place.path.is_empty() {
            candidates.push(within("name"));
        }
        let span =
            candidates
                .iter()
                .filter(|path| !path.is_empty())
                .find_map(|path| match toml_span(self.text, path, Focus::Value) {
                    Some((span, true)) => Some(span),
                    _ => None,
                });
        let at = span.map(|span| SourceLocation::from_span(self.label, self.text, span));
        self.problems
            .push(FileProblem::new(at, location, message.into()));
    }

    fn build(&mut self, raw: &RawWorkflow) -> Option<Workflow> {
        let top = Place {
            path: String::new(),
            location: "workflow".to_owned(),
        };
        if raw.name.trim().is_empty() {
            self.problem(&top, "name", "the workflow needs a name");
        }
        if raw.steps.is_empty() {
            self.problem(&top, "steps", "the workflow has no steps");
        }
        let mut available: BTreeSet<String> = raw.inputs.iter().cloned().collect();
        let input_keys: Vec<&str> = raw.inputs.iter().map(String::as_str).collect();
        let mut workflow = Workflow::new(&raw.name).inputs(&input_keys);
        let mut complete = true;
        for (index, step) in raw.steps.iter().enumerate() {
            let place = Place {
                path: format!("steps.{index}"),
                location: format!("steps[{index}] ({})", step.name.get_ref()),
            };
            match self.step(step, &place, &raw.defaults, &mut available) {
                Some(node) => workflow = workflow.then(node),
                None => complete = false,
            }
        }
        if let Some(outputs) = &raw.outputs {
            for key in outputs {
                if !available.contains(key) {
                    self.problem(
                        &top,
                        "outputs",
                        format!("`{key}` is neither an input nor written by any step"),
                    );
                }
            }
            let keys: Vec<&str> = outputs.iter().map(String::as_str).collect();
            workflow = workflow.outputs(&keys);
        }
        complete.then_some(workflow)
    }

    /// Checks and builds one top-level step; adds the keys it writes to
    /// `available`.
    fn step(
        &mut self,
        step: &RawStep,
        place: &Place,
        defaults: &RawDefaults,
        available: &mut BTreeSet<String>,
    ) -> Option<Node> {
        let name = step.name.get_ref().clone();
        if !self.names.insert(name.clone()) {
            self.problem(
                place,
                "name",
                format!("another step is already named `{name}`"),
            );
        }
        let node = if let Some(branches) = &step.parallel {
            if step.module.is_some() || step.map.is_some() {
                self.problem(
                    place,
                    "",
                    "a parallel step holds branches; it cannot also have a module or a map",
                );
            }
            let merge = match step.merge.as_deref() {
                None | Some("error") => MergeRule::Error,
                Some("last_wins") => MergeRule::LastWins,
                Some("collect") => MergeRule::Collect,
                Some(other) => {
                    self.problem(
                        place,
                        "merge",
                        format!("unknown merge rule `{other}`; use error, last_wins or collect"),
                    );
                    MergeRule::Error
                }
            };
            if branches.is_empty() {
                self.problem(
                    place,
                    "parallel",
                    "a parallel step needs at least one branch",
                );
            }
            let mut nodes = Vec::new();
            let mut written: BTreeMap<String, String> = BTreeMap::new();
            let mut complete = true;
            for (i, branch) in branches.iter().enumerate() {
                let branch_place = Place {
                    path: format!("{}.parallel.{i}", place.path),
                    location: format!(
                        "{}.parallel[{i}] ({})",
                        place.location,
                        branch.name.get_ref()
                    ),
                };
                if branch.parallel.is_some() || branch.map.is_some() {
                    self.problem(&branch_place, "", "branches of a parallel step are module steps (nest parallel or map steps in code)");
                    complete = false;
                    continue;
                }
                if !self.names.insert(branch.name.get_ref().clone()) {
                    self.problem(
                        &branch_place,
                        "name",
                        format!("another step is already named `{}`", branch.name.get_ref()),
                    );
                }
                // Branches see the context as it was before the group.
                let mut branch_writes = available.clone();
                let (node, writes) = self.module_step(
                    branch,
                    &branch_place,
                    defaults,
                    &mut branch_writes,
                    &BTreeSet::new(),
                );
                for key in writes {
                    if let Some(other) = written.insert(key.clone(), branch.name.get_ref().clone())
                        && merge == MergeRule::Error
                    {
                        self.problem(
                            &branch_place,
                            "outputs",
                            format!("branches `{other}` and `{}` both write `{key}`; set `merge = \"last_wins\"` or `\"collect\"` on the parallel step", branch.name.get_ref()),
                        );
                    }
                }
                match node {
                    Some(node) => nodes.push(node),
                    None => complete = false,
                }
            }
            available.extend(written.into_keys());
            if !complete {
                return None;
            }
            Some(Node::parallel(&name, nodes).merge(merge))
        } else if let Some(map) = &step.map {
            if !available.contains(&map.over) {
                self.problem(
                    place,
                    "map.over",
                    format!(
                        "`{}` is neither an input nor written by an earlier step",
                        map.over
                    ),
                );
            }
            let item_as = map.item_as.clone().unwrap_or_else(|| "item".to_owned());
            let extra: BTreeSet<String> =
                [item_as.clone(), "index".to_owned()].into_iter().collect();
            let mut inner_available = available.clone();
            let (inner, writes) =
                self.module_step(step, place, defaults, &mut inner_available, &extra);
            if let Some(key) = &map.collect
                && !writes.contains(key)
            {
                self.problem(
                    place,
                    "map.collect",
                    format!("the step does not write `{key}`"),
                );
            }
            if map.concurrency == Some(0) {
                self.problem(place, "map.concurrency", "must be at least 1");
            }
            available.insert(map.output.clone());
            // The step's retry and timeout apply to each element's run.
            let mut node = Node::map(&name, &map.over, &map.output, inner?)
                .item_as(&item_as)
                .concurrency(map.concurrency.unwrap_or(4));
            if let Some(key) = &map.collect {
                node = node.collect(key);
            }
            Some(node)
        } else {
            let (node, writes) =
                self.module_step(step, place, defaults, available, &BTreeSet::new());
            available.extend(writes);
            node
        }?;
        Some(node)
    }

    /// Checks and builds a module step; returns it and the keys it writes.
    /// `extra` are keys visible only to this step (a map's item and index).
    fn module_step(
        &mut self,
        step: &RawStep,
        place: &Place,
        defaults: &RawDefaults,
        available: &mut BTreeSet<String>,
        extra: &BTreeSet<String>,
    ) -> (Option<Node>, Vec<String>) {
        let name = step.name.get_ref();
        let module = step.module.as_deref();
        if !matches!(module, Some("predict" | "chain_of_thought" | "react")) {
            match module {
                None => self.problem(place, "module", "the step needs `module = \"predict\"`, `\"chain_of_thought\"` or `\"react\"` (or `parallel`)"),
                Some(other) => self.problem(place, "module", format!("unknown module `{other}`; use predict, chain_of_thought or react")),
            }
        }
        let agent = self.agent_settings(step, place, module == Some("react"));
        let signature = match step.signature.as_deref() {
            None => {
                self.problem(
                    place,
                    "signature",
                    "the step needs a signature such as \"question -> answer\"",
                );
                None
            }
            Some(text) => match Signature::parse(text) {
                Ok(signature) => Some(signature),
                Err(e) => {
                    self.problem(place, "signature", e.to_string());
                    None
                }
            },
        };
        let provider = step
            .provider
            .clone()
            .or_else(|| defaults.provider.clone())
            .or_else(|| self.default_provider.map(str::to_owned))
            .or_else(|| self.client.default_provider().map(str::to_owned));
        match &provider {
            None => self.problem(
                place,
                "provider",
                "no provider: name one here, in [defaults], or set default_provider in the config",
            ),
            Some(id) if self.client.provider(id).is_err() => self.problem(
                place,
                "provider",
                format!(
                    "unknown provider `{id}`; configured: {}",
                    self.client.provider_ids().join(", ")
                ),
            ),
            Some(_) => {}
        }
        let timeout = step
            .timeout
            .as_deref()
            .and_then(|text| match humantime_parse(text) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.problem(place, "timeout", message);
                    None
                }
            });
        let retry = step.retry.as_ref().and_then(|raw| {
            if raw.attempts == 0 {
                self.problem(place, "retry.attempts", "must be at least 1");
                return None;
            }
            let base = match raw.backoff.as_deref().map(humantime_parse) {
                None => Backoff::default().base,
                Some(Ok(d)) => d,
                Some(Err(message)) => {
                    self.problem(place, "retry.backoff", message);
                    return None;
                }
            };
            let mut policy = RetryPolicy::attempts(raw.attempts, base);
            for kind in &raw.never {
                policy = policy.never_retry(kind.clone());
            }
            Some(policy)
        });
        let Some(signature) = signature else {
            return (None, Vec::new());
        };
        // Inputs: each signature input reads a key that must exist by now.
        for field in step.inputs.keys() {
            if !signature.inputs().iter().any(|f| f.name == *field) {
                self.problem(
                    place,
                    &format!("inputs.{field}"),
                    format!("the signature has no input field `{field}`"),
                );
            }
        }
        for field in signature.inputs() {
            let key = step.inputs.get(&field.name).unwrap_or(&field.name);
            if !available.contains(key) && !extra.contains(key) {
                self.problem_at(
                    place,
                    &format!("inputs.{}", field.name),
                    "signature",
                    format!("reads `{key}`, which is neither a workflow input nor written by an earlier step"),
                );
            }
        }
        for field in step.outputs.keys() {
            if !signature.outputs().iter().any(|f| f.name == *field) {
                self.problem(
                    place,
                    &format!("outputs.{field}"),
                    format!("the signature has no output field `{field}`"),
                );
            }
        }
        let mut writes: Vec<String> = signature
            .outputs()
            .iter()
            .map(|f| step.outputs.get(&f.name).unwrap_or(&f.name).clone())
            .collect();
        if module == Some("chain_of_thought") {
            writes.push(
                step.outputs
                    .get("reasoning")
                    .cloned()
                    .unwrap_or_else(|| "reasoning".to_owned()),
            );
        }
        let template = match &step.template {
            None => None,
            Some(file) => {
                let path = self.base.join(file);
                match std::fs::read_to_string(&path) {
                    Err(e) => {
                        self.problem(
                            place,
                            "template",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                    Ok(source) => match PromptTemplate::create(file, &source) {
                        Ok(template) => Some(template),
                        Err(e) => {
                            self.problem(place, "template", e.to_string());
                            None
                        }
                    },
                }
            }
        };
        if step.template.is_some() && step.instructions.is_some() {
            self.problem(place, "", "give `instructions` or `template`, not both");
        }
        let Some(provider) = provider else {
            return (None, writes);
        };
        if self.client.provider(&provider).is_err() || !self.problems.is_empty() {
            return (None, writes);
        }
        let settings = CallSettings {
            model: step.model.clone().or_else(|| defaults.model.clone()),
            temperature: step.temperature.or(defaults.temperature),
            max_tokens: step.max_tokens.or(defaults.max_tokens),
            n: None,
        };
        let signature = match &step.instructions {
            Some(text) => signature.with_instructions(text.clone()),
            None => signature,
        };
        let lm = Lm::new(self.client, &provider);
        let mut module = if let Some((tools, max_iters, mode)) = agent {
            match ReAct::new(signature, tools, lm) {
                Ok(agent) => {
                    let mut agent = agent.mode(mode);
                    if let Some(n) = max_iters {
                        agent = agent.max_iters(n);
                    }
                    for (_, inner) in agent.predictors_mut() {
                        *inner = inner.clone().with_settings(settings.clone());
                    }
                    StepModule::ReAct(Box::new(agent))
                }
                Err(e) => {
                    self.problem(place, "tools", e.to_string());
                    return (None, writes);
                }
            }
        } else if module == Some("chain_of_thought") {
            let mut cot = ChainOfThought::new(signature, lm);
            let inner = cot.predict_mut();
            *inner = inner.clone().with_settings(settings);
            StepModule::ChainOfThought(cot)
        } else {
            StepModule::Predict(Predict::new(signature, lm).with_settings(settings))
        };
        if let Some(template) = template {
            let inner = match &mut module {
                StepModule::Predict(p) => Some(p),
                StepModule::ChainOfThought(c) => Some(c.predict_mut()),
                StepModule::ReAct(_) | StepModule::Shared(_) => None,
            };
            if let Some(inner) = inner
                && let Err(e) =
                    inner.set_instructions_template(template, step.template_vars.clone())
            {
                self.problem(place, "template_vars", e.to_string());
                return (None, writes);
            }
        }
        let mut node = Node::module(name, module);
        for (field, key) in &step.inputs {
            node = node.input(field, key);
        }
        for (field, key) in &step.outputs {
            node = node.output(field, key);
        }
        if let Some(policy) = retry {
            node = node.retry(policy);
        }
        if let Some(limit) = timeout {
            node = node.timeout(limit);
        }
        (Some(node), writes)
    }
}

impl Checker<'_> {
    /// A react step's tools, step limit and mode; `None` for other modules
    /// (where the agent keys are a problem).
    fn agent_settings(
        &mut self,
        step: &RawStep,
        place: &Place,
        is_agent: bool,
    ) -> Option<(Vec<Tool>, Option<usize>, AgentMode)> {
        if !is_agent {
            for (key, given) in [
                ("tools", step.tools.is_some()),
                ("max_iters", step.max_iters.is_some()),
                ("mode", step.mode.is_some()),
            ] {
                if given {
                    self.problem(place, key, "only a `module = \"react\"` step takes this");
                }
            }
            return None;
        }
        if step.template.is_some() {
            self.problem(
                place,
                "template",
                "a react step takes `instructions`, not a template",
            );
        }
        let mut tools = Vec::new();
        for name in step.tools.iter().flatten() {
            match self.tools.iter().find(|tool| tool.name() == name) {
                Some(tool) => tools.push(tool.clone()),
                None => {
                    let known: Vec<&str> = self.tools.iter().map(Tool::name).collect();
                    self.problem(
                        place,
                        "tools",
                        format!(
                            "unknown tool `{name}`; {}",
                            if known.is_empty() {
                                "no tools are registered (the application registers them, or [mcp.servers] in the config)".to_owned()
                            } else {
                                format!("registered: {}", known.join(", "))
                            }
                        ),
                    );
                }
            }
        }
        if step.max_iters == Some(0) {
            self.problem(place, "max_iters", "must be at least 1");
        }
        let mode = match step.mode.as_deref() {
            None | Some("auto") => AgentMode::Auto,
            Some("native") => AgentMode::Native,
            Some("text") => AgentMode::Text,
            Some(other) => {
                self.problem(
                    place,
                    "mode",
                    format!("unknown agent mode `{other}`; use auto, native or text"),
                );
                AgentMode::Auto
            }
        };
        Some((tools, step.max_iters, mode))
    }
}

fn humantime_parse(text: &str) -> Result<Duration, String> {
    dspex_core::config::parse_window("duration", text).map_err(|e| match e {
        dspex_core::CoreError::Config { message, .. } => message,
        other => other.to_string(),
    })
}
