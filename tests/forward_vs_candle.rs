//! The batched paged forward against candle-transformers' Qwen2 on the same random weights (f32):
//! mixed-length batches, chunked prefill at odd boundaries, prefix-cache hits.

mod common;

use common::{max_abs_diff, tokens, write_tiny_model, Oracle, TinySpec};
use rmr1::engine::block_manager::{BlockManager, SeqId};
use rmr1::model::attention::cpu::CpuPagedAttention;
use rmr1::model::attention::KvCacheDtype;
use rmr1::model::{AttentionBatch, CacheShape, ForwardBatch, PagedAttention, Qwen2, SequenceSpan};

const TOL: f32 = 1e-4;

struct Runner {
    model: Qwen2,
    attention: CpuPagedAttention,
    blocks: BlockManager,
}

/// A piece of work for one step: `n` tokens of `seq` starting at position `start`.
struct Chunk<'a> {
    seq: SeqId,
    tokens: &'a [u32],
    start: usize,
    n: usize,
}

impl Runner {
    fn new(dir: &std::path::Path, num_blocks: usize, block_size: usize) -> Self {
        let loaded = common::load_tiny(dir);
        let cfg = loaded.model.config().clone();
        let shape = CacheShape {
            num_layers: cfg.num_hidden_layers,
            num_blocks,
            block_size,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        };
        Self {
            attention: CpuPagedAttention::new(shape, cfg.num_attention_heads, KvCacheDtype::F32),
            model: loaded.model,
            blocks: BlockManager::new(num_blocks, block_size),
        }
    }

    /// Runs the chunks as one flat batch; returns logits of every row, grouped per chunk.
    fn step(&mut self, chunks: &[Chunk]) -> Vec<Vec<Vec<f32>>> {
        let mut batch = ForwardBatch {
            attention: AttentionBatch::default(),
            ..Default::default()
        };
        let mut copies = Vec::new();
        for c in chunks {
            if !self.blocks.has_sequence(c.seq) {
                let prefix = self.blocks.match_prefix(&c.tokens[..c.start + c.n]);
                assert_eq!(
                    prefix.cached_tokens(self.blocks.block_size()),
                    c.start,
                    "test set-up: expected cache hit"
                );
                self.blocks.admit(c.seq, &prefix, c.start + c.n).unwrap();
            } else {
                copies.extend(self.blocks.grow(c.seq, c.start, c.start + c.n).unwrap());
            }
            let query_start = batch.tokens.len();
            for p in c.start..c.start + c.n {
                batch.tokens.push(c.tokens[p]);
                batch.positions.push(p as u32);
                batch
                    .attention
                    .slot_mapping
                    .push(self.blocks.slot(c.seq, p));
                batch.logit_rows.push((batch.tokens.len() - 1) as u32);
            }
            batch.attention.sequences.push(SequenceSpan {
                query_start,
                query_len: c.n,
                context_len: c.start + c.n,
                block_table: self.blocks.block_table(c.seq).to_vec(),
            });
        }
        self.attention.copy_blocks(&copies).unwrap();
        let logits: Vec<Vec<f32>> = self
            .model
            .forward(&batch, &mut self.attention)
            .unwrap()
            .to_vec2()
            .unwrap();
        for c in chunks {
            self.blocks
                .register_computed(c.seq, c.tokens, c.start + c.n);
        }
        let mut rows = logits.into_iter();
        chunks
            .iter()
            .map(|c| rows.by_ref().take(c.n).collect())
            .collect()
    }
}

fn assert_close(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: row count");
    let worst = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max);
    assert!(worst <= TOL, "{what}: max |Δlogit| = {worst:e} > {TOL:e}");
    // The comparison must be meaningful: logits are not all near zero.
    let spread = reference[0].iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(spread > 0.1, "{what}: degenerate reference logits");
}

#[test]
fn mixed_length_batch_matches_candle() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let mut oracle = Oracle::new(dir.path());
    let mut runner = Runner::new(dir.path(), 64, 16);
    let seqs: Vec<Vec<u32>> = [5usize, 17, 33, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(i as u64, n, 96))
        .collect();
    let chunks: Vec<Chunk> = seqs
        .iter()
        .enumerate()
        .map(|(i, t)| Chunk {
            seq: i as SeqId,
            tokens: t,
            start: 0,
            n: t.len(),
        })
        .collect();
    let out = runner.step(&chunks);
    for (i, t) in seqs.iter().enumerate() {
        assert_close(
            &out[i],
            &oracle.logits(t),
            &format!("sequence {i} of {} tokens", t.len()),
        );
    }

    // Then decode steps for all of them together, each at its own position.
    let mut grown = seqs.clone();
    for step in 0..3 {
        for (i, g) in grown.iter_mut().enumerate() {
            g.push(2 + ((i * 7 + step * 13) % 90) as u32);
        }
        let chunks: Vec<Chunk> = grown
            .iter()
            .enumerate()
            .map(|(i, t)| Chunk {
                seq: i as SeqId,
                tokens: t,
                start: t.len() - 1,
                n: 1,
            })
            .collect();
        let out = runner.step(&chunks);
        for (i, t) in grown.iter().enumerate() {
            let reference = oracle.logits(t);
            assert_close(
                &out[i],
                &reference[t.len() - 1..],
                &format!("decode step {step}, sequence {i}"),
            );
        }
    }
}

#[test]
fn chunked_prefill_at_odd_boundaries_matches_candle() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(
        dir.path(),
        &TinySpec {
            tie_embeddings: true,
            ..TinySpec::default()
        },
    );
    let mut oracle = Oracle::new(dir.path());
    // Block size 8 so chunks straddle block edges.
    let mut runner = Runner::new(dir.path(), 32, 8);
    let t = tokens(42, 61, 96);
    let other = tokens(43, 29, 96);
    let reference = oracle.logits(&t);
    let other_reference = oracle.logits(&other);
    let mut start = 0;
    let mut other_start = 0;
    for (k, n) in [7usize, 13, 1, 3, 20, 17].into_iter().enumerate() {
        // Another sequence's chunks ride along in the same batches.
        let m = [5usize, 9, 2, 11, 2, 0][k];
        let mut chunks = vec![Chunk {
            seq: 0,
            tokens: &t,
            start,
            n,
        }];
        if m > 0 {
            chunks.push(Chunk {
                seq: 1,
                tokens: &other,
                start: other_start,
                n: m,
            });
        }
        let out = runner.step(&chunks);
        assert_close(
            &out[0],
            &reference[start..start + n],
            &format!("chunk {k} at {start}+{n}"),
        );
        if m > 0 {
            assert_close(
                &out[1],
                &other_reference[other_start..other_start + m],
                &format!("rider chunk {k}"),
            );
        }
        start += n;
        other_start += m;
    }
    assert_eq!(start, t.len());
}

#[test]
fn prefix_cache_hit_matches_candle_and_reuses_identical_kv() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let mut oracle = Oracle::new(dir.path());
    let mut runner = Runner::new(dir.path(), 64, 16);
    let shared = tokens(7, 35, 96);
    let mut a = shared.clone();
    a.extend(tokens(8, 6, 96));
    let mut b = shared.clone();
    b.extend(tokens(9, 12, 96));

    runner.step(&[Chunk {
        seq: 0,
        tokens: &a,
        start: 0,
        n: a.len(),
    }]);
    let hit = runner.blocks.match_prefix(&b);
    assert_eq!(hit.blocks.len(), 2, "two full shared blocks of 16");
    assert_eq!(&runner.blocks.block_table(0)[..2], hit.blocks.as_slice());

    // Sequence b computes only its uncached tail, attending to a's cached blocks.
    let out = runner.step(&[Chunk {
        seq: 1,
        tokens: &b,
        start: 32,
        n: b.len() - 32,
    }]);
    assert_close(
        &out[0],
        &oracle.logits(&b)[32..],
        "tail after a prefix-cache hit",
    );
    assert_eq!(&runner.blocks.block_table(1)[..2], hit.blocks.as_slice());

    // The shared blocks hold exactly what computing b from scratch writes.
    let mut fresh = Runner::new(dir.path(), 64, 16);
    fresh.step(&[Chunk {
        seq: 5,
        tokens: &b,
        start: 0,
        n: b.len(),
    }]);
    for layer in 0..2 {
        for (i, &block) in hit.blocks.iter().enumerate() {
            let (k1, v1) = runner.attention.read_block(layer, block).unwrap();
            let (k2, v2) = fresh
                .attention
                .read_block(layer, fresh.blocks.block_table(5)[i])
                .unwrap();
            assert!(max_abs_diff(&k1, &k2) <= 1e-5 && max_abs_diff(&v1, &v2) <= 1e-5);
        }
    }
}

#[test]
fn forked_sequences_diverge_copy_on_write() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let mut oracle = Oracle::new(dir.path());
    let mut runner = Runner::new(dir.path(), 64, 16);
    let prompt = tokens(11, 21, 96); // ends inside the second block, which the fork then shares
    runner.step(&[Chunk {
        seq: 0,
        tokens: &prompt,
        start: 0,
        n: prompt.len(),
    }]);
    runner.blocks.fork(0, 1);
    assert_eq!(runner.blocks.block_table(0), runner.blocks.block_table(1));
    let mut a = prompt.clone();
    a.push(10);
    let mut b = prompt.clone();
    b.push(20);
    let out = runner.step(&[
        Chunk {
            seq: 0,
            tokens: &a,
            start: prompt.len(),
            n: 1,
        },
        Chunk {
            seq: 1,
            tokens: &b,
            start: prompt.len(),
            n: 1,
        },
    ]);
    assert_ne!(
        runner.blocks.block_table(0)[1],
        runner.blocks.block_table(1)[1],
        "partial block copied"
    );
    assert_eq!(
        runner.blocks.block_table(0)[0],
        runner.blocks.block_table(1)[0],
        "full block still shared"
    );
    assert_close(&out[0], &oracle.logits(&a)[a.len() - 1..], "fork a");
    assert_close(&out[1], &oracle.logits(&b)[b.len() - 1..], "fork b");
}
