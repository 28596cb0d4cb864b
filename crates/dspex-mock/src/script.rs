//! Scripted replies: rules matched against the prompt, then a cycle of replies.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A script of replies, as read from `--script FILE` or built in code.
///
/// The file format is JSON:
///
/// ```json
/// {"replies": ["first", "second"], "rules": [{"contains": "capital of France", "reply": "Paris"}]}
/// ```
///
/// For each chat or messages request, `rules` are tried first, in order, against the
/// whole prompt text (the system prompt and every message's text joined with
/// newlines); the first rule whose `contains` is a substring of it gives the reply.
/// Otherwise the `replies` are used in order, cycling. Otherwise the server falls
/// back to its built-in replies (DSPy-style fields or an echo).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Replies used in order (cycling) when no rule matches.
    #[serde(default)]
    pub replies: Vec<String>,
    /// Rules tried in order before `replies`.
    #[serde(default)]
    pub rules: Vec<ScriptRule>,
}

/// One rule of a [`Script`]: if the prompt contains `contains`, answer `reply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    /// Substring looked for in the whole prompt text (case-sensitive).
    pub contains: String,
    /// The reply content when it is found.
    pub reply: String,
}

/// Why a script file could not be used. The message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read script file {}: {source}", path.display())]
    Read {
        /// The script file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error(
        "script file {} is not a valid script ({source}); expected {{\"replies\": [\"...\"], \"rules\": [{{\"contains\": \"...\", \"reply\": \"...\"}}]}}",
        path.display()
    )]
    Parse {
        /// The script file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The file parsed but its content cannot be used.
    #[error("script file {}: {message}", path.display())]
    Invalid {
        /// The script file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Script {
    /// A script that cycles through these replies.
    pub fn replies<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            replies: replies.into_iter().map(Into::into).collect(),
            rules: Vec::new(),
        }
    }

    /// Adds a rule: prompts containing `contains` get `reply`.
    #[must_use]
    pub fn rule(mut self, contains: impl Into<String>, reply: impl Into<String>) -> Self {
        self.rules.push(ScriptRule {
            contains: contains.into(),
            reply: reply.into(),
        });
        self
    }

    /// Reads and checks a script file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScriptError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        let script: Self = serde_json::from_str(&text).map_err(|source| ScriptError::Parse {
            path: path.to_owned(),
            source,
        })?;
        script.check().map_err(|message| ScriptError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(script)
    }

    /// Checks that the script can be used: it has a reply or a rule, and no rule
    /// has an empty `contains`.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.replies.is_empty() && self.rules.is_empty() {
            return Err("the script has neither `replies` nor `rules`".to_owned());
        }
        if let Some(index) = self.rules.iter().position(|rule| rule.contains.is_empty()) {
            return Err(format!("rules[{index}].contains is empty"));
        }
        Ok(())
    }

    /// The reply of the first rule that matches the prompt text.
    pub(crate) fn rule_reply(&self, prompt_text: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| prompt_text.contains(rule.contains.as_str()))
            .map(|rule| rule.reply.as_str())
    }

    /// The reply at this position of the cycle, if there are replies.
    pub(crate) fn cycled_reply(&self, position: usize) -> Option<&str> {
        if self.replies.is_empty() {
            return None;
        }
        self.replies
            .get(position % self.replies.len())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_then_cycle() {
        let script = Script::replies(["a", "b"]).rule("France", "Paris");
        assert_eq!(script.rule_reply("capital of France?"), Some("Paris"));
        assert_eq!(script.rule_reply("capital of Spain?"), None);
        assert_eq!(script.cycled_reply(0), Some("a"));
        assert_eq!(script.cycled_reply(3), Some("b"));
        assert_eq!(Script::default().cycled_reply(0), None);
    }

    #[test]
    fn check_rejects_empty() {
        assert!(Script::default().check().is_err());
        assert!(Script::default().rule("", "x").check().is_err());
    }
}
