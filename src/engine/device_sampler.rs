//! Token selection on the GPU (kernels/sampling.cu). Only a token id and the row's log-softmax
//! normaliser come back per sample (plus any logits a log-probability needs), never the 152k-entry
//! rows; the rule is the CPU sampler's ([`super::sampler::sample_with_uniform`]), with the uniform draw
//! made on the host from the request's own seeded RNG.

use crate::cuda::{self, launch_config, SAMPLING};
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, DType, Result, Tensor};

/// Threads per sample (one CUDA block per sample).
const THREADS: u32 = 1024;

/// One draw from one logits row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRequest {
    pub row: u32,
    /// <= 0: greedy.
    pub temperature: f32,
    /// 0: no top-k cut.
    pub top_k: u32,
    /// 1.0: no nucleus cut.
    pub top_p: f32,
    /// In [0, 1); unused by greedy requests.
    pub uniform: f32,
}

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

/// Runs every request against `logits` (`[rows, vocab]` f32 on a CUDA device).
pub fn sample(logits: &Tensor, requests: &[SampleRequest]) -> Result<Vec<SampleResult>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let (rows, vocab) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        bail!(
            "device sampling expects f32 logits, got {:?}",
            logits.dtype()
        );
    }
    if let Some(r) = requests.iter().find(|r| r.row as usize >= rows) {
        bail!("sample request for row {} of {rows}", r.row);
    }
    let dev = cuda::cuda_device(logits.device())?;
    let column = |f: fn(&SampleRequest) -> f32| requests.iter().map(f).collect::<Vec<f32>>();
    let rows_of: Vec<u32> = requests.iter().map(|r| r.row).collect();
    let top_k: Vec<u32> = requests.iter().map(|r| r.top_k).collect();
    let rows_of = cuda::upload(dev, &rows_of)?;
    let temperature = cuda::upload(dev, &column(|r| r.temperature))?;
    let top_k = cuda::upload(dev, &top_k)?;
    let top_p = cuda::upload(dev, &column(|r| r.top_p))?;
    let uniform = cuda::upload(dev, &column(|r| r.uniform))?;
    let n = requests.len();
    let mut tokens = dev.alloc_zeros::<u32>(n)?;
    let mut maxes = dev.alloc_zeros::<f32>(n)?;
    let mut log_sums = dev.alloc_zeros::<f32>(n)?;
    let func = cuda::function(dev, SAMPLING, "rmr1_sample_rows_f32")?;
    let logits = logits.contiguous()?;
    let vocab = vocab as u32;
    cuda::with_view::<f32, _>(&logits, |l| {
        let mut b = func.builder();
        b.arg(l).arg(&vocab).arg(&rows_of).arg(&temperature);
        b.arg(&top_k).arg(&top_p).arg(&uniform);
        b.arg(&mut tokens).arg(&mut maxes).arg(&mut log_sums);
        // Safety: every row index was checked against the logits' shape.
        unsafe { b.launch(launch_config((n as u32, 1, 1), THREADS)) }.w()?;
        Ok(())
    })?;
    let tokens = dev.clone_dtoh(&tokens)?;
    let maxes = dev.clone_dtoh(&maxes)?;
    let log_sums = dev.clone_dtoh(&log_sums)?;
    Ok((0..n)
        .map(|i| SampleResult {
            token: tokens[i],
            max: maxes[i],
            log_sum: log_sums[i],
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
