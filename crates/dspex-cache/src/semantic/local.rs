//! A local sentence-transformer embedder (feature `local-embeddings`): a
//! BERT-family model from a Hugging Face model directory (`config.json`,
//! `tokenizer.json`, `model.safetensors`), run on the CPU with candle, mean
//! pooled over the attention mask and L2-normalised, as sentence-transformers
//! does for all-MiniLM-L6-v2. Nothing is downloaded at run time.
//!
//! Inference runs on tokio's blocking pool so it never stalls async workers.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use futures::future::BoxFuture;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{CacheError, Result};
use crate::semantic::{Embedder, normalize};

/// The default threshold for all-MiniLM-L6-v2, measured on `qqp-dev.jsonl`:
/// pairwise precision 0.827 at recall 0.39. (0.90 is the lowest threshold
/// reaching 0.80, at 0.801: too close to the line to be a default.)
pub const DEFAULT_THRESHOLD: f32 = 0.91;

/// Longest input in tokens (all-MiniLM-L6-v2's `max_seq_length`).
pub const MAX_TOKENS: usize = 256;

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    dimension: usize,
}

/// A BERT-family sentence embedder loaded from a model directory.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<Model>,
    name: String,
    threshold: f32,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("name", &self.name)
            .field("dimension", &self.model.dimension)
            .finish_non_exhaustive()
    }
}

fn model_error(path: &Path, message: impl std::fmt::Display) -> CacheError {
    CacheError::Model {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl LocalEmbedder {
    /// Loads the model in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| model_error(&config_path, e))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| model_error(&config_path, e))?;
        let dimension = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("hidden_size").and_then(serde_json::Value::as_u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| model_error(&config_path, "no hidden_size"))?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| model_error(&tokenizer_path, e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| model_error(&tokenizer_path, e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));

        let weights_path = dir.join("model.safetensors");
        // Read into memory rather than mmap: mapping a file is `unsafe` (another
        // process could change it under us) and this crate forbids unsafe code.
        let weights = std::fs::read(&weights_path).map_err(|e| model_error(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DTYPE, &Device::Cpu)
            .map_err(|e| model_error(&weights_path, e))?;
        let bert = BertModel::load(vb, &config).map_err(|e| model_error(&weights_path, e))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "model")
            .or_else(|| {
                dir.parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "local".to_owned());
        Ok(Self {
            model: Arc::new(Model {
                bert,
                tokenizer,
                dimension,
            }),
            name,
            threshold: DEFAULT_THRESHOLD,
        })
    }

    /// Uses another default threshold (for models other than
    /// all-MiniLM-L6-v2: measure it with `dspex cache calibrate`).
    #[must_use]
    pub fn with_threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    /// Embeds `texts` on the calling thread.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.model.embed(texts, &self.name)
    }
}

impl Model {
    fn embed(&self, texts: &[&str], name: &str) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e: &dyn std::fmt::Display| CacheError::embedding(name, e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| err(&e))?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let device = Device::Cpu;
        let ids = Tensor::from_vec(ids, (rows, cols), &device).map_err(|e| err(&e))?;
        let mask = Tensor::from_vec(mask, (rows, cols), &device).map_err(|e| err(&e))?;
        let types = ids.zeros_like().map_err(|e| err(&e))?;
        let hidden = self
            .bert
            .forward(&ids, &types, Some(&mask))
            .map_err(|e| err(&e))?;
        // Mean over real tokens only.
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(|e| err(&e))?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|h| h.sum(1))
            .map_err(|e| err(&e))?;
        let counts = mask.sum(1).map_err(|e| err(&e))?;
        let mean = summed.broadcast_div(&counts).map_err(|e| err(&e))?;
        let mut vectors: Vec<Vec<f32>> = mean.to_vec2().map_err(|e| err(&e))?;
        for v in &mut vectors {
            normalize(v);
        }
        Ok(vectors)
    }
}

impl Embedder for LocalEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> usize {
        self.model.dimension
    }

    fn default_threshold(&self) -> f32 {
        self.threshold
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        let model = Arc::clone(&self.model);
        let name = self.name.clone();
        let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        Box::pin(async move {
            let handle = tokio::runtime::Handle::try_current();
            match handle {
                Ok(handle) => handle
                    .spawn_blocking(move || {
                        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                        model.embed(&refs, &name)
                    })
                    .await
                    .map_err(|e| CacheError::embedding(self.name.clone(), e.to_string()))?,
                Err(_) => {
                    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                    model.embed(&refs, &name)
                }
            }
        })
    }
}
