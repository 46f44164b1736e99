//! The text that hides the needles, as a sequence of sentences (needles go between them).
//!
//! - `noise`: the Landmark passkey filler, five sentences repeated in order
//!   ("The grass is green. The sky is blue. …").
//! - `words`: sentences of 6 to 14 words drawn uniformly from [`WORDS`] with the case's seeded
//!   stream, capitalised and ending with a full stop.
//!
//! Sentences are produced on demand and kept, so the first n sentences of a haystack are the
//! same whatever n the prompt builder asks for.

use clap::ValueEnum;
use serde::Serialize;

use super::rng::SplitMix64;

/// The Landmark filler, one sentence per entry.
pub const NOISE_SENTENCES: [&str; 5] =
    ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."];

/// Common English words for the `words` haystack and the NIAH keys. Written for this project.
/// Words that the questions use (key, pass, number, special, magic) are left out, so the
/// haystack never looks like a needle.
#[rustfmt::skip]
pub const WORDS: &[&str] = &[
    "about", "above", "across", "act", "add", "afraid", "after", "again", "against", "age", "ago", "air", "all",
    "almost", "alone", "along", "already", "always", "among", "animal", "answer", "apple", "area", "arm", "army",
    "around", "art", "ask", "autumn", "away", "baby", "back", "bad", "bag", "ball", "bank", "base", "basket",
    "beach", "bear", "beautiful", "bed", "before", "began", "behind", "bell", "below", "best", "better", "between",
    "big", "bird", "black", "blanket", "blue", "board", "boat", "body", "bone", "book", "bottle", "bottom", "box",
    "boy", "branch", "bread", "bridge", "bright", "bring", "brother", "brown", "build", "busy", "butter", "cake",
    "call", "calm", "came", "camp", "candle", "capital", "car", "card", "care", "carry", "castle", "cat", "catch",
    "cause", "center", "chair", "change", "cheap", "cheese", "child", "choose", "church", "circle", "city", "class",
    "clean", "clear", "clock", "close", "cloud", "coast", "coat", "cold", "color", "come", "common", "company",
    "cook", "copper", "corn", "corner", "cotton", "country", "course", "cover", "cow", "crowd", "cup", "dance",
    "dark", "daughter", "day", "deep", "desert", "desk", "dinner", "direct", "distant", "doctor", "dog", "door",
    "down", "dream", "dress", "drink", "drive", "dry", "during", "early", "earth", "east", "easy", "eat", "edge",
    "egg", "empty", "end", "engine", "enough", "evening", "every", "face", "fact", "fair", "fall", "family", "far",
    "farm", "fast", "father", "feather", "feel", "field", "figure", "fill", "find", "fine", "finger", "fire",
    "fish", "flat", "floor", "flower", "fly", "follow", "food", "foot", "forest", "form", "free", "fresh", "friend",
    "front", "fruit", "full", "game", "garden", "gate", "gentle", "gift", "girl", "give", "glass", "gold", "good",
    "grain", "grass", "gray", "great", "green", "ground", "group", "grow", "hair", "half", "hall", "hand", "happy",
    "hard", "hat", "head", "hear", "heart", "heavy", "help", "high", "hill", "hold", "hole", "home", "hope",
    "horse", "hot", "hour", "house", "hunt", "idea", "inside", "iron", "island", "jacket", "journey", "jump",
    "kind", "king", "kitchen", "lake", "lamp", "land", "large", "late", "laugh", "lead", "leaf", "learn", "leave",
    "left", "letter", "light", "line", "lion", "listen", "little", "live", "long", "look", "loud", "low", "lunch",
    "machine", "main", "market", "meadow", "meet", "metal", "middle", "milk", "mind", "minute", "mirror", "money",
    "moon", "morning", "mother", "mountain", "move", "music", "name", "narrow", "near", "neck", "need", "nest",
    "new", "night", "noise", "north", "nose", "ocean", "office", "old", "open", "orange", "order", "paint",
    "paper", "park", "part", "party", "path", "pen", "people", "pepper", "picture", "piece", "place", "plain",
    "plant", "play", "pocket", "point", "pond", "poor", "power", "pretty", "pull", "push", "queen", "question",
    "quick", "quiet", "rain", "reach", "read", "ready", "red", "remember", "rest", "rice", "rich", "ride", "right",
    "ring", "river", "road", "rock", "roof", "room", "root", "rope", "round", "row", "run", "sail", "salt", "sand",
    "school", "sea", "season", "seat", "seed", "shadow", "sharp", "sheep", "shell", "ship", "shirt", "shoe",
    "short", "shoulder", "silver", "simple", "sister", "sleep", "slow", "small", "smile", "smoke", "snow", "soft",
    "soil", "song", "sound", "south", "space", "spoon", "spring", "square", "stage", "star", "station", "steel",
    "step", "stick", "still", "stone", "story", "street", "strong", "summer", "supper", "sweet", "table", "tail",
    "tall", "teacher", "thick", "thin", "thread", "tiny", "today", "together", "tomorrow", "tool", "top", "tower",
    "town", "train", "travel", "tree", "truck", "under", "valley", "village", "voice", "wagon", "walk", "wall",
    "warm", "wash", "watch", "water", "wave", "weather", "west", "wheel", "white", "wide", "wild", "wind", "window",
    "winter", "wise", "wood", "wool", "word", "work", "world", "yard", "year", "yellow", "young",
];

/// Which haystack hides the needles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaystackKind {
    /// The passkey filler ("The grass is green. The sky is blue. …") repeated.
    Noise,
    /// Sentences of random common English words.
    Words,
}

const WORDS_PER_SENTENCE: std::ops::RangeInclusive<usize> = 6..=14;

/// A haystack's sentences, produced as they are asked for.
#[derive(Debug, Clone)]
pub struct Haystack {
    kind: HaystackKind,
    rng: SplitMix64,
    sentences: Vec<String>,
}

impl Haystack {
    /// `rng` draws the words of a `words` haystack; `noise` ignores it.
    pub fn new(kind: HaystackKind, rng: SplitMix64) -> Self {
        Self { kind, rng, sentences: Vec::new() }
    }

    /// The first `n` sentences.
    pub fn first(&mut self, n: usize) -> &[String] {
        while self.sentences.len() < n {
            let sentence = match self.kind {
                HaystackKind::Noise => NOISE_SENTENCES[self.sentences.len() % NOISE_SENTENCES.len()].to_string(),
                HaystackKind::Words => self.word_sentence(),
            };
            self.sentences.push(sentence);
        }
        &self.sentences[..n]
    }

    fn word_sentence(&mut self) -> String {
        let n_words = self.rng.in_range(*WORDS_PER_SENTENCE.start() as u64, *WORDS_PER_SENTENCE.end() as u64);
        let mut sentence = String::new();
        for i in 0..n_words {
            let word = random_word(&mut self.rng);
            if i == 0 {
                let mut chars = word.chars();
                sentence.extend(chars.next().map(|c| c.to_ascii_uppercase()));
                sentence.push_str(chars.as_str());
            } else {
                sentence.push(' ');
                sentence.push_str(word);
            }
        }
        sentence.push('.');
        sentence
    }
}

/// A word from [`WORDS`], uniformly.
pub fn random_word(rng: &mut SplitMix64) -> &'static str {
    WORDS[rng.below(WORDS.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_the_landmark_filler_repeated() {
        let mut h = Haystack::new(HaystackKind::Noise, SplitMix64::new(0));
        let text = h.first(10).join(" ");
        let block = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
        assert_eq!(text, format!("{block} {block}"));
    }

    #[test]
    fn word_list_is_a_few_hundred_distinct_lowercase_words_without_question_words() {
        assert!((300..=600).contains(&WORDS.len()), "{} words", WORDS.len());
        let mut sorted = WORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), WORDS.len(), "duplicates in WORDS");
        assert!(WORDS.iter().all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())));
        for banned in ["key", "pass", "number", "special", "magic"] {
            assert!(!WORDS.contains(&banned), "{banned}");
        }
    }

    #[test]
    fn word_sentences_are_seeded_and_well_formed() {
        let mut a = Haystack::new(HaystackKind::Words, SplitMix64::new(5));
        let mut b = Haystack::new(HaystackKind::Words, SplitMix64::new(5));
        let mut c = Haystack::new(HaystackKind::Words, SplitMix64::new(6));
        let first_three = a.first(3).to_vec();
        assert_eq!(first_three, b.first(3));
        assert_ne!(first_three, c.first(3));
        // Asking for more keeps the earlier sentences.
        assert_eq!(&a.first(50)[..3], &first_three[..]);
        for sentence in a.first(50) {
            let body = sentence.strip_suffix('.').expect("ends with a full stop");
            let words: Vec<&str> = body.split(' ').collect();
            assert!(WORDS_PER_SENTENCE.contains(&words.len()), "{sentence}");
            assert!(body.starts_with(|c: char| c.is_ascii_uppercase()), "{sentence}");
            for word in words {
                assert!(WORDS.contains(&word.to_ascii_lowercase().as_str()), "{word} in {sentence}");
            }
        }
    }
}
