//! Named templates that refer to each other, loaded from a directory or added
//! one by one.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use uuid::Uuid;

use super::compile::{
    EXTENSIONS, check_cycles, check_reference, new_env, strip_extension, syntax_error,
};
use super::scan::{self, RefKind};
use super::{Def, PromptTemplate};
use crate::error::{PromptError, Result};

/// How deep [`TemplateSet::from_dir`] descends into subdirectories.
const MAX_DIR_DEPTH: usize = 32;

/// A set of named templates that may `extends`, `include` and `import` each
/// other by name.
///
/// A name may be used with or without one of the template extensions
/// (`{% include "footer" %}` and `{% include "footer.jinja" %}` both find
/// `footer`). [`get`](Self::get) gives a [`PromptTemplate`] that renders
/// with the other templates of the set available; it is built once per name
/// and cached until the set changes.
#[derive(Debug, Default)]
pub struct TemplateSet {
    sources: BTreeMap<String, String>,
    files: BTreeMap<String, PathBuf>,
    cache: Mutex<BTreeMap<String, PromptTemplate>>,
}

impl TemplateSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.jinja`, `*.j2`, `*.txt` and `*.prompt` file under
    /// `path`, recursively (files and directories whose name starts with `.`
    /// are skipped), then [`validate`](Self::validate)s the set. A template's
    /// name is its path relative to `path` without the extension, with `/`
    /// between directories: `qa.jinja` is `qa`, `tasks/summary.txt` is
    /// `tasks/summary`. Sources are kept exactly as read, trailing newline
    /// included.
    ///
    /// # Errors
    ///
    /// [`PromptError::TemplateIo`] when the directory or a file cannot be read
    /// (or two files give the same name), [`PromptError::TemplateSyntax`]
    /// naming the template (and, in the message, its file) when a file does
    /// not parse, [`PromptError::UnknownTemplate`] when a file refers to a
    /// template the set does not have, and the other errors of
    /// [`validate`](Self::validate).
    pub fn from_dir(path: impl AsRef<Path>) -> Result<Self> {
        let root = path.as_ref();
        let mut files = Vec::new();
        collect(root, root, 0, &mut files)?;
        let mut set = Self::new();
        for (name, file) in files {
            if let Some(previous) = set.files.get(&name) {
                return Err(PromptError::TemplateIo {
                    path: file.display().to_string(),
                    message: format!(
                        "template `{name}` is also defined by {}",
                        previous.display()
                    ),
                });
            }
            let source = fs::read_to_string(&file).map_err(|error| PromptError::TemplateIo {
                path: file.display().to_string(),
                message: error.to_string(),
            })?;
            match set.add(name.clone(), source) {
                Err(PromptError::TemplateSyntax {
                    template,
                    line,
                    column,
                    message,
                }) => {
                    return Err(PromptError::TemplateSyntax {
                        template,
                        line,
                        column,
                        message: format!("{message} (file {})", file.display()),
                    });
                }
                other => other?,
            }
            set.files.insert(name, file);
        }
        set.validate()?;
        Ok(set)
    }

    /// Adds (or replaces) a template. Its syntax is checked now; its
    /// references are checked by [`validate`](Self::validate) and
    /// [`get`](Self::get), so templates may be added in any order.
    ///
    /// # Errors
    ///
    /// [`PromptError::TemplateSyntax`] when the source does not parse.
    pub fn add(&mut self, name: impl Into<String>, source: impl Into<String>) -> Result<()> {
        let name = name.into();
        let source = source.into();
        let env = new_env();
        if let Err(error) = env.template_from_named_str(&name, &source) {
            return Err(syntax_error(&name, &source, &error));
        }
        self.files.remove(&name);
        self.sources.insert(name, source);
        self.cache.get_mut().clear();
        Ok(())
    }

    /// Checks that every literal `extends`, `include`, `import` and `from`
    /// target of every template is in the set (`include … ignore missing` and
    /// include/import names computed at render time are not checked; for a
    /// list, one existing name is enough), that every `extends` names its
    /// parent literally, and that inheritance has no cycle.
    ///
    /// # Errors
    ///
    /// [`PromptError::UnknownTemplate`] with the missing name and the template
    /// that refers to it (the first such reference in name order);
    /// [`PromptError::TemplateSyntax`] at the `extends` tag for a computed
    /// parent name or an inheritance cycle.
    pub fn validate(&self) -> Result<()> {
        let mut edges: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
        for (name, source) in &self.sources {
            for reference in scan::facts(source).refs {
                check_reference(name, source, &reference, |n| self.lookup(n).is_some())?;
                if reference.kind == RefKind::Extends {
                    let targets = edges.entry(name.as_str()).or_default();
                    for target in &reference.names {
                        if let Some(found) = self.lookup(target) {
                            targets.push((found, reference.offset));
                        }
                    }
                }
            }
        }
        check_cycles(self.names(), &edges, |name| {
            (name, self.sources.get(name).map_or("", String::as_str))
        })
    }

    /// The template called `name`, rendering with the rest of the set
    /// available. Its metadata has `file` when it was loaded from one.
    ///
    /// # Errors
    ///
    /// [`PromptError::UnknownTemplate`] (with an empty `referenced_by`) when
    /// the set has no such template, or naming the referring template when a
    /// template it uses is missing.
    pub fn get(&self, name: &str) -> Result<PromptTemplate> {
        let key = self
            .lookup(name)
            .ok_or_else(|| PromptError::UnknownTemplate {
                name: name.to_owned(),
                referenced_by: String::new(),
            })?;
        if let Some(template) = self.cache.lock().get(key) {
            return Ok(template.clone());
        }
        let source = self.sources.get(key).cloned().unwrap_or_default();
        let mut metadata = BTreeMap::new();
        if let Some(file) = self.files.get(key) {
            metadata.insert("file".to_owned(), Value::String(file.display().to_string()));
        }
        let template = Def {
            id: Uuid::new_v4(),
            name: key.to_owned(),
            version: 1,
            source,
            metadata,
            parent: None,
            parts: Vec::new(),
            library: Arc::new(
                self.sources
                    .iter()
                    .filter(|(name, _)| name.as_str() != key)
                    .map(|(name, source)| (name.clone(), source.clone()))
                    .collect(),
            ),
            demos: None,
        }
        .build()?;
        self.cache.lock().insert(key.to_owned(), template.clone());
        Ok(template)
    }

    /// The names of the templates, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// The source of a template.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.lookup(name)
            .and_then(|key| self.sources.get(key))
            .map(String::as_str)
    }

    /// Whether the set has a template called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// The number of templates.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The key of the template `name` refers to.
    fn lookup<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.sources
            .get_key_value(name)
            .or_else(|| strip_extension(name).and_then(|stem| self.sources.get_key_value(stem)))
            .map(|(key, _)| key.as_str())
    }
}

/// Collects `(name, path)` of the template files under `dir`, sorted by path.
fn collect(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let io_error = |path: &Path, error: std::io::Error| PromptError::TemplateIo {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let mut entries = fs::read_dir(dir)
        .map_err(|error| io_error(dir, error))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|error| io_error(dir, error))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let metadata = fs::metadata(&path).map_err(|error| io_error(&path, error))?;
        if metadata.is_dir() {
            if depth < MAX_DIR_DEPTH {
                collect(root, &path, depth + 1, out)?;
            }
            continue;
        }
        let known = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if !metadata.is_file() || !known {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
        let mut parts = Vec::new();
        for component in relative.components() {
            match component.as_os_str().to_str() {
                Some(part) => parts.push(part.to_owned()),
                None => {
                    return Err(PromptError::TemplateIo {
                        path: path.display().to_string(),
                        message: "file name is not valid UTF-8".to_owned(),
                    });
                }
            }
        }
        out.push((parts.join("/"), path));
    }
    Ok(())
}
