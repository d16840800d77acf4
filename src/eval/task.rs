//! What every benchmark loader produces: pairwise judgments to make, each with the fields its
//! scorer groups by. One [`PairTask`] is one judgment (one chosen vs one rejected reply).

use crate::judge::Turn;
use serde::{Deserialize, Serialize};

/// How a judgment counts in its benchmark's score. Stored in every log record, so a log can be
/// scored again (`--replay`) without the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "benchmark", rename_all = "kebab-case")]
pub enum TaskGroup {
    /// One pair of a RewardBench subset.
    #[serde(rename = "rewardbench")]
    RewardBench { subset: String },
    /// Cell (`chosen_style`, `rejected_style`) of an RM-Bench prompt's 3x3 matrix.
    RmBench {
        domain: String,
        prompt_id: String,
        chosen_style: usize,
        rejected_style: usize,
    },
    /// An RMB pairwise item (`item` = pair_uid), or one loser of a best-of-N item (`item` =
    /// bon_uid): the BoN item is right only if every loser's pair is. `category` is
    /// "helpfulness" or "harmlessness".
    Rmb {
        set: RmbSet,
        category: String,
        item: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RmbSet {
    Pairwise,
    Bon,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairTask {
    /// Unique within the run; the log and resume key.
    pub key: String,
    pub group: TaskGroup,
    /// The conversation so far, ending with a user turn.
    pub conversation: Vec<Turn>,
    pub chosen: String,
    pub rejected: String,
}

/// A record that could not be turned into tasks, with where it was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    pub file: String,
    pub index: usize,
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} record {}: {}", self.file, self.index, self.reason)
    }
}

/// What a loader returns: the tasks, the records it skipped (only when told to skip), and how
/// much of the published benchmark the data covers.
#[derive(Debug, Default)]
pub struct LoadedTasks {
    pub tasks: Vec<PairTask>,
    pub skipped: Vec<BadRecord>,
    /// Records read per published part, for loaders whose parts are files (RMB); the others
    /// count from their tasks.
    pub found: std::collections::BTreeMap<String, usize>,
    /// Filled by [`crate::eval::Benchmark::load`].
    pub completeness: Option<crate::eval::completeness::Completeness>,
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBadRecord {
    /// Stop with the file and index of the record.
    Fail,
    /// Report it (stderr and the report) and go on.
    Skip,
}

impl LoadedTasks {
    /// Adds a record's tasks, or handles its error as `policy` says.
    pub fn push_record(
        &mut self,
        policy: OnBadRecord,
        file: &str,
        index: usize,
        result: Result<Vec<PairTask>, String>,
    ) -> anyhow::Result<()> {
        match result {
            Ok(tasks) => self.tasks.extend(tasks),
            Err(reason) => {
                let bad = BadRecord {
                    file: file.into(),
                    index,
                    reason,
                };
                match policy {
                    OnBadRecord::Fail => anyhow::bail!("{bad} (use --on-bad-record skip to go on)"),
                    OnBadRecord::Skip => {
                        eprintln!("skipping {bad}");
                        self.skipped.push(bad);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A text field of a JSON record (a prompt, a reply): required and a string, but it may be empty
/// — real benchmarks hold blank replies and empty user turns, and upstream judges them.
pub fn text_str<'a>(record: &'a serde_json::Value, field: &str) -> Result<&'a str, String> {
    match record.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`{field}` is not a string: {}", kind(other))),
        None => Err(format!("`{field}` is missing")),
    }
}

/// A string field of a JSON record that names something (a subset, a domain): required and
/// non-empty.
pub fn required_str<'a>(record: &'a serde_json::Value, field: &str) -> Result<&'a str, String> {
    match record.get(field) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(serde_json::Value::String(_)) => Err(format!("`{field}` is empty")),
        Some(other) => Err(format!("`{field}` is not a string: {}", kind(other))),
        None => Err(format!("`{field}` is missing")),
    }
}

/// A record id as text (numbers and strings both occur in the wild).
pub fn id_text(record: &serde_json::Value, field: &str) -> Result<String, String> {
    match record.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!("`{field}` is not an id: {}", kind(other))),
        None => Err(format!("`{field}` is missing")),
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
