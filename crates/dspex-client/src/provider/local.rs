//! `kind = "local"`: a GGUF model run in process by `dspex-local`.
//!
//! A local model is a provider like the others: every call goes through the
//! same stack (the pool bounds concurrent generations, the timeout cancels a
//! generation mid-way and frees its slot, the breaker and the limits apply)
//! and reports exact usage, counted by the model's own tokenizer. Only the
//! transport differs: instead of encoding a request, it renders the messages
//! with the GGUF's chat template, tokenizes them and generates on a blocking
//! thread, so a long generation never stalls the async workers. Streams send
//! each text piece as a chunk the moment it is decoded.
//!
//! Cancellation: every attempt owns a flag the generation checks between
//! tokens. Dropping the attempt (its timeout fired, its caller went away) or
//! the stream sets it, so the thread stops within one token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use dspex_local::{ChatTurn, Finish, GenerateParams, LoadOptions, LocalError, LocalModel};
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{
    Capabilities, Chunk, ParsedChat, PrefixCacheStats, ProviderApi, Sent, Transport, UsageUpdate,
};
use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::client::ProviderShared;
use crate::config::{LocalSettings, ProviderConfig};
use crate::error::{ClientError, ClientErrorKind};
use crate::events::Operation;
use crate::types::{ChatDelta, ChatRequest, Choice, FinishReason, ResponseFormat, Usage};

/// The local GGUF provider.
pub(crate) struct Local;

impl ProviderApi for Local {
    fn system(&self) -> &'static str {
        super::LOCAL_SYSTEM
    }

    fn default_base_url(&self) -> &'static str {
        "local://in-process"
    }

    fn default_model(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self, _config: &ProviderConfig) -> Capabilities {
        Capabilities {
            streaming: true,
            streaming_usage: true,
            multiple_choices: true,
            seed: true,
            ..Capabilities::default()
        }
    }

    fn validate(&self, request: &ChatRequest) -> Result<(), String> {
        let params = &request.params;
        if params.tools.is_some() || params.tool_choice.is_some() {
            return Err("a local model has no native tool calling (use a text-mode agent)".into());
        }
        if matches!(
            params.response_format,
            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
        ) {
            return Err(
                "a local model cannot constrain its output to JSON (ask for JSON in the prompt)"
                    .into(),
            );
        }
        if let Some(field) = params.extra.keys().next() {
            return Err(format!(
                "a local model does not take the request field `{field}`"
            ));
        }
        Ok(())
    }

    fn transport(
        &self,
        shared: &Arc<ProviderShared>,
    ) -> BoxFuture<'static, Result<Arc<dyn Transport>, ClientError>> {
        let shared = Arc::clone(shared);
        Box::pin(async move {
            let Some(settings) = shared.config.local.clone() else {
                return Err(config_error(
                    &shared.config.id,
                    "model_path",
                    "missing".into(),
                ));
            };
            let options = LoadOptions {
                context_length: settings.context_length,
                threads: settings.threads,
                expected_sha256: settings.sha256.clone(),
                prefix_cache_bytes: settings.prefix_cache_bytes,
                ..LoadOptions::default()
            };
            let path = settings.model_path.clone();
            // Reading, hashing and re-quantizing the file takes seconds: off
            // the async workers.
            let loaded = tokio::task::spawn_blocking(move || LocalModel::load(&path, &options))
                .await
                .map_err(|e| {
                    config_error(
                        &shared.config.id,
                        "model_path",
                        format!("loading stopped: {e}"),
                    )
                })?;
            let model = loaded.map_err(|e| load_error(&shared.config.id, &e))?;
            tracing::info!(
                provider = %shared.id,
                architecture = %model.info().architecture,
                context_length = model.info().context_length,
                threads = model.info().threads,
                "local model loaded"
            );
            Ok(Arc::new(LocalTransport {
                shared,
                settings,
                model,
            }) as Arc<dyn Transport>)
        })
    }
}

fn config_error(id: &str, field: &str, message: String) -> ClientError {
    ClientError::config(dspex_core::CoreError::config(
        format!("providers.{id}.{field}"),
        message,
    ))
}

/// A model that would not load: a config error naming the key whose value is
/// wrong (the message names the file).
fn load_error(id: &str, error: &LocalError) -> ClientError {
    let field = match error {
        LocalError::HashMismatch { .. } => "sha256",
        _ => "model_path",
    };
    config_error(id, field, error.to_string())
}

/// A failure while generating: the caller's fault (a prompt too long for
/// the context) is an invalid request; anything else is the model's.
fn generation_error(error: &LocalError) -> ClientError {
    let kind = match error {
        LocalError::PromptTooLong { .. }
        | LocalError::EmptyPrompt
        | LocalError::InvalidToken { .. }
        | LocalError::InvalidParams(_) => ClientErrorKind::InvalidRequest,
        _ => ClientErrorKind::Model,
    };
    ClientError::new(kind, error.to_string())
}

struct LocalTransport {
    shared: Arc<ProviderShared>,
    settings: LocalSettings,
    model: LocalModel,
}

/// Sets the flag when dropped: the attempt (or the stream) is gone, so the
/// generation thread may stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one generation needs, owned, for the blocking thread.
struct Job {
    model: LocalModel,
    turns: Vec<ChatTurn>,
    params: GenerateParams,
    choices: u32,
    cancel: Arc<AtomicBool>,
}

/// A prompt rendered and tokenized, checked against the context.
struct Prompt {
    tokens: Vec<u32>,
}

impl Job {
    fn prompt(&self) -> Result<Prompt, ClientError> {
        let text = self
            .model
            .render_chat(&self.turns)
            .map_err(|e| generation_error(&e))?;
        let tokens = self
            .model
            .tokenize_prompt(&text)
            .map_err(|e| generation_error(&e))?;
        let context = self.model.info().context_length;
        if tokens.len() + 1 > context {
            return Err(generation_error(&LocalError::PromptTooLong {
                prompt_tokens: tokens.len(),
                context_length: context,
            }));
        }
        Ok(Prompt { tokens })
    }

    /// The parameters of choice `index`: each of several choices samples
    /// with its own seed, so they differ and still repeat.
    fn params_for(&self, index: u32) -> GenerateParams {
        let mut params = self.params.clone();
        params.seed = params.seed.map(|seed| seed.wrapping_add(u64::from(index)));
        params
    }
}

fn finish_reason(finish: Finish) -> FinishReason {
    match finish {
        Finish::Length => FinishReason::Length,
        // A cancelled generation has no caller left to see its reason.
        Finish::Stop | Finish::Cancelled => FinishReason::Stop,
    }
}

impl LocalTransport {
    fn job(&self, request: &ChatRequest) -> Job {
        let params = &request.params;
        let settings = &self.settings;
        let max_tokens = params
            .max_tokens
            .unwrap_or(self.shared.config.default_max_tokens);
        Job {
            model: self.model.clone(),
            turns: request
                .messages
                .iter()
                .map(|m| ChatTurn::new(m.role.as_str(), m.content.clone()))
                .collect(),
            params: GenerateParams {
                max_tokens: max_tokens as usize,
                temperature: params.temperature.unwrap_or(settings.temperature),
                top_p: params.top_p.or(settings.top_p),
                seed: params.seed.map(|seed| seed as u64).or(settings.seed),
                stop: params.stop.clone(),
            },
            choices: params.n.unwrap_or(1).max(1),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Transport for LocalTransport {
    fn send(&self, call: Call) -> Sent {
        let inner = call.inner();
        let Payload::Chat(request) = &inner.payload else {
            let error =
                ClientError::unsupported("embeddings").attach(&self.shared.id, &inner.trail);
            return Sent::Ready(Some(Err(error)));
        };
        let job = self.job(request);
        let shared = Arc::clone(&self.shared);
        let stream = inner.operation == Operation::ChatStream;
        Sent::Later(Box::pin(async move {
            let result = if stream {
                start_stream(job, &call).await
            } else {
                complete(job, &call).await
            };
            result.map_err(|e| e.attach(&shared.id, &call.inner().trail))
        }))
    }

    fn prefix_cache(&self) -> Option<PrefixCacheStats> {
        let stats = self.model.prefix_cache_stats();
        Some(PrefixCacheStats {
            hits: stats.hits,
            misses: stats.misses,
            reused_tokens: stats.reused_tokens,
            entries: stats.entries,
            bytes: stats.bytes,
            capacity_bytes: stats.capacity_bytes,
        })
    }
}

fn crumb(call: &Call, prompt_tokens: usize, cached: usize) {
    call.inner().trail.push(
        "local",
        format!("{prompt_tokens} prompt tokens, {cached} from the prefix cache"),
    );
}

/// A whole completion, generated on a blocking thread.
async fn complete(job: Job, call: &Call) -> Result<Reply, ClientError> {
    let _cancel = CancelOnDrop(Arc::clone(&job.cancel));
    let generated = tokio::task::spawn_blocking(move || -> Result<_, ClientError> {
        let prompt = job.prompt()?;
        let mut choices = Vec::with_capacity(job.choices as usize);
        let mut usage = Usage {
            input_tokens: prompt.tokens.len() as u64,
            ..Usage::default()
        };
        for index in 0..job.choices {
            let generation = job
                .model
                .generate(
                    &prompt.tokens,
                    &job.params_for(index),
                    &job.cancel,
                    &mut |_| {},
                )
                .map_err(|e| generation_error(&e))?;
            usage.output_tokens += generation.completion_tokens as u64;
            if index == 0 {
                usage.cached_input_tokens = generation.cached_prompt_tokens as u64;
            }
            choices.push(Choice {
                index,
                content: Some(generation.text),
                tool_calls: None,
                finish_reason: Some(finish_reason(generation.finish)),
            });
        }
        Ok((choices, usage))
    })
    .await
    .map_err(|e| ClientError::new(ClientErrorKind::Model, format!("generation stopped: {e}")))?;
    let (choices, usage) = generated?;
    crumb(
        call,
        usage.input_tokens as usize,
        usage.cached_input_tokens as usize,
    );
    Ok(Reply::new(
        ReplyBody::Chat(ParsedChat {
            id: None,
            model: Some(call.inner().model.to_string()),
            choices,
            usage: Some(usage),
        }),
        None,
    ))
}

/// Starts a streamed generation: the prompt is checked before the attempt
/// succeeds (a prompt too long is an error, not a broken stream), then text
/// pieces flow as chunks.
async fn start_stream(job: Job, call: &Call) -> Result<Reply, ClientError> {
    let cancel = CancelOnDrop(Arc::clone(&job.cancel));
    let (started_tx, started_rx) = oneshot::channel::<Result<usize, ClientError>>();
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel::<Result<Vec<Chunk>, ClientError>>();
    let model_name = call.inner().model.to_string();
    // Detached on purpose: it ends when the generation does, and the
    // generation ends within a token of the cancel flag being set.
    drop(tokio::task::spawn_blocking(move || {
        let prompt = match job.prompt() {
            Ok(prompt) => prompt,
            Err(error) => {
                let _ = started_tx.send(Err(error));
                return;
            }
        };
        let _ = started_tx.send(Ok(prompt.tokens.len()));
        let send = |chunks: Vec<Chunk>| chunks_tx.send(Ok(chunks)).is_ok();
        if !send(vec![Chunk::Start {
            id: None,
            model: Some(model_name),
        }]) {
            return;
        }
        let mut usage = Usage {
            input_tokens: prompt.tokens.len() as u64,
            ..Usage::default()
        };
        for index in 0..job.choices {
            let mut on_piece = |piece: &str| {
                let delta = Chunk::Delta(ChatDelta {
                    index,
                    content: piece.to_owned(),
                    tool_calls: None,
                    finish_reason: None,
                });
                if chunks_tx.send(Ok(vec![delta])).is_err() {
                    // The stream is gone: stop generating.
                    job.cancel.store(true, Ordering::Relaxed);
                }
            };
            let generated = job.model.generate(
                &prompt.tokens,
                &job.params_for(index),
                &job.cancel,
                &mut on_piece,
            );
            match generated {
                Ok(generation) => {
                    usage.output_tokens += generation.completion_tokens as u64;
                    if index == 0 {
                        usage.cached_input_tokens = generation.cached_prompt_tokens as u64;
                    }
                    if generation.finish == Finish::Cancelled {
                        return;
                    }
                    let end = Chunk::Delta(ChatDelta {
                        index,
                        content: String::new(),
                        tool_calls: None,
                        finish_reason: Some(finish_reason(generation.finish)),
                    });
                    if !send(vec![end]) {
                        return;
                    }
                }
                Err(error) => {
                    let _ = chunks_tx.send(Err(generation_error(&error)));
                    return;
                }
            }
        }
        send(vec![
            Chunk::Usage(UsageUpdate {
                input_tokens: Some(usage.input_tokens),
                output_tokens: Some(usage.output_tokens),
                cached_input_tokens: Some(usage.cached_input_tokens),
                cache_write_tokens: None,
            }),
            Chunk::End,
        ]);
    }));
    let prompt_tokens = started_rx
        .await
        .map_err(|_| ClientError::new(ClientErrorKind::Model, "the generation thread ended"))??;
    call.inner()
        .trail
        .push("local", format!("{prompt_tokens} prompt tokens, streaming"));
    Ok(Reply::new(
        ReplyBody::Stream(Box::pin(GeneratedChunks {
            chunks: chunks_rx,
            _cancel: cancel,
        })),
        None,
    ))
}

/// The chunks of a running generation; dropping it stops the generation.
struct GeneratedChunks {
    chunks: mpsc::UnboundedReceiver<Result<Vec<Chunk>, ClientError>>,
    _cancel: CancelOnDrop,
}

impl Stream for GeneratedChunks {
    type Item = Result<Vec<Chunk>, ClientError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx)
    }
}
