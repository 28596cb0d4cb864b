//! Serde helpers that write a `Duration` as human-readable text (`1m`, `250ms`)
//! and read anything `humantime` parses.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `1m`, `30s`, `250ms`.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Reads `1m`, `30s`, `250ms`, `1h 30m`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}
