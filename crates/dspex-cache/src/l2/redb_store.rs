//! L2 on disk: one redb database file.
//!
//! Every write (insert, eviction, clear, purge) is one committed write
//! transaction with `Durability::Immediate`, so it is atomic by construction: a
//! process killed at any moment leaves the previous committed state, which
//! opens (redb repairs its allocator state on open) and holds no partial
//! entry. A new file is created under a temporary name and linked into place,
//! so a kill during creation cannot leave a half-written header either. The
//! byte and entry counts used by the size cap live in the same
//! database and change in the same transactions as the entries they count.
//!
//! Eviction is oldest-stored first: reads stay read-only transactions (no write
//! per hit), and hot entries live in L1 anyway because L2 hits are promoted.
//!
//! redb allows one open handle per file per process, so handles are shared
//! through a process-wide table: two caches on one directory share the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::{CacheError, Result};
use crate::l2::{StoredEntry, now_ms};

/// Entries: storage key (namespace, NUL, hash) → header + payload.
const ENTRIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("entries");
/// Insertion order: (stored at ms, storage key) → (). Oldest first.
const ORDER: TableDefinition<'_, (u64, &[u8]), ()> = TableDefinition::new("order");
/// Counters kept in step with ENTRIES: `bytes`.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// L3 vectors: storage key → [`SemanticRecord`](crate::l2::SemanticRecord)
/// bytes. A row lives and dies with the ENTRIES row of the same key (same
/// transactions) and counts toward the size cap.
const SEMANTIC: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("semantic");
/// `embedder`: the fingerprint of the embedder that made the SEMANTIC rows.
const SEMANTIC_META: TableDefinition<'_, &str, &str> = TableDefinition::new("semantic_meta");

/// The database file's name inside the cache directory.
pub const FILE_NAME: &str = "l2.redb";

static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Database>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The on-disk store.
pub(crate) struct RedbStore {
    db: Arc<Database>,
    path: String,
    max_bytes: u64,
}

impl RedbStore {
    /// Opens (or creates) `dir/l2.redb`, sharing a handle already open in this
    /// process.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| CacheError::Store {
            path: dir.display().to_string(),
            message: format!("cannot create the cache directory: {e}"),
        })?;
        let file = dir.join(FILE_NAME);
        let canonical = std::fs::canonicalize(dir)
            .map(|d| d.join(FILE_NAME))
            .unwrap_or_else(|_| file.clone());
        let path = file.display().to_string();
        let mut open = OPEN.lock();
        let db = match open.get(&canonical).and_then(Weak::upgrade) {
            Some(db) => db,
            None => {
                if !file.exists() {
                    create_atomically(dir, &file).map_err(|e| CacheError::Store {
                        path: path.clone(),
                        message: format!("cannot create the store: {e}"),
                    })?;
                }
                let db = Arc::new(Database::create(&file).map_err(|e| store_error(&path, e))?);
                open.retain(|_, weak| weak.strong_count() > 0);
                open.insert(canonical, Arc::downgrade(&db));
                db
            }
        };
        drop(open);
        let store = Self {
            db,
            path,
            max_bytes,
        };
        store.init_tables()?;
        Ok(store)
    }

    fn init_tables(&self) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            txn.open_table(ORDER).map_err(|e| self.err(e))?;
            txn.open_table(META).map_err(|e| self.err(e))?;
            txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
            txn.open_table(SEMANTIC_META).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The byte count the size cap works from.
    fn recorded_bytes(&self, meta: &impl ReadableTable<&'static str, u64>) -> Result<u64> {
        Ok(meta
            .get("bytes")
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn err(&self, error: impl Into<redb::Error>) -> CacheError {
        store_error(&self.path, error)
    }

    /// The database file.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<StoredEntry>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let Some(raw) = table.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        Ok(StoredEntry::decode(raw.value()))
    }

    /// Writes one entry (and its L3 vector, when given) and evicts the oldest
    /// ones while over the cap, in one transaction. Returns how many entries
    /// were evicted.
    pub(crate) fn put(
        &self,
        key: &[u8],
        encoded: &[u8],
        stored_ms: u64,
        semantic_record: Option<&[u8]>,
    ) -> Result<u64> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate);
        let evicted;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
            let mut bytes = self.recorded_bytes(&meta)?;
            // A value stored again without a vector keeps the one it had: the
            // key (the request) and so the prompt it embeds are the same.
            if let Some(record) = semantic_record {
                if let Some(old) = semantic.insert(key, record).map_err(|e| self.err(e))? {
                    bytes = bytes.saturating_sub((key.len() + old.value().len()) as u64);
                }
                bytes = bytes.saturating_add((key.len() + record.len()) as u64);
            }
            let old = entries
                .insert(key, encoded)
                .map_err(|e| self.err(e))?
                .map(|old| (old.value().len(), StoredEntry::decode(old.value())));
            if let Some((old_len, old_entry)) = old {
                bytes = bytes.saturating_sub((key.len() + old_len) as u64);
                if let Some(old_entry) = old_entry {
                    order
                        .remove((old_entry.stored_ms, key))
                        .map_err(|e| self.err(e))?;
                }
            }
            order
                .insert((stored_ms, key), ())
                .map_err(|e| self.err(e))?;
            bytes = bytes.saturating_add((key.len() + encoded.len()) as u64);
            evicted = self.evict_locked(&mut entries, &mut order, &mut semantic, &mut bytes)?;
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(evicted)
    }

    /// Evicts oldest entries until `bytes` is at most 90% of the cap (the
    /// slack keeps every later write from evicting again).
    fn evict_locked(
        &self,
        entries: &mut redb::Table<'_, &[u8], &[u8]>,
        order: &mut redb::Table<'_, (u64, &[u8]), ()>,
        semantic: &mut redb::Table<'_, &[u8], &[u8]>,
        bytes: &mut u64,
    ) -> Result<u64> {
        if *bytes <= self.max_bytes {
            return Ok(0);
        }
        let target = self.max_bytes / 10 * 9;
        let mut evicted = 0;
        while *bytes > target {
            let Some((oldest, _)) = order.pop_first().map_err(|e| self.err(e))? else {
                break;
            };
            let (_, key) = oldest.value();
            let key = key.to_vec();
            drop(oldest);
            if let Some(old) = entries.remove(key.as_slice()).map_err(|e| self.err(e))? {
                *bytes = bytes.saturating_sub((key.len() + old.value().len()) as u64);
                evicted += 1;
            }
            if let Some(old) = semantic.remove(key.as_slice()).map_err(|e| self.err(e))? {
                *bytes = bytes.saturating_sub((key.len() + old.value().len()) as u64);
            }
        }
        Ok(evicted)
    }

    pub(crate) fn remove(&self, key: &[u8]) -> Result<bool> {
        let removed = self.delete_where(|k, _| k == key)?;
        Ok(removed > 0)
    }

    /// Deletes entries of `namespace` (all entries with `None`).
    pub(crate) fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        match namespace {
            None => self.delete_where(|_, _| true),
            Some(ns) => {
                let mut prefix = ns.as_bytes().to_vec();
                prefix.push(0);
                self.delete_where(|k, _| k.starts_with(&prefix))
            }
        }
    }

    /// Deletes entries whose time to live has run out, with their L3
    /// vectors, and any vector whose entry is gone (left by an older
    /// version or a store edited by hand), so a later open cannot reload
    /// it. Returns the storage keys of the entries removed.
    pub(crate) fn purge_expired(&self) -> Result<Vec<Vec<u8>>> {
        let now = now_ms();
        let removed =
            self.delete_where_keys(|_, entry| entry.is_none_or(|e| e.expires_ms <= now))?;
        self.delete_semantic_where(|key, entries| !entries.contains(key))?;
        Ok(removed)
    }

    /// Deletes the persisted L3 vectors of `namespace` (all with `None`),
    /// leaving their entries: `dspex cache clear --tier l3` in one process
    /// must keep the next process from reloading them. Returns how many went.
    pub(crate) fn clear_semantic(&self, namespace: Option<&str>) -> Result<u64> {
        match namespace {
            None => self.delete_semantic_where(|_, _| true),
            Some(ns) => {
                let mut prefix = ns.as_bytes().to_vec();
                prefix.push(0);
                self.delete_semantic_where(|k, _| k.starts_with(&prefix))
            }
        }
    }

    /// Deletes the SEMANTIC rows for which `doomed(key, live entry keys)`
    /// holds, with their byte counts, in one transaction.
    fn delete_semantic_where(
        &self,
        doomed: impl Fn(&[u8], &std::collections::HashSet<Vec<u8>>) -> bool,
    ) -> Result<u64> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate);
        let mut removed = 0;
        {
            let entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
            let mut live = std::collections::HashSet::new();
            for item in entries.iter().map_err(|e| self.err(e))? {
                let (k, _) = item.map_err(|e| self.err(e))?;
                live.insert(k.value().to_vec());
            }
            let mut victims: Vec<(Vec<u8>, usize)> = Vec::new();
            for item in semantic.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if doomed(k.value(), &live) {
                    victims.push((k.value().to_vec(), v.value().len()));
                }
            }
            if victims.is_empty() {
                return Ok(0);
            }
            let mut bytes = self.recorded_bytes(&meta)?;
            for (key, len) in victims {
                semantic.remove(key.as_slice()).map_err(|e| self.err(e))?;
                bytes = bytes.saturating_sub((key.len() + len) as u64);
                removed += 1;
            }
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }

    /// Deletes the entries for which `doomed(key, entry)` holds (entries that do
    /// not decode are passed as `None`), with their order rows, L3 vectors and
    /// byte counts, in one transaction.
    fn delete_where(&self, doomed: impl Fn(&[u8], Option<&StoredEntry>) -> bool) -> Result<u64> {
        Ok(self.delete_where_keys(doomed)?.len() as u64)
    }

    /// [`Self::delete_where`], returning the storage keys it removed.
    fn delete_where_keys(
        &self,
        doomed: impl Fn(&[u8], Option<&StoredEntry>) -> bool,
    ) -> Result<Vec<Vec<u8>>> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate);
        let mut removed = Vec::new();
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
            let mut victims: Vec<(Vec<u8>, usize, Option<u64>)> = Vec::new();
            for item in entries.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let decoded = StoredEntry::decode(v.value());
                if doomed(k.value(), decoded.as_ref()) {
                    victims.push((
                        k.value().to_vec(),
                        v.value().len(),
                        decoded.map(|d| d.stored_ms),
                    ));
                }
            }
            let mut bytes = self.recorded_bytes(&meta)?;
            for (key, len, stored_ms) in victims {
                entries.remove(key.as_slice()).map_err(|e| self.err(e))?;
                if let Some(stored_ms) = stored_ms {
                    order
                        .remove((stored_ms, key.as_slice()))
                        .map_err(|e| self.err(e))?;
                }
                bytes = bytes.saturating_sub((key.len() + len) as u64);
                if let Some(old) = semantic.remove(key.as_slice()).map_err(|e| self.err(e))? {
                    bytes = bytes.saturating_sub((key.len() + old.value().len()) as u64);
                }
                removed.push(key);
            }
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }

    /// The L3 vectors of live entries, oldest entry first, as (storage key,
    /// record bytes), when `fingerprint` made them. Vectors of another
    /// embedder are useless (another space, maybe another dimension): they are
    /// deleted, and `fingerprint` is recorded as the maker of what follows.
    pub(crate) fn load_semantic(&self, fingerprint: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // The usual open changes nothing: read only, no write transaction.
        {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let semantic_meta = txn.open_table(SEMANTIC_META).map_err(|e| self.err(e))?;
            let recorded = semantic_meta.get("embedder").map_err(|e| self.err(e))?;
            if recorded.is_some_and(|v| v.value() == fingerprint) {
                let semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
                let entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
                let now = now_ms();
                let mut dated = Vec::new();
                for item in semantic.iter().map_err(|e| self.err(e))? {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let Some(entry) = entries.get(k.value()).map_err(|e| self.err(e))? else {
                        continue;
                    };
                    // Expired entries are skipped here and purged with their
                    // vectors by `purge_expired`.
                    if let Some(entry) = StoredEntry::decode(entry.value())
                        && !entry.is_expired(now)
                    {
                        dated.push((entry.stored_ms, k.value().to_vec(), v.value().to_vec()));
                    }
                }
                dated.sort_by_key(|(stored_ms, _, _)| *stored_ms);
                return Ok(dated.into_iter().map(|(_, k, v)| (k, v)).collect());
            }
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut bytes = self.recorded_bytes(&meta)?;
            for item in semantic.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                bytes = bytes.saturating_sub((k.value().len() + v.value().len()) as u64);
            }
            semantic.retain(|_, _| false).map_err(|e| self.err(e))?;
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
            txn.open_table(SEMANTIC_META)
                .map_err(|e| self.err(e))?
                .insert("embedder", fingerprint)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Vec::new())
    }

    /// (entries, bytes) held now.
    pub(crate) fn usage(&self) -> Result<(u64, u64)> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let bytes = self.recorded_bytes(&meta)?;
        Ok((entries.len().map_err(|e| self.err(e))?, bytes))
    }

    /// Every entry, for integrity checks: (storage key, decoded entry or `None`
    /// when the bytes do not decode), plus the stored byte count and the byte
    /// count recomputed from the entries.
    pub(crate) fn scan(&self) -> Result<ScanReport> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let semantic = txn.open_table(SEMANTIC).map_err(|e| self.err(e))?;
        let mut report = ScanReport {
            recorded_bytes: self.recorded_bytes(&meta)?,
            order_rows: order.len().map_err(|e| self.err(e))?,
            ..ScanReport::default()
        };
        for item in entries.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            report.counted_bytes += (k.value().len() + v.value().len()) as u64;
            report
                .entries
                .push((k.value().to_vec(), StoredEntry::decode(v.value())));
        }
        for item in semantic.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            report.counted_bytes += (k.value().len() + v.value().len()) as u64;
            report.semantic_rows += 1;
            if entries.get(k.value()).map_err(|e| self.err(e))?.is_none() {
                report.semantic_orphans += 1;
            }
        }
        Ok(report)
    }
}

/// What [`RedbStore::scan`] found.
#[derive(Default)]
pub(crate) struct ScanReport {
    pub(crate) entries: Vec<(Vec<u8>, Option<StoredEntry>)>,
    pub(crate) recorded_bytes: u64,
    pub(crate) counted_bytes: u64,
    pub(crate) order_rows: u64,
    /// L3 vectors, and those whose entry is gone (always 0 when consistent).
    pub(crate) semantic_rows: u64,
    pub(crate) semantic_orphans: u64,
}

/// Creates an empty database beside `file` and links it into place, so that a
/// process killed while redb writes a new file's first header never leaves a
/// half-written file under the real name. `hard_link` fails if another
/// process created the file first; that file is then used as it is.
fn create_atomically(dir: &Path, file: &Path) -> std::result::Result<(), String> {
    let tmp = dir.join(format!("{FILE_NAME}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    Database::create(&tmp).map_err(|e| e.to_string())?;
    let linked = std::fs::hard_link(&tmp, file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn store_error(path: &str, error: impl Into<redb::Error>) -> CacheError {
    CacheError::Store {
        path: path.to_owned(),
        message: error.into().to_string(),
    }
}
