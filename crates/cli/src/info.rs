//! `infinihip info` and `infinihip tokenize`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use infinihip_core::gguf::GgufFile;
use infinihip_core::model_config::ModelConfig;
use infinihip_core::rope::RopeScaling;

use crate::args::ModelPath;
use crate::load::{self, Opened};

/// `infinihip info [MODEL]`.
pub fn info(model: Option<PathBuf>, all: bool) -> Result<()> {
    let path = load::model_path(&ModelPath { model })?;
    let file = load::open_gguf(&path)?;
    let md = file.metadata();
    println!("file:            {}", path.display());
    println!("size:            {:.1} MB", std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6);
    println!("GGUF version:    {}", file.version());
    print_config(&file);
    let params: u64 = file.tensors().iter().map(|t| t.n_elements).sum();
    println!("parameters:      {params} ({:.1} M)", params as f64 / 1e6);
    let mut types: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements;
    }
    let hist: Vec<String> =
        types.iter().map(|(ty, (n, el))| format!("{ty} ×{n} ({:.1} M weights)", *el as f64 / 1e6)).collect();
    println!("tensor types:    {}", hist.join(", "));
    println!("tensors:         {}", file.tensors().len());
    if let Ok(m) = md.str("tokenizer.ggml.model") {
        let pre = md.opt_str("tokenizer.ggml.pre").ok().flatten().unwrap_or("-");
        let n = md.array("tokenizer.ggml.tokens").map(|a| a.len()).unwrap_or(0);
        println!("tokenizer:       {m} (pre-tokenizer {pre}), {n} tokens");
    }
    match md.opt_str("tokenizer.chat_template")? {
        Some(t) => println!("chat template:\n{}", indent(t)),
        None => println!("chat template:   none (ChatML is used)"),
    }
    if all {
        println!("metadata:");
        for (k, v) in md.iter() {
            println!("  {k} = {}", v.summary());
        }
    }
    Ok(())
}

fn print_config(file: &GgufFile) {
    match ModelConfig::from_metadata(file.metadata(), None) {
        Ok(c) => {
            println!(
                "architecture:    {}{}",
                c.arch.name(),
                c.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
            );
            println!("context length:  {}", c.context_length);
            println!(
                "dimensions:      {} layers, width {}, MLP {}, {} query heads, {} KV heads, head dim {}, vocab {}",
                c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size
            );
            let scaling = match &c.rope.scaling {
                RopeScaling::None => "none".to_string(),
                RopeScaling::Linear { factor } => format!("linear ×{factor}"),
                RopeScaling::Llama3 { factor, .. } => format!("llama3 ×{factor}"),
                RopeScaling::FreqFactors(_) => "per-frequency factors".to_string(),
            };
            let rope_freqs = file.tensor("rope_freqs.weight").is_ok();
            println!(
                "RoPE:            θ = {}, {} dims, scaling {}",
                c.rope.theta,
                c.rope.dim,
                if rope_freqs { "per-frequency factors (rope_freqs.weight)".to_string() } else { scaling }
            );
        }
        Err(e) => println!("architecture:    not runnable here: {e}"),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// `infinihip tokenize TEXT`.
pub fn tokenize(text: &str, special: bool, verbose: bool, model: &ModelPath) -> Result<()> {
    let opened = Opened::new(model)?;
    let ids = opened.tokenizer.encode(text, special)?;
    if verbose {
        let rows: Vec<serde_json::Value> = ids
            .iter()
            .map(|&id| {
                let piece = opened.tokenizer.decode(&[id], false).unwrap_or_default();
                serde_json::json!({ "id": id, "text": piece })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows).context("rendering JSON")?);
    } else {
        println!("{}", serde_json::to_string(&ids).context("rendering JSON")?);
    }
    Ok(())
}
