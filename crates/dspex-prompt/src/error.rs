//! The error type of prompts and modules.

use dspex_client::ClientError;

/// Everything templates, signatures, adapters and modules can fail with. Each
/// variant names what is wrong: the template and line, the signature position,
/// the input or output field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// A template does not parse.
    #[error("template `{template}` line {line}{}: {message}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
    TemplateSyntax {
        /// The template's name.
        template: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// A render is missing variables that have no default.
    #[error("template `{template}` is missing variables: {}", missing.join(", "))]
    MissingVariables {
        /// The template's name.
        template: String,
        /// Every missing name, sorted.
        missing: Vec<String>,
    },

    /// Rendering failed for another reason (a filter error, a wrong type).
    #[error("template `{template}`{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    TemplateRender {
        /// The template's name.
        template: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },

    /// A template named by `extends`, `include` or a lookup does not exist.
    #[error("unknown template `{name}`{}", if referenced_by.is_empty() { String::new() } else { format!(" (referenced by `{referenced_by}`)") })]
    UnknownTemplate {
        /// The missing name.
        name: String,
        /// The template that refers to it (empty for a direct lookup).
        referenced_by: String,
    },

    /// A template file or directory could not be read.
    #[error("cannot read templates from {path}: {message}")]
    TemplateIo {
        /// The file or directory.
        path: String,
        /// Why.
        message: String,
    },

    /// A signature string or builder is invalid.
    #[error("invalid signature `{signature}`: {message}")]
    Signature {
        /// The signature as written.
        signature: String,
        /// What is wrong, and where.
        message: String,
    },

    /// Inputs are missing or of the wrong type, found before any call.
    #[error("invalid inputs: {}", problems.join("; "))]
    InvalidInputs {
        /// One entry per problem, each naming its field.
        problems: Vec<String>,
    },

    /// The model's reply could not be parsed into the output fields, even
    /// after local repair and one re-ask for the failed fields.
    #[error("could not parse the reply: {}", problems.join("; "))]
    Parse {
        /// One entry per failed field, naming it.
        problems: Vec<String>,
        /// The reply, for debugging.
        reply: String,
    },

    /// The provider call failed.
    #[error(transparent)]
    Client(#[from] ClientError),

    /// Program state could not be saved or loaded.
    #[error("program state: {message}")]
    State {
        /// What went wrong, naming the file or field.
        message: String,
    },

    /// A dataset file could not be read, or one of its lines is not a usable
    /// example.
    #[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Dataset {
        /// The file.
        path: String,
        /// 1-based line of the bad example, when the problem is one line.
        line: Option<usize>,
        /// What is wrong, naming the fields.
        message: String,
    },

    /// An optimiser could not compile a program (no training examples, too
    /// many failed runs).
    #[error("optimiser: {message}")]
    Optimize {
        /// What went wrong.
        message: String,
    },

    /// The `[optimize]` config is invalid; the message names the key.
    #[error(transparent)]
    Config(dspex_core::CoreError),

    /// A tool call failed: bad arguments, an error from the tool, a panic or
    /// a timeout. An agent shows the model this message as the observation.
    #[error("tool `{tool}` failed: {message}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// What went wrong.
        message: String,
    },

    /// A tool or a set of tools cannot be used (a bad name, a schema that is
    /// not an object, two tools of one name).
    #[error("invalid tool{}: {message}", if tool.is_empty() { String::new() } else { format!(" `{tool}`") })]
    InvalidTool {
        /// The tool's name (empty when it has none yet).
        tool: String,
        /// What is wrong.
        message: String,
    },

    /// A composite module (a workflow) failed in one of its steps.
    #[error("{message}")]
    Composite {
        /// The failure, naming the step and the correlation id.
        message: String,
        /// Whether running it again may succeed.
        retryable: bool,
    },
}

impl PromptError {
    /// Whether trying again may succeed (only provider failures can).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Client(error) => error.is_retryable(),
            Self::Composite { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The provider's HTTP status, for provider failures.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Client(error) => error.status(),
            _ => None,
        }
    }

    /// The provider's Retry-After, for provider failures.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Client(error) => error.retry_after(),
            _ => None,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = PromptError> = std::result::Result<T, E>;
