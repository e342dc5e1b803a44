//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md). So far: the CLIP tokenizer, the CLIP text tower, the prior and the decoder networks.

pub mod check;
pub mod clip;
pub mod decoder;
pub mod prior;
pub mod tokenizer;
