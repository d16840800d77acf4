//! Turns generated token ids into text deltas as they arrive, and finds stop strings.
//!
//! Byte-level BPE tokens can split a UTF-8 character, so a token's text is only emitted once the
//! decoded tail no longer ends in a replacement character. Text that might be the start of a stop
//! string is held back until it is clear it is not.

use tokenizers::Tokenizer;

#[derive(Debug, Default)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// All stable text decoded so far (stop string excluded once found).
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    stop_strings: Vec<String>,
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

    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Pushed {
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let full = decode(&self.tokens[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let search_from = self
                    .text
                    .len()
                    .saturating_sub(self.longest_stop().saturating_sub(1));
                self.text.push_str(new);
                self.prefix_offset = self.read_offset;
                self.read_offset = self.tokens.len();
                if let Some(cut) = self.find_stop(search_from) {
                    self.text.truncate(cut);
                    return Pushed {
                        delta: self.take_delta(0),
                        stopped: true,
                    };
                }
            }
        }
        let hold = self.pending_stop_prefix();
        Pushed {
            delta: self.take_delta(hold),
            stopped: false,
        }
    }

    /// Everything not yet emitted (at the end of generation nothing is held back).
    pub fn flush(&mut self) -> String {
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
