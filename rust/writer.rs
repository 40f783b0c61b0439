//! The JSONL writer: a buffered file writer on its own thread, never touching the Python interpreter.
//!
//! Producers append whole lines to a pending buffer
//! under a short lock; whoever writes swaps that buffer out and writes it with one `write_all`, so the
//! file only ever receives whole lines, in order (a file lock is held from taking a batch to writing it).
//! The writer thread writes when the buffer passes `buffer_bytes`, every `flush_interval` and at
//! `close()`; `flush()` writes from the calling thread and returns once the lines are in the file.
//! Pending bytes are bounded by `max_pending_bytes`: a producer that finds the buffer full writes it
//! itself (`block_when_full`, see `make_room`) or the line is dropped and counted. The first I/O error
//! is kept and returned by the next `flush()`/`close()`; `announce_error` tells of each new one once.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub flush_interval: Duration,
    pub buffer_bytes: usize,
    pub max_pending_bytes: usize,
    pub block_when_full: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    Closed,
    Io(String),
}

/// What became of a line handed to `append`.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Queued,
    Dropped,
    /// The pending buffer is full and the policy is to block: call `make_room` (without holding locks
    /// other threads need, e.g. Python's) and append again.
    MustWait,
}

struct State {
    pending: Vec<u8>,
    spare: Vec<u8>,
    closing: bool,
    first_error: Option<String>,
    /// The latest I/O error, kept after `first_error` was reported, for `announce_error`.
    latest_error: Option<String>,
    dropped_lines: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Held while a batch is taken from `pending` and written, so batches reach the file in order
    /// whichever thread writes them. Lock order: `file`, then `state`.
    file: Mutex<File>,
    /// Set with `first_error`; lets producers notice a new I/O error without taking the lock.
    error_unannounced: AtomicBool,
    wake_writer: Condvar,
    config: WriterConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (plain fields), so recover.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes every pending line and writes it with one `write_all`.
    fn write_pending(&self) {
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut state = self.lock();
        if state.pending.is_empty() {
            return;
        }
        let spare = std::mem::take(&mut state.spare);
        let mut batch = std::mem::replace(&mut state.pending, spare);
        drop(state);
        let result = file.write_all(&batch);
        batch.clear();
        let mut state = self.lock();
        state.spare = batch;
        if let Err(error) = result {
            let message = error.to_string();
            state.first_error.get_or_insert_with(|| message.clone());
            if state.latest_error.as_ref() != Some(&message) {
                state.latest_error = Some(message);
                self.error_unannounced.store(true, Ordering::Release);
            }
        }
    }
}

pub struct JsonlWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Cuts a partial last line left by a process killed in the middle of a `write` (the kernel may stop a
/// multi-page write at a page boundary). Only done when no other writer holds the file: every writer keeps
/// a shared lock on it for its lifetime, and the repair needs the exclusive one.
fn repair_torn_tail(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return file.lock_shared(),
        Err(std::fs::TryLockError::Error(error)) => return Err(error),
    }
    let length = file.metadata()?.len();
    let mut last_byte = [0u8; 1];
    if length > 0 && file.read_at(&mut last_byte, length - 1)? == 1 && last_byte[0] != b'\n' {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut end = length;
        let mut keep = 0;
        while end > 0 {
            let start = end.saturating_sub(chunk.len() as u64);
            let window = &mut chunk[..(end - start) as usize];
            file.read_exact_at(window, start)?;
            if let Some(newline) = window.iter().rposition(|&byte| byte == b'\n') {
                keep = start + newline as u64 + 1;
                break;
            }
            end = start;
        }
        file.set_len(keep)?;
    }
    file.lock_shared()
}

impl JsonlWriter {
    /// Opens `path` for appending (created 0600; a torn last line left by a killed writer is cut) and
    /// starts the writer thread.
    pub fn open(path: &Path, config: WriterConfig) -> io::Result<JsonlWriter> {
        let file = open_private(path)?;
        #[cfg(unix)]
        repair_torn_tail(&file)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(config.buffer_bytes * 2),
                spare: Vec::with_capacity(config.buffer_bytes * 2),
                closing: false,
                first_error: None,
                latest_error: None,
                dropped_lines: 0,
            }),
            file: Mutex::new(file),
            error_unannounced: AtomicBool::new(false),
            wake_writer: Condvar::new(),
            config,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rlm_toolkit-jsonl".into())
            .spawn(move || write_loop(&thread_shared))?;
        Ok(JsonlWriter { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Queues one complete line (it must end with `\n`).
    pub fn append(&self, line: &[u8]) -> Result<Appended, WriteError> {
        let config = &self.shared.config;
        let mut state = self.shared.lock();
        if state.closing {
            return Err(WriteError::Closed);
        }
        if !state.pending.is_empty() && state.pending.len() + line.len() > config.max_pending_bytes {
            if !config.block_when_full {
                state.dropped_lines += 1;
                return Ok(Appended::Dropped);
            }
            return Ok(Appended::MustWait);
        }
        let was_below = state.pending.len() < config.buffer_bytes;
        state.pending.extend_from_slice(line);
        if was_below && state.pending.len() >= config.buffer_bytes {
            self.shared.wake_writer.notify_one();
        }
        Ok(Appended::Queued)
    }

    /// Makes room when the pending buffer is full by writing it from the calling thread: the writer
    /// thread may be slow to get a CPU, and the caller is running anyway.
    pub fn make_room(&self) {
        self.shared.write_pending();
    }

    /// Writes everything appended so far (from the calling thread) and returns the first I/O error since
    /// the last report.
    pub fn flush(&self) -> Result<(), WriteError> {
        self.shared.write_pending();
        Self::report(&mut self.shared.lock())
    }

    /// Flushes, stops the writer thread and closes the file. Idempotent.
    pub fn close(&self) -> Result<(), WriteError> {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                let mut state = self.shared.lock();
                state.first_error.get_or_insert_with(|| "the JSONL writer thread panicked".into());
            }
        }
        self.shared.write_pending();
        Self::report(&mut self.shared.lock())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closing
    }

    pub fn dropped_lines(&self) -> u64 {
        self.shared.lock().dropped_lines
    }

    /// A new I/O error, once: for announcing it as it happens. It stays kept for `flush`/`close` to return.
    pub fn announce_error(&self) -> Option<String> {
        // A plain load first: the swap, a locked instruction, is only paid when there is news.
        if !self.shared.error_unannounced.load(Ordering::Relaxed) || !self.shared.error_unannounced.swap(false, Ordering::Acquire) {
            return None;
        }
        self.shared.lock().latest_error.clone()
    }

    fn report(state: &mut State) -> Result<(), WriteError> {
        match state.first_error.take() {
            Some(message) => Err(WriteError::Io(message)),
            None => Ok(()),
        }
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The writer thread: writes when a batch's worth is pending, every `flush_interval`, and at close.
fn write_loop(shared: &Shared) {
    let config = shared.config;
    loop {
        let state = shared.lock();
        let (state, _) = shared
            .wake_writer
            .wait_timeout_while(state, config.flush_interval, |state| {
                !state.closing && state.pending.len() < config.buffer_bytes
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let closing = state.closing;
        drop(state);
        shared.write_pending();
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rlm_toolkit_jsonl_{}_{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let _ = std::fs::remove_file(&path);
        path
    }

    fn config(block: bool, max_pending: usize) -> WriterConfig {
        WriterConfig {
            flush_interval: Duration::from_millis(50),
            buffer_bytes: 64,
            max_pending_bytes: max_pending,
            block_when_full: block,
        }
    }

    #[test]
    fn writes_whole_lines_and_flush_returns_once_they_are_written() {
        let path = temp_path("flush");
        let writer = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        for index in 0..1000 {
            let line = format!("{{\"n\":{index}}}\n");
            assert_eq!(writer.append(line.as_bytes()), Ok(Appended::Queued));
        }
        writer.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().enumerate().all(|(index, line)| line == format!("{{\"n\":{index}}}")));
        writer.close().unwrap();
        writer.close().unwrap();
        assert_eq!(writer.append(b"{}\n"), Err(WriteError::Closed));
    }

    #[test]
    fn interval_flush_writes_without_a_call() {
        let path = temp_path("interval");
        let writer = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        writer.append(b"{\"a\":1}\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
    }

    #[test]
    fn drop_policy_counts_lines_it_drops() {
        let path = temp_path("drop");
        let writer = JsonlWriter::open(&path, config(false, 16)).unwrap();
        let mut dropped = 0;
        for _ in 0..10_000 {
            if writer.append(b"{\"x\":12345}\n").unwrap() == Appended::Dropped {
                dropped += 1;
            }
        }
        writer.close().unwrap();
        assert_eq!(writer.dropped_lines(), dropped);
        let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(written + dropped, 10_000);
    }

    #[test]
    fn block_policy_waits_for_room_and_loses_nothing() {
        let path = temp_path("block");
        let writer = JsonlWriter::open(&path, config(true, 32)).unwrap();
        for _ in 0..5_000 {
            loop {
                match writer.append(b"{\"x\":12345}\n").unwrap() {
                    Appended::Queued => break,
                    Appended::MustWait => writer.make_room(),
                    Appended::Dropped => unreachable!(),
                }
            }
        }
        writer.close().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn io_errors_are_reported_once() {
        let writer = JsonlWriter::open(Path::new("/dev/full"), config(true, 1 << 20)).unwrap();
        writer.append(b"{}\n").unwrap();
        assert!(matches!(writer.flush(), Err(WriteError::Io(_))));
        assert!(writer.announce_error().is_some());
        assert!(writer.announce_error().is_none());
        assert_eq!(writer.flush(), Ok(()));
        writer.close().unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_when_no_other_writer_holds_the_file() {
        let path = temp_path("torn");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let first = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"torn").unwrap();
        // The first writer still holds the file: a second one must not cut what may be in flight.
        let second = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        assert!(std::fs::read(&path).unwrap().ends_with(b"{\"torn"));
        drop((first, second));
        std::fs::write(&path, b"no newline at all").unwrap();
        let _third = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
