//! Loaders on the real benchmark files in ../shared/data: RM-Bench (partial: chat, code,
//! safety-refuse, safety-response) and LLMBar (the source of RewardBench's five llmbar subsets).
//! `RMR1_SHARED_DATA` overrides the location; without the files the tests say so and skip.

use rmr1::eval::task::{OnBadRecord, TaskGroup};
use rmr1::eval::Benchmark;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("RMR1_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("rm-bench/data").is_dir() {
        return Some(dir);
    }
    let msg = format!("benchmark data not found in {}", dir.display());
    if std::env::var_os("RMR1_REQUIRE_SHARED_DATA").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

#[test]
fn rm_bench_partial_data_loads_nine_pairs_per_prompt() {
    let Some(data) = shared_data() else { return };
    let loaded = Benchmark::RmBench
        .load(&data.join("rm-bench/data"), OnBadRecord::Fail)
        .unwrap();
    assert!(loaded.skipped.is_empty());
    assert_eq!(loaded.tasks.len(), 798 * 9);
    let mut prompts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &loaded.tasks {
        let TaskGroup::RmBench {
            domain, prompt_id, ..
        } = &t.group
        else {
            panic!("not an RM-Bench task");
        };
        assert!(prompt_id.starts_with(&format!("{domain}/")));
        *prompts.entry(domain.clone()).or_default() += 1;
    }
    let per_domain: Vec<(String, usize)> = prompts.into_iter().map(|(d, n)| (d, n / 9)).collect();
    assert_eq!(
        per_domain,
        vec![
            ("chat".to_string(), 129),
            ("code".to_string(), 228),
            ("safety-refuse".to_string(), 284),
            ("safety-response".to_string(), 157)
        ]
    );
    // Four of the five published domain files, each complete: a partial run that names math.
    let c = loaded.completeness.as_ref().unwrap();
    assert!(!c.is_complete());
    assert_eq!((c.published, c.found), (1327, 798));
    assert_eq!(c.missing.len(), 1);
    assert_eq!(
        (c.missing[0].part.as_str(), c.missing[0].found),
        ("math", 0)
    );
    assert!(c
        .describe()
        .contains("1 of the published domains missing: math"));
    // Cell (0, 2) pairs the concise chosen reply with the markdown rejected one.
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("rm-bench/data/chat_filtered.json")).unwrap(),
    )
    .unwrap();
    let first = &raw[0];
    let key = format!("rm-bench/chat/{}/c0r2", first["id"]);
    let task = loaded.tasks.iter().find(|t| t.key == key).unwrap();
    assert_eq!(task.chosen, first["chosen"][0].as_str().unwrap());
    assert_eq!(task.rejected, first["rejected"][2].as_str().unwrap());
    assert_eq!(
        task.conversation[0].content,
        first["prompt"].as_str().unwrap()
    );
}

#[test]
fn llmbar_loads_as_the_rewardbench_llmbar_subsets() {
    let Some(data) = shared_data() else { return };
    let loaded = Benchmark::RewardBench
        .load(&data.join("llmbar"), OnBadRecord::Fail)
        .unwrap();
    assert_eq!(loaded.tasks.len(), 419);
    let mut subsets: BTreeMap<String, usize> = BTreeMap::new();
    for t in &loaded.tasks {
        let TaskGroup::RewardBench { subset } = &t.group else {
            panic!("not a RewardBench task");
        };
        *subsets.entry(subset.clone()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [
        ("llmbar-natural", 100),
        ("llmbar-adver-neighbor", 134),
        ("llmbar-adver-GPTInst", 92),
        ("llmbar-adver-GPTOut", 47),
        ("llmbar-adver-manual", 46),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    assert_eq!(subsets, expected);
    // The five llmbar subsets at their published sizes, the other 18 of RewardBench's missing.
    let c = loaded.completeness.as_ref().unwrap();
    assert_eq!((c.published, c.found), (2985, 419));
    assert_eq!(c.missing.len(), 18);
    assert!(c
        .missing
        .iter()
        .all(|m| m.found == 0 && !m.part.starts_with("llmbar")));
    assert!(
        c.describe().contains("missing: alpacaeval-easy"),
        "{}",
        c.describe()
    );
    // chosen = output_{label}.
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("llmbar/Dataset/LLMBar/Natural/dataset.json")).unwrap(),
    )
    .unwrap();
    for (i, record) in raw.as_array().unwrap().iter().enumerate().take(20) {
        let task = &loaded.tasks[i];
        let label = record["label"].as_u64().unwrap();
        let (chosen, rejected) = if label == 1 {
            ("output_1", "output_2")
        } else {
            ("output_2", "output_1")
        };
        assert_eq!(task.chosen, record[chosen].as_str().unwrap());
        assert_eq!(task.rejected, record[rejected].as_str().unwrap());
    }
}
