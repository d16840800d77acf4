//! Rank N candidate replies with pairwise judgments: every pair in both orders with Bradley-Terry
//! scores, or a seeded knockout bracket when N is large. This is how a GRPO run turns a pairwise
//! judge into per-rollout rewards.

use super::conversation::{PairInput, Turn};
use super::judge_model::JudgeModel;
use super::pipeline::{JudgeError, JudgeParams, JudgeReport};
use super::rank::{
    all_pairs_schedule, bradley_terry, order_by_scores, win_rates, Knockout, PairOutcome,
    RankStrategy,
};
use super::verdict::{InvalidReason, Side};
use crate::engine::Usage;
use std::time::{Duration, Instant};

/// Above this many candidates `RankStrategy` defaults to a knockout: all pairs costs N(N-1)
/// generations (56 at N = 8), a knockout about 2N.
pub const ALL_PAIRS_MAX_CANDIDATES: usize = 8;

/// One generation of a rank: `first` shown as Chatbot A, `second` as Chatbot B.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub first: usize,
    pub second: usize,
    pub verdict_shown: Result<Side, InvalidReason>,
    pub prob_first: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct RankReport {
    /// Candidate indices, best first.
    pub order: Vec<usize>,
    pub scores: Vec<f64>,
    pub win_rates: Vec<f64>,
    pub comparisons_per_candidate: Vec<usize>,
    pub method: &'static str,
    pub comparisons: Vec<Comparison>,
    pub usage: Usage,
    pub elapsed: Duration,
}

pub fn default_strategy(candidates: usize) -> RankStrategy {
    if candidates <= ALL_PAIRS_MAX_CANDIDATES {
        RankStrategy::AllPairs
    } else {
        RankStrategy::Knockout
    }
}

impl JudgeModel {
    /// `params.both_orders` is ignored: every match is judged in both orders by construction.
    pub async fn rank(
        &self,
        conversation: &[Turn],
        candidates: &[String],
        params: &JudgeParams,
        strategy: RankStrategy,
        bracket_seed: u64,
    ) -> Result<RankReport, JudgeError> {
        let started = Instant::now();
        let single = JudgeParams {
            both_orders: false,
            ..params.clone()
        };
        let mut comparisons = Vec::new();
        let mut usage = Usage::default();
        let n = candidates.len();
        let (order, scores, method) = match strategy {
            RankStrategy::AllPairs => {
                let pairs = all_pairs_schedule(n);
                comparisons = self
                    .compare(conversation, candidates, &pairs, &single, &mut usage)
                    .await?;
                let scores = bradley_terry(n, &pair_outcomes(&comparisons));
                (order_by_scores(&scores), scores, "bradley_terry")
            }
            RankStrategy::Knockout => {
                let mut bracket = Knockout::new(n, bracket_seed);
                while !bracket.is_done() {
                    let matches = bracket.next_matches();
                    let shown: Vec<(usize, usize)> = matches
                        .iter()
                        .flat_map(|&(i, j)| [(i, j), (j, i)])
                        .collect();
                    let round = self
                        .compare(conversation, candidates, &shown, &single, &mut usage)
                        .await?;
                    let results: Vec<(usize, usize, f64)> = matches
                        .iter()
                        .zip(round.chunks(2))
                        .map(|(&(i, j), both)| (i, j, match_probability(both)))
                        .collect();
                    bracket.record(&results);
                    comparisons.extend(round);
                }
                let (order, scores) = bracket.ranking();
                (order, scores, "knockout")
            }
        };
        let outcomes = pair_outcomes(&comparisons);
        let mut comparisons_per_candidate = vec![0; n];
        for c in &comparisons {
            comparisons_per_candidate[c.first] += 1;
            comparisons_per_candidate[c.second] += 1;
        }
        Ok(RankReport {
            order,
            scores,
            win_rates: win_rates(n, &outcomes),
            comparisons_per_candidate,
            method,
            comparisons,
            usage,
            elapsed: started.elapsed(),
        })
    }

    /// Runs the shown pairs concurrently (the engine batches them; the shared system prompt and
    /// conversation hit the prefix cache).
    async fn compare(
        &self,
        conversation: &[Turn],
        candidates: &[String],
        shown: &[(usize, usize)],
        params: &JudgeParams,
        usage: &mut Usage,
    ) -> Result<Vec<Comparison>, JudgeError> {
        let inputs: Vec<PairInput> = shown
            .iter()
            .map(|&(i, j)| PairInput::Responses {
                conversation: conversation.to_vec(),
                response_a: candidates[i].clone(),
                response_b: candidates[j].clone(),
            })
            .collect();
        let reports: Vec<JudgeReport> = futures::future::try_join_all(
            inputs.iter().map(|input| self.judge(input, params, None)),
        )
        .await?;
        Ok(shown
            .iter()
            .zip(reports)
            .map(|(&(first, second), report)| {
                usage.prompt_tokens += report.usage.prompt_tokens;
                usage.completion_tokens += report.usage.completion_tokens;
                usage.cached_tokens += report.usage.cached_tokens;
                let order = &report.orders[0];
                Comparison {
                    first,
                    second,
                    verdict_shown: order.verdict_shown,
                    prob_first: order.prob_a_shown,
                }
            })
            .collect())
    }
}

fn pair_outcomes(comparisons: &[Comparison]) -> Vec<PairOutcome> {
    comparisons
        .iter()
        .map(|c| PairOutcome {
            first: c.first,
            second: c.second,
            p_first: c.prob_first,
            winner: match c.verdict_shown {
                Ok(Side::A) => Some(c.first),
                Ok(Side::B) => Some(c.second),
                Err(_) => None,
            },
        })
        .collect()
}

/// P(i beats j) from the two orders of one match (`(i, j)` then `(j, i)`): the mean of the
/// available probabilities, else the share of valid verdicts won, else a coin (0.5).
fn match_probability(both: &[Comparison]) -> f64 {
    let [ij, ji] = both else {
        return 0.5;
    };
    let probs: Vec<f64> = [ij.prob_first, ji.prob_first.map(|p| 1.0 - p)]
        .into_iter()
        .flatten()
        .collect();
    if !probs.is_empty() {
        return probs.iter().sum::<f64>() / probs.len() as f64;
    }
    let wins: Vec<f64> = [
        ij.verdict_shown
            .as_ref()
            .ok()
            .map(|s| (*s == Side::A) as u8 as f64),
        ji.verdict_shown
            .as_ref()
            .ok()
            .map(|s| (*s == Side::B) as u8 as f64),
    ]
    .into_iter()
    .flatten()
    .collect();
    if wins.is_empty() {
        0.5
    } else {
        wins.iter().sum::<f64>() / wins.len() as f64
    }
}
