//! Turns a [`PairInput`] into the chat messages RM-R1 was trained on. The result still has to go
//! through the checkpoint's own chat template (`model::chat_template`) to become token ids.

use super::conversation::{PairInput, Role, Turn};
use super::templates::{
    fill_template, PromptFamily, INSTRUCT_SYSTEM, INSTRUCT_USER_MULTI_TURN,
    INSTRUCT_USER_SINGLE_TURN, REASONING_USER_MULTI_TURN, REASONING_USER_SINGLE_TURN,
};
use crate::model::chat_template::ChatMessage;

/// Label of the assistant on side A / B in flattened multi-turn conversations.
pub const CHATBOT_A: &str = "Chatbot A";
pub const CHATBOT_B: &str = "Chatbot B";

/// The messages to render for one judgment: instruct → `[system, user]`, reasoning → `[user]`.
///
/// Expects an input that passed [`PairInput::validate`]; anything else still renders (never
/// panics) but may not be a prompt the model understands.
pub fn judge_messages(family: PromptFamily, input: &PairInput) -> Vec<ChatMessage> {
    let user = if input.is_single_turn() {
        let (question, answer_a, answer_b) = single_turn_fields(input);
        let template = match family {
            PromptFamily::Instruct => INSTRUCT_USER_SINGLE_TURN,
            PromptFamily::Reasoning => REASONING_USER_SINGLE_TURN,
        };
        fill_template(
            template,
            &[
                ("question", question),
                ("answer_a", answer_a),
                ("answer_b", answer_b),
            ],
        )
    } else {
        let (side_a, side_b) = flattened_sides(input);
        let template = match family {
            PromptFamily::Instruct => INSTRUCT_USER_MULTI_TURN,
            PromptFamily::Reasoning => REASONING_USER_MULTI_TURN,
        };
        fill_template(
            template,
            &[("conversation_1", &side_a), ("conversation_2", &side_b)],
        )
    };
    match family {
        PromptFamily::Instruct => vec![
            ChatMessage::new("system", INSTRUCT_SYSTEM),
            ChatMessage::new("user", &user),
        ],
        PromptFamily::Reasoning => vec![ChatMessage::new("user", &user)],
    }
}

/// `(question, answer_a, answer_b)`, raw; only meaningful when `input.is_single_turn()`.
fn single_turn_fields(input: &PairInput) -> (&str, &str, &str) {
    match input {
        PairInput::Responses {
            conversation,
            response_a,
            response_b,
        } => (
            conversation
                .first()
                .map_or("", |turn| turn.content.as_str()),
            response_a,
            response_b,
        ),
        PairInput::Conversations { a, b } => (
            a.first().map_or("", |turn| turn.content.as_str()),
            a.get(1).map_or("", |turn| turn.content.as_str()),
            b.get(1).map_or("", |turn| turn.content.as_str()),
        ),
    }
}

/// Both sides as whole conversations, each including its own final reply.
fn flattened_sides(input: &PairInput) -> (String, String) {
    match input {
        PairInput::Responses {
            conversation,
            response_a,
            response_b,
        } => {
            let side = |reply: &str, label: &str| {
                let final_turn = (Role::Assistant, reply);
                flatten_lines(
                    conversation
                        .iter()
                        .map(|turn| (turn.role, turn.content.as_str()))
                        .chain(std::iter::once(final_turn)),
                    label,
                )
            };
            (side(response_a, CHATBOT_A), side(response_b, CHATBOT_B))
        }
        PairInput::Conversations { a, b } => (
            flatten_conversation(a, CHATBOT_A),
            flatten_conversation(b, CHATBOT_B),
        ),
    }
}

/// Upstream's multi-turn layout: one `"{Speaker}: {content}"` line per turn, joined by `"\n"`,
/// where the user is `User` and the assistant is `chatbot_label` (`Chatbot A` or `Chatbot B`).
/// Content is inserted raw, so multi-line messages simply continue on the following lines.
/// A system turn (rejected by validation) is labelled `System` rather than dropped silently.
pub fn flatten_conversation(turns: &[Turn], chatbot_label: &str) -> String {
    flatten_lines(
        turns.iter().map(|turn| (turn.role, turn.content.as_str())),
        chatbot_label,
    )
}

fn flatten_lines<'a>(turns: impl Iterator<Item = (Role, &'a str)>, chatbot_label: &str) -> String {
    let mut out = String::new();
    for (index, (role, content)) in turns.enumerate() {
        if index > 0 {
            out.push('\n');
        }
        out.push_str(match role {
            Role::User => "User",
            Role::Assistant => chatbot_label,
            Role::System => "System",
        });
        out.push_str(": ");
        out.push_str(content);
    }
    out
}
