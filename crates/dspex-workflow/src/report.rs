//! What a run reports: per step, its status, duration, attempts and LM usage.

use std::time::Duration;

use dspex_core::CorrelationId;
use serde::Serialize;

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It produced its outputs.
    Succeeded,
    /// It failed after its retries.
    Failed,
    /// Its last attempt ran past the step's timeout.
    TimedOut,
    /// It was stopped: the run was cancelled, or a sibling branch failed.
    Cancelled,
}

/// One step of a run, as the history and the report show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    /// The step's path: `answer`, `fan_out/summary`, `per_doc[3]`.
    pub step: String,
    /// How it ended.
    pub status: StepStatus,
    /// Offset of its start from the run's start.
    #[serde(rename = "started_ms", with = "dspex_client::duration_ms")]
    pub started: Duration,
    /// How long it took, retries and waits included.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// LM calls its module made (re-asks included).
    pub lm_calls: u32,
    /// Prompt tokens of those calls.
    pub input_tokens: u64,
    /// Completion tokens of those calls.
    pub output_tokens: u64,
    /// Calls answered from the response cache.
    pub cache_hits: u32,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The report of a whole run, serialisable for `dspex run --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// The workflow.
    pub workflow: String,
    /// The run's correlation id, found on every LM call and event of the run.
    pub correlation_id: CorrelationId,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The run's duration.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
    /// Every step, in start order.
    pub steps: Vec<StepRecord>,
    /// LM calls of all steps.
    pub lm_calls: u32,
    /// Prompt tokens of all steps.
    pub input_tokens: u64,
    /// Completion tokens of all steps.
    pub output_tokens: u64,
    /// Cache hits of all steps.
    pub cache_hits: u32,
}

impl RunReport {
    pub(crate) fn new(
        workflow: &str,
        correlation_id: CorrelationId,
        status: &'static str,
        duration: Duration,
        steps: Vec<StepRecord>,
    ) -> Self {
        // Composite steps (parallel, map) add no calls of their own, so the sum
        // over leaves counts each call once.
        let mut report = Self {
            workflow: workflow.to_owned(),
            correlation_id,
            status,
            duration,
            lm_calls: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_hits: 0,
            steps,
        };
        for step in &report.steps {
            report.lm_calls = report.lm_calls.saturating_add(step.lm_calls);
            report.input_tokens = report.input_tokens.saturating_add(step.input_tokens);
            report.output_tokens = report.output_tokens.saturating_add(step.output_tokens);
            report.cache_hits = report.cache_hits.saturating_add(step.cache_hits);
        }
        report
    }

    /// The record of step `path`.
    pub fn step(&self, path: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == path)
    }
}
