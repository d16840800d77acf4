//! RM-R1 prompt semantics of `rmr1::judge`: byte-exact templates pinned by SHA-256,
//! `fill_template`, conversation validation (`InputError`), and prompt rendering for single- and
//! multi-turn inputs, including swapped candidates. Pure logic, no model.

use rmr1::judge::templates::{
    INSTRUCT_SYSTEM, INSTRUCT_USER_MULTI_TURN, INSTRUCT_USER_SINGLE_TURN,
    REASONING_USER_MULTI_TURN, REASONING_USER_SINGLE_TURN,
};
use rmr1::judge::*;
use rmr1::model::chat_template::ChatMessage;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Templates

#[test]
fn template_constants_match_sha256sums() {
    let sums = include_str!("../src/judge/templates/SHA256SUMS");
    let constants = [
        ("instruct_system.txt", INSTRUCT_SYSTEM),
        ("instruct_user_single_turn.txt", INSTRUCT_USER_SINGLE_TURN),
        ("instruct_user_multi_turn.txt", INSTRUCT_USER_MULTI_TURN),
        ("reasoning_user_single_turn.txt", REASONING_USER_SINGLE_TURN),
        ("reasoning_user_multi_turn.txt", REASONING_USER_MULTI_TURN),
    ];
    let mut checked = 0;
    for line in sums.lines().filter(|line| !line.trim().is_empty()) {
        let (hash, name) = line.split_once("  ").expect("sha256sum line format");
        let (_, text) = constants
            .iter()
            .find(|(file, _)| *file == name)
            .unwrap_or_else(|| panic!("SHA256SUMS names an unknown template {name}"));
        let actual: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(actual, hash, "sha256 of {name}");
        checked += 1;
    }
    assert_eq!(
        checked,
        constants.len(),
        "every template is covered by SHA256SUMS"
    );
    assert!(REASONING_USER_SINGLE_TURN.starts_with(
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client question displayed below. \n\n"
    ));
}

#[test]
fn prompt_family_parses_case_insensitively_and_lists_valid_values() {
    assert_eq!(
        "instruct".parse::<PromptFamily>(),
        Ok(PromptFamily::Instruct)
    );
    assert_eq!(
        "Reasoning".parse::<PromptFamily>(),
        Ok(PromptFamily::Reasoning)
    );
    assert_eq!(
        "INSTRUCT".parse::<PromptFamily>(),
        Ok(PromptFamily::Instruct)
    );
    let error = "qwen".parse::<PromptFamily>().unwrap_err().to_string();
    assert!(error.contains("\"qwen\""), "{error}");
    assert!(
        error.contains("instruct") && error.contains("reasoning"),
        "{error}"
    );
    assert_eq!(PromptFamily::Reasoning.as_str(), "reasoning");
    assert_eq!(PromptFamily::Instruct.to_string(), "instruct");
}

#[test]
fn fill_template_substitutes_once_and_keeps_user_braces_literal() {
    let filled = fill_template(
        "Q: {question}\nA: {answer_a}\nB: {answer_b}\nliteral {{braces}} stay",
        &[
            ("question", "fn main() { println!(\"{}\", x); }"),
            ("answer_a", "looks like {answer_b} and {{question}}"),
            ("answer_b", "}{"),
        ],
    );
    assert_eq!(
        filled,
        "Q: fn main() { println!(\"{}\", x); }\nA: looks like {answer_b} and {{question}}\nB: }{\nliteral {braces} stay"
    );
    assert_eq!(fill_template("no fields", &[]), "no fields");
    assert_eq!(fill_template("{a}{a}", &[("a", "x")]), "xx");
}

#[test]
#[should_panic(expected = "conversation_3")]
fn fill_template_panics_on_a_field_without_value() {
    fill_template("{conversation_3}", &[("conversation_1", "x")]);
}

// ---------------------------------------------------------------------------------------------
// Conversations and prompts

fn responses(conversation: Vec<Turn>, a: &str, b: &str) -> PairInput {
    PairInput::Responses {
        conversation,
        response_a: a.to_string(),
        response_b: b.to_string(),
    }
}

fn single_turn_input() -> PairInput {
    responses(vec![Turn::user("What is 2+2?")], "4", "5")
}

#[test]
fn reasoning_single_turn_prompt_is_exactly_upstreams() {
    let messages = judge_messages(PromptFamily::Reasoning, &single_turn_input());
    let expected = "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client question displayed below. \n\
\n\
[Client Question]\n\
What is 2+2?\n\
\n\
[The Start of Chatbot A's Response]\n\
4\n\
[The End of Chatbot A's Response]\n\
\n\
[The Start of Chatbot B's Response]\n\
5\n\
[The End of Chatbot B's Response]\n\
\n\
Output your final verdict at last by strictly following this format: '<answer>[[A]]</answer>' if Chatbot A is better, or '<answer>[[B]]</answer>' if Chatbot B is better.";
    assert_eq!(messages, vec![ChatMessage::new("user", expected)]);
}

#[test]
fn instruct_single_turn_prompt_has_system_then_user() {
    let messages = judge_messages(PromptFamily::Instruct, &single_turn_input());
    let expected_user = "[Client Question]\nWhat is 2+2?\n\n\
[The Start of Chatbot A's Response]\n4\n[The End of Chatbot A's Response]\n\n\
[The Start of Chatbot B's Response]\n5\n[The End of Chatbot B's Response]";
    assert_eq!(
        messages,
        vec![
            ChatMessage::new("system", INSTRUCT_SYSTEM),
            ChatMessage::new("user", expected_user),
        ]
    );
}

#[test]
fn an_empty_reply_renders_as_an_empty_response_section() {
    let input = responses(vec![Turn::user("")], "4", "");
    let messages = judge_messages(PromptFamily::Instruct, &input);
    let expected_user = "[Client Question]\n\n\n\
[The Start of Chatbot A's Response]\n4\n[The End of Chatbot A's Response]\n\n\
[The Start of Chatbot B's Response]\n\n[The End of Chatbot B's Response]";
    assert_eq!(messages[1], ChatMessage::new("user", expected_user));
}

#[test]
fn single_turn_values_are_inserted_raw() {
    let input = responses(
        vec![Turn::user("  spaced {question}\n")],
        "\n{answer_b}",
        "B ",
    );
    let messages = judge_messages(PromptFamily::Instruct, &input);
    assert!(messages[1]
        .content
        .starts_with("[Client Question]\n  spaced {question}\n\n\n[The Start of Chatbot A's Response]\n\n{answer_b}\n[The End"));
    assert!(messages[1]
        .content
        .contains("[The Start of Chatbot B's Response]\nB \n[The End of Chatbot B's Response]"));
}

fn multi_turn_input() -> PairInput {
    responses(
        vec![
            Turn::user("Hi"),
            Turn::assistant("Hello! How can I help?"),
            Turn::user("Tell me a joke\nabout cats"),
        ],
        "Why did the cat sit on the computer?",
        "No.",
    )
}

const MULTI_SIDE_A: &str = "User: Hi\nChatbot A: Hello! How can I help?\nUser: Tell me a joke\nabout cats\nChatbot A: Why did the cat sit on the computer?";
const MULTI_SIDE_B: &str =
    "User: Hi\nChatbot B: Hello! How can I help?\nUser: Tell me a joke\nabout cats\nChatbot B: No.";

#[test]
fn instruct_multi_turn_prompt_flattens_each_side_with_its_own_label() {
    let messages = judge_messages(PromptFamily::Instruct, &multi_turn_input());
    let expected_user = format!(
        "[The Start of the Conversation between Chatbot A and the Client]\n{MULTI_SIDE_A}\n\
[The End of the Conversation between Chatbot A and the Client]\n\n\
[The Start of the Conversation between Chatbot B and the Client]\n{MULTI_SIDE_B}\n\
[The End of the Conversation between Chatbot B and the Client]"
    );
    assert_eq!(
        messages,
        vec![
            ChatMessage::new("system", INSTRUCT_SYSTEM),
            ChatMessage::new("user", &expected_user),
        ]
    );
}

#[test]
fn reasoning_multi_turn_prompt_is_one_user_message() {
    let messages = judge_messages(PromptFamily::Reasoning, &multi_turn_input());
    let expected_user = format!(
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client question displayed below. \n\n\
[The Start of the Conversation between Chatbot A and the Client]\n{MULTI_SIDE_A}\n\
[The End of the Conversation between Chatbot A and the Client]\n\n\
[The Start of the Conversation between Chatbot B and the Client]\n{MULTI_SIDE_B}\n\
[The End of the Conversation between Chatbot B and the Client]\n\n\
Output your final verdict at last by strictly following this format: '<answer>[[A]]</answer>' if Chatbot A is better, or '<answer>[[B]]</answer>' if Chatbot B is better."
    );
    assert_eq!(messages, vec![ChatMessage::new("user", &expected_user)]);
}

#[test]
fn two_conversations_render_like_the_equivalent_responses_input() {
    let conversations = PairInput::Conversations {
        a: vec![
            Turn::user("Hi"),
            Turn::assistant("Hello! How can I help?"),
            Turn::user("Tell me a joke\nabout cats"),
            Turn::assistant("Why did the cat sit on the computer?"),
        ],
        b: vec![
            Turn::user("Hi"),
            Turn::assistant("Hello! How can I help?"),
            Turn::user("Tell me a joke\nabout cats"),
            Turn::assistant("No."),
        ],
    };
    assert!(!conversations.is_single_turn());
    for family in [PromptFamily::Instruct, PromptFamily::Reasoning] {
        assert_eq!(
            judge_messages(family, &conversations),
            judge_messages(family, &multi_turn_input())
        );
    }
    if let PairInput::Conversations { a, b } = &conversations {
        assert_eq!(flatten_conversation(a, "Chatbot A"), MULTI_SIDE_A);
        assert_eq!(flatten_conversation(b, "Chatbot B"), MULTI_SIDE_B);
    }
}

#[test]
fn single_turn_rule() {
    assert!(single_turn_input().is_single_turn());
    assert!(!multi_turn_input().is_single_turn());
    let same_question = PairInput::Conversations {
        a: vec![Turn::user("Q"), Turn::assistant("x")],
        b: vec![Turn::user("Q"), Turn::assistant("y")],
    };
    assert!(same_question.is_single_turn());
    assert_eq!(
        judge_messages(PromptFamily::Reasoning, &same_question),
        judge_messages(
            PromptFamily::Reasoning,
            &responses(vec![Turn::user("Q")], "x", "y")
        )
    );
    let different_questions = PairInput::Conversations {
        a: vec![Turn::user("Q"), Turn::assistant("x")],
        b: vec![Turn::user("Q "), Turn::assistant("y")],
    };
    assert!(!different_questions.is_single_turn());
    let user = &judge_messages(PromptFamily::Instruct, &different_questions)[1].content;
    assert!(user.contains("User: Q\nChatbot A: x\n[The End of the Conversation between Chatbot A"));
    assert!(user.contains("User: Q \nChatbot B: y\n[The End of the Conversation between Chatbot B"));
}

#[test]
fn swapped_exchanges_the_candidates_only() {
    let swapped = multi_turn_input().swapped();
    assert_eq!(
        swapped,
        responses(
            vec![
                Turn::user("Hi"),
                Turn::assistant("Hello! How can I help?"),
                Turn::user("Tell me a joke\nabout cats"),
            ],
            "No.",
            "Why did the cat sit on the computer?",
        )
    );
    assert_eq!(swapped.swapped(), multi_turn_input());
    let conversations = PairInput::Conversations {
        a: vec![Turn::user("Q"), Turn::assistant("x")],
        b: vec![Turn::user("R"), Turn::assistant("y")],
    };
    assert_eq!(
        conversations.swapped(),
        PairInput::Conversations {
            a: vec![Turn::user("R"), Turn::assistant("y")],
            b: vec![Turn::user("Q"), Turn::assistant("x")],
        }
    );
}

#[test]
fn input_errors_name_the_field() {
    let user = Turn::user;
    let assistant = Turn::assistant;
    let system = |text: &str| Turn::new(Role::System, text);
    let error = |input: PairInput| input.validate().unwrap_err().to_string();

    assert_eq!(single_turn_input().validate(), Ok(()));
    assert_eq!(multi_turn_input().validate(), Ok(()));
    assert_eq!(error(responses(vec![], "a", "b")), "conversation is empty");
    // Empty or whitespace-only text is judged, not refused: blank turns, an empty last user
    // turn, empty replies (RLHF policies produce them; RMB contains them).
    assert_eq!(
        responses(vec![user("q"), assistant(" \n\t"), user("r")], "a", "b").validate(),
        Ok(())
    );
    assert_eq!(
        responses(vec![user("q"), assistant("x"), user("")], "a", "b").validate(),
        Ok(())
    );
    assert_eq!(responses(vec![user("q")], "  \n", "").validate(), Ok(()));
    assert_eq!(
        error(responses(vec![user("q"), assistant("x")], "a", "b")),
        "conversation must end with a user message"
    );
    assert_eq!(
        error(responses(vec![system("be nice"), user("q")], "a", "b")),
        "conversation[0]: system messages are not supported by the RM-R1 prompt"
    );
    assert_eq!(
        error(responses(vec![assistant("x"), user("q")], "a", "b")),
        "conversation[0]: the first message must be from the user"
    );
    assert_eq!(
        error(responses(vec![user("q"), user("r")], "a", "b")),
        "conversation[1]: roles must alternate user/assistant"
    );

    let valid = vec![user("q"), assistant("x")];
    let conversations = |a: Vec<Turn>, b: Vec<Turn>| PairInput::Conversations { a, b };
    assert_eq!(
        conversations(valid.clone(), valid.clone()).validate(),
        Ok(())
    );
    assert_eq!(
        error(conversations(vec![], valid.clone())),
        "conversation_a is empty"
    );
    assert_eq!(
        error(conversations(valid.clone(), vec![user("q")])),
        "conversation_b must end with an assistant message"
    );
    assert_eq!(
        error(conversations(
            vec![user("q"), user("r"), assistant("x")],
            valid.clone()
        )),
        "conversation_a[1]: roles must alternate user/assistant"
    );
    assert_eq!(
        error(conversations(valid.clone(), vec![user("q"), system("x")])),
        "conversation_b[1]: system messages are not supported by the RM-R1 prompt"
    );
    assert_eq!(
        conversations(valid.clone(), vec![user("q"), assistant(" ")]).validate(),
        Ok(())
    );
}
