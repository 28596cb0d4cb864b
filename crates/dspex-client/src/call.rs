//! What travels through a provider's protection stack: the [`Call`] going in and
//! the [`Reply`] coming out.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dspex_core::Trail;
use dspex_core::protect::{Cost, PoolSlot, ProtectedRequest, ProtectedResponse, Reservation};

use crate::events::Operation;
use crate::provider::{Chunks, ParsedChat, ParsedEmbeddings};
use crate::types::{ChatRequest, EmbeddingRequest, Usage};

/// What a call asks for, before any transport encodes it.
// Built once per call and held inside the call's `Arc`, never moved around
// by value, so the unboxed chat request costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Payload {
    Chat(ChatRequest),
    Embeddings(EmbeddingRequest),
}

/// One call: its request and what the layers need to know about it. Cloning is
/// cheap; every attempt shares the same trail, attempt counter and encoded body.
#[derive(Clone)]
pub(crate) struct Call(Arc<CallInner>);

pub(crate) struct CallInner {
    pub(crate) operation: Operation,
    pub(crate) payload: Payload,
    pub(crate) cost: Cost,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) trail: Trail,
    pub(crate) model: Arc<str>,
    attempts: AtomicU32,
    /// The wire body, encoded by the first attempt that needs it and reused by
    /// retries.
    body: OnceLock<Bytes>,
}

impl Call {
    pub(crate) fn new(
        operation: Operation,
        payload: Payload,
        cost: Cost,
        max_wait: Option<Duration>,
        trail: Trail,
        model: Arc<str>,
    ) -> Self {
        Self(Arc::new(CallInner {
            operation,
            payload,
            cost,
            max_wait,
            trail,
            model,
            attempts: AtomicU32::new(0),
            body: OnceLock::new(),
        }))
    }

    /// The encoded body, encoding it with `encode` on first use.
    pub(crate) fn body<E>(
        &self,
        encode: impl FnOnce(&Payload) -> Result<Vec<u8>, E>,
    ) -> Result<Bytes, E> {
        if let Some(body) = self.0.body.get() {
            return Ok(body.clone());
        }
        let body = Bytes::from(encode(&self.0.payload)?);
        Ok(self.0.body.get_or_init(|| body).clone())
    }

    /// How many inputs an embeddings call has (1 for chats).
    pub(crate) fn inputs(&self) -> usize {
        match &self.0.payload {
            Payload::Embeddings(request) => request.input.len(),
            Payload::Chat(_) => 1,
        }
    }

    pub(crate) fn inner(&self) -> &CallInner {
        &self.0
    }

    /// HTTP attempts made: counted where an attempt reaches the transport,
    /// so one refused by the breaker or a rate limit does not count.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_attempt(&self) {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

impl ProtectedRequest for Call {
    fn cost(&self) -> Cost {
        self.0.cost
    }

    fn trail(&self) -> &Trail {
        &self.0.trail
    }

    fn max_wait(&self) -> Option<Duration> {
        self.0.max_wait
    }
}

pub(crate) enum ReplyBody {
    Chat(ParsedChat),
    /// A started stream (its first event already read, for HTTP).
    Stream(Chunks),
    Embeddings(ParsedEmbeddings),
}

/// A provider's answer on its way back up the stack, collecting the pool slot
/// and the rate-limit reservation it must release or settle.
pub(crate) struct Reply {
    pub(crate) body: ReplyBody,
    /// When the attempt that produced this reply started.
    pub(crate) started: tokio::time::Instant,
    pub(crate) request_id: Option<String>,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) slot: Option<PoolSlot>,
}

impl Reply {
    pub(crate) fn new(body: ReplyBody, request_id: Option<String>) -> Self {
        Self {
            body,
            started: tokio::time::Instant::now(),
            request_id,
            reservation: None,
            slot: None,
        }
    }
}

/// What a call really cost, for settling its reservation.
pub(crate) fn cost_of(usage: &Usage) -> Cost {
    Cost::call(usage.input_tokens, usage.output_tokens)
}

impl ProtectedResponse for Reply {
    fn settle(&mut self, reservation: Reservation) {
        match &self.body {
            ReplyBody::Chat(parsed) => match &parsed.usage {
                Some(usage) => reservation.settle(cost_of(usage)),
                // No usage reported: keep the estimate.
                None => drop(reservation),
            },
            ReplyBody::Embeddings(parsed) => reservation.settle(cost_of(&parsed.usage)),
            // A stream knows its usage only at the end.
            ReplyBody::Stream(_) => self.reservation = Some(reservation),
        }
    }

    fn hold(&mut self, slot: PoolSlot) {
        self.slot = Some(slot);
    }
}
