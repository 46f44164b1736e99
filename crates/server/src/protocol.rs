//! The OpenAI wire format: request bodies in, validated generation settings out, and the
//! response and stream-chunk bodies.
//!
//! Both endpoints share one request struct (`RequestBody`); each endpoint checks that the field
//! meant for the other (`messages` / `prompt`) is absent. Unknown fields are ignored, as
//! OpenAI clients send many optional ones; fields we know but do not implement (`n` > 1,
//! `logprobs`, `tools`, ...) are accepted only at their neutral values and are otherwise a
//! clear 400. Every error names the field (`param`) at fault.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use infinihip_core::chat::ChatMessage;
use infinihip_core::hip::{HipConfig, PRESET_NAMES};
use infinihip_core::sampling::{SamplingError, SamplingParams};
use infinihip_engine::generate::FinishReason;
use infinihip_engine::sched::Usage;
use infinihip_engine::AttentionMode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// The body of `POST /v1/chat/completions` and `POST /v1/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct RequestBody {
    pub model: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub prompt: Option<Prompt>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<serde_json::Number>,
    pub n: Option<u64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub attention: Option<String>,
    pub hip_preset: Option<String>,
    pub hip_config: Option<Map<String, Value>>,
    // Known but not implemented: accepted only at their neutral values.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub echo: Option<Value>,
    pub best_of: Option<Value>,
    pub suffix: Option<Value>,
    pub logit_bias: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string or a list of content parts; `null` or absent is empty.
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `prompt`: a string, token ids, or a one-element list of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A completion prompt, before tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Generation settings taken from a body, validated; the prompt is handled separately.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub sampling: SamplingParams,
    /// `max_completion_tokens`, else `max_tokens`; `None` = the server's default.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Streams end with a chunk that carries `usage`.
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub attention: AttentionMode,
}

/// Parses a request body; the error says whether the JSON is malformed or which field is wrong.
pub fn parse_body(bytes: &[u8]) -> Result<RequestBody, ApiError> {
    // serde would also accept the fields as a JSON array, in declaration order.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body: RequestBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::invalid_value(path.clone(), format!("`{path}`: {inner}")),
            _ => ApiError::invalid_json(inner),
        }
    })?;
    de.end().map_err(ApiError::invalid_json)?;
    Ok(body)
}

impl RequestBody {
    /// Checks that the body is meant for `endpoint` and names the served model (or none).
    pub fn check_target(&self, endpoint: Endpoint, served_model: &str) -> Result<(), ApiError> {
        match endpoint {
            Endpoint::Chat if self.prompt.is_some() => {
                return Err(ApiError::invalid_value(
                    "prompt",
                    "`prompt` belongs to /v1/completions; /v1/chat/completions takes `messages`",
                ))
            }
            Endpoint::Completions if self.messages.is_some() => {
                return Err(ApiError::invalid_value(
                    "messages",
                    "`messages` belongs to /v1/chat/completions; /v1/completions takes `prompt`",
                ))
            }
            _ => {}
        }
        match &self.model {
            Some(model) if model != served_model => Err(ApiError::model_not_found(model, served_model)),
            _ => Ok(()),
        }
    }

    /// The conversation of a chat request. Content parts are joined; only text parts exist here.
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        let messages = self.messages.as_ref().ok_or_else(|| ApiError::missing("messages"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid_value("messages", "`messages` must hold at least one message"));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(t)) => text.push_str(t),
                                ("text", None) => {
                                    return Err(ApiError::missing(&format!("messages[{i}].content[{j}].text")))
                                }
                                (other, _) => {
                                    return Err(ApiError::unsupported(
                                        &format!("messages[{i}].content[{j}].type"),
                                        format!("content parts of type `{other}` are not supported; only `text`"),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                // OpenAI's newer name for the system role; chat templates know `system`.
                let role = if m.role == "developer" { "system" } else { m.role.as_str() };
                Ok(ChatMessage::new(role, content))
            })
            .collect()
    }

    /// The prompt of a completion request.
    pub fn completion_prompt(&self) -> Result<PromptInput, ApiError> {
        let one = |n: usize| {
            ApiError::unsupported("prompt", format!("a batch of {n} prompts is not supported; send one per request"))
        };
        match self.prompt.as_ref().ok_or_else(|| ApiError::missing("prompt"))? {
            Prompt::Text(text) => Ok(PromptInput::Text(text.clone())),
            Prompt::Ids(ids) => Ok(PromptInput::Ids(ids.clone())),
            Prompt::Texts(texts) => match texts.as_slice() {
                [text] => Ok(PromptInput::Text(text.clone())),
                _ => Err(one(texts.len())),
            },
            Prompt::IdLists(lists) => match lists.as_slice() {
                [ids] => Ok(PromptInput::Ids(ids.clone())),
                _ => Err(one(lists.len())),
            },
        }
    }

    /// Everything but the prompt, validated. `default_attention` applies when the request
    /// names no attention setting; an unseeded request gets a fresh random seed.
    pub fn settings(&self, default_attention: &AttentionMode) -> Result<Settings, ApiError> {
        self.check_unsupported()?;
        Ok(Settings {
            sampling: self.sampling()?,
            max_tokens: self.max_tokens()?,
            stop: self.stops()?,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            attention: self.attention(default_attention)?,
        })
    }

    fn check_unsupported(&self) -> Result<(), ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::unsupported(
                "n",
                format!("n = {n} is not supported: one choice per request (n = 1)"),
            ));
        }
        let fields: [NeutralOnly<'_>; 11] = [
            ("logprobs", &self.logprobs, |v| is_false(v) || is_zero(v), "log probabilities are not supported"),
            ("top_logprobs", &self.top_logprobs, is_zero, "log probabilities are not supported"),
            ("echo", &self.echo, is_false, "`echo` is not supported"),
            ("best_of", &self.best_of, |v| v.as_u64() == Some(1), "`best_of` > 1 is not supported"),
            ("suffix", &self.suffix, is_empty, "`suffix` (insertion) is not supported"),
            ("logit_bias", &self.logit_bias, is_empty, "`logit_bias` is not supported"),
            ("tools", &self.tools, is_empty, "tool calling is not supported"),
            ("tool_choice", &self.tool_choice, |v| v == "none", "tool calling is not supported"),
            ("functions", &self.functions, is_empty, "function calling is not supported"),
            ("function_call", &self.function_call, |v| v == "none", "function calling is not supported"),
            (
                "response_format",
                &self.response_format,
                |v| v.get("type").and_then(Value::as_str) == Some("text"),
                "only the `text` response format is supported",
            ),
        ];
        let neutral = |v: &Option<Value>, ok: fn(&Value) -> bool| v.as_ref().is_none_or(|v| v.is_null() || ok(v));
        match fields.into_iter().find(|&(_, value, ok, _)| !neutral(value, ok)) {
            Some((param, _, _, message)) => Err(ApiError::unsupported(param, message)),
            None => Ok(()),
        }
    }

    fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::DEFAULT;
        let top_k = match self.top_k {
            None => d.top_k,
            // -1 is how vLLM spells "off"; 0 is ours.
            Some(-1 | 0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => {
                return Err(ApiError::invalid_value(
                    "top_k",
                    format!("top_k = {k} is invalid: expected >= 0 (0 or -1 = off)"),
                ))
            }
        };
        let seed = match &self.seed {
            None => random_u64(),
            Some(n) => match (n.as_u64(), n.as_i64()) {
                (Some(s), _) => s,
                // A negative seed is as good as any: take its two's-complement bits.
                (None, Some(s)) => s as u64,
                _ => return Err(ApiError::invalid_value("seed", format!("seed = {n} is not an integer"))),
            },
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed,
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
        };
        params.validate().map_err(sampling_error)?;
        Ok(params)
    }

    fn max_tokens(&self) -> Result<Option<usize>, ApiError> {
        let (param, value) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", v),
            (None, Some(v)) => ("max_tokens", v),
            (None, None) => return Ok(None),
        };
        if value == 0 {
            return Err(ApiError::invalid_value(param, format!("`{param}` must be at least 1")));
        }
        Ok(Some(usize::try_from(value).unwrap_or(usize::MAX)))
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        };
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_value(
                "stop",
                format!("{} stop strings given; at most {MAX_STOP_STRINGS} are allowed", stops.len()),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid_value("stop", "stop strings must not be empty"));
        }
        Ok(stops)
    }

    /// `attention` ("dense" or "hip"), `hip_preset` and `hip_config` (overrides of the preset,
    /// as in docs/CONFIG.md). None of them given: the server's default. `hip_*` alone implies
    /// "hip"; "hip" with neither starts from the server's HiP settings if it runs HiP, else
    /// from the `default` preset.
    fn attention(&self, default: &AttentionMode) -> Result<AttentionMode, ApiError> {
        let names_hip = self.hip_preset.is_some() || self.hip_config.is_some();
        match self.attention.as_deref() {
            None if !names_hip => return Ok(default.clone()),
            Some("dense") if names_hip => {
                return Err(ApiError::invalid_value(
                    "attention",
                    "`hip_preset` and `hip_config` apply only with \"hip\"",
                ))
            }
            Some("dense") => return Ok(AttentionMode::Dense),
            None | Some("hip") => {}
            Some(other) => {
                return Err(ApiError::invalid_value(
                    "attention",
                    format!("unknown attention `{other}`: expected \"dense\" or \"hip\""),
                ))
            }
        }
        if let (false, AttentionMode::Hip(_)) = (names_hip, default) {
            return Ok(default.clone());
        }
        let preset = self.hip_preset.as_deref().unwrap_or("default");
        let mut config = HipConfig::preset(preset).map_err(|_| {
            ApiError::invalid_value(
                "hip_preset",
                format!("unknown HiP preset `{preset}` (valid: {})", PRESET_NAMES.join(", ")),
            )
        })?;
        if let Some(overrides) = &self.hip_config {
            config
                .merge_json(&Value::Object(overrides.clone()).to_string())
                .map_err(|e| ApiError::invalid_value("hip_config", e.to_string()))?;
        }
        Ok(AttentionMode::Hip(Arc::new(config)))
    }
}

/// A field accepted only at a neutral value: its name, its value, the test of neutrality and
/// the message when it fails.
type NeutralOnly<'a> = (&'static str, &'a Option<Value>, fn(&Value) -> bool, &'static str);

fn is_false(v: &Value) -> bool {
    v == &Value::Bool(false)
}

fn is_zero(v: &Value) -> bool {
    v.as_u64() == Some(0)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The 400 for a sampling value out of range, naming the field.
pub fn sampling_error(e: SamplingError) -> ApiError {
    match &e {
        SamplingError::InvalidParam { field, .. } => ApiError::invalid_value(*field, e.to_string()),
        _ => ApiError::invalid_value("sampling", e.to_string()),
    }
}

/// A fresh unpredictable number (for ids and unseeded requests): std's per-process random
/// hash keys over a counter.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::StopToken | FinishReason::Stopped => "stop",
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The fields every response and chunk of one request share.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub choices: [ChatChoice; 1],
    pub usage: UsageBody,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct Completion {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub choices: [CompletionChoice; 1],
    pub usage: UsageBody,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// A streamed chunk: `choices` holds one entry, or none in the final usage chunk.
#[derive(Debug, Serialize)]
pub struct Chunk<C> {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// The longest prompt plus completion a request may have (vLLM's field name).
    pub max_model_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> RequestBody {
        parse_body(json.as_bytes()).expect("parses")
    }

    #[test]
    fn defaults_are_the_sampling_defaults_with_a_random_seed() {
        let a = body("{}").settings(&AttentionMode::Dense).expect("valid");
        let b = body("{}").settings(&AttentionMode::Dense).expect("valid");
        assert_eq!(
            SamplingParams { seed: 0, ..a.sampling },
            SamplingParams { seed: 0, ..SamplingParams::DEFAULT },
            "omitted fields take the documented defaults"
        );
        assert_ne!(a.sampling.seed, b.sampling.seed, "unseeded requests differ");
        let seeded = body(r#"{"seed": -1, "top_k": -1}"#).settings(&AttentionMode::Dense).expect("valid");
        assert_eq!((seeded.sampling.seed, seeded.sampling.top_k), (u64::MAX, 0));
    }

    #[test]
    fn max_completion_tokens_wins_and_stop_takes_a_string_or_a_list() {
        let s = body(r#"{"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"}"#)
            .settings(&AttentionMode::Dense)
            .expect("valid");
        assert_eq!((s.max_tokens, s.stop), (Some(7), vec!["x".to_string()]));
        let s = body(r#"{"stop": ["a", "b"]}"#).settings(&AttentionMode::Dense).expect("valid");
        assert_eq!(s.stop, ["a", "b"]);
    }

    #[test]
    fn attention_follows_the_request_then_the_server() {
        let hip_default = AttentionMode::Hip(Arc::new(HipConfig::preset("fast").expect("preset")));
        let mode = |json: &str, default: &AttentionMode| body(json).attention(default);
        assert_eq!(mode("{}", &hip_default), Ok(hip_default.clone()));
        assert_eq!(mode(r#"{"attention": "dense"}"#, &hip_default), Ok(AttentionMode::Dense));
        assert_eq!(mode(r#"{"attention": "hip"}"#, &hip_default), Ok(hip_default.clone()));
        assert_eq!(
            mode(r#"{"attention": "hip"}"#, &AttentionMode::Dense),
            Ok(AttentionMode::Hip(Arc::new(HipConfig::default())))
        );
        let tuned = mode(r#"{"hip_preset": "flash", "hip_config": {"n_sink": 64}}"#, &AttentionMode::Dense);
        let expected = HipConfig { n_sink: 64, ..HipConfig::preset("flash").expect("preset") };
        assert_eq!(tuned, Ok(AttentionMode::Hip(Arc::new(expected))));
        for (json, param) in [
            (r#"{"attention": "dense", "hip_preset": "fast"}"#, "attention"),
            (r#"{"attention": "sparse"}"#, "attention"),
            (r#"{"hip_preset": "turbo"}"#, "hip_preset"),
            (r#"{"hip_config": {"k": 3}}"#, "hip_config"),
        ] {
            let err = mode(json, &AttentionMode::Dense).expect_err(json);
            assert_eq!((err.code, err.param.as_deref()), ("invalid_value", Some(param)), "{json}");
        }
    }

    #[test]
    fn content_parts_and_prompt_shapes() {
        let messages = body(r#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": null}]}"#)
            .chat_messages()
            .expect("valid");
        assert_eq!(messages, [ChatMessage::new("system", "ab"), ChatMessage::new("assistant", "")]);
        assert_eq!(body(r#"{"prompt": ["hi"]}"#).completion_prompt(), Ok(PromptInput::Text("hi".into())));
        assert_eq!(body(r#"{"prompt": [[1, 2]]}"#).completion_prompt(), Ok(PromptInput::Ids(vec![1, 2])));
        assert_eq!(body(r#"{"prompt": [3]}"#).completion_prompt(), Ok(PromptInput::Ids(vec![3])));
        assert_eq!(
            body(r#"{"prompt": ["a", "b"]}"#).completion_prompt().expect_err("batch").code,
            "unsupported_parameter"
        );
    }

    #[test]
    fn neutral_values_of_unsupported_fields_pass() {
        let ok = r#"{"n": 1, "logprobs": false, "echo": false, "best_of": 1, "logit_bias": {}, "tools": [],
                     "tool_choice": "none", "response_format": {"type": "text"}, "suffix": null, "user": "x"}"#;
        assert!(body(ok).settings(&AttentionMode::Dense).is_ok());
        for (json, param) in [
            (r#"{"n": 2}"#, "n"),
            (r#"{"logprobs": true}"#, "logprobs"),
            (r#"{"logprobs": 3}"#, "logprobs"),
            (r#"{"tools": [{"type": "function"}]}"#, "tools"),
            (r#"{"response_format": {"type": "json_object"}}"#, "response_format"),
        ] {
            let err = body(json).settings(&AttentionMode::Dense).expect_err(json);
            assert_eq!((err.code, err.param.as_deref()), ("unsupported_parameter", Some(param)), "{json}");
        }
    }
}
