//! Replaying JSONL logs into `Metrics`: the file is read in large chunks, split into lines, and each line's
//! record fields that the metrics need are parsed in place (no value tree is built).
//!
//! `python/rlm_toolkit/_reference/replay.py` implements the same rules in plain Python:
//! - a line is a record when it is one strict JSON object (RFC 8259, UTF-8) whose `event` is a catalogue
//!   event and whose `ts` is a timestamp as `time::push_iso_utc` writes it; of a repeated key the last counts;
//!   every other line is foreign, counted and skipped;
//! - a last line without its newline is a torn tail, counted; it is replayed when it is a whole record;
//! - `run_id` is the record's string (lone surrogates each become three U+FFFD, as the metrics sink reads
//!   them), else "" ; `model` is the string, else none (a name with lone surrogates too);
//! - `llm_end` has no usage when its five token counts are all null or absent; otherwise each count that
//!   is an integer in 0..=u64::MAX counts, any other value as 0; `ttft_ms` is a JSON number, else none;
//! - a line nested deeper than `json_read::MAX_NESTING` is foreign.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::Read;

use rustc_hash::FxHashMap as HashMap;

use crate::events::EventKind;
use crate::json_read::{Cursor, JsonText};
use crate::metrics::{error_model_key, start_model_key, Metrics, MetricsState, Usage};
use crate::time::{parse_iso_micros, seconds_of_micros};

/// Bytes read per `read` call; a longer line grows the buffer.
const CHUNK_BYTES: usize = 8 << 20;

const MICROS_PER_MINUTE: i64 = 60_000_000;

/// One completed LLM call whose start was replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowCall {
    pub latency_ms: f64,
    pub run_id: String,
    pub model: Option<String>,
    /// Epoch seconds of the call's end.
    pub end_ts: f64,
    /// The call's place among the file's `llm_end` records: of equal latencies the earlier ranks first.
    pub order: u64,
}

impl SlowCall {
    fn ranks_before(&self, other: &SlowCall) -> bool {
        self.rank(other) == Ordering::Greater
    }

    /// Slower is greater; of equal latencies the earlier is greater.
    fn rank(&self, other: &SlowCall) -> Ordering {
        self.latency_ms.total_cmp(&other.latency_ms).then_with(|| other.order.cmp(&self.order))
    }
}

impl Eq for SlowCall {}

impl PartialOrd for SlowCall {
    fn partial_cmp(&self, other: &SlowCall) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SlowCall {
    fn cmp(&self, other: &SlowCall) -> Ordering {
        self.rank(other)
    }
}

/// What replaying one file found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Replay {
    pub records: u64,
    pub foreign_lines: u64,
    pub torn_tails: u64,
    /// The slowest completed calls, slowest first.
    pub slowest: Vec<SlowCall>,
    /// `(minute start in epoch seconds, completed calls that ended in it)`, earliest first.
    pub calls_per_minute: Vec<(i64, u64)>,
    /// The state of each model key's own aggregator, in first-seen order (see `PerModel`).
    pub by_model: Vec<(String, MetricsState)>,
}

/// Replays the log at `path` into `metrics`, keeping the `slowest` slowest calls.
pub fn replay_file(path: &std::path::Path, metrics: &mut Metrics, slowest: usize) -> std::io::Result<Replay> {
    replay_reader(std::fs::File::open(path)?, metrics, slowest)
}

/// Replays the JSONL lines read from `reader` into `metrics`.
pub fn replay_reader(mut reader: impl Read, metrics: &mut Metrics, slowest: usize) -> std::io::Result<Replay> {
    let mut replayer = Replayer::new(metrics, slowest);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    // Bytes of `buffer` holding a line not yet complete.
    let mut pending = 0;
    loop {
        if pending == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
        let read = match reader.read(&mut buffer[pending..]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let filled = pending + read;
        // Only the new bytes can hold the first newline: the pending ones were searched already.
        let Some(last_newline) = memchr::memrchr(b'\n', &buffer[pending..filled]).map(|at| pending + at) else {
            pending = filled;
            continue;
        };
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', &buffer[..=last_newline]) {
            replayer.line(&buffer[line_start..newline], false);
            line_start = newline + 1;
        }
        buffer.copy_within(last_newline + 1..filled, 0);
        pending = filled - last_newline - 1;
    }
    if pending > 0 {
        replayer.line(&buffer[..pending], true);
    }
    Ok(replayer.finish())
}

struct Replayer<'m> {
    metrics: &'m mut Metrics,
    keep_slowest: usize,
    /// The kept calls, the fastest of them on top.
    slowest: BinaryHeap<Reverse<SlowCall>>,
    completed: u64,
    per_minute: HashMap<i64, u64>,
    counts: Replay,
    parser: Parser,
    per_model: PerModel,
}

/// One aggregator per model key, fed the records the main one takes under that key: starts under the
/// start's key, ends and errors under the key the main aggregator counts them under, retries under the
/// key of the open run they name (none when it is not open). Only the main aggregator keeps runs open: it
/// pairs ends with starts (across files too) and hands the start time on, so each key's latencies are
/// those of its table row. Open and evicted runs, tool, memory and token events are counted by the main
/// aggregator only.
#[derive(Default)]
struct PerModel {
    aggregators: Vec<(String, Metrics)>,
    index_by_key: HashMap<String, usize>,
    /// The index `index` gave last.
    last: usize,
}

impl PerModel {
    fn index(&mut self, key: &str, main: &Metrics) -> usize {
        // Records of one model tend to come in runs: the last key is compared before any hashing.
        if self.aggregators.get(self.last).is_some_and(|(last, _)| last == key) {
            return self.last;
        }
        if let Some(&index) = self.index_by_key.get(key) {
            self.last = index;
            return index;
        }
        self.aggregators.push((key.to_owned(), main.empty_for(key)));
        self.last = self.aggregators.len() - 1;
        self.index_by_key.insert(key.to_owned(), self.last);
        self.last
    }
}

impl<'m> Replayer<'m> {
    fn new(metrics: &'m mut Metrics, keep_slowest: usize) -> Self {
        Replayer {
            metrics,
            keep_slowest,
            slowest: BinaryHeap::new(),
            completed: 0,
            per_minute: HashMap::default(),
            counts: Replay::default(),
            parser: Parser::default(),
            per_model: PerModel::default(),
        }
    }

    fn line(&mut self, line: &[u8], torn: bool) {
        if torn {
            self.counts.torn_tails += 1;
        }
        let Some(record) = self.parser.record(line) else {
            if !torn {
                self.counts.foreign_lines += 1;
            }
            return;
        };
        self.counts.records += 1;
        self.replay(&record);
    }

    fn replay(&mut self, record: &Record<'_>) {
        let ts = seconds_of_micros(record.ts_micros);
        let run_id = record.run_id.as_deref().unwrap_or("");
        let model = record.model.as_deref();
        let metrics = &mut *self.metrics;
        let per_model = &mut self.per_model;
        match record.kind {
            EventKind::LlmStart => {
                metrics.llm_start(run_id, model, ts);
                let index = per_model.index(start_model_key(model), metrics);
                per_model.aggregators[index].1.llm_start_after(model);
            }
            EventKind::LlmEnd => {
                let usage = record.usage();
                let (latency_ms, start_ts, key_index) = metrics.llm_end_keyed(run_id, model, usage, record.ttft_ms, ts);
                let index = per_model.index(metrics.model_key(key_index), metrics);
                let (key, aggregator) = &mut per_model.aggregators[index];
                aggregator.llm_end_after(start_ts, key, usage, record.ttft_ms, ts);
                *self.per_minute.entry(record.ts_micros.div_euclid(MICROS_PER_MINUTE) * 60).or_insert(0) += 1;
                let order = self.completed;
                self.completed += 1;
                if let Some(latency_ms) = latency_ms {
                    self.keep(SlowCall { latency_ms, run_id: String::new(), model: None, end_ts: ts, order }, record);
                }
            }
            EventKind::Error => {
                let start_model = metrics.open_run(run_id).and_then(|(_, start_model)| start_model);
                let key = error_model_key(model, start_model);
                let index = key.map(|key| per_model.index(key, metrics));
                metrics.llm_error(run_id, model, ts);
                if let Some(index) = index {
                    let (key, aggregator) = &mut per_model.aggregators[index];
                    // It keeps no run open, so the run id closes nothing.
                    aggregator.llm_error(run_id, Some(key), ts);
                }
            }
            EventKind::Retry => {
                if let Some((_, start_model)) = metrics.open_run(run_id) {
                    let index = per_model.index(start_model_key(start_model), metrics);
                    per_model.aggregators[index].1.retry();
                }
                metrics.retry();
            }
            EventKind::LlmNewToken => metrics.token(),
            EventKind::ToolStart => metrics.tool_start(),
            EventKind::ToolEnd => metrics.tool_end(),
            EventKind::MemoryStore => metrics.memory_store(),
            EventKind::MemoryRecall => metrics.memory_recall(),
            EventKind::RunStart | EventKind::RunEnd => {}
        }
    }

    /// Keeps `call` if it is among the slowest; its names are copied only then.
    fn keep(&mut self, mut call: SlowCall, record: &Record<'_>) {
        if self.keep_slowest == 0 {
            return;
        }
        if self.slowest.len() == self.keep_slowest && !self.slowest.peek().is_some_and(|Reverse(kept)| call.ranks_before(kept)) {
            return;
        }
        call.run_id = record.run_id.as_deref().unwrap_or("").to_owned();
        call.model = record.model.as_deref().map(str::to_owned);
        self.slowest.push(Reverse(call));
        if self.slowest.len() > self.keep_slowest {
            self.slowest.pop();
        }
    }

    fn finish(self) -> Replay {
        let mut replay = self.counts;
        // Ascending order of `Reverse` is slowest first.
        replay.slowest = self.slowest.into_sorted_vec().into_iter().map(|Reverse(call)| call).collect();
        replay.calls_per_minute = self.per_minute.into_iter().collect();
        replay.calls_per_minute.sort_unstable();
        replay.by_model = self.per_model.aggregators.into_iter().map(|(key, aggregator)| (key, aggregator.state())).collect();
        replay
    }
}

/// The fields of a record that the metrics read.
struct Record<'a> {
    kind: EventKind,
    ts_micros: i64,
    run_id: Option<std::borrow::Cow<'a, str>>,
    model: Option<std::borrow::Cow<'a, str>>,
    /// In `Usage` field order; None for null or absent.
    tokens: [Option<u64>; 5],
    ttft_ms: Option<f64>,
}

impl Record<'_> {
    fn usage(&self) -> Option<Usage> {
        if self.tokens.iter().all(Option::is_none) {
            return None;
        }
        let [prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens] = self.tokens.map(|count| count.unwrap_or(0));
        Some(Usage { prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens })
    }
}

const TOKEN_FIELDS: [&str; 5] = ["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"];

/// Reads records from lines; `open` is the container stack of skipped values, kept across lines.
#[derive(Default)]
struct Parser {
    open: Vec<u8>,
}

impl Parser {
    /// The record `line` holds, or None when it is foreign.
    fn record<'a>(&mut self, line: &'a [u8]) -> Option<Record<'a>> {
        let mut cursor = Cursor::new(std::str::from_utf8(line).ok()?);
        let mut event: Option<JsonText<'a>> = None;
        let mut ts: Option<JsonText<'a>> = None;
        let mut run_id: Option<JsonText<'a>> = None;
        let mut model: Option<JsonText<'a>> = None;
        let mut tokens = [None; 5];
        let mut ttft_ms = None;
        cursor.whitespace();
        cursor.expect(b'{')?;
        cursor.whitespace();
        if !cursor.eat(b'}') {
            loop {
                cursor.whitespace();
                let key = cursor.string()?;
                cursor.whitespace();
                cursor.expect(b':')?;
                cursor.whitespace();
                match &*key.text {
                    "event" => event = cursor.string_or_other(&mut self.open)?,
                    "ts" => ts = cursor.string_or_other(&mut self.open)?,
                    "run_id" => run_id = cursor.string_or_other(&mut self.open)?,
                    "model" => model = cursor.string_or_other(&mut self.open)?,
                    "ttft_ms" => {
                        ttft_ms = cursor.number_or_other(&mut self.open)?.map(|(number, _)| number.parse::<f64>().unwrap_or(f64::NAN))
                    }
                    name => match TOKEN_FIELDS.iter().position(|field| *field == name) {
                        Some(index) => tokens[index] = cursor.count(&mut self.open)?,
                        None => cursor.skip_value(&mut self.open)?,
                    },
                }
                cursor.whitespace();
                if cursor.eat(b'}') {
                    break;
                }
                cursor.expect(b',')?;
            }
        }
        cursor.whitespace();
        if !cursor.at_end() {
            return None;
        }
        let kind = EventKind::from_name(&event?.text)?;
        let ts_micros = parse_iso_micros(&ts?.text)?;
        let run_id = run_id.map(|id| id.text);
        let model = model.filter(|name| !name.lone_surrogate).map(|name| name.text);
        Some(Record { kind, ts_micros, run_id, model, tokens, ttft_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_read::MAX_NESTING;
    use crate::metrics::{Prices, COUNTER_NAMES};

    fn replay(log: &[u8], slowest: usize) -> (Replay, Metrics) {
        let mut metrics = Metrics::new(Prices::new(vec![("gpt-4o".to_owned(), 2.5, 10.0)], Vec::new()), 1000);
        let replay = replay_reader(log, &mut metrics, slowest).unwrap();
        (replay, metrics)
    }

    #[test]
    fn records_are_replayed_and_foreign_lines_counted() {
        let log = concat!(
            r#"{"ts":"2026-12-01T17:03:28.000000Z","event":"llm_start","run_id":"c1","parent_run_id":null,"model":"gpt-4o","prompt":"hi"}"#,
            "\n",
            "not json\n",
            "[1,2]\n",
            r#"{"ts":"2026-12-01T17:03:28.000000Z","event":"nope","run_id":"c1"}"#,
            "\n",
            r#"{"ts":"yesterday","event":"retry"}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:03:28.500000Z","event":"llm_end","run_id":"c1","model":"gpt-4o","response":{"a":[1,{"b":"\"x\\u00e9"}]},"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cached_tokens":0,"reasoning_tokens":1,"ttft_ms":12.5,"tags":["t"]}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","run_id":null} "#,
            "\n",
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry""#,
        );
        let (replay, metrics) = replay(log.as_bytes(), 5);
        assert_eq!((replay.records, replay.foreign_lines, replay.torn_tails), (3, 4, 1));
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.total_calls, snapshot.completed_calls, snapshot.retries), (1, 1, 1));
        assert_eq!((snapshot.prompt_tokens, snapshot.completion_tokens, snapshot.total_tokens), (1, 2, 3));
        assert_eq!(snapshot.avg_ttft_ms, Some(12.5));
        assert_eq!(replay.slowest.len(), 1);
        assert_eq!(replay.slowest[0].run_id, "c1");
        assert_eq!(replay.slowest[0].latency_ms, 500.0);
        assert_eq!(replay.calls_per_minute, vec![(1_796_144_580, 1)]);
    }

    #[test]
    fn a_torn_tail_that_is_a_whole_record_is_replayed() {
        let (replay, metrics) = replay(br#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry"}"#, 5);
        assert_eq!((replay.records, replay.foreign_lines, replay.torn_tails), (1, 0, 1));
        assert_eq!(metrics.snapshot().retries, 1);
    }

    #[test]
    fn strict_json_only() {
        for line in [
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry",}"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry"} x"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","x":NaN}"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","x":01}"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","x":"\x"}"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","x":[1,]}"#,
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","x":{"a"}}"#,
            "{\"ts\":\"2026-12-01T17:04:00.000000Z\",\"event\":\"retry\",\"x\":\"a\tb\"}",
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"retry","event":5}"#,
        ] {
            let (replay, _) = replay(format!("{line}\n").as_bytes(), 5);
            assert_eq!((replay.records, replay.foreign_lines), (0, 1), "{line}");
        }
        let (replay, _) = replay(b"{\"ts\":\"2026-12-01T17:04:00.000000Z\",\"\\u0065vent\":\"retry\",\"x\":[[{}],[]]}\r\n\xff\n", 5);
        assert_eq!((replay.records, replay.foreign_lines), (1, 1));
    }

    #[test]
    fn lines_nested_deeper_than_the_limit_are_foreign() {
        let nested = |depth: usize| {
            let inner = depth - 1;
            format!("{{\"ts\":\"2026-12-01T17:04:00.000000Z\",\"event\":\"retry\",\"x\":{}{}}}\n", "[".repeat(inner), "]".repeat(inner))
        };
        let log = nested(MAX_NESTING) + &nested(MAX_NESTING + 1) + &nested(1_000_000);
        let (replay, _) = replay(log.as_bytes(), 5);
        assert_eq!((replay.records, replay.foreign_lines), (1, 2));
    }

    #[test]
    fn lone_surrogates_read_as_the_metrics_sink_reads_them() {
        let log = concat!(
            r#"{"ts":"2026-12-01T17:04:00.000000Z","event":"llm_start","run_id":"a\ud800b","model":"m\udc00"}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:04:01.000000Z","event":"llm_end","run_id":"a\ud800b","model":"x\ud83d\ude00"}"#,
            "\n",
        );
        let (replay, metrics) = replay(log.as_bytes(), 5);
        assert_eq!(replay.records, 2);
        assert_eq!(replay.slowest[0].run_id, "a\u{FFFD}\u{FFFD}\u{FFFD}b");
        assert_eq!(replay.slowest[0].model.as_deref(), Some("x\u{1F600}"));
        let models: Vec<String> = metrics.snapshot().by_model.into_iter().map(|(name, _)| name).collect();
        assert_eq!(models, ["unknown", "x\u{1F600}"]);
    }

    #[test]
    fn each_model_key_gets_its_calls_retries_and_latencies() {
        let log = concat!(
            r#"{"ts":"2026-12-01T17:00:00.000000Z","event":"llm_start","run_id":"a","model":"gpt-4o"}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:00:00.000000Z","event":"llm_start","run_id":"b","model":"m"}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:00:00.100000Z","event":"retry","run_id":"a","model":null}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:00:00.100000Z","event":"retry","run_id":"nobody","model":null}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:00:00.250000Z","event":"llm_end","run_id":"a","model":"gpt-4o-2024-08-06","prompt_tokens":3}"#,
            "\n",
            r#"{"ts":"2026-12-01T17:00:00.300000Z","event":"error","run_id":"b","model":null}"#,
            "\n",
        );
        let (replay, metrics) = replay(log.as_bytes(), 0);
        let keys: Vec<&str> = replay.by_model.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["gpt-4o", "m", "gpt-4o-2024-08-06"]);
        let [asked, m, answered] = [0, 1, 2].map(|index| &replay.by_model[index].1);
        let counter = |state: &MetricsState, name: &str| state.counters[COUNTER_NAMES.iter().position(|counter| *counter == name).unwrap()];
        let figures = |state: &MetricsState| ["total_calls", "completed_calls", "errors", "retries"].map(|name| counter(state, name));
        assert_eq!(figures(asked), [1, 0, 0, 1]);
        assert_eq!(figures(m), [1, 0, 1, 0]);
        assert_eq!(figures(answered), [0, 1, 0, 0]);
        // The end under another key than its start keeps the latency the main aggregator paired.
        assert_eq!(answered.latency, metrics.state().latency);
        assert_eq!(answered.models, vec![metrics.state().models[2].clone()]);
        assert_eq!(counter(&metrics.state(), "retries"), 2);
    }

    #[test]
    fn the_slowest_calls_are_kept_slowest_first_earlier_first_on_ties() {
        let mut log = String::new();
        for (index, latency_ms) in [30, 10, 50, 30, 20].into_iter().enumerate() {
            log += &format!("{{\"ts\":\"2026-12-01T17:00:00.000000Z\",\"event\":\"llm_start\",\"run_id\":\"r{index}\"}}\n");
            log += &format!("{{\"ts\":\"2026-12-01T17:00:00.{:06}Z\",\"event\":\"llm_end\",\"run_id\":\"r{index}\"}}\n", latency_ms * 1000);
        }
        let (replay, _) = replay(log.as_bytes(), 3);
        let kept: Vec<&str> = replay.slowest.iter().map(|call| call.run_id.as_str()).collect();
        assert_eq!(kept, ["r2", "r0", "r3"]);
    }

    #[test]
    fn lines_longer_than_a_chunk_and_chunk_boundaries() {
        let padding = "x".repeat(CHUNK_BYTES + 10);
        let record = format!("{{\"ts\":\"2026-12-01T17:04:00.000000Z\",\"event\":\"retry\",\"pad\":\"{padding}\"}}\n");
        let log = format!("{record}{record}");
        // A reader that hands out a few bytes at a time splits lines at every place.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let count = self.0.len().min(out.len()).min(1 << 20);
                out[..count].copy_from_slice(&self.0[..count]);
                self.0 = &self.0[count..];
                Ok(count)
            }
        }
        let mut metrics = Metrics::new(Prices::default(), 10);
        let replay = replay_reader(Trickle(log.as_bytes()), &mut metrics, 1).unwrap();
        assert_eq!((replay.records, replay.foreign_lines, replay.torn_tails), (2, 0, 0));
    }
}
