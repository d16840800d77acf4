//! Turns generated token ids into text deltas as they arrive, and finds stop strings.
//!
//! Byte-level BPE tokens can split a UTF-8 character, so text is only emitted once it is complete:
//! with a byte table (see [`super::token_text`]) up to the last complete character; through the
//! tokenizer once the decoded window no longer ends in a replacement character. Text that might be
//! the start of a stop string is held back until it is clear it is not.

use super::token_text::{take_complete_utf8, TokenText};
use tokenizers::Tokenizer;

#[derive(Debug, Default)]
pub struct Detokenizer {
    /// Byte-table decoding: the bytes of a character not yet complete.
    partial_char: Vec<u8>,
    /// Tokenizer decoding: the ids of the window still being decoded.
    window: Window,
    /// All stable text decoded so far (stop string excluded once found).
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    stop_strings: Vec<String>,
    /// A stop string was found: nothing after it belongs to the text.
    stopped: bool,
}

/// The ids decoded through the tokenizer: `tokens[prefix_offset..read_offset]` produced the last
/// stable text, `tokens[read_offset..]` are not yet part of `text`.
#[derive(Debug, Default)]
struct Window {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Window {
    /// Adds `token`; returns the text it completes, if any.
    fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Option<String> {
        self.tokens.push(token);
        let prefix = self.decode(tokenizer, self.read_offset);
        let full = self.decode(tokenizer, self.tokens.len());
        if full.len() <= prefix.len() || full.ends_with(char::REPLACEMENT_CHARACTER) {
            return None;
        }
        let new = full.get(prefix.len()..)?.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        Some(new)
    }

    /// What the ids not yet in the text decode to, read lossily (generation ended).
    fn rest(&self, tokenizer: &Tokenizer) -> String {
        if self.read_offset == self.tokens.len() {
            return String::new();
        }
        let prefix = self.decode(tokenizer, self.read_offset);
        let full = self.decode(tokenizer, self.tokens.len());
        full.get(prefix.len()..).unwrap_or_default().to_string()
    }

    fn decode(&self, tokenizer: &Tokenizer, end: usize) -> String {
        tokenizer
            .decode(&self.tokens[self.prefix_offset..end], false)
            .unwrap_or_default()
    }
}

/// Result of pushing one token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Text safe to send now.
    pub delta: String,
    /// A stop string appeared; `text` has been cut before it.
    pub stopped: bool,
}

impl Detokenizer {
    pub fn new(stop_strings: Vec<String>) -> Self {
        Self {
            stop_strings: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn push(&mut self, source: &TokenText, token: u32) -> Pushed {
        let search_from = self
            .text
            .len()
            .saturating_sub(self.longest_stop().saturating_sub(1));
        let grew = match source {
            TokenText::Bytes(table) => {
                self.partial_char.extend_from_slice(table.get(token));
                let before = self.text.len();
                let used = take_complete_utf8(&self.partial_char, &mut self.text);
                self.partial_char.drain(..used);
                self.text.len() > before
            }
            TokenText::Tokenizer(tokenizer) => match self.window.push(tokenizer, token) {
                Some(new) => {
                    self.text.push_str(&new);
                    true
                }
                None => false,
            },
        };
        if grew {
            if let Some(cut) = self.find_stop(search_from) {
                self.text.truncate(cut);
                self.stopped = true;
                return Pushed {
                    delta: self.take_delta(0),
                    stopped: true,
                };
            }
        }
        let hold = self.pending_stop_prefix();
        Pushed {
            delta: self.take_delta(hold),
            stopped: false,
        }
    }

    /// Everything not yet emitted: generation has ended, so nothing is held back for a stop string,
    /// and an unfinished character is read the way the tokenizer's decode reads it (U+FFFD). The
    /// whole text is then what decoding the generated ids gives, cut before a stop string.
    pub fn flush(&mut self, source: &TokenText) -> String {
        if !self.stopped {
            match source {
                TokenText::Bytes(_) => {
                    let rest = String::from_utf8_lossy(&self.partial_char).into_owned();
                    self.text.push_str(&rest);
                }
                TokenText::Tokenizer(tokenizer) => {
                    let rest = self.window.rest(tokenizer);
                    self.text.push_str(&rest);
                }
            }
        }
        self.partial_char.clear();
        self.window = Window::default();
        self.take_delta(0)
    }

    fn longest_stop(&self) -> usize {
        self.stop_strings.iter().map(String::len).max().unwrap_or(0)
    }

    fn find_stop(&self, from: usize) -> Option<usize> {
        let mut from = from.min(self.text.len());
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop_strings
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a stop string.
    fn pending_stop_prefix(&self) -> usize {
        let mut best = 0;
        for s in &self.stop_strings {
            for len in (1..s.len()).rev() {
                if len <= best || len > self.text.len() {
                    continue;
                }
                let start = self.text.len() - len;
                if self.text.is_char_boundary(start)
                    && s.as_bytes().starts_with(&self.text.as_bytes()[start..])
                {
                    best = len;
                    break;
                }
            }
        }
        best
    }

    fn take_delta(&mut self, hold: usize) -> String {
        self.emitted = self.emitted.min(self.text.len());
        let end = self.text.len().saturating_sub(hold).max(self.emitted);
        let delta = self.text[self.emitted..end].to_string();
        self.emitted = end;
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::token_text::{byte_level_test_tokenizer, TokenBytes};
    use std::sync::Arc;

    /// Runs `ids` through a detokenizer; returns the streamed text (deltas and the final flush),
    /// the whole text and the index of the token that hit a stop string.
    fn run(source: &TokenText, stops: &[&str], ids: &[u32]) -> (String, String, Option<usize>) {
        let mut detok = Detokenizer::new(stops.iter().map(|s| s.to_string()).collect());
        let mut streamed = String::new();
        let mut stopped_at = None;
        for (i, &id) in ids.iter().enumerate() {
            let pushed = detok.push(source, id);
            streamed.push_str(&pushed.delta);
            if pushed.stopped {
                stopped_at = Some(i);
                break;
            }
        }
        streamed.push_str(&detok.flush(source));
        (streamed, detok.text().to_string(), stopped_at)
    }

    fn random_ids(state: &mut u64, vocab: u32) -> Vec<u32> {
        let len = 1 + (*state % 30) as usize;
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state % vocab as u64) as u32
            })
            .collect()
    }

    #[test]
    fn both_decodings_stream_exactly_the_tokenizers_text() {
        let tokenizer = Arc::new(byte_level_test_tokenizer());
        let table = TokenText::Bytes(TokenBytes::for_tokenizer(&tokenizer).unwrap());
        let window = TokenText::Tokenizer(tokenizer.clone());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..300 {
            let ids = random_ids(&mut state, 266);
            let expected = tokenizer.decode(&ids, false).unwrap();
            for source in [&table, &window] {
                let (streamed, text, stopped) = run(source, &[], &ids);
                assert_eq!(stopped, None);
                assert_eq!(text, expected, "ids {ids:?}");
                assert_eq!(streamed, expected, "ids {ids:?}");
            }
        }
    }

    #[test]
    fn the_byte_table_stops_on_the_token_that_completes_a_stop_string() {
        let tokenizer = Arc::new(byte_level_test_tokenizer());
        let table = TokenText::Bytes(TokenBytes::for_tokenizer(&tokenizer).unwrap());
        // "é!" straddles tokens (" \xC3" + "\xA9!"); "€" is E2 82 AC, which token 262 ("y\xE2\x82")
        // begins and byte 0xAC finishes.
        let stops = ["é!", "€", "b>", "[[A"];
        let mut state = 0xD1B5_4A32_D192_ED03u64;
        let mut stops_seen = 0;
        for _ in 0..2000 {
            // Mostly the joined tokens, so that stop strings occur.
            let ids: Vec<u32> = random_ids(&mut state, 16)
                .into_iter()
                .map(|x| match x {
                    0..=6 => 256 + x,
                    7 => 0xAC,
                    8 => 264,
                    9 => b'A'.into(),
                    10 => b'!'.into(),
                    _ => x + 60,
                })
                .collect();
            // Reference: the first prefix whose decode contains a stop string, cut before it.
            let reference = (0..ids.len()).find_map(|k| {
                let text = tokenizer.decode(&ids[..=k], false).unwrap();
                let cut = stops.iter().filter_map(|s| text.find(s)).min()?;
                Some((k, text[..cut].to_string()))
            });
            let (streamed, text, stopped) = run(&table, &stops, &ids);
            match reference {
                Some((k, cut_text)) => {
                    stops_seen += 1;
                    assert_eq!(stopped, Some(k), "ids {ids:?}");
                    assert_eq!(text, cut_text, "ids {ids:?}");
                    assert_eq!(streamed, cut_text, "ids {ids:?}");
                }
                None => {
                    assert_eq!(stopped, None, "ids {ids:?}");
                    assert_eq!(text, tokenizer.decode(&ids, false).unwrap());
                }
            }
        }
        assert!(stops_seen > 200, "only {stops_seen} sequences hit a stop");
    }

    #[test]
    fn text_that_may_begin_a_stop_string_is_held_back() {
        let tokenizer = Arc::new(byte_level_test_tokenizer());
        let table = TokenText::Bytes(TokenBytes::for_tokenizer(&tokenizer).unwrap());
        let mut detok = Detokenizer::new(vec!["<answer>[[B".into()]);
        assert_eq!(detok.push(&table, b'x'.into()).delta, "x");
        let pushed = detok.push(&table, 260); // "<answer>[["
        assert_eq!(pushed.delta, "", "could still become the stop string");
        assert_eq!(detok.text(), "x<answer>[[", "probes see the text at once");
        let pushed = detok.push(&table, b'A'.into());
        assert_eq!(
            (pushed.delta.as_str(), pushed.stopped),
            ("<answer>[[A", false)
        );
    }
}
