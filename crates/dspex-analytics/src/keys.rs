//! Virtual API keys: what the gateway hands to teams instead of the
//! providers' own keys, stored in the analytics store's `api_keys` table.
//!
//! A key is `sk-dspex-` and 64 hex digits (256 random bits from the OS's
//! generator through `rand`'s thread RNG). Only its **SHA-256** is stored,
//! with a short display prefix (`sk-dspex-3f9a`). SHA-256 rather than argon2:
//! argon2 (a slow, salted hash) protects *low-entropy* passwords from
//! guessing; a 256-bit random key cannot be guessed whatever the hash, and
//! the gateway must find a key on every request, which a deterministic hash
//! lets it do with one map lookup instead of tens of milliseconds of argon2
//! per request. A key's own text is returned once, by
//! [`Store::create_key`](crate::Store::create_key) or
//! [`Store::rotate_key`](crate::Store::rotate_key), and never again.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dspex_analytics::AnalyticsError> {
//! use dspex_analytics::Store;
//! use dspex_analytics::keys::{KeyLimits, hash_key};
//!
//! let store = Store::open(":memory:", None).await?;
//! let (key, secret) = store.create_key("team-a", &KeyLimits::default()).await?;
//! assert!(secret.expose().starts_with("sk-dspex-"));
//! let found = store.key_by_hash(&hash_key(secret.expose())).await?;
//! assert_eq!(found.map(|k| k.name), Some(key.name));
//! assert!(!format!("{secret:?}").contains(secret.expose()));
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::budget::BudgetPeriod;
use crate::error::{AnalyticsError, Result};

/// What every virtual key starts with.
pub const KEY_PREFIX: &str = "sk-dspex-";

/// Hex digits of the key kept as its display prefix (after [`KEY_PREFIX`]).
const DISPLAY_HEX: usize = 4;

/// A key's text. Its `Debug` and `Display` show only the display prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(String);

impl KeySecret {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let mut text = String::with_capacity(KEY_PREFIX.len() + 64);
        text.push_str(KEY_PREFIX);
        text.push_str(&hex(&bytes));
        Self(text)
    }

    /// The key's text: print it once to its owner, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its hash, as stored.
    pub fn hash(&self) -> KeyHash {
        hash_key(&self.0)
    }

    /// What lists show: `sk-dspex-` and the first hex digits.
    pub fn display_prefix(&self) -> String {
        display_prefix(&self.0)
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySecret({}…)", self.display_prefix())
    }
}

fn display_prefix(text: &str) -> String {
    text.chars()
        .take(KEY_PREFIX.len() + DISPLAY_HEX)
        .collect::<String>()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The SHA-256 of a key's text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

/// The stored hash of `text` (any text: an unknown key hashes to a hash no
/// key has).
pub fn hash_key(text: &str) -> KeyHash {
    KeyHash(Sha256::digest(text.as_bytes()).into())
}

impl KeyHash {
    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl FromStr for KeyHash {
    type Err = AnalyticsError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || AnalyticsError::Store {
            backend: "keys",
            message: format!("stored key hash `{text}` is not 64 hex digits"),
            retryable: false,
        };
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *slot = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// What a key may do. Every limit is optional; no models listed means every
/// model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyLimits {
    /// The spend limit per period, in nano-USD.
    pub budget_nanos: Option<i64>,
    /// The budget's period (`day` or `month`; `month` when absent).
    pub budget_period: Option<BudgetPeriod>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (input and output) per minute.
    pub tpm: Option<u64>,
    /// The models the key may name: `fast`, `openai/gpt-4o-mini`, `openai/*`
    /// or `*`.
    pub models: Vec<String>,
    /// When the key stops working, Unix milliseconds.
    pub expires_ms: Option<i64>,
}

impl KeyLimits {
    /// Checks what a caller wrote; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            AnalyticsError::Config(dspex_core::CoreError::config(key, message))
        };
        if self.budget_nanos.is_some_and(|b| b <= 0) {
            return Err(bad("budget_usd", "must be more than zero".into()));
        }
        if self.budget_period == Some(BudgetPeriod::Run) {
            return Err(bad(
                "period",
                "a key's budget period is `day` or `month`".into(),
            ));
        }
        if self.rpm == Some(0) {
            return Err(bad("rpm", "must be at least 1".into()));
        }
        if self.tpm == Some(0) {
            return Err(bad("tpm", "must be at least 1".into()));
        }
        if let Some(pattern) = self.models.iter().find(|m| !valid_pattern(m)) {
            return Err(bad(
                "models",
                format!("`{pattern}` is not a model name, `provider/*` or `*`"),
            ));
        }
        Ok(())
    }

    /// The budget period in force (`month` by default).
    pub fn period(&self) -> BudgetPeriod {
        self.budget_period.unwrap_or(BudgetPeriod::Month)
    }
}

/// A key's limits as a person writes them: `dspex keys create` flags or the
/// gateway's `POST /admin/keys` body. [`RawKeyLimits::validate`] turns it
/// into [`KeyLimits`], naming the field at fault.
///
/// ```
/// use dspex_analytics::keys::RawKeyLimits;
/// let raw: RawKeyLimits = serde_json::from_str(
///     r#"{"budget_usd": 50, "period": "month", "rpm": 600, "models": "openai/*,fast", "expires": "30d"}"#,
/// )?;
/// let limits = raw.validate(0)?;
/// assert_eq!(limits.budget_nanos, Some(50_000_000_000));
/// assert_eq!(limits.models, ["openai/*", "fast"]);
/// assert_eq!(limits.expires_ms, Some(30 * 86_400_000));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyLimits {
    /// The spend limit per period, in dollars.
    pub budget_usd: Option<f64>,
    /// `day` or `month`.
    pub period: Option<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Model patterns: a list, or one comma-separated string.
    pub models: Option<ModelList>,
    /// How long the key lives (`30d`, `12h`), from now.
    pub expires: Option<String>,
}

/// Model patterns as written: `["openai/*", "fast"]` or `"openai/*,fast"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum ModelList {
    /// A JSON list.
    List(Vec<String>),
    /// Comma-separated.
    Text(String),
}

impl RawKeyLimits {
    /// Phase two: checks every field against `now_ms` (for `expires`); errors
    /// name the field (`budget_usd`, `period`, `rpm`, `tpm`, `models`,
    /// `expires`).
    pub fn validate(&self, now_ms: i64) -> Result<KeyLimits> {
        let bad = |key: &str, message: String| {
            AnalyticsError::Config(dspex_core::CoreError::config(key, message))
        };
        let budget_nanos = match self.budget_usd {
            None => None,
            Some(usd) if usd.is_finite() && usd > 0.0 && usd <= 1e9 => {
                #[allow(clippy::cast_possible_truncation)] // bounded to 1e18 just above
                Some((usd * 1e9).round() as i64)
            }
            Some(usd) => {
                return Err(bad(
                    "budget_usd",
                    format!("`{usd}` is not an amount in dollars above 0 and at most 1e9"),
                ));
            }
        };
        let budget_period = match &self.period {
            None => None,
            Some(text) => Some(
                BudgetPeriod::parse(text)
                    .ok_or_else(|| bad("period", format!("`{text}` is not `day` or `month`")))?,
            ),
        };
        if budget_period.is_some() && budget_nanos.is_none() {
            return Err(bad(
                "period",
                "a period needs a budget (budget_usd)".to_owned(),
            ));
        }
        let models = match &self.models {
            None => Vec::new(),
            Some(ModelList::List(list)) => list.iter().map(|m| m.trim().to_owned()).collect(),
            Some(ModelList::Text(text)) => text
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        let expires_ms = match &self.expires {
            None => None,
            Some(text) => {
                let lifetime = crate::time::parse_relative_duration(text).ok_or_else(|| {
                    bad(
                        "expires",
                        format!("`{text}` is not a duration such as 30d, 12h or 90m"),
                    )
                })?;
                let millis = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
                Some(now_ms.saturating_add(millis))
            }
        };
        let limits = KeyLimits {
            budget_nanos,
            budget_period,
            rpm: self.rpm,
            tpm: self.tpm,
            models,
            expires_ms,
        };
        limits.validate()?;
        Ok(limits)
    }
}

fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && !pattern.chars().any(char::is_whitespace)
        && match pattern.find('*') {
            None => true,
            Some(at) => at + 1 == pattern.len() && (at == 0 || pattern[..at].ends_with('/')),
        }
}

/// Whether `pattern` (`*`, `provider/*`, or an exact name) admits `name`.
pub fn model_pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A stored key (never its text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// Its unique name (`team-a`); calls are tagged `key = name`.
    pub name: String,
    /// The SHA-256 of its text.
    #[serde(skip)]
    pub hash: KeyHash,
    /// `sk-dspex-` and the first hex digits, to tell keys apart.
    pub prefix: String,
    /// When it was created, Unix milliseconds.
    pub created_ms: i64,
    /// When it was last rotated or changed.
    pub updated_ms: i64,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
    /// What it may do.
    #[serde(flatten)]
    pub limits: KeyLimits,
}

/// Whether a key works now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// It may be used.
    Active,
    /// It was revoked.
    Revoked,
    /// It passed its expiry.
    Expired,
}

impl KeyState {
    /// `active`, `revoked` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl ApiKey {
    /// The key's state at `now_ms`.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_ms.is_some() {
            KeyState::Revoked
        } else if self.limits.expires_ms.is_some_and(|at| at <= now_ms) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Whether the key may use a model the caller named `requested` that
    /// routes to `provider/model`.
    pub fn allows_model(&self, requested: &str, provider: &str, model: &str) -> bool {
        if self.limits.models.is_empty() {
            return true;
        }
        let full = format!("{provider}/{model}");
        self.limits.models.iter().any(|pattern| {
            model_pattern_matches(pattern, requested) || model_pattern_matches(pattern, &full)
        })
    }
}

/// Builds a stored key from its columns (shared by both backends).
#[allow(clippy::too_many_arguments)] // one argument per column, named at the call
pub(crate) fn from_columns(
    name: String,
    hash: &str,
    prefix: String,
    created_ms: i64,
    updated_ms: i64,
    revoked_ms: Option<i64>,
    budget_nanos: Option<i64>,
    budget_period: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    models: &str,
    expires_ms: Option<i64>,
) -> Result<ApiKey> {
    let corrupt = |what: &str| AnalyticsError::Store {
        backend: "keys",
        message: format!("key `{name}`: stored {what} is invalid"),
        retryable: false,
    };
    let models: Vec<String> = serde_json::from_str(models).map_err(|_| corrupt("models"))?;
    let budget_period = match budget_period {
        Some(text) => Some(BudgetPeriod::parse(&text).ok_or_else(|| corrupt("budget_period"))?),
        None => None,
    };
    let count = |v: Option<i64>| v.map(|n| u64::try_from(n).unwrap_or(0));
    Ok(ApiKey {
        hash: hash.parse()?,
        prefix,
        created_ms,
        updated_ms,
        revoked_ms,
        limits: KeyLimits {
            budget_nanos,
            budget_period,
            rpm: count(rpm),
            tpm: count(tpm),
            models,
            expires_ms,
        },
        name,
    })
}

/// A new key's columns.
pub(crate) struct NewKey {
    pub(crate) secret: KeySecret,
    pub(crate) hash: String,
    pub(crate) prefix: String,
    pub(crate) models: String,
    pub(crate) period: Option<String>,
    pub(crate) rpm: Option<i64>,
    pub(crate) tpm: Option<i64>,
}

impl NewKey {
    pub(crate) fn new(name: &str, limits: &KeyLimits) -> Result<Self> {
        valid_name(name)?;
        limits.validate()?;
        let secret = KeySecret::generate();
        let count = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        Ok(Self {
            hash: secret.hash().to_string(),
            prefix: secret.display_prefix(),
            models: serde_json::to_string(&limits.models).unwrap_or_else(|_| "[]".into()),
            period: limits.budget_period.map(|p| p.to_string()),
            rpm: count(limits.rpm),
            tpm: count(limits.tpm),
            secret,
        })
    }

    /// A fresh secret for rotation.
    pub(crate) fn rotated() -> (KeySecret, String, String) {
        let secret = KeySecret::generate();
        let hash = secret.hash().to_string();
        let prefix = secret.display_prefix();
        (secret, hash, prefix)
    }
}

/// Names are what calls are tagged with and what `dspex costs` groups by:
/// short, printable, no spaces.
fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AnalyticsError::Config(dspex_core::CoreError::config(
            "name",
            format!("`{name}` is not a key name (1-64 letters, digits, `-_.@`)"),
        )))
    }
}

pub(crate) fn key_exists(name: &str) -> AnalyticsError {
    AnalyticsError::KeyExists {
        name: name.to_owned(),
    }
}

pub(crate) fn key_not_found(name: &str) -> AnalyticsError {
    AnalyticsError::KeyNotFound {
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_hashed_and_never_printed() {
        let a = KeySecret::generate();
        let b = KeySecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 64);
        assert_eq!(a.hash(), hash_key(a.expose()));
        let hash: KeyHash = a.hash().to_string().parse().expect("round trip");
        assert_eq!(hash, a.hash());
        for shown in [format!("{a:?}"), a.display_prefix()] {
            assert!(!shown.contains(a.expose()), "{shown}");
        }
    }

    #[test]
    fn model_patterns() {
        assert!(model_pattern_matches("*", "anything"));
        assert!(model_pattern_matches("openai/*", "openai/gpt-4o"));
        assert!(!model_pattern_matches("openai/*", "anthropic/claude"));
        assert!(model_pattern_matches("fast", "fast"));
        assert!(!model_pattern_matches("fast", "faster"));
        for bad in ["", "open*", "a b", "*/x"] {
            let limits = KeyLimits {
                models: vec![bad.into()],
                ..KeyLimits::default()
            };
            assert!(limits.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_limits_validate_naming_the_field() {
        let parse = |json: &str| {
            serde_json::from_str::<RawKeyLimits>(json)
                .map_err(|e| e.to_string())
                .and_then(|raw| raw.validate(1_000).map_err(|e| e.to_string()))
        };
        let limits =
            parse(r#"{"budget_usd": 0.5, "period": "day", "models": ["fast"], "tpm": 10}"#)
                .unwrap();
        assert_eq!(limits.budget_nanos, Some(500_000_000));
        assert_eq!(limits.budget_period, Some(BudgetPeriod::Day));
        assert_eq!(limits.tpm, Some(10));
        assert_eq!(
            parse(r#"{"expires": "1h"}"#).unwrap().expires_ms,
            Some(3_601_000)
        );
        assert_eq!(parse("{}").unwrap(), KeyLimits::default());
        for (json, field) in [
            (r#"{"budget_usd": -1}"#, "budget_usd"),
            (r#"{"budget_usd": 1, "period": "run"}"#, "period"),
            (r#"{"period": "day"}"#, "period"),
            (r#"{"rpm": 0}"#, "rpm"),
            (r#"{"models": "open*"}"#, "models"),
            (r#"{"expires": "soon"}"#, "expires"),
            (r#"{"budget": 1}"#, "budget"),
        ] {
            let error = parse(json).unwrap_err();
            assert!(error.contains(field), "{json}: {error}");
        }
    }

    #[test]
    fn states_and_models() {
        let key = ApiKey {
            name: "t".into(),
            hash: hash_key("x"),
            prefix: "sk-dspex-0000".into(),
            created_ms: 0,
            updated_ms: 0,
            revoked_ms: None,
            limits: KeyLimits {
                models: vec!["openai/*".into(), "fast".into()],
                expires_ms: Some(1_000),
                ..KeyLimits::default()
            },
        };
        assert_eq!(key.state(999), KeyState::Active);
        assert_eq!(key.state(1_000), KeyState::Expired);
        assert!(key.allows_model("fast", "anthropic", "claude"));
        assert!(key.allows_model("gpt-4o", "openai", "gpt-4o"));
        assert!(!key.allows_model("anthropic/claude", "anthropic", "claude"));
    }
}
