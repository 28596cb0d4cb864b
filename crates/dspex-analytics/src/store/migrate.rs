//! The schema, as numbered migrations shared by both stores.
//!
//! Each store records the versions it applied in `dspex_schema_migrations`
//! and applies the missing ones when it opens, inside one transaction that
//! holds a lock other processes wait for: SQLite's write lock
//! (`BEGIN IMMEDIATE`), PostgreSQL's transaction-level advisory lock (keyed
//! by the schema name). So several processes opening the same new database at
//! once apply each migration once, and none sees a half-made schema. A
//! database whose version is newer than this build is refused rather than
//! written with an older idea of the columns.

use super::query::Dialect;
use crate::error::{AnalyticsError, Result};

/// One schema change: its SQL written once, with `$ID` (the row id column),
/// `$INT` (64-bit integer), `$JSON` (the tags of a call), `$BLOB` and the
/// rollup key (`$ROLLUP_ID`, `$ROLLUP_KEY`) standing for what differs between
/// the dialects, and statements only PostgreSQL needs.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    sql: &'static str,
    postgres_only: &'static str,
}

impl Migration {
    /// The SQL in `dialect`.
    pub(crate) fn sql(&self, dialect: Dialect) -> String {
        let (id, int, json, blob, rollup_id, rollup_key) = match dialect {
            Dialect::Sqlite => (
                "INTEGER PRIMARY KEY",
                "INTEGER",
                "TEXT",
                "BLOB",
                "",
                ",\n    PRIMARY KEY (hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, tags)",
            ),
            // The rollup key indexes md5(tags) rather than the tags text,
            // which may pass a B-tree entry's size limit (about 2.7 kB): see
            // `postgres_only`.
            Dialect::Postgres => (
                "BIGSERIAL PRIMARY KEY",
                "BIGINT",
                "JSONB",
                "BYTEA",
                "id BIGSERIAL PRIMARY KEY,\n    ",
                "",
            ),
        };
        let mut sql = self
            .sql
            .replace("$ROLLUP_ID", rollup_id)
            .replace("$ROLLUP_KEY", rollup_key)
            .replace("$ID", id)
            .replace("$INT", int)
            .replace("$JSON", json)
            .replace("$BLOB", blob);
        if dialect == Dialect::Postgres {
            sql.push_str(self.postgres_only);
        }
        sql
    }
}

/// The table of applied versions (the same text in both dialects).
pub(crate) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS dspex_schema_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";

/// The versions applied, one per row.
pub(crate) const APPLIED_VERSIONS: &str = "SELECT version FROM dspex_schema_migrations";

/// Every migration, oldest first. Append only: a released migration never
/// changes (databases already carry it).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "calls and api_keys",
        sql: "
CREATE TABLE IF NOT EXISTS calls (
    id $ID,
    at_ms $INT NOT NULL,
    correlation_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    response_model TEXT,
    operation TEXT NOT NULL,
    input_tokens $INT NOT NULL,
    output_tokens $INT NOT NULL,
    cached_input_tokens $INT NOT NULL,
    cache_write_tokens $INT NOT NULL,
    cost_nanos $INT,
    price_version TEXT,
    latency_us $INT NOT NULL,
    attempts $INT NOT NULL,
    status TEXT NOT NULL,
    error_kind TEXT,
    http_status $INT,
    cache_tier TEXT,
    saved_input_tokens $INT NOT NULL,
    saved_output_tokens $INT NOT NULL,
    saved_cached_input_tokens $INT NOT NULL,
    saved_cache_write_tokens $INT NOT NULL,
    saved_cost_nanos $INT,
    workflow TEXT,
    step TEXT,
    tags $JSON NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_at_ms ON calls (at_ms);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_ms $INT NOT NULL,
    updated_ms $INT NOT NULL,
    revoked_ms $INT,
    budget_nanos $INT,
    budget_period TEXT,
    rpm $INT,
    tpm $INT,
    models TEXT NOT NULL,
    expires_ms $INT
);",
        postgres_only: "",
    },
    Migration {
        version: 2,
        name: "hourly rollups",
        sql: "
CREATE TABLE IF NOT EXISTS call_rollups (
    $ROLLUP_IDhour_ms $INT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    cache_tier TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    tags TEXT NOT NULL,
    requests $INT NOT NULL,
    failed $INT NOT NULL,
    cancelled $INT NOT NULL,
    input_tokens $INT NOT NULL,
    output_tokens $INT NOT NULL,
    cached_input_tokens $INT NOT NULL,
    cache_write_tokens $INT NOT NULL,
    cost_nanos $INT NOT NULL,
    unpriced $INT NOT NULL,
    cache_hits $INT NOT NULL,
    saved_cost_nanos $INT NOT NULL,
    latency_hist $BLOB NOT NULL$ROLLUP_KEY
);",
        postgres_only: "
CREATE UNIQUE INDEX IF NOT EXISTS call_rollups_key ON call_rollups
    (hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, md5(tags));
-- Every batch updates its rollup rows: free room on each page lets those be
-- HOT updates, pruned on the page without waiting for a vacuum, so the table
-- stays near its live size and a scan of it stays short.
ALTER TABLE call_rollups SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02);",
    },
    Migration {
        version: 3,
        name: "call ids",
        // Rows written before ids existed keep NULL, which never conflicts.
        sql: "
ALTER TABLE calls ADD COLUMN call_id TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS calls_call_id ON calls (call_id);",
        postgres_only: "",
    },
];

/// The newest version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The migrations not in `applied`, oldest first; an error when the database
/// is newer than this build.
pub(crate) fn pending(
    backend: &'static str,
    applied: &[i64],
) -> Result<impl Iterator<Item = &'static Migration>> {
    let newest = applied.iter().copied().max().unwrap_or(0);
    if newest > latest() {
        return Err(AnalyticsError::Store {
            backend,
            message: format!(
                "the analytics schema is at version {newest}, newer than this DSPex knows ({}); \
                 upgrade DSPex to use this database",
                latest()
            ),
            retryable: false,
        });
    }
    let applied = applied.to_vec();
    Ok(MIGRATIONS
        .iter()
        .filter(move |m| !applied.contains(&m.version)))
}

/// Rows and rollups both present or both absent (otherwise the rollups must
/// be rebuilt from the rows).
pub(crate) const ROLLUPS_MISSING: &str =
    "SELECT EXISTS (SELECT 1 FROM calls) AND NOT EXISTS (SELECT 1 FROM call_rollups)";

/// Records one applied migration (`$1`/`?1` version, name, time).
pub(crate) fn record_sql(dialect: Dialect) -> String {
    format!(
        "INSERT INTO dspex_schema_migrations (version, name, applied_ms) VALUES ({}, {}, {})",
        dialect.param(1),
        dialect.param(2),
        dialect.param(3)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::indexing_slicing)]
    fn versions_increase_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i).unwrap_or(0) + 1, "{}", m.name);
        }
        assert_eq!(
            pending("sqlite", &[1]).map(Iterator::count).ok(),
            Some(MIGRATIONS.len() - 1)
        );
        assert!(pending("sqlite", &[1, 2, 99]).is_err());
        let lite = MIGRATIONS[1].sql(Dialect::Sqlite);
        assert!(
            lite.contains("latency_hist BLOB NOT NULL,\n    PRIMARY KEY (hour_ms"),
            "{lite}"
        );
        let pg = MIGRATIONS[1].sql(Dialect::Postgres);
        assert!(
            pg.contains("id BIGSERIAL PRIMARY KEY,\n    hour_ms BIGINT NOT NULL"),
            "{pg}"
        );
        assert!(pg.contains("md5(tags)") && !pg.contains('$'), "{pg}");
        assert!(!MIGRATIONS[0].sql(Dialect::Sqlite).contains('$'));
    }
}
