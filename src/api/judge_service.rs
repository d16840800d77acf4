//! `JudgeService`: unary, server-streaming and batch judgments, and ranking.
//!
//! Cancellation: a unary handler's future is dropped when the client cancels or its deadline
//! passes, which drops the engine streams inside it. The streaming handlers run in tasks that
//! watch their output channel and return (dropping their judgments) as soon as the client is gone.

use super::access::Caller;
use super::convert;
use super::drain::{self, Drain};
use super::proto::judge_service_server::JudgeService;
use super::proto::{
    self, judge_batch_result, judge_stream_event, BatchError, BatchRejection, JudgeBatchResult,
    JudgeRequest, JudgeResponse, JudgeStreamEvent, RankRequest, RankResponse, ReasoningDelta,
};
use super::registry::ModelRegistry;
use super::status::from_judge_error;
use crate::judge::judge_model::JudgeModel;
use crate::judge::pipeline::{DeltaSink, JudgeParams};
use crate::judge::ranking::default_strategy;
use crate::judge::{PairInput, RankStrategy};
use crate::metrics as m;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Judgments one `JudgeBatch` stream keeps in flight; the stream is read no faster, so a client
/// sending more is slowed by HTTP/2 flow control instead of refused.
pub const MAX_BATCH_IN_FLIGHT: usize = 1024;
/// Candidates one `Rank` call may compare.
pub const MAX_RANK_CANDIDATES: usize = 64;
/// Most candidates an explicit ALL_PAIRS ranking may have: it costs N·(N−1) judgments (240 at 16),
/// so one call cannot turn into thousands of generations (4,032 at 64). The default strategy
/// switches to a knockout long before (above 8).
pub const MAX_ALL_PAIRS_CANDIDATES: usize = 16;

pub struct JudgeApi {
    pub registry: Arc<ModelRegistry>,
    /// Refuses new judgments once the server drains, and counts the running ones.
    pub drain: Arc<Drain>,
}

/// One judge RPC (or batch item) for `rmr1_rpc_requests_total` and the latency histogram: recorded
/// with its status when it finishes, or as CANCELLED when the caller went away (client cancel,
/// deadline) and the work was dropped before it could finish.
struct RpcCall {
    rpc: &'static str,
    started: Instant,
    recorded: bool,
}

impl RpcCall {
    fn start(rpc: &'static str) -> Self {
        Self {
            rpc,
            started: Instant::now(),
            recorded: false,
        }
    }

    fn finish(mut self, result: &Result<impl Sized, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        self.recorded = true;
        metrics::counter!(m::RPC_REQUESTS, "rpc" => self.rpc, "code" => format!("{code:?}"))
            .increment(1);
        metrics::histogram!(m::JUDGE_LATENCY, "rpc" => self.rpc)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(tonic::Code::Cancelled);
        }
    }
}

/// A judge request after validation: everything the pipeline needs, nothing left to check.
struct ValidJudgeRequest {
    request_id: String,
    model: Arc<JudgeModel>,
    input: PairInput,
    params: JudgeParams,
    include_reasoning: bool,
}

impl ValidJudgeRequest {
    fn new(
        registry: &ModelRegistry,
        request: &JudgeRequest,
        caller: &Caller,
    ) -> Result<Self, Status> {
        let model = registry.get(&request.model)?;
        let input = convert::pair_input(request)?;
        let params = convert::judge_params(request.options.as_ref(), &model, caller)?;
        Ok(Self {
            request_id: request.request_id.clone(),
            model,
            input,
            params,
            include_reasoning: request
                .options
                .as_ref()
                .is_some_and(|o| o.include_reasoning),
        })
    }

    async fn run(&self, deltas: Option<&DeltaSink>) -> Result<JudgeResponse, Status> {
        let report = self
            .model
            .judge(&self.input, &self.params, deltas)
            .await
            .map_err(|e| from_judge_error(&e))?;
        tracing::info!(
            verdict = ?report.combined.verdict,
            prob_a = ?report.combined.p_a,
            completion_tokens = report.usage.completion_tokens,
            seconds = report.elapsed.as_secs_f64(),
            "judged"
        );
        Ok(convert::judge_response(
            &self.request_id,
            &self.model,
            &report,
            self.include_reasoning,
        ))
    }
}

/// Validates and runs one judgment (unary and batch RPCs).
async fn judge_one(
    registry: &ModelRegistry,
    request: &JudgeRequest,
    caller: &Caller,
) -> Result<JudgeResponse, Status> {
    ValidJudgeRequest::new(registry, request, caller)?
        .run(None)
        .await
}

#[tonic::async_trait]
impl JudgeService for JudgeApi {
    async fn judge(
        &self,
        request: Request<JudgeRequest>,
    ) -> Result<Response<JudgeResponse>, Status> {
        let call = RpcCall::start("Judge");
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let span = tracing::info_span!(
            "judge",
            request_id = %request.request_id,
            client = %caller.identity
        );
        let result = match self.drain.enter() {
            Ok(_in_flight) => {
                judge_one(&self.registry, &request, &caller)
                    .instrument(span)
                    .await
            }
            Err(status) => Err(status),
        };
        call.finish(&result);
        result.map(Response::new)
    }

    type JudgeStreamStream = ReceiverStream<Result<JudgeStreamEvent, Status>>;

    async fn judge_stream(
        &self,
        request: Request<JudgeRequest>,
    ) -> Result<Response<Self::JudgeStreamStream>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let call = RpcCall::start("JudgeStream");
        // Bad requests fail as a status, not as a stream item.
        let prepared = self.drain.enter().and_then(|guard| {
            Ok((
                guard,
                ValidJudgeRequest::new(&self.registry, &request, &caller)?,
            ))
        });
        let (in_flight, valid) = match prepared {
            Ok(prepared) => prepared,
            Err(status) => {
                call.finish(&Err::<(), _>(status.clone()));
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let span = tracing::info_span!("judge_stream", request_id = %request.request_id);
        tokio::spawn(
            async move {
                let _in_flight = in_flight;
                // Dropped unfinished (client gone) it counts as CANCELLED.
                let call = call;
                let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
                let work = valid.run(Some(&delta_tx));
                tokio::pin!(work);
                let result = loop {
                    tokio::select! {
                        _ = tx.closed() => {
                            tracing::info!("client went away; judgment cancelled");
                            return;
                        }
                        Some((order, text)) = delta_rx.recv() => {
                            let _ = tx.send(Ok(delta_event(order, text))).await;
                        }
                        result = &mut work => break result,
                    }
                };
                while let Ok((order, text)) = delta_rx.try_recv() {
                    let _ = tx.send(Ok(delta_event(order, text))).await;
                }
                call.finish(&result);
                let event = result.map(|r| JudgeStreamEvent {
                    event: Some(judge_stream_event::Event::Result(r)),
                });
                let _ = tx.send(event).await;
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type JudgeBatchStream = ReceiverStream<Result<JudgeBatchResult, Status>>;

    async fn judge_batch(
        &self,
        request: Request<Streaming<JudgeRequest>>,
    ) -> Result<Response<Self::JudgeBatchStream>, Status> {
        if self.drain.is_draining() {
            return Err(drain::shutting_down());
        }
        let caller = Caller::of(&request);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run_batch(
            self.registry.clone(),
            self.drain.clone(),
            caller,
            inbound,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let call = RpcCall::start("Rank");
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let span = tracing::info_span!("rank", request_id = %request.request_id);
        let result = match self.drain.enter() {
            Ok(_in_flight) => {
                rank_one(&self.registry, &request, &caller)
                    .instrument(span)
                    .await
            }
            Err(status) => Err(status),
        };
        call.finish(&result);
        result.map(Response::new)
    }
}

fn delta_event(order: usize, text: String) -> JudgeStreamEvent {
    JudgeStreamEvent {
        event: Some(judge_stream_event::Event::Delta(ReasoningDelta {
            order: order as u32,
            text,
        })),
    }
}

/// A failed item; `rejection` says when it was refused for a reason about the stream (a duplicate
/// or missing id, the drain) rather than judged and failed.
fn batch_error(request_id: String, status: Status, rejection: BatchRejection) -> JudgeBatchResult {
    JudgeBatchResult {
        request_id,
        outcome: Some(judge_batch_result::Outcome::Error(BatchError {
            code: status.code() as i32,
            message: status.message().to_string(),
            rejection: rejection as i32,
        })),
    }
}

/// Reads requests while fewer than [`MAX_BATCH_IN_FLIGHT`] run, judges each in its own task and
/// sends results as they complete. Returns (aborting every judgment) when the client goes away.
///
/// A request that cannot be read (bytes that do not decode) stops the reading, since nothing after
/// it can be trusted to be framed as the client meant: the judgments already accepted are finished
/// and sent, then the stream ends with a non-OK status that says so — never OK with results lost.
///
/// When the server starts draining, items that arrive afterwards are answered UNAVAILABLE one by
/// one, the running ones finish, and the stream then ends UNAVAILABLE with how many were refused.
async fn run_batch(
    registry: Arc<ModelRegistry>,
    drain: Arc<Drain>,
    caller: Caller,
    mut inbound: Streaming<JudgeRequest>,
    tx: mpsc::Sender<Result<JudgeBatchResult, Status>>,
) {
    let mut running: JoinSet<String> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut inbound_open = true;
    let mut accepted = 0usize;
    let mut broken: Option<Status> = None;
    let mut refused_in_drain = 0usize;
    while inbound_open || !running.is_empty() {
        if drain.is_draining() && running.is_empty() {
            break;
        }
        tokio::select! {
            _ = tx.closed() => return,
            // Wakes the loop when draining begins, to end an idle stream.
            _ = drain.began(), if !drain.is_draining() => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done {
                    in_flight.remove(&id);
                }
            }
            next = inbound.next(), if inbound_open && running.len() < MAX_BATCH_IN_FLIGHT => {
                let request = match next {
                    None => {
                        inbound_open = false;
                        continue;
                    }
                    Some(Err(status)) => {
                        tracing::info!(%status, "batch stream broken by the client");
                        inbound_open = false;
                        broken = Some(status);
                        continue;
                    }
                    Some(Ok(request)) => request,
                };
                let id = request.request_id.clone();
                let guard = match drain.enter() {
                    Ok(guard) => guard,
                    Err(status) => {
                        refused_in_drain += 1;
                        let item = batch_error(id, status, BatchRejection::ShuttingDown);
                        let _ = tx.send(Ok(item)).await;
                        continue;
                    }
                };
                accepted += 1;
                if id.is_empty() {
                    let status = Status::invalid_argument("request_id is required in JudgeBatch");
                    let item = batch_error(id, status, BatchRejection::MissingRequestId);
                    let _ = tx.send(Ok(item)).await;
                    continue;
                }
                if !in_flight.insert(id.clone()) {
                    let status = Status::invalid_argument(format!(
                        "request_id {id:?} is already in flight on this stream; this answers the \
                         duplicate, the first item's result comes separately"
                    ));
                    let item = batch_error(id, status, BatchRejection::DuplicateRequestId);
                    let _ = tx.send(Ok(item)).await;
                    continue;
                }
                let registry = registry.clone();
                let caller = caller.clone();
                let tx = tx.clone();
                let span = tracing::info_span!("judge_batch", request_id = %id);
                running.spawn(
                    async move {
                        let _in_flight = guard;
                        let call = RpcCall::start("JudgeBatch");
                        let result = judge_one(&registry, &request, &caller).await;
                        call.finish(&result);
                        let item = match result {
                            Ok(response) => JudgeBatchResult {
                                request_id: request.request_id.clone(),
                                outcome: Some(judge_batch_result::Outcome::Response(response)),
                            },
                            Err(status) => batch_error(
                                request.request_id.clone(),
                                status,
                                BatchRejection::Unspecified,
                            ),
                        };
                        let _ = tx.send(Ok(item)).await;
                        request.request_id
                    }
                    .instrument(span),
                );
            }
        }
    }
    // Ended by the drain while the client still had the stream open (not a client that finished).
    if drain.is_draining() && inbound_open && broken.is_none() {
        let _ = tx
            .send(Err(Status::unavailable(format!(
                "the server is shutting down: this stream's {accepted} accepted requests were \
                 answered; {refused_in_drain} sent during the shutdown were refused, and nothing \
                 more will be read — send the rest to another replica"
            ))))
            .await;
        return;
    }
    if let Some(status) = broken {
        let message = format!(
            "JudgeBatch stopped reading after {accepted} requests: message {} could not be read \
             ({}); the {accepted} accepted requests were answered, nothing after it was judged",
            accepted + 1,
            status.message()
        );
        let code = match status.code() {
            tonic::Code::InvalidArgument => tonic::Code::InvalidArgument,
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => status.code(),
            _ => tonic::Code::Aborted,
        };
        let _ = tx.send(Err(Status::new(code, message))).await;
    }
}

async fn rank_one(
    registry: &ModelRegistry,
    request: &RankRequest,
    caller: &Caller,
) -> Result<RankResponse, Status> {
    let model = registry.get(&request.model)?;
    let conversation = convert::turns("conversation", &request.conversation)?;
    let n = request.candidates.len();
    if n < 2 {
        return Err(Status::invalid_argument(format!(
            "candidates needs at least 2 entries, got {n}"
        )));
    }
    if n > MAX_RANK_CANDIDATES {
        return Err(Status::invalid_argument(format!(
            "candidates has {n} entries; at most {MAX_RANK_CANDIDATES} are accepted"
        )));
    }
    // The conversation's own checks (roles, ends with a user message).
    PairInput::Responses {
        conversation: conversation.clone(),
        response_a: request.candidates[0].clone(),
        response_b: request.candidates[1].clone(),
    }
    .validate()
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let params = convert::judge_params(request.options.as_ref(), &model, caller)?;
    let strategy = match proto::RankStrategy::try_from(request.strategy) {
        Ok(proto::RankStrategy::Unspecified) => default_strategy(n),
        Ok(proto::RankStrategy::AllPairs) if n > MAX_ALL_PAIRS_CANDIDATES => {
            return Err(Status::invalid_argument(format!(
                "strategy ALL_PAIRS judges every ordered pair: {} judgments for {n} candidates; \
                 at most {MAX_ALL_PAIRS_CANDIDATES} candidates are accepted with it — use KNOCKOUT \
                 (about 2·N judgments) or leave strategy unset",
                n * (n - 1)
            )))
        }
        Ok(proto::RankStrategy::AllPairs) => RankStrategy::AllPairs,
        Ok(proto::RankStrategy::Knockout) => RankStrategy::Knockout,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "strategy {} is unknown",
                request.strategy
            )))
        }
    };
    let seed = params.seed.unwrap_or(0);
    let report = model
        .rank(&conversation, &request.candidates, &params, strategy, seed)
        .await
        .map_err(|e| from_judge_error(&e))?;
    tracing::info!(order = ?report.order, method = report.method, "ranked");
    Ok(convert::rank_response(&request.request_id, &model, &report))
}
