//! `dspex serve` as a process: the real gateway binary in front of the
//! project's mock upstream, its keys made with `dspex keys`, its calls
//! read back with `dspex costs`; real client libraries (the `openai` and
//! `anthropic` SDKs, DSPy, curl) and a real browser against it.
//!
//! Tests that need Python (`DSPEX_TEST_PYTHON`, made by
//! `scripts/python-clients`), Chromium (`DSPEX_TEST_CHROMEDRIVER`), Redis or
//! PostgreSQL are `#[ignore]`d, so a plain `cargo test` reports them as not
//! run; `.ci/run` runs them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dspex::mock::{MockConfig, MockServer};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const UPSTREAM_KEY: &str = "sk-upstream-SECRET-5a5a5a5a5a5a";
const ADMIN_KEY: &str = "admin-SECRET-7b7b7b7b7b7b";

fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("DSPEX_LOG")
        .env("MOCK_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("DSPEX_ADMIN_KEY", ADMIN_KEY);
    command
}

/// Runs `dspex ARGS` to completion: (exit code, stdout, stderr).
async fn dspex(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = command(dir).args(args).output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `dspex.toml` for a gateway in front of `upstream`, with `extra`
/// appended (more `[gateway]` keys go in `gateway_extra`).
fn config(upstream: &MockServer, store: &str, gateway_extra: &str, extra: &str) -> String {
    format!(
        r#"default_provider = "openai"

[providers.openai]
kind = "openai"
base_url = "{openai}"
api_key_env = "MOCK_UPSTREAM_KEY"
model = "gpt-4o-mini"
embedding_model = "text-embedding-3-small"
max_retries = 0

[providers.anthropic]
kind = "anthropic"
base_url = "{anthropic}"
api_key_env = "MOCK_UPSTREAM_KEY"
model = "claude-3-5-haiku-latest"
max_retries = 0

[gateway]
listen = "127.0.0.1:0"
shutdown_grace_ms = 5000
{gateway_extra}

[gateway.models.fast]
provider = "openai"
model = "gpt-4o-mini"

[analytics]
store = "{store}"
flush_interval_ms = 20
{extra}
"#,
        openai = upstream.base_url(),
        anthropic = upstream.anthropic_base_url(),
    )
}

/// A running `dspex serve`, its stderr collected.
struct Gateway {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    async fn start(dir: &Path, config: &Path, log_filter: &str) -> Self {
        let mut child = command(dir)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--log", log_filter])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let collected = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let addr = rest.split('/').next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = collected.lock();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), addr_rx)
            .await
            .unwrap_or_else(|_| panic!("dspex serve did not start:\n{}", log.lock()))
            .unwrap_or_else(|_| panic!("dspex serve exited:\n{}", log.lock()));
        Self {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// SIGTERM, then the exit code.
    async fn stop(mut self) -> (i32, String) {
        let pid = self.child.id().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let code = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the gateway exits after SIGTERM")
            .unwrap()
            .code()
            .unwrap_or(-1);
        // Let the stderr reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.log.lock().clone();
        (code, log)
    }
}

/// `dspex keys create --name NAME ARGS...`, returning the key's text.
async fn create_key(dir: &Path, config: &Path, name: &str, args: &[&str]) -> String {
    let mut all = vec!["keys", "create", "--name", name, "--config"];
    let config = config.to_str().unwrap();
    all.push(config);
    all.extend_from_slice(args);
    let (code, stdout, stderr) = dspex(dir, &all).await;
    assert_eq!(code, 0, "{stderr}");
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("sk-dspex-"), "{stdout}");
    key
}

/// The one group value of a `dspex costs --format json` row.
fn group_of(row: &Value) -> Option<String> {
    row["group"]
        .as_object()?
        .values()
        .next()?
        .as_str()
        .map(str::to_owned)
}

fn every_file_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keys_and_costs_end_to_end_with_no_key_leaking() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("analytics.sqlite");
    let cache_dir = dir.path().join("cache");
    let path = dir.path().join("dspex.toml");
    std::fs::write(
        &path,
        config(
            &upstream,
            store.to_str().unwrap(),
            "",
            &format!(
                "[cache]\ndir = \"{}\"\nl2 = \"redb\"\n",
                cache_dir.to_str().unwrap()
            ),
        ),
    )
    .unwrap();
    let team_a = create_key(dir.path(), &path, "team-a", &["--rpm", "100"]).await;
    let team_b = create_key(dir.path(), &path, "team-b", &["--models", "fast"]).await;
    // Trace-level logs: nothing at any level may print a key.
    let gateway = Gateway::start(dir.path(), &path, "trace").await;
    let http = reqwest::Client::new();
    for (key, text) in [(&team_a, "one"), (&team_a, "two"), (&team_b, "three")] {
        let response = http
            .post(format!("{}/v1/chat/completions", gateway.base))
            .bearer_auth(key)
            .json(&json!({"model": "fast", "temperature": 0,
                          "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.unwrap();
        for secret in [key.as_str(), UPSTREAM_KEY, ADMIN_KEY] {
            assert!(!headers.contains(secret) && !body.contains(secret));
        }
    }
    // Every failure path: a wrong key, a model the key may not use, an
    // upstream refusing the gateway's key (the mock requires it), a bad
    // body. None echoes a key.
    let mut failures = Vec::new();
    for (key, body) in [
        (
            "sk-dspex-wrong",
            json!({"model": "fast", "messages": [{"role": "user", "content": "x"}]}),
        ),
        (
            team_b.as_str(),
            json!({"model": "anthropic/claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "x"}]}),
        ),
        (
            team_a.as_str(),
            json!({"model": "fast", "messages": "not a list"}),
        ),
    ] {
        let response = http
            .post(format!("{}/v1/chat/completions", gateway.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
        let headers = format!("{:?}", response.headers());
        failures.push(format!("{headers} {}", response.text().await.unwrap()));
    }
    // The admin API lists keys without their text.
    let listed = http
        .get(format!("{}/admin/keys", gateway.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("team-a") && listed.contains("team-b"));
    failures.push(listed);
    let metrics = http
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dspex_gateway_requests_total{route=\"chat_completions\",key=\"team-a\""),
        "{metrics}"
    );
    failures.push(metrics);
    let (code, log) = gateway.stop().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("analytics flushed"), "{log}");
    // `dspex keys list` shows prefixes, never the text.
    let (code, listed, _) = dspex(
        dir.path(),
        &["keys", "list", "--config", path.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        listed.contains("team-a") && listed.contains("100 rpm"),
        "{listed}"
    );
    failures.push(listed);
    // The calls are in the store, by key.
    let (code, costs, stderr) = dspex(
        dir.path(),
        &[
            "costs",
            "--config",
            path.to_str().unwrap(),
            "--since",
            "1h",
            "--group-by",
            "key",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&costs).unwrap();
    let by_key: Vec<(String, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((group_of(r)?, r["requests"].as_u64()?)))
        .collect();
    assert_eq!(by_key, [("team-a".to_owned(), 2), ("team-b".to_owned(), 1)]);
    // No key in the logs, any answer, the analytics store or the cache.
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![("trace log".into(), log.into_bytes())];
    haystacks.extend(
        failures
            .into_iter()
            .map(|f| ("answer".to_owned(), f.into_bytes())),
    );
    for file in every_file_under(dir.path()) {
        if file.ends_with("dspex.toml") {
            continue;
        }
        haystacks.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    assert!(
        haystacks.iter().any(|(name, _)| name.contains("cache")),
        "the cache wrote files"
    );
    for secret in [team_a.as_str(), team_b.as_str(), UPSTREAM_KEY, ADMIN_KEY] {
        for (name, bytes) in &haystacks {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a key appears in {name}"
            );
        }
    }
}

fn python() -> String {
    std::env::var("DSPEX_TEST_PYTHON")
        .expect("set DSPEX_TEST_PYTHON to a Python with the client SDKs (scripts/python-clients)")
}

async fn run_python(script: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{script}: {stdout}");
    for secret in [UPSTREAM_KEY, ADMIN_KEY] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs DSPEX_TEST_PYTHON: a Python with openai, anthropic and dspy (scripts/python-clients)"]
async fn the_official_sdks_dspy_and_curl_work_against_dspex_serve() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dspex.toml");
    let store = dir.path().join("analytics.sqlite");
    std::fs::write(&path, config(&upstream, store.to_str().unwrap(), "", "")).unwrap();
    let key = create_key(dir.path(), &path, "sdk", &[]).await;
    let revoked = create_key(dir.path(), &path, "gone", &[]).await;
    let limited = create_key(
        dir.path(),
        &path,
        "limited",
        &["--rpm", "1", "--models", "fast"],
    )
    .await;
    let dspy_key = create_key(dir.path(), &path, "dspy-team", &[]).await;
    let (code, _, stderr) = dspex(
        dir.path(),
        &["keys", "revoke", "gone", "--config", path.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let gateway = Gateway::start(dir.path(), &path, "warn").await;
    let v1 = format!("{}/v1", gateway.base);
    run_python("openai_sdk.py", &[&v1, &key, &revoked, &limited]).await;
    run_python("anthropic_sdk.py", &[&gateway.base, &key, &revoked]).await;
    run_python("dspy_program.py", &[&v1, &dspy_key]).await;
    // curl for the admin API: create, list, revoke; a wrong admin key is 401.
    let curl = |args: Vec<String>| async move {
        let output = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse::<u16>().unwrap(), body.to_owned())
    };
    let admin = format!("Authorization: Bearer {ADMIN_KEY}");
    let (status, body) = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        admin.clone(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        r#"{"name": "from-curl", "rpm": 60, "models": "fast"}"#.into(),
        format!("{}/admin/keys", gateway.base),
    ])
    .await;
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let curl_key = created["key"].as_str().unwrap().to_owned();
    let (status, body) = curl(vec![
        "-H".into(),
        admin.clone(),
        format!("{}/admin/keys", gateway.base),
    ])
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("from-curl") && !body.contains(&curl_key),
        "{body}"
    );
    let (status, _) = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        admin.clone(),
        format!("{}/admin/keys/from-curl/revoke", gateway.base),
    ])
    .await;
    assert_eq!(status, 200);
    let (status, _) = curl(vec![
        "-H".into(),
        "Authorization: Bearer not-the-admin".into(),
        format!("{}/admin/keys", gateway.base),
    ])
    .await;
    assert_eq!(status, 401);
    let (code, log) = gateway.stop().await;
    assert_eq!(code, 0, "{log}");
    // DSPy's calls are in `dspex costs --group-by key`.
    let (code, costs, stderr) = dspex(
        dir.path(),
        &[
            "costs",
            "--config",
            path.to_str().unwrap(),
            "--since",
            "1h",
            "--group-by",
            "key",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&costs).unwrap();
    let dspy_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| group_of(r).as_deref() == Some("dspy-team"))
        .unwrap_or_else(|| panic!("no dspy-team row in {costs}"));
    assert_eq!(dspy_row["requests"], 2, "{dspy_row}");
    assert!(dspy_row["input_tokens"].as_u64().unwrap() > 0);
}

/// `dspex costs --group-by key --format json` for `range`.
async fn costs_by_key(dir: &Path, config: &Path, range: &str) -> Value {
    let (from, until) = range.split_once("..").unwrap();
    let (code, costs, stderr) = dspex(
        dir,
        &[
            "costs",
            "--config",
            config.to_str().unwrap(),
            "--from",
            from,
            "--until",
            until,
            "--group-by",
            "key",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&costs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs DSPEX_TEST_PYTHON (with selenium) and Chromium + chromedriver (Debian's chromium, chromium-driver)"]
async fn the_dashboard_in_a_real_browser_shows_what_dspex_costs_reports() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dspex.toml");
    let store = dir.path().join("analytics.sqlite");
    std::fs::write(&path, config(&upstream, store.to_str().unwrap(), "", "")).unwrap();
    let team_a = create_key(dir.path(), &path, "team-a", &[]).await;
    let team_b = create_key(dir.path(), &path, "team-b", &[]).await;
    let gateway = Gateway::start(dir.path(), &path, "warn").await;
    let http = reqwest::Client::new();
    let mut expected = 0;
    for (key, model, n) in [
        (&team_a, "fast", 5),
        (&team_a, "anthropic/claude-3-5-haiku-latest", 2),
        (&team_b, "fast", 3),
    ] {
        for i in 0..n {
            let response = http
                .post(format!("{}/v1/chat/completions", gateway.base))
                .bearer_auth(key)
                .json(&json!({"model": model, "messages": [{"role": "user", "content": format!("question {i}")}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            expected += 1;
        }
    }
    let now = std::time::SystemTime::now();
    let hour = Duration::from_secs(3600);
    let range = format!(
        "{}..{}",
        humantime::format_rfc3339_seconds(now - hour),
        humantime::format_rfc3339_seconds(now + hour)
    );
    // The recorder writes every 20 ms: wait until every call is in.
    let mut costs = Value::Null;
    for _ in 0..100 {
        costs = costs_by_key(dir.path(), &path, &range).await;
        let recorded: u64 = costs
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        if recorded == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let costs_path = dir.path().join("costs.json");
    std::fs::write(&costs_path, costs.to_string()).unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let output = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dashboard_browser.py"))
        .args([&gateway.base, &range])
        .arg(&costs_path)
        .arg(&screenshot)
        .env("DSPEX_ADMIN_KEY", ADMIN_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    let (code, log) = gateway.stop().await;
    assert_eq!(code, 0, "{log}");
}

/// Sends a chat through `base` with `key`; returns (status, x-dspex-cache).
async fn chat_through(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
) -> (u16, String) {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let cache = response
        .headers()
        .get("x-dspex-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (DSPEX_TEST_REDIS_URL) and PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn two_instances_share_limits_budgets_cache_keys_and_analytics() {
    let redis = std::env::var("DSPEX_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let postgres = std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    // Names of their own in the shared Redis and PostgreSQL, so runs and
    // parallel tests never see each other's counters.
    let run = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let schema = format!("gw_scale_{run}");
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dspex.toml");
    let text = config(
        &upstream,
        &postgres,
        &format!("rate_limit_backend = \"{redis}\"\nkey_refresh_ms = 200"),
        &format!(
            "schema = \"{schema}\"\n\n[cache]\ndir = \"{}\"\nl2 = \"{redis}\"\nredis_prefix = \"dspex:test:{run}:\"\n",
            dir.path().join("cache").display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    let limited = create_key(
        dir.path(),
        &path,
        &format!("limited-{run}"),
        &["--rpm", "5"],
    )
    .await;
    let budgeted = create_key(
        dir.path(),
        &path,
        &format!("budget-{run}"),
        &["--budget-usd", "0.00003", "--period", "day"],
    )
    .await;
    let cached = create_key(dir.path(), &path, &format!("cached-{run}"), &[]).await;
    let revoked_name = format!("revoked-{run}");
    let revoked = create_key(dir.path(), &path, &revoked_name, &[]).await;
    let a = Gateway::start(dir.path(), &path, "warn").await;
    let b = Gateway::start(dir.path(), &path, "warn").await;
    let http = reqwest::Client::new();
    let ask = |text: String| json!({"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": text}]});

    // One request limit across both: alternating, exactly 5 of 12 pass.
    let mut passed = 0;
    for i in 0..12 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, _) = chat_through(&http, base, &limited, &ask(format!("limit {i}"))).await;
        assert!(status == 200 || status == 429, "{status}");
        passed += u64::from(status == 200);
    }
    assert_eq!(passed, 5, "the combined count passed the key's rpm");

    // One budget across both: the spend recorded stays within it.
    let mut admitted = 0;
    for i in 0..40 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, _) = chat_through(&http, base, &budgeted, &ask(format!("budget {i}"))).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        admitted += 1;
    }
    assert!((2..40).contains(&admitted), "{admitted}");

    // A cache entry written through one is served by the other (Redis L2).
    let question = json!({"model": "fast", "temperature": 0, "messages": [{"role": "user", "content": "shared cache"}]});
    assert_eq!(
        chat_through(&http, &a.base, &cached, &question).await,
        (200, "miss".to_owned())
    );
    assert_eq!(
        chat_through(&http, &b.base, &cached, &question).await,
        (200, "l2".to_owned())
    );

    // A key revoked through one is refused by the other within the refresh.
    assert_eq!(
        chat_through(&http, &b.base, &revoked, &ask("before".into()))
            .await
            .0,
        200
    );
    let revoke = http
        .post(format!("{}/admin/keys/{revoked_name}/revoke", a.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    assert_eq!(
        chat_through(&http, &a.base, &revoked, &ask("after".into()))
            .await
            .0,
        401
    );
    let started = std::time::Instant::now();
    let mut refused_after = None;
    while started.elapsed() < Duration::from_secs(10) {
        if chat_through(&http, &b.base, &revoked, &ask("after".into()))
            .await
            .0
            == 401
        {
            refused_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = refused_after.expect("the other instance refused the revoked key");
    // key_refresh_ms is 200: the documented bound, with room for a loaded
    // machine (this is a correctness check, not a timing benchmark).
    assert!(refused_after < Duration::from_secs(5), "{refused_after:?}");

    let (code, log) = a.stop().await;
    assert_eq!(code, 0, "{log}");
    let (code, log) = b.stop().await;
    assert_eq!(code, 0, "{log}");
    // Both instances recorded into the one PostgreSQL store.
    let (code, costs, stderr) = dspex(
        dir.path(),
        &[
            "costs",
            "--config",
            path.to_str().unwrap(),
            "--since",
            "1h",
            "--group-by",
            "key",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&costs).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| group_of(r).as_deref() == Some(name))
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name} in {costs}"))
    };
    assert_eq!(row(&format!("limited-{run}"))["requests"], 5);
    let budget_row = row(&format!("budget-{run}"));
    assert_eq!(budget_row["requests"], admitted);
    let spent = budget_row["cost_nanos"].as_i64().unwrap();
    assert!(
        spent > 0 && spent <= 30_000,
        "spent {spent} of a 30000 budget"
    );
    let status = Command::new("psql")
        .arg(&postgres)
        .args([
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}
