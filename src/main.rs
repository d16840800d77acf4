//! The `rmr1` command line.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rmr1",
    version,
    about = "Serve and train RM-R1 reasoning reward models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve judgments over gRPC (JudgeService, ModelService, health, reflection) with
    /// Prometheus metrics on their own port.
    Serve(cli::serve::ServeArgs),
    /// Send one judgment to a server and print it readably.
    Judge(cli::judge::JudgeArgs),
    /// Evaluate on RewardBench, RM-Bench or RMB through the Judge API; resumable, replayable.
    Eval(cli::eval::EvalArgs),
    /// Generate text from a prompt with the engine (streams it, then prints tokens/s).
    Generate(cli::generate::GenerateArgs),
    /// Write a Hugging Face checkpoint (config, tokenizer, safetensors shards): a base with a LoRA
    /// adapter merged in, or the base alone (GGUF → safetensors).
    Export(cli::export::ExportArgs),
    /// Developer tools (logits for comparison with transformers/PEFT).
    #[command(subcommand, hide = true)]
    Debug(cli::debug::DebugCommand),
    /// Checks of the CUDA build that need a GPU: kernels against CPU references, model outputs
    /// for comparison with transformers (scripts/gpu-check.sh runs the whole check).
    GpuCheck(cli::gpu_check::GpuCheckArgs),
    /// Submit, follow and manage training jobs on a server started with --data-dir/--train-roots.
    Train(cli::train::TrainArgs),
    /// Benchmarks that print tables.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// CPU engine throughput (prefill, decode at several concurrencies) against candle-transformers'
    /// quantized Qwen2 in the same run.
    Engine(rmr1::bench::engine::BenchArgs),
    /// CPU paged attention at judge shapes (prefill chunks, decode at 1,200 positions): the
    /// serving backend (f32 and f16 cache) against the reference in the same run.
    Attention(rmr1::bench::attention::AttentionBenchArgs),
    /// Judge requests over gRPC on loopback at several concurrencies: throughput, TTFT and latency
    /// percentiles, prefix-cache hit rate.
    Judge(rmr1::bench::judge::JudgeBenchArgs),
    /// The judge-shaped workload (shared system-prompt prefix + unique pair, fixed-length
    /// generations) through the engine on a random-weight model made on the device: tokens/s,
    /// TTFT, ITL and the fraction of the memory-read floor (compare: scripts/hf_throughput.py).
    Throughput(rmr1::bench::throughput::ThroughputArgs),
    /// SFT training throughput and peak memory on the CPU (LoRA on a real model, full fine-tuning on a
    /// small random one) against the engine's prefill on the same weights.
    Train(rmr1::bench::train::TrainBenchArgs),
    /// One GRPO step's time split (weight hand-over, rollouts, old/reference log-probs, updates)
    /// for a small random model and LoRA on a real one, against the engine's prefill.
    Grpo(rmr1::bench::grpo::GrpoBenchArgs),
    /// The engine thread's text work per generated token (decode, stop strings, probes): the token
    /// byte table against decoding through the tokenizer, in the same run.
    Detokenize(rmr1::bench::detokenize::DetokenizeBenchArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on: the error and its causes, never a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // A server logs each request; client-side commands that run an in-process server (eval,
    // benchmarks) keep stderr for their progress line and tables.
    let default_filter = match cli.command {
        Command::Serve(_) | Command::Generate(_) => "warn,rmr1=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Judge(args) => cli::judge::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::GpuCheck(args) => cli::gpu_check::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Debug(command) => cli::debug::run(command),
        Command::Train(args) => cli::train::run(args),
        Command::Bench(BenchCommand::Engine(args)) => rmr1::bench::engine::run(args),
        Command::Bench(BenchCommand::Attention(args)) => rmr1::bench::attention::run(args),
        Command::Bench(BenchCommand::Judge(args)) => rmr1::bench::judge::run(args),
        Command::Bench(BenchCommand::Throughput(args)) => rmr1::bench::throughput::run(args),
        Command::Bench(BenchCommand::Train(args)) => rmr1::bench::train::run(args),
        Command::Bench(BenchCommand::Grpo(args)) => rmr1::bench::grpo::run(args),
        Command::Bench(BenchCommand::Detokenize(args)) => rmr1::bench::detokenize::run(args),
    }
}
