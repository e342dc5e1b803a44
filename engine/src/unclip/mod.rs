//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md). So far: the CLIP tokenizer, the CLIP text tower and the prior network.

pub mod check;
pub mod clip;
pub mod prior;
pub mod tokenizer;
