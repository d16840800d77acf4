//! Property tests of the block manager: after any sequence of admit / grow / fork / register / free,
//! reference counts equal the number of table entries holding each block, no block in use is on the
//! free list, and freeing everything returns the whole pool.

use proptest::prelude::*;
use rmr1::engine::block_manager::{BlockManager, SeqId};
use std::collections::HashMap;

const BLOCKS: usize = 24;
const BLOCK_SIZE: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Admit a new sequence whose prompt is `prefix_kind`'s shared prefix plus `extra` tokens.
    Admit {
        prefix_kind: u8,
        extra: usize,
    },
    /// Grow sequence (index into live ones) by n tokens, as a decode or prefill chunk would.
    Grow {
        which: usize,
        n: usize,
    },
    Fork {
        which: usize,
    },
    Free {
        which: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0usize..10).prop_map(|(prefix_kind, extra)| Op::Admit { prefix_kind, extra }),
        (0usize..8, 1usize..7).prop_map(|(which, n)| Op::Grow { which, n }),
        (0usize..8).prop_map(|which| Op::Fork { which }),
        (0usize..8).prop_map(|which| Op::Free { which }),
    ]
}

/// A model sequence: its tokens and how many of them are "computed" (written to the cache).
struct Live {
    tokens: Vec<u32>,
    computed: usize,
}

fn check_invariants(bm: &BlockManager, live: &HashMap<SeqId, Live>) {
    let mut holders = [0u32; BLOCKS];
    for (&id, l) in live {
        let table = bm.block_table(id);
        assert!(
            table.len() * BLOCK_SIZE >= l.computed,
            "table too short for computed tokens"
        );
        for &b in table {
            holders[b as usize] += 1;
        }
    }
    let mut in_use = 0;
    for (b, &h) in holders.iter().enumerate() {
        assert_eq!(
            bm.pool().ref_count(b as u32),
            h,
            "block {b}: refcount vs holders"
        );
        if h > 0 {
            in_use += 1;
        }
    }
    assert_eq!(
        bm.num_free() + in_use,
        BLOCKS,
        "free list + blocks in use = pool"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn no_leaks_no_premature_frees(ops in proptest::collection::vec(op(), 1..60)) {
        let mut bm = BlockManager::new(BLOCKS, BLOCK_SIZE);
        let mut live: HashMap<SeqId, Live> = HashMap::new();
        let mut order: Vec<SeqId> = Vec::new();
        let mut next: SeqId = 0;
        for op in ops {
            match op {
                Op::Admit { prefix_kind, extra } => {
                    let mut tokens: Vec<u32> = (0..9).map(|i| i * 10 + prefix_kind as u32).collect();
                    tokens.extend((0..extra as u32).map(|i| 1000 + next as u32 * 100 + i));
                    let prefix = bm.match_prefix(&tokens);
                    let cached = prefix.cached_tokens(BLOCK_SIZE);
                    prop_assert!(cached < tokens.len(), "one token is always left to compute");
                    if bm.admit(next, &prefix, tokens.len()).is_ok() {
                        // The hit blocks are exactly the registered ones for the same prefix.
                        prop_assert_eq!(&bm.block_table(next)[..prefix.blocks.len()], prefix.blocks.as_slice());
                        bm.register_computed(next, &tokens, tokens.len());
                        live.insert(next, Live { computed: tokens.len(), tokens });
                        order.push(next);
                    } else {
                        prop_assert!(bm.blocks_needed_to_admit(&prefix, tokens.len()) > bm.num_free());
                    }
                    next += 1;
                }
                Op::Grow { which, n } if !order.is_empty() => {
                    let id = order[which % order.len()];
                    let l = live.get_mut(&id).unwrap();
                    let start = l.computed;
                    let before: Vec<u32> = bm.block_table(id).to_vec();
                    match bm.grow(id, start, start + n) {
                        Ok(copies) => {
                            for (src, dst) in &copies {
                                // Copy-on-write only ever replaces the block being written into.
                                prop_assert_eq!(before[start / BLOCK_SIZE], *src);
                                prop_assert_eq!(bm.block_table(id)[start / BLOCK_SIZE], *dst);
                                prop_assert!(bm.pool().ref_count(*dst) == 1);
                            }
                            l.tokens.extend((0..n as u32).map(|i| 50_000 + id as u32 * 100 + start as u32 + i));
                            l.computed += n;
                            bm.register_computed(id, &l.tokens, l.computed);
                        }
                        Err(_) => prop_assert_eq!(bm.block_table(id), before.as_slice(), "failed grow changed nothing"),
                    }
                }
                Op::Fork { which } if !order.is_empty() => {
                    let parent = order[which % order.len()];
                    bm.fork(parent, next);
                    let p = &live[&parent];
                    live.insert(next, Live { tokens: p.tokens.clone(), computed: p.computed });
                    order.push(next);
                    next += 1;
                }
                Op::Free { which } if !order.is_empty() => {
                    let id = order.remove(which % order.len());
                    bm.free(id);
                    live.remove(&id);
                }
                _ => {}
            }
            check_invariants(&bm, &live);
        }
        for id in order {
            bm.free(id);
        }
        prop_assert_eq!(bm.num_free(), BLOCKS);
        for b in 0..BLOCKS as u32 {
            prop_assert_eq!(bm.pool().ref_count(b), 0);
        }
    }
}

#[test]
fn freed_prefix_blocks_stay_revivable_until_reused() {
    let mut bm = BlockManager::new(4, 2);
    let tokens = [1, 2, 3, 4, 5];
    let none = bm.match_prefix(&tokens);
    bm.admit(0, &none, 5).unwrap();
    bm.register_computed(0, &tokens, 5);
    let first_blocks = bm.block_table(0)[..2].to_vec();
    bm.free(0);
    assert_eq!(bm.num_free(), 4);
    // Same prompt again: the two full blocks come back from the free list.
    let hit = bm.match_prefix(&tokens);
    assert_eq!(hit.blocks, first_blocks);
    bm.admit(1, &hit, 5).unwrap();
    assert_eq!(bm.num_free(), 1);
    bm.free(1);
    // A different sequence that takes every block evicts the cached prefix.
    let other = [9, 9, 9, 9, 9, 9, 9, 9];
    let none = bm.match_prefix(&other);
    bm.admit(2, &none, 8).unwrap();
    assert!(bm.match_prefix(&tokens).blocks.is_empty());
}
