//! `rmr1 train` against a training server on loopback with the fake trainer: submit follows a job
//! to its end and exits 0 only on success; list, get, cancel and checkpoints talk to the same API.

#[path = "common/train_server.rs"]
mod train_server;

use std::process::{Command, Output};
use train_server::Harness;

/// Runs the `rmr1` binary off the async threads (the server answers on them).
async fn rmr1(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rmr1"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn submit_follows_to_the_end_and_the_exit_code_says_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let addr = format!("http://{}", h.server.local_addr());
    let write_spec = |name: &str, mode: &str| {
        let path = dir.path().join(format!("{name}.json"));
        let spec = serde_json::json!({
            "base_model": mode,
            "task": {"kind": "sft", "train_files": ["data/train.jsonl"]},
            "adapter": {"rank": 8, "alpha": 16.0},
            "output_dir": format!("runs/{name}"),
        });
        std::fs::write(&path, spec.to_string()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v = vec!["train".to_string()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v.extend(["--addr".to_string(), addr.clone()]);
        v
    };

    let ok = write_spec("ok", "steps:4");
    let out = rmr1(args(&[
        "submit", "--spec", &ok, "--job-id", "ok", "--label", "team=rm",
    ]))
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("RUNNING -> SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("checkpoint at step 4"), "{stdout}");
    assert!(stdout.contains("artifact (peft_lora)"), "{stdout}");
    assert!(
        text(&out.stderr).contains("step 4/4"),
        "{}",
        text(&out.stderr)
    );

    let bad = write_spec("bad", "fail");
    let out = rmr1(args(&["submit", "--spec", &bad, "--job-id", "bad"])).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RESOURCE_EXHAUSTED"),
        "{}",
        text(&out.stderr)
    );

    let out = rmr1(args(&[
        "submit",
        "--spec",
        &write_spec("d", "gate"),
        "--detach",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let detached = text(&out.stdout).trim().to_string();
    assert!(detached.starts_with("job-"), "{detached}");

    let out = rmr1(args(&[
        "list",
        "--state",
        "succeeded",
        "--label",
        "team=rm",
    ]))
    .await;
    let listing = text(&out.stdout);
    assert!(
        listing.contains("ok") && !listing.contains("bad"),
        "{listing}"
    );
    let out = rmr1(args(&["get", "bad"])).await;
    assert!(
        text(&out.stdout).contains("out of device memory"),
        "{}",
        text(&out.stdout)
    );
    let out = rmr1(args(&["checkpoints", "ok"])).await;
    assert!(
        text(&out.stdout).contains("checkpoint-4"),
        "{}",
        text(&out.stdout)
    );

    // Cancelling the detached job: attach then sees it end CANCELLED, which is not success.
    let out = rmr1(args(&["cancel", &detached])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = rmr1(args(&["attach", &detached])).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CANCELLED"),
        "{}",
        text(&out.stderr)
    );
    let out = rmr1(args(&["cancel", "ok"])).await;
    assert!(!out.status.success(), "a finished job cannot be cancelled");
}
