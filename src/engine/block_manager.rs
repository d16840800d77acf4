//! Per-sequence block tables on top of the [`BlockPool`]: prefix-cache matching at admission, slot
//! allocation as sequences grow, copy-on-write when forks diverge, and release.

use super::block_pool::{chain_hash, BlockHash, BlockPool};
use crate::model::BlockId;
use std::collections::HashMap;

pub type SeqId = u64;

/// Not enough free blocks for the request; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks;

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// Leading blocks whose content hash is known (registered or taken from the cache).
    hashed: usize,
    last_hash: Option<BlockHash>,
}

#[derive(Debug)]
pub struct BlockManager {
    pool: BlockPool,
    block_size: usize,
    tables: HashMap<SeqId, SeqBlocks>,
}

/// What admitting a sequence would take from the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Cached blocks (in order) that hold the sequence's first tokens.
    pub blocks: Vec<BlockId>,
    pub hashes: Vec<BlockHash>,
}

impl PrefixMatch {
    pub fn cached_tokens(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0);
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            tables: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Forgets every cached prefix; only valid with no sequence holding blocks (their tables'
    /// hash chains would refer to forgotten blocks).
    pub fn forget_prefixes(&mut self) {
        assert!(
            self.tables.is_empty(),
            "prefixes forgotten while sequences hold blocks"
        );
        self.pool.forget_prefixes();
    }

    pub fn has_sequence(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.tables
            .get(&seq)
            .map(|t| t.blocks.as_slice())
            .unwrap_or(&[])
    }

    /// Cache slot of `position` in `seq` (the table must already cover it).
    pub fn slot(&self, seq: SeqId, position: usize) -> u32 {
        let block = self.tables[&seq].blocks[position / self.block_size];
        block * self.block_size as u32 + (position % self.block_size) as u32
    }

    /// The longest run of cached full blocks at the start of `tokens`. At least one token is always
    /// left to compute, because the step that computes it produces the logits to sample from.
    pub fn match_prefix(&self, tokens: &[u32]) -> PrefixMatch {
        let mut found = PrefixMatch {
            blocks: Vec::new(),
            hashes: Vec::new(),
        };
        let full = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent: Option<BlockHash> = None;
        for chunk in tokens.chunks(self.block_size).take(full) {
            let hash = chain_hash(parent.as_ref(), chunk);
            match self.pool.lookup(&hash) {
                Some(block) => {
                    found.blocks.push(block);
                    found.hashes.push(hash);
                    parent = Some(hash);
                }
                None => break,
            }
        }
        found
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Free blocks needed to admit a new sequence that reuses `prefix` and then computes up to
    /// `total_tokens`. Cached blocks sitting on the free list count, since claiming them takes them off.
    pub fn blocks_needed_to_admit(&self, prefix: &PrefixMatch, total_tokens: usize) -> usize {
        let revived = prefix
            .blocks
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == 0)
            .count();
        revived
            + self
                .blocks_for(total_tokens)
                .saturating_sub(prefix.blocks.len())
    }

    /// Creates `seq`'s table from a prefix match and grows it to `total_tokens`.
    pub fn admit(
        &mut self,
        seq: SeqId,
        prefix: &PrefixMatch,
        total_tokens: usize,
    ) -> Result<(), OutOfBlocks> {
        assert!(
            !self.tables.contains_key(&seq),
            "sequence {seq} admitted twice"
        );
        if self.blocks_needed_to_admit(prefix, total_tokens) > self.pool.num_free() {
            return Err(OutOfBlocks);
        }
        for &b in &prefix.blocks {
            self.pool.acquire(b);
        }
        self.tables.insert(
            seq,
            SeqBlocks {
                blocks: prefix.blocks.clone(),
                hashed: prefix.blocks.len(),
                last_hash: prefix.hashes.last().copied(),
            },
        );
        let copies = self
            .grow(seq, prefix.cached_tokens(self.block_size), total_tokens)
            .expect("capacity checked above");
        debug_assert!(copies.is_empty());
        Ok(())
    }

    /// Free blocks `grow(seq, first_new, total)` would take.
    pub fn blocks_needed_to_grow(
        &self,
        seq: SeqId,
        first_new: usize,
        total_tokens: usize,
    ) -> usize {
        let table = &self.tables[&seq].blocks;
        let cow = !first_new.is_multiple_of(self.block_size)
            && table
                .get(first_new / self.block_size)
                .is_some_and(|&b| self.pool.ref_count(b) > 1);
        self.blocks_for(total_tokens).saturating_sub(table.len()) + usize::from(cow)
    }

    /// Makes `seq`'s table cover positions `..total_tokens` where writing starts at `first_new`.
    /// If the block receiving `first_new` is shared with another sequence it is copied first; the
    /// returned `(src, dst)` pairs must be copied in the KV cache before the step runs.
    pub fn grow(
        &mut self,
        seq: SeqId,
        first_new: usize,
        total_tokens: usize,
    ) -> Result<Vec<(BlockId, BlockId)>, OutOfBlocks> {
        if self.blocks_needed_to_grow(seq, first_new, total_tokens) > self.pool.num_free() {
            return Err(OutOfBlocks);
        }
        let mut copies = Vec::new();
        let idx = first_new / self.block_size;
        let needs_cow = !first_new.is_multiple_of(self.block_size)
            && self.tables[&seq]
                .blocks
                .get(idx)
                .is_some_and(|&b| self.pool.ref_count(b) > 1);
        if needs_cow {
            let fresh = self.pool.allocate().expect("capacity checked");
            let table = self.tables.get_mut(&seq).expect("checked above");
            let old = std::mem::replace(&mut table.blocks[idx], fresh);
            self.pool.release(old);
            copies.push((old, fresh));
        }
        let want = self.blocks_for(total_tokens);
        while self.tables[&seq].blocks.len() < want {
            let fresh = self.pool.allocate().expect("capacity checked");
            self.tables
                .get_mut(&seq)
                .expect("checked")
                .blocks
                .push(fresh);
        }
        Ok(copies)
    }

    /// `child` shares all of `parent`'s blocks (n samples of one prompt); writes diverge copy-on-write.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        let table = self.tables[&parent].clone();
        for &b in &table.blocks {
            self.pool.acquire(b);
        }
        self.tables.insert(child, table);
    }

    /// Registers the content hash of every block of `seq` that `computed` tokens have filled, so later
    /// sequences can reuse them. `tokens` are the sequence's tokens (at least `computed` of them).
    pub fn register_computed(&mut self, seq: SeqId, tokens: &[u32], computed: usize) {
        let Some(table) = self.tables.get_mut(&seq) else {
            return;
        };
        let full = (computed / self.block_size).min(table.blocks.len());
        while table.hashed < full {
            let i = table.hashed;
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = chain_hash(table.last_hash.as_ref(), chunk);
            self.pool.register(table.blocks[i], hash);
            table.last_hash = Some(hash);
            table.hashed += 1;
        }
    }

    /// Returns all of `seq`'s blocks to the pool (cached prefixes stay revivable).
    pub fn free(&mut self, seq: SeqId) {
        if let Some(table) = self.tables.remove(&seq) {
            // Release from the end so a sequence's tail is reused before its (more shareable) head.
            for &b in table.blocks.iter().rev() {
                self.pool.release(b);
            }
        }
    }
}
