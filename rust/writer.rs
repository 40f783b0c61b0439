//! The JSONL writer: a buffered file writer on its own thread, never touching the Python interpreter.
//!
//! Producers append whole lines to a pending buffer under a short lock; whoever writes swaps that buffer
//! out and writes it as one batch, so the file only ever receives whole lines, in order (the `output`
//! mutex is held from taking a batch to writing it). The writer thread writes when the buffer passes
//! `buffer_bytes`, every `flush_interval` and at `close()`; `flush()` writes from the calling thread and
//! returns once the lines are in the file. Pending bytes are bounded by `max_pending_bytes`: a producer
//! that finds the buffer full writes it itself (`block_when_full`, see `make_room`) or the line is dropped
//! and counted.
//!
//! A regular file may be shared with writers in other processes. Each batch is written under
//! `flock(LOCK_EX)`, and under that lock, before writing: the path is checked to still name the open file
//! (renamed or deleted: reported, and the path opened again), a torn tail left by a writer that died
//! mid-write is repaired (`repair_torn_tail`), and the file's size is noted so a write that fails part-way
//! is cut back to its last whole line. Lines that could not be written are counted as lost.
//!
//! The first I/O error is kept and returned by the next `flush()`/`close()`; `announce` tells of each new
//! one (and of lost lines) once. `close()` waits at most `close_timeout` for the writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub flush_interval: Duration,
    pub buffer_bytes: usize,
    pub max_pending_bytes: usize,
    pub block_when_full: bool,
    /// How long `close()` waits for the last lines to be written before it gives up on them.
    pub close_timeout: Duration,
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

/// News for the producers, told once by `announce`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub error: Option<String>,
    pub lost_lines: u64,
}

/// How much of an existing file `open` reads to decide whether it is a JSONL log.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// The sidecar a torn tail is moved to, next to the log: `<log>.torn`.
pub fn torn_sidecar_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".torn");
    PathBuf::from(name)
}

struct State {
    pending: Vec<u8>,
    pending_lines: u64,
    spare: Vec<u8>,
    /// Lines of the batch being written right now (taken from `pending`, not yet known to be written).
    in_flight_lines: u64,
    closing: bool,
    /// The writer thread wrote its last batch and stopped.
    finished: bool,
    /// `close()` gave up waiting: nothing more is written.
    abandoned: bool,
    first_error: Option<String>,
    /// The latest I/O error, kept after `first_error` was reported, for `announce`.
    latest_error: Option<String>,
    unannounced_error: Option<String>,
    dropped_lines: u64,
    lost_lines: u64,
    unannounced_lost: u64,
    flush_requested: u64,
    flush_done: u64,
}

impl State {
    fn record_error(&mut self, message: String) {
        self.first_error.get_or_insert_with(|| message.clone());
        if self.latest_error.as_ref() != Some(&message) {
            self.latest_error = Some(message.clone());
            self.unannounced_error = Some(message);
        }
    }

    fn record_lost(&mut self, lines: u64) {
        self.lost_lines = self.lost_lines.saturating_add(lines);
        self.unannounced_lost = self.unannounced_lost.saturating_add(lines);
    }
}

/// The open file and what is known about it.
struct Output {
    file: File,
    path: PathBuf,
    /// A regular file: locked per batch, repaired, rolled back and watched for renames. Anything else
    /// (a FIFO, a character device) is written as a stream.
    regular: bool,
}

/// What one batch write came to.
#[derive(Debug, Default)]
struct BatchOutcome {
    errors: Vec<String>,
    lost_lines: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Held while a batch is taken from `pending` and written, so batches reach the file in order
    /// whichever thread writes them. Lock order: `output`, then `state`.
    output: Mutex<Output>,
    /// Set with news for `announce`; lets producers notice it without taking the lock.
    news: AtomicBool,
    wake_writer: Condvar,
    /// Signalled when the writer thread has written (a requested flush, or its last batch).
    writer_progress: Condvar,
    config: WriterConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (plain fields), so recover.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes every pending line and writes it as one batch.
    fn write_pending(&self) {
        let mut output = self.output.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut state = self.lock();
        if state.pending.is_empty() || state.abandoned {
            return;
        }
        let spare = std::mem::take(&mut state.spare);
        let mut batch = std::mem::replace(&mut state.pending, spare);
        state.in_flight_lines = std::mem::take(&mut state.pending_lines);
        drop(state);
        let outcome = output.write_batch(&batch);
        batch.clear();
        let mut state = self.lock();
        state.spare = batch;
        state.in_flight_lines = 0;
        if state.abandoned {
            return;
        }
        let news = !outcome.errors.is_empty() || outcome.lost_lines > 0;
        for error in outcome.errors {
            state.record_error(error);
        }
        if outcome.lost_lines > 0 {
            state.record_lost(outcome.lost_lines);
        }
        if news {
            self.news.store(true, Ordering::Release);
        }
    }
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
    options.open(path)
}

/// `flock(LOCK_EX)`, taken again when a signal interrupts the wait (a signal must not cost a batch).
fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        match file.lock() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// Refuses a file that is not a JSONL log, reading at most `SNIFF_BYTES`: a non-empty file must start with
/// `{`, and if its first line ends within those bytes that line must be a JSON object. A first line with no
/// newline in them is a record too long to judge or a torn first record: `repair_torn_tail` handles it.
fn check_is_jsonl(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let mut head = vec![0u8; size.min(SNIFF_BYTES as u64) as usize];
    file.read_exact_at(&mut head, 0)?;
    let reason = if head[0] != b'{' {
        "its first byte is not '{'"
    } else {
        match memchr::memchr(b'\n', &head) {
            Some(end) if !is_json_object(&head[..end]) => "its first line is not a JSON object",
            _ => return Ok(()),
        }
    };
    Err(io::Error::new(io::ErrorKind::InvalidData, reason))
}

/// Repairs the bytes after the last newline of a file of `size` bytes, left by a writer that died
/// mid-write: a whole JSON object only missing its newline gets it; anything else is appended to the
/// sidecar `<log>.torn` (one JSON record per fragment) and then cut from the log, so nothing is deleted.
/// Must be called holding the file's exclusive lock. Returns the file's new size.
fn repair_torn_tail(file: &File, log_path: &Path, size: u64) -> io::Result<u64> {
    if size == 0 {
        return Ok(0);
    }
    let mut last_byte = [0u8; 1];
    file.read_exact_at(&mut last_byte, size - 1)?;
    if last_byte[0] == b'\n' {
        return Ok(size);
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut end = size;
    let mut tail_start = 0;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let window = &mut chunk[..(end - start) as usize];
        file.read_exact_at(window, start)?;
        if let Some(newline) = memchr::memrchr(b'\n', window) {
            tail_start = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    let mut tail = vec![0u8; (size - tail_start) as usize];
    file.read_exact_at(&mut tail, tail_start)?;
    if is_json_object(&tail) {
        (&*file).write_all(b"\n")?;
        return Ok(size + 1);
    }
    move_aside(log_path, tail_start, &tail)?;
    file.set_len(tail_start)?;
    Ok(tail_start)
}

/// Appends `{"torn_at", "log", "offset", "length", "fragment" | "fragment_base64"}` to the sidecar and
/// syncs it: `fragment` holds the bytes when they are UTF-8, `fragment_base64` otherwise.
fn move_aside(log_path: &Path, offset: u64, fragment: &[u8]) -> io::Result<()> {
    let mut record = Vec::with_capacity(fragment.len() * 2 + 160);
    record.extend_from_slice(b"{\"torn_at\":");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    crate::jsonl::push_iso_utc(&mut record, now);
    record.extend_from_slice(b",\"log\":");
    crate::jsonl::push_string(&mut record, &log_path.to_string_lossy());
    write!(record, ",\"offset\":{offset},\"length\":{}", fragment.len())?;
    match std::str::from_utf8(fragment) {
        Ok(text) => {
            record.extend_from_slice(b",\"fragment\":");
            crate::jsonl::push_string(&mut record, text);
        }
        Err(_) => {
            record.extend_from_slice(b",\"fragment_base64\":\"");
            push_base64(&mut record, fragment);
            record.push(b'"');
        }
    }
    record.extend_from_slice(b"}\n");
    let mut sidecar = open_private(&torn_sidecar_path(log_path))?;
    sidecar.write_all(&record)?;
    sidecar.sync_data()
}

fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for group in bytes.chunks(3) {
        let value = (u32::from(group[0]) << 16)
            | (u32::from(*group.get(1).unwrap_or(&0)) << 8)
            | u32::from(*group.get(2).unwrap_or(&0));
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if index <= group.len() { ALPHABET[(value >> shift) as usize & 63] } else { b'=' });
        }
    }
}

/// Whether `bytes` is one strict JSON object (RFC 8259, UTF-8), optionally surrounded by whitespace.
pub fn is_json_object(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    let mut parser = JsonCheck { bytes: text.as_bytes(), at: 0 };
    parser.skip_whitespace();
    if parser.peek() != Some(b'{') || !parser.value() {
        return false;
    }
    parser.skip_whitespace();
    parser.at == parser.bytes.len()
}

/// A JSON grammar check without building values; containers are tracked on a stack, not by recursion.
struct JsonCheck<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonCheck<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> bool {
        // Each open container: b'{' or b'['.
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    if self.eat(b'}') {
                        if !self.after_value(&mut open) {
                            return false;
                        }
                    } else {
                        if !self.key() {
                            return false;
                        }
                        open.push(b'{');
                        continue;
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    if self.eat(b']') {
                        if !self.after_value(&mut open) {
                            return false;
                        }
                    } else {
                        open.push(b'[');
                        continue;
                    }
                }
                _ => {
                    if !self.scalar() || !self.after_value(&mut open) {
                        return false;
                    }
                }
            }
            if open.is_empty() {
                return true;
            }
        }
    }

    /// After a value inside containers: closes finished containers, then expects the next element.
    /// Returns false on a syntax error; leaves `open` empty when the outermost value is complete.
    fn after_value(&mut self, open: &mut Vec<u8>) -> bool {
        while let Some(&container) = open.last() {
            let close = if container == b'{' { b'}' } else { b']' };
            if self.eat(b',') {
                return container == b'[' || self.key();
            }
            if !self.eat(close) {
                return false;
            }
            open.pop();
        }
        true
    }

    /// A member's `"key":`.
    fn key(&mut self) -> bool {
        self.skip_whitespace();
        self.string() && self.eat(b':')
    }

    fn scalar(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    fn string(&mut self) -> bool {
        if self.peek() != Some(b'"') {
            return false;
        }
        self.at += 1;
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.at += 1;
                    return true;
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                        Some(b'u') => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5);
                            if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.at += 5;
                        }
                        _ => return false,
                    }
                }
                Some(byte) if byte < 0x20 => return false,
                Some(_) => self.at += 1,
            }
        }
    }
}

impl Output {
    fn open(path: &Path) -> io::Result<Output> {
        let file = open_private(path)?;
        let regular = file.metadata()?.file_type().is_file();
        if regular {
            lock_exclusive(&file)?;
            let prepared = file
                .metadata()
                .and_then(|metadata| check_is_jsonl(&file, metadata.len()).map(|()| metadata.len()))
                .and_then(|size| repair_torn_tail(&file, path, size));
            file.unlock()?;
            prepared?;
        }
        Ok(Output { file, path: path.to_path_buf(), regular })
    }

    fn write_batch(&mut self, batch: &[u8]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        if !self.regular {
            if let Err((error, unwritten_lines)) = write_stream(&self.file, batch) {
                outcome.errors.push(error.to_string());
                outcome.lost_lines = unwritten_lines;
            }
            return outcome;
        }
        if let Err(error) = lock_exclusive(&self.file) {
            outcome.errors.push(format!("cannot lock the file: {error}"));
            outcome.lost_lines = count_lines(batch);
            return outcome;
        }
        if let Some(notice) = self.follow_path() {
            outcome.errors.push(notice);
        }
        let written = self
            .file
            .metadata()
            .and_then(|metadata| repair_torn_tail(&self.file, &self.path, metadata.len()))
            .map_err(|error| (error, count_lines(batch)))
            .and_then(|size| write_or_roll_back(&self.file, batch, size));
        if let Err((error, unwritten_lines)) = written {
            outcome.errors.push(error.to_string());
            outcome.lost_lines = unwritten_lines;
        }
        let _ = self.file.unlock();
        outcome
    }

    /// Whether the path still names the open file; if it was renamed or deleted, opens the path again
    /// (locked, like the file it replaces) and tells what happened.
    fn follow_path(&mut self) -> Option<String> {
        let open = self.file.metadata().ok()?;
        let moved = match std::fs::metadata(&self.path) {
            Ok(current) => current.dev() != open.dev() || current.ino() != open.ino(),
            Err(error) => error.kind() == io::ErrorKind::NotFound,
        };
        if !moved && open.nlink() > 0 {
            return None;
        }
        let what = if open.nlink() == 0 {
            "it was deleted while open (lines written to it since are gone)"
        } else {
            "it was renamed or replaced while open (earlier lines are in the renamed file)"
        };
        match open_private(&self.path).and_then(|file| lock_exclusive(&file).map(|()| file)) {
            Ok(file) => {
                let _ = self.file.unlock();
                self.regular = file.metadata().map(|metadata| metadata.file_type().is_file()).unwrap_or(false);
                self.file = file;
                Some(format!("{what}; logging goes on in a new file at this path"))
            }
            Err(error) => Some(format!("{what}; opening the path again failed ({error}), so lines still go to the old file")),
        }
    }
}

/// Writes `batch` at the end of a regular file of `size_before` bytes; if the write fails part-way, cuts
/// the file back to the last whole line written. The error carries how many lines did not make it.
fn write_or_roll_back(file: &File, batch: &[u8], size_before: u64) -> Result<(), (io::Error, u64)> {
    let mut written = 0;
    while written < batch.len() {
        match (&*file).write(&batch[written..]) {
            Ok(0) => return Err(roll_back(file, batch, size_before, written, io::ErrorKind::WriteZero.into())),
            Ok(count) => written += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(roll_back(file, batch, size_before, written, error)),
        }
    }
    Ok(())
}

fn roll_back(file: &File, batch: &[u8], size_before: u64, written: usize, error: io::Error) -> (io::Error, u64) {
    let whole = memchr::memrchr(b'\n', &batch[..written]).map_or(0, |newline| newline + 1);
    let unwritten_lines = count_lines(&batch[whole..]);
    if whole < written {
        if let Err(cut_error) = file.set_len(size_before + whole as u64) {
            let message = format!("{error}; cutting the partial line it left also failed: {cut_error}");
            return (io::Error::new(error.kind(), message), unwritten_lines);
        }
    }
    (error, unwritten_lines)
}

/// Writes `batch` to a stream (no size, no cutting back). A line written in part counts as not written.
fn write_stream(file: &File, batch: &[u8]) -> Result<(), (io::Error, u64)> {
    let mut written = 0;
    while written < batch.len() {
        match (&*file).write(&batch[written..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), unwritten_lines(batch, written))),
            Ok(count) => written += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err((error, unwritten_lines(batch, written))),
        }
    }
    Ok(())
}

fn unwritten_lines(batch: &[u8], written: usize) -> u64 {
    let whole = memchr::memrchr(b'\n', &batch[..written]).map_or(0, |newline| newline + 1);
    count_lines(&batch[whole..])
}

pub struct JsonlWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl JsonlWriter {
    /// Opens `path` for appending (created 0600) and starts the writer thread. An existing regular file
    /// must look like a JSONL log (`check_is_jsonl`, an `InvalidData` error otherwise, the file untouched);
    /// a torn tail left by a writer that died mid-write is repaired (`repair_torn_tail`).
    pub fn open(path: &Path, config: WriterConfig) -> io::Result<JsonlWriter> {
        let output = Output::open(path)?;
        let capacity = (config.buffer_bytes * 2).min(config.max_pending_bytes);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(capacity),
                pending_lines: 0,
                spare: Vec::with_capacity(capacity),
                in_flight_lines: 0,
                closing: false,
                finished: false,
                abandoned: false,
                first_error: None,
                latest_error: None,
                unannounced_error: None,
                dropped_lines: 0,
                lost_lines: 0,
                unannounced_lost: 0,
                flush_requested: 0,
                flush_done: 0,
            }),
            output: Mutex::new(output),
            news: AtomicBool::new(false),
            wake_writer: Condvar::new(),
            writer_progress: Condvar::new(),
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
        state.pending_lines += 1;
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

    /// Like `flush`, but has the writer thread write and waits at most `timeout` for it: never blocks
    /// longer, whatever holds the file (a signal handler at exit can call it). Lines not yet written when
    /// it gives up stay pending; the error says so.
    pub fn flush_within(&self, timeout: Duration) -> Result<(), WriteError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        if state.closing {
            return Self::report(&mut state);
        }
        state.flush_requested += 1;
        let request = state.flush_requested;
        self.shared.wake_writer.notify_one();
        while state.flush_done < request && !state.finished {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
                let waiting = state.pending_lines + state.in_flight_lines;
                return Err(WriteError::Io(format!(
                    "flush gave up after {:.3} s: the file did not accept writes in time; {waiting} lines are still waiting to be written",
                    timeout.as_secs_f64()
                )));
            };
            state = self.shared.writer_progress.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        Self::report(&mut state)
    }

    /// Has the writer thread write the last lines and stop, waiting at most `close_timeout` for it; if it
    /// cannot finish in time the lines not written are counted as lost and the error names how many.
    /// Never blocks past the deadline, whatever holds the file. Idempotent.
    pub fn close(&self) -> Result<(), WriteError> {
        let timeout = self.shared.config.close_timeout;
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.wake_writer.notify_one();
        while !state.finished && !state.abandoned {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
                state.abandoned = true;
                let lost = state.pending_lines + state.in_flight_lines;
                state.pending.clear();
                state.pending_lines = 0;
                state.record_lost(lost);
                let gave_up = format!(
                    "close() gave up after {:.3} s (close_timeout): the file did not accept writes in time; {lost} lines were not written",
                    timeout.as_secs_f64()
                );
                state.first_error = Some(match state.first_error.take() {
                    Some(earlier) => format!("{gave_up}; earlier: {earlier}"),
                    None => gave_up,
                });
                break;
            };
            state = self.shared.writer_progress.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        let finished = state.finished;
        drop(state);
        if finished {
            let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let Some(thread) = thread {
                if thread.join().is_err() {
                    let mut state = self.shared.lock();
                    state.first_error.get_or_insert_with(|| "the JSONL writer thread panicked".into());
                }
            }
        }
        Self::report(&mut self.shared.lock())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closing
    }

    pub fn dropped_lines(&self) -> u64 {
        self.shared.lock().dropped_lines
    }

    /// Lines accepted but not written: a write that failed, or a `close()` that gave up.
    pub fn lost_lines(&self) -> u64 {
        self.shared.lock().lost_lines
    }

    /// A new I/O error and lines lost since the last call, once: for announcing them as they happen. The
    /// error stays kept for `flush`/`close` to return.
    pub fn announce(&self) -> Option<Announcement> {
        // A plain load first: the swap, a locked instruction, is only paid when there is news.
        if !self.shared.news.load(Ordering::Relaxed) || !self.shared.news.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut state = self.shared.lock();
        Some(Announcement { error: state.unannounced_error.take(), lost_lines: std::mem::take(&mut state.unannounced_lost) })
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

/// The writer thread: writes when a batch's worth is pending, on a flush request, every
/// `flush_interval`, and at close.
fn write_loop(shared: &Shared) {
    let config = shared.config;
    loop {
        let state = shared.lock();
        let (state, _) = shared
            .wake_writer
            .wait_timeout_while(state, config.flush_interval, |state| {
                !state.closing && state.pending.len() < config.buffer_bytes && state.flush_done == state.flush_requested
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let closing = state.closing;
        let request = state.flush_requested;
        drop(state);
        shared.write_pending();
        let mut state = shared.lock();
        state.flush_done = state.flush_done.max(request);
        state.finished = closing;
        drop(state);
        shared.writer_progress.notify_all();
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rlm_toolkit_jsonl_{}_{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(torn_sidecar_path(&path));
        path
    }

    fn config(block: bool, max_pending: usize) -> WriterConfig {
        WriterConfig {
            flush_interval: Duration::from_millis(50),
            buffer_bytes: 64,
            max_pending_bytes: max_pending,
            block_when_full: block,
            close_timeout: Duration::from_secs(5),
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
        writer.append(b"{\"last\":1}\n").unwrap();
        writer.flush_within(Duration::from_secs(5)).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("{\"last\":1}\n"));
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

    #[test]
    fn io_errors_and_lost_lines_are_announced_once() {
        let writer = JsonlWriter::open(Path::new("/dev/full"), config(true, 1 << 20)).unwrap();
        writer.append(b"{}\n").unwrap();
        writer.append(b"{}\n").unwrap();
        assert!(matches!(writer.flush(), Err(WriteError::Io(_))));
        let announced = writer.announce().unwrap();
        assert!(announced.error.unwrap().contains("No space left"));
        assert_eq!(announced.lost_lines, 2);
        assert_eq!(writer.announce(), None);
        assert_eq!(writer.flush(), Ok(()));
        assert_eq!(writer.lost_lines(), 2);
        writer.close().unwrap();
    }

    #[test]
    fn json_objects_are_told_from_everything_else() {
        for good in [&b"{}"[..], b" {\"a\": [1, -2.5e+3, true, null, {\"b\": \"\\u00e9\\n\"}]} ", b"{\"\":{\"\":[]}}"] {
            assert!(is_json_object(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [&b""[..], b"[]", b"{", b"{\"a\":1", b"{\"a\":01}", b"{\"a\":1,}", b"{\"a\" 1}", b"{\"a\":NaN}",
            b"{\"a\":\"\x01\"}", b"{} {}", b"{\"a\":1.}", b"{\"a\":[1,]}", b"{\"a\xff\":1}", b"{\"a\":\"\\x\"}"] {
            assert!(!is_json_object(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_torn_tail_is_moved_to_the_sidecar_and_a_whole_record_gets_its_newline() {
        let path = temp_path("torn");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        drop(JsonlWriter::open(&path, config(true, 1 << 20)).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        let sidecar = std::fs::read_to_string(torn_sidecar_path(&path)).unwrap();
        assert!(sidecar.ends_with(&format!(",\"log\":{:?},\"offset\":16,\"length\":5,\"fragment\":\"{{\\\"c\\\":\"}}\n", path.to_str().unwrap())), "{sidecar}");
        std::fs::write(&path, b"{\"whole\":true}").unwrap();
        drop(JsonlWriter::open(&path, config(true, 1 << 20)).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"whole\":true}\n");
        assert_eq!(std::fs::read_to_string(torn_sidecar_path(&path)).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_torn_tail_left_while_open_is_repaired_before_the_next_batch() {
        let path = temp_path("torn_live");
        let writer = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        writer.append(b"{\"n\":1}\n").unwrap();
        writer.flush().unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"dead\":\xff").unwrap();
        writer.append(b"{\"n\":2}\n").unwrap();
        writer.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}\n{\"n\":2}\n");
        let sidecar = std::fs::read_to_string(torn_sidecar_path(&path)).unwrap();
        assert!(sidecar.contains("\"offset\":8,\"length\":9,\"fragment_base64\":\"eyJkZWFkIjr/\"}"), "{sidecar}");
    }

    #[test]
    fn a_file_that_is_not_a_jsonl_log_is_refused_untouched() {
        let path = temp_path("foreign");
        for content in [&b"name,age\nbob,3\n"[..], b"{\n  \"pretty\": true\n}\n", b"\x00\x01binary", b"plain text"] {
            std::fs::write(&path, content).unwrap();
            let error = JsonlWriter::open(&path, config(true, 1 << 20)).err().unwrap();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn a_failed_write_is_cut_back_to_the_last_whole_line() {
        let path = temp_path("rollback");
        let batch = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";
        // The file as a write of `batch` after `{"old":1}\n` left it when it failed after 20 bytes.
        std::fs::write(&path, b"{\"old\":1}\n{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let file = open_private(&path).unwrap();
        let (error, unwritten) = roll_back(&file, batch, 10, 20, io::Error::other("disk full"));
        assert_eq!((error.to_string().as_str(), unwritten), ("disk full", 1));
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"old\":1}\n{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&path, b"{\"old\":1}\n{\"a\"").unwrap();
        let (_, unwritten) = roll_back(&file, batch, 10, 4, io::Error::other("disk full"));
        assert_eq!(unwritten, 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"old\":1}\n");
    }

    #[test]
    fn a_renamed_or_deleted_log_is_reported_and_opened_again() {
        let path = temp_path("rename");
        let rotated = path.with_extension("1");
        let writer = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        writer.append(b"{\"n\":1}\n").unwrap();
        writer.flush().unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        writer.append(b"{\"n\":2}\n").unwrap();
        let Err(WriteError::Io(message)) = writer.flush() else { panic!("the rename went unnoticed") };
        assert!(message.contains("renamed"), "{message}");
        assert_eq!(std::fs::read(&rotated).unwrap(), b"{\"n\":1}\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":2}\n");
        std::fs::remove_file(&path).unwrap();
        writer.append(b"{\"n\":3}\n").unwrap();
        let Err(WriteError::Io(message)) = writer.flush() else { panic!("the deletion went unnoticed") };
        assert!(message.contains("deleted"), "{message}");
        writer.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":3}\n");
    }

    #[test]
    fn close_gives_up_at_its_deadline_and_counts_what_it_lost() {
        let path = temp_path("stuck");
        let writer = JsonlWriter::open(&path, WriterConfig { close_timeout: Duration::from_millis(200), ..config(true, 1 << 20) }).unwrap();
        // Another holder of the file lock stands for a write that never finishes.
        let holder = std::fs::File::open(&path).unwrap();
        holder.lock().unwrap();
        writer.append(b"{\"n\":1}\n").unwrap();
        writer.append(b"{\"n\":2}\n").unwrap();
        let started = Instant::now();
        let Err(WriteError::Io(message)) = writer.close() else { panic!("close() did not give up") };
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(message.contains("2 lines were not written"), "{message}");
        assert_eq!(writer.lost_lines(), 2);
        assert_eq!(writer.close(), Ok(()));
        holder.unlock().unwrap();
    }
}
