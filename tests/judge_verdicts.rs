//! RM-R1 verdict semantics of `rmr1::judge`: the evaluation and RL verdict rules,
//! `parse_judgment` (including a no-panic fuzz test on garbled output), two-way probabilities
//! and position debiasing with `combine_orders`. Pure logic, no model.

use rmr1::judge::*;

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
