//! The JSONL writer: a buffered file writer on its own thread, never touching the Python interpreter.
//!
//! Producers append whole lines to a pending buffer under a short lock; whoever writes swaps that buffer
//! out and writes it as one batch, so the file only ever receives whole lines, in order (the `output`
//! mutex is held from taking a batch to writing it). The writer thread writes when the buffer passes
//! `buffer_bytes`, every `flush_interval` and at `close()`. Waking a sleeping thread costs the producer a
//! syscall and, on a virtual machine, some 10 µs: so while lines keep coming (each write found at least
//! `buffer_bytes`), the writer polls every `BUSY_POLL` instead and producers do not wake it (unless
//! half of `max_pending_bytes` is pending); a poll that finds less puts it back to sleep. `flush()` writes from the calling thread and
//! returns once the lines are in the file. Pending bytes are bounded by `max_pending_bytes`: a producer
//! that finds the buffer full writes it itself (`block_when_full`, see `make_room`) or the line is dropped
//! and counted.
//!
//! The file itself (locking, torn-tail repair, roll-back, following renames) is `log_file`'s. Lines that
//! could not be written are counted as lost.
//!
//! The first I/O error is kept and returned by the next `flush()`/`close()`; `announce` tells of each new
//! one (and of lost lines) once. `close()` waits at most `close_timeout` for the writer.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log_file::Output;

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
    /// The writer thread is polling (lines keep coming): producers need not wake it.
    writer_polls: bool,
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

struct Shared {
    state: Mutex<State>,
    /// Held while a batch is taken from `pending` and written, so batches reach the file in order
    /// whichever thread writes them. Lock order: `output`, then `state`. None once the writer thread has
    /// written its last batch: the file is closed.
    output: Mutex<Option<Output>>,
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
        let Some(output) = output.as_mut().filter(|_| !state.pending.is_empty() && !state.abandoned) else {
            return;
        };
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
        // Room for every pending byte from the start: a buffer grown by doubling leaves the allocator each
        // smaller size it outgrew (resident memory a long run never gets back), and untouched room costs
        // no memory, only address space.
        let capacity = config.max_pending_bytes.min(MAX_KEPT_CAPACITY);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: reused_buffer(capacity),
                pending_lines: 0,
                spare: reused_buffer(capacity),
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
                writer_polls: false,
            }),
            output: Mutex::new(Some(output)),
            news: AtomicBool::new(false),
            wake_writer: Condvar::new(),
            writer_progress: Condvar::new(),
            config,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("rlm_toolkit-jsonl".into()).spawn(move || write_loop(&thread_shared))?;
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
        state.pending.extend_from_slice(line);
        state.pending_lines += 1;
        // The next lines' bytes: the writer's core last read them (a batch before), so a store would wait
        // for that core to give them up. Asked for now, they are this core's by the time they are filled.
        let room = state.pending.capacity() - state.pending.len();
        let ahead = state.pending.as_ptr().wrapping_add(state.pending.len() + PREFETCH_AHEAD);
        crate::simd::prefetch_for_write(ahead, room.saturating_sub(PREFETCH_AHEAD).min(PREFETCH_BYTES));
        let wake_at = if state.writer_polls { config.max_pending_bytes / 2 } else { config.buffer_bytes };
        let must_wake = was_below_mark(&state, line.len(), wake_at);
        // Woken after the lock is released, the writer does not wake into a mutex it must wait for.
        drop(state);
        if must_wake {
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
                let panicked = thread.join().is_err();
                let mut state = self.shared.lock();
                if panicked {
                    state.first_error.get_or_insert_with(|| "the JSONL writer thread panicked".into());
                }
                // Closed, the writer takes no more lines: its buffers can serve the next one.
                keep_buffer(std::mem::take(&mut state.pending));
                keep_buffer(std::mem::take(&mut state.spare));
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

/// How far past the end of the pending lines, and how many bytes, `append` prefetches for writing: about
/// one line ahead, and what the next line or two fill (measured best of a few choices).
const PREFETCH_AHEAD: usize = 256;
const PREFETCH_BYTES: usize = 384;

/// Buffers of the writers closed in this process, for the next ones: a new buffer costs a page fault per
/// 4 KiB the first time it fills, which a program that opens a log per batch of work would pay each time.
static KEPT_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const MAX_KEPT_BUFFERS: usize = 4;
/// Buffers beyond the default bound on pending bytes (a writer given a larger bound) are freed instead.
const MAX_KEPT_CAPACITY: usize = 4 << 20;

fn reused_buffer(capacity: usize) -> Vec<u8> {
    // `try_lock`, here and in `keep_buffer`: a child forked while another thread held the lock must not
    // wait for it forever.
    let kept = KEPT_BUFFERS.try_lock().ok().and_then(|mut kept| kept.pop());
    let mut buffer = kept.unwrap_or_default();
    buffer.reserve_exact(capacity);
    buffer
}

fn keep_buffer(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    if let Ok(mut kept) = KEPT_BUFFERS.try_lock() {
        if kept.len() < MAX_KEPT_BUFFERS {
            buffer.clear();
            kept.push(buffer);
        }
    }
}

/// Whether the line just appended (of `line_len` bytes) took the pending bytes across `mark`.
fn was_below_mark(state: &State, line_len: usize, mark: usize) -> bool {
    let now = state.pending.len();
    now >= mark && now - line_len < mark
}

/// How often a busy writer looks for lines, instead of being woken for each batch. A producer at full speed
/// (about 1 GB/s) then leaves batches of a few hundred KiB: they stay in the CPU's cache between its writes
/// and the kernel's copy, and the pages of the buffers are few (every 1 ms measured 20 % slower per event).
const BUSY_POLL: Duration = Duration::from_micros(250);

/// The writer thread: writes when a batch's worth is pending, on a flush request, every
/// `flush_interval`, and at close; while busy, every `BUSY_POLL`.
fn write_loop(shared: &Shared) {
    let config = shared.config;
    loop {
        let state = shared.lock();
        let (wait, wake_at) = if state.writer_polls {
            (BUSY_POLL.min(config.flush_interval), config.max_pending_bytes / 2)
        } else {
            (config.flush_interval, config.buffer_bytes)
        };
        let (mut state, _) = shared
            .wake_writer
            .wait_timeout_while(state, wait, |state| {
                !state.closing && state.pending.len() < wake_at && state.flush_done == state.flush_requested
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let closing = state.closing;
        let request = state.flush_requested;
        state.writer_polls = state.pending.len() >= config.buffer_bytes;
        drop(state);
        shared.write_pending();
        if closing {
            // Before `finished` is set: once `close()` returns, the file is closed (its descriptor free, and
            // a log deleted or moved by then gives its space back).
            shared.output.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        }
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
    use crate::log_file::torn_sidecar_path;
    use std::io::Write;
    use std::path::PathBuf;

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
    fn a_busy_writer_polls_and_writes_the_last_lines_without_a_wake_or_an_interval() {
        let path = temp_path("busy");
        let config = WriterConfig { flush_interval: Duration::from_secs(60), buffer_bytes: 4096, ..config(true, 1 << 24) };
        let writer = JsonlWriter::open(&path, config).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(100));
        let started = Instant::now();
        let mut lines = 0;
        // Until the writer has found a full buffer at one of its wakes, and so polls.
        while !writer.shared.lock().writer_polls && started.elapsed() < Duration::from_secs(5) {
            for _ in 0..1000 {
                // As the sink does: a full buffer is written by the caller, then the line appended.
                while writer.append(line.as_bytes()).unwrap() == Appended::MustWait {
                    writer.make_room();
                }
                lines += 1;
            }
        }
        assert!(writer.shared.lock().writer_polls, "a writer that keeps finding full buffers polls");
        // Fewer bytes than a buffer: no producer wakes the writer for them, and the interval is a minute away.
        writer.append(line.as_bytes()).unwrap();
        lines += 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path).unwrap().lines().count() < lines && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), lines);
        // The batch with the last line may have been a full one: the poll after it finds nothing.
        while writer.shared.lock().writer_polls && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!writer.shared.lock().writer_polls, "a poll that finds less than a buffer puts the writer back to sleep");
        drop(writer);
        let _ = std::fs::remove_file(&path);
    }

    fn descriptors_open_on(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[test]
    fn close_lets_the_file_go() {
        let path = temp_path("descriptor");
        let writer = JsonlWriter::open(&path, config(true, 1 << 20)).unwrap();
        writer.append(b"{\"a\":1}\n").unwrap();
        assert_eq!(descriptors_open_on(&path), 1);
        writer.close().unwrap();
        assert_eq!(descriptors_open_on(&path), 0, "a closed writer keeps no descriptor of its file");
        writer.flush().unwrap();
        assert_eq!(writer.append(b"{}\n"), Err(WriteError::Closed));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn buffers_hold_every_pending_byte_from_the_start_and_never_reallocate() {
        let path = temp_path("capacity");
        let max_pending = 1 << 20;
        let writer =
            JsonlWriter::open(&path, WriterConfig { flush_interval: Duration::from_secs(60), ..config(true, max_pending) }).unwrap();
        let (pending, spare) = {
            let state = writer.shared.lock();
            assert!(state.pending.capacity() >= max_pending && state.spare.capacity() >= max_pending);
            (state.pending.as_ptr(), state.spare.as_ptr())
        };
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1000));
        // Up to the bound: the same two allocations throughout (a buffer grown by doubling would move).
        for _ in 0..(max_pending / line.len()) {
            assert_eq!(writer.append(line.as_bytes()), Ok(Appended::Queued));
        }
        {
            let state = writer.shared.lock();
            assert!([pending, spare].contains(&state.pending.as_ptr()), "the pending buffer was reallocated");
        }
        writer.close().unwrap();
    }

    #[test]
    fn a_writer_opened_after_another_closed_writes_only_its_own_lines() {
        // The second writer may take the first one's buffers: they must come empty.
        let (first, second) = (temp_path("kept-first"), temp_path("kept-second"));
        let writer = JsonlWriter::open(&first, config(true, 1 << 20)).unwrap();
        for index in 0..5000 {
            writer.append(format!("{{\"first\":{index}}}\n").as_bytes()).unwrap();
        }
        writer.close().unwrap();
        let writer = JsonlWriter::open(&second, config(true, 1 << 20)).unwrap();
        let mut expected = String::new();
        for index in 0..100 {
            let line = format!("{{\"second\":{index}}}\n");
            writer.append(line.as_bytes()).unwrap();
            expected.push_str(&line);
            // Each flush swaps the buffers, so both are filled.
            writer.flush().unwrap();
        }
        writer.close().unwrap();
        assert_eq!(std::fs::read_to_string(&first).unwrap().lines().count(), 5000);
        assert_eq!(std::fs::read_to_string(&second).unwrap(), expected);
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
    fn a_torn_tail_is_moved_to_the_sidecar_and_a_whole_record_gets_its_newline() {
        let path = temp_path("torn");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        drop(JsonlWriter::open(&path, config(true, 1 << 20)).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        let sidecar = std::fs::read_to_string(torn_sidecar_path(&path)).unwrap();
        assert!(
            sidecar
                .ends_with(&format!(",\"log\":{:?},\"offset\":16,\"length\":5,\"fragment\":\"{{\\\"c\\\":\"}}\n", path.to_str().unwrap())),
            "{sidecar}"
        );
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
