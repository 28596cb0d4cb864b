//! L2 shared: a Redis backend for several processes.
//!
//! Each entry is one string key `{prefix}{namespace}:{hash hex}` written with
//! `SET ... PX ttl`, so Redis expires entries itself and its `maxmemory`
//! policy is the size cap. Clearing a namespace is `SCAN MATCH` plus
//! `UNLINK`, which is why namespaces may not contain `:`, `*`, `?` or `[`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{CacheError, Result};
use crate::key::CacheKey;
use crate::l2::{StoredEntry, ttl_ms};

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "dspex:cache:";

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    url: String,
    prefix: String,
}

impl RedisStore {
    /// Connects to `url`; fails fast when Redis is unreachable at start-up and
    /// reconnects quietly later.
    pub(crate) async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let shown = redacted_url(url);
        let client = redis::Client::open(url).map_err(|e| CacheError::Redis {
            url: shown.clone(),
            message: format!("invalid Redis URL: {}", e.detail().unwrap_or("malformed")),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| CacheError::Redis {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            connection,
            url: shown,
            prefix: prefix.to_owned(),
        })
    }

    fn err(&self, error: &redis::RedisError) -> CacheError {
        CacheError::Redis {
            url: self.url.clone(),
            message: error.to_string(),
        }
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}:{}", self.prefix, key.namespace(), key.hex())
    }

    fn pattern(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}{ns}:*", self.prefix),
            None => format!("{}*", self.prefix),
        }
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Result<Option<StoredEntry>> {
        let mut conn = self.connection.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.redis_key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(raw.and_then(|bytes| StoredEntry::decode(&bytes)))
    }

    pub(crate) async fn put(&self, key: &CacheKey, encoded: &[u8], ttl: Duration) -> Result<()> {
        let mut conn = self.connection.clone();
        redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(encoded)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(&e))
    }

    pub(crate) async fn remove(&self, key: &CacheKey) -> Result<bool> {
        let mut conn = self.connection.clone();
        let n: u64 = redis::cmd("UNLINK")
            .arg(self.redis_key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(n > 0)
    }

    /// Walks the keys matching `pattern` in SCAN batches.
    async fn scan_batches(&self, namespace: Option<&str>, mut each: impl AsyncBatch) -> Result<()> {
        let mut conn = self.connection.clone();
        let pattern = self.pattern(namespace);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(&e))?;
            if !keys.is_empty() {
                each.batch(&mut conn, keys)
                    .await
                    .map_err(|e| self.err(&e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    pub(crate) async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let mut unlink = Unlink(0);
        self.scan_batches(namespace, &mut unlink).await?;
        Ok(unlink.0)
    }

    /// (entries, bytes): a SCAN over this prefix, with `STRLEN` of each key.
    pub(crate) async fn usage(&self) -> Result<(u64, u64)> {
        let mut count = Count(0, 0);
        self.scan_batches(None, &mut count).await?;
        Ok((count.0, count.1))
    }
}

/// Something done with each SCAN batch (a trait so the loop is written once).
trait AsyncBatch {
    fn batch<'a>(
        &'a mut self,
        conn: &'a mut ConnectionManager,
        keys: Vec<String>,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<()>>;
}

struct Unlink(u64);

impl AsyncBatch for &mut Unlink {
    fn batch<'a>(
        &'a mut self,
        conn: &'a mut ConnectionManager,
        keys: Vec<String>,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<()>> {
        Box::pin(async move {
            let n: u64 = redis::cmd("UNLINK").arg(keys).query_async(conn).await?;
            self.0 += n;
            Ok(())
        })
    }
}

struct Count(u64, u64);

impl AsyncBatch for &mut Count {
    fn batch<'a>(
        &'a mut self,
        conn: &'a mut ConnectionManager,
        keys: Vec<String>,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<()>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("STRLEN").arg(key);
            }
            let lens: Vec<u64> = pipe.query_async(conn).await?;
            // Keys that expired between SCAN and STRLEN report 0: not counted.
            self.0 += lens.iter().filter(|&&n| n > 0).count() as u64;
            self.1 += lens.iter().sum::<u64>();
            Ok(())
        })
    }
}

pub(crate) use dspex_core::config::redacted_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_credentials() {
        assert_eq!(
            redacted_url("redis://user:hunter2@host:6379/0"),
            "redis://[redacted]@host:6379/0"
        );
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
    }
}
