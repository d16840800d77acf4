//! RM-R1 semantics (no tensors, no gRPC): templates, prompts, verdicts, parsing, ranking.
//!
//! This layer owns everything that must match the released RM-R1 code to keep the released
//! weights meaningful: the byte-exact prompt templates and how inputs fill them (`templates`,
//! `conversation`, `prompt`), upstream's two verdict rules (`verdict`: one for benchmark/API
//! verdicts, one for RL rewards), and what the server adds on top: structured parsing of the
//! judge's reasoning (`parse`), verdict probabilities and position debiasing over both
//! presentation orders (`probability`), and best-of-N ranking from pairwise verdicts (`rank`).
//!
//! The prompt family is an input here, never derived from a model name: upstream guesses it from
//! name substrings, which silently picks the wrong template for a renamed or further fine-tuned
//! checkpoint. The server takes it from `--family` or the model manifest (`manifest`), and refuses
//! to guess when neither names it.
//!
//! Above the pure semantics sit the parts that drive the engine: `judge_model` (a loaded model
//! bound to its family), `pipeline` (one judgment, one or both orders) and `ranking` (N candidates).

pub mod conversation;
pub mod judge_model;
pub mod manifest;
pub mod parse;
pub mod pipeline;
pub mod probability;
pub mod prompt;
pub mod rank;
pub mod ranking;
pub mod templates;
pub mod verdict;

pub use conversation::{InputError, PairInput, Role, Turn};
pub use parse::{parse_judgment, ParsedJudgment, RubricItem, TaskType};
pub use probability::{
    combine_orders, two_way_probability, Combined, OrderOutcome, VERDICT_PREFIX,
};
pub use prompt::{flatten_conversation, judge_messages};
pub use rank::{
    all_pairs_schedule, bradley_terry, order_by_scores, win_rates, Knockout, PairOutcome,
    RankStrategy,
};
pub use templates::{fill_template, PromptFamily};
pub use verdict::{evaluation_verdict, rl_reward, rl_reward_verdict, InvalidReason, Side};
