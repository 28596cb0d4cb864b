//! Serde helpers that write `SystemTime` as RFC 3339 text, so reports and state
//! files are readable and portable.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serializer};

/// Serializes a time as RFC 3339 with microseconds.
pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// Parses an RFC 3339 time.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
}
