//! The write-ahead journal of `[analytics] durability = "wal"`: every
//! completed call is appended to a local file, and the file synced, before
//! the client returns the call; what a crash kept from reaching the store is
//! replayed into it on the next start.
//!
//! Layout: a root folder holds one folder per process (a fresh UUID), with a
//! `lock` file the process holds an exclusive lock on while it lives, and
//! numbered segments `000000000001.jsonl`, one [`CallRecord`] per line. A
//! process that starts replays every folder whose lock it can take (its owner
//! is gone) and deletes it, so several processes may share one root.
//!
//! Group commit: appends go to a buffer; one writer thread writes the buffer
//! and calls `fdatasync`, then answers every append that was in it. While it
//! syncs, new appends gather for the next round, so a sync costs each call a
//! share of one `fdatasync` (a few milliseconds at most), not one each.
//!
//! Checkpoints: the recorder calls [`Journal::seal`] (the writer starts a new
//! segment), then writes everything queued on the event bus to the store,
//! then [`Journal::remove`]s the sealed segments. That is safe because the
//! client publishes a call's event *before* it appends the call: an event of
//! a sealed segment's call was on the bus before the seal. Rows carry the
//! call's id and the stores ignore a row whose id they hold, so a replay
//! after a crash between a store write and a removal adds nothing twice.
//!
//! Written by hand because no kept crate does group-committed, per-process
//! journals with lock-based recovery; `okaywal` and friends bring their own
//! checkpoint model and formats.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dspex_client::{CompletionJournal, Event, JournalTicket};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{AnalyticsError, Result};
use crate::prices::PriceTable;
use crate::record::CallRecord;

/// The name of the lock file in each process's folder.
const LOCK_FILE: &str = "lock";
/// The extension of segment files.
const SEGMENT_EXTENSION: &str = "jsonl";

/// What a journal did, for stats and the cost measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JournalStats {
    /// Calls appended.
    pub appended: u64,
    /// `fdatasync` rounds (each covers every append gathered before it).
    pub syncs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Failed writes or syncs (the calls in them were still answered, and
    /// still reach the store through the recorder).
    pub errors: u64,
}

/// A process's journal. Cheap to clone; the writer thread stops when the
/// last clone is dropped (or at [`Journal::close`]).
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    writer: Arc<WriterHandle>,
}

/// Stops the writer thread when the last [`Journal`] clone goes.
struct WriterHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriterHandle {
    /// Asks the writer to write what it holds and stop, and waits for it.
    fn stop(&self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            // A panicking writer already lost its buffer; nothing to add.
            let _ = thread.join();
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("folder", &self.shared.folder)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    folder: PathBuf,
    prices: Arc<PriceTable>,
    state: Mutex<State>,
    wake: Condvar,
    appended: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    // Held for the life of the process: the lock says "this folder is live".
    _lock: File,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    waiters: Vec<oneshot::Sender<()>>,
    seal: Vec<oneshot::Sender<Vec<PathBuf>>>,
    closing: bool,
}

/// Segments left by processes that are gone, to replay into the store.
#[derive(Debug, Default)]
pub struct Leftovers {
    folders: Vec<PathBuf>,
}

impl Leftovers {
    /// The number of dead processes' folders found.
    pub fn folders(&self) -> usize {
        self.folders.len()
    }

    /// Reads every leftover record, oldest segment first. A torn last line
    /// (the process died mid-write, so its call was never answered) is
    /// skipped and counted; any other bad line is an error naming it.
    pub fn read(&self) -> Result<(Vec<CallRecord>, u64)> {
        let mut records = Vec::new();
        let mut torn = 0;
        for folder in &self.folders {
            for segment in segments(folder)? {
                torn += read_segment(&segment, &mut records)?;
            }
        }
        Ok((records, torn))
    }

    /// Deletes the folders once their records are in the store.
    pub fn remove(self) -> Result<()> {
        for folder in self.folders {
            fs::remove_dir_all(&folder).map_err(|e| journal_error(&folder, &e))?;
        }
        Ok(())
    }
}

impl Journal {
    /// Opens a new journal folder under `root` (created if missing) and
    /// finds the folders of processes that are gone.
    pub fn open(root: &Path, prices: Arc<PriceTable>) -> Result<(Self, Leftovers)> {
        fs::create_dir_all(root).map_err(|e| journal_error(root, &e))?;
        let mut leftovers = Leftovers::default();
        let entries = fs::read_dir(root).map_err(|e| journal_error(root, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| journal_error(root, &e))?;
            let folder = entry.path();
            if !folder.is_dir() {
                continue;
            }
            let lock_path = folder.join(LOCK_FILE);
            let Ok(lock) = OpenOptions::new().write(true).open(&lock_path) else {
                // A folder without a lock file is not ours, or is being
                // created right now: leave it.
                continue;
            };
            // Taking the lock proves its process is gone. The lock is
            // released when `lock` drops; the folder is ours to replay.
            if lock.try_lock().is_ok() {
                leftovers.folders.push(folder);
            }
        }
        leftovers.folders.sort();
        let folder = root.join(uuid::Uuid::now_v7().simple().to_string());
        fs::create_dir(&folder).map_err(|e| journal_error(&folder, &e))?;
        let lock_path = folder.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(|e| journal_error(&lock_path, &e))?;
        lock.lock().map_err(|e| journal_error(&lock_path, &e))?;
        let shared = Arc::new(Shared {
            folder: folder.clone(),
            prices,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            appended: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            _lock: lock,
        });
        let first = open_segment(&folder, 1)?;
        let writer = Writer {
            shared: Arc::clone(&shared),
            file: first,
            sequence: 1,
        };
        let thread = std::thread::Builder::new()
            .name("dspex-journal".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| journal_error(&folder, &e))?;
        let writer = Arc::new(WriterHandle {
            shared: Arc::clone(&shared),
            thread: Mutex::new(Some(thread)),
        });
        Ok((Self { shared, writer }, leftovers))
    }

    /// This process's folder.
    pub fn folder(&self) -> &Path {
        &self.shared.folder
    }

    /// Counts so far.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.shared;
        JournalStats {
            appended: shared.appended.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            bytes: shared.bytes.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
        }
    }

    /// Appends one record; the ticket resolves once it is on disk.
    pub fn append_record(&self, record: &CallRecord) -> JournalTicket {
        let (done, ticket) = oneshot::channel();
        {
            let mut state = self.shared.state.lock();
            if state.closing {
                return JournalTicket::ready();
            }
            if serde_json::to_writer(&mut state.buffer, record).is_err() {
                // Serializing plain strings and numbers cannot fail; if it
                // ever did, the call still reaches the store on the bus.
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                return JournalTicket::ready();
            }
            state.buffer.push(b'\n');
            state.waiters.push(done);
        }
        self.shared.appended.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
        JournalTicket::pending(ticket)
    }

    /// Starts a new segment and returns the sealed ones: once everything on
    /// the event bus is in the store, they can be [removed](Self::remove).
    pub async fn seal(&self) -> Vec<PathBuf> {
        let (reply, sealed) = oneshot::channel();
        {
            let mut state = self.shared.state.lock();
            if state.closing {
                return Vec::new();
            }
            state.seal.push(reply);
        }
        self.shared.wake.notify_one();
        sealed.await.unwrap_or_default()
    }

    /// Deletes sealed segments whose rows are in the store.
    pub fn remove(&self, sealed: &[PathBuf]) -> Result<()> {
        for segment in sealed {
            match fs::remove_file(segment) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(journal_error(segment, &e)),
            }
        }
        Ok(())
    }

    /// Stops the writer after it has written what it holds, and deletes the
    /// folder: call once every row is in the store.
    pub fn close(&self) -> Result<()> {
        self.writer.stop();
        fs::remove_dir_all(&self.shared.folder).map_err(|e| journal_error(&self.shared.folder, &e))
    }
}

impl CompletionJournal for Journal {
    fn append(&self, event: &Event) -> JournalTicket {
        match CallRecord::from_event(event, &self.shared.prices) {
            Some(record) => self.append_record(&record),
            None => JournalTicket::ready(),
        }
    }
}

/// The thread that writes and syncs.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    sequence: u64,
}

impl Writer {
    fn run(mut self) {
        let mut buffer = Vec::new();
        let mut waiters = Vec::new();
        loop {
            let (seal, closing) = {
                let mut state = self.shared.state.lock();
                while state.buffer.is_empty() && state.seal.is_empty() && !state.closing {
                    self.shared.wake.wait(&mut state);
                }
                std::mem::swap(&mut buffer, &mut state.buffer);
                std::mem::swap(&mut waiters, &mut state.waiters);
                (std::mem::take(&mut state.seal), state.closing)
            };
            if !buffer.is_empty() {
                let written = self
                    .file
                    .write_all(&buffer)
                    .and_then(|()| self.file.sync_data());
                match written {
                    Ok(()) => {
                        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                        self.shared
                            .bytes
                            .fetch_add(buffer.len() as u64, Ordering::Relaxed);
                    }
                    Err(error) => {
                        self.shared.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, folder = %self.shared.folder.display(), "analytics journal write failed; the calls still reach the store through the recorder");
                    }
                }
                buffer.clear();
            }
            for waiter in waiters.drain(..) {
                // The caller may have stopped waiting (cancelled): fine.
                let _ = waiter.send(());
            }
            if !seal.is_empty() {
                let sealed = self.rotate();
                for reply in seal {
                    let _ = reply.send(sealed.clone());
                }
            }
            if closing {
                return;
            }
        }
    }

    /// Starts the next segment; returns every older one.
    fn rotate(&mut self) -> Vec<PathBuf> {
        match open_segment(&self.shared.folder, self.sequence + 1) {
            Ok(file) => {
                self.file = file;
                self.sequence += 1;
            }
            Err(error) => {
                // Keep writing to the current segment; nothing is sealed.
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "could not start a new analytics journal segment");
                return Vec::new();
            }
        }
        let current = segment_path(&self.shared.folder, self.sequence);
        segments(&self.shared.folder)
            .unwrap_or_default()
            .into_iter()
            .filter(|segment| *segment != current)
            .collect()
    }
}

fn segment_path(folder: &Path, sequence: u64) -> PathBuf {
    folder.join(format!("{sequence:012}.{SEGMENT_EXTENSION}"))
}

fn open_segment(folder: &Path, sequence: u64) -> Result<File> {
    let path = segment_path(folder, sequence);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| journal_error(&path, &e))?;
    // The new file's directory entry must survive a crash too.
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| journal_error(folder, &e))?;
    Ok(file)
}

/// The segments of `folder`, oldest first.
fn segments(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(folder).map_err(|e| journal_error(folder, &e))? {
        let path = entry.map_err(|e| journal_error(folder, &e))?.path();
        if path.extension().is_some_and(|e| e == SEGMENT_EXTENSION) {
            found.push(path);
        }
    }
    // Zero-padded numbers sort in order.
    found.sort();
    Ok(found)
}

/// Reads one segment's records into `records`; returns how many torn lines
/// (at most one, the last) were skipped.
fn read_segment(path: &Path, records: &mut Vec<CallRecord>) -> Result<u64> {
    let file = File::open(path).map_err(|e| journal_error(path, &e))?;
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    let mut torn = 0;
    while let Some((index, line)) = lines.next() {
        let line = line.map_err(|e| journal_error(path, &e))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<CallRecord>(&line) {
            Ok(record) => records.push(record),
            // The process died in the middle of its last write: that call
            // was never answered, so it never completed for its caller.
            Err(_) if lines.peek().is_none() => torn += 1,
            Err(e) => {
                return Err(AnalyticsError::Journal {
                    path: path.display().to_string(),
                    message: format!("line {}: {e}", index + 1),
                });
            }
        }
    }
    Ok(torn)
}

fn journal_error(path: &Path, error: &std::io::Error) -> AnalyticsError {
    AnalyticsError::Journal {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}
