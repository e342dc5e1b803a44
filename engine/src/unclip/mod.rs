//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md). So far: the CLIP tokenizer.

pub mod check;
pub mod tokenizer;
