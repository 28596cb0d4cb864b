//! Cache keys, namespaces and semantic scopes.
//!
//! A key is a namespace (a tenant or a program) plus a 32-byte BLAKE3 hash of
//! a canonical form of the request. The canonical JSON written here sorts
//! object keys and prints numbers and strings exactly as `serde_json` does, so
//! the same request hashes to the same key on every run and platform, whatever
//! features (`preserve_order`) other crates enable on `serde_json`.
//!
//! **Keys must be built without credentials**: hash the request the provider
//! sees minus its API key and auth headers. Nothing secret should ever reach
//! the cache; the cache stores whatever values it is given, as given.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{CacheError, Result};

/// Domain separation: keys of other formats can never collide with these.
const KEY_CONTEXT: &[u8] = b"dspex-cache key v1\0";
const SCOPE_CONTEXT: &[u8] = b"dspex-cache scope v1\0";

/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// The namespace used when a caller gives none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Checks a namespace: 1 to 128 bytes of ASCII letters, digits, `-`, `_`, `.`
/// or `/`. The limits keep namespaces usable as Redis key segments and as
/// prefixes in the on-disk store (no `:` or NUL).
pub fn validate_namespace(namespace: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
        return Err(CacheError::Invalid {
            what: "namespace",
            value: namespace.chars().take(MAX_NAMESPACE_LEN).collect(),
            message: format!("must be 1 to {MAX_NAMESPACE_LEN} bytes long"),
        });
    }
    if !namespace.chars().all(ok_char) {
        return Err(CacheError::Invalid {
            what: "namespace",
            value: namespace.to_owned(),
            message: "only ASCII letters, digits, `-`, `_`, `.` and `/` are allowed".to_owned(),
        });
    }
    Ok(())
}

/// Identifies one cached value: a namespace and a 32-byte hash.
///
/// Cheap to clone (the namespace is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    namespace: Arc<str>,
    hash: [u8; 32],
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    /// `namespace/0123456789abcdef` (the first 8 bytes of the hash).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.namespace)?;
        for byte in self.hash.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl CacheKey {
    /// A key from a hash computed elsewhere.
    pub fn new(namespace: &str, hash: [u8; 32]) -> Result<Self> {
        validate_namespace(namespace)?;
        Ok(Self {
            namespace: Arc::from(namespace),
            hash,
        })
    }

    /// The key of a request given as JSON: the BLAKE3 hash of its canonical form
    /// (object keys sorted at every level, no whitespace).
    pub fn from_canonical_json(namespace: &str, request: &Value) -> Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_CONTEXT);
        write_canonical(request, &mut HashWriter(&mut hasher));
        Self::new(namespace, *hasher.finalize().as_bytes())
    }

    /// The key of any serialisable request: the BLAKE3 hash of its
    /// `serde_json` text, written straight into the hasher. This skips
    /// building a `Value`, for hot paths; it is canonical as long as
    /// `request` serialises deterministically (structs keep their field order,
    /// and `serde_json::Map` keeps keys sorted unless its `preserve_order`
    /// feature is on). Not interchangeable with
    /// [`CacheKey::from_canonical_json`] for the same request.
    pub fn from_serialize<T: serde::Serialize + ?Sized>(
        namespace: &str,
        request: &T,
    ) -> Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_CONTEXT);
        hasher.update(b"serde\0");
        serde_json::to_writer(IoHashWriter(&mut hasher), request).map_err(|e| {
            CacheError::Codec {
                key: format!("{namespace}/(unhashed)"),
                message: e.to_string(),
            }
        })?;
        Self::new(namespace, *hasher.finalize().as_bytes())
    }

    /// The key of arbitrary bytes (a request already in a canonical form).
    pub fn from_bytes(namespace: &str, bytes: &[u8]) -> Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_CONTEXT);
        hasher.update(bytes);
        Self::new(namespace, *hasher.finalize().as_bytes())
    }

    /// The same hash in another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        Self::new(namespace, self.hash)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The hash.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The hash as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex(&self.hash)
    }

    /// The on-disk key: namespace, NUL, hash. NUL sorts first, so all keys of a
    /// namespace form one contiguous range.
    pub(crate) fn storage_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.namespace.len() + 33);
        out.extend_from_slice(self.namespace.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.hash);
        out
    }

    /// The inverse of [`CacheKey::storage_bytes`].
    pub(crate) fn from_storage_bytes(bytes: &[u8]) -> Option<Self> {
        let split = bytes.len().checked_sub(33)?;
        let (namespace, rest) = bytes.split_at(split);
        let (nul, hash) = rest.split_first()?;
        if *nul != 0 {
            return None;
        }
        let namespace = std::str::from_utf8(namespace).ok()?;
        let hash: [u8; 32] = hash.try_into().ok()?;
        Some(Self {
            namespace: Arc::from(namespace),
            hash,
        })
    }
}

/// Which requests may answer each other semantically: only requests whose
/// scope hashes are equal (same model, parameters, system prompt and earlier
/// turns; everything but the final user message) are ever compared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SemanticScope([u8; 32]);

impl fmt::Debug for SemanticScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SemanticScope(")?;
        for byte in self.0.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl SemanticScope {
    /// A scope from a hash computed elsewhere.
    pub const fn new(hash: [u8; 32]) -> Self {
        Self(hash)
    }

    /// The scope of a request with its final user message removed, given as
    /// JSON (canonicalised as for [`CacheKey::from_canonical_json`]).
    pub fn from_canonical_json(rest_of_request: &Value) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(SCOPE_CONTEXT);
        write_canonical(rest_of_request, &mut HashWriter(&mut hasher));
        Self(*hasher.finalize().as_bytes())
    }

    /// The scope of arbitrary bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(SCOPE_CONTEXT);
        hasher.update(bytes);
        Self(*hasher.finalize().as_bytes())
    }

    /// The hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The canonical text of a JSON value: object keys sorted by their UTF-8
/// bytes at every level, no whitespace, strings and numbers as `serde_json`
/// writes them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = StringWriter(String::new());
    write_canonical(value, &mut out);
    out.0
}

trait Sink {
    fn put(&mut self, text: &str);
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl Sink for HashWriter<'_> {
    fn put(&mut self, text: &str) {
        self.0.update(text.as_bytes());
    }
}

/// `std::io::Write` into a hasher, for `serde_json::to_writer`.
struct IoHashWriter<'a>(&'a mut blake3::Hasher);

impl std::io::Write for IoHashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct StringWriter(String);

impl Sink for StringWriter {
    fn put(&mut self, text: &str) {
        self.0.push_str(text);
    }
}

fn write_canonical(value: &Value, out: &mut dyn Sink) {
    match value {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => out.put(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.put("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_canonical(item, out);
            }
            out.put("]");
        }
        Value::Object(map) => {
            // Sort here rather than trusting the map's order: with serde_json's
            // `preserve_order` feature (enabled by any crate in the build) maps
            // keep insertion order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.put("{");
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_string(k, out);
                out.put(":");
                write_canonical(v, out);
            }
            out.put("}");
        }
    }
}

fn write_string(s: &str, out: &mut dyn Sink) {
    // serde_json's string escaping is fixed (RFC 8259 minimal escaping), and
    // serializing a &str cannot fail.
    match serde_json::to_string(s) {
        Ok(text) => out.put(&text),
        Err(_) => out.put("\"\""),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": null, "c": true}], "x": "é\n"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"é\n","y":[1,{"c":true,"d":null}]},"b":1}"#
        );
    }

    #[test]
    fn key_is_a_known_stable_vector() {
        // A fixed vector: if this changes, every stored cache entry is orphaned,
        // so it must only change together with KEY_CONTEXT's version.
        let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0});
        let key = CacheKey::from_canonical_json("default", &request).unwrap();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"dspex-cache key v1\0");
        hasher.update(
            br#"{"messages":[{"content":"hi","role":"user"}],"model":"gpt-4o-mini","temperature":0.0}"#,
        );
        assert_eq!(key.hash(), hasher.finalize().as_bytes());
        assert_eq!(
            key.hex(),
            "51e4d6d681564b010d3f197dc5eead942624a3643e5b40774e551c670366607a"
        );
    }

    #[test]
    fn key_order_does_not_matter_and_namespace_is_separate() {
        let a = CacheKey::from_canonical_json("t1", &json!({"x": 1, "y": 2})).unwrap();
        let b = CacheKey::from_canonical_json("t1", &json!({"y": 2, "x": 1})).unwrap();
        let c = CacheKey::from_canonical_json("t2", &json!({"y": 2, "x": 1})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.hash(), c.hash());
        let round = CacheKey::from_storage_bytes(&a.storage_bytes()).unwrap();
        assert_eq!(round, a);
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("tenant-1/prog.v2_x").is_ok());
        for bad in ["", "a:b", "a b", "a\0b", &"x".repeat(129)] {
            let err = validate_namespace(bad).unwrap_err();
            assert!(err.to_string().contains("namespace"), "{err}");
        }
    }
}
