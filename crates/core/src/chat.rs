//! Chat templates: a conversation → the prompt text the model was trained to continue.
//!
//! The template is the GGUF's `tokenizer.chat_template` (Jinja), rendered with minijinja set up
//! the way Hugging Face transformers renders it in `apply_chat_template`:
//! - `trim_blocks` and `lstrip_blocks` on, trailing newline dropped, loop controls allowed;
//! - Python string and dict methods (`.strip()`, `.startswith()`, `.items()`) via pycompat;
//! - `raise_exception(message)`, which fails the render with that message;
//! - a `tojson` filter that writes JSON as `json.dumps(value, ensure_ascii=False)` does
//!   (`", "` and `": "` separators, or `indent=n`), not HTML-escaped;
//! - variables `messages`, `add_generation_prompt`, `tools` and `documents` (both none),
//!   and `bos_token` / `eos_token` when the vocabulary names them.
//!
//! Without a template in the metadata, ChatML is used; `fallback_warning()` then returns a text
//! for the caller to show (the library never prints).
//!
//! The rendered prompt is meant to be encoded with `Tokenizer::encode(prompt, true)`, so that
//! the template's control tokens become their ids.

use std::collections::BTreeMap;
use std::io;

use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::gguf::{GgufError, Metadata};

/// One turn of a conversation: `role` is typically `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Errors from loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error("chat template metadata: {0}")]
    Metadata(#[from] GgufError),
    #[error("`{key}` = {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenIdOutOfRange { key: &'static str, id: usize, vocab_size: usize },
    #[error("the chat template does not parse: {source}")]
    Syntax { source: minijinja::Error },
    #[error("rendering the chat template failed: {source}")]
    Render { source: minijinja::Error },
}

const TEMPLATE_NAME: &str = "tokenizer.chat_template";

/// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
/// `<|im_start|>assistant\n` when a reply is wanted.
const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const FALLBACK_WARNING: &str = "the model has no chat template (tokenizer.chat_template); \
using ChatML, which may not be the format it was trained on";

/// A compiled chat template with the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    is_fallback: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Reads `tokenizer.chat_template`, and the BOS/EOS strings from `tokenizer.ggml.tokens`.
    /// A missing template selects the ChatML fallback; a template that does not parse is an
    /// error.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ChatError> {
        let tokens = match md.get("tokenizer.ggml.tokens") {
            Some(_) => md.str_array("tokenizer.ggml.tokens")?,
            None => &[],
        };
        let token_text = |key: &'static str| -> Result<Option<String>, ChatError> {
            let Some(id) = md.opt_usize(key)? else {
                return Ok(None);
            };
            match tokens.get(id) {
                Some(text) => Ok(Some(text.clone())),
                None => Err(ChatError::TokenIdOutOfRange { key, id, vocab_size: tokens.len() }),
            }
        };
        let bos_token = token_text("tokenizer.ggml.bos_token_id")?;
        let eos_token = token_text("tokenizer.ggml.eos_token_id")?;
        match md.opt_str(TEMPLATE_NAME)? {
            Some(source) => Self::new(source, bos_token, eos_token),
            None => {
                let mut template = Self::new(CHATML, bos_token, eos_token)?;
                template.is_fallback = true;
                Ok(template)
            }
        }
    }

    /// Compiles a template given as Jinja source.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|source| ChatError::Syntax { source })?;
        Ok(ChatTemplate { env, is_fallback: false, bos_token, eos_token })
    }

    /// True when the metadata had no template and ChatML stands in.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// A warning for the user when the ChatML fallback is in use.
    pub fn fallback_warning(&self) -> Option<&'static str> {
        self.is_fallback.then_some(FALLBACK_WARNING)
    }

    /// Renders the conversation. With `add_generation_prompt`, the prompt ends with the header
    /// of an assistant turn, so that the model's continuation is the reply.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        let mut vars: BTreeMap<&str, Value> = BTreeMap::new();
        vars.insert("messages", Value::from_serialize(messages));
        vars.insert("add_generation_prompt", Value::from(add_generation_prompt));
        vars.insert("tools", Value::from(()));
        vars.insert("documents", Value::from(()));
        // Absent tokens stay undefined (render as nothing), as in transformers.
        if let Some(bos) = &self.bos_token {
            vars.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            vars.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|source| ChatError::Render { source })?;
        template.render(vars).map_err(|source| ChatError::Render { source })
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("is_fallback", &self.is_fallback)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// Templates call this to reject a conversation they cannot format (e.g. roles that do not
/// alternate); the message reaches the caller inside `ChatError::Render`.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson` or `value | tojson(indent=2)`, formatted as Python's `json.dumps` with
/// `ensure_ascii=False`: non-ASCII kept, no HTML escaping, `", "` / `": "` separators when
/// compact, `","` / `": "` plus newlines when indented. Keys keep their insertion order.
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let indent = vec![b' '; width];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&indent);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonCompact)),
    };
    written.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, "tojson failed").with_source(e))?;
    let json = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, "tojson failed").with_source(e))?;
    Ok(Value::from_safe_string(json))
}

/// serde_json's compact output with Python's default separators.
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Array, Value as GgufValue};

    fn metadata(template: Option<&str>) -> Metadata {
        let mut entries = BTreeMap::new();
        let tokens = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        entries.insert("tokenizer.ggml.tokens".to_string(), GgufValue::Array(Array::String(tokens)));
        entries.insert("tokenizer.ggml.bos_token_id".to_string(), GgufValue::U32(1));
        entries.insert("tokenizer.ggml.eos_token_id".to_string(), GgufValue::U32(2));
        if let Some(t) = template {
            entries.insert(TEMPLATE_NAME.to_string(), GgufValue::String(t.to_string()));
        }
        Metadata::new(entries)
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")]
    }

    #[test]
    fn falls_back_to_chatml_and_says_so() {
        let template = ChatTemplate::from_metadata(&metadata(None)).unwrap();
        assert!(template.is_fallback());
        assert!(template.fallback_warning().is_some());
        let prompt = template.render(&conversation(), true).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_reply = template.render(&conversation(), false).unwrap();
        assert_eq!(no_reply, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn hf_environment_blocks_tokens_and_python_methods() {
        // trim_blocks eats the newline after `%}`; lstrip_blocks the indentation before `{%`.
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]{{ eos_token }}\n    {% endif %}\n{% endfor %}\n";
        let template = ChatTemplate::from_metadata(&metadata(Some(source))).unwrap();
        assert!(!template.is_fallback());
        assert_eq!(template.fallback_warning(), None);
        let messages = [ChatMessage::new("system", "x"), ChatMessage::new("user", "  hi there ")];
        assert_eq!(template.render(&messages, false).unwrap(), "<s>\n[HI THERE]</s>\n");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let err = template.render(&conversation(), true).unwrap_err();
        assert!(matches!(err, ChatError::Render { .. }));
        assert!(err.to_string().contains("first message must be from the user"), "{err}");
        assert_eq!(template.render(&[ChatMessage::new("user", "q")], true).unwrap(), "ok");
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        // json.dumps({"role": "user", "content": "a<b \"é\"\n"}, ensure_ascii=False), by hand.
        let template =
            ChatTemplate::new("{{ messages[0] | tojson }}|{{ [1, [2, 3]] | tojson(indent=2) }}", None, None).unwrap();
        let rendered = template.render(&[ChatMessage::new("user", "a<b \"é\"\n")], false).unwrap();
        assert_eq!(
            rendered,
            "{\"role\": \"user\", \"content\": \"a<b \\\"é\\\"\\n\"}|[\n  1,\n  [\n    2,\n    3\n  ]\n]"
        );
    }

    #[test]
    fn undefined_bos_renders_as_nothing_and_bad_templates_are_errors() {
        let template = ChatTemplate::new("[{{ bos_token }}]", None, None).unwrap();
        assert_eq!(template.render(&[], false).unwrap(), "[]");
        assert!(matches!(ChatTemplate::new("{% for %}", None, None), Err(ChatError::Syntax { .. })));
    }

    #[test]
    fn messages_round_trip_through_serde() {
        let json = r#"[{"role":"user","content":"hi"}]"#;
        let messages: Vec<ChatMessage> = serde_json::from_str(json).unwrap();
        assert_eq!(messages, vec![ChatMessage::new("user", "hi")]);
        assert_eq!(serde_json::to_string(&messages).unwrap(), json);
    }
}
