//! The two verdict rules of RM-R1, kept separate on purpose: the evaluation rule decides
//! benchmark scores and API verdicts, the RL rule decides training rewards. They disagree on some
//! outputs (e.g. a verdict followed by 80+ characters of text), and each must match upstream.

use std::fmt;

/// Which candidate, by the position it was shown in (A = first, B = second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why no verdict could be taken. The Display text is what clients see as `invalid_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// The output mentions both `[[A]]` and `[[B]]` (upstream counts this as an error).
    BothVerdicts,
    /// Neither `[[A]]` nor `[[B]]` occurs: usually a truncated or malformed output.
    NoVerdict,
    /// Both presentation orders gave a valid verdict, they contradict each other, and there was
    /// no probability to break the tie.
    OrdersDisagree,
}

impl InvalidReason {
    /// Stable machine-readable name (for metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::BothVerdicts => "both_verdicts",
            InvalidReason::NoVerdict => "no_verdict",
            InvalidReason::OrdersDisagree => "orders_disagree",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidReason::BothVerdicts => "the output contains both [[A]] and [[B]]",
            InvalidReason::NoVerdict => "the output contains neither [[A]] nor [[B]]",
            InvalidReason::OrdersDisagree => {
                "the two presentation orders gave opposite verdicts and no probability could break the tie"
            }
        })
    }
}

impl std::error::Error for InvalidReason {}

/// Upstream's evaluation rule (`process_judgement`): over the whole output, both `[[A]]` and
/// `[[B]]` → error; else `[[A]]` → A; else `[[B]]` → B; else error. The `<answer>` tags are not
/// required, and a `[[B]]` quoted anywhere (even from a chatbot) spoils an `[[A]]` verdict — that
/// is upstream's behaviour and benchmark numbers depend on it.
pub fn evaluation_verdict(output: &str) -> Result<Side, InvalidReason> {
    match (output.contains("[[A]]"), output.contains("[[B]]")) {
        (true, true) => Err(InvalidReason::BothVerdicts),
        (true, false) => Ok(Side::A),
        (false, true) => Ok(Side::B),
        (false, false) => Err(InvalidReason::NoVerdict),
    }
}

/// How much of the output's end the RL rule looks at, in characters.
pub const RL_TAIL_CHARS: usize = 80;
pub const ANSWER_A: &str = "<answer>[[A]]</answer>";
pub const ANSWER_B: &str = "<answer>[[B]]</answer>";

/// The last `chars` characters (Unicode scalar values) of `text`, like Python's `text[-chars:]`;
/// the whole text when it is shorter.
pub fn tail_chars(text: &str, chars: usize) -> &str {
    if chars == 0 {
        return "";
    }
    match text.char_indices().rev().nth(chars - 1) {
        Some((start, _)) => &text[start..],
        None => text,
    }
}

/// Upstream's RL reward rule (`lm_as_judge.py`): only the last 80 characters count; A when the
/// exact `<answer>[[A]]</answer>` is there and `<answer>[[B]]</answer>` is not, symmetric for B.
///
/// Pass the decoded text with special tokens kept (upstream decodes that way): a trailing
/// `<|im_end|>` takes 10 of the 80 characters, and stripping it would accept verdicts that the
/// model was never rewarded for.
pub fn rl_reward_verdict(output: &str) -> Option<Side> {
    let tail = tail_chars(output, RL_TAIL_CHARS);
    match (tail.contains(ANSWER_A), tail.contains(ANSWER_B)) {
        (true, false) => Some(Side::A),
        (false, true) => Some(Side::B),
        _ => None,
    }
}

/// +1 when the RL rule's verdict equals `label`, −1 otherwise (no separate format reward: a
/// missing or truncated verdict is simply wrong). Same text requirements as [`rl_reward_verdict`].
pub fn rl_reward(output: &str, label: Side) -> f32 {
    if rl_reward_verdict(output) == Some(label) {
        1.0
    } else {
        -1.0
    }
}
