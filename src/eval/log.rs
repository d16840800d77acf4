//! The per-judgment JSONL log of an evaluation run: a header line, then one record per judgment,
//! appended and flushed as each completes. An interrupted run resumes from it (done keys are
//! skipped); `--replay` scores it without a model.

use super::task::TaskGroup;
use super::Benchmark;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

pub const LOG_VERSION: u32 = 1;

/// What makes two runs the same run: resuming with different settings would mix judgments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub rmr1_eval_log: u32,
    pub benchmark: Benchmark,
    /// The dataset as given on the command line.
    pub data: String,
    /// Judgments the run will make in all.
    pub total: usize,
    /// Seeds the position swap (one ordering per pair, as upstream, but reproducible).
    pub seed: u64,
    pub both_orders: bool,
    pub max_new_tokens: Option<u32>,
    pub model: String,
    /// How much of the published benchmark the data covered (absent in logs from before rmr1
    /// recorded it). Not part of what makes two runs the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completeness: Option<super::completeness::Completeness>,
}

impl RunHeader {
    /// Why `other` (the header found in an existing log) is not the same run, if it is not.
    fn mismatch(&self, other: &RunHeader) -> Option<String> {
        let fields = [
            (
                "benchmark",
                self.benchmark.as_str().to_string(),
                other.benchmark.as_str().to_string(),
            ),
            (
                "total judgments",
                self.total.to_string(),
                other.total.to_string(),
            ),
            ("seed", self.seed.to_string(), other.seed.to_string()),
            (
                "both_orders",
                self.both_orders.to_string(),
                other.both_orders.to_string(),
            ),
            (
                "max_new_tokens",
                format!("{:?}", self.max_new_tokens),
                format!("{:?}", other.max_new_tokens),
            ),
            ("model", self.model.clone(), other.model.clone()),
        ];
        fields
            .into_iter()
            .find(|(_, now, then)| now != then)
            .map(|(name, now, then)| format!("{name} is {now} now but {then} in the log"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedTurn {
    pub role: String,
    pub content: String,
}

/// The pair exactly as it was sent (after the position swap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub conversation: Vec<RecordedTurn>,
    pub response_a: String,
    pub response_b: String,
}

/// One presentation order of a `both_orders` judgment: what the combined verdict is re-derived
/// from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedOrder {
    /// The request's candidate A was shown as Chatbot B.
    pub swapped: bool,
    pub raw_output: String,
    /// P(the request's candidate A wins), as the server reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prob_a: Option<f64>,
    /// The probability was read by appending `<answer>[[` (it never decides a verdict).
    #[serde(default)]
    pub prob_forced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgmentRecord {
    pub key: String,
    pub group: TaskGroup,
    /// Where the chosen reply was shown: "A" or "B" (with both orders: "A" in the first order).
    pub chosen_position: String,
    /// "A", "B" or "INVALID", in the request's terms.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// P(chosen wins) from the verdict token, when the server reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prob_chosen: Option<f64>,
    pub correct: bool,
    /// No usable verdict (INVALID, or the request was refused as invalid): counted wrong, as upstream.
    pub error: bool,
    pub raw_output: String,
    /// With both orders: each order's output, from which `verdict` is re-derived on replay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orders: Vec<RecordedOrder>,
    pub request: RecordedRequest,
}

/// An open log: the header, the records so far, and the file to append to.
pub struct JudgmentLog {
    path: PathBuf,
    file: File,
    pub header: RunHeader,
    pub records: Vec<JudgmentRecord>,
}

impl JudgmentLog {
    /// Opens `path` for `header`'s run: creates it, or resumes it when it holds the same run.
    /// A torn last line (the process died mid-write) is cut off.
    pub fn open(path: &Path, header: RunHeader) -> Result<Self> {
        if !path.exists() || std::fs::metadata(path)?.len() == 0 {
            let mut file = File::create(path)
                .with_context(|| format!("creating the judgment log {}", path.display()))?;
            writeln!(file, "{}", serde_json::to_string(&header)?)?;
            file.sync_data()?;
            return Ok(Self {
                path: path.into(),
                file,
                header,
                records: Vec::new(),
            });
        }
        let (found, records, good_bytes) = read(path)?;
        if let Some(why) = header.mismatch(&found) {
            bail!(
                "{} belongs to a different run ({why}); pass another --log or the same settings",
                path.display()
            );
        }
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(good_bytes)?;
        let mut log = Self {
            path: path.into(),
            file,
            header: found,
            records,
        };
        log.file.seek(std::io::SeekFrom::End(0))?;
        Ok(log)
    }

    pub fn done_keys(&self) -> HashSet<&str> {
        self.records.iter().map(|r| r.key.as_str()).collect()
    }

    pub fn append(&mut self, record: JudgmentRecord) -> Result<()> {
        let line = serde_json::to_string(&record)?;
        writeln!(self.file, "{line}")
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.file.flush()?;
        self.records.push(record);
        Ok(())
    }
}

/// Reads a log: header, records, and the byte length of its complete lines. Text after the last
/// newline is a line torn by a crash and is ignored (and cut off when the run resumes).
pub fn read(path: &Path) -> Result<(RunHeader, Vec<JudgmentRecord>, u64)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the judgment log {}", path.display()))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), "the judgment log ends in a torn line; ignoring it");
    }
    let mut lines = bytes[..complete]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty());
    let (_, first) = lines
        .next()
        .with_context(|| format!("{} has no header line", path.display()))?;
    let header: RunHeader = serde_json::from_slice(first)
        .with_context(|| format!("{} line 1 is not a run header", path.display()))?;
    if header.rmr1_eval_log != LOG_VERSION {
        bail!(
            "{} is a version {} log; this rmr1 reads version {LOG_VERSION}",
            path.display(),
            header.rmr1_eval_log
        );
    }
    let records = lines
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect::<Result<Vec<JudgmentRecord>>>()?;
    Ok((header, records, complete as u64))
}
