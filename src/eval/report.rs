//! Scores a complete judgment log: the report as JSON (every number) and as Markdown tables laid
//! out like the RM-R1 paper's.

use super::completeness::Completeness;
use super::log::{JudgmentRecord, RunHeader};
use super::task::{BadRecord, TaskGroup};
use super::{rewardbench, rm_bench, rmb, Benchmark, Outcome};
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub benchmark: Benchmark,
    pub model: String,
    pub data: String,
    pub seed: u64,
    pub both_orders: bool,
    pub judgments: usize,
    /// Judgments without a usable verdict (counted wrong, as upstream).
    pub errors: usize,
    /// Dataset records skipped at load time (`--on-bad-record skip`).
    pub skipped_records: Vec<BadRecord>,
    /// Whether the data was the whole published benchmark, and what was missing; `None` for logs
    /// written before rmr1 recorded it (then no headline is printed either).
    pub completeness: Option<Completeness>,
    pub complete: bool,
    pub scores: serde_json::Value,
    #[serde(skip)]
    pub markdown: String,
}

fn outcome(r: &JudgmentRecord) -> Outcome {
    Outcome {
        correct: r.correct && !r.error,
        error: r.error,
    }
}

/// Scores `records`, which must be the complete run `header` describes.
pub fn score(
    header: &RunHeader,
    records: &[JudgmentRecord],
    skipped_records: Vec<BadRecord>,
) -> Result<EvalReport> {
    if records.len() != header.total {
        bail!(
            "the log holds {} of the run's {} judgments: resume the run to finish it before scoring",
            records.len(),
            header.total
        );
    }
    let mismatched = || {
        anyhow::anyhow!(
            "the log mixes benchmarks: a record is not {}",
            header.benchmark.as_str()
        )
    };
    let complete = header
        .completeness
        .as_ref()
        .is_some_and(Completeness::is_complete);
    let (scores, markdown) = match header.benchmark {
        Benchmark::RewardBench => {
            let outcomes = records
                .iter()
                .map(|r| match &r.group {
                    TaskGroup::RewardBench { subset } => Ok((subset.as_str(), outcome(r))),
                    _ => Err(mismatched()),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut s = rewardbench::score(outcomes);
            if !complete {
                s.headline = None;
            }
            (serde_json::to_value(&s)?, rewardbench::markdown(&s))
        }
        Benchmark::RmBench => {
            let cells = records
                .iter()
                .map(|r| match &r.group {
                    TaskGroup::RmBench {
                        domain,
                        prompt_id,
                        chosen_style,
                        rejected_style,
                    } => Ok(rm_bench::Cell {
                        domain,
                        prompt_id,
                        chosen_style: *chosen_style,
                        rejected_style: *rejected_style,
                        outcome: outcome(r),
                    }),
                    _ => Err(mismatched()),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut s = rm_bench::score(cells);
            if !complete {
                s.headline = None;
            }
            (serde_json::to_value(&s)?, rm_bench::markdown(&s))
        }
        Benchmark::Rmb => {
            let judged = records
                .iter()
                .map(|r| match &r.group {
                    TaskGroup::Rmb {
                        set,
                        category,
                        item,
                    } => Ok(rmb::Judged {
                        set: *set,
                        category,
                        item,
                        outcome: outcome(r),
                    }),
                    _ => Err(mismatched()),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut s = rmb::score(judged);
            if !complete {
                s.headline = None;
            }
            (serde_json::to_value(&s)?, rmb::markdown(&s))
        }
    };
    let errors = records.iter().filter(|r| r.error).count();
    let coverage = match &header.completeness {
        Some(c) => c.describe(),
        None => "completeness unknown (the log predates rmr1 recording it): no headline".into(),
    };
    let markdown =
        format!(
        "{coverage}\n\n{markdown}\n{} judgments, {errors} without a usable verdict (counted wrong); model {}; \
         seed {}{}{}\n",
        records.len(),
        header.model,
        header.seed,
        if header.both_orders { ", both orders" } else { ", one seeded order per pair" },
        if skipped_records.is_empty() {
            String::new()
        } else {
            format!("; {} dataset records skipped", skipped_records.len())
        }
    );
    Ok(EvalReport {
        benchmark: header.benchmark,
        model: header.model.clone(),
        data: header.data.clone(),
        seed: header.seed,
        both_orders: header.both_orders,
        judgments: records.len(),
        errors,
        skipped_records,
        completeness: header.completeness.clone(),
        complete,
        scores,
        markdown,
    })
}
