//! The harness the `dspex` binary's end-to-end tests share: run the binary
//! in a folder with a clean environment, and write its config.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// What a run of the binary did.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `dspex args` in `dir` with `env` added to an environment cleared
/// of every variable that would configure it from outside the test.
pub(crate) async fn dspex(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("DSPEX_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `text` as `dir/dspex.toml`.
pub(crate) fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("dspex.toml");
    std::fs::write(&path, text).unwrap();
    path
}
