//! Stage 1 of RM-R1: distillation SFT. Token-mean negative log-likelihood of the target traces,
//! prompts masked, over the seeded per-epoch order of the examples.

use super::executor::{JobContext, RunOutcome, TrainError};
use super::forward::DropoutKey;
use super::grad_step::{accumulate_sequence, sequence_log_probs, LossRows, NegLogLikelihood};
use super::optim::GradAccumulator;
use super::session::TrainSession;
use super::sft_data::{epoch_order, load_sft_dataset, SftExample};
use super::spec::{SftSpec, TrainSpec};
use candle_core::Device;
use std::collections::BTreeMap;
use std::time::Instant;

/// Rows of the output head computed (and backpropagated) at once: 128 × 152k f32 logits ≈ 78 MB.
const HEAD_CHUNK: usize = 128;

/// Total optimizer steps: every epoch's examples in batches of `per_step`, capped by `max_steps`.
pub fn total_steps(examples: usize, per_step: usize, epochs: u32, max_steps: u64) -> u64 {
    let by_epochs = if epochs == 0 {
        u64::MAX
    } else {
        ((examples as u64) * epochs as u64).div_ceil(per_step as u64)
    };
    if max_steps > 0 {
        by_epochs.min(max_steps)
    } else {
        by_epochs
    }
}

/// The run's data cursor: example `consumed` is at position `consumed % n` of epoch
/// `consumed / n`'s seeded order, so nothing but the count needs saving.
pub(super) struct DataCursor<'a, T> {
    data: &'a [T],
    seed: u64,
    /// The order of the epoch last asked for.
    order: Option<(u32, Vec<usize>)>,
}

impl<'a, T> DataCursor<'a, T> {
    pub(super) fn new(data: &'a [T], seed: u64) -> Self {
        Self {
            data,
            seed,
            order: None,
        }
    }

    pub(super) fn example(&mut self, consumed: u64) -> &'a T {
        let n = self.data.len() as u64;
        let epoch = (consumed / n) as u32;
        if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.order = Some((epoch, epoch_order(self.data.len(), self.seed, epoch)));
        }
        let (_, order) = self.order.as_ref().expect("set above");
        &self.data[order[(consumed % n) as usize]]
    }
}

/// Token-mean NLL of `data` under the current weights.
pub fn mean_loss(session: &TrainSession, data: &[SftExample]) -> Result<f64, TrainError> {
    let (mut sum, mut count) = (0.0, 0usize);
    for ex in data {
        let rows = LossRows::completion(&ex.tokens, ex.prompt_len);
        let lp = sequence_log_probs(&session.model, &ex.tokens, &rows, HEAD_CHUNK)?;
        sum -= lp.iter().map(|&x| x as f64).sum::<f64>();
        count += lp.len();
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}

pub fn run(
    spec: &TrainSpec,
    sft: &SftSpec,
    ctx: &dyn JobContext,
    device: &Device,
) -> Result<RunOutcome, TrainError> {
    let mut session = TrainSession::load(spec, ctx.job_id(), device, sft.max_seq_len)?;
    let mut warn = |m: &str| ctx.warn(m);
    let train = load_sft_dataset(&sft.train_files, sft, &session.base.tokenizer, &mut warn)?;
    let eval = if sft.eval_files.is_empty() {
        Vec::new()
    } else {
        load_sft_dataset(&sft.eval_files, sft, &session.base.tokenizer, &mut warn)?
    };
    let o = &spec.optimizer;
    let per_step = o.micro_batch_size * o.grad_accumulation;
    session.total_steps = total_steps(train.len(), per_step, spec.run.epochs, spec.run.max_steps);
    session.resume(ctx)?;
    ctx.info(&format!(
        "SFT: {} training examples, {} held out, {} steps of {} sequences, {} trainable parameters",
        train.len(),
        eval.len(),
        session.total_steps,
        per_step,
        session.model.params.trainable_elements()
    ));
    ctx.running();

    let n = train.len() as u64;
    let mut cursor = DataCursor::new(&train, spec.run.seed);
    let mut last_eval = None;
    while session.state.step < session.total_steps {
        let step_start = Instant::now();
        // The whole batch is known before any backward: each token's weight is 1 / (loss tokens in
        // the batch), so a step's loss is the token mean over the batch however it is split.
        let first = session.state.examples_consumed;
        let batch: Vec<&SftExample> = (first..first + per_step as u64)
            .filter(|&c| spec.run.epochs == 0 || c < n * spec.run.epochs as u64)
            .map(|c| cursor.example(c))
            .collect();
        let loss_tokens: usize = batch.iter().map(|e| e.tokens.len() - e.prompt_len).sum();
        let nll = NegLogLikelihood {
            weight: 1.0 / loss_tokens.max(1) as f64,
        };
        let mut sums = GradAccumulator::new();
        let (mut loss, mut tokens) = (0.0, 0u64);
        for (micro, group) in batch.chunks(o.micro_batch_size).enumerate() {
            if ctx.is_cancelled() {
                return Ok(RunOutcome::Cancelled);
            }
            for (i, ex) in group.iter().enumerate() {
                let rows = LossRows::completion(&ex.tokens, ex.prompt_len);
                let key = DropoutKey {
                    seed: spec.run.seed,
                    sequence: first + (micro * o.micro_batch_size + i) as u64,
                };
                let pass = accumulate_sequence(
                    &session.model,
                    &ex.tokens,
                    &rows,
                    &nll,
                    Some(key),
                    HEAD_CHUNK,
                    &mut sums,
                )?;
                loss += pass.loss;
                tokens += pass.tokens as u64;
            }
        }
        let (grad_norm, lr) = session.apply_update(sums)?;
        session.state.step += 1;
        session.state.examples_consumed += batch.len() as u64;
        session.state.tokens_seen += tokens;
        session.state.loss = Some(loss);
        let seconds = step_start.elapsed().as_secs_f64();
        let epoch = (session.state.examples_consumed.saturating_sub(1) / n) as u32;
        let metrics = BTreeMap::from([
            ("loss".to_string(), loss),
            ("lr".to_string(), lr),
            ("grad_norm".to_string(), grad_norm),
            (
                "tokens_per_s".to_string(),
                tokens as f64 / seconds.max(1e-9),
            ),
            ("loss_tokens".to_string(), loss_tokens as f64),
        ]);
        session.report_step(ctx, epoch, metrics);
        let last = session.state.step == session.total_steps;
        if session.checkpoint_due() || last {
            session.checkpoint(ctx)?;
        }
        let every = sft.eval_every_steps;
        if !eval.is_empty() && (last || (every > 0 && session.state.step.is_multiple_of(every))) {
            let eval_loss = mean_loss(&session, &eval)?;
            ctx.eval(
                session.state.step,
                &BTreeMap::from([("eval_loss".to_string(), eval_loss)]),
            );
            last_eval = Some(eval_loss);
        }
    }

    let extra = last_eval.map(|e| ("eval_loss".to_string(), e));
    Ok(RunOutcome::Completed(
        session.finish(extra.into_iter().collect())?,
    ))
}
