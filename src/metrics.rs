//! Prometheus metrics: names, help texts and buckets in one place, and the `/metrics` listener.
//!
//! Code everywhere records through the `metrics` facade (a no-op until a recorder is installed, so
//! library users and tests pay nothing). Names follow vLLM's semantics with our own prefix, so
//! existing dashboards map one-to-one: `vllm:time_to_first_token_seconds` is
//! `rmr1_time_to_first_token_seconds` here.

use anyhow::{Context, Result};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;

pub const REQUESTS_RUNNING: &str = "rmr1_num_requests_running";
pub const REQUESTS_WAITING: &str = "rmr1_num_requests_waiting";
pub const KV_CACHE_USAGE: &str = "rmr1_kv_cache_usage_perc";
pub const PROMPT_TOKENS: &str = "rmr1_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "rmr1_generation_tokens_total";
pub const PREEMPTIONS: &str = "rmr1_num_preemptions_total";
pub const REQUEST_SUCCESS: &str = "rmr1_request_success_total";
pub const PREFIX_CACHE_QUERIES: &str = "rmr1_prefix_cache_queries_total";
pub const PREFIX_CACHE_HITS: &str = "rmr1_prefix_cache_hits_total";
pub const TIME_TO_FIRST_TOKEN: &str = "rmr1_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "rmr1_inter_token_latency_seconds";
pub const E2E_LATENCY: &str = "rmr1_e2e_request_latency_seconds";
pub const QUEUE_TIME: &str = "rmr1_request_queue_time_seconds";
pub const STEP_TIME: &str = "rmr1_engine_step_seconds";
pub const STEP_TOKENS: &str = "rmr1_iteration_tokens_total";
pub const JUDGE_VERDICTS: &str = "rmr1_judge_verdicts_total";
pub const JUDGE_PARSE_FAILURES: &str = "rmr1_judge_parse_failures_total";
pub const JUDGE_PROB_A: &str = "rmr1_judge_prob_a";
pub const JUDGE_LATENCY: &str = "rmr1_judge_latency_seconds";
pub const RPC_REQUESTS: &str = "rmr1_rpc_requests_total";
pub const TRAIN_JOBS: &str = "rmr1_train_jobs";
pub const TRAIN_JOBS_CREATED: &str = "rmr1_train_jobs_created_total";
pub const TRAIN_JOBS_FINISHED: &str = "rmr1_train_jobs_finished_total";
pub const TRAIN_STEP: &str = "rmr1_train_step";
pub const TRAIN_LOSS: &str = "rmr1_train_loss";
pub const TRAIN_TOKENS_PER_SECOND: &str = "rmr1_train_tokens_per_second";
pub const TRAIN_REWARD: &str = "rmr1_train_reward_mean";
pub const TRAIN_KL: &str = "rmr1_train_kl";
pub const TRAIN_ROLLOUT_TOKENS_PER_SECOND: &str = "rmr1_train_rollout_tokens_per_second";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const PROBABILITY_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the first handle) and, when
/// `listen` is given, serves `GET /metrics` there on the current tokio runtime (see
/// [`crate::api::metrics_http`]: every other path is 404).
pub async fn install(listen: Option<SocketAddr>) -> Result<PrometheusHandle> {
    let handle = install_recorder()?;
    if let Some(addr) = listen {
        crate::api::metrics_http::serve(addr, handle.clone()).await?;
    }
    Ok(handle)
}

/// The recorder alone, with no listener.
pub fn install_recorder() -> Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STEP_TOKENS.into()), TOKEN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(JUDGE_PROB_A.into()), PROBABILITY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    describe_all();
    // The exporter's own listener would run upkeep (draining histogram samples into their
    // buckets); without it, do that here, or memory grows between scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("rmr1-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .context("starting the metrics upkeep thread")?;
    let _ = HANDLE.set(handle.clone());
    Ok(HANDLE.get().cloned().unwrap_or(handle))
}

fn describe_all() {
    describe_gauge!(REQUESTS_RUNNING, "Sequences in the running batch.");
    describe_gauge!(
        REQUESTS_WAITING,
        "Sequences waiting for admission (incl. preempted)."
    );
    describe_gauge!(KV_CACHE_USAGE, "Fraction of KV cache blocks in use (0-1).");
    describe_counter!(PROMPT_TOKENS, Unit::Count, "Prefill tokens processed.");
    describe_counter!(GENERATION_TOKENS, Unit::Count, "Tokens generated.");
    describe_counter!(
        PREEMPTIONS,
        Unit::Count,
        "Sequences preempted for KV space."
    );
    describe_counter!(
        REQUEST_SUCCESS,
        Unit::Count,
        "Finished requests by finished_reason."
    );
    describe_counter!(
        PREFIX_CACHE_QUERIES,
        Unit::Count,
        "Prompt tokens looked up in the prefix cache."
    );
    describe_counter!(
        PREFIX_CACHE_HITS,
        Unit::Count,
        "Prompt tokens found in the prefix cache."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Submission to first generated token."
    );
    describe_histogram!(
        INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time between generated tokens of a request."
    );
    describe_histogram!(E2E_LATENCY, Unit::Seconds, "Submission to finish.");
    describe_histogram!(QUEUE_TIME, Unit::Seconds, "Submission to first scheduling.");
    describe_histogram!(
        STEP_TIME,
        Unit::Seconds,
        "Duration of one engine step (forward + sampling)."
    );
    describe_histogram!(STEP_TOKENS, Unit::Count, "Tokens in one engine step.");
    describe_counter!(
        JUDGE_VERDICTS,
        Unit::Count,
        "Judgments by verdict (a, b, invalid)."
    );
    describe_counter!(
        JUDGE_PARSE_FAILURES,
        Unit::Count,
        "Judgments without a usable verdict, by reason."
    );
    describe_histogram!(
        JUDGE_PROB_A,
        "P(candidate A wins) of judgments that reached the verdict."
    );
    describe_histogram!(JUDGE_LATENCY, Unit::Seconds, "Judge RPC latency by rpc.");
    describe_counter!(RPC_REQUESTS, Unit::Count, "RPCs by rpc and status code.");
    describe_gauge!(TRAIN_JOBS, "Training jobs by state.");
    describe_counter!(TRAIN_JOBS_CREATED, Unit::Count, "Training jobs created.");
    describe_counter!(
        TRAIN_JOBS_FINISHED,
        Unit::Count,
        "Training jobs finished, by outcome (succeeded, failed, cancelled)."
    );
    describe_gauge!(TRAIN_STEP, "Optimizer step of the running training job.");
    describe_gauge!(TRAIN_LOSS, "Latest training loss of the running job.");
    describe_gauge!(
        TRAIN_TOKENS_PER_SECOND,
        "Training throughput of the running job (tokens/s)."
    );
    describe_gauge!(
        TRAIN_REWARD,
        "Mean rollout reward of the running GRPO job's last step (-1..1)."
    );
    describe_gauge!(
        TRAIN_KL,
        "Mean k3 KL to the reference model over the last GRPO step's tokens."
    );
    describe_gauge!(
        TRAIN_ROLLOUT_TOKENS_PER_SECOND,
        "Tokens generated per second by the running GRPO job's rollouts."
    );
}
