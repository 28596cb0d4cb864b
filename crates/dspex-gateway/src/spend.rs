//! Per-key budgets: a key's spend in its current day or month, checked
//! before each call the way the library's budgets are (spent + reserved +
//! this call's estimate must stay within the limit) and settled with the
//! real cost afterwards.
//!
//! Written here rather than with `dspex_analytics::budget::Budgets` because
//! keys come and go while the gateway runs (that type's budgets are fixed
//! at start) and because several instances must share one tally: with
//! `rate_limit_backend` set the tally is a Redis hash per key and period,
//! reserved and settled by Lua scripts (one round trip each, atomic), so
//! two instances can never both spend the last dollar. Without it the
//! tally is in process. Either way it starts from the store's recorded
//! spend for the period, so a restart does not reset a budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dspex_analytics::Store;
use dspex_analytics::budget::BudgetPeriod;
use dspex_analytics::keys::ApiKey;
use dspex_analytics::prices::format_usd;
use dspex_analytics::record::KEY_TAG;
use dspex_analytics::store::SpendFilter;
use dspex_analytics::time::{DAY_MS, format_date, month_start_ms, next_month_start_ms, unix_ms};
use parking_lot::Mutex;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::error::RequestError;

/// Reserves `ARGV[2]` against limit `ARGV[1]` unless spent + reserved would
/// pass it; `{-1}` when the period's spend is not loaded yet (the caller
/// primes it from the store and asks again).
const RESERVE: &str = r"
local spent = redis.call('HGET', KEYS[1], 'spent')
if not spent then return {-1, 0} end
local committed = tonumber(spent) + tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if committed + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return {0, committed} end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
return {1, committed}
";

/// Releases a reservation of `ARGV[1]` and adds the real cost `ARGV[2]`.
const SETTLE: &str = r"
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
";

/// Sets the period's spend from the store unless another instance did
/// first, and lets the hash expire a day after its period ends.
const PRIME: &str = r"
redis.call('HSETNX', KEYS[1], 'spent', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// A key's current period: its start, end and label.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Period {
    start_ms: i64,
    end_ms: i64,
    label: String,
}

impl Period {
    fn of(period: BudgetPeriod, now_ms: i64) -> Self {
        match period {
            BudgetPeriod::Day => {
                let start = now_ms.div_euclid(DAY_MS) * DAY_MS;
                Self {
                    start_ms: start,
                    end_ms: start + DAY_MS,
                    label: format_date(now_ms),
                }
            }
            // A key's period is validated to be a day or a month.
            _ => Self {
                start_ms: month_start_ms(now_ms),
                end_ms: next_month_start_ms(now_ms),
                label: format_date(now_ms).get(..7).unwrap_or_default().to_owned(),
            },
        }
    }
}

#[derive(Default)]
struct Tally {
    start_ms: i64,
    spent: i64,
    reserved: i64,
}

enum Backend {
    Local(Mutex<HashMap<String, Tally>>),
    Redis {
        connection: ConnectionManager,
        reserve: Script,
        settle: Script,
        prime: Script,
    },
}

/// Every key's spend in its current period.
pub(crate) struct Ledger {
    store: Store,
    backend: Backend,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field(
                "backend",
                &match self.backend {
                    Backend::Local(_) => "local",
                    Backend::Redis { .. } => "redis",
                },
            )
            .finish()
    }
}

/// A reservation against a key's budget, settled with the real cost.
#[derive(Debug)]
#[must_use = "settle a hold with the call's real cost"]
pub(crate) struct Hold {
    name: String,
    start_ms: i64,
    redis_key: String,
    reserved: i64,
}

impl Hold {
    /// What was reserved, in nano-USD.
    pub(crate) fn reserved(&self) -> i64 {
        self.reserved
    }
}

fn redis_key(name: &str, start_ms: i64) -> String {
    format!("dspex:budget:{{key:{name}}}:{start_ms}")
}

impl Ledger {
    /// A ledger in process.
    pub(crate) fn local(store: Store) -> Self {
        Self {
            store,
            backend: Backend::Local(Mutex::new(HashMap::new())),
        }
    }

    /// A ledger in Redis, shared by every instance on the same Redis.
    pub(crate) fn redis(store: Store, connection: ConnectionManager) -> Self {
        Self {
            store,
            backend: Backend::Redis {
                connection,
                reserve: Script::new(RESERVE),
                settle: Script::new(SETTLE),
                prime: Script::new(PRIME),
            },
        }
    }

    async fn recorded_spend(&self, name: &str, period: &Period) -> Result<i64, RequestError> {
        let filter = SpendFilter {
            tag: Some((KEY_TAG.to_owned(), name.to_owned())),
            ..SpendFilter::default()
        };
        self.store
            .spent(&filter, period.start_ms, period.end_ms)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "reading a key's spend failed");
                RequestError::unavailable(
                    "the gateway cannot check budgets right now (store unreachable)",
                )
            })
    }

    /// Reserves `estimate` nano-USD against `key`'s budget, or refuses
    /// with 429 `budget_exceeded` (Retry-After: the end of the period).
    /// `None` when the key has no budget.
    pub(crate) async fn reserve(
        &self,
        key: &ApiKey,
        estimate: i64,
    ) -> Result<Option<Hold>, RequestError> {
        let Some(limit) = key.limits.budget_nanos else {
            return Ok(None);
        };
        let now_ms = unix_ms(SystemTime::now());
        let period = Period::of(key.limits.period(), now_ms);
        let estimate = estimate.max(0);
        let name = key.name.as_str();
        let refuse = |committed: i64| {
            let until_end = u64::try_from(period.end_ms.saturating_sub(now_ms)).unwrap_or(0);
            RequestError::budget_exceeded(
                format!(
                    "key `{name}` has spent {} of its {} budget for {} ({}); this call could cost up to {}",
                    format_usd(committed),
                    format_usd(limit),
                    period.label,
                    key.limits.period(),
                    format_usd(estimate),
                ),
                Duration::from_millis(until_end),
            )
        };
        match &self.backend {
            Backend::Local(tallies) => {
                let loaded = tallies
                    .lock()
                    .get(name)
                    .is_some_and(|t| t.start_ms == period.start_ms);
                if !loaded {
                    let spent = self.recorded_spend(name, &period).await?;
                    let mut tallies = tallies.lock();
                    let tally = tallies.entry(name.to_owned()).or_default();
                    // Another request may have loaded it meanwhile: keep
                    // the first load and what was reserved since.
                    if tally.start_ms != period.start_ms {
                        *tally = Tally {
                            start_ms: period.start_ms,
                            spent,
                            reserved: 0,
                        };
                    }
                }
                let mut tallies = tallies.lock();
                let tally = tallies.entry(name.to_owned()).or_default();
                let committed = tally.spent.saturating_add(tally.reserved);
                if committed.saturating_add(estimate) > limit {
                    return Err(refuse(committed));
                }
                tally.reserved = tally.reserved.saturating_add(estimate);
                Ok(Some(Hold {
                    name: name.to_owned(),
                    start_ms: period.start_ms,
                    redis_key: String::new(),
                    reserved: estimate,
                }))
            }
            Backend::Redis {
                connection,
                reserve,
                prime,
                ..
            } => {
                let key_name = redis_key(name, period.start_ms);
                for _ in 0..2 {
                    let mut connection = connection.clone();
                    let (verdict, committed): (i64, i64) = reserve
                        .key(&key_name)
                        .arg(limit)
                        .arg(estimate)
                        .invoke_async(&mut connection)
                        .await
                        .map_err(|e| redis_unavailable(&e))?;
                    match verdict {
                        1 => {
                            return Ok(Some(Hold {
                                name: name.to_owned(),
                                start_ms: period.start_ms,
                                redis_key: key_name,
                                reserved: estimate,
                            }));
                        }
                        0 => return Err(refuse(committed)),
                        _ => {
                            let spent = self.recorded_spend(name, &period).await?;
                            let expire_at = period.end_ms.saturating_add(DAY_MS);
                            let _: i64 = prime
                                .key(&key_name)
                                .arg(spent)
                                .arg(expire_at)
                                .invoke_async(&mut connection)
                                .await
                                .map_err(|e| redis_unavailable(&e))?;
                        }
                    }
                }
                Err(RequestError::unavailable(
                    "the budget tally in Redis could not be loaded",
                ))
            }
        }
    }

    /// Releases `hold` and adds the real cost, in nano-USD.
    pub(crate) fn settle(self: &Arc<Self>, hold: Hold, actual: i64) {
        let actual = actual.max(0);
        match &self.backend {
            Backend::Local(tallies) => {
                let mut tallies = tallies.lock();
                if let Some(tally) = tallies.get_mut(&hold.name)
                    && tally.start_ms == hold.start_ms
                {
                    tally.reserved = tally.reserved.saturating_sub(hold.reserved).max(0);
                    tally.spent = tally.spent.saturating_add(actual);
                }
            }
            Backend::Redis { .. } => {
                let ledger = Arc::clone(self);
                tokio::spawn(async move {
                    let Backend::Redis {
                        connection, settle, ..
                    } = &ledger.backend
                    else {
                        return;
                    };
                    let mut connection = connection.clone();
                    let result: redis::RedisResult<i64> = settle
                        .key(&hold.redis_key)
                        .arg(hold.reserved)
                        .arg(actual)
                        .invoke_async(&mut connection)
                        .await;
                    if let Err(error) = result {
                        // The reservation stays counted: the budget errs
                        // on the side of never overspending.
                        tracing::warn!(error = %error, key = %hold.name, "settling a key's budget in Redis failed");
                    }
                });
            }
        }
    }

    /// Spent and reserved in `key`'s current period, when this instance has
    /// loaded it (in-process ledgers only).
    #[cfg(test)]
    pub(crate) fn local_tally(&self, name: &str) -> Option<(i64, i64)> {
        match &self.backend {
            Backend::Local(tallies) => tallies.lock().get(name).map(|t| (t.spent, t.reserved)),
            Backend::Redis { .. } => None,
        }
    }
}

fn redis_unavailable(error: &redis::RedisError) -> RequestError {
    tracing::warn!(error = %error, "the budget tally in Redis is unreachable");
    RequestError::unavailable("the gateway cannot check budgets right now (Redis unreachable)")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use dspex_analytics::keys::KeyLimits;

    async fn key_with_budget(store: &Store, nanos: i64) -> ApiKey {
        store
            .create_key(
                "team-a",
                &KeyLimits {
                    budget_nanos: Some(nanos),
                    budget_period: Some(BudgetPeriod::Day),
                    ..KeyLimits::default()
                },
            )
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn a_budget_admits_until_spent_plus_reserved_would_pass_it() {
        let store = Store::open(":memory:", None).await.unwrap();
        let key = key_with_budget(&store, 100).await;
        let ledger = Arc::new(Ledger::local(store));
        let first = ledger.reserve(&key, 60).await.unwrap().unwrap();
        // 60 reserved: another 60 would pass 100.
        let refused = ledger.reserve(&key, 60).await.unwrap_err();
        assert_eq!(
            (refused.status, refused.code.as_deref()),
            (429, Some("budget_exceeded"))
        );
        assert!(refused.retry_after.is_some());
        assert!(refused.message.contains("team-a"), "{}", refused.message);
        ledger.settle(first, 30);
        assert_eq!(ledger.local_tally("team-a"), Some((30, 0)));
        let second = ledger.reserve(&key, 70).await.unwrap().unwrap();
        ledger.settle(second, 70);
        // Spent exactly the limit: only a free call still fits.
        assert!(ledger.reserve(&key, 1).await.is_err());
        let free = ledger.reserve(&key, 0).await.unwrap().unwrap();
        ledger.settle(free, 0);
    }

    #[tokio::test]
    async fn keys_without_a_budget_are_not_tracked() {
        let store = Store::open(":memory:", None).await.unwrap();
        let (key, _) = store
            .create_key("open", &KeyLimits::default())
            .await
            .unwrap();
        let ledger = Ledger::local(store);
        assert!(ledger.reserve(&key, 1_000_000).await.unwrap().is_none());
    }
}
