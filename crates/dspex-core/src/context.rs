//! Correlation ids and error context.
//!
//! Every operation that can fail carries an [`ErrorContext`]: the correlation id of
//! the run it belongs to and a trail of [`Breadcrumb`]s (which provider, which
//! model, each attempt, each wait). Errors box it so `Result`s stay small.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Identifies one logical run (a call, a program, a workflow) across every event,
/// span, log line and error it produces.
///
/// Cheap to clone (an `Arc<str>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(Arc<str>);

impl CorrelationId {
    /// A new random, time-ordered id (UUIDv7), so ids sort by creation time.
    pub fn generate() -> Self {
        // Encode into a stack buffer: `to_string` goes through the formatting
        // machinery, which costs more than the id itself on the call path.
        let mut buffer = uuid::Uuid::encode_buffer();
        Self(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer),
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for CorrelationId {
    fn from(value: &str) -> Self {
        Self(Arc::from(value))
    }
}

impl From<String> for CorrelationId {
    fn from(value: String) -> Self {
        Self(Arc::from(value))
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

/// One step of the trail an error carries: what was being done when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breadcrumb {
    /// Wall-clock time of the step.
    #[serde(with = "crate::serde_time")]
    pub at: SystemTime,
    /// A short category, such as `provider`, `attempt`, `wait`, `step`.
    pub category: Cow<'static, str>,
    /// What happened, in words. Shared, so a message that repeats on every
    /// call (which provider and model) can be built once.
    pub message: Arc<str>,
}

impl Breadcrumb {
    /// A breadcrumb stamped now.
    pub fn new(category: impl Into<Cow<'static, str>>, message: impl Into<Arc<str>>) -> Self {
        Self {
            at: SystemTime::now(),
            category: category.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Breadcrumb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.category, self.message)
    }
}

/// The context an error carries: its correlation id and the breadcrumb trail that
/// led to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorContext {
    /// The run this error belongs to.
    pub correlation_id: CorrelationId,
    /// What was done, oldest first.
    pub breadcrumbs: Vec<Breadcrumb>,
}

impl ErrorContext {
    /// An empty trail for `correlation_id`.
    pub fn new(correlation_id: CorrelationId) -> Self {
        Self {
            correlation_id,
            breadcrumbs: Vec::new(),
        }
    }

    /// Adds a breadcrumb at the end of the trail.
    #[must_use]
    pub fn with(
        mut self,
        category: impl Into<Cow<'static, str>>,
        message: impl Into<Arc<str>>,
    ) -> Self {
        self.breadcrumbs.push(Breadcrumb::new(category, message));
        self
    }
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "correlation id {}", self.correlation_id)?;
        for crumb in &self.breadcrumbs {
            write!(f, "; {crumb}")?;
        }
        Ok(())
    }
}

/// A breadcrumb trail that several tasks of one operation append to (each retry
/// attempt, each wait), then freeze into an [`ErrorContext`] if the operation fails.
///
/// Cloning shares the trail.
#[derive(Clone, Debug)]
pub struct Trail {
    correlation_id: CorrelationId,
    crumbs: Arc<Mutex<Vec<Breadcrumb>>>,
}

impl Trail {
    /// A new, empty trail.
    pub fn new(correlation_id: CorrelationId) -> Self {
        Self {
            correlation_id,
            crumbs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The correlation id of the operation.
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    /// Appends a breadcrumb.
    pub fn push(&self, category: impl Into<Cow<'static, str>>, message: impl Into<Arc<str>>) {
        self.crumbs.lock().push(Breadcrumb::new(category, message));
    }

    /// Records a wait of `waited` for `reason`.
    pub fn waited(&self, reason: &str, waited: Duration) {
        self.push(
            "wait",
            format!("{reason}: waited {}", format_duration(waited)),
        );
    }

    /// A snapshot of the trail as an error context.
    pub fn snapshot(&self) -> ErrorContext {
        ErrorContext {
            correlation_id: self.correlation_id.clone(),
            breadcrumbs: self.crumbs.lock().clone(),
        }
    }
}

/// Formats a duration for people: `850ms`, `1.5s`, `2m 3s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        if d.as_micros() < 1_000 {
            return format!("{}µs", d.as_micros());
        }
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let secs = d.as_secs();
    format!("{}m {}s", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_ordered() {
        let a = CorrelationId::generate();
        let b = CorrelationId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn trail_snapshot_keeps_order() {
        let trail = Trail::new("run-1".into());
        trail.push("provider", "openai");
        trail.waited("rate limit", Duration::from_millis(250));
        let ctx = trail.snapshot();
        assert_eq!(ctx.correlation_id.as_str(), "run-1");
        assert_eq!(ctx.breadcrumbs.len(), 2);
        assert_eq!(&*ctx.breadcrumbs[1].message, "rate limit: waited 250ms");
        assert_eq!(
            ctx.to_string()
                .split("; ")
                .map(|s| s.to_owned())
                .collect::<Vec<_>>()[1],
            "[provider] openai"
        );
    }

    #[test]
    fn durations_format_for_people() {
        assert_eq!(format_duration(Duration::from_micros(12)), "12µs");
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(123)), "2m 3s");
    }
}
