//! What a new user meets trying every command (issue 17, section 7): the
//! built binary in real processes, real config files, the mock upstream over
//! loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};

use dspex::mock::{MockConfig, MockServer};
use serde_json::Value;

use common::{dspex, write_config};

const KEY: &str = "sk-new-user-SECRET-0123456789abcdef";

fn provider(id: &str, base_url: &str) -> String {
    format!(
        "[providers.{id}]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"gpt-4o-mini\"\nmax_retries = 0\napi_key_env = \"NEW_USER_KEY\"\n"
    )
}

fn secret_env() -> [(&'static str, &'static str); 1] {
    [("NEW_USER_KEY", KEY)]
}

// ---- 1. `cache clear --tier l3` reaches the persisted vectors ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_l3_in_one_process_keeps_the_next_from_answering_from_it() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "{}\n[cache]\ndir = \"{}\"\nl3 = true\n",
            provider("mock", &upstream.base_url()),
            dir.path().join("cache").display()
        ),
    );
    let env = secret_env();
    let chat = |text: &'static str| {
        let dir = dir.path().to_owned();
        async move {
            let run = dspex(&dir, &["chat", "--temperature", "0", text], &env).await;
            assert_eq!(run.code, 0, "{}", run.stderr);
        }
    };
    chat("How do I learn Rust quickly?").await;
    assert_eq!(upstream.stats().requests, 1);
    // A second process answers a rephrasing from the persisted L3 vectors.
    chat("how do I learn rust quickly").await;
    assert_eq!(
        upstream.stats().requests,
        1,
        "the rephrasing is an L3 hit before clearing"
    );
    let run = dspex(dir.path(), &["cache", "clear", "--tier", "l3"], &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("l3: 1 entries removed"),
        "{}",
        run.stdout
    );
    // A third process must not answer from L3 what was cleared.
    chat("how do I learn rust quickly").await;
    assert_eq!(
        upstream.stats().requests,
        2,
        "the cleared vector was reloaded and answered"
    );
    // The exact entry was not in L3 only: it still answers from L2.
    chat("How do I learn Rust quickly?").await;
    assert_eq!(upstream.stats().requests, 2);
}

// ---- 2. `config check` checks every section ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_validates_every_section_and_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let base = provider("mock", "http://127.0.0.1:9/v1");
    let env = secret_env();
    for (section, words) in [
        ("[cache]\nembedder = \"bogus\"\n", "cache.embedder"),
        ("[analytics]\nstore = 5\n", "analytics.store"),
        (
            "[analytics]\nstore = \"calls.sqlite\"\n[[analytics.budgets]]\nperiod = \"fortnight\"\nlimit_usd = 5.0\n",
            "`fortnight` is not day, month or run",
        ),
        ("[optimize]\noptimizer = \"magic\"\n", "optimize.optimizer"),
        ("[gateway]\nlisten = \"nowhere\"\n", "gateway.listen"),
    ] {
        write_config(dir.path(), &format!("{base}\n{section}"));
        let run = dspex(dir.path(), &["config", "check"], &env).await;
        assert_eq!(run.code, 2, "{section}: {}", run.stderr);
        assert!(run.stderr.contains(words), "{section}: {}", run.stderr);
        assert!(!run.stderr.contains("config OK"), "{}", run.stderr);
    }
    // Every problem at once, not the first alone.
    write_config(
        dir.path(),
        &format!(
            "{base}\n[cache]\nembedder = \"bogus\"\n[[analytics.budgets]]\nperiod = \"fortnight\"\nlimit_usd = 5.0\n"
        ),
    );
    let run = dspex(dir.path(), &["config", "check"], &env).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("2 problems"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cache.embedder") && run.stderr.contains("fortnight"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_refuses_a_config_without_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[cache]\nl3 = true\n");
    let run = dspex(dir.path(), &["config", "check"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no provider"), "{}", run.stderr);
    assert!(run.stderr.contains("[providers.NAME]"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_every_section_with_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "{}\n[cache]\nl2 = \"redis://:cache-redis-pw@127.0.0.1:6379/0\"\n\
             [analytics]\nstore = \"postgres://dspex:analytics-db-pw@127.0.0.1:5432/test\"\n\
             [[analytics.budgets]]\nperiod = \"day\"\nlimit_usd = 5.0\n\
             [gateway]\nrate_limit_backend = \"redis://:gateway-redis-pw@127.0.0.1:6379/1\"\n\
             [optimize]\nseed = 7\n",
            provider("mock", "http://127.0.0.1:9/v1")
        ),
    );
    let run = dspex(dir.path(), &["config", "check"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for heading in [
        "[providers.mock]",
        "[cache]",
        "[analytics]",
        "[gateway]",
        "[optimize]",
    ] {
        assert!(run.stdout.contains(heading), "{heading}:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("limit"), "{}", run.stdout);
    for secret in [KEY, "cache-redis-pw", "analytics-db-pw", "gateway-redis-pw"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} leaked:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    // A config without [cache] or [analytics] says what that means.
    write_config(dir.path(), &provider("mock", "http://127.0.0.1:9/v1"));
    let run = dspex(dir.path(), &["config", "check"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("caching is off"), "{}", run.stdout);
    assert!(
        run.stdout.contains("calls are not recorded"),
        "{}",
        run.stdout
    );
}

// ---- 3. `cache stats` without a [cache] section ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_without_a_cache_section_say_it_is_off_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &provider("mock", "http://127.0.0.1:9/v1"));
    for args in [
        &["cache", "stats"][..],
        &["cache", "clear"][..],
        &["cache", "purge-expired"][..],
    ] {
        let run = dspex(dir.path(), args, &secret_env()).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("caching is off"),
            "{args:?}: {}",
            run.stdout
        );
    }
    let run = dspex(dir.path(), &["cache", "stats", "--json"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["enabled"], false, "{json}");
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(created, ["dspex.toml"], "the commands created files");

    // With a [cache] section the counters say they are per process.
    write_config(
        dir.path(),
        &format!(
            "{}\n[cache]\ndir = \"cache\"\n",
            provider("mock", "http://127.0.0.1:9/v1")
        ),
    );
    let run = dspex(dir.path(), &["cache", "stats"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("this process"), "{}", run.stdout);
    assert!(dir.path().join("cache").is_dir());
}

// ---- 4. `dspex run` without an input the workflow needs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_missing_input_before_any_call() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &provider("mock", &upstream.base_url()));
    // The first step needs only `question`: before the fix it ran (and was
    // paid for) before the second failed for want of `context`.
    let workflow = dir.path().join("two.toml");
    std::fs::write(
        &workflow,
        "name = \"two\"\ninputs = [\"question\", \"context\"]\n\n\
         [[steps]]\nname = \"rewrite\"\nmodule = \"predict\"\nsignature = \"question -> query\"\n\n\
         [[steps]]\nname = \"answer\"\nmodule = \"predict\"\nsignature = \"query, context -> answer\"\n",
    )
    .unwrap();
    let run = dspex(
        dir.path(),
        &["run", workflow.to_str().unwrap(), "-i", "question=Why?"],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("`context`"), "{}", run.stderr);
    assert!(run.stderr.contains("-i context="), "{}", run.stderr);
    assert_eq!(upstream.stats().requests, 0, "no call before the refusal");

    // Given every input, it runs.
    let run = dspex(
        dir.path(),
        &[
            "run",
            workflow.to_str().unwrap(),
            "-i",
            "question=Why?",
            "-i",
            "context=none",
        ],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(upstream.stats().requests, 2);
}

// ---- 5. `--log info`: one line per call ----

fn call_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("dspex::call"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_info_prints_one_line_per_call_without_the_key() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &provider("mock", &upstream.base_url()));
    let run = dspex(
        dir.path(),
        &["--log", "info", "chat", "hello"],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = call_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    let line = lines[0];
    assert!(line.contains(" INFO "), "{line}");
    for field in [
        "provider=mock",
        "model=gpt-4o-mini",
        "status=ok",
        "input_tokens=",
        "output_tokens=",
        "latency_ms=",
        "cache=none",
        "correlation_id=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(!run.stderr.contains(KEY), "{}", run.stderr);
    assert!(
        !run.stderr.contains("time.busy"),
        "span timings are for debug: {}",
        run.stderr
    );

    // A workflow of three steps: three lines, one per call.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi_hop_qa.toml");
    let run = dspex(
        dir.path(),
        &[
            "--log",
            "info",
            "run",
            example.to_str().unwrap(),
            "-i",
            "question=Who painted it?",
        ],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(call_lines(&run.stderr).len(), 3, "{}", run.stderr);
    assert_eq!(upstream.stats().requests, 4);

    // A failed call is one line too, with its status.
    let run = dspex(
        dir.path(),
        &["--log", "info", "chat", "x"],
        &[("NEW_USER_KEY", "sk-wrong-0000000000000000")],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    let lines = call_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].contains("HTTP 401"), "{}", lines[0]);
    assert!(!run.stderr.contains("sk-wrong-0000000000000000"));

    // At debug, spans report their timings when they close.
    let run = dspex(dir.path(), &["--log", "debug", "chat", "hi"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("gen_ai.client"), "{}", run.stderr);
    assert!(run.stderr.contains("time.busy"), "{}", run.stderr);
    assert!(!run.stderr.contains(KEY));
}

// ---- 6. `predict --program`, and a refusal's own latency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_runs_a_saved_program() {
    let upstream = MockServer::start(MockConfig {
        record_requests: 100,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &provider("mock", &upstream.base_url()));
    std::fs::write(
        dir.path().join("data.jsonl"),
        "{\"question\": \"first\", \"answer\": \"mock answer for: first\"}\n",
    )
    .unwrap();
    let run = dspex(
        dir.path(),
        &[
            "optimize",
            "--train",
            "data.jsonl",
            "--max-bootstrapped",
            "1",
            "--max-labeled",
            "1",
            "--instructions",
            "Answer like a pirate.",
            "--out",
            "qa.json",
            "question -> answer",
        ],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // The saved program alone: its signature, demo and instructions.
    let before = upstream.recorded().len();
    let run = dspex(
        dir.path(),
        &["predict", "--program", "qa.json", "-i", "question=second"],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "answer: mock answer for: second");
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), before + 1);
    let sent = recorded[before].body["messages"].to_string();
    assert!(sent.contains("mock answer for: first"), "the demo: {sent}");
    assert!(sent.contains("Answer like a pirate."), "{sent}");

    // With a signature too, the state is loaded onto it.
    let run = dspex(
        dir.path(),
        &[
            "predict",
            "--program",
            "qa.json",
            "question -> answer",
            "-i",
            "question=third",
        ],
        &secret_env(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sent = upstream.recorded().last().unwrap().body["messages"].to_string();
    assert!(sent.contains("mock answer for: first"), "{sent}");

    // Neither: clap says what is missing.
    let run = dspex(dir.path(), &["predict", "-i", "question=x"], &secret_env()).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("SIGNATURE"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_recorded_with_the_refusals_own_latency() {
    // Every call the mock answers takes at least this long; a refusal never
    // reaches it, so its recorded latency must be well below.
    const MOCK_LATENCY_MS: u64 = 400;
    let upstream = MockServer::start(MockConfig {
        latency_ms: MOCK_LATENCY_MS,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Named `openai` so the bundled prices price its calls.
    let base = provider("openai", &upstream.base_url());
    let store = dir.path().join("calls.sqlite");
    write_config(
        dir.path(),
        &format!(
            "{base}\n[analytics]\nstore = \"{}\"\n[[analytics.budgets]]\nperiod = \"day\"\nlimit_usd = 0.000001\n",
            store.display()
        ),
    );
    // A fresh process: the refusal is its first call, so the prompt estimate
    // the guard prices loads its tiktoken encoding first.
    let run = dspex(dir.path(), &["chat", "hello"], &secret_env()).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("budget"), "{}", run.stderr);
    assert_eq!(upstream.stats().requests, 0);
    let costs = |dir: PathBuf| async move {
        let run = dspex(
            &dir,
            &[
                "costs",
                "--since",
                "1h",
                "--group-by",
                "status",
                "--format",
                "json",
            ],
            &secret_env(),
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let rows: Value = serde_json::from_str(&run.stdout).unwrap();
        rows.as_array().unwrap().clone()
    };
    let rows = costs(dir.path().to_owned()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["requests"], 1, "{rows:?}");
    assert_eq!(rows[0]["errors"], 1, "{rows:?}");
    let refused_ms = rows[0]["latency_p99_ms"].as_f64().unwrap();

    // The same call without the budget goes to the mock and takes its time.
    write_config(
        dir.path(),
        &format!("{base}\n[analytics]\nstore = \"{}\"\n", store.display()),
    );
    let run = dspex(dir.path(), &["chat", "hello"], &secret_env()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = costs(dir.path().to_owned()).await;
    let answered = rows
        .iter()
        .find(|r| r["errors"] == 0)
        .unwrap_or_else(|| panic!("{rows:?}"));
    let answered_ms = answered["latency_p50_ms"].as_f64().unwrap();
    assert!(
        answered_ms >= MOCK_LATENCY_MS as f64,
        "the answered call waited for the mock: {rows:?}"
    );
    assert!(
        refused_ms < MOCK_LATENCY_MS as f64 / 4.0,
        "a refusal took {refused_ms} ms, against {answered_ms} ms for a call the mock answered after {MOCK_LATENCY_MS} ms"
    );
}
