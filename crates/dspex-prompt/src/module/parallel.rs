//! [`Parallel`]: many (module, inputs) pairs with bounded concurrency, as
//! DSPy's `dspy.Parallel`.

use std::io::IsTerminal;

use futures::StreamExt;

use super::{Inputs, Module, Prediction};
use crate::error::{PromptError, Result};

/// Runs (module, inputs) pairs with at most `concurrency` in flight, like
/// [`batch`](super::batch) but over different modules, and with an error
/// budget: once `max_errors` items have failed, nothing new
/// starts and the items in flight are cancelled.
#[derive(Clone, Copy, Debug)]
pub struct Parallel {
    concurrency: usize,
    max_errors: Option<usize>,
    progress: bool,
}

/// What [`Parallel::run`] returns.
#[derive(Debug)]
pub struct ParallelResults {
    /// One entry per pair, in order: `None` when the item never ran (or
    /// was cancelled) because the error budget ran out.
    pub results: Vec<Option<Result<Prediction>>>,
    /// How many items failed.
    pub errors: usize,
    /// Whether the run stopped early because of `max_errors`.
    pub stopped: bool,
}

impl ParallelResults {
    /// The predictions, in order; the first error (or an error saying the
    /// run stopped) if any item did not succeed.
    pub fn into_predictions(self) -> Result<Vec<Prediction>> {
        let stopped = self.stopped;
        self.results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(PromptError::Composite {
                        message: if stopped {
                            "not run: the parallel run stopped after too many errors".into()
                        } else {
                            "not run".into()
                        },
                        retryable: true,
                    })
                })
            })
            .collect()
    }
}

impl Default for Parallel {
    fn default() -> Self {
        Self::new(8)
    }
}

impl Parallel {
    /// At most `concurrency` items at once, no error budget, no progress bar.
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            max_errors: None,
            progress: false,
        }
    }

    /// Stops once `max_errors` items have failed (as DSPy's `Parallel`;
    /// 0 stops at the first failure, as 1 does).
    #[must_use]
    pub fn max_errors(mut self, max_errors: usize) -> Self {
        self.max_errors = Some(max_errors);
        self
    }

    /// Draws a progress bar on a terminal.
    #[must_use]
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Runs every pair. One item's error is its own result.
    pub async fn run<M: Module + ?Sized>(&self, jobs: &[(&M, Inputs)]) -> ParallelResults {
        let bar = if self.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(jobs.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut results: Vec<Option<Result<Prediction>>> =
            std::iter::repeat_with(|| None).take(jobs.len()).collect();
        let mut errors = 0;
        let mut stopped = false;
        let mut running = futures::stream::iter(jobs.iter().enumerate())
            .map(|(i, (module, inputs))| async move { (i, module.forward(inputs).await) })
            .buffer_unordered(self.concurrency);
        while let Some((i, result)) = running.next().await {
            bar.inc(1);
            let failed = result.is_err();
            if failed {
                errors += 1;
            }
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
            if failed && self.max_errors.is_some_and(|max| errors >= max) {
                // Dropping the stream cancels what is in flight.
                stopped = true;
                break;
            }
        }
        bar.finish_and_clear();
        ParallelResults {
            results,
            errors,
            stopped,
        }
    }
}
