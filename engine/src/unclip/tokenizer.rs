//! unCLIP's text tokenizer: OpenAI CLIP's `SimpleTokenizer` (byte-level BPE
//! over `bpe_simple_vocab_16e6.txt.gz`) with Karlo's
//! `CustomizedTokenizer.padded_tokens_and_mask`: `[sot] + bpe + [eot]`, the
//! first 77 kept with the last overwritten by eot, padded with 0.
//! (../shared/docs/unclip-architecture.md §2.)

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

use crate::bpe::{bpe_merge, bytes_to_unicode, gunzip, Ranks};
use crate::error::{Error, Result};

pub const SOT_TOKEN: u32 = 49406;
pub const EOT_TOKEN: u32 = 49407;
pub const PAD_TOKEN: u32 = 0;
pub const VOCAB_SIZE: usize = 49408;
/// CLIP's context: its positional table has exactly 77 rows.
pub const TEXT_CTX: usize = 77;
const SPECIALS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];

pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: Ranks,
    byte_to_char: [char; 256],
    pattern: regex::Regex,
}

impl ClipTokenizer {
    /// From the released `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_gz(bpe_gz: &[u8]) -> Result<Self> {
        let text = gunzip(bpe_gz, "bpe_simple_vocab_16e6.txt.gz")?;
        // As simple_tokenizer.py: skip the version line, keep 49152 − 256 − 2 merges.
        let lines: Vec<&str> = text.split('\n').collect();
        let n_merges = VOCAB_SIZE - 2 - 512;
        if lines.len() < n_merges + 1 {
            return Err(Error::Invalid(format!(
                "bpe_simple_vocab_16e6.txt.gz: {} lines, expected at least {}",
                lines.len(),
                n_merges + 1
            )));
        }
        let byte_to_char = bytes_to_unicode();
        // The 256 byte symbols in the order of the Python dict: printable
        // bytes first, then the others, i.e. ascending by mapped char.
        let mut symbols = byte_to_char.to_vec();
        symbols.sort_unstable();
        let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
        let mut ranks = Ranks::with_capacity(n_merges);
        for (i, line) in lines[1..=n_merges].iter().enumerate() {
            let mut it = line.split_whitespace();
            let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) else {
                return Err(Error::Invalid(format!(
                    "bpe_simple_vocab_16e6.txt.gz line {}: '{line}'",
                    i + 2
                )));
            };
            vocab.push(format!("{a}{b}"));
            ranks.insert((a.to_string(), b.to_string()), i);
        }
        vocab.extend(SPECIALS.iter().map(|s| s.to_string()));
        let encoder = vocab
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, i as u32))
            .collect();
        // simple_tokenizer.py compiles this with IGNORECASE, but it only ever
        // sees lower-cased text, where the flag changes nothing.
        let pattern = regex::Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(ClipTokenizer {
            encoder,
            ranks,
            byte_to_char,
            pattern,
        })
    }

    /// BPE ids of a text (no sot/eot), after CLIP's cleaning.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean_text(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&text).map(|m| m.as_str()) {
            if let Some(i) = SPECIALS.iter().position(|s| *s == piece) {
                ids.push(SOT_TOKEN + i as u32);
                continue;
            }
            let mut symbols: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize].to_string())
                .collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str("</w>");
            }
            for tok in bpe_merge(symbols, &self.ranks) {
                // Every byte symbol (with or without </w>) is in the vocabulary.
                if let Some(&id) = self.encoder.get(&tok) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `padded_tokens_and_mask(text, ctx)`: tokens and mask (1 = sot, text, eot).
    pub fn padded(&self, text: &str, ctx: usize) -> (Vec<u32>, Vec<u32>) {
        pad_clip_tokens(&self.encode(text), ctx)
    }
}

/// `[sot] + ids + [eot]`; longer than `ctx`: the first `ctx` with the last
/// set to eot; padded with 0.
pub fn pad_clip_tokens(ids: &[u32], ctx: usize) -> (Vec<u32>, Vec<u32>) {
    let mut tokens = Vec::with_capacity(ctx.max(2));
    tokens.push(SOT_TOKEN);
    tokens.extend_from_slice(ids);
    tokens.push(EOT_TOKEN);
    if tokens.len() > ctx {
        tokens.truncate(ctx);
        if let Some(last) = tokens.last_mut() {
            *last = EOT_TOKEN;
        }
    }
    let n = tokens.len();
    tokens.resize(ctx, PAD_TOKEN);
    let mask = (0..ctx).map(|j| (j < n) as u32).collect();
    (tokens, mask)
}

/// CLIP's cleaning: ftfy's `fix_text` for what prompts meet (mojibake,
/// Latin ligatures, full-width characters, curly quotes, NFC), then
/// `html.unescape` twice, whitespace runs collapsed, trimmed, lower case.
pub fn clean_text(text: &str) -> String {
    let fixed: String = fix_mojibake(text)
        .chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            match c {
                'ﬀ' => Box::new("ff".chars()),
                'ﬁ' => Box::new("fi".chars()),
                'ﬂ' => Box::new("fl".chars()),
                'ﬃ' => Box::new("ffi".chars()),
                'ﬄ' => Box::new("ffl".chars()),
                'ﬅ' => Box::new("ſt".chars()),
                'ﬆ' => Box::new("st".chars()),
                // Full-width forms of ASCII and the ideographic space.
                '\u{ff01}'..='\u{ff5e}' => Box::new(std::iter::once(
                    char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c),
                )),
                '\u{3000}' => Box::new(std::iter::once(' ')),
                '\u{2018}'..='\u{201b}' => Box::new(std::iter::once('\'')),
                '\u{201c}'..='\u{201f}' => Box::new(std::iter::once('"')),
                c => Box::new(std::iter::once(c)),
            }
        })
        .nfc()
        .collect();
    let unescaped =
        html_escape::decode_html_entities(&html_escape::decode_html_entities(&fixed)).into_owned();
    unescaped
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The byte a character stands for when UTF-8 was misread as Windows-1252
/// (or Latin-1): U+0080–U+00FF and cp1252's printable 0x80–0x9F characters.
fn misread_byte(c: char) -> Option<u8> {
    const CP1252: [(char, u8); 27] = [
        ('€', 0x80),
        ('‚', 0x82),
        ('ƒ', 0x83),
        ('„', 0x84),
        ('…', 0x85),
        ('†', 0x86),
        ('‡', 0x87),
        ('ˆ', 0x88),
        ('‰', 0x89),
        ('Š', 0x8a),
        ('‹', 0x8b),
        ('Œ', 0x8c),
        ('Ž', 0x8e),
        ('‘', 0x91),
        ('’', 0x92),
        ('“', 0x93),
        ('”', 0x94),
        ('•', 0x95),
        ('–', 0x96),
        ('—', 0x97),
        ('˜', 0x98),
        ('™', 0x99),
        ('š', 0x9a),
        ('›', 0x9b),
        ('œ', 0x9c),
        ('ž', 0x9e),
        ('Ÿ', 0x9f),
    ];
    match c as u32 {
        0x80..=0xff => Some(c as u32 as u8),
        _ => CP1252.iter().find(|(k, _)| *k == c).map(|&(_, b)| b),
    }
}

/// ftfy's main case: UTF-8 that was decoded as Windows-1252 ("cafÃ©" →
/// "café"). A run of misread characters is re-decoded when its bytes are
/// valid UTF-8 holding a multi-byte sequence; anything else stays as is, so
/// correct accented text ("café", "naïve") is untouched.
fn fix_mojibake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let mut bytes = Vec::new();
        while let Some(b) = chars.get(i).and_then(|&c| misread_byte(c)) {
            bytes.push(b);
            i += 1;
        }
        if bytes.is_empty() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match std::str::from_utf8(&bytes) {
            Ok(s) if s.chars().any(|c| c as u32 >= 0x80) && s.chars().count() < bytes.len() => {
                out.push_str(s)
            }
            _ => out.extend(&chars[start..i]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean_text("  A\tB\n\nc  "), "a b c");
        assert_eq!(clean_text("cafÃ© au lait"), "café au lait");
        assert_eq!(clean_text("café naïve"), "café naïve");
        assert_eq!(clean_text("ﬁne ＡＢＣ１２"), "fine abc12");
        assert_eq!(clean_text("“q” ‘s’"), "\"q\" 's'");
        assert_eq!(clean_text("&amp;amp; &lt;3"), "& <3");
        // A decomposed é composes (NFC).
        assert_eq!(clean_text("cafe\u{301}"), "caf\u{e9}");
    }

    #[test]
    fn padding_and_truncation() {
        let (t, m) = pad_clip_tokens(&[], 77);
        assert_eq!(
            (&t[..3], m.iter().sum::<u32>()),
            (&[SOT_TOKEN, EOT_TOKEN, 0][..], 2)
        );
        let long: Vec<u32> = (1..=100).collect();
        let (t, m) = pad_clip_tokens(&long, 77);
        assert_eq!(
            (t[0], t[75], t[76], m.iter().sum::<u32>()),
            (SOT_TOKEN, 75, EOT_TOKEN, 77)
        );
        let (t, m) = pad_clip_tokens(&[5, 6], 4);
        assert_eq!((t, m), (vec![SOT_TOKEN, 5, 6, EOT_TOKEN], vec![1, 1, 1, 1]));
    }
}
