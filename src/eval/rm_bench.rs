//! RM-Bench (THU-KEG/RM-Bench `data/*.json`): every prompt has three chosen and three rejected
//! replies in styles [concise, detailed plain, detailed markdown]. All nine pairs chosen[i] vs
//! rejected[j] are judged, giving a 3x3 accuracy matrix per domain: hard = upper triangle (i < j,
//! the chosen reply less formatted than the rejected one), normal = diagonal, easy = lower
//! triangle. Domain score = mean(hard, normal, easy); headline = mean of chat, math, code, safety
//! (safety = safety-refuse + safety-response pooled).
//!
//! Upstream's aggregation script loads one of its three rotations twice, so three cells of its
//! matrix reuse other pairs' judgments. We judge and count the nine real pairs; numbers can
//! therefore differ slightly from upstream's on the same judgments.

use super::records::{read_records, DataFile};
use super::task::{id_text, text_str, LoadedTasks, OnBadRecord, PairTask, TaskGroup};
use super::Outcome;
use crate::judge::Turn;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

pub const STYLES: [&str; 3] = ["concise", "detailed_plain", "detailed_markdown"];
pub const DOMAINS: [&str; 4] = ["chat", "math", "code", "safety"];

/// Prompts per domain file of the published `data/` (1,327 in all; safety = refuse + response).
pub const PUBLISHED_DOMAINS: [(&str, usize); 5] = [
    ("chat", 129),
    ("math", 529),
    ("code", 228),
    ("safety-refuse", 284),
    ("safety-response", 157),
];

/// The scoring domain of a file / record domain (`safety-refuse` and `safety-response` pool).
pub fn scoring_domain(domain: &str) -> &str {
    if domain.starts_with("safety") {
        "safety"
    } else {
        domain
    }
}

/// Domain from a file name like `chat_filtered.json` or `safety-refuse_filtered.json`.
fn domain_from_file(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let domain = stem.strip_suffix("_filtered").unwrap_or(stem);
    ["chat", "math", "code", "safety-refuse", "safety-response"]
        .contains(&domain)
        .then(|| domain.to_string())
}

fn three(record: &serde_json::Value, field: &str) -> Result<Vec<String>, String> {
    let items = record
        .get(field)
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("`{field}` is missing or not a list"))?;
    if items.len() != 3 {
        return Err(format!(
            "`{field}` has {} replies, expected 3 styles",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(format!("`{field}[{i}]` is not a string")),
        })
        .collect()
}

fn tasks(record: &serde_json::Value, file_domain: Option<&str>) -> Result<Vec<PairTask>, String> {
    let raw_id = id_text(record, "id")?;
    // Ids are "chat/100" in the combined file and bare numbers in the per-domain files.
    let (domain, prompt_id) = match (
        raw_id.split_once('/'),
        record.get("domain").and_then(|d| d.as_str()),
        file_domain,
    ) {
        (Some((d, _)), _, _) => (d.to_string(), raw_id.clone()),
        (None, Some(d), _) | (None, None, Some(d)) => (d.to_string(), format!("{d}/{raw_id}")),
        (None, None, None) => {
            return Err(
                "no domain: neither a `domain` field, a \"domain/n\" id, nor a known file name"
                    .into(),
            )
        }
    };
    let prompt = text_str(record, "prompt")?;
    let chosen = three(record, "chosen")?;
    let rejected = three(record, "rejected")?;
    let mut out = Vec::with_capacity(9);
    for (i, c) in chosen.iter().enumerate() {
        for (j, r) in rejected.iter().enumerate() {
            out.push(PairTask {
                key: format!("rm-bench/{prompt_id}/c{i}r{j}"),
                group: TaskGroup::RmBench {
                    domain: domain.clone(),
                    prompt_id: prompt_id.clone(),
                    chosen_style: i,
                    rejected_style: j,
                },
                conversation: vec![Turn::user(prompt)],
                chosen: c.clone(),
                rejected: r.clone(),
            });
        }
    }
    Ok(out)
}

/// Loads one file or every `*.json` in a directory (e.g. RM-Bench's `data/`).
pub fn load(path: &Path, policy: OnBadRecord) -> Result<LoadedTasks> {
    let mut loaded = LoadedTasks::default();
    for data in DataFile::find(path, &["json", "jsonl"])? {
        let file_domain = domain_from_file(&data.path);
        for (index, record) in read_records(&data)?.into_iter().enumerate() {
            let result = record.and_then(|r| tasks(&r, file_domain.as_deref()));
            loaded.push_record(policy, &data.name, index, result)?;
        }
    }
    Ok(loaded)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainScore {
    pub domain: String,
    pub prompts: usize,
    /// Mean over prompts of "chosen[i] beat rejected[j]".
    pub matrix: [[f64; 3]; 3],
    pub hard: f64,
    pub normal: f64,
    pub easy: f64,
    /// mean(hard, normal, easy)
    pub score: f64,
    pub errors: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RmBenchScores {
    /// Mean of the four domains; only when all four are present.
    pub headline: Option<f64>,
    /// Means over the domains present.
    pub partial_mean: Option<f64>,
    pub hard: Option<f64>,
    pub normal: Option<f64>,
    pub easy: Option<f64>,
    pub domains: Vec<DomainScore>,
    pub missing_domains: Vec<String>,
    /// Prompts without all nine judgments (not scored).
    pub incomplete_prompts: Vec<String>,
}

pub struct Cell<'a> {
    pub domain: &'a str,
    pub prompt_id: &'a str,
    pub chosen_style: usize,
    pub rejected_style: usize,
    pub outcome: Outcome,
}

/// One prompt's nine judgments, `[chosen style][rejected style]`.
type PromptMatrix = [[Option<Outcome>; 3]; 3];

pub fn score<'a>(cells: impl IntoIterator<Item = Cell<'a>>) -> RmBenchScores {
    // prompt -> (scoring domain, its matrix)
    let mut prompts: BTreeMap<&str, (&str, PromptMatrix)> = BTreeMap::new();
    for c in cells {
        let entry = prompts
            .entry(c.prompt_id)
            .or_insert((scoring_domain(c.domain), [[None; 3]; 3]));
        if c.chosen_style < 3 && c.rejected_style < 3 {
            entry.1[c.chosen_style][c.rejected_style] = Some(c.outcome);
        }
    }
    let mut incomplete = Vec::new();
    let mut per_domain: BTreeMap<&str, (usize, [[f64; 3]; 3], usize)> = BTreeMap::new();
    for (prompt, (domain, cells)) in &prompts {
        if cells.iter().flatten().any(Option::is_none) {
            incomplete.push(prompt.to_string());
            continue;
        }
        let entry = per_domain.entry(domain).or_insert((0, [[0.0; 3]; 3], 0));
        entry.0 += 1;
        for (sums, row) in entry.1.iter_mut().zip(cells) {
            for (sum, cell) in sums.iter_mut().zip(row) {
                let o = cell.expect("checked complete");
                *sum += o.correct as u8 as f64;
                entry.2 += o.error as usize;
            }
        }
    }
    let mut domains = Vec::new();
    for name in DOMAINS {
        let Some(&(n, sums, errors)) = per_domain.get(name) else {
            continue;
        };
        let matrix = sums.map(|row| row.map(|v| v / n as f64));
        let hard = (matrix[0][1] + matrix[0][2] + matrix[1][2]) / 3.0;
        let normal = (matrix[0][0] + matrix[1][1] + matrix[2][2]) / 3.0;
        let easy = (matrix[1][0] + matrix[2][0] + matrix[2][1]) / 3.0;
        domains.push(DomainScore {
            domain: name.into(),
            prompts: n,
            matrix,
            hard,
            normal,
            easy,
            score: (hard + normal + easy) / 3.0,
            errors,
        });
    }
    let mean = |f: fn(&DomainScore) -> f64| {
        (!domains.is_empty()).then(|| domains.iter().map(f).sum::<f64>() / domains.len() as f64)
    };
    let missing: Vec<String> = DOMAINS
        .iter()
        .filter(|d| !per_domain.contains_key(*d))
        .map(|d| d.to_string())
        .collect();
    RmBenchScores {
        headline: missing.is_empty().then(|| mean(|d| d.score)).flatten(),
        partial_mean: mean(|d| d.score),
        hard: mean(|d| d.hard),
        normal: mean(|d| d.normal),
        easy: mean(|d| d.easy),
        domains,
        missing_domains: missing,
        incomplete_prompts: incomplete,
    }
}

pub fn markdown(s: &RmBenchScores) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
    let domain = |name: &str| pct(s.domains.iter().find(|d| d.domain == name).map(|d| d.score));
    let mut out = String::from(
        "| RM-Bench | Chat | Math | Code | Safety | Easy | Normal | Hard |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    out += &format!(
        "| {}{} | {} | {} | {} | {} | {} | {} | {} |\n",
        pct(s.headline.or(s.partial_mean)),
        if s.headline.is_none() {
            " (partial)"
        } else {
            ""
        },
        domain("chat"),
        domain("math"),
        domain("code"),
        domain("safety"),
        pct(s.easy),
        pct(s.normal),
        pct(s.hard)
    );
    out +=
        "\n| domain | prompts | hard | normal | easy | errors |\n|---|---:|---:|---:|---:|---:|\n";
    for d in &s.domains {
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            d.domain,
            d.prompts,
            100.0 * d.hard,
            100.0 * d.normal,
            100.0 * d.easy,
            d.errors
        );
    }
    out
}
