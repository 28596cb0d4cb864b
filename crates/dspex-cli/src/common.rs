//! What the commands share: output, failures and exit codes, config loading.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use dspex::core::config::ConfigLoader;
use dspex::{ClientConfig, ClientError, ClientErrorKind, Runtime, RuntimeError};

/// Writes a line to stdout; a closed pipe is not an error worth a panic.
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

/// Writes a line to stderr.
pub(crate) fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}

/// A failed command and its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments or config: exit 2.
    Usage(anyhow::Error),
    /// The provider failed: exit 3.
    Provider(ClientError),
    /// The program failed after calling the provider (a reply that would not
    /// parse): exit 3.
    Program(dspex::PromptError),
    /// A workflow step failed: exit 3 (the step history goes to stderr first).
    Workflow(dspex::workflow::WorkflowError),
    /// The calls failed as a whole (every example of an evaluation, every
    /// rollout of an optimisation), though each was handled: exit 3.
    Calls(anyhow::Error),
}

impl Failure {
    pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self::Usage(error.into())
    }

    /// The error itself, for the commands that report through `anyhow`.
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            Self::Usage(error) | Self::Calls(error) => error,
            Self::Provider(error) => error.into(),
            Self::Program(error) => error.into(),
            Self::Workflow(error) => error.into(),
        }
    }

    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::Usage(error) => {
                err(&format!("error: {error:#}"));
                ExitCode::from(2)
            }
            Self::Program(error) => {
                err(&format!("error: {error}"));
                if let dspex::PromptError::Parse { reply, .. } = &error {
                    err(&format!("  the reply was: {}", excerpt(reply, 600)));
                }
                ExitCode::from(3)
            }
            Self::Workflow(error) => {
                err(&format!("error: {error}"));
                ExitCode::from(3)
            }
            Self::Calls(error) => {
                err(&format!("error: {error:#}"));
                ExitCode::from(3)
            }
            Self::Provider(error) => {
                err(&format!("error: {error}"));
                if let Some(context) = error.context() {
                    err(&format!("  correlation id: {}", context.correlation_id));
                    for crumb in &context.breadcrumbs {
                        err(&format!("  {crumb}"));
                    }
                }
                ExitCode::from(3)
            }
        }
    }
}

/// `text` cut to at most `max` characters (on a character boundary), with
/// an ellipsis when cut, quoted so whitespace shows.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error.kind() {
            ClientErrorKind::Config(_)
            | ClientErrorKind::UnknownProvider { .. }
            | ClientErrorKind::InvalidRequest => Self::Usage(error.into()),
            _ => Self::Provider(error),
        }
    }
}

impl From<RuntimeError> for Failure {
    fn from(error: RuntimeError) -> Self {
        match error {
            RuntimeError::Client(error) => Self::from(error),
            other => Self::Usage(other.into()),
        }
    }
}

impl From<dspex::core::CoreError> for Failure {
    fn from(error: dspex::core::CoreError) -> Self {
        Self::Usage(error.into())
    }
}

/// The config loader of `path` (or the file discovered), with every
/// section of the file checked first, so a bad file is refused before any
/// work with all its problems at once, each pointing at its line and column
/// (see [`config_errors`]).
pub(crate) fn loader(path: Option<&Path>) -> Result<ConfigLoader, Failure> {
    let loader = Runtime::loader(path).map_err(|e| runtime_failure(None, e))?;
    let problems = config_errors(&loader);
    if problems.is_empty() {
        Ok(loader)
    } else {
        Err(Failure::usage(anyhow::anyhow!(
            "{}",
            problems.join("\n\nerror: ")
        )))
    }
}

/// Every problem of every section `loader`'s file has, each as its message:
/// a config error with its place in the file (line, column, the line
/// quoted), or the variable that set the value.
pub(crate) fn config_errors(loader: &ConfigLoader) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |result: Option<anyhow::Error>| {
        if let Some(error) = result {
            problems.push(located(loader, &error));
        }
    };
    check(ClientConfig::load(loader).err().map(anyhow::Error::from));
    check(
        dspex::cache::CacheConfig::load(loader)
            .err()
            .map(anyhow::Error::from),
    );
    check(
        dspex::analytics::AnalyticsConfig::load(loader)
            .err()
            .map(anyhow::Error::from),
    );
    check(
        dspex::prompt::optimize::config::OptimizeConfig::load(loader)
            .err()
            .map(|e| match e {
                dspex::PromptError::Config(core) => anyhow::Error::from(core),
                other => anyhow::Error::from(other),
            }),
    );
    check(
        dspex::gateway::GatewayConfig::load(loader)
            .err()
            .map(|e| match e {
                dspex::gateway::GatewayError::Config(core) => anyhow::Error::from(core),
                other => anyhow::Error::from(other),
            }),
    );
    check(dspex::mcp::McpServers::load(loader).err().map(|e| match e {
        dspex::mcp::McpError::Config(core) => anyhow::Error::from(core),
        other => anyhow::Error::from(other),
    }));
    problems
}

/// `error`'s message: a config error anywhere in its chain located in
/// `loader`'s file (the wrappers' words dropped: the key path says where);
/// any other error as it is, with its causes.
pub(crate) fn located(loader: &ConfigLoader, error: &anyhow::Error) -> String {
    match config_error(error) {
        Some(core) => loader.locate(core.clone()).to_string(),
        None => format!("{error:#}"),
    }
}

/// The config error in `error`'s chain, if there is one. The crates'
/// errors wrap it transparently (their `source` skips it), so each is
/// looked into by name.
fn config_error(error: &anyhow::Error) -> Option<&dspex::core::CoreError> {
    use dspex::core::CoreError;
    error.chain().find_map(|cause| {
        let core: &CoreError = if let Some(core) = cause.downcast_ref::<CoreError>() {
            core
        } else if let Some(RuntimeError::Config(core)) = cause.downcast_ref::<RuntimeError>() {
            core
        } else if let Some(RuntimeError::Mcp(dspex::mcp::McpError::Config(core))) =
            cause.downcast_ref::<RuntimeError>()
        {
            core
        } else if let Some(RuntimeError::Client(client)) = cause.downcast_ref::<RuntimeError>() {
            match client.kind() {
                ClientErrorKind::Config(core) => core,
                _ => return None,
            }
        } else if let Some(dspex::analytics::AnalyticsError::Config(core)) = cause.downcast_ref() {
            core
        } else if let Some(dspex::cache::CacheError::Config(core)) =
            cause.downcast_ref::<dspex::cache::CacheError>()
        {
            core
        } else if let Some(dspex::PromptError::Config(core)) = cause.downcast_ref() {
            core
        } else if let Some(dspex::gateway::GatewayError::Config(core)) = cause.downcast_ref() {
            core
        } else if let Some(dspex::mcp::McpError::Config(core)) = cause.downcast_ref() {
            core
        } else if let Some(client) = cause.downcast_ref::<ClientError>() {
            match client.kind() {
                ClientErrorKind::Config(core) => core,
                _ => return None,
            }
        } else {
            return None;
        };
        matches!(core, CoreError::Config { .. }).then_some(core)
    })
}

/// The failure of a runtime error: a config error (located in `loader`'s
/// file when there is one) is a usage error.
fn runtime_failure(loader: Option<&ConfigLoader>, error: RuntimeError) -> Failure {
    let error = anyhow::Error::from(error);
    match (config_error(&error), loader) {
        (Some(core), Some(loader)) => {
            Failure::usage(anyhow::anyhow!("{}", loader.locate(core.clone())))
        }
        (Some(core), None) => Failure::usage(anyhow::anyhow!("{core}")),
        (None, _) => match error.downcast::<RuntimeError>() {
            Ok(error) => Failure::from(error),
            Err(error) => Failure::Usage(error),
        },
    }
}

/// The runtime of the config at `path` (or the one discovered).
pub(crate) async fn runtime(path: Option<&Path>) -> Result<Runtime, Failure> {
    let loader = loader(path)?;
    Runtime::from_config(&loader)
        .await
        .map_err(|e| runtime_failure(Some(&loader), e))
}

/// The runtime and the provider to call: the one named, else the default.
pub(crate) async fn runtime_for(
    path: Option<&Path>,
    provider: Option<&str>,
) -> Result<(Runtime, String), Failure> {
    let runtime = runtime(path).await?;
    let provider = runtime.provider(provider).map_err(|e| match e {
        RuntimeError::NoProvider { message } if message.contains("several") => {
            Failure::usage(anyhow::anyhow!("{message} with --provider"))
        }
        other => Failure::from(other),
    })?;
    Ok((runtime, provider))
}

/// Ends a command: flushes what its calls recorded (always, whatever
/// `result` is), warns about rows the store refused, and returns `result`.
pub(crate) async fn finish(runtime: Runtime, result: Result<(), Failure>) -> Result<(), Failure> {
    match runtime.shutdown().await {
        Ok(report) => {
            if let Some(stats) = report.recorded
                && stats.rows_lost > 0
            {
                err(&format!(
                    "warning: {} call record(s) could not be written to the analytics store",
                    stats.rows_lost
                ));
            }
        }
        Err(error) => err(&format!("warning: analytics recorder: {error}")),
    }
    result
}

/// The embedder `[cache]` names (`lexical` by default; `local` with the
/// `local-embeddings` feature; `api`: the default provider's embeddings),
/// for KNNFewShot.
pub(crate) async fn embedder_for(
    config: Option<&Path>,
    runtime: &Runtime,
) -> Result<std::sync::Arc<dyn dspex::cache::Embedder>, Failure> {
    let loader = loader(config)?;
    let cache = dspex::cache::CacheConfig::load(&loader).map_err(Failure::usage)?;
    if cache.embedder == dspex::cache::EmbedderKind::Api {
        let provider = runtime.provider(None)?;
        let embedder = dspex::ApiEmbedder::new(runtime.client(), &provider, None, 0.9)
            .await
            .map_err(Failure::from)?;
        return Ok(std::sync::Arc::new(embedder));
    }
    dspex::cache::embedder_from_config(&cache).map_err(Failure::usage)
}
