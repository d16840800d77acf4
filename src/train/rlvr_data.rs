//! The GRPO data path: RM-R1's RLVR rows (`context_messages` = [system, user], `winner` ∈
//! {`model_a`, `model_b`}) turned into prompt ids and the side the reward checks against.
//!
//! Prompts are built by [`ModelTokenizer::encode_chat_prompt`], the function the judge and SFT use,
//! so the policy is rolled out, trained and later served on the same ids.

use super::executor::TrainError;
use super::sft_data::{context_messages, json_kind, load_rows, RowRef};
use super::spec::GrpoSpec;
use crate::judge::Side;
use crate::model::ModelTokenizer;

/// One prompt of the RL set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlvrPrompt {
    pub tokens: Vec<u32>,
    /// The human-preferred side: the reward is +1 when the rollout's verdict names it.
    pub label: Side,
    pub source: RowRef,
}

/// `model_a` → A, `model_b` → B (upstream's labels); anything else is a bad row.
pub fn parse_label(record: &serde_json::Value, field: &str) -> Result<Side, String> {
    match record.get(field) {
        Some(serde_json::Value::String(s)) if s == "model_a" => Ok(Side::A),
        Some(serde_json::Value::String(s)) if s == "model_b" => Ok(Side::B),
        Some(serde_json::Value::String(s)) => Err(format!(
            "`{field}` is {s:?} (expected \"model_a\" or \"model_b\")"
        )),
        Some(other) => Err(format!("`{field}` is not a string: {}", json_kind(other))),
        None => Err(format!("`{field}` is missing")),
    }
}

fn encode_row(
    record: &serde_json::Value,
    spec: &GrpoSpec,
    tokenizer: &ModelTokenizer,
) -> Result<(Vec<u32>, Side), String> {
    let messages = context_messages(record)?;
    let label = parse_label(record, &spec.label_field)?;
    let tokens = tokenizer
        .encode_chat_prompt(&messages)
        .map_err(|e| format!("rendering the prompt: {e:#}"))?;
    if tokens.is_empty() {
        return Err("the prompt renders to no tokens".into());
    }
    if tokens.len() > spec.max_prompt_len {
        return Err(format!(
            "the prompt has {} tokens, more than max_prompt_len {}",
            tokens.len(),
            spec.max_prompt_len
        ));
    }
    Ok((tokens, label))
}

/// Reads and tokenizes the RL set with the loader rules of [`load_rows`] (bad rows fail the job
/// naming file and row, or are skipped with `skip_bad_rows`).
pub fn load_rlvr_dataset(
    spec: &GrpoSpec,
    tokenizer: &ModelTokenizer,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<RlvrPrompt>, TrainError> {
    let rows = load_rows(&spec.train_files, spec.skip_bad_rows, warn, &mut |record| {
        encode_row(record, spec, tokenizer)
    })?;
    Ok(rows
        .into_iter()
        .map(|((tokens, label), source)| RlvrPrompt {
            tokens,
            label,
            source,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_are_upstreams_two_sides_only() {
        let row = |w: serde_json::Value| json!({ "winner": w });
        assert_eq!(parse_label(&row(json!("model_a")), "winner"), Ok(Side::A));
        assert_eq!(parse_label(&row(json!("model_b")), "winner"), Ok(Side::B));
        let tie = parse_label(&row(json!("tie")), "winner").unwrap_err();
        assert!(tie.contains("\"tie\"") && tie.contains("model_a"), "{tie}");
        let num = parse_label(&row(json!(1)), "winner").unwrap_err();
        assert!(num.contains("not a string"), "{num}");
        let missing = parse_label(&json!({}), "label").unwrap_err();
        assert!(missing.contains("`label` is missing"), "{missing}");
    }
}
