//! One request's state inside the engine, from admission to its last event.

use super::block_manager::SeqId;
use super::detokenizer::Detokenizer;
use super::request::{
    ClientId, EngineEvent, FinishReason, Finished, GenerateRequest, ProbeResult, ProbeTrigger,
    SamplingParams, Timings, TokenEvent, Usage,
};
use super::sampler;
use super::token_text::TokenText;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub struct Sequence {
    pub id: SeqId,
    /// Prompt followed by everything generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose K/V are in the cache. Reset to 0 (or the cached prefix) on preemption.
    pub num_computed: usize,
    pub params: SamplingParams,
    stop_ids: Vec<u32>,
    rng: StdRng,
    detokenizer: Detokenizer,
    events: UnboundedSender<EngineEvent>,
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    /// For the inter-token latency histogram.
    last_token: Option<Instant>,
    pub preemptions: u32,
    pub cached_tokens: usize,
    /// Whose request this is (fair admission between clients).
    pub client: ClientId,
}

/// What happened when a sequence received its next token.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Continue,
    Finished(FinishReason),
}

impl Sequence {
    pub fn new(
        id: SeqId,
        request: GenerateRequest,
        eos_ids: &[u32],
        default_seed: u64,
        events: UnboundedSender<EngineEvent>,
    ) -> Self {
        let params = request.sampling;
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_ids);
        }
        Self {
            id,
            prompt_len: request.prompt_tokens.len(),
            tokens: request.prompt_tokens,
            num_computed: 0,
            rng: StdRng::seed_from_u64(params.seed.unwrap_or(default_seed)),
            detokenizer: Detokenizer::new(params.stop_strings.clone()),
            params,
            stop_ids,
            events,
            arrival: Instant::now(),
            first_scheduled: None,
            first_token: None,
            last_token: None,
            preemptions: 0,
            cached_tokens: 0,
            client: ClientId::default(),
        }
    }

    /// Takes over what `parent` (same prompt) has computed and when it was scheduled: used when a
    /// group sample forks its sibling's prompt instead of computing it.
    pub fn adopt_progress(&mut self, parent: &Sequence) {
        debug_assert_eq!(self.tokens, parent.tokens);
        self.num_computed = parent.num_computed;
        self.cached_tokens = parent.cached_tokens;
        self.arrival = parent.arrival;
        self.first_scheduled = parent.first_scheduled;
    }

    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    pub fn is_decoding(&self) -> bool {
        self.num_computed >= self.prompt_len && self.num_uncomputed() == 1
    }

    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// The uniform draw for this step's token from the request's own RNG, taken only when the choice
    /// is random: a greedy request consumes no randomness, and a seed gives the same draws whichever
    /// `TokenSampler` applies them.
    pub fn draw_uniform(&mut self) -> f32 {
        if sampler::is_greedy(&self.params) {
            0.0
        } else {
            rand::Rng::random::<f32>(&mut self.rng)
        }
    }

    /// Tokens whose log-probabilities this step reports besides the sampled one (probes that fire).
    pub fn probed_tokens(&self) -> Vec<u32> {
        let step = self.num_generated();
        self.firing_probes(step)
            .flat_map(|p| p.token_ids.iter().copied())
            .collect()
    }

    pub fn wants_logprobs(&self) -> bool {
        self.params.logprobs || !self.params.probes.is_empty()
    }

    /// Reports the token the step's sampler drew; `logprob` answers for the drawn token and for
    /// [`Self::probed_tokens`].
    pub fn accept_token(
        &mut self,
        token: u32,
        logprob: &dyn Fn(u32) -> f32,
        text: &TokenText,
        max_model_len: usize,
    ) -> Progress {
        let step = self.num_generated();
        let probes = self.probe(logprob, step);
        let logprob = self.params.logprobs.then(|| logprob(token));
        self.tokens.push(token);
        let now = Instant::now();
        if let Some(previous) = self.last_token.replace(now) {
            metrics::histogram!(crate::metrics::INTER_TOKEN_LATENCY)
                .record((now - previous).as_secs_f64());
        }
        self.first_token.get_or_insert(now);

        let is_stop_id = self.stop_ids.contains(&token);
        let pushed = if is_stop_id {
            Default::default()
        } else {
            self.detokenizer.push(text, token)
        };
        let _ = self.events.send(EngineEvent::Token(TokenEvent {
            token_id: token,
            text: pushed.delta,
            logprob,
            probes,
        }));
        if is_stop_id || pushed.stopped {
            Progress::Finished(FinishReason::Stop)
        } else if self.num_generated() >= self.params.max_new_tokens
            || self.tokens.len() >= max_model_len
        {
            Progress::Finished(FinishReason::Length)
        } else {
            Progress::Continue
        }
    }

    fn firing_probes(&self, step: usize) -> impl Iterator<Item = &super::request::LogprobProbe> {
        let text = self.detokenizer.text();
        self.params.probes.iter().filter(move |p| match &p.at {
            ProbeTrigger::Step(n) => *n == step,
            ProbeTrigger::AfterText(s) => text.ends_with(s.as_str()),
            ProbeTrigger::EveryStep => true,
        })
    }

    fn probe(&self, logprob: &dyn Fn(u32) -> f32, step: usize) -> Vec<ProbeResult> {
        self.firing_probes(step)
            .map(|p| ProbeResult {
                step,
                logprobs: p.token_ids.iter().map(|&t| (t, logprob(t))).collect(),
            })
            .collect()
    }

    /// Sends the final event.
    pub fn finish(&mut self, reason: FinishReason, text: &TokenText) {
        // Text held back for a possible stop string turned out not to be one: it belongs to the output.
        let final_delta = self.detokenizer.flush(text);
        let now = Instant::now();
        let timings = Timings {
            queue: self
                .first_scheduled
                .map(|t| t - self.arrival)
                .unwrap_or_default(),
            time_to_first_token: self
                .first_token
                .map(|t| t - self.arrival)
                .unwrap_or_default(),
            total: now - self.arrival,
            preemptions: self.preemptions,
        };
        if reason != FinishReason::Cancelled {
            use crate::metrics as m;
            metrics::histogram!(m::E2E_LATENCY).record(timings.total.as_secs_f64());
            metrics::histogram!(m::QUEUE_TIME).record(timings.queue.as_secs_f64());
            if self.first_token.is_some() {
                metrics::histogram!(m::TIME_TO_FIRST_TOKEN)
                    .record(timings.time_to_first_token.as_secs_f64());
            }
        }
        let _ = self.events.send(EngineEvent::Finished(Finished {
            reason,
            final_delta,
            text: self.detokenizer.text().to_string(),
            token_ids: self.tokens[self.prompt_len..].to_vec(),
            usage: Usage {
                prompt_tokens: self.prompt_len,
                completion_tokens: self.num_generated(),
                cached_tokens: self.cached_tokens,
            },
            timings,
        }));
    }

    pub fn fail(&self, message: String) {
        let _ = self.events.send(EngineEvent::Error(message));
    }
}
