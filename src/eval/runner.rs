//! Runs an evaluation through the Judge API: against a remote server, or an in-process one on
//! loopback (`--model`). Judgments go over one `JudgeBatch` stream with a window of
//! `concurrency` requests in flight; each result is appended to the log as it arrives.

use super::log::{
    JudgmentLog, JudgmentRecord, RecordedOrder, RecordedRequest, RecordedTurn, RunHeader,
    LOG_VERSION,
};
use super::progress::Progress;
use super::replay;
use super::report::{self, EvalReport};
use super::task::{OnBadRecord, PairTask};
use super::Benchmark;
use crate::api::proto::judge_service_client::JudgeServiceClient;
use crate::api::proto::model_service_client::ModelServiceClient;
use crate::api::proto::{
    judge_batch_result, judge_request, JudgeOptions, JudgeRequest, ListModelsRequest, Message,
    ResponsePair, Role as WireRole, Verdict,
};
use crate::api::remote::{RemoteAccess, RemoteChannel};
use crate::api::GrpcServer;
use crate::judge::{Role, Turn};
use crate::serving_args::ModelArgs;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tonic::Code;

pub enum Target {
    /// A running server, e.g. `http://127.0.0.1:50051`, and how long to wait for it to finish
    /// loading its model.
    Remote {
        addr: String,
        wait_seconds: u64,
        access: RemoteAccess,
    },
    /// Load this model into an in-process server on loopback.
    Local(Box<ModelArgs>),
}

pub struct EvalOptions {
    pub benchmark: Benchmark,
    pub data: PathBuf,
    pub log: PathBuf,
    pub target: Target,
    /// Served model to ask for; empty = the server's default.
    pub model: String,
    pub concurrency: usize,
    pub seed: u64,
    pub both_orders: bool,
    pub max_new_tokens: Option<u32>,
    pub on_bad_record: OnBadRecord,
}

/// Whether the chosen reply is shown second. Upstream flips an unseeded coin per pair; this is
/// the same coin, seeded by `seed` and the pair's key so a rerun shows every pair the same way.
pub fn chosen_shown_second(seed: u64, key: &str) -> bool {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(key.as_bytes())
        .finalize();
    digest[0] & 1 == 1
}

fn wire(turns: &[Turn]) -> Vec<Message> {
    turns
        .iter()
        .map(|t| Message {
            role: match t.role {
                Role::User => WireRole::User,
                Role::Assistant => WireRole::Assistant,
                Role::System => WireRole::System,
            } as i32,
            content: t.content.clone(),
        })
        .collect()
}

/// The request for `task` and where its chosen reply went ("A" or "B").
fn request(
    task: &PairTask,
    options: &EvalOptions,
) -> (JudgeRequest, RecordedRequest, &'static str) {
    let second = !options.both_orders && chosen_shown_second(options.seed, &task.key);
    let (a, b, position) = if second {
        (&task.rejected, &task.chosen, "B")
    } else {
        (&task.chosen, &task.rejected, "A")
    };
    let request = JudgeRequest {
        request_id: task.key.clone(),
        model: options.model.clone(),
        input: Some(judge_request::Input::Responses(ResponsePair {
            conversation: wire(&task.conversation),
            response_a: a.clone(),
            response_b: b.clone(),
        })),
        options: Some(JudgeOptions {
            max_new_tokens: options.max_new_tokens,
            both_orders: options.both_orders,
            include_reasoning: true,
            ..JudgeOptions::default()
        }),
    };
    let recorded = RecordedRequest {
        conversation: task
            .conversation
            .iter()
            .map(|t| RecordedTurn {
                role: t.role.as_str().into(),
                content: t.content.clone(),
            })
            .collect(),
        response_a: a.clone(),
        response_b: b.clone(),
    };
    (request, recorded, position)
}

/// Loads the data, judges what the log does not have yet, and scores the complete log.
pub async fn run(options: EvalOptions) -> Result<EvalReport> {
    let loaded = options
        .benchmark
        .load(&options.data, options.on_bad_record)?;
    if loaded.tasks.is_empty() {
        bail!("{} holds no judgments to make", options.data.display());
    }
    let (url, access, _server) = match &options.target {
        Target::Remote {
            addr,
            wait_seconds,
            access,
        } => {
            let ready = crate::api::readiness::health(addr, access).await?
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving);
            if !ready && *wait_seconds > 0 {
                eprintln!("waiting up to {wait_seconds} s for {addr} to serve its model");
            }
            crate::api::readiness::wait_until_serving(addr, access, *wait_seconds).await?;
            (addr.clone(), access.clone(), None)
        }
        Target::Local(args) => {
            let server = GrpcServer::start("127.0.0.1:0".parse()?).await?;
            server.load_model(args.spec()?, args.options()).await?;
            let url = format!("http://{}", server.local_addr());
            (url, RemoteAccess::default(), Some(server))
        }
    };
    let channel = access.connect(&url).await?;
    let model = served_model_name(channel.clone(), &options.model).await?;
    let header = RunHeader {
        rmr1_eval_log: LOG_VERSION,
        benchmark: options.benchmark,
        data: options.data.display().to_string(),
        total: loaded.tasks.len(),
        seed: options.seed,
        both_orders: options.both_orders,
        max_new_tokens: options.max_new_tokens,
        model,
        completeness: loaded.completeness.clone(),
    };
    let mut log = JudgmentLog::open(&options.log, header)?;
    let done = log.done_keys();
    let pending: Vec<&PairTask> = loaded
        .tasks
        .iter()
        .filter(|t| !done.contains(t.key.as_str()))
        .collect();
    let resumed = log.records.len();
    if resumed > 0 {
        eprintln!(
            "resuming {}: {resumed} judgments already in the log, {} to go",
            options.log.display(),
            pending.len()
        );
    }
    let failures = judge_all(channel, &options, &pending, &mut log).await?;
    if failures > 0 {
        bail!(
            "{failures} judgments failed (see the log above); {} of {} are in {}: rerun the same \
             command to resume",
            log.records.len(),
            log.header.total,
            options.log.display()
        );
    }
    report::score(&log.header, &log.records, loaded.skipped)
}

async fn served_model_name(channel: RemoteChannel, requested: &str) -> Result<String> {
    let models = ModelServiceClient::new(channel)
        .list_models(ListModelsRequest {})
        .await
        .context("listing the server's models")?
        .into_inner()
        .models;
    let found = models.iter().find(|m| {
        if requested.is_empty() {
            m.is_default
        } else {
            m.name == requested || m.source == requested || m.manifest == requested
        }
    });
    match found {
        Some(m) => Ok(m.name.clone()),
        None => bail!(
            "the server has no model {requested:?}; it serves: {}",
            models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Sends `pending` with at most `options.concurrency` in flight and logs each result. Returns the
/// number of judgments that failed for a reason other than invalid input (those are not logged,
/// so a rerun retries them).
async fn judge_all(
    channel: RemoteChannel,
    options: &EvalOptions,
    pending: &[&PairTask],
    log: &mut JudgmentLog,
) -> Result<usize> {
    let mut in_flight: HashMap<String, (&PairTask, RecordedRequest, &'static str)> = HashMap::new();
    let mut requests = Vec::with_capacity(pending.len());
    for task in pending {
        let (request, recorded, position) = request(task, options);
        in_flight.insert(task.key.clone(), (task, recorded, position));
        requests.push(request);
    }
    let window = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let (tx, rx) = mpsc::channel(options.concurrency.max(1));
    let producer_window = window.clone();
    let producer = tokio::spawn(async move {
        for request in requests {
            match producer_window.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    let mut client = JudgeServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut results = client
        .judge_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut progress = Progress::new(
        options.benchmark.as_str(),
        log.header.total,
        log.records.len(),
    );
    let mut failures = 0;
    let mut errors = log.records.iter().filter(|r| r.error).count();
    progress.update(log.records.len(), errors);
    while let Some(item) = results
        .message()
        .await
        .context("the judge batch stream broke")?
    {
        window.add_permits(1);
        let Some((task, recorded, position)) = in_flight.remove(&item.request_id) else {
            bail!(
                "the server answered an unknown request id {:?}",
                item.request_id
            );
        };
        let record = match item.outcome {
            Some(judge_batch_result::Outcome::Response(r)) => {
                let verdict = match r.verdict() {
                    Verdict::A => "A",
                    Verdict::B => "B",
                    _ => "INVALID",
                };
                let prob_chosen = if position == "A" { r.prob_a } else { r.prob_b };
                let (correct, error) = replay::judgment_outcome(verdict, position);
                let orders = if options.both_orders {
                    r.orders
                        .iter()
                        .map(|o| RecordedOrder {
                            swapped: o.swapped,
                            raw_output: o.raw_output.clone(),
                            prob_a: o.prob_a,
                            prob_forced: o.prob_forced,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                JudgmentRecord {
                    key: task.key.clone(),
                    group: task.group.clone(),
                    chosen_position: position.into(),
                    verdict: verdict.into(),
                    invalid_reason: (!r.invalid_reason.is_empty()).then_some(r.invalid_reason),
                    prob_chosen,
                    correct,
                    error,
                    raw_output: r.raw_output,
                    orders,
                    request: recorded,
                }
            }
            // The pair itself cannot be judged (e.g. longer than the context): a final error,
            // counted wrong like an invalid verdict.
            Some(judge_batch_result::Outcome::Error(e))
                if e.code == Code::InvalidArgument as i32 =>
            {
                JudgmentRecord {
                    key: task.key.clone(),
                    group: task.group.clone(),
                    chosen_position: position.into(),
                    verdict: "INVALID".into(),
                    invalid_reason: Some(format!("{}{}", replay::REFUSED_PREFIX, e.message)),
                    prob_chosen: None,
                    correct: false,
                    error: true,
                    raw_output: String::new(),
                    orders: Vec::new(),
                    request: recorded,
                }
            }
            Some(judge_batch_result::Outcome::Error(e)) => {
                eprintln!("\n{}: {} (code {})", task.key, e.message, e.code);
                failures += 1;
                continue;
            }
            None => bail!("a batch result for {} carried no outcome", task.key),
        };
        errors += record.error as usize;
        log.append(record)?;
        progress.update(log.records.len(), errors);
    }
    producer.await?;
    // Requests the server never answered (it went away mid-stream) are retried by a rerun.
    Ok(failures + in_flight.len())
}
