//! Training checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! `{output_dir}/checkpoints/step-00000042/` holds `trainable.safetensors` (f32 masters or LoRA
//! factors, by trainable name), `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step, data cursor, seeds, metrics). A checkpoint is written into a `.tmp-*` sibling, state file
//! last, and renamed into place: a directory named `step-*` is always complete, whatever killed the
//! process, and the newest one wins on resume.

use crate::model::safetensors_io::{fsync_dir, write_json_atomically, write_safetensors};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";
const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const FORMAT_VERSION: u32 = 1;

/// Where a run stands: the step counter, the data cursor and the counters metrics are built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format_version: u32,
    /// The job these weights belong to: a new job never resumes another job's checkpoint.
    pub job_id: String,
    /// Optimizer updates done.
    pub step: u64,
    /// Examples consumed since the start, across epochs: with the seeded per-epoch order this is
    /// the whole data cursor (epoch = consumed / n, position = consumed % n).
    pub examples_consumed: u64,
    pub tokens_seen: u64,
    /// Seed of every draw (data order, dropout masks, LoRA init): draws are keyed by it and by the
    /// counters above, so there is no other RNG state to save.
    pub seed: u64,
    /// AdamW's update count (bias correction).
    pub optimizer_steps: u64,
    pub loss: Option<f64>,
    /// Fingerprint of the spec the checkpoint was made under: resuming under another spec is refused.
    pub spec_fingerprint: String,
}

pub struct Checkpoint {
    pub path: PathBuf,
    pub state: TrainerState,
}

pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoints under `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Result<Vec<Checkpoint>> {
    let dir = checkpoints_dir(output_dir);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name.strip_prefix("step-") else {
            continue;
        };
        if step.parse::<u64>().is_err() {
            continue; // `.tmp-*` leftovers of an interrupted write
        }
        let path = entry.path();
        let text = match std::fs::read_to_string(path.join(STATE_FILE)) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let state: TrainerState = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", path.join(STATE_FILE).display()))?;
        out.push(Checkpoint { path, state });
    }
    out.sort_by_key(|c| c.state.step);
    Ok(out)
}

/// The newest complete checkpoint of `job_id`, if any. Checkpoints of another job in the same
/// directory are an error: resuming them would silently mix two runs.
pub fn latest_for_job(output_dir: &Path, job_id: &str) -> Result<Option<Checkpoint>> {
    let all = list(output_dir)?;
    if let Some(other) = all.iter().find(|c| c.state.job_id != job_id) {
        bail!(
            "{} holds checkpoints of job {:?}; use another output_dir",
            output_dir.display(),
            other.state.job_id
        );
    }
    Ok(all.into_iter().last())
}

/// Writes a checkpoint atomically and removes the oldest beyond `keep_last` (0 = keep all).
pub fn save(
    output_dir: &Path,
    state: &TrainerState,
    trainable: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    keep_last: usize,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(output_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_path = dir.join(step_dir_name(state.step));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        step_dir_name(state.step),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    // Each file is synced as it is written; the state file goes last, so a directory holding one
    // holds everything.
    write_safetensors(
        &tmp.join(TRAINABLE_FILE),
        trainable.iter().map(|(k, v)| (k.as_str(), v)),
    )?;
    write_safetensors(
        &tmp.join(OPTIMIZER_FILE),
        optimizer.iter().map(|(k, v)| (k.as_str(), v)),
    )?;
    let mut state = state.clone();
    state.format_version = FORMAT_VERSION;
    write_json_atomically(&tmp.join(STATE_FILE), &state)?;
    if final_path.exists() {
        // The same step again (a resumed run that crashed before its next checkpoint): replace.
        std::fs::remove_dir_all(&final_path)?;
    }
    std::fs::rename(&tmp, &final_path)
        .with_context(|| format!("moving the checkpoint into {}", final_path.display()))?;
    fsync_dir(&dir)?;
    if keep_last > 0 {
        let all = list(output_dir)?;
        let excess = all.len().saturating_sub(keep_last);
        for old in all.into_iter().take(excess) {
            std::fs::remove_dir_all(&old.path)
                .with_context(|| format!("removing {}", old.path.display()))?;
        }
    }
    Ok(final_path)
}

/// The tensors of a checkpoint: (trainable, optimizer state).
pub fn load_tensors(
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
    let read = |f: &str| -> Result<BTreeMap<String, Tensor>> {
        let path = checkpoint.path.join(f);
        Ok(candle_core::safetensors::load(&path, device)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect())
    };
    Ok((read(TRAINABLE_FILE)?, read(OPTIMIZER_FILE)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64, job: &str) -> TrainerState {
        TrainerState {
            format_version: FORMAT_VERSION,
            job_id: job.into(),
            step,
            examples_consumed: step * 2,
            tokens_seen: step * 100,
            seed: 7,
            optimizer_steps: step,
            loss: Some(1.5),
            spec_fingerprint: "abc".into(),
        }
    }

    fn tensors(v: f32) -> BTreeMap<String, Tensor> {
        BTreeMap::from([(
            "w".to_string(),
            Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap(),
        )])
    }

    #[test]
    fn saves_atomically_keeps_the_last_n_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 4, 6, 8] {
            save(
                dir.path(),
                &state(step, "j"),
                &tensors(step as f32),
                &tensors(0.5),
                2,
            )
            .unwrap();
        }
        // A half-written checkpoint (killed before the rename) is ignored.
        std::fs::create_dir_all(checkpoints_dir(dir.path()).join(".tmp-step-00000010-1")).unwrap();
        let all = list(dir.path()).unwrap();
        assert_eq!(
            all.iter().map(|c| c.state.step).collect::<Vec<_>>(),
            vec![6, 8]
        );
        let latest = latest_for_job(dir.path(), "j").unwrap().unwrap();
        assert_eq!(latest.state, state(8, "j"));
        let (t, o) = load_tensors(&latest, &Device::Cpu).unwrap();
        assert_eq!(t["w"].to_vec1::<f32>().unwrap(), vec![8.0, 9.0]);
        assert_eq!(o["w"].to_vec1::<f32>().unwrap(), vec![0.5, 1.5]);
        assert!(latest_for_job(dir.path(), "other").is_err());
    }

    #[test]
    fn a_checkpoint_dir_without_its_state_file_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state(1, "j"), &tensors(1.0), &tensors(1.0), 0).unwrap();
        std::fs::create_dir_all(checkpoints_dir(dir.path()).join("step-00000002")).unwrap();
        assert_eq!(
            latest_for_job(dir.path(), "j").unwrap().unwrap().state.step,
            1
        );
    }
}
