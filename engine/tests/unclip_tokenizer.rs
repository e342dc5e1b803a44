//! The CLIP tokenizer at parity with the official one: every case of
//! `../shared/fixtures/unclip/tokenizer/tokens.json`.
#![cfg(not(target_arch = "wasm32"))]

use engine::unclip::check::check_tokenizer;
use engine::unclip::tokenizer::ClipTokenizer;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/unclip");

fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_gz(include_bytes!(
        "../../public/tokenizer/bpe_simple_vocab_16e6.txt.gz"
    ))
    .unwrap()
}

#[test]
fn every_fixture_case_matches() {
    let json = std::fs::read(format!("{FIX}/tokenizer/tokens.json")).unwrap();
    let cases = check_tokenizer(&tokenizer(), &json).unwrap();
    assert!(cases.len() >= 14, "{} cases", cases.len());
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|c| c.mismatch.as_ref().map(|m| format!("{:?}: {m}", c.text)))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_damaged_vocabulary_is_an_error() {
    assert!(ClipTokenizer::from_gz(b"not gzip").is_err());
    // A valid gzip with too few merges.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b"#version: 0.2\na b\n").unwrap();
    assert!(ClipTokenizer::from_gz(&gz.finish().unwrap()).is_err());
}
