//! The passkey task, Landmark style (Mohtashami and Jaggi, arXiv 2305.16300): one five-digit
//! key hidden in the repeated "The grass is green. …" filler, asked for at the end.

use super::prompt::{Needle, TaskText};
use super::rng::SplitMix64;
use super::score::Scoring;
use super::CaseSpec;

pub const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. \
Find it and memorize it. I will quiz you about the important information there.";
pub const QUESTION: &str = "What is the pass key?";
pub const ANSWER_PREFIX: &str = "The pass key is";

/// The answer is five digit tokens and a full stop; the rest is slack for a model that
/// repeats the prefix or adds a word first.
pub const MAX_NEW_TOKENS: usize = 16;

/// The case for one trial: a random key from `rng`, hidden at `depth`.
pub fn case(rng: &mut SplitMix64, depth: f64) -> CaseSpec {
    let key = rng.in_range(10_000, 99_999).to_string();
    CaseSpec {
        text: TaskText {
            intro: INTRO.to_string(),
            needles: vec![Needle {
                sentence: format!("The pass key is {key}. Remember it. {key} is the pass key."),
                depth,
            }],
            question: QUESTION.to_string(),
            answer_prefix: ANSWER_PREFIX.to_string(),
        },
        expected: vec![key],
        scoring: Scoring::FirstInteger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needle_states_a_five_digit_key_twice() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..200 {
            let spec = case(&mut rng, 0.25);
            let [key] = &spec.expected[..] else { panic!("one key expected") };
            assert_eq!(key.len(), 5);
            assert!(!key.starts_with('0'));
            assert_eq!(spec.text.needles.len(), 1);
            assert_eq!(spec.text.needles[0].depth, 0.25);
            assert_eq!(
                spec.text.needles[0].sentence,
                format!("The pass key is {key}. Remember it. {key} is the pass key.")
            );
        }
        let a = case(&mut SplitMix64::new(9), 0.0);
        let b = case(&mut SplitMix64::new(9), 0.0);
        assert_eq!(a.expected, b.expected);
    }
}
