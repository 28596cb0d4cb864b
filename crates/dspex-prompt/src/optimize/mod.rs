//! Optimisers: programs whose prompts are compiled, not hand-written.
//!
//! The few-shot optimisers, with DSPy's semantics: [`LabeledFewShot`] attaches
//! labelled examples as demos; [`BootstrapFewShot`] runs a teacher program
//! over a trainset, keeps the traces of the runs whose outputs pass a
//! [`Metric`] and attaches them (topped up with labelled examples) as demos
//! of each predictor. The compiled program is an ordinary module: save it
//! with [`save_program`](crate::save_program).
//!
//! Every teacher run is an ordinary module run, so it goes through the same
//! protected client (limits, retries, breaker, events) as any other call.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::evaluate::{Metric, parse_dataset};
//! use dspex_prompt::optimize::BootstrapFewShot;
//! use dspex_prompt::{Lm, Module, Predict, Signature};
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", ScriptedLm::replies(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])).await?;
//! let signature = Signature::parse("question -> answer")?;
//! let student = Predict::new(signature.clone(), Lm::new(&client, "dummy"));
//! let trainset = parse_dataset(
//!     "{\"question\": \"2+2?\", \"answer\": \"4\"}\n{\"question\": \"3+3?\", \"answer\": \"6\"}\n",
//!     "inline",
//!     &signature,
//! )?;
//! let optimizer = BootstrapFewShot::new(Metric::exact_match());
//! let (compiled, report) = optimizer.compile(&student, None, &trainset).await?;
//! // "2+2?" was answered right and became a bootstrapped demo; "3+3?" was
//! // not, and fills up as a labelled demo.
//! assert_eq!((report.passed, report.failed), (1, 1));
//! assert_eq!(compiled.predictors()[0].1.demos().len(), 2);
//! # Ok(()) }
//! ```

pub mod config;
mod copro;
pub mod engine;
mod fewshot;
pub mod gepa;
mod knn;
mod mipro;
mod propose;
mod random_search;
pub mod report;
pub mod tpe;

pub use copro::Copro;
pub use fewshot::{BootstrapFewShot, CompileReport, ExampleError, LabeledFewShot, PredictorDemos};
pub use gepa::{AutoLevel, Gepa, GepaBudget};
pub use knn::{KnnFewShot, KnnState};
pub use mipro::MiproV2;
pub use random_search::RandomSearch;
pub use report::{OptimizeReport, Trial, ValScore};
