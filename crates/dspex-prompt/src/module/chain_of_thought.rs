//! [`ChainOfThought`]: Predict with a reasoning field before the outputs.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{Inputs, Lm, Module, ModuleEvent, Predict, Prediction, RunContext};
use crate::error::Result;
use crate::signature::{Field, FieldType, Signature};

/// Predict with a `reasoning` output placed before the others, so the model
/// thinks before it answers.
#[derive(Clone, Debug)]
pub struct ChainOfThought {
    predict: Predict,
}

impl ChainOfThought {
    /// The field ChainOfThought adds.
    pub fn reasoning_field() -> Field {
        Field {
            name: "reasoning".into(),
            ty: FieldType::Str,
            description: Some("Think step by step in order to produce the other outputs.".into()),
        }
    }

    /// Chain of thought over `signature`.
    pub fn new(signature: Signature, lm: Lm) -> Self {
        Self {
            predict: Predict::new(signature.prepend_output(Self::reasoning_field()), lm),
        }
    }

    /// The inner predictor.
    pub fn predict(&self) -> &Predict {
        &self.predict
    }

    /// The inner predictor, mutably (adapter, demos, settings).
    pub fn predict_mut(&mut self) -> &mut Predict {
        &mut self.predict
    }
}

impl Module for ChainOfThought {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        self.predict.forward_with(inputs, run)
    }

    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxStream<'a, Result<ModuleEvent>> {
        self.predict.stream_with(inputs, run)
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![("predict".to_owned(), &self.predict)]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![("predict".to_owned(), &mut self.predict)]
    }
}
