//! The mock's configuration: latency, fault fractions, limits, script and auth.

use std::io;
use std::path::PathBuf;

use crate::script::Script;

/// The models listed by `GET /v1/models` unless configured otherwise.
pub const DEFAULT_MODELS: [&str; 3] = ["mock-model", "gpt-4o-mini", "claude-3-5-haiku-latest"];

/// Configuration of a [`MockServer`](crate::MockServer).
///
/// Every field is also a command-line flag (this type is a [`clap::Args`]), so the
/// CLI can flatten it into `dspex mock-server`. [`MockConfig::default`] gives the
/// same values as parsing no flags at all: an instant, fault-free echo server.
///
/// Fractions (`fail_429`, `fail_500`, `hang`, `malformed`, `truncate`) must lie in
/// `0.0..=1.0`. They are taken from one deterministic draw per request, in that
/// order, so `fail_429 = 0.1, fail_500 = 0.1` makes 10 % of requests 429 and another
/// 10 % 500. If they add up to more than 1 the later kinds get what is left.
#[derive(Clone, clap::Args)]
pub struct MockConfig {
    /// Latency in milliseconds added before every reply.
    #[arg(long = "latency-ms", default_value_t = 0)]
    pub latency_ms: u64,

    /// Uniform extra latency in milliseconds, `0..=jitter_ms`, chosen deterministically per request.
    #[arg(long = "jitter-ms", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Fraction (0..1) of model requests answered 429 with a `Retry-After` header.
    #[arg(long = "fail-429", default_value_t = 0.0)]
    pub fail_429: f64,

    /// Seconds sent as `Retry-After` on 429s injected by `fail_429`. (Limit 429s send
    /// the time until the window has room; a queued `Fault::Status` sends its own
    /// `retry_after_secs`.)
    #[arg(long = "retry-after", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Fraction (0..1) of model requests answered 500.
    #[arg(long = "fail-500", default_value_t = 0.0)]
    pub fail_500: f64,

    /// Fraction (0..1) of model requests that sleep `hang_ms` before answering.
    #[arg(long = "hang", default_value_t = 0.0)]
    pub hang: f64,

    /// How long a hanging request sleeps, in milliseconds.
    #[arg(long = "hang-ms", default_value_t = 3_600_000)]
    pub hang_ms: u64,

    /// Fraction (0..1) answered 200 with a body that is not valid JSON (or a garbled SSE event).
    #[arg(long = "malformed", default_value_t = 0.0)]
    pub malformed: f64,

    /// Fraction (0..1) whose body stops halfway (streams end without `[DONE]` / `message_stop`).
    #[arg(long = "truncate", default_value_t = 0.0)]
    pub truncate: f64,

    /// Server-side requests-per-minute limit over a sliding 60 s window.
    #[arg(long = "rpm")]
    pub rpm: Option<u64>,

    /// Server-side tokens-per-minute limit over a sliding 60 s window
    /// (prompt tokens plus `max_tokens`, or the reply's tokens when absent).
    #[arg(long = "tpm")]
    pub tpm: Option<u64>,

    /// A JSON script of replies: `{"replies": [...], "rules": [{"contains": "...", "reply": "..."}]}`;
    /// a rule or reply may answer with `"tool_calls": [{"name": "...", "arguments": {...}}]`
    /// (text optional then), and a rule with `"last": true` matches only the last turn.
    #[arg(long = "script", value_name = "FILE")]
    pub script: Option<PathBuf>,

    /// A script given programmatically (see [`MockConfig::with_script`]); it takes
    /// precedence over [`MockConfig::script`].
    #[arg(skip)]
    pub inline_script: Option<Script>,

    /// Seed that makes fault selection and jitter deterministic.
    #[arg(long = "seed", default_value_t = 0)]
    pub seed: u64,

    /// If set, model routes and `/v1/models` demand this key (`Authorization: Bearer <key>`
    /// on OpenAI routes, `x-api-key: <key>` on `/v1/messages`) and answer 401 otherwise. The
    /// 401 message quotes the key that was sent in full, like a careless provider.
    #[arg(long = "require-api-key", value_name = "KEY")]
    pub require_api_key: Option<String>,

    /// Keep the last N model requests (see `MockServer::recorded`).
    #[arg(long = "record-requests", default_value_t = 0)]
    pub record_requests: usize,

    /// Characters (not bytes) per streamed delta.
    #[arg(long = "chunk-chars", default_value_t = 16)]
    pub chunk_chars: usize,

    /// Model ids listed by `GET /v1/models` (repeat the flag for several).
    #[arg(long = "model", value_name = "ID", default_values_t = DEFAULT_MODELS.map(String::from))]
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            fail_429: 0.0,
            retry_after_secs: 1,
            fail_500: 0.0,
            hang: 0.0,
            hang_ms: 3_600_000,
            malformed: 0.0,
            truncate: 0.0,
            rpm: None,
            tpm: None,
            script: None,
            inline_script: None,
            seed: 0,
            require_api_key: None,
            record_requests: 0,
            chunk_chars: 16,
            models: DEFAULT_MODELS.map(String::from).to_vec(),
        }
    }
}

impl MockConfig {
    /// Use this script instead of a script file.
    #[must_use]
    pub fn with_script(mut self, script: Script) -> Self {
        self.inline_script = Some(script);
        self
    }

    /// Checks the values and loads the script, if any.
    ///
    /// Errors are [`io::ErrorKind::InvalidInput`] for out-of-range values and
    /// [`io::ErrorKind::InvalidData`] for a bad script file (the message names the
    /// file and the problem).
    pub(crate) fn validate(&self) -> io::Result<Option<Script>> {
        let fractions = [
            ("fail_429", self.fail_429),
            ("fail_500", self.fail_500),
            ("hang", self.hang),
            ("malformed", self.malformed),
            ("truncate", self.truncate),
        ];
        for (name, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} must be a fraction between 0 and 1, got {value}"),
                ));
            }
        }
        if self.chunk_chars == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk_chars must be at least 1",
            ));
        }
        if let Some(script) = &self.inline_script {
            script
                .check()
                .map_err(|message| io::Error::new(io::ErrorKind::InvalidData, message))?;
            return Ok(Some(script.clone()));
        }
        match &self.script {
            Some(path) => Script::from_file(path)
                .map(Some)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockConfig,
    }

    #[test]
    fn command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--fail-429"));
        assert!(help.contains("--require-api-key"));
    }

    #[test]
    fn default_matches_no_flags() {
        let parsed = Cli::parse_from(["mock"]).mock;
        let default = MockConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn flags_parse() {
        let parsed = Cli::parse_from([
            "mock",
            "--latency-ms",
            "5",
            "--fail-429",
            "0.25",
            "--rpm",
            "10",
            "--model",
            "a",
            "--model",
            "b",
            "--require-api-key",
            "sk-x",
        ])
        .mock;
        assert_eq!(parsed.latency_ms, 5);
        assert!((parsed.fail_429 - 0.25).abs() < f64::EPSILON);
        assert_eq!(parsed.rpm, Some(10));
        assert_eq!(parsed.models, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(parsed.require_api_key.as_deref(), Some("sk-x"));
    }

    #[test]
    fn rejects_bad_fraction() {
        let config = MockConfig {
            hang: 1.5,
            ..MockConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let config = MockConfig {
            malformed: f64::NAN,
            ..MockConfig::default()
        };
        assert!(config.validate().is_err());
    }
}

impl std::fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The expected key is a secret like any other: never printed.
        f.debug_struct("MockConfig")
            .field("latency_ms", &self.latency_ms)
            .field("jitter_ms", &self.jitter_ms)
            .field("fail_429", &self.fail_429)
            .field("fail_500", &self.fail_500)
            .field("hang", &self.hang)
            .field("malformed", &self.malformed)
            .field("truncate", &self.truncate)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("script", &self.script)
            .field("seed", &self.seed)
            .field(
                "require_api_key",
                &self.require_api_key.as_ref().map(|_| "[redacted]"),
            )
            .field("record_requests", &self.record_requests)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_expected_key() {
        let config = MockConfig {
            require_api_key: Some("sk-mock-secret-123".into()),
            ..MockConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("sk-mock-secret-123"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}
