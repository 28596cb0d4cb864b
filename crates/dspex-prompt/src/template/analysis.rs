//! Static analysis of the variables a template needs.
//!
//! The names come from minijinja's `Template::undeclared_variables(false)`,
//! which sees through `{% set %}`, loop variables, macro arguments and
//! imports. The analysis follows the references of the template: an
//! `include`/`import` target contributes its variables minus the names bound
//! around the `include` (a loop variable is visible to the included template);
//! an `extends` parent contributes the variables of its source with the bodies
//! of the blocks that its descendants override removed (unless the override
//! calls `super()`), so a default block body the child replaces does not make
//! its variables required. Defaults come from [`scan`]: `name | default(x)` and
//! `name | d(x)` give `x` (evaluated when it is a constant expression),
//! `name | default` gives `""`, `name is defined` makes the name optional with
//! a `null` default. A name is optional only if every template of the closure
//! that reads it gives it a fallback (within one source, one fallback is
//! enough); the default reported is the first one found.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use minijinja::Environment;
use serde_json::Value as Json;

use super::TemplateVariable;
use super::compile::{Compiled, DEMOS_FUNCTION};
use super::scan::{self, Fallback, RefKind};

/// Names that look like variables to the static analysis but are provided by
/// the engine: default globals, macro and loop specials, and the demos
/// function of optimised templates.
const PROVIDED: &[&str] = &[
    "range",
    "dict",
    "debug",
    "namespace",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
    DEMOS_FUNCTION,
];

/// The variables of a template and the ones a render must provide.
#[derive(Clone, Debug, Default)]
pub(super) struct Analysis {
    /// Every top-level variable, sorted by name, with its default.
    pub(super) variables: Vec<TemplateVariable>,
    /// The names without a default, sorted.
    pub(super) required: Vec<String>,
}

/// Analyses the template at the root of `compiled`.
pub(super) fn analyze(compiled: &Compiled) -> Analysis {
    let mut walker = Walker {
        compiled,
        names: BTreeSet::new(),
        required: BTreeSet::new(),
        fallbacks: BTreeMap::new(),
        visited: HashSet::new(),
        depth: 0,
    };
    walker.visit(&compiled.root, &BTreeSet::new(), &BTreeSet::new());
    let Walker {
        names,
        required,
        fallbacks,
        ..
    } = walker;
    let mut analysis = Analysis::default();
    for name in names {
        let default = if required.contains(&name) {
            None
        } else {
            fallbacks.get(&name).map(evaluate)
        };
        if default.is_none() {
            analysis.required.push(name.clone());
        }
        analysis.variables.push(TemplateVariable { name, default });
    }
    analysis
}

/// The deepest chain of references followed (minijinja's own recursion limit
/// stops runaway templates at render time).
const MAX_DEPTH: usize = 64;

struct Walker<'a> {
    compiled: &'a Compiled,
    /// Every variable read.
    names: BTreeSet<String>,
    /// Variables some template reads without giving a fallback for them.
    required: BTreeSet<String>,
    /// The first fallback found for each name.
    fallbacks: BTreeMap<String, Fallback>,
    visited: HashSet<(String, Vec<String>, Vec<String>)>,
    depth: usize,
}

impl Walker<'_> {
    fn visit(&mut self, registered: &str, overridden: &BTreeSet<String>, bound: &BTreeSet<String>) {
        let key = (
            registered.to_owned(),
            overridden.iter().cloned().collect(),
            bound.iter().cloned().collect(),
        );
        if self.depth >= MAX_DEPTH || !self.visited.insert(key) {
            return;
        }
        let Some(source) = self.compiled.source_of(registered) else {
            return;
        };
        let mut facts = scan::facts(source);
        let stripped;
        let source = if overridden.is_empty() {
            source
        } else {
            stripped = scan::strip_blocks(source, &facts, overridden);
            facts = scan::facts(&stripped);
            stripped.as_str()
        };

        let scratch = Environment::new();
        if let Ok(template) = scratch.template_from_str(source) {
            for name in template.undeclared_variables(false) {
                if bound.contains(&name) || PROVIDED.contains(&name.as_str()) {
                    continue;
                }
                match facts.fallbacks.iter().find(|(n, _)| *n == name) {
                    Some((_, fallback)) => {
                        self.fallbacks
                            .entry(name.clone())
                            .or_insert_with(|| fallback.clone());
                    }
                    None => {
                        self.required.insert(name.clone());
                    }
                }
                self.names.insert(name);
            }
        }

        self.depth += 1;
        for reference in &facts.refs {
            let target = reference
                .names
                .iter()
                .find_map(|name| self.compiled.table.resolve(name, registered))
                .map(str::to_owned);
            let Some(target) = target else {
                continue;
            };
            match reference.kind {
                RefKind::Extends => {
                    let mut hidden = overridden.clone();
                    hidden.extend(facts.overriding_blocks().map(str::to_owned));
                    self.visit(&target, &hidden, bound);
                }
                RefKind::Include | RefKind::Import => {
                    let mut inner = bound.clone();
                    inner.extend(reference.bound.iter().cloned());
                    self.visit(&target, &BTreeSet::new(), &inner);
                }
            }
        }
        self.depth -= 1;
    }
}

/// The default value a fallback stands for: a constant expression is
/// evaluated; a default computed from other variables, or an `is defined`
/// guard, is `null`.
fn evaluate(fallback: &Fallback) -> Json {
    match fallback {
        Fallback::Empty => Json::String(String::new()),
        Fallback::Guard => Json::Null,
        Fallback::Expr(text) => {
            let env = Environment::new();
            let Ok(expression) = env.compile_expression(text) else {
                return Json::Null;
            };
            if !expression.undeclared_variables(false).is_empty() {
                return Json::Null;
            }
            expression
                .eval(())
                .ok()
                .and_then(|value| serde_json::to_value(&value).ok())
                .unwrap_or(Json::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_constant_defaults() {
        let cases = [
            ("\"neutral\"", json!("neutral")),
            ("3", json!(3)),
            ("-2.5", json!(-2.5)),
            ("true", json!(true)),
            ("none", Json::Null),
            ("[1, 'a']", json!([1, "a"])),
            ("other", Json::Null),
            ("'a' ~ 'b'", json!("ab")),
        ];
        for (text, expected) in cases {
            assert_eq!(
                evaluate(&Fallback::Expr(text.to_owned())),
                expected,
                "{text}"
            );
        }
        assert_eq!(evaluate(&Fallback::Empty), json!(""));
        assert_eq!(evaluate(&Fallback::Guard), Json::Null);
    }
}
