//! One sequence's forward and backward with layer recomputation (gradient checkpointing) and a
//! chunked output head.
//!
//! Forward keeps only each layer's input; backward recomputes one layer at a time with its input as
//! a fresh leaf and pulls the incoming gradient through it (`d/dx Σ out ⊙ g`). The output head runs
//! on chunks of the loss positions only, each chunk backpropagated on its own, so neither the whole
//! graph nor `[T, vocab]` logits ever exist at once. The loss is separable per token (SFT's token
//! mean, GRPO's clipped surrogate), which is what makes per-chunk backward exact.

use super::forward::{target_log_probs, DropoutKey, TrainableQwen2};
use super::optim::GradAccumulator;
use candle_core::{Result, Tensor, Var};

/// Which hidden rows predict which tokens: row `positions[i]` predicts `targets[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossRows {
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
}

impl LossRows {
    /// Every token after `prompt_len` of `tokens`, predicted from the position before it.
    pub fn completion(tokens: &[u32], prompt_len: usize) -> Self {
        let start = prompt_len.max(1);
        Self {
            positions: (start as u32 - 1..tokens.len() as u32 - 1).collect(),
            targets: tokens[start..].to_vec(),
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// A loss that is a sum of per-token terms.
pub trait TokenLoss {
    /// The loss of rows `start..start + n` of the [`LossRows`], given their log-probabilities
    /// (`[n]`, f32, differentiable). Returns a scalar.
    fn chunk_loss(&self, start: usize, log_probs: &Tensor) -> Result<Tensor>;

    /// Log-probabilities come from `logits / temperature` (GRPO scores samples under the
    /// temperature they were drawn at).
    fn temperature(&self) -> f64 {
        1.0
    }
}

/// What one sequence's pass measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SequencePass {
    /// The loss (as weighted by the `TokenLoss`) of this sequence.
    pub loss: f64,
    pub tokens: usize,
}

/// The final hidden states `[T, hidden]` of `ids`, layer by layer with each output cut from the
/// graph; with `inputs`, each layer's input is kept there for recomputation in backward.
fn final_hidden(
    model: &TrainableQwen2,
    ids: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    key: Option<DropoutKey>,
    mut inputs: Option<&mut Vec<Tensor>>,
) -> Result<Tensor> {
    let mut x = model.embed(ids)?.detach();
    for idx in 0..model.config().num_hidden_layers {
        if let Some(inputs) = inputs.as_mut() {
            inputs.push(x.clone());
        }
        x = model.layer(idx, &x, cos, sin, key)?.detach();
    }
    Ok(x)
}

/// `(start, log-probs [n], logits / temperature [n, V])` of each chunk of at most `head_chunk` loss
/// rows, read from `hidden`.
fn head_chunks<'a>(
    model: &'a TrainableQwen2,
    hidden: &'a Tensor,
    rows: &'a LossRows,
    head_chunk: usize,
    temperature: f64,
) -> impl Iterator<Item = Result<(usize, Tensor, Tensor)>> + 'a {
    let size = head_chunk.max(1);
    rows.positions
        .chunks(size)
        .enumerate()
        .map(move |(chunk_idx, positions)| {
            let start = chunk_idx * size;
            let n = positions.len();
            let pos = Tensor::from_slice(positions, n, model.device())?;
            let targets = Tensor::from_slice(&rows.targets[start..start + n], n, model.device())?;
            let mut logits = model.head(&hidden.index_select(&pos, 0)?)?;
            if temperature != 1.0 {
                logits = (logits / temperature)?;
            }
            Ok((start, target_log_probs(&logits, &targets)?, logits))
        })
}

/// Forward + backward of `tokens` under `loss`, adding parameter gradients into `sums` (one
/// accumulated pass per backward: head chunks, layers, embedding).
pub fn accumulate_sequence(
    model: &TrainableQwen2,
    tokens: &[u32],
    rows: &LossRows,
    loss: &dyn TokenLoss,
    key: Option<DropoutKey>,
    head_chunk: usize,
    sums: &mut GradAccumulator,
) -> Result<SequencePass> {
    let t = tokens.len();
    let layers = model.config().num_hidden_layers;
    let params = model.params.trainable();
    let ids = Tensor::from_slice(tokens, t, model.device())?;
    let (cos, sin) = model.rope_rows(t)?;
    let mut inputs = Vec::with_capacity(layers);
    let x = final_hidden(model, &ids, (&cos, &sin), key, Some(&mut inputs))?;

    let hidden = Var::from_tensor(&x)?;
    let mut grad = hidden.zeros_like()?.detach();
    let mut total = 0.0;
    let temperature = loss.temperature();
    for chunk in head_chunks(model, hidden.as_tensor(), rows, head_chunk, temperature) {
        let (start, log_probs, _) = chunk?;
        let chunk_loss = loss.chunk_loss(start, &log_probs)?;
        total += chunk_loss
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let store = chunk_loss.backward()?;
        if let Some(g) = store.get(hidden.as_tensor()) {
            grad = (grad + g)?.detach();
        }
        sums.accumulate(&params, &store)?;
    }

    for idx in (0..layers).rev() {
        let input = Var::from_tensor(&inputs[idx])?;
        let out = model.layer(idx, input.as_tensor(), &cos, &sin, key)?;
        let store = (out * &grad)?.sum_all()?.backward()?;
        sums.accumulate(&params, &store)?;
        grad = match store.get(input.as_tensor()) {
            Some(g) => g.detach(),
            None => input.zeros_like()?.detach(),
        };
    }
    // A trained embedding gets its gradient through the lookup.
    let embedded = model.embed(&ids)?;
    if embedded.track_op() {
        let store = (embedded * &grad)?.sum_all()?.backward()?;
        sums.accumulate(&params, &store)?;
    }
    Ok(SequencePass {
        loss: total,
        tokens: t,
    })
}

/// Log-probabilities of `rows` under the model, without gradients, layer by layer.
pub fn sequence_log_probs(
    model: &TrainableQwen2,
    tokens: &[u32],
    rows: &LossRows,
    head_chunk: usize,
) -> Result<Vec<f32>> {
    Ok(sequence_scores(model, tokens, rows, head_chunk, 1.0, false)?.log_probs)
}

/// Per loss row: the target's log-probability and (when asked) the entropy of the distribution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowScores {
    pub log_probs: Vec<f32>,
    /// Empty unless asked for.
    pub entropies: Vec<f32>,
}

/// Log-probabilities (and entropies) of `rows` under `softmax(logits / temperature)`, without
/// gradients, layer by layer.
pub fn sequence_scores(
    model: &TrainableQwen2,
    tokens: &[u32],
    rows: &LossRows,
    head_chunk: usize,
    temperature: f64,
    with_entropy: bool,
) -> Result<RowScores> {
    let ids = Tensor::from_slice(tokens, tokens.len(), model.device())?;
    let (cos, sin) = model.rope_rows(tokens.len())?;
    let x = final_hidden(model, &ids, (&cos, &sin), None, None)?;
    let mut out = RowScores {
        log_probs: Vec::with_capacity(rows.len()),
        entropies: Vec::new(),
    };
    for chunk in head_chunks(model, &x, rows, head_chunk, temperature) {
        let (_, log_probs, logits) = chunk?;
        out.log_probs.extend(log_probs.detach().to_vec1::<f32>()?);
        if with_entropy {
            out.entropies.extend(entropy(&logits.detach())?);
        }
    }
    Ok(out)
}

/// `H = logsumexp(z) − Σ softmax(z)·z` per row of `z` `[n, V]`.
fn entropy(z: &Tensor) -> Result<Vec<f32>> {
    let z = z.to_dtype(candle_core::DType::F32)?;
    let max = z.max_keepdim(1)?;
    let shifted = z.broadcast_sub(&max)?;
    let exp = shifted.exp()?;
    let sum = exp.sum_keepdim(1)?;
    let p = exp.broadcast_div(&sum)?;
    // With z shifted by its max: H = log Σ e^(z−m) − Σ p·(z−m).
    let h = (sum.log()?.squeeze(1)? - (p * shifted)?.sum(1)?)?;
    h.to_vec1::<f32>()
}

/// SFT's loss: `−Σ log p(target) · weight`, the weight being `1 / (loss tokens in the optimizer
/// step)` so a step's loss is the token mean over its whole batch.
pub struct NegLogLikelihood {
    pub weight: f64,
}

impl TokenLoss for NegLogLikelihood {
    fn chunk_loss(&self, _start: usize, log_probs: &Tensor) -> Result<Tensor> {
        log_probs.sum_all()? * (-self.weight)
    }
}
