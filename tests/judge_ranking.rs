//! RM-R1 ranking in `rmr1::judge`: the all-pairs schedule, Bradley-Terry scores, win rates,
//! `order_by_scores` and the `Knockout` bracket. Pure logic, no model.

use rmr1::judge::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

// ---------------------------------------------------------------------------------------------
// Ranking

fn outcome(
    first: usize,
    second: usize,
    p_first: Option<f64>,
    winner: Option<usize>,
) -> PairOutcome {
    PairOutcome {
        first,
        second,
        p_first,
        winner,
    }
}

#[test]
fn all_pairs_schedule_covers_every_ordered_pair_once() {
    assert_eq!(
        all_pairs_schedule(3),
        vec![(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    );
    assert!(all_pairs_schedule(0).is_empty());
    assert!(all_pairs_schedule(1).is_empty());
    let mut five = all_pairs_schedule(5);
    assert_eq!(five.len(), 20);
    five.sort();
    five.dedup();
    assert_eq!(five.len(), 20);
    assert!(five.iter().all(|(i, j)| i != j && *i < 5 && *j < 5));
}

#[test]
fn bradley_terry_two_candidates_by_hand() {
    // With the prior, 0 has 1.1 wins and 1 has 0.1: p0 / p1 = 11, centred logs ±ln(11)/2.
    let scores = bradley_terry(2, &[outcome(0, 1, None, Some(0))]);
    let half = 11.0_f64.ln() / 2.0;
    assert!((scores[0] - half).abs() < 1e-9, "{scores:?}");
    assert!((scores[1] + half).abs() < 1e-9, "{scores:?}");
    assert_eq!(bradley_terry(1, &[]), vec![0.0]);
    assert!(bradley_terry(0, &[]).is_empty());
}

#[test]
fn bradley_terry_three_candidates_satisfy_the_mm_fixed_point() {
    let outcomes = vec![
        outcome(0, 1, None, Some(0)),
        outcome(1, 0, None, Some(0)),
        outcome(1, 2, None, Some(1)),
        outcome(2, 1, Some(0.3), Some(2)), // probability wins over the text verdict: 1 gets 0.7
        outcome(2, 0, None, Some(2)),
        outcome(0, 2, Some(0.75), Some(0)),
    ];
    let scores = bradley_terry(3, &outcomes);
    assert!(scores.iter().sum::<f64>().abs() < 1e-9, "centred");
    // Soft wins by hand, plus 0.1 prior wins against each opponent.
    let prior = rmr1::judge::rank::BT_PRIOR_WINS;
    let mut wins = [[0.0_f64; 3]; 3];
    wins[0][1] = 2.0;
    wins[1][2] = 1.0 + 0.7;
    wins[2][1] = 0.3;
    wins[2][0] = 1.0 + 0.25;
    wins[0][2] = 0.75;
    let strength: Vec<f64> = scores.iter().map(|s| s.exp()).collect();
    for i in 0..3 {
        let total: f64 = (0..3).filter(|&j| j != i).map(|j| wins[i][j] + prior).sum();
        let expected: f64 = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                (wins[i][j] + wins[j][i] + 2.0 * prior) * strength[i] / (strength[i] + strength[j])
            })
            .sum();
        assert!(
            (total - expected).abs() < 1e-6,
            "candidate {i}: {total} vs {expected}"
        );
    }
    // An invalid judgment without probability carries no evidence.
    let mut with_invalid = outcomes.clone();
    with_invalid.push(outcome(1, 2, None, None));
    let again = bradley_terry(3, &with_invalid);
    assert!(scores.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-9));
}

#[test]
fn bradley_terry_orders_a_transitive_tournament() {
    let strength = [2.0, 0.0, 3.0, 1.0]; // best is 2, then 0, 3, 1
    let outcomes: Vec<PairOutcome> = all_pairs_schedule(4)
        .into_iter()
        .map(|(i, j)| {
            let winner = if strength[i] > strength[j] { i } else { j };
            outcome(i, j, None, Some(winner))
        })
        .collect();
    let scores = bradley_terry(4, &outcomes);
    assert_eq!(order_by_scores(&scores), vec![2, 0, 3, 1]);
    assert!(scores.iter().all(|s| s.is_finite()));
    assert_eq!(order_by_scores(&win_rates(4, &outcomes)), vec![2, 0, 3, 1]);
    assert_eq!(
        win_rates(4, &outcomes),
        vec![4.0 / 6.0, 0.0, 1.0, 2.0 / 6.0]
    );
}

#[test]
fn win_rates_by_hand() {
    let outcomes = vec![
        outcome(0, 1, Some(0.8), Some(0)),
        outcome(1, 0, None, Some(1)),
        outcome(0, 2, None, None), // invalid: ignored
        outcome(2, 1, None, Some(1)),
        outcome(7, 1, None, Some(7)), // out of range: ignored
    ];
    let rates = win_rates(4, &outcomes);
    assert!(close(rates[0], 0.8 / 2.0));
    assert!(close(rates[1], (0.2 + 1.0 + 1.0) / 3.0));
    assert!(close(rates[2], 0.0));
    assert!(close(rates[3], 0.5), "no comparisons: neutral");
}

#[test]
fn order_by_scores_breaks_ties_by_index_and_puts_nan_last() {
    assert_eq!(
        order_by_scores(&[1.0, 3.0, 3.0, f64::NAN, -1.0]),
        vec![1, 2, 0, 4, 3]
    );
    assert!(order_by_scores(&[]).is_empty());
}

/// Runs a knockout where the higher `strength` always wins; returns it with the number of rounds.
fn run_knockout(strength: &[f64], seed: u64) -> (Knockout, usize) {
    let mut knockout = Knockout::new(strength.len(), seed);
    let mut rounds = 0;
    while !knockout.is_done() {
        let matches = knockout.next_matches();
        assert!(!matches.is_empty());
        let results: Vec<(usize, usize, f64)> = matches
            .iter()
            .map(|&(a, b)| (a, b, if strength[a] > strength[b] { 1.0 } else { 0.0 }))
            .collect();
        knockout.record(&results);
        rounds += 1;
        assert!(rounds <= strength.len(), "the bracket must finish");
    }
    (knockout, rounds)
}

fn assert_is_permutation(order: &[usize], n: usize) {
    let mut sorted = order.to_vec();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
}

#[test]
fn knockout_with_eight_candidates() {
    let strength = [3.0, 7.0, 1.0, 9.0, 4.0, 0.0, 2.0, 5.0]; // strongest: 3, then 1
    for seed in [0, 1, 42] {
        let (knockout, rounds) = run_knockout(&strength, seed);
        assert_eq!(rounds, 3);
        assert_eq!(knockout.champion(), Some(3));
        assert!(knockout.next_matches().is_empty());
        let (order, scores) = knockout.ranking();
        assert_is_permutation(&order, 8);
        assert_eq!(order[0], 3);
        assert!(
            close(scores[3], 3.0 + 1.0),
            "three rounds won, always certain"
        );
        // The runner-up survived two rounds; the other six are below it.
        let runner_up = order[1];
        assert!(scores[runner_up] >= 2.0 && scores[runner_up] < 3.0);
        assert_eq!(
            scores.iter().filter(|s| **s < 1.0).count(),
            4,
            "four first-round losers"
        );
    }
}

#[test]
fn knockout_with_five_candidates_gives_one_bye_per_odd_round() {
    let strength = [1.0, 5.0, 2.0, 4.0, 3.0]; // strongest: 1
    for seed in [0, 3, 99] {
        let mut knockout = Knockout::new(5, seed);
        assert_eq!(knockout.next_matches().len(), 2);
        let (finished, rounds) = run_knockout(&strength, seed);
        assert_eq!(rounds, 3, "5 → 3 → 2 → 1");
        assert_eq!(finished.champion(), Some(1));
        let (order, _) = finished.ranking();
        assert_is_permutation(&order, 5);
        assert_eq!(order[0], 1);

        // Partial results do not advance the round; reversed pairs are understood.
        let first_round = knockout.next_matches();
        let (a, b) = first_round[0];
        knockout.record(&[(b, a, 0.25)]);
        assert_eq!(knockout.round(), 0);
        let (c, d) = first_round[1];
        knockout.record(&[(c, d, 0.5), (9, 8, 1.0)]);
        assert_eq!(knockout.round(), 1);
        let next = knockout.next_matches();
        assert_eq!(next.len(), 1);
        let bye = (0..5).find(|x| ![a, b, c, d].contains(x)).unwrap();
        // a won 0.75 (given as b beating a with 0.25); the 0.5 tie goes to the first player, c.
        let advanced: Vec<usize> = next.iter().flat_map(|&(x, y)| [x, y]).collect();
        assert_eq!(
            advanced,
            vec![bye, a],
            "the bye plays first in the next round"
        );
    }
}

#[test]
fn knockout_edge_sizes_and_seeding() {
    let empty = Knockout::new(0, 1);
    assert!(empty.is_done());
    assert_eq!(empty.champion(), None);
    assert!(empty.ranking().0.is_empty());
    let single = Knockout::new(1, 1);
    assert!(single.is_done());
    assert_eq!(single.champion(), Some(0));
    assert_eq!(single.ranking().0, vec![0]);
    assert_eq!(
        Knockout::new(16, 5).next_matches(),
        Knockout::new(16, 5).next_matches()
    );
    let brackets: Vec<_> = (0..10)
        .map(|seed| Knockout::new(16, seed).next_matches())
        .collect();
    assert!(
        brackets.iter().any(|bracket| *bracket != brackets[0]),
        "the seed shuffles"
    );
    assert_eq!(
        "knockout".parse::<RankStrategy>(),
        Ok(RankStrategy::Knockout)
    );
    assert_eq!(
        "ALL_PAIRS".parse::<RankStrategy>(),
        Ok(RankStrategy::AllPairs)
    );
    assert!("best".parse::<RankStrategy>().is_err());
}
