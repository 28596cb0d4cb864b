//! Virtual keys at request time: who a request is, what it may use, and its
//! own rate limits.
//!
//! Keys live in the analytics store (`dspex_analytics::keys`), stored as
//! SHA-256 only. Each instance keeps every key in a map from hash to
//! [`Tenant`], so authenticating a request is one hash and one map lookup,
//! never a store query. The map is re-read every `key_refresh` (the bound on
//! how long a key revoked through another instance keeps working here); a
//! change made through this instance's admin API takes effect at once. A hash
//! the map does not hold is looked up in the store once (a key just created
//! elsewhere works at once) and then remembered as unknown until the next
//! refresh, so a client guessing keys cannot turn each request into a
//! store query.
//!
//! A key's rpm/tpm limits are a [`LocalLimiter`] per key, or a
//! [`RedisLimiter`] named after the key when `rate_limit_backend` is set, so
//! several instances hold one limit between them exactly. A tenant whose
//! limits are unchanged by a refresh keeps its limiter (and what it counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dspex_analytics::Store;
use dspex_analytics::keys::{ApiKey, KeyHash, KeyState, hash_key};
use dspex_analytics::time::unix_ms;
use dspex_core::protect::{Admission, BucketSpec, LocalLimiter, RedisLimiter, Unit};
use parking_lot::RwLock;
use redis::aio::ConnectionManager;

use crate::error::{GatewayError, RequestError};

/// One key as this instance serves it.
pub(crate) struct Tenant {
    /// The stored key (limits, state; never its text).
    pub(crate) key: ApiKey,
    /// Its requests/tokens per minute, when it has any.
    pub(crate) limiter: Option<Arc<dyn Admission>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.key.name)
            .field("limited", &self.limiter.is_some())
            .finish()
    }
}

/// Where keys' limits live.
#[derive(Clone)]
pub(crate) enum LimitBackend {
    /// In this process.
    Local,
    /// In Redis, shared by every instance that uses it.
    Redis(ConnectionManager),
}

impl LimitBackend {
    /// Connects to `url` when given (failing fast on a wrong address).
    pub(crate) async fn connect(url: Option<&str>) -> Result<Self, GatewayError> {
        let Some(url) = url else {
            return Ok(Self::Local);
        };
        let client = redis::Client::open(url).map_err(|e| GatewayError::Backend {
            what: "gateway.rate_limit_backend",
            message: format!("invalid Redis URL: {}", e.detail().unwrap_or("malformed")),
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| GatewayError::Backend {
                what: "gateway.rate_limit_backend",
                // A Redis error names the host, never the URL's password.
                message: e.to_string(),
            })?;
        Ok(Self::Redis(connection))
    }

    fn limiter_for(&self, key: &ApiKey) -> Option<Arc<dyn Admission>> {
        let minute = Duration::from_secs(60);
        let mut buckets = Vec::new();
        if let Some(rpm) = key.limits.rpm {
            buckets.push(BucketSpec::new(Unit::Requests, rpm, minute));
        }
        if let Some(tpm) = key.limits.tpm {
            buckets.push(BucketSpec::new(Unit::Tokens, tpm, minute));
        }
        if buckets.is_empty() {
            return None;
        }
        Some(match self {
            Self::Local => Arc::new(LocalLimiter::new(buckets)),
            Self::Redis(connection) => Arc::new(RedisLimiter::with_connection(
                connection.clone(),
                &format!("key:{}", key.name),
                buckets,
            )),
        })
    }
}

/// Every key this instance knows, by hash.
pub(crate) struct KeyRing {
    store: Store,
    backend: LimitBackend,
    by_hash: RwLock<HashMap<KeyHash, Arc<Tenant>>>,
    /// Hashes the store did not know at their last lookup.
    unknown: moka::sync::Cache<KeyHash, ()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.by_hash.read().len())
            .finish_non_exhaustive()
    }
}

/// At most this many unknown hashes are remembered; past it the oldest go
/// (a flood of random keys then costs store lookups, never memory).
const UNKNOWN_CAPACITY: u64 = 10_000;

impl KeyRing {
    /// Loads every key from `store`.
    pub(crate) async fn open(
        store: Store,
        backend: LimitBackend,
        refresh: Duration,
    ) -> Result<Self, GatewayError> {
        let ring = Self {
            store,
            backend,
            by_hash: RwLock::new(HashMap::new()),
            unknown: moka::sync::Cache::builder()
                .max_capacity(UNKNOWN_CAPACITY)
                .time_to_live(refresh)
                .build(),
        };
        ring.reload().await?;
        Ok(ring)
    }

    /// Re-reads every key. A tenant whose key is unchanged keeps its
    /// limiter; a changed or new one gets a fresh limiter.
    pub(crate) async fn reload(&self) -> Result<(), GatewayError> {
        let keys = self
            .store
            .list_keys()
            .await
            .map_err(GatewayError::Analytics)?;
        let previous = self.by_hash.read().clone();
        let fresh: HashMap<KeyHash, Arc<Tenant>> = keys
            .into_iter()
            .map(|key| {
                let tenant = match previous.get(&key.hash) {
                    Some(old) if old.key == key => Arc::clone(old),
                    _ => Arc::new(self.tenant(key)),
                };
                (tenant.key.hash, tenant)
            })
            .collect();
        *self.by_hash.write() = fresh;
        self.unknown.invalidate_all();
        Ok(())
    }

    fn tenant(&self, key: ApiKey) -> Tenant {
        let limiter = self.backend.limiter_for(&key);
        Tenant { key, limiter }
    }

    /// Takes in a key this instance just changed (created, rotated, revoked)
    /// without waiting for the next refresh. `old_hash` is the hash it had
    /// before a rotation.
    pub(crate) fn update(&self, key: ApiKey, old_hash: Option<KeyHash>) {
        let mut map = self.by_hash.write();
        if let Some(old) = old_hash {
            map.remove(&old);
        }
        let limiter = match map.get(&key.hash) {
            Some(existing) if existing.key.limits == key.limits => existing.limiter.clone(),
            _ => self.backend.limiter_for(&key),
        };
        self.unknown.invalidate(&key.hash);
        map.insert(key.hash, Arc::new(Tenant { key, limiter }));
    }

    /// The tenant a presented key's text belongs to, or the error to answer:
    /// 401 when it is unknown, revoked or expired.
    pub(crate) async fn authenticate(&self, presented: &str) -> Result<Arc<Tenant>, RequestError> {
        let hash = hash_key(presented);
        let found = self.by_hash.read().get(&hash).cloned();
        let tenant = match found {
            Some(tenant) => tenant,
            None if self.unknown.contains_key(&hash) => {
                return Err(RequestError::unauthorized("invalid_api_key", unknown_key()));
            }
            None => match self.store.key_by_hash(&hash).await {
                Ok(Some(key)) => {
                    let tenant = Arc::new(self.tenant(key));
                    self.by_hash.write().insert(hash, Arc::clone(&tenant));
                    tenant
                }
                Ok(None) => {
                    self.unknown.insert(hash, ());
                    return Err(RequestError::unauthorized("invalid_api_key", unknown_key()));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "the key store could not be read");
                    return Err(RequestError::unavailable(
                        "the gateway cannot check keys right now (key store unreachable)",
                    ));
                }
            },
        };
        match tenant.key.state(unix_ms(SystemTime::now())) {
            KeyState::Active => Ok(tenant),
            // OpenAI answers a revoked key with 401, and the SDKs raise
            // AuthenticationError for it; so does the gateway.
            KeyState::Revoked => Err(RequestError::unauthorized(
                "key_revoked",
                format!(
                    "the key {}… (`{}`) was revoked",
                    tenant.key.prefix, tenant.key.name
                ),
            )),
            KeyState::Expired => Err(RequestError::unauthorized(
                "key_expired",
                format!(
                    "the key {}… (`{}`) has expired",
                    tenant.key.prefix, tenant.key.name
                ),
            )),
        }
    }

    /// Re-reads the keys every `every` until the task is aborted; a failed
    /// read keeps the last view and is logged.
    pub(crate) fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let ring = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(error) = ring.reload().await {
                    tracing::warn!(error = %error, "re-reading the keys failed; keeping the last view");
                }
            }
        })
    }
}

fn unknown_key() -> String {
    "the API key is not a key of this gateway (create one with `dspex keys create`)".to_owned()
}

/// The key a request presents: `Authorization: Bearer KEY` (OpenAI's SDKs)
/// or `x-api-key: KEY` (Anthropic's).
pub(crate) fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .and_then(|_| value.get(7..))
            .map(str::trim);
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            return Some(token);
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use dspex_analytics::keys::KeyLimits;

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static(" sk-dspex-a "));
        assert_eq!(presented_key(&headers), Some("sk-dspex-a"));
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk-dspex-b"),
        );
        assert_eq!(presented_key(&headers), Some("sk-dspex-b"));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&headers), Some("sk-dspex-a"));
    }

    #[tokio::test]
    async fn unknown_revoked_and_new_keys() {
        let store = Store::open(":memory:", None).await.unwrap();
        let (_, secret) = store
            .create_key(
                "team-a",
                &KeyLimits {
                    rpm: Some(2),
                    ..KeyLimits::default()
                },
            )
            .await
            .unwrap();
        let ring = KeyRing::open(store.clone(), LimitBackend::Local, Duration::from_secs(60))
            .await
            .unwrap();
        let tenant = ring.authenticate(secret.expose()).await.unwrap();
        assert_eq!(tenant.key.name, "team-a");
        assert!(tenant.limiter.is_some());
        let unknown = ring.authenticate("sk-dspex-nope").await.unwrap_err();
        assert_eq!(unknown.status, 401);
        // A key created elsewhere after the load works at once.
        let (_, other) = store
            .create_key("team-b", &KeyLimits::default())
            .await
            .unwrap();
        assert!(ring.authenticate(other.expose()).await.is_ok());
        // A revocation through the store shows after a reload.
        store.revoke_key("team-a").await.unwrap();
        assert!(ring.authenticate(secret.expose()).await.is_ok());
        ring.reload().await.unwrap();
        let revoked = ring.authenticate(secret.expose()).await.unwrap_err();
        assert_eq!(
            (revoked.status, revoked.code.as_deref()),
            (401, Some("key_revoked"))
        );
        assert!(!revoked.message.contains(secret.expose()));
    }
}
