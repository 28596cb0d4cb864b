//! Prompt templates: Jinja-syntax prompts compiled once (with minijinja 2),
//! rendered strictly, extended, composed and optimised with few-shot demos.
//!
//! A [`PromptTemplate`] is parsed when it is created and keeps its compiled
//! form (one minijinja environment holding the template and every template it
//! can refer to), so rendering does no parsing and no analysis. Rendering is
//! strict: the variables the template needs are known up front
//! ([`PromptTemplate::variables`]) and a render that lacks any of them fails
//! with [`PromptError::MissingVariables`] listing all of them; undefined
//! attribute access inside the template fails with
//! [`PromptError::TemplateRender`] and the line. Output is plain text: there
//! is no HTML escaping, and a trailing newline in the source is kept
//! (minijinja's `keep_trailing_newline`). Values print the Jinja way: booleans
//! as `True`/`False`, `null` as `None`, lists and maps in their Jinja form
//! (loop over them or use `join`/attribute access for prompt text).
//!
//! ```
//! use dspex_prompt::template::{PromptTemplate, compose};
//! use serde_json::json;
//!
//! let ask = PromptTemplate::create(
//!     "ask",
//!     "Answer in a {{ tone | default(\"neutral\") }} tone: {{ question }}",
//! )?;
//! assert_eq!(
//!     ask.render(&json!({ "question": "Why is the sky blue?" }))?,
//!     "Answer in a neutral tone: Why is the sky blue?"
//! );
//!
//! let rules = PromptTemplate::create("rules", "Cite {{ n | default(2) }} sources.")?;
//! let both = compose(&ask, &rules)?;
//! assert_eq!(
//!     both.render(&json!({ "question": "Why?", "tone": "dry" }))?,
//!     "Answer in a dry tone: Why?\nCite 2 sources."
//! );
//! # Ok::<(), dspex_prompt::PromptError>(())
//! ```
//!
//! # Variables and defaults
//!
//! The names are found by minijinja's static analysis
//! (`Template::undeclared_variables(false)`), so names bound inside the
//! template (`{% set %}`, loop variables, macro arguments, imports) are not
//! listed. minijinja's parser is not public without its `unstable_machinery`
//! feature (not enabled here), so defaults are found by a small lexical scan
//! of the tags: `name | default(x)` (or `| d(x)`) on a plain name gives the
//! value of `x` when it is a constant expression (a string, number, boolean,
//! `none`, list or map literal), `null` when it is computed from other
//! variables; `name | default` gives `""`; `name is defined` /
//! `name is undefined` make the name optional with a `null` default. A name
//! is optional when every template involved (parent, parts, included
//! templates) that reads it gives it such a fallback; within one source one
//! fallback is enough, so if the same source also reads it bare and it is
//! not given, that use fails at render time as a
//! [`PromptError::TemplateRender`] with its line.
//!
//! # Relations between templates
//!
//! * [`PromptTemplate::extend`]: a child that overrides `{% block %}`s of a
//!   parent. Variables used only in parent blocks the child overrides (without
//!   `super()`) are not required.
//! * [`compose`]: the output of one template, a single `"\n"`, the output of
//!   another.
//! * [`optimize()`] / [`optimize_with`]: a new version that starts with
//!   few-shot demos chosen from scored [`Example`]s.
//! * [`TemplateSet`]: templates loaded from a directory (or added by hand)
//!   that `extends`/`include`/`import` each other by name, checked at load
//!   time.
//!
//! The function name `dspex_demos` is reserved for optimised templates.
//!
//! # Saving
//!
//! A template serialises (with serde) as its definition: `id`, `name`,
//! `version`, `source`, `metadata`, and what it is built from (`parent`,
//! `parts` of a composition or optimisation, `library` of other set members,
//! `demos`). Deserialising rebuilds and re-checks it.

mod analysis;
mod compile;
mod optimize;
mod scan;
mod set;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::Value as JinjaValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{PromptError, Result};
use compile::{Builder, Compiled, literal};
use optimize::Demo;

pub use optimize::{Example, OptimizeOptions, optimize, optimize_with};
pub use set::TemplateSet;

/// A top-level variable a template reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVariable {
    /// The variable's name.
    pub name: String,
    /// `Some` when the template supplies a value itself, so a render need not:
    /// the constant given to the `default` filter, or `null` when that
    /// default is computed from other variables or the template only tests
    /// `is defined`. `None` when a render must provide it.
    pub default: Option<Value>,
}

impl TemplateVariable {
    /// Whether a render must provide the variable.
    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }
}

/// A compiled prompt template. Cheap to clone (the compiled form is shared)
/// and safe to share between threads.
///
/// See the [module documentation](self) for the rendering rules.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
pub struct PromptTemplate {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    def: Def,
    compiled: Compiled,
    variables: Vec<TemplateVariable>,
    required: Vec<String>,
}

/// What a template is made of.
#[derive(Clone)]
struct Def {
    id: Uuid,
    name: String,
    version: u32,
    source: String,
    metadata: BTreeMap<String, Value>,
    parent: Option<PromptTemplate>,
    parts: Vec<Part>,
    library: Arc<BTreeMap<String, String>>,
    demos: Option<Vec<Demo>>,
}

/// A template used by another under a name.
#[derive(Clone)]
struct Part {
    alias: String,
    template: PromptTemplate,
}

impl Def {
    /// A plain template.
    fn new(name: &str, source: String) -> Self {
        Self {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            version: 1,
            source,
            metadata: BTreeMap::new(),
            parent: None,
            parts: Vec::new(),
            library: Arc::default(),
            demos: None,
        }
    }

    /// Compiles, checks the references and analyses the variables.
    fn build(self) -> Result<PromptTemplate> {
        let mut builder = Builder::new();
        let root = builder.register(&self, None)?;
        let compiled = builder.finish(root);
        compiled.check_references()?;
        let analysis = analysis::analyze(&compiled);
        Ok(PromptTemplate {
            inner: Arc::new(Inner {
                def: self,
                compiled,
                variables: analysis.variables,
                required: analysis.required,
            }),
        })
    }
}

impl PromptTemplate {
    /// Parses and compiles a template. It gets a new id and version 1.
    ///
    /// # Errors
    ///
    /// [`PromptError::TemplateSyntax`] naming the template, the 1-based line
    /// and (when known) column; [`PromptError::UnknownTemplate`] when the
    /// source `extends`, `include`s or `import`s another template by a
    /// literal name (use [`extend`](Self::extend), [`compose`] or a
    /// [`TemplateSet`] for that). An `extends` must name its parent
    /// literally (a computed name is a `TemplateSyntax` error).
    pub fn create(name: &str, source: &str) -> Result<Self> {
        Def::new(name, source.to_owned()).build()
    }

    /// A template that extends `parent`, overriding its `{% block %}`s.
    ///
    /// `source` may start with `{% extends "<parent name>" %}`; when it has no
    /// `extends` tag, exactly that tag is prepended (on the same line, so
    /// line numbers do not change). As with Jinja, only the child's blocks
    /// matter; its text outside blocks is not rendered. The child sees the
    /// templates its parent can refer to. [`variables`](Self::variables) is
    /// the union of the child's and the parent's (minus those only in parent
    /// blocks the child replaces without `super()`).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create); [`PromptError::UnknownTemplate`] when the
    /// source extends a name other than the parent's.
    pub fn extend(name: &str, source: &str, parent: &PromptTemplate) -> Result<Self> {
        let facts = scan::facts(source);
        let source = match facts.extends() {
            None => format!("{{% extends {} %}}{source}", literal(parent.name())),
            Some(reference) => {
                if let Some(first) = reference.names.first()
                    && !reference.names.iter().any(|n| n == parent.name())
                {
                    return Err(PromptError::UnknownTemplate {
                        name: first.clone(),
                        referenced_by: name.to_owned(),
                    });
                }
                source.to_owned()
            }
        };
        let mut def = Def::new(name, source);
        def.parent = Some(parent.clone());
        def.build()
    }

    /// Renders the template with `vars`, which must serialise to a map of
    /// variable names to values (a `serde_json::Value` object, a
    /// `BTreeMap<String, _>`, a struct, …). Values may be strings, numbers,
    /// booleans, `null`, lists and maps; extra entries are ignored.
    ///
    /// # Errors
    ///
    /// [`PromptError::MissingVariables`] listing every required variable
    /// (sorted) that `vars` lacks, before rendering anything;
    /// [`PromptError::TemplateRender`] with the template and line when
    /// rendering fails (an undefined attribute, a filter error, a wrong type).
    pub fn render<S: Serialize + ?Sized>(&self, vars: &S) -> Result<String> {
        let context = JinjaValue::from_serialize(vars);
        let inner = &*self.inner;
        if inner.required.iter().any(|name| !provides(&context, name)) {
            let missing = inner
                .required
                .iter()
                .filter(|name| !provides(&context, name))
                .cloned()
                .collect();
            return Err(PromptError::MissingVariables {
                template: inner.def.name.clone(),
                missing,
            });
        }
        let compiled = &inner.compiled;
        compiled
            .env
            .get_template(&compiled.root)
            .and_then(|template| template.render(context))
            .map_err(|error| compiled.render_error(&inner.def.name, &error))
    }

    /// The variables a render reads, sorted by name, with their defaults.
    /// Computed once, when the template is built.
    pub fn variables(&self) -> Vec<TemplateVariable> {
        self.inner.variables.clone()
    }

    /// The names a render must provide, sorted.
    pub fn required_variables(&self) -> &[String] {
        &self.inner.required
    }

    /// The template's unique id.
    pub fn id(&self) -> Uuid {
        self.inner.def.id
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.inner.def.name
    }

    /// The template's version: 1 when created, one more per optimisation.
    pub fn version(&self) -> u32 {
        self.inner.def.version
    }

    /// The template's source (for a composition or an optimised template,
    /// the generated source that includes its parts by name).
    pub fn source(&self) -> &str {
        &self.inner.def.source
    }

    /// Free-form metadata. Compositions and optimisations record where they
    /// come from here.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.inner.def.metadata
    }

    /// The template this one extends, when built with
    /// [`extend`](Self::extend).
    pub fn parent(&self) -> Option<&PromptTemplate> {
        self.inner.def.parent.as_ref()
    }

    /// The same template with one more metadata entry (same id and version).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        Arc::make_mut(&mut self.inner)
            .def
            .metadata
            .insert(key.into(), value.into());
        self
    }

    /// Identifies the shared compiled template (clones share it).
    fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}

/// Whether the render context gives a value (possibly `null`) for `name`.
fn provides(context: &JinjaValue, name: &str) -> bool {
    context
        .get_attr(name)
        .is_ok_and(|value| !value.is_undefined())
}

impl fmt::Debug for PromptTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let def = &self.inner.def;
        f.debug_struct("PromptTemplate")
            .field("id", &def.id)
            .field("name", &def.name)
            .field("version", &def.version)
            .field("source", &def.source)
            .field("metadata", &def.metadata)
            .field("parent", &def.parent.as_ref().map(PromptTemplate::name))
            .field(
                "parts",
                &def.parts
                    .iter()
                    .map(|p| p.alias.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("variables", &self.inner.variables)
            .finish_non_exhaustive()
    }
}

/// A template whose output is `a`'s output, a single `"\n"`, then `b`'s
/// output (a trailing newline of `a` is kept, so it then ends up followed by
/// a second one).
///
/// The result is named `"<a>+<b>"`, has a new id and version 1, needs the
/// union of both templates' variables, and records the parts in its metadata
/// as `composed_of: [{"name", "version", "id"}, …]` (with `separator: "\n"`).
/// Compositions nest: `compose(&compose(&a, &b)?, &c)?` renders a, b and c
/// separated by newlines. The parts keep their own parents and sets, so two
/// parts may each use a different template of the same name.
///
/// # Errors
///
/// Only if the parts cannot be rebuilt together, which does not happen for
/// templates that were built before.
pub fn compose(a: &PromptTemplate, b: &PromptTemplate) -> Result<PromptTemplate> {
    let (alias_a, alias_b) = if a.name() == b.name() {
        (format!("{}#1", a.name()), format!("{}#2", b.name()))
    } else {
        (a.name().to_owned(), b.name().to_owned())
    };
    let source = format!(
        "{{% include {} %}}\n{{% include {} %}}",
        literal(&alias_a),
        literal(&alias_b)
    );
    let name = format!("{}+{}", a.name(), b.name());
    let mut def = Def::new(&name, source);
    let part = |t: &PromptTemplate| json!({ "name": t.name(), "version": t.version(), "id": t.id().to_string() });
    def.metadata
        .insert("composed_of".to_owned(), json!([part(a), part(b)]));
    def.metadata.insert("separator".to_owned(), json!("\n"));
    def.parts = vec![
        Part {
            alias: alias_a,
            template: a.clone(),
        },
        Part {
            alias: alias_b,
            template: b.clone(),
        },
    ];
    def.build()
}

/// The serialised definition of a template.
#[derive(Serialize, Deserialize)]
#[serde(rename = "PromptTemplate")]
struct Wire {
    id: String,
    name: String,
    version: u32,
    source: String,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<PromptTemplate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<WirePart>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    library: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    demos: Option<Vec<Demo>>,
}

#[derive(Serialize, Deserialize)]
struct WirePart {
    alias: String,
    template: PromptTemplate,
}

impl From<PromptTemplate> for Wire {
    fn from(template: PromptTemplate) -> Self {
        let def = &template.inner.def;
        Self {
            id: def.id.to_string(),
            name: def.name.clone(),
            version: def.version,
            source: def.source.clone(),
            metadata: def.metadata.clone(),
            parent: def.parent.clone(),
            parts: def
                .parts
                .iter()
                .map(|p| WirePart {
                    alias: p.alias.clone(),
                    template: p.template.clone(),
                })
                .collect(),
            library: (*def.library).clone(),
            demos: def.demos.clone(),
        }
    }
}

impl TryFrom<Wire> for PromptTemplate {
    type Error = PromptError;

    fn try_from(wire: Wire) -> Result<Self> {
        let id = Uuid::parse_str(&wire.id).map_err(|error| PromptError::State {
            message: format!(
                "template `{}`: invalid id `{}`: {error}",
                wire.name, wire.id
            ),
        })?;
        Def {
            id,
            name: wire.name,
            version: wire.version,
            source: wire.source,
            metadata: wire.metadata,
            parent: wire.parent,
            parts: wire
                .parts
                .into_iter()
                .map(|p| Part {
                    alias: p.alias,
                    template: p.template,
                })
                .collect(),
            library: Arc::new(wire.library),
            demos: wire.demos,
        }
        .build()
    }
}
