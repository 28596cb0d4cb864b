//! Program state as plain JSON: instructions, templates, demos and settings
//! of every predictor. Loading it never executes code.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CallSettings, Module, Predict};
use crate::adapter::{Adapter, Example};
use crate::error::{PromptError, Result};
use crate::template::PromptTemplate;

/// The saved state of one predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictState {
    /// The signature, in string form (its shape must match on load).
    pub signature: String,
    /// The instructions (empty for the default objective).
    pub instructions: String,
    /// The template the instructions come from (its definition, with its
    /// version), when one is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateState>,
    /// The adapter.
    pub adapter: Adapter,
    /// The demos.
    pub demos: Vec<Example>,
    /// The call settings.
    pub settings: CallSettings,
}

/// An instructions template in saved state: the definition (name, version,
/// source, metadata) and the variables it was rendered with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TemplateState {
    /// The template's definition.
    pub template: PromptTemplate,
    /// The variables.
    pub vars: Map<String, Value>,
}

impl PartialEq for TemplateState {
    fn eq(&self, other: &Self) -> bool {
        self.template.name() == other.template.name()
            && self.template.version() == other.template.version()
            && self.template.source() == other.template.source()
            && self.vars == other.vars
    }
}

/// A program's saved state: every predictor's, by name. Plain JSON: loading
/// it never executes code.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramState {
    /// The format version.
    pub version: u32,
    /// Predictor states by name.
    pub predictors: BTreeMap<String, PredictState>,
}

/// The state of every predictor of `module`.
pub fn program_state<M: Module + ?Sized>(module: &M) -> ProgramState {
    ProgramState {
        version: 1,
        predictors: module
            .predictors()
            .into_iter()
            .map(|(name, predict)| (name, predict.state()))
            .collect(),
    }
}

/// Saves `module`'s state as JSON at `path` (atomically: a temporary file,
/// then a rename).
pub fn save_program<M: Module + ?Sized>(module: &M, path: &Path) -> Result<()> {
    let io = |e: std::io::Error| PromptError::State {
        message: format!("cannot write {}: {e}", path.display()),
    };
    let text =
        serde_json::to_string_pretty(&program_state(module)).map_err(|e| PromptError::State {
            message: e.to_string(),
        })?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// Loads state saved by [`save_program`] into `module`. Every saved predictor
/// must exist in the module, with a matching signature.
pub fn load_program<M: Module + ?Sized>(module: &mut M, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| PromptError::State {
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let state: ProgramState = serde_json::from_str(&text).map_err(|e| PromptError::State {
        message: format!("{} is not a saved program: {e}", path.display()),
    })?;
    if state.version != 1 {
        return Err(PromptError::State {
            message: format!(
                "{}: unsupported state version {}",
                path.display(),
                state.version
            ),
        });
    }
    let mut predictors: BTreeMap<String, &mut Predict> =
        module.predictors_mut().into_iter().collect();
    for (name, saved) in state.predictors {
        let predict = predictors
            .get_mut(&name)
            .ok_or_else(|| PromptError::State {
                message: format!("{}: the program has no predictor `{name}`", path.display()),
            })?;
        predict.load_state(saved)?;
    }
    Ok(())
}
