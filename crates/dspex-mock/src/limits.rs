//! Server-side rate limits (requests and tokens per minute) over a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The window length of both limits.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Requests closer together than this share one slot of the window, which bounds
/// the window's memory under heavy load (expiry may be early by at most this).
const SLOT: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Slot {
    start: Instant,
    requests: u64,
    tokens: u64,
}

#[derive(Debug, Default)]
struct Window {
    slots: VecDeque<Slot>,
    requests: u64,
    tokens: u64,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some(slot) = self.slots.front() {
            if slot.start + WINDOW > now {
                break;
            }
            self.requests -= slot.requests;
            self.tokens -= slot.tokens;
            self.slots.pop_front();
        }
    }

    /// Time until the oldest slot leaves the window.
    fn next_expiry(&self, now: Instant) -> Duration {
        self.slots.front().map_or(Duration::ZERO, |slot| {
            (slot.start + WINDOW).saturating_duration_since(now)
        })
    }

    /// Time until enough has left the window that `used - freed + want <= limit`.
    fn wait_for_room(
        &self,
        now: Instant,
        limit: u64,
        want: u64,
        field: fn(&Slot) -> u64,
    ) -> Duration {
        let used = self.slots.iter().map(field).sum::<u64>();
        if want > limit {
            return WINDOW;
        }
        let mut freed = 0;
        for slot in &self.slots {
            freed += field(slot);
            if used - freed + want <= limit {
                return (slot.start + WINDOW).saturating_duration_since(now);
            }
        }
        WINDOW
    }

    fn add(&mut self, now: Instant, tokens: u64) {
        self.requests += 1;
        self.tokens += tokens;
        if let Some(last) = self.slots.back_mut()
            && now.saturating_duration_since(last.start) < SLOT
        {
            last.requests += 1;
            last.tokens += tokens;
            return;
        }
        self.slots.push_back(Slot {
            start: now,
            requests: 1,
            tokens,
        });
    }
}

/// Limit state of one dimension (requests or tokens) after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitState {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// Time until some of the used capacity frees up.
    pub(crate) reset: Duration,
}

/// What the limiter knows after a decision, for the rate-limit headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LimitInfo {
    pub(crate) requests: Option<LimitState>,
    pub(crate) tokens: Option<LimitState>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `"requests"` or `"tokens"`.
    pub(crate) dimension: &'static str,
    pub(crate) limit: u64,
    pub(crate) used: u64,
    pub(crate) requested: u64,
    pub(crate) retry_after: Duration,
}

/// RPM and TPM limits over a sliding 60 s window.
#[derive(Debug)]
pub(crate) struct Limiter {
    rpm: Option<u64>,
    tpm: Option<u64>,
    window: Mutex<Window>,
}

impl Limiter {
    /// A limiter, or `None` when neither limit is set (no lock on the hot path then).
    pub(crate) fn new(rpm: Option<u64>, tpm: Option<u64>) -> Option<Self> {
        (rpm.is_some() || tpm.is_some()).then(|| Self {
            rpm,
            tpm,
            window: Mutex::new(Window::default()),
        })
    }

    pub(crate) fn has_tpm(&self) -> bool {
        self.tpm.is_some()
    }

    /// Admits a request costing `tokens` (then counted in the window) or refuses it.
    pub(crate) fn admit(&self, tokens: u64) -> (LimitInfo, Option<Refusal>) {
        self.admit_at(Instant::now(), tokens)
    }

    fn admit_at(&self, now: Instant, tokens: u64) -> (LimitInfo, Option<Refusal>) {
        let mut window = self.window.lock();
        window.prune(now);
        let mut refusal: Option<Refusal> = None;
        if let Some(rpm) = self.rpm
            && window.requests + 1 > rpm
        {
            let wait = window.wait_for_room(now, rpm, 1, |slot| slot.requests);
            refusal = Some(Refusal {
                dimension: "requests",
                limit: rpm,
                used: window.requests,
                requested: 1,
                retry_after: wait,
            });
        }
        if let Some(tpm) = self.tpm
            && window.tokens + tokens > tpm
        {
            let wait = window.wait_for_room(now, tpm, tokens, |slot| slot.tokens);
            if refusal.is_none_or(|r| wait > r.retry_after) {
                refusal = Some(Refusal {
                    dimension: "tokens",
                    limit: tpm,
                    used: window.tokens,
                    requested: tokens,
                    retry_after: wait,
                });
            }
        }
        if refusal.is_none() {
            window.add(now, tokens);
        }
        let reset = window.next_expiry(now);
        let info = LimitInfo {
            requests: self.rpm.map(|limit| LimitState {
                limit,
                remaining: limit.saturating_sub(window.requests),
                reset,
            }),
            tokens: self.tpm.map(|limit| LimitState {
                limit,
                remaining: limit.saturating_sub(window.tokens),
                reset,
            }),
        };
        (info, refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_refuses_then_recovers() {
        let limiter = Limiter::new(Some(2), None).unwrap();
        let t0 = Instant::now();
        assert!(limiter.admit_at(t0, 0).1.is_none());
        assert!(
            limiter
                .admit_at(t0 + Duration::from_secs(10), 0)
                .1
                .is_none()
        );
        let (info, refusal) = limiter.admit_at(t0 + Duration::from_secs(20), 0);
        let refusal = refusal.unwrap();
        assert_eq!(refusal.dimension, "requests");
        assert_eq!(refusal.retry_after, Duration::from_secs(40));
        assert_eq!(info.requests.unwrap().remaining, 0);
        assert!(
            limiter
                .admit_at(t0 + Duration::from_secs(61), 0)
                .1
                .is_none()
        );
    }

    #[test]
    fn tpm_waits_for_enough_tokens() {
        let limiter = Limiter::new(None, Some(100)).unwrap();
        let t0 = Instant::now();
        assert!(limiter.admit_at(t0, 40).1.is_none());
        assert!(
            limiter
                .admit_at(t0 + Duration::from_secs(5), 40)
                .1
                .is_none()
        );
        let refusal = limiter.admit_at(t0 + Duration::from_secs(6), 70).1.unwrap();
        assert_eq!(refusal.dimension, "tokens");
        assert_eq!(refusal.retry_after, Duration::from_secs(59));
        let refusal = limiter
            .admit_at(t0 + Duration::from_secs(6), 500)
            .1
            .unwrap();
        assert_eq!(refusal.retry_after, WINDOW);
    }

    #[test]
    fn none_without_limits() {
        assert!(Limiter::new(None, None).is_none());
    }
}
