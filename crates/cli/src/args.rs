//! Command-line flags. Each flag is defined once here with its help text; `--help` and
//! `docs/CLI.md` describe the same set.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use infinihip_core::sampling::SamplingParams;

use crate::attention::AttentionArgs;
use crate::eval::haystack::HaystackKind;
use crate::eval::niah::NiahVariant;
use crate::eval::options::{parse_depths, parse_lengths, Depths, Lengths, PromptFormat};

#[derive(Debug, Parser)]
#[command(
    name = "infinihip",
    version,
    about = "Long-context LLM inference: GGUF Llama-family models on the CPU",
    long_about = "Long-context LLM inference for GGUF Llama-family models.\n\n\
        With no --model, the default model (SmolLM2-135M-Instruct, Q4_1) is used, and fetched \
        on first use into $XDG_CACHE_HOME/infinihip/models (else ~/.cache/infinihip/models)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One chat turn: render PROMPT with the model's chat template and stream the reply.
    #[command(allow_negative_numbers = true)]
    Run {
        /// The user message.
        prompt: String,
        /// A system message (default: the template's own, if it has one).
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        attention: AttentionArgs,
    },
    /// An interactive multi-turn chat on stdin/stdout (`/reset` starts over, `/exit` or EOF ends).
    #[command(allow_negative_numbers = true)]
    Chat {
        /// A system message (default: the template's own, if it has one).
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        attention: AttentionArgs,
    },
    /// Raw continuation of TEXT, with no chat template.
    #[command(allow_negative_numbers = true)]
    Complete {
        /// The text to continue.
        text: String,
        /// Parse special tokens such as <|im_start|> in TEXT.
        #[arg(long)]
        special: bool,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        attention: AttentionArgs,
    },
    /// Print the token ids of TEXT as a JSON array.
    Tokenize {
        text: String,
        /// Match special tokens such as <|im_start|> whole instead of as plain text.
        #[arg(long)]
        special: bool,
        /// Also print each token's text.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        model: ModelPath,
    },
    /// Describe a model file: architecture, sizes, tensor types, context length, chat template.
    Info {
        /// The GGUF file (default: as for --model).
        model: Option<PathBuf>,
        /// Print every metadata key.
        #[arg(long)]
        all: bool,
    },
    /// Download the default model into the cache (nothing to do if it is already there).
    Fetch,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Retrieval accuracy against prompt length and needle depth (see docs/EVAL.md).
    #[command(subcommand)]
    Eval(EvalCommand),
    /// The OpenAI-compatible HTTP server, with continuous batching (see docs/SERVER.md).
    #[command(mut_arg("ctx_size", |a| a.help(SERVE_CTX_HELP)))]
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        attention: AttentionArgs,
    },
}

/// `--ctx-size` for the server: a per-request bound.
const SERVE_CTX_HELP: &str = "Most tokens one request may hold, prompt and completion together; a longer prompt is a \
    400 context_length_exceeded [default: the model's context length]";

/// Flags of `serve` besides the model and attention ones.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on; the default accepts local connections only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Positions in the KV cache, shared by all requests [default: 4 × the context]
    #[arg(long, value_name = "TOKENS")]
    pub kv_tokens: Option<usize>,
    /// Requests that may wait for KV memory; past it requests get 503 queue_full.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_queue: usize,
    /// Requests computed together in one batch at most; at most --prefill-chunk, so that every
    /// running request gets its token each step [default: 256, or --prefill-chunk if smaller]
    #[arg(long, value_name = "N")]
    pub max_running: Option<usize>,
    /// max_tokens of a request that names none [default: 16 for /v1/completions, the rest of
    /// the context for chat, as OpenAI does]
    #[arg(long, value_name = "N")]
    pub default_max_tokens: Option<usize>,
    /// Require `Authorization: Bearer KEY` on every /v1 route.
    #[arg(long, env = "INFINIHIP_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Largest request body accepted (larger ones get 413).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Open connections at most; more wait to be accepted.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_connections: usize,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CPU prefill and decode speed on the model (tokens/s, median over repetitions).
    Cpu {
        /// Prompt tokens to prefill.
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        /// Tokens to decode after the prompt.
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        attention: AttentionArgs,
    },
    /// Per-layer attention latency on the GPU against context length: one decode step and one
    /// prefill chunk, for our kernels, with the bytes/FLOPs floor (see docs/BENCHMARKS.md).
    Attention(crate::bench_attention::AttentionBenchArgs),
    /// The whole model against context length: time to first token and decode tokens/s, HiP
    /// at every length and dense attention up to --dense-up-to.
    E2e(E2eArgs),
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Prompt lengths in tokens, comma-separated; k = 1024, m = 1024².
    #[arg(long, value_name = "LIST", default_value = "8k,32k,128k,512k,1m", value_parser = parse_lengths)]
    pub lengths: Lengths,
    /// Tokens decoded after each prompt (greedy; the end-of-sequence token does not stop them).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Also time dense attention at lengths up to this many tokens (0: never).
    #[arg(long, value_name = "TOKENS", default_value = "32k", value_parser = parse_token_count)]
    pub dense_up_to: usize,
    /// HiP preset: default, fast, flash or 5k [default: default]
    #[arg(long, value_name = "NAME")]
    pub hip_preset: Option<String>,
    /// HiP settings overriding the preset: a JSON object, or the path of a file holding one.
    #[arg(long, value_name = "JSON|PATH")]
    pub hip_config: Option<String>,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A token count such as `32768`, `32k` or `1m` (k = 1024, m = 1024²); 0 is allowed.
fn parse_token_count(s: &str) -> Result<usize, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_lengths(s).map_err(|e| e.to_string()).and_then(|l| match l.0[..] {
        [n] => Ok(n),
        _ => Err(format!("`{s}`: one token count expected")),
    })
}

/// `--ctx-size` means the same for the evals, with a default of their own.
const EVAL_CTX_HELP: &str = "Positions in the KV pool [default: the longest prompt plus the answer's token budget]";

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Passkey retrieval, Landmark style: a five-digit key hidden in repeated filler text.
    #[command(mut_arg("ctx_size", |a| a.help(EVAL_CTX_HELP)))]
    Passkey {
        #[command(flatten)]
        eval: EvalArgs,
    },
    /// Needle in a haystack, RULER style: seven-digit "special magic numbers" tied to keys.
    #[command(mut_arg("ctx_size", |a| a.help(EVAL_CTX_HELP)))]
    Niah {
        /// Which needles are hidden and asked for.
        #[arg(long, value_enum, default_value_t = NiahVariant::Single)]
        variant: NiahVariant,
        /// The text the needles hide in.
        #[arg(long, value_enum, default_value_t = HaystackKind::Noise)]
        haystack: HaystackKind,
        /// Needles per case for multikey, multivalue and multiquery (2..=64) [default: 4]
        #[arg(long, value_name = "N")]
        needles: Option<usize>,
        #[command(flatten)]
        eval: EvalArgs,
    },
}

/// Flags shared by the evals.
#[derive(Debug, Args, Clone)]
pub struct EvalArgs {
    /// Prompt lengths in tokens, comma-separated; k = 1024, m = 1024² (e.g. 2k,8k,32k).
    #[arg(long, value_name = "LIST", default_value = "1k,2k,4k,8k", value_parser = parse_lengths)]
    pub lengths: Lengths,
    /// Trials per length.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub trials: usize,
    /// Needle depths, comma-separated, 0 = start of the haystack, 1 = end; the trials take them
    /// in turn [default: the trials spread evenly over 0..1]
    #[arg(long, value_name = "LIST", value_parser = parse_depths)]
    pub depths: Option<Depths>,
    /// Seed of the prompts (keys, numbers, haystack words): the same flags give the same prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the prompt reaches the model.
    #[arg(long, value_enum, default_value_t = PromptFormat::Chat)]
    pub format: PromptFormat,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// Write the full report (every case) as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (accuracy against length, and a length × depth heatmap) to this file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Which model file to use.
#[derive(Debug, Args, Clone)]
pub struct ModelPath {
    /// GGUF model file [default: $INFINIHIP_MODEL, else the default model]
    #[arg(long, short = 'm', value_name = "PATH")]
    pub model: Option<PathBuf>,
}

/// The model and how to run it.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    pub path: ModelPath,
    /// Where to run: `cuda` (GPU 0), `cpu`, or `auto` (CUDA when a usable GPU is there and the
    /// attention runs on it, the CPU otherwise; stderr says which and why).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// CPU threads [default: one per core]
    #[arg(long, short = 't', default_value_t = 0, hide_default_value = true)]
    pub threads: usize,
    /// Most tokens per prefill step; bounds activation memory on long prompts [default: 512 on
    /// the CPU, 4096 on CUDA, whose kernels need the larger steps to fill the GPU]
    #[arg(long, value_name = "TOKENS")]
    pub prefill_chunk: Option<usize>,
    /// Tokens per KV-cache page.
    #[arg(long, default_value_t = 64)]
    pub page_size: usize,
    /// Most tokens (prompt and reply) a conversation may hold [default: the model's context
    /// length, or the prompt plus --max-tokens if that is longer]
    #[arg(long, value_name = "TOKENS")]
    pub ctx_size: Option<usize>,
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Generation length and sampling.
#[derive(Debug, Args, Clone)]
pub struct GenArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.temperature)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.top_k)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.top_p)]
    pub top_p: f32,
    /// Drop tokens less likely than MIN_P times the most likely one (0 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.min_p)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.repetition_penalty)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = SamplingParams::DEFAULT.repeat_last_n)]
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token already present (OpenAI semantics; 0 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.presence_penalty)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence so far (OpenAI semantics; 0 = off).
    #[arg(long, default_value_t = SamplingParams::DEFAULT.frequency_penalty)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed and inputs give the same output.
    #[arg(long, default_value_t = SamplingParams::DEFAULT.seed)]
    pub seed: u64,
    /// Stop when the output contains this string (not printed); may be repeated.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stops: Vec<String>,
    /// Keep generating after the end-of-sequence / end-of-turn token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print no timing line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl GenArgs {
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
    }
}
