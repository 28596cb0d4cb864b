//! Few-shot optimisation of a template from scored examples.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::compile::{DEMOS_FUNCTION, literal};
use super::{Def, Part, PromptTemplate};
use crate::error::Result;

/// One recorded run of a template: the inputs it was rendered with, the
/// output that came back, and how good that output was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The input fields, by name (shown in name order in a demo).
    #[serde(default)]
    pub inputs: BTreeMap<String, Value>,
    /// The output. A string is shown as is, anything else as compact JSON.
    pub output: Value,
    /// The score of the output; higher is better.
    pub score: f64,
}

impl Example {
    /// An example with no inputs yet.
    pub fn new(output: impl Into<Value>, score: f64) -> Self {
        Self {
            inputs: BTreeMap::new(),
            output: output.into(),
            score,
        }
    }

    /// Adds an input field.
    #[must_use]
    pub fn with_input(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.inputs.insert(name.into(), value.into());
        self
    }
}

/// How [`optimize_with`] chooses demos.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizeOptions {
    /// The most demos to keep (default 4).
    pub k: usize,
    /// The lowest score a demo may have (default 0.7; inclusive).
    pub threshold: f64,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        Self {
            k: 4,
            threshold: 0.7,
        }
    }
}

/// One demo as the optimised template reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Demo {
    inputs: Vec<DemoField>,
    output: String,
}

/// One input field of a demo.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DemoField {
    name: String,
    value: String,
}

/// The demo section an optimised template renders before its base template,
/// which it includes by name. The demos are data (read through
/// `dspex_demos()`), never template source, so their text is printed
/// literally.
fn demo_source(base: &str) -> String {
    format!(
        "{{% with demos = {DEMOS_FUNCTION}() %}}{{% if demos %}}Examples:\n\n\
         {{% for demo in demos %}}Input:\n\
         {{% for field in demo.inputs %}}{{{{ field.name }}}}: {{{{ field.value }}}}\n{{% endfor %}}\
         Output: {{{{ demo.output }}}}\n\n\
         {{% endfor %}}{{% endif %}}{{% endwith %}}\
         {{% include {} %}}",
        literal(base)
    )
}

/// Text of a value in a demo: strings as they are, anything else as compact
/// JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// [`optimize_with`] with the default options (k = 4, threshold = 0.7).
///
/// # Errors
///
/// As [`optimize_with`].
pub fn optimize(template: &PromptTemplate, performance_data: &[Example]) -> Result<PromptTemplate> {
    optimize_with(template, performance_data, OptimizeOptions::default())
}

/// A new version of `template` whose output starts with few-shot demos.
///
/// The demos are the examples whose score is at least `options.threshold`
/// (NaN scores never are), best first; equal scores keep their order in
/// `performance_data`; at most `options.k` are kept. The output is
///
/// ```text
/// Examples:
///
/// Input:
/// <input name>: <input value>
/// …
/// Output: <output>
///
/// … (one such paragraph per demo)
/// <the output of template>
/// ```
///
/// with no `Examples:` section at all when no demo is chosen. The result has
/// a new id, the same name, version `template.version() + 1`, the same
/// variables, and `template`'s metadata plus `optimized_from` (`{"id",
/// "version"}` of `template`), `demo_count`, `demo_indices` (positions in
/// `performance_data`, in demo order), `k` and `threshold`; with no demo it
/// also has `demo_note` saying why. Optimising an already optimised template
/// replaces its demos rather than stacking a second section. The same
/// template and data always give the same source and output.
///
/// # Errors
///
/// Only if the template cannot be rebuilt, which does not happen for a
/// template that was built before.
pub fn optimize_with(
    template: &PromptTemplate,
    performance_data: &[Example],
    options: OptimizeOptions,
) -> Result<PromptTemplate> {
    let base = match (&template.inner.def.demos, template.inner.def.parts.first()) {
        (Some(_), Some(part)) => part.template.clone(),
        _ => template.clone(),
    };

    let mut chosen: Vec<(usize, &Example)> = performance_data
        .iter()
        .enumerate()
        .filter(|(_, example)| example.score >= options.threshold)
        .collect();
    chosen.sort_by(|(ia, a), (ib, b)| b.score.total_cmp(&a.score).then(ia.cmp(ib)));
    chosen.truncate(options.k);

    let demos: Vec<Demo> = chosen
        .iter()
        .map(|(_, example)| Demo {
            inputs: example
                .inputs
                .iter()
                .map(|(name, value)| DemoField {
                    name: name.clone(),
                    value: text(value),
                })
                .collect(),
            output: text(&example.output),
        })
        .collect();
    let indices: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();

    let mut metadata = template.metadata().clone();
    metadata.insert(
        "optimized_from".to_owned(),
        json!({ "id": template.id().to_string(), "version": template.version() }),
    );
    metadata.insert("demo_count".to_owned(), json!(demos.len()));
    metadata.insert("demo_indices".to_owned(), json!(indices));
    metadata.insert("k".to_owned(), json!(options.k));
    metadata.insert("threshold".to_owned(), json!(options.threshold));
    metadata.remove("demo_note");
    if demos.is_empty() {
        let note = if options.k == 0 {
            "no demos: k is 0".to_owned()
        } else {
            format!(
                "no demos: none of the {} examples scored at least {}",
                performance_data.len(),
                options.threshold
            )
        };
        metadata.insert("demo_note".to_owned(), Value::String(note));
    }

    Def {
        id: Uuid::new_v4(),
        name: base.name().to_owned(),
        version: template.version().saturating_add(1),
        source: demo_source(base.name()),
        metadata,
        parent: None,
        parts: vec![Part {
            alias: base.name().to_owned(),
            template: base,
        }],
        library: Arc::default(),
        demos: Some(demos),
    }
    .build()
}
