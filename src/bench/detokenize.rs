//! `rmr1 bench detokenize`: the engine thread's text work per generated token (decode, stop-string
//! search, the judge's `<answer>[[` probe check) with the token byte table against decoding through
//! the tokenizer, on the same judge-shaped token streams in the same run. Prints a table; asserts
//! nothing, but says whether the two produced the same text.

use crate::engine::detokenizer::Detokenizer;
use crate::engine::token_text::{TokenBytes, TokenText};
use crate::judge::templates::INSTRUCT_SYSTEM;
use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;

#[derive(clap::Args, Debug, Clone)]
pub struct DetokenizeBenchArgs {
    /// A byte-level BPE tokenizer.json (default: the test model's, from scripts/fetch-test-model.sh).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Sequences decoding together, one token each per step (a GPU decode batch).
    #[arg(long, default_value_t = 256)]
    pub sequences: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
}

/// Not in the text, but it shares its `</` opening with the text's tags, so the hold-back of a
/// possible stop string is exercised as in a real judgment.
const STOP: &str = "</judgment>";
const PROBE: &str = "<answer>[[";

/// Every sequence's tokens, one step at a time; returns seconds and each sequence's final text.
fn decode_all(source: &TokenText, streams: &[Vec<u32>]) -> (f64, Vec<String>) {
    let mut detoks: Vec<Detokenizer> = streams
        .iter()
        .map(|_| Detokenizer::new(vec![STOP.to_string()]))
        .collect();
    let mut probes_fired = 0usize;
    let started = Instant::now();
    for step in 0..streams[0].len() {
        for (detok, stream) in detoks.iter_mut().zip(streams) {
            let pushed = detok.push(source, stream[step]);
            std::hint::black_box(&pushed.delta);
            probes_fired += usize::from(detok.text().ends_with(PROBE));
        }
    }
    let texts = detoks.iter_mut().map(|d| {
        d.flush(source);
        d.text().to_string()
    });
    let texts: Vec<String> = texts.collect();
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(probes_fired);
    (seconds, texts)
}

pub fn run(args: DetokenizeBenchArgs) -> Result<()> {
    let path = match args.tokenizer {
        Some(p) => p,
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/rmr1/test-model/tokenizer.json"),
    };
    let tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    let built = Instant::now();
    let table = TokenBytes::for_tokenizer(&tokenizer)
        .with_context(|| format!("{}: the decoder is not byte-level", path.display()))?;
    let table_ms = built.elapsed().as_secs_f64() * 1e3;
    // A judgment-like stream: the RM-R1 rubric prompt (English, markup, `<answer>` tags) and a line
    // with multi-byte characters, each sequence starting at its own offset.
    let text = format!("{INSTRUCT_SYSTEM}\nÜnïcödé — 中文 🙂 <answer>[[A]]</answer>\n");
    let ids = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("encoding: {e}"))?
        .get_ids()
        .to_vec();
    let streams: Vec<Vec<u32>> = (0..args.sequences.max(1))
        .map(|s| {
            (0..args.tokens.max(1))
                .map(|t| ids[(s * 37 + t) % ids.len()])
                .collect()
        })
        .collect();

    let window = TokenText::Tokenizer(Arc::new(tokenizer));
    let bytes = TokenText::Bytes(table);
    let (window_s, window_texts) = decode_all(&window, &streams);
    let (bytes_s, bytes_texts) = decode_all(&bytes, &streams);
    let tokens = (streams.len() * streams[0].len()) as f64;
    let per_token_us = |s: f64| s / tokens * 1e6;
    let per_step_ms = |s: f64| s / streams[0].len() as f64 * 1e3;

    println!(
        "rmr1 bench detokenize: {}, {} sequences x {} tokens, stop string {STOP:?}, probe {PROBE:?}",
        path.display(),
        streams.len(),
        streams[0].len()
    );
    println!("byte table built in {table_ms:.1} ms");
    println!();
    println!(
        "| decoding on the engine thread | µs per token | ms per step of {} sequences | speed-up |",
        streams.len()
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| tokenizer decode of a window (before) | {:.2} | {:.2} | 1.00× |",
        per_token_us(window_s),
        per_step_ms(window_s)
    );
    println!(
        "| token byte table (now) | {:.3} | {:.3} | {:.1}× |",
        per_token_us(bytes_s),
        per_step_ms(bytes_s),
        window_s / bytes_s
    );
    println!();
    let same = window_texts == bytes_texts;
    println!("same text from both: {}", if same { "yes" } else { "NO" });
    Ok(())
}
