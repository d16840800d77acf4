//! Evaluation on real, complete datasets: blank replies and empty user turns are judged and counted
//! (RMB has both); a run over less than the published benchmark says so and names what is missing,
//! and prints no unqualified headline; `--data` may name one file of RMB's tree; replay re-derives
//! every verdict from the raw output and rejects a log that contradicts itself; upstream RM-R1's
//! RMB result files are scored with rmr1's rules; a server still loading gets a plain answer.

mod common;

use common::judge_server::{eval_judge_spec, eval_options, start_with, TestServer};
use rmr1::engine::EngineConfig;
use rmr1::eval::runner::{self, EvalOptions, Target};
use rmr1::eval::task::{OnBadRecord, RmbSet, TaskGroup};
use rmr1::eval::{log, replay, report, upstream, Benchmark};
use serde_json::json;
use std::path::{Path, PathBuf};

fn options(server: &TestServer, data: &Path, log: &Path, both_orders: bool) -> EvalOptions {
    EvalOptions {
        concurrency: 4,
        seed: 3,
        both_orders,
        ..eval_options(server, Benchmark::Rmb, data, log)
    }
}

fn turn(role: &str, content: &str) -> serde_json::Value {
    json!({"role": role, "content": content, "language": "en"})
}

fn pair(
    uid: usize,
    conversation: serde_json::Value,
    chosen: &str,
    reject: &str,
) -> serde_json::Value {
    json!({"pair_uid": uid.to_string(), "conversation_input": conversation,
           "chosen": {"llm_name": "x", "answer": chosen},
           "reject": {"llm_name": "y", "answer": reject}, "category_path": "x"})
}

/// Two files at their published paths: S5 with a whitespace-only rejected answer (as the real
/// S5.json has at index 396), and a translation file whose last user turn is empty (as the real one
/// has at 29..33).
fn write_rmb(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("RMB_dataset");
    let s5 = root.join("Pairwise_set/Harmlessness/S5.json");
    let translation =
        root.join("Pairwise_set/Helpfulness/Translation/GeneralExcerpt Language Translation.json");
    std::fs::create_dir_all(s5.parent().unwrap()).unwrap();
    std::fs::create_dir_all(translation.parent().unwrap()).unwrap();
    let user = |q: &str| json!([turn("user", q)]);
    std::fs::write(
        &s5,
        json!([
            pair(1, user("w3 w4 w5"), "w6 w7", "w8 w9"),
            pair(2, user("w10 w11"), "w12 w13", "\n\n \n \n"),
            pair(3, user("w14"), "w15", "w16 w17"),
        ])
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &translation,
        json!([
            pair(
                4,
                json!([
                    turn("user", "w20 w21"),
                    turn("assistant", "w22"),
                    turn("user", "")
                ]),
                "w23 w24",
                "w25"
            ),
            pair(5, user("w26 w27"), "w28", "w29 w30"),
        ])
        .to_string(),
    )
    .unwrap();
    (root, s5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_replies_are_judged_partial_data_is_named_and_replay_rederives() {
    let server = start_with(&eval_judge_spec(), EngineConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (root, s5) = write_rmb(dir.path());

    let log_path = dir.path().join("rmb.jsonl");
    let r = runner::run(options(&server, &root, &log_path, false))
        .await
        .unwrap();
    println!("{}", r.markdown);
    // Every pair judged, the blank ones included, and counted in the denominators.
    assert_eq!(r.judgments, 5);
    let (_, records, _) = log::read(&log_path).unwrap();
    for key in ["rmb/pairwise/2", "rmb/pairwise/4"] {
        let record = records.iter().find(|x| x.key == key).unwrap();
        assert!(!record.raw_output.is_empty(), "{key} was generated for");
        assert!(record
            .invalid_reason
            .as_deref()
            .is_none_or(|r| !r.starts_with("refused")));
    }
    let sets = r.scores["sets"].as_array().unwrap();
    let items = |category: &str| {
        sets.iter()
            .find(|s| s["set"] == "pairwise" && s["category"] == category)
            .unwrap()["items"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((items("harmlessness"), items("helpfulness")), (3, 2));

    // Two of 98 published files, each shorter than published: partial, named, no headline.
    assert!(!r.complete);
    let c = r.completeness.as_ref().unwrap();
    assert_eq!((c.published, c.found), (3786 + 17131, 5));
    assert!(r.scores["headline"].is_null());
    assert!(
        r.markdown
            .starts_with("PARTIAL: 5 of the 20917 published records"),
        "{}",
        r.markdown
    );
    assert!(
        r.markdown
            .contains("Pairwise_set/Harmlessness/S5.json (3 of 561)"),
        "{}",
        r.markdown
    );
    assert!(
        r.markdown.contains("missing: BoN_set/Harmlessness/S1.json"),
        "{}",
        r.markdown
    );
    assert!(r.markdown.contains("(partial)"));

    // Replay re-derives: the log as written passes, and the report is the same.
    let (header, mut records, _) = log::read(&log_path).unwrap();
    replay::verify(&records, header.both_orders).unwrap();
    assert_eq!(
        report::score(&header, &records, vec![]).unwrap().scores,
        r.scores
    );
    // One record edited to contradict its own raw output: named, not trusted.
    let i = 2;
    records[i].correct = !records[i].correct;
    let err = replay::verify(&records, false).unwrap_err().to_string();
    assert!(
        err.contains(&format!("log line {}", i + 2)) && err.contains(&records[i].key),
        "{err}"
    );
    // So is a verdict that its output does not contain.
    records[i].correct = !records[i].correct;
    records[i].raw_output = format!("{} <answer>[[A]]</answer> [[B]]", records[i].raw_output);
    let err = replay::verify(&records, false).unwrap_err().to_string();
    assert!(err.contains("verdict INVALID"), "{err}");

    // Both orders: each order's output is kept and the combined verdict re-derived from them.
    let both_log = dir.path().join("rmb-both.jsonl");
    runner::run(options(&server, &root, &both_log, true))
        .await
        .unwrap();
    let (header, records, _) = log::read(&both_log).unwrap();
    assert!(header.both_orders);
    assert!(records.iter().all(|x| x.orders.len() == 2));
    replay::verify(&records, true).unwrap();

    // `--data` naming one file of the tree: a partial run over that file.
    let one = runner::run(options(&server, &s5, &dir.path().join("one.jsonl"), false))
        .await
        .unwrap();
    assert_eq!(one.judgments, 3);
    assert!(!one.complete);
    // A file outside the tree: told what --data should be, not "Not a directory".
    let stray = dir.path().join("stray.json");
    std::fs::write(&stray, "[]").unwrap();
    let err = Benchmark::Rmb
        .load(&stray, OnBadRecord::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--data should be the RMB_dataset folder"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_still_loading_gets_a_plain_answer() {
    let server = rmr1::api::GrpcServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = write_rmb(dir.path());
    let mut o = EvalOptions {
        target: Target::Remote {
            addr: format!("http://{}", server.local_addr()),
            wait_seconds: 0,
            access: Default::default(),
        },
        ..options_without_server(&root, &dir.path().join("x.jsonl"))
    };
    let err = runner::run(o).await.unwrap_err().to_string();
    assert!(err.contains("is still loading its model"), "{err}");
    o = EvalOptions {
        target: Target::Remote {
            addr: format!("http://{}", server.local_addr()),
            wait_seconds: 1,
            access: Default::default(),
        },
        ..options_without_server(&root, &dir.path().join("x.jsonl"))
    };
    let err = runner::run(o).await.unwrap_err().to_string();
    assert!(
        err.contains("did not finish loading its model within 1 s"),
        "{err}"
    );
}

fn options_without_server(data: &Path, log: &Path) -> EvalOptions {
    EvalOptions {
        benchmark: Benchmark::Rmb,
        data: data.into(),
        log: log.into(),
        target: Target::Remote {
            addr: String::new(),
            wait_seconds: 0,
            access: Default::default(),
        },
        model: String::new(),
        concurrency: 1,
        seed: 0,
        both_orders: false,
        max_new_tokens: Some(2),
        on_bad_record: OnBadRecord::Fail,
    }
}

/// A row of upstream's RMB `logs.json` / `raw_logs.json`.
fn upstream_row(
    id: (&str, &str),
    path: &str,
    output: &str,
    shuffled: bool,
    results: u8,
) -> serde_json::Value {
    let dialogue = |reply: &str| json!([{"content": "Q?", "role": "user"}, {"content": reply, "role": "assistant"}]);
    json!({id.0: id.1, "category_path": path, "text_chosen": dialogue("good"),
           "text_rejected": dialogue("bad"), "results": results, "subset": path,
           "answers": output, "Is_Chosen_Answer_Shuffled_toPositionB": shuffled})
}

#[test]
fn upstream_rmb_result_files_are_scored_with_rmr1s_rules() {
    let dir = tempfile::tempdir().unwrap();
    let helpful = "Pairwise_set/Helpfulness/Code/Documentation";
    let harmless = "Pairwise_set/Harmlessness/S1";
    let pairwise = dir.path().join("logs.json");
    std::fs::write(
        &pairwise,
        serde_json::to_string_pretty(&json!([
            // Chosen shown as A, model says A: right.
            upstream_row(
                ("pair_uid", "0"),
                helpful,
                "<eval>..</eval>\n<answer>[[A]]</answer>",
                false,
                1
            ),
            // Chosen shown as B, model says A: wrong.
            upstream_row(
                ("pair_uid", "1"),
                helpful,
                "<answer>[[A]]</answer>",
                true,
                0
            ),
            // Both tags anywhere: an error (wrong), whatever upstream's flag claims.
            upstream_row(
                ("pair_uid", "2"),
                helpful,
                "[[B]] is tempting, but <answer>[[A]]</answer>",
                false,
                1
            ),
            // Chosen shown as B, model says B: right.
            upstream_row(
                ("pair_uid", "10067"),
                harmless,
                "<answer>[[B]]</answer>",
                true,
                1
            ),
        ]))
        .unwrap(),
    )
    .unwrap();
    let bon_path = "BoN_set/Helpfulness/Code/Documentation";
    let bon = dir.path().join("group_by_same_id_logs.json");
    std::fs::write(
        &bon,
        json!({"0": [
            upstream_row(("bon_uid", "0"), bon_path, "<answer>[[A]]</answer>", false, 1),
            upstream_row(("bon_uid", "0"), bon_path, "<answer>[[A]]</answer>", true, 0),
        ], "1": [
            upstream_row(("bon_uid", "1"), bon_path, "<answer>[[B]]</answer>", true, 1),
        ]})
        .to_string(),
    )
    .unwrap();
    let run = upstream::load_rmb(&[pairwise, bon]).unwrap();
    assert_eq!(run.records.len(), 7);
    assert_eq!(run.disagreements, vec!["rmb/pairwise/2"]);
    let two = run
        .records
        .iter()
        .find(|r| r.key == "rmb/pairwise/2")
        .unwrap();
    assert!(two.error && !two.correct);
    let shuffled = run
        .records
        .iter()
        .find(|r| r.key == "rmb/pairwise/1")
        .unwrap();
    assert_eq!(shuffled.chosen_position, "B");
    assert_eq!(shuffled.request.response_b, "good");
    assert_eq!(
        shuffled.group,
        TaskGroup::Rmb {
            set: RmbSet::Pairwise,
            category: "helpfulness".into(),
            item: "1".into()
        }
    );
    replay::verify(&run.records, false).unwrap();
    let r = report::score(&run.header, &run.records, vec![]).unwrap();
    let acc = |set: &str, category: &str| {
        r.scores["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["set"] == set && s["category"] == category)
            .unwrap()["accuracy"]
            .as_f64()
            .unwrap()
    };
    assert!((acc("pairwise", "helpfulness") - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(acc("pairwise", "harmlessness"), 1.0);
    // BoN item 0 lost one of its two comparisons; item 1 won its only one.
    assert_eq!(acc("bon", "helpfulness"), 0.5);
    assert!(!r.complete);
    assert!(
        r.markdown
            .contains("Pairwise_set/Helpfulness/Code/Documentation.json (3 of 65)"),
        "{}",
        r.markdown
    );
}
