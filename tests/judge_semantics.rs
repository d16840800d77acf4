//! RM-R1 semantics of `rmr1::judge`: byte-exact templates, prompt rendering, input validation,
//! both verdict rules, output parsing, position debiasing and ranking. Pure logic, no model.

use rmr1::judge::conversation::InputError;
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
    assert_eq!(
        error(responses(
            vec![user("q"), assistant(" \n\t"), user("r")],
            "a",
            "b"
        )),
        "conversation[1].content is empty"
    );
    assert_eq!(
        error(responses(
            vec![user("q"), assistant("x"), user("")],
            "a",
            "b"
        )),
        "conversation[2].content is empty"
    );
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
    assert_eq!(
        error(responses(vec![user("q")], "  \n", "b")),
        "response_a is empty"
    );
    assert_eq!(
        error(responses(vec![user("q")], "a", "")),
        "response_b is empty"
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
        Err(InputError::EmptyContent {
            field: "conversation_b",
            index: 1
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Verdict rules

#[test]
fn evaluation_rule_matches_process_judgement() {
    assert_eq!(evaluation_verdict("...<answer>[[A]]</answer>"), Ok(Side::A));
    assert_eq!(
        evaluation_verdict("...<answer>[[B]]</answer><|im_end|>"),
        Ok(Side::B)
    );
    assert_eq!(
        evaluation_verdict("<quote_B>[[B]]</quote_B> <answer>[[A]]</answer>"),
        Err(InvalidReason::BothVerdicts)
    );
    assert_eq!(
        evaluation_verdict("I prefer A."),
        Err(InvalidReason::NoVerdict)
    );
    assert_eq!(evaluation_verdict(""), Err(InvalidReason::NoVerdict));
    assert_eq!(
        evaluation_verdict("verdict: [[A]]"),
        Ok(Side::A),
        "answer tags are not required"
    );
    assert_eq!(
        evaluation_verdict("[[a]] [A]"),
        Err(InvalidReason::NoVerdict)
    );
    assert!(!InvalidReason::BothVerdicts.to_string().is_empty());
    assert_ne!(
        InvalidReason::BothVerdicts.to_string(),
        InvalidReason::NoVerdict.to_string()
    );
    assert_eq!(Side::A.other(), Side::B);
    assert_eq!(Side::B.other(), Side::A);
    assert_eq!(Side::B.as_str(), "B");
}

const TAG_A: &str = "<answer>[[A]]</answer>";
const TAG_B: &str = "<answer>[[B]]</answer>";

#[test]
fn rl_rule_counts_exactly_the_last_80_characters() {
    assert_eq!(TAG_A.chars().count(), 22);
    // The tag starts at the 80th character from the end: inside the window.
    let inside = format!("xyz{TAG_A}{}", "-".repeat(58));
    assert_eq!(rl_reward_verdict(&inside), Some(Side::A));
    // One more trailing character: the tag starts 81 from the end and its '<' is cut off.
    let outside = format!("xyz{TAG_A}{}", "-".repeat(59));
    assert_eq!(rl_reward_verdict(&outside), None);
    assert_eq!(rl_reward(&outside, Side::A), -1.0);
    // Evaluation rule looks at everything, so it still sees the verdict.
    assert_eq!(evaluation_verdict(&outside), Ok(Side::A));
}

#[test]
fn rl_rule_counts_characters_not_bytes() {
    for filler in ["é", "中", "🙂"] {
        let inside = format!("{TAG_B}{}", filler.repeat(58));
        assert!(inside.len() > 80 + 22, "the tail is longer than 80 bytes");
        assert_eq!(rl_reward_verdict(&inside), Some(Side::B), "filler {filler}");
        assert_eq!(rl_reward(&inside, Side::B), 1.0);
        let outside = format!("{TAG_B}{}", filler.repeat(59));
        assert_eq!(rl_reward_verdict(&outside), None, "filler {filler}");
    }
    // Multi-byte text before the window is fine too.
    let text = format!("中文{}{TAG_A}", "é".repeat(100));
    assert_eq!(rl_reward_verdict(&text), Some(Side::A));
}

#[test]
fn rl_rule_cases() {
    let im_end = "<|im_end|>";
    assert_eq!(rl_reward(&format!("text {TAG_A}{im_end}"), Side::A), 1.0);
    assert_eq!(rl_reward(&format!("text {TAG_A}{im_end}"), Side::B), -1.0);
    // The special token takes 10 of the 80 characters: 48 trailing characters plus it push the
    // tag's start to 81 from the end.
    let pushed_out = format!("{TAG_A}{}{im_end}", " ".repeat(49));
    assert_eq!(rl_reward_verdict(&pushed_out), None);
    let kept = format!("{TAG_A}{}{im_end}", " ".repeat(48));
    assert_eq!(rl_reward_verdict(&kept), Some(Side::A));
    // Both tags in the window: no reward either way.
    let both = format!("{TAG_A} no, {TAG_B}");
    assert_eq!(rl_reward_verdict(&both), None);
    assert_eq!(rl_reward(&both, Side::A), -1.0);
    assert_eq!(rl_reward(&both, Side::B), -1.0);
    // A `[[B]]`-tag that has left the window does not spoil an A in it.
    let old_b = format!("{TAG_B}{}{TAG_A}", "x".repeat(80));
    assert_eq!(rl_reward_verdict(&old_b), Some(Side::A));
    // Not exact: whitespace inside the tag, bare [[A]].
    assert_eq!(rl_reward_verdict("<answer> [[A]] </answer>"), None);
    assert_eq!(rl_reward_verdict("[[A]]"), None);
    assert_eq!(rl_reward_verdict(""), None);
    assert_eq!(rl_reward_verdict(TAG_B), Some(Side::B));
}

// ---------------------------------------------------------------------------------------------
// Parsing

const CHAT_OUTPUT: &str = "<type>Chat</type>

<rubric>
1. Accuracy (40%): The answer must be factually correct.
2. **Clarity** (35.5%) - Easy to follow.
   - includes examples
3) Tone: friendly
<justify>Accuracy matters most for a factual question.</justify>
</rubric>

<eval>
Chatbot A says <quote_A>Paris is the capital.</quote_A> while <summary_B>Chatbot B names Lyon.</summary_B>
Also <quote_B>It is Lyon.</quote_B> <summary_A>A is right.</summary_A>
</eval>

<answer>[[A]]</answer><|im_end|>";

#[test]
fn parses_a_well_formed_chat_judgment() {
    let parsed = parse_judgment(CHAT_OUTPUT);
    assert_eq!(parsed.task_type, Some(TaskType::Chat));
    assert_eq!(
        parsed.rubric,
        vec![
            RubricItem {
                text: "Accuracy (40%): The answer must be factually correct.".into(),
                weight: Some(40.0)
            },
            RubricItem {
                text: "**Clarity** (35.5%) - Easy to follow.\n- includes examples".into(),
                weight: Some(35.5)
            },
            RubricItem {
                text: "Tone: friendly".into(),
                weight: None
            },
        ]
    );
    assert_eq!(
        parsed.rubric_text.as_deref(),
        Some("1. Accuracy (40%): The answer must be factually correct.\n2. **Clarity** (35.5%) - Easy to follow.\n   - includes examples\n3) Tone: friendly")
    );
    assert_eq!(
        parsed.justification.as_deref(),
        Some("Accuracy matters most for a factual question.")
    );
    assert_eq!(parsed.quotes_a, vec!["Paris is the capital."]);
    assert_eq!(parsed.quotes_b, vec!["It is Lyon."]);
    assert_eq!(parsed.summaries_a, vec!["A is right."]);
    assert_eq!(parsed.summaries_b, vec!["Chatbot B names Lyon."]);
    let evaluation = parsed.evaluation.as_deref().unwrap();
    assert!(evaluation.starts_with("Chatbot A says <quote_A>Paris"));
    assert!(evaluation.ends_with("<summary_A>A is right.</summary_A>"));
    assert_eq!(parsed.answer, Some(Side::A));
    assert_eq!(parsed.solution, None);
    assert_eq!(parsed.thinking, None);
    assert!(parsed.truncated_sections.is_empty());
}

#[test]
fn parses_a_reasoning_type_judgment() {
    let output = "<type>Reasoning</type>\n\n<solution>\n2 + 2 = 4\n</solution>\n\n<eval>\n<quote_A>4</quote_A> is correct; <summary_B>B claims 5</summary_B>.\n</eval>\n\n<answer>[[A]]</answer>";
    let parsed = parse_judgment(output);
    assert_eq!(parsed.task_type, Some(TaskType::Reasoning));
    assert_eq!(parsed.solution.as_deref(), Some("2 + 2 = 4"));
    assert_eq!(
        parsed.evaluation.as_deref(),
        Some("<quote_A>4</quote_A> is correct; <summary_B>B claims 5</summary_B>.")
    );
    assert_eq!(parsed.quotes_a, vec!["4"]);
    assert_eq!(parsed.summaries_b, vec!["B claims 5"]);
    assert!(parsed.rubric.is_empty());
    assert_eq!(parsed.rubric_text, None);
    assert_eq!(parsed.justification, None);
    assert_eq!(parsed.answer, Some(Side::A));
    assert!(parsed.truncated_sections.is_empty());
}

#[test]
fn parses_the_reasoning_family_after_think() {
    let output = "Okay, let me compare. Should I write <answer>[[B]]</answer>? No: Chatbot B is wrong.\n</think>\n\nChatbot A is correct.\n\n<answer>[[A]]</answer><｜end▁of▁sentence｜>";
    let parsed = parse_judgment(output);
    assert_eq!(
        parsed.thinking.as_deref(),
        Some(
            "Okay, let me compare. Should I write <answer>[[B]]</answer>? No: Chatbot B is wrong."
        )
    );
    assert_eq!(
        parsed.answer,
        Some(Side::A),
        "answers in the thinking are discarded"
    );
    assert_eq!(parsed.evaluation, None);
    assert!(parsed.truncated_sections.is_empty());

    let with_open_tag = parse_judgment("<think>\nhmm\n</think>\n<answer>[[B]]</answer>");
    assert_eq!(with_open_tag.thinking.as_deref(), Some("hmm"));
    assert_eq!(with_open_tag.answer, Some(Side::B));

    let cut = parse_judgment("<think>\nstill thinking about <answer>");
    assert_eq!(
        cut.thinking.as_deref(),
        Some("still thinking about <answer>")
    );
    assert_eq!(cut.answer, None);
    assert!(cut.truncated_sections.contains(&"think".to_string()));

    // A `</think>` quoted from a chatbot does not end anything.
    let quoted = parse_judgment(
        "<type>Chat</type><eval><quote_B>x</think>y</quote_B></eval><answer>[[A]]</answer>",
    );
    assert_eq!(quoted.thinking, None);
    assert_eq!(quoted.task_type, Some(TaskType::Chat));
    assert_eq!(quoted.quotes_b, vec!["x</think>y"]);
}

#[test]
fn truncated_output_keeps_what_was_written() {
    let output = "<type>Chat</type>\n<rubric>\n1. Accuracy (60%): x\n2. Style (40 %): y\n<justify>j</justify>\n</rubric>\n<eval>\nA says <quote_A>foo</quote_A> but B says <quote_B>ba";
    let parsed = parse_judgment(output);
    assert_eq!(parsed.task_type, Some(TaskType::Chat));
    assert_eq!(
        parsed
            .rubric
            .iter()
            .map(|item| item.weight)
            .collect::<Vec<_>>(),
        vec![Some(60.0), Some(40.0)]
    );
    assert_eq!(
        parsed.evaluation.as_deref(),
        Some("A says <quote_A>foo</quote_A> but B says <quote_B>ba")
    );
    assert_eq!(parsed.quotes_a, vec!["foo"]);
    assert_eq!(parsed.quotes_b, vec!["ba"]);
    assert_eq!(parsed.truncated_sections, vec!["eval", "quote_B"]);
    assert_eq!(parsed.answer, None);
}

#[test]
fn missing_and_unclosed_tags() {
    let plain = parse_judgment("The responses are similar. I prefer A.");
    assert_eq!(plain, ParsedJudgment::default());

    // A forgotten `</type>` ends at the next section instead of swallowing it.
    let parsed = parse_judgment("<type>Chat\n<rubric>\n- Helpfulness (70%)\n- Safety 30%\n</rubric>\n<answer>[[B]]</answer>");
    assert_eq!(parsed.task_type, Some(TaskType::Chat));
    assert_eq!(parsed.truncated_sections, vec!["type"]);
    assert_eq!(
        parsed.rubric,
        vec![
            RubricItem {
                text: "Helpfulness (70%)".into(),
                weight: Some(70.0)
            },
            RubricItem {
                text: "Safety 30%".into(),
                weight: Some(30.0)
            },
        ]
    );
    assert_eq!(parsed.justification, None);
    assert_eq!(parsed.answer, Some(Side::B));

    // An unclosed justify ends with its rubric.
    let parsed = parse_judgment("<rubric>1. A (100%)\n<justify>because</rubric><eval>e</eval>");
    assert_eq!(parsed.justification.as_deref(), Some("because"));
    assert_eq!(parsed.rubric_text.as_deref(), Some("1. A (100%)"));
    assert_eq!(parsed.evaluation.as_deref(), Some("e"));
    assert_eq!(parsed.truncated_sections, vec!["justify"]);

    // Unknown task type, answer without closing tag.
    let parsed = parse_judgment("<type>Poetry</type><answer>[[A]]");
    assert_eq!(parsed.task_type, None);
    assert_eq!(parsed.answer, None);
    assert_eq!(parsed.truncated_sections, vec!["answer"]);
}

#[test]
fn tags_inside_quotes_do_not_open_or_close_sections() {
    let output = "<eval>\nB wrote <quote_B>done</eval> <answer>[[B]]</answer></quote_B> and A wrote <summary_A>a <rubric> list</summary_A>.\n</eval>\n<answer>[[A]]</answer>";
    let parsed = parse_judgment(output);
    assert_eq!(parsed.answer, Some(Side::A));
    assert_eq!(parsed.quotes_b, vec!["done</eval> <answer>[[B]]</answer>"]);
    assert_eq!(parsed.summaries_a, vec!["a <rubric> list"]);
    assert!(parsed
        .evaluation
        .as_deref()
        .unwrap()
        .ends_with("list</summary_A>."));
    assert_eq!(parsed.rubric_text, None);
    assert!(parsed.truncated_sections.is_empty());

    let only_quoted = parse_judgment("<eval><quote_A><answer>[[A]]</answer></quote_A></eval>");
    assert_eq!(only_quoted.answer, None);
}

#[test]
fn the_last_answer_wins_in_parsing_but_the_evaluation_rule_rejects_both() {
    let output = "<answer>[[B]]</answer> wait, <answer> [[A]] </answer>";
    assert_eq!(parse_judgment(output).answer, Some(Side::A));
    assert_eq!(evaluation_verdict(output), Err(InvalidReason::BothVerdicts));
}

/// Deterministic pseudo-random generator for the robustness test (no test may be flaky).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

#[test]
fn parsing_never_panics_on_garbled_output() {
    let fragments = [
        "<type>",
        "</type>",
        "Chat",
        "Reasoning",
        "<rubric>",
        "</rubric>",
        "<justify>",
        "</justify>",
        "<eval>",
        "</eval>",
        "<solution>",
        "</solution>",
        "<quote_A>",
        "</quote_A>",
        "<quote_B>",
        "</quote_B>",
        "<summary_A>",
        "</summary_A>",
        "<summary_B>",
        "</summary_B>",
        "<answer>",
        "</answer>",
        "[[A]]",
        "[[B]]",
        "<answer>[[A]]</answer>",
        "<answer>[[B]]</answer>",
        "<think>",
        "</think>",
        "<",
        ">",
        "</",
        "<quote_",
        "</summ",
        "[[",
        "]]",
        "1. ",
        "2) ",
        "- ",
        "* ",
        "(40%)",
        "99.5%",
        "%",
        ".%",
        "1.2.3%",
        "\n",
        " ",
        "é",
        "中",
        "🙂",
        "text",
        "<|im_end|>",
        "<｜end▁of▁sentence｜>",
        "{",
        "}",
    ];
    let mut rng = Lcg(7);
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..rng.next(40) {
            text.push_str(fragments[rng.next(fragments.len())]);
        }
        let parsed = parse_judgment(&text);
        assert!(parsed
            .rubric
            .iter()
            .all(|item| item.text == item.text.trim()));
        let _ = evaluation_verdict(&text);
        let _ = rl_reward_verdict(&text);
    }
    // Every prefix of a real output, as a generation cut at any point would produce.
    for (end, _) in CHAT_OUTPUT.char_indices() {
        let prefix = &CHAT_OUTPUT[..end];
        let parsed = parse_judgment(prefix);
        let has_close = prefix.contains("[[A]]</answer>");
        assert_eq!(parsed.answer.is_some(), has_close, "prefix {prefix:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Probabilities and both orders

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn two_way_probability_renormalises_stably() {
    // f32 inputs: ln(0.3) and ln(0.1) are only accurate to ~1e-7.
    assert!((two_way_probability(0.3_f32.ln(), 0.1_f32.ln()) - 0.75).abs() < 1e-6);
    assert!(close(
        two_way_probability(-1000.0, -1001.0),
        1.0 / (1.0 + (-1.0_f64).exp())
    ));
    assert!(close(two_way_probability(-5.0, -5.0), 0.5));
    assert_eq!(
        two_way_probability(f32::NEG_INFINITY, f32::NEG_INFINITY),
        0.5
    );
    assert_eq!(two_way_probability(0.0, f32::NEG_INFINITY), 1.0);
    assert_eq!(two_way_probability(f32::NEG_INFINITY, -3.0), 0.0);
    assert_eq!(VERDICT_PREFIX, "<answer>[[");
}

fn order(
    verdict: Result<Side, InvalidReason>,
    p_a_shown: Option<f64>,
    swapped: bool,
) -> OrderOutcome {
    OrderOutcome {
        verdict,
        p_a_shown,
        swapped,
    }
}

#[test]
fn one_order_is_reported_in_original_terms() {
    let plain = combine_orders(&[order(Ok(Side::A), Some(0.7), false)]);
    assert_eq!(plain.verdict, Ok(Side::A));
    assert!(close(plain.p_a.unwrap(), 0.7));
    let swapped = combine_orders(&[order(Ok(Side::A), Some(0.75), true)]);
    assert_eq!(swapped.verdict, Ok(Side::B));
    assert!(close(swapped.p_a.unwrap(), 0.25));
    let invalid = combine_orders(&[order(Err(InvalidReason::BothVerdicts), None, true)]);
    assert_eq!(invalid.verdict, Err(InvalidReason::BothVerdicts));
    assert_eq!(invalid.p_a, None);
    assert_eq!(combine_orders(&[]).verdict, Err(InvalidReason::NoVerdict));
    // One order: the text verdict stands even when the probability leans the other way, and an
    // invalid text stays invalid (upstream's single-order protocol).
    let leaning = combine_orders(&[order(Ok(Side::B), Some(0.8), false)]);
    assert_eq!(leaning.verdict, Ok(Side::B));
    assert!(close(leaning.p_a.unwrap(), 0.8));
    let no_text = combine_orders(&[order(Err(InvalidReason::NoVerdict), Some(0.9), false)]);
    assert_eq!(no_text.verdict, Err(InvalidReason::NoVerdict));
}

#[test]
fn both_orders_with_probabilities_follow_the_mean() {
    // Text verdicts contradict (both said "A" as shown), the probabilities decide.
    let combined = combine_orders(&[
        order(Ok(Side::A), Some(0.9), false),
        order(Ok(Side::A), Some(0.7), true),
    ]);
    assert!(close(combined.p_a.unwrap(), 0.6));
    assert_eq!(combined.verdict, Ok(Side::A));
    let combined = combine_orders(&[
        order(Ok(Side::A), Some(0.6), false),
        order(Ok(Side::A), Some(0.9), true),
    ]);
    assert!(close(combined.p_a.unwrap(), 0.35));
    assert_eq!(combined.verdict, Ok(Side::B));
    // Exactly 0.5: the plain order's verdict.
    let tie = combine_orders(&[
        order(Ok(Side::A), Some(0.75), true),
        order(Ok(Side::B), Some(0.75), false),
    ]);
    assert_eq!(tie.p_a, Some(0.5));
    assert_eq!(tie.verdict, Ok(Side::B));
}

#[test]
fn both_orders_without_probabilities_vote() {
    let agree = combine_orders(&[
        order(Ok(Side::A), None, false),
        order(Ok(Side::B), None, true),
    ]);
    assert_eq!(agree.verdict, Ok(Side::A));
    assert_eq!(agree.p_a, None);
    let one_invalid = combine_orders(&[
        order(Err(InvalidReason::NoVerdict), None, false),
        order(Ok(Side::A), None, true),
    ]);
    assert_eq!(one_invalid.verdict, Ok(Side::B));
    let disagree = combine_orders(&[
        order(Ok(Side::A), None, false),
        order(Ok(Side::A), None, true),
    ]);
    assert_eq!(disagree.verdict, Err(InvalidReason::OrdersDisagree));
    let both_invalid = combine_orders(&[
        order(Err(InvalidReason::BothVerdicts), None, false),
        order(Err(InvalidReason::NoVerdict), None, true),
    ]);
    assert_eq!(both_invalid.verdict, Err(InvalidReason::BothVerdicts));
    // Only one order has a probability: it is averaged alone, but the verdict is by vote.
    let partial = combine_orders(&[
        order(Ok(Side::B), Some(0.2), false),
        order(Ok(Side::B), None, true),
    ]);
    assert!(close(partial.p_a.unwrap(), 0.2));
    assert_eq!(partial.verdict, Err(InvalidReason::OrdersDisagree));
}

// ---------------------------------------------------------------------------------------------
// Ranking

fn outcome(
    first: usize,
    second: usize,
    p_first: Option<f64>,
    winner: Option<usize>,
) -> PairOutcome {
    PairOutcome {
        first,
        second,
        p_first,
        winner,
    }
}

#[test]
fn all_pairs_schedule_covers_every_ordered_pair_once() {
    assert_eq!(
        all_pairs_schedule(3),
        vec![(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    );
    assert!(all_pairs_schedule(0).is_empty());
    assert!(all_pairs_schedule(1).is_empty());
    let mut five = all_pairs_schedule(5);
    assert_eq!(five.len(), 20);
    five.sort();
    five.dedup();
    assert_eq!(five.len(), 20);
    assert!(five.iter().all(|(i, j)| i != j && *i < 5 && *j < 5));
}

#[test]
fn bradley_terry_two_candidates_by_hand() {
    // With the prior, 0 has 1.1 wins and 1 has 0.1: p0 / p1 = 11, centred logs ±ln(11)/2.
    let scores = bradley_terry(2, &[outcome(0, 1, None, Some(0))]);
    let half = 11.0_f64.ln() / 2.0;
    assert!((scores[0] - half).abs() < 1e-9, "{scores:?}");
    assert!((scores[1] + half).abs() < 1e-9, "{scores:?}");
    assert_eq!(bradley_terry(1, &[]), vec![0.0]);
    assert!(bradley_terry(0, &[]).is_empty());
}

#[test]
fn bradley_terry_three_candidates_satisfy_the_mm_fixed_point() {
    let outcomes = vec![
        outcome(0, 1, None, Some(0)),
        outcome(1, 0, None, Some(0)),
        outcome(1, 2, None, Some(1)),
        outcome(2, 1, Some(0.3), Some(2)), // probability wins over the text verdict: 1 gets 0.7
        outcome(2, 0, None, Some(2)),
        outcome(0, 2, Some(0.75), Some(0)),
    ];
    let scores = bradley_terry(3, &outcomes);
    assert!(scores.iter().sum::<f64>().abs() < 1e-9, "centred");
    // Soft wins by hand, plus 0.1 prior wins against each opponent.
    let prior = rmr1::judge::rank::BT_PRIOR_WINS;
    let mut wins = [[0.0_f64; 3]; 3];
    wins[0][1] = 2.0;
    wins[1][2] = 1.0 + 0.7;
    wins[2][1] = 0.3;
    wins[2][0] = 1.0 + 0.25;
    wins[0][2] = 0.75;
    let strength: Vec<f64> = scores.iter().map(|s| s.exp()).collect();
    for i in 0..3 {
        let total: f64 = (0..3).filter(|&j| j != i).map(|j| wins[i][j] + prior).sum();
        let expected: f64 = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                (wins[i][j] + wins[j][i] + 2.0 * prior) * strength[i] / (strength[i] + strength[j])
            })
            .sum();
        assert!(
            (total - expected).abs() < 1e-6,
            "candidate {i}: {total} vs {expected}"
        );
    }
    // An invalid judgment without probability carries no evidence.
    let mut with_invalid = outcomes.clone();
    with_invalid.push(outcome(1, 2, None, None));
    let again = bradley_terry(3, &with_invalid);
    assert!(scores.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-9));
}

#[test]
fn bradley_terry_orders_a_transitive_tournament() {
    let strength = [2.0, 0.0, 3.0, 1.0]; // best is 2, then 0, 3, 1
    let outcomes: Vec<PairOutcome> = all_pairs_schedule(4)
        .into_iter()
        .map(|(i, j)| {
            let winner = if strength[i] > strength[j] { i } else { j };
            outcome(i, j, None, Some(winner))
        })
        .collect();
    let scores = bradley_terry(4, &outcomes);
    assert_eq!(order_by_scores(&scores), vec![2, 0, 3, 1]);
    assert!(scores.iter().all(|s| s.is_finite()));
    assert_eq!(order_by_scores(&win_rates(4, &outcomes)), vec![2, 0, 3, 1]);
    assert_eq!(
        win_rates(4, &outcomes),
        vec![4.0 / 6.0, 0.0, 1.0, 2.0 / 6.0]
    );
}

#[test]
fn win_rates_by_hand() {
    let outcomes = vec![
        outcome(0, 1, Some(0.8), Some(0)),
        outcome(1, 0, None, Some(1)),
        outcome(0, 2, None, None), // invalid: ignored
        outcome(2, 1, None, Some(1)),
        outcome(7, 1, None, Some(7)), // out of range: ignored
    ];
    let rates = win_rates(4, &outcomes);
    assert!(close(rates[0], 0.8 / 2.0));
    assert!(close(rates[1], (0.2 + 1.0 + 1.0) / 3.0));
    assert!(close(rates[2], 0.0));
    assert!(close(rates[3], 0.5), "no comparisons: neutral");
}

#[test]
fn order_by_scores_breaks_ties_by_index_and_puts_nan_last() {
    assert_eq!(
        order_by_scores(&[1.0, 3.0, 3.0, f64::NAN, -1.0]),
        vec![1, 2, 0, 4, 3]
    );
    assert!(order_by_scores(&[]).is_empty());
}

/// Runs a knockout where the higher `strength` always wins; returns it with the number of rounds.
fn run_knockout(strength: &[f64], seed: u64) -> (Knockout, usize) {
    let mut knockout = Knockout::new(strength.len(), seed);
    let mut rounds = 0;
    while !knockout.is_done() {
        let matches = knockout.next_matches();
        assert!(!matches.is_empty());
        let results: Vec<(usize, usize, f64)> = matches
            .iter()
            .map(|&(a, b)| (a, b, if strength[a] > strength[b] { 1.0 } else { 0.0 }))
            .collect();
        knockout.record(&results);
        rounds += 1;
        assert!(rounds <= strength.len(), "the bracket must finish");
    }
    (knockout, rounds)
}

fn assert_is_permutation(order: &[usize], n: usize) {
    let mut sorted = order.to_vec();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
}

#[test]
fn knockout_with_eight_candidates() {
    let strength = [3.0, 7.0, 1.0, 9.0, 4.0, 0.0, 2.0, 5.0]; // strongest: 3, then 1
    for seed in [0, 1, 42] {
        let (knockout, rounds) = run_knockout(&strength, seed);
        assert_eq!(rounds, 3);
        assert_eq!(knockout.champion(), Some(3));
        assert!(knockout.next_matches().is_empty());
        let (order, scores) = knockout.ranking();
        assert_is_permutation(&order, 8);
        assert_eq!(order[0], 3);
        assert!(
            close(scores[3], 3.0 + 1.0),
            "three rounds won, always certain"
        );
        // The runner-up survived two rounds; the other six are below it.
        let runner_up = order[1];
        assert!(scores[runner_up] >= 2.0 && scores[runner_up] < 3.0);
        assert_eq!(
            scores.iter().filter(|s| **s < 1.0).count(),
            4,
            "four first-round losers"
        );
    }
}

#[test]
fn knockout_with_five_candidates_gives_one_bye_per_odd_round() {
    let strength = [1.0, 5.0, 2.0, 4.0, 3.0]; // strongest: 1
    for seed in [0, 3, 99] {
        let mut knockout = Knockout::new(5, seed);
        assert_eq!(knockout.next_matches().len(), 2);
        let (finished, rounds) = run_knockout(&strength, seed);
        assert_eq!(rounds, 3, "5 → 3 → 2 → 1");
        assert_eq!(finished.champion(), Some(1));
        let (order, _) = finished.ranking();
        assert_is_permutation(&order, 5);
        assert_eq!(order[0], 1);

        // Partial results do not advance the round; reversed pairs are understood.
        let first_round = knockout.next_matches();
        let (a, b) = first_round[0];
        knockout.record(&[(b, a, 0.25)]);
        assert_eq!(knockout.round(), 0);
        let (c, d) = first_round[1];
        knockout.record(&[(c, d, 0.5), (9, 8, 1.0)]);
        assert_eq!(knockout.round(), 1);
        let next = knockout.next_matches();
        assert_eq!(next.len(), 1);
        let bye = (0..5).find(|x| ![a, b, c, d].contains(x)).unwrap();
        // a won 0.75 (given as b beating a with 0.25); the 0.5 tie goes to the first player, c.
        let advanced: Vec<usize> = next.iter().flat_map(|&(x, y)| [x, y]).collect();
        assert_eq!(
            advanced,
            vec![bye, a],
            "the bye plays first in the next round"
        );
    }
}

#[test]
fn knockout_edge_sizes_and_seeding() {
    let empty = Knockout::new(0, 1);
    assert!(empty.is_done());
    assert_eq!(empty.champion(), None);
    assert!(empty.ranking().0.is_empty());
    let single = Knockout::new(1, 1);
    assert!(single.is_done());
    assert_eq!(single.champion(), Some(0));
    assert_eq!(single.ranking().0, vec![0]);
    assert_eq!(
        Knockout::new(16, 5).next_matches(),
        Knockout::new(16, 5).next_matches()
    );
    let brackets: Vec<_> = (0..10)
        .map(|seed| Knockout::new(16, seed).next_matches())
        .collect();
    assert!(
        brackets.iter().any(|bracket| *bracket != brackets[0]),
        "the seed shuffles"
    );
    assert_eq!(
        "knockout".parse::<RankStrategy>(),
        Ok(RankStrategy::Knockout)
    );
    assert_eq!(
        "ALL_PAIRS".parse::<RankStrategy>(),
        Ok(RankStrategy::AllPairs)
    );
    assert!("best".parse::<RankStrategy>().is_err());
}
