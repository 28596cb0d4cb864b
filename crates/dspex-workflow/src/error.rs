//! The crate's error type.

use std::fmt;
use std::time::Duration;

use dspex_client::ClientError;
use dspex_core::config::SourceLocation;
use dspex_core::{Breadcrumb, CorrelationId, ErrorContext};
use dspex_prompt::PromptError;
use serde::Serialize;

use crate::report::{RunReport, StepRecord};

/// Why one step failed: what a step function returns as its error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepError {
    /// A short, stable kind: `rate_limited`, `timeout`, `parse`, `invalid_inputs`,
    /// `step`... Retry policies can name kinds that are never retried.
    pub kind: String,
    /// What went wrong, in words.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// The provider's HTTP status, for provider failures.
    pub status: Option<u16>,
    /// The provider's Retry-After, for provider failures.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The trail of the failed operation, when it kept one (LM calls do).
    pub context: Option<ErrorContext>,
}

impl StepError {
    /// A failure of kind `step` that is not retried.
    pub fn new(message: impl Into<String>) -> Self {
        Self::of_kind("step", message)
    }

    /// A failure of `kind`, not retried.
    pub fn of_kind(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
            status: None,
            retry_after: None,
            context: None,
        }
    }

    /// Marks the failure as transient: retry policies may try again.
    #[must_use]
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub(crate) fn missing_input(step: &str, key: &str) -> Self {
        Self::of_kind(
            "missing_input",
            format!("step `{step}` needs `{key}`, which is not in the context"),
        )
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StepError {}

impl From<ClientError> for StepError {
    fn from(error: ClientError) -> Self {
        Self {
            kind: error.kind().as_str().to_owned(),
            message: error.to_string(),
            retryable: error.is_retryable(),
            status: error.status(),
            retry_after: error.retry_after(),
            context: error.context().cloned(),
        }
    }
}

impl From<PromptError> for StepError {
    fn from(error: PromptError) -> Self {
        match error {
            PromptError::Client(client) => client.into(),
            other => {
                let kind = match &other {
                    PromptError::Parse { .. } => "parse",
                    PromptError::InvalidInputs { .. } => "invalid_inputs",
                    PromptError::Signature { .. } => "signature",
                    PromptError::MissingVariables { .. } | PromptError::TemplateRender { .. } => {
                        "template"
                    }
                    _ => "prompt",
                };
                Self::of_kind(kind, other.to_string())
            }
        }
    }
}

/// The error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// A step failed (after its retries). Carries the whole history of the run.
    #[error(
        "workflow `{workflow}` failed at step `{step}` (correlation id {correlation_id}): {error}"
    )]
    StepFailed {
        /// The workflow.
        workflow: String,
        /// The step that failed (a path such as `fan_out/summary` or `per_doc[3]`).
        step: String,
        /// Why (boxed: it is large, and errors travel by value).
        error: Box<StepError>,
        /// The run's correlation id.
        correlation_id: CorrelationId,
        /// The failing step's breadcrumbs: its attempts, then the failed
        /// operation's own trail.
        breadcrumbs: Vec<Breadcrumb>,
        /// The run report up to the failure: its steps are the history of the
        /// run, in start order, each with its status.
        report: Box<RunReport>,
    },
    /// The run was cancelled through its token.
    #[error("workflow `{workflow}` was cancelled (correlation id {correlation_id})")]
    Cancelled {
        /// The workflow.
        workflow: String,
        /// The run's correlation id.
        correlation_id: CorrelationId,
        /// The steps that ran or were stopped.
        history: Vec<StepRecord>,
    },
    /// A workflow definition (built in code) is invalid.
    #[error("invalid workflow `{workflow}`: {problems:?}")]
    Invalid {
        /// The workflow.
        workflow: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A workflow file has problems; each names its location.
    #[error("{}", render_problems(path, problems))]
    File {
        /// The file.
        path: String,
        /// Every problem found, with its location.
        problems: Vec<FileProblem>,
    },
}

/// One problem in a workflow file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    /// The line (from 1), when known.
    pub line: Option<usize>,
    /// The column (from 1) of the offending key or value, when known.
    pub column: Option<usize>,
    /// Where in the document: `steps[2] (answer).inputs.question`.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// The place in the file, with its line, for printing as rustc does.
    #[serde(skip)]
    pub at: Option<SourceLocation>,
}

fn render_problems(path: &str, problems: &[FileProblem]) -> String {
    let mut out = format!("{path}: {} problem(s)", problems.len());
    for problem in problems {
        out.push_str(&format!("\n{}: {}", problem.location, problem.message));
        match (&problem.at, problem.line) {
            (Some(at), _) => out.push_str(&format!("\n{at}")),
            (None, Some(line)) => out.push_str(&format!("\n  --> {path}:{line}")),
            (None, None) => {}
        }
    }
    out
}

impl WorkflowError {
    /// Whether running the workflow again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::StepFailed { error, .. } => error.retryable,
            _ => false,
        }
    }

    /// The step history of a failed or cancelled run.
    pub fn history(&self) -> &[StepRecord] {
        match self {
            Self::StepFailed { report, .. } => &report.steps,
            Self::Cancelled { history, .. } => history,
            _ => &[],
        }
    }

    /// The provider's HTTP status, when a provider failure ended the run.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::StepFailed { error, .. } => error.status,
            _ => None,
        }
    }

    /// The provider's Retry-After, when a provider failure ended the run.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::StepFailed { error, .. } => error.retry_after,
            _ => None,
        }
    }
}

impl From<WorkflowError> for PromptError {
    fn from(error: WorkflowError) -> Self {
        // A workflow used as a module reports through the module error type.
        PromptError::Composite {
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}
