//! Token selection on the GPU (kernels/sampling.cu). Only a token id and the row's log-softmax
//! normaliser come back per sample (plus any logits a log-probability needs), never the 152k-entry
//! rows; the rule is the CPU sampler's ([`crate::engine::sampler::sample_with_uniform`]), with the uniform draw
//! made on the host from the request's own seeded RNG.

use crate::cuda::{self, launch_config, SAMPLING};
use crate::engine::token_sampler::{Draw, Drawn, TokenSampler};
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, DType, Result, Tensor};

/// Threads per sample (one CUDA block per sample).
const THREADS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleResult {
    pub token: u32,
    /// Largest logit of the row and log of sum(exp(logit - max)): log P(t) = logit(t) - max - log_sum.
    pub max: f32,
    pub log_sum: f32,
}

impl SampleResult {
    pub fn logprob(&self, logit: f32) -> f32 {
        logit - self.max - self.log_sum
    }
}

/// The [`TokenSampler`] for CUDA devices: the kernel picks the tokens; only the logits that
/// log-probabilities need come back (one gather for the whole step).
pub struct DeviceSampler;

impl TokenSampler for DeviceSampler {
    fn sample(&mut self, logits: &Tensor, draws: &[Draw]) -> Result<Vec<Drawn>> {
        let results = sample(logits, draws)?;
        let mut picks = Vec::new();
        let mut spans = Vec::with_capacity(draws.len());
        for (draw, result) in draws.iter().zip(&results) {
            let start = picks.len();
            picks.extend(
                draw.wanted(result.token)
                    .into_iter()
                    .map(|t| (draw.row as u32, t)),
            );
            spans.push(start..picks.len());
        }
        let values = gather(logits, &picks)?;
        Ok(results
            .iter()
            .zip(spans)
            .map(|(result, span)| Drawn {
                token: result.token,
                logprobs: picks[span.clone()]
                    .iter()
                    .zip(&values[span])
                    .map(|(&(_, t), &logit)| (t, result.logprob(logit)))
                    .collect(),
            })
            .collect())
    }
}

/// Runs every draw against `logits` (`[rows, vocab]` f32 on a CUDA device): the token and the row's
/// log-softmax normaliser.
pub fn sample(logits: &Tensor, draws: &[Draw]) -> Result<Vec<SampleResult>> {
    if draws.is_empty() {
        return Ok(Vec::new());
    }
    let (rows, vocab) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        bail!(
            "device sampling expects f32 logits, got {:?}",
            logits.dtype()
        );
    }
    if let Some(d) = draws.iter().find(|d| d.row >= rows) {
        bail!("draw from row {} of {rows}", d.row);
    }
    let dev = cuda::cuda_device(logits.device())?;
    let n = draws.len();
    // One upload for the step's draws and one download for its results: five columns of 32-bit
    // words in, three out. The kernel reads each column through its own typed pointer.
    let mut packed: Vec<u32> = Vec::with_capacity(5 * n);
    packed.extend(draws.iter().map(|d| d.row as u32));
    packed.extend(draws.iter().map(|d| d.temperature.to_bits()));
    packed.extend(draws.iter().map(|d| d.top_k.min(u32::MAX as usize) as u32));
    packed.extend(draws.iter().map(|d| d.top_p.to_bits()));
    packed.extend(draws.iter().map(|d| d.uniform.to_bits()));
    let packed = cuda::upload(dev, &packed)?;
    let column = |i: usize| packed.slice(i * n..(i + 1) * n);
    let mut results = dev.alloc_zeros::<u32>(3 * n)?;
    let func = cuda::function(dev, SAMPLING, "rmr1_sample_rows_f32")?;
    let logits = logits.contiguous()?;
    let vocab = vocab as u32;
    cuda::with_view::<f32, _>(&logits, |l| {
        let (mut tokens, mut rest) = results.split_at_mut(n);
        let (mut maxes, mut log_sums) = rest.split_at_mut(n);
        let mut b = func.builder();
        let (rows_of, temperature, top_k, top_p, uniform) =
            (column(0), column(1), column(2), column(3), column(4));
        b.arg(l).arg(&vocab).arg(&rows_of).arg(&temperature);
        b.arg(&top_k).arg(&top_p).arg(&uniform);
        b.arg(&mut tokens).arg(&mut maxes).arg(&mut log_sums);
        // Safety: every row index was checked against the logits' shape; the f32 columns hold
        // f32 bit patterns, so the kernel's float pointers read the values they were given.
        unsafe { b.launch(launch_config((n as u32, 1, 1), THREADS)) }.w()?;
        Ok(())
    })?;
    let results = dev.clone_dtoh(&results)?;
    Ok((0..n)
        .map(|i| SampleResult {
            token: results[i],
            max: f32::from_bits(results[n + i]),
            log_sum: f32::from_bits(results[2 * n + i]),
        })
        .collect())
}

/// The logits at `(row, token)` pairs, gathered on the device. A token outside the vocabulary (a probe
/// naming an id the model lacks) reads as -inf, as on the CPU, instead of failing the step.
pub fn gather(logits: &Tensor, picks: &[(u32, u32)]) -> Result<Vec<f32>> {
    let (rows, vocab) = logits.dims2()?;
    let mut flat = Vec::with_capacity(picks.len());
    for &(row, token) in picks {
        if row as usize >= rows {
            bail!("logits row {row} of {rows}");
        }
        if (token as usize) < vocab {
            flat.push(row * vocab as u32 + token);
        }
    }
    let mut found = if flat.is_empty() {
        Vec::new()
    } else {
        let len = flat.len();
        let index = Tensor::from_vec(flat, len, logits.device())?;
        logits.flatten_all()?.index_select(&index, 0)?.to_vec1()?
    }
    .into_iter();
    Ok(picks
        .iter()
        .map(|&(_, token)| {
            if (token as usize) < vocab {
                found.next().unwrap_or(f32::NAN)
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect())
}
