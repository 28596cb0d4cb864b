//! KNNFewShot: demos chosen per input, as the `k` training examples nearest
//! to it by an embedder (the cache's: lexical, local MiniLM or an
//! embeddings API).
//!
//! [`KnnFewShot`] wraps a program: each call embeds the inputs (field names
//! and values, as text), takes the `k` nearest training examples by cosine
//! similarity (ties by trainset order) and runs the program with them as
//! every predictor's demos (fitted to its signature, as
//! [`LabeledFewShot`](super::LabeledFewShot) fits them). The trainset is
//! embedded once, at compile time.
//!
//! Departure from DSPy: DSPy's `KNNFewShot` runs `BootstrapFewShot` over the
//! neighbours on every call (up to `k` teacher calls per prediction, then
//! the labelled fill-up). Here the neighbours' labels are the demos, one
//! LM call per prediction: a bootstrap keeps exactly those examples when
//! its teacher is right, and costs `k` more calls every time it runs.
//!
//! A compiled program saves as ordinary program state with a `knn` section
//! (`k`, the embedder's name, the examples): plain JSON, loaded back with
//! [`KnnFewShot::from_state`] and an embedder of the same name.

use std::sync::Arc;

use dspex_cache::Embedder;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fewshot::fit;
use crate::adapter::Example;
use crate::error::{PromptError, Result};
use crate::module::{Inputs, Module, Predict, Prediction, RunContext};

/// What a saved KNN program holds beside its predictors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnState {
    /// Neighbours per call.
    pub k: usize,
    /// The embedder's name (`lexical`, `minilm`...); loading needs one of
    /// the same name.
    pub embedder: String,
    /// The trainset the neighbours come from.
    pub examples: Vec<Example>,
}

/// A program whose demos are the nearest training examples to each input.
#[derive(Clone)]
pub struct KnnFewShot<M> {
    program: M,
    k: usize,
    examples: Arc<[Example]>,
    vectors: Arc<[Vec<f32>]>,
    embedder: Arc<dyn Embedder>,
}

impl<M> std::fmt::Debug for KnnFewShot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnnFewShot")
            .field("k", &self.k)
            .field("examples", &self.examples.len())
            .field("embedder", &self.embedder.name())
            .finish_non_exhaustive()
    }
}

/// The text an input is embedded as: `name: value` per input field.
fn input_text(inputs: &Inputs) -> String {
    inputs
        .iter()
        .map(|(name, value)| match value {
            Value::String(text) => format!("{name}: {text}"),
            other => format!("{name}: {other}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn embed_error(error: &dspex_cache::CacheError) -> PromptError {
    PromptError::Optimize {
        message: format!("KNNFewShot could not embed: {error}"),
    }
}

impl<M: Module + Clone> KnnFewShot<M> {
    /// Embeds `trainset` with `embedder`; calls to the result take the `k`
    /// nearest examples as demos.
    pub async fn compile(
        program: &M,
        trainset: &[Example],
        k: usize,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self> {
        if k == 0 {
            return Err(PromptError::Optimize {
                message: "KNNFewShot's k must be at least 1".into(),
            });
        }
        if trainset.is_empty() {
            return Err(PromptError::Optimize {
                message: "the trainset is empty".into(),
            });
        }
        let texts: Vec<String> = trainset.iter().map(|e| input_text(&e.inputs)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&refs).await.map_err(|e| embed_error(&e))?;
        Ok(Self {
            program: program.clone(),
            k,
            examples: trainset.into(),
            vectors: vectors.into(),
            embedder,
        })
    }

    /// Rebuilds a saved KNN program around `program` (whose predictors'
    /// state was loaded already). The embedder must be the one it was
    /// compiled with.
    pub async fn from_state(
        program: M,
        state: KnnState,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self> {
        if embedder.name() != state.embedder {
            return Err(PromptError::State {
                message: format!(
                    "this KNN program was compiled with the `{}` embedder, not `{}`",
                    state.embedder,
                    embedder.name()
                ),
            });
        }
        Self::compile(&program, &state.examples, state.k, embedder).await
    }

    /// What to save beside the predictors' state.
    pub fn state(&self) -> KnnState {
        KnnState {
            k: self.k,
            embedder: self.embedder.name().to_owned(),
            examples: self.examples.to_vec(),
        }
    }

    /// The wrapped program.
    pub fn program(&self) -> &M {
        &self.program
    }

    /// The indices of the `k` training examples nearest to `inputs`.
    pub async fn neighbours(&self, inputs: &Inputs) -> Result<Vec<usize>> {
        let text = input_text(inputs);
        let query = self
            .embedder
            .embed(&[text.as_str()])
            .await
            .map_err(|e| embed_error(&e))?;
        let Some(query) = query.first() else {
            return Ok(Vec::new());
        };
        let mut scored: Vec<(usize, f32)> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i, v.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        // Most similar first; equal similarity keeps trainset order.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(scored.into_iter().take(self.k).map(|(i, _)| i).collect())
    }
}

impl<M: Module + Clone + 'static> Module for KnnFewShot<M> {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(async move {
            let neighbours = self.neighbours(inputs).await?;
            let mut program = self.program.clone();
            for (_, predict) in program.predictors_mut() {
                let demos: Vec<Example> = neighbours
                    .iter()
                    .filter_map(|&i| self.examples.get(i))
                    .filter_map(|example| fit(predict, example))
                    .collect();
                predict.set_demos(demos);
            }
            program.forward_with(inputs, run).await
        })
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        self.program.predictors()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        self.program.predictors_mut()
    }
}
