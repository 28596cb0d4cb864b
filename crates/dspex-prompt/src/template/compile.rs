//! The compiled form of a template: one minijinja environment holding the
//! template and everything it can refer to, and the mapping of minijinja
//! errors to [`PromptError`].
//!
//! Every template of the closure (the template itself, its parent chain, the
//! parts of a composition, the base of an optimised template, the other
//! members of a [`TemplateSet`](super::TemplateSet)) is registered once under
//! an internal name `"{scope}:{name}"` (set members `"{scope}|{name}"`). Each
//! registered template belongs to a *scope*, the table of names its source may
//! use in `extends`/`include`/`import`; a scope falls back to its parent's
//! scope. The environment's path-join callback resolves a name against the
//! scope of the template doing the lookup, so two parts may both refer to a
//! different template called `base` without clashing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use dspex_core::config::SourceLocation;
use minijinja::value::Rest;
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior, Value};

use super::scan::{self, RefKind};
use super::{Def, PromptTemplate};
use crate::error::{PromptError, Result};

/// The function through which an optimised template reads its demos.
pub(super) const DEMOS_FUNCTION: &str = "dspex_demos";

/// File extensions of template files, also accepted (and ignored) at the end
/// of a referenced name.
pub(super) const EXTENSIONS: &[&str] = &["jinja", "j2", "txt", "prompt"];

/// `name` without one of [`EXTENSIONS`], if it ends with one.
pub(super) fn strip_extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    (EXTENSIONS.contains(&ext) && !stem.is_empty()).then_some(stem)
}

/// A Jinja string literal for `text`.
pub(super) fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An environment configured for prompts: strict undefined, no
/// auto-escaping, trailing newline kept.
pub(super) fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_debug(false);
    env.add_filter("format", format_filter);
    env
}

/// Widest field, and longest precision, the `format` filter accepts.
const MAX_FORMAT_WIDTH: u64 = 1_000;

/// The builtin `format` filter, refusing what makes it panic.
///
/// minijinja 2.24's printf formatting (found by the `template` fuzz target):
/// - reads a `%(key)` one byte at a time and slices the source at each
///   byte, so a key holding a character of more than one byte panics;
/// - pads to any width or precision written in the format string, so
///   `%99999999999d` asks for 100 GB and a width past `usize` panics.
///
/// Until those are fixed upstream, such a format string is an error naming
/// what is wrong, and every other goes to the builtin unchanged.
fn format_filter(
    state: &State<'_, '_>,
    format: &Value,
    args: Rest<Value>,
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(Err(problem)) = format.as_str().map(check_format) {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, problem));
    }
    minijinja::filters::format(state, format, args)
}

/// Whether the builtin `format` filter can take a printf-style format string
/// safely, scanning as minijinja does: `%%` is a literal percent sign; a
/// field is `%`, an optional `(key)` (an unclosed key runs to the end), flags
/// out of `#0- +`, a width, and `.` and a precision.
fn check_format(text: &str) -> std::result::Result<(), String> {
    let mut rest = text;
    while let Some(percent) = rest.find('%') {
        let mut field = rest.get(percent + 1..).unwrap_or_default();
        if let Some(escaped) = field.strip_prefix('%') {
            rest = escaped;
            continue;
        }
        if let Some(open) = field.strip_prefix('(') {
            let (key, tail) = open.split_once(')').unwrap_or((open, ""));
            if !key.is_ascii() {
                return Err(format!(
                    "the format filter takes only ASCII keys; `%({key})` has other characters"
                ));
            }
            field = tail;
        }
        field = skip_number(field.trim_start_matches(['#', '0', '-', ' ', '+']), "width")?;
        if let Some(precision) = field.strip_prefix('.') {
            field = skip_number(precision, "precision")?;
        }
        rest = field;
    }
    Ok(())
}

/// `field` after the decimal number it starts with (if any), refusing a
/// number over [`MAX_FORMAT_WIDTH`].
fn skip_number<'a>(field: &'a str, what: &str) -> std::result::Result<&'a str, String> {
    let digits = field
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(field.len());
    let (number, tail) = field.split_at(digits);
    let too_big = !number.is_empty()
        && number
            .parse::<u64>()
            .ok()
            .is_none_or(|n| n > MAX_FORMAT_WIDTH);
    if too_big {
        return Err(format!(
            "the format filter takes a {what} of at most {MAX_FORMAT_WIDTH}, not {number}"
        ));
    }
    Ok(tail)
}

/// The names one registered template may refer to.
#[derive(Debug, Default)]
struct Scope {
    names: HashMap<String, String>,
    fallback: Option<usize>,
}

/// What is known about one registered template.
#[derive(Debug)]
struct Registered {
    scope: usize,
    display: String,
    source: String,
}

/// Name resolution for the templates of one environment.
#[derive(Debug, Default)]
pub(super) struct Table {
    scopes: Vec<Scope>,
    registered: HashMap<String, Registered>,
    order: Vec<String>,
}

impl Table {
    /// The internal name `name` refers to when used by the registered
    /// template `from`.
    pub(super) fn resolve(&self, name: &str, from: &str) -> Option<&str> {
        let mut scope = self.registered.get(from)?.scope;
        // Scopes only fall back to scopes registered before them, so this
        // terminates; the bound guards against a malformed table anyway.
        for _ in 0..=self.scopes.len() {
            let current = self.scopes.get(scope)?;
            let found = current
                .names
                .get(name)
                .or_else(|| strip_extension(name).and_then(|stem| current.names.get(stem)));
            if let Some(found) = found {
                return Some(found);
            }
            scope = current.fallback?;
        }
        None
    }

    /// The user-facing name of a registered template.
    pub(super) fn display<'a>(&'a self, registered: &'a str) -> &'a str {
        self.registered
            .get(registered)
            .map_or(registered, |r| r.display.as_str())
    }

    /// The registered names, in registration order.
    pub(super) fn registered(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

/// A template's environment, ready to render.
#[derive(Clone, Debug)]
pub(super) struct Compiled {
    /// The environment with every template of the closure.
    pub(super) env: Arc<Environment<'static>>,
    /// The internal name of the template itself.
    pub(super) root: String,
    /// Name resolution.
    pub(super) table: Arc<Table>,
}

impl Compiled {
    /// The source of a registered template.
    pub(super) fn source_of(&self, registered: &str) -> Option<&str> {
        self.table
            .registered
            .get(registered)
            .map(|r| r.source.as_str())
    }

    /// Checks the references of every template of the closure: every literal
    /// `extends`/`include`/`import` target exists, every `extends` names its
    /// parent literally, and inheritance has no cycle.
    pub(super) fn check_references(&self) -> Result<()> {
        let mut edges: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
        for registered in self.table.registered() {
            let Some(source) = self.source_of(registered) else {
                continue;
            };
            let display = self.table.display(registered);
            for reference in scan::facts(source).refs {
                check_reference(display, source, &reference, |name| {
                    self.table.resolve(name, registered).is_some()
                })?;
                if reference.kind == RefKind::Extends {
                    let targets = edges.entry(registered).or_default();
                    for name in &reference.names {
                        if let Some(target) = self.table.resolve(name, registered) {
                            targets.push((target, reference.offset));
                        }
                    }
                }
            }
        }
        check_cycles(self.table.registered(), &edges, |registered| {
            (
                self.table.display(registered),
                self.source_of(registered).unwrap_or(""),
            )
        })
    }

    /// Maps a render error, naming the template it happened in.
    pub(super) fn render_error(&self, fallback: &str, error: &minijinja::Error) -> PromptError {
        // An error inside an included template arrives wrapped as "error in
        // <included>"; report the innermost one, where the line applies.
        let mut error = error;
        while error.kind() == ErrorKind::BadInclude {
            match std::error::Error::source(error)
                .and_then(|inner| inner.downcast_ref::<minijinja::Error>())
            {
                Some(inner) => error = inner,
                None => break,
            }
        }
        let registered = error.name();
        let template = registered.map_or(fallback, |r| self.table.display(r));
        let mut message = describe(error);
        let located = registered
            .zip(error.range())
            .and_then(|(r, range)| Some((self.source_of(r)?, range)));
        if let Some((source, range)) = located {
            if let Some(snippet) = source.get(range.clone()) {
                message.push_str(&format!(" (at `{snippet}`)"));
            }
            message.push_str(&quote(template, source, range));
        } else if let Some((source, line)) =
            registered.and_then(|r| self.source_of(r)).zip(error.line())
        {
            message.push_str(&quote_line(template, source, line, 1));
        }
        PromptError::TemplateRender {
            template: template.to_owned(),
            line: error.line(),
            message,
        }
    }
}

/// Checks one reference of the template `display`; `exists` tells whether
/// a name can be found.
pub(super) fn check_reference(
    display: &str,
    source: &str,
    reference: &scan::Reference,
    exists: impl Fn(&str) -> bool,
) -> Result<()> {
    if reference.names.is_empty() {
        if reference.kind == RefKind::Extends {
            // minijinja cannot detect a cycle through a computed parent name
            // once names are resolved per scope, so such a template could
            // loop forever; require literal names.
            let (line, column) = line_column(source, reference.offset);
            return Err(PromptError::TemplateSyntax {
                template: display.to_owned(),
                line,
                column: Some(column),
                message: format!(
                    "`extends` needs a literal template name{}",
                    quote(display, source, reference.offset..reference.offset)
                ),
            });
        }
        return Ok(());
    }
    if reference.ignore_missing || reference.names.iter().any(|name| exists(name)) {
        return Ok(());
    }
    Err(PromptError::UnknownTemplate {
        name: reference.names.first().cloned().unwrap_or_default(),
        referenced_by: display.to_owned(),
    })
}

/// Fails when following `extends` edges (`node -> [(target, offset of the
/// tag)]`) from any node comes back to it; `describe` gives a node's name and
/// source.
pub(super) fn check_cycles<'a>(
    nodes: impl Iterator<Item = &'a str>,
    edges: &HashMap<&'a str, Vec<(&'a str, usize)>>,
    describe: impl Fn(&'a str) -> (&'a str, &'a str),
) -> Result<()> {
    // 1 = on the current path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    for start in nodes {
        if state.contains_key(start) {
            continue;
        }
        // Iterative depth-first search: (node, next edge index).
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, 1);
        while let Some((node, index)) = path.last().copied() {
            let next = edges.get(node).and_then(|targets| targets.get(index));
            let Some(&(target, offset)) = next else {
                state.insert(node, 2);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            match state.get(target) {
                Some(1) => {
                    let from = path.iter().position(|(n, _)| *n == target).unwrap_or(0);
                    let mut chain: Vec<&str> = path
                        .get(from..)
                        .unwrap_or(&[])
                        .iter()
                        .map(|(n, _)| describe(n).0)
                        .collect();
                    chain.push(describe(target).0);
                    let (display, source) = describe(node);
                    let (line, column) = line_column(source, offset);
                    return Err(PromptError::TemplateSyntax {
                        template: display.to_owned(),
                        line,
                        column: Some(column),
                        message: format!(
                            "cycle in template inheritance: {}{}",
                            chain.join(" -> "),
                            quote(display, source, offset..offset)
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    state.insert(target, 1);
                    path.push((target, 0));
                }
            }
        }
    }
    Ok(())
}

/// Collects the templates of a closure into one environment.
pub(super) struct Builder {
    env: Environment<'static>,
    table: Table,
    demos: HashMap<String, Value>,
    seen: HashMap<usize, String>,
}

impl Builder {
    /// An empty builder.
    pub(super) fn new() -> Self {
        Self {
            env: new_env(),
            table: Table::default(),
            demos: HashMap::new(),
            seen: HashMap::new(),
        }
    }

    /// Registers a template definition and, first, everything it refers to.
    /// `identity` identifies an existing template so that one shared by
    /// several parts is registered once. Returns the internal name.
    pub(super) fn register(&mut self, def: &Def, identity: Option<usize>) -> Result<String> {
        if let Some(registered) = identity.and_then(|id| self.seen.get(&id)) {
            return Ok(registered.clone());
        }
        let scope = self.table.scopes.len();
        self.table.scopes.push(Scope::default());
        let registered = format!("{scope}:{}", def.name);

        let mut names = HashMap::new();
        let mut fallback = None;
        if let Some(parent) = &def.parent {
            let parent_registered = self.register_template(parent)?;
            fallback = self
                .table
                .registered
                .get(&parent_registered)
                .map(|r| r.scope);
            names.insert(parent.name().to_owned(), parent_registered);
        }
        for part in &def.parts {
            let part_registered = self.register_template(&part.template)?;
            names.insert(part.alias.clone(), part_registered);
        }
        for (name, source) in def.library.iter() {
            let member = format!("{scope}|{name}");
            self.add(&member, name, source, scope)?;
            names.entry(name.clone()).or_insert(member);
        }
        names
            .entry(def.name.clone())
            .or_insert_with(|| registered.clone());
        self.add(&registered, &def.name, &def.source, scope)?;
        if let Some(demos) = &def.demos {
            self.demos
                .insert(registered.clone(), Value::from_serialize(demos));
        }
        if let Some(slot) = self.table.scopes.get_mut(scope) {
            slot.names = names;
            slot.fallback = fallback;
        }
        if let Some(id) = identity {
            self.seen.insert(id, registered.clone());
        }
        Ok(registered)
    }

    fn register_template(&mut self, template: &PromptTemplate) -> Result<String> {
        self.register(&template.inner.def, Some(template.identity()))
    }

    fn add(&mut self, registered: &str, display: &str, source: &str, scope: usize) -> Result<()> {
        self.env
            .add_template_owned(registered.to_owned(), source.to_owned())
            .map_err(|error| syntax_error(display, source, &error))?;
        self.table.registered.insert(
            registered.to_owned(),
            Registered {
                scope,
                display: display.to_owned(),
                source: source.to_owned(),
            },
        );
        self.table.order.push(registered.to_owned());
        Ok(())
    }

    /// Finishes the environment; `root` is the template itself.
    pub(super) fn finish(self, root: String) -> Compiled {
        let Self {
            mut env,
            table,
            demos,
            ..
        } = self;
        let table = Arc::new(table);
        let resolver = Arc::clone(&table);
        env.set_path_join_callback(move |name, parent| match resolver.resolve(name, parent) {
            Some(found) => Cow::Owned(found.to_owned()),
            None => Cow::Borrowed(name),
        });
        let demos = Arc::new(demos);
        env.add_function(DEMOS_FUNCTION, move |state: &State<'_, '_>| -> Value {
            demos
                .get(state.name())
                .cloned()
                .unwrap_or_else(|| Value::from(Vec::<Value>::new()))
        });
        Compiled {
            env: Arc::new(env),
            root,
            table,
        }
    }
}

/// A syntax error of the template `display` whose source is `source`.
pub(super) fn syntax_error(display: &str, source: &str, error: &minijinja::Error) -> PromptError {
    let column = error
        .range()
        .and_then(|range| column_at(source, range.start));
    let line = error.line().unwrap_or(1);
    let at = match error.range() {
        Some(range) => quote(display, source, range),
        None => quote_line(display, source, line, 1),
    };
    PromptError::TemplateSyntax {
        template: display.to_owned(),
        line,
        column,
        message: format!("{}{at}", describe(error)),
    }
}

/// The byte range `span` of the template `display`, quoted on lines of its
/// own after a message (`--> name:line:column`, the line, carets).
fn quote(display: &str, source: &str, span: std::ops::Range<usize>) -> String {
    format!("\n{}", SourceLocation::from_span(display, source, span))
}

/// Like [`quote`], at a 1-based line and byte column.
fn quote_line(display: &str, source: &str, line: usize, column: usize) -> String {
    format!(
        "\n{}",
        SourceLocation::from_line_column(display, source, line, column, 1)
    )
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    (line, column_at(source, before.len()).unwrap_or(1))
}

/// The 1-based column (in characters) of a byte offset.
fn column_at(source: &str, offset: usize) -> Option<usize> {
    let before = source.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    Some(before.get(line_start..)?.chars().count() + 1)
}

/// The kind and detail of a minijinja error, without its location.
fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn literals_round_trip_through_the_scanner() {
        for text in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "ctl\u{1}",
            "\u{e9}",
        ] {
            assert_eq!(scan::decode_str(&literal(text)).unwrap(), text);
        }
    }

    #[test]
    fn extensions() {
        assert_eq!(strip_extension("a.jinja"), Some("a"));
        assert_eq!(strip_extension("dir/a.prompt"), Some("dir/a"));
        assert_eq!(strip_extension("a.md"), None);
        assert_eq!(strip_extension(".txt"), None);
        assert_eq!(strip_extension("a"), None);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(column_at("ab\n\u{e9}x", 5), Some(2));
        assert_eq!(column_at("abc", 0), Some(1));
        assert_eq!(column_at("abc", 10), None);
    }
}
