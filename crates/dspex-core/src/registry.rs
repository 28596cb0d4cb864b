//! A registry of named services (providers, caches, stores) looked up by id.
//!
//! ```
//! use std::sync::Arc;
//! use dspex_core::registry::Registry;
//! let registry: Registry<str> = Registry::new("greeting");
//! registry.register("en", Arc::from("hello")).unwrap();
//! assert_eq!(&*registry.get("en").unwrap(), "hello");
//! assert!(registry.get("fr").unwrap_err().to_string().contains("known: en"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{CoreError, Result};

/// Named services of one kind, shared by `Arc`.
///
/// Reads take a shared lock and clone an `Arc`, so lookups on the call path are
/// cheap and never block each other.
pub struct Registry<T: ?Sized> {
    kind: &'static str,
    entries: RwLock<BTreeMap<String, Arc<T>>>,
}

impl<T: ?Sized> Registry<T> {
    /// An empty registry; `kind` names its entries in errors (`provider`, `cache`).
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    /// Adds `service` under `id`; an id can be registered once.
    pub fn register(&self, id: impl Into<String>, service: Arc<T>) -> Result<()> {
        let id = id.into();
        let mut entries = self.entries.write();
        if entries.contains_key(&id) {
            return Err(CoreError::AlreadyRegistered {
                kind: self.kind,
                id,
            });
        }
        entries.insert(id, service);
        Ok(())
    }

    /// Adds or replaces the service under `id`, returning the one it replaced.
    pub fn replace(&self, id: impl Into<String>, service: Arc<T>) -> Option<Arc<T>> {
        self.entries.write().insert(id.into(), service)
    }

    /// The service under `id`; the error lists the ids that exist.
    pub fn get(&self, id: &str) -> Result<Arc<T>> {
        let entries = self.entries.read();
        entries
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::NotRegistered {
                kind: self.kind,
                id: id.to_owned(),
                known: entries.keys().cloned().collect(),
            })
    }

    /// Removes and returns the service under `id`.
    pub fn remove(&self, id: &str) -> Option<Arc<T>> {
        self.entries.write().remove(id)
    }

    /// The registered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.entries.read().keys().cloned().collect()
    }

    /// How many services are registered.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }
}

impl<T: ?Sized> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kind", &self.kind)
            .field("ids", &self.ids())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_get_remove() {
        let registry: Registry<u32> = Registry::new("provider");
        registry.register("a", Arc::new(1)).unwrap();
        registry.register("b", Arc::new(2)).unwrap();
        assert_eq!(*registry.get("b").unwrap(), 2);
        assert_eq!(registry.ids(), vec!["a", "b"]);
        let dup = registry.register("a", Arc::new(3)).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "a provider named `a` is already registered"
        );
        let missing = registry.get("c").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no provider named `c` is registered (known: a, b)"
        );
        assert_eq!(registry.replace("a", Arc::new(5)).map(|v| *v), Some(1));
        assert_eq!(registry.remove("a").map(|v| *v), Some(5));
        assert_eq!(registry.len(), 1);
    }
}
