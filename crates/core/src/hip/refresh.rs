//! Decode-time mask caching and refresh (DESIGN.md §4.4).
//!
//! A [`DecodeMaskCache`] belongs to one request and one layer. It holds every stage's kept
//! chunks and a step counter `n` (0 for the first step). At step `n`, [`first_stage_to_refresh`]
//! gives the first stage to recompute: the lowest `s` with `n % refresh[s] == 0`. That stage
//! and every later one are recomputed (a stage whose input changed must be), each from the
//! output of the stage before it, cached or fresh; the earlier stages keep their cached
//! output. Step 0 recomputes everything.
//!
//! Between stage-0 refreshes the candidate range `[n_sink, w₀)` stays where stage 0 put it, so
//! the mask's window start stays at `w₀` and the window grows by one token a step: no token
//! slides out of the window into a hole before the next stage-0 refresh (the coverage rule of
//! §4.2). The counter is per request, unlike the reference, which shares it across the batch.
//!
//! If the sequence moved back (the engine trimmed it) so that the cached candidates no longer
//! lie before the first query, the cache starts over: everything is recomputed and the counter
//! restarts at 0.

use super::config::HipConfig;
use super::mask::{run_stage, Chunks, Mask};
use super::{HipError, KvSource, QueryBlock};

/// The first stage to recompute at decode step `step` (0-based), or `None` when every stage
/// is reused: the lowest `s` with `step % refresh[s] == 0`.
pub fn first_stage_to_refresh(refresh: &[usize], step: u64) -> Option<usize> {
    refresh.iter().position(|&r| r > 0 && step.is_multiple_of(r as u64))
}

/// The outcome of one decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeStep {
    /// The mask to attend with at this step.
    pub mask: Mask,
    /// The first stage recomputed at this step (later ones were too), or `None` if the cached
    /// mask was reused as is.
    pub refreshed_from: Option<usize>,
}

/// Per-request, per-layer cache of the pruning stages' outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeMaskCache {
    /// Steps taken since the cache was new or last reset.
    step: u64,
    /// Stage outputs, one per stage; empty before the first step.
    stages: Vec<Chunks>,
}

impl DecodeMaskCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Steps taken so far (the counter the refresh schedule reads).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The cached output of `stage`, if it has been computed.
    pub fn stage_output(&self, stage: usize) -> Option<&Chunks> {
        self.stages.get(stage)
    }

    /// Forgets everything: the next step recomputes every stage.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// One decode step for `block` (usually one token): recomputes the stages the schedule
    /// says, and returns the mask.
    pub fn step<K: KvSource + ?Sized>(
        &mut self,
        cfg: &HipConfig,
        block: &QueryBlock<K>,
    ) -> Result<DecodeStep, HipError> {
        cfg.validate()?;
        let n_stages = cfg.n_stages();
        let stale = match self.stages.first() {
            None => true,
            Some(first) => first.end() > block.pos_start,
        };
        if stale {
            self.reset();
        } else if self.stages.len() != n_stages {
            return Err(HipError::StageInput {
                stage: self.stages.len().min(n_stages),
                reason: format!("the cache holds {} stages, the config has {n_stages}", self.stages.len()),
            });
        }
        let refreshed_from = first_stage_to_refresh(&cfg.refresh, self.step);
        if let Some(first) = refreshed_from {
            let mut fresh = Vec::with_capacity(n_stages);
            for stage in first..n_stages {
                let prev = match (stage, fresh.last()) {
                    (0, _) => None,
                    (_, Some(just_computed)) => Some(just_computed),
                    (_, None) => self.stages.get(stage - 1),
                };
                let kept = run_stage(cfg, block, stage, prev)?;
                fresh.push(kept);
            }
            self.stages.truncate(first);
            self.stages.extend(fresh);
        }
        self.step += 1;
        let last = self.stages.last().ok_or(HipError::StageInput { stage: 0, reason: "no stages".into() })?;
        Ok(DecodeStep { mask: last.clone().into_mask(), refreshed_from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hip::PRESET_NAMES;

    /// Renders the schedule of steps `0 .. n` as one character per step: the first stage
    /// recomputed, or `.` for none.
    fn schedule(refresh: &[usize], n: u64) -> String {
        (0..n).map(|step| first_stage_to_refresh(refresh, step).map_or('.', |s| char::from(b'0' + s as u8))).collect()
    }

    #[test]
    fn refresh_schedules_of_the_presets() {
        // default and 5k (16, 8, 4): everything at multiples of 16, stages 1–2 at other
        // multiples of 8, stage 2 alone at the other multiples of 4.
        let default = "0...2...1...2...0...2...1...2...0";
        // fast (32, 16, 8).
        let fast = "0.......2.......1.......2.......0.......2.......1.......2.......0";
        // flash (96, 24, 8): stages 1–2 at 24, 48, 72; stage 2 alone at the other multiples of 8.
        let flash = format!(
            "{}{}{}{}0",
            "0.......2.......2.......",
            "1.......2.......2.......",
            "1.......2.......2.......",
            "1.......2.......2......."
        );
        for name in PRESET_NAMES {
            let cfg = HipConfig::preset(name).unwrap();
            let want = match name {
                "default" | "5k" => default.to_string(),
                "fast" => fast.to_string(),
                "flash" => flash.clone(),
                other => panic!("no expected schedule for preset {other}"),
            };
            assert_eq!(schedule(&cfg.refresh, want.len() as u64), want, "{name}");
        }
    }

    #[test]
    fn schedules_that_do_not_nest_still_cascade() {
        // refresh (6, 4): step 4 recomputes stage 1; step 6 stage 0 (and so stage 1); step 12
        // both.
        assert_eq!(schedule(&[6, 4], 13), "0...1.0.1...0");
    }
}
