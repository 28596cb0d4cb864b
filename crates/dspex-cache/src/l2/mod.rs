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
use crate::key::{CacheKey, SemanticScope};

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

/// An L3 vector persisted beside its L2 entry (redb only), so the semantic
/// tier survives a restart: `scope (32) | dimension (u32 LE) | f32 LE × dimension
/// | prompt text (UTF-8)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SemanticRecord {
    pub(crate) scope: SemanticScope,
    pub(crate) vector: Vec<f32>,
    pub(crate) text: String,
}

impl SemanticRecord {
    /// The record of these parts, encoded without building one.
    pub(crate) fn encode_parts(scope: &SemanticScope, vector: &[f32], text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + vector.len() * 4 + text.len());
        out.extend_from_slice(scope.as_bytes());
        let dimension = u32::try_from(vector.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&dimension.to_le_bytes());
        for x in vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// `None` for bytes that are not a record of this format.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (scope, rest) = bytes.split_at_checked(32)?;
        let (dimension, rest) = rest.split_at_checked(4)?;
        let dimension = usize::try_from(u32::from_le_bytes(dimension.try_into().ok()?)).ok()?;
        let (floats, text) = rest.split_at_checked(dimension.checked_mul(4)?)?;
        Some(Self {
            scope: SemanticScope::new(scope.try_into().ok()?),
            vector: floats
                .chunks_exact(4)
                .map(|c| c.try_into().map(f32::from_le_bytes))
                .collect::<std::result::Result<_, _>>()
                .ok()?,
            text: std::str::from_utf8(text).ok()?.to_owned(),
        })
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

    /// Stores a value, with its encoded L3 vector (redb keeps it, Redis does
    /// not); returns how many entries the size cap evicted.
    pub(crate) async fn put(
        &self,
        key: &CacheKey,
        payload: &[u8],
        ttl: Duration,
        semantic: Option<Vec<u8>>,
    ) -> Result<u64> {
        let stored_ms = now_ms();
        let encoded = StoredEntry::encode(payload, stored_ms, ttl);
        match self {
            Self::Redb(store) => {
                // A committed write waits for fsync: keep it off the async workers.
                let store = std::sync::Arc::clone(store);
                let key = key.storage_bytes();
                let path = store.path().to_owned();
                tokio::task::spawn_blocking(move || {
                    store.put(&key, &encoded, stored_ms, semantic.as_deref())
                })
                .await
                .map_err(|e| crate::error::CacheError::Store {
                    path,
                    message: format!("write task failed: {e}"),
                })?
            }
            Self::Redis(store) => store.put(key, &encoded, ttl).await.map(|()| 0),
        }
    }

    /// The persisted L3 vectors whose entries are live, oldest first, when
    /// they were made by the embedder `fingerprint`; vectors of any other
    /// embedder are deleted. Only redb keeps vectors.
    pub(crate) async fn load_semantic(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(CacheKey, SemanticRecord)>> {
        let Self::Redb(store) = self else {
            return Ok(Vec::new());
        };
        let store = std::sync::Arc::clone(store);
        let path = store.path().to_owned();
        let fingerprint = fingerprint.to_owned();
        let rows = tokio::task::spawn_blocking(move || store.load_semantic(&fingerprint))
            .await
            .map_err(|e| crate::error::CacheError::Store {
                path,
                message: format!("load task failed: {e}"),
            })??;
        Ok(rows
            .into_iter()
            .filter_map(|(key, record)| {
                Some((
                    CacheKey::from_storage_bytes(&key)?,
                    SemanticRecord::decode(&record)?,
                ))
            })
            .collect())
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

    /// Deletes expired entries with their persisted L3 vectors; returns
    /// the keys removed (so the in-memory index can drop them too).
    pub(crate) async fn purge_expired(&self) -> Result<Vec<CacheKey>> {
        match self {
            Self::Redb(store) => Ok(store
                .purge_expired()?
                .iter()
                .filter_map(|key| CacheKey::from_storage_bytes(key))
                .collect()),
            // Redis expires entries itself (SET ... PX).
            Self::Redis(_) => Ok(Vec::new()),
        }
    }

    /// Deletes the persisted L3 vectors of `namespace` (all with `None`),
    /// keeping their entries; only redb keeps vectors.
    pub(crate) async fn clear_semantic(&self, namespace: Option<&str>) -> Result<u64> {
        match self {
            Self::Redb(store) => store.clear_semantic(namespace),
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

    #[test]
    fn semantic_records_round_trip_and_reject_garbage() {
        let record = SemanticRecord {
            scope: SemanticScope::new([7; 32]),
            vector: vec![0.5, -0.25, 1.0e-7, 0.0],
            text: "Quelle est la capitale de la France ?".into(),
        };
        let bytes = SemanticRecord::encode_parts(&record.scope, &record.vector, &record.text);
        assert_eq!(bytes.len(), 32 + 4 + 16 + record.text.len());
        assert_eq!(SemanticRecord::decode(&bytes), Some(record));
        // Cut inside the vector, a dimension larger than the bytes, text that
        // is not UTF-8: none decodes, none panics.
        assert_eq!(SemanticRecord::decode(&bytes[..40]), None);
        let mut huge = bytes.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(SemanticRecord::decode(&huge), None);
        let mut bad_text = bytes;
        let last = bad_text.len() - 1;
        bad_text[last] = 0xff;
        assert_eq!(SemanticRecord::decode(&bad_text), None);
    }
}
