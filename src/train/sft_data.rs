//! The SFT data path: RM-R1 distillation rows (`context_messages` + a target trace) turned into
//! token sequences whose loss covers the response only (RM-R1 README §6).
//!
//! The prompt half of every example is built by [`ModelTokenizer::encode_chat_prompt`], the very
//! function the judge feeds the engine with, so the trained model is served the exact ids it was
//! trained on. The response half is the trace as the chat template writes an assistant turn,
//! closed by the template's own end-of-turn text (read off the template, not hard-coded), so the
//! model learns to stop where the engine stops it.
//!
//! Prompt and response are encoded separately and concatenated. Encoding the whole rendered
//! conversation at once can differ at the seam (a trace that starts with a newline merges with the
//! generation prompt's `\n` in Qwen's pre-tokenizer); the separate encoding is the one inference
//! produces, so it is the one trained on.

use super::executor::{TrainError, TrainErrorKind};
use super::rng::{mix64, SplitMix64, GOLDEN_GAMMA};
use super::spec::SftSpec;
use crate::eval::records::{has_extension, read_numbered_records, DataFile};
use crate::eval::task::required_str;
use crate::model::chat_template::ChatMessage;
use crate::model::ModelTokenizer;
use std::fmt;
use std::path::PathBuf;

/// File types the loader reads; a directory stands for the files in it with these extensions.
pub const DATA_EXTENSIONS: [&str; 3] = ["jsonl", "json", "parquet"];

/// Where an example came from. `row` is 1-based: the line number in a JSON Lines file (blank
/// lines count), the position in a JSON array or parquet file otherwise. Error messages and
/// warnings use the same number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowRef {
    pub file: PathBuf,
    pub row: usize,
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} row {}", self.file.display(), self.row)
    }
}

/// One training sequence: prompt ids followed by target ids. The loss covers exactly
/// `tokens[prompt_len..]`, each predicted from the positions before it, i.e. the logits at
/// positions `prompt_len - 1 .. tokens.len() - 1`. `prompt_len >= 1` and the target is never
/// empty, so there is always at least one predicted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub source: RowRef,
}

impl SftExample {
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The loss-bearing ids.
    pub fn target(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// How the model's chat template writes an assistant turn after its generation prompt: `lead`
/// before the content (empty for ChatML) and `end` after it, up to and including the end-of-turn
/// token (ChatML: `<|im_end|>`; the template's trailing newline is not part of the response the
/// model generates, since the engine stops at the end-of-turn token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantTurn {
    pub lead: String,
    pub end: String,
}

/// Stands in for the content when probing the template; plain ASCII no template rewrites.
const PROBE_CONTENT: &str = "RMR1PROBECONTENT";

impl AssistantTurn {
    /// Renders a one-question conversation with and without an assistant answer and reads what
    /// the template puts around the answer.
    pub fn from_template(tokenizer: &ModelTokenizer) -> Result<Self, TrainError> {
        let bad = |why: String| {
            TrainError::new(
                TrainErrorKind::FailedPrecondition,
                format!("the model's chat template cannot be used for SFT: {why}"),
            )
        };
        let question = [ChatMessage::new("user", "Hello?")];
        let answered = [
            ChatMessage::new("user", "Hello?"),
            ChatMessage::new("assistant", PROBE_CONTENT),
        ];
        let prompt = tokenizer
            .apply_chat_template(&question, true)
            .map_err(|e| bad(format!("{e:#}")))?;
        let full = tokenizer
            .apply_chat_template(&answered, false)
            .map_err(|e| bad(format!("{e:#}")))?;
        let rest = full.strip_prefix(prompt.as_str()).ok_or_else(|| {
            bad("a conversation with an answer does not start with the generation prompt".into())
        })?;
        let at = rest
            .find(PROBE_CONTENT)
            .ok_or_else(|| bad("it does not write an assistant message verbatim".into()))?;
        let lead = rest[..at].to_string();
        let suffix = &rest[at + PROBE_CONTENT.len()..];
        let eos_texts: Vec<String> = tokenizer
            .eos_ids()
            .iter()
            .filter_map(|&id| tokenizer.inner().id_to_token(id))
            .collect();
        // Up to the first end-of-turn token the engine stops at; otherwise whatever the template
        // closes the turn with (minus layout whitespace); a template that closes with nothing
        // gets the EOS token, so the model still learns to stop.
        let first_eos_end = eos_texts
            .iter()
            .filter(|t| !t.is_empty())
            .filter_map(|t| suffix.find(t.as_str()).map(|i| i + t.len()))
            .min();
        let end = match first_eos_end {
            Some(cut) => suffix[..cut].to_string(),
            None if !suffix.trim_end().is_empty() => suffix.trim_end().to_string(),
            None => eos_texts
                .first()
                .cloned()
                .ok_or_else(|| bad("it ends an answer with nothing and there is no EOS".into()))?,
        };
        Ok(Self { lead, end })
    }

    /// The text the model is trained to generate for `trace`.
    pub fn response_text(&self, trace: &str) -> String {
        format!("{}{trace}{}", self.lead, self.end)
    }
}

/// The `context_messages` of a row: a non-empty list of `{role, content}` (other keys ignored)
/// with roles system / user / assistant, not ending with an assistant turn.
pub fn context_messages(record: &serde_json::Value) -> Result<Vec<ChatMessage>, String> {
    let list = match record.get("context_messages") {
        Some(serde_json::Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "`context_messages` is not a list: {}",
                json_kind(other)
            ))
        }
        None => return Err("`context_messages` is missing".into()),
    };
    if list.is_empty() {
        return Err("`context_messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let field = |name: &str| match message.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.as_str()),
            Some(other) => Err(format!(
                "`context_messages[{i}].{name}` is not a string: {}",
                json_kind(other)
            )),
            None => Err(format!("`context_messages[{i}].{name}` is missing")),
        };
        if !message.is_object() {
            return Err(format!(
                "`context_messages[{i}]` is not an object: {}",
                json_kind(message)
            ));
        }
        let role = field("role")?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "`context_messages[{i}].role` is {role:?} (expected system, user or assistant)"
            ));
        }
        messages.push(ChatMessage::new(role, field("content")?));
    }
    if messages.last().is_some_and(|m| m.role == "assistant") {
        return Err("`context_messages` ends with an assistant message (nothing to answer)".into());
    }
    Ok(messages)
}

pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One row's example, or why the row is bad.
fn encode_row(
    record: &serde_json::Value,
    spec: &SftSpec,
    tokenizer: &ModelTokenizer,
    turn: &AssistantTurn,
) -> Result<(Vec<u32>, usize), String> {
    let messages = context_messages(record)?;
    let trace = required_str(record, &spec.target_field)?;
    let mut tokens = tokenizer
        .encode_chat_prompt(&messages)
        .map_err(|e| format!("rendering the prompt: {e:#}"))?;
    let prompt_len = tokens.len();
    if prompt_len == 0 {
        return Err("the prompt renders to no tokens".into());
    }
    let target = tokenizer
        .encode(&turn.response_text(trace))
        .map_err(|e| format!("tokenizing `{}`: {e:#}", spec.target_field))?;
    tokens.extend_from_slice(&target);
    if tokens.len() > spec.max_seq_len {
        return Err(format!(
            "{} tokens ({prompt_len} prompt + {} target) exceed max_seq_len {}",
            tokens.len(),
            target.len(),
            spec.max_seq_len
        ));
    }
    Ok((tokens, prompt_len))
}

/// Reads and tokenizes `files` (JSON Lines, JSON arrays or parquet, by extension; a directory
/// means the data files directly in it), with the rules of [`load_rows`].
pub fn load_sft_dataset(
    files: &[PathBuf],
    spec: &SftSpec,
    tokenizer: &ModelTokenizer,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<SftExample>, TrainError> {
    let turn = AssistantTurn::from_template(tokenizer)?;
    let rows = load_rows(files, spec.skip_bad_rows, warn, &mut |record| {
        encode_row(record, spec, tokenizer, &turn)
    })?;
    Ok(rows
        .into_iter()
        .map(|((tokens, prompt_len), source)| SftExample {
            tokens,
            prompt_len,
            source,
        })
        .collect())
}

/// Reads every row of `files` through `encode`. A bad row fails the load with its file, row and
/// reason, or with `skip_bad_rows` is reported through `warn` and left out (plus one summary
/// warning). A missing, unreadable or empty file always fails, and so does a load that ends with
/// no rows.
pub fn load_rows<T>(
    files: &[PathBuf],
    skip_bad_rows: bool,
    warn: &mut dyn FnMut(&str),
    encode: &mut dyn FnMut(&serde_json::Value) -> Result<T, String>,
) -> Result<Vec<(T, RowRef)>, TrainError> {
    let mut examples = Vec::new();
    let (mut rows, mut skipped) = (0usize, 0usize);
    for path in files {
        if path.is_file() && !has_extension(path, &DATA_EXTENSIONS) {
            return Err(TrainError::invalid_data(format!(
                "{}: unsupported file type (expected .jsonl, .json or .parquet)",
                path.display()
            )));
        }
        let data_files = DataFile::find(path, &DATA_EXTENSIONS)
            .map_err(|e| TrainError::invalid_data(format!("{e:#}")))?;
        for data in data_files {
            let records = read_numbered_records(&data)
                .map_err(|e| TrainError::invalid_data(format!("{e:#}")))?;
            if records.is_empty() {
                return Err(TrainError::invalid_data(format!(
                    "{} has no rows",
                    data.path.display()
                )));
            }
            for (row, record) in records {
                rows += 1;
                let source = RowRef {
                    file: data.path.clone(),
                    row,
                };
                let encoded = record.and_then(|r| {
                    if r.is_object() {
                        encode(&r)
                    } else {
                        Err(format!("the row is {}, not an object", json_kind(&r)))
                    }
                });
                match encoded {
                    Ok(example) => examples.push((example, source)),
                    Err(reason) if skip_bad_rows => {
                        skipped += 1;
                        warn(&format!("skipping {source}: {reason}"));
                    }
                    Err(reason) => {
                        return Err(TrainError::invalid_data(format!(
                            "{source}: {reason} (set skip_bad_rows to skip bad rows)"
                        )))
                    }
                }
            }
        }
    }
    if skipped > 0 {
        warn(&format!("skipped {skipped} of {rows} rows"));
    }
    if examples.is_empty() {
        return Err(TrainError::invalid_data(format!(
            "no usable rows in {} ({rows} read, {skipped} skipped)",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(examples)
}

/// The order in which epoch `epoch` visits `n` examples: a Fisher–Yates shuffle seeded by
/// `(seed, epoch)`. The trainer's data cursor is (epoch, position in this order). The epoch is
/// hashed into the start state, rather than added, so epochs are not shifted copies of one
/// SplitMix stream.
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    // Spelled out in `train::rng` so the order depends on nothing but this code: a resumed run
    // sees the same order on any platform or `rand` version.
    let mut rng = SplitMix64::new(mix64(
        seed ^ mix64(u64::from(epoch).wrapping_add(GOLDEN_GAMMA)),
    ));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chat_template::ChatTemplate;
    use crate::model::tokenizer::numbered_vocabulary;
    use serde_json::json;

    #[test]
    fn epoch_order_is_a_pinned_permutation() {
        for n in [0, 1, 2, 7, 100] {
            let mut order = epoch_order(n, 42, 0);
            order.sort_unstable();
            assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
        // Pinned (and checked against an independent Python transcription of the algorithm): a
        // change here reorders every resumed run's data.
        assert_eq!(epoch_order(10, 0, 0), [1, 4, 5, 0, 7, 6, 9, 8, 2, 3]);
        assert_eq!(epoch_order(10, 42, 3), [4, 7, 1, 2, 8, 9, 3, 0, 5, 6]);
        assert_eq!(epoch_order(10, 0, 0), epoch_order(10, 0, 0));
        assert_ne!(epoch_order(50, 0, 0), epoch_order(50, 0, 1));
        assert_ne!(epoch_order(50, 0, 0), epoch_order(50, 1, 0));
    }

    #[test]
    fn epoch_order_is_not_a_shift_of_the_previous_epoch() {
        let (a, b) = (epoch_order(1000, 7, 0), epoch_order(1000, 7, 1));
        let same_place = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same_place < 20, "{same_place} of 1000 in the same place");
    }

    #[test]
    fn context_messages_are_checked() {
        let ok = json!({"context_messages": [
            {"role": "system", "content": "s", "language": "en"},
            {"role": "user", "content": "u"}
        ]});
        assert_eq!(
            context_messages(&ok).unwrap(),
            vec![
                ChatMessage::new("system", "s"),
                ChatMessage::new("user", "u")
            ]
        );
        let cases = [
            (json!({}), "`context_messages` is missing"),
            (json!({"context_messages": "x"}), "not a list: a string"),
            (json!({"context_messages": []}), "is empty"),
            (
                json!({"context_messages": [3]}),
                "`context_messages[0]` is not an object",
            ),
            (
                json!({"context_messages": [{"role": "tool", "content": "x"}]}),
                "role` is \"tool\"",
            ),
            (
                json!({"context_messages": [{"role": "user", "content": null}]}),
                "content` is not a string: null",
            ),
            (
                json!({"context_messages": [{"content": "x"}]}),
                "role` is missing",
            ),
            (
                json!({"context_messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}]}),
                "ends with an assistant message",
            ),
        ];
        for (record, expected) in cases {
            let err = context_messages(&record).unwrap_err();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    fn tokenizer_with(template: &str, eos: &[u32]) -> ModelTokenizer {
        let template = ChatTemplate::new(template, "", "t1").unwrap();
        ModelTokenizer::new(
            numbered_vocabulary(8).unwrap(),
            eos.to_vec(),
            Some(template),
        )
    }

    const CHATML_LIKE: &str = "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}t1\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}";

    #[test]
    fn the_assistant_turn_is_read_off_the_template() {
        // ChatML shape: the turn ends at the EOS token; the trailing newline is layout.
        let turn = AssistantTurn::from_template(&tokenizer_with(CHATML_LIKE, &[1])).unwrap();
        assert_eq!(
            turn,
            AssistantTurn {
                lead: String::new(),
                end: "t1".into()
            }
        );
        // The EOS is not the end-of-turn token: the template's closing text minus layout.
        let turn = AssistantTurn::from_template(&tokenizer_with(CHATML_LIKE, &[2])).unwrap();
        assert_eq!(turn.end, "t1");
        // A template that closes with nothing: the EOS, so the model learns to stop.
        let bare = "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let turn = AssistantTurn::from_template(&tokenizer_with(bare, &[3])).unwrap();
        assert_eq!((turn.lead.as_str(), turn.end.as_str()), (" ", "t3"));
        assert_eq!(turn.response_text("x"), " xt3");
        let err = AssistantTurn::from_template(&tokenizer_with(bare, &[])).unwrap_err();
        assert_eq!(err.kind, TrainErrorKind::FailedPrecondition);
    }

    #[test]
    fn a_template_that_hides_the_answer_is_refused() {
        let hides = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}";
        let err = AssistantTurn::from_template(&tokenizer_with(hides, &[1])).unwrap_err();
        assert!(err.message.contains("verbatim"), "{}", err.message);
    }
}
