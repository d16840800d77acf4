//! The SFT data path end to end: rows in JSONL / JSON / parquet become masked token sequences,
//! bad rows are named (file and 1-based row) or skipped, nothing panics; and on the real Qwen2.5
//! tokenizer the prompt half is byte-for-byte the judge's prompt while prompt ++ target is the
//! rendered conversation as Hugging Face-style SFT tokenizes it.

mod common;

use rmr1::model::chat_template::ChatMessage;
use rmr1::model::ModelTokenizer;
use rmr1::train::sft_data::{load_sft_dataset, RowRef, SftExample};
use rmr1::train::{SftSpec, TrainError, TrainErrorKind};
use serde_json::json;
use std::path::{Path, PathBuf};

fn spec(max_seq_len: usize, skip_bad_rows: bool) -> SftSpec {
    SftSpec {
        train_files: Vec::new(),
        eval_files: Vec::new(),
        target_field: "winner".into(),
        max_seq_len,
        skip_bad_rows,
        eval_every_steps: 0,
    }
}

/// The tiny model's word-level tokenizer: `w{k}` is id k, anything else `<unk>` (0), `</s>` is 1;
/// its template writes `<role> content ` and the generation prompt `<assistant>`.
fn tiny_tokenizer(dir: &Path) -> ModelTokenizer {
    let model = common::write_tiny_model(&dir.join("tiny"), &common::TinySpec::default());
    ModelTokenizer::from_hf_files(
        &model.join("tokenizer.json"),
        &model.join("tokenizer_config.json"),
    )
    .unwrap()
}

fn row(user: &str, winner: &str) -> String {
    json!({
        "context_messages": [{"role": "system", "content": "w2"}, {"role": "user", "content": user}],
        "winner": winner,
    })
    .to_string()
}

fn load(
    file: &Path,
    spec: &SftSpec,
    tokenizer: &ModelTokenizer,
) -> (Result<Vec<SftExample>, TrainError>, Vec<String>) {
    let mut warnings = Vec::new();
    let result = load_sft_dataset(&[file.to_path_buf()], spec, tokenizer, &mut |w| {
        warnings.push(w.to_string())
    });
    (result, warnings)
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn rows_become_prompt_plus_masked_target() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let jsonl = write(
        dir.path(),
        "train.jsonl",
        format!("{}\n\n{}\n", row("w3", "w5 w6"), row("w4", "w7")),
    );
    let (examples, warnings) = load(&jsonl, &spec(64, false), &tok);
    let examples = examples.unwrap();
    assert!(warnings.is_empty());
    assert_eq!(examples.len(), 2);
    // Trace, then the EOS the tiny template does not write itself (it closes turns with nothing).
    assert_eq!(examples[0].target(), [5, 6, 1]);
    assert_eq!(examples[1].target(), [7, 1]);
    let messages = [
        ChatMessage::new("system", "w2"),
        ChatMessage::new("user", "w3"),
    ];
    assert_eq!(
        examples[0].prompt(),
        tok.encode_chat_prompt(&messages).unwrap()
    );
    // Rows are numbered by line, blank lines included.
    let rows: Vec<&RowRef> = examples.iter().map(|e| &e.source).collect();
    assert_eq!(
        rows,
        [
            &RowRef {
                file: jsonl.clone(),
                row: 1
            },
            &RowRef {
                file: jsonl.clone(),
                row: 3
            }
        ]
    );

    // A JSON array and a directory of files read the same rows.
    let sub = dir.path().join("shards");
    std::fs::create_dir(&sub).unwrap();
    write(
        &sub,
        "a.json",
        format!("[{}, {}]", row("w3", "w5 w6"), row("w4", "w7")),
    );
    write(&sub, "notes.txt", "ignored: not a data file");
    let (from_dir, _) = load(&sub, &spec(64, false), &tok);
    let from_dir = from_dir.unwrap();
    assert_eq!(
        from_dir.iter().map(|e| &e.tokens).collect::<Vec<_>>(),
        examples.iter().map(|e| &e.tokens).collect::<Vec<_>>()
    );
    assert_eq!(from_dir[1].source.row, 2);
    assert_eq!(from_dir[1].source.file, sub.join("a.json"));

    // Several inputs are read in the order given.
    let both = load_sft_dataset(&[sub, jsonl], &spec(64, false), &tok, &mut |_| {}).unwrap();
    assert_eq!(both.len(), 4);
    assert_eq!(both[2].source, examples[0].source);
}

fn error_of(file: &Path, spec: &SftSpec, tok: &ModelTokenizer) -> String {
    let err = load(file, spec, tok).0.unwrap_err();
    assert_eq!(err.kind, TrainErrorKind::InvalidData, "{}", err.message);
    err.message
}

#[test]
fn bad_rows_are_named_by_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let good = row("w3", "w5");
    let cases: Vec<(String, &str)> = vec![
        (r#"{"context_messages": [{"role""#.into(), "not JSON"),
        (
            r#"{"winner": "w5"}"#.into(),
            "`context_messages` is missing",
        ),
        (
            r#"{"context_messages": {"role": "user"}, "winner": "w5"}"#.into(),
            "`context_messages` is not a list: an object",
        ),
        (
            r#"{"context_messages": [{"role": "user", "content": 7}], "winner": "w5"}"#.into(),
            "`context_messages[0].content` is not a string: a number",
        ),
        (
            r#"{"context_messages": [{"role": "critic", "content": "x"}], "winner": "w5"}"#.into(),
            "`context_messages[0].role` is \"critic\"",
        ),
        (
            r#"{"context_messages": [{"role": "user", "content": "x"}]}"#.into(),
            "`winner` is missing",
        ),
        (
            r#"{"context_messages": [{"role": "user", "content": "x"}], "winner": ["w5"]}"#.into(),
            "`winner` is not a string",
        ),
        (
            r#"{"context_messages": [{"role": "user", "content": "x"}], "winner": " "}"#.into(),
            "`winner` is empty",
        ),
        ("[1, 2]".into(), "the row is a list, not an object"),
        (
            row("w3", &["w5"; 40].join(" ")),
            "52 tokens (11 prompt + 41 target) exceed max_seq_len 32",
        ),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        let file = write(
            dir.path(),
            &format!("bad{i}.jsonl"),
            format!("{good}\n{bad}\n"),
        );
        let message = error_of(&file, &spec(32, false), &tok);
        let at = format!("{} row 2: ", file.display());
        assert!(
            message.starts_with(&at) && message.contains(expected),
            "{message:?} should start {at:?} and contain {expected:?}"
        );
    }

    let empty = write(dir.path(), "empty.jsonl", "\n  \n");
    let message = error_of(&empty, &spec(32, true), &tok);
    assert_eq!(message, format!("{} has no rows", empty.display()));
    let missing = dir.path().join("missing.jsonl");
    assert!(error_of(&missing, &spec(32, true), &tok).contains("missing.jsonl"));
    let csv = write(dir.path(), "data.csv", "a,b\n");
    assert!(error_of(&csv, &spec(32, true), &tok).contains("unsupported file type"));
}

#[test]
fn skipping_bad_rows_warns_each_and_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let file = write(
        dir.path(),
        "mixed.jsonl",
        format!(
            "{}\nnot json\n{}\n{}\n",
            row("w3", "w5"),
            r#"{"context_messages": [], "winner": "w5"}"#,
            row("w4", "w6")
        ),
    );
    let (examples, warnings) = load(&file, &spec(32, true), &tok);
    let rows: Vec<usize> = examples.unwrap().iter().map(|e| e.source.row).collect();
    assert_eq!(rows, [1, 4]);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].starts_with(&format!("skipping {} row 2: not JSON", file.display())));
    assert!(warnings[1].contains("row 3: `context_messages` is empty"));
    assert_eq!(warnings[2], "skipped 2 of 4 rows");

    // Nothing left is still a failure.
    let all_bad = write(dir.path(), "bad.jsonl", "{}\n[]\n");
    let (result, warnings) = load(&all_bad, &spec(32, true), &tok);
    let err = result.unwrap_err();
    assert!(err.message.contains("no usable rows"), "{}", err.message);
    assert!(err.message.contains("2 read, 2 skipped"), "{}", err.message);
    assert_eq!(warnings.len(), 3);
}

#[test]
fn hostile_input_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let good = row("w3", "w5");
    let mut lines: Vec<Vec<u8>> = (1..good.len())
        .map(|cut| good.as_bytes()[..cut].to_vec())
        .collect();
    for weird in [
        r#"{"context_messages": 1e999, "winner": "w5"}"#,
        r#"{"context_messages": [{"role": "user", "content": 123456789012345678901234567890}], "winner": 1}"#,
        r#"{"context_messages": [{"role": "user", "content": "x"}], "winner": -0.0}"#,
        r#"{"context_messages": [null], "winner": null}"#,
        r#"{"context_messages": [[{"role": "user"}]], "winner": {}}"#,
        "null",
        "\"just a string\"",
        "\u{feff}{}",
    ] {
        lines.push(weird.as_bytes().to_vec());
    }
    lines.push("[".repeat(100_000).into_bytes());
    lines.push(
        b"{\"context_messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}".to_vec(),
    );
    lines.push(b"\xc3\x28 \x80\x80".to_vec());
    let bad_count = lines.len();
    lines.push(good.clone().into_bytes());
    let text = lines.join(&b'\n');
    let file = write(dir.path(), "hostile.jsonl", &text);
    let (examples, warnings) = load(&file, &spec(64, true), &tok);
    assert_eq!(examples.unwrap().len(), 1);
    assert_eq!(warnings.len(), bad_count + 1);
    assert!(warnings.iter().any(|w| w.contains("not UTF-8")));
    // Without skipping: the first bad line is reported, as an error.
    assert!(error_of(&file, &spec(64, false), &tok).contains("row 1: not JSON"));

    // Not-parquet and truncated parquet files are errors too.
    let junk = write(dir.path(), "junk.parquet", b"PAR1 not really\x00\xff PAR1");
    assert!(error_of(&junk, &spec(64, true), &tok).contains("junk.parquet"));
    let real = dir.path().join("real.parquet");
    parquet_fixture::write(&real);
    let bytes = std::fs::read(&real).unwrap();
    for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 9] {
        let mut mangled = bytes.clone();
        mangled.truncate(cut);
        let f = write(dir.path(), &format!("cut{cut}.parquet"), &mangled);
        assert!(error_of(&f, &spec(64, true), &tok).contains(&format!("cut{cut}.parquet")));
        // Flip bytes in the middle (data pages) but keep the footer: an error or, by luck,
        // rows; only a panic, a hang or runaway memory would be wrong.
        let mut flipped = bytes.clone();
        for b in &mut flipped[4..cut.min(bytes.len() - 12)] {
            *b ^= 0x5a;
        }
        let f = write(dir.path(), &format!("flip{cut}.parquet"), &flipped);
        let _ = load(&f, &spec(64, true), &tok);
    }
}

/// A parquet file in the hub's shape (as `datasets` writes it via arrow): `context_messages` a
/// list of `{content, role}` structs, `winner` a nullable string. Written with the parquet crate's
/// low-level writer, which needs no arrow.
mod parquet_fixture {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::path::Path;
    use std::sync::Arc;

    const SCHEMA: &str = "message schema {
        optional group context_messages (LIST) {
            repeated group list {
                optional group element {
                    optional binary content (UTF8);
                    optional binary role (UTF8);
                }
            }
        }
        optional binary winner (UTF8);
    }";

    /// Row 1: [system w2, user w3] → "w5 w6"; row 2: [user w4] → "w7"; row 3: winner null.
    pub fn write(path: &Path) {
        let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
        let file = std::fs::File::create(path).unwrap();
        let mut writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::default())).unwrap();
        let mut group = writer.next_row_group().unwrap();
        // Leaves in schema order. Levels: a present message field is at definition level 4
        // (list, repeated entry, element, field); repetition 0 starts a row, 1 continues its list.
        let strings = |s: &[&str]| s.iter().map(|s| ByteArray::from(*s)).collect::<Vec<_>>();
        type Column = (Vec<ByteArray>, Vec<i16>, Option<Vec<i16>>);
        let columns: [Column; 3] = [
            (
                strings(&["w2", "w3", "w4", "w4"]),
                vec![4, 4, 4, 4],
                Some(vec![0, 1, 0, 0]),
            ),
            (
                strings(&["system", "user", "user", "user"]),
                vec![4, 4, 4, 4],
                Some(vec![0, 1, 0, 0]),
            ),
            (strings(&["w5 w6", "w7"]), vec![1, 1, 0], None),
        ];
        for (values, defs, reps) in &columns {
            let mut column = group.next_column().unwrap().unwrap();
            column
                .typed::<ByteArrayType>()
                .write_batch(values, Some(defs), reps.as_deref())
                .unwrap();
            column.close().unwrap();
        }
        assert!(group.next_column().unwrap().is_none());
        group.close().unwrap();
        writer.close().unwrap();
    }
}

#[test]
fn parquet_rows_with_list_of_struct_messages() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let file = dir.path().join("train-00000-of-00001.parquet");
    parquet_fixture::write(&file);
    let message = error_of(&file, &spec(64, false), &tok);
    assert!(
        message.starts_with(&format!(
            "{} row 3: `winner` is not a string: null",
            file.display()
        )),
        "{message}"
    );
    let (examples, warnings) = load(&file, &spec(64, true), &tok);
    let examples = examples.unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[0].target(), [5, 6, 1]);
    assert_eq!(examples[1].target(), [7, 1]);
    assert_eq!((examples[0].source.row, examples[1].source.row), (1, 2));
    let first = [
        ChatMessage::new("system", "w2"),
        ChatMessage::new("user", "w3"),
    ];
    assert_eq!(
        examples[0].prompt(),
        tok.encode_chat_prompt(&first).unwrap()
    );
    let second = [ChatMessage::new("user", "w4")];
    assert_eq!(
        examples[1].prompt(),
        tok.encode_chat_prompt(&second).unwrap()
    );
}

/// The real Qwen2.5 tokenizer as `model::load` builds it for the test GGUF: `tokenizer.json`
/// beside the file, EOS and chat template from its metadata.
fn real_tokenizer() -> Option<ModelTokenizer> {
    let dir = common::real_model_dir()?;
    let gguf = dir.join("model.gguf");
    let mut file = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    Some(rmr1::model::loader::gguf_tokenizer(&gguf, &content, None).unwrap())
}

const JUDGE_SYSTEM: &str = "Please act as an impartial judge.";
const JUDGE_USER: &str = "[Client Question]\nWhat is 2 + 2?\n\n[The Start of Chatbot A's Response]\n4\n[The End of Chatbot A's Response]";

#[test]
fn real_qwen_prompt_plus_target_is_the_rendered_conversation() {
    let Some(tok) = real_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let messages = vec![
        ChatMessage::new("system", JUDGE_SYSTEM),
        ChatMessage::new("user", JUDGE_USER),
    ];
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let traces = [
        "<type>Chat</type>\n<rubric>Correctness.</rubric>\n<eval>Both say 4.</eval>\n<answer>[[A]]</answer>",
        "Plain words, accents é, CJK 你好, emoji 🎉, tabs\tand trailing newline\n",
        " starts with a space",
        "ends with spaces  ",
        "<|im_start|>looks like a marker<|im_end|> inside",
    ];
    let rows: Vec<String> = traces
        .iter()
        .map(|t| json!({"context_messages": messages, "winner": t}).to_string())
        .collect();
    let file = write(dir.path(), "qwen.jsonl", rows.join("\n"));
    let (examples, _) = load(&file, &spec(4096, false), &tok);
    let examples = examples.unwrap();
    let prompt = tok.encode_chat_prompt(&messages).unwrap();
    for (example, trace) in examples.iter().zip(traces) {
        let mut conversation = messages.clone();
        conversation.push(ChatMessage::new("assistant", trace));
        let full = tok.apply_chat_template(&conversation, false).unwrap();
        let sft_text = full.strip_suffix("<|im_end|>\n").unwrap().to_string() + "<|im_end|>";
        assert_eq!(
            example.tokens,
            tok.encode(&sft_text).unwrap(),
            "trace {trace:?}: separate and joint tokenization differ"
        );
        assert_eq!(example.prompt(), prompt);
        assert!(tok
            .decode(example.prompt())
            .unwrap()
            .ends_with("<|im_start|>assistant\n"));
        assert_eq!(
            tok.decode(example.target()).unwrap(),
            format!("{trace}<|im_end|>")
        );
        assert_eq!(example.target().last(), Some(&im_end));
    }
}

/// Where separate encoding (what inference does) and joint encoding (HF-style SFT of the whole
/// rendered text) part: Qwen's pre-tokenizer joins the generation prompt's `\n` with newlines
/// that open the trace. The loader keeps the separate encoding; this pins the difference.
#[test]
fn real_qwen_a_trace_opening_with_a_newline_splits_at_the_seam() {
    let Some(tok) = real_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let messages = vec![ChatMessage::new("user", "Q?")];
    let trace = "\n\nAfter blank lines";
    let file = write(
        dir.path(),
        "seam.jsonl",
        json!({"context_messages": messages, "winner": trace}).to_string(),
    );
    let example = load(&file, &spec(4096, false), &tok).0.unwrap().remove(0);
    let prompt_text = tok.apply_chat_template(&messages, true).unwrap();
    let text = format!("{prompt_text}{trace}<|im_end|>");
    let joint = tok.encode(&text).unwrap();
    assert_ne!(example.tokens, joint);
    // Same text, and the prompt ids are the inference ones.
    assert_eq!(tok.decode(&example.tokens).unwrap(), text);
    assert_eq!(example.prompt(), tok.encode_chat_prompt(&messages).unwrap());
    eprintln!(
        "seam: separate {:?} vs joint {:?}",
        &example.tokens[example.prompt_len - 2..example.prompt_len + 2],
        &joint[example.prompt_len - 2..example.prompt_len + 1]
    );
}

#[test]
fn real_qwen_sft_prompts_are_the_judge_prompts() {
    use rmr1::engine::{EngineConfig, EngineHandle};
    use rmr1::judge::judge_model::{JudgeModel, ModelDescription, RenderLimit};
    use rmr1::judge::{judge_messages, PairInput, PromptFamily, Turn};
    use std::sync::Arc;

    let Some(tok) = real_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The judge renders prompts with its tokenizer alone; the engine behind it is only there
    // because a JudgeModel has one, so the tiny model's will do.
    let tiny = common::load_tiny(&common::write_tiny_model(
        &dir.path().join("tiny"),
        &common::TinySpec::default(),
    ));
    let engine = EngineHandle::start(
        tiny.model,
        Arc::new(tiny.tokenizer.inner().clone()),
        tiny.tokenizer.eos_ids().to_vec(),
        EngineConfig {
            num_blocks: Some(8),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let render_limit = RenderLimit::new(&tok, 32_768);
    let mut judge = JudgeModel {
        description: ModelDescription {
            name: "qwen-test".into(),
            family: PromptFamily::Instruct,
            architecture: "qwen2".into(),
            context_length: 32_768,
            dtype: "f32".into(),
            quantization: "none".into(),
            source: "test".into(),
            manifest: None,
        },
        tokenizer: Arc::new(tok),
        engine,
        verdict_tokens: None,
        default_max_new_tokens: 16,
        render_limit,
    };
    let inputs = [
        PairInput::Responses {
            conversation: vec![Turn::user("Name a prime number between 10 and 20.")],
            response_a: "13 is prime.".into(),
            response_b: "15 is prime.".into(),
        },
        PairInput::Responses {
            conversation: vec![
                Turn::user("Hi! Can you help with maths?"),
                Turn::assistant("Of course. What is the question?"),
                Turn::user("What is 7 × 8?"),
            ],
            response_a: "56".into(),
            response_b: "54".into(),
        },
    ];
    for family in [PromptFamily::Instruct, PromptFamily::Reasoning] {
        judge.description.family = family;
        let rows: Vec<String> = inputs
            .iter()
            .map(|input| {
                json!({"context_messages": judge_messages(family, input), "winner": "<answer>[[A]]</answer>"})
                    .to_string()
            })
            .collect();
        let file = write(dir.path(), "judge.jsonl", rows.join("\n"));
        let (examples, _) = load(&file, &spec(8192, false), &judge.tokenizer);
        for (example, input) in examples.unwrap().iter().zip(&inputs) {
            let judged = judge.render_prompt(input).unwrap();
            assert!(judged.len() > 50);
            assert_eq!(example.prompt(), judged, "{family:?}");
        }
    }
}
