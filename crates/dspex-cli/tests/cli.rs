//! The `dspex` binary end to end: real processes, real config files, the mock
//! upstream over loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::Path;

use dspex::mock::{Fault, MockConfig, MockServer};
use serde_json::Value;

use common::{dspex, write_config};

const KEY: &str = "sk-cli-test-SECRET-9876543210fedcba";

fn mock_config(base_url: &str, extra: &str) -> String {
    format!(
        "[providers.mock]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"gpt-4o-mini\"\nmax_retries = 0\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_json_prints_the_normalised_response_without_the_key() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &mock_config(&upstream.base_url(), "api_key_env = \"CLI_TEST_KEY\""),
    );
    let run = dspex(
        dir.path(),
        &[
            "--log",
            "trace",
            "chat",
            "--json",
            "--max-tokens",
            "40",
            "hello there",
        ],
        &[("CLI_TEST_KEY", KEY)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["choices"][0]["content"], "echo: hello there");
    assert!(json["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(json["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["attempts"], 1);
    assert!(!run.stdout.contains(KEY) && !run.stderr.contains(KEY));
    assert!(
        run.stderr.contains("TRACE") || run.stderr.contains("DEBUG"),
        "trace logging was on"
    );

    // Streamed, plain text.
    let run = dspex(
        dir.path(),
        &["chat", "--stream", "stream me"],
        &[("CLI_TEST_KEY", KEY)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "echo: stream me");

    // A wrong key: a provider error (exit 3), with the refused key scrubbed from
    // the provider's message.
    let run = dspex(
        dir.path(),
        &["--log", "trace", "chat", "x"],
        &[("CLI_TEST_KEY", "sk-wrong-key-0000000000")],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("authentication"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("sk-wrong-key-0000000000"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_exit_3_with_the_correlation_id_and_trail() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock_config(&upstream.base_url(), ""));
    upstream.enqueue([Fault::Status {
        code: 400,
        retry_after_secs: None,
        message: "messages: too many".into(),
    }]);
    let run = dspex(dir.path(), &["chat", "x"], &[]).await;
    assert_eq!(run.code, 3);
    assert!(
        run.stderr
            .contains("bad request (HTTP 400): messages: too many"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("correlation id: "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("[provider] mock (openai) model gpt-4o-mini"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_config_errors_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[providers.openai]\nkind = \"openai\"\npool_size = \"lots\"\n",
    );
    let run = dspex(dir.path(), &["config", "check"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("providers.openai.pool_size"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&path.display().to_string()) || run.stderr.contains("dspex.toml"),
        "{}",
        run.stderr
    );

    write_config(dir.path(), &mock_config("http://127.0.0.1:9/v1", ""));
    let run = dspex(dir.path(), &["chat", "--provider", "nope", "x"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("no provider named `nope` (configured: mock)"),
        "{}",
        run.stderr
    );

    let run = dspex(
        dir.path(),
        &["--config", "/nonexistent.toml", "chat", "x"],
        &[],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("/nonexistent.toml"), "{}", run.stderr);

    let run = dspex(dir.path(), &["chat"], &[]).await;
    assert_eq!(run.code, 2, "clap usage errors exit 2");

    let empty = tempfile::tempdir().unwrap();
    let run = dspex(empty.path(), &["chat", "x"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("OPENAI_API_KEY"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        "rate_limit_backend = \"redis://:hunter2-password@127.0.0.1:6379/0\"\n[providers.openai]\nkind = \"openai\"\napi_key_env = \"CLI_TEST_KEY\"\nrpm = 500\n[providers.openai.headers]\nx-org-token = \"org-secret-token\"\n",
    );
    let run = dspex(
        dir.path(),
        &["config", "check"],
        &[
            ("CLI_TEST_KEY", KEY),
            ("DSPEX_PROVIDERS__OPENAI__POOL_SIZE", "7"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("pool_size = 7"),
        "the environment override applies:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("[redacted] (from $CLI_TEST_KEY)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("limit = 500"), "{}", run.stdout);
    for secret in [KEY, "hunter2-password", "org-secret-token"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} leaked:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_come_from_the_sdk_environment_without_a_file() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = upstream.base_url();
    let run = dspex(
        dir.path(),
        &["chat", "from the environment"],
        &[("OPENAI_API_KEY", KEY), ("OPENAI_BASE_URL", &base)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "echo: from the environment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_successes_errors_and_percentiles() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock_config(&upstream.base_url(), ""));
    for mode in [
        &["load", "--requests", "200", "--concurrency", "8", "--json"][..],
        &[
            "load",
            "--requests",
            "200",
            "--concurrency",
            "8",
            "--json",
            "--bare",
        ][..],
    ] {
        let run = dspex(dir.path(), mode, &[]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(report["successes"], 200);
        assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
        assert!(
            report["latency_ms"]["p99"].as_f64().unwrap()
                >= report["latency_ms"]["p50"].as_f64().unwrap()
        );
        assert!(report["throughput_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(upstream.stats().requests, 400);
    upstream.enqueue([Fault::server_error(), Fault::status(400)]);
    let run = dspex(
        dir.path(),
        &["load", "--requests", "10", "--concurrency", "1", "--json"],
        &[],
    )
    .await;
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["successes"], 8);
    assert_eq!(report["errors"]["server_error"], 1);
    assert_eq!(report["errors"]["bad_request"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_main_job_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let run = dspex(dir.path(), &["demo", "--mock"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("\"echo: What is DSPex?\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("2 attempt(s)"),
        "the 503 was retried:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("request_completed=7"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("reasoning: mock reasoning for: What is DSPex?"),
        "{}",
        run.stdout
    );
    // The example workflow ran its three steps, each feeding the next.
    assert!(
        run.stdout
            .contains("sub_answer: mock answer for: mock sub_question for: Who painted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("(3 steps, 3 LM calls"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_executes_a_workflow_file_and_reports_problems() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock_config(&upstream.base_url(), ""));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi_hop_qa.toml");
    let example = example.to_str().unwrap();
    let run = dspex(
        dir.path(),
        &[
            "run",
            "--json",
            example,
            "-i",
            "question=Why is the sky blue?",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        json["outputs"]["answer"]
            .as_str()
            .unwrap()
            .starts_with("mock answer for:")
    );
    let steps = json["report"]["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["decompose", "answer_sub", "answer"]);
    assert_eq!(json["report"]["lm_calls"], 3);
    assert_eq!(upstream.stats().requests, 3);

    // A file with problems exits 2 and names each with its line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\ninputs = [\"question\"]\n\n[[steps]]\nname = \"s\"\nmodule = \"predict\"\nsignature = \"topic -> answer\"\nprovider = \"ghost\"\n",
    )
    .unwrap();
    let run = dspex(dir.path(), &["run", bad.to_str().unwrap()], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    // Each problem points at the offending value: `provider` is on line 8.
    assert!(
        run.stderr
            .contains("steps[0] (s).provider: unknown provider `ghost`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("bad.toml:8:12\n"), "{}", run.stderr);
    assert!(run.stderr.contains("reads `topic`"), "{}", run.stderr);

    // A step that fails exits 3 with the step history.
    upstream.enqueue([Fault::Status {
        code: 400,
        retry_after_secs: None,
        message: "bad request".into(),
    }]);
    let run = dspex(dir.path(), &["run", example, "-i", "question=q"], &[]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("failed at step `decompose`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("step decompose: Failed after 1 attempt(s)"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for example in ["examples/dspex.toml", "examples/mock.toml"] {
        let path = root.join(example);
        let run = dspex(
            &root,
            &["--config", path.to_str().unwrap(), "config", "check"],
            &[("OPENAI_API_KEY", KEY), ("ANTHROPIC_API_KEY", KEY)],
        )
        .await;
        assert_eq!(run.code, 0, "{example}: {}", run.stderr);
        assert!(!run.stdout.contains(KEY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_runs_a_program_against_the_mock() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock_config(&upstream.base_url(), ""));
    let run = dspex(
        dir.path(),
        &[
            "predict",
            "--cot",
            "--json",
            "context: list[str], question -> answer: int",
            "-i",
            "question=How many?",
            "-i",
            "context=[\"a\", \"b\"]",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        json["outputs"]["answer"], 42,
        "the mock fills an int field with 42: {json}"
    );
    assert!(
        json["outputs"]["reasoning"]
            .as_str()
            .unwrap()
            .starts_with("mock reasoning")
    );
    assert!(json["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(json["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["trace"].as_array().unwrap().len(), 1);

    let run = dspex(
        dir.path(),
        &["predict", "question -> answer", "-i", "question=Why?"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "answer: mock answer for: Why?");

    for (args, words) in [
        (
            &["predict", "question answer", "-i", "question=x"][..],
            "exactly one `->`",
        ),
        (
            &["predict", "question -> answer", "-i", "query=x"][..],
            "no input `query`",
        ),
        (
            &["predict", "question -> answer"][..],
            "`question` is missing",
        ),
        (
            &["predict", "k: int -> answer", "-i", "k=three"][..],
            "must be JSON",
        ),
    ] {
        let run = dspex(dir.path(), args, &[]).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(words), "{args:?}: {}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dspex_config_names_the_file_when_no_flag_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, "[providers.from-env-var]\nkind = \"openai\"\n").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let run = dspex(
        cwd.path(),
        &["config", "check"],
        &[("DSPEX_CONFIG", path.to_str().unwrap())],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("[providers.from-env-var]"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("elsewhere.toml"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_recorded_and_costs_reports_them() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("calls.sqlite");
    write_config(
        dir.path(),
        &mock_config(
            &upstream.base_url(),
            &format!("\n[analytics]\nstore = \"{}\"\n", store.display()),
        ),
    );
    for question in ["one", "two"] {
        let run = dspex(
            dir.path(),
            &[
                "predict",
                "question -> answer",
                "-i",
                &format!("question={question}"),
            ],
            &[],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = dspex(
        dir.path(),
        &[
            "costs",
            "--since",
            "1h",
            "--group-by",
            "provider,model",
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Value = serde_json::from_str(&run.stdout).unwrap();
    let rows = rows
        .as_array()
        .unwrap_or_else(|| rows["rows"].as_array().unwrap());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["requests"], 2, "{rows:?}");
    assert!(rows[0]["input_tokens"].as_u64().unwrap() > 0, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_and_optimize_run_programs_over_jsonl_against_the_mock() {
    let upstream = MockServer::start(MockConfig {
        record_requests: 100,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &mock_config(&upstream.base_url(), ""));
    // The mock answers `mock answer for: <question>`: the first label matches
    // it exactly, the second does not.
    let data = "{\"question\": \"first\", \"answer\": \"mock answer for: first\"}\n\
                {\"question\": \"second\", \"answer\": \"something else\"}\n";
    std::fs::write(dir.path().join("data.jsonl"), data).unwrap();

    let run = dspex(
        dir.path(),
        &[
            "eval",
            "--data",
            "data.jsonl",
            "--metric",
            "exact",
            "--json",
            "--instructions",
            "Answer briefly.",
            "question -> answer",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["total"], 2, "{report}");
    assert_eq!(report["passed"], 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["score"], 0.5, "{report}");
    assert_eq!(report["results"][0]["passed"], true, "{report}");
    assert_eq!(report["results"][1]["passed"], false, "{report}");
    let system = upstream.recorded()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("Answer briefly."), "{system}");

    // BootstrapFewShot keeps only the trace that passed the metric; with
    // --max-labeled 1 no labelled example fills up behind it.
    let run = dspex(
        dir.path(),
        &[
            "optimize",
            "--train",
            "data.jsonl",
            "--max-bootstrapped",
            "4",
            "--max-labeled",
            "1",
            "--out",
            "qa.json",
            "--json",
            "question -> answer",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["report"]["passed"], 1, "{summary}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("qa.json")).unwrap())
            .unwrap();
    let predictors = saved["predictors"].as_object().unwrap();
    assert_eq!(predictors.len(), 1, "{saved}");
    let demos = predictors.values().next().unwrap()["demos"]
        .as_array()
        .unwrap();
    assert_eq!(demos.len(), 1, "{saved}");
    assert_eq!(demos[0]["inputs"]["question"], "first", "{saved}");
    assert_eq!(
        demos[0]["outputs"]["answer"], "mock answer for: first",
        "{saved}"
    );

    // The saved program alone gives the signature; its demo goes out with
    // every call.
    let before = upstream.recorded().len();
    let run = dspex(
        dir.path(),
        &[
            "eval",
            "--data",
            "data.jsonl",
            "--program",
            "qa.json",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["passed"], 1, "{report}");
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), before + 2);
    for request in &recorded[before..] {
        let text = request.body["messages"].to_string();
        assert!(text.contains("mock answer for: first"), "{text}");
    }

    // Neither a signature nor a program: a usage error that says what to give.
    let run = dspex(dir.path(), &["eval", "--data", "data.jsonl"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--program"), "{}", run.stderr);
}
