//! The five RM-R1 prompt templates (byte-exact copies of upstream, checked against `SHA256SUMS`)
//! and Python `str.format`-compatible filling.
//!
//! The released weights were trained on these exact strings, so they are compiled in rather than
//! loaded from disk: a template can never drift from the one the tests hashed.

use std::fmt;
use std::str::FromStr;

/// Which prompt layout a checkpoint was trained on.
///
/// Comes from the model manifest (configuration), not from the model name: upstream guesses it from
/// substrings of the name, which breaks as soon as a checkpoint is renamed or fine-tuned further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptFamily {
    /// RM-R1-Qwen2.5-Instruct-*: a system message with the rubric instructions plus a user message.
    Instruct,
    /// RM-R1-DeepSeek-Distilled-*: one user message; the model thinks before `</think>`.
    Reasoning,
}

impl PromptFamily {
    pub const ALL: [PromptFamily; 2] = [PromptFamily::Instruct, PromptFamily::Reasoning];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptFamily::Instruct => "instruct",
            PromptFamily::Reasoning => "reasoning",
        }
    }
}

impl fmt::Display for PromptFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown prompt family {given:?}: expected one of \"instruct\", \"reasoning\"")]
pub struct UnknownPromptFamily {
    pub given: String,
}

impl FromStr for PromptFamily {
    type Err = UnknownPromptFamily;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PromptFamily::ALL
            .into_iter()
            .find(|family| family.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPromptFamily {
                given: s.to_string(),
            })
    }
}

/// System message of the instruct family (no placeholders; used as is).
pub const INSTRUCT_SYSTEM: &str = include_str!("templates/instruct_system.txt");
/// Fields: `question`, `answer_a`, `answer_b`.
pub const INSTRUCT_USER_SINGLE_TURN: &str = include_str!("templates/instruct_user_single_turn.txt");
/// Fields: `conversation_1`, `conversation_2`.
pub const INSTRUCT_USER_MULTI_TURN: &str = include_str!("templates/instruct_user_multi_turn.txt");
/// Fields: `question`, `answer_a`, `answer_b`. Its first line ends with a space, as upstream's does.
pub const REASONING_USER_SINGLE_TURN: &str =
    include_str!("templates/reasoning_user_single_turn.txt");
/// Fields: `conversation_1`, `conversation_2`.
pub const REASONING_USER_MULTI_TURN: &str = include_str!("templates/reasoning_user_multi_turn.txt");

/// Fills `template` the way Python's `template.format(**fields)` does, in one pass.
///
/// `{name}` becomes the value verbatim and `{{` / `}}` become `{` / `}`. Values are never scanned
/// again, so braces (or `{answer_b}`-looking text) inside user content stay literal — this is what
/// makes it safe to put untrusted text into a template.
///
/// # Panics
/// On a field the template names but `fields` lacks, or on a lone brace: templates are ours, so
/// either is a programming error, not a user error.
pub fn fill_template(template: &str, fields: &[(&str, &str)]) -> String {
    let extra: usize = fields.iter().map(|(_, value)| value.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut rest = template;
    while let Some(brace) = rest.find(['{', '}']) {
        out.push_str(&rest[..brace]);
        let after = &rest[brace..];
        if let Some(escaped) = after.strip_prefix("{{") {
            out.push('{');
            rest = escaped;
        } else if let Some(escaped) = after.strip_prefix("}}") {
            out.push('}');
            rest = escaped;
        } else if let Some(name) = after.strip_prefix('{') {
            let close = name.find('}').unwrap_or_else(|| {
                panic!(
                    "template has an unclosed '{{' at byte {}",
                    template.len() - after.len()
                )
            });
            let name = &name[..close];
            let value = fields
                .iter()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| *value)
                .unwrap_or_else(|| panic!("template field {{{name}}} has no value"));
            out.push_str(value);
            rest = &after[close + 2..];
        } else {
            panic!(
                "template has a lone '}}' at byte {}",
                template.len() - after.len()
            );
        }
    }
    out.push_str(rest);
    out
}
