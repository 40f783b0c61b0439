//! Metrics aggregation for LLM callback events.
//!
//! `python/rlm_toolkit/_reference/metrics.py` implements the same semantics in plain Python and serves as
//! the oracle in differential tests: for the same event sequence both give bit-identical snapshots, so
//! every float below is computed with the same operations in the same order there.
//!
//! Semantics:
//! - A model name that is missing or empty counts as unknown. Per-model figures live under a model key,
//!   created on first use; snapshots list the keys in first-seen order.
//! - `llm_start`: `total_calls` += 1 and `calls` += 1 under key = model or `"unknown"`. Opens `run_id`
//!   (any string, `""` included) with its start `ts` and model. Starting a run that is already open replaces
//!   it and makes it the newest. When an insertion leaves more than `max_open_runs` runs open, the oldest
//!   inserted one is evicted and `evicted_runs` += 1 (with a cap of 0 the new run itself is evicted).
//! - `llm_end`: `completed_calls` += 1, for the run's model key = model, else the model recorded at the
//!   start of the open run, else `"unknown"`. If `run_id` is open it is closed and its latency
//!   `(ts - start_ts) * 1000.0` ms (negative, NaN and -0.0 become +0.0) is recorded overall and for the key.
//!   Tokens: no usage counts 0; total = `total_tokens` if > 0 else prompt + completion. Cost with a price
//!   from [`Prices::lookup`]: `prompt * p_in / 1e6 + completion * p_out / 1e6`, added to `total_cost_usd`
//!   and to the key's `cost_usd`; without a price `unpriced_calls` += 1 and the key's `cost_usd` is None.
//! - `llm_error`: `errors` += 1; closes `run_id` if open without recording a latency, since failed calls
//!   would distort it; the key = model, else the start model, gets `errors` += 1 if such a model is known.
//! - Plain counters: `retries`, `tokens_streamed`, `tool_calls` (tool starts), `tool_results` (tool ends),
//!   `memory_stores`, `memory_recalls`, `dropped_events` (+= n), `lost_events` (+= n), `rejected_events`
//!   (events refused at the call, e.g. for a bad timestamp), `handler_errors`.
//! - Token sums, `dropped_events` and `lost_events` saturate at `u64::MAX`.
//! - Latency: `avg_latency_ms` = sum of latencies in event order / count, `min_latency_ms` and
//!   `max_latency_ms` exact, all 0.0 without samples. Percentiles come from a log-linear histogram over
//!   integer microseconds `v = floor(ms * 1000.0 + 0.5)` clamped to `[0, 2^40 - 1]`: values below 2048 have
//!   their own bucket; above, with `e = bit_length(v) - 11`, bucket `2048 + (e - 1) * 1024 + ((v >> e) - 1024)`
//!   covers `[(v >> e) << e, ((v >> e) << e) + 2^e - 1]`. Percentile p of n samples is the first bucket
//!   whose cumulative count reaches rank `max(1, (p * n + 99) / 100)` (integer division), reported as the
//!   bucket's middle `low + (width - 1) / 2` µs in ms; 0.0 without samples.

use std::collections::VecDeque;

// Run ids and model names are not attacker-chosen hash-flooding input here; FxHash is several times
// faster than SipHash on these short keys.
use rustc_hash::FxHashMap as HashMap;

const UNKNOWN_MODEL: &str = "unknown";

/// Per-model prices in USD per million tokens: `(prompt, completion)`.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    per_model: HashMap<String, (f64, f64)>,
}

impl Prices {
    /// Builds the table from `(model, usd_per_1m_prompt, usd_per_1m_completion)`; a repeated model keeps its
    /// last row.
    pub fn new(table: Vec<(String, f64, f64)>) -> Self {
        let per_model = table
            .into_iter()
            .map(|(model, prompt_price, completion_price)| {
                (model, (prompt_price, completion_price))
            })
            .collect();
        Prices { per_model }
    }

    /// The exact entry for `model`, else the longest key `k` such that `model` starts with `k + "-"`
    /// (so dated snapshots like `gpt-4o-2024-08-06` find `gpt-4o`), else None.
    pub fn lookup(&self, model: &str) -> Option<(f64, f64)> {
        if let Some(&price) = self.per_model.get(model) {
            return Some(price);
        }
        // Such a key is exactly the text before one of model's dashes; the rightmost dash gives the longest.
        model
            .rmatch_indices('-')
            .find_map(|(dash, _)| self.per_model.get(&model[..dash]).copied())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSnapshot {
    pub calls: u64,
    pub completed_calls: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// None once a completed call of this model had no price.
    pub cost_usd: Option<f64>,
    pub avg_latency_ms: f64,
}

/// Fields in the order of the snapshot dict.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub total_calls: u64,
    pub completed_calls: u64,
    pub total_tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub avg_latency_ms: f64,
    pub min_latency_ms: f64,
    pub max_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub errors: u64,
    pub retries: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    pub tokens_streamed: u64,
    pub memory_stores: u64,
    pub memory_recalls: u64,
    pub total_cost_usd: f64,
    pub unpriced_calls: u64,
    pub open_runs: u64,
    pub evicted_runs: u64,
    pub dropped_events: u64,
    pub lost_events: u64,
    pub rejected_events: u64,
    pub handler_errors: u64,
    /// In first-seen order.
    pub by_model: Vec<(String, ModelSnapshot)>,
}

/// Aggregates callback events; see the module docs for the exact semantics.
#[derive(Debug)]
pub struct Metrics {
    prices: Prices,
    open_runs: OpenRuns,
    counters: Counters,
    latency: LatencyStats,
    models: ModelTable,
}

impl Metrics {
    pub fn new(prices: Prices, max_open_runs: usize) -> Self {
        Metrics {
            prices,
            open_runs: OpenRuns::new(max_open_runs),
            counters: Counters::default(),
            latency: LatencyStats::default(),
            models: ModelTable::default(),
        }
    }

    pub fn llm_start(&mut self, run_id: &str, model: Option<&str>, ts: f64) {
        let model = known_model(model);
        self.counters.total_calls += 1;
        self.models
            .entry(model.unwrap_or(UNKNOWN_MODEL), &self.prices)
            .calls += 1;
        if self.open_runs.open(run_id, ts, model) {
            self.counters.evicted_runs += 1;
        }
    }

    pub fn llm_end(&mut self, run_id: &str, model: Option<&str>, usage: Option<Usage>, ts: f64) {
        let run = self.open_runs.close(run_id);
        let start_model = run.as_ref().and_then(|run| run.model.as_deref());
        let model_key = known_model(model).or(start_model).unwrap_or(UNKNOWN_MODEL);
        let stats = self.models.entry(model_key, &self.prices);

        if let Some(run) = &run {
            let elapsed_ms = (ts - run.start_ts) * 1000.0;
            let latency_ms = if elapsed_ms > 0.0 { elapsed_ms } else { 0.0 };
            self.latency.record(latency_ms);
            stats.latency_count += 1;
            stats.latency_sum_ms += latency_ms;
        }

        let usage = usage.unwrap_or_default();
        let total_tokens = if usage.total_tokens > 0 {
            usage.total_tokens
        } else {
            usage.prompt_tokens.saturating_add(usage.completion_tokens)
        };
        let counters = &mut self.counters;
        counters.completed_calls += 1;
        counters.prompt_tokens = counters.prompt_tokens.saturating_add(usage.prompt_tokens);
        counters.completion_tokens = counters
            .completion_tokens
            .saturating_add(usage.completion_tokens);
        counters.total_tokens = counters.total_tokens.saturating_add(total_tokens);
        stats.completed_calls += 1;
        stats.prompt_tokens = stats.prompt_tokens.saturating_add(usage.prompt_tokens);
        stats.completion_tokens = stats
            .completion_tokens
            .saturating_add(usage.completion_tokens);
        stats.total_tokens = stats.total_tokens.saturating_add(total_tokens);

        match stats.price {
            Some((prompt_price, completion_price)) => {
                let cost = usage.prompt_tokens as f64 * prompt_price / 1e6
                    + usage.completion_tokens as f64 * completion_price / 1e6;
                counters.total_cost_usd += cost;
                stats.cost_usd = stats.cost_usd.map(|model_cost| model_cost + cost);
            }
            None => {
                counters.unpriced_calls += 1;
                stats.cost_usd = None;
            }
        }
    }

    /// `_ts` is unused: failed calls record no latency.
    pub fn llm_error(&mut self, run_id: &str, model: Option<&str>, _ts: f64) {
        self.counters.errors += 1;
        let run = self.open_runs.close(run_id);
        let start_model = run.as_ref().and_then(|run| run.model.as_deref());
        if let Some(model_key) = known_model(model).or(start_model) {
            self.models.entry(model_key, &self.prices).errors += 1;
        }
    }

    pub fn retry(&mut self) {
        self.counters.retries += 1;
    }

    pub fn token(&mut self) {
        self.counters.tokens_streamed += 1;
    }

    pub fn tool_start(&mut self) {
        self.counters.tool_calls += 1;
    }

    pub fn tool_end(&mut self) {
        self.counters.tool_results += 1;
    }

    pub fn memory_store(&mut self) {
        self.counters.memory_stores += 1;
    }

    pub fn memory_recall(&mut self) {
        self.counters.memory_recalls += 1;
    }

    /// Counts `n` events a writer had to drop.
    pub fn dropped(&mut self, n: u64) {
        self.counters.dropped_events = self.counters.dropped_events.saturating_add(n);
    }

    /// Counts `n` events a writer accepted but could not write (a failed or abandoned write).
    pub fn lost(&mut self, n: u64) {
        self.counters.lost_events = self.counters.lost_events.saturating_add(n);
    }

    /// Counts an event refused at the call for a value no record can hold (a bad timestamp).
    pub fn rejected(&mut self) {
        self.counters.rejected_events += 1;
    }

    /// Counts a callback that raised.
    pub fn handler_error(&mut self) {
        self.counters.handler_errors += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let counters = &self.counters;
        let latency = &self.latency;
        Snapshot {
            total_calls: counters.total_calls,
            completed_calls: counters.completed_calls,
            total_tokens: counters.total_tokens,
            prompt_tokens: counters.prompt_tokens,
            completion_tokens: counters.completion_tokens,
            avg_latency_ms: average(latency.sum_ms, latency.count),
            min_latency_ms: latency.min_ms,
            max_latency_ms: latency.max_ms,
            p50_latency_ms: latency.histogram.percentile_ms(50),
            p95_latency_ms: latency.histogram.percentile_ms(95),
            p99_latency_ms: latency.histogram.percentile_ms(99),
            errors: counters.errors,
            retries: counters.retries,
            tool_calls: counters.tool_calls,
            tool_results: counters.tool_results,
            tokens_streamed: counters.tokens_streamed,
            memory_stores: counters.memory_stores,
            memory_recalls: counters.memory_recalls,
            total_cost_usd: counters.total_cost_usd,
            unpriced_calls: counters.unpriced_calls,
            open_runs: self.open_runs.len() as u64,
            evicted_runs: counters.evicted_runs,
            dropped_events: counters.dropped_events,
            lost_events: counters.lost_events,
            rejected_events: counters.rejected_events,
            handler_errors: counters.handler_errors,
            by_model: self
                .models
                .entries
                .iter()
                .map(ModelStats::snapshot)
                .collect(),
        }
    }

    /// Back to the freshly constructed state; prices and the open-run cap are kept.
    pub fn reset(&mut self) {
        self.open_runs = OpenRuns::new(self.open_runs.capacity);
        self.counters = Counters::default();
        self.latency = LatencyStats::default();
        self.models = ModelTable::default();
    }
}

fn known_model(model: Option<&str>) -> Option<&str> {
    model.filter(|name| !name.is_empty())
}

fn average(sum: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[derive(Debug, Default)]
struct Counters {
    total_calls: u64,
    completed_calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    errors: u64,
    retries: u64,
    tool_calls: u64,
    tool_results: u64,
    tokens_streamed: u64,
    memory_stores: u64,
    memory_recalls: u64,
    total_cost_usd: f64,
    unpriced_calls: u64,
    evicted_runs: u64,
    dropped_events: u64,
    lost_events: u64,
    rejected_events: u64,
    handler_errors: u64,
}

#[derive(Debug, Default)]
struct LatencyStats {
    count: u64,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
    histogram: Histogram,
}

impl LatencyStats {
    fn record(&mut self, latency_ms: f64) {
        if self.count == 0 || latency_ms < self.min_ms {
            self.min_ms = latency_ms;
        }
        if self.count == 0 || latency_ms > self.max_ms {
            self.max_ms = latency_ms;
        }
        self.count += 1;
        self.sum_ms += latency_ms;
        self.histogram.record(latency_micros(latency_ms));
    }
}

/// Largest microsecond value the histogram tells apart (about 12.7 days); longer latencies are clamped.
const MAX_LATENCY_MICROS: u64 = (1 << 40) - 1;
/// Values below this have a bucket each; above, every power-of-two range is split into `HALF_SUB_BUCKETS`.
const SUB_BUCKETS: u64 = 2048;
const HALF_SUB_BUCKETS: u64 = 1024;
const SUB_BUCKET_BITS: u32 = 11;

/// `latency_ms` (>= 0, not NaN) as whole microseconds, rounded half away from zero and clamped.
fn latency_micros(latency_ms: f64) -> u64 {
    let micros = latency_ms * 1000.0;
    if micros >= MAX_LATENCY_MICROS as f64 {
        MAX_LATENCY_MICROS
    } else {
        (micros + 0.5).floor() as u64
    }
}

fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let shift = (u64::BITS - micros.leading_zeros()) - SUB_BUCKET_BITS;
    (SUB_BUCKETS + u64::from(shift - 1) * HALF_SUB_BUCKETS + ((micros >> shift) - HALF_SUB_BUCKETS))
        as usize
}

/// `(lowest value, width)` of the bucket at `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, 1);
    }
    let above_exact = index - SUB_BUCKETS;
    let shift = above_exact / HALF_SUB_BUCKETS + 1;
    let mantissa = above_exact % HALF_SUB_BUCKETS + HALF_SUB_BUCKETS;
    (mantissa << shift, 1 << shift)
}

/// Log-linear histogram of microsecond values; `counts` grows only up to the highest bucket used.
#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    fn record(&mut self, micros: u64) {
        let index = bucket_index(micros);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
    }

    fn percentile_ms(&self, percentile: u64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        // u128 keeps the product exact for any count.
        let rank = (u128::from(percentile) * u128::from(self.total))
            .div_ceil(100)
            .max(1) as u64;
        let mut cumulative = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            cumulative += count;
            if cumulative >= rank {
                let (low, width) = bucket_range(index);
                return (low + (width - 1) / 2) as f64 / 1000.0;
            }
        }
        unreachable!("rank {rank} is at most the histogram total {}", self.total)
    }
}

#[derive(Debug)]
struct ModelStats {
    name: String,
    /// Resolved once: prices never change for the life of the aggregator.
    price: Option<(f64, f64)>,
    calls: u64,
    completed_calls: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cost_usd: Option<f64>,
    latency_count: u64,
    latency_sum_ms: f64,
}

impl ModelStats {
    fn snapshot(&self) -> (String, ModelSnapshot) {
        let snapshot = ModelSnapshot {
            calls: self.calls,
            completed_calls: self.completed_calls,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cost_usd: self.cost_usd,
            avg_latency_ms: average(self.latency_sum_ms, self.latency_count),
        };
        (self.name.clone(), snapshot)
    }
}

/// Per-model stats in first-seen order.
#[derive(Debug, Default)]
struct ModelTable {
    entries: Vec<ModelStats>,
    index_by_name: HashMap<String, usize>,
}

impl ModelTable {
    fn entry(&mut self, name: &str, prices: &Prices) -> &mut ModelStats {
        let index = match self.index_by_name.get(name) {
            Some(&index) => index,
            None => {
                let index = self.entries.len();
                self.entries.push(ModelStats {
                    name: name.to_owned(),
                    price: prices.lookup(name),
                    calls: 0,
                    completed_calls: 0,
                    errors: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    total_tokens: 0,
                    cost_usd: Some(0.0),
                    latency_count: 0,
                    latency_sum_ms: 0.0,
                });
                self.index_by_name.insert(name.to_owned(), index);
                index
            }
        };
        &mut self.entries[index]
    }
}

#[derive(Debug)]
struct OpenRun {
    start_ts: f64,
    model: Option<String>,
    /// Identifies this opening among `insertion_order` entries for the same run id.
    seq: u64,
}

/// Open runs in insertion order, capped. Closing or replacing a run leaves its `insertion_order` entry
/// behind as stale; eviction skips stale entries, and the queue is compacted once stale entries outnumber
/// open runs, so it never holds more than twice the open runs and each event costs amortised O(1).
#[derive(Debug)]
struct OpenRuns {
    capacity: usize,
    runs: HashMap<String, OpenRun>,
    insertion_order: VecDeque<(u64, String)>,
    stale_entries: usize,
    next_seq: u64,
}

impl OpenRuns {
    fn new(capacity: usize) -> Self {
        OpenRuns {
            capacity,
            runs: HashMap::default(),
            insertion_order: VecDeque::new(),
            stale_entries: 0,
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.runs.len()
    }

    /// Opens (or reopens) `run_id` as the newest run; returns whether the oldest run was evicted.
    fn open(&mut self, run_id: &str, start_ts: f64, model: Option<&str>) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let run = OpenRun {
            start_ts,
            model: model.map(str::to_owned),
            seq,
        };
        if self.runs.insert(run_id.to_owned(), run).is_some() {
            self.stale_entries += 1;
        }
        self.insertion_order.push_back((seq, run_id.to_owned()));
        let evicted = self.runs.len() > self.capacity;
        if evicted {
            self.evict_oldest();
        }
        self.compact_if_mostly_stale();
        evicted
    }

    fn close(&mut self, run_id: &str) -> Option<OpenRun> {
        let run = self.runs.remove(run_id)?;
        self.stale_entries += 1;
        self.compact_if_mostly_stale();
        Some(run)
    }

    fn is_current(&self, seq: u64, run_id: &str) -> bool {
        self.runs.get(run_id).is_some_and(|run| run.seq == seq)
    }

    fn evict_oldest(&mut self) {
        while let Some((seq, run_id)) = self.insertion_order.pop_front() {
            if self.is_current(seq, &run_id) {
                self.runs.remove(&run_id);
                return;
            }
            self.stale_entries -= 1;
        }
    }

    fn compact_if_mostly_stale(&mut self) {
        if self.stale_entries > self.runs.len() {
            let runs = &self.runs;
            self.insertion_order
                .retain(|(seq, run_id)| runs.get(run_id).is_some_and(|run| run.seq == *seq));
            self.stale_entries = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices::new(vec![
            ("gpt-4o".to_owned(), 2.5, 10.0),
            ("gpt-4o-mini".to_owned(), 0.15, 0.6),
            ("claude".to_owned(), 3.0, 15.0),
        ])
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64, total_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        }
    }

    fn model<'a>(snapshot: &'a Snapshot, name: &str) -> &'a ModelSnapshot {
        &snapshot
            .by_model
            .iter()
            .find(|(key, _)| key == name)
            .expect("model present")
            .1
    }

    fn model_names(snapshot: &Snapshot) -> Vec<&str> {
        snapshot
            .by_model
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Records one completed run per latency (given in whole microseconds).
    fn metrics_with_latencies_us(latencies_us: &[u64]) -> Metrics {
        let mut metrics = Metrics::new(prices(), 10);
        for &micros in latencies_us {
            metrics.llm_start("r", None, 0.0);
            metrics.llm_end("r", None, None, micros as f64 / 1e6);
        }
        metrics
    }

    #[test]
    fn bucket_index_edges() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(2047), 2047);
        assert_eq!(bucket_index(2048), 2048);
        assert_eq!(bucket_index(2049), 2048);
        assert_eq!(bucket_index(4094), 3071);
        assert_eq!(bucket_index(4095), 3071);
        assert_eq!(bucket_index(4096), 3072);
        assert_eq!(bucket_index(4099), 3072);
        assert_eq!(bucket_index(4100), 3073);
        assert_eq!(bucket_index(MAX_LATENCY_MICROS), 2048 + 28 * 1024 + 1023);
    }

    #[test]
    fn bucket_range_edges() {
        assert_eq!(bucket_range(0), (0, 1));
        assert_eq!(bucket_range(2047), (2047, 1));
        assert_eq!(bucket_range(2048), (2048, 2));
        assert_eq!(bucket_range(3071), (4094, 2));
        assert_eq!(bucket_range(3072), (4096, 4));
        assert_eq!(bucket_range(31743), (2047 << 29, 1 << 29));
    }

    #[test]
    fn every_value_falls_inside_its_bucket() {
        let samples = (0..20_000u64).chain((11..41).flat_map(|bits| {
            let power = 1u64 << bits;
            [power - 1, power, power + 1, power + power / 3]
        }));
        for micros in samples.filter(|&v| v <= MAX_LATENCY_MICROS) {
            let (low, width) = bucket_range(bucket_index(micros));
            assert!(
                low <= micros && micros < low + width,
                "{micros} outside [{low}, {low}+{width})"
            );
        }
    }

    #[test]
    fn micros_round_half_away_from_zero_and_clamp() {
        assert_eq!(latency_micros(0.0), 0);
        assert_eq!(latency_micros(0.0004), 0);
        assert_eq!(latency_micros(0.0005), 1);
        assert_eq!(latency_micros(0.0015), 2);
        assert_eq!(latency_micros(2.5), 2500);
        assert_eq!(latency_micros(1e12), MAX_LATENCY_MICROS);
        assert_eq!(latency_micros(f64::INFINITY), MAX_LATENCY_MICROS);
    }

    #[test]
    fn percentiles_of_exact_values() {
        let latencies_us: Vec<u64> = (1..=100).collect();
        let snapshot = metrics_with_latencies_us(&latencies_us).snapshot();
        assert_eq!(snapshot.p50_latency_ms, 0.05);
        assert_eq!(snapshot.p95_latency_ms, 0.095);
        assert_eq!(snapshot.p99_latency_ms, 0.099);
        assert_eq!(snapshot.min_latency_ms, 0.001);
        assert_eq!(snapshot.max_latency_ms, 0.1);
    }

    #[test]
    fn percentile_rank_is_ceiling_and_at_least_one() {
        // One sample: every rank is 1.
        let one = metrics_with_latencies_us(&[700]).snapshot();
        assert_eq!(
            (one.p50_latency_ms, one.p95_latency_ms, one.p99_latency_ms),
            (0.7, 0.7, 0.7)
        );
        // Three samples: ranks ceil(1.5)=2, ceil(2.85)=3, ceil(2.97)=3.
        let three = metrics_with_latencies_us(&[300, 100, 200]).snapshot();
        assert_eq!(
            (
                three.p50_latency_ms,
                three.p95_latency_ms,
                three.p99_latency_ms
            ),
            (0.2, 0.3, 0.3)
        );
    }

    #[test]
    fn percentiles_report_bucket_middles() {
        // 4096..4099 share a bucket reported as 4097; 1_000_000 µs: e = 9, low 999_936, width 512.
        let snapshot = metrics_with_latencies_us(&[4099, 1_000_000]).snapshot();
        assert_eq!(snapshot.p50_latency_ms, 4.097);
        assert_eq!(snapshot.p99_latency_ms, 1000.191);
        assert_eq!(snapshot.max_latency_ms, 1000.0);
    }

    #[test]
    fn empty_snapshot_is_all_zero() {
        let snapshot = Metrics::new(prices(), 10).snapshot();
        assert_eq!(snapshot.total_calls, 0);
        assert_eq!(snapshot.avg_latency_ms, 0.0);
        assert_eq!(snapshot.min_latency_ms, 0.0);
        assert_eq!(snapshot.max_latency_ms, 0.0);
        assert_eq!(snapshot.p50_latency_ms, 0.0);
        assert_eq!(snapshot.p99_latency_ms, 0.0);
        assert_eq!(snapshot.total_cost_usd, 0.0);
        assert!(snapshot.by_model.is_empty());
    }

    #[test]
    fn price_lookup() {
        let prices = prices();
        assert_eq!(prices.lookup("gpt-4o"), Some((2.5, 10.0)));
        assert_eq!(prices.lookup("gpt-4o-2024-08-06"), Some((2.5, 10.0)));
        assert_eq!(prices.lookup("gpt-4o-mini"), Some((0.15, 0.6)));
        assert_eq!(prices.lookup("gpt-4o-mini-2024-07-18"), Some((0.15, 0.6)));
        assert_eq!(prices.lookup("gpt-4"), None);
        assert_eq!(prices.lookup("gpt-4omni"), None);
        assert_eq!(prices.lookup("claudette"), None);
        assert_eq!(prices.lookup("unknown"), None);
        assert_eq!(prices.lookup(""), None);
    }

    #[test]
    fn last_row_wins_for_a_repeated_model() {
        let prices = Prices::new(vec![("m".to_owned(), 1.0, 1.0), ("m".to_owned(), 2.0, 3.0)]);
        assert_eq!(prices.lookup("m"), Some((2.0, 3.0)));
    }

    #[test]
    fn completed_call_counts_tokens_cost_and_latency() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", Some("gpt-4o-2024-08-06"), 100.0);
        metrics.llm_end("a", None, Some(usage(1000, 500, 0)), 100.25);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.total_calls, 1);
        assert_eq!(snapshot.completed_calls, 1);
        assert_eq!(snapshot.prompt_tokens, 1000);
        assert_eq!(snapshot.completion_tokens, 500);
        assert_eq!(snapshot.total_tokens, 1500);
        assert_eq!(snapshot.avg_latency_ms, 250.0);
        assert_eq!(snapshot.open_runs, 0);
        let expected_cost = 1000.0 * 2.5 / 1e6 + 500.0 * 10.0 / 1e6;
        assert_eq!(snapshot.total_cost_usd, expected_cost);
        let gpt = model(&snapshot, "gpt-4o-2024-08-06");
        assert_eq!(
            (gpt.calls, gpt.completed_calls, gpt.total_tokens),
            (1, 1, 1500)
        );
        assert_eq!(gpt.cost_usd, Some(expected_cost));
        assert_eq!(gpt.avg_latency_ms, 250.0);
    }

    #[test]
    fn usage_total_wins_when_positive() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_end("a", Some("claude"), Some(usage(10, 5, 20)), 0.0);
        assert_eq!(metrics.snapshot().total_tokens, 20);
    }

    #[test]
    fn end_model_arg_beats_start_model() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", Some("gpt-4o"), 0.0);
        metrics.llm_end("a", Some("gpt-4o-mini"), Some(usage(1, 1, 0)), 1.0);
        let snapshot = metrics.snapshot();
        assert_eq!(model_names(&snapshot), ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(model(&snapshot, "gpt-4o").completed_calls, 0);
        assert_eq!(model(&snapshot, "gpt-4o-mini").completed_calls, 1);
        assert_eq!(model(&snapshot, "gpt-4o-mini").avg_latency_ms, 1000.0);
    }

    #[test]
    fn unpriced_and_unknown_models() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", None, 0.0);
        metrics.llm_start("b", Some(""), 0.0);
        metrics.llm_end("a", None, Some(usage(100, 100, 0)), 1.0);
        metrics.llm_start("c", Some("mystery"), 0.0);
        metrics.llm_end("c", None, None, 1.0);
        let snapshot = metrics.snapshot();
        assert_eq!(model_names(&snapshot), ["unknown", "mystery"]);
        assert_eq!(model(&snapshot, "unknown").calls, 2);
        assert_eq!(model(&snapshot, "unknown").cost_usd, None);
        assert_eq!(model(&snapshot, "mystery").cost_usd, None);
        assert_eq!(snapshot.unpriced_calls, 2);
        assert_eq!(snapshot.total_cost_usd, 0.0);
    }

    #[test]
    fn started_but_unfinished_model_costs_zero() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", Some("mystery"), 0.0);
        assert_eq!(model(&metrics.snapshot(), "mystery").cost_usd, Some(0.0));
    }

    #[test]
    fn end_without_start_counts_but_records_no_latency() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_end("never-started", Some("claude"), Some(usage(2, 3, 0)), 5.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.completed_calls, 1);
        assert_eq!(snapshot.total_tokens, 5);
        assert_eq!(snapshot.avg_latency_ms, 0.0);
        assert_eq!(snapshot.p50_latency_ms, 0.0);
        assert_eq!(model(&snapshot, "claude").calls, 0);
    }

    #[test]
    fn negative_and_nan_latency_become_zero() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", None, 10.0);
        metrics.llm_end("a", None, None, 9.0);
        metrics.llm_start("b", None, f64::NAN);
        metrics.llm_end("b", None, None, 1.0);
        metrics.llm_start("c", None, 0.0);
        metrics.llm_end("c", None, None, -0.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.max_latency_ms.to_bits(), 0.0f64.to_bits());
        assert_eq!(snapshot.min_latency_ms.to_bits(), 0.0f64.to_bits());
        assert_eq!(snapshot.avg_latency_ms.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn error_closes_run_without_latency() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", Some("claude"), 0.0);
        metrics.llm_error("a", None, 3.0);
        metrics.llm_error("not-open", None, 3.0);
        metrics.llm_error("not-open", Some("gpt-4o"), 3.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.errors, 3);
        assert_eq!(snapshot.open_runs, 0);
        assert_eq!(snapshot.completed_calls, 0);
        assert_eq!(snapshot.avg_latency_ms, 0.0);
        assert_eq!(model_names(&snapshot), ["claude", "gpt-4o"]);
        assert_eq!(model(&snapshot, "claude").errors, 1);
        assert_eq!(model(&snapshot, "gpt-4o").errors, 1);
        // The run is closed: a late end records no latency.
        metrics.llm_end("a", None, None, 4.0);
        assert_eq!(metrics.snapshot().avg_latency_ms, 0.0);
    }

    #[test]
    fn oldest_run_is_evicted_at_the_cap() {
        let mut metrics = Metrics::new(prices(), 2);
        metrics.llm_start("a", None, 0.0);
        metrics.llm_start("b", None, 0.0);
        metrics.llm_start("c", None, 0.0);
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.open_runs, snapshot.evicted_runs), (2, 1));
        metrics.llm_end("a", None, None, 1.0);
        metrics.llm_end("b", None, None, 1.0);
        metrics.llm_end("c", None, None, 1.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.completed_calls, 3);
        assert_eq!(snapshot.max_latency_ms, 1000.0);
        assert_eq!(snapshot.avg_latency_ms, 1000.0); // only b and c had latencies
    }

    #[test]
    fn duplicate_start_replaces_and_becomes_newest() {
        let mut metrics = Metrics::new(prices(), 2);
        metrics.llm_start("a", Some("claude"), 0.0);
        metrics.llm_start("b", None, 0.0);
        metrics.llm_start("a", Some("gpt-4o"), 5.0);
        assert_eq!(metrics.snapshot().open_runs, 2);
        metrics.llm_start("c", None, 0.0); // evicts b, the oldest after a moved to newest
        metrics.llm_end("b", None, None, 9.0);
        metrics.llm_end("a", None, None, 6.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.total_calls, 4);
        assert_eq!(snapshot.evicted_runs, 1);
        assert_eq!(snapshot.open_runs, 1);
        assert_eq!(snapshot.max_latency_ms, 1000.0);
        assert_eq!(model(&snapshot, "gpt-4o").completed_calls, 1);
        assert_eq!(model(&snapshot, "claude").completed_calls, 0);
    }

    #[test]
    fn zero_cap_evicts_every_run() {
        let mut metrics = Metrics::new(prices(), 0);
        metrics.llm_start("a", None, 0.0);
        metrics.llm_end("a", None, None, 1.0);
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.open_runs, snapshot.evicted_runs), (0, 1));
        assert_eq!(snapshot.avg_latency_ms, 0.0);
    }

    #[test]
    fn empty_run_id_is_a_key() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("", None, 1.0);
        metrics.llm_end("", None, None, 1.5);
        assert_eq!(metrics.snapshot().avg_latency_ms, 500.0);
    }

    #[test]
    fn counters() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.retry();
        metrics.token();
        metrics.token();
        metrics.tool_start();
        metrics.tool_end();
        metrics.memory_store();
        metrics.memory_recall();
        metrics.memory_recall();
        metrics.dropped(5);
        metrics.dropped(u64::MAX);
        metrics.handler_error();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.retries, 1);
        assert_eq!(snapshot.tokens_streamed, 2);
        assert_eq!((snapshot.tool_calls, snapshot.tool_results), (1, 1));
        assert_eq!((snapshot.memory_stores, snapshot.memory_recalls), (1, 2));
        assert_eq!(snapshot.dropped_events, u64::MAX);
        assert_eq!(snapshot.handler_errors, 1);
    }

    #[test]
    fn token_sums_saturate() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_end("a", None, Some(usage(u64::MAX, 1, 0)), 0.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.total_tokens, u64::MAX);
        assert_eq!(snapshot.completion_tokens, 1);
    }

    #[test]
    fn reset_restores_fresh_state_and_keeps_config() {
        let mut metrics = Metrics::new(prices(), 1);
        metrics.llm_start("a", Some("gpt-4o"), 0.0);
        metrics.llm_start("b", Some("gpt-4o"), 0.0);
        metrics.llm_end("b", None, Some(usage(1, 1, 0)), 1.0);
        metrics.retry();
        metrics.reset();
        assert_eq!(metrics.snapshot(), Metrics::new(prices(), 1).snapshot());
        metrics.llm_start("c", None, 0.0);
        metrics.llm_start("d", None, 0.0);
        metrics.llm_end("e", Some("gpt-4o-mini"), Some(usage(1_000_000, 0, 0)), 0.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.evicted_runs, 1);
        assert_eq!(snapshot.total_cost_usd, 0.15);
    }

    #[test]
    fn memory_stays_bounded_over_many_runs() {
        let mut metrics = Metrics::new(prices(), 1000);
        for i in 0..1_000_000u64 {
            let run_id = i.to_string();
            metrics.llm_start(&run_id, Some("gpt-4o"), 0.0);
            metrics.llm_end(&run_id, None, None, 0.001);
        }
        assert_eq!(metrics.open_runs.len(), 0);
        assert!(metrics.open_runs.insertion_order.len() <= 1);
        assert!(metrics.open_runs.runs.capacity() < 64);
        assert!(metrics.open_runs.insertion_order.capacity() < 64);
        assert_eq!(metrics.snapshot().completed_calls, 1_000_000);
    }

    #[test]
    fn queue_stays_within_twice_the_open_runs() {
        let mut metrics = Metrics::new(prices(), 100);
        for i in 0..200_000u64 {
            // A mix of fresh runs, restarts and closes in varying order.
            let run_id = (i * 7919 % 150).to_string();
            match i % 3 {
                0 | 1 => metrics.llm_start(&run_id, None, 0.0),
                _ => metrics.llm_end(&run_id, None, None, 1.0),
            }
            let open_runs = &metrics.open_runs;
            assert!(open_runs.len() <= 100);
            assert!(open_runs.insertion_order.len() <= 2 * open_runs.len() + 1);
            assert_eq!(
                open_runs.insertion_order.len(),
                open_runs.len() + open_runs.stale_entries
            );
        }
    }

    #[test]
    fn full_histogram_scan_is_fast() {
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", None, 0.0);
        metrics.llm_end("a", None, None, 1e9);
        let started = std::time::Instant::now();
        let snapshot = metrics.snapshot();
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(
            snapshot.p50_latency_ms,
            ((2047u64 << 29) + (1 << 28) - 1) as f64 / 1000.0
        );
    }
}
