//! Replay re-derives: every verdict in a judgment log is recomputed from the record's raw output
//! (each order's, with both orders), its presentation and the verdict rules — the functions the
//! judge itself applies ([`evaluation_verdict`], [`combine_orders`]) — and so is whether it was
//! correct. A log is evidence; its stored `verdict` / `correct` / `error` are not trusted: the
//! first record whose stored fields disagree with its own output stops the replay, by name.

use super::log::{JudgmentRecord, RecordedOrder};
use crate::judge::{combine_orders, evaluation_verdict, OrderOutcome, Side};
use anyhow::{bail, Result};

/// Prefix of `invalid_reason` for a pair the server refused as invalid input: there is no output
/// to re-derive from; it counts as an error.
pub const REFUSED_PREFIX: &str = "refused by the server: ";

/// `"A"`, `"B"` or `"INVALID"`.
pub fn verdict_name(verdict: Result<Side, impl Sized>) -> &'static str {
    match verdict {
        Ok(Side::A) => "A",
        Ok(Side::B) => "B",
        Err(_) => "INVALID",
    }
}

/// `(correct, error)` of a verdict in request terms, for the chosen reply shown at
/// `chosen_position`: the rule of the live run and of replay alike.
pub fn judgment_outcome(verdict: &str, chosen_position: &str) -> (bool, bool) {
    (verdict == chosen_position, verdict == "INVALID")
}

/// The combined verdict of `orders`, in request terms.
fn combined(orders: &[RecordedOrder]) -> &'static str {
    let outcomes: Vec<OrderOutcome> = orders
        .iter()
        .map(|o| OrderOutcome {
            verdict: evaluation_verdict(&o.raw_output),
            // Stored in the request's terms; the combiner wants them as shown. A forced read
            // never decides a verdict (the judge drops it the same way).
            p_a_shown: o
                .prob_a
                .filter(|_| !o.prob_forced)
                .map(|p| if o.swapped { 1.0 - p } else { p }),
            swapped: o.swapped,
        })
        .collect();
    verdict_name(combine_orders(&outcomes).verdict)
}

/// What `record`'s own evidence says: (verdict, correct, error).
pub fn rederive(record: &JudgmentRecord, both_orders: bool) -> Result<(String, bool, bool)> {
    let refused = record
        .invalid_reason
        .as_deref()
        .is_some_and(|r| r.starts_with(REFUSED_PREFIX));
    let verdict = if refused && record.raw_output.is_empty() {
        "INVALID"
    } else if both_orders {
        if record.orders.len() != 2 {
            bail!(
                "record {} is from a both-orders run but holds {} order outputs (a log written \
                 before rmr1 kept them cannot be re-derived)",
                record.key,
                record.orders.len()
            );
        }
        combined(&record.orders)
    } else {
        verdict_name(evaluation_verdict(&record.raw_output))
    };
    let (correct, error) = judgment_outcome(verdict, &record.chosen_position);
    Ok((verdict.to_string(), correct, error))
}

/// Re-derives every record; the first one whose stored verdict, `correct` or `error` differs
/// from its evidence is an error naming its key and log line.
pub fn verify(records: &[JudgmentRecord], both_orders: bool) -> Result<()> {
    if let Some(bad) = records
        .iter()
        .find(|r| !matches!(r.chosen_position.as_str(), "A" | "B"))
    {
        bail!(
            "record {}: chosen_position is {:?} (expected A or B)",
            bad.key,
            bad.chosen_position
        );
    }
    for (i, record) in records.iter().enumerate() {
        let (verdict, correct, error) = rederive(record, both_orders)?;
        if (verdict.as_str(), correct, error)
            != (record.verdict.as_str(), record.correct, record.error)
        {
            bail!(
                "log line {} (record {}): stored verdict {} / correct {} / error {}, but its raw \
                 output gives verdict {verdict} / correct {correct} / error {error}; the log was \
                 edited or written by another rule",
                i + 2,
                record.key,
                record.verdict,
                record.correct,
                record.error
            );
        }
    }
    Ok(())
}
