//! The generic layer of DSPex: what every other crate builds on, with no
//! knowledge of language models.
//!
//! - [`config`]: TOML plus environment overrides, two-phase validation, secrets.
//! - [`registry`]: named services looked up by id.
//! - [`events`]: a typed in-process event bus that never loses an event silently.
//! - [`telemetry`]: Prometheus rendering of `metrics`.
//! - [`context`]: correlation ids and breadcrumb trails for errors.
//! - [`protect`]: circuit breaker, multi-bucket rate limits (in process or in
//!   Redis), concurrency bound, retries and timeouts as tower layers.
//!
//! ```
//! use std::sync::Arc;
//! use dspex_core::context::{CorrelationId, Trail};
//! use dspex_core::events::{Delivery, EventBus};
//!
//! let bus: EventBus<&'static str> = EventBus::new();
//! let mut audit = bus.subscribe("audit", Delivery::Lossless);
//! let trail = Trail::new(CorrelationId::generate());
//! trail.push("step", "started");
//! bus.publish("started");
//! assert_eq!(audit.try_recv().as_deref(), Some(&"started"));
//! assert_eq!(trail.snapshot().breadcrumbs.len(), 1);
//! ```

pub mod config;
pub mod context;
pub mod error;
pub mod events;
pub mod protect;
pub mod registry;
pub mod serde_duration;
pub mod serde_time;
pub mod telemetry;

pub use context::{Breadcrumb, CorrelationId, ErrorContext, Trail};
pub use error::{CoreError, Result};
