//! Modules: [`Predict`], [`ChainOfThought`], the [`Module`] trait they share,
//! batch execution, and saving and loading program state.
//!
//! - `predict`: [`Predict`] and its [`CallSettings`];
//! - `chain_of_thought`: [`ChainOfThought`];
//! - `prediction`: [`Prediction`], its trace of [`LmCall`]s and
//!   [`PredictorTrace`]s;
//! - `state`: program state as plain JSON ([`ProgramState`], [`save_program`],
//!   [`load_program`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::{Lm, Module, Predict, Signature};
//! use serde_json::json;
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", ScriptedLm::replies(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])).await?;
//! let predict = Predict::new(Signature::parse("question -> answer: int")?, Lm::new(&client, "dummy"));
//! let inputs = json!({"question": "What is 2+2?"});
//! let prediction = predict.forward(inputs.as_object().unwrap()).await?;
//! assert_eq!(prediction.get::<i64>("answer")?, 4);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use dspex_client::{Capabilities, Client};
use dspex_core::CorrelationId;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::{Map, Value};

use crate::error::Result;

mod chain_of_thought;
mod multi_chain;
mod parallel;
mod predict;
mod prediction;
mod react;
mod refine;
mod state;

pub use chain_of_thought::ChainOfThought;
pub use multi_chain::MultiChainComparison;
pub use parallel::{Parallel, ParallelResults};
pub use predict::{CallSettings, Predict, ROLLOUT_TAG};
pub use prediction::{
    AgentStep, CallPurpose, LmCall, Prediction, PredictorTrace, ToolCallRecord, Trajectory,
};
pub use react::{AgentMode, ReAct};
pub use refine::{BestOfN, Refine, RewardFn};
pub use state::{
    PredictState, ProgramState, TemplateState, load_program, program_state, save_program,
};

/// Input values by field name.
pub type Inputs = Map<String, Value>;

/// Per-call context: the run's correlation id and tags for analytics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunContext {
    /// The run's correlation id; each call gets a new one when `None`.
    pub correlation_id: Option<CorrelationId>,
    /// Tags carried on every LM call's events.
    pub tags: BTreeMap<String, String>,
    /// Record each predictor's inputs and outputs in
    /// [`Prediction::traces`] (off by default: it copies them).
    pub record_traces: bool,
    /// A temperature every predictor of the run uses instead of its own:
    /// how [`BestOfN`](crate::BestOfN) and [`Refine`](crate::Refine) make
    /// their attempts differ.
    pub temperature: Option<f32>,
    /// Advice from an earlier attempt that every predictor of the run shows
    /// the model (as DSPy's `Refine` does, in a `hint_` section).
    pub hint: Option<String>,
}

impl RunContext {
    /// This run under another rollout id (`parent/child` when it already
    /// has one), so its sampled calls are cached apart from others'.
    #[must_use]
    pub fn with_rollout(mut self, child: &str) -> Self {
        let rollout = match self.tags.get(ROLLOUT_TAG) {
            Some(parent) => format!("{parent}/{child}"),
            None => child.to_owned(),
        };
        self.tags.insert(ROLLOUT_TAG.to_owned(), rollout);
        self
    }
}

/// Something that turns inputs into a prediction; modules compose by calling
/// each other's `forward`.
pub trait Module: Send + Sync {
    /// Runs the module.
    fn forward<'a>(&'a self, inputs: &'a Inputs) -> BoxFuture<'a, Result<Prediction>> {
        self.forward_with(inputs, RunContext::default())
    }

    /// Runs the module within a run (correlation id and tags).
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>>;

    /// Runs the module and streams what it produces as it goes: output
    /// fields' text as the model writes it ([`ModuleEvent::Field`]), an
    /// agent's steps ([`ModuleEvent::Step`]), and last the prediction
    /// ([`ModuleEvent::Done`]). A failure ends the stream with one error.
    fn stream<'a>(&'a self, inputs: &'a Inputs) -> BoxStream<'a, Result<ModuleEvent>> {
        self.stream_with(inputs, RunContext::default())
    }

    /// The same, within a run. Modules that cannot stream their parts yield
    /// only the prediction.
    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxStream<'a, Result<ModuleEvent>> {
        Box::pin(
            futures::stream::once(self.forward_with(inputs, run))
                .map(|result| result.map(ModuleEvent::Done)),
        )
    }

    /// The predictors inside, by name, for saving state and optimisers.
    fn predictors(&self) -> Vec<(String, &Predict)>;

    /// The same, mutably, for loading state and optimisers.
    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)>;
}

/// A boxed module is a module, so wrappers such as
/// [`BestOfN`](crate::BestOfN) take programs chosen at run time.
impl<M: Module + ?Sized> Module for Box<M> {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        (**self).forward_with(inputs, run)
    }

    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxStream<'a, Result<ModuleEvent>> {
        (**self).stream_with(inputs, run)
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        (**self).predictors()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        (**self).predictors_mut()
    }
}

/// What [`Module::stream`] yields.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ModuleEvent {
    /// New text of an output field, as the model writes it (the text
    /// before typing: the [`Done`](Self::Done) prediction has the typed
    /// value).
    Field {
        /// The field's name.
        field: String,
        /// The new text.
        text: String,
    },
    /// An agent finished a step (its tool calls have run).
    Step(AgentStep),
    /// The prediction: the last event of a stream that succeeded.
    Done(Prediction),
}

/// Where a running module sends its [`ModuleEvent`]s: nowhere for
/// `forward`, a channel for `stream`.
#[derive(Clone, Debug, Default)]
pub(crate) struct EventSink(Option<tokio::sync::mpsc::UnboundedSender<Result<ModuleEvent>>>);

impl EventSink {
    /// Whether anyone listens (so producers skip work nobody reads).
    pub(crate) fn is_listening(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn send(&self, event: ModuleEvent) {
        if let Some(sender) = &self.0 {
            // A closed channel means the stream was dropped, and the work
            // with it: nothing to report.
            let _ = sender.send(Ok(event));
        }
    }
}

/// A stream of the events `work` sends, ending with its result. Everything
/// goes through one channel, so the prediction always comes last; dropping
/// the stream drops (cancels) the work.
pub(crate) fn event_stream<'a, F>(
    work: impl FnOnce(EventSink) -> F,
) -> BoxStream<'a, Result<ModuleEvent>>
where
    F: Future<Output = Result<Prediction>> + Send + 'a,
{
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let work = work(EventSink(Some(sender.clone())));
    let driver = async move {
        let result = work.await;
        let _ = sender.send(result.map(ModuleEvent::Done));
    };
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    let driver = futures::stream::once(driver).filter_map(|()| async { None });
    Box::pin(futures::stream::select(events, driver))
}

/// Which LM a module calls: a client and a provider id (and optionally a model).
#[derive(Clone, Debug)]
pub struct Lm {
    client: Client,
    provider: Arc<str>,
    /// The model to ask for when a predictor's settings name none (the
    /// provider's configured model otherwise).
    model: Option<Arc<str>>,
    /// The provider's capabilities, learnt on first use (the provider may be
    /// registered after the module is built) and shared by clones.
    capabilities: Arc<OnceLock<Capabilities>>,
}

impl Lm {
    /// Calls `provider` through `client`.
    pub fn new(client: &Client, provider: &str) -> Self {
        Self {
            client: client.clone(),
            provider: Arc::from(provider),
            model: None,
            capabilities: Arc::default(),
        }
    }

    /// Asks for `model` when a predictor's settings name none.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(Arc::from(model.into()));
        self
    }

    /// The model asked for by default, when one was set.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// What the provider can do; none of it while no provider of that id is
    /// registered (a call then fails naming the known ones).
    pub fn capabilities(&self) -> Capabilities {
        if let Some(capabilities) = self.capabilities.get() {
            return *capabilities;
        }
        match self.client.provider(&self.provider) {
            Ok(provider) => *self.capabilities.get_or_init(|| provider.capabilities()),
            Err(_) => Capabilities::default(),
        }
    }

    /// The provider id.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Runs `module` over every input with at most `concurrency` in flight, in
/// input order. One input's error is its own result; the batch goes on. A
/// progress bar is drawn on a terminal when `progress` is set.
pub async fn batch<M: Module + ?Sized>(
    module: &M,
    inputs: &[Inputs],
    concurrency: usize,
    progress: bool,
) -> Vec<Result<Prediction>> {
    let bar = if progress && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(inputs.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let results = futures::stream::iter(inputs.iter().map(|input| {
        let bar = bar.clone();
        async move {
            let result = module.forward(input).await;
            bar.inc(1);
            result
        }
    }))
    .buffered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    results
}
