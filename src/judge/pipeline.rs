//! One judgment through the engine: render the RM-R1 prompt for each order, generate, read the
//! verdict-token probabilities, parse, and combine the orders.
//!
//! Everything here is cancel-safe by construction: the engine streams live inside the returned
//! future, so when a caller drops it (client cancelled, deadline passed) the streams drop and the
//! engine frees their KV blocks at its next step.

use super::conversation::{InputError, PairInput};
use super::judge_model::JudgeModel;
use super::parse::{parse_judgment, ParsedJudgment};
use super::probability::{
    combine_orders, two_way_probability, Combined, OrderOutcome, VERDICT_PREFIX,
};
use super::prompt::judge_messages;
use super::verdict::{evaluation_verdict, rl_reward_verdict, InvalidReason, Side};
use crate::engine::{
    ClientId, EngineEvent, FinishReason, Finished, GenerateRequest, LogprobProbe, ProbeTrigger,
    SamplingParams, SubmitError, Usage,
};
use crate::metrics as m;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Generation settings of one judgment (already validated and defaulted by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub both_orders: bool,
    /// Who asked: the engine takes turns between clients.
    pub client: ClientId,
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("{0}")]
    InvalidInput(#[from] InputError),
    #[error("rendering the judge prompt: {0:#}")]
    Render(anyhow::Error),
    /// `order` 1 is the swapped presentation of a `both_orders` judgment.
    #[error("{}{error}", if *.order == 0 { "" } else { "swapped order: " })]
    Submit { order: usize, error: SubmitError },
    #[error("generation failed: {0}")]
    Engine(String),
    /// The engine stopped for good (see `engine::fault`); the server is going down.
    #[error(
        "the judge's engine failed and this server is restarting ({0}); retry on another replica"
    )]
    EngineFailed(String),
    /// More text than the model's context could hold, whatever it tokenizes to.
    #[error(
        "the conversation and responses hold {bytes} bytes of text; this model's context of \
         {context} tokens cannot hold more than {max} bytes (no token is longer than {per_token} \
         bytes)"
    )]
    TooLong {
        bytes: usize,
        max: usize,
        context: usize,
        per_token: usize,
    },
}

/// Text deltas as they are generated: `(order, text)`, order 0 = as given, 1 = swapped.
pub type DeltaSink = UnboundedSender<(usize, String)>;

/// One generation: the pair shown in one order.
#[derive(Debug, Clone)]
pub struct OrderReport {
    pub swapped: bool,
    /// Upstream's evaluation rule, as shown to the model (A = the candidate shown first).
    pub verdict_shown: Result<Side, InvalidReason>,
    /// Upstream's RL reward rule (last 80 characters, special tokens kept), as shown.
    pub strict_verdict_shown: Option<Side>,
    /// P(shown A) from the verdict token, renormalised over A/B.
    pub prob_a_shown: Option<f64>,
    /// True when the model never wrote `<answer>[[` and the probability was read by appending it
    /// after the output (see [`JudgeModel::judge`]).
    pub prob_forced: bool,
    pub parsed: ParsedJudgment,
    pub raw_output: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: crate::engine::request::Timings,
}

impl OrderReport {
    pub fn outcome(&self) -> OrderOutcome {
        OrderOutcome {
            verdict: self.verdict_shown,
            p_a_shown: self.prob_a_shown,
            swapped: self.swapped,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JudgeReport {
    pub orders: Vec<OrderReport>,
    /// In terms of the request's candidates.
    pub combined: Combined,
    pub usage: Usage,
    pub elapsed: Duration,
}

/// What one order's generation produced, before parsing.
struct Generated {
    finished: Finished,
    prompt_tokens: Vec<u32>,
    /// Last firing of the `<answer>[[` probe: log P(A), log P(B).
    verdict_logprobs: Option<(f32, f32)>,
}

impl JudgeModel {
    /// The prompt token ids for `input` shown as given.
    pub fn render_prompt(&self, input: &PairInput) -> Result<Vec<u32>, JudgeError> {
        self.tokenizer
            .encode_chat_prompt(&judge_messages(self.family(), input))
            .map_err(JudgeError::Render)
    }

    /// The prompts for `inputs`, rendered and tokenized on the blocking pool, a bounded number
    /// at a time: tokenizing a long request takes seconds of CPU, which on the async workers
    /// would stall every other call (health checks included).
    async fn render_prompts(&self, inputs: Vec<PairInput>) -> Result<Vec<Vec<u32>>, JudgeError> {
        let limit = &self.render_limit;
        let bytes = inputs.iter().map(PairInput::text_bytes).max().unwrap_or(0);
        if bytes > limit.max_input_bytes {
            return Err(JudgeError::TooLong {
                bytes,
                max: limit.max_input_bytes,
                context: self.engine.limits().max_model_len,
                per_token: limit.max_token_bytes,
            });
        }
        let _permit = limit
            .permits
            .acquire()
            .await
            .map_err(|e| JudgeError::Render(e.into()))?;
        let (tokenizer, family) = (self.tokenizer.clone(), self.family());
        tokio::task::spawn_blocking(move || {
            inputs
                .iter()
                .map(|input| {
                    tokenizer
                        .encode_chat_prompt(&judge_messages(family, input))
                        .map_err(JudgeError::Render)
                })
                .collect()
        })
        .await
        .map_err(|e| JudgeError::Render(e.into()))?
    }

    /// What an engine error means for this request: the engine's own death, or this request's.
    fn engine_error(&self, message: String) -> JudgeError {
        match self.engine.fault().get() {
            Some(reason) => JudgeError::EngineFailed(reason.to_string()),
            None => JudgeError::Engine(message),
        }
    }

    fn sampling(&self, params: &JudgeParams, order: usize) -> SamplingParams {
        SamplingParams {
            temperature: params.temperature,
            top_p: params.top_p,
            // Distinct but reproducible draws for the two orders.
            seed: params.seed.map(|s| s.wrapping_add(order as u64)),
            max_new_tokens: params.max_new_tokens,
            probes: self
                .verdict_tokens
                .map(|ids| LogprobProbe {
                    at: ProbeTrigger::AfterText(VERDICT_PREFIX.into()),
                    token_ids: ids.to_vec(),
                })
                .into_iter()
                .collect(),
            ..SamplingParams::default()
        }
    }

    /// Judges `input`, in both orders when asked. Requests for both orders are submitted together,
    /// so they run in the same batches and share the prompt prefix (the instruct system prompt)
    /// through the prefix cache.
    pub async fn judge(
        &self,
        input: &PairInput,
        params: &JudgeParams,
        deltas: Option<&DeltaSink>,
    ) -> Result<JudgeReport, JudgeError> {
        input.validate()?;
        let started = Instant::now();
        let swaps: &[bool] = if params.both_orders {
            &[false, true]
        } else {
            &[false]
        };
        let shown = swaps
            .iter()
            .map(|&swapped| {
                if swapped {
                    input.swapped()
                } else {
                    input.clone()
                }
            })
            .collect();
        let prompts = self.render_prompts(shown).await?;
        // Submit every order before awaiting any, and fail as a whole: dropping the streams of
        // already-submitted orders cancels them.
        let mut streams = Vec::with_capacity(prompts.len());
        for (order, prompt) in prompts.iter().enumerate() {
            let request = GenerateRequest {
                prompt_tokens: prompt.clone(),
                sampling: self.sampling(params, order),
            };
            let stream = self
                .engine
                .submit_for(&params.client, request)
                .map_err(|error| match error {
                    SubmitError::EngineStopped => self.engine_error(error.to_string()),
                    error => JudgeError::Submit { order, error },
                })?;
            streams.push(stream);
        }
        let generations = futures::future::try_join_all(
            streams
                .into_iter()
                .zip(prompts)
                .enumerate()
                .map(|(order, (stream, prompt))| collect(order, stream, prompt, deltas)),
        )
        .await
        .map_err(|error| match error {
            JudgeError::Engine(message) => self.engine_error(message),
            other => other,
        })?;

        let mut orders = Vec::with_capacity(generations.len());
        for (generated, &swapped) in generations.into_iter().zip(swaps) {
            orders.push(self.report(generated, swapped).await);
        }
        // Probabilities read by appending `<answer>[[` (the model wrote no verdict itself) are
        // reported, but must not turn an invalid judgment into a verdict.
        let decisive: Vec<OrderOutcome> = orders
            .iter()
            .map(|o| OrderOutcome {
                p_a_shown: o.prob_a_shown.filter(|_| !o.prob_forced),
                ..o.outcome()
            })
            .collect();
        let mut combined = combine_orders(&decisive);
        let all: Vec<OrderOutcome> = orders.iter().map(OrderReport::outcome).collect();
        combined.p_a = combine_orders(&all).p_a;
        record_judgment_metrics(&combined);
        let usage = orders.iter().fold(Usage::default(), |sum, o| Usage {
            prompt_tokens: sum.prompt_tokens + o.usage.prompt_tokens,
            completion_tokens: sum.completion_tokens + o.usage.completion_tokens,
            cached_tokens: sum.cached_tokens + o.usage.cached_tokens,
        });
        Ok(JudgeReport {
            orders,
            combined,
            usage,
            elapsed: started.elapsed(),
        })
    }

    async fn report(&self, generated: Generated, swapped: bool) -> OrderReport {
        let Generated {
            finished,
            prompt_tokens,
            verdict_logprobs,
        } = generated;
        let text = finished.text.clone();
        let (prob_a_shown, prob_forced) = match verdict_logprobs {
            Some((a, b)) => (Some(two_way_probability(a, b)), false),
            None if finished.reason != FinishReason::Cancelled => {
                let forced = self
                    .forced_verdict_probability(&prompt_tokens, &finished)
                    .await;
                (forced, forced.is_some())
            }
            None => (None, false),
        };
        OrderReport {
            swapped,
            verdict_shown: evaluation_verdict(&text),
            strict_verdict_shown: rl_reward_verdict(&self.text_with_stop_token(&finished)),
            prob_a_shown,
            prob_forced,
            parsed: parse_judgment(&text),
            raw_output: text,
            finish_reason: finished.reason,
            usage: finished.usage,
            timings: finished.timings,
        }
    }

    /// The RL rule reads the decoded response with special tokens kept, so a final `<|im_end|>`
    /// counts toward its 80 characters; our text stops before the stop token.
    fn text_with_stop_token(&self, finished: &Finished) -> String {
        let mut text = finished.text.clone();
        if finished.reason == FinishReason::Stop {
            if let Some(&last) = finished.token_ids.last() {
                if self.tokenizer.eos_ids().contains(&last) {
                    text.push_str(&self.tokenizer.decode(&[last]).unwrap_or_default());
                }
            }
        }
        text
    }

    /// P(A) when the output never reached `<answer>[[` (truncated, or another format): the
    /// output (without its stop token) plus `<answer>[[` is run as a prompt and the next-token
    /// distribution read. Most of it comes from the prefix cache. `None` when it would not fit.
    async fn forced_verdict_probability(&self, prompt: &[u32], finished: &Finished) -> Option<f64> {
        let ids = self.verdict_tokens?;
        let mut generated = finished.token_ids.clone();
        if generated
            .last()
            .is_some_and(|t| self.tokenizer.eos_ids().contains(t))
        {
            generated.pop();
        }
        let separator = if finished.text.is_empty() || finished.text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let suffix = self
            .tokenizer
            .encode(&format!("{separator}{VERDICT_PREFIX}"))
            .ok()?;
        let prompt_tokens: Vec<u32> = prompt
            .iter()
            .chain(&generated)
            .chain(&suffix)
            .copied()
            .collect();
        let mut stream = self
            .engine
            .submit(GenerateRequest {
                prompt_tokens,
                sampling: SamplingParams {
                    ignore_eos: true,
                    probes: vec![LogprobProbe {
                        at: ProbeTrigger::Step(0),
                        token_ids: ids.to_vec(),
                    }],
                    ..SamplingParams::greedy(1)
                },
            })
            .ok()?;
        while let Some(event) = stream.next().await {
            match event {
                EngineEvent::Token(t) => {
                    if let Some(p) = t.probes.first() {
                        return Some(two_way_probability(p.logprobs[0].1, p.logprobs[1].1));
                    }
                }
                EngineEvent::Finished(_) | EngineEvent::Error(_) => return None,
            }
        }
        None
    }
}

async fn collect(
    order: usize,
    mut stream: crate::engine::RequestStream,
    prompt_tokens: Vec<u32>,
    deltas: Option<&DeltaSink>,
) -> Result<Generated, JudgeError> {
    let mut verdict_logprobs = None;
    while let Some(event) = stream.next().await {
        match event {
            EngineEvent::Token(token) => {
                // The last firing wins: an earlier `<answer>[[` may sit inside a quote.
                if let Some(probe) = token.probes.last() {
                    verdict_logprobs = Some((probe.logprobs[0].1, probe.logprobs[1].1));
                }
                if let Some(sink) = deltas.filter(|_| !token.text.is_empty()) {
                    let _ = sink.send((order, token.text));
                }
            }
            EngineEvent::Finished(finished) => {
                if let Some(sink) = deltas.filter(|_| !finished.final_delta.is_empty()) {
                    let _ = sink.send((order, finished.final_delta.clone()));
                }
                return Ok(Generated {
                    finished,
                    prompt_tokens,
                    verdict_logprobs,
                });
            }
            EngineEvent::Error(e) => return Err(JudgeError::Engine(e)),
        }
    }
    Err(JudgeError::Engine("the engine stopped".into()))
}

fn record_judgment_metrics(combined: &Combined) {
    let verdict = match &combined.verdict {
        Ok(Side::A) => "a",
        Ok(Side::B) => "b",
        Err(reason) => {
            metrics::counter!(m::JUDGE_PARSE_FAILURES, "reason" => reason.to_string()).increment(1);
            "invalid"
        }
    };
    metrics::counter!(m::JUDGE_VERDICTS, "verdict" => verdict).increment(1);
    if let Some(p) = combined.p_a {
        metrics::histogram!(m::JUDGE_PROB_A).record(p);
    }
}
