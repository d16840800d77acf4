//! Structure of a judge's output (rubric, solution, evaluation, quotes, thinking, answer) for
//! clients and training logs. The verdict that counts comes from `verdict.rs`; this parser only
//! reports what the model wrote, so it is tolerant rather than strict and never panics.
//!
//! Scanning rules, chosen for how RM-R1 outputs actually go wrong:
//! - Top-level sections are `type`, `rubric`, `solution`, `eval`, `answer`; `justify` sits inside
//!   `rubric`. Sections do not nest otherwise, so opening a top-level section while another is
//!   still open ends the open one there (a forgotten `</type>` must not swallow the rubric).
//!   `justify` ends at the latest when its rubric does.
//! - A section opened but never closed runs to where it was ended as above, or to the end of the
//!   text (a truncated generation); its name goes into `truncated_sections`.
//! - Inside a `quote_X` / `summary_X` span only that span's closing tag is recognised: quoted
//!   chatbot text may contain `</eval>` or `<answer>[[B]]</answer>`.
//! - The first `</think>` outside spans and sections ends the thinking (the opening `<think>` is
//!   usually part of the prompt). What was found before it was the model thinking aloud, so it is
//!   discarded and scanning starts afresh after it.
//! - The first complete occurrence of a section wins, except `answer`: the last
//!   `<answer>[[A]]</answer>` / `<answer>[[B]]</answer>` (whitespace inside the tags allowed) is
//!   the one reported. An `<answer>` without its closing tag gives no answer.

use super::verdict::Side;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskType {
    Chat,
    Reasoning,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RubricItem {
    /// The item without its number or bullet, continuation lines joined with `"\n"`.
    pub text: String,
    /// Weight in percent (`40.0` for `(40%)`), from the item's first line; None when absent.
    pub weight: Option<f32>,
}

/// Everything found in one judge output; all texts are trimmed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedJudgment {
    pub task_type: Option<TaskType>,
    pub rubric: Vec<RubricItem>,
    /// The rubric section without its `<justify>…</justify>` block.
    pub rubric_text: Option<String>,
    pub justification: Option<String>,
    pub solution: Option<String>,
    /// The `<eval>` section, quote and summary tags included.
    pub evaluation: Option<String>,
    pub quotes_a: Vec<String>,
    pub quotes_b: Vec<String>,
    pub summaries_a: Vec<String>,
    pub summaries_b: Vec<String>,
    pub thinking: Option<String>,
    pub answer: Option<Side>,
    /// Sections and spans opened but never closed, in order of opening (e.g. `["eval", "quote_B"]`).
    pub truncated_sections: Vec<String>,
}

pub fn parse_judgment(output: &str) -> ParsedJudgment {
    let scan = Scanner::new(output).run();
    let text = |range: &Option<Found>| {
        range
            .as_ref()
            .map(|found| output[found.content.clone()].trim().to_string())
    };

    let rubric_text = scan.sections[Section::Rubric as usize]
        .as_ref()
        .map(|rubric| {
            let content = rubric.content.clone();
            match &scan.sections[Section::Justify as usize] {
                Some(justify)
                    if justify.outer.start >= content.start && justify.outer.end <= content.end =>
                {
                    let before = &output[content.start..justify.outer.start];
                    let after = &output[justify.outer.end..content.end];
                    format!("{}\n{}", before.trim_end(), after.trim_start())
                        .trim()
                        .to_string()
                }
                _ => output[content].trim().to_string(),
            }
        });
    let task_type = text(&scan.sections[Section::Type as usize]).and_then(|kind| {
        if kind.eq_ignore_ascii_case("chat") {
            Some(TaskType::Chat)
        } else if kind.eq_ignore_ascii_case("reasoning") {
            Some(TaskType::Reasoning)
        } else {
            None
        }
    });
    let mut truncated = scan.unclosed;
    truncated.sort_by_key(|(opened_at, _)| *opened_at);
    let [quotes_a, summaries_a, quotes_b, summaries_b] = scan.spans;

    ParsedJudgment {
        task_type,
        rubric: rubric_text.as_deref().map(rubric_items).unwrap_or_default(),
        justification: text(&scan.sections[Section::Justify as usize]),
        solution: text(&scan.sections[Section::Solution as usize]),
        evaluation: text(&scan.sections[Section::Eval as usize]),
        rubric_text,
        quotes_a,
        quotes_b,
        summaries_a,
        summaries_b,
        thinking: scan.thinking.map(|range| output[range].trim().to_string()),
        answer: scan.answer,
        truncated_sections: truncated
            .into_iter()
            .map(|(_, name)| name.to_string())
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Type,
    Rubric,
    Justify,
    Solution,
    Eval,
    Answer,
}

const SECTIONS: [(Section, &str); 6] = [
    (Section::Type, "type"),
    (Section::Rubric, "rubric"),
    (Section::Justify, "justify"),
    (Section::Solution, "solution"),
    (Section::Eval, "eval"),
    (Section::Answer, "answer"),
];

/// Quote/summary spans, indexed in the order of `Scanned::spans`.
const SPANS: [&str; 4] = ["quote_A", "summary_A", "quote_B", "summary_B"];

fn section_name(section: Section) -> &'static str {
    SECTIONS[section as usize].1
}

/// Byte ranges of one section: `content` between the tags, `outer` including them.
#[derive(Debug, Clone)]
struct Found {
    content: std::ops::Range<usize>,
    outer: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    tag_start: usize,
    content_start: usize,
}

enum Tag {
    Open(Section),
    Close(Section),
    OpenSpan(usize),
    CloseSpan(usize),
    EndThink,
}

fn tag_at(rest: &str) -> Option<(Tag, usize)> {
    if rest.starts_with("</think>") {
        return Some((Tag::EndThink, "</think>".len()));
    }
    let (closing, name_and_rest) = match rest.strip_prefix("</") {
        Some(after) => (true, after),
        None => (false, rest.strip_prefix('<')?),
    };
    let tag_len = |name: &str| name.len() + if closing { 3 } else { 2 };
    let is_tag = |name: &str| {
        name_and_rest.starts_with(name) && name_and_rest[name.len()..].starts_with('>')
    };
    for (section, name) in SECTIONS {
        if is_tag(name) {
            let tag = if closing {
                Tag::Close(section)
            } else {
                Tag::Open(section)
            };
            return Some((tag, tag_len(name)));
        }
    }
    for (index, name) in SPANS.into_iter().enumerate() {
        if is_tag(name) {
            let tag = if closing {
                Tag::CloseSpan(index)
            } else {
                Tag::OpenSpan(index)
            };
            return Some((tag, tag_len(name)));
        }
    }
    None
}

#[derive(Default)]
struct Scanned {
    sections: [Option<Found>; SECTIONS.len()],
    spans: [Vec<String>; SPANS.len()],
    answer: Option<Side>,
    thinking: Option<std::ops::Range<usize>>,
    /// `(byte where it was opened, name)`.
    unclosed: Vec<(usize, &'static str)>,
}

struct Scanner<'t> {
    text: &'t str,
    thinking_start: usize,
    open_top: Option<(Section, Open)>,
    open_justify: Option<Open>,
    open_span: Option<(usize, Open)>,
    out: Scanned,
}

impl<'t> Scanner<'t> {
    fn new(text: &'t str) -> Self {
        let leading = text.len() - text.trim_start().len();
        let thinking_start = if text[leading..].starts_with("<think>") {
            leading + "<think>".len()
        } else {
            0
        };
        Scanner {
            text,
            thinking_start,
            open_top: None,
            open_justify: None,
            open_span: None,
            out: Scanned::default(),
        }
    }

    fn run(mut self) -> Scanned {
        let mut pos = self.thinking_start;
        while let Some(offset) = self.text[pos..].find('<') {
            let at = pos + offset;
            match tag_at(&self.text[at..]) {
                Some((tag, len)) => {
                    self.on_tag(tag, at, at + len);
                    pos = at + len;
                }
                None => pos = at + 1,
            }
        }
        let end = self.text.len();
        if let Some((span, open)) = self.open_span.take() {
            self.out.unclosed.push((open.tag_start, SPANS[span]));
            self.out.spans[span].push(self.text[open.content_start..].trim().to_string());
        }
        self.end_top(end, end, false);
        if self.thinking_start > 0 && self.out.thinking.is_none() {
            // An explicit `<think>` that never closed: the whole output was thinking.
            self.out.thinking = Some(self.thinking_start..end);
            self.out.unclosed.push((0, "think"));
        }
        self.out
    }

    fn on_tag(&mut self, tag: Tag, start: usize, end: usize) {
        if let Some((span, open)) = self.open_span {
            if matches!(tag, Tag::CloseSpan(closing) if closing == span) {
                let quoted = self.text[open.content_start..start].trim().to_string();
                self.out.spans[span].push(quoted);
                self.open_span = None;
            }
            return;
        }
        let open = Open {
            tag_start: start,
            content_start: end,
        };
        match tag {
            Tag::OpenSpan(span) => self.open_span = Some((span, open)),
            Tag::CloseSpan(_) => {}
            Tag::Open(Section::Justify) => {
                if self.open_justify.is_none() {
                    self.open_justify = Some(open);
                }
            }
            Tag::Close(Section::Justify) => {
                if let Some(justify) = self.open_justify.take() {
                    self.record(Section::Justify, justify, start, end, true);
                }
            }
            Tag::Open(section) => {
                self.end_top(start, start, false);
                self.open_top = Some((section, open));
            }
            Tag::Close(section) => {
                if matches!(self.open_top, Some((open_section, _)) if open_section == section) {
                    self.end_top(start, end, true);
                }
            }
            Tag::EndThink => {
                let inside_section = self.open_top.is_some() || self.open_justify.is_some();
                if self.out.thinking.is_none() && !inside_section {
                    self.out = Scanned {
                        thinking: Some(self.thinking_start..start),
                        ..Scanned::default()
                    };
                }
            }
        }
    }

    /// Ends the open top-level section (and a justify inside it) with content up to
    /// `content_end`; `closed` says whether its own closing tag was seen.
    fn end_top(&mut self, content_end: usize, outer_end: usize, closed: bool) {
        if let Some(justify) = self.open_justify.take() {
            self.record(Section::Justify, justify, content_end, content_end, false);
        }
        if let Some((section, open)) = self.open_top.take() {
            self.record(section, open, content_end, outer_end, closed);
        }
    }

    fn record(
        &mut self,
        section: Section,
        open: Open,
        content_end: usize,
        outer_end: usize,
        closed: bool,
    ) {
        if !closed {
            self.out
                .unclosed
                .push((open.tag_start, section_name(section)));
        }
        let content = open.content_start..content_end;
        // Only a closed answer counts: `<answer>[[A]]` cut off before `</answer>` is no verdict.
        if section == Section::Answer && closed {
            match self.text[content.clone()].trim() {
                "[[A]]" => self.out.answer = Some(Side::A),
                "[[B]]" => self.out.answer = Some(Side::B),
                _ => {}
            }
        }
        let slot = &mut self.out.sections[section as usize];
        if slot.is_none() {
            *slot = Some(Found {
                content,
                outer: open.tag_start..outer_end,
            });
        }
    }
}

/// Rubric items: numbered lines (`1.` / `1)`) start items when there are any, bulleted lines
/// (`-`, `*`, `•`) otherwise; other non-blank lines continue the current item (so sub-bullets of
/// a numbered item stay part of it), and lines before the first item are ignored.
fn rubric_items(rubric: &str) -> Vec<RubricItem> {
    let numbered = rubric.lines().any(|line| numbered_item(line).is_some());
    let starts_item = if numbered {
        numbered_item
    } else {
        bulleted_item
    };
    let mut items: Vec<(String, Vec<&str>)> = Vec::new();
    for line in rubric.lines() {
        if let Some(head) = starts_item(line) {
            items.push((head.trim().to_string(), Vec::new()));
        } else if let Some((_, continuation)) = items.last_mut() {
            if !line.trim().is_empty() {
                continuation.push(line.trim());
            }
        }
    }
    items
        .into_iter()
        .map(|(head, continuation)| {
            let weight = percent_weight(&head);
            let mut text = head;
            for line in continuation {
                text.push('\n');
                text.push_str(line);
            }
            RubricItem {
                text: text.trim().to_string(),
                weight,
            }
        })
        .collect()
}

/// Markdown decoration a model may put before an item marker (`### 1.`, `**1.`).
fn strip_decoration(line: &str) -> &str {
    line.trim_start()
        .trim_start_matches('#')
        .trim_start()
        .trim_start_matches("**")
}

/// The text after `12.` or `12)` when the line starts that way.
fn numbered_item(line: &str) -> Option<&str> {
    let line = strip_decoration(line);
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let rest = line[digits..].strip_prefix(['.', ')'])?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest)
}

fn bulleted_item(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix(['-', '*', '•'])?;
    rest.starts_with(char::is_whitespace).then_some(rest)
}

/// The first `NN%` / `NN.N%` (optionally parenthesised, spaces allowed before `%`) in `head`.
fn percent_weight(head: &str) -> Option<f32> {
    let bytes = head.as_bytes();
    for (percent, _) in head.match_indices('%') {
        let mut end = percent;
        while end > 0 && bytes[end - 1] == b' ' {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.') {
            start -= 1;
        }
        // Only ASCII bytes were stepped over, so both ends are on character boundaries.
        let number = head[start..end].trim_start_matches('.');
        if let Ok(weight) = number.parse::<f32>() {
            if weight.is_finite() {
                return Some(weight);
            }
        }
    }
    None
}
