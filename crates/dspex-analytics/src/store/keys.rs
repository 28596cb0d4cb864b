//! The `api_keys` table in both backends, behind [`Store`]'s key methods.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};

use super::{PostgresStore, SqliteStore, Store};
use crate::error::{AnalyticsError, Result};
use crate::keys::{
    ApiKey, KeyHash, KeyLimits, KeySecret, NewKey, from_columns, key_exists, key_not_found,
};
use crate::time::unix_ms;

const COLUMNS: &str = "name, key_hash, key_prefix, created_ms, updated_ms, revoked_ms, \
     budget_nanos, budget_period, rpm, tpm, models, expires_ms";

fn revoked(name: &str) -> AnalyticsError {
    AnalyticsError::Config(dspex_core::CoreError::config(
        "name",
        format!("key `{name}` is revoked; create a new key instead"),
    ))
}

impl Store {
    /// Creates a key named `name` with `limits`; returns it and its text,
    /// which is never available again.
    pub async fn create_key(&self, name: &str, limits: &KeyLimits) -> Result<(ApiKey, KeySecret)> {
        let new = NewKey::new(name, limits)?;
        let now = unix_ms(SystemTime::now());
        let key = match self {
            Self::Sqlite(s) => s.create_key(name, limits, &new, now).await?,
            Self::Postgres(s) => s.create_key(name, limits, &new, now).await?,
        };
        Ok((key, new.secret))
    }

    /// Every key, by name (revoked and expired ones included).
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        match self {
            Self::Sqlite(s) => s.list_keys().await,
            Self::Postgres(s) => s.list_keys().await,
        }
    }

    /// The key whose text hashes to `hash`.
    pub async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        let hash = hash.to_string();
        match self {
            Self::Sqlite(s) => s.key_where("key_hash", hash).await,
            Self::Postgres(s) => s.key_where("key_hash", hash).await,
        }
    }

    /// The key named `name`.
    pub async fn key_by_name(&self, name: &str) -> Result<Option<ApiKey>> {
        match self {
            Self::Sqlite(s) => s.key_where("name", name.to_owned()).await,
            Self::Postgres(s) => s.key_where("name", name.to_owned()).await,
        }
    }

    /// Revokes `name` (a second revocation changes nothing).
    pub async fn revoke_key(&self, name: &str) -> Result<ApiKey> {
        let now = unix_ms(SystemTime::now());
        match self {
            Self::Sqlite(s) => s.revoke_key(name, now).await?,
            Self::Postgres(s) => s.revoke_key(name, now).await?,
        }
        self.key_by_name(name)
            .await?
            .ok_or_else(|| key_not_found(name))
    }

    /// Gives `name` a new text (the old one stops working); returns the key
    /// and the new text.
    pub async fn rotate_key(&self, name: &str) -> Result<(ApiKey, KeySecret)> {
        let (secret, hash, prefix) = NewKey::rotated();
        let now = unix_ms(SystemTime::now());
        let changed = match self {
            Self::Sqlite(s) => s.rotate_key(name, hash, prefix, now).await?,
            Self::Postgres(s) => s.rotate_key(name, hash, prefix, now).await?,
        };
        let key = self
            .key_by_name(name)
            .await?
            .ok_or_else(|| key_not_found(name))?;
        if !changed {
            return Err(revoked(name));
        }
        Ok((key, secret))
    }
}

fn sqlite_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApiKey>> {
    Ok(from_columns(
        row.get(0)?,
        &row.get::<_, String>(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        &row.get::<_, String>(10)?,
        row.get(11)?,
    ))
}

impl SqliteStore {
    async fn create_key(
        &self,
        name: &str,
        limits: &KeyLimits,
        new: &NewKey,
        now: i64,
    ) -> Result<ApiKey> {
        let name = name.to_owned();
        let (hash, prefix, models, period) = (
            new.hash.clone(),
            new.prefix.clone(),
            new.models.clone(),
            new.period.clone(),
        );
        let (budget, expires, rpm, tpm) =
            (limits.budget_nanos, limits.expires_ms, new.rpm, new.tpm);
        self.write(move |conn| {
            let inserted = conn.execute(
                &format!("INSERT INTO api_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?4, NULL, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![name, hash, prefix, now, budget, period, rpm, tpm, models, expires],
            );
            match inserted {
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    return Err(key_exists(&name));
                }
                other => other.map_err(|e| AnalyticsError::sqlite(&e))?,
            };
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE name = ?1"),
                params![name],
                sqlite_key,
            )
            .map_err(|e| AnalyticsError::sqlite(&e))?
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.read(|conn| {
            let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
            let mut stmt = conn
                .prepare(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY name"))
                .map_err(sql)?;
            let rows = stmt.query_map([], sqlite_key).map_err(sql)?;
            rows.map(|r| r.map_err(sql)?).collect()
        })
        .await
    }

    async fn key_where(&self, column: &'static str, value: String) -> Result<Option<ApiKey>> {
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE {column} = ?1"),
                params![value],
                sqlite_key,
            )
            .optional()
            .map_err(|e| AnalyticsError::sqlite(&e))?
            .transpose()
        })
        .await
    }

    async fn revoke_key(&self, name: &str, now: i64) -> Result<()> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE api_keys SET revoked_ms = ?2, updated_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                params![name, now],
            )
            .map(|_| ())
            .map_err(|e| AnalyticsError::sqlite(&e))
        })
        .await
    }

    async fn rotate_key(&self, name: &str, hash: String, prefix: String, now: i64) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE api_keys SET key_hash = ?2, key_prefix = ?3, updated_ms = ?4 WHERE name = ?1 AND revoked_ms IS NULL",
                params![name, hash, prefix, now],
            )
            .map(|n| n > 0)
            .map_err(|e| AnalyticsError::sqlite(&e))
        })
        .await
    }
}

fn postgres_key(row: &tokio_postgres::Row) -> Result<ApiKey> {
    let pg = |e: tokio_postgres::Error| AnalyticsError::postgres(&e);
    from_columns(
        row.try_get(0).map_err(pg)?,
        row.try_get::<_, &str>(1).map_err(pg)?,
        row.try_get(2).map_err(pg)?,
        row.try_get(3).map_err(pg)?,
        row.try_get(4).map_err(pg)?,
        row.try_get(5).map_err(pg)?,
        row.try_get(6).map_err(pg)?,
        row.try_get(7).map_err(pg)?,
        row.try_get(8).map_err(pg)?,
        row.try_get(9).map_err(pg)?,
        row.try_get::<_, &str>(10).map_err(pg)?,
        row.try_get(11).map_err(pg)?,
    )
}

impl PostgresStore {
    async fn create_key(
        &self,
        name: &str,
        limits: &KeyLimits,
        new: &NewKey,
        now: i64,
    ) -> Result<ApiKey> {
        let client = self.client().await?;
        let inserted = client
            .query_one(
                &format!(
                    "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $4, NULL, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
                ),
                &[
                    &name,
                    &new.hash,
                    &new.prefix,
                    &now,
                    &limits.budget_nanos,
                    &new.period,
                    &new.rpm,
                    &new.tpm,
                    &new.models,
                    &limits.expires_ms,
                ],
            )
            .await;
        match inserted {
            Ok(row) => postgres_key(&row),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(key_exists(name))
            }
            Err(e) => Err(AnalyticsError::postgres(&e)),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM api_keys ORDER BY name"),
                &[],
            )
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        rows.iter().map(postgres_key).collect()
    }

    async fn key_where(&self, column: &'static str, value: String) -> Result<Option<ApiKey>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE {column} = $1"),
                &[&value],
            )
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        row.as_ref().map(postgres_key).transpose()
    }

    async fn revoke_key(&self, name: &str, now: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE api_keys SET revoked_ms = $2, updated_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
                &[&name, &now],
            )
            .await
            .map(|_| ())
            .map_err(|e| AnalyticsError::postgres(&e))
    }

    async fn rotate_key(&self, name: &str, hash: String, prefix: String, now: i64) -> Result<bool> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE api_keys SET key_hash = $2, key_prefix = $3, updated_ms = $4 WHERE name = $1 AND revoked_ms IS NULL",
                &[&name, &hash, &prefix, &now],
            )
            .await
            .map(|n| n > 0)
            .map_err(|e| AnalyticsError::postgres(&e))
    }
}
