//! The latency histogram behind the metrics' percentiles: the log-linear buckets of docs/metrics.md,
//! "Latency". `python/rlm_toolkit/_reference/metrics.py` has the same buckets.

/// Largest microsecond value the histogram tells apart (about 12.7 days); longer latencies are clamped.
const MAX_LATENCY_MICROS: u64 = (1 << 40) - 1;
/// Values below this have a bucket each; above, every power-of-two range is split into `HALF_SUB_BUCKETS`.
const SUB_BUCKETS: u64 = 2048;
const HALF_SUB_BUCKETS: u64 = 1024;
const SUB_BUCKET_BITS: u32 = 11;

/// `latency_ms` (>= 0, not NaN) as whole microseconds, rounded half away from zero and clamped.
pub fn latency_micros(latency_ms: f64) -> u64 {
    let micros = latency_ms * 1000.0;
    if micros >= MAX_LATENCY_MICROS as f64 {
        MAX_LATENCY_MICROS
    } else {
        // The cast truncates: for the non-negative sums it is `floor`, without a call to libm's (an x86-64
        // CPU without SSE4.1 has no instruction for it); below 0 both saturate to 0.
        (micros + 0.5) as u64
    }
}

fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let shift = (u64::BITS - micros.leading_zeros()) - SUB_BUCKET_BITS;
    (SUB_BUCKETS + u64::from(shift - 1) * HALF_SUB_BUCKETS + ((micros >> shift) - HALF_SUB_BUCKETS)) as usize
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

/// Log-linear histogram of latencies; `counts` grows only up to the highest bucket used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// The bucket layout, for snapshots to name: values below `EXACT_BELOW` microseconds have a bucket each,
/// each power of two above is split into `SUB_BUCKETS_PER_POWER`, and values above `MAX_MICROS` are clamped.
pub const EXACT_BELOW: u64 = SUB_BUCKETS;
pub const SUB_BUCKETS_PER_POWER: u64 = HALF_SUB_BUCKETS;
pub const MAX_MICROS: u64 = MAX_LATENCY_MICROS;

impl Histogram {
    /// Counts one latency of `micros` (as `latency_micros` gives it).
    pub fn record_micros(&mut self, micros: u64) {
        let index = bucket_index(micros.min(MAX_LATENCY_MICROS));
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
    }

    /// `(bucket index, count)` of every bucket that counted something, lowest first.
    pub fn buckets(&self) -> Vec<(usize, u64)> {
        self.counts.iter().enumerate().filter(|(_, &count)| count > 0).map(|(index, &count)| (index, count)).collect()
    }

    /// Whether `index` is a bucket of this layout.
    pub fn has_bucket(index: usize) -> bool {
        index <= bucket_index(MAX_LATENCY_MICROS)
    }

    /// Adds `count` to the bucket `index`, one of the layout's (`has_bucket`).
    pub fn add_bucket(&mut self, index: usize, count: u64) {
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] = self.counts[index].saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    pub fn percentile_ms(&self, percentile: u64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        // u128 keeps the product exact for any count.
        let rank = (u128::from(percentile) * u128::from(self.total)).div_ceil(100).max(1) as u64;
        let mut cumulative = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(count);
            if cumulative >= rank {
                let (low, width) = bucket_range(index);
                return (low + (width - 1) / 2) as f64 / 1000.0;
            }
        }
        unreachable!("rank {rank} is at most the histogram total {}", self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(low <= micros && micros < low + width, "{micros} outside [{low}, {low}+{width})");
        }
    }

    #[test]
    fn an_infinite_latency_is_clamped() {
        assert_eq!(latency_micros(f64::INFINITY), MAX_LATENCY_MICROS);
    }

    #[test]
    fn latencies_round_to_the_nearest_microsecond_as_floor_of_half_more() {
        let mut samples = vec![0.0, 0.0005, 0.0004999999999999999, 0.0015, 1.0, 2.5e-4, f64::NAN, -0.0004, -1.0];
        samples.extend((0..100_000).map(|step| f64::from(step) * 0.000_123_7));
        for latency_ms in samples {
            let micros = latency_ms * 1000.0;
            let expected = if micros >= MAX_LATENCY_MICROS as f64 { MAX_LATENCY_MICROS } else { (micros + 0.5).floor() as u64 };
            assert_eq!(latency_micros(latency_ms), expected, "{latency_ms:e}");
        }
    }

    #[test]
    fn full_histogram_scan_is_fast() {
        let mut histogram = Histogram::default();
        histogram.record_micros(latency_micros(1e12));
        assert_eq!(histogram.counts.len(), 31744);
        let started = std::time::Instant::now();
        histogram.percentile_ms(50);
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }
}
