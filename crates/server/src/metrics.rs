//! Server metrics, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Counters only grow; gauges are set by the engine thread after each step. Histograms keep
//! cumulative bucket counts (`le` upper bounds, in seconds) with their sum and count. Every
//! name and label is listed in docs/SERVER.md.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds of time to first token, seconds (prefill of a long prompt on a CPU takes
/// seconds to minutes).
const TTFT_BOUNDS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Bucket bounds of the time between two tokens of one request, seconds.
const ITL_BOUNDS: &[f64] = &[0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

/// Bucket bounds of the requests in one forward step (batch occupancy).
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How a generation request ended, as counted in `infinihip_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The client went away first.
    Cancelled,
    /// The engine failed.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Stop, Outcome::Length, Outcome::Cancelled, Outcome::Error];

    fn label(self) -> &'static str {
        match self {
            Outcome::Stop => "stop",
            Outcome::Length => "length",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
        }
    }
}

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), one more than `bounds` for +Inf; then the sum and count.
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, state: Mutex::new((vec![0; bounds.len() + 1], 0.0, 0)) }
    }

    fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0[bucket] += 1;
        state.1 += value;
        state.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in state.0.iter().enumerate() {
            cumulative += count;
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", state.1, state.2);
    }
}

/// Every metric of the server; shared by the HTTP handlers and the engine thread.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP responses by route and status.
    http: Mutex<BTreeMap<(String, u16), u64>>,
    /// Generation requests by outcome, indexed like `Outcome::ALL`.
    outcomes: [AtomicU64; 4],
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    preemptions: AtomicU64,
    waiting: AtomicU64,
    running: AtomicU64,
    kv_pages_used: AtomicU64,
    kv_pages_free: AtomicU64,
    ttft: Histogram,
    itl: Histogram,
    batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http: Mutex::new(BTreeMap::new()),
            outcomes: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_pages_used: AtomicU64::new(0),
            kv_pages_free: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            batch: Histogram::new(BATCH_BOUNDS),
        }
    }
}

/// The engine's state, as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineGauges {
    pub waiting: usize,
    pub running: usize,
    pub kv_pages_used: usize,
    pub kv_pages_free: usize,
}

impl Metrics {
    pub fn http_response(&self, route: &str, status: u16) {
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        *http.entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn request_done(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn generation_tokens(&self, n: usize) {
        self.generation_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn preemptions(&self, n: usize) {
        self.preemptions.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn time_to_first_token(&self, t: Duration) {
        self.ttft.observe(t.as_secs_f64());
    }

    pub fn inter_token_latency(&self, t: Duration) {
        self.itl.observe(t.as_secs_f64());
    }

    /// One forward step computed `requests` requests together.
    pub fn step(&self, requests: usize) {
        self.batch.observe(requests as f64);
    }

    pub fn set_engine(&self, g: EngineGauges) {
        self.waiting.store(g.waiting as u64, Ordering::Relaxed);
        self.running.store(g.running as u64, Ordering::Relaxed);
        self.kv_pages_used.store(g.kv_pages_used as u64, Ordering::Relaxed);
        self.kv_pages_free.store(g.kv_pages_free as u64, Ordering::Relaxed);
    }

    pub fn engine(&self) -> EngineGauges {
        EngineGauges {
            waiting: self.waiting.load(Ordering::Relaxed) as usize,
            running: self.running.load(Ordering::Relaxed) as usize,
            kv_pages_used: self.kv_pages_used.load(Ordering::Relaxed) as usize,
            kv_pages_free: self.kv_pages_free.load(Ordering::Relaxed) as usize,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP infinihip_http_responses_total HTTP responses by route and status.\n");
        out.push_str("# TYPE infinihip_http_responses_total counter\n");
        for ((route, status), n) in self.http.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "infinihip_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP infinihip_requests_total Generation requests that ended, by outcome.\n");
        out.push_str("# TYPE infinihip_requests_total counter\n");
        for (outcome, n) in Outcome::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(out, "infinihip_requests_total{{outcome=\"{}\"}} {}", outcome.label(), get(n));
        }
        let scalars: [(&str, &str, &str, u64); 8] = [
            (
                "infinihip_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted requests.",
                get(&self.prompt_tokens),
            ),
            ("infinihip_generation_tokens_total", "counter", "Tokens sampled.", get(&self.generation_tokens)),
            (
                "infinihip_preemptions_total",
                "counter",
                "Requests preempted for KV pages (recomputed later).",
                get(&self.preemptions),
            ),
            ("infinihip_requests_waiting", "gauge", "Requests in the admission queue.", get(&self.waiting)),
            ("infinihip_requests_running", "gauge", "Requests admitted to the batch.", get(&self.running)),
            ("infinihip_kv_pages_used", "gauge", "KV cache pages held by requests.", get(&self.kv_pages_used)),
            ("infinihip_kv_pages_free", "gauge", "KV cache pages free.", get(&self.kv_pages_free)),
            ("infinihip_up", "gauge", "1 while the server answers.", 1),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        self.ttft.render(&mut out, "infinihip_time_to_first_token_seconds", "From arrival to the first sampled token.");
        self.itl.render(&mut out, "infinihip_inter_token_latency_seconds", "Between consecutive tokens of a request.");
        self.batch.render(&mut out, "infinihip_batch_requests", "Requests computed together in one forward step.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for ms in [3, 30, 30, 5000] {
            m.inter_token_latency(Duration::from_millis(ms));
        }
        let text = m.render();
        for line in [
            "infinihip_inter_token_latency_seconds_bucket{le=\"0.005\"} 1",
            "infinihip_inter_token_latency_seconds_bucket{le=\"0.02\"} 1",
            "infinihip_inter_token_latency_seconds_bucket{le=\"0.04\"} 3",
            "infinihip_inter_token_latency_seconds_bucket{le=\"2.5\"} 3",
            "infinihip_inter_token_latency_seconds_bucket{le=\"+Inf\"} 4",
            "infinihip_inter_token_latency_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("infinihip_inter_token_latency_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("a sum line");
        assert!((sum - 5.063).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn counters_and_gauges() {
        let m = Metrics::default();
        m.http_response("/v1/models", 200);
        m.http_response("/v1/models", 200);
        m.request_done(Outcome::Cancelled);
        m.set_engine(EngineGauges { waiting: 2, running: 3, kv_pages_used: 4, kv_pages_free: 5 });
        let text = m.render();
        for line in [
            "infinihip_http_responses_total{route=\"/v1/models\",status=\"200\"} 2",
            "infinihip_requests_total{outcome=\"cancelled\"} 1",
            "infinihip_requests_total{outcome=\"stop\"} 0",
            "infinihip_requests_waiting 2",
            "infinihip_kv_pages_free 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
