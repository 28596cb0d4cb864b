//! Workflows for DSPex: named steps that run in order over a shared context
//! (a map of JSON values), each merging its outputs into it.
//!
//! Every run has a correlation id that reaches each LM call, event and log
//! line; a failed run returns the step history and the failing step's
//! breadcrumbs; each step gets a tracing span, a duration metric and a line in
//! the run's [`RunReport`]. Steps may retry and time out; a parallel step runs
//! branches concurrently and merges their outputs; a map step runs a step over
//! each element of a list. Workflows can also be written as TOML files
//! ([`declarative`]), and a workflow is a [`Module`](dspex_prompt::Module), so
//! it can be evaluated and optimised like any program.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_workflow::{Context, Node, RunOptions, Workflow};
//! use serde_json::json;
//!
//! let workflow = Workflow::new("greet")
//!     .then(Node::step("name", |scope| {
//!         let name = scope.get("user").cloned();
//!         async move {
//!             let mut out = Context::new();
//!             out.insert("greeting".into(), json!(format!("hello, {}", name.unwrap_or_default())));
//!             Ok(out)
//!         }
//!     }));
//! let mut initial = Context::new();
//! initial.insert("user".into(), json!("ada"));
//! let run = workflow.run(initial, RunOptions::default()).await?;
//! assert_eq!(run.context["greeting"], json!("hello, \"ada\""));
//! assert_eq!(run.report.steps.len(), 1);
//! # Ok(()) }
//! ```

pub mod declarative;
mod engine;
mod error;
mod report;

pub use engine::{
    Context, MergeRule, ModuleStep, Node, RetryPolicy, RunOptions, RunOutput, Scope, Step,
    StepModule, StepOutput, Workflow,
};
pub use error::{FileProblem, StepError, WorkflowError};
pub use report::{RunReport, StepRecord, StepStatus};
