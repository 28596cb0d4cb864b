//! `dspex optimize` with every optimiser, as a process against the mock
//! upstream: each writes a program `dspex eval --program` runs and a JSON
//! report; a run killed with SIGKILL resumes from its checkpoint to the
//! same program as a run never killed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use dspex::mock::{MockConfig, MockServer};
use serde_json::Value;
use tokio::process::Command;

fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("DSPEX_LOG");
    command
}

async fn dspex(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = command(dir).args(args).output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A directory with a config naming the mock and a small dataset the mock
/// answers half right (it answers `mock answer for: <question>`).
fn setup(upstream: &MockServer) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dspex.toml"),
        format!(
            "[providers.mock]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"gpt-4o-mini\"\nmax_retries = 0\n\n[analytics]\nstore = \"{}\"\n",
            upstream.base_url(),
            dir.path().join("analytics.sqlite").display()
        ),
    )
    .unwrap();
    let lines: String = (0..6)
        .map(|i| {
            let answer = if i % 2 == 0 {
                format!("mock answer for: q{i}")
            } else {
                "something else".to_owned()
            };
            format!("{{\"question\": \"q{i}\", \"answer\": \"{answer}\"}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("train.jsonl"), &lines).unwrap();
    std::fs::write(dir.path().join("val.jsonl"), &lines).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_optimizer_writes_a_program_and_a_report() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = setup(&upstream);
    for (optimizer, extra) in [
        (
            "random-search",
            vec!["--num-candidates", "2", "--max-labeled", "2"],
        ),
        ("copro", vec!["--breadth", "2", "--depth", "2"]),
        ("mipro", vec!["--num-candidates", "3", "--num-trials", "4"]),
        ("gepa", vec!["--max-metric-calls", "24"]),
        ("knn", vec!["--k", "2"]),
    ] {
        let out = format!("{optimizer}.json");
        let mut args = vec![
            "optimize",
            "--optimizer",
            optimizer,
            "--train",
            "train.jsonl",
            "--val",
            "val.jsonl",
            "--seed",
            "3",
            "--json",
            "--out",
            &out,
        ];
        args.extend(extra);
        args.push("question -> answer");
        let (code, stdout, stderr) = dspex(dir.path(), &args).await;
        assert_eq!(code, 0, "{optimizer}: {stderr}");
        let report: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{optimizer}: {e}: {stdout}"));
        assert_eq!(report["optimizer"], optimizer, "{report}");
        let best = report["best"]["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&best), "{report}");
        if optimizer != "knn" {
            assert!(report["trials"].as_array().unwrap().len() >= 2, "{report}");
            assert!(
                report["spend"]["task"]["calls"].as_u64().unwrap() > 0,
                "{report}"
            );
            assert!(
                report["best"]["ci95"][0].as_f64().unwrap() <= best,
                "{report}"
            );
        }
        // The program runs with `dspex eval --program`.
        let (code, stdout, stderr) = dspex(
            dir.path(),
            &["eval", "--data", "val.jsonl", "--program", &out, "--json"],
        )
        .await;
        assert_eq!(code, 0, "{optimizer}: {stderr}");
        let eval: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(eval["total"], 6, "{eval}");
    }
    // A workflow of three predictors compiles and runs the same way.
    let workflow = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi_hop_qa.toml");
    let workflow = workflow.to_str().unwrap();
    let (code, stdout, stderr) = dspex(
        dir.path(),
        &[
            "optimize",
            "--optimizer",
            "mipro",
            "--num-candidates",
            "2",
            "--num-trials",
            "3",
            "--train",
            "train.jsonl",
            "--seed",
            "1",
            "--json",
            "--out",
            "workflow.json",
            "--workflow",
            workflow,
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["optimizer"], "mipro");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("workflow.json")).unwrap())
            .unwrap();
    assert_eq!(saved["predictors"].as_object().unwrap().len(), 3, "{saved}");
    let (code, _, stderr) = dspex(
        dir.path(),
        &[
            "eval",
            "--data",
            "val.jsonl",
            "--workflow",
            workflow,
            "--program",
            "workflow.json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");

    // Bad settings name the flag or key.
    let (code, _, stderr) = dspex(
        dir.path(),
        &[
            "optimize",
            "--optimizer",
            "adam",
            "--train",
            "train.jsonl",
            "--out",
            "x.json",
            "question -> answer",
        ],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--optimizer"), "{stderr}");
    std::fs::write(
        dir.path().join("dspex.toml"),
        format!(
            "[providers.mock]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[optimize]\nmax_usd = -2\n",
            upstream.base_url()
        ),
    )
    .unwrap();
    let (code, _, stderr) = dspex(
        dir.path(),
        &[
            "optimize",
            "--optimizer",
            "copro",
            "--train",
            "train.jsonl",
            "--out",
            "x.json",
            "question -> answer",
        ],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("optimize.max_usd"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_optimize_resumes_from_its_checkpoint_to_the_same_program() {
    // Slow replies, so the kill lands in the middle of the run.
    let upstream = MockServer::start(MockConfig {
        latency_ms: 40,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = setup(&upstream);
    let args = |out: &str, checkpoint: Option<&str>, resume: bool| {
        let mut args: Vec<String> = [
            "optimize",
            "--optimizer",
            "random-search",
            "--num-candidates",
            "8",
            "--max-labeled",
            "2",
            "--train",
            "train.jsonl",
            "--val",
            "val.jsonl",
            "--seed",
            "5",
            "--json",
            "--out",
            out,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(checkpoint) = checkpoint {
            args.extend(["--checkpoint".to_owned(), checkpoint.to_owned()]);
        }
        if resume {
            args.push("--resume".to_owned());
        }
        args.push("question -> answer".to_owned());
        args
    };
    let (code, _, stderr) = dspex(
        dir.path(),
        &args("whole.json", None, false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");

    let mut child = command(dir.path())
        .args(args("killed.json", Some("run.ckpt"), false))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let checkpoint = dir.path().join("run.ckpt");
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&checkpoint)
                && let Ok(file) = serde_json::from_str::<Value>(&text)
                && file["ledger"]["trials"]
                    .as_array()
                    .is_some_and(|t| t.len() >= 4)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "no checkpoint with four trials appeared");
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed before it finished");
    assert!(!dir.path().join("killed.json").exists());

    let (code, stdout, stderr) = dspex(
        dir.path(),
        &args("resumed.json", Some("run.ckpt"), true)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["resumed_trials"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("resumed.json")).unwrap(),
        std::fs::read_to_string(dir.path().join("whole.json")).unwrap(),
        "the resumed run wrote the same program"
    );
}

/// Every call refused (a wrong key): `optimize` learns nothing, so it exits
/// 3 (the calls failed, not a usage error) and writes no program; `eval`
/// exits 3 too and still prints its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_call_fails_optimize_writes_nothing_and_eval_reports_with_exit_3() {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some("sk-the-right-key".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = setup(&upstream);
    for (optimizer, extra) in [
        ("random-search", vec!["--num-candidates", "2"]),
        ("copro", vec!["--breadth", "2", "--depth", "1"]),
        ("bootstrap", vec![]),
    ] {
        let out = format!("{optimizer}.json");
        let mut args = vec![
            "optimize",
            "--optimizer",
            optimizer,
            "--train",
            "train.jsonl",
            "--val",
            "val.jsonl",
            "--out",
            &out,
        ];
        args.extend(extra);
        args.push("question -> answer");
        let (code, _, stderr) = dspex(dir.path(), &args).await;
        assert_eq!(code, 3, "{optimizer}: {stderr}");
        assert!(
            stderr.contains("nothing was learnt"),
            "{optimizer}: {stderr}"
        );
        assert!(!dir.path().join(&out).exists(), "{optimizer} wrote {out}");
    }
    let (code, stdout, stderr) = dspex(
        dir.path(),
        &["eval", "--data", "val.jsonl", "question -> answer"],
    )
    .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("every example failed"), "{stderr}");
    assert!(
        stdout.contains("example #1 failed"),
        "the report is printed: {stdout}"
    );
}
