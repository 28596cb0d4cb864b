//! The `dspex` binary on bad files: every error names the file, the line
//! and column of the offending key or value, and quotes the line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stderr: String,
}

fn dspex(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("DSPEX_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

const PROVIDER: &str =
    "[providers.mock]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nmodel = \"m\"\n";

#[test]
fn a_value_of_the_wrong_type_is_quoted_at_its_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dspex.toml"),
        format!("{PROVIDER}max_retries = 0\npool_size = \"eight\"\n"),
    )
    .unwrap();
    let run = dspex(dir.path(), &["chat", "hi"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "error: providers.mock.pool_size: invalid type: found string \"eight\", expected u32\n  --> dspex.toml:6:13\n   |\n 6 | pool_size = \"eight\"\n   |             ^^^^^^^\n"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_value_refused_by_validation_is_located_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dspex.toml"),
        format!("{PROVIDER}pool_size = 0\n"),
    )
    .unwrap();
    let run = dspex(dir.path(), &["chat", "hi"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("  --> dspex.toml:5:13\n   |\n 5 | pool_size = 0\n   |             ^\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.starts_with("error: providers.mock.pool_size: "),
        "{}",
        run.stderr
    );
}

#[test]
fn every_unknown_key_of_every_section_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dspex.toml"),
        format!("{PROVIDER}pool_sise = 4\n\n[cache]\nttl = \"1h\"\nl1_entriess = 10\n"),
    )
    .unwrap();
    let run = dspex(dir.path(), &["chat", "hi"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for expected in [
        "  --> dspex.toml:5:1\n   |\n 5 | pool_sise = 4\n   | ^^^^^^^^^ unknown key `pool_sise`",
        "  --> dspex.toml:9:1\n   |\n 9 | l1_entriess = 10\n   | ^^^^^^^^^^^ unknown key `l1_entriess`",
    ] {
        assert!(run.stderr.contains(expected), "{}", run.stderr);
    }
}

#[test]
fn a_value_from_the_environment_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dspex.toml"), PROVIDER).unwrap();
    let run = dspex(
        dir.path(),
        &["chat", "hi"],
        &[("DSPEX_PROVIDERS__MOCK__POOL_SIZE", "0")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("providers.mock.pool_size` (from DSPEX_PROVIDERS__MOCK__POOL_SIZE)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("-->"), "{}", run.stderr);
}

#[test]
fn a_workflow_step_error_points_at_the_key_not_the_step() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dspex.toml"), PROVIDER).unwrap();
    let flow = "name = \"w\"\ninputs = [\"q\"]\n\n[[steps]]\nname = \"a\"\n\nsignature = \"q -> \"\nmodule = \"predict\"\n";
    std::fs::write(dir.path().join("flow.toml"), flow).unwrap();
    let run = dspex(dir.path(), &["run", "flow.toml", "-i", "q=x"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "  --> flow.toml:7:13\n   |\n 7 | signature = \"q -> \"\n   |             ^^^^^^^"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_dataset_line_is_quoted_at_its_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dspex.toml"), PROVIDER).unwrap();
    std::fs::write(
        dir.path().join("data.jsonl"),
        "{\"question\": \"a\", \"answer\": \"b\"}\n{\"question\" \"c\"}\n",
    )
    .unwrap();
    let run = dspex(
        dir.path(),
        &["eval", "question -> answer", "--data", "data.jsonl"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("  --> data.jsonl:2:13\n   |\n 2 | {\"question\" \"c\"}\n   |             ^"),
        "{}",
        run.stderr
    );
}
