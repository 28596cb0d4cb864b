//! L2: serialized values on disk (redb) or in a shared Redis.
//!
//! Values are stored as JSON (serde_json) behind a 18-byte header (format tag,
//! version, expiry and store time in Unix milliseconds). JSON rather than a
//! compact binary format because the cached types (LM responses) carry
//! `serde_json::Value` fields, `#[serde(flatten)]` and untagged enums, which
//! non-self-describing formats (postcard, bincode) cannot decode; and because
//! an entry stays readable with `redis-cli` and across versions of the types.
//! Decoding a typical response is a few microseconds, well inside the L2 budget.

pub(crate) mod redb_store;
pub(crate) mod redis_store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::key::CacheKey;

const TAG: u8 = b'D';
const VERSION: u8 = 1;
const HEADER: usize = 18;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub(crate) expires_ms: u64,
    pub(crate) stored_ms: u64,
    pub(crate) payload: Vec<u8>,
}

impl StoredEntry {
    pub(crate) fn encode(payload: &[u8], stored_ms: u64, ttl: Duration) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(TAG);
        out.push(VERSION);
        out.extend_from_slice(&stored_ms.saturating_add(ttl_ms(ttl)).to_le_bytes());
        out.extend_from_slice(&stored_ms.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// `None` for bytes that are not an entry of this format.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (header, payload) = bytes.split_at_checked(HEADER)?;
        let (tag_version, times) = header.split_at_checked(2)?;
        if tag_version != [TAG, VERSION] {
            return None;
        }
        let (expires, stored) = times.split_at_checked(8)?;
        Some(Self {
            expires_ms: u64::from_le_bytes(expires.try_into().ok()?),
            stored_ms: u64::from_le_bytes(stored.try_into().ok()?),
            payload: payload.to_vec(),
        })
    }

    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms <= now_ms
    }
}

/// The L2 backend.
pub(crate) enum L2 {
    Redb(std::sync::Arc<redb_store::RedbStore>),
    Redis(redis_store::RedisStore),
}

impl L2 {
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Self::Redb(_) => "redb",
            Self::Redis(_) => "redis",
        }
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Result<Option<StoredEntry>> {
        match self {
            // A read transaction on pages redb already holds is a few
            // microseconds; handing it to a blocking thread would cost more.
            Self::Redb(store) => store.get(&key.storage_bytes()),
            Self::Redis(store) => store.get(key).await,
        }
    }

    /// Stores a value; returns how many entries the size cap evicted.
    pub(crate) async fn put(&self, key: &CacheKey, payload: &[u8], ttl: Duration) -> Result<u64> {
        let stored_ms = now_ms();
        let encoded = StoredEntry::encode(payload, stored_ms, ttl);
        match self {
            Self::Redb(store) => {
                // A committed write waits for fsync: keep it off the async workers.
                let store = std::sync::Arc::clone(store);
                let key = key.storage_bytes();
                let path = store.path().to_owned();
                tokio::task::spawn_blocking(move || store.put(&key, &encoded, stored_ms))
                    .await
                    .map_err(|e| crate::error::CacheError::Store {
                        path,
                        message: format!("write task failed: {e}"),
                    })?
            }
            Self::Redis(store) => store.put(key, &encoded, ttl).await.map(|()| 0),
        }
    }

    pub(crate) async fn remove(&self, key: &CacheKey) -> Result<bool> {
        match self {
            Self::Redb(store) => store.remove(&key.storage_bytes()),
            Self::Redis(store) => store.remove(key).await,
        }
    }

    pub(crate) async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        match self {
            Self::Redb(store) => store.clear(namespace),
            Self::Redis(store) => store.clear(namespace).await,
        }
    }

    pub(crate) async fn purge_expired(&self) -> Result<u64> {
        match self {
            Self::Redb(store) => store.purge_expired(),
            // Redis expires entries itself (SET ... PX).
            Self::Redis(_) => Ok(0),
        }
    }

    pub(crate) async fn usage(&self) -> Result<(u64, u64)> {
        match self {
            Self::Redb(store) => store.usage(),
            Self::Redis(store) => store.usage().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let bytes = StoredEntry::encode(b"{\"a\":1}", 1_000, Duration::from_secs(2));
        let entry = StoredEntry::decode(&bytes).unwrap();
        assert_eq!(entry.stored_ms, 1_000);
        assert_eq!(entry.expires_ms, 3_000);
        assert_eq!(entry.payload, b"{\"a\":1}");
        assert!(entry.is_expired(3_000));
        assert!(!entry.is_expired(2_999));
        assert!(StoredEntry::decode(b"short").is_none());
        let mut wrong = bytes;
        wrong[1] = 9;
        assert!(StoredEntry::decode(&wrong).is_none());
    }
}
