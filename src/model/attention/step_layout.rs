//! The per-token view of an [`AttentionBatch`] that device kernels index, built and validated on the
//! host: a kernel trusts every index it is given, so every check happens here (and is unit-tested
//! without a GPU).

use super::{AttentionBatch, CacheShape};
use candle_core::Result;

/// Most positions one CUDA attention block covers (kernels/paged_attention.cu `RMR1_PARTITION`); a
/// context of `c` positions is split into `c / partition` (rounded up) partial results merged by a
/// reduce, with the partition chosen per step by [`choose_partition`].
pub const CUDA_PARTITION: usize = 512;
/// The smallest partition [`choose_partition`] picks: below it a block's 128 threads idle.
pub const MIN_PARTITION: usize = 64;
/// The most blocks [`choose_partition`] aims a launch at (twice the multiprocessors of any GPU rmr1
/// targets; an H100 / H200 has 132, so it aims at 264).
pub const MAX_TARGET_BLOCKS: usize = 1024;

/// Positions per attention block for a step: 512, halved (to at least 64) while the launch of
/// `tokens × kv_heads × partitions` blocks would leave the GPU's `target_blocks` unfilled. A decode
/// of one sequence on the 7B (4 kv heads) at 2k context gets 128 blocks of 64 positions instead of
/// 16 of 512; a busy step keeps 512 and writes no more partial results than it needs.
pub fn choose_partition(
    tokens: usize,
    kv_heads: usize,
    max_context: usize,
    target_blocks: usize,
) -> usize {
    let blocks = |partition: usize| tokens * kv_heads * max_context.div_ceil(partition);
    let target = target_blocks.min(MAX_TARGET_BLOCKS);
    let mut partition = CUDA_PARTITION;
    while partition > MIN_PARTITION && blocks(partition) < target {
        partition /= 2;
    }
    partition
}

/// Upper bound on the device bytes one step's attention metadata and split-attention scratch take
/// (what `CudaPagedAttention::prepare` allocates), for a step of `tokens` token rows from `seqs`
/// sequences whose contexts reach `max_context` positions, at whatever partition
/// [`choose_partition`] picks: a partition below 512 is only chosen while the launch has fewer than
/// `MAX_TARGET_BLOCKS / 2` blocks at twice that partition, which bounds its partial results.
pub fn step_device_bytes(
    tokens: usize,
    seqs: usize,
    num_heads: usize,
    shape: &CacheShape,
    max_context: usize,
) -> usize {
    let at_full_partition = tokens * max_context.div_ceil(CUDA_PARTITION).max(1);
    let token_splits = at_full_partition.max(2 * MAX_TARGET_BLOCKS.div_ceil(shape.num_kv_heads));
    let blocks_per_seq = max_context.div_ceil(shape.block_size).max(1);
    // part_out (head_dim floats), part_max and part_sum (one float each) per token, head and split.
    let partials = token_splits * num_heads * (shape.head_dim + 2) * 4;
    // slot_mapping, token_seq, token_ctx per token; one block-table row per sequence.
    let metadata = (3 * tokens + seqs * blocks_per_seq) * 4;
    partials + metadata
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLayout {
    /// Row of each token's sequence in `block_tables`.
    pub token_seq: Vec<u32>,
    /// Positions each token attends to: its own position + 1.
    pub token_ctx: Vec<u32>,
    /// One row of `max_blocks_per_seq` block ids per sequence, padded with block 0 (never read:
    /// a token only reads blocks below its context).
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// The longest context any token attends to (at least 1).
    pub max_context: usize,
}

impl StepLayout {
    pub fn new(batch: &AttentionBatch, shape: &CacheShape) -> Result<Self> {
        batch.validate(shape)?;
        let n = batch.num_tokens();
        let max_blocks = batch
            .sequences
            .iter()
            .map(|span| span.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut block_tables = vec![0u32; batch.sequences.len() * max_blocks];
        let mut token_seq = vec![0u32; n];
        let mut token_ctx = vec![0u32; n];
        for (i, span) in batch.sequences.iter().enumerate() {
            block_tables[i * max_blocks..][..span.block_table.len()]
                .copy_from_slice(&span.block_table);
            for j in 0..span.query_len {
                let row = span.query_start + j;
                token_seq[row] = i as u32;
                token_ctx[row] = (span.context_len - span.query_len + j + 1) as u32;
            }
        }
        let max_context = token_ctx.iter().copied().max().unwrap_or(1).max(1) as usize;
        Ok(Self {
            token_seq,
            token_ctx,
            block_tables,
            max_blocks_per_seq: max_blocks,
            max_context,
        })
    }

    /// Partitions of `partition` positions the longest context needs (at least 1).
    pub fn num_splits(&self, partition: usize) -> usize {
        self.max_context.div_ceil(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SequenceSpan;

    fn shape() -> CacheShape {
        CacheShape {
            num_layers: 1,
            num_blocks: 8,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 8,
        }
    }

    fn span(
        query_start: usize,
        query_len: usize,
        context_len: usize,
        blocks: &[u32],
    ) -> SequenceSpan {
        SequenceSpan {
            query_start,
            query_len,
            context_len,
            block_table: blocks.to_vec(),
        }
    }

    #[test]
    fn tokens_map_to_their_sequence_and_causal_context() {
        // A decode token at position 9 (context 10) and a 3-token chunk over 2 cached tokens.
        let batch = AttentionBatch {
            slot_mapping: vec![5 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 7 * 4],
            sequences: vec![span(0, 1, 10, &[1, 4, 5]), span(1, 3, 5, &[2, 7])],
        };
        let layout = StepLayout::new(&batch, &shape()).unwrap();
        assert_eq!(layout.token_seq, vec![0, 1, 1, 1]);
        assert_eq!(layout.token_ctx, vec![10, 3, 4, 5]);
        assert_eq!(layout.max_blocks_per_seq, 3);
        assert_eq!(layout.block_tables, vec![1, 4, 5, 2, 7, 0]);
        // Longest context 10 over partitions of 4 positions.
        assert_eq!(layout.num_splits(4), 3);
    }

    #[test]
    fn the_step_budget_bounds_what_a_real_step_allocates() {
        // Two sequences at the full budgeted context (1,500 positions) plus a short prefill chunk.
        let shape = CacheShape {
            num_layers: 1,
            num_blocks: 256,
            block_size: 16,
            num_kv_heads: 2,
            head_dim: 64,
        };
        let heads = 14;
        let long: Vec<u32> = (0..94).collect();
        let batch = AttentionBatch {
            slot_mapping: (0..1 + 1 + 30).map(|i| 94 * 16 + i).collect(),
            sequences: vec![
                span(0, 1, 1500, &long),
                span(1, 1, 1500, &long),
                span(2, 30, 30, &[94, 95]),
            ],
        };
        let layout = StepLayout::new(&batch, &shape).unwrap();
        let n = batch.num_tokens();
        // What CudaPagedAttention::prepare uploads and allocates for this layout.
        let allocated = 4 * (n + layout.token_seq.len() + layout.token_ctx.len())
            + 4 * layout.block_tables.len()
            + 4 * n * heads * layout.num_splits(CUDA_PARTITION) * (shape.head_dim + 2);
        let budget = step_device_bytes(n, 3, heads, &shape, 1500);
        assert_eq!(layout.num_splits(CUDA_PARTITION), 3);
        // At the full partition, what the step allocates plus the allowance for small steps'
        // narrower partitions (2 x 1024 / 2 kv heads token-splits).
        assert_eq!(
            budget - allocated,
            (1024 - n * 3) * heads * (shape.head_dim + 2) * 4
        );
        // A shorter step needs less than the budget at the longest context.
        let short = StepLayout::new(
            &AttentionBatch {
                slot_mapping: vec![94 * 16],
                sequences: vec![span(0, 1, 1, &[94])],
            },
            &shape,
        )
        .unwrap();
        assert_eq!(short.num_splits(CUDA_PARTITION), 1);
        assert!(step_device_bytes(1, 1, heads, &shape, 1) < budget);
    }

    #[test]
    fn small_decode_steps_get_partitions_that_fill_the_gpu() {
        let target = 2 * 132; // an H100 / H200
                              // One 7B sequence (4 kv heads) at 2k context: 16 blocks at 512 positions, 128 at 64.
        assert_eq!(choose_partition(1, 4, 2000, target), 64);
        // At 16k: 128 positions give 512 blocks.
        assert_eq!(choose_partition(1, 4, 16_000, target), 128);
        // 64 sequences decoding, or one 512-token prefill chunk: already enough blocks.
        assert_eq!(choose_partition(64, 4, 2000, target), 512);
        assert_eq!(choose_partition(512, 8, 600, target), 512);
        // Whatever the partition, the partial results stay within step_device_bytes's bound.
        for tokens in [1, 2, 3, 7, 16, 33, 64, 300] {
            for kv_heads in [1, 2, 4, 8] {
                for context in [1, 63, 64, 65, 511, 513, 2000, 16_000, 32_768] {
                    let partition = choose_partition(tokens, kv_heads, context, MAX_TARGET_BLOCKS);
                    let token_splits = tokens * context.div_ceil(partition);
                    let bound = (tokens * context.div_ceil(CUDA_PARTITION))
                        .max(2 * MAX_TARGET_BLOCKS.div_ceil(kv_heads));
                    assert!(
                        token_splits <= bound,
                        "{tokens} tokens, {kv_heads} kv heads, context {context}: partition {partition}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_what_a_kernel_would_read_out_of_bounds() {
        let ok = span(0, 1, 4, &[1]);
        let cases = [
            (vec![32], vec![ok.clone()], "slot 32"),
            (vec![0], vec![span(0, 1, 5, &[1])], "1 blocks, 5 context"),
            (vec![0], vec![span(0, 1, 4, &[8])], "block 8"),
            (vec![0, 1], vec![ok.clone()], "row 1 belongs to no sequence"),
            (vec![0], vec![ok.clone(), ok.clone()], "two sequences"),
            (vec![0], vec![span(0, 2, 4, &[1])], "rows 0..2 of 1"),
        ];
        for (slots, sequences, message) in cases {
            let batch = AttentionBatch {
                slot_mapping: slots,
                sequences,
            };
            let err = StepLayout::new(&batch, &shape()).unwrap_err().to_string();
            assert!(err.contains(message), "{err:?} should mention {message:?}");
        }
    }
}
