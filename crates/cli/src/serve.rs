//! `infinihip serve`: loads the model and runs the OpenAI-compatible server until Ctrl-C.
//!
//! Sizing: a request may hold `--ctx-size` tokens (default: the model's context); the KV pool
//! holds `--kv-tokens` (default: four contexts) shared by all requests, and must hold at least
//! one full context so that any admitted request can finish alone.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use infinihip_core::model_config::ModelConfig;
use infinihip_engine::sched::SchedulerOptions;
use infinihip_server::{ApiConfig, ServerConfig};

use crate::args::{ModelArgs, ServeArgs};
use crate::attention::{AttentionArgs, AttentionChoice};
use crate::load::{with_engine, Opened};

/// KV pool size when `--kv-tokens` is not given, in contexts.
const DEFAULT_KV_CONTEXTS: usize = 4;

/// `--max-running` when not given (and `--prefill-chunk` is larger).
const DEFAULT_MAX_RUNNING: usize = 256;

/// The name clients use for the model: the file name without `.gguf`.
fn model_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}

pub fn serve(args: &ServeArgs, model: &ModelArgs, attention: &AttentionArgs) -> Result<()> {
    let attention = AttentionChoice::new(attention)?;
    let opened = Opened::new(&model.path)?;
    if let Some(w) = opened.template.fallback_warning() {
        eprintln!("infinihip: warning: {w}");
    }
    let native = ModelConfig::from_metadata(opened.file.metadata(), None)?.context_length;
    let context_tokens = model.ctx_size.unwrap_or(native);
    let kv_tokens = match args.kv_tokens {
        Some(kv) if kv < context_tokens => {
            bail!("--kv-tokens {kv} is smaller than one context ({context_tokens} tokens, --ctx-size)")
        }
        Some(kv) => kv,
        None => context_tokens.saturating_mul(DEFAULT_KV_CONTEXTS),
    };
    if attention.hip.is_none() && context_tokens > native {
        eprintln!(
            "infinihip: warning: --ctx-size {context_tokens} is past the model's native context of {native}; dense \
             attention there degrades (--attention hip stays within it)"
        );
    }
    with_engine!(opened, model, kv_tokens, |engine, device| {
        let config = ServerConfig {
            api: ApiConfig {
                model_name: model_name(&opened.path),
                context_tokens,
                default_max_tokens: args.default_max_tokens,
                api_key: args.api_key.clone().filter(|k| !k.is_empty()),
                max_body_bytes: args.max_body_bytes,
                default_attention: attention.mode(),
            },
            scheduler: SchedulerOptions {
                max_running: args.max_running.unwrap_or(DEFAULT_MAX_RUNNING.min(engine.options().prefill_chunk)),
                max_waiting: args.max_queue,
                step_tokens: engine.options().prefill_chunk,
            },
        };
        let name = config.api.model_name.clone();
        let keyed = config.api.api_key.is_some();
        let router = infinihip_server::app(engine, opened.tokenizer, opened.template, config)?;
        let addr = SocketAddr::new(args.host, args.port);
        infinihip_server::run(router, addr, args.max_connections, |bound| {
            eprintln!(
                "infinihip: serving {name} on http://{bound}/v1 ({} attention, context {context_tokens}, KV {kv_tokens} \
                 tokens, {}{})",
                attention.label(),
                device.label,
                if keyed { ", API key required" } else { "" }
            );
        })
        .context("the server stopped")
    })
}
