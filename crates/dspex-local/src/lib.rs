//! DSPex's local language-model engine: runs GGUF models (`llama` and
//! `gemma3` architectures) on the CPU with candle, pure Rust.
//!
//! * [`LocalModel::load`] reads a GGUF file (optionally checking its
//!   SHA-256), re-quantizes slow tensor types ([`Requantize`]) and builds
//!   the tokenizer from the file's own vocabulary.
//! * [`LocalModel::render_chat`] applies the file's Jinja chat template.
//! * [`LocalModel::generate`] samples a completion, streaming UTF-8 text
//!   pieces, stopping at end-of-turn tokens, stop strings, `max_tokens`,
//!   the context length or a cancel flag. Prompts sharing a prefix with a
//!   recent one reuse its KV cache ([`PrefixCacheStats`]) for every shared
//!   token but the last, with bit-identical logits to a cold run (and
//!   seeded sampling the same text): a prompt row's arithmetic does not
//!   depend on which call processes it.
//!
//! The model is `Send + Sync`; concurrent generations share the weights and
//! each have their own KV state. Generation blocks: async callers run it on
//! a blocking thread. It runs on a dedicated rayon pool of
//! [`LoadOptions::threads`] threads.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use dspex_local::{ChatTurn, GenerateParams, LoadOptions, LocalModel};
//!
//! # fn main() -> Result<(), dspex_local::LocalError> {
//! let model = LocalModel::load(
//!     "models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
//!     &LoadOptions::default(),
//! )?;
//! let prompt = model.render_chat(&[ChatTurn::new("user", "What is the capital of France?")])?;
//! let ids = model.tokenize(&prompt)?;
//! let params = GenerateParams { max_tokens: 32, ..GenerateParams::default() };
//! let out = model.generate(&ids, &params, &AtomicBool::new(false), &mut |piece| {
//!     let _ = piece; // stream it somewhere
//! })?;
//! assert!(out.completion_tokens <= 32);
//! # Ok(())
//! # }
//! ```

mod cache;
mod chat;
mod error;
mod gguf;
mod kernels;
mod model;
mod sampling;
mod stream;
mod tokenizer;
mod vnni;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use cache::PrefixCacheStats;
pub use chat::{ChatTurn, PLAIN_TEMPLATE};
pub use error::LocalError;
pub use model::{Requantize, SUPPORTED_ARCHITECTURES};

use cache::{Entry, PrefixCache};
use chat::ChatTemplate;
use error::CandleContext;
use gguf::GgufFile;
use model::{Arch, KvState, Model, kv_bytes};
use sampling::Rng;
use stream::{Pushed, TextStream};
use tokenizer::GgufTokenizer;

/// Reply tokens the KV state is sized for before it has to grow.
const KV_HINT_TOKENS: usize = 512;

/// Prompt tokens processed per forward pass: bounds the attention scores
/// (`heads x chunk x context` floats) and the activations.
const PROMPT_CHUNK: usize = 512;

/// How to load a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Context length to use; `None` takes the GGUF's training context.
    /// Larger values are clamped to it. Memory grows with the tokens
    /// actually used, not with this bound.
    pub context_length: Option<usize>,
    /// Threads of the inference pool; `None` = available cores.
    pub threads: Option<usize>,
    /// Expected SHA-256 of the file (hex, any case). Checked before
    /// parsing; costs a full read of the file.
    pub expected_sha256: Option<String>,
    /// Bound of the prompt-prefix KV cache in bytes; 0 disables it.
    pub prefix_cache_bytes: usize,
    /// Load-time re-quantization of slow tensor types.
    pub requantize: Requantize,
    /// Run the prompt pass of Q4_1 matrices on the AVX-512 VNNI kernel
    /// when the CPU has it (the default). The kernel keeps a repacked copy
    /// of those matrices (about as large as the file's). `false` keeps the
    /// portable path (dequantize, then f32 GEMM) on every CPU.
    pub vnni: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context_length: None,
            threads: None,
            expected_sha256: None,
            prefix_cache_bytes: 128 << 20,
            requantize: Requantize::default(),
            vnni: true,
        }
    }
}

/// A special token: its id and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// Token id.
    pub id: u32,
    /// Token text as in the vocabulary.
    pub text: String,
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelInfo {
    /// `general.architecture` (`llama`, `gemma3`).
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Effective context length (tokens of prompt plus completion).
    pub context_length: usize,
    /// The context length the model was trained for (from the GGUF).
    pub train_context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The GGUF's Jinja chat template (`None`: [`PLAIN_TEMPLATE`] is used).
    pub chat_template: Option<String>,
    /// Beginning-of-sequence token.
    pub bos: Option<SpecialToken>,
    /// End-of-sequence token.
    pub eos: Option<SpecialToken>,
    /// End-of-turn token of the chat format (`<|im_end|>`,
    /// `<end_of_turn>`), if the vocabulary has one.
    pub end_of_turn: Option<SpecialToken>,
    /// All tokens that end a generation (eos, end of turn, ...).
    pub end_of_generation: Vec<u32>,
    /// Whether the model expects a BOS token at the start of a prompt
    /// (`tokenizer.ggml.add_bos_token`); see [`LocalModel::tokenize_prompt`].
    pub add_bos: bool,
    /// Size of the file in bytes.
    pub file_bytes: u64,
    /// Bytes of weights in memory after re-quantization.
    pub weight_bytes: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Hidden size.
    pub embedding_length: usize,
    /// Threads of the inference pool.
    pub threads: usize,
}

/// Sampling and stopping parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; `None` or 1 = off.
    pub top_p: Option<f32>,
    /// RNG seed: the same seed and prompt give the same text. `None` =
    /// random.
    pub seed: Option<u64>,
    /// Strings that end the generation; the text is cut before the first
    /// one found. Empty strings are ignored.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
    /// The cancel flag was set.
    Cancelled,
}

/// The result of [`LocalModel::generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The completion (without the stop string or end token). Equal to
    /// the concatenation of the pieces passed to `on_piece`.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens sampled, not counting an end-of-generation token.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Time to process the prompt (to the first token's logits).
    pub prompt_time: Duration,
    /// Time spent after that, sampling and decoding.
    pub decode_time: Duration,
}

struct Inner {
    info: ModelInfo,
    model: Model,
    tokenizer: GgufTokenizer,
    chat: ChatTemplate,
    cache: Mutex<PrefixCache>,
    pool: rayon::ThreadPool,
}

/// A loaded model. Cheap to clone (the weights are shared), `Send + Sync`.
#[derive(Clone)]
pub struct LocalModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("info", &self.inner.info)
            .finish_non_exhaustive()
    }
}

/// Tokens that end a chat turn in common formats.
const END_OF_TURN_TEXTS: &[&str] = &["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"];

fn special(tok: &GgufTokenizer, id: Option<u32>) -> Option<SpecialToken> {
    let id = id?;
    Some(SpecialToken {
        id,
        text: tok.text_of(id)?.to_owned(),
    })
}

impl LocalModel {
    /// Loads a GGUF model.
    ///
    /// Errors: [`LocalError::MissingFile`], [`LocalError::HashMismatch`],
    /// [`LocalError::Corrupt`] / [`LocalError::Truncated`] for damaged
    /// files, [`LocalError::UnsupportedArchitecture`] for architectures
    /// other than [`SUPPORTED_ARCHITECTURES`]; all name the path.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self, LocalError> {
        if !path.exists() {
            return Err(LocalError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        if let Some(expected) = &options.expected_sha256 {
            let actual = gguf::sha256_file(path)?;
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(LocalError::HashMismatch {
                    path: path.to_path_buf(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let mut g = GgufFile::open(path)?;
        let architecture = g
            .str("general.architecture")
            .ok_or_else(|| g.missing("general.architecture"))?
            .to_owned();
        let arch = match architecture.as_str() {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            _ => {
                return Err(LocalError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture,
                    supported: SUPPORTED_ARCHITECTURES,
                });
            }
        };

        let threads = options
            .threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dspex-local-{i}"))
            .build()
            .map_err(|e| LocalError::ThreadPool(e.to_string()))?;

        let tokenizer = GgufTokenizer::from_gguf(&g)?;
        let model = pool.install(|| {
            Model::load(
                &mut g,
                arch,
                options.requantize,
                options.vnni.then(vnni::Vnni::detect).flatten(),
            )
        })?;
        if model.vocab_rows() < tokenizer.vocab_size() {
            return Err(LocalError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "{} embedding rows for {} tokens",
                    model.vocab_rows(),
                    tokenizer.vocab_size()
                ),
            });
        }

        let id = |key: &str| {
            g.get(key)
                .and_then(gguf::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokenizer.vocab_size())
        };
        let bos = special(&tokenizer, id("tokenizer.ggml.bos_token_id"));
        let eos = special(&tokenizer, id("tokenizer.ggml.eos_token_id"));
        let eot_id = id("tokenizer.ggml.eot_token_id").or_else(|| {
            END_OF_TURN_TEXTS
                .iter()
                .find_map(|t| tokenizer.id_of(t).filter(|&i| tokenizer.is_control(i)))
        });
        let end_of_turn = special(&tokenizer, eot_id);
        let mut end_of_generation: Vec<u32> = [&eos, &end_of_turn]
            .into_iter()
            .flatten()
            .map(|t| t.id)
            .collect();
        if let Some(eom) = id("tokenizer.ggml.eom_token_id") {
            end_of_generation.push(eom);
        }
        // Control tokens that mark the end of a document end a completion
        // too (SmolLM2's `<|endoftext|>`), as in llama.cpp's EOG set.
        for t in ["<|endoftext|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>"] {
            if let Some(i) = tokenizer.id_of(t).filter(|&i| tokenizer.is_control(i)) {
                end_of_generation.push(i);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(gguf::Value::as_bool)
            .unwrap_or(false);
        let chat_template = g.str("tokenizer.chat_template").map(str::to_owned);
        let chat = ChatTemplate::new(
            chat_template.as_deref(),
            bos.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
            eos.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
            add_bos,
        )?;

        let train = model.cfg.train_context;
        let context_length = options
            .context_length
            .filter(|&c| c > 0)
            .map_or(train, |c| c.min(train));
        let info = ModelInfo {
            architecture,
            name: g.str("general.name").map(str::to_owned),
            context_length,
            train_context_length: train,
            vocab_size: tokenizer.vocab_size(),
            chat_template,
            bos,
            eos,
            end_of_turn,
            end_of_generation,
            add_bos,
            file_bytes: g.file_len,
            weight_bytes: model.weight_bytes,
            layers: model.cfg.n_layer,
            embedding_length: model.cfg.n_embd,
            threads,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                info,
                model,
                tokenizer,
                chat,
                cache: Mutex::new(PrefixCache::new(options.prefix_cache_bytes)),
                pool,
            }),
        })
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Tokenizes `text` without adding BOS/EOS. Special tokens written in
    /// the text (`<|im_start|>`, `<bos>`) are recognised as single ids.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.inner.tokenizer.encode(text)
    }

    /// [`tokenize`](Self::tokenize), plus a leading BOS token when the
    /// model wants one ([`ModelInfo::add_bos`]) and the text does not
    /// already start with it. Use it for raw-text prompts; chat prompts
    /// from [`render_chat`](Self::render_chat) already carry the BOS
    /// their template writes.
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let mut ids = self.tokenize(text)?;
        if let (true, Some(bos)) = (self.inner.info.add_bos, &self.inner.info.bos)
            && ids.first() != Some(&bos.id)
        {
            ids.insert(0, bos.id);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens included as written. Invalid
    /// UTF-8 (a split multi-byte character) becomes U+FFFD.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, LocalError> {
        let tok = &self.inner.tokenizer;
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(tok.token_bytes(id).ok_or(LocalError::InvalidToken {
                id,
                vocab_size: tok.vocab_size(),
            })?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Renders a conversation with the GGUF's chat template and
    /// `add_generation_prompt = true`, or with [`PLAIN_TEMPLATE`] when the
    /// file has none.
    pub fn render_chat(&self, messages: &[ChatTurn]) -> Result<String, LocalError> {
        self.inner.chat.render(messages)
    }

    /// Counters of the prompt-prefix cache.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.inner.cache.lock().stats()
    }

    /// Empties the prompt-prefix cache (the counters are kept).
    pub fn clear_prefix_cache(&self) {
        self.inner.cache.lock().clear();
    }

    /// The logits of the token that would follow `prompt` (one per
    /// vocabulary entry), computed from scratch without the prefix cache.
    /// For scoring and for checking the forward pass against other
    /// implementations.
    pub fn next_token_logits(&self, prompt: &[u32]) -> Result<Vec<f32>, LocalError> {
        let inner = &*self.inner;
        self.validate_prompt(prompt)?;
        let mut kv = inner
            .pool
            .install(|| {
                KvState::new(
                    &inner.model.cfg,
                    prompt.len() + 1,
                    inner.info.context_length,
                )
            })
            .ctx("allocating the KV cache")?;
        let mut logits = Vec::new();
        for chunk in prompt.chunks(PROMPT_CHUNK) {
            logits = inner.forward(chunk, &mut kv, true)?;
        }
        Ok(logits)
    }

    fn validate_prompt(&self, prompt: &[u32]) -> Result<(), LocalError> {
        let info = &self.inner.info;
        if prompt.is_empty() {
            return Err(LocalError::EmptyPrompt);
        }
        if prompt.len() + 1 > info.context_length {
            return Err(LocalError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length: info.context_length,
            });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= info.vocab_size) {
            return Err(LocalError::InvalidToken {
                id,
                vocab_size: info.vocab_size,
            });
        }
        Ok(())
    }

    /// Generates a completion of `prompt` (token ids), blocking.
    ///
    /// `on_piece` receives the text as it is produced, in valid UTF-8
    /// pieces; text that might be the start of a stop string is held back
    /// until it is known not to be. `cancel` is checked between tokens
    /// (and between prompt chunks).
    ///
    /// Errors: [`LocalError::EmptyPrompt`], [`LocalError::PromptTooLong`]
    /// when `prompt.len() + 1` exceeds the context (never truncated),
    /// [`LocalError::InvalidToken`], [`LocalError::InvalidParams`].
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(&str),
    ) -> Result<Generation, LocalError> {
        let inner = &*self.inner;
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(LocalError::InvalidParams(format!(
                "temperature {} (must be finite and >= 0)",
                params.temperature
            )));
        }
        if let Some(p) = params.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(LocalError::InvalidParams(format!(
                "top_p {p} (must be in (0, 1])"
            )));
        }
        self.validate_prompt(prompt)?;
        inner.generate(prompt, params, cancel, on_piece)
    }
}

impl Inner {
    fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(&str),
    ) -> Result<Generation, LocalError> {
        let start = Instant::now();
        let cfg = &self.model.cfg;
        let ctx = self.info.context_length;
        let mut result = Generation {
            text: String::new(),
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            cached_prompt_tokens: 0,
            finish: Finish::Length,
            prompt_time: Duration::ZERO,
            decode_time: Duration::ZERO,
        };
        if params.max_tokens == 0 {
            return Ok(result);
        }
        if cancel.load(Ordering::Relaxed) {
            result.finish = Finish::Cancelled;
            return Ok(result);
        }

        // KV sized for this request; it grows if needed (it cannot exceed
        // the context anyway).
        // Room for the prompt and a typical reply up front; the KV state grows
        // (doubling) past it, so a huge `max_tokens` on a long-context model
        // does not reserve gigabytes a short reply never uses.
        let hint = prompt
            .len()
            .saturating_add(params.max_tokens.min(KV_HINT_TOKENS))
            .min(ctx);
        let cached = self.cache.lock().lookup(prompt);
        let mut kv = match &cached {
            Some((entry, reuse)) => self
                .pool
                .install(|| KvState::from_snapshot(cfg, &entry.kv, *reuse, hint, ctx))
                .ctx("restoring a cached prefix")?,
            None => KvState::new(cfg, hint, ctx).ctx("allocating the KV cache")?,
        };
        drop(cached);
        result.cached_prompt_tokens = kv.len();

        let mut logits = Vec::new();
        let rest = prompt.get(kv.len()..).unwrap_or_default();
        for chunk in rest.chunks(PROMPT_CHUNK) {
            if cancel.load(Ordering::Relaxed) {
                result.finish = Finish::Cancelled;
                result.prompt_time = start.elapsed();
                return Ok(result);
            }
            logits = self.forward(chunk, &mut kv, true)?;
        }
        result.prompt_time = start.elapsed();
        let decode_start = Instant::now();
        self.decode(
            prompt,
            params,
            cancel,
            on_piece,
            logits,
            &mut kv,
            &mut result,
        )?;
        result.decode_time = decode_start.elapsed();
        // The prompt's KV goes to the prefix cache once the reply is out:
        // copying it (~10 ms for 400 tokens of SmolLM2) would otherwise
        // delay the first token.
        self.remember(prompt, &kv)?;
        Ok(result)
    }

    /// Samples and decodes until a stop, the token limit or cancellation,
    /// starting from the prompt's last logits; fills `result`'s text,
    /// count and finish.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_piece: &mut dyn FnMut(&str),
        mut logits: Vec<f32>,
        kv: &mut KvState,
        result: &mut Generation,
    ) -> Result<(), LocalError> {
        let ctx = self.info.context_length;

        let mut rng = params.seed.map_or_else(Rng::from_entropy, Rng::new);
        let mut text = TextStream::new(&params.stop);
        let finish = loop {
            if cancel.load(Ordering::Relaxed) {
                break Finish::Cancelled;
            }
            let token = sampling::sample(&logits, params.temperature, params.top_p, &mut rng);
            if self.info.end_of_generation.contains(&token) {
                break Finish::Stop;
            }
            result.completion_tokens += 1;
            // Control tokens (other than the end ones) carry no text.
            if !self.tokenizer.is_control(token) {
                let bytes = self.tokenizer.token_bytes(token).unwrap_or_default();
                match text.push(bytes) {
                    Pushed::Piece(p) => {
                        if !p.is_empty() {
                            on_piece(&p);
                        }
                    }
                    Pushed::Stopped(p) => {
                        if !p.is_empty() {
                            on_piece(&p);
                        }
                        result.finish = Finish::Stop;
                        result.text = text.into_text();
                        return Ok(());
                    }
                }
            }
            if result.completion_tokens >= params.max_tokens
                || prompt.len() + result.completion_tokens >= ctx
            {
                break Finish::Length;
            }
            logits = self.forward(&[token], kv, false)?;
        };
        let tail = text.finish();
        if !tail.is_empty() {
            on_piece(&tail);
        }
        result.finish = finish;
        result.text = text.into_text();
        Ok(())
    }

    /// A forward pass on the dedicated pool. Only the forward pass runs
    /// there: sampling and `on_piece` stay on the caller's thread, so the
    /// callback need not be `Send`.
    fn forward(
        &self,
        tokens: &[u32],
        kv: &mut KvState,
        prompt: bool,
    ) -> Result<Vec<f32>, LocalError> {
        self.pool.install(|| self.model.forward(tokens, kv, prompt))
    }

    /// Offers the prompt's KV to the prefix cache.
    fn remember(&self, prompt: &[u32], kv: &KvState) -> Result<(), LocalError> {
        let bytes = kv_bytes(&self.model.cfg, prompt.len()) + prompt.len() * 4;
        {
            let cache = self.cache.lock();
            if !cache.accepts(bytes) || cache.covers(prompt) {
                return Ok(());
            }
        }
        // Copy outside the lock; other generations may look up meanwhile.
        let snapshot = self
            .pool
            .install(|| kv.snapshot(prompt.len()))
            .ctx("copying the prompt's KV")?;
        self.cache.lock().insert(Entry {
            tokens: prompt.to_vec(),
            kv: snapshot,
            bytes,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalModel>();
        check::<LocalError>();
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    /// KV reuse must be bit-exact, or seeded sampling would give other
    /// text once a prompt is cached (decode quantizes activations to
    /// Q8_0, which turns 1e-6 differences into different tokens).
    #[test]
    #[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
    #[allow(clippy::unwrap_used, clippy::float_cmp)]
    fn reused_prefix_is_bit_exact() {
        // The VNNI prompt kernel (where the CPU has it) and the portable path.
        for vnni in [true, false] {
            reused_prefix_is_bit_exact_with(vnni);
        }
    }

    #[allow(clippy::unwrap_used, clippy::float_cmp)]
    fn reused_prefix_is_bit_exact_with(vnni: bool) {
        let path = std::env::var("DSPEX_TEST_GGUF_SMOLLM2").unwrap();
        let options = LoadOptions {
            vnni,
            ..LoadOptions::default()
        };
        let m = LocalModel::load(path.as_ref(), &options).unwrap();
        let inner = &*m.inner;
        let cfg = &inner.model.cfg;
        let text = m
            .render_chat(&[ChatTurn::new(
                "user",
                "Tell me a story about a cat. ".repeat(6),
            )])
            .unwrap();
        let p = m.tokenize(&text).unwrap();
        assert!(p.len() > 70);
        let mut cold = KvState::new(cfg, 256, 2048).unwrap();
        let cold_logits = inner.forward(&p, &mut cold, true).unwrap();
        // Splits inside a row tile, on one, and a one-row remainder.
        for reuse in [1, 13, 37, 64, p.len() - 1] {
            let mut first = KvState::new(cfg, 256, 2048).unwrap();
            inner
                .forward(&p[..(reuse + 3).min(p.len())], &mut first, true)
                .unwrap();
            let snap = first.snapshot(first.len()).unwrap();
            let mut warm = KvState::from_snapshot(cfg, &snap, reuse, 256, 2048).unwrap();
            let warm_logits = inner.forward(&p[reuse..], &mut warm, true).unwrap();
            assert_eq!(cold.max_abs_diff(&warm), 0.0, "reuse {reuse}");
            assert_eq!(cold_logits, warm_logits, "reuse {reuse}");
            let mut c = cold.snapshot(cold.len()).unwrap();
            let mut cold2 = KvState::from_snapshot(cfg, &c, p.len(), 256, 2048).unwrap();
            for t in [504u32, 1194, 28, 339, 761] {
                let a = inner.forward(&[t], &mut cold2, false).unwrap();
                let b = inner.forward(&[t], &mut warm, false).unwrap();
                assert_eq!(a, b, "decode {t} after reuse {reuse}");
            }
            c.clear();
        }
    }
}
