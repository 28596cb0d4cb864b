//! The PostgreSQL store, against a local server (`DSPEX_TEST_DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`). Each test works in its
//! own schema, dropped at the end, so tests run in parallel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use dspex_analytics::prices::Price;
use dspex_analytics::{
    GroupBy, PriceTable, Recorder, RecorderOptions, SpendFilter, Store, TimeRange,
};
use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};

use common::{MINI, MINI_2000, SONNET, Spec, ms, prices, traffic, usage};

const IGNORE: &str = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)";

fn url() -> String {
    std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

struct Schema {
    name: String,
}

impl Schema {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self {
            name: format!("dspex_test_{test}_{}_{nanos}", std::process::id()),
        }
    }

    async fn store(&self) -> Store {
        Store::open(&url(), Some(&self.name)).await.unwrap()
    }

    async fn drop_schema(self) {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_stores_a_row_written_twice_once() {
    let schema = Schema::new("dedupe");
    let store = match schema.store().await {
        Store::Postgres(s) => Store::Postgres(s.with_exact_limit(0)),
        Store::Sqlite(_) => unreachable!(),
    };
    common::rows_written_twice_are_stored_once(&store).await;
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_analysis_matches_sqlite() {
    let _ = IGNORE;
    let schema = Schema::new("analysis");
    let store = schema.store().await;
    assert_eq!(store.backend(), "postgres");
    store.insert(Arc::new(traffic())).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 9);
    let day = TimeRange::parse("2026-11-24..2026-11-25").unwrap();
    let rows = store
        .get_cost_analysis(day, &[GroupBy::Provider, GroupBy::Model])
        .await
        .unwrap();
    let summary: Vec<(Option<String>, u64, u64, i64, u64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.group[0].clone(),
                r.requests,
                r.errors,
                r.cost_nanos,
                r.unpriced_requests,
                r.saved_cost_nanos,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("anthropic".into()), 2, 1, SONNET, 0, 0),
            (Some("local".into()), 1, 0, 0, 1, 0),
            (Some("openai".into()), 5, 0, 4 * MINI, 0, MINI),
        ]
    );
    // The same answer as SQLite for every dimension.
    let sqlite = Store::open(":memory:", None).await.unwrap();
    sqlite.insert(Arc::new(traffic())).await.unwrap();
    for group in [
        vec![GroupBy::Hour],
        vec![GroupBy::Day, GroupBy::Provider],
        vec![GroupBy::parse("tag:team").unwrap()],
        vec![GroupBy::Workflow, GroupBy::Step],
        vec![GroupBy::Status, GroupBy::ErrorKind],
        vec![GroupBy::CacheTier],
        vec![],
    ] {
        let pg = store
            .get_cost_analysis(TimeRange::All, &group)
            .await
            .unwrap();
        let lite = sqlite
            .get_cost_analysis(TimeRange::All, &group)
            .await
            .unwrap();
        assert_eq!(pg, lite, "group by {group:?}");
    }
    let hours = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Hour])
        .await
        .unwrap();
    assert_eq!(
        hours[3].group,
        vec![Some("2026-11-25T09:00:00Z".to_owned())]
    );
    assert_eq!(hours[3].cost_nanos, MINI_2000);
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_percentiles_spend_and_repricing() {
    let schema = Schema::new("pct");
    let store = schema.store().await;
    let p = prices();
    let rows: Vec<_> = (1..=100)
        .map(|i| {
            Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0))
                .tag("team", "search")
                .latency_ms(i)
                .record_ms(ms("2026-11-24T10:00:00Z") + i as i64, &p)
        })
        .collect();
    store.insert(Arc::new(rows)).await.unwrap();
    let result = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(result[0].latency_p50_ms, 50.5);
    assert_eq!(result[0].latency_p95_ms, 95.05);
    assert_eq!(result[0].latency_p99_ms, 99.01);
    assert_eq!(result[0].cost_nanos, 100 * MINI);
    let filter = SpendFilter {
        tag: Some(("team".into(), "search".into())),
        ..SpendFilter::default()
    };
    let (from, until) = (ms("2026-11-24T00:00:00Z"), ms("2026-11-25T00:00:00Z"));
    assert_eq!(store.spent(&filter, from, until).await.unwrap(), 100 * MINI);
    let other = SpendFilter {
        tag: Some(("team".into(), "ads".into())),
        ..SpendFilter::default()
    };
    assert_eq!(store.spent(&other, from, until).await.unwrap(), 0);
    let mut table = PriceTable::empty();
    table
        .insert(
            "openai/gpt-4o-mini",
            Price {
                input: 1_000_000,
                output: 2_000_000,
                cached_input: None,
                cache_write: None,
            },
            None,
        )
        .unwrap();
    let report = store.reprice(Arc::new(table)).await.unwrap();
    assert_eq!((report.rows, report.priced, report.unpriced), (100, 100, 0));
    let result = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    // 1,000 × $1/M + 100 × $2/M = $0.0012 per call.
    assert_eq!(result[0].cost_nanos, 100 * 1_200_000);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_records_every_call() {
    const CALLS: usize = 20_000;
    let schema = Schema::new("record");
    let store = schema.store().await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let lm = ScriptedLm::from_fn(|request| {
        let last = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if last.ends_with("-13") {
            Err("nope".to_owned())
        } else {
            Ok("ok".to_owned())
        }
    });
    client.add_scripted("openai", lm).await.unwrap();
    let recorder = Recorder::attach(
        client.events(),
        store.clone(),
        Arc::new(PriceTable::bundled().unwrap()),
        RecorderOptions::default(),
    );
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS / 4 {
                let _ = client
                    .request(
                        "openai",
                        vec![Message::user(format!("q{t}-{i}"))],
                        RequestOptions::new().model("gpt-4o-mini"),
                    )
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.rows_written, CALLS as u64);
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(store.count().await.unwrap(), CALLS as u64);
    let by_kind = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::ErrorKind])
        .await
        .unwrap();
    // One failure per task (`q{t}-13`).
    assert_eq!(by_kind.len(), 2);
    // No error kind (the successes) sorts first.
    assert_eq!(by_kind[0].group, vec![None]);
    assert_eq!(by_kind[0].requests, CALLS as u64 - 4);
    assert_eq!(by_kind[0].errors, 0);
    assert_eq!(by_kind[1].group, vec![Some("invalid_request".to_owned())]);
    assert_eq!(by_kind[1].requests, 4);
    assert_eq!(by_kind[1].errors, 4);
    let rows = store.rows(TimeRange::All).await.unwrap();
    assert_eq!(rows.len(), CALLS);
    assert!(rows.iter().all(|r| r.tags == "{}"));
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_rejects_a_bad_schema_name() {
    let error = Store::open(&url(), Some("x; DROP TABLE calls"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("analytics.schema"), "{error}");
}

/// `url()` with `params` added to its query string, and its host replaced by
/// `host` when given.
fn url_with(params: &str, host: Option<&str>) -> String {
    let mut url = url();
    if let Some(host) = host {
        url = url.replace("@127.0.0.1:", &format!("@{host}:"));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// The server's TLS state: `Some(certificate file)` when `ssl = on`.
async fn server_tls() -> Option<String> {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let on: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let file: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    if on != "on" {
        return None;
    }
    if file.starts_with('/') {
        return Some(file);
    }
    // A relative name is inside the data directory.
    let dir: String = client
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    Some(format!("{dir}/{file}"))
}

fn postgres_of(store: &Store) -> &dspex_analytics::PostgresStore {
    match store {
        Store::Postgres(pg) => pg,
        Store::Sqlite(_) => unreachable!("not PostgreSQL"),
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_sslmode_require_encrypts_and_disable_does_not() {
    let tls = server_tls().await;
    let schema = Schema::new("tls_require");
    let required = Store::open(&url_with("sslmode=require", None), Some(&schema.name)).await;
    match &tls {
        Some(_) => {
            let store = required.unwrap();
            let pg = postgres_of(&store);
            assert_eq!(pg.ssl_mode(), dspex_analytics::store::SslMode::Require);
            assert!(pg.tls_in_use().await.unwrap(), "require must use TLS");
            // Writes go through their own connection: also encrypted, and work.
            store.insert(Arc::new(traffic())).await.unwrap();
            assert_eq!(store.count().await.unwrap(), 9);
        }
        None => {
            let error = required.unwrap_err().to_string();
            assert!(
                error.contains("TLS") && error.contains("require"),
                "{error}"
            );
        }
    }
    let plain = Store::open(&url_with("sslmode=disable", None), Some(&schema.name))
        .await
        .unwrap();
    assert!(!postgres_of(&plain).tls_in_use().await.unwrap());
    // No sslmode: libpq's default, prefer: TLS when the server offers it.
    let default = Store::open(&url(), Some(&schema.name)).await.unwrap();
    assert_eq!(
        postgres_of(&default).tls_in_use().await.unwrap(),
        tls.is_some()
    );
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_verify_full_checks_the_chain_and_the_host_name() {
    let Some(cert) = server_tls().await else {
        // Without TLS on the server there is nothing to verify; the
        // require test covers the refusal.
        return;
    };
    let cert_text = std::fs::read_to_string(&cert).unwrap();
    assert!(cert_text.contains("BEGIN CERTIFICATE"));
    let schema = Schema::new("tls_verify");
    // The server's own (self-signed) certificate as the trusted root: the
    // chain verifies. By IP address the name check fails (Debian's snakeoil
    // certificate names the host, not 127.0.0.1) with an error that says so.
    let full = format!("sslmode=verify-full&sslrootcert={cert}");
    match Store::open(&url_with(&full, None), Some(&schema.name)).await {
        Ok(store) => assert!(postgres_of(&store).tls_in_use().await.unwrap()),
        Err(error) => {
            let message = error.to_string();
            assert!(!error.is_retryable(), "{message}");
            assert!(message.contains("sslmode=verify-full"), "{message}");
            assert!(message.contains("not valid for name"), "{message}");
            assert!(message.contains("host name"), "{message}");
        }
    }
    // By a name the certificate lists (the snakeoil one lists `localhost`
    // and the machine's name) verify-full succeeds.
    let names = [
        "localhost".to_owned(),
        std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    ];
    let mut verified = false;
    for name in names.iter().filter(|n| !n.is_empty()) {
        if let Ok(store) = Store::open(&url_with(&full, Some(name)), Some(&schema.name)).await {
            assert!(postgres_of(&store).tls_in_use().await.unwrap());
            verified = true;
            break;
        }
    }
    assert!(
        verified,
        "verify-full by the certificate's own name should succeed"
    );
    // verify-ca checks the chain only: by IP address it succeeds.
    let ca = format!("sslmode=verify-ca&sslrootcert={cert}");
    let store = Store::open(&url_with(&ca, None), Some(&schema.name))
        .await
        .unwrap();
    assert!(postgres_of(&store).tls_in_use().await.unwrap());
    // With an unrelated CA the self-signed certificate is refused, naming
    // the cause.
    // Debian's bundle of public CAs: none of them signed the server's.
    let other = "/etc/ssl/certs/ca-certificates.crt";
    // The platform roots: refused unless they hold the server's certificate
    // (SSL_CERT_DIR=/etc/ssl/certs holds Debian's snakeoil one).
    match Store::open(
        &url_with("sslmode=verify-full", Some("localhost")),
        Some(&schema.name),
    )
    .await
    {
        Ok(_) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let server = CertificateDer::from_pem_file(&cert).unwrap();
            let platform = rustls_native_certs::load_native_certs().certs;
            assert!(
                platform.contains(&server),
                "verify-full accepted a certificate the platform roots do not hold"
            );
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("not signed by a trusted root"),
                "{message}"
            );
        }
    }
    for params in [
        format!("sslmode=verify-full&sslrootcert={other}"),
        format!("sslmode=verify-ca&sslrootcert={other}"),
    ] {
        if params.contains(other) && !std::path::Path::new(other).exists() {
            continue;
        }
        let error = Store::open(&url_with(&params, Some("localhost")), Some(&schema.name))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(!error.is_retryable(), "{params}: {message}");
        assert!(
            message.contains("TLS connection failed"),
            "{params}: {message}"
        );
        assert!(
            message.contains("UnknownIssuer") || message.contains("not signed by a trusted root"),
            "{params}: {message}"
        );
    }
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_bad_tls_options_are_config_errors() {
    let error = Store::open(&url_with("sslmode=sometimes", None), None)
        .await
        .unwrap_err();
    assert!(matches!(error, dspex_analytics::AnalyticsError::Config(_)));
    let message = error.to_string();
    assert!(message.contains("analytics.store"), "{message}");
    assert!(message.contains("`sometimes`"), "{message}");
    let error = Store::open(
        &url_with(
            "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
            None,
        ),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("sslrootcert `/nonexistent/root.crt`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_concurrent_openers_migrate_a_fresh_schema_once() {
    const OPENERS: usize = 8;
    let schema = Schema::new("migrate");
    let barrier = Arc::new(tokio::sync::Barrier::new(OPENERS));
    let mut tasks = Vec::new();
    for _ in 0..OPENERS {
        let (barrier, name) = (Arc::clone(&barrier), schema.name.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            Store::open(&url(), Some(&name)).await
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.unwrap().expect("every opener succeeds"));
    }
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i64> = client
        .query(
            &format!(
                "SELECT version FROM \"{}\".dspex_schema_migrations ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "each migration applied once");
    for store in &stores {
        assert_eq!(postgres_of(store).schema_version().await.unwrap(), 3);
    }
    // All of them write to the same tables.
    for store in &stores {
        store.insert(Arc::new(traffic())).await.unwrap();
    }
    assert_eq!(stores[0].count().await.unwrap(), 9 * OPENERS as u64);
    schema.drop_schema().await;
}

/// Batch `b` of writer `w`: the same hours and keys from every writer, so
/// their upserts meet on the same rollup rows.
fn rollup_batch(w: usize, b: usize) -> Vec<dspex_analytics::CallRecord> {
    let p = prices();
    (0..40)
        .map(|i| {
            let spec = Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0))
                .tag("team", if i % 2 == 0 { "search" } else { "ads" })
                .latency_ms(1 + ((w * 7 + b * 13 + i * 31) % 900) as u64);
            let spec = if i % 10 == 0 {
                spec.failed("server_error", Some(500))
            } else {
                spec
            };
            spec.record_ms(ms("2026-11-24T10:00:00Z") + (i as i64 % 3) * 3_600_000, &p)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_rollups_match_sqlite_rollups_under_concurrent_writers() {
    const WRITERS: usize = 4;
    const BATCHES: usize = 25;
    let schema = Schema::new("rollups");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let name = schema.name.clone();
        tasks.push(tokio::spawn(async move {
            let store = Store::open(&url(), Some(&name)).await.unwrap();
            for b in 0..BATCHES {
                store.insert(Arc::new(rollup_batch(w, b))).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let pg = match schema.store().await {
        Store::Postgres(pg) => Store::Postgres(pg.with_exact_limit(0)),
        Store::Sqlite(_) => unreachable!(),
    };
    let lite = match Store::open(":memory:", None).await.unwrap() {
        Store::Sqlite(s) => Store::Sqlite(s.with_exact_limit(0)),
        Store::Postgres(_) => unreachable!(),
    };
    for w in 0..WRITERS {
        for b in 0..BATCHES {
            lite.insert(Arc::new(rollup_batch(w, b))).await.unwrap();
        }
    }
    let total = (WRITERS * BATCHES * 40) as u64;
    for group in [
        vec![],
        vec![GroupBy::Hour],
        vec![GroupBy::parse("tag:team").unwrap(), GroupBy::Status],
        vec![GroupBy::Provider, GroupBy::Model],
    ] {
        let from_rollups = pg.get_cost_analysis(TimeRange::All, &group).await.unwrap();
        assert_eq!(
            from_rollups.iter().map(|r| r.requests).sum::<u64>(),
            total,
            "{group:?}"
        );
        // Same histograms (so no lost update), same sums, same order.
        let expected = lite
            .get_cost_analysis(TimeRange::All, &group)
            .await
            .unwrap();
        assert_eq!(from_rollups, expected, "group by {group:?}");
    }
    // And the rollup answer agrees with PostgreSQL's exact one on the sums.
    let exact = schema
        .store()
        .await
        .get_cost_analysis(TimeRange::All, &[GroupBy::Hour])
        .await
        .unwrap();
    let rolled = pg
        .get_cost_analysis(TimeRange::All, &[GroupBy::Hour])
        .await
        .unwrap();
    for (a, b) in exact.iter().zip(&rolled) {
        assert_eq!(
            (a.requests, a.errors, a.cost_nanos, a.input_tokens),
            (b.requests, b.errors, b.cost_nanos, b.input_tokens)
        );
        assert!((a.latency_p50_ms - b.latency_p50_ms).abs() <= a.latency_p50_ms * 0.01 + 0.01);
    }
    // Re-pricing rebuilds the rollups from the repriced rows.
    let report = pg.reprice(Arc::new(PriceTable::empty())).await.unwrap();
    assert_eq!(report.unpriced, total);
    let after = pg.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(after[0].cost_nanos, 0);
    assert_eq!(after[0].unpriced_requests, total);
    schema.drop_schema().await;
}
