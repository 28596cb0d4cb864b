//! A `tokenizers::Tokenizer` built from a GGUF's own vocabulary metadata,
//! plus a byte table for exact, streamable detokenisation.
//!
//! Two GGUF tokenizer models are supported, following llama.cpp (the
//! reference implementation of GGUF):
//!
//! * `gpt2`: byte-level BPE with the file's merges; the pre-tokenizer
//!   (the regex that splits text before BPE) is chosen by
//!   `tokenizer.ggml.pre`, as llama.cpp does.
//! * `llama`: SentencePiece BPE (Llama 1/2, Gemma). llama.cpp merges the
//!   adjacent pair whose concatenation has the highest score; Hugging Face
//!   expresses the same algorithm as BPE merges ranked by score (their
//!   `SentencePieceExtractor`), which is what we build. Spaces become `▁`,
//!   unknown characters fall back to `<0xXX>` byte tokens.
//!
//! Control (type 3) and user-defined (type 4) tokens are added tokens, so
//! markers written in the text (`<|im_start|>`) are recognised as one id.
//! llama.cpp matches them on the raw text before any normalisation, hence
//! `normalized(false)`.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::LocalError;
use crate::gguf::{GgufFile, Value};

/// The GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// The SentencePiece whitespace marker.
const SPM_SPACE: char = '\u{2581}';

/// GPT-2's pre-tokenizer regex, used by `ByteLevel` with `use_regex`.
/// llama-3 style models split with this one instead (llama.cpp's
/// `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which vocabulary family the file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VocabKind {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    ByteLevelBpe,
    /// SentencePiece BPE with byte fallback (`"llama"`).
    SentencePiece,
}

/// The tokenizer and the per-token data the engine needs.
pub(crate) struct GgufTokenizer {
    tokenizer: Tokenizer,
    /// Token texts as in the GGUF (byte-level or `▁` encoded).
    pub(crate) tokens: Vec<String>,
    /// Bytes each token stands for, concatenated; `offsets[i]..offsets[i+1]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Control tokens: their text is not part of generated output.
    control: Vec<bool>,
}

/// GPT-2's `bytes_to_unicode`, inverted: the char that stands for each
/// byte in byte-level vocabularies back to the byte.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u8..=255 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).unwrap_or(char::REPLACEMENT_CHARACTER);
            extra += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Parses `<0xAB>`.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn string_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>, LocalError> {
    let arr = gguf
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| gguf.missing(key))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| gguf.missing(key))
        })
        .collect()
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> LocalError {
    LocalError::Tokenizer(format!("{}: {e}", path.display()))
}

impl GgufTokenizer {
    /// Builds the tokenizer from `gguf`'s metadata.
    pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Self, LocalError> {
        let path = gguf.path();
        let model = gguf
            .str("tokenizer.ggml.model")
            .ok_or_else(|| gguf.missing("tokenizer.ggml.model"))?;
        let kind = match model {
            "gpt2" => VocabKind::ByteLevelBpe,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(LocalError::Unsupported {
                    path: path.to_path_buf(),
                    feature: format!(
                        "tokenizer.ggml.model {other:?} (supported: \"gpt2\", \"llama\")"
                    ),
                });
            }
        };
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types: Vec<i64> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(arr) => arr.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; n],
        };
        if types.len() != n {
            return Err(LocalError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{} token types for {n} tokens", types.len()),
            });
        }
        let token_type = |i: usize| types.get(i).copied().unwrap_or(1);

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| u32::try_from(i).ok().map(|id| (t.clone(), id)))
            .collect();

        let mut tokenizer = match kind {
            VocabKind::ByteLevelBpe => {
                let merges = string_array(gguf, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| match m.split_once(' ') {
                        Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                        None => Err(LocalError::Corrupt {
                            path: path.to_path_buf(),
                            reason: format!("merge {m:?} has no space"),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let pre = gguf.str("tokenizer.ggml.pre").unwrap_or("default");
                let (pre_tokenizer, ignore_merges) = byte_level_pre_tokenizer(path, pre)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(|e| tok_err(path, e))?;
                let mut t = Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(pre_tokenizer));
                t
            }
            VocabKind::SentencePiece => {
                let scores: Vec<f32> =
                    match gguf.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                        Some(arr) => arr.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
                        None => return Err(gguf.missing("tokenizer.ggml.scores")),
                    };
                let merges = spm_merges(&tokens, &scores, &vocab);
                let unk = gguf
                    .get("tokenizer.ggml.unknown_token_id")
                    .and_then(Value::as_u64)
                    .and_then(|id| usize::try_from(id).ok())
                    .and_then(|id| tokens.get(id))
                    .cloned();
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(unk);
                }
                let bpe = builder.build().map_err(|e| tok_err(path, e))?;
                let mut t = Tokenizer::new(bpe);
                // No pre-tokenizer: llama.cpp's SPM tokenizer merges across
                // the whole fragment, spaces included.
                let space =
                    Replace::new(" ", SPM_SPACE.to_string()).map_err(|e| tok_err(path, e))?;
                t.with_normalizer(Some(space));
                if gguf
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    return Err(LocalError::Unsupported {
                        path: path.to_path_buf(),
                        feature: "tokenizer.ggml.add_space_prefix = true".to_owned(),
                    });
                }
                t
            }
        };

        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, text) in tokens.iter().enumerate() {
            match token_type(i) {
                TYPE_CONTROL => {
                    special.push(AddedToken::from(text.clone(), true).normalized(false));
                }
                TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(text.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        tokenizer.add_special_tokens(&special);
        tokenizer.add_tokens(&user);

        // The byte table for decoding.
        let byte_level = byte_level_decoder();
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut control = Vec::with_capacity(n);
        offsets.push(0);
        for (i, text) in tokens.iter().enumerate() {
            let ty = token_type(i);
            control.push(ty == TYPE_CONTROL);
            match ty {
                TYPE_BYTE => match byte_token(text) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(text.as_bytes()),
                },
                // Added tokens are stored literally in both vocab kinds.
                TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN => {
                    bytes.extend_from_slice(text.as_bytes());
                }
                _ => match kind {
                    VocabKind::ByteLevelBpe => {
                        for c in text.chars() {
                            match byte_level.get(&c) {
                                Some(&b) => bytes.push(b),
                                None => {
                                    let mut buf = [0u8; 4];
                                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                }
                            }
                        }
                    }
                    VocabKind::SentencePiece => {
                        for c in text.chars() {
                            let c = if c == SPM_SPACE { ' ' } else { c };
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                },
            }
            offsets.push(bytes.len());
        }

        Ok(Self {
            tokenizer,
            tokens,
            bytes,
            offsets,
            control,
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Encodes without adding BOS/EOS; special tokens in the text are
    /// recognised.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| LocalError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes `id` stands for (`None` if out of range).
    pub(crate) fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i + 1)?;
        self.bytes.get(start..end)
    }

    pub(crate) fn is_control(&self, id: u32) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.control.get(i).copied())
            .unwrap_or(false)
    }

    /// Id of a token by its exact text.
    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    /// Text of a token as stored in the GGUF.
    pub(crate) fn text_of(&self, id: u32) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map(String::as_str)
    }
}

/// The pre-tokenizer for a byte-level BPE vocab, by llama.cpp's
/// `tokenizer.ggml.pre` name. Returns it and whether BPE should look whole
/// words up in the vocab before merging (`ignore_merges`, llama-3).
fn byte_level_pre_tokenizer(
    path: &Path,
    pre: &str,
) -> Result<(PreTokenizerWrapper, bool), LocalError> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    Ok(match pre {
        // GPT-2's own regex, applied by ByteLevel.
        "default" | "gpt2" => (byte_level(true), false),
        // llama.cpp groups these: every digit on its own, then GPT-2's
        // regex (`\p{N}` then the GPT-2 pattern). SmolLM2's HF tokenizer is
        // the same: Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_REGEX.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(path, e))?;
            (
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    byte_level(false),
                ])),
                true,
            )
        }
        other => {
            return Err(LocalError::Unsupported {
                path: path.to_path_buf(),
                feature: format!(
                    "tokenizer.ggml.pre {other:?} (supported: default, gpt2, smollm, starcoder, llama-bpe)"
                ),
            });
        }
    })
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every
/// split of every piece into two in-vocabulary halves, ranked by the score
/// of the merged piece (highest first). This is Hugging Face's
/// `SentencePieceExtractor.extract` with scores: within one piece, splits
/// are ordered by the halves' ids; the sort by score is stable.
fn spm_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        let score = scores.get(i).copied().unwrap_or(0.0);
        let mut local = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            let (Some(l), Some(r)) = (piece.get(..split), piece.get(split..)) else {
                continue;
            };
            if let (Some(&lid), Some(&rid)) = (vocab.get(l), vocab.get(r)) {
                local.push((score, lid, rid, i, split));
            }
        }
        local.sort_by_key(|&(_, l, r, _, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .filter_map(|(_, _, _, i, split)| {
            let piece = tokens.get(i)?;
            Some((
                piece.get(..split)?.to_owned(),
                piece.get(split..)?.to_owned(),
            ))
        })
        .collect()
}
