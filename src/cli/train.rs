//! `rmr1 train`: submit, follow and manage training jobs on a server (rmr1.v1.TrainingService).
//!
//! Following a job is a Watch from the last sequence seen, so a dropped connection or a restarted
//! server loses nothing: the client reconnects and continues where it stopped.

use anyhow::{bail, Context, Result};
use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::{
    train_job_event, CancelTrainJobRequest, CreateTrainJobRequest, GetTrainJobRequest,
    ListCheckpointsRequest, ListTrainJobsRequest, TrainJob, TrainJobEvent, TrainJobState,
    TrainProgress, WatchTrainJobRequest,
};
use rmr1::api::remote::RemoteChannel;
use rmr1::api::training_convert::{spec_proto, state_from_proto, state_proto};
use rmr1::train::job::JobState;
use rmr1::train::TrainSpec;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::Code;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Server address (https:// for TLS). Training jobs need an admin token when the server
    /// authenticates (--token-file or RMR1_TOKEN).
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    remote: rmr1::remote_args::RemoteArgs,
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(clap::Subcommand)]
enum TrainCommand {
    /// Submit a job from a spec file (TrainSpec JSON, see deploy/training/) and follow it.
    Submit(SubmitArgs),
    /// Follow a job: progress, state changes, checkpoints; exits 0 if it succeeds.
    Attach { job_id: String },
    /// List jobs, oldest first.
    List(ListArgs),
    /// Show one job.
    Get { job_id: String },
    /// Cancel a job (queued: at once; running: at the trainer's next micro-batch).
    Cancel { job_id: String },
    /// List a job's checkpoints.
    Checkpoints { job_id: String },
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// The job spec (relative paths in it resolve on the server, against its first train root).
    #[arg(long)]
    spec: PathBuf,
    /// Job id; submitting the same id and spec again is a no-op. Default: generated.
    #[arg(long, default_value = "")]
    job_id: String,
    /// k=v, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Print the job id and return instead of following the job.
    #[arg(long)]
    detach: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only jobs in these states (queued, pending, running, succeeded, failed, cancelling,
    /// cancelled); repeatable.
    #[arg(long = "state", value_parser = parse_state)]
    states: Vec<JobState>,
    /// Only jobs with this label (k=v); repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not k=v"))
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(&s.to_ascii_uppercase()).ok_or_else(|| format!("{s:?} is not a job state"))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let channel = args.remote.access()?.connect(&args.addr).await?;
        let mut client = TrainingServiceClient::new(channel);
        match args.command {
            TrainCommand::Submit(a) => submit(&mut client, a).await,
            TrainCommand::Attach { job_id } => follow(&mut client, &job_id).await,
            TrainCommand::List(a) => list(&mut client, a).await,
            TrainCommand::Get { job_id } => {
                let job = client
                    .get_train_job(GetTrainJobRequest { job_id })
                    .await?
                    .into_inner();
                print_job(&job);
                Ok(())
            }
            TrainCommand::Cancel { job_id } => {
                let job = client
                    .cancel_train_job(CancelTrainJobRequest { job_id })
                    .await?
                    .into_inner();
                println!("{} {}", job.job_id, state_name(job.state));
                Ok(())
            }
            TrainCommand::Checkpoints { job_id } => {
                let checkpoints = client
                    .list_checkpoints(ListCheckpointsRequest { job_id })
                    .await?
                    .into_inner()
                    .checkpoints;
                println!("{:>8}  {:>10}  PATH", "STEP", "LOSS");
                for c in checkpoints {
                    let loss = c.loss.map_or("-".into(), |l| format!("{l:.4}"));
                    println!("{:>8}  {loss:>10}  {}", c.step, c.path);
                }
                Ok(())
            }
        }
    })
}

async fn submit(client: &mut TrainingServiceClient<RemoteChannel>, args: SubmitArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let spec = TrainSpec::from_json(&text)
        .with_context(|| format!("{} is not a training spec", args.spec.display()))?;
    let job = client
        .create_train_job(CreateTrainJobRequest {
            job_id: args.job_id,
            labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
            spec: Some(spec_proto(&spec)),
        })
        .await?
        .into_inner();
    if args.detach {
        println!("{}", job.job_id);
        return Ok(());
    }
    eprintln!("job {} {}", job.job_id, state_name(job.state));
    follow(client, &job.job_id).await
}

/// Watches `job_id` to its end, reconnecting from the last sequence seen; `Ok` only if it
/// succeeded.
async fn follow(client: &mut TrainingServiceClient<RemoteChannel>, job_id: &str) -> Result<()> {
    let mut after = 0;
    let mut bar = ProgressLine::default();
    let mut retry = Duration::from_secs(1);
    let mut last_contact = Instant::now();
    loop {
        let request = WatchTrainJobRequest {
            job_id: job_id.into(),
            after_sequence: after,
        };
        let ended = match client.watch_train_job(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            after = e.sequence;
                            last_contact = Instant::now();
                            retry = Duration::from_secs(1);
                            bar.show(&e);
                        }
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        };
        match ended {
            Ok(()) => break,
            Err(status) if retriable(status.code()) => {
                if last_contact.elapsed() > Duration::from_secs(600) {
                    bail!("lost the server for 10 minutes: {}", status.message());
                }
                bar.clear();
                eprintln!("connection lost ({}); reconnecting", status.message());
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(15));
            }
            Err(status) => return Err(status.into()),
        }
    }
    bar.clear();
    let job = client
        .get_train_job(GetTrainJobRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    match job.state() {
        TrainJobState::Succeeded => {
            for a in job.result.iter().flat_map(|r| &r.artifacts) {
                println!("artifact ({}): {}", a.format, a.path);
            }
            Ok(())
        }
        TrainJobState::Failed => {
            let e = job.error.unwrap_or_default();
            bail!("job {job_id} FAILED ({}): {}", e.code_name, e.message)
        }
        other => bail!("job {job_id} ended {}", state_name(other as i32)),
    }
}

fn retriable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// The one-line progress display on stderr; events print above it on stdout.
#[derive(Default)]
struct ProgressLine {
    drawn: bool,
}

impl ProgressLine {
    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    fn show(&mut self, e: &TrainJobEvent) {
        use train_job_event::Event;
        let line = match &e.event {
            Some(Event::Step(p)) => {
                self.draw(p);
                return;
            }
            Some(Event::StateChanged(s)) => {
                let from = match s.from() {
                    TrainJobState::Unspecified => String::new(),
                    from => format!("{} -> ", state_name(from as i32)),
                };
                format!("{from}{}: {}", state_name(s.to), s.message)
            }
            Some(Event::CheckpointSaved(c)) => {
                let loss = c.loss.map_or(String::new(), |l| format!(" (loss {l:.4})"));
                format!("checkpoint at step {}{loss}: {}", c.step, c.path)
            }
            Some(Event::Eval(ev)) => {
                let mut metrics: Vec<_> = ev.metrics.iter().collect();
                metrics.sort_by(|a, b| a.0.cmp(b.0));
                let m: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
                format!("eval at step {}: {}", ev.step, m.join(" "))
            }
            Some(Event::Log(l)) => format!("{}: {}", log_level(l.level()), l.message),
            None => return,
        };
        self.clear();
        println!("[{}] {line}", e.sequence);
    }

    fn draw(&mut self, p: &TrainProgress) {
        let metric = |k: &str| p.metrics.get(k).copied();
        let loss = metric("loss").map_or("-".into(), |l| format!("{l:.4}"));
        // SFT reports tokens_per_s; GRPO its reward and both halves of a step.
        let detail = match metric("reward_mean") {
            Some(reward) => format!(
                "reward {reward:.3}  acc {:.2}  kl {:.4}  rollout {:.0} tok/s  update {:.0} tok/s",
                metric("accuracy").unwrap_or(f64::NAN),
                metric("kl").unwrap_or(f64::NAN),
                metric("rollout_tokens_per_s").unwrap_or(f64::NAN),
                metric("trainer_tokens_per_s").unwrap_or(f64::NAN),
            ),
            None => {
                let rate = metric("tokens_per_s").map_or("-".into(), |r| format!("{r:.0}"));
                format!("{rate} tok/s")
            }
        };
        let eta = p.eta_seconds.map_or("?".into(), format_duration);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[Kstep {}/{}  epoch {}  loss {loss}  {detail}  ETA {eta}",
            p.step, p.total_steps, p.epoch
        );
        let _ = err.flush();
        self.drawn = true;
    }
}

fn log_level(level: rmr1::api::proto::LogLevel) -> &'static str {
    match level {
        rmr1::api::proto::LogLevel::Warn => "warning",
        rmr1::api::proto::LogLevel::Error => "error",
        _ => "info",
    }
}

fn state_name(state: i32) -> &'static str {
    state_from_proto(state).map_or("UNSPECIFIED", JobState::as_str)
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

async fn list(client: &mut TrainingServiceClient<RemoteChannel>, args: ListArgs) -> Result<()> {
    let states: Vec<i32> = args.states.iter().map(|s| state_proto(*s) as i32).collect();
    let labels: HashMap<String, String> = args.labels.into_iter().collect();
    println!(
        "{:<24} {:<11} {:>13} {:>9}  LABELS",
        "JOB_ID", "STATE", "STEP", "AGE"
    );
    let mut token = String::new();
    loop {
        let page = client
            .list_train_jobs(ListTrainJobsRequest {
                states: states.clone(),
                labels: labels.clone(),
                page_size: 100,
                page_token: token,
            })
            .await?
            .into_inner();
        for job in &page.jobs {
            let step = job
                .progress
                .as_ref()
                .map_or("-".into(), |p| format!("{}/{}", p.step, p.total_steps));
            let mut labels: Vec<String> =
                job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            println!(
                "{:<24} {:<11} {step:>13} {:>9}  {}",
                job.job_id,
                state_name(job.state),
                age(job.create_time_ms),
                labels.join(",")
            );
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now = rmr1::train::record::now_ms();
    format_duration((now - ms).max(0) as f64 / 1000.0)
}

fn print_job(job: &TrainJob) {
    println!("job_id:        {}", job.job_id);
    println!("state:         {}", state_name(job.state));
    if let Some(spec) = &job.spec {
        println!("base_model:    {}", spec.base_model);
        println!("output_dir:    {}", spec.output_dir);
        let adapter = spec
            .adapter
            .as_ref()
            .map_or("full fine-tuning".into(), |l| {
                format!("LoRA rank {} alpha {}", l.rank, l.alpha)
            });
        println!("adapter:       {adapter}");
    }
    let mut labels: Vec<String> = job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    println!("labels:        {}", labels.join(","));
    println!("created:       {} ago", age(job.create_time_ms));
    if job.start_time_ms > 0 {
        println!("started:       {} ago", age(job.start_time_ms));
    }
    if job.end_time_ms > 0 {
        println!("ended:         {} ago", age(job.end_time_ms));
    }
    println!("restarts:      {}", job.restart_count);
    if let Some(p) = &job.progress {
        let mut metrics: Vec<String> = p
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        metrics.sort();
        println!(
            "progress:      step {}/{} epoch {} tokens {}",
            p.step, p.total_steps, p.epoch, p.tokens_seen
        );
        println!("metrics:       {}", metrics.join(" "));
    }
    if let Some(e) = &job.error {
        println!("error:         {} ({}): {}", e.code_name, e.code, e.message);
    }
    if let Some(r) = &job.result {
        for a in &r.artifacts {
            println!("artifact:      ({}) {}", a.format, a.path);
        }
    }
}
