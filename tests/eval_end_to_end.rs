//! `rmr1 eval` end to end against a judge server on loopback with a tiny model whose greedy
//! outputs contain "[[A]]" / "[[B]]" for some prompts (so scores are not trivially 0): a few dozen
//! items of each benchmark's format, the resume path after a run killed half way (with a torn last
//! line), and `--replay` of the log giving identical numbers.

mod common;

use common::judge_server::{eval_judge_spec, eval_options, start_with, TestServer};
use common::TinySpec;
use rmr1::engine::EngineConfig;
use rmr1::eval::log;
use rmr1::eval::report::{self, EvalReport};
use rmr1::eval::runner::{self, EvalOptions};
use rmr1::eval::Benchmark;
use rmr1::judge::evaluation_verdict;
use serde_json::json;
use std::path::{Path, PathBuf};

fn spec() -> TinySpec {
    eval_judge_spec()
}

fn options(server: &TestServer, benchmark: Benchmark, data: &Path, log: &Path) -> EvalOptions {
    eval_options(server, benchmark, data, log)
}

fn words(i: usize, n: usize) -> String {
    (0..n)
        .map(|k| format!("w{}", 2 + (i * 7 + k * 3) % 90))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_rewardbench(dir: &Path) -> PathBuf {
    let subsets = [
        "alpacaeval-easy",
        "mt-bench-hard",
        "donotanswer",
        "math-prm",
        "hep-rust",
    ];
    let path = dir.join("rewardbench.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            json!({"id": 1000 + i, "subset": subsets[i % subsets.len()], "prompt": words(i, 5),
                   "chosen": words(i + 100, 4), "chosen_model": "m1",
                   "rejected": words(i + 200, 4), "rejected_model": "m2"})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn write_rm_bench(dir: &Path) -> PathBuf {
    let data = dir.join("rm-bench");
    std::fs::create_dir_all(&data).unwrap();
    for (file, offset) in [
        ("chat_filtered.json", 0),
        ("safety-refuse_filtered.json", 50),
    ] {
        let records: Vec<_> = (0..2)
            .map(|i| {
                let k = offset + i;
                json!({"id": k, "subset": "s", "prompt": words(k, 6),
                       "chosen": [words(k + 1, 3), words(k + 2, 5), words(k + 3, 7)],
                       "rejected": [words(k + 4, 3), words(k + 5, 5), words(k + 6, 7)]})
            })
            .collect();
        std::fs::write(data.join(file), serde_json::to_string(&records).unwrap()).unwrap();
    }
    data
}

fn write_rmb(dir: &Path) -> PathBuf {
    let root = dir.join("RMB_dataset");
    let conversation = |i: usize| {
        json!([{"role": "user", "content": words(i, 4), "language": "en"},
               {"role": "assistant", "content": words(i + 1, 3), "language": "en"},
               {"role": "user", "content": words(i + 2, 4), "language": "en"}])
    };
    for (category, offset) in [("Helpfulness", 0), ("Harmlessness", 40)] {
        let pairwise = root.join(format!("Pairwise_set/{category}/Code and Math"));
        std::fs::create_dir_all(&pairwise).unwrap();
        let pairs: Vec<_> = (0..4)
            .map(|i| {
                json!({"pair_uid": format!("{category}-p{i}"), "conversation_input": conversation(offset + i),
                       "chosen": {"llm_name": "x", "answer": words(offset + i + 10, 4)},
                       "reject": {"llm_name": "y", "answer": words(offset + i + 20, 4)},
                       "category_path": format!("Pairwise_set/{category}/Code and Math")})
            })
            .collect();
        std::fs::write(
            pairwise.join("items one.json"),
            serde_json::to_string(&pairs).unwrap(),
        )
        .unwrap();
        let bon = root.join(format!("BoN_set/{category}/Chat"));
        std::fs::create_dir_all(&bon).unwrap();
        let items: Vec<_> = (0..2)
            .map(|i| {
                json!({"bon_uid": format!("{category}-b{i}"), "conversation_input": conversation(offset + 30 + i),
                       "bon_best": {"llm_name": "x", "answer": words(offset + i + 60, 4)},
                       "loser_list": [{"llm_name": "y", "answer": words(offset + i + 70, 4)},
                                      {"llm_name": "z", "answer": words(offset + i + 80, 4)}],
                       "category_path": format!("BoN_set/{category}/Chat")})
            })
            .collect();
        std::fs::write(bon.join("bon.json"), serde_json::to_string(&items).unwrap()).unwrap();
    }
    root
}

/// Runs the benchmark, kills it half way (truncating the log to half its records plus a torn
/// line), resumes, and replays; every path must give the same scores.
async fn run_resume_replay(
    server: &TestServer,
    benchmark: Benchmark,
    data: &Path,
    dir: &Path,
) -> EvalReport {
    let full_log = dir.join(format!("{}-full.jsonl", benchmark.as_str()));
    let full = runner::run(options(server, benchmark, data, &full_log))
        .await
        .unwrap();
    eprintln!("{}", full.markdown);

    let text = std::fs::read_to_string(&full_log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let total = lines.len() - 1;
    let keep = 1 + total / 2;
    let torn = &lines[keep][..lines[keep].len() / 2];
    let resumed_log = dir.join(format!("{}-resumed.jsonl", benchmark.as_str()));
    std::fs::write(&resumed_log, lines[..keep].join("\n") + "\n" + torn).unwrap();
    let resumed = runner::run(options(server, benchmark, data, &resumed_log))
        .await
        .unwrap();
    assert_eq!(
        resumed.scores, full.scores,
        "resumed run scores differently"
    );
    let (_, records, _) = log::read(&resumed_log).unwrap();
    assert_eq!(records.len(), total);
    let mut keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "every judgment exactly once");

    // Resumed judgments are the same judgments (greedy, batch-independent), record by record.
    let (header, records, _) = log::read(&full_log).unwrap();
    let (_, resumed_records, _) = log::read(&resumed_log).unwrap();
    for record in &records {
        let again = resumed_records
            .iter()
            .find(|r| r.key == record.key)
            .unwrap();
        // Probabilities differ in the last bits with the batch composition.
        let (p, q) = (again.prob_chosen.unwrap(), record.prob_chosen.unwrap());
        assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        let strip = |r: &log::JudgmentRecord| log::JudgmentRecord {
            prob_chosen: None,
            ..r.clone()
        };
        assert_eq!(strip(again), strip(record));
        // Each record is consistent with its own raw output and ordering.
        let text_verdict = match evaluation_verdict(&record.raw_output) {
            Ok(side) => side.as_str(),
            Err(_) => "INVALID",
        };
        assert_eq!(record.verdict, text_verdict, "{}", record.key);
        assert_eq!(record.correct, record.verdict == record.chosen_position);
        assert_eq!(record.error, record.verdict == "INVALID");
        let chosen_shown = if record.chosen_position == "A" {
            &record.request.response_a
        } else {
            &record.request.response_b
        };
        assert_ne!(
            chosen_shown,
            if record.chosen_position == "A" {
                &record.request.response_b
            } else {
                &record.request.response_a
            }
        );
        assert_eq!(
            record.chosen_position == "B",
            runner::chosen_shown_second(7, &record.key)
        );
    }
    let replayed = report::score(&header, &records, Vec::new()).unwrap();
    assert_eq!(replayed.scores, full.scores);
    assert_eq!(replayed.markdown, full.markdown);
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_benchmarks_run_resume_and_replay() {
    let server = start_with(&spec(), EngineConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();

    let rb = run_resume_replay(
        &server,
        Benchmark::RewardBench,
        &write_rewardbench(dir.path()),
        dir.path(),
    )
    .await;
    assert_eq!(rb.judgments, 24);
    let rm = run_resume_replay(
        &server,
        Benchmark::RmBench,
        &write_rm_bench(dir.path()),
        dir.path(),
    )
    .await;
    assert_eq!(rm.judgments, 4 * 9);
    let rmb = run_resume_replay(&server, Benchmark::Rmb, &write_rmb(dir.path()), dir.path()).await;
    assert_eq!(rmb.judgments, 2 * (4 + 2 * 2));

    // The tiny judge gives a mix of outcomes, so the scores above are not trivially 0 or 1.
    let (_, records, _) = log::read(&dir.path().join("rewardbench-full.jsonl")).unwrap();
    assert!(records.iter().any(|r| r.correct));
    assert!(records.iter().any(|r| !r.correct && !r.error));
    assert!(
        records.iter().any(|r| r.chosen_position == "A")
            && records.iter().any(|r| r.chosen_position == "B")
    );

    // Resuming a log with different settings is refused instead of mixing runs.
    let mut other = options(
        &server,
        Benchmark::RewardBench,
        &write_rewardbench(dir.path()),
        &dir.path().join("rewardbench-full.jsonl"),
    );
    other.seed = 8;
    let err = runner::run(other).await.unwrap_err().to_string();
    assert!(
        err.contains("different run") && err.contains("seed"),
        "{err}"
    );
}

/// `rmr1 eval` as a process, SIGKILLed half way through, then rerun: the resumed report equals an
/// uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_resumes_after_being_killed() {
    let server = start_with(&spec(), EngineConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let subsets = [
        "alpacaeval-hard",
        "llmbar-natural",
        "xstest-should-respond",
        "hep-go",
    ];
    let data = dir.path().join("many.jsonl");
    let lines: Vec<String> = (0..160)
        .map(|i| {
            json!({"id": i, "subset": subsets[i % 4], "prompt": words(i, 5),
                   "chosen": words(i + 300, 4), "rejected": words(i + 400, 4)})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let eval = |log: &Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rmr1"));
        command.args([
            "eval",
            "--benchmark",
            "rewardbench",
            "--concurrency",
            "2",
            "--max-new-tokens",
            "6",
            "--seed",
            "3",
        ]);
        command
            .arg("--addr")
            .arg(server.url())
            .arg("--data")
            .arg(&data)
            .arg("--log")
            .arg(log);
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let killed_log = dir.path().join("killed.jsonl");
    let mut child = eval(&killed_log).spawn().unwrap();
    for _ in 0..6000 {
        let lines = std::fs::read_to_string(&killed_log).map_or(0, |t| t.lines().count());
        if lines > 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, partial, _) = log::read(&killed_log).unwrap();
    assert!(
        partial.len() > 30 && partial.len() < 160,
        "killed after {} judgments",
        partial.len()
    );

    assert!(eval(&killed_log).status().unwrap().success(), "resumed run");
    let clean_log = dir.path().join("clean.jsonl");
    assert!(
        eval(&clean_log).status().unwrap().success(),
        "uninterrupted run"
    );
    let report = |log: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(log.with_extension("report.json")).unwrap())
            .unwrap()
    };
    assert_eq!(report(&killed_log)["scores"], report(&clean_log)["scores"]);
    assert_eq!(report(&killed_log)["judgments"], 160);
    // And the replay of the resumed log prints the same numbers.
    let replayed = dir.path().join("replayed.report.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rmr1"))
        .args(["eval", "--replay"])
        .arg(&killed_log)
        .arg("--report")
        .arg(&replayed)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let replayed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&replayed).unwrap()).unwrap();
    assert_eq!(replayed["scores"], report(&clean_log)["scores"]);
}
