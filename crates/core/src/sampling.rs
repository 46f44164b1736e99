//! Sampling: turn one position's logits into the next token id, and find stop strings in the
//! text that comes out.
//!
//! Shapes: `logits` is one row of `[vocab]` f32 scores; `history` is the token ids that the
//! penalties look at (oldest first: the prompt and/or the generated tokens, as the caller
//! chooses). Ids in `history` that fall outside the vocabulary are ignored.
//!
//! [`Sampler::sample`] applies, in this order:
//! 1. NaN logits become −∞ (a broken score must never be drawn, nor crash the server);
//! 2. repetition penalty (llama.cpp style): each distinct token among the last
//!    `repeat_last_n` of `history` has a positive logit divided by `repetition_penalty` and a
//!    negative one multiplied by it;
//! 3. presence and frequency penalties (OpenAI semantics) over all of `history`:
//!    `logit[t] -= count[t] · frequency_penalty + (count[t] > 0) · presence_penalty`;
//! 4. `temperature == 0` stops here with the greedy argmax (ties → lowest id);
//! 5. top-k: keep the `top_k` highest logits;
//! 6. softmax with temperature over what is left;
//! 7. top-p: keep the smallest best-first prefix whose probability reaches `top_p` (≥ 1 token);
//! 8. min-p: keep tokens whose probability is at least `min_p` times the largest;
//! 9. renormalise and draw with the sampler's own seeded PRNG.
//!
//! Invariants: a token with probability 0 (logit −∞ or NaN) is never drawn while some token has
//! a positive probability; the same parameters, seed and inputs give the same tokens on every
//! platform; after the first call at a given vocabulary size, `sample` does not allocate.
//!
//! [`StopMatcher`] holds back streamed text that might be the start of a stop string, so a stop
//! string split across tokens is never emitted partially, and the stop string itself never is.

use serde::{Deserialize, Serialize};

/// A sampling parameter outside its valid range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplingError {
    #[error("sampling parameter `{field}` = {value} is invalid: expected {expected}")]
    InvalidParam { field: &'static str, value: f32, expected: &'static str },
}

/// How to pick the next token. Each filter has a value that switches it off (given per field).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy argmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches
    /// `top_p`; in (0, 1], 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; in [0, 1], 0 = off.
    pub min_p: f32,
    /// Divide positive / multiply negative logits of recently seen tokens; > 0, 1 = off.
    pub repetition_penalty: f32,
    /// How many of the latest history tokens the repetition penalty looks at; 0 = none.
    pub repeat_last_n: usize,
    /// Seed of the sampler's PRNG.
    pub seed: u64,
    /// Subtracted once from the logit of every token present in the history; 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the history; 0 = off.
    pub frequency_penalty: f32,
}

impl SamplingParams {
    /// The defaults, in one place (the CLI and the server document these values):
    ///
    /// | field | default | effect |
    /// |---|---|---|
    /// | `temperature` | 0.8 | mildly sharpened softmax |
    /// | `top_k` | 40 | |
    /// | `top_p` | 0.95 | |
    /// | `min_p` | 0.05 | |
    /// | `repetition_penalty` | 1.0 | off |
    /// | `repeat_last_n` | 64 | |
    /// | `seed` | 0 | runs are reproducible unless the caller picks another seed |
    /// | `presence_penalty` | 0.0 | off |
    /// | `frequency_penalty` | 0.0 | off |
    pub const DEFAULT: SamplingParams = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repetition_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
    };

    /// Checks every field's range; the error names the first bad field and its value.
    pub fn validate(&self) -> Result<(), SamplingError> {
        // Each condition is written so that NaN fails it.
        let checks: [(&'static str, f32, bool, &'static str); 6] = [
            (
                "temperature",
                self.temperature,
                self.temperature >= 0.0 && self.temperature.is_finite(),
                "a finite number >= 0 (0 = greedy)",
            ),
            ("top_p", self.top_p, self.top_p > 0.0 && self.top_p <= 1.0, "a number in (0, 1] (1 = off)"),
            ("min_p", self.min_p, (0.0..=1.0).contains(&self.min_p), "a number in [0, 1] (0 = off)"),
            (
                "repetition_penalty",
                self.repetition_penalty,
                self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
                "a finite number > 0 (1 = off)",
            ),
            ("presence_penalty", self.presence_penalty, self.presence_penalty.is_finite(), "a finite number (0 = off)"),
            (
                "frequency_penalty",
                self.frequency_penalty,
                self.frequency_penalty.is_finite(),
                "a finite number (0 = off)",
            ),
        ];
        match checks.into_iter().find(|&(_, _, ok, _)| !ok) {
            Some((field, value, _, expected)) => Err(SamplingError::InvalidParam { field, value, expected }),
            None => Ok(()),
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// xoshiro256** (Blackman and Vigna), its state filled from the seed by splitmix64 as the
/// authors recommend. Small, fast and well distributed; not for cryptography.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    state: [u64; 4],
}

impl Xoshiro256 {
    fn from_seed(seed: u64) -> Self {
        let mut splitmix = seed;
        let mut next = || {
            splitmix = splitmix.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = splitmix;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { state: [next(), next(), next(), next()] }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A token still in the running. `weight` is its unnormalised probability
/// `exp((logit − max_logit) / temperature)`, so the best token has weight 1.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    weight: f32,
}

/// Sort key that puts candidates best first: higher logit, then lower id, so ties resolve the
/// way greedy argmax does. One integer compare instead of a float compare and a tie-break
/// keeps the selects and sorts over a large vocabulary cheap.
///
/// High half: the logit's bits mapped so that unsigned order is descending float order
/// (`+ 0.0` turns −0 into +0 so the two tie, as they do for `>`). Logits are NaN-free here.
fn best_first(c: &Candidate) -> u64 {
    let bits = (c.logit + 0.0).to_bits();
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
    (u64::from(!ascending) << 32) | u64::from(c.id)
}

/// Index of the largest logit, the lowest one among equal maxima (as [`best_first`] orders).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &logit) in logits.iter().enumerate() {
        if logit > best.1 {
            best = (i, logit);
        }
    }
    best.0 as u32
}

/// Fills `candidates` with the `k` best logits (by [`best_first`]), in no particular order;
/// `0 < k < logits.len()`.
///
/// One pass with a rising bar: tokens go into a buffer of up to 2k, which is cut back to its k
/// best whenever it fills, and the k-th best logit becomes the bar a later token must beat. A
/// token equal to the bar loses, since its id is higher than the kept one's. Most tokens cost
/// one comparison, and nothing of vocabulary size is built.
fn collect_top_k(candidates: &mut Vec<Candidate>, logits: &[f32], k: usize) {
    let mut bar = f32::NEG_INFINITY;
    for (id, &logit) in logits.iter().enumerate() {
        if candidates.len() < k || logit > bar {
            candidates.push(Candidate { id: id as u32, logit, weight: 0.0 });
            if candidates.len() == 2 * k {
                candidates.select_nth_unstable_by_key(k - 1, best_first);
                candidates.truncate(k);
                bar = candidates[k - 1].logit;
            }
        }
    }
    if candidates.len() > k {
        candidates.select_nth_unstable_by_key(k - 1, best_first);
        candidates.truncate(k);
    }
}

/// First sorted batch of the nucleus search. Peaked distributions usually reach `top_p`
/// within it; the batch grows 4× each round otherwise.
const NUCLEUS_FIRST_BATCH: usize = 64;

/// Orders `candidates` best first only as far as needed for their weights to reach `mass`,
/// then truncates them to the smallest such prefix (always keeping one). If the whole set falls
/// short, which rounding can cause, every candidate stays.
///
/// Each round selects the next batch with `select_nth_unstable_by_key` (linear) and sorts only that
/// batch, so a 150k vocabulary with a peaked distribution costs O(vocab), not O(vocab·log vocab).
fn keep_nucleus(candidates: &mut Vec<Candidate>, mass: f64) {
    let mut sorted = 0;
    let mut batch = NUCLEUS_FIRST_BATCH;
    let mut cumulative = 0.0f64;
    while sorted < candidates.len() {
        // Once a batch would cover half of what is left, one sort of the rest is cheaper.
        let rest = candidates.len() - sorted;
        let end = if 2 * batch >= rest { candidates.len() } else { sorted + batch };
        if end < candidates.len() {
            candidates[sorted..].select_nth_unstable_by_key(end - sorted - 1, best_first);
        }
        candidates[sorted..end].sort_unstable_by_key(best_first);
        for i in sorted..end {
            cumulative += f64::from(candidates[i].weight);
            if cumulative >= mass {
                candidates.truncate(i + 1);
                return;
            }
        }
        sorted = end;
        batch *= 4;
    }
}

/// Draws token ids from logits; see the module docs for the pipeline.
///
/// Holds its PRNG and scratch buffers, so one sampler serves one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256,
    /// Scratch: the tokens still in the running during one call.
    candidates: Vec<Candidate>,
    /// Scratch, `[vocab]`, all zero between calls: per-token counts for the penalties.
    token_counts: Vec<u32>,
}

impl Sampler {
    /// A sampler with its PRNG seeded from `params.seed`; rejects invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self { params, rng: Xoshiro256::from_seed(params.seed), candidates: Vec::new(), token_counts: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is used as scratch: on return it holds the NaN-cleaned,
    /// penalised logits. If every logit is −∞ or NaN there is nothing to sample, and the result
    /// is token 0.
    ///
    /// # Panics
    /// If `logits` is empty or longer than `u32::MAX`: the vocabulary is fixed by the model, so
    /// that is a bug in the caller, not bad input.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        assert!(
            !logits.is_empty() && logits.len() <= u32::MAX as usize,
            "Sampler::sample needs 1..=u32::MAX logits, got {}",
            logits.len()
        );
        for logit in logits.iter_mut() {
            if logit.is_nan() {
                *logit = f32::NEG_INFINITY;
            }
        }
        self.apply_penalties(logits, history);
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        self.select_candidates(logits);
        self.draw().unwrap_or_else(|| argmax(logits))
    }

    /// Steps 2 and 3 of the pipeline, in place.
    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = self.params;
        let repetition_on = p.repetition_penalty != 1.0 && p.repeat_last_n > 0;
        let openai_on = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if !repetition_on && !openai_on {
            return;
        }
        let vocab = logits.len();
        if self.token_counts.len() < vocab {
            self.token_counts.resize(vocab, 0);
        }
        let counts = &mut self.token_counts[..vocab];
        let in_vocab = |&t: &u32| (t as usize) < vocab;

        if repetition_on {
            // `counts` marks the tokens already penalised, so each distinct token is penalised once.
            let window = &history[history.len().saturating_sub(p.repeat_last_n)..];
            for t in window.iter().filter(|t| in_vocab(t)).map(|&t| t as usize) {
                if counts[t] == 0 {
                    counts[t] = 1;
                    let logit = &mut logits[t];
                    *logit = if *logit > 0.0 { *logit / p.repetition_penalty } else { *logit * p.repetition_penalty };
                }
            }
            for t in window.iter().filter(|t| in_vocab(t)).map(|&t| t as usize) {
                counts[t] = 0;
            }
        }

        if openai_on {
            for t in history.iter().filter(|t| in_vocab(t)).map(|&t| t as usize) {
                counts[t] = counts[t].saturating_add(1);
            }
            // Applying and zeroing in one pass visits each distinct token's count once.
            for t in history.iter().filter(|t| in_vocab(t)).map(|&t| t as usize) {
                let count = counts[t];
                if count > 0 {
                    logits[t] -= count as f32 * p.frequency_penalty + p.presence_penalty;
                    counts[t] = 0;
                }
            }
        }
    }

    /// Steps 5–8: leaves in `self.candidates` the tokens that may be drawn, with their weights.
    /// Empty when every logit is −∞.
    ///
    /// min-p runs before top-p here, on the same weights: both keep a best-first prefix, and
    /// renormalising after top-p does not change a token's ratio to the best one, so the kept
    /// set is the same in either order. Filtering by min-p first leaves top-p less to sort, and
    /// without top-k it means a token below min-p never becomes a candidate at all.
    fn select_candidates(&mut self, logits: &[f32]) {
        let p = self.params;
        let candidates = &mut self.candidates;
        candidates.clear();
        // The top-k set always holds the best logit, so this is its maximum too.
        let max_logit = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max_logit == f32::NEG_INFINITY {
            return;
        }
        let inv_temperature = 1.0 / p.temperature;
        let weight_of = |logit: f32| {
            if max_logit == f32::INFINITY {
                // Infinite logits share all the probability; `inf − inf` would be NaN.
                if logit == f32::INFINITY {
                    1.0
                } else {
                    0.0
                }
            } else {
                ((logit - max_logit) * inv_temperature).exp()
            }
        };
        // Weight-0 tokens can never be drawn, so they are dropped with those below min-p.
        let keep = |weight: f32| weight > 0.0 && weight >= p.min_p;

        let mut total_weight = 0.0f64;
        if p.top_k > 0 && p.top_k < logits.len() {
            collect_top_k(candidates, logits, p.top_k);
            for c in candidates.iter_mut() {
                c.weight = weight_of(c.logit);
                total_weight += f64::from(c.weight);
            }
            candidates.retain(|c| keep(c.weight));
        } else {
            for (id, &logit) in logits.iter().enumerate() {
                let weight = weight_of(logit);
                total_weight += f64::from(weight);
                if keep(weight) {
                    candidates.push(Candidate { id: id as u32, logit, weight });
                }
            }
        }

        if p.top_p < 1.0 {
            keep_nucleus(candidates, f64::from(p.top_p) * total_weight);
        }
    }

    /// Step 9: one draw from the candidates in proportion to their weights.
    fn draw(&mut self) -> Option<u32> {
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.weight)).sum();
        // Candidates all have positive weight, so only an empty set sums to 0.
        if total <= 0.0 {
            return None;
        }
        let mut target = self.rng.next_unit() * total;
        for c in &self.candidates {
            let weight = f64::from(c.weight);
            if target < weight {
                return Some(c.id);
            }
            target -= weight;
        }
        // Rounding can leave `target` just past the last weight; the last token was then meant.
        self.candidates.iter().rev().find(|c| c.weight > 0.0).map(|c| c.id)
    }
}

/// What [`StopMatcher::feed`] lets through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopScan {
    /// Text that is safe to show now: it cannot be part of a stop string.
    pub emit: String,
    /// A stop string matched: `emit` ends where it began, and generation should end.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in chunks (one decoded token at a time).
///
/// Invariants: the concatenated output never contains a stop string nor any part of the one
/// that matched; the output does not depend on where the chunks were split. When several stop
/// strings could match, the one that is complete earliest in the text wins (as it would if the
/// text came one character at a time), and among those ending at the same place the longest.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: the longest suffix that is a proper prefix of a stop.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored: they would stop generation before its first character.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        Self { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string has matched; later chunks are then swallowed.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next chunk of text and returns what may be emitted now.
    pub fn feed(&mut self, chunk: &str) -> StopScan {
        if self.stopped {
            return StopScan { emit: String::new(), stopped: true };
        }
        self.held.push_str(chunk);

        if let Some(start) = self.first_complete_stop() {
            self.held.truncate(start);
            self.stopped = true;
            return StopScan { emit: std::mem::take(&mut self.held), stopped: true };
        }

        let keep_from = self.held.len() - self.longest_partial_stop();
        let still_held = self.held.split_off(keep_from);
        StopScan { emit: std::mem::replace(&mut self.held, still_held), stopped: false }
    }

    /// Ends the stream: returns the text held back as a possible stop prefix (empty after a
    /// match).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset in `held` where the winning complete stop string starts. Earlier feeds
    /// found none, so any match ends inside the latest chunk; `find` gives each stop string's
    /// earliest, hence earliest-ending, occurrence.
    fn first_complete_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|start| (start + stop.len(), stop.len())))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(end, len)| end - len)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop
    /// string. A stop string begins with a UTF-8 lead byte, so that suffix always begins on a
    /// char boundary of `held`.
    fn longest_partial_stop(&self) -> usize {
        let held = self.held.as_bytes();
        self.stops
            .iter()
            .filter_map(|stop| {
                let stop = stop.as_bytes();
                (1..stop.len().min(held.len() + 1)).rev().find(|&k| held.ends_with(&stop[..k]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parameters with every filter and penalty off, at temperature 1.
    fn plain() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }

    fn sampler(params: SamplingParams) -> Sampler {
        match Sampler::new(params) {
            Ok(s) => s,
            Err(e) => panic!("valid test parameters rejected: {e}"),
        }
    }

    /// The ids the candidate filter keeps, sorted.
    fn kept_ids(params: SamplingParams, logits: &[f32]) -> Vec<u32> {
        let mut s = sampler(params);
        s.select_candidates(logits);
        let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Relative frequency of each id over `draws` samples.
    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = sampler(params);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            let mut scratch = logits.to_vec();
            counts[s.sample(&mut scratch, &[]) as usize] += 1;
        }
        counts.into_iter().map(|c| c as f64 / draws as f64).collect()
    }

    fn assert_frequencies(found: &[f64], expected: &[f64]) {
        // 20,000 draws: one standard deviation is at most 0.0035, so 0.02 is over 5 sigma.
        for (id, (f, e)) in found.iter().zip(expected).enumerate() {
            assert!((f - e).abs() < 0.02, "token {id}: frequency {f:.4}, expected {e:.4} (all: {found:?})");
        }
    }

    /// Probabilities 0.25, 0.1, 0.15, 0.5 for ids 0..4 at temperature 1 (best token is id 3).
    fn four_token_logits() -> Vec<f32> {
        [0.25f32, 0.1, 0.15, 0.5].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn prng_matches_reference_outputs() {
        // splitmix64 from seed 0 is the published 0xe220a8397b1dcdaf; the xoshiro256** outputs
        // for seed 42 come from an independent Python implementation of the reference C code.
        assert_eq!(Xoshiro256::from_seed(0).state[0], 0xe220_a839_7b1d_cdaf);
        let mut rng = Xoshiro256::from_seed(42);
        let outputs: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(
            outputs,
            [0x1578_0b2e_0c2e_c716, 0x6104_d986_6d11_3a7e, 0xae17_5332_39e4_99a1, 0xecb8_ad47_03b3_60a1]
        );
    }

    #[test]
    fn defaults_are_the_documented_values_and_valid() {
        let d = SamplingParams::default();
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (0.8, 40, 0.95, 0.05));
        assert_eq!(
            (d.repetition_penalty, d.repeat_last_n, d.presence_penalty, d.frequency_penalty),
            (1.0, 64, 0.0, 0.0)
        );
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn validation_names_the_field_and_value() {
        let bad: [(SamplingParams, &str, &str); 10] = [
            (SamplingParams { temperature: -0.5, ..plain() }, "temperature", "-0.5"),
            (SamplingParams { temperature: f32::NAN, ..plain() }, "temperature", "NaN"),
            (SamplingParams { temperature: f32::INFINITY, ..plain() }, "temperature", "inf"),
            (SamplingParams { top_p: 0.0, ..plain() }, "top_p", "= 0"),
            (SamplingParams { top_p: 1.5, ..plain() }, "top_p", "1.5"),
            (SamplingParams { min_p: -0.1, ..plain() }, "min_p", "-0.1"),
            (SamplingParams { min_p: 1.01, ..plain() }, "min_p", "1.01"),
            (SamplingParams { repetition_penalty: 0.0, ..plain() }, "repetition_penalty", "= 0"),
            (SamplingParams { presence_penalty: f32::NAN, ..plain() }, "presence_penalty", "NaN"),
            (SamplingParams { frequency_penalty: f32::NEG_INFINITY, ..plain() }, "frequency_penalty", "-inf"),
        ];
        for (params, field, value) in bad {
            let message = match params.validate() {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{field} should be rejected in {params:?}"),
            };
            assert!(message.contains(&format!("`{field}`")) && message.contains(value), "{message}");
            assert!(Sampler::new(params).is_err());
        }
        let edges = SamplingParams { temperature: 0.0, top_p: 1.0, min_p: 1.0, frequency_penalty: -2.0, ..plain() };
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let logits = vec![0.0f32; 1000];
        let run = |seed| {
            let mut s = sampler(SamplingParams { seed, ..plain() });
            (0..100).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<u32>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn greedy_takes_the_argmax_with_ties_to_the_lowest_id() {
        let mut s = sampler(SamplingParams { temperature: 0.0, ..SamplingParams::DEFAULT });
        assert_eq!(s.sample(&mut [1.0, 3.0, 2.0, 3.0], &[]), 1);
        assert_eq!(s.sample(&mut [-5.0, -1.0, -3.0], &[]), 1);
    }

    #[test]
    fn greedy_happens_after_penalties() {
        let params = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..plain() };
        // Token 0 was just seen: 5 / 2 = 2.5 loses to 4.
        assert_eq!(sampler(params).sample(&mut [5.0, 4.0], &[0]), 1);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut rng = Xoshiro256::from_seed(3);
        let mut greedy = sampler(SamplingParams { temperature: 0.0, ..plain() });
        let mut top1 = sampler(SamplingParams { top_k: 1, temperature: 1.5, ..plain() });
        for round in 0..50 {
            // Coarse values make ties common.
            let logits: Vec<f32> = (0..5000).map(|_| (rng.next_unit() * 20.0).floor() as f32).collect();
            let expected = greedy.sample(&mut logits.clone(), &[]);
            assert_eq!(top1.sample(&mut logits.clone(), &[]), expected, "round {round}");
        }
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        let logits = [0.5f32, 3.0, -1.0, 2.0, 2.5, 0.0];
        assert_eq!(kept_ids(SamplingParams { top_k: 3, ..plain() }, &logits), [1, 3, 4]);
        assert_eq!(kept_ids(SamplingParams { top_k: 100, ..plain() }, &logits), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn top_k_on_a_large_vocabulary_with_ties_matches_a_full_sort() {
        let mut rng = Xoshiro256::from_seed(11);
        // 50 distinct values, negative and positive, over 50k tokens: ties decide who is in.
        let logits: Vec<f32> = (0..50_000).map(|_| (rng.next_unit() * 50.0).floor() as f32 - 25.0).collect();
        // A stable sort by logit alone keeps equal logits in id order.
        let mut by_rank: Vec<u32> = (0..logits.len() as u32).collect();
        by_rank.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        for k in [1, 7, 40, 1000] {
            let mut candidates = Vec::new();
            collect_top_k(&mut candidates, &logits, k);
            let mut found: Vec<u32> = candidates.iter().map(|c| c.id).collect();
            found.sort_unstable();
            let mut expected = by_rank[..k].to_vec();
            expected.sort_unstable();
            assert_eq!(found, expected, "k = {k}");
        }
    }

    #[test]
    fn temperature_scales_the_softmax() {
        // logits 0 and ln 4 at temperature 2: weights 1 and 4^(1/2) = 2, so p = 1/3, 2/3.
        let logits = [0.0f32, 4.0f32.ln()];
        let found = frequencies(SamplingParams { temperature: 2.0, ..plain() }, &logits, 20_000);
        assert_frequencies(&found, &[1.0 / 3.0, 2.0 / 3.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        let logits = four_token_logits();
        // Best first: id 3 (0.5), 0 (0.25), 2 (0.15), 1 (0.1); cumulative 0.5, 0.75, 0.9, 1.
        let kept = |top_p| kept_ids(SamplingParams { top_p, ..plain() }, &logits);
        assert_eq!(kept(0.3), [3]);
        assert_eq!(kept(0.7), [0, 3]);
        assert_eq!(kept(0.8), [0, 2, 3]);
        assert_eq!(kept(0.95), [0, 1, 2, 3]);
        assert_eq!(kept(1.0), [0, 1, 2, 3]);

        let found = frequencies(SamplingParams { top_p: 0.8, ..plain() }, &logits, 20_000);
        assert_frequencies(&found, &[0.25 / 0.9, 0.0, 0.15 / 0.9, 0.5 / 0.9]);
    }

    #[test]
    fn top_p_on_a_large_vocabulary_crosses_sort_batches() {
        // p(rank r) ∝ 0.99^r over 100k tokens, ids scattered. The smallest m with
        // 1 − 0.99^m ≥ 0.9 is ceil(ln 0.1 / ln 0.99) = ceil(229.1) = 230.
        let vocab = 100_000u64;
        let id_of_rank = |r: u64| (r * 7919 % vocab) as u32; // 7919 is prime, so this permutes.
        let mut logits = vec![0.0f32; vocab as usize];
        for r in 0..vocab {
            logits[id_of_rank(r) as usize] = r as f32 * 0.99f32.ln();
        }
        let mut expected: Vec<u32> = (0..230).map(id_of_rank).collect();
        expected.sort_unstable();
        assert_eq!(kept_ids(SamplingParams { top_p: 0.9, ..plain() }, &logits), expected);
    }

    #[test]
    fn min_p_is_relative_to_the_best_token() {
        let logits = four_token_logits();
        let kept = |min_p| kept_ids(SamplingParams { min_p, ..plain() }, &logits);
        // Ratios to the best (0.5): 0.5, 0.3, 0.2 for ids 0, 2, 1.
        assert_eq!(kept(0.25), [0, 2, 3]);
        assert_eq!(kept(0.31), [0, 3]);
        assert_eq!(kept(1.0), [3]);
        // Combined with top-p the result is the intersection: top-p 0.7 keeps {3, 0}, 0.8 {3, 0, 2}.
        assert_eq!(kept_ids(SamplingParams { min_p: 0.25, top_p: 0.7, ..plain() }, &logits), [0, 3]);
        assert_eq!(kept_ids(SamplingParams { min_p: 0.31, top_p: 0.8, ..plain() }, &logits), [0, 3]);

        let found = frequencies(SamplingParams { min_p: 0.25, ..plain() }, &logits, 20_000);
        assert_frequencies(&found, &[0.25 / 0.9, 0.0, 0.15 / 0.9, 0.5 / 0.9]);
    }

    #[test]
    fn repetition_penalty_hits_each_recent_token_once() {
        let mut logits = [2.0f32, -1.0, 0.5, 3.0, -2.0];
        let params = SamplingParams { repetition_penalty: 2.0, repeat_last_n: 4, ..plain() };
        // Window: the last 4 of the history = [1, 1, 4, 0]; token 3 is older.
        sampler(params).apply_penalties(&mut logits, &[3, 0, 1, 1, 4, 0]);
        assert_eq!(logits, [1.0, -2.0, 0.5, 3.0, -4.0]);

        let mut logits = [2.0f32, -1.0];
        sampler(params).apply_penalties(&mut logits, &[99, 0, 1]);
        assert_eq!(logits, [1.0, -2.0], "an out-of-vocabulary id is skipped");
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai() {
        // Counts over the whole history: 0 → 2, 1 → 2, 3 → 1, 4 → 1, 2 → 0.
        // logit -= count · 0.25 + 0.5 for every token present.
        let history = [3, 0, 1, 1, 4, 0];
        let params = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..plain() };
        let mut logits = [2.0f32, -1.0, 0.5, 3.0, -2.0];
        let mut s = sampler(params);
        s.apply_penalties(&mut logits, &history);
        assert_eq!(logits, [1.0, -2.0, 0.5, 2.25, -2.75]);
        assert!(s.token_counts.iter().all(|&c| c == 0), "scratch counts are left zeroed");

        // Both kinds: repetition over [1, 1, 4, 0] first, then presence/frequency.
        let mut logits = [2.0f32, -1.0, 0.5, 3.0, -2.0];
        sampler(SamplingParams { repetition_penalty: 2.0, repeat_last_n: 4, ..params })
            .apply_penalties(&mut logits, &history);
        assert_eq!(logits, [0.0, -3.0, 0.5, 2.25, -4.75]);
    }

    #[test]
    fn nan_and_infinite_logits_do_not_break_sampling() {
        let nan = f32::NAN;
        let mut greedy = sampler(SamplingParams { temperature: 0.0, ..plain() });
        assert_eq!(greedy.sample(&mut [nan, 1.0, nan], &[]), 1);
        assert_eq!(greedy.sample(&mut [nan, nan], &[]), 0);

        let mut s = sampler(SamplingParams::DEFAULT);
        for _ in 0..200 {
            assert_eq!(s.sample(&mut [nan, -1.0, nan, f32::NEG_INFINITY], &[]), 1);
            let id = s.sample(&mut [0.0, f32::INFINITY, 1.0, f32::INFINITY], &[]);
            assert!(id == 1 || id == 3, "drew {id}, which has probability 0");
        }
        assert_eq!(s.sample(&mut [nan, f32::NEG_INFINITY, nan], &[]), 0);
        let mut all_nan = vec![nan; 50];
        assert_eq!(sampler(SamplingParams { top_k: 0, top_p: 0.5, ..plain() }).sample(&mut all_nan, &[0, 1]), 0);
    }

    /// Feeds `chunks` and returns everything emitted (plus `finish` when no stop matched) and
    /// whether a stop matched.
    fn run_stops(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for chunk in chunks {
            let scan = m.feed(chunk);
            out.push_str(&scan.emit);
            if scan.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_chunks_is_never_emitted() {
        let mut m = StopMatcher::new(["</s>"]);
        assert_eq!(m.feed("Hello <"), StopScan { emit: "Hello ".into(), stopped: false });
        assert_eq!(m.feed("/"), StopScan { emit: String::new(), stopped: false });
        assert_eq!(m.feed("s> world"), StopScan { emit: String::new(), stopped: true });
        assert!(m.is_stopped());
        assert_eq!(m.feed("more"), StopScan { emit: String::new(), stopped: true });
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn held_text_is_released_when_it_stops_looking_like_a_stop() {
        let mut m = StopMatcher::new(["</s>"]);
        assert_eq!(m.feed("a <").emit, "a ");
        assert_eq!(m.feed("b").emit, "<b");
        assert_eq!(m.feed("c </").emit, "c ");
        assert_eq!(m.finish(), "</", "the end of the stream flushes held text");
        assert_eq!(run_stops(&[], &["any", " text"]), ("any text".into(), false));
        assert_eq!(run_stops(&["", "x"], &["ab", "c"]), ("abc".into(), false), "empty stops are ignored");
    }

    #[test]
    fn several_stops_and_overlapping_prefixes() {
        assert_eq!(run_stops(&["STOP", "END"], &["xx EN", "D yy STOP"]), ("xx ".into(), true));
        // "aab" after "aa": the held "aa" must slide one character at a time.
        assert_eq!(run_stops(&["aab"], &["a", "a", "a", "b", "c"]), ("a".into(), true));
        // "ab" completes before "abc" and before "xabc".
        assert_eq!(run_stops(&["abc", "ab"], &["xa", "bc"]), ("x".into(), true));
        assert_eq!(run_stops(&["xabc", "ab"], &["xabc"]), ("x".into(), true));
        // Same end: the longer stop wins, so less text is emitted.
        assert_eq!(run_stops(&["bc", "abc"], &["zabc"]), ("z".into(), true));
    }

    #[test]
    fn unicode_stops_and_text() {
        assert_eq!(run_stops(&["🙂end"], &["héllo 🙂", "en", "d!"]), ("héllo ".into(), true));
        let mut m = StopMatcher::new(["é"]);
        // "ã" shares its first UTF-8 byte with "é" but is not a prefix of it as text.
        assert_eq!(m.feed("ã").emit, "ã");
        assert_eq!(m.feed("xé").emit, "x");
        assert_eq!(run_stops(&["€"], &["cost 5", "€ only"]), ("cost 5".into(), true));
    }

    /// Reference: scan the text one char at a time and stop at the first point where some stop
    /// string is a suffix (the longest one if several).
    fn reference_stop(text: &str, stops: &[String]) -> (String, bool) {
        for (end, _) in text.char_indices().skip(1).chain(std::iter::once((text.len(), ' '))) {
            let prefix = &text[..end];
            if let Some(stop) =
                stops.iter().filter(|s| !s.is_empty() && prefix.ends_with(s.as_str())).max_by_key(|s| s.len())
            {
                return (prefix[..end - stop.len()].to_string(), true);
            }
        }
        (text.to_string(), false)
    }

    proptest! {
        #[test]
        fn stop_matcher_matches_char_by_char_reference_for_any_chunking(
            text in proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '<', 'é', '🙂']), 0..30),
            stops in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '<', 'é', '🙂']), 1..4), 0..4),
            cuts in proptest::collection::vec(0usize..30, 0..8),
        ) {
            let text: String = text.into_iter().collect();
            let stops: Vec<String> = stops.into_iter().map(|s| s.into_iter().collect()).collect();
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let mut cut_at: Vec<usize> = cuts.into_iter().filter_map(|c| boundaries.get(c).copied()).collect();
            cut_at.push(0);
            cut_at.push(text.len());
            cut_at.sort_unstable();
            cut_at.dedup();
            let chunks: Vec<&str> = cut_at.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            prop_assert_eq!(run_stops(&stop_refs, &chunks), reference_stop(&text, &stops));
        }
    }
}
