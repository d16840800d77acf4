//! What callers hand the engine and what they get back.

use std::time::Duration;

/// How the next token is chosen. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = no top-k cut.
    pub top_k: usize,
    /// 1.0 = no nucleus cut.
    pub top_p: f32,
    /// Same seed, same tokens, whatever else shares the batch. `None`: drawn from the engine's RNG.
    pub seed: Option<u64>,
    pub max_new_tokens: usize,
    /// Extra stop token ids (the model's EOS ids are added unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Generation ends when the text contains one of these; the text returned stops before it.
    pub stop_strings: Vec<String>,
    pub ignore_eos: bool,
    /// Report the log-probability of every sampled token.
    pub logprobs: bool,
    /// Report the log-probabilities of caller-named tokens at caller-marked steps.
    pub probes: Vec<LogprobProbe>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            max_new_tokens: 256,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            probes: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }
}

/// "At this step, tell me log P(token) for these tokens" — e.g. P(`A`) vs P(`B`) right after the
/// judge writes `<answer>[[`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobProbe {
    pub at: ProbeTrigger,
    pub token_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeTrigger {
    /// The distribution of the n-th generated token (0-based).
    Step(usize),
    /// Every step whose generated text so far ends with this string (the next token's distribution).
    AfterText(String),
    /// Every step.
    EveryStep,
}

/// Who a request is for, so that the engine's waiting queue can take turns between clients (see
/// `fair_queue`). The API layer sets it from the caller (token name, certificate or IP); the
/// default, empty identity is one anonymous client (CLI tools, benchmarks, training rollouts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientId(std::sync::Arc<str>);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl From<std::sync::Arc<str>> for ClientId {
    fn from(id: std::sync::Arc<str>) -> Self {
        Self(id)
    }
}

/// A generation request for the engine. Prompts arrive tokenized: rendering is the caller's job.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_new_tokens` or the model's context length.
    Length,
    /// The caller went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache at the (last) admission.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Submission to first scheduling.
    pub queue: Duration,
    /// Submission to the first generated token.
    pub time_to_first_token: Duration,
    /// Submission to finish.
    pub total: Duration,
    pub preemptions: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// Index of the generated token this distribution produced.
    pub step: usize,
    /// `(token id, log-probability)` in the order the probe named them.
    pub logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_id: u32,
    /// Newly decodable text (may be empty while a multi-byte character or a possible stop string
    /// is pending).
    pub text: String,
    pub logprob: Option<f32>,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text not yet sent in `Token` events (held back while it could have begun a stop string).
    pub final_delta: String,
    /// The whole generated text (stop string excluded).
    pub text: String,
    pub token_ids: Vec<u32>,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Token(TokenEvent),
    Finished(Finished),
    /// The request could not run (e.g. its prompt does not fit the context); nothing follows.
    Error(String),
}
