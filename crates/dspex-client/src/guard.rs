//! A hook before each call is sent and after it ends: how budgets (in
//! `dspex-analytics`) refuse calls that would overspend, without the client
//! knowing about prices.

use dspex_core::CorrelationId;

use crate::events::CallInfo;
use crate::types::Usage;

/// Checks each call before it is sent and learns its real usage afterwards.
///
/// `admit` runs after the provider is resolved and the prompt's tokens are
/// estimated, before the call takes any rate-limit room or pool slot. A refusal
/// fails the call with [`ClientError::Refused`](crate::ClientError::Refused)
/// and is still recorded (one completion event, like every call). Every
/// admitted call is settled exactly once, with zero usage when it failed before
/// a reply or was cancelled.
pub trait CallGuard: Send + Sync + 'static {
    /// The guard's name in errors (`budget`).
    fn name(&self) -> &'static str;

    /// Refuses the call with a reason, or lets it through. `estimate` holds the
    /// estimated prompt tokens and the most output tokens the call may use.
    fn admit(
        &self,
        call: &CallInfo,
        correlation_id: &CorrelationId,
        estimate: &Usage,
    ) -> Result<(), String>;

    /// The call ended with `usage` (cached responses report zero).
    fn settle(&self, call: &CallInfo, correlation_id: &CorrelationId, usage: &Usage);
}
