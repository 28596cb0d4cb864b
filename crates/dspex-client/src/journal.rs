//! Durable completions: a [`CompletionJournal`] the client hands each
//! completed call to, and waits on, before it returns the call.
//!
//! The event bus is fire-and-forget: a subscriber that writes rows in
//! batches may still hold a completed call when the process is killed. A
//! journal closes that gap. The client publishes the completion event, then
//! appends it to the journal and awaits the [`JournalTicket`] before
//! answering the caller, so every call a caller saw complete is on disk.
//! dspex-analytics implements it (`durability = "wal"`).
//!
//! ```
//! use std::sync::Arc;
//! use dspex_client::{CompletionJournal, Event, JournalTicket};
//!
//! /// Keeps nothing: every append is durable at once.
//! struct Nothing;
//! impl CompletionJournal for Nothing {
//!     fn append(&self, _event: &Event) -> JournalTicket {
//!         JournalTicket::ready()
//!     }
//! }
//! let journal: Arc<dyn CompletionJournal> = Arc::new(Nothing);
//! # drop(journal);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::events::Event;

/// Where the client makes completed calls durable before returning them.
pub trait CompletionJournal: Send + Sync + 'static {
    /// Appends a `RequestCompleted` event; the ticket resolves once it is
    /// durable. Must not block: the client calls it on the call path.
    fn append(&self, event: &Event) -> JournalTicket;
}

/// Resolves when an appended completion is durable (or the journal gave up
/// on it: a journal that cannot write says so in its own stats and logs, and
/// never fails the call it was only recording).
#[derive(Debug)]
#[must_use = "the call is durable only once the ticket resolves"]
pub struct JournalTicket {
    durable: Option<oneshot::Receiver<()>>,
}

impl JournalTicket {
    /// Already durable (or nothing to keep).
    pub fn ready() -> Self {
        Self { durable: None }
    }

    /// Durable when `durable` receives (or its sender is dropped).
    pub fn pending(durable: oneshot::Receiver<()>) -> Self {
        Self {
            durable: Some(durable),
        }
    }
}

impl Future for JournalTicket {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.durable {
            None => Poll::Ready(()),
            Some(receiver) => match Pin::new(receiver).poll(cx) {
                Poll::Ready(_) => {
                    self.durable = None;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
