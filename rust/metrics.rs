//! Metrics aggregation for LLM callback events, as docs/metrics.md specifies.
//!
//! `python/rlm_toolkit/_reference/metrics.py` implements the same in plain Python and serves as the oracle in
//! differential tests: for the same event sequence both give bit-identical snapshots, so every float here
//! is computed with the same operations in the same order there.

use std::collections::VecDeque;

use crate::histogram::{latency_micros, Histogram};

// Run ids and model names are not attacker-chosen hash-flooding input here; FxHash is several times
// faster than SipHash on these short keys.
use rustc_hash::FxHashMap as HashMap;

const UNKNOWN_MODEL: &str = "unknown";

/// The prices of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
    /// The price of cached prompt tokens, when the table has one.
    pub cached_prompt: Option<f64>,
}

impl Price {
    /// The cost in USD of `prompt` prompt tokens (`cached` of them from the prompt cache, at most `prompt`)
    /// and `completion` completion tokens: without a cached price every prompt token is billed at the
    /// prompt price. Costs are linear in the tokens, so the cost of many calls is that of their sums.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        match self.cached_prompt {
            None => prompt as f64 * self.prompt / 1e6 + completion as f64 * self.completion / 1e6,
            Some(cached_price) => {
                (prompt - cached) as f64 * self.prompt / 1e6
                    + cached as f64 * cached_price / 1e6
                    + completion as f64 * self.completion / 1e6
            }
        }
    }
}

/// Per-model prices.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    per_model: HashMap<String, Price>,
}

impl Prices {
    /// Builds the table from `(model, usd_per_1m_prompt, usd_per_1m_completion)` and
    /// `(model, usd_per_1m_cached_prompt)`; a repeated model keeps its last row, a cached price of a model
    /// without prompt and completion prices is ignored.
    pub fn new(table: Vec<(String, f64, f64)>, cached_prompt_table: Vec<(String, f64)>) -> Self {
        let mut per_model: HashMap<String, Price> =
            table.into_iter().map(|(model, prompt, completion)| (model, Price { prompt, completion, cached_prompt: None })).collect();
        for (model, cached_price) in cached_prompt_table {
            if let Some(price) = per_model.get_mut(&model) {
                price.cached_prompt = Some(cached_price);
            }
        }
        Prices { per_model }
    }

    /// The exact entry for `model`, else the longest key `k` such that `model` starts with `k + "-"`
    /// (so dated snapshots like `gpt-4o-2024-08-06` find `gpt-4o`), else None.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(&price) = self.per_model.get(model) {
            return Some(price);
        }
        // Such a key is exactly the text before one of model's dashes; the rightmost dash gives the longest.
        model.rmatch_indices('-').find_map(|(dash, _)| self.per_model.get(&model[..dash]).copied())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The reported total, else (0 reported) prompt + completion.
    pub fn total(&self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens.saturating_add(self.completion_tokens)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSnapshot {
    pub calls: u64,
    pub completed_calls: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// None once a completed call of this model had no price or did not report its usage.
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
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub avg_latency_ms: f64,
    pub min_latency_ms: f64,
    pub max_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// None while no completed call reported its time to first token.
    pub avg_ttft_ms: Option<f64>,
    pub p50_ttft_ms: Option<f64>,
    pub p95_ttft_ms: Option<f64>,
    pub p99_ttft_ms: Option<f64>,
    pub errors: u64,
    pub retries: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    pub tokens_streamed: u64,
    pub memory_stores: u64,
    pub memory_recalls: u64,
    pub total_cost_usd: f64,
    pub unpriced_calls: u64,
    pub unreported_usage_calls: u64,
    pub open_runs: u64,
    pub evicted_runs: u64,
    pub dropped_events: u64,
    pub lost_events: u64,
    pub rejected_events: u64,
    pub handler_errors: u64,
    /// In first-seen order.
    pub by_model: Vec<(String, ModelSnapshot)>,
}

/// Everything a snapshot carries: every counter, the per-model table with the price each model was
/// costed at, and the histograms. Merging states adds them up; open runs travel as a count only.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsState {
    /// In `COUNTER_NAMES` order.
    pub counters: [u64; COUNTER_NAMES.len()],
    pub latency: DurationState,
    pub ttft: DurationState,
    /// In first-seen order.
    pub models: Vec<ModelState>,
}

/// The counters of a state, by the names snapshots use.
pub const COUNTER_NAMES: [&str; 22] = [
    "total_calls",
    "completed_calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "errors",
    "retries",
    "tool_calls",
    "tool_results",
    "tokens_streamed",
    "memory_stores",
    "memory_recalls",
    "unpriced_calls",
    "unreported_usage_calls",
    "open_runs",
    "evicted_runs",
    "dropped_events",
    "lost_events",
    "rejected_events",
    "handler_errors",
];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DurationState {
    pub count: u64,
    pub sum_us: u128,
    pub min_ms: f64,
    pub max_ms: f64,
    /// `(bucket index, count)`, lowest first, counts > 0.
    pub buckets: Vec<(usize, u64)>,
}

/// One model's figures: what the aggregator keeps per model and what a snapshot's state holds of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    pub name: String,
    /// Resolved once: prices never change for the life of the aggregator.
    pub price: Option<Price>,
    pub calls: u64,
    pub completed_calls: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// False once a completed call had no price or did not report its usage.
    pub cost_known: bool,
    pub priced: PricedTokens,
    pub latency_count: u64,
    pub latency_sum_us: u128,
}

/// Aggregates callback events as docs/metrics.md says.
#[derive(Debug)]
pub struct Metrics {
    prices: Prices,
    open_runs: OpenRuns,
    counters: Counters,
    latency: LatencyStats,
    ttft: LatencyStats,
    models: ModelTable,
}

impl Metrics {
    pub fn new(prices: Prices, max_open_runs: usize) -> Self {
        Metrics {
            prices,
            open_runs: OpenRuns::new(max_open_runs),
            counters: Counters::default(),
            latency: LatencyStats::default(),
            ttft: LatencyStats::default(),
            models: ModelTable::default(),
        }
    }

    pub fn llm_start(&mut self, run_id: &str, model: Option<&str>, ts: f64) {
        let model_index = self.llm_start_after(model);
        if self.open_runs.open(run_id, ts, known_model(model).map(|_| model_index)) {
            self.counters.evicted_runs += 1;
        }
    }

    /// As `llm_start`, for a call whose run another aggregator keeps open: the call is counted, no run is
    /// opened. Returns the `ModelTable` index it counts under.
    pub fn llm_start_after(&mut self, model: Option<&str>) -> usize {
        self.counters.total_calls += 1;
        let model_index = self.models.index(start_model_key(model), &self.prices);
        self.models.entries[model_index].calls += 1;
        model_index
    }

    /// `ttft_ms` is the call's time to first token, if it streamed: a sample when finite (negative counts as 0).
    /// Returns the call's latency in milliseconds when its start was open.
    pub fn llm_end(&mut self, run_id: &str, model: Option<&str>, usage: Option<Usage>, ttft_ms: Option<f64>, ts: f64) -> Option<f64> {
        self.llm_end_keyed(run_id, model, usage, ttft_ms, ts).0
    }

    /// As `llm_end`; also returns the start's time (None when no start was open) and the index of the model
    /// key the call counts under (its name is `model_key(index)`).
    pub fn llm_end_keyed(
        &mut self,
        run_id: &str,
        model: Option<&str>,
        usage: Option<Usage>,
        ttft_ms: Option<f64>,
        ts: f64,
    ) -> (Option<f64>, Option<f64>, usize) {
        let start = self.open_runs.close(run_id).map(|run| (run.start_ts, run.model));
        let (latency_ms, model_index) = self.end_call(start, known_model(model), usage, ttft_ms, ts);
        (latency_ms, start.map(|(start_ts, _)| start_ts), model_index)
    }

    /// The name of the model key at `index` of the per-model table.
    pub fn model_key(&self, index: usize) -> &str {
        &self.models.entries[index].name
    }

    /// As `llm_end`, for a call whose start another aggregator paired: `start_ts` is its start's time (None
    /// when no start was open), `model` the model key it counts under. No open run is looked up or closed.
    pub fn llm_end_after(
        &mut self,
        start_ts: Option<f64>,
        model: &str,
        usage: Option<Usage>,
        ttft_ms: Option<f64>,
        ts: f64,
    ) -> Option<f64> {
        self.end_call(start_ts.map(|start_ts| (start_ts, None)), Some(model), usage, ttft_ms, ts).0
    }

    /// The start time and model (None when the start named none) of the open run `run_id`.
    pub fn open_run(&self, run_id: &str) -> Option<(f64, Option<&str>)> {
        let run = self.open_runs.runs.get(run_id.as_bytes())?;
        Some((run.start_ts, run.model.map(|index| self.models.entries[index].name.as_str())))
    }

    /// A fresh aggregator with the same open-run cap for the calls of the model key `model`: it prices
    /// `model` as this one does (and knows no other price).
    pub fn empty_for(&self, model: &str) -> Metrics {
        let per_model = self.prices.lookup(model).map(|price| (model.to_owned(), price)).into_iter().collect();
        Metrics::new(Prices { per_model }, self.open_runs.capacity)
    }

    /// `start`: the start time and `ModelTable` index of the start's model, when a start was open. Returns
    /// the latency and the `ModelTable` index the call counts under.
    fn end_call(
        &mut self,
        start: Option<(f64, Option<usize>)>,
        model: Option<&str>,
        usage: Option<Usage>,
        ttft_ms: Option<f64>,
        ts: f64,
    ) -> (Option<f64>, usize) {
        if let Some(ttft_ms) = ttft_ms.filter(|ttft_ms| ttft_ms.is_finite()) {
            self.ttft.record(if ttft_ms > 0.0 { ttft_ms } else { 0.0 });
        }
        let start_model = start.and_then(|(_, model)| model);
        let model_index = self.models.index_for(model, start_model, &self.prices);
        let stats = &mut self.models.entries[model_index];

        let latency_ms = start.map(|(start_ts, _)| {
            let elapsed_ms = (ts - start_ts) * 1000.0;
            let latency_ms = if elapsed_ms > 0.0 { elapsed_ms } else { 0.0 };
            let micros = self.latency.record(latency_ms);
            stats.latency_count += 1;
            stats.latency_sum_us += u128::from(micros);
            latency_ms
        });

        let counters = &mut self.counters;
        counters.completed_calls += 1;
        stats.completed_calls += 1;
        let Some(usage) = usage else {
            // Unreported usage: no tokens to add, and the call's cost is unknown like an unpriced model's.
            counters.unreported_usage_calls += 1;
            counters.unpriced_calls += 1;
            stats.cost_known = false;
            return (latency_ms, model_index);
        };
        let total_tokens = usage.total();
        counters.prompt_tokens = counters.prompt_tokens.saturating_add(usage.prompt_tokens);
        counters.completion_tokens = counters.completion_tokens.saturating_add(usage.completion_tokens);
        counters.total_tokens = counters.total_tokens.saturating_add(total_tokens);
        counters.cached_tokens = counters.cached_tokens.saturating_add(usage.cached_tokens);
        counters.reasoning_tokens = counters.reasoning_tokens.saturating_add(usage.reasoning_tokens);
        stats.prompt_tokens = stats.prompt_tokens.saturating_add(usage.prompt_tokens);
        stats.completion_tokens = stats.completion_tokens.saturating_add(usage.completion_tokens);
        stats.total_tokens = stats.total_tokens.saturating_add(total_tokens);
        stats.cached_tokens = stats.cached_tokens.saturating_add(usage.cached_tokens);
        stats.reasoning_tokens = stats.reasoning_tokens.saturating_add(usage.reasoning_tokens);

        if stats.price.is_some() {
            stats.priced.add(&usage);
        } else {
            counters.unpriced_calls += 1;
            stats.cost_known = false;
        }
        (latency_ms, model_index)
    }

    /// `_ts` is unused: failed calls record no latency.
    pub fn llm_error(&mut self, run_id: &str, model: Option<&str>, _ts: f64) {
        self.counters.errors += 1;
        let run = self.open_runs.close(run_id);
        let start_model = run.as_ref().and_then(|run| run.model);
        if known_model(model).is_some() || start_model.is_some() {
            let model_index = self.models.index_for(known_model(model), start_model, &self.prices);
            self.models.entries[model_index].errors += 1;
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
            cached_tokens: counters.cached_tokens,
            reasoning_tokens: counters.reasoning_tokens,
            avg_latency_ms: latency.average_ms(),
            min_latency_ms: latency.min_ms,
            max_latency_ms: latency.max_ms,
            p50_latency_ms: latency.histogram.percentile_ms(50),
            p95_latency_ms: latency.histogram.percentile_ms(95),
            p99_latency_ms: latency.histogram.percentile_ms(99),
            avg_ttft_ms: self.ttft.sampled(LatencyStats::average_ms),
            p50_ttft_ms: self.ttft.sampled(|ttft| ttft.histogram.percentile_ms(50)),
            p95_ttft_ms: self.ttft.sampled(|ttft| ttft.histogram.percentile_ms(95)),
            p99_ttft_ms: self.ttft.sampled(|ttft| ttft.histogram.percentile_ms(99)),
            errors: counters.errors,
            retries: counters.retries,
            tool_calls: counters.tool_calls,
            tool_results: counters.tool_results,
            tokens_streamed: counters.tokens_streamed,
            memory_stores: counters.memory_stores,
            memory_recalls: counters.memory_recalls,
            total_cost_usd: self.models.total_cost_usd(),
            unpriced_calls: counters.unpriced_calls,
            unreported_usage_calls: counters.unreported_usage_calls,
            open_runs: (self.open_runs.len() as u64).saturating_add(counters.merged_open_runs),
            evicted_runs: counters.evicted_runs,
            dropped_events: counters.dropped_events,
            lost_events: counters.lost_events,
            rejected_events: counters.rejected_events,
            handler_errors: counters.handler_errors,
            by_model: self.models.entries.iter().map(ModelState::snapshot).collect(),
        }
    }

    pub fn state(&self) -> MetricsState {
        let mut counters: [u64; COUNTER_NAMES.len()] = self.counters.clone().slots().map(|counter| *counter);
        // Open runs travel as a count: this aggregator's own, and those of the snapshots merged in.
        counters[OPEN_RUNS_SLOT] = (self.open_runs.len() as u64).saturating_add(self.counters.merged_open_runs);
        MetricsState { counters, latency: self.latency.state(), ttft: self.ttft.state(), models: self.models.entries.to_vec() }
    }

    /// Adds `state` in, as if this aggregator had seen its events too. Checked in full before anything
    /// changes: a model priced differently, or a histogram that does not add up, is refused.
    pub fn merge(&mut self, state: &MetricsState) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for model in &state.models {
            if !seen.insert(model.name.as_str()) {
                return Err(format!("snapshot state: model {:?} appears twice", model.name));
            }
            // A model this aggregator has not seen yet would be costed by its own table from now on.
            let ours = match self.models.index_by_name.get(&model.name) {
                Some(&index) => self.models.entries[index].price,
                None => self.prices.lookup(&model.name),
            };
            if ours != model.price {
                return Err(price_conflict(&model.name, ours, model.price));
            }
        }
        state.latency.check()?;
        state.ttft.check()?;
        for (counter, amount) in self.counters.slots().into_iter().zip(state.counters) {
            *counter = counter.saturating_add(amount);
        }
        self.latency.merge(&state.latency);
        self.ttft.merge(&state.ttft);
        for model in &state.models {
            let index = match self.models.index_by_name.get(&model.name) {
                Some(&index) => index,
                None => self.models.push(ModelState::new(&model.name, model.price)),
            };
            self.models.entries[index].merge(model)?;
        }
        Ok(())
    }

    /// Back to the freshly constructed state; prices and the open-run cap are kept.
    pub fn reset(&mut self) {
        self.open_runs = OpenRuns::new(self.open_runs.capacity);
        self.counters = Counters::default();
        self.latency = LatencyStats::default();
        self.ttft = LatencyStats::default();
        self.models = ModelTable::default();
    }
}

fn known_model(model: Option<&str>) -> Option<&str> {
    model.filter(|name| !name.is_empty())
}

/// The model key a start of `model` counts its call under.
pub fn start_model_key(model: Option<&str>) -> &str {
    known_model(model).unwrap_or(UNKNOWN_MODEL)
}

/// The model key an error of `model` counts under, when its run's start named `start_model`; None when
/// neither names one (the error counts under no model).
pub fn error_model_key<'a>(model: Option<&'a str>, start_model: Option<&'a str>) -> Option<&'a str> {
    known_model(model).or(start_model)
}

fn price_conflict(model: &str, ours: Option<Price>, theirs: Option<Price>) -> String {
    format!(
        "model {model:?} is priced differently ({ours:?} here, {theirs:?} in the snapshot): merge snapshots made with the same price table"
    )
}

/// The mean of `count` latencies summing to `sum_us` microseconds, in milliseconds (0 without any).
fn average_ms(sum_us: u128, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum_us as f64 / count as f64 / 1000.0
    }
}

#[derive(Debug, Default, Clone)]
struct Counters {
    total_calls: u64,
    completed_calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    errors: u64,
    retries: u64,
    tool_calls: u64,
    tool_results: u64,
    tokens_streamed: u64,
    memory_stores: u64,
    memory_recalls: u64,
    unpriced_calls: u64,
    unreported_usage_calls: u64,
    evicted_runs: u64,
    dropped_events: u64,
    lost_events: u64,
    rejected_events: u64,
    handler_errors: u64,
    /// Open runs of the snapshots merged in (they stay open: their ends happen elsewhere).
    merged_open_runs: u64,
}

/// Where `open_runs` is in `COUNTER_NAMES`.
const OPEN_RUNS_SLOT: usize = 16;
const _: () = assert!(matches!(COUNTER_NAMES[OPEN_RUNS_SLOT].as_bytes(), b"open_runs"));

impl Counters {
    /// The counters in `COUNTER_NAMES` order; at `open_runs`, those of the snapshots merged in.
    fn slots(&mut self) -> [&mut u64; COUNTER_NAMES.len()] {
        [
            &mut self.total_calls,
            &mut self.completed_calls,
            &mut self.prompt_tokens,
            &mut self.completion_tokens,
            &mut self.total_tokens,
            &mut self.cached_tokens,
            &mut self.reasoning_tokens,
            &mut self.errors,
            &mut self.retries,
            &mut self.tool_calls,
            &mut self.tool_results,
            &mut self.tokens_streamed,
            &mut self.memory_stores,
            &mut self.memory_recalls,
            &mut self.unpriced_calls,
            &mut self.unreported_usage_calls,
            &mut self.merged_open_runs,
            &mut self.evicted_runs,
            &mut self.dropped_events,
            &mut self.lost_events,
            &mut self.rejected_events,
            &mut self.handler_errors,
        ]
    }
}

#[derive(Debug, Default)]
struct LatencyStats {
    count: u64,
    /// The sum of the latencies as the histogram counts them, in whole microseconds: exact, so merged
    /// snapshots average to the same figure in any order.
    sum_us: u128,
    min_ms: f64,
    max_ms: f64,
    histogram: Histogram,
}

impl LatencyStats {
    /// Counts `latency_ms` and returns it in whole microseconds.
    fn record(&mut self, latency_ms: f64) -> u64 {
        if self.count == 0 || latency_ms < self.min_ms {
            self.min_ms = latency_ms;
        }
        if self.count == 0 || latency_ms > self.max_ms {
            self.max_ms = latency_ms;
        }
        let micros = latency_micros(latency_ms);
        self.count += 1;
        self.sum_us += u128::from(micros);
        self.histogram.record_micros(micros);
        micros
    }

    fn average_ms(&self) -> f64 {
        average_ms(self.sum_us, self.count)
    }

    /// `statistic(self)`, or None before the first sample.
    fn sampled(&self, statistic: impl Fn(&LatencyStats) -> f64) -> Option<f64> {
        (self.count > 0).then(|| statistic(self))
    }

    fn state(&self) -> DurationState {
        DurationState {
            count: self.count,
            sum_us: self.sum_us,
            min_ms: self.min_ms,
            max_ms: self.max_ms,
            buckets: self.histogram.buckets(),
        }
    }

    /// Adds `other`, which `DurationState::check` accepted.
    fn merge(&mut self, other: &DurationState) {
        if other.count == 0 {
            return;
        }
        for &(index, count) in &other.buckets {
            self.histogram.add_bucket(index, count);
        }
        if self.count == 0 || other.min_ms < self.min_ms {
            self.min_ms = other.min_ms;
        }
        if self.count == 0 || other.max_ms > self.max_ms {
            self.max_ms = other.max_ms;
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

impl DurationState {
    /// Refuses buckets past this histogram layout, or that do not add up to the count.
    fn check(&self) -> Result<(), String> {
        if self.count == 0 {
            return Ok(());
        }
        if let Some(&(index, _)) = self.buckets.iter().find(|(index, _)| !Histogram::has_bucket(*index)) {
            return Err(format!("histogram bucket {index} is past the last bucket of this layout"));
        }
        let bucket_total = self.buckets.iter().fold(0u64, |total, (_, count)| total.saturating_add(*count));
        if bucket_total != self.count {
            return Err(format!("a snapshot's histogram holds {bucket_total} latencies but its count is {}", self.count));
        }
        Ok(())
    }
}

/// Token sums of a model's priced calls: its cost is their cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PricedTokens {
    pub prompt: u64,
    /// Prompt tokens served from the cache, each call's at most its prompt tokens.
    pub cached: u64,
    pub completion: u64,
}

impl PricedTokens {
    fn add(&mut self, usage: &Usage) {
        self.prompt = self.prompt.saturating_add(usage.prompt_tokens);
        self.cached = self.cached.saturating_add(usage.cached_tokens.min(usage.prompt_tokens));
        self.completion = self.completion.saturating_add(usage.completion_tokens);
    }

    fn merge(&mut self, other: &PricedTokens) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.cached = self.cached.saturating_add(other.cached);
        self.completion = self.completion.saturating_add(other.completion);
    }
}

impl ModelState {
    fn new(name: &str, price: Option<Price>) -> ModelState {
        ModelState {
            name: name.to_owned(),
            price,
            calls: 0,
            completed_calls: 0,
            errors: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cost_known: true,
            priced: PricedTokens::default(),
            latency_count: 0,
            latency_sum_us: 0,
        }
    }

    /// The cost of the priced calls (0 for a model without a price).
    fn priced_cost(&self) -> f64 {
        self.price.map_or(0.0, |price| price.cost(self.priced.prompt, self.priced.cached, self.priced.completion))
    }

    fn snapshot(&self) -> (String, ModelSnapshot) {
        let snapshot = ModelSnapshot {
            calls: self.calls,
            completed_calls: self.completed_calls,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.cached_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cost_usd: self.cost_known.then(|| self.priced_cost()),
            avg_latency_ms: average_ms(self.latency_sum_us, self.latency_count),
        };
        (self.name.clone(), snapshot)
    }

    fn merge(&mut self, other: &ModelState) -> Result<(), String> {
        if other.price != self.price {
            return Err(price_conflict(&self.name, self.price, other.price));
        }
        self.calls = self.calls.saturating_add(other.calls);
        self.completed_calls = self.completed_calls.saturating_add(other.completed_calls);
        self.errors = self.errors.saturating_add(other.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cost_known &= other.cost_known;
        self.priced.merge(&other.priced);
        self.latency_count = self.latency_count.saturating_add(other.latency_count);
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
        Ok(())
    }
}

/// Per-model stats in first-seen order.
#[derive(Debug, Default)]
struct ModelTable {
    entries: Vec<ModelState>,
    index_by_name: HashMap<String, usize>,
    /// The index `index` found last: calls mostly name the model the call before named, and comparing
    /// that name costs less than hashing it.
    last_found: usize,
}

impl ModelTable {
    /// The index of `named` (the event's own model), else of the run's start model `started`, else of
    /// the unknown model. When both name the same model no name is hashed.
    fn index_for(&mut self, named: Option<&str>, started: Option<usize>, prices: &Prices) -> usize {
        match (named, started) {
            (Some(name), Some(index)) if self.entries[index].name == name => index,
            (Some(name), _) => self.index(name, prices),
            (None, Some(index)) => index,
            (None, None) => self.index(UNKNOWN_MODEL, prices),
        }
    }

    fn index(&mut self, name: &str, prices: &Prices) -> usize {
        if self.entries.get(self.last_found).is_some_and(|entry| entry.name == name) {
            return self.last_found;
        }
        let index = match self.index_by_name.get(name) {
            Some(&index) => index,
            None => self.push(ModelState::new(name, prices.lookup(name))),
        };
        self.last_found = index;
        index
    }

    fn push(&mut self, stats: ModelState) -> usize {
        let index = self.entries.len();
        self.index_by_name.insert(stats.name.clone(), index);
        self.entries.push(stats);
        index
    }

    /// The cost of every priced call, summed over the models in name order: the same figure however the
    /// calls were split between snapshots.
    fn total_cost_usd(&self) -> f64 {
        let mut models: Vec<&ModelState> = self.entries.iter().filter(|stats| stats.price.is_some()).collect();
        models.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        models.iter().fold(0.0, |total, stats| total + stats.priced_cost())
    }
}

#[derive(Debug)]
struct OpenRun {
    start_ts: f64,
    /// The `ModelTable` index of the start's model, when it named one.
    model: Option<usize>,
    /// Identifies this opening among `insertion_order` entries for the same run id.
    seq: u64,
}

/// Stale `insertion_order` entries kept besides one per open run before compacting: compacting the
/// few entries a closed run leaves, at every event, cost more than keeping a few hundred.
const STALE_SLACK: usize = 256;

/// The bytes of a run id, inline up to `INLINE_RUN_ID` of them (a UUID takes 36): opening a run allocates
/// nothing.
#[derive(Debug, Clone)]
enum RunKey {
    Inline { len: u8, bytes: [u8; INLINE_RUN_ID] },
    Heap(Box<[u8]>),
}

const INLINE_RUN_ID: usize = 46;

impl RunKey {
    fn new(run_id: &str) -> RunKey {
        let id = run_id.as_bytes();
        if id.len() > INLINE_RUN_ID {
            return RunKey::Heap(id.into());
        }
        let mut bytes = [0; INLINE_RUN_ID];
        bytes[..id.len()].copy_from_slice(id);
        RunKey::Inline { len: id.len() as u8, bytes }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RunKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            RunKey::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for RunKey {
    fn eq(&self, other: &RunKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RunKey {}

impl std::hash::Hash for RunKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for RunKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Open runs in insertion order, capped. Closing or replacing a run leaves its `insertion_order` entry
/// behind as stale; eviction skips stale entries, and the queue is compacted once stale entries outnumber
/// open runs plus `STALE_SLACK`, so it never holds more than twice the open runs plus that, and each event
/// costs amortised O(1).
#[derive(Debug)]
struct OpenRuns {
    capacity: usize,
    runs: HashMap<RunKey, OpenRun>,
    insertion_order: VecDeque<(u64, RunKey)>,
    stale_entries: usize,
    next_seq: u64,
}

impl OpenRuns {
    fn new(capacity: usize) -> Self {
        OpenRuns { capacity, runs: HashMap::default(), insertion_order: VecDeque::new(), stale_entries: 0, next_seq: 0 }
    }

    fn len(&self) -> usize {
        self.runs.len()
    }

    /// Opens (or reopens) `run_id` as the newest run; returns whether the oldest run was evicted.
    fn open(&mut self, run_id: &str, start_ts: f64, model: Option<usize>) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let run = OpenRun { start_ts, model, seq };
        let key = RunKey::new(run_id);
        if self.runs.insert(key.clone(), run).is_some() {
            self.stale_entries += 1;
        }
        self.insertion_order.push_back((seq, key));
        let evicted = self.runs.len() > self.capacity;
        if evicted {
            self.evict_oldest();
        }
        self.compact_if_mostly_stale();
        evicted
    }

    fn close(&mut self, run_id: &str) -> Option<OpenRun> {
        let run = self.runs.remove(run_id.as_bytes())?;
        self.stale_entries += 1;
        self.compact_if_mostly_stale();
        Some(run)
    }

    fn is_current(&self, seq: u64, run_id: &RunKey) -> bool {
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

    #[inline(always)]
    fn compact_if_mostly_stale(&mut self) {
        if self.stale_entries > self.runs.len() + STALE_SLACK {
            self.compact();
        }
    }

    /// Drops the stale `insertion_order` entries: once per `STALE_SLACK` closes at most, so kept out of line.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        let runs = &self.runs;
        self.insertion_order.retain(|(seq, run_id)| runs.get(run_id).is_some_and(|run| run.seq == *seq));
        self.stale_entries = 0;
    }
}

#[cfg(test)]
mod tests {
    //! The behaviour of each event is tested once for both backends, through Python, in
    //! tests/test_metrics_cases.py; these are the cases Python cannot observe.

    use super::*;

    fn prices() -> Prices {
        Prices::new(vec![("gpt-4o".to_owned(), 2.5, 10.0)], Vec::new())
    }

    #[test]
    fn a_nan_start_time_gives_a_zero_latency() {
        // Not reachable through the Python layer, which refuses a NaN timestamp.
        let mut metrics = Metrics::new(prices(), 10);
        metrics.llm_start("a", None, f64::NAN);
        metrics.llm_end("a", None, None, None, 1.0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.max_latency_ms.to_bits(), 0.0f64.to_bits());
        assert_eq!(snapshot.avg_latency_ms.to_bits(), 0.0f64.to_bits());
        assert_eq!(snapshot.p50_latency_ms.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn memory_stays_bounded_over_many_runs() {
        let mut metrics = Metrics::new(prices(), 1000);
        for i in 0..1_000_000u64 {
            let run_id = i.to_string();
            metrics.llm_start(&run_id, Some("gpt-4o"), 0.0);
            metrics.llm_end(&run_id, None, None, None, 0.001);
        }
        assert_eq!(metrics.open_runs.len(), 0);
        assert!(metrics.open_runs.insertion_order.len() <= STALE_SLACK + 1);
        assert!(metrics.open_runs.runs.capacity() < 64);
        assert!(metrics.open_runs.insertion_order.capacity() <= 2 * STALE_SLACK);
        assert_eq!(metrics.snapshot().completed_calls, 1_000_000);
    }

    #[test]
    fn queue_stays_within_twice_the_open_runs_and_the_slack() {
        let mut metrics = Metrics::new(prices(), 100);
        for i in 0..200_000u64 {
            // A mix of fresh runs, restarts and closes in varying order.
            let run_id = (i * 7919 % 150).to_string();
            match i % 3 {
                0 | 1 => metrics.llm_start(&run_id, None, 0.0),
                _ => {
                    metrics.llm_end(&run_id, None, None, None, 1.0);
                }
            }
            let open_runs = &metrics.open_runs;
            assert!(open_runs.len() <= 100);
            assert!(open_runs.insertion_order.len() <= 2 * open_runs.len() + STALE_SLACK + 1);
            assert_eq!(open_runs.insertion_order.len(), open_runs.len() + open_runs.stale_entries);
        }
    }
}
