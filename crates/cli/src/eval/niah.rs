//! Needle-in-a-haystack tasks in the style of RULER (Hsieh et al., arXiv 2404.06654).
//!
//! A needle is "One of the special magic numbers for {key} is: {value}." with a seven-digit
//! value and a key made of two random words (`silver-river`). Variants:
//! - `single`: one needle, asked for;
//! - `multikey`: `needles` needles with distinct keys, one of them asked for;
//! - `multivalue`: one key with `needles` distinct values, all asked for;
//! - `multiquery`: `needles` needles with distinct keys, all asked for at once.
//!
//! Depth: the first needle (the one asked for, or the first of those asked for) sits at the
//! trial's depth; the others sit at depths drawn uniformly from [0, 1] with the case's stream.

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::Serialize;

use super::haystack::random_word;
use super::prompt::{Needle, TaskText};
use super::rng::SplitMix64;
use super::score::Scoring;
use super::CaseSpec;

/// Which NIAH task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NiahVariant {
    /// One needle, asked for.
    Single,
    /// Several needles with different keys; one is asked for.
    Multikey,
    /// One key with several values; all are asked for.
    Multivalue,
    /// Several needles with different keys; all are asked for at once.
    Multiquery,
}

/// Most needles a case may hold (`--needles`).
pub const MAX_NEEDLES: usize = 64;

/// The variant and how many needles it uses (1 for `single`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NiahOptions {
    variant: NiahVariant,
    needles: usize,
}

impl NiahOptions {
    /// Checks `needles` against the variant: `single` takes exactly 1 (the default when not
    /// given), the others 2..=MAX_NEEDLES (default 4).
    pub fn new(variant: NiahVariant, needles: Option<usize>) -> Result<Self> {
        let needles = match (variant, needles) {
            (NiahVariant::Single, None | Some(1)) => 1,
            (NiahVariant::Single, Some(n)) => bail!("--variant single hides one needle, not {n}"),
            (_, None) => 4,
            (_, Some(n)) if (2..=MAX_NEEDLES).contains(&n) => n,
            (_, Some(n)) => bail!("--needles must lie in 2..={MAX_NEEDLES} for this variant, not {n}"),
        };
        Ok(Self { variant, needles })
    }

    pub fn variant(&self) -> NiahVariant {
        self.variant
    }

    pub fn needles(&self) -> usize {
        self.needles
    }

    /// Generation budget: a seven-digit value is seven digit tokens plus punctuation; the
    /// variants that ask for every value need room for all of them.
    pub fn max_new_tokens(&self) -> usize {
        match self.variant {
            NiahVariant::Single | NiahVariant::Multikey => 24,
            NiahVariant::Multivalue | NiahVariant::Multiquery => 16 + 12 * self.needles,
        }
    }
}

pub const INTRO: &str = "A long text follows. Hidden in it are special magic numbers, each tied to a key. \
Read it carefully and remember the numbers: a question about them comes at the end.";

/// The case for one trial.
pub fn case(options: NiahOptions, rng: &mut SplitMix64, depth: f64) -> CaseSpec {
    let n = options.needles;
    let keys = distinct(rng, n, random_key);
    let values = distinct(rng, n, |rng| rng.in_range(1_000_000, 9_999_999).to_string());
    // Multi-value: every needle carries the first key; otherwise needle i carries key i.
    let needle_keys: Vec<&String> = match options.variant {
        NiahVariant::Multivalue => vec![&keys[0]; n],
        _ => keys.iter().collect(),
    };
    let needles = needle_keys
        .into_iter()
        .zip(&values)
        .enumerate()
        .map(|(i, (key, value))| Needle {
            sentence: format!("One of the special magic numbers for {key} is: {value}."),
            depth: if i == 0 { depth } else { rng.unit() },
        })
        .collect();
    let (question, answer_prefix, expected, scoring) = match options.variant {
        NiahVariant::Single | NiahVariant::Multikey => (
            format!("What is the special magic number for {} mentioned in the provided text?", keys[0]),
            format!("The special magic number for {} mentioned in the provided text is", keys[0]),
            vec![values[0].clone()],
            Scoring::FirstInteger,
        ),
        NiahVariant::Multivalue => (
            format!("What are all the special magic numbers for {} mentioned in the provided text?", keys[0]),
            format!("The special magic numbers for {} mentioned in the provided text are", keys[0]),
            values,
            Scoring::AllValues,
        ),
        NiahVariant::Multiquery => {
            let listed = list(&keys);
            (
                format!("What are all the special magic numbers for {listed} mentioned in the provided text?"),
                format!("The special magic numbers for {listed} mentioned in the provided text are"),
                values,
                Scoring::AllValues,
            )
        }
    };
    CaseSpec { text: TaskText { intro: INTRO.to_string(), needles, question, answer_prefix }, expected, scoring }
}

/// Two words from the common-word list joined by a hyphen: a key the haystack never contains.
fn random_key(rng: &mut SplitMix64) -> String {
    format!("{}-{}", random_word(rng), random_word(rng))
}

/// `count` distinct draws (redrawing repeats; the pools hold far more than MAX_NEEDLES items).
fn distinct(rng: &mut SplitMix64, count: usize, mut draw: impl FnMut(&mut SplitMix64) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(count);
    while out.len() < count {
        let item = draw(rng);
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// `a`, `a and b`, `a, b and c`.
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(variant: NiahVariant, needles: Option<usize>, seed: u64) -> CaseSpec {
        case(NiahOptions::new(variant, needles).unwrap(), &mut SplitMix64::new(seed), 0.3)
    }

    fn value_of(sentence: &str) -> &str {
        sentence.rsplit(' ').next().unwrap().trim_end_matches('.')
    }

    fn key_of(sentence: &str) -> &str {
        sentence.strip_prefix("One of the special magic numbers for ").unwrap().split(' ').next().unwrap()
    }

    #[test]
    fn single_hides_and_asks_one_seven_digit_value() {
        let s = spec(NiahVariant::Single, None, 1);
        assert_eq!(s.text.needles.len(), 1);
        let needle = &s.text.needles[0];
        assert_eq!(needle.depth, 0.3);
        let key = key_of(&needle.sentence);
        assert_eq!(key.split('-').count(), 2, "{key}");
        assert_eq!(s.expected, vec![value_of(&needle.sentence).to_string()]);
        assert_eq!(s.expected[0].len(), 7);
        assert_eq!(
            s.text.question,
            format!("What is the special magic number for {key} mentioned in the provided text?")
        );
        assert_eq!(s.scoring, Scoring::FirstInteger);
    }

    #[test]
    fn multikey_asks_for_the_first_of_several_distinct_keys() {
        let s = spec(NiahVariant::Multikey, Some(5), 2);
        let keys: Vec<&str> = s.text.needles.iter().map(|n| key_of(&n.sentence)).collect();
        assert_eq!(keys.len(), 5);
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5, "{keys:?}");
        assert!(s.text.question.contains(keys[0]) && !s.text.question.contains(keys[1]));
        assert_eq!(s.expected, vec![value_of(&s.text.needles[0].sentence).to_string()]);
        assert_eq!(s.text.needles[0].depth, 0.3);
        assert!(s.text.needles[1..].iter().all(|n| (0.0..1.0).contains(&n.depth)));
    }

    #[test]
    fn multivalue_repeats_one_key_and_asks_for_every_value() {
        let s = spec(NiahVariant::Multivalue, None, 3);
        assert_eq!(s.text.needles.len(), 4);
        let key = key_of(&s.text.needles[0].sentence);
        assert!(s.text.needles.iter().all(|n| key_of(&n.sentence) == key));
        let values: Vec<String> = s.text.needles.iter().map(|n| value_of(&n.sentence).to_string()).collect();
        assert_eq!(s.expected, values);
        assert!(s.text.question.starts_with("What are all the special magic numbers for "));
        assert_eq!(s.scoring, Scoring::AllValues);
    }

    #[test]
    fn multiquery_lists_every_key() {
        let s = spec(NiahVariant::Multiquery, Some(3), 4);
        let keys: Vec<&str> = s.text.needles.iter().map(|n| key_of(&n.sentence)).collect();
        assert_eq!(
            s.text.question,
            format!(
                "What are all the special magic numbers for {}, {} and {} mentioned in the provided text?",
                keys[0], keys[1], keys[2]
            )
        );
        assert_eq!(s.expected.len(), 3);
        assert_eq!(s.scoring, Scoring::AllValues);
    }

    #[test]
    fn needle_counts_are_checked() {
        assert!(NiahOptions::new(NiahVariant::Single, Some(2)).is_err());
        assert!(NiahOptions::new(NiahVariant::Multikey, Some(1)).is_err());
        assert!(NiahOptions::new(NiahVariant::Multiquery, Some(MAX_NEEDLES + 1)).is_err());
        assert_eq!(NiahOptions::new(NiahVariant::Multivalue, None).unwrap().needles, 4);
        assert_eq!(NiahOptions::new(NiahVariant::Multivalue, Some(6)).unwrap().max_new_tokens(), 88);
    }

    #[test]
    fn same_seed_same_case() {
        assert_eq!(spec(NiahVariant::Multikey, None, 7).text, spec(NiahVariant::Multikey, None, 7).text);
        assert_ne!(spec(NiahVariant::Multikey, None, 7).text, spec(NiahVariant::Multikey, None, 8).text);
    }
}
