//! `dspex keys`: the gateway's virtual keys, in the analytics store.
//!
//! ```text
//! dspex keys create --name team-a --budget-usd 50 --period month --rpm 600 --tpm 200000 \
//!     --models 'openai/*,fast' --expires 30d     # prints the key once
//! dspex keys list [--json]
//! dspex keys rotate team-a                       # a new text; the old one stops working
//! dspex keys revoke team-a
//! ```
//!
//! Reads the store named by `analytics.store` in `dspex.toml` (default
//! `dspex-analytics.sqlite`), or by `--store`: the one `dspex serve` uses.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use dspex::analytics::keys::{ApiKey, ModelList, RawKeyLimits};
use dspex::analytics::prices::format_usd;
use dspex::analytics::time::{format_rfc3339, unix_ms};
use dspex::analytics::{AnalyticsConfig, Store};

use crate::common;

#[derive(clap::Args, Debug)]
pub(crate) struct KeysArgs {
    /// The store, overriding `analytics.store`: a SQLite file or a postgres:// URL.
    #[arg(long, global = true, value_name = "PATH|URL")]
    store: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (the only time its text is shown).
    Create(CreateArgs),
    /// List the keys (never their text).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new text; the old text stops working.
    Rotate {
        /// The key's name.
        name: String,
    },
    /// Revoke a key for good (its name is not reused).
    Revoke {
        /// The key's name.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// A unique name (calls are tagged with it: `dspex costs --group-by key`).
    #[arg(long)]
    name: String,
    /// The spend limit per period, in dollars.
    #[arg(long, value_name = "USD")]
    budget_usd: Option<f64>,
    /// The budget's period: `day` or `month` (default month).
    #[arg(long, value_name = "day|month")]
    period: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens (in and out) per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// The models it may use, comma-separated: aliases, `provider/model`, `provider/*`.
    #[arg(long, value_name = "LIST")]
    models: Option<String>,
    /// How long it lives: `30d`, `12h`.
    #[arg(long, value_name = "DURATION")]
    expires: Option<String>,
    /// Print JSON (the key included).
    #[arg(long)]
    json: bool,
}

async fn open_store(config: Option<&Path>, store: Option<&str>) -> anyhow::Result<Store> {
    let loader = common::loader(config).map_err(common::Failure::into_error)?;
    let analytics = AnalyticsConfig::load(&loader)?;
    let location = store.map_or_else(|| analytics.store.clone(), str::to_owned);
    // A postgres URL may hold a password: print it redacted.
    let printable = dspex::config::redacted_url(&location);
    Store::open(&location, analytics.schema.as_deref())
        .await
        .with_context(|| format!("cannot open the analytics store `{printable}`"))
}

fn describe(key: &ApiKey, now_ms: i64) -> String {
    let limits = &key.limits;
    let mut parts = vec![
        format!("{}…", key.prefix),
        key.state(now_ms).as_str().to_owned(),
    ];
    if let Some(budget) = limits.budget_nanos {
        parts.push(format!("budget {}/{}", format_usd(budget), limits.period()));
    }
    if let Some(rpm) = limits.rpm {
        parts.push(format!("{rpm} rpm"));
    }
    if let Some(tpm) = limits.tpm {
        parts.push(format!("{tpm} tpm"));
    }
    if !limits.models.is_empty() {
        parts.push(format!("models {}", limits.models.join(",")));
    }
    if let Some(expires) = limits.expires_ms {
        parts.push(format!("expires {}", format_rfc3339(expires)));
    }
    format!("{:<20} {}", key.name, parts.join("  "))
}

pub(crate) async fn run(args: KeysArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let store = open_store(config, args.store.as_deref()).await?;
    let now = unix_ms(SystemTime::now());
    match args.command {
        KeysCommand::Create(create) => {
            let limits = RawKeyLimits {
                budget_usd: create.budget_usd,
                period: create.period,
                rpm: create.rpm,
                tpm: create.tpm,
                models: create.models.map(ModelList::Text),
                expires: create.expires,
            }
            .validate(now)?;
            let (key, secret) = store.create_key(&create.name, &limits).await?;
            if create.json {
                let mut value = serde_json::to_value(&key)?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("key".into(), secret.expose().into());
                }
                common::out(&value.to_string());
            } else {
                common::out(secret.expose());
                common::err(&format!(
                    "created {}\nthe key is shown only this once: store it now",
                    describe(&key, now)
                ));
            }
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys().await?;
            if json {
                let values: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| {
                        let mut value = serde_json::to_value(key).unwrap_or_default();
                        if let Some(object) = value.as_object_mut() {
                            object.insert("state".into(), key.state(now).as_str().into());
                        }
                        value
                    })
                    .collect();
                common::out(&serde_json::to_string_pretty(&values)?);
            } else if keys.is_empty() {
                common::err("no keys yet: dspex keys create --name NAME");
            } else {
                for key in &keys {
                    common::out(&describe(key, now));
                }
            }
        }
        KeysCommand::Rotate { name } => {
            let (key, secret) = store.rotate_key(&name).await?;
            common::out(secret.expose());
            common::err(&format!(
                "rotated {}\nthe old text stops working now (within [gateway] key_refresh_ms on other gateway instances)",
                describe(&key, now)
            ));
        }
        KeysCommand::Revoke { name } => {
            let key = store.revoke_key(&name).await?;
            common::err(&format!("revoked {}", describe(&key, now)));
        }
    }
    Ok(())
}
