//! Prompts and modules of DSPex, in the spirit of DSPy: prompt [`template`]s,
//! typed [`signature`]s, [`adapter`]s that format prompts and parse replies,
//! and the [`module`]s `Predict` and `ChainOfThought`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::{ChainOfThought, Lm, Module, Signature};
//! use serde_json::json;
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client
//!     .add_scripted("dummy", ScriptedLm::replies(["[[ ## reasoning ## ]]\nParis is the capital.\n[[ ## answer ## ]]\nParis\n[[ ## completed ## ]]"]))
//!     .await?;
//! let cot = ChainOfThought::new(Signature::parse("question -> answer")?, Lm::new(&client, "dummy"));
//! let inputs = json!({"question": "What is the capital of France?"});
//! let prediction = cot.forward(inputs.as_object().unwrap()).await?;
//! assert_eq!(prediction.text("answer"), Some("Paris"));
//! assert_eq!(prediction.text("reasoning"), Some("Paris is the capital."));
//! # Ok(()) }
//! ```

pub mod adapter;
mod error;
pub mod evaluate;
pub mod module;
pub mod optimize;
pub mod signature;
pub mod template;
pub mod tool;

pub use adapter::{Adapter, Example};
pub use error::{PromptError, Result};
pub use evaluate::{EvalReport, Evaluate, ExampleResult, Metric, load_dataset};
pub use module::{
    AgentMode, AgentStep, BestOfN, CallSettings, ChainOfThought, Inputs, Lm, LmCall, Module,
    ModuleEvent, MultiChainComparison, Parallel, ParallelResults, Predict, Prediction,
    PredictorTrace, ProgramState, ReAct, Refine, RewardFn, RunContext, TemplateState,
    ToolCallRecord, Trajectory, batch, load_program, program_state, save_program,
};
pub use optimize::{BootstrapFewShot, CompileReport, LabeledFewShot};
pub use signature::{Field, FieldType, Signature};
pub use tool::Tool;
