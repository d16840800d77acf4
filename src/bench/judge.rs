//! `rmr1 bench judge`: judge requests over gRPC on loopback at several concurrencies, against an
//! in-process server. Prints throughput, time to first token and end-to-end percentiles, and the
//! prefix-cache hit rate (the instruct system prompt is shared by every request).

use crate::api::proto::judge_service_client::JudgeServiceClient;
use crate::api::proto::{
    judge_request, judge_stream_event, JudgeOptions, JudgeRequest, Message, ResponsePair, Role,
};
use crate::api::GrpcServer;
use crate::serving_args::ModelArgs;
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(clap::Args, Debug, Clone)]
pub struct JudgeBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Requests per level; default 2 × concurrency (at least 4).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Tokens each judgment may generate (EOS still ends it early).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: u32,
    /// Judge both orders in each request.
    #[arg(long)]
    pub both_orders: bool,
}

const TOPICS: &[(&str, &str, &str)] = &[
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "It boils at 90 degrees Celsius."),
    ("Write a haiku about autumn leaves.", "Red leaves drift and fall, / the old maple lets them go, / wind carries their names.", "Leaves are falling now. They are red and also brown. It is autumn time."),
    ("How do I reverse a list in Python?", "Use `my_list.reverse()` in place, or `my_list[::-1]` for a reversed copy.", "You cannot reverse lists in Python; convert it to a string first."),
    ("Explain what a prime number is.", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, like 2, 3, 5 and 7.", "A prime number is any odd number."),
];

/// Request `i`: a topic, varied so that only the system prompt is shared between requests.
fn request(i: usize, args: &JudgeBenchArgs) -> JudgeRequest {
    let (question, good, bad) = TOPICS[i % TOPICS.len()];
    let (a, b) = if i.is_multiple_of(2) {
        (good, bad)
    } else {
        (bad, good)
    };
    JudgeRequest {
        request_id: format!("bench-{i}"),
        model: String::new(),
        input: Some(judge_request::Input::Responses(ResponsePair {
            conversation: vec![Message {
                role: Role::User as i32,
                content: format!("{question} (case {i})"),
            }],
            response_a: a.into(),
            response_b: b.into(),
        })),
        options: Some(JudgeOptions {
            max_new_tokens: Some(args.max_new_tokens),
            both_orders: args.both_orders,
            ..JudgeOptions::default()
        }),
    }
}

#[derive(Default, Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
    completion_tokens: u32,
    prompt_tokens: u32,
    cached_tokens: u32,
}

async fn one(client: &mut JudgeServiceClient<Channel>, request: JudgeRequest) -> Result<Sample> {
    let started = Instant::now();
    let mut stream = client.judge_stream(request).await?.into_inner();
    let mut ttft = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(judge_stream_event::Event::Delta(_)) => {
                ttft.get_or_insert_with(|| started.elapsed());
            }
            Some(judge_stream_event::Event::Result(r)) => {
                let usage = r.usage.unwrap_or_default();
                return Ok(Sample {
                    ttft: ttft.unwrap_or_else(|| started.elapsed()),
                    total: started.elapsed(),
                    completion_tokens: usage.completion_tokens,
                    prompt_tokens: usage.prompt_tokens,
                    cached_tokens: usage.cached_tokens,
                });
            }
            None => {}
        }
    }
    anyhow::bail!("stream ended without a result")
}

struct Level {
    concurrency: usize,
    samples: Vec<Sample>,
    wall: Duration,
}

async fn run_level(
    url: &str,
    args: &JudgeBenchArgs,
    concurrency: usize,
    first: usize,
) -> Result<Level> {
    let n = args.requests.unwrap_or((2 * concurrency).max(4));
    let next = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = JudgeServiceClient::connect(url.to_string()).await?;
        let (next, samples, args) = (next.clone(), samples.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let sample = one(&mut client, request(first + i, &args)).await?;
                samples.lock().await.push(sample);
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let wall = started.elapsed();
    let samples =
        Arc::try_unwrap(samples).map_err(|_| anyhow::anyhow!("workers still hold samples"))?;
    Ok(Level {
        concurrency,
        samples: samples.into_inner(),
        wall,
    })
}

/// Nearest-rank percentile of `values` (sorted here).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

pub fn run(args: JudgeBenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: JudgeBenchArgs) -> Result<()> {
    let server = GrpcServer::start("127.0.0.1:0".parse()?).await?;
    server
        .load_model(args.model.spec()?, args.model.options())
        .await?;
    let url = format!("http://{}", server.local_addr());
    // One judgment first, so every level starts with the system prompt in the prefix cache.
    let mut client = JudgeServiceClient::connect(url.clone()).await?;
    one(&mut client, request(usize::MAX / 2, &args)).await?;

    let mut levels = Vec::new();
    let mut first = 0;
    for &c in &args.concurrency {
        let level = run_level(&url, &args, c, first).await?;
        first += level.samples.len();
        eprintln!(
            "concurrency {c}: {} judgments in {:.1} s",
            level.samples.len(),
            level.wall.as_secs_f64()
        );
        levels.push(level);
    }
    println!(
        "\nrmr1 bench judge: {} ({} new tokens max{}), gRPC on loopback\n",
        args.model.spec()?,
        args.max_new_tokens,
        if args.both_orders {
            ", both orders"
        } else {
            ""
        }
    );
    println!("| concurrency | judgments | judgments/s | output tok/s | vs C=1 | TTFT p50 s | TTFT p99 s | e2e p50 s | e2e p99 s | prefix-cache hit |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut base = None;
    for level in &levels {
        let secs = level.wall.as_secs_f64();
        let tokens: u32 = level.samples.iter().map(|s| s.completion_tokens).sum();
        let prompt: u32 = level.samples.iter().map(|s| s.prompt_tokens).sum();
        let cached: u32 = level.samples.iter().map(|s| s.cached_tokens).sum();
        let throughput = tokens as f64 / secs;
        let base = *base.get_or_insert(throughput);
        let mut ttft: Vec<f64> = level.samples.iter().map(|s| s.ttft.as_secs_f64()).collect();
        let mut e2e: Vec<f64> = level
            .samples
            .iter()
            .map(|s| s.total.as_secs_f64())
            .collect();
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}% |",
            level.concurrency,
            level.samples.len(),
            level.samples.len() as f64 / secs,
            throughput,
            throughput / base,
            percentile(&mut ttft, 50.0),
            percentile(&mut ttft, 99.0),
            percentile(&mut e2e, 50.0),
            percentile(&mut e2e, 99.0),
            100.0 * cached as f64 / prompt.max(1) as f64,
        );
    }
    server.shutdown().await
}
