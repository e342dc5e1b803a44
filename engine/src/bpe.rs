//! Byte-level BPE shared by GLIDE's GPT-2 tokenizer and unCLIP's CLIP
//! tokenizer: the reversible byte → printable-char map, the merge loop, and
//! reading the released gzip'd vocabulary files.

use std::collections::HashMap;
use std::io::Read;

use crate::error::{Error, Result};

/// Merge ranks: (left, right) → priority (lower merges first).
pub type Ranks = HashMap<(String, String), usize>;

pub fn gunzip(bytes: &[u8], what: &str) -> Result<String> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut s)
        .map_err(|e| Error::Invalid(format!("{what}: not a gzip'd UTF-8 file ({e})")))?;
    Ok(s)
}

/// GPT-2's (and CLIP's) reversible byte → printable-unicode map.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut map = ['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

/// Applies merges to a word's symbols, lowest rank first, every occurrence
/// of the pair left to right (as both reference implementations do).
pub fn bpe_merge(mut parts: Vec<String>, ranks: &Ranks) -> Vec<String> {
    while parts.len() > 1 {
        let best = (0..parts.len() - 1)
            .filter_map(|i| {
                ranks
                    .get(&(parts[i].clone(), parts[i + 1].clone()))
                    .map(|&r| (r, i))
            })
            .min();
        let Some((_, i)) = best else { break };
        let (a, b) = (parts[i].clone(), parts[i + 1].clone());
        let mut merged = Vec::with_capacity(parts.len());
        let mut j = 0;
        while j < parts.len() {
            if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                merged.push(format!("{a}{b}"));
                j += 2;
            } else {
                merged.push(parts[j].clone());
                j += 1;
            }
        }
        parts = merged;
    }
    parts
}
