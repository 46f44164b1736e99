//! Scoring a case from the text the model generated, and nothing else.
//!
//! An integer is a maximal run of ASCII digits; `12,345` is two integers and `-7` is `7`.
//! Integers are compared as digit strings, so `012345` does not match `12345`.

/// How a case's output is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// The first integer in the output equals the single expected value (passkey, NIAH single
    /// and multi-key).
    FirstInteger,
    /// Every expected value is among the output's integers (NIAH multi-value, multi-query).
    AllValues,
}

/// The integers in `text`, in order.
pub fn integers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|run| !run.is_empty())
}

/// Whether `output` answers a case that expects `expected`. A case with no expected value is
/// never correct.
pub fn is_correct(scoring: Scoring, expected: &[String], output: &str) -> bool {
    match scoring {
        Scoring::FirstInteger => match expected {
            [value] => integers(output).next() == Some(value.as_str()),
            _ => false,
        },
        Scoring::AllValues => {
            let found: Vec<&str> = integers(output).collect();
            !expected.is_empty() && expected.iter().all(|value| found.contains(&value.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn integers_are_digit_runs() {
        let found: Vec<&str> = integers("The pass key is 68213. Remember 4, 0x1F and -7; 12,345.").collect();
        assert_eq!(found, ["68213", "4", "0", "1", "7", "12", "345"]);
        assert_eq!(integers("no digits here").count(), 0);
        assert_eq!(integers("").count(), 0);
        assert_eq!(integers("٣ is an Arabic-Indic three, not ASCII").count(), 0);
    }

    #[test]
    fn first_integer_must_be_the_key() {
        let key = owned(&["68213"]);
        assert!(is_correct(Scoring::FirstInteger, &key, " 68213. Remember it."));
        assert!(is_correct(Scoring::FirstInteger, &key, "68213"));
        assert!(is_correct(Scoring::FirstInteger, &key, " **68213**, the key"));
        assert!(!is_correct(Scoring::FirstInteger, &key, " 1. The pass key is 68213"), "a different first integer");
        assert!(!is_correct(Scoring::FirstInteger, &key, " 682130"), "a longer number is not the key");
        assert!(!is_correct(Scoring::FirstInteger, &key, " 6821"), "a prefix is not the key");
        assert!(!is_correct(Scoring::FirstInteger, &key, " 068213"));
        assert!(!is_correct(Scoring::FirstInteger, &key, " not given"));
        assert!(!is_correct(Scoring::FirstInteger, &key, ""));
        assert!(!is_correct(Scoring::FirstInteger, &[], " 68213"), "nothing expected");
        assert!(!is_correct(Scoring::FirstInteger, &owned(&["1", "2"]), " 1 2"), "needs one expected value");
    }

    #[test]
    fn all_values_must_appear_in_any_order() {
        let values = owned(&["1234567", "7654321", "5550001"]);
        assert!(is_correct(Scoring::AllValues, &values, " 5550001, 1234567 and 7654321."));
        assert!(is_correct(Scoring::AllValues, &values, "7654321 1234567 9999999 5550001"), "extra values are allowed");
        assert!(!is_correct(Scoring::AllValues, &values, " 1234567 and 7654321."), "one missing");
        assert!(!is_correct(Scoring::AllValues, &values, " 12345678, 7654321, 5550001"), "no substring matches");
        assert!(!is_correct(Scoring::AllValues, &[], " 1234567"), "nothing expected");
    }
}
