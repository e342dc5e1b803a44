//! GLIDE's text tokenizer: GPT-2 byte-level BPE exactly as
//! `glide_text2im/tokenizer/bpe.py` — lowercase, no other cleaning, no
//! start/end tokens, truncate to the first `ctx` ids, pad with 50256.

use std::collections::HashMap;

use crate::bpe::{bpe_merge, bytes_to_unicode, gunzip};
use crate::error::{Error, Result};

pub const END_TOKEN: u32 = 50256;

pub struct GlideTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    pattern: regex::Regex,
}

impl GlideTokenizer {
    /// From the released `encoder.json.gz` and `vocab.bpe.gz`.
    pub fn from_gz(encoder_json_gz: &[u8], vocab_bpe_gz: &[u8]) -> Result<Self> {
        let encoder: HashMap<String, u32> =
            serde_json::from_str(&gunzip(encoder_json_gz, "encoder.json.gz")?)
                .map_err(|e| Error::Invalid(format!("encoder.json.gz: {e}")))?;
        let merges = gunzip(vocab_bpe_gz, "vocab.bpe.gz")?;
        // First line is a "#version" header, the last is empty.
        let lines: Vec<&str> = merges.split('\n').collect();
        let body = &lines[1.min(lines.len())..lines.len().saturating_sub(1)];
        let mut ranks = HashMap::with_capacity(body.len());
        for (i, line) in body.iter().enumerate() {
            let mut it = line.split(' ');
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => {
                    ranks.insert((a.to_string(), b.to_string()), i);
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "vocab.bpe.gz line {}: '{line}'",
                        i + 2
                    )))
                }
            }
        }
        // GPT-2's pattern without the `\s+(?!\S)` lookahead, handled in `pieces`.
        let pattern =
            regex::Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
                .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(GlideTokenizer {
            encoder,
            ranks,
            byte_to_char: bytes_to_unicode(),
            pattern,
        })
    }

    /// Pre-tokenisation: the regex alternatives in order; a whitespace run
    /// followed by a non-space gives back its last char (`\s+(?!\S)`).
    fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.pattern.find_at(text, pos) else {
                break;
            };
            let mut end = m.end();
            let s = m.as_str();
            if s.chars().all(char::is_whitespace) && end < text.len() {
                let last = s.char_indices().last().map_or(0, |(i, _)| i);
                if last > 0 {
                    end = m.start() + last;
                }
            }
            out.push(&text[m.start()..end]);
            pos = end;
        }
        out
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        bpe_merge(word.chars().map(|c| c.to_string()).collect(), &self.ranks)
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let lower = text.to_lowercase();
        let mut ids = Vec::new();
        for piece in self.pieces(&lower) {
            let mapped: String = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            for tok in self.bpe(&mapped) {
                // Every byte-level symbol is in the vocabulary, so this never misses.
                if let Some(&id) = self.encoder.get(&tok) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `padded_tokens_and_mask`: the first `ctx` ids, padded with 50256; mask 1 = real token.
    pub fn padded(&self, text: &str, ctx: usize) -> (Vec<u32>, Vec<u32>) {
        pad_tokens(&self.encode(text), ctx)
    }
}

pub fn pad_tokens(ids: &[u32], ctx: usize) -> (Vec<u32>, Vec<u32>) {
    let n = ids.len().min(ctx);
    let mut tokens = ids[..n].to_vec();
    tokens.resize(ctx, END_TOKEN);
    let mask = (0..ctx).map(|i| (i < n) as u32).collect();
    (tokens, mask)
}
