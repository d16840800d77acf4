//! The engine thread and its async handle: `submit(request) -> stream of events`.
//!
//! Tensor work blocks, so the engine runs on its own OS thread and owns all engine state. Requests
//! reach it over a channel; each carries its own event channel. Dropping a [`RequestStream`] closes
//! that channel, which the engine notices at its next step: the sequence stops and frees its blocks.

use super::core::{EngineConfig, EngineCore};
use super::request::{EngineEvent, GenerateRequest};
use super::stats::EngineStats;
use crate::model::Qwen2;
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Why a request was refused before it reached the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("prompt has {prompt} tokens but the model context is {max} tokens")]
    PromptTooLong { prompt: usize, max: usize },
    #[error("token id {0} is outside the vocabulary of {1}")]
    UnknownToken(u32, usize),
    #[error("invalid sampling parameters: {0}")]
    InvalidParams(String),
    #[error("engine queue is full ({0} requests pending)")]
    QueueFull(usize),
    #[error("engine has stopped")]
    EngineStopped,
}

enum Command {
    Submit(GenerateRequest, UnboundedSender<EngineEvent>),
    SubmitGroup(GenerateRequest, Vec<UnboundedSender<EngineEvent>>),
}

/// Limits a request is checked against before it is queued.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub max_pending_requests: usize,
}

#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    limits: EngineLimits,
    pending: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
}

/// Events of one request, in order, ending with `Finished` or `Error`.
pub struct RequestStream {
    events: UnboundedReceiver<EngineEvent>,
    _slot: PendingSlot,
}

/// Counts a request as pending from submission until its stream is dropped.
struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestStream {
    pub async fn next(&mut self) -> Option<EngineEvent> {
        self.events.recv().await
    }

    /// For callers outside an async runtime (CLI, benchmarks).
    pub fn next_blocking(&mut self) -> Option<EngineEvent> {
        self.events.blocking_recv()
    }
}

impl EngineHandle {
    /// Starts the engine thread. Returns once the KV cache is allocated.
    pub fn start(
        model: Qwen2,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        config: EngineConfig,
    ) -> Result<Self> {
        let vocab_size = model.config().vocab_size;
        let device = model.device().clone();
        let core = EngineCore::new(model, tokenizer, eos_ids, &config)?;
        // On a GPU, candle gives each host thread its own stream with no ordering between them:
        // the weights and the cache this thread set up must be complete before the engine thread
        // (another stream) uses them.
        device.synchronize()?;
        let limits = EngineLimits {
            max_model_len: core.max_model_len(),
            vocab_size,
            max_pending_requests: config.max_pending_requests,
        };
        let stats = core.stats();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("rmr1-engine".into())
            .spawn(move || run(core, rx))?;
        Ok(Self {
            commands: tx,
            limits,
            pending: Arc::new(AtomicUsize::new(0)),
            stats,
        })
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn validate(&self, request: &GenerateRequest) -> Result<(), SubmitError> {
        let prompt = request.prompt_tokens.len();
        if prompt == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if prompt >= self.limits.max_model_len {
            return Err(SubmitError::PromptTooLong {
                prompt,
                max: self.limits.max_model_len,
            });
        }
        if let Some(&bad) = request
            .prompt_tokens
            .iter()
            .find(|&&t| t as usize >= self.limits.vocab_size)
        {
            return Err(SubmitError::UnknownToken(bad, self.limits.vocab_size));
        }
        let p = &request.sampling;
        if !(p.temperature.is_finite() && p.temperature >= 0.0) {
            return Err(SubmitError::InvalidParams(format!(
                "temperature {}",
                p.temperature
            )));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(SubmitError::InvalidParams(format!(
                "top_p {} not in (0, 1]",
                p.top_p
            )));
        }
        if p.max_new_tokens == 0 {
            return Err(SubmitError::InvalidParams("max_new_tokens is 0".into()));
        }
        Ok(())
    }

    pub fn submit(&self, request: GenerateRequest) -> Result<RequestStream, SubmitError> {
        let mut streams = self.submit_n(request, 1)?;
        Ok(streams.remove(0))
    }

    /// `n` samples of one prompt, computed once and shared copy-on-write (see
    /// [`EngineCore::add_group`]); sample `i` draws with seed `seed + i`.
    pub fn submit_n(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        self.validate(&request)?;
        if n == 0 {
            return Err(SubmitError::InvalidParams("n is 0".into()));
        }
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        let slots: Vec<PendingSlot> = (0..n).map(|_| PendingSlot(self.pending.clone())).collect();
        if before + n > self.limits.max_pending_requests {
            return Err(SubmitError::QueueFull(before));
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded_channel()).unzip();
        let command = if n == 1 {
            Command::Submit(request, senders.into_iter().next().expect("one sender"))
        } else {
            Command::SubmitGroup(request, senders)
        };
        self.commands
            .send(command)
            .map_err(|_| SubmitError::EngineStopped)?;
        Ok(receivers
            .into_iter()
            .zip(slots)
            .map(|(events, slot)| RequestStream {
                events,
                _slot: slot,
            })
            .collect())
    }
}

fn run(mut core: EngineCore, commands: mpsc::Receiver<Command>) {
    loop {
        // Block only when idle; otherwise take whatever arrived and keep stepping.
        let first = if core.has_work() {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return finish_remaining(&mut core),
            }
        } else {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        for command in first
            .into_iter()
            .chain(std::iter::from_fn(|| commands.try_recv().ok()))
        {
            match command {
                Command::Submit(request, events) => {
                    core.add_request(request, events);
                }
                Command::SubmitGroup(request, events) => {
                    core.add_group(request, events);
                }
            }
        }
        if let Err(e) = core.step() {
            tracing::error!(error = %e, "engine step failed; its sequences were failed");
        }
    }
}

/// All handles are gone: let in-flight requests finish for streams still being read.
fn finish_remaining(core: &mut EngineCore) {
    while core.has_work() {
        if core.step().is_err() {
            break;
        }
    }
}
