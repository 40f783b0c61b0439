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
//! - a line nested deeper than `MAX_NESTING` is foreign.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::Read;

use rustc_hash::FxHashMap as HashMap;

use crate::events::EventKind;
use crate::metrics::{Metrics, Usage};

/// Bytes read per `read` call; a longer line grows the buffer.
const CHUNK_BYTES: usize = 8 << 20;

const MICROS_PER_MINUTE: i64 = 60_000_000;

/// The deepest nesting of a record, its own object counted: a deeper line is foreign (the writer nests at
/// most 64 deep; the Python parser recurses).
pub const MAX_NESTING: usize = 512;

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
        match record.kind {
            EventKind::LlmStart => metrics.llm_start(run_id, model, ts),
            EventKind::LlmEnd => {
                let latency_ms = metrics.llm_end(run_id, model, record.usage(), record.ttft_ms, ts);
                *self.per_minute.entry(record.ts_micros.div_euclid(MICROS_PER_MINUTE) * 60).or_insert(0) += 1;
                let order = self.completed;
                self.completed += 1;
                if let Some(latency_ms) = latency_ms {
                    self.keep(SlowCall { latency_ms, run_id: String::new(), model: None, end_ts: ts, order }, record);
                }
            }
            EventKind::Error => metrics.llm_error(run_id, model, ts),
            EventKind::LlmNewToken => metrics.token(),
            EventKind::ToolStart => metrics.tool_start(),
            EventKind::ToolEnd => metrics.tool_end(),
            EventKind::MemoryStore => metrics.memory_store(),
            EventKind::MemoryRecall => metrics.memory_recall(),
            EventKind::Retry => metrics.retry(),
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

/// A decoded JSON string, and whether it held a lone surrogate (`\uD800` not followed by its pair).
struct JsonText<'a> {
    text: std::borrow::Cow<'a, str>,
    lone_surrogate: bool,
}

/// A strict JSON reader of one line; containers it skips are tracked on `open`, not by recursion.
#[derive(Default)]
struct Parser {
    open: Vec<u8>,
}

struct Cursor<'a> {
    /// The line: slices of it cut at ASCII bytes are its text again, without checking the UTF-8 again.
    text: &'a str,
    bytes: &'a [u8],
    /// Whether the line has control bytes at all: only then are strings checked for them.
    has_controls: bool,
    at: usize,
}

impl Parser {
    /// The record `line` holds, or None when it is foreign.
    fn record<'a>(&mut self, line: &'a [u8]) -> Option<Record<'a>> {
        let text = std::str::from_utf8(line).ok()?;
        // One pass that the compiler vectorizes, instead of a check of every string's bytes.
        let has_controls = line.iter().fold(false, |found, &byte| found | (byte < 0x20));
        let mut cursor = Cursor { text, bytes: line, has_controls, at: 0 };
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
        if cursor.at != cursor.bytes.len() {
            return None;
        }
        let kind = EventKind::from_name(&event?.text)?;
        let ts_micros = parse_iso_micros(&ts?.text)?;
        let run_id = run_id.map(|id| id.text);
        let model = model.filter(|name| !name.lone_surrogate).map(|name| name.text);
        Some(Record { kind, ts_micros, run_id, model, tokens, ttft_ms })
    }
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let found = self.bytes[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found.then_some(())
    }

    /// A string value, or None (outer Some) for any other valid value.
    fn string_or_other(&mut self, open: &mut Vec<u8>) -> Option<Option<JsonText<'a>>> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.skip_value(open).map(|()| None)
    }

    /// A number's text and whether it is an integer, or None (outer Some) for any other valid value.
    fn number_or_other(&mut self, open: &mut Vec<u8>) -> Option<Option<(&'a str, bool)>> {
        if matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return self.number().map(Some);
        }
        self.skip_value(open).map(|()| None)
    }

    /// A token count: None for null, the count for an integer in 0..=u64::MAX, 0 for any other value (`-0`
    /// included, which is 0 anyway).
    fn count(&mut self, open: &mut Vec<u8>) -> Option<Option<u64>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        let count = match self.number_or_other(open)? {
            Some((text, true)) => text.parse::<u64>().unwrap_or(0),
            _ => 0,
        };
        Some(Some(count))
    }

    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.some_digits()?;
        }
        Some((&self.text[start..self.at], integer))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The string at the cursor, decoded.
    fn string(&mut self) -> Option<JsonText<'a>> {
        self.expect(b'"')?;
        let start = self.at;
        let end = self.plain_run()?;
        if self.bytes[end] == b'"' {
            self.at = end + 1;
            return Some(JsonText { text: std::borrow::Cow::Borrowed(&self.text[start..end]), lone_surrogate: false });
        }
        let mut decoded = String::from(&self.text[start..end]);
        let mut lone_surrogate = false;
        self.at = end;
        loop {
            if self.eat(b'"') {
                return Some(JsonText { text: std::borrow::Cow::Owned(decoded), lone_surrogate });
            }
            self.expect(b'\\')?;
            let escaped = self.peek()?;
            self.at += 1;
            match escaped {
                b'"' => decoded.push('"'),
                b'\\' => decoded.push('\\'),
                b'/' => decoded.push('/'),
                b'b' => decoded.push('\u{8}'),
                b'f' => decoded.push('\u{c}'),
                b'n' => decoded.push('\n'),
                b'r' => decoded.push('\r'),
                b't' => decoded.push('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    match unit {
                        0xD800..=0xDBFF if self.bytes[self.at..].starts_with(b"\\u") => {
                            let save = self.at;
                            self.at += 2;
                            let low = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&low) {
                                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                decoded.push(char::from_u32(code)?);
                            } else {
                                self.at = save;
                                push_lone_surrogate(&mut decoded);
                                lone_surrogate = true;
                            }
                        }
                        0xD800..=0xDFFF => {
                            push_lone_surrogate(&mut decoded);
                            lone_surrogate = true;
                        }
                        _ => decoded.push(char::from_u32(unit)?),
                    }
                }
                _ => return None,
            }
            let run_start = self.at;
            let run_end = self.plain_run()?;
            decoded.push_str(&self.text[run_start..run_end]);
            self.at = run_end;
        }
    }

    /// The end of the plain characters from the cursor: the position of the next quote or backslash. None
    /// when the string is unterminated or holds a control character.
    fn plain_run(&self) -> Option<usize> {
        let rest = &self.bytes[self.at..];
        let length = memchr::memchr2(b'"', b'\\', rest)?;
        if self.has_controls && rest[..length].iter().any(|&byte| byte < 0x20) {
            return None;
        }
        Some(self.at + length)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut unit = 0;
        for &digit in digits {
            unit = unit * 16 + char::from(digit).to_digit(16)?;
        }
        self.at += 4;
        Some(unit)
    }

    /// Skips one value, checking its grammar.
    fn skip_value(&mut self, open: &mut Vec<u8>) -> Option<()> {
        open.clear();
        loop {
            self.whitespace();
            match self.peek()? {
                b'{' | b'[' => {
                    // The record's object is level 1, a container directly in it level 2.
                    if open.len() + 2 > MAX_NESTING {
                        return None;
                    }
                    let bracket = self.bytes[self.at];
                    self.at += 1;
                    self.whitespace();
                    if self.eat(if bracket == b'{' { b'}' } else { b']' }) {
                        // An empty container is a whole value.
                    } else {
                        open.push(bracket);
                        if bracket == b'{' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.skip_string()?;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return None,
            }
            // After a value: close containers or go on to the next element.
            loop {
                let Some(&bracket) = open.last() else { return Some(()) };
                self.whitespace();
                if self.eat(b',') {
                    if bracket == b'{' {
                        self.whitespace();
                        self.member_key()?;
                    }
                    break;
                }
                self.expect(if bracket == b'{' { b'}' } else { b']' })?;
                open.pop();
            }
        }
    }

    /// A member's key and colon.
    fn member_key(&mut self) -> Option<()> {
        self.whitespace();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.skip_string()?;
        self.whitespace();
        self.expect(b':')
    }

    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            self.at = self.plain_run()?;
            if self.eat(b'"') {
                return Some(());
            }
            self.at += 1;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    self.at += 1;
                    self.hex4()?;
                }
                _ => return None,
            }
        }
    }
}

/// U+FFFD three times: how the metrics sink reads a lone surrogate (each byte of its UTF-8 form replaced).
fn push_lone_surrogate(decoded: &mut String) {
    decoded.push_str("\u{FFFD}\u{FFFD}\u{FFFD}");
}

/// Epoch microseconds of `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as `time::push_iso_utc` writes them, from
/// 1970 through 9999; None for any other text or an impossible date.
pub fn parse_iso_micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 27
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes[19] != b'.'
        || bytes[26] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        bytes[range].iter().try_fold(0i64, |value, &digit| digit.is_ascii_digit().then(|| value * 10 + i64::from(digit - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, micros) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..26)?);
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// The epoch seconds nearest `micros / 1e6` that `time::push_iso_utc` writes as `micros` again (every
/// microsecond through year 2112 has one; later ones, more than 1 µs apart, get the nearest).
pub fn seconds_of_micros(micros: i64) -> f64 {
    let mut seconds = micros as f64 / 1e6;
    for _ in 0..2 {
        match ((seconds * 1_000_000.0).round() as i64).cmp(&micros) {
            Ordering::Less => seconds = seconds.next_up(),
            Ordering::Greater => seconds = seconds.next_down(),
            Ordering::Equal => break,
        }
    }
    seconds
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant): the inverse of `time::civil_from_days`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Prices;
    use crate::time::push_iso_utc;

    fn render(epoch_seconds: f64) -> String {
        let mut out = Vec::new();
        push_iso_utc(&mut out, epoch_seconds);
        String::from_utf8(out).unwrap().trim_matches('"').to_owned()
    }

    fn replay(log: &[u8], slowest: usize) -> (Replay, Metrics) {
        let mut metrics = Metrics::new(Prices::new(vec![("gpt-4o".to_owned(), 2.5, 10.0)], Vec::new()), 1000);
        let replay = replay_reader(log, &mut metrics, slowest).unwrap();
        (replay, metrics)
    }

    #[test]
    fn timestamps_parse_back_to_the_microseconds_written() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        // Samples up to 2^52 µs (year 2112): from there on f64 seconds are more than 1 µs apart.
        let mut samples = vec![0i64, 1, 999_999, 951_782_400_500_000, 4_102_444_799_999_999, (1i64 << 52) - 1];
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            samples.push((state % (1u64 << 52)) as i64);
        }
        for micros in samples {
            let seconds = seconds_of_micros(micros);
            let text = render(seconds);
            assert_eq!(parse_iso_micros(&text), Some(micros), "{text}");
            assert!((seconds - micros as f64 / 1e6).abs() <= 2e-6, "{text}");
            // And what the writer wrote for any time parses to the microseconds it rounded to.
            let written = f64::from_bits(state >> 12 | 0x41D0_0000_0000_0000);
            state = state.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(1);
            assert_eq!(parse_iso_micros(&render(written)), Some((written * 1e6).round() as i64), "{written}");
        }
        assert_eq!(parse_iso_micros("9999-12-31T23:59:59.999999Z"), Some(253_402_300_799_999_999));
    }

    #[test]
    fn impossible_or_malformed_timestamps_are_refused() {
        for text in [
            "2026-02-29T00:00:00.000000Z",
            "2024-02-30T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-01-00T00:00:00.000000Z",
            "2026-01-01T24:00:00.000000Z",
            "2026-01-01T00:60:00.000000Z",
            "2026-01-01T00:00:60.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-01-01T00:00:00.00000Z",
            "2026-01-01T00:00:00.000000",
            "2026-01-01 00:00:00.000000Z",
            "2026-01-01T00:00:00.0000+0Z",
            "+026-01-01T00:00:00.000000Z",
        ] {
            assert_eq!(parse_iso_micros(text), None, "{text}");
        }
        assert_eq!(parse_iso_micros("2024-02-29T00:00:00.000000Z"), Some(1_709_164_800_000_000));
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
