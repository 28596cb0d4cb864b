//! Token estimation, for rate-limit admission before a call (the response's
//! usage settles the difference afterwards).
//!
//! - OpenAI model families (`gpt-4o`, `gpt-4.1`, `gpt-5`, `o1`/`o3`/`o4`,
//!   `gpt-4`, `gpt-3.5`, embedding models) are counted exactly with their
//!   tiktoken encoding (`o200k_base` or `cl100k_base`), plus OpenAI's published
//!   chat framing: 3 tokens per message, 1 per name, 3 to prime the reply.
//! - Every other model uses a heuristic: one token per 4 characters of text
//!   (rounded up), which is OpenAI's rule of thumb for English and errs high for
//!   Claude and Llama tokenizers on English text, plus the same framing. For
//!   admission, over-estimating is safe: the surplus is refunded on settlement.
//!
//! ```
//! use dspex_client::{Message, tokens};
//! let messages = [Message::user("Hello there, how are you?")];
//! assert_eq!(tokens::estimate_chat_tokens("gpt-4o-mini", &messages), 13);
//! assert_eq!(tokens::count_text_tokens("my-local-llama", "abcdefgh"), 2);
//! ```

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::types::Message;

/// Tokens OpenAI adds around each message.
const PER_MESSAGE: u64 = 3;
/// Tokens a `name` adds.
const PER_NAME: u64 = 1;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;

/// Which counting method a model gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exact, with this tiktoken encoding.
    Tiktoken(&'static str),
    /// One token per four characters.
    Heuristic,
}

fn bare_model(model: &str) -> &str {
    // "openai/gpt-4o" (LiteLLM style) counts as "gpt-4o".
    model.rsplit('/').next().unwrap_or(model)
}

fn encoding(model: &str) -> Option<(&'static CoreBPE, &'static str)> {
    match get_tokenizer(bare_model(model))? {
        Tokenizer::O200kBase | Tokenizer::O200kHarmony => {
            Some((tiktoken_rs::o200k_base_singleton(), "o200k_base"))
        }
        Tokenizer::Cl100kBase => Some((tiktoken_rs::cl100k_base_singleton(), "cl100k_base")),
        Tokenizer::P50kBase | Tokenizer::P50kEdit => {
            Some((tiktoken_rs::p50k_base_singleton(), "p50k_base"))
        }
        Tokenizer::R50kBase | Tokenizer::Gpt2 => {
            Some((tiktoken_rs::r50k_base_singleton(), "r50k_base"))
        }
    }
}

/// Loads the tiktoken encoding `model` counts with, if any, so the first
/// call to count its tokens does not pay for it (building `o200k_base`
/// takes a tenth of a second). A server calls it at start for its models.
pub fn warm_up(model: &str) {
    let _ = encoding(model);
}

/// How tokens of `model` are counted.
pub fn method(model: &str) -> Method {
    match get_tokenizer(bare_model(model)) {
        Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => Method::Tiktoken("o200k_base"),
        Some(Tokenizer::Cl100kBase) => Method::Tiktoken("cl100k_base"),
        Some(Tokenizer::P50kBase | Tokenizer::P50kEdit) => Method::Tiktoken("p50k_base"),
        Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => Method::Tiktoken("r50k_base"),
        None => Method::Heuristic,
    }
}

/// The heuristic: one token per 4 characters, rounded up.
pub fn heuristic_tokens(text: &str) -> u64 {
    // ASCII text (most prompts) has one byte per character, and checking that is
    // cheaper than counting characters.
    let chars = if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    };
    (chars as u64).div_ceil(4)
}

/// Tokens in `text` for `model`.
pub fn count_text_tokens(model: &str, text: &str) -> u64 {
    match encoding(model) {
        Some((bpe, _)) => bpe.encode_ordinary(text).len() as u64,
        None => heuristic_tokens(text),
    }
}

/// Prompt tokens of a chat by the heuristic alone, framing included.
pub fn estimate_chat_tokens_heuristic(messages: &[Message]) -> u64 {
    messages.iter().fold(REPLY_PRIMING, |total, message| {
        let name = message
            .name
            .as_deref()
            .map_or(0, |n| PER_NAME + heuristic_tokens(n));
        total + PER_MESSAGE + heuristic_tokens(&message.content) + name
    })
}

/// Prompt tokens of a chat for `model`, framing included.
pub fn estimate_chat_tokens(model: &str, messages: &[Message]) -> u64 {
    let bpe = encoding(model).map(|(bpe, _)| bpe);
    let count = |text: &str| match bpe {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => heuristic_tokens(text),
    };
    let mut total = REPLY_PRIMING;
    for message in messages {
        total += PER_MESSAGE + count(&message.content);
        if let Some(name) = &message.name {
            total += PER_NAME + count(name);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_families_use_tiktoken() {
        assert_eq!(method("gpt-4o-mini"), Method::Tiktoken("o200k_base"));
        assert_eq!(method("openai/gpt-4.1"), Method::Tiktoken("o200k_base"));
        assert_eq!(method("gpt-4"), Method::Tiktoken("cl100k_base"));
        assert_eq!(method("gpt-3.5-turbo"), Method::Tiktoken("cl100k_base"));
        assert_eq!(
            method("text-embedding-3-small"),
            Method::Tiktoken("cl100k_base")
        );
        assert_eq!(method("claude-3-5-haiku-latest"), Method::Heuristic);
        assert_eq!(method("llama3.1:8b"), Method::Heuristic);
    }

    #[test]
    fn counts_match_known_values() {
        // "hello world" is two tokens in both cl100k and o200k.
        assert_eq!(count_text_tokens("gpt-4o", "hello world"), 2);
        assert_eq!(count_text_tokens("gpt-4", "hello world"), 2);
        // OpenAI cookbook framing: 3 + (3 + content) per message.
        let messages = [
            Message::system("You are terse."),
            Message::user("hello world"),
        ];
        let content = count_text_tokens("gpt-4o", "You are terse.") + 2;
        assert_eq!(
            estimate_chat_tokens("gpt-4o", &messages),
            3 + 3 * 2 + content
        );
        assert_eq!(heuristic_tokens(""), 0);
        assert_eq!(heuristic_tokens("abcde"), 2);
        assert_eq!(heuristic_tokens("héllo"), 2, "characters, not bytes");
    }
}
