//! How the engine thread turns generated token ids into text.
//!
//! The engine needs the text at every step, not only at the end: stop strings end a sequence on
//! the step they appear, and a probe such as the judge's P(A)/P(B) after `<answer>[[` fires on the
//! step whose text ends with its trigger. Moving decoding to another thread would make both land a
//! step late (vLLM's output processor accepts that for stop strings). Instead the common case is
//! made cheap enough to stay: for byte-level BPE tokenizers (GPT-2, Qwen2, Llama 3), the
//! tokenizer's decode of a token sequence is the lossy UTF-8 reading of the tokens' bytes laid end
//! to end, so a table of each token's bytes replaces two tokenizer decodes per token with one
//! lookup and a byte append. Other decoders keep the tokenizer (see [`super::detokenizer`]).

use std::sync::Arc;
use tokenizers::{DecoderWrapper, Tokenizer};

/// Where a sequence's text comes from; one per engine, shared by its sequences.
pub enum TokenText {
    /// Byte-level BPE: each token's bytes from a table.
    Bytes(TokenBytes),
    /// Any other decoder: the tokenizer decodes a short window of ids per token.
    Tokenizer(Arc<Tokenizer>),
}

impl TokenText {
    /// The byte table when `tokenizer`'s decoder is byte-level, else the tokenizer itself.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        match TokenBytes::for_tokenizer(&tokenizer) {
            Some(table) => Self::Bytes(table),
            None => Self::Tokenizer(tokenizer),
        }
    }
}

/// Every token's bytes, flat: token `id` is `bytes[ends[id - 1]..ends[id]]`.
pub struct TokenBytes {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl TokenBytes {
    /// `None` unless the tokenizer's decoder is `ByteLevel` alone: only then is decoding a
    /// concatenation of per-token bytes.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        if !matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return None;
        }
        let byte_of = unicode_to_byte();
        let ids = tokenizer
            .get_vocab(true)
            .into_values()
            .max()
            .map_or(0, |m| m + 1);
        let mut table = Self {
            bytes: Vec::new(),
            ends: Vec::with_capacity(ids as usize),
        };
        for id in 0..ids {
            // Ids without a token decode to nothing (the tokenizer skips them too).
            if let Some(token) = tokenizer.id_to_token(id) {
                table.push_token(&token, &byte_of);
            }
            table.ends.push(u32::try_from(table.bytes.len()).ok()?);
        }
        Some(table)
    }

    /// The ByteLevel decoder's rule: a token whose every char is a byte-level char stands for those
    /// bytes; any other token (an added token such as `<a b>` with a real space) for its UTF-8.
    fn push_token(&mut self, token: &str, byte_of: &[Option<u8>]) {
        let mapped: Option<Vec<u8>> = token
            .chars()
            .map(|c| byte_of.get(c as usize).copied().flatten())
            .collect();
        match mapped {
            Some(bytes) => self.bytes.extend_from_slice(&bytes),
            None => self.bytes.extend_from_slice(token.as_bytes()),
        }
    }

    /// The bytes token `id` decodes to (empty for an id outside the vocabulary).
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let Some(&end) = self.ends.get(id) else {
            return &[];
        };
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.bytes[start as usize..end as usize]
    }

    pub fn num_ids(&self) -> usize {
        self.ends.len()
    }
}

/// The inverse of GPT-2's byte-to-unicode map, indexed by char: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes (controls, space, 0x7F–0xA0, soft hyphen) for U+0100 onwards in
/// byte order.
fn unicode_to_byte() -> Vec<Option<u8>> {
    let stands_for_itself = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = vec![None; 256 + 68];
    let mut next_shifted = 256;
    for b in 0..=255u8 {
        if stands_for_itself(b) {
            table[b as usize] = Some(b);
        } else {
            table[next_shifted] = Some(b);
            next_shifted += 1;
        }
    }
    table
}

/// Appends the complete UTF-8 at the front of `bytes` to `text` (each invalid sequence as U+FFFD,
/// as a lossy decode does) and returns how many bytes were used; an incomplete character at the
/// end stays for the next token to finish.
pub fn take_complete_utf8(bytes: &[u8], text: &mut String) -> usize {
    let mut used = 0;
    while used < bytes.len() {
        match std::str::from_utf8(&bytes[used..]) {
            Ok(s) => {
                text.push_str(s);
                used = bytes.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // Checked valid just above.
                text.push_str(std::str::from_utf8(&bytes[used..used + valid]).unwrap_or_default());
                used += valid;
                match e.error_len() {
                    Some(invalid) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        used += invalid;
                    }
                    None => break,
                }
            }
        }
    }
    used
}

/// A small byte-level BPE tokenizer for tests: the 256 byte tokens (ids 0–255), tokens that split
/// or join UTF-8 characters, and two added tokens, one of them with a real
/// space (which the ByteLevel decoder passes through as UTF-8).
#[cfg(test)]
pub(crate) fn byte_level_test_tokenizer() -> Tokenizer {
    let mut char_of = [' '; 256];
    for (c, b) in unicode_to_byte().iter().enumerate() {
        if let Some(b) = b {
            char_of[*b as usize] = char::from_u32(c as u32).expect("below U+0144");
        }
    }
    let token = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|&b| char_of[b as usize])
            .collect::<String>()
    };
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(token(&[b]), b.into());
    }
    let joined: [&[u8]; 7] = [
        b" \xC3",
        b"\xA9!",
        "é".as_bytes(),
        b"\xF0\x9F\x98",
        b"<answer>[[",
        b" hello world",
        b"y\xE2\x82",
    ];
    for (i, bytes) in joined.iter().enumerate() {
        vocab.insert(token(bytes), (256 + i).into());
    }
    let added = |id: u32, content: &str, special: bool| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(263, "<|im_end|>", true), added(264, "<a b>", false)],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
            "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    Tokenizer::from_bytes(json.to_string()).expect("a valid tokenizer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_decodes_as_the_tokenizer_does() {
        let tokenizer = byte_level_test_tokenizer();
        let table = TokenBytes::for_tokenizer(&tokenizer).expect("a byte-level decoder");
        assert_eq!(table.num_ids(), 265);
        assert_eq!(table.get(256), b" \xC3");
        assert_eq!(table.get(264), b"<a b>");
        assert_eq!(table.get(1 << 20), b"", "an id past the vocabulary");
        // Lossy reading of the concatenated bytes against the tokenizer's own decode, over
        // sequences that split characters, leave stray continuation bytes and use added tokens.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..300 {
            let len = 1 + (state % 40) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 266) as u32
                })
                .collect();
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| table.get(id).to_vec()).collect();
            let expected = tokenizer.decode(&ids, false).unwrap();
            assert_eq!(String::from_utf8_lossy(&bytes), expected, "ids {ids:?}");
        }
    }

    #[test]
    fn other_decoders_keep_the_tokenizer() {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1}, "unk_token": "<unk>"}
        });
        let tokenizer = Tokenizer::from_bytes(json.to_string()).unwrap();
        assert!(TokenBytes::for_tokenizer(&tokenizer).is_none());
        assert!(matches!(
            TokenText::new(Arc::new(tokenizer)),
            TokenText::Tokenizer(_)
        ));
    }

    #[test]
    fn gpt2_byte_map_matches_its_definition() {
        let table = unicode_to_byte();
        // Hand-checked points of GPT-2's map: 'Ġ' (U+0120) is the space, 'Ċ' (U+010A) the newline,
        // U+0100 the NUL byte, U+0143 the soft hyphen (the last shifted byte), '!' itself.
        assert_eq!(table['Ġ' as usize], Some(b' '));
        assert_eq!(table['Ċ' as usize], Some(b'\n'));
        assert_eq!(table[0x100], Some(0));
        assert_eq!(table[0x143], Some(0xAD));
        assert_eq!(table['!' as usize], Some(b'!'));
        assert_eq!(table[' ' as usize], None);
        let mut bytes: Vec<u8> = table.iter().flatten().copied().collect();
        bytes.sort_unstable();
        assert_eq!(
            bytes,
            (0..=255).collect::<Vec<u8>>(),
            "a bijection onto the bytes"
        );
    }

    #[test]
    fn complete_utf8_is_taken_and_a_split_character_waits() {
        let mut text = String::new();
        // "é" is C3 A9: the lone lead byte waits.
        assert_eq!(take_complete_utf8(b"ab\xC3", &mut text), 2);
        assert_eq!(text, "ab");
        text.clear();
        assert_eq!(take_complete_utf8(b"\xC3\xA9!", &mut text), 3);
        assert_eq!(text, "é!");
        // A stray continuation byte can never complete: one U+FFFD, as from_utf8_lossy gives.
        text.clear();
        assert_eq!(take_complete_utf8(b"x\xA9y\xF0\x9F", &mut text), 3);
        assert_eq!(text, "x\u{FFFD}y");
    }
}
