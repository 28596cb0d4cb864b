//! What the instruction-writing optimisers share: asking a prompt model (or
//! a reflection model) for text through an ordinary [`Predict`], within the
//! engine's budget, and putting an instruction into a candidate.

use serde_json::{Map, Value};

use super::engine::{Engine, Purpose};
use crate::module::{CallSettings, Lm, Module, Predict, ProgramState};
use crate::signature::Signature;

/// A proposer: a signature with its instructions, run on the prompt model
/// at a temperature.
#[derive(Clone, Debug)]
pub(crate) struct Proposer {
    predict: Predict,
    output: String,
}

impl Proposer {
    /// `signature` (`a, b -> proposed_instruction`), its `instructions`,
    /// run on `lm` at `temperature`; the first output field is the answer.
    pub(crate) fn new(
        signature: &str,
        instructions: &str,
        lm: &Lm,
        temperature: Option<f32>,
    ) -> crate::Result<Self> {
        let signature = Signature::parse(signature)?.with_instructions(instructions);
        let output = signature
            .outputs()
            .first()
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let predict = Predict::new(signature, lm.clone()).with_settings(CallSettings {
            temperature,
            ..CallSettings::default()
        });
        Ok(Self { predict, output })
    }

    /// Asks once; `key` makes the call distinct (and its answer
    /// memoised under it). `None` when the budget is spent or the call
    /// failed (logged: a failed proposal is skipped, not fatal).
    pub(crate) async fn ask<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        purpose: Purpose,
        inputs: &Map<String, Value>,
        key: &str,
    ) -> Option<String> {
        match engine.call(purpose, &self.predict, inputs, key).await? {
            Ok(prediction) => {
                let text = prediction.text(&self.output)?.trim();
                let text = text.trim_matches('"').trim();
                (!text.is_empty()).then(|| text.to_owned())
            }
            Err(error) => {
                tracing::warn!(error = %error, key, "a proposal call failed; skipping it");
                None
            }
        }
    }
}

/// `state` with predictor `name`'s instructions replaced (its template, if
/// any, dropped: the text is what was chosen).
pub(crate) fn with_instructions(state: &ProgramState, name: &str, text: &str) -> ProgramState {
    let mut state = state.clone();
    if let Some(predictor) = state.predictors.get_mut(name) {
        predictor.instructions = text.to_owned();
        predictor.template = None;
    }
    state
}

/// The instructions a predictor of `state` runs with: its own, or its
/// signature's default objective.
pub(crate) fn effective_instructions<M: Module>(
    student: &M,
    state: &ProgramState,
    name: &str,
) -> String {
    match state.predictors.get(name) {
        Some(predictor) if !predictor.instructions.trim().is_empty() => {
            predictor.instructions.clone()
        }
        _ => student
            .predictors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.signature().instructions())
            .unwrap_or_default(),
    }
}

/// Inputs for a proposer call.
pub(crate) fn inputs(pairs: &[(&str, String)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
        .collect()
}
