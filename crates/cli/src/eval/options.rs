//! The eval flags that need more than clap's own parsing: the prompt lengths (`2k,8k,32k`),
//! the depth list (`0,0.25,0.5`), the prompt format, and which depth each trial gets.
//!
//! Invariants of the parsed values: lengths are positive, ascending and distinct; depths are
//! finite, in [0, 1] and distinct. Suffixes are binary: `k` = 1024, `m` = 1024².

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;

/// Prompt lengths in tokens: positive, ascending, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lengths(pub Vec<usize>);

/// Needle depths: 0 = start of the haystack, 1 = its end. Finite, in [0, 1], no duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Depths(pub Vec<f64>);

/// A comma-separated list flag that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListError {
    Empty { what: &'static str },
    BadItem { item: String, reason: &'static str },
    Duplicate { item: String },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Empty { what } => write!(f, "the list of {what} is empty"),
            ListError::BadItem { item, reason } => write!(f, "`{item}`: {reason}"),
            ListError::Duplicate { item } => write!(f, "`{item}` is listed twice"),
        }
    }
}

impl std::error::Error for ListError {}

/// How the task text reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// The text is the user message of a chat, rendered with the model's chat template; the
    /// assistant turn is prefilled with the answer prefix.
    Chat,
    /// Plain completion: the text, a space, then the answer prefix.
    Raw,
}

fn split_items<'a>(s: &'a str, what: &'static str) -> Result<Vec<&'a str>, ListError> {
    if s.trim().is_empty() {
        return Err(ListError::Empty { what });
    }
    s.split(',')
        .map(str::trim)
        .map(|item| {
            if item.is_empty() {
                Err(ListError::BadItem { item: s.to_string(), reason: "empty item" })
            } else {
                Ok(item)
            }
        })
        .collect()
}

/// One length: decimal digits with an optional `k` (×1024) or `m` (×1024²) suffix, either case.
fn parse_length(item: &str) -> Result<usize, ListError> {
    let bad = |reason| ListError::BadItem { item: item.to_string(), reason };
    let (digits, multiplier) = match item.as_bytes().last() {
        Some(b'k' | b'K') => (&item[..item.len() - 1], 1024usize),
        Some(b'm' | b'M') => (&item[..item.len() - 1], 1024 * 1024),
        _ => (item, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a whole number of tokens, optionally with a k or m suffix (2k = 2048)"));
    }
    let value = digits.parse::<usize>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(|| bad("too large"))?;
    if value == 0 {
        return Err(bad("a length must be at least one token"));
    }
    Ok(value)
}

/// Parses `--lengths`, e.g. `2k,8k,32k` → 2048, 8192, 32768 (sorted ascending).
pub fn parse_lengths(s: &str) -> Result<Lengths, ListError> {
    let mut parsed: Vec<(usize, &str)> = split_items(s, "lengths")?
        .into_iter()
        .map(|item| parse_length(item).map(|n| (n, item)))
        .collect::<Result<_, _>>()?;
    parsed.sort_unstable_by_key(|&(n, _)| n);
    if let Some(pair) = parsed.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ListError::Duplicate { item: format!("{} (= {})", pair[1].1, pair[1].0) });
    }
    Ok(Lengths(parsed.into_iter().map(|(n, _)| n).collect()))
}

/// Parses `--depths`, e.g. `0,0.25,0.5,0.75,1` (kept in the order given).
pub fn parse_depths(s: &str) -> Result<Depths, ListError> {
    let mut depths = Vec::new();
    for item in split_items(s, "depths")? {
        let depth: f64 = item
            .parse()
            .map_err(|_| ListError::BadItem { item: item.to_string(), reason: "expected a number between 0 and 1" })?;
        if !(0.0..=1.0).contains(&depth) {
            return Err(ListError::BadItem { item: item.to_string(), reason: "a depth must lie in [0, 1]" });
        }
        if depths.contains(&depth) {
            return Err(ListError::Duplicate { item: item.to_string() });
        }
        depths.push(depth);
    }
    Ok(Depths(depths))
}

/// The depth of each of `trials` trials: the given depths in turn (cycling when there are more
/// trials than depths), else the trials spread evenly over [0, 1] (a single trial sits at 0.5).
pub fn trial_depths(trials: usize, depths: Option<&Depths>) -> Vec<f64> {
    match depths {
        Some(Depths(list)) if !list.is_empty() => list.iter().copied().cycle().take(trials).collect(),
        _ if trials == 1 => vec![0.5],
        _ => (0..trials).map(|i| i as f64 / (trials - 1) as f64).collect(),
    }
}

/// How a flag value is spelled on the command line (`chat`, `multikey`, `dense`).
pub fn flag_name<T: ValueEnum>(value: T) -> String {
    value.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// A length for people: `2K`, `1M`, or the plain number when it is not a whole multiple.
pub fn length_label(tokens: usize) -> String {
    const M: usize = 1024 * 1024;
    if tokens >= M && tokens.is_multiple_of(M) {
        format!("{}M", tokens / M)
    } else if tokens >= 1024 && tokens.is_multiple_of(1024) {
        format!("{}K", tokens / 1024)
    } else {
        tokens.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_binary_suffixes_and_come_out_sorted() {
        assert_eq!(parse_lengths("2k").unwrap(), Lengths(vec![2048]));
        assert_eq!(parse_lengths("1m").unwrap(), Lengths(vec![1_048_576]));
        assert_eq!(parse_lengths("32K, 2k ,8k").unwrap(), Lengths(vec![2048, 8192, 32768]));
        assert_eq!(parse_lengths("1500,3M").unwrap(), Lengths(vec![1500, 3_145_728]));
    }

    #[test]
    fn bad_lengths_are_errors_that_name_the_item() {
        for (input, needle) in [
            ("", "empty"),
            ("  ", "empty"),
            ("2k,,8k", "empty item"),
            ("2k,", "empty item"),
            ("0", "at least one token"),
            ("0k", "at least one token"),
            ("abc", "`abc`"),
            ("k", "`k`"),
            ("2x", "`2x`"),
            ("1.5k", "`1.5k`"),
            ("-2k", "`-2k`"),
            ("+2k", "`+2k`"),
            ("99999999999999999999", "too large"),
            ("18014398509481984m", "too large"),
        ] {
            let err = parse_lengths(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let dup = parse_lengths("2k,2048").unwrap_err();
        assert!(matches!(dup, ListError::Duplicate { .. }), "{dup}");
        assert!(dup.to_string().contains("2048"), "{dup}");
    }

    #[test]
    fn depths_parse_and_reject_out_of_range() {
        assert_eq!(parse_depths("0,0.25,1").unwrap(), Depths(vec![0.0, 0.25, 1.0]));
        assert_eq!(parse_depths("0.5").unwrap(), Depths(vec![0.5]));
        for input in ["", "1.5", "-0.1", "nan", "inf", "half", "0.5,0.5", "0.2,,0.3"] {
            assert!(parse_depths(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn trial_depths_spread_or_cycle() {
        assert_eq!(trial_depths(5, None), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(trial_depths(2, None), vec![0.0, 1.0]);
        assert_eq!(trial_depths(1, None), vec![0.5]);
        assert_eq!(trial_depths(0, None), Vec::<f64>::new());
        let given = Depths(vec![0.1, 0.9]);
        assert_eq!(trial_depths(5, Some(&given)), vec![0.1, 0.9, 0.1, 0.9, 0.1]);
    }

    #[test]
    fn length_labels() {
        assert_eq!(length_label(2048), "2K");
        assert_eq!(length_label(1_048_576), "1M");
        assert_eq!(length_label(1500), "1500");
        assert_eq!(length_label(1_572_864), "1536K");
    }
}
