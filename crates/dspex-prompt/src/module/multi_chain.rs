//! [`MultiChainComparison`]: several chains of thought compared by one
//! more call that writes the final answer, as DSPy's module of that name.

use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{ChainOfThought, Inputs, Lm, Module, Predict, Prediction, RunContext};
use crate::error::{PromptError, Result};
use crate::signature::{Field, FieldType, Signature};

/// Runs `m` chain-of-thought attempts concurrently (each under its own
/// rollout id, at temperature 0.7), then asks the model to compare them and
/// answer, also at 0.7, DSPy's temperature for the comparison. (DSPy leaves
/// making the attempts to the caller; [`compare`](Self::compare) takes
/// attempts made elsewhere in the same way.) The comparison sees each attempt as DSPy shows it:
/// «I'm trying to {first line of the reasoning} I'm not sure but my
/// prediction is {first line of the last output}».
#[derive(Clone, Debug)]
pub struct MultiChainComparison {
    signature: Signature,
    attempts: ChainOfThought,
    compare: Predict,
    m: usize,
    temperature: f32,
}

impl MultiChainComparison {
    /// Compares 3 attempts (DSPy's default) at `signature`.
    pub fn new(signature: Signature, lm: Lm) -> Result<Self> {
        Self::with_attempts(signature, lm, 3)
    }

    /// Compares `m` attempts.
    pub fn with_attempts(signature: Signature, lm: Lm, m: usize) -> Result<Self> {
        let m = m.max(1);
        let mut inputs = signature.inputs().to_vec();
        for i in 1..=m {
            let mut field = Field::new(format!("reasoning_attempt_{i}"), FieldType::Str);
            field.description = Some(format!("Student attempt #{i}"));
            inputs.push(field);
        }
        let mut rationale = Field::new("rationale", FieldType::Str);
        rationale.description = Some(
            "Accurate reasoning: thank you everyone; now, holistically, the corrected reasoning"
                .into(),
        );
        let mut outputs = vec![rationale];
        outputs.extend(signature.outputs().iter().cloned());
        let compare = Predict::new(
            Signature::new(inputs, outputs, signature.raw_instructions())?,
            lm.clone(),
        );
        Ok(Self {
            attempts: ChainOfThought::new(signature.clone(), lm),
            signature,
            compare,
            m,
            temperature: 0.7,
        })
    }

    /// The temperature of the attempts and the comparison (0.7 by default).
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }

    /// The comparison of `completions` (attempts made elsewhere: each with
    /// `reasoning` or `rationale` and the signature's outputs) for `inputs`.
    /// Exactly `m` are shown: missing ones say so, extra ones are left out.
    pub async fn compare(
        &self,
        inputs: &Inputs,
        completions: &[serde_json::Map<String, Value>],
        run: RunContext,
    ) -> Result<Prediction> {
        let last = self
            .signature
            .outputs()
            .last()
            .map(|f| f.name.as_str())
            .unwrap_or_default();
        let mut ask = inputs.clone();
        for i in 0..self.m {
            let text = completions.get(i).map_or_else(
                || "(this attempt failed)".to_owned(),
                |completion| {
                    let first_line = |key: &str| {
                        completion.get(key).map_or_else(String::new, |value| {
                            let text = match value {
                                Value::String(text) => text.clone(),
                                other => other.to_string(),
                            };
                            text.trim()
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .trim()
                                .to_owned()
                        })
                    };
                    let rationale = match first_line("rationale") {
                        text if text.is_empty() => first_line("reasoning"),
                        text => text,
                    };
                    format!(
                        "«I'm trying to {rationale} I'm not sure but my prediction is {}»",
                        first_line(last)
                    )
                },
            );
            ask.insert(format!("reasoning_attempt_{}", i + 1), Value::String(text));
        }
        let mut run = run;
        run.temperature = Some(self.temperature);
        self.compare.forward_with(&ask, run).await
    }

    async fn run(&self, inputs: &Inputs, run: RunContext) -> Result<Prediction> {
        let started = Instant::now();
        self.signature.validate_inputs(inputs)?;
        let attempts = futures::future::join_all((0..self.m).map(|i| {
            let mut attempt = run.clone().with_rollout(&format!("multi_chain/{i}"));
            attempt.temperature = Some(self.temperature);
            self.attempts.forward_with(inputs, attempt)
        }))
        .await;
        let mut spent = Prediction::default();
        let mut completions = Vec::with_capacity(self.m);
        let mut last_error = None;
        for attempt in attempts {
            match attempt {
                Ok(prediction) => {
                    completions.push(prediction.outputs.clone());
                    spent.absorb(prediction);
                }
                Err(error) => last_error = Some(error),
            }
        }
        if completions.is_empty() {
            return Err(last_error.unwrap_or_else(|| PromptError::Composite {
                message: "no reasoning attempt was made".into(),
                retryable: false,
            }));
        }
        let mut prediction = self.compare(inputs, &completions, run).await?;
        prediction.absorb(spent);
        prediction.latency = started.elapsed();
        Ok(prediction)
    }
}

impl Module for MultiChainComparison {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(self.run(inputs, run))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![
            ("attempts".to_owned(), self.attempts.predict()),
            ("compare".to_owned(), &self.compare),
        ]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![
            ("attempts".to_owned(), self.attempts.predict_mut()),
            ("compare".to_owned(), &mut self.compare),
        ]
    }
}
