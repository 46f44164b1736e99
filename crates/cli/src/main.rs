//! The `infinihip` command-line tool.

mod args;
mod attention;
mod bench;
mod bench_attention;
mod eval;
mod generate;
mod info;
mod load;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use args::{BenchCommand, Cli, Command, EvalCommand};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infinihip: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { prompt, system, model, gen, attention } => {
            generate::run(&prompt, system.as_deref(), &model, &gen, &attention)
        }
        Command::Chat { system, model, gen, attention } => generate::chat(system.as_deref(), &model, &gen, &attention),
        Command::Complete { text, special, model, gen, attention } => {
            generate::complete(&text, special, &model, &gen, &attention)
        }
        Command::Tokenize { text, special, verbose, model } => info::tokenize(&text, special, verbose, &model),
        Command::Info { model, all } => info::info(model, all),
        Command::Fetch => {
            let path = load::default_model_path()?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Cpu { prompt_tokens, gen_tokens, reps, json, model, attention }) => {
            bench::cpu(prompt_tokens, gen_tokens, reps, json.as_deref(), &model, &attention)
        }
        Command::Bench(BenchCommand::Attention(args)) => bench_attention::attention(&args),
        Command::Bench(BenchCommand::E2e(args)) => bench::e2e(&args),
        Command::Eval(EvalCommand::Passkey { eval: args }) => eval::passkey(&args),
        Command::Eval(EvalCommand::Niah { variant, haystack, needles, eval: args }) => {
            eval::niah(variant, haystack, needles, &args)
        }
        Command::Serve { serve: args, model, attention } => serve::serve(&args, &model, &attention),
    }
}
