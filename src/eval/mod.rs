//! The evaluation harness: RewardBench, RM-Bench and RMB, judged through the Judge API and scored
//! exactly as the RM-R1 paper reports them.
//!
//! Flow: a loader turns a dataset into [`task::PairTask`]s (one judgment each, tagged with what
//! its scorer groups by); the [`runner`] sends them through `JudgeBatch` and appends one
//! [`log::JudgmentRecord`] per judgment to a JSONL log; [`report`] scores a complete log. Because
//! scoring reads only the log, an interrupted run resumes where it stopped and `--replay` recomputes
//! the numbers without a model.

pub mod completeness;
pub mod log;
pub mod progress;
pub mod records;
pub mod replay;
pub mod report;
pub mod rewardbench;
pub mod rm_bench;
pub mod rmb;
pub mod runner;
pub mod task;
pub mod upstream;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use task::{LoadedTasks, OnBadRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Benchmark {
    #[serde(rename = "rewardbench")]
    #[value(name = "rewardbench")]
    RewardBench,
    RmBench,
    Rmb,
}

impl Benchmark {
    pub fn as_str(self) -> &'static str {
        match self {
            Benchmark::RewardBench => "rewardbench",
            Benchmark::RmBench => "rm-bench",
            Benchmark::Rmb => "rmb",
        }
    }

    pub fn load(self, data: &Path, policy: OnBadRecord) -> Result<LoadedTasks> {
        let loaded = match self {
            Benchmark::RewardBench => rewardbench::load(data, policy)?,
            Benchmark::RmBench => rm_bench::load(data, policy)?,
            Benchmark::Rmb => rmb::load(data, policy)?,
        };
        let mut loaded = loaded;
        loaded.completeness = Some(self.completeness(&loaded));
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = loaded.tasks.iter().find(|t| !seen.insert(t.key.as_str())) {
            anyhow::bail!(
                "{} has two records with the key {}",
                data.display(),
                dup.key
            );
        }
        Ok(loaded)
    }
}

impl Benchmark {
    /// How much of the published benchmark `loaded` covers.
    fn completeness(self, loaded: &task::LoadedTasks) -> completeness::Completeness {
        use completeness::Completeness;
        use std::collections::{BTreeMap, BTreeSet};
        let skipped = loaded.skipped.len();
        match self {
            Benchmark::RewardBench => {
                let mut found: BTreeMap<String, usize> = BTreeMap::new();
                for t in &loaded.tasks {
                    if let task::TaskGroup::RewardBench { subset } = &t.group {
                        *found.entry(subset.clone()).or_default() += 1;
                    }
                }
                let published = rewardbench::published_subsets();
                Completeness::compare(("subsets", "pairs"), &published, &found, skipped)
            }
            Benchmark::RmBench => {
                let mut prompts: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
                for t in &loaded.tasks {
                    if let task::TaskGroup::RmBench {
                        domain, prompt_id, ..
                    } = &t.group
                    {
                        prompts.entry(domain.clone()).or_default().insert(prompt_id);
                    }
                }
                let found = prompts.into_iter().map(|(d, p)| (d, p.len())).collect();
                Completeness::compare(
                    ("domains", "prompts"),
                    &rm_bench::PUBLISHED_DOMAINS,
                    &found,
                    skipped,
                )
            }
            Benchmark::Rmb => Completeness::compare(
                ("files", "records"),
                rmb::PUBLISHED_FILES,
                &loaded.found,
                skipped,
            ),
        }
    }
}

/// How one judgment went, for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub correct: bool,
    /// No usable verdict; always also `!correct` (errors count as wrong, as upstream).
    pub error: bool,
}
