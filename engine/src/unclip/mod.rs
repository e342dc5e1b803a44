//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md). So far: the CLIP tokenizer and text tower.

pub mod check;
pub mod clip;
pub mod tokenizer;
