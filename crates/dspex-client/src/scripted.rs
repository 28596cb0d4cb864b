//! A scripted in-process LM for tests, like DSPy's `DummyLM`.
//!
//! Register it as a provider and every call goes through the same client code
//! path as a real provider (breaker, limits, pool, retries, timeout, events,
//! telemetry); only the transport is replaced, so no socket is opened.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dspex_client::ClientError> {
//! use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};
//! let lm = ScriptedLm::replies(["Paris", "Rome"]);
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", lm.clone()).await?;
//! let reply = client.request("dummy", vec![Message::user("Capital of France?")], RequestOptions::new()).await?;
//! assert_eq!(reply.text(), "Paris");
//! assert_eq!(lm.calls(), 1);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::config::ProviderConfig;
use crate::error::{ClientError, ClientErrorKind};
use crate::events::Operation;
use crate::provider::{Capabilities, Chunk, ParsedChat, ProviderApi, Sent, Transport, UsageUpdate};
use crate::tokens;
use crate::types::{ChatDelta, ChatRequest, Choice, FinishReason, Role, Usage};

/// The scripted LM as a provider: in process, registered with
/// [`Client::add_scripted`](crate::Client::add_scripted) rather than built
/// from config.
pub(crate) struct Scripted;

impl ProviderApi for Scripted {
    fn system(&self) -> &'static str {
        "scripted"
    }

    fn default_base_url(&self) -> &'static str {
        "scripted://in-process"
    }

    fn default_model(&self) -> &'static str {
        "scripted"
    }

    fn capabilities(&self, _config: &ProviderConfig) -> Capabilities {
        Capabilities {
            streaming: true,
            streaming_usage: true,
            multiple_choices: true,
            ..Capabilities::default()
        }
    }
}

type ReplyFn = dyn Fn(&ChatRequest) -> Result<String, String> + Send + Sync;

enum Source {
    /// Replies in order, starting over after the last.
    Replies(Vec<String>),
    /// Replies by prompt: the last user message exactly, else the first key the
    /// whole prompt contains.
    Map(Vec<(String, String)>),
    /// Replies computed from the request.
    Function(Arc<ReplyFn>),
}

struct Inner {
    source: Source,
    next: AtomicUsize,
    calls: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

/// A scripted LM: replies from a list, a map from prompt to reply, or a
/// function. Cloning shares the script and the counters.
#[derive(Clone)]
pub struct ScriptedLm {
    inner: Arc<Inner>,
}

impl fmt::Debug for ScriptedLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedLm")
            .field("calls", &self.calls())
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl ScriptedLm {
    fn new(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                next: AtomicUsize::new(0),
                calls: AtomicU64::new(0),
                input_tokens: AtomicU64::new(0),
                output_tokens: AtomicU64::new(0),
            }),
        }
    }

    /// Replies with these, in order, starting over after the last.
    pub fn replies<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Source::Replies(
            replies.into_iter().map(Into::into).collect(),
        ))
    }

    /// Replies by prompt: a key equal to the last user message wins; otherwise
    /// the first key (in the given order) that the whole prompt contains. A
    /// prompt no key matches fails the call with an invalid-request error that
    /// quotes the prompt's start.
    pub fn map<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::new(Source::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }

    /// Replies with whatever `reply` returns; an `Err` fails the call with an
    /// invalid-request error carrying the message.
    pub fn from_fn(
        reply: impl Fn(&ChatRequest) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self::new(Source::Function(Arc::new(reply)))
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Tokens used so far (counted as the provider would report them).
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.inner.input_tokens.load(Ordering::Relaxed),
            output_tokens: self.inner.output_tokens.load(Ordering::Relaxed),
            ..Usage::default()
        }
    }

    fn reply(&self, request: &ChatRequest) -> Result<String, String> {
        match &self.inner.source {
            Source::Replies(replies) => {
                if replies.is_empty() {
                    return Err("the scripted LM has no replies".into());
                }
                let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % replies.len();
                Ok(replies.get(index).cloned().unwrap_or_default())
            }
            Source::Map(pairs) => {
                let last_user = request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.as_str())
                    .unwrap_or_default();
                if let Some((_, reply)) = pairs.iter().find(|(key, _)| key == last_user) {
                    return Ok(reply.clone());
                }
                let found = pairs.iter().find(|(key, _)| {
                    request
                        .messages
                        .iter()
                        .any(|m| m.content.contains(key.as_str()))
                });
                found.map(|(_, reply)| reply.clone()).ok_or_else(|| {
                    let start: String = last_user.chars().take(80).collect();
                    format!("the scripted LM has no reply for the prompt `{start}`")
                })
            }
            Source::Function(reply) => reply(request),
        }
    }
}

/// Serves calls from a [`ScriptedLm`].
pub(crate) struct ScriptedTransport {
    pub(crate) lm: ScriptedLm,
    pub(crate) provider: Arc<str>,
}

impl Transport for ScriptedTransport {
    fn send(&self, call: Call) -> Sent {
        Sent::Ready(Some(self.answer(&call)))
    }
}

impl ScriptedTransport {
    fn answer(&self, call: &Call) -> Result<Reply, ClientError> {
        let inner = call.inner();
        let Payload::Chat(request) = &inner.payload else {
            return Err(ClientError::unsupported("embeddings").attach(&self.provider, &inner.trail));
        };
        let n = request.params.n.unwrap_or(1).max(1);
        let mut choices = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let text = self.lm.reply(request).map_err(|message| {
                ClientError::new(ClientErrorKind::InvalidRequest, message)
                    .attach(&self.provider, &inner.trail)
            })?;
            choices.push(text);
        }
        let model = &*inner.model;
        // The documented heuristic, whatever the model name: a scripted LM has
        // no real tokenizer, and tiktoken would cost more than the call.
        let usage = Usage {
            input_tokens: tokens::estimate_chat_tokens_heuristic(&request.messages),
            output_tokens: choices.iter().map(|c| tokens::heuristic_tokens(c)).sum(),
            ..Usage::default()
        };
        let counters = &self.lm.inner;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters
            .input_tokens
            .fetch_add(usage.input_tokens, Ordering::Relaxed);
        counters
            .output_tokens
            .fetch_add(usage.output_tokens, Ordering::Relaxed);
        let body = if inner.operation == Operation::ChatStream {
            ReplyBody::Stream(Box::pin(futures::stream::iter(
                stream_chunks(model, &choices, usage).into_iter().map(Ok),
            )))
        } else {
            ReplyBody::Chat(ParsedChat {
                id: None,
                model: Some(model.to_owned()),
                choices: choices
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| Choice {
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        content: Some(text),
                        tool_calls: None,
                        finish_reason: Some(FinishReason::Stop),
                    })
                    .collect(),
                usage: Some(usage),
            })
        };
        Ok(Reply::new(body, None))
    }
}

/// The replies as stream chunks, one delta per word, as a provider streams
/// them: each item is what one upstream event would decode to.
fn stream_chunks(model: &str, choices: &[String], usage: Usage) -> Vec<Vec<Chunk>> {
    let mut events = vec![vec![Chunk::Start {
        id: None,
        model: Some(model.to_owned()),
    }]];
    let delta = |index: usize, content: &str, finish_reason: Option<FinishReason>| {
        Chunk::Delta(ChatDelta {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            content: content.to_owned(),
            tool_calls: None,
            finish_reason,
        })
    };
    for (index, text) in choices.iter().enumerate() {
        for piece in text.split_inclusive(' ') {
            events.push(vec![delta(index, piece, None)]);
        }
        events.push(vec![delta(index, "", Some(FinishReason::Stop))]);
    }
    events.push(vec![Chunk::Usage(UsageUpdate {
        input_tokens: Some(usage.input_tokens),
        output_tokens: Some(usage.output_tokens),
        cached_input_tokens: Some(0),
        cache_write_tokens: None,
    })]);
    events.push(vec![Chunk::End]);
    events
}
