//! `rmr1 eval`: RewardBench, RM-Bench or RMB through the Judge API, scored as RM-R1 reports them.

use anyhow::{bail, Context, Result};
use rmr1::eval::runner::{self, EvalOptions, Target};
use rmr1::eval::task::OnBadRecord;
use rmr1::eval::{log, report, Benchmark};
use rmr1::serving_args::ModelArgs;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long, required_unless_present_any = ["replay", "replay_upstream"])]
    benchmark: Option<Benchmark>,
    /// Dataset: RewardBench parquet / JSON / JSONL (or an LLMBar checkout), RM-Bench `data/` or a
    /// file of it, RMB's `RMB_dataset/` folder.
    #[arg(long, required_unless_present_any = ["replay", "replay_upstream"])]
    data: Option<PathBuf>,
    /// A running server to judge with; otherwise --model loads one in-process.
    #[arg(long, conflicts_with = "model")]
    addr: Option<String>,
    #[command(flatten)]
    local: Option<ModelArgs>,
    #[command(flatten)]
    remote: rmr1::remote_args::RemoteArgs,
    /// With --addr: seconds to wait for the server to finish loading its model (health SERVING).
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// With --addr: the served model to use (default: the server's default).
    #[arg(long, default_value = "")]
    model_name: String,
    /// Per-judgment JSONL log, appended as it goes; rerunning resumes it.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Where to write the JSON report (default: the log path with .report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Judgments in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seeds the position swap (one ordering per pair, as upstream).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Judge every pair in both orders instead of one seeded order.
    #[arg(long)]
    both_orders: bool,
    /// Generation budget per judgment (default: the server's, from the model manifest).
    #[arg(long)]
    max_new_tokens: Option<u32>,
    #[arg(long, value_enum, default_value_t = OnBadRecord::Fail)]
    on_bad_record: OnBadRecord,
    /// Score an existing log without running a model: every verdict is re-derived from its raw
    /// output first, and a record whose stored verdict disagrees stops the replay.
    #[arg(long, conflicts_with = "replay_upstream")]
    replay: Option<PathBuf>,
    /// Score upstream RM-R1's per-sample RMB result files (`logs.json`, `raw_logs.json`,
    /// `group_by_same_id_logs.json`) with rmr1's rules; the report goes beside the first file.
    #[arg(long, num_args = 1..)]
    replay_upstream: Vec<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, log_path) = match &args.replay {
        None if !args.replay_upstream.is_empty() => {
            let run = rmr1::eval::upstream::load_rmb(&args.replay_upstream)?;
            let report = report::score(&run.header, &run.records, Vec::new())?;
            println!(
                "{} result rows; upstream's own `results` flag disagrees with rmr1's reading of \
                 the output on {}{}",
                run.records.len(),
                run.disagreements.len(),
                if run.disagreements.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (first: {})",
                        run.disagreements[..run.disagreements.len().min(5)].join(", ")
                    )
                }
            );
            (report, args.replay_upstream[0].clone())
        }
        Some(path) => {
            let (header, records, _) = log::read(path)?;
            // Every verdict and correctness flag is recomputed from its raw output first.
            rmr1::eval::replay::verify(&records, header.both_orders)
                .with_context(|| format!("replaying {}", path.display()))?;
            (report::score(&header, &records, Vec::new())?, path.clone())
        }
        None => {
            let benchmark = args.benchmark.context("--benchmark is required")?;
            let target = match (&args.addr, &args.local) {
                (Some(addr), _) => Target::Remote {
                    addr: addr.clone(),
                    wait_seconds: args.wait,
                    access: args.remote.access()?,
                },
                (None, Some(local)) if local.model.is_some() => {
                    Target::Local(Box::new(local.clone()))
                }
                (None, _) => bail!("give --addr <server> or --model <path> to judge with"),
            };
            let log_path = args
                .log
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("eval-{}.jsonl", benchmark.as_str())));
            let options = EvalOptions {
                benchmark,
                data: args.data.clone().context("--data is required")?,
                log: log_path.clone(),
                target,
                model: args.model_name.clone(),
                concurrency: args.concurrency,
                seed: args.seed,
                both_orders: args.both_orders,
                max_new_tokens: args.max_new_tokens,
                on_bad_record: args.on_bad_record,
            };
            (runtime.block_on(runner::run(options))?, log_path)
        }
    };
    let report_path = args
        .report
        .unwrap_or_else(|| log_path.with_extension("report.json"));
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("{}", report.markdown);
    println!("report: {}", report_path.display());
    Ok(())
}
