//! The serving CPU attention against the reference, step by step over the same calls: prefill
//! chunks after a cached prefix, tiles cut mid-sequence, decode, scattered block tables, copies.

use super::*;
use crate::model::attention::reference::ReferencePagedAttention;
use crate::model::attention::{KvCacheDtype, SequenceSpan};

/// xorshift64*: deterministic values in [-2, 2) without a dependency.
struct Values(u64);

impl Values {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let data: Vec<f32> = (0..dims.iter().product()).map(|_| self.next()).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }
}

/// K/V as the cache will hold them, so the reference sees the same inputs the fast path stores.
fn rounded(t: &Tensor, dtype: KvCacheDtype) -> Tensor {
    t.to_dtype(dtype.dtype())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

/// One sequence's state across steps: its blocks (deliberately out of order) and length so far.
struct Seq {
    blocks: Vec<BlockId>,
    len: usize,
}

fn max_rel_error(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

/// Runs `steps` (per step: tokens each sequence adds) through both backends and compares every
/// output and the cache contents.
fn compare(case: &Case, dtype: KvCacheDtype, steps: &[Vec<usize>], tolerance: f32) {
    let shape = CacheShape {
        num_layers: 2,
        num_blocks: 64,
        block_size: case.block_size,
        num_kv_heads: case.kv_heads,
        head_dim: case.head_dim,
    };
    let mut fast = CpuPagedAttention::new(shape, case.heads, dtype);
    let mut reference = ReferencePagedAttention::new(shape, case.heads);
    let mut values = Values(0x9e37_79b9_7f4a_7c15);
    let num_seqs = steps[0].len();
    // Interleaved, reversed block ids so no sequence's blocks are contiguous or ascending.
    let mut seqs: Vec<Seq> = (0..num_seqs)
        .map(|s| Seq {
            blocks: (0..64 / num_seqs)
                .rev()
                .map(|i| (i * num_seqs + s) as BlockId)
                .collect(),
            len: 0,
        })
        .collect();
    for (step, adds) in steps.iter().enumerate() {
        let mut batch = AttentionBatch::default();
        for (seq, &add) in seqs.iter_mut().zip(adds) {
            if add == 0 {
                continue;
            }
            let query_start = batch.num_tokens();
            for p in seq.len..seq.len + add {
                let block = seq.blocks[p / case.block_size] as usize;
                batch
                    .slot_mapping
                    .push((block * case.block_size + p % case.block_size) as u32);
            }
            seq.len += add;
            batch.sequences.push(SequenceSpan {
                query_start,
                query_len: add,
                context_len: seq.len,
                block_table: seq.blocks[..seq.len.div_ceil(case.block_size)].to_vec(),
            });
        }
        let n = batch.num_tokens();
        for layer in 0..2 {
            let q = values.tensor(&[n, case.heads, case.head_dim]);
            let k = rounded(&values.tensor(&[n, case.kv_heads, case.head_dim]), dtype);
            let v = rounded(&values.tensor(&[n, case.kv_heads, case.head_dim]), dtype);
            let got = fast.forward(layer, &q, &k, &v, &batch).unwrap();
            let want = reference.forward(layer, &q, &k, &v, &batch).unwrap();
            let error = max_rel_error(&got, &want);
            assert!(
                error <= tolerance,
                "step {step} layer {layer} ({dtype}): relative error {error} > {tolerance}"
            );
        }
    }
    for layer in 0..2 {
        for block in 0..64 {
            let (fk, fv) = fast.read_block(layer, block).unwrap();
            let (rk, rv) = reference.read_block(layer, block).unwrap();
            assert_eq!((fk, fv), (rk, rv), "layer {layer} block {block}");
        }
    }
}

const QWEN_05B: Case = Case {
    heads: 14,
    kv_heads: 2,
    head_dim: 64,
    block_size: 16,
};

/// Prefill chunks longer than a tile (with a partial last block), then decode, for three
/// sequences of different lengths; a fourth joins late with a long chunk.
fn mixed_steps() -> Vec<Vec<usize>> {
    vec![
        vec![37, 5, 16, 0],
        vec![20, 1, 33, 0],
        vec![1, 1, 1, 70],
        vec![1, 1, 1, 1],
        vec![1, 1, 1, 1],
    ]
}

#[test]
fn matches_the_reference_in_f32() {
    compare(&QWEN_05B, KvCacheDtype::F32, &mixed_steps(), 2e-5);
}

#[test]
fn matches_the_reference_on_the_same_f16_and_bf16_values() {
    compare(&QWEN_05B, KvCacheDtype::F16, &mixed_steps(), 2e-5);
    compare(&QWEN_05B, KvCacheDtype::Bf16, &mixed_steps(), 2e-5);
}

#[test]
fn matches_the_reference_at_other_shapes() {
    // 7B's heads (28 / 4, head dim 128); a head dim and block size that are not multiples of 8
    // and a group of one (plain multi-head attention).
    let cases = [
        Case {
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
            block_size: 16,
        },
        Case {
            heads: 6,
            kv_heads: 3,
            head_dim: 20,
            block_size: 5,
        },
        Case {
            heads: 4,
            kv_heads: 4,
            head_dim: 13,
            block_size: 32,
        },
    ];
    for case in &cases {
        compare(case, KvCacheDtype::F32, &mixed_steps(), 2e-5);
    }
}

#[test]
fn judge_length_context_matches_the_reference() {
    // One 600-token prompt in two chunks (the second attends across a cached 512), then decode:
    // the softmax runs online over 38 blocks, so rescaling errors would show here.
    compare(
        &QWEN_05B,
        KvCacheDtype::F16,
        &[vec![512], vec![88], vec![1], vec![1]],
        5e-5,
    );
}

#[test]
fn copied_blocks_are_read_back_the_same() {
    let shape = CacheShape {
        num_layers: 1,
        num_blocks: 4,
        block_size: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    let mut fast = CpuPagedAttention::new(shape, 4, KvCacheDtype::F16);
    let mut values = Values(7);
    let k = rounded(&values.tensor(&[4, 2, 8]), KvCacheDtype::F16);
    let v = rounded(&values.tensor(&[4, 2, 8]), KvCacheDtype::F16);
    let batch = AttentionBatch {
        slot_mapping: vec![4, 5, 6, 7],
        sequences: vec![SequenceSpan {
            query_start: 0,
            query_len: 4,
            context_len: 4,
            block_table: vec![1],
        }],
    };
    fast.forward(0, &values.tensor(&[4, 4, 8]), &k, &v, &batch)
        .unwrap();
    fast.copy_blocks(&[(1, 3)]).unwrap();
    let (k3, v3) = fast.read_block(0, 3).unwrap();
    assert_eq!(k3, k.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(v3, v.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn bad_batches_are_refused() {
    let shape = CacheShape {
        num_layers: 1,
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let mut fast = CpuPagedAttention::new(shape, 2, KvCacheDtype::F16);
    let mut values = Values(3);
    let (q, k) = (values.tensor(&[1, 2, 8]), values.tensor(&[1, 1, 8]));
    let span = |block: BlockId| SequenceSpan {
        query_start: 0,
        query_len: 1,
        context_len: 1,
        block_table: vec![block],
    };
    let outside_slot = AttentionBatch {
        slot_mapping: vec![8],
        sequences: vec![span(0)],
    };
    let outside_block = AttentionBatch {
        slot_mapping: vec![0],
        sequences: vec![span(5)],
    };
    for batch in [outside_slot, outside_block] {
        let error = fast.forward(0, &q, &k, &k, &batch).unwrap_err();
        assert!(error.to_string().contains("outside"), "{error}");
    }
}
