//! The KV block pool: reference counts, a free list in least-recently-freed order, and content hashes
//! for prefix caching.
//!
//! A block whose tokens are all written and whose content hash is known is *registered*: a later
//! sequence with the same prefix can take it instead of recomputing it. Freed blocks keep their hash
//! while they sit on the free list, so a prefix can still be revived until the block is reused.

use crate::model::BlockId;
use std::collections::{BTreeMap, HashMap};

/// Hash of a block's tokens chained with the hash of every block before it, so equal hashes mean
/// equal whole prefixes, not just equal blocks.
pub type BlockHash = [u8; 16];

pub fn chain_hash(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(parent.map(|p| p.as_slice()).unwrap_or(b"root"));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[derive(Debug)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, BlockId>,
    /// Free blocks keyed by when they were freed: the oldest is reused first (LRU eviction of cached
    /// prefixes).
    free: BTreeMap<u64, BlockId>,
    free_stamp: Vec<Option<u64>>,
    clock: u64,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        let mut pool = Self {
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            cached: HashMap::new(),
            free: BTreeMap::new(),
            free_stamp: vec![None; num_blocks],
            clock: 0,
        };
        for b in 0..num_blocks as BlockId {
            pool.push_free(b);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    fn push_free(&mut self, block: BlockId) {
        self.clock += 1;
        self.free.insert(self.clock, block);
        self.free_stamp[block as usize] = Some(self.clock);
    }

    fn take_from_free(&mut self, block: BlockId) {
        if let Some(stamp) = self.free_stamp[block as usize].take() {
            self.free.remove(&stamp);
        }
    }

    /// Takes the least recently freed block, forgetting whatever prefix it cached.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, block) = self.free.pop_first()?;
        self.free_stamp[block as usize] = None;
        if let Some(hash) = self.hashes[block as usize].take() {
            if self.cached.get(&hash) == Some(&block) {
                self.cached.remove(&hash);
            }
        }
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// The registered block holding exactly this prefix, if any.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// One more holder of `block` (a prefix-cache hit, or a fork sharing its parent's blocks).
    pub fn acquire(&mut self, block: BlockId) {
        if self.ref_counts[block as usize] == 0 {
            self.take_from_free(block);
        }
        self.ref_counts[block as usize] += 1;
    }

    /// One holder less; at zero the block goes back to the free list (keeping its hash).
    pub fn release(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block as usize];
        assert!(*rc > 0, "block {block} released more often than acquired");
        *rc -= 1;
        if *rc == 0 {
            self.push_free(block);
        }
    }

    /// Marks a fully written block as holding the prefix `hash`. If another block already holds that
    /// prefix (two sequences computed it at the same time), this one stays private.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) {
        if self.hashes[block as usize].is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.hashes[block as usize] = Some(hash);
        self.cached.insert(hash, block);
    }

    /// Forgets every cached prefix (the weights that computed them changed). Blocks stay allocated
    /// to whoever holds them; only their reuse by content is gone.
    pub fn forget_prefixes(&mut self) {
        self.cached.clear();
        self.hashes.iter_mut().for_each(|h| *h = None);
    }

    /// Fraction of blocks held by live sequences (cached-but-free blocks count as free).
    pub fn usage(&self) -> f64 {
        if self.num_blocks() == 0 {
            return 0.0;
        }
        1.0 - self.num_free() as f64 / self.num_blocks() as f64
    }
}
