//! Faults: the enqueued kind ([`Fault`]), the fraction-based kind, and their bookkeeping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::MockConfig;

/// A fault to inject into one upcoming request, queued with
/// [`MockServer::enqueue`](crate::MockServer::enqueue).
///
/// Queued faults are taken in order by the next model requests (chat completions,
/// messages and embeddings; not `/stats`, `/health` or `/v1/models`), after the API
/// key check and before the server-side limits and the fraction-based faults, which a
/// request that takes a queued fault skips.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status and a provider-shaped error body (OpenAI's on OpenAI
    /// routes, Anthropic's on `/v1/messages`). An empty `message` gets a default one.
    Status {
        /// HTTP status code (e.g. 429, 500, 503, 529).
        code: u16,
        /// If set, sent as the `Retry-After` header (seconds).
        retry_after_secs: Option<u64>,
        /// The error message in the body.
        message: String,
    },
    /// Sleep this long, then answer normally.
    Hang(Duration),
    /// Extra latency on top of the configured one, then answer normally.
    Delay(Duration),
    /// Answer 200 with a body that is not valid JSON (a garbled SSE event for streams).
    Malformed,
    /// Like [`Fault::Malformed`], but a stream's very first event is the
    /// garbled one (and the stream ends there): nothing reaches the caller.
    MalformedStart,
    /// Cut the body halfway: a plain body ends with a broken connection after half its
    /// bytes; a stream ends cleanly after about half its events, without `[DONE]` /
    /// `message_stop`.
    Truncate,
    /// Answer normally, but with this content.
    Reply(String),
}

impl Fault {
    /// A 429 with `Retry-After: secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::Status {
            code: 429,
            retry_after_secs: Some(retry_after_secs),
            message: String::new(),
        }
    }

    /// A 500 server error.
    pub fn server_error() -> Self {
        Self::Status {
            code: 500,
            retry_after_secs: None,
            message: String::new(),
        }
    }

    /// Any status code with the default message for it.
    pub fn status(code: u16) -> Self {
        Self::Status {
            code,
            retry_after_secs: None,
            message: String::new(),
        }
    }
}

/// A FIFO of enqueued faults whose emptiness is checked without locking.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    len: AtomicUsize,
    queue: Mutex<VecDeque<Fault>>,
}

impl FaultQueue {
    pub(crate) fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        let mut queue = self.queue.lock();
        queue.extend(faults);
        self.len.store(queue.len(), Ordering::Release);
    }

    pub(crate) fn pop(&self) -> Option<Fault> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut queue = self.queue.lock();
        let fault = queue.pop_front();
        self.len.store(queue.len(), Ordering::Release);
        fault
    }
}

/// A fault picked by the configured fractions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FractionFault {
    TooManyRequests,
    ServerError,
    Hang,
    Malformed,
    Truncate,
}

/// SplitMix64's finaliser: a fast, well-mixing 64-bit hash.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic value in `[0, 1)` for (seed, sequence number, purpose).
pub(crate) fn unit_draw(seed: u64, seq: u64, salt: u64) -> f64 {
    let hash = splitmix64(splitmix64(seed ^ salt.rotate_left(32)) ^ seq);
    // 53 random bits give every representable double in [0, 1) of that spacing.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

const FAULT_SALT: u64 = 0xFA17;
const JITTER_SALT: u64 = 0x7177;

/// The fraction-based fault, if any, for request `seq`.
pub(crate) fn pick_fraction_fault(config: &MockConfig, seq: u64) -> Option<FractionFault> {
    let total =
        config.fail_429 + config.fail_500 + config.hang + config.malformed + config.truncate;
    if total <= 0.0 {
        return None;
    }
    let draw = unit_draw(config.seed, seq, FAULT_SALT);
    let mut edge = 0.0;
    for (fraction, fault) in [
        (config.fail_429, FractionFault::TooManyRequests),
        (config.fail_500, FractionFault::ServerError),
        (config.hang, FractionFault::Hang),
        (config.malformed, FractionFault::Malformed),
        (config.truncate, FractionFault::Truncate),
    ] {
        edge += fraction;
        if draw < edge {
            return Some(fault);
        }
    }
    None
}

/// The jitter for request `seq`: uniform in `0..=jitter_ms`.
pub(crate) fn jitter(config: &MockConfig, seq: u64) -> Duration {
    if config.jitter_ms == 0 {
        return Duration::ZERO;
    }
    let hash = splitmix64(splitmix64(config.seed ^ JITTER_SALT.rotate_left(32)) ^ seq);
    Duration::from_millis(hash % config.jitter_ms.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_close_and_deterministic() {
        let config = MockConfig {
            fail_429: 0.2,
            fail_500: 0.1,
            seed: 7,
            ..MockConfig::default()
        };
        let picks: Vec<_> = (0..10_000)
            .map(|seq| pick_fraction_fault(&config, seq))
            .collect();
        let again: Vec<_> = (0..10_000)
            .map(|seq| pick_fraction_fault(&config, seq))
            .collect();
        assert_eq!(picks, again);
        let n429 = picks
            .iter()
            .filter(|p| **p == Some(FractionFault::TooManyRequests))
            .count();
        let n500 = picks
            .iter()
            .filter(|p| **p == Some(FractionFault::ServerError))
            .count();
        assert!((1800..2200).contains(&n429), "{n429}");
        assert!((850..1150).contains(&n500), "{n500}");
        let other = MockConfig { seed: 8, ..config };
        let different: Vec<_> = (0..10_000)
            .map(|seq| pick_fraction_fault(&other, seq))
            .collect();
        assert_ne!(picks, different);
    }

    #[test]
    fn all_or_nothing() {
        let always = MockConfig {
            fail_500: 1.0,
            ..MockConfig::default()
        };
        assert!(
            (0..1000)
                .all(|seq| pick_fraction_fault(&always, seq) == Some(FractionFault::ServerError))
        );
        let never = MockConfig::default();
        assert!((0..1000).all(|seq| pick_fraction_fault(&never, seq).is_none()));
    }

    #[test]
    fn jitter_in_range() {
        let config = MockConfig {
            jitter_ms: 5,
            ..MockConfig::default()
        };
        assert!((0..1000).all(|seq| jitter(&config, seq) <= Duration::from_millis(5)));
    }

    #[test]
    fn queue_is_fifo() {
        let queue = FaultQueue::default();
        assert_eq!(queue.pop(), None);
        queue.push([Fault::Malformed, Fault::Truncate]);
        assert_eq!(queue.pop(), Some(Fault::Malformed));
        assert_eq!(queue.pop(), Some(Fault::Truncate));
        assert_eq!(queue.pop(), None);
    }
}
