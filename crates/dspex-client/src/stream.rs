//! A streamed chat response.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dspex_core::protect::{PoolSlot, Reservation};
use futures::Stream;
use tokio::time::Sleep;

use crate::call::cost_of;
use crate::client::ProviderShared;
use crate::error::{ClientError, ClientErrorKind, TimeoutPhase};
use crate::events::Outcome;
use crate::journal::JournalTicket;
use crate::provider::{Chunk, Chunks, ToolCalls};
use crate::telemetry::{Ending, Recorder};
use crate::tokens;
use crate::types::{ChatResponse, Choice, StreamEvent, Usage};

#[derive(Default)]
struct ChoiceSoFar {
    content: String,
    tool_calls: ToolCalls,
    finish_reason: Option<crate::types::FinishReason>,
}

/// The choice at `index`, created (with any before it) on first use.
fn choice_at(choices: &mut Vec<ChoiceSoFar>, index: u32) -> &mut ChoiceSoFar {
    let index = index as usize;
    if choices.len() <= index {
        choices.resize_with(index + 1, ChoiceSoFar::default);
    }
    // Just resized to hold `index`.
    #[allow(clippy::indexing_slicing)]
    &mut choices[index]
}

/// A chat response arriving in pieces: [`StreamEvent::Delta`]s, then one
/// [`StreamEvent::Done`] with the assembled response and its usage. Tool-call
/// fragments are merged (OpenAI's by index, Anthropic's input JSON parsed), so
/// the final response has the same shape as a non-streamed one.
///
/// A stream that breaks off yields one error (`ClientError::Truncated`, or the
/// upstream's error event) and ends. Nothing is retried once the stream has
/// started. Dropping the stream early records the call as cancelled. The pool
/// slot and the rate-limit reservation are held until the stream ends.
pub struct ChatStream {
    events: Chunks,
    shared: Arc<ProviderShared>,
    recorder: Option<Recorder>,
    reservation: Option<Reservation>,
    slot: Option<PoolSlot>,
    deadline: Pin<Box<Sleep>>,
    pending: VecDeque<StreamEvent>,
    choices: Vec<ChoiceSoFar>,
    id: Option<String>,
    model: Option<String>,
    usage: Usage,
    usage_seen: bool,
    request_id: Option<String>,
    estimated_input: Option<u64>,
    call: crate::call::Call,
    done: bool,
    /// The journal's answer for the completion: the stream's last items wait
    /// for it, so a caller that saw the stream end knows the call is durable.
    durable: Option<JournalTicket>,
    /// An item held back until `durable` resolves.
    held: Option<Result<StreamEvent, ClientError>>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("provider", &self.shared.id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

pub(crate) struct StreamParts {
    pub(crate) events: Chunks,
    /// When the attempt that started the stream began: the total timeout runs
    /// from there, not from before earlier waits and retries.
    pub(crate) attempt_started: tokio::time::Instant,
    pub(crate) shared: Arc<ProviderShared>,
    pub(crate) recorder: Recorder,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) slot: Option<PoolSlot>,
    pub(crate) request_id: Option<String>,
    pub(crate) estimated_input: Option<u64>,
    pub(crate) call: crate::call::Call,
}

impl ChatStream {
    pub(crate) fn new(parts: StreamParts) -> Self {
        let deadline = parts
            .attempt_started
            .checked_add(parts.shared.config.timeouts.total)
            .unwrap_or(parts.attempt_started);
        Self {
            events: parts.events,
            recorder: Some(parts.recorder),
            shared: parts.shared,
            reservation: parts.reservation,
            slot: parts.slot,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            pending: VecDeque::new(),
            choices: Vec::new(),
            id: None,
            model: None,
            usage: Usage::default(),
            usage_seen: false,
            request_id: parts.request_id,
            estimated_input: parts.estimated_input,
            call: parts.call,
            done: false,
            durable: None,
            held: None,
        }
    }

    /// Reads the whole stream and returns the assembled response.
    pub async fn collect_response(mut self) -> Result<ChatResponse, ClientError> {
        use futures::StreamExt;
        while let Some(event) = self.next().await {
            if let StreamEvent::Done(response) = event? {
                return Ok(response);
            }
        }
        Err(ClientError::new(
            ClientErrorKind::Truncated { streaming: true },
            "the stream ended without a final response",
        )
        .attach(&self.shared.id, &self.call.inner().trail))
    }

    /// The choices the call asked for (`n`); a delta for another is malformed.
    fn choice_limit(&self) -> u32 {
        match &self.call.inner().payload {
            crate::call::Payload::Chat(request) => request.params.n.unwrap_or(1).max(1),
            crate::call::Payload::Embeddings(_) => 1,
        }
    }

    /// Applies decoded chunks; returns true at the end of the stream.
    fn apply(&mut self, chunks: Vec<Chunk>) -> Result<bool, ClientError> {
        let mut ended = false;
        let limit = self.choice_limit();
        for chunk in chunks {
            match chunk {
                Chunk::Start { id, model } => {
                    self.id = self.id.take().or(id);
                    self.model = self.model.take().or(model);
                }
                Chunk::Delta(delta) => {
                    if delta.index >= limit {
                        return Err(ClientError::new(
                            ClientErrorKind::MalformedResponse { retryable: false },
                            format!(
                                "a stream event for choice {} when {limit} choice(s) were asked for",
                                delta.index
                            ),
                        )
                        .attach(&self.shared.id, &self.call.inner().trail));
                    }
                    let choice = choice_at(&mut self.choices, delta.index);
                    if let Some(fragments) = &delta.tool_calls {
                        self.shared
                            .api
                            .merge_tool_calls(&mut choice.tool_calls, fragments);
                    }
                    choice.content.push_str(&delta.content);
                    if let Some(reason) = &delta.finish_reason {
                        choice.finish_reason = Some(reason.clone());
                    }
                    if !delta.content.is_empty()
                        || delta.tool_calls.is_some()
                        || delta.finish_reason.is_some()
                    {
                        self.pending.push_back(StreamEvent::Delta(delta));
                    }
                }
                Chunk::Usage(update) => {
                    update.apply(&mut self.usage);
                    self.usage_seen = true;
                }
                Chunk::End => ended = true,
            }
        }
        Ok(ended)
    }

    fn all_choices_finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.finish_reason.is_some())
    }

    fn complete(&mut self) -> Result<(), ClientError> {
        let model = self
            .model
            .clone()
            .unwrap_or_else(|| self.call.inner().model.to_string());
        if !self.usage_seen {
            // The server sent no usage (some compatible servers ignore
            // `stream_options`): estimate it rather than report zero.
            let text: String = self.choices.iter().map(|c| c.content.as_str()).collect();
            self.usage.output_tokens = tokens::count_text_tokens(&model, &text);
            self.usage.input_tokens = self.estimated_input.unwrap_or(0);
            self.call
                .inner()
                .trail
                .push("usage", "the stream reported no usage; estimated it");
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for (i, c) in std::mem::take(&mut self.choices).into_iter().enumerate() {
            let tool_calls = c.tool_calls.finish().map_err(|message| {
                ClientError::new(
                    ClientErrorKind::MalformedResponse { retryable: false },
                    message,
                )
                .attach(&self.shared.id, &self.call.inner().trail)
            })?;
            choices.push(Choice {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                // As in a complete response: a pure tool call has no text.
                content: (!c.content.is_empty() || tool_calls.is_none()).then_some(c.content),
                tool_calls,
                finish_reason: c.finish_reason,
            });
        }
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(cost_of(&self.usage));
        }
        self.slot = None;
        let Some(recorder) = self.recorder.take() else {
            return Ok(());
        };
        let response = ChatResponse {
            provider: Arc::clone(&self.shared.id),
            model: model.clone(),
            id: self.id.clone(),
            request_id: self.request_id.clone(),
            cache: None,
            usage: self.usage,
            latency: recorder.elapsed(),
            attempts: recorder.attempts(),
            correlation_id: recorder.correlation_id().clone(),
            choices,
        };
        self.durable = Some(recorder.finish_durably(Ending {
            outcome: Outcome::Success,
            usage: self.usage,
            finish_reason: response.finish_reason().cloned(),
            response_model: Some(model),
            response_id: self.id.clone(),
            request_id: self.request_id.clone(),
            cache: None,
        }));
        self.pending.push_back(StreamEvent::Done(response));
        self.done = true;
        Ok(())
    }

    fn fail(&mut self, error: ClientError) -> ClientError {
        let error = error.attach(&self.shared.id, &self.call.inner().trail);
        self.done = true;
        // The upstream did the work up to here: keep the estimate charged.
        drop(self.reservation.take());
        self.slot = None;
        if let Some(recorder) = self.recorder.take() {
            let mut ending = Ending::failed(&error);
            ending.usage = self.usage;
            self.durable = Some(recorder.finish_durably(ending));
        }
        error
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(durable) = this.durable.as_mut() {
                if Pin::new(durable).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.durable = None;
            }
            if let Some(item) = this.held.take() {
                return Poll::Ready(Some(item));
            }
            let item = this.poll_events(cx);
            match item {
                Poll::Ready(Some(item)) if this.durable.is_some() => this.held = Some(item),
                other => return other,
            }
        }
    }
}

impl ChatStream {
    /// The next item, before waiting for the journal.
    fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<StreamEvent, ClientError>>> {
        let this = self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                let error =
                    ClientError::timeout(TimeoutPhase::Total, this.shared.config.timeouts.total);
                return Poll::Ready(Some(Err(this.fail(error))));
            }
            match this.events.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunks))) => match this.apply(chunks) {
                    Ok(true) => {
                        if let Err(error) = this.complete() {
                            return Poll::Ready(Some(Err(this.fail(error))));
                        }
                    }
                    Ok(false) => {}
                    Err(error) => return Poll::Ready(Some(Err(this.fail(error)))),
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(this.fail(error)))),
                Poll::Ready(None) => {
                    // A clean close after every choice finished is accepted even
                    // without the terminal marker; anything less is truncated.
                    if this.all_choices_finished() {
                        if let Err(error) = this.complete() {
                            return Poll::Ready(Some(Err(this.fail(error))));
                        }
                        continue;
                    }
                    let error = ClientError::new(
                        ClientErrorKind::Truncated { streaming: true },
                        "the connection closed before the end of the stream",
                    );
                    return Poll::Ready(Some(Err(this.fail(error))));
                }
            }
        }
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        // The recorder's own drop records the cancellation; say why on the trail.
        if self.recorder.is_some() {
            self.call
                .inner()
                .trail
                .push("stream", "dropped by the caller before the end");
        }
    }
}
