//! The engine thread and its async handle: `submit(request) -> stream of events`.
//!
//! Tensor work blocks, so the engine runs on its own OS thread and owns all engine state. Requests
//! reach it over a channel; each carries its own event channel. Dropping a [`RequestStream`] closes
//! that channel, which the engine notices at its next step: the sequence stops and frees its blocks.

use super::core::{EngineConfig, EngineCore};
use super::fault::{self, EngineFault, StepSupervisor};
use super::request::{ClientId, EngineEvent, GenerateRequest};
use super::stats::EngineStats;
use crate::model::Qwen2;
use anyhow::Result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{mpsc, Mutex};
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
    #[error(
        "this client already has {pending} requests pending (at most {max} per client, so that \
         one client cannot fill the queue for everyone)"
    )]
    ClientQueueFull { pending: usize, max: usize },
    #[error("engine has stopped")]
    EngineStopped,
}

enum Command {
    Submit(ClientId, GenerateRequest, UnboundedSender<EngineEvent>),
    SubmitGroup(GenerateRequest, Vec<UnboundedSender<EngineEvent>>),
}

/// Limits a request is checked against before it is queued.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub max_pending_requests: usize,
    pub max_pending_per_client: usize,
}

#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    limits: EngineLimits,
    pending: Arc<AtomicUsize>,
    pending_per_client: PendingByClient,
    stats: Arc<EngineStats>,
    fault: Arc<EngineFault>,
}

/// Events of one request, in order, ending with `Finished` or `Error`.
pub struct RequestStream {
    events: UnboundedReceiver<EngineEvent>,
    _slot: PendingSlot,
}

/// Requests pending per client (clients with none are absent).
type PendingByClient = Arc<Mutex<HashMap<ClientId, usize>>>;

/// Counts a request as pending (in all, and for its client) from submission until its stream is
/// dropped.
struct PendingSlot {
    total: Arc<AtomicUsize>,
    client: Option<(PendingByClient, ClientId)>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let Some((counts, client)) = &self.client {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(client) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(client);
                }
            }
        }
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
            max_pending_per_client: config
                .max_pending_per_client
                .unwrap_or(config.max_pending_requests * 3 / 4)
                .max(1),
        };
        let stats = core.stats();
        let fault = Arc::new(EngineFault::default());
        let (tx, rx) = mpsc::channel();
        let thread_fault = fault.clone();
        std::thread::Builder::new()
            .name("rmr1-engine".into())
            .spawn(move || run(core, rx, &thread_fault))?;
        Ok(Self {
            commands: tx,
            limits,
            pending: Arc::new(AtomicUsize::new(0)),
            pending_per_client: Arc::default(),
            stats,
            fault,
        })
    }

    /// Set when the engine has stopped for good (see `engine::fault`); the server watches it.
    pub fn fault(&self) -> &Arc<EngineFault> {
        &self.fault
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

    /// A request of the anonymous client (tools, benchmarks).
    pub fn submit(&self, request: GenerateRequest) -> Result<RequestStream, SubmitError> {
        self.submit_for(&ClientId::default(), request)
    }

    /// A request of `client`: it takes turns with other clients' requests for admission, and
    /// counts against the client's share of the pending requests (except the anonymous client's).
    pub fn submit_for(
        &self,
        client: &ClientId,
        request: GenerateRequest,
    ) -> Result<RequestStream, SubmitError> {
        let mut streams = self.submit_as(client, request, 1)?;
        Ok(streams.remove(0))
    }

    /// Counts `n` pending requests, or refuses them when the engine's (or the client's) share
    /// is taken.
    fn reserve(
        &self,
        n: usize,
        client: Option<&ClientId>,
    ) -> Result<Vec<PendingSlot>, SubmitError> {
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        let mut slots: Vec<PendingSlot> = (0..n)
            .map(|_| PendingSlot {
                total: self.pending.clone(),
                client: None,
            })
            .collect();
        if before + n > self.limits.max_pending_requests {
            return Err(SubmitError::QueueFull(before));
        }
        if let Some(client) = client {
            let mut counts = self
                .pending_per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let pending = counts.get(client).copied().unwrap_or(0);
            if pending + n > self.limits.max_pending_per_client {
                return Err(SubmitError::ClientQueueFull {
                    pending,
                    max: self.limits.max_pending_per_client,
                });
            }
            *counts.entry(client.clone()).or_default() += n;
            for slot in &mut slots {
                slot.client = Some((self.pending_per_client.clone(), client.clone()));
            }
        }
        Ok(slots)
    }

    /// `n` samples of one prompt, computed once and shared copy-on-write (see
    /// [`EngineCore::add_group`]); sample `i` draws with seed `seed + i`.
    pub fn submit_n(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        self.submit_as(&ClientId::default(), request, n)
    }

    /// `n` samples of `client`'s request (a group when `n` > 1).
    fn submit_as(
        &self,
        client: &ClientId,
        request: GenerateRequest,
        n: usize,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        self.validate(&request)?;
        if n == 0 {
            return Err(SubmitError::InvalidParams("n is 0".into()));
        }
        if self.fault.get().is_some() {
            return Err(SubmitError::EngineStopped);
        }
        // The anonymous client (in-process tools) is the only one there is: no share to keep.
        let share = Some(client).filter(|c| **c != ClientId::default());
        let slots = self.reserve(n, share)?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded_channel()).unzip();
        let command = if n == 1 {
            let events = senders.into_iter().next().expect("one sender");
            Command::Submit(client.clone(), request, events)
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

fn run(mut core: EngineCore, commands: mpsc::Receiver<Command>, fault: &EngineFault) {
    let mut supervisor = StepSupervisor::default();
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
                Command::Submit(client, request, events) => {
                    core.add_request_for(&client, request, events);
                }
                Command::SubmitGroup(request, events) => {
                    core.add_group(request, events);
                }
            }
        }
        if let Err(fatal) = supervisor.step(&mut core) {
            // Returning drops the command receiver: later submissions get EngineStopped.
            return fault::stop_for_good(&mut core, fault, fatal);
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
