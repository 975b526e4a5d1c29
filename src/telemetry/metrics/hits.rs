//! The L1-hit series (`GetCertificate`, `OK`, `hit_local`), counted in per-thread shards.
//!
//! Most requests are L1 hits, and a prometheus histogram's `observe` writes four atomics
//! that every thread shares (its hot-shard count, the bucket, the sum, the count): under
//! load both cores write the same cache lines on every hit. Here each thread writes a
//! shard of its own (two atomics), and a scrape adds the shards into the gathered
//! `certbroker_requests_total` and `certbroker_request_duration_seconds` series
//! ([`Hits::add_to_counter`], [`Hits::add_to_histogram`]), which stay registered as usual
//! for every other request.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use prometheus::proto;

/// Upper bounds of the request and issuance latency buckets, seconds.
pub(super) const LATENCY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Threads beyond this many share shards (and only then a shard's cache line).
const SHARDS: usize = 16;

/// One thread's counts, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Per bucket, not cumulative; the last one is `+Inf`. The count is their sum, so a
    /// scrape never sees a count that disagrees with the buckets.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Hits {
    shards: Box<[Shard]>,
}

impl Hits {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// One L1 hit answered in `took`.
    pub(super) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|upper| secs <= *upper)
            .unwrap_or(LATENCY_BUCKETS.len());
        let shard = &self.shards[shard_index()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Per-bucket counts (the last `+Inf`) and the sum in seconds, over all shards.
    fn totals(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut counts = [0; LATENCY_BUCKETS.len() + 1];
        let mut nanos = 0u128;
        for shard in &self.shards {
            for (total, b) in counts.iter_mut().zip(&shard.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
            nanos += u128::from(shard.sum_nanos.load(Ordering::Relaxed));
        }
        (counts, nanos as f64 / 1e9)
    }

    /// Adds the hits to the gathered `requests_total` counter of the series.
    pub(super) fn add_to_counter(&self, m: &mut proto::Metric) {
        let n: u64 = self.totals().0.iter().sum();
        let mut c = m.get_counter().clone();
        c.set_value(c.get_value() + n as f64);
        m.set_counter(c);
    }

    /// Adds the hits to the gathered `GetCertificate` latency histogram (the same buckets).
    pub(super) fn add_to_histogram(&self, m: &mut proto::Metric) {
        let (counts, sum) = self.totals();
        let mut h = m.get_histogram().clone();
        let mut cumulative = 0;
        let buckets: Vec<proto::Bucket> = h
            .get_bucket()
            .iter()
            .zip(counts)
            .map(|(b, n)| {
                cumulative += n;
                let mut b = b.clone();
                b.set_cumulative_count(b.cumulative_count() + cumulative);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h.set_sample_count(h.get_sample_count() + counts.iter().sum::<u64>());
        h.set_sample_sum(h.get_sample_sum() + sum);
        m.set_histogram(h);
    }
}

/// This thread's shard.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_across_threads_into_the_buckets_they_fall_in() {
        let hits = std::sync::Arc::new(Hits::new());
        let threads: Vec<_> = (0..(SHARDS + 3))
            .map(|_| {
                let hits = hits.clone();
                std::thread::spawn(move || {
                    hits.observe(Duration::from_micros(300)); // le 0.005
                    hits.observe(Duration::from_millis(5)); // le 0.005: the bound counts
                    hits.observe(Duration::from_millis(70)); // le 0.1
                    hits.observe(Duration::from_secs(400)); // +Inf only
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (SHARDS + 3) as u64;
        let (counts, sum) = hits.totals();
        assert_eq!(counts[0], 2 * n);
        assert_eq!(counts[4], n);
        assert_eq!(counts[LATENCY_BUCKETS.len()], n);
        assert_eq!(counts.iter().sum::<u64>(), 4 * n);
        assert!((sum - n as f64 * 400.0753).abs() < 1e-6, "{sum}");
    }
}
