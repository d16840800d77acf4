//! Verdict probabilities and position debiasing: turning verdict-token log-probabilities and the
//! judgments of both presentation orders into one verdict and one P(candidate A wins).

use super::verdict::{InvalidReason, Side};

/// Text the model writes just before the verdict letter. The engine forces/reads this prefix and
/// takes the log-probabilities of the `A` and `B` tokens at the next position.
pub const VERDICT_PREFIX: &str = "<answer>[[";

/// P(A) renormalised over the two verdict tokens: `exp(a) / (exp(a) + exp(b))`, computed by
/// log-sum-exp so that very negative log-probabilities do not underflow to 0/0. When both are
/// −∞ (neither token possible) there is no preference, so 0.5. NaN in, NaN out.
pub fn two_way_probability(logp_a: f32, logp_b: f32) -> f64 {
    let (a, b) = (f64::from(logp_a), f64::from(logp_b));
    if a == f64::NEG_INFINITY && b == f64::NEG_INFINITY {
        return 0.5;
    }
    let max = a.max(b);
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    let (ea, eb) = ((a - max).exp(), (b - max).exp());
    ea / (ea + eb)
}

/// One presentation order's judgment, in the terms the model saw.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderOutcome {
    /// The verdict as shown to the model (A = whoever was shown first).
    pub verdict: Result<Side, InvalidReason>,
    /// P(the candidate shown as A wins), when verdict-token probabilities were available.
    pub p_a_shown: Option<f64>,
    /// True when the pair was shown swapped: original candidate A appeared as Chatbot B.
    pub swapped: bool,
}

impl OrderOutcome {
    /// `(verdict, P(original A wins))` with the swap undone.
    pub fn in_original_terms(&self) -> (Result<Side, InvalidReason>, Option<f64>) {
        if self.swapped {
            (
                self.verdict.map(Side::other),
                self.p_a_shown.map(|p| 1.0 - p),
            )
        } else {
            (self.verdict, self.p_a_shown)
        }
    }
}

/// The judgment of a pair after combining its orders, in original terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    pub verdict: Result<Side, InvalidReason>,
    /// P(original A wins), the mean over orders that had a probability.
    pub p_a: Option<f64>,
}

/// Combines the judgments of a pair's presentation orders (normally one plain and one swapped).
///
/// Policy, chosen so that position bias cancels whenever there is evidence to cancel it with:
/// - `p_a` is the mean of the per-order probabilities that exist (in original terms).
/// - One order: its text verdict (upstream's evaluation rule), whatever the probability says —
///   benchmark numbers must match upstream's single-order protocol.
/// - Several orders, each with a probability: the verdict follows `p_a`: A above 0.5, B below; at
///   exactly 0.5 the plain (unswapped) order's text verdict decides, as it is the order a
///   single-order client would have seen.
/// - Otherwise the text verdicts vote: the valid ones agreeing → that side (an invalid order
///   abstains); valid ones contradicting → `OrdersDisagree`; none valid → the first order's
///   reason. No orders at all → `NoVerdict`.
pub fn combine_orders(orders: &[OrderOutcome]) -> Combined {
    let original: Vec<_> = orders.iter().map(OrderOutcome::in_original_terms).collect();
    let probabilities: Vec<f64> = original.iter().filter_map(|(_, p)| *p).collect();
    let p_a = (!probabilities.is_empty())
        .then(|| probabilities.iter().sum::<f64>() / probabilities.len() as f64);

    let by_vote = || -> Result<Side, InvalidReason> {
        let mut valid = original.iter().filter_map(|(verdict, _)| verdict.ok());
        match valid.next() {
            Some(first) if valid.all(|side| side == first) => Ok(first),
            Some(_) => Err(InvalidReason::OrdersDisagree),
            None => original
                .first()
                .map_or(Err(InvalidReason::NoVerdict), |(verdict, _)| *verdict),
        }
    };

    let verdict = match p_a {
        _ if orders.len() == 1 => original[0].0,
        Some(p) if probabilities.len() == orders.len() && p > 0.5 => Ok(Side::A),
        Some(p) if probabilities.len() == orders.len() && p < 0.5 => Ok(Side::B),
        Some(p) if probabilities.len() == orders.len() && p == 0.5 => {
            let plain = orders
                .iter()
                .position(|order| !order.swapped)
                .and_then(|index| original[index].0.ok());
            plain.map_or_else(by_vote, Ok)
        }
        _ => by_vote(),
    };
    Combined { verdict, p_a }
}
