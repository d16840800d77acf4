//! Upstream RM-R1's per-sample RMB result files, scored with rmr1's rules (`rmr1 eval
//! --replay-upstream`), so a checkpoint's published outputs and a new rmr1 run stand on the same
//! footing.
//!
//! Formats (RM-R1-UIUC/RM-R1 `eval/RMB-Reward-Model-Benchmark/eval/scripts/`):
//! - pairwise `log_result/logs.json`: a JSON array of `{pair_uid, category_path, text_chosen,
//!   text_rejected, results, subset, answers, Is_Chosen_Answer_Shuffled_toPositionB}`, where
//!   `text_*` are the conversation plus the reply as `[{role, content}]`, `answers` the raw model
//!   output and the flag true when the chosen reply was shown as B;
//! - best-of-N `raw_logs.json`: the same rows with `bon_uid` (one row per loser), or
//!   `group_by_same_id_logs.json`: an object of such row lists.
//!
//! Every verdict is re-derived from `answers` by the judge's evaluation rule; upstream's own
//! `results` flag is only compared against, never trusted.

use super::completeness::Completeness;
use super::log::{JudgmentRecord, RecordedRequest, RecordedTurn, RunHeader, LOG_VERSION};
use super::replay::{judgment_outcome, verdict_name};
use super::rmb::{set_and_category, PUBLISHED_FILES};
use super::task::{RmbSet, TaskGroup};
use super::Benchmark;
use crate::judge::evaluation_verdict;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Upstream's rows as judgment records, and where upstream's own `results` flag disagrees with
/// rmr1's reading of the same output.
pub struct UpstreamRun {
    pub header: RunHeader,
    pub records: Vec<JudgmentRecord>,
    /// Keys whose upstream `results` differs from the re-derived correctness.
    pub disagreements: Vec<String>,
}

fn rows_of(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON (upstream writes one JSON array per file)",
            path.display()
        )
    })?;
    match value {
        Value::Array(rows) => Ok(rows),
        // group_by_same_id_logs.json: {"<idx>": [row, ...], ...}
        Value::Object(groups) => Ok(groups
            .into_values()
            .flat_map(|v| match v {
                Value::Array(rows) => rows,
                other => vec![other],
            })
            .collect()),
        _ => bail!("{}: expected a JSON array of result rows", path.display()),
    }
}

fn text<'a>(row: &'a Value, field: &str) -> Result<&'a str, String> {
    row.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` is missing or not a string"))
}

fn uid(row: &Value, field: &str) -> Option<String> {
    match row.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `(conversation, reply)` of a `text_chosen` / `text_rejected` list.
fn split_dialogue(row: &Value, field: &str) -> Result<(Vec<RecordedTurn>, String), String> {
    let turns = row
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{field}` is missing or not a list"))?;
    let mut turns: Vec<RecordedTurn> = turns
        .iter()
        .map(|t| {
            Ok(RecordedTurn {
                role: text(t, "role")?.to_string(),
                content: text(t, "content")?.to_string(),
            })
        })
        .collect::<Result<_, String>>()?;
    match turns.pop() {
        Some(last) if last.role == "assistant" => Ok((turns, last.content)),
        _ => Err(format!("`{field}` does not end with the assistant's reply")),
    }
}

fn record(
    row: &Value,
    bon_counter: &mut BTreeMap<String, usize>,
) -> Result<JudgmentRecord, String> {
    let category_path = text(row, "category_path")?;
    let (set, category) = set_and_category(Path::new(category_path))
        .ok_or_else(|| format!("`category_path` {category_path:?} is not an RMB set/category"))?;
    let (key, item) = match set {
        RmbSet::Pairwise => {
            let id = uid(row, "pair_uid").ok_or("`pair_uid` is missing")?;
            (format!("rmb/pairwise/{id}"), id)
        }
        RmbSet::Bon => {
            let id = uid(row, "bon_uid").ok_or("`bon_uid` is missing")?;
            let k = bon_counter.entry(id.clone()).or_default();
            *k += 1;
            (format!("rmb/bon/{id}/{}", *k - 1), id)
        }
    };
    let shuffled = row
        .get("Is_Chosen_Answer_Shuffled_toPositionB")
        .and_then(Value::as_bool)
        .ok_or("`Is_Chosen_Answer_Shuffled_toPositionB` is missing or not a boolean")?;
    let output = text(row, "answers")?;
    let (conversation, chosen) = split_dialogue(row, "text_chosen")?;
    let (_, rejected) = split_dialogue(row, "text_rejected")?;
    let position = if shuffled { "B" } else { "A" };
    let verdict = verdict_name(evaluation_verdict(output));
    let (correct, error) = judgment_outcome(verdict, position);
    let (response_a, response_b) = if shuffled {
        (rejected, chosen)
    } else {
        (chosen, rejected)
    };
    Ok(JudgmentRecord {
        key,
        group: TaskGroup::Rmb {
            set,
            category,
            item,
        },
        chosen_position: position.into(),
        verdict: verdict.into(),
        invalid_reason: None,
        prob_chosen: None,
        correct,
        error,
        raw_output: output.into(),
        orders: Vec::new(),
        request: RecordedRequest {
            conversation,
            response_a,
            response_b,
        },
    })
}

/// Reads upstream RMB result files (pairwise and/or best-of-N, any mix) into one run.
pub fn load_rmb(paths: &[PathBuf]) -> Result<UpstreamRun> {
    let mut records = Vec::new();
    let mut disagreements = Vec::new();
    let mut bon_counter = BTreeMap::new();
    // Published part → pairs (pairwise) or distinct items (best-of-N) found.
    let mut pairs: BTreeMap<String, usize> = BTreeMap::new();
    let mut items: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in paths {
        for (index, row) in rows_of(path)?.iter().enumerate() {
            let r = record(row, &mut bon_counter)
                .map_err(|e| anyhow::anyhow!("{} row {index}: {e}", path.display()))?;
            let part = format!("{}.json", text(row, "category_path").unwrap_or_default());
            let TaskGroup::Rmb { set, item, .. } = &r.group else {
                unreachable!("records are RMB")
            };
            match set {
                RmbSet::Pairwise => *pairs.entry(part).or_default() += 1,
                RmbSet::Bon => {
                    items.entry(part).or_default().insert(item.clone());
                }
            }
            let upstream = row.get("results").and_then(Value::as_f64);
            if upstream.is_some_and(|u| (u == 1.0) != r.correct) {
                disagreements.push(r.key.clone());
            }
            records.push(r);
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = records.iter().find(|r| !seen.insert(r.key.as_str())) {
        bail!("two result rows have the key {}", dup.key);
    }
    let mut found = pairs;
    found.extend(items.into_iter().map(|(part, ids)| (part, ids.len())));
    let header = RunHeader {
        rmr1_eval_log: LOG_VERSION,
        benchmark: Benchmark::Rmb,
        data: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        total: records.len(),
        seed: 0,
        both_orders: false,
        max_new_tokens: None,
        model: "upstream RM-R1 result files".into(),
        completeness: Some(Completeness::compare(
            ("files", "records"),
            PUBLISHED_FILES,
            &found,
            0,
        )),
    };
    Ok(UpstreamRun {
        header,
        records,
        disagreements,
    })
}
