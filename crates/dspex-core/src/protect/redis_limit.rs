//! The shared limiter: the same sliding logs as [`LocalLimiter`](super::LocalLimiter),
//! held in Redis so several processes share one provider limit.
//!
//! Admission is one Lua script run atomically by Redis (one round trip): it
//! expires old entries, checks every bucket, and commits to all of them or none.
//! Times come from the Redis server clock (`TIME`), so the clocks of the client
//! machines never matter. Each bucket is three keys under one hash tag (so a
//! cluster keeps them on one node): a sorted set of admission ids by time, a hash
//! of id to amount, and the running sum.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::limit::{Admission, BucketSpec, Cost, Reservation, Settler, Unit};
use crate::error::{CoreError, Result};

const ADMIT: &str = r#"
-- KEYS: per bucket i: log, amt, used (3 each), then paused, seq.
-- ARGV: n, then per bucket: limit, window_us, amount.
local function s(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local worst_wait, worst = -1, -1
local paused = tonumber(redis.call('GET', KEYS[3 * n + 1]) or '0')
if paused > now then worst_wait, worst = paused - now, 0 end
for i = 1, n do
  local log, amt, used = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local limit, window, amount = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', s(now - window), 'LIMIT', 0, 500)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', amt, unpack(old))
    local freed = 0
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', amt, unpack(old))
    redis.call('DECRBY', used, s(freed))
  end
  if amount > 0 then
    local u = tonumber(redis.call('GET', used) or '0')
    if u + amount > limit then
      local excess, freed, offset, wait = u + amount - limit, 0, 0, window
      while true do
        local page = redis.call('ZRANGE', log, offset, offset + 99, 'WITHSCORES')
        if #page == 0 then break end
        local ids = {}
        for j = 1, #page, 2 do ids[#ids + 1] = page[j] end
        local amounts = redis.call('HMGET', amt, unpack(ids))
        local found = false
        for j = 1, #ids do
          freed = freed + (tonumber(amounts[j]) or 0)
          if freed >= excess then
            wait = tonumber(page[2 * j]) + window - now
            found = true
            break
          end
        end
        if found then break end
        offset = offset + 100
      end
      if wait > worst_wait then worst_wait, worst = wait, i end
    end
  end
end
if worst >= 0 then return {1, worst, worst_wait} end
local id = redis.call('INCR', KEYS[3 * n + 2])
for i = 1, n do
  local amount = tonumber(ARGV[3 * i + 1])
  if amount > 0 then
    local log, amt, used = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local ttl = math.floor(tonumber(ARGV[3 * i]) / 1000) * 2 + 1000
    redis.call('ZADD', log, s(now), id)
    redis.call('HSET', amt, id, s(amount))
    redis.call('INCRBY', used, s(amount))
    redis.call('PEXPIRE', log, s(ttl))
    redis.call('PEXPIRE', amt, s(ttl))
    redis.call('PEXPIRE', used, s(ttl))
  end
end
return {0, id, now}
"#;

const SETTLE: &str = r#"
-- KEYS: per bucket: log, amt, used. ARGV: n, id, then per bucket: reserved, actual, window_us.
local function s(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, id = tonumber(ARGV[1]), ARGV[2]
for i = 1, n do
  local log, amt, used = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local before, after = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  if before ~= after then
    local current = redis.call('HGET', amt, id)
    if current then
      redis.call('HSET', amt, id, s(after))
      redis.call('INCRBY', used, s(after - tonumber(current)))
    elseif before == 0 then
      local ttl = math.floor(tonumber(ARGV[3 * i + 2]) / 1000) * 2 + 1000
      redis.call('ZADD', log, s(now), id)
      redis.call('HSET', amt, id, s(after))
      redis.call('INCRBY', used, s(after))
      redis.call('PEXPIRE', log, s(ttl))
      redis.call('PEXPIRE', amt, s(ttl))
      redis.call('PEXPIRE', used, s(ttl))
    end
  end
end
return 1
"#;

const PAUSE: &str = r#"
local function s(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], s(until_), 'PX', s(math.floor(tonumber(ARGV[1]) / 1000) + 1))
end
return 1
"#;

struct Shared {
    connection: ConnectionManager,
    admit: Script,
    settle: Script,
    pause: Script,
    bucket_keys: Vec<[String; 3]>,
    paused_key: String,
    seq_key: String,
    specs: Vec<BucketSpec>,
    units: Vec<Unit>,
}

/// A limiter whose buckets live in Redis, shared by every process that uses the
/// same `name` (normally the provider id) against the same Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisLimiter")
            .field("buckets", &self.shared.specs)
            .field("key", &self.shared.seq_key)
            .finish()
    }
}

fn backend(error: &redis::RedisError) -> CoreError {
    CoreError::Backend {
        message: error.to_string(),
    }
}

impl RedisLimiter {
    /// Connects to `url` (`redis://host:port/db`) and holds the buckets under
    /// keys named after `name`.
    pub async fn connect(url: &str, name: &str, buckets: Vec<BucketSpec>) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| CoreError::Backend {
            message: format!("invalid Redis URL: {}", e.detail().unwrap_or("malformed")),
        })?;
        // Fail fast at start-up on a wrong address; reconnect quietly later.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| backend(&e))?;
        Ok(Self::with_connection(connection, name, buckets))
    }

    /// Uses an existing connection.
    pub fn with_connection(
        connection: ConnectionManager,
        name: &str,
        buckets: Vec<BucketSpec>,
    ) -> Self {
        let tag = format!("dspex:rl:{{{name}}}");
        let bucket_keys = buckets
            .iter()
            .map(|b| {
                let base = format!(
                    "{tag}:{}:{}:{}",
                    b.unit.as_str(),
                    b.limit,
                    b.window.as_micros()
                );
                [
                    format!("{base}:log"),
                    format!("{base}:amt"),
                    format!("{base}:used"),
                ]
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                connection,
                admit: Script::new(ADMIT),
                settle: Script::new(SETTLE),
                pause: Script::new(PAUSE),
                bucket_keys,
                paused_key: format!("{tag}:paused"),
                seq_key: format!("{tag}:seq"),
                units: buckets.iter().map(|b| b.unit).collect(),
                specs: buckets,
            }),
        }
    }

    async fn try_admit(
        &self,
        cost: Cost,
    ) -> Result<std::result::Result<(u64, u64), (usize, Duration)>> {
        let shared = &self.shared;
        let mut invocation = shared.admit.prepare_invoke();
        for keys in &shared.bucket_keys {
            for key in keys {
                invocation.key(key);
            }
        }
        invocation.key(&shared.paused_key).key(&shared.seq_key);
        invocation.arg(shared.specs.len());
        for spec in &shared.specs {
            invocation
                .arg(spec.limit)
                .arg(u64::try_from(spec.window.as_micros()).unwrap_or(u64::MAX))
                .arg(cost.of(spec.unit));
        }
        let mut connection = shared.connection.clone();
        let (code, a, b): (u8, u64, u64) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| backend(&e))?;
        if code == 0 {
            Ok(Ok((a, b)))
        } else {
            Ok(Err((
                usize::try_from(a).unwrap_or(0),
                Duration::from_micros(b),
            )))
        }
    }

    fn bucket_name(&self, index: usize) -> String {
        match index.checked_sub(1).and_then(|i| self.shared.specs.get(i)) {
            Some(spec) => spec.name(),
            None => "paused by upstream 429".to_owned(),
        }
    }
}

impl Settler for Shared {
    fn units(&self) -> &[Unit] {
        &self.units
    }

    fn adjust(self: Arc<Self>, id: u64, reserved: Cost, actual: Cost) {
        // Settlement is off the call path. If it cannot run (no runtime, Redis
        // down) the estimate stays charged, which can only make limits stricter.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "rate-limit settlement outside a Tokio runtime; the estimate stays charged"
            );
            return;
        };
        handle.spawn(async move {
            let mut invocation = self.settle.prepare_invoke();
            for keys in &self.bucket_keys {
                for key in keys {
                    invocation.key(key);
                }
            }
            invocation.arg(self.specs.len()).arg(id);
            for spec in &self.specs {
                invocation
                    .arg(reserved.of(spec.unit))
                    .arg(actual.of(spec.unit))
                    .arg(u64::try_from(spec.window.as_micros()).unwrap_or(u64::MAX));
            }
            let mut connection = self.connection.clone();
            let result: redis::RedisResult<i64> = invocation.invoke_async(&mut connection).await;
            if let Err(error) = result {
                tracing::warn!(%error, "rate-limit settlement failed; the estimate stays charged");
            }
        });
    }
}

impl Admission for RedisLimiter {
    fn reserve(&self, cost: Cost, max_wait: Duration) -> BoxFuture<'_, Result<Reservation>> {
        Box::pin(async move {
            for spec in &self.shared.specs {
                let amount = cost.of(spec.unit);
                if amount > spec.limit {
                    return Err(CoreError::OverCapacity {
                        bucket: spec.name(),
                        requested: amount,
                        limit: spec.limit,
                    });
                }
            }
            let start = Instant::now();
            let deadline = start.checked_add(max_wait);
            let mut full_bucket = None;
            loop {
                match self.try_admit(cost).await? {
                    Ok((id, now_micros)) => {
                        return Ok(Reservation::new(
                            id,
                            cost,
                            start.elapsed(),
                            full_bucket,
                            now_micros,
                            Arc::clone(&self.shared) as Arc<dyn Settler>,
                        ));
                    }
                    Err((index, wait)) => {
                        let wait = wait.max(Duration::from_micros(100));
                        let bucket = self.bucket_name(index);
                        let late = deadline.is_some_and(|d| {
                            Instant::now().checked_add(wait).is_none_or(|end| end > d)
                        });
                        if late {
                            return Err(CoreError::RateLimited {
                                bucket,
                                retry_after: wait,
                            });
                        }
                        full_bucket = Some(bucket);
                        // Other processes may refund in the meantime; there is no
                        // cross-process wake-up, so sleep the computed wait.
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    }

    fn pause(&self, pause: Duration) {
        let shared = Arc::clone(&self.shared);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut invocation = shared.pause.prepare_invoke();
                invocation
                    .key(&shared.paused_key)
                    .arg(u64::try_from(pause.as_micros()).unwrap_or(u64::MAX));
                let mut connection = shared.connection.clone();
                let result: redis::RedisResult<i64> =
                    invocation.invoke_async(&mut connection).await;
                if let Err(error) = result {
                    tracing::warn!(%error, "could not record an upstream pause in Redis");
                }
            });
        }
    }

    fn buckets(&self) -> &[BucketSpec] {
        &self.shared.specs
    }
}
