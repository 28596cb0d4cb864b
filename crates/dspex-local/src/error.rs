//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or generating with it.
///
/// Errors about a model file always name the file, so a caller with several
/// configured models can tell which one is broken.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file does not exist.
    #[error("model file not found: {}", path.display())]
    MissingFile {
        /// The path that was given.
        path: PathBuf,
    },

    /// Reading the model file failed for another reason (permissions, I/O).
    #[error("cannot read model file {}: {source}", path.display())]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a GGUF file this crate can read, or its header or
    /// metadata is inconsistent.
    #[error("corrupt GGUF file {}: {reason}", path.display())]
    Corrupt {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The file ends before the data its header announces (an interrupted
    /// download or copy).
    #[error("truncated GGUF file {}: {reason}", path.display())]
    Truncated {
        /// The model file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// The file's SHA-256 is not the expected one.
    #[error("SHA-256 mismatch for {}: expected {expected}, got {actual}", path.display())]
    HashMismatch {
        /// The model file.
        path: PathBuf,
        /// The expected digest (lower-case hex, as configured).
        expected: String,
        /// The digest of the file (lower-case hex).
        actual: String,
    },

    /// The GGUF's `general.architecture` is not one this crate implements.
    #[error(
        "unsupported architecture {architecture:?} in {}: supported are {}",
        path.display(),
        supported.join(", ")
    )]
    UnsupportedArchitecture {
        /// The model file.
        path: PathBuf,
        /// The architecture the file declares.
        architecture: String,
        /// The architectures this crate can run.
        supported: &'static [&'static str],
    },

    /// The model uses a feature of its architecture that is not implemented
    /// (a tokenizer type, a RoPE scaling mode, a tensor type...).
    #[error("unsupported model feature in {}: {feature}", path.display())]
    Unsupported {
        /// The model file.
        path: PathBuf,
        /// What is not supported.
        feature: String,
    },

    /// The prompt does not leave room for a single generated token.
    #[error(
        "prompt of {prompt_tokens} tokens does not fit the context of {context_length} tokens \
         (at least one token must be left for generation)"
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The effective context length of the model.
        context_length: usize,
    },

    /// An empty prompt: there is nothing to condition the first token on.
    #[error("the prompt is empty")]
    EmptyPrompt,

    /// A token id that is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    InvalidToken {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// Invalid generation parameters (negative temperature, top_p outside
    /// (0, 1], ...).
    #[error("invalid generation parameters: {0}")]
    InvalidParams(String),

    /// Building or running the tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// Rendering the chat template failed.
    #[error("chat template error: {0}")]
    Template(String),

    /// A tensor operation failed.
    #[error("candle error while {context}: {source}")]
    Candle {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },

    /// The dedicated thread pool could not be created.
    #[error("cannot create the inference thread pool: {0}")]
    ThreadPool(String),
}

/// Adds context to candle results.
pub(crate) trait CandleContext<T> {
    /// Wraps a candle error with what was being done.
    fn ctx(self, context: &str) -> Result<T, LocalError>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T, LocalError> {
        self.map_err(|source| LocalError::Candle {
            context: context.to_owned(),
            source,
        })
    }
}
