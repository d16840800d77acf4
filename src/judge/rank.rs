//! Ranking N candidates from pairwise judgments: every pair in both orders with Bradley–Terry
//! scores (accurate, N·(N−1) judgments), or a knockout bracket for large N (about 2·N judgments).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RankStrategy {
    /// Judge every ordered pair and fit Bradley–Terry strengths.
    AllPairs,
    /// Single-elimination bracket ([`Knockout`]); only the champion is fully reliable.
    Knockout,
}

impl RankStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RankStrategy::AllPairs => "all_pairs",
            RankStrategy::Knockout => "knockout",
        }
    }
}

impl fmt::Display for RankStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rank strategy {given:?}: expected one of \"all_pairs\", \"knockout\"")]
pub struct UnknownRankStrategy {
    pub given: String,
}

impl FromStr for RankStrategy {
    type Err = UnknownRankStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [RankStrategy::AllPairs, RankStrategy::Knockout]
            .into_iter()
            .find(|strategy| strategy.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRankStrategy {
                given: s.to_string(),
            })
    }
}

/// Every ordered pair `(shown as A, shown as B)` with `i != j`, both orders of a pair adjacent, so
/// each unordered pair is judged once in each position and position bias cancels.
pub fn all_pairs_schedule(n: usize) -> Vec<(usize, usize)> {
    let mut schedule = Vec::with_capacity(n * n.saturating_sub(1));
    for i in 0..n {
        for j in i + 1..n {
            schedule.push((i, j));
            schedule.push((j, i));
        }
    }
    schedule
}

/// One judged match: `first` was shown as A, `second` as B.
#[derive(Debug, Clone, PartialEq)]
pub struct PairOutcome {
    pub first: usize,
    pub second: usize,
    /// P(first wins), when verdict probabilities were available.
    pub p_first: Option<f64>,
    /// The text verdict's winner; None when the judgment was invalid.
    pub winner: Option<usize>,
}

/// Pseudo-wins each candidate gets against every other one before any data, so strengths stay
/// finite for a candidate that never wins (or never loses) — the plain MLE would diverge there.
pub const BT_PRIOR_WINS: f64 = 0.1;
const BT_TOLERANCE: f64 = 1e-9;
const BT_MAX_ITERATIONS: usize = 1000;

/// Soft wins of `first` over `second`, or None when the outcome carries no evidence (invalid
/// judgment without probability, out-of-range or self-match indices, NaN probability).
fn soft_result(n: usize, outcome: &PairOutcome) -> Option<(usize, usize, f64)> {
    let (first, second) = (outcome.first, outcome.second);
    if first >= n || second >= n || first == second {
        return None;
    }
    let p = match (outcome.p_first, outcome.winner) {
        (Some(p), _) if !p.is_nan() => p.clamp(0.0, 1.0),
        (_, Some(winner)) if winner == first => 1.0,
        (_, Some(winner)) if winner == second => 0.0,
        _ => return None,
    };
    Some((first, second, p))
}

/// `wins[i][j]`: soft wins of i over j, summed over outcomes.
fn win_matrix(n: usize, outcomes: &[PairOutcome]) -> Vec<Vec<f64>> {
    let mut wins = vec![vec![0.0; n]; n];
    for (first, second, p) in outcomes.iter().filter_map(|o| soft_result(n, o)) {
        wins[first][second] += p;
        wins[second][first] += 1.0 - p;
    }
    wins
}

/// Bradley–Terry log-strengths (centred to mean 0; higher is better) fitted by Hunter's (2004)
/// MM iteration `p_i ← W_i / Σ_j n_ij / (p_i + p_j)` on soft wins, where every pair also gets
/// [`BT_PRIOR_WINS`] pseudo-wins each way. Stops when no log-strength moves by more than 1e-9,
/// or after 1000 iterations.
pub fn bradley_terry(n: usize, outcomes: &[PairOutcome]) -> Vec<f64> {
    if n < 2 {
        return vec![0.0; n];
    }
    let mut wins = win_matrix(n, outcomes);
    for (i, row) in wins.iter_mut().enumerate() {
        for (j, w) in row.iter_mut().enumerate() {
            if i != j {
                *w += BT_PRIOR_WINS;
            }
        }
    }
    let total_wins: Vec<f64> = wins.iter().map(|row| row.iter().sum()).collect();
    let mut strength = vec![1.0_f64; n];
    for _ in 0..BT_MAX_ITERATIONS {
        let mut next: Vec<f64> = (0..n)
            .map(|i| {
                let denominator: f64 = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (wins[i][j] + wins[j][i]) / (strength[i] + strength[j]))
                    .sum();
                total_wins[i] / denominator
            })
            .collect();
        // BT is invariant to scale; pinning the geometric mean to 1 keeps the numbers tame.
        let log_mean = next.iter().map(|s| s.ln()).sum::<f64>() / n as f64;
        next.iter_mut().for_each(|s| *s /= log_mean.exp());
        let moved = next
            .iter()
            .zip(&strength)
            .map(|(a, b)| (a.ln() - b.ln()).abs())
            .fold(0.0, f64::max);
        strength = next;
        if moved < BT_TOLERANCE {
            break;
        }
    }
    let logs: Vec<f64> = strength.iter().map(|s| s.ln()).collect();
    let mean = logs.iter().sum::<f64>() / n as f64;
    logs.into_iter().map(|l| l - mean).collect()
}

/// Soft wins divided by judged comparisons per candidate (no prior); 0.5 for a candidate with no
/// valid comparison, since there is no evidence either way.
pub fn win_rates(n: usize, outcomes: &[PairOutcome]) -> Vec<f64> {
    let mut wins = vec![0.0; n];
    let mut games = vec![0usize; n];
    for (first, second, p) in outcomes.iter().filter_map(|o| soft_result(n, o)) {
        wins[first] += p;
        wins[second] += 1.0 - p;
        games[first] += 1;
        games[second] += 1;
    }
    wins.iter()
        .zip(&games)
        .map(|(w, &g)| if g == 0 { 0.5 } else { w / g as f64 })
        .collect()
}

/// Candidate indices best first; ties (and NaN, ranked last) keep index order.
pub fn order_by_scores(scores: &[f64]) -> Vec<usize> {
    let key = |i: usize| {
        if scores[i].is_nan() {
            f64::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order
}

/// A single-elimination bracket driven by the caller: ask for [`Knockout::next_matches`], judge
/// each match (in both orders), [`Knockout::record`] the results, repeat until
/// [`Knockout::is_done`].
#[derive(Debug, Clone)]
pub struct Knockout {
    n: usize,
    /// This round's players in bracket order; pairs are (0,1), (2,3), …; an odd last one has a bye.
    alive: Vec<usize>,
    /// Results of this round's matches, by match index.
    pending: Vec<Option<f64>>,
    round: usize,
    /// Rounds each candidate took part in without being eliminated (byes count).
    survived: Vec<usize>,
    probability_sum: Vec<f64>,
    matches_played: Vec<usize>,
}

impl Knockout {
    /// A bracket over candidates `0..n` in an order shuffled by `seed` (so candidate order, e.g.
    /// generation order, cannot decide who meets whom early).
    pub fn new(n: usize, seed: u64) -> Self {
        let mut alive: Vec<usize> = (0..n).collect();
        seeded_shuffle(&mut alive, seed);
        let mut knockout = Knockout {
            n,
            alive,
            pending: Vec::new(),
            round: 0,
            survived: vec![0; n],
            probability_sum: vec![0.0; n],
            matches_played: vec![0; n],
        };
        knockout.pending = vec![None; knockout.alive.len() / 2];
        knockout
    }

    /// Current round, from 0.
    pub fn round(&self) -> usize {
        self.round
    }

    /// This round's matches `(first, second)`; empty when done.
    pub fn next_matches(&self) -> Vec<(usize, usize)> {
        if self.is_done() {
            return Vec::new();
        }
        self.alive
            .chunks_exact(2)
            .map(|pair| (pair[0], pair[1]))
            .collect()
    }

    /// Records `(first, second, P(first beats second))` for matches of the current round; a
    /// match given as `(second, first, p)` is understood as `1 - p`. Results for pairs that are
    /// not a current match are ignored. Once every match of the round has a result, winners
    /// advance: P > 0.5 wins, and an exact 0.5 (or NaN) goes to the match's first player.
    pub fn record(&mut self, results: &[(usize, usize, f64)]) {
        for &(first, second, p) in results {
            let p = if p.is_nan() { 0.5 } else { p.clamp(0.0, 1.0) };
            for (index, pair) in self.alive.chunks_exact(2).enumerate() {
                if (pair[0], pair[1]) == (first, second) {
                    self.pending[index] = Some(p);
                } else if (pair[1], pair[0]) == (first, second) {
                    self.pending[index] = Some(1.0 - p);
                }
            }
        }
        if !self.is_done() && self.pending.iter().all(Option::is_some) {
            self.advance();
        }
    }

    fn advance(&mut self) {
        let mut winners = Vec::with_capacity(self.alive.len() / 2 + 1);
        // The bye goes first next round, so it cannot land on the same player twice in a row.
        if self.alive.len() % 2 == 1 {
            let bye = self.alive[self.alive.len() - 1];
            self.survived[bye] += 1;
            winners.push(bye);
        }
        for (pair, p_first) in self.alive.chunks_exact(2).zip(&self.pending) {
            let p_first = p_first.unwrap_or(0.5);
            let (first, second) = (pair[0], pair[1]);
            self.probability_sum[first] += p_first;
            self.probability_sum[second] += 1.0 - p_first;
            self.matches_played[first] += 1;
            self.matches_played[second] += 1;
            let winner = if p_first >= 0.5 { first } else { second };
            self.survived[winner] += 1;
            winners.push(winner);
        }
        self.alive = winners;
        self.pending = vec![None; self.alive.len() / 2];
        self.round += 1;
    }

    pub fn is_done(&self) -> bool {
        self.alive.len() <= 1
    }

    /// The winner, once the bracket is done (None for zero candidates).
    pub fn champion(&self) -> Option<usize> {
        if self.is_done() {
            self.alive.first().copied()
        } else {
            None
        }
    }

    /// `(order best first, score per candidate)`. Score = rounds survived (the champion survives
    /// every round) + mean win probability over the matches played (0.5 before any). The mean is
    /// below 1 for anyone who lost a match, so it only breaks ties between candidates eliminated
    /// in the same round. Before the bracket is done this is the provisional standing.
    pub fn ranking(&self) -> (Vec<usize>, Vec<f64>) {
        let scores: Vec<f64> = (0..self.n)
            .map(|i| {
                let mean_p = if self.matches_played[i] == 0 {
                    0.5
                } else {
                    self.probability_sum[i] / self.matches_played[i] as f64
                };
                self.survived[i] as f64 + mean_p
            })
            .collect();
        (order_by_scores(&scores), scores)
    }
}

/// Fisher–Yates with SplitMix64: the bracket must be reproducible from the seed across releases,
/// which `rand`'s `StdRng` does not promise.
fn seeded_shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
